// The kernel facilities table (policy/facilities.*) and README's "Old
// kernels" table say the same: every facility the library can warn about has
// its row, with the same minimum kernel.
#include "policy/facilities.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace tcpfix::policy {
namespace {

std::string without_backticks(std::string s) {
    std::string out;
    for (char c : s)
        if (c != '`') out += c;
    return out;
}

TEST(Facilities, EveryFacilityHasItsReadmeRow) {
    std::ifstream in(TCPFIX_SOURCE_DIR "/README.md");
    ASSERT_TRUE(in) << "cannot read README.md";
    std::set<std::string> rows;
    for (std::string line; std::getline(in, line);)
        if (line.starts_with("| ")) rows.insert(without_backticks(line));
    ASSERT_EQ(facilities().size(), static_cast<std::size_t>(Facility::Count));
    for (const auto& f : facilities()) {
        std::string minimum(f.minimum);
        if (minimum.ends_with('+')) minimum.pop_back();
        std::string start = "| " + std::string(f.name) + " | " + minimum + " | ";
        bool found = false;
        for (const auto& row : rows) found = found || row.starts_with(start);
        EXPECT_TRUE(found) << "README has no row starting \"" << start << "\"";
        EXPECT_FALSE(f.without_it.empty()) << f.name;
    }
}

TEST(Facilities, LookupMatchesTheTable) {
    for (const auto& f : facilities()) EXPECT_EQ(&facility_info(f.facility), &f);
}

}  // namespace
}  // namespace tcpfix::policy
