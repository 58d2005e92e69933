// Build-time generator of the manuals and the bash completion, so that they
// come from one source and cannot drift from the code:
//
//   tcpfix_docgen man SECTION TEMPLATE README VERSION DATE LIBDIR OUT
//       tcpfix.SECTION in roff from man/tcpfix.SECTION.in, a page written in
//       the Markdown subset below, with @LIBDIR@ replaced by the installed
//       library directory. Directives on a line of their own:
//         @README Heading@    README.md's section under that heading, up to
//                             the next heading of any level
//         @README+ Heading@   ... with its subsections
//         @VARIABLES@         every TCPFIX_* variable of policy::variables()
//         @RUN_OPTIONS@       every `tcpfix run` option made from that table
//       A README table whose first column is "variable" is replaced by
//       @VARIABLES@, its "what it does" cells kept as the descriptions.
//   tcpfix_docgen completion TEMPLATE OUT
//       completions/tcpfix.bash with @RUN_*@ filled in from the same table.
//
// The Markdown subset: "# " section, "## "/"### " subsection, paragraphs,
// "- " bullets (continued by indented lines), ``` fences, | tables |, and
// inline `code`, **bold**, *italic*, [text](link). "%%" starts a comment line.
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "policy/config.hpp"

namespace {

using tcpfix::policy::VariableInfo;

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_file(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) throw std::runtime_error("cannot write " + path);
}

std::vector<std::string> split_lines(const std::string& text) {
    std::vector<std::string> lines;
    std::stringstream ss(text);
    for (std::string line; std::getline(ss, line);) lines.push_back(line);
    return lines;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

// ---- roff ------------------------------------------------------------------

// One UTF-8 character as a groff escape.
std::string glyph(char32_t cp) {
    switch (cp) {
        case U'\u2014':
            return "\\(em";
        case U'\u2013':
            return "\\(en";
        case U'\u00d7':
            return "\\(mu";
        case U'\u2248':
            return "\\(~~";
        case U'\u00b5':
            return "\\(mc";
        case U'\u2026':
            return "\\&...";
        case U'\u2264':
            return "\\(<=";
        case U'\u2265':
            return "\\(>=";
        case U'\u2192':
            return "\\(->";
        case U'\u2018':
            return "\\(oq";
        case U'\u2019':
            return "\\(cq";
        case U'\u201c':
            return "\\(lq";
        case U'\u201d':
            return "\\(rq";
        default:
            return fmt::format("\\[u{:04X}]", static_cast<unsigned>(cp));
    }
}

// Plain text for roff: backslashes and hyphens escaped (a hyphen in an option
// must stay an ASCII minus to be copied), non-ASCII as glyph escapes.
std::string roff_text(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c == '\\') {
            out += "\\e";
        } else if (c == '-') {
            out += "\\-";
        } else if (c < 0x80) {
            out += static_cast<char>(c);
        } else {
            int extra = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : 1;
            char32_t cp = c & (0x3f >> extra);
            for (int k = 0; k < extra && i + 1 < s.size(); ++k)
                cp = (cp << 6) | (static_cast<unsigned char>(s[++i]) & 0x3f);
            out += glyph(cp);
        }
    }
    return out;
}

// Markdown inline markup as roff font changes.
std::string roff_inline(std::string_view s) {
    std::string out;
    bool bold = false;
    auto font_back = [&] { return bold ? "\\fB" : "\\fR"; };
    for (std::size_t i = 0; i < s.size();) {
        if (s[i] == '`') {
            auto end = s.find('`', i + 1);
            if (end != std::string_view::npos) {
                auto code = roff_text(s.substr(i + 1, end - i - 1));
                out += bold ? code : "\\fB" + code + "\\fR";
                i = end + 1;
                continue;
            }
        }
        if (s.substr(i, 2) == "**") {
            bold = !bold;
            out += bold ? "\\fB" : "\\fR";
            i += 2;
            continue;
        }
        if (s[i] == '*' && i + 1 < s.size() && s[i + 1] != ' ') {
            auto end = s.find('*', i + 1);
            if (end != std::string_view::npos && s[end - 1] != ' ') {
                out += "\\fI" + roff_text(s.substr(i + 1, end - i - 1)) + font_back();
                i = end + 1;
                continue;
            }
        }
        if (s[i] == '[') {  // [text](link): the text
            auto close = s.find("](", i);
            auto paren = close == std::string_view::npos ? close : s.find(')', close);
            if (paren != std::string_view::npos) {
                out += roff_inline(s.substr(i + 1, close - i - 1));
                i = paren + 1;
                continue;
            }
        }
        std::size_t next = s.find_first_of("`*[", i + 1);
        out += roff_text(s.substr(i, next == std::string_view::npos ? s.size() - i : next - i));
        i = next == std::string_view::npos ? s.size() : next;
    }
    if (bold) out += "\\fR";
    return out;
}

