// `tcpfix attach` in a build configured with -DTCPFIX_ATTACH=OFF: the
// subcommand exists and says why it cannot run.
#include <fmt/format.h>

#include "tools/command.hpp"

namespace tcpfix::tools {

Command add_attach(CLI::App& parent) {
    auto* app = parent.add_subcommand("attach", "(not built: configured with -DTCPFIX_ATTACH=OFF)");
    app->allow_extras();
    app->prefix_command();
    return {app, [] {
                fmt::print(stderr,
                           "tcpfix: attach: this tcpfix was built without it "
                           "(-DTCPFIX_ATTACH=OFF: no clang, bpftool, libbpf or kernel BTF)\n");
                return kExitFailure;
            }};
}

}  // namespace tcpfix::tools
