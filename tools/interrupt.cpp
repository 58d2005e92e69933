#include "tools/interrupt.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>

namespace tcpfix::tools {
namespace {

sigset_t stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    return set;
}

}  // namespace

Interrupt::Interrupt() {
    auto set = stop_signals();
    if (int err = pthread_sigmask(SIG_BLOCK, &set, nullptr); err != 0) {
        errno = err;
        throw_errno("pthread_sigmask");
    }
    fd_.reset(signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!fd_) throw_errno("signalfd");
}

// A signal still pending when we exit is discarded with the process; nothing
// to undo but the descriptor, which Fd closes.
Interrupt::~Interrupt() = default;

bool Interrupt::pending() const {
    pollfd p{fd_.get(), POLLIN, 0};
    return poll(&p, 1, 0) > 0;
}

}  // namespace tcpfix::tools
