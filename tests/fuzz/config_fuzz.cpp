// Fuzz target over tcpfix's whole configuration parser (policy/config.cpp):
// every TCPFIX_* variable, unknown names, duplicates and combinations.
//
// Input: "NAME=VALUE" entries as they stand in environ: separated by NUL
// bytes when the input holds one (names and values may then hold newlines,
// as real environments can), else by newlines (the seed corpus is written
// that way); an entry without '=' is a name with an empty value; at most 32.
// Checked on every input:
//   - parse_config() either succeeds or refuses with the SPEC's one line:
//     "tcpfix: NAME=\"VALUE\": ..." starting `tcpfix: TCPFIX_`, naming one
//     of the variables given, no newline or other control character;
//   - it agrees with check_variable() on every pair (when names are distinct);
//   - a Config it accepts honours every documented bound (retries 0..10,
//     durations 1 ns..1 h, MIN <= MAX, ports 1..65535, LO <= HI, rates
//     (0, 10^7]/s, tags, paths, addresses that print and parse back, match
//     prefixes without host bits);
//   - the first line's value, given to EVERY variable in turn, gives the same
//     verdict through parse_config() and check_variable().
// A violation prints what broke and aborts (a libFuzzer crash).
//
// Built two ways (tests/fuzz/CMakeLists.txt): as a libFuzzer target (clang,
// -fsanitize=fuzzer,address,undefined; scripts/fuzz.sh), and with
// TCPFIX_FUZZ_STANDALONE as a plain program that replays the corpus and then
// runs N random mutations of it, for compilers without libFuzzer.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "policy/config.hpp"
#include "policy/net.hpp"

namespace {

using namespace tcpfix::policy;

std::string_view g_input;  // for the failure report

std::string printable(std::string_view s) {
    std::string out;
    for (unsigned char c : s) {
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out += static_cast<char>(c);
        } else {
            char b[8];
            snprintf(b, sizeof b, "\\x%02x", c);
            out += b;
        }
    }
    return out;
}

[[noreturn]] void fail(const std::string& what) {
    fprintf(stderr, "config_fuzz: %s\ninput: \"%s\"\n", what.c_str(), printable(g_input).c_str());
    abort();
}

// The message is built only when the check fails.
#define require(cond, what)       \
    do {                          \
        if (!(cond)) fail(what);  \
    } while (0)

