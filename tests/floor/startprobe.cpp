// Built like the tcpfix command (tcpfix_glibc_floor: libstdc++ inside, glibc
// references redirected by tools/glibc_compat.cpp, its own start-up path on
// glibc < 2.34). Prints what start-up and shutdown did, for the floor tests to
// compare on Debian 11, 12 and 13: every constructor exactly once before
// main, destructors and atexit handlers at exit, threads and exceptions.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>

namespace {

int g_constructed = 0;
int g_early = 0;

struct Global {
    Global() { ++g_constructed; }
    ~Global() { std::printf("global destructor\n"); }
};
Global g_global;

__attribute__((constructor)) void early() { ++g_early; }

}  // namespace

int main(int argc, char** argv) {
    std::atexit([] { std::printf("atexit handler\n"); });
    std::string from_thread;
    std::thread t([&] { from_thread = "thread ran"; });
    t.join();
    std::string caught;
    try {
        throw std::runtime_error("exception caught");
    } catch (const std::exception& e) {
        caught = e.what();
    }
    std::printf("constructors %d %d; argc %d argv0 %s; %s; %s\n", g_constructed, g_early, argc,
                argc > 0 ? "set" : "missing", from_thread.c_str(), caught.c_str());
    std::fflush(stdout);
    return 7;
}
