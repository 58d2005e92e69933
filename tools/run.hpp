// The pieces of `tcpfix run` that touch the file system: finding the library,
// merging LD_PRELOAD, and noticing targets no preload can reach.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tcpfix::tools {

// The absolute path of libtcpfix.so, looked for beside this executable, then
// in ../lib/tcpfix, ../lib/<multiarch> and ../lib relative to it (never the
// current directory). Throws std::runtime_error listing where it looked.
std::string find_library();

// LD_PRELOAD with `library` first and any other copy of it removed; the
// existing entries keep their order. Entries are separated by spaces or
// colons, as the dynamic loader reads them.
std::string prepend_preload(std::string_view library, std::string_view existing);

// The file execvp would run for `command` (a path with a '/' as given, if it
// exists), or nullopt when there is none.
std::optional<std::string> find_in_path(const std::string& command);

// Why LD_PRELOAD cannot reach `path` (set-user-ID, set-group-ID, file
// capabilities, statically linked), one sentence each; empty when it can.
std::vector<std::string> preload_obstacles(const std::string& path);

// Why the dynamic loader would refuse to start `path` with `library`
// preloaded — a musl program, or a glibc older than the library's symbol
// versions need — in one sentence; nullopt when it would start (or that
// cannot be told). Follows "#!" scripts to their interpreter.
std::optional<std::string> load_refusal(const std::string& path, const std::string& library);

}  // namespace tcpfix::tools
