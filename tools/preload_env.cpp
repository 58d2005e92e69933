#include <fmt/format.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <system_error>

#include "tools/run.hpp"

namespace tcpfix::tools {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kLibraryName = "libtcpfix.so";

// Debian's multiarch directory for this build's target, or "" when unknown.
constexpr std::string_view multiarch() {
#if defined(__x86_64__) && defined(__ILP32__)
    return "x86_64-linux-gnux32";
#elif defined(__x86_64__)
    return "x86_64-linux-gnu";
#elif defined(__aarch64__)
    return "aarch64-linux-gnu";
#elif defined(__i386__)
    return "i386-linux-gnu";
#elif defined(__arm__) && defined(__ARM_PCS_VFP)
    return "arm-linux-gnueabihf";
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return "powerpc64le-linux-gnu";
#elif defined(__s390x__)
    return "s390x-linux-gnu";
#elif defined(__riscv) && __riscv_xlen == 64
    return "riscv64-linux-gnu";
#else
    return "";
#endif
}

bool is_readable_file(const fs::path& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), R_OK) == 0;
}

bool is_executable_file(const fs::path& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
}

std::vector<std::string_view> split_preload(std::string_view list) {
    std::vector<std::string_view> out;
    while (!list.empty()) {
        auto cut = list.find_first_of(" :");
        if (cut != 0) out.push_back(list.substr(0, cut));
        if (cut == std::string_view::npos) break;
        list.remove_prefix(cut + 1);
    }
    return out;
}

// True when `entry` names the library we prepend or another copy of it:
// two copies would each apply the policy, once on top of the other.
bool same_library(std::string_view entry, std::string_view library) {
    if (entry == library || fs::path(entry).filename() == kLibraryName) return true;
    std::error_code ec;
    auto resolved = fs::canonical(fs::path(entry), ec);
    return !ec && resolved == fs::path(library);
}

}  // namespace

std::string find_library() {
    std::error_code ec;
    auto exe = fs::read_symlink("/proc/self/exe", ec);
    if (ec) throw std::system_error(ec, "readlink /proc/self/exe");
    auto dir = exe.parent_path();
    std::vector<fs::path> candidates = {dir / kLibraryName, dir / "../lib/tcpfix" / kLibraryName};
    if (!multiarch().empty()) candidates.push_back(dir / "../lib" / multiarch() / kLibraryName);
    candidates.push_back(dir / "../lib64" / kLibraryName);  // the .rpm's layout
    candidates.push_back(dir / "../lib" / kLibraryName);
    std::string tried;
    for (const auto& c : candidates) {
        if (is_readable_file(c)) return fs::canonical(c).string();
        tried += fmt::format("{}{}", tried.empty() ? "" : ", ", c.lexically_normal().string());
    }
    throw std::runtime_error(fmt::format(
        "cannot find {} (looked at {}); give its path with --library PATH", kLibraryName, tried));
}

std::string prepend_preload(std::string_view library, std::string_view existing) {
    std::string out(library);
    for (auto entry : split_preload(existing)) {
        if (same_library(entry, library)) continue;
        out += ':';
        out += entry;
    }
    return out;
}

std::optional<std::string> find_in_path(const std::string& command) {
    if (command.find('/') != std::string::npos) {
        // A path is run as given; if it is not executable, execvp says why.
        struct stat st {};
        if (::stat(command.c_str(), &st) == 0) return command;
        return std::nullopt;
    }
    const char* path = std::getenv("PATH");
    std::string_view dirs = path != nullptr ? path : "/bin:/usr/bin";  // execvp's default
    while (true) {
        auto cut = dirs.find(':');
        auto dir = dirs.substr(0, cut);
        // An empty PATH entry means the current directory, as execvp reads it.
        auto candidate = (dir.empty() ? fs::path(".") : fs::path(dir)) / command;
        if (is_executable_file(candidate)) return candidate.string();
        if (cut == std::string_view::npos) return std::nullopt;
        dirs.remove_prefix(cut + 1);
    }
}

}  // namespace tcpfix::tools
