// What keeps LD_PRELOAD away from a program: the loader's secure mode
// (set-user-ID, set-group-ID, file capabilities) and having no loader at all
// (a static binary: no PT_INTERP program header, as Go builds by default);
// and what would make the loader refuse to start it with the library: a
// loader that is not glibc's (musl), or a glibc older than the library needs.
#include <elf.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

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

// The ELF class (ELFCLASS64/32) of a file of this machine's byte order, or 0.
int native_elf_class(int fd) {
    unsigned char ident[EI_NIDENT] = {};
    if (!read_at(fd, ident, sizeof ident, 0) || std::memcmp(ident, ELFMAG, SELFMAG) != 0) return 0;
    constexpr unsigned char kNative =
        __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ELFDATA2LSB : ELFDATA2MSB;
    return ident[EI_DATA] == kNative ? ident[EI_CLASS] : 0;
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

// The PT_INTERP path of a 64-bit ELF file, or "" (static, not ELF, 32-bit).
std::string elf_interpreter(const std::string& path) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd || native_elf_class(fd.get()) != ELFCLASS64) return "";
    Elf64_Ehdr eh{};
    if (!read_at(fd.get(), &eh, sizeof eh, 0) || eh.e_phentsize != sizeof(Elf64_Phdr)) return "";
    for (unsigned i = 0; i < eh.e_phnum; ++i) {
        Elf64_Phdr ph{};
        if (!read_at(fd.get(), &ph, sizeof ph, static_cast<off_t>(eh.e_phoff + i * sizeof ph))) return "";
        if (ph.p_type != PT_INTERP || ph.p_filesz == 0 || ph.p_filesz > 4096) continue;
        std::string interp(ph.p_filesz, '\0');
        if (!read_at(fd.get(), interp.data(), interp.size(), static_cast<off_t>(ph.p_offset))) return "";
        return interp.substr(0, interp.find('\0'));
    }
    return "";
}

// Every version name of a 64-bit ELF object's version definitions
// (SHT_GNU_verdef: what a libc provides) or version needs (SHT_GNU_verneed:
// what an object asks for), read through its section headers.
std::vector<std::string> elf_versions(const std::string& path, bool needs) {
    std::vector<std::string> out;
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd || native_elf_class(fd.get()) != ELFCLASS64) return out;
    Elf64_Ehdr eh{};
    if (!read_at(fd.get(), &eh, sizeof eh, 0) || eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shnum > 4096)
        return out;
    std::vector<Elf64_Shdr> sh(eh.e_shnum);
    if (!read_at(fd.get(), sh.data(), sh.size() * sizeof(Elf64_Shdr), static_cast<off_t>(eh.e_shoff)))
        return out;
    const Elf64_Word want = needs ? SHT_GNU_verneed : SHT_GNU_verdef;
    for (const auto& s : sh) {
        if (s.sh_type != want || s.sh_link >= sh.size() || s.sh_size > (1u << 20)) continue;
        const auto& strtab = sh[s.sh_link];
        if (strtab.sh_size > (16u << 20)) continue;
        std::vector<char> data(s.sh_size), strings(strtab.sh_size + 1, '\0');
        if (!read_at(fd.get(), data.data(), data.size(), static_cast<off_t>(s.sh_offset)) ||
            !read_at(fd.get(), strings.data(), strtab.sh_size, static_cast<off_t>(strtab.sh_offset)))
            continue;
        auto name_at = [&](std::uint64_t off) {
            return off < strtab.sh_size ? std::string(&strings[off]) : std::string();
        };
        // Entries chain by relative offsets; bounded by the section's size and count.
        std::uint64_t at = 0;
        for (unsigned n = 0; n < 1024 && at + 16 <= data.size(); ++n) {
            if (needs) {
                Elf64_Verneed vn;
                std::memcpy(&vn, &data[at], sizeof vn);
                std::uint64_t aux = at + vn.vn_aux;
                for (unsigned k = 0; k < vn.vn_cnt && aux + sizeof(Elf64_Vernaux) <= data.size(); ++k) {
                    Elf64_Vernaux va;
                    std::memcpy(&va, &data[aux], sizeof va);
                    out.push_back(name_at(va.vna_name));
                    if (va.vna_next == 0) break;
                    aux += va.vna_next;
                }
                if (vn.vn_next == 0) break;
                at += vn.vn_next;
            } else {
                Elf64_Verdef vd;
                std::memcpy(&vd, &data[at], sizeof vd);
                if (vd.vd_aux != 0 && at + vd.vd_aux + sizeof(Elf64_Verdaux) <= data.size()) {
                    Elf64_Verdaux va;
                    std::memcpy(&va, &data[at + vd.vd_aux], sizeof va);
                    out.push_back(name_at(va.vda_name));
                }
                if (vd.vd_next == 0) break;
                at += vd.vd_next;
            }
        }
    }
    return out;
}