// A macro argument: quoted, with its quotes as glyphs.
std::string roff_arg(std::string_view s) {
    std::string out = "\"";
    for (char c : roff_inline(s)) {
        if (c == '"')
            out += "\\(dq";
        else
            out += c;
    }
    return out + "\"";
}

class Roff {
  public:
    void macro(std::string_view m, std::string_view arg = {}) {
        out_ += fmt::format(".{}{}{}\n", m, arg.empty() ? "" : " ", arg);
    }
    // Text lines: a line that would read as a request gets a \& in front.
    void text(std::string_view roff) {
        for (auto line : split_lines(std::string(roff))) {
            auto t = trim(line);
            if (t.empty()) continue;
            if (t.front() == '.' || t.front() == '\'') out_ += "\\&";
            out_ += t;
            out_ += '\n';
        }
    }
    void raw(std::string_view roff) { out_ += roff; }
    void verbatim(std::string_view line) {
        std::string esc = roff_text(line);
        if (!esc.empty() && (esc.front() == '.' || esc.front() == '\'')) esc = "\\&" + esc;
        out_ += esc.empty() ? std::string("\\&") : esc;
        out_ += '\n';
    }
    const std::string& str() const { return out_; }

  private:
    std::string out_;
};

// ---- the variable table ------------------------------------------------------

// The first letter upper-cased, unless the first word is a name that must
// stay as it is (close(), TCPFIX_..., `code`).
std::string capitalised(std::string_view s) {
    std::string out(s);
    auto word = out.substr(0, out.find(' '));
    bool plain = !word.empty() && word.find_first_of("()_`") == std::string::npos;
    if (plain && out[0] >= 'a' && out[0] <= 'z') out[0] = static_cast<char>(out[0] - 32);
    return out;
}

// The placeholder of a variable's value, as `tcpfix run --help` shows it.
std::string value_name(const VariableInfo& v) {
    if (v.expected.starts_with("a duration")) return "DURATION";
    if (v.expected.starts_with("a file path")) return "PATH";
    if (v.expected.find("comma-separated") != std::string_view::npos) return "LIST";
    return "VALUE";
}

std::string sentence(std::string_view s) {
    std::string out = capitalised(s);
    if (!out.empty() && out.back() != '.') out += '.';
    return out;
}

void variables_list(Roff& r, const std::map<std::string, std::string>& readme_text) {
    for (const auto& v : tcpfix::policy::variables()) {
        r.macro("TP");
        r.text(fmt::format("\\fB{}\\fR", roff_text(v.name)));
        auto it = readme_text.find(std::string(v.name));
        r.text(it != readme_text.end() ? roff_inline(sentence(it->second))
                                       : roff_inline(sentence(v.summary)));
        r.macro("IP");
        r.text(fmt::format("Value: {}.", roff_text(v.expected)));
        r.macro("br");
        r.text(fmt::format("Example: \\fB{}={}\\fR; as an option: \\fBtcpfix run \\-\\-{}{}\\fR",
                           roff_text(v.name), roff_text(v.example), roff_text(v.cli),
                           v.flag ? "" : " " + roff_text(v.example)));
    }
}

