// `tcpfix churn`: a bounded short-connection load generator. Connect (with a
// client-side budget), optionally write a request and read the reply, close;
// then an honest account: every attempt is ok or a named error.
#include "tools/churn.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>

#include <thread>

#include "policy/config.hpp"
#include "policy/stats.hpp"
#include "tools/command.hpp"
#include "tools/interrupt.hpp"

namespace tcpfix::tools {
namespace {

constexpr std::int64_t kHardCapNs = 3600LL * 1'000'000'000;  // one hour, whatever was asked

struct Report {
    const ChurnOptions& o;
    const ChurnPlan& plan;
    const ChurnTotals& t;
    double wall_s;
    bool interrupted;

    double per_s(std::uint64_t n) const { return wall_s > 0 ? static_cast<double>(n) / wall_s : 0; }
    double ms(std::int64_t ns) const { return static_cast<double>(ns) / 1e6; }
};

void print_text(const Report& r) {
    const auto& [o, plan, t, wall_s, interrupted] = r;
    auto address_host = plan.to.text.substr(0, plan.to.text.rfind(':'));
    auto limit = policy::format_duration(plan.end_ns - plan.start_ns);
    if (o.count > 0)
        limit = fmt::format("{} attempt{} or {}", o.count, o.count == 1 ? "" : "s", limit);
    fmt::print(
        "churn {}{}: {}, rate {}, concurrency {}, connect budget {}, close {}\n", plan.to.text,
        address_host == o.host || address_host == "[" + o.host + "]" ? ""
                                                                     : fmt::format(" ({})", o.host),
        limit, o.rate_per_s > 0 ? fmt::format("{:g}/s", o.rate_per_s) : "unlimited", o.concurrency,
        policy::format_duration(o.connect_timeout_ns), o.close_rst ? "rst" : "graceful");
    fmt::print("attempts         {} ({:.1f}/s)\n", t.attempts, r.per_s(t.attempts));
    fmt::print("ok               {}\n", t.ok);
    fmt::print("connects ok      {} ({:.1f}/s)\n", t.connects_ok, r.per_s(t.connects_ok));
    std::string errors;
    for (const auto& [name, n] : t.errors)
        errors += fmt::format("{}{} {}", errors.empty() ? "" : ", ", name, n);
    fmt::print("errors           {}\n", errors.empty() ? "none" : errors);
    if (t.latency.count() > 0)
        fmt::print("connect latency  p50 {:.3f} ms, p99 {:.3f} ms, max {:.3f} ms\n",
                   r.ms(t.latency.percentile(50)), r.ms(t.latency.percentile(99)),
                   r.ms(t.latency.max()));
    else
        fmt::print("connect latency  none (no connect completed)\n");
    if (!o.request.empty() || o.read)
        fmt::print("bytes            {} sent, {} received, {} replies\n", t.bytes_sent,
                   t.bytes_received, t.replies);
    fmt::print("wall time        {:.3f} s{}\n", wall_s, interrupted ? " (interrupted)" : "");
}

void print_json(const Report& r) {
    const auto& [o, plan, t, wall_s, interrupted] = r;
    std::string errors;
    for (const auto& [name, n] : t.errors)
        errors += fmt::format("{}{}:{}", errors.empty() ? "" : ",", policy::json_quote(name), n);
    std::string latency = "{\"min\":null,\"p50\":null,\"p99\":null,\"max\":null}";
    if (t.latency.count() > 0)
        latency = fmt::format("{{\"min\":{:.3f},\"p50\":{:.3f},\"p99\":{:.3f},\"max\":{:.3f}}}",
                              r.ms(t.latency.min()), r.ms(t.latency.percentile(50)),
                              r.ms(t.latency.percentile(99)), r.ms(t.latency.max()));
    fmt::print(
        "{{\"host\":{},\"port\":{},\"address\":{},\"rate_per_s\":{},\"concurrency\":{},"
        "\"duration_ms\":{:.3f},\"count\":{},\"connect_timeout_ms\":{:.3f},\"close\":\"{}\","
        "\"request_bytes\":{},\"read\":{},\"attempts\":{},\"ok\":{},\"connects_ok\":{},"
        "\"attempts_per_s\":{:.1f},\"connects_per_s\":{:.1f},\"errors\":{{{}}},\"latency_ms\":{},"
        "\"replies\":{},\"bytes_sent\":{},\"bytes_received\":{},\"wall_s\":{:.3f},"
        "\"interrupted\":{}}}\n",
        policy::json_quote(o.host), o.port, policy::json_quote(plan.to.text),
        o.rate_per_s > 0 ? fmt::format("{:g}", o.rate_per_s) : "null", o.concurrency,
        r.ms(plan.end_ns - plan.start_ns), o.count > 0 ? std::to_string(o.count) : "null",
        r.ms(o.connect_timeout_ns), o.close_rst ? "rst" : "graceful", o.request.size(), o.read,
        t.attempts, t.ok, t.connects_ok, r.per_s(t.attempts), r.per_s(t.connects_ok), errors,
        latency, t.replies, t.bytes_sent, t.bytes_received, wall_s, interrupted);
}

// Starts the workers, waits for them or for a signal, and sums what they saw.
ChurnTotals run_workers(const ChurnOptions& o, ChurnPlan& plan, const Interrupt& interrupt) {
    Fd done(::eventfd(0, EFD_CLOEXEC));
    if (!done) throw_errno("eventfd");
    std::vector<ChurnTotals> totals(static_cast<std::size_t>(o.concurrency));
    std::atomic<int> running{o.concurrency};
    {
        std::vector<std::jthread> workers;
        auto work = [&](ChurnTotals& t) {
            churn_worker(o, plan, t);
            if (running.fetch_sub(1) == 1) (void)::eventfd_write(done.get(), 1);
        };
        try {
            for (auto& t : totals) workers.emplace_back(work, std::ref(t));
        } catch (...) {
            plan.stop = true;  // the jthreads already started join as we unwind
            throw;
        }
        pollfd fds[2] = {{done.get(), POLLIN, 0}, {interrupt.fd(), POLLIN, 0}};
        while (::poll(fds, 2, -1) < 0) {
            if (errno != EINTR) throw_errno("poll");
        }
        if (fds[1].revents != 0) plan.stop = true;
    }
    ChurnTotals sum;
    for (const auto& t : totals) sum.merge(t);
    return sum;
}

int run_churn(const ChurnOptions& o) {
    int family = o.ipv4 ? AF_INET : o.ipv6 ? AF_INET6 : AF_UNSPEC;
    ChurnPlan plan;
    plan.to = resolve(o.host, static_cast<std::uint16_t>(o.port), family).front();
    Interrupt interrupt;
    plan.stop_fd = interrupt.fd();
    plan.start_ns = mono_ns();
    plan.end_ns = plan.start_ns + std::min(o.duration_ns, kHardCapNs);
    auto totals = run_workers(o, plan, interrupt);
    Report report{o, plan, totals, static_cast<double>(mono_ns() - plan.start_ns) / 1e9,
                  interrupt.pending()};
    if (o.json)
        print_json(report);
    else
        print_text(report);
    return totals.attempts > 0 && totals.ok == totals.attempts ? 0 : 1;
}

}  // namespace

Command add_churn(CLI::App& parent) {
    auto o = std::make_shared<ChurnOptions>();
    auto* app = parent.add_subcommand(
        "churn", "Short-connection load generator: connect, optional request, close; report");
    app->add_option("HOST", o->host, "host name or numeric IPv4/IPv6 address")->required();
    app->add_option("PORT", o->port, "TCP port")->required()->check(CLI::Range(1, 65535));
    app->add_option_function<std::string>(
           "--rate",
           [o](const std::string& text) {
               auto rate = parse_churn_rate(text);
               if (!rate)
                   throw CLI::ValidationError(
                       "--rate", fmt::format("\"{}\": expected a rate such as 500/s, 30/min or "
                                             "0 (as fast as possible)",
                                             text));
               o->rate_per_s = *rate;
           },
           "connects a second, on an absolute schedule: N/s, N/min (a bare N is per second); "
           "0 is as fast as possible")
        ->type_name("RATE")
        ->default_str("0");
    auto* duration = add_duration(*app, "--duration", o->duration_ns,
                                  "no attempt starts later than this (at most 3600s)", "5s");
    auto* count = app->add_option("--count", o->count, "stop after N attempts")
                      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1'000'000'000}));
    app->add_option("--concurrency", o->concurrency, "threads, each with one connection at a time")
        ->default_str("1")
        ->check(CLI::Range(1, 1024));
    app->add_option_function<std::string>(
           "--request",
           [o](const std::string& text) {
               auto bytes = unescape(text);
               if (!bytes)
                   throw CLI::ValidationError(
                       "--request", fmt::format("\"{}\": bad escape (use \\r \\n \\t \\0 \\\\ "
                                                "\\xHH)",
                                                text));
               o->request = *bytes;
           },
           "bytes to write after connect; \\r \\n \\t \\0 \\\\ \\xHH are escapes")
        ->type_name("TEXT");
    app->add_flag("--read", o->read, "read the reply until EOF or for 1 s before closing");
    add_duration(*app, "--connect-timeout", o->connect_timeout_ns,
                 "client-side connect budget; an attempt past it is abandoned as ETIMEDOUT", "1s");
    app->add_option_function<std::string>(
           "--close", [o](const std::string& mode) { o->close_rst = mode == "rst"; },
           "graceful (FIN: the side that closes first keeps TIME_WAIT) or rst (SO_LINGER {1,0}: "
           "RST, no TIME_WAIT)")
        ->check(CLI::IsMember({"graceful", "rst"}))
        ->type_name("MODE")
        ->default_str("graceful");
    app->add_flag("--json", o->json, "print one JSON object instead of the text report");
    auto* v4 = app->add_flag("-4,--ipv4", o->ipv4, "use IPv4 addresses only");
    app->add_flag("-6,--ipv6", o->ipv6, "use IPv6 addresses only")->excludes(v4);
    app->footer(
        "The first address HOST resolves to is used. Attempt N is due at start + N/rate (no\n"
        "drift); each thread takes the next due attempt. Every attempt is counted once: ok,\n"
        "or an error by errno name (ETIMEDOUT: the connect budget ran out; EINTR: cut short\n"
        "by SIGINT/SIGTERM, which stop the run and print the report). Errors after the\n"
        "handshake carry their phase (write:EPIPE, read:ECONNRESET). Latency is of completed\n"
        "handshakes (p50/p99 within 1.6%). Always bounded: --duration defaults to 5s, or to\n"
        "the one-hour cap (3600s) when only --count is given.\n"
        "\n"
        "Exit status: 0 every attempt ok, 1 some attempt failed (or none was made),\n"
        "2 usage error, 3 other error.");
    app->final_callback([o, duration, count] {
        if (duration->count() == 0 && count->count() > 0) o->duration_ns = kHardCapNs;
    });
    return {app, [o] { return run_churn(*o); }};
}

}  // namespace tcpfix::tools
