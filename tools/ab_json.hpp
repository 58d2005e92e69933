// Just enough JSON reading for `tcpfix ab` to sum the stats files the library
// writes: a strict recursive-descent parser into a small tree.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tcpfix::tools::json {

struct Value {
    enum class Kind { Null, Bool, Number, String, Array, Object };
    Kind kind = Kind::Null;
    bool boolean = false;
    double number = 0;
    std::string string;
    std::vector<Value> array;
    std::vector<std::pair<std::string, Value>> object;  // in document order

    // The member named `key` of an object, or nullptr.
    const Value* get(std::string_view key) const;
    bool is_number() const { return kind == Kind::Number; }
    bool is_object() const { return kind == Kind::Object; }
};

// The document in `text`; nullopt (and *error set) when it is not valid JSON.
std::optional<Value> parse(std::string_view text, std::string* error = nullptr);

}  // namespace tcpfix::tools::json