void run_options_list(Roff& r) {
    for (const auto& v : tcpfix::policy::variables()) {
        r.macro("TP");
        if (v.flag) {
            r.text(fmt::format("\\fB\\-\\-{}\\fR", roff_text(v.cli)));
            r.text(fmt::format("{}; sets \\fB{}=1\\fR.", roff_inline(capitalised(v.summary)),
                               roff_text(v.name)));
        } else {
            r.text(fmt::format("\\fB\\-\\-{}\\fR \\fI{}\\fR", roff_text(v.cli), value_name(v)));
            bool has_example = v.expected.find("such as") != std::string_view::npos;
            r.text(fmt::format(
                "{}; sets \\fB{}\\fR to {}{}.", roff_inline(capitalised(v.summary)),
                roff_text(v.name), roff_text(v.expected),
                has_example ? "" : fmt::format(" (e.g. \\fB{}\\fR)", roff_text(v.example))));
        }
    }
}

// ---- Markdown subset to roff ---------------------------------------------------

std::vector<std::string> table_cells(std::string_view line) {
    std::vector<std::string> cells;
    line = trim(line);
    if (line.starts_with('|')) line.remove_prefix(1);
    if (line.ends_with('|')) line.remove_suffix(1);
    while (true) {
        auto bar = line.find('|');
        cells.emplace_back(trim(line.substr(0, bar)));
        if (bar == std::string_view::npos) break;
        line.remove_prefix(bar + 1);
    }
    return cells;
}

bool is_table_line(std::string_view line) {
    return trim(line).starts_with('|');
}
bool is_heading(std::string_view line) {
    return line.starts_with("# ") || line.starts_with("## ") || line.starts_with("### ");
}
bool is_bullet(std::string_view line) {
    return line.starts_with("- ") || line.starts_with("* ");
}

// References to a document the manual does not carry.
std::string drop_private_refs(const std::string& s) {
    static const std::regex ref(R"(\s?\(KERNEL-FACTS [0-9]+\))");
    return std::regex_replace(s, ref, "");
}

struct Page {
    const std::string* readme = nullptr;
    bool variables_done = false;
};

class Converter {
  public:
    Converter(Roff& r, Page& page) : r_(r), page_(page) {}

    void convert(const std::vector<std::string>& lines, bool from_readme);

  private:
    void paragraph(const std::vector<std::string>& lines) {
        std::string joined;
        for (const auto& l : lines) joined += std::string(trim(l)) + "\n";
        r_.macro("PP");
        r_.text(roff_inline(drop_private_refs(joined)));
    }
    void table(const std::vector<std::string>& lines);
    void include_readme(const std::string& heading, bool with_subsections);

    Roff& r_;
    Page& page_;
};

void Converter::table(const std::vector<std::string>& lines) {
    if (lines.size() < 2) return;
    auto header = table_cells(lines[0]);
    if (!header.empty() && header[0] == "variable") {
        // README's table of variables: the generated list, with its descriptions.
        std::map<std::string, std::string> descriptions;
        std::size_t what = header.size() - 1;
        for (std::size_t i = 2; i < lines.size(); ++i) {
            auto cells = table_cells(lines[i]);
            if (cells.size() != header.size()) continue;
            std::string name = cells[0];
            std::erase(name, '`');
            descriptions[name] = drop_private_refs(cells[what]);
        }
        r_.macro("PP");
        variables_list(r_, descriptions);
        page_.variables_done = true;
        r_.macro("PP");
        return;
    }
    r_.macro("PP");
    for (std::size_t i = 2; i < lines.size(); ++i) {  // [1] is the | --- | rule
        auto cells = table_cells(lines[i]);
        if (cells.empty()) continue;
        r_.macro("TP");
        r_.text("\\fB" + roff_inline(cells[0]) + "\\fR");
        for (std::size_t c = 1; c < cells.size(); ++c) {
            if (c > 1) {
                r_.macro("br");
                if (c < header.size()) {
                    r_.text(fmt::format("\\fI{}\\fR: {}", roff_inline(capitalised(header[c])),
                                        roff_inline(drop_private_refs(cells[c]))));
                    continue;
                }
            }
            r_.text(roff_inline(drop_private_refs(cells[c])));
        }
    }
    r_.macro("PP");
}

