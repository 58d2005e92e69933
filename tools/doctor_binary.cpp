// `tcpfix doctor --binary PATH`: what keeps LD_PRELOAD from a program.
//
// - set-user-ID, set-group-ID, file capabilities, no ELF interpreter (static):
//   preload_obstacles(), shared with `tcpfix run`, following "#!" scripts;
// - Go programs: their net package makes socket calls as raw system calls,
//   never through libc, even when dynamically linked (cgo);
// - RTLD_DEEPBIND: a library opened with it resolves its own calls to libc's
//   socket functions first, past the preload. Which flags a program passes to
//   dlopen() is decided at run time, so no static check is exact. What is
//   checked, in the program and every library it needs (DT_NEEDED, found as
//   the loader finds them: RPATH/RUNPATH with $ORIGIN, LD_LIBRARY_PATH,
//   /etc/ld.so.conf, the default directories): in x86-64 code, each call to
//   dlopen (through its PLT stub or its GOT slot) whose flags argument is
//   loaded as a constant (`mov $imm32, %esi`) within the 40 bytes before the
//   call; the constant must read as dlopen flags, and the warning is given
//   when it holds RTLD_DEEPBIND (0x8). PHP before 8.5 is such a program
//   (zend_load_extension, dl(); php-src #10670, fixed by PR #18612). On other
//   machines, a PHP binary older than 8.5 is recognised by its
//   "X-Powered-By: PHP/x.y.z" text instead; the text "RTLD_DEEPBIND" in a
//   file (an option or message naming it) is reported as a note.
#include <elf.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <set>
#include <span>
#include <string_view>

#include "tools/command.hpp"
#include "tools/doctor.hpp"
#include "tools/fd.hpp"
#include "tools/run.hpp"

namespace tcpfix::tools::doctor {
namespace {

namespace fs = std::filesystem;

constexpr unsigned kRtldLazy = 0x1, kRtldNow = 0x2, kRtldNoload = 0x4, kRtldDeepbind = 0x8,
                   kRtldGlobal = 0x100, kRtldNodelete = 0x1000;
constexpr unsigned kDlopenFlags =
    kRtldLazy | kRtldNow | kRtldNoload | kRtldDeepbind | kRtldGlobal | kRtldNodelete;
constexpr std::size_t kFlagsWindow = 40;  // bytes before a call searched for the flags
constexpr std::size_t kMaxObjects = 400;  // a program's library closure, at most

// A read-only mapping of a whole file.
class Mapped {
  public:
    explicit Mapped(const std::string& path) {
        Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        struct stat st {};
        if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return;
        size_ = static_cast<std::size_t>(st.st_size);
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
        if (p == MAP_FAILED) {
            size_ = 0;
            return;
        }
        data_ = static_cast<const std::uint8_t*>(p);
    }
    ~Mapped() {
        if (data_ != nullptr) ::munmap(const_cast<std::uint8_t*>(data_), size_);
    }
    Mapped(const Mapped&) = delete;
    Mapped& operator=(const Mapped&) = delete;

    std::span<const std::uint8_t> bytes() const { return {data_, size_}; }
    bool contains(std::string_view text) const {
        if (data_ == nullptr || text.empty()) return false;
        std::string_view all(reinterpret_cast<const char*>(data_), size_);
        return all.find(text) != std::string_view::npos;
    }

  private:
    const std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
};

template <typename T>
const T* at(std::span<const std::uint8_t> file, std::uint64_t offset, std::size_t count = 1) {
    if (offset > file.size() || count > (file.size() - offset) / sizeof(T)) return nullptr;
    return reinterpret_cast<const T*>(file.data() + offset);
}

std::uint32_t le32(const std::uint8_t* p) {
    return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 |
           std::uint32_t{p[3]} << 24;
}

// One 64-bit ELF object of this machine's byte order, read through its
// section headers (present in every distributed binary; sstrip'ed files are
// noted as not examined).
class Elf64 {
  public:
    explicit Elf64(std::span<const std::uint8_t> file) : file_(file) {
        eh_ = at<Elf64_Ehdr>(file, 0);
        if (eh_ == nullptr || std::memcmp(eh_->e_ident, ELFMAG, SELFMAG) != 0 ||
            eh_->e_ident[EI_CLASS] != ELFCLASS64 ||
            eh_->e_ident[EI_DATA] !=
                (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ELFDATA2LSB : ELFDATA2MSB)) {
            eh_ = nullptr;
            return;
        }
        if (eh_->e_shentsize == sizeof(Elf64_Shdr))
            if (auto* sh = at<Elf64_Shdr>(file, eh_->e_shoff, eh_->e_shnum))
                sections_ = {sh, eh_->e_shnum};
    }

