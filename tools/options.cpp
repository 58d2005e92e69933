#include <fmt/format.h>

#include <charconv>

#include "policy/config.hpp"
#include "tools/command.hpp"

namespace tcpfix::tools {

CLI::Option* add_duration(CLI::App& app, const std::string& name, std::int64_t& ns,
                          const std::string& description, std::string_view fallback) {
    auto store = [&ns, name](const std::string& text) {
        auto parsed = policy::parse_duration_ns(text);
        if (!parsed)
            throw CLI::ValidationError(
                name, fmt::format("\"{}\": expected a duration such as 250ms or 2s (at most 3600s)",
                                  text));
        ns = *parsed;
    };
    auto* opt = app.add_option_function<std::string>(name, store, description);
    opt->type_name("DURATION");
    if (!fallback.empty()) opt->default_str(std::string(fallback));
    return opt;
}

std::optional<double> parse_churn_rate(std::string_view text) {
    if (text == "0" || text == "0/s" || text == "max") return 0.0;
    if (text.find('/') != std::string_view::npos) return policy::parse_rate_per_s(text);
    return policy::parse_rate_per_s(std::string(text) + "/s");
}

std::optional<std::string> unescape(std::string_view text) {
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '\\') {
            out += text[i];
            continue;
        }
        if (++i == text.size()) return std::nullopt;
        switch (text[i]) {
            case 'r':
                out += '\r';
                break;
            case 'n':
                out += '\n';
                break;
            case 't':
                out += '\t';
                break;
            case '0':
                out += '\0';
                break;
            case '\\':
                out += '\\';
                break;
            case 'x': {
                unsigned byte = 0;
                auto hex = text.substr(i + 1, 2);
                auto [end, ec] = std::from_chars(hex.data(), hex.data() + hex.size(), byte, 16);
                if (hex.size() != 2 || ec != std::errc() || end != hex.data() + 2)
                    return std::nullopt;
                out += static_cast<char>(byte);
                i += 2;
                break;
            }
            default:
                return std::nullopt;
        }
    }
    return out;
}

}  // namespace tcpfix::tools