// The highest GLIBC_x.y[.z] among `names`, as numbers; empty if none.
std::vector<unsigned> highest_glibc(const std::vector<std::string>& names) {
    std::vector<unsigned> best;
    for (const auto& name : names) {
        if (!name.starts_with("GLIBC_") || name.size() < 9 || !std::isdigit(name[6])) continue;
        std::vector<unsigned> v;
        unsigned part = 0;
        bool ok = true;
        for (char c : std::string_view(name).substr(6)) {
            if (c == '.') {
                v.push_back(part);
                part = 0;
            } else if (std::isdigit(static_cast<unsigned char>(c))) {
                part = part * 10 + static_cast<unsigned>(c - '0');
            } else {
                ok = false;
                break;
            }
        }
        v.push_back(part);
        if (ok && v > best) best = v;
    }
    return best;
}

std::string dotted(const std::vector<unsigned>& v) {
    std::string out;
    for (auto part : v) out += fmt::format("{}{}", out.empty() ? "" : ".", part);
    return out;
}

// The libc.so.6 the program's loader would use: beside the loader, or beside
// the file the loader's path resolves to (Debian: /lib64 -> the multiarch
// directory).
std::string libc_beside(const std::string& interp) {
    namespace fs = std::filesystem;
    std::error_code ec;
    std::vector<fs::path> dirs = {fs::path(interp).parent_path()};
    auto real = fs::canonical(interp, ec);
    if (!ec) dirs.push_back(real.parent_path());
    for (const auto& d : dirs)
        if (fs::exists(d / "libc.so.6", ec)) return (d / "libc.so.6").string();
    return "";
}

std::optional<std::string> refusal(const std::string& path, const std::string& library, int depth) {
    if (auto interpreter = script_interpreter(path); !interpreter.empty()) {
        if (depth >= 4) return std::nullopt;
        auto why = refusal(interpreter, library, depth + 1);
        if (why) return fmt::format("{} (the interpreter of {})", *why, path);
        return std::nullopt;
    }
    auto interp = elf_interpreter(path);
    if (interp.empty()) return std::nullopt;  // static or not ELF: preload_obstacles says so
    auto base = std::filesystem::path(interp).filename().string();
    if (base.starts_with("ld-musl"))
        return fmt::format("{} is a musl program (its loader is {}): libtcpfix.so is built for glibc and "
                           "musl's loader would refuse to start it",
                           path, interp);
    auto need = highest_glibc(elf_versions(library, true));
    auto libc = libc_beside(interp);
    if (need.empty() || libc.empty()) return std::nullopt;
    auto have = highest_glibc(elf_versions(libc, false));
    if (have.empty() || have >= need) return std::nullopt;
    return fmt::format("{} uses an older glibc than {} needs ({} defines symbol versions up to "
                       "GLIBC_{}, the library asks for GLIBC_{}): the loader would refuse to start it",
                       path, std::filesystem::path(library).filename().string(), libc, dotted(have),
                       dotted(need));
}

}  // namespace

std::vector<std::string> preload_obstacles(const std::string& path) {
    return obstacles(path, 0);
}

std::optional<std::string> load_refusal(const std::string& path, const std::string& library) {
    return refusal(path, library, 0);
}

}  // namespace tcpfix::tools
