// `tcpfix ab`: one command run under two sets of variables, alternately, and
// the two compared. ab.cpp runs the experiment; ab_report.cpp prints it
// (table, JSON) and plots it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tools/command.hpp"

namespace tcpfix::tools {

// Registers `tcpfix ab`.
Command add_ab(CLI::App& parent);

namespace ab {

// One arm: its name ("a", "b") and the variables the user gave it.
struct Arm {
    std::string name;
    std::string spec;  // as given: "TCPFIX_CLOSE=rst TCPFIX_LOG=info"
    std::vector<std::pair<std::string, std::string>> variables;
    bool disabled = false;  // TCPFIX_DISABLE=1: the library writes no counters
};

// What one run of the command did.
struct Run {
    std::string arm;
    int index = 0;  // 1-based, per arm
    double wall_s = 0;
    int exit_status = 0;  // 128 + N when killed by signal N, as a shell reports it
    bool timed_out = false;
    int processes = 0;  // stats files written (one per process that loaded the library)
    std::map<std::string, double> counters;        // numeric stats fields, summed
    std::map<std::string, double> connect_errors;  // by errno name, summed
    int time_wait_left = 0;  // TIME_WAIT entries present after the run that were not before
};

struct Experiment {
    std::vector<std::string> command;
    Arm arms[2];
    int runs_per_arm = 0;
    std::vector<Run> runs;  // in the order they ran: a1 b1 a2 b2 ...
    bool interrupted = false;
};

// The median of `values` (the mean of the middle two for an even count); 0 when empty.
double median(std::vector<double> values);

// Every counter name worth a row: the fixed ones first, then any other
// that is non-zero in some run.
std::vector<std::string> counter_rows(const Experiment& e);
std::vector<std::string> error_rows(const Experiment& e);

void print_table(const Experiment& e);
void print_json(const Experiment& e);
std::string to_json(const Experiment& e);

// Writes a PNG with /usr/bin/python3 and matplotlib; throws std::runtime_error
// with the reason when it cannot.
void plot(const Experiment& e, const std::string& png_path);

// Throws std::runtime_error (naming the package to install) when
// /usr/bin/python3 cannot import matplotlib.
void check_plotting();

}  // namespace ab
}  // namespace tcpfix::tools
