// SIGINT and SIGTERM turned into a descriptor, so every wait in probe and
// churn can poll for "the user asked us to stop" and report what it has.
#pragma once

#include "tools/fd.hpp"

namespace tcpfix::tools {

class Interrupt {
  public:
    // Blocks SIGINT and SIGTERM in the calling thread (threads started later
    // inherit that) and opens a signalfd for them. Throws on failure.
    Interrupt();
    ~Interrupt();
    Interrupt(const Interrupt&) = delete;
    Interrupt& operator=(const Interrupt&) = delete;

    // Readable once a signal is pending; nobody reads it, so it stays readable
    // for every thread that polls it.
    int fd() const { return fd_.get(); }
    bool pending() const;

  private:
    Fd fd_;
};

}  // namespace tcpfix::tools