    bool valid() const { return eh_ != nullptr; }
    bool has_sections() const { return !sections_.empty(); }
    unsigned machine() const { return eh_->e_machine; }

    std::string_view string_at(const Elf64_Shdr& strtab, std::uint64_t index) const {
        if (index >= strtab.sh_size) return {};
        auto* begin = at<char>(file_, strtab.sh_offset + index);
        if (begin == nullptr) return {};
        auto max = std::min<std::uint64_t>(strtab.sh_size - index,
                                           file_.size() - strtab.sh_offset - index);
        return {begin, strnlen(begin, max)};
    }

    const Elf64_Shdr* section(std::uint32_t index) const {
        return index < sections_.size() ? &sections_[index] : nullptr;
    }

    const Elf64_Shdr* section_named(std::string_view name) const {
        auto* names = section(eh_->e_shstrndx);
        if (names == nullptr) return nullptr;
        for (const auto& s : sections_)
            if (string_at(*names, s.sh_name) == name) return &s;
        return nullptr;
    }

    // DT_NEEDED names, and DT_RPATH / DT_RUNPATH (":"-separated lists).
    void dynamic(std::vector<std::string>& needed, std::string& rpath, std::string& runpath) const {
        for (const auto& s : sections_) {
            if (s.sh_type != SHT_DYNAMIC) continue;
            auto* strtab = section(s.sh_link);
            auto* dyn = at<Elf64_Dyn>(file_, s.sh_offset, s.sh_size / sizeof(Elf64_Dyn));
            if (strtab == nullptr || dyn == nullptr) continue;
            for (std::size_t i = 0; i < s.sh_size / sizeof(Elf64_Dyn) && dyn[i].d_tag != DT_NULL;
                 ++i) {
                auto text = std::string(string_at(*strtab, dyn[i].d_un.d_val));
                if (dyn[i].d_tag == DT_NEEDED) needed.push_back(text);
                if (dyn[i].d_tag == DT_RPATH) rpath = text;
                if (dyn[i].d_tag == DT_RUNPATH) runpath = text;
            }
        }
    }

    // The GOT slots the dynamic loader fills with dlopen's address.
    std::set<std::uint64_t> got_slots(std::string_view symbol) const {
        std::set<std::uint64_t> out;
        for (const auto& s : sections_) {
            if (s.sh_type != SHT_RELA || s.sh_entsize != sizeof(Elf64_Rela)) continue;
            auto* symtab = section(s.sh_link);
            if (symtab == nullptr || symtab->sh_entsize != sizeof(Elf64_Sym)) continue;
            auto* strtab = section(symtab->sh_link);
            auto* syms =
                at<Elf64_Sym>(file_, symtab->sh_offset, symtab->sh_size / sizeof(Elf64_Sym));
            auto* rela = at<Elf64_Rela>(file_, s.sh_offset, s.sh_size / sizeof(Elf64_Rela));
            if (strtab == nullptr || syms == nullptr || rela == nullptr) continue;
            for (std::size_t i = 0; i < s.sh_size / sizeof(Elf64_Rela); ++i) {
                auto type = ELF64_R_TYPE(rela[i].r_info);
                auto index = ELF64_R_SYM(rela[i].r_info);
                if (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT) continue;
                if (index == 0 || index >= symtab->sh_size / sizeof(Elf64_Sym)) continue;
                if (string_at(*strtab, syms[index].st_name) == symbol) out.insert(rela[i].r_offset);
            }
        }
        return out;
    }

