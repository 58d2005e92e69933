// Helpers shared by the unit tests of policy/.
#pragma once

#include <atomic>
#include <cctype>
#include <cstddef>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace tcpfix::test {

// A gtest parameter name for table row `index`, made of its description so a
// failure names its row: "r12_lo_above_hi".
inline std::string row_name(std::size_t index, std::string_view description) {
    std::string out = "r" + std::to_string(index) + "_";
    bool last_underscore = true;
    for (char ch : description) {
        if (std::isalnum(static_cast<unsigned char>(ch))) {
            out += ch;
            last_underscore = false;
        } else if (!last_underscore) {
            out += '_';
            last_underscore = true;
        }
    }
    while (!out.empty() && out.back() == '_') out.pop_back();
    return out;
}

// parse_config's input as the library builds it from the environment.
using Vars = std::vector<std::pair<std::string_view, std::string_view>>;

// Runs `body(thread_index)` on `threads` threads released together, so that
// their calls race as hard as the machine allows.
template <typename F>
void race(int threads, F body) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            ready.fetch_add(1);
            while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
            body(t);
        });
    }
    while (ready.load() != threads) std::this_thread::yield();
    go.store(true, std::memory_order_release);
    for (auto& th : pool) th.join();
}

}  // namespace tcpfix::test
