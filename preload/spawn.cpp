// posix_spawn(), system(), popen() and the exec family: a program started in
// a child that ran no fork() handlers (glibc spawns with clone(CLONE_VFORK);
// vfork + exec) may hold every socket of this process that is not
// close-on-exec. Each start bumps the spawn epoch, so such sockets are later
// closed gracefully, never with an RST that could cut the child's data short.
// An exec from a vfork child bumps the epoch in the parent's memory, which it
// shares. An exec also settles the sockets held for a background decision
// (hold.hpp) — not from a vfork child, whose memory is the parent's.
//
// vfork() and clone() make children that share this memory: there a hook
// must not touch the table (runtime::in_unannounced_child). Their hooks say
// so before the real call, and are a few instructions of assembly that jump
// to it: a vfork() child runs on its parent's stack and must not return
// through a frame of ours (the parent would later return into whatever the
// child left there).
#include <sched.h>

#include "preload/fdtable.hpp"
#include "preload/hooks.hpp"
#include "preload/real.hpp"
#include "preload/runtime.hpp"

using namespace tcpfix;

namespace {

void announce_spawn() {
    if (runtime::active()) fdtable::bump_spawn_epoch();
}

// An exec replaces this program: the sockets held for a background decision
// are settled first (at most 50 ms); exec would close them anyway
// (close-on-exec), normally, without the RST they may have earned. In a
// vfork() child, the exec also tells the parent the child is done with its
// memory.
void before_exec() {
    announce_spawn();
    if (runtime::active()) runtime::before_exec_in_child();
    hooks::settle_before_exec();
}

#if defined(__x86_64__)
real::Symbol<decltype(::vfork)> g_vfork{"vfork", true};
real::Symbol<decltype(::clone)> g_clone{"clone", true};
#endif

}  // namespace

#if defined(__x86_64__)

// Called by the vfork() hook before the real vfork(), which it returns.
extern "C" __attribute__((visibility("hidden"))) void* tcpfix_before_vfork() noexcept {
    runtime::ErrnoGuard keep_errno;  // the first call resolves the real function
    if (runtime::active()) runtime::vfork_pending();
    return reinterpret_cast<void*>(g_vfork.get());
}

// Called by the clone() hook with its flags before the real clone(), which
// it returns. A child sharing this memory that is not a thread of this
// process may run for as long as it likes: from now on the hooks ask
// getpid(). A child with a copy of the memory needs nothing (the kernel wipes
// the fork marker in it).
extern "C" __attribute__((visibility("hidden"))) void* tcpfix_before_clone(int flags) noexcept {
    runtime::ErrnoGuard keep_errno;
    if (runtime::active() && (flags & (CLONE_VM | CLONE_THREAD)) == CLONE_VM) runtime::shared_memory_child();
    return reinterpret_cast<void*>(g_clone.get());
}

// vfork(), __vfork(): as the real vfork(). At entry %rsp is 8 past a 16-byte
// boundary; the call below keeps the ABI's alignment. tcpfix_before_vfork
// returns the real function in %rax; vfork takes no argument.
//
// clone(), __clone(): as the real clone(fn, stack, flags, arg, ...); the six
// register arguments are kept across the call (the seventh stays on the
// stack where the caller put it), the flags passed on in %edi.
asm(R"(
    .pushsection .text.tcpfix_vfork_clone,"ax",@progbits
    .p2align 4
    .globl vfork
    .type vfork, @function
    .globl __vfork
    .type __vfork, @function
vfork:
__vfork:
    .cfi_startproc
    endbr64
    subq $8, %rsp
    .cfi_adjust_cfa_offset 8
    call tcpfix_before_vfork
    addq $8, %rsp
    .cfi_adjust_cfa_offset -8
    jmp *%rax
    .cfi_endproc
    .size vfork, .-vfork
    .size __vfork, .-__vfork

    .p2align 4
    .globl clone
    .type clone, @function
    .globl __clone
    .type __clone, @function
clone:
__clone:
    .cfi_startproc
    endbr64
    pushq %rdi
    .cfi_adjust_cfa_offset 8
    pushq %rsi
    .cfi_adjust_cfa_offset 8
    pushq %rdx
    .cfi_adjust_cfa_offset 8
    pushq %rcx
    .cfi_adjust_cfa_offset 8
    pushq %r8
    .cfi_adjust_cfa_offset 8
    pushq %r9
    .cfi_adjust_cfa_offset 8
    subq $8, %rsp
    .cfi_adjust_cfa_offset 8
    movl %edx, %edi
    call tcpfix_before_clone
    addq $8, %rsp
    .cfi_adjust_cfa_offset -8
    popq %r9
    .cfi_adjust_cfa_offset -8
    popq %r8
    .cfi_adjust_cfa_offset -8
    popq %rcx
    .cfi_adjust_cfa_offset -8
    popq %rdx
    .cfi_adjust_cfa_offset -8
    popq %rsi
    .cfi_adjust_cfa_offset -8
    popq %rdi
    .cfi_adjust_cfa_offset -8
    jmp *%rax
    .cfi_endproc
    .size clone, .-clone
    .size __clone, .-__clone
    .popsection
)");

#endif  // __x86_64__; elsewhere there is no vfork()/clone() hook and the hooks always ask getpid()

// As the real posix_spawn(): 0 or an error number.
extern "C" __attribute__((visibility("default"))) int posix_spawn(pid_t* pid, const char* path,
                                                                  const posix_spawn_file_actions_t* actions,
                                                                  const posix_spawnattr_t* attr, char* const argv[],
                                                                  char* const envp[]) {
    announce_spawn();
    return real::posix_spawn.get()(pid, path, actions, attr, argv, envp);
}

// As the real posix_spawnp(): 0 or an error number.
extern "C" __attribute__((visibility("default"))) int posix_spawnp(pid_t* pid, const char* file,
                                                                   const posix_spawn_file_actions_t* actions,
                                                                   const posix_spawnattr_t* attr, char* const argv[],
                                                                   char* const envp[]) {
    announce_spawn();
    return real::posix_spawnp.get()(pid, file, actions, attr, argv, envp);
}

// As the real system().
extern "C" __attribute__((visibility("default"))) int system(const char* command) {
    if (command != nullptr) announce_spawn();
    return real::system.get()(command);
}

// As the real popen().
extern "C" __attribute__((visibility("default"))) FILE* popen(const char* command, const char* mode) {
    announce_spawn();
    return real::popen.get()(command, mode);
}

// The exec family returns only on failure, with errno as the real call set it.
extern "C" __attribute__((visibility("default"))) int execve(const char* path, char* const argv[],
                                                             char* const envp[]) noexcept {
    before_exec();
    return real::execve.get()(path, argv, envp);
}

extern "C" __attribute__((visibility("default"))) int execv(const char* path, char* const argv[]) noexcept {
    before_exec();
    return real::execv.get()(path, argv);
}

extern "C" __attribute__((visibility("default"))) int execvp(const char* file, char* const argv[]) noexcept {
    before_exec();
    return real::execvp.get()(file, argv);
}

extern "C" __attribute__((visibility("default"))) int execvpe(const char* file, char* const argv[],
                                                              char* const envp[]) noexcept {
    before_exec();
    return real::execvpe.get()(file, argv, envp);
}
