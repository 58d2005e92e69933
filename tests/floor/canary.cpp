// Built only to be refused by check_floor.py (ctest floor.audit_catches): a
// shared library with what the real one must never have — a glibc 2.36
// function, dlsym at its glibc 2.34 default version, and libstdc++.
#include <dlfcn.h>
#include <stdlib.h>

#include <string>

extern "C" unsigned tcpfix_canary(const char* name) {
    std::string copy(name);
    void* f = dlsym(RTLD_DEFAULT, copy.c_str());
    return arc4random() ^ static_cast<unsigned>(reinterpret_cast<unsigned long>(f));
}