    // Code sections: (address, bytes).
    std::vector<std::pair<std::uint64_t, std::span<const std::uint8_t>>> code() const {
        std::vector<std::pair<std::uint64_t, std::span<const std::uint8_t>>> out;
        for (const auto& s : sections_) {
            if (s.sh_type != SHT_PROGBITS || (s.sh_flags & SHF_EXECINSTR) == 0) continue;
            if (auto* p = at<std::uint8_t>(file_, s.sh_offset, s.sh_size))
                out.emplace_back(s.sh_addr, std::span<const std::uint8_t>(p, s.sh_size));
        }
        return out;
    }

  private:
    std::span<const std::uint8_t> file_;
    const Elf64_Ehdr* eh_ = nullptr;
    std::span<const Elf64_Shdr> sections_;
};

// A dlopen call site and the flags loaded just before it.
struct DlopenCall {
    std::uint64_t address = 0;
    unsigned flags = 0;
};

// The flags constant of the call at code[call]: the nearest `mov $imm32,%esi`
// (BE imm32, not REX.B-prefixed: that would be %r14d) ending at or before the
// call whose value reads as dlopen flags; nullopt when there is none.
std::optional<unsigned> flags_before(std::span<const std::uint8_t> code, std::size_t call) {
    for (std::size_t back = 5; back <= kFlagsWindow && back <= call; ++back) {
        std::size_t p = call - back;
        if (code[p] != 0xbe || (p > 0 && (code[p - 1] & 0xf1) == 0x41)) continue;
        unsigned imm = le32(&code[p + 1]);
        unsigned mode = imm & (kRtldLazy | kRtldNow);
        if ((imm & ~kDlopenFlags) == 0 && (mode == kRtldLazy || mode == kRtldNow)) return imm;
    }
    return std::nullopt;
}

// Every x86-64 call to `dlopen` whose flags are a visible constant.
std::vector<DlopenCall> dlopen_calls(const Elf64& elf) {
    std::vector<DlopenCall> out;
    auto slots = elf.got_slots("dlopen");
    if (slots.empty()) return out;
    auto code = elf.code();
    // PLT stubs jumping through a dlopen slot: `ff 25 disp32`, possibly after
    // endbr64 (f3 0f 1e fa) and a bnd prefix (f2). Calls land on the first.
    std::set<std::uint64_t> stubs;
    std::vector<std::pair<std::uint64_t, std::size_t>> direct;  // (section, offset) of call *GOT
    for (std::size_t s = 0; s < code.size(); ++s) {
        auto [base, bytes] = code[s];
        for (std::size_t i = 0; i + 6 <= bytes.size(); ++i) {
            if (bytes[i] != 0xff || (bytes[i + 1] != 0x25 && bytes[i + 1] != 0x15)) continue;
            auto disp = static_cast<std::int32_t>(le32(&bytes[i + 2]));
            std::uint64_t target = base + i + 6 + static_cast<std::int64_t>(disp);
            if (!slots.contains(target)) continue;
            if (bytes[i + 1] == 0x15) {  // call *dlopen@GOT(%rip): -fno-plt
                direct.emplace_back(s, i);
                continue;
            }
            std::uint64_t stub = base + i;
            if (i >= 1 && bytes[i - 1] == 0xf2) --stub;
            std::size_t k = stub - base;
            if (k >= 4 && bytes[k - 4] == 0xf3 && bytes[k - 3] == 0x0f && bytes[k - 2] == 0x1e &&
                bytes[k - 1] == 0xfa)
                stub -= 4;
            stubs.insert(stub);
        }
    }
    auto note = [&](std::span<const std::uint8_t> bytes, std::uint64_t base, std::size_t i) {
        if (auto flags = flags_before(bytes, i)) out.push_back({base + i, *flags});
    };
    for (auto [s, i] : direct) note(code[s].second, code[s].first, i);
    if (stubs.empty()) return out;
    for (auto [base, bytes] : code) {
        for (std::size_t i = 0; i + 5 <= bytes.size(); ++i) {
            if (bytes[i] != 0xe8) continue;
            auto rel = static_cast<std::int32_t>(le32(&bytes[i + 1]));
            if (stubs.contains(base + i + 5 + static_cast<std::int64_t>(rel))) note(bytes, base, i);
        }
    }
    return out;
}

// "8.2.36" in "X-Powered-By: PHP/8.2.36", or "" when the file is not PHP.
std::string php_version(const Mapped& m) {
    constexpr std::string_view kMark = "X-Powered-By: PHP/";
    auto bytes = m.bytes();
    std::string_view all(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    auto at = all.find(kMark);
    if (at == std::string_view::npos) return "";
    auto rest = all.substr(at + kMark.size(), 16);
    return std::string(rest.substr(0, rest.find_first_not_of("0123456789.")));
}

bool php_before_8_5(const std::string& version) {
    int major = 0, minor = 0;
    auto dot = version.find('.');
    std::from_chars(version.data(), version.data() + version.size(), major);
    if (dot != std::string::npos)
        std::from_chars(version.data() + dot + 1, version.data() + version.size(), minor);
    return major < 8 || (major == 8 && minor < 5);
}

bool is_go(const Elf64& elf, const Mapped& m) {
    if (elf.valid() &&
        (elf.section_named(".go.buildinfo") || elf.section_named(".note.go.buildid")))
        return true;
    return m.contains("\xff Go buildinf:");
}

// Directories from /etc/ld.so.conf and the files it includes.
void ld_so_conf(const std::string& path, std::vector<std::string>& dirs, int depth) {
    if (depth > 8) return;
    FILE* f = std::fopen(path.c_str(), "re");
    if (f == nullptr) return;
    char line[4096];
    while (std::fgets(line, sizeof line, f) != nullptr) {
        std::string_view l(line);
        if (auto hash = l.find('#'); hash != std::string_view::npos) l = l.substr(0, hash);
        while (!l.empty() && std::isspace(static_cast<unsigned char>(l.front())))
            l.remove_prefix(1);
        while (!l.empty() && std::isspace(static_cast<unsigned char>(l.back()))) l.remove_suffix(1);
        if (l.empty()) continue;
        if (l.starts_with("include") && l.size() > 7 &&
            std::isspace(static_cast<unsigned char>(l[7]))) {
            auto pattern = std::string(l.substr(8));
            while (!pattern.empty() && pattern.front() == ' ') pattern.erase(0, 1);
            if (!pattern.starts_with('/'))
                pattern = (fs::path(path).parent_path() / pattern).string();
            glob_t g{};
            if (::glob(pattern.c_str(), 0, nullptr, &g) == 0)
                for (std::size_t i = 0; i < g.gl_pathc; ++i)
                    ld_so_conf(g.gl_pathv[i], dirs, depth + 1);
            ::globfree(&g);
            continue;
        }
        dirs.emplace_back(l);
    }
    std::fclose(f);
}

std::vector<std::string> split_paths(std::string_view list, const std::string& origin) {
    std::vector<std::string> out;
    while (!list.empty()) {
        auto cut = list.find_first_of(":;");
        std::string dir(list.substr(0, cut));
        for (std::string_view token : {"${ORIGIN}", "$ORIGIN"}) {
            for (auto at = dir.find(token); at != std::string::npos; at = dir.find(token))
                dir.replace(at, token.size(), origin);
        }
        if (!dir.empty()) out.push_back(dir);
        if (cut == std::string_view::npos) break;
        list.remove_prefix(cut + 1);
    }
    return out;
}

// Finds the libraries of a program as the loader would (close enough for a
// diagnosis: $LIB and $PLATFORM are not expanded, ld.so.cache is not read).
class LibraryFinder {
  public:
    explicit LibraryFinder(unsigned machine) : machine_(machine) {
        if (const char* env = std::getenv("LD_LIBRARY_PATH")) env_ = split_paths(env, "");
        ld_so_conf("/etc/ld.so.conf", system_, 0);
        for (const char* d :
             {"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
              "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"})
            system_.emplace_back(d);
    }

    std::optional<std::string> find(const std::string& name, const std::string& origin,
                                    const std::string& rpath, const std::string& runpath) const {
        if (name.find('/') != std::string::npos)
            return usable(name) ? std::optional(name) : std::nullopt;
        std::vector<std::string> dirs;
        if (runpath.empty()) {
            auto r = split_paths(rpath, origin);
            dirs.insert(dirs.end(), r.begin(), r.end());
        }
        dirs.insert(dirs.end(), env_.begin(), env_.end());
        auto r = split_paths(runpath, origin);
        dirs.insert(dirs.end(), r.begin(), r.end());
        dirs.insert(dirs.end(), system_.begin(), system_.end());
        for (const auto& d : dirs) {
            auto candidate = (fs::path(d) / name).string();
            if (usable(candidate)) return candidate;
        }
        return std::nullopt;
    }

  private:
    bool usable(const std::string& path) const {
        Mapped m(path);
        Elf64 elf(m.bytes());
        return elf.valid() && elf.machine() == machine_;
    }

    unsigned machine_;
    std::vector<std::string> env_, system_;
};

// The interpreter of a "#!" script ("/usr/bin/env php" gives php's path), or "".
std::string script_interpreter(const std::string& path) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    char line[256] = {};
    if (!fd || ::pread(fd.get(), line, sizeof line - 1, 0) < 3) return "";
    if (line[0] != '#' || line[1] != '!') return "";
    std::string_view rest(line + 2);
    rest = rest.substr(0, rest.find('\n'));
    std::vector<std::string> words;
    while (!rest.empty()) {
        auto b = rest.find_first_not_of(" \t");
        if (b == std::string_view::npos) break;
        rest.remove_prefix(b);
        auto e = rest.find_first_of(" \t");
        words.emplace_back(rest.substr(0, e));
        if (e == std::string_view::npos) break;
        rest.remove_prefix(e);
    }
    if (words.empty()) return "";
    if (fs::path(words[0]).filename() == "env") {
        for (std::size_t i = 1; i < words.size(); ++i) {
            if (words[i].starts_with('-') || words[i].find('=') != std::string::npos) continue;
            return find_in_path(words[i]).value_or("");
        }
    }
    return words[0];
}

Finding obstacle_finding(const std::string& why) {
    Finding f;
    f.severity = "critical";
    f.kind = why.find("statically linked") != std::string::npos ? "static" : "secure";
    f.subject = why.substr(0, why.find(' '));
    f.text = fmt::format("{}; the preload's policies would not apply to it.", why);
    return f;
}

// The loader would not start the program with the library preloaded (musl,
// a glibc older than the library needs): nullopt when it would, or when no
// library is found to compare with.
std::optional<Finding> loader_refusal(const std::string& program) {
    std::string library;
    try {
        library = find_library();
    } catch (const std::exception&) {
        return std::nullopt;
    }
    auto why = load_refusal(program, library);
    if (!why) return std::nullopt;
    Finding f;
    f.severity = "critical";
    f.kind = why->find(" musl ") != std::string::npos ? "musl" : "old-glibc";
    f.subject = why->substr(0, why->find(' '));
    f.text = fmt::format("{}: do not preload it there (tcpfix run refuses to).", *why);
    return f;
}

// Every ELF object of the program: itself first, then its libraries,
// breadth first, each once.
void scan_objects(const std::string& program, BinaryReport& r) {
    std::deque<std::pair<std::string, std::string>> queue;  // (path, rpath inherited)
    std::set<std::string> seen;
    queue.emplace_back(program, "");
    std::optional<LibraryFinder> finder;
    bool x86_64 = false;
    std::string php;
    while (!queue.empty() && r.checked.size() < kMaxObjects) {
        auto [path, inherited_rpath] = queue.front();
        queue.pop_front();
        std::error_code ec;
        auto canonical = fs::canonical(path, ec).string();
        if (ec || !seen.insert(canonical).second) continue;
        Mapped m(canonical);
        Elf64 elf(m.bytes());
        if (!elf.valid()) {
            if (r.checked.empty())
                r.notes.push_back(fmt::format(
                    "{} is not a 64-bit ELF file of this machine: its libraries were not "
                    "examined",
                    path));
            continue;
        }
        r.checked.push_back(path);
        if (!finder) {
            finder.emplace(elf.machine());
            x86_64 = elf.machine() == EM_X86_64;
        }
        if (!elf.has_sections()) {
            r.notes.push_back(fmt::format("{} has no section headers: not examined", path));
            continue;
        }
        if (r.checked.size() == 1 && is_go(elf, m)) {
            Finding f;
            f.severity = "critical";
            f.kind = "go";
            f.subject = path;
            f.text = fmt::format(
                "{} is a Go program: Go's net package makes socket calls as raw system calls, "
                "never through libc, even when the program is dynamically linked, so LD_PRELOAD "
                "cannot reach its connections.",
                path);
            r.findings.push_back(std::move(f));
        }
        if (php.empty()) php = php_version(m);
        if (m.contains("RTLD_DEEPBIND")) {
            r.notes.push_back(fmt::format(
                "{} contains the text RTLD_DEEPBIND (an option or message naming it): check "
                "whether it can be told to dlopen libraries that way",
                path));
        }
        if (x86_64) {
            for (const auto& call : dlopen_calls(elf)) {
                if ((call.flags & kRtldDeepbind) == 0) continue;
                Finding f;
                f.severity = "warn";
                f.kind = "deepbind";
                f.subject = path;
                f.text = fmt::format(
                    "{} calls dlopen() with RTLD_DEEPBIND (flags {:#x}, call at {:#x}): a library "
                    "opened that way resolves its own calls to libc's connect(), close(), ... "
                    "before the preloaded ones, so tcpfix does not see the sockets such a library "
                    "makes by itself. Sockets the program's main code makes are still seen.",
                    r.checked.size() == 1 ? path : fmt::format("{} (needed by {})", path, program),
                    call.flags, call.address);
                if (!php.empty())
                    f.text += fmt::format(
                        " This is PHP {} loading its extensions (php-src #10670; PHP 8.5 no "
                        "longer uses RTLD_DEEPBIND): extensions that connect through PHP streams "
                        "(php-redis, mysqlnd, PDO) are still reached; an extension that calls "
                        "connect() itself is not.",
                        php);
                r.findings.push_back(std::move(f));
                break;  // one finding per object
            }
        }
        std::vector<std::string> needed;
        std::string rpath, runpath;
        elf.dynamic(needed, rpath, runpath);
        // DT_RPATH applies to the libraries loaded on behalf of this object
        // and, as the loader does it, of the objects that needed it.
        std::string chain_rpath =
            runpath.empty() ? rpath + (inherited_rpath.empty() ? "" : ":" + inherited_rpath) : "";
        auto origin = fs::path(canonical).parent_path().string();
        for (const auto& name : needed) {
            auto found = finder->find(name, origin, chain_rpath, runpath);
            if (found)
                queue.emplace_back(*found, chain_rpath);
            else
                r.notes.push_back(fmt::format("{} needs {}, which was not found", path, name));
        }
    }
    if (!x86_64 && !php.empty() && php_before_8_5(php)) {
        Finding f;
        f.severity = "warn";
        f.kind = "deepbind";
        f.subject = program;
        f.text = fmt::format(
            "{} is PHP {}: PHP before 8.5 loads its extensions with dlopen(RTLD_DEEPBIND) "
            "(php-src #10670). Extensions that connect through PHP streams (php-redis, mysqlnd) "
            "are still reached by the preload; one that calls connect() itself is not.",
            program, php);
        r.findings.push_back(std::move(f));
    }
    if (!x86_64)
        r.notes.push_back(
            "dlopen call sites are looked for in x86-64 code only; on this machine only PHP "
            "versions and the text RTLD_DEEPBIND were checked");
}

}  // namespace

BinaryReport examine_binary(const std::string& given) {
    BinaryReport r;
    auto path = find_in_path(given);
    if (!path) throw UsageError(fmt::format("doctor --binary: {}: no such program", given));
    r.path = *path;
    for (const auto& why : preload_obstacles(r.path)) r.findings.push_back(obstacle_finding(why));
    if (auto why = loader_refusal(r.path)) r.findings.push_back(std::move(*why));
    // A script runs its interpreter: that is the program to examine.
    std::string program = r.path;
    for (int depth = 0; depth < 4; ++depth) {
        auto interpreter = script_interpreter(program);
        if (interpreter.empty()) break;
        r.notes.push_back(fmt::format("{} is a script run by {}", program, interpreter));
        program = interpreter;
    }
    scan_objects(program, r);
    return r;
}

}  // namespace tcpfix::tools::doctor
