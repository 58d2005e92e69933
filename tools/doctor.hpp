// `tcpfix doctor`: what it reads (kernel settings, this namespace's TCP
// sockets, a program's ELF files), what it concludes (findings naming the
// incident and the cure), and the thresholds it concludes with.
// doctor_host.cpp gathers and judges the host, doctor_binary.cpp a program,
// doctor.cpp parses the command line and prints.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "policy/net.hpp"
#include "tools/command.hpp"
#include "tools/diag.hpp"

namespace tcpfix::tools {

// Registers `tcpfix doctor`.
Command add_doctor(CLI::App& parent);

}  // namespace tcpfix::tools

namespace tcpfix::tools::doctor {

// Linux keeps a TIME_WAIT entry for TCP_TIMEWAIT_LEN, a compile-time 60 s.
// tcp_fin_timeout is the FIN_WAIT2 timeout: it does not shorten TIME_WAIT.
inline constexpr int kTimeWaitSeconds = 60;

// Thresholds of the findings (documented in `tcpfix doctor --help`).
inline constexpr int kMinHotTimeWait = 10;         // TIME_WAIT entries toward one destination ...
inline constexpr double kHotTimeWaitShare = 0.25;  // ... holding this share of its ports
inline constexpr double kCriticalShare = 0.80;     // a destination's ports this full: critical
inline constexpr int kMinCloseWaitLeak = 5;        // CLOSE_WAIT sockets held by one process
inline constexpr int kMinSynSentPileUp = 5;        // SYN_SENT sockets toward one destination
inline constexpr double kRangeNearlyFull = 0.80;   // share of the range's ports in use
inline constexpr int kSynRetriesHigh = 5;          // tcp_syn_retries at or above: a long hang

// The kernel's settings; -1 (or an empty range) when a file cannot be read.
struct Settings {
    int port_lo = -1, port_hi = -1;  // net.ipv4.ip_local_port_range
    int reserved_in_range = 0;       // net.ipv4.ip_local_reserved_ports inside it
    int tw_reuse = -1;               // net.ipv4.tcp_tw_reuse
    int timestamps = -1;             // net.ipv4.tcp_timestamps (tw_reuse needs them)
    int fin_timeout_s = -1;          // net.ipv4.tcp_fin_timeout
    long max_tw_buckets = -1;        // net.ipv4.tcp_max_tw_buckets
    int syn_retries = -1;            // net.ipv4.tcp_syn_retries
    int somaxconn = -1;              // net.core.somaxconn

    int range_size() const { return port_lo < 0 ? 0 : port_hi - port_lo + 1; }
    // Ports connect() may pick: the range minus the reserved ones.
    int usable_ports() const { return std::max(range_size() - reserved_in_range, 0); }
    bool parity_ok() const { return port_lo >= 0 && (port_lo % 2) != (port_hi % 2); }
    bool in_range(std::uint16_t port) const { return port >= port_lo && port <= port_hi; }
};

Settings read_settings();

// A process and how many of the sockets in question it holds.
struct ProcessCount {
    int pid = 0;
    std::string command;
    int sockets = 0;
};

// The connections this host initiated toward one destination.
struct Destination {
    policy::Endpoint endpoint;
    std::string text;  // "127.0.0.1:5432"
    std::array<int, diag::kStateCount> states{};
    int total = 0;
    int sources = 0;         // distinct local addresses used toward it
    int ports_in_range = 0;  // its sockets whose local port lies in the ephemeral range
    int capacity = 0;        // sources x usable ports: sockets it can have at once
    bool tw_reuse = false;   // tcp_tw_reuse lets connect() reuse its TIME_WAIT ports after 1 s
    double sustainable_per_s = 0;         // new connections a second, sustained
    std::uint64_t close_wait_unread = 0;  // bytes left unread in its CLOSE_WAIT sockets
    std::vector<ProcessCount> processes;  // owners of its live sockets, most first

    int count(unsigned state) const { return states[state]; }
    double share() const { return capacity > 0 ? double(ports_in_range) / capacity : 0; }
};

// CLOSE_WAIT sockets held by one process (or by nobody visible: pid 0).
struct CloseWaitHolder {
    int pid = 0;
    std::string command;
    bool outbound = true;  // connections it initiated (tcpfix can reap those)
    int sockets = 0;
    std::uint64_t unread = 0;
    std::vector<std::pair<std::string, int>> destinations;  // most first
};

// A listener whose accept queue is full: further SYNs are dropped.
struct FullListener {
    std::string local;
    std::uint32_t queued = 0, backlog = 0;
};

struct Finding {
    std::string incident;  // "000", "001", "002", "003", or "" when none of the four
    std::string severity;  // "info", "warn", "critical"
    std::string kind;      // "time_wait", "close_wait", "syn_sent", "accept_queue", "port_range"
    std::string subject;   // the destination, process or setting it is about
    std::string text;      // plain sentences: what is seen, what it means, the cure
    std::vector<std::string> cures;  // TCPFIX_* settings, e.g. "TCPFIX_CLOSE=rst"
};

struct HostReport {
    Settings settings;
    int total = 0;
    std::array<int, diag::kStateCount> states{};
    int ports_in_use = 0;                   // distinct local ports inside the range, any socket
    std::vector<Destination> destinations;  // outbound, most sockets first
    int inbound_time_wait = 0;              // TIME_WAIT of accepted connections
    std::vector<CloseWaitHolder> close_wait;
    std::vector<FullListener> full_listeners;
    bool owners_complete = true;       // false when some socket's owner could not be seen
    std::vector<Destination> targets;  // HOST:PORT's addresses, when given
    std::vector<Finding> findings;
};

// Reads the settings and the sockets and judges them. `targets`: the
// addresses of HOST:PORT (may be empty).
HostReport examine_host(const std::vector<policy::Endpoint>& targets);

// What keeps LD_PRELOAD from a program.
struct BinaryReport {
    std::string path;                  // as resolved (PATH searched)
    std::vector<std::string> checked;  // ELF objects examined, the program first
    std::vector<Finding> findings;     // kind "static", "secure", "deepbind", "missing_library"
    std::vector<std::string> notes;    // what was looked at and could not be judged
};

// Throws UsageError when `path` does not exist.
BinaryReport examine_binary(const std::string& path);

}  // namespace tcpfix::tools::doctor