void Converter::include_readme(const std::string& heading, bool with_subsections) {
    if (page_.readme == nullptr) throw std::runtime_error("@README@ without a README");
    auto lines = split_lines(*page_.readme);
    std::size_t level = 0, i = 0;
    bool fence = false;
    for (; i < lines.size(); ++i) {
        if (lines[i].starts_with("```")) fence = !fence;
        if (fence || !is_heading(lines[i])) continue;
        auto hashes = lines[i].find(' ');
        if (lines[i].substr(hashes + 1) == heading) {
            level = hashes;
            break;
        }
    }
    if (level == 0) throw std::runtime_error("README.md has no section \"" + heading + "\"");
    std::vector<std::string> body;
    fence = false;
    for (++i; i < lines.size(); ++i) {
        if (lines[i].starts_with("```")) fence = !fence;
        if (!fence && is_heading(lines[i])) {
            auto hashes = lines[i].find(' ');
            if (!with_subsections || hashes <= level) break;
        }
        body.push_back(lines[i]);
    }
    convert(body, true);
}

void Converter::convert(const std::vector<std::string>& lines, bool from_readme) {
    for (std::size_t i = 0; i < lines.size();) {
        const std::string& line = lines[i];
        std::string_view t = trim(line);
        if (t.empty() || line.starts_with("%%")) {
            ++i;
            continue;
        }
        if (t == "@VARIABLES@") {
            r_.macro("PP");
            variables_list(r_, {});
            page_.variables_done = true;
            ++i;
            continue;
        }
        if (t == "@RUN_OPTIONS@") {
            run_options_list(r_);
            ++i;
            continue;
        }
        if (t.starts_with("@README") && t.ends_with("@")) {
            bool sub = t.starts_with("@README+ ");
            auto heading = t.substr(sub ? 9 : 8);
            heading.remove_suffix(1);
            include_readme(std::string(heading), sub);
            ++i;
            continue;
        }
        if (line.starts_with("```")) {
            r_.macro("PP");
            r_.macro("RS", "4");
            r_.macro("nf");
            for (++i; i < lines.size() && !lines[i].starts_with("```"); ++i) r_.verbatim(lines[i]);
            ++i;
            r_.macro("fi");
            r_.macro("RE");
            continue;
        }
        if (is_heading(line)) {
            auto hashes = line.find(' ');
            std::string title = line.substr(hashes + 1);
            if (hashes == 1 && !from_readme) {
                std::string upper;
                for (char c : title)
                    upper += (c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : c;
                r_.macro("SH", roff_arg(upper));
            } else {
                r_.macro("SS", roff_arg(title));
            }
            ++i;
            continue;
        }
        if (is_table_line(line)) {
            std::vector<std::string> rows;
            for (; i < lines.size() && is_table_line(lines[i]); ++i) rows.push_back(lines[i]);
            table(rows);
            continue;
        }
        if (is_bullet(line)) {
            bool first = true;
            while (i < lines.size() && is_bullet(lines[i])) {
                std::string item = lines[i].substr(2) + "\n";
                for (++i; i < lines.size() && lines[i].starts_with("  ") && !trim(lines[i]).empty();
                     ++i)
                    item += std::string(trim(lines[i])) + "\n";
                if (first) r_.macro("PP");
                first = false;
                r_.macro("IP", "\\(bu 2");
                r_.text(roff_inline(drop_private_refs(item)));
                while (i < lines.size() && trim(lines[i]).empty() && i + 1 < lines.size() &&
                       is_bullet(lines[i + 1]))
                    ++i;
            }
            continue;
        }
        if (line.starts_with("= ")) {  // a definition: "= term", then its text
            r_.macro("TP");
            r_.text(roff_inline(line.substr(2)));
            std::vector<std::string> body;
            for (++i; i < lines.size() && !trim(lines[i]).empty() && !lines[i].starts_with("= ");
                 ++i)
                body.push_back(lines[i]);
            std::string joined;
            for (const auto& l : body) joined += std::string(trim(l)) + "\n";
            r_.text(roff_inline(joined));
            continue;
        }
        std::vector<std::string> para;
        for (; i < lines.size() && !trim(lines[i]).empty() && !is_heading(lines[i]) &&
               !lines[i].starts_with("```") && !is_table_line(lines[i]) && !is_bullet(lines[i]);
             ++i)
            para.push_back(lines[i]);
        paragraph(para);
    }
}

int man(const std::vector<std::string>& args) {
    if (args.size() != 7)
        throw std::runtime_error(
            "usage: tcpfix_docgen man SECTION TEMPLATE README VERSION DATE LIBDIR OUT");
    const auto& section = args[0];
    std::string readme = read_file(args[2]);
    Roff r;
    r.raw(
        fmt::format(".\\\" Generated by tcpfix_docgen from man/tcpfix.{}.in, README.md and "
                    "policy::variables(); do not edit.\n",
                    section));
    r.macro("TH", fmt::format("TCPFIX {} \"{}\" \"tcpfix {}\" \"tcpfix manual\"", section, args[4],
                              args[3]));
    r.macro("nh");       // no hyphenation: TCPFIX_CONNECT_RATE must stay searchable
    r.macro("ad", "l");  // ragged right: long names make justified lines gappy
    Page page;
    page.readme = &readme;
    Converter conv(r, page);
    std::string source = read_file(args[1]);
    for (std::size_t at; (at = source.find("@LIBDIR@")) != std::string::npos;)
        source.replace(at, 8, args[5]);
    conv.convert(split_lines(source), false);
    std::string out = r.str();
    if (section == "7" && !page.variables_done)
        throw std::runtime_error("tcpfix.7 lists no variables: put @VARIABLES@ in its template");
    // Collapse ".PP" directly after ".PP"/".SH"/".SS"/".TP" ("paragraph" then nothing).
    static const std::regex empty_pp(R"((\n\.(?:PP|SH[^\n]*|SS[^\n]*))\n\.PP\n)");
    for (std::string prev; prev != out;) {
        prev = out;
        out = std::regex_replace(out, empty_pp, "$1\n");
    }
    static const std::regex trailing_pp(R"(\n\.PP\n$)");
    out = std::regex_replace(out, trailing_pp, "\n");
    write_file(args[6], out);
    return 0;
}

// ---- the bash completion ---------------------------------------------------------

// "keep, rst or rst-always" -> "keep rst rst-always"; "" when the value is free.
std::string choices(std::string_view expected) {
    // W, W or W, with W a word such as rst-always
    static const std::regex list(
        R"([a-z0-9][a-z0-9-]*(, [a-z0-9][a-z0-9-]*)*( or [a-z0-9][a-z0-9-]*)?)");
    std::string text(expected);
    if (!std::regex_match(text, list)) return "";
    std::string out;
    std::stringstream words(std::regex_replace(text, std::regex(",| or "), " "));
    for (std::string w; words >> w;) out += (out.empty() ? "" : " ") + w;
    return out;
}

int completion(const std::vector<std::string>& args) {
    if (args.size() != 2) throw std::runtime_error("usage: tcpfix_docgen completion TEMPLATE OUT");
    std::string options = "--help --library", value_options = "--library", cases;
    std::string files = "--library";
    for (const auto& v : tcpfix::policy::variables()) {
        std::string opt = fmt::format("--{}", v.cli);
        options += " " + opt;
        if (v.flag) continue;
        value_options += " " + opt;
        if (v.expected.starts_with("a file path")) {
            files += "|" + opt;
        } else if (auto list = choices(v.expected); !list.empty()) {
            cases += fmt::format(
                "        {}) mapfile -t COMPREPLY < <(compgen -W \"{}\" -- \"$cur\") ;;\n", opt,
                list);
        }
    }
    cases += fmt::format("        {}) _tcpfix_files \"$cur\" ;;\n", files);
    std::string text = read_file(args[0]);
    auto replace = [&](const std::string& key, const std::string& value) {
        auto at = text.find(key);
        if (at == std::string::npos) throw std::runtime_error(args[0] + " has no " + key);
        text.replace(at, key.size(), value);
    };
    replace("@RUN_OPTIONS@", options);
    replace("@RUN_VALUE_OPTIONS@", value_options);
    replace("@RUN_VALUE_CASES@\n", cases);
    write_file(args[1], text);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        std::vector<std::string> args(argv + 1, argv + argc);
        if (!args.empty() && args[0] == "man") return man({args.begin() + 1, args.end()});
        if (!args.empty() && args[0] == "completion")
            return completion({args.begin() + 1, args.end()});
        throw std::runtime_error("usage: tcpfix_docgen man|completion ...");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "tcpfix_docgen: %s\n", e.what());
        return 1;
    }
}
