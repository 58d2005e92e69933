// What keeps LD_PRELOAD away from a program: the loader's secure mode
// (set-user-ID, set-group-ID, file capabilities) and having no loader at all
// (a static binary: no PT_INTERP program header, as Go builds by default).
#include <elf.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>

#include "tools/fd.hpp"
#include "tools/run.hpp"

namespace tcpfix::tools {
namespace {

// Reads exactly `len` bytes at `offset`; false on a short or failed read.
bool read_at(int fd, void* buf, std::size_t len, off_t offset) {
    return ::pread(fd, buf, len, offset) == static_cast<ssize_t>(len);
}

// True/false for an ELF file of this machine's byte order with/without
// PT_INTERP; nullopt when it is not such a file (a script, a foreign ELF).
template <typename Ehdr, typename Phdr>
std::optional<bool> has_interpreter(int fd) {
    Ehdr eh{};
    if (!read_at(fd, &eh, sizeof eh, 0) || eh.e_phentsize != sizeof(Phdr)) return std::nullopt;
    for (unsigned i = 0; i < eh.e_phnum; ++i) {
        Phdr ph{};
        if (!read_at(fd, &ph, sizeof ph, static_cast<off_t>(eh.e_phoff + i * sizeof ph)))
            return std::nullopt;
        if (ph.p_type == PT_INTERP) return true;
    }
    return false;
}

std::optional<bool> elf_is_dynamic(const std::string& path) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return std::nullopt;
    unsigned char ident[EI_NIDENT] = {};
    if (!read_at(fd.get(), ident, sizeof ident, 0) || std::memcmp(ident, ELFMAG, SELFMAG) != 0)
        return std::nullopt;
    constexpr unsigned char kNative =
        __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ELFDATA2LSB : ELFDATA2MSB;
    if (ident[EI_DATA] != kNative) return std::nullopt;
    if (ident[EI_CLASS] == ELFCLASS64) return has_interpreter<Elf64_Ehdr, Elf64_Phdr>(fd.get());
    if (ident[EI_CLASS] == ELFCLASS32) return has_interpreter<Elf32_Ehdr, Elf32_Phdr>(fd.get());
    return std::nullopt;
}

// The interpreter of a "#!" script, or "" when `path` is not one.
std::string script_interpreter(const std::string& path) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    char line[256] = {};
    if (!fd || ::pread(fd.get(), line, sizeof line - 1, 0) < 3) return "";
    if (line[0] != '#' || line[1] != '!') return "";
    std::string_view rest(line + 2);
    auto begin = rest.find_first_not_of(" \t");
    if (begin == std::string_view::npos) return "";
    rest.remove_prefix(begin);
    return std::string(rest.substr(0, rest.find_first_of(" \t\n")));
}

std::vector<std::string> obstacles(const std::string& path, int depth) {
    std::vector<std::string> why;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return why;
    if ((st.st_mode & S_ISUID) != 0)
        why.push_back(
            fmt::format("{} is set-user-ID (owner uid {}): the loader ignores LD_PRELOAD when that "
                        "raises its privileges",
                        path, st.st_uid));
    if ((st.st_mode & S_ISGID) != 0 && (st.st_mode & S_IXGRP) != 0)
        why.push_back(fmt::format(
            "{} is set-group-ID (group gid {}): the loader ignores LD_PRELOAD when that "
            "raises its privileges",
            path, st.st_gid));
    if (::getxattr(path.c_str(), "security.capability", nullptr, 0) > 0)
        why.push_back(fmt::format(
            "{} has file capabilities: the loader runs it in secure mode and ignores LD_PRELOAD",
            path));
    if (auto dynamic = elf_is_dynamic(path); dynamic && !*dynamic)
        why.push_back(fmt::format(
            "{} is statically linked (no ELF interpreter): LD_PRELOAD cannot reach it", path));
    if (auto interpreter = script_interpreter(path); !interpreter.empty()) {
        if (depth >= 4) return why;  // the kernel allows only a few levels of "#!"
        for (auto& reason : obstacles(interpreter, depth + 1))
            why.push_back(fmt::format("{} (the interpreter of {})", reason, path));
    }
    return why;
}

}  // namespace

std::vector<std::string> preload_obstacles(const std::string& path) {
    return obstacles(path, 0);
}

}  // namespace tcpfix::tools
