// `tcpfix`: parses the command line with CLI11, runs the chosen subcommand,
// and turns every error into one line "tcpfix: ..." and an exit status.
#include <fmt/format.h>

#include <cstdio>
#include <exception>

#include "tools/ab.hpp"
#include "tools/command.hpp"
#include "tools/doctor.hpp"
#include "tools/top.hpp"

#ifndef TCPFIX_VERSION
#define TCPFIX_VERSION "0.1.0"  // keep in step with project(VERSION) in CMakeLists.txt
#endif

namespace tcpfix::tools {
namespace {

// The usage-error status of the subcommand being parsed (probe's differs).
int usage_status(const std::vector<Command>& commands) {
    for (const auto& c : commands)
        if (c.app->parsed()) return c.usage_status;
    return kExitUsage;
}

int tcpfix_main(int argc, char** argv) {
    CLI::App app{"tcpfix: contain TCP connection pathologies in unmodified programs", "tcpfix"};
    app.set_version_flag("--version", "tcpfix " TCPFIX_VERSION);
    app.require_subcommand(1);
    std::vector<Command> commands = {
        add_run(app),
        add_probe(app),
        add_churn(app),
        add_doctor(app),
        add_ab(app),
        add_attach(app),
        add_top(app),
    };
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
        fmt::print(stderr, "tcpfix: {}\nRun with --help for more information.\n", e.what());
        return usage_status(commands);
    }
    for (auto& c : commands) {
        if (!c.app->parsed()) continue;
        try {
            return c.action();
        } catch (const UsageError& e) {
            fmt::print(stderr, "tcpfix: {}\n", e.what());
            return c.usage_status;
        }
    }
    return kExitUsage;  // unreachable: require_subcommand(1)
}

}  // namespace
}  // namespace tcpfix::tools

int main(int argc, char** argv) {
    try {
        return tcpfix::tools::tcpfix_main(argc, argv);
    } catch (const std::exception& e) {
        std::fflush(stdout);
        fmt::print(stderr, "tcpfix: {}\n", e.what());
        return tcpfix::tools::kExitFailure;
    }
}
