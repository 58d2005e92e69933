// The stress modes; each runs in the worker process the supervisor started
// and returns its exit status (0 = every check passed).
#pragma once

#include <string>
#include <vector>

namespace stress {

// threads [--threads N] [--cycles N-per-thread | --total-cycles N]; soak is the
// same with 4 threads, 20,000 cycles and a flat-memory check.
int run_threads(const std::vector<std::string>& args, bool soak);

// fork [--forks N] [--held N]: a multi-threaded parent forking while its
// threads connect and close; children connect, close everything, exec.
int run_fork(const std::vector<std::string>& args);

// The program a fork-mode child execs: connects once under the inherited preload.
int run_exec_child(const std::vector<std::string>& args);

// signals --scenario timed|throttled|scan
int run_signals(const std::vector<std::string>& args);

// nothing-lost [--trials N] [--concurrency N] [--max-bytes N]
int run_nothing_lost(const std::vector<std::string>& args);

}  // namespace stress