bool has_control(std::string_view s) {
    return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

// The SPEC's refusal: one line naming the variable.
void check_refusal(const std::string& line, std::string_view name, const char* where) {
    std::string w = where;
    require(line.rfind("tcpfix: TCPFIX_", 0) == 0, w + ": refusal does not start with `tcpfix: TCPFIX_`: \"" +
                                                       printable(line) + "\"");
    require(line.find('\n') == std::string::npos && line.find('\r') == std::string::npos,
            w + ": refusal spans more than one line: \"" + printable(line) + "\"");
    require(!has_control(line), w + ": refusal carries a control character: \"" + printable(line) + "\"");
    if (!name.empty())
        require(line.rfind("tcpfix: " + std::string(name) + "=\"", 0) == 0 || has_control(name),
                w + ": refusal does not name " + printable(name) + ": \"" + printable(line) + "\"");
}

bool host_bits_clear(const MatchRule& r) {
    if (r.prefix.family == 0) return true;
    unsigned bits = r.prefix.family == AF_INET ? 32 : 128;
    if (r.prefix_len > bits) return false;
    for (unsigned b = r.prefix_len; b < bits; ++b)
        if (r.prefix.bytes[b / 8] & (0x80 >> (b % 8))) return false;
    return true;
}

void check_config(const Config& c) {
    const std::int64_t hour = 3600LL * 1000 * 1000 * 1000;
    require(c.connect_retries <= 10, "connect_retries above 10 accepted");
    if (c.connect_timeout_ns)
        require(*c.connect_timeout_ns >= 1 && *c.connect_timeout_ns <= hour, "connect timeout out of range");
    if (c.reap_close_wait_ns)
        require(*c.reap_close_wait_ns >= 1 && *c.reap_close_wait_ns <= hour, "reap duration out of range");
    if (c.reconnect_backoff) {
        const auto& b = *c.reconnect_backoff;
        require(b.min_ns >= 1 && b.max_ns <= hour && b.min_ns <= b.max_ns, "backoff MIN:MAX out of range or reversed");
    }
    if (c.connect_rate_per_s) {
        double r = *c.connect_rate_per_s;
        require(std::isfinite(r) && r > 0 && r <= 10'000'000, "connect rate out of (0, 10^7]");
    }
    if (c.port_range)
        require(c.port_range->lo >= 1 && c.port_range->lo <= c.port_range->hi, "port range reversed or zero");
    require(c.tag.size() <= 64, "tag longer than 64");
    for (char ch : c.tag) require(ch > 0x20 && ch < 0x7f && ch != '"' && ch != '\\' && ch != '\'', "tag character");
    for (const std::string* p : {&c.log_file, &c.stats_path}) {
        require(!has_control(*p), "a path with a control character accepted");
        require(p->empty() || p->back() != '/', "a directory accepted as a file path");
    }
    std::set<std::vector<std::uint8_t>> seen;
    for (const auto& ip : c.source_addrs) {
        require(ip.family == AF_INET || ip.family == AF_INET6, "source address of no family");
        std::string text = to_string(ip);
        auto back = parse_ip(text);
        require(back && *back == ip, "source address " + text + " does not parse back to itself");
        std::vector<std::uint8_t> key(ip.bytes.begin(), ip.bytes.end());
        key.push_back(static_cast<std::uint8_t>(ip.family));
        require(seen.insert(key).second, "duplicate source address accepted");
    }
    for (const auto& r : c.match.rules()) {
        require(r.prefix.family == 0 || r.prefix.family == AF_INET || r.prefix.family == AF_INET6, "rule family");
        require(host_bits_clear(r), "a match rule with host bits beyond its prefix accepted");
        // A rule matches what it names: its own prefix at its own port.
        if (r.prefix.family != 0) {
            Endpoint ep{r.prefix, r.port == 0 ? static_cast<std::uint16_t>(1) : r.port};
            require(r.matches(ep) && c.match.matches(ep), "a rule does not match its own prefix");
        }
    }
    for (const auto& [name, value] : c.given) {
        require(find_variable(name) != nullptr, "given holds an unknown name");
        require(!value.empty(), "given holds an empty value");
    }
    require(c.active() == (!c.disabled && !c.given.empty()), "active() disagrees with its definition");
}

void run_one(std::string_view data) {
    g_input = data;
    std::vector<std::pair<std::string_view, std::string_view>> pairs;
    std::string_view rest = data;
    const char sep = data.find('\0') != std::string_view::npos ? '\0' : '\n';
    while (!rest.empty() && pairs.size() < 32) {
        auto nl = rest.find(sep);
        std::string_view line = rest.substr(0, nl);
        rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
        auto eq = line.find('=');
        if (eq == std::string_view::npos) pairs.emplace_back(line, std::string_view());
        else pairs.emplace_back(line.substr(0, eq), line.substr(eq + 1));
    }

    // The whole set, as the library reads it at start-up.
    auto parsed = parse_config(pairs);
    std::set<std::string_view> names;
    bool distinct = true, any_refused = false;
    std::set<std::string> refusals;
    for (auto [name, value] : pairs) {
        if (name.rfind("TCPFIX_", 0) != 0) continue;
        distinct &= names.insert(name).second;
        if (auto r = check_variable(name, value)) {
            check_refusal(*r, name, "check_variable");
            any_refused = true;
            refusals.insert(*r);
        }
    }
    if (auto* refusal = std::get_if<std::string>(&parsed)) {
        check_refusal(*refusal, {}, "parse_config");
        bool names_one = false;
        for (auto n : names)
            names_one |= refusal->rfind("tcpfix: " + std::string(n) + "=\"", 0) == 0 || has_control(n);
        require(names_one, "parse_config's refusal names none of the variables given: \"" + printable(*refusal) + "\"");
        if (distinct)
            require(refusals.count(*refusal) == 1,
                    "parse_config refused with a line check_variable never gave: \"" + printable(*refusal) + "\"");
    } else {
        const Config& c = std::get<Config>(parsed);
        check_config(c);
        if (distinct) require(!any_refused, "parse_config accepted what check_variable refuses");
    }

    // The first value through every variable.
    std::string_view value = pairs.empty() ? data : pairs.front().second;
    for (const auto& v : variables()) {
        std::pair<std::string_view, std::string_view> one[] = {{v.name, value}};
        auto alone = parse_config(one);
        auto checked = check_variable(v.name, value);
        if (auto* refusal = std::get_if<std::string>(&alone)) {
            check_refusal(*refusal, v.name, "parse_config (one variable)");
            require(checked && *checked == *refusal, std::string(v.name) + ": parse_config and check_variable disagree");
            require(refusal->find("expected ") != std::string::npos,
                    std::string(v.name) + ": refusal does not say what was expected");
        } else {
            require(!checked, std::string(v.name) + ": check_variable refuses what parse_config accepts");
            check_config(std::get<Config>(alone));
        }
    }

    // The value grammars on their own.
    if (auto d = parse_duration_ns(value)) require(*d >= 1 && *d <= 3600LL * 1000 * 1000 * 1000, "duration range");
    if (auto r = parse_rate_per_s(value)) require(*r > 0 && *r <= 10'000'000, "rate range");
    if (auto ip = parse_ip(value)) {
        auto back = parse_ip(to_string(*ip));
        require(back && *back == *ip, "address does not print and parse back");
    }
    if (auto rule = parse_match_rule(value)) require(host_bits_clear(*rule), "match rule host bits");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    run_one(std::string_view(reinterpret_cast<const char*>(data), size));
    return 0;
}

#ifdef TCPFIX_FUZZ_STANDALONE
// A replay driver with a small mutator, for builds without libFuzzer:
//   config_fuzz_standalone [-runs=N] [-seed=S] [-max_len=N] [-dict=FILE] DIR_OR_FILE...
#include <dirent.h>
#include <sys/stat.h>

#include <fstream>
#include <random>
#include <sstream>

namespace {

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void collect(const std::string& path, std::vector<std::string>& out) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) return;
    if (S_ISREG(st.st_mode)) {
        out.push_back(slurp(path));
        return;
    }
    DIR* d = opendir(path.c_str());
    if (d == nullptr) return;
    std::vector<std::string> names;
    while (dirent* e = readdir(d))
        if (e->d_name[0] != '.') names.push_back(e->d_name);
    closedir(d);
    std::sort(names.begin(), names.end());
    for (const auto& n : names) collect(path + "/" + n, out);
}

