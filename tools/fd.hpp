// A move-only owner of one file descriptor, and the one way tools/ reports a
// failed syscall: std::system_error carrying the call's name.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <system_error>
#include <utility>

namespace tcpfix::tools {

// Throws std::system_error(errno) whose what() reads "call: strerror".
[[noreturn]] inline void throw_errno(const char* call) {
    throw std::system_error(errno, std::generic_category(), call);
}

// Owns a descriptor and closes it once. No implicit conversion to int: the
// number is reached through get(), so it cannot leak into a call by accident.
class Fd {
  public:
    Fd() = default;
    explicit Fd(int fd) noexcept : fd_(fd) {}
    Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    Fd& operator=(Fd&& other) noexcept {
        if (this != &other) reset(std::exchange(other.fd_, -1));
        return *this;
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() { reset(); }

    int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }

    // Closes the current descriptor (if any) and owns `fd` instead. The
    // result of close() is ignored: the descriptor is gone either way.
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

    // Gives up ownership without closing.
    int release() noexcept { return std::exchange(fd_, -1); }

  private:
    int fd_ = -1;
};

}  // namespace tcpfix::tools
