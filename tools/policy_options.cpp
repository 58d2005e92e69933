#include "tools/policy_options.hpp"

#include <fmt/format.h>

#include "policy/config.hpp"

namespace tcpfix::tools {
namespace {

std::string option_help(const policy::VariableInfo& v) {
    if (v.flag) return fmt::format("{}; sets {}=1", v.summary, v.name);
    return fmt::format("{}; sets {} to {} (e.g. {})", v.summary, v.name, v.expected, v.example);
}

// The placeholder --help shows for a variable's value.
std::string value_name(const policy::VariableInfo& v) {
    if (v.expected.starts_with("a duration")) return "DURATION";
    if (v.expected.starts_with("a file path")) return "PATH";
    if (v.expected.find("comma-separated") != std::string_view::npos) return "LIST";
    return "VALUE";
}

}  // namespace

void PolicyOptions::add_to(CLI::App& app) {
    auto table = policy::variables();
    values_.resize(table.size());
    flags_ = std::make_unique<bool[]>(table.size());
    for (std::size_t i = 0; i < table.size(); ++i) {
        auto name = fmt::format("--{}", table[i].cli);
        if (table[i].flag)
            options_.push_back(app.add_flag(name, flags_[i], option_help(table[i])));
        else
            options_.push_back(app.add_option(name, values_[i], option_help(table[i]))
                                   ->type_name(value_name(table[i])));
    }
}

std::vector<std::pair<std::string, std::string>> PolicyOptions::given() const {
    std::vector<std::pair<std::string, std::string>> out;
    auto table = policy::variables();
    for (std::size_t i = 0; i < table.size() && i < options_.size(); ++i) {
        if (options_[i]->count() == 0) continue;
        out.emplace_back(std::string(table[i].name),
                         table[i].flag ? (flags_[i] ? "1" : "0") : values_[i]);
    }
    return out;
}

}  // namespace tcpfix::tools