// Tokens of libFuzzer's dictionary format: lines `"text"` (\xNN escapes).
std::vector<std::string> read_dict(const std::string& path) {
    std::vector<std::string> out;
    std::ifstream f(path);
    std::string line;
    while (std::getline(f, line)) {
        auto a = line.find('"'), b = line.rfind('"');
        if (a == std::string::npos || b <= a) continue;
        std::string tok;
        for (std::size_t i = a + 1; i < b; ++i) {
            if (line[i] == '\\' && i + 1 < b) {
                if (line[i + 1] == 'x' && i + 3 < b) {
                    tok += static_cast<char>(std::stoi(line.substr(i + 2, 2), nullptr, 16));
                    i += 3;
                } else {
                    tok += line[++i];
                }
            } else {
                tok += line[i];
            }
        }
        out.push_back(tok);
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    long runs = 100000;
    unsigned long seed = 1;
    std::size_t max_len = 4096;
    std::vector<std::string> corpus, dict;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a.rfind("-runs=", 0) == 0) runs = std::stol(a.substr(6));
        else if (a.rfind("-seed=", 0) == 0) seed = std::stoul(a.substr(6));
        else if (a.rfind("-max_len=", 0) == 0) max_len = std::stoul(a.substr(9));
        else if (a.rfind("-dict=", 0) == 0) dict = read_dict(a.substr(6));
        else if (a[0] == '-') fprintf(stderr, "config_fuzz: ignoring %s\n", a.c_str());
        else collect(a, corpus);
    }
    for (const auto& v : variables()) dict.emplace_back(v.name);
    for (const char* t : {"=", "\n", ",", ":", "-", "/", ".", "[", "]", "ms", "us", "ns", "s", "/s", "/min", "::ffff:",
                          "%p", "rst", "rst-always", "keep", "off", "debug", "0", "1", "10", "65535", "4294967296"})
        dict.emplace_back(t);
    if (corpus.empty()) corpus.emplace_back("TCPFIX_CLOSE=rst");
    for (const auto& c : corpus) run_one(c);
    fprintf(stderr, "config_fuzz: replayed %zu corpus inputs\n", corpus.size());

    std::mt19937_64 rng(seed);
    auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % (n ? n : 1)); };
    for (long r = 0; r < runs; ++r) {
        std::string s = corpus[pick(corpus.size())];
        int steps = 1 + static_cast<int>(pick(6));
        for (int k = 0; k < steps; ++k) {
            switch (pick(7)) {
                case 0:  // flip a bit
                    if (!s.empty()) s[pick(s.size())] ^= static_cast<char>(1u << pick(8));
                    break;
                case 1:  // a random byte
                    s.insert(s.begin() + static_cast<long>(pick(s.size() + 1)), static_cast<char>(rng()));
                    break;
                case 2:  // erase a run
                    if (!s.empty()) {
                        std::size_t at = pick(s.size());
                        s.erase(at, 1 + pick(std::min<std::size_t>(8, s.size() - at)));
                    }
                    break;
                case 3:  // a dictionary token
                    s.insert(pick(s.size() + 1), dict[pick(dict.size())]);
                    break;
                case 4:  // splice another input
                {
                    const std::string& o = corpus[pick(corpus.size())];
                    s = s.substr(0, pick(s.size() + 1)) + o.substr(pick(o.size() + 1));
                    break;
                }
                case 5:  // repeat a run
                    if (!s.empty()) {
                        std::size_t at = pick(s.size());
                        s.insert(at, s.substr(at, 1 + pick(16)));
                    }
                    break;
                case 6:  // a digit changed
                    for (char& c : s)
                        if (c >= '0' && c <= '9' && pick(4) == 0) c = static_cast<char>('0' + pick(10));
                    break;
            }
        }
        if (s.size() > max_len) s.resize(max_len);
        run_one(s);
    }
    fprintf(stderr, "config_fuzz: %ld mutations (seed %lu): no failure\n", runs, seed);
    return 0;
}
#endif
