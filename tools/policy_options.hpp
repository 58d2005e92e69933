// The TCPFIX_* variables as command-line options, one per row of the
// variable table (policy::variables()): `tcpfix run` turns them into the
// environment of the command, `tcpfix attach` into BPF programs.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace tcpfix::tools {

class PolicyOptions {
  public:
    // Adds --close, --connect-timeout, ... (flags for 0/1 variables) to app.
    void add_to(CLI::App& app);
    // (variable, value) for every option given, in table order; values
    // unchecked (policy::check_variable / parse_config check them).
    std::vector<std::pair<std::string, std::string>> given() const;

  private:
    std::vector<CLI::Option*> options_;
    std::vector<std::string> values_;
    std::unique_ptr<bool[]> flags_;
};

}  // namespace tcpfix::tools
