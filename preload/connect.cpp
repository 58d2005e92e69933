// connect(): remember the destination and whether TCPFIX_MATCH selects it;
// count the outcome. getsockopt(SO_ERROR) completes the count for the
// non-blocking connects real clients make (php-redis, libmariadb).
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <fcntl.h>

#include "preload/connect_policy.hpp"
#include "preload/fdtable.hpp"
#include "preload/hold.hpp"
#include "preload/hooks.hpp"
#include "preload/log.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"
#include "preload/stats_file.hpp"
#include "preload/storm.hpp"

namespace tcpfix::hooks {
namespace {

using runtime::call_errno;

// The slot of a TCP socket, adopting one tcpfix did not see created (made
// before the constructor ran, or inherited): SO_PROTOCOL tells TCP apart.
std::uint32_t slot_for_connect(int fd) {
    std::uint32_t index = fdtable::lookup(fd);
    if (index != 0 && index != fdtable::kOwned) return index;
    if (index == fdtable::kOwned) return 0;
    int protocol = 0, domain = 0;
    socklen_t len = sizeof protocol;
    if (call_errno(real::getsockopt.get(), fd, SOL_SOCKET, SO_PROTOCOL, static_cast<void*>(&protocol), &len) != 0 ||
        protocol != IPPROTO_TCP)
        return 0;
    len = sizeof domain;
    if (call_errno(real::getsockopt.get(), fd, SOL_SOCKET, SO_DOMAIN, static_cast<void*>(&domain), &len) != 0)
        return 0;
    index = fdtable::track_new(fd, domain);
    if (index != 0) policy::bump(runtime::counters().sockets);
    return index;
}

void count_failure(const fdtable::Slot& s, int err) {
    runtime::counters().count_connect_error(err);
    storm::after_failure(s);
    log::at(policy::LogLevel::Debug, "connect to {} failed: {}", s.dest(), policy::errno_name(err));
}

// A matched connect under the connect policies: a source address, a deadline
// per attempt, retries on a fresh socket after a timeout, the next source
// address after EADDRNOTAVAIL.
int connect_matched(int fd, std::uint32_t index, fdtable::Slot& s, const sockaddr* addr, socklen_t len,
                    const policy::Endpoint& dest) {
    const policy::Config& config = runtime::config();
    const bool timed = config.connect_timeout_ns.has_value();
    unsigned retries_left = timed ? config.connect_retries : 0;
    connect_policy::SourceCursor cursor;
    for (bool first = true;; first = false) {
        if (!first) {
            int rr = connect_policy::replace_socket(fd, s);
            if (rr < 0) {
                log::at(policy::LogLevel::Info, "connect fd {} to {}: no fresh socket for another try ({})", fd,
                        dest, policy::errno_name(-rr));
                return -ETIMEDOUT;
            }
        }
        int r = connect_policy::prepare_source(fd, s, dest, cursor);
        connect_policy::AttemptResult a;
        if (r == 0) {
            if (timed) a = connect_policy::timed_connect(fd, index, s, addr, len, retries_left == 0);
            else a.result = call_errno(real::connect.get(), fd, addr, len);
        } else {
            a.result = r;
        }
        if (a.result == -EADDRNOTAVAIL && connect_policy::next_source(s, dest, cursor)) continue;
        if (a.timed_out && retries_left > 0) {
            --retries_left;
            policy::bump(runtime::counters().connect_retries);
            log::at(policy::LogLevel::Info, "connect fd {} to {}: no handshake within {}; retrying on a fresh port",
                    fd, dest, policy::format_duration(*config.connect_timeout_ns));
            continue;
        }
        if (a.timed_out)
            log::at(policy::LogLevel::Info, "connect fd {} to {}: no handshake within {}; ETIMEDOUT", fd, dest,
                    policy::format_duration(*config.connect_timeout_ns));
        return a.result;
    }
}

bool has_connect_policy(const policy::Config& config) {
    return config.connect_timeout_ns || !config.source_addrs.empty() || config.port_range;
}

}  // namespace

int do_connect(int fd, const sockaddr* addr, socklen_t len) {
    auto dest = policy::endpoint_from_sockaddr(addr, len);
    std::uint32_t index = dest ? slot_for_connect(fd) : 0;
    if (index == 0) {
        if (addr != nullptr && len >= sizeof(sa_family_t) && addr->sa_family == AF_UNSPEC) {
            // Dissolving the association: the socket is no longer a connection of ours.
            std::uint32_t i = fdtable::lookup(fd);
            if (i != 0 && i != fdtable::kOwned)
                fdtable::slot(i).flags.fetch_and(~(fdtable::kConnectCalled | fdtable::kConnectPending));
        }
        return call_errno(real::connect.get(), fd, addr, len);
    }

    fdtable::Slot& s = fdtable::slot(index);
    std::uint32_t flags = s.flags.load(std::memory_order_acquire);
    if ((flags & fdtable::kConnectPending) != 0 && s.dest_is(*dest)) {
        // A non-blocking client asking again how its connect went (EALREADY,
        // EISCONN): the same attempt, not a new one.
        if ((flags & fdtable::kTimedOut) != 0) {
            // tcpfix abandoned it; a real connect() now would start a new handshake.
            s.flags.fetch_and(~(fdtable::kTimedOut | fdtable::kConnectPending), std::memory_order_acq_rel);
            count_failure(s, ETIMEDOUT);
            return -ETIMEDOUT;
        }
        int r = call_errno(real::connect.get(), fd, addr, len);
        if (r != -EALREADY && r != -EINPROGRESS && r != -EINTR)
            s.flags.fetch_and(~fdtable::kConnectPending, std::memory_order_acq_rel);
        if (r < 0 && r != -EALREADY && r != -EINPROGRESS && r != -EINTR && r != -EISCONN)
            count_failure(s, -r);
        if (r == -EISCONN) {
            connect_policy::disarm(index, s);
            runtime::counters().connect_latency.record_ns(runtime::now_ns() - s.connect_start_ns);
        }
        return r;
    }

    bool matched = runtime::config().match.matches(*dest);
    s.set_dest(*dest);
    s.connect_start_ns = runtime::now_ns();
    std::uint32_t set = fdtable::kConnectCalled | (matched ? fdtable::kMatched : 0u);
    s.flags.store((flags & ~(fdtable::kMatched | fdtable::kConnectPending)) | set,
                  std::memory_order_release);
    auto& counters = runtime::counters();
    if (counters.connects.load(std::memory_order_relaxed) == 0) stats_file::start_refresher();
    policy::bump(counters.connects);
    policy::DestinationState& d = counters.destinations.get(*dest);
    policy::bump(d.connects);
    if (matched) policy::bump(counters.connects_matched);
    // A close found its ACK due and had no thread to hand the socket to:
    // start it here, never in a close() (which a signal handler may call).
    if (matched && hold::thread_wanted()) connect_policy::start_timer();

    int r = 0;
    if (matched && storm::wanted(runtime::config())) r = storm::before_connect(fd, s, d);  // restarts connect_start_ns if it waited
    if (r == 0)
        r = matched && has_connect_policy(runtime::config()) ? connect_matched(fd, index, s, addr, len, *dest)
                                                             : runtime::call_direct(real::connect.get(), fd, addr, len);
    else
        return r;  // a signal ended the pacing wait: EINTR, no handshake started
    if (r == -EINPROGRESS || r == -EINTR) {
        // EINTR: the handshake goes on in the background, as after EINPROGRESS.
        s.flags.fetch_or(fdtable::kConnectPending, std::memory_order_release);
    } else if (r < 0) {
        count_failure(s, -r);
    } else {
        runtime::counters().connect_latency.record_ns(runtime::now_ns() - s.connect_start_ns);
        log::at(policy::LogLevel::Debug, "connected fd {} to {}{}", fd, *dest,
                matched ? "" : " (not matched)");
    }
    stats_file::maybe_refresh();
    return r;
}

int do_getsockopt(int fd, int level, int name, void* value, socklen_t* len) {
    int r = call_errno(real::getsockopt.get(), fd, level, name, value, len);
    if (r != 0 || level != SOL_SOCKET || name != SO_ERROR || value == nullptr || len == nullptr ||
        *len < sizeof(int))
        return r;
    std::uint32_t index = fdtable::lookup(fd);
    if (index == 0 || index == fdtable::kOwned) return r;
    fdtable::Slot& s = fdtable::slot(index);
    if ((s.flags.load(std::memory_order_acquire) & fdtable::kConnectPending) == 0) return r;
    int err = connect_policy::translate_so_error(s, *static_cast<int*>(value));
    *static_cast<int*>(value) = err;
    if (err != 0) {
        // The attempt's outcome, as the application learns it.
        s.flags.fetch_and(~fdtable::kConnectPending, std::memory_order_acq_rel);
        connect_policy::disarm(index, s);
        count_failure(s, err);
        return r;
    }
    // 0: connected (the peer may even have closed already), or still in
    // progress for a caller asking early.
    tcp_info info{};
    socklen_t info_len = sizeof info;
    if (call_errno(real::getsockopt.get(), fd, IPPROTO_TCP, TCP_INFO, static_cast<void*>(&info), &info_len) == 0 &&
        info.tcpi_state != TCP_SYN_SENT && info.tcpi_state != TCP_SYN_RECV) {
        s.flags.fetch_and(~fdtable::kConnectPending, std::memory_order_acq_rel);
        connect_policy::disarm(index, s);
        runtime::counters().connect_latency.record_ns(runtime::now_ns() - s.connect_start_ns);
    }
    return r;
}

}  // namespace tcpfix::hooks

using namespace tcpfix;

// Returns 0, or -1 with errno exactly as the real connect() set it.
extern "C" __attribute__((visibility("default"))) int connect(int fd, const sockaddr* addr, socklen_t len) {
    if (!runtime::active()) return real::connect.get()(fd, addr, len);
    return runtime::to_c(hooks::do_connect(fd, addr, len));
}

// Returns 0, or -1 with errno exactly as the real getsockopt() set it.
extern "C" __attribute__((visibility("default"))) int getsockopt(int fd, int level, int name, void* value,
                                                                 socklen_t* len) noexcept {
    if (!runtime::active()) return real::getsockopt.get()(fd, level, name, value, len);
    return runtime::to_c(hooks::do_getsockopt(fd, level, name, value, len));
}
