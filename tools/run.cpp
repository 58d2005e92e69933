// `tcpfix run`: the table of TCPFIX_* variables turned into options, the
// library preloaded, CMD exec'd. One grammar: every value is checked by the
// same policy::check_variable the library uses, before anything runs.
#include "tools/run.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <variant>

#include "policy/config.hpp"
#include "tools/command.hpp"
#include "tools/fd.hpp"
#include "tools/policy_options.hpp"

namespace tcpfix::tools {
namespace {

constexpr int kExitNotFound = 127;    // as a shell reports a missing command
constexpr int kExitCannotExec = 126;  // ... and one it found but could not run

struct RunOptions {
    PolicyOptions policy;  // one option per policy::variables() entry
    std::string library;
    std::vector<std::string> command;
};

// The TCPFIX_* variables the options asked for, checked. Returns the first
// refusal line (the library's own wording) instead when a value is bad.
std::variant<std::vector<std::pair<std::string, std::string>>, std::string> chosen_variables(
    const RunOptions& o) {
    auto out = o.policy.given();
    for (const auto& [name, value] : out)
        if (auto refusal = policy::check_variable(name, value)) return *refusal;
    return out;
}

std::string library_path(const RunOptions& o) {
    auto path = o.library.empty() ? find_library() : std::filesystem::canonical(o.library).string();
    if (path.find_first_of(" :") != std::string::npos)
        throw std::runtime_error(
            fmt::format("{}: LD_PRELOAD cannot carry a path containing a space or a colon", path));
    return path;
}

int run_command(const RunOptions& o) {
    auto command = o.command;
    auto chosen = chosen_variables(o);
    if (auto* refusal = std::get_if<std::string>(&chosen)) {
        fmt::print(stderr, "{}\n", *refusal);
        return kExitUsage;
    }
    if (command.empty()) throw UsageError("run: no command given (tcpfix run [OPTIONS] -- CMD)");
    auto library = library_path(o);

    for (const auto& [name, value] : std::get<0>(chosen)) {
        if (::setenv(name.c_str(), value.c_str(), 1) != 0) throw_errno("setenv");
    }
    const char* existing = std::getenv("LD_PRELOAD");
    auto preload = prepend_preload(library, existing != nullptr ? existing : "");
    if (::setenv("LD_PRELOAD", preload.c_str(), 1) != 0) throw_errno("setenv");

    auto target = find_in_path(command[0]);
    if (!target) {
        fmt::print(stderr, "tcpfix: {}: command not found\n", command[0]);
        return kExitNotFound;
    }
    for (const auto& why : preload_obstacles(*target))
        fmt::print(stderr,
                   "tcpfix: warning: {}; the preload's policies will not apply to it (`tcpfix "
                   "attach` can carry some, from the kernel)\n",
                   why);
    if (auto why = load_refusal(*target, library)) {
        fmt::print(stderr, "tcpfix: {}; not starting it\n", *why);
        return kExitCannotExec;
    }

    std::vector<char*> argv;
    for (auto& arg : command) argv.push_back(arg.data());
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    int err = errno;
    fmt::print(stderr, "tcpfix: cannot execute {}: {}\n", command[0], std::strerror(err));
    return err == ENOENT ? kExitNotFound : kExitCannotExec;
}

}  // namespace

Command add_run(CLI::App& parent) {
    auto o = std::make_shared<RunOptions>();
    auto* app = parent.add_subcommand(
        "run", "Run CMD with libtcpfix.so preloaded and the options as TCPFIX_* variables");
    o->policy.add_to(*app);
    app->add_option("--library", o->library,
                    "the libtcpfix.so to preload (default: beside this executable, or in "
                    "../lib/tcpfix, ../lib/<multiarch>, ../lib)")
        ->check(CLI::ExistingFile)
        ->type_name("PATH");
    app->add_option("CMD", o->command, "the command and its arguments");
    // The first positional argument starts the command: its options stay its own.
    app->positionals_at_end();
    app->footer(
        "Usage: tcpfix run [OPTIONS] [--] CMD [ARGS...]\n"
        "Everything after the first argument that is not an option (or after --) is the\n"
        "command. Each option sets its TCPFIX_* variable, checked as the library checks it:\n"
        "a bad value is refused (exit 2) before CMD runs. libtcpfix.so is prepended to\n"
        "LD_PRELOAD (kept once), then CMD is exec'd: its exit status is tcpfix's.\n"
        "tcpfix warns when CMD is set-user-ID, set-group-ID, has file capabilities or is\n"
        "statically linked: LD_PRELOAD cannot reach such programs (`tcpfix attach` can\n"
        "carry some policies to them from the kernel). It does not start CMD\n"
        "when the loader would refuse it with the library (a musl program, a glibc older\n"
        "than the library needs) and says so.\n"
        "Exit status when CMD does not start: 2 bad option, 3 library not found,\n"
        "126 CMD not executable or cannot load the library, 127 CMD not found.");
    return {app, [o] { return run_command(*o); }};
}

}  // namespace tcpfix::tools
