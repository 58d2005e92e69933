// `tcpfix top [NAME]`: a share (TCPFIX_SHARE) seen live, per destination, or
// without NAME the shares on this host. top.cpp reads the segments and runs
// the command; top_view.cpp turns what it read into a screen or JSON.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "policy/share.hpp"
#include "tools/command.hpp"

namespace tcpfix::tools {

// Registers `tcpfix top`.
Command add_top(CLI::App& parent);

}  // namespace tcpfix::tools

namespace tcpfix::tools::top {

// Where the segments live.
inline constexpr const char* kShmDir = "/dev/shm";

// One destination between two readings: the later reading and the rates.
struct Row {
    policy::share::EntryView now;
    double connects_per_s = 0, failures_per_s = 0, throttled_ms_per_s = 0;
};

// One screen's worth: the share as read at the end of the interval.
struct View {
    std::string path;
    policy::share::Snapshot snapshot;
    double interval_s = 0;  // between the two readings the rates come from
    bool time_wait_known = false;
    std::string time_wait_error;  // why TIME_WAIT could not be read
    std::vector<Row> rows;        // busiest first
};

// Rates between two snapshots of one share (destinations matched by address).
std::vector<Row> rows_between(const policy::share::Snapshot& before,
                              const policy::share::Snapshot& after, double seconds);

// The screen: a header of totals, then a table of destinations, at most
// `max_rows` of them (0: all).
std::string render_screen(const View& v, const std::string& clock, int max_rows);
// The same as one JSON object.
std::string render_json(const View& v);

// A share found in /dev/shm (the listing without NAME).
struct Listed {
    std::string path;
    policy::share::FileName file;
    std::optional<policy::share::Snapshot> snapshot;  // nullopt when it could not be read
    std::string problem;                              // ... and why
};
std::string render_list(const std::vector<Listed>& shares);
std::string render_list_json(const std::vector<Listed>& shares);

}  // namespace tcpfix::tools::top
