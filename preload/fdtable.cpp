#include "preload/fdtable.hpp"

#include <sys/mman.h>

#include <new>

namespace tcpfix::fdtable {

namespace detail {
std::atomic<std::atomic<std::uint32_t>*> g_chunks[kMaxChunks];
}

namespace {

constexpr unsigned kSlotChunkBits = 10;
constexpr unsigned kSlotChunkSize = 1u << kSlotChunkBits;
constexpr unsigned kMaxSlotChunks = 4096;  // up to ~4 million live sockets

std::atomic<Slot*> g_slot_chunks[kMaxSlotChunks];
std::atomic<std::uint32_t> g_next_slot{1};  // 0 means "none"
// Free-list head: low 32 bits the slot index, high 32 bits a tag against ABA.
std::atomic<std::uint64_t> g_free_head{0};
std::atomic<std::uint32_t> g_fork_epoch{0};
std::atomic<std::uint32_t> g_spawn_epoch{0};

void* map_zeroed(std::size_t bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
}

// The chunk holding fd's entry, mapped on first use; nullptr if out of range or memory.
std::atomic<std::uint32_t>* chunk_for(int fd, bool create) {
    unsigned u = static_cast<unsigned>(fd);
    if (u >= kMaxFd) return nullptr;
    auto& head = detail::g_chunks[u >> kChunkBits];
    std::atomic<std::uint32_t>* chunk = head.load(std::memory_order_acquire);
    if (chunk != nullptr || !create) return chunk;
    constexpr std::size_t bytes = sizeof(std::atomic<std::uint32_t>) * kChunkSize;
    auto* fresh = static_cast<std::atomic<std::uint32_t>*>(map_zeroed(bytes));
    if (fresh == nullptr) return nullptr;
    if (head.compare_exchange_strong(chunk, fresh, std::memory_order_acq_rel)) return fresh;
    munmap(fresh, bytes);  // another thread won the race
    return chunk;
}

Slot* slot_chunk(unsigned c, bool create) {
    Slot* chunk = g_slot_chunks[c].load(std::memory_order_acquire);
    if (chunk != nullptr || !create) return chunk;
    constexpr std::size_t bytes = sizeof(Slot) * kSlotChunkSize;
    void* mem = map_zeroed(bytes);
    if (mem == nullptr) return nullptr;
    Slot* fresh = new (mem) Slot[kSlotChunkSize];
    if (g_slot_chunks[c].compare_exchange_strong(chunk, fresh, std::memory_order_acq_rel))
        return fresh;
    munmap(mem, bytes);
    return chunk;
}

std::uint32_t allocate_slot() {
    std::uint64_t head = g_free_head.load(std::memory_order_acquire);
    while (static_cast<std::uint32_t>(head) != 0) {
        std::uint32_t index = static_cast<std::uint32_t>(head);
        std::uint32_t next = slot(index).next_free.load(std::memory_order_relaxed);
        std::uint64_t tagged = ((head >> 32) + 1) << 32 | next;
        if (g_free_head.compare_exchange_weak(head, tagged, std::memory_order_acq_rel)) return index;
    }
    std::uint32_t index = g_next_slot.fetch_add(1, std::memory_order_relaxed);
    if (index >= kSlotChunkSize * kMaxSlotChunks) return 0;
    if (slot_chunk(index >> kSlotChunkBits, true) == nullptr) return 0;
    return index;
}

void free_slot(std::uint32_t index) {
    std::uint64_t head = g_free_head.load(std::memory_order_acquire);
    do {
        slot(index).next_free.store(static_cast<std::uint32_t>(head), std::memory_order_relaxed);
    } while (!g_free_head.compare_exchange_weak(head, ((head >> 32) + 1) << 32 | index,
                                                std::memory_order_acq_rel));
}

// Installs value at fd and releases what was there.
void install(int fd, std::uint32_t value) {
    std::atomic<std::uint32_t>* chunk = chunk_for(fd, value != 0);
    if (chunk == nullptr) {
        if (value != 0 && value != kOwned) release(value);
        return;
    }
    std::uint32_t old = chunk[static_cast<unsigned>(fd) & (kChunkSize - 1)].exchange(value, std::memory_order_acq_rel);
    if (old != 0 && old != kOwned) release(old);
}

}  // namespace

Slot& slot(std::uint32_t index) {
    return g_slot_chunks[index >> kSlotChunkBits].load(std::memory_order_acquire)[index & (kSlotChunkSize - 1)];
}

std::uint32_t track_new(int fd, int domain, int type) {
    std::uint32_t index = allocate_slot();
    if (index == 0) {
        clear(fd);
        return 0;
    }
    Slot& s = slot(index);
    s.flags.store(0, std::memory_order_relaxed);
    s.fork_epoch = fork_epoch();
    s.spawn_epoch = spawn_epoch();
    s.generation++;
    s.domain = domain;
    s.type = type;
    s.dest = {};
    s.connect_start_ns = 0;
    s.bound_len = 0;
    s.option_count = 0;
    s.close_wait_seen_ns = 0;
    s.refs.store(1, std::memory_order_release);
    install(fd, index);
    return index;
}

void track_owned(int fd) { install(fd, kOwned); }

std::uint32_t take(int fd) {
    std::atomic<std::uint32_t>* chunk = chunk_for(fd, false);
    if (chunk == nullptr) return 0;
    return chunk[static_cast<unsigned>(fd) & (kChunkSize - 1)].exchange(0, std::memory_order_acq_rel);
}

void share(int from, int fd) {
    std::uint32_t index = lookup(from);
    if (index == kOwned) index = 0;  // a copy of tcpfix's own descriptor is the application's
    if (index != 0) slot(index).refs.fetch_add(1, std::memory_order_acq_rel);
    install(fd, index);
}

void clear(int fd) {
    if (lookup(fd) != 0) install(fd, 0);
}

void restore(int fd, std::uint32_t index) { install(fd, index); }

void wait_not_busy(std::uint32_t index) {
    if (index == 0 || index == kOwned) return;
    while (slot(index).busy.load(std::memory_order_seq_cst) != 0) {
    }
}

void release(std::uint32_t index) {
    if (index == 0 || index == kOwned) return;
    if (slot(index).refs.fetch_sub(1, std::memory_order_acq_rel) == 1) free_slot(index);
}

std::uint32_t fork_epoch() { return g_fork_epoch.load(std::memory_order_acquire); }

void bump_fork_epoch() { g_fork_epoch.fetch_add(1, std::memory_order_acq_rel); }

std::uint32_t spawn_epoch() { return g_spawn_epoch.load(std::memory_order_acquire); }

void bump_spawn_epoch() { g_spawn_epoch.fetch_add(1, std::memory_order_acq_rel); }

}  // namespace tcpfix::fdtable
