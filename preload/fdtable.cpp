#include "preload/fdtable.hpp"

#include <sys/mman.h>

#include <new>

namespace tcpfix::fdtable {

namespace detail {
std::atomic<std::atomic<std::uint32_t>*> g_chunks[kMaxChunks];
std::atomic<Slot*> g_slot_chunks[kMaxSlotChunks];
std::atomic<std::uint32_t> g_fork_epoch{0};
std::atomic<std::uint32_t> g_spawn_epoch{0};
}

namespace {

void* map_zeroed(std::size_t bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
}

// Fixed-size records by 32-bit index (0 is "none"), in chunks mapped on
// first use and never returned; a lock-free free list whose head carries a
// tag against ABA. T::*Link is the atomic that holds the next free index.
template <typename T, std::atomic<std::uint32_t> T::*Link, unsigned kChunkBits2, unsigned kMaxChunks2>
class Pool {
public:
    constexpr explicit Pool(std::atomic<T*>* chunks) : chunks_(chunks) {}

    static constexpr unsigned kPerChunk = 1u << kChunkBits2;

    T& at(std::uint32_t index) {
        return chunks_[index >> kChunkBits2].load(std::memory_order_acquire)[index & (kPerChunk - 1)];
    }

    std::uint32_t allocate() {
        std::uint64_t head = free_head_.load(std::memory_order_acquire);
        while (static_cast<std::uint32_t>(head) != 0) {
            std::uint32_t index = static_cast<std::uint32_t>(head);
            std::uint32_t next = (at(index).*Link).load(std::memory_order_relaxed);
            std::uint64_t tagged = ((head >> 32) + 1) << 32 | next;
            if (free_head_.compare_exchange_weak(head, tagged, std::memory_order_acq_rel)) return index;
        }
        std::uint32_t index = next_.fetch_add(1, std::memory_order_relaxed);
        if (index >= kPerChunk * kMaxChunks2) return 0;
        if (chunk(index >> kChunkBits2) == nullptr) return 0;
        return index;
    }

    void free(std::uint32_t index) {
        std::uint64_t head = free_head_.load(std::memory_order_acquire);
        do {
            (at(index).*Link).store(static_cast<std::uint32_t>(head), std::memory_order_relaxed);
        } while (!free_head_.compare_exchange_weak(head, ((head >> 32) + 1) << 32 | index,
                                                   std::memory_order_acq_rel));
    }

private:
    T* chunk(unsigned c) {
        T* existing = chunks_[c].load(std::memory_order_acquire);
        if (existing != nullptr) return existing;
        constexpr std::size_t bytes = sizeof(T) * kPerChunk;
        void* mem = map_zeroed(bytes);
        if (mem == nullptr) return nullptr;
        T* fresh = new (mem) T[kPerChunk];
        if (chunks_[c].compare_exchange_strong(existing, fresh, std::memory_order_acq_rel)) return fresh;
        munmap(mem, bytes);
        return existing;
    }

    std::atomic<T*>* chunks_;  // kMaxChunks2 of them
    std::atomic<std::uint32_t> next_{1};
    std::atomic<std::uint64_t> free_head_{0};
};

Pool<Slot, &Slot::aux, kSlotChunkBits, kMaxSlotChunks> g_slots(detail::g_slot_chunks);
std::atomic<SavedOption*> g_option_chunks[1024];
Pool<SavedOption, &SavedOption::next, 10, 1024> g_options(g_option_chunks);  // up to ~1 million saved options

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

}  // namespace

void detail::free_slot(std::uint32_t index) {
    Slot& s = g_slots.at(index);
    std::uint32_t o = s.options.load(std::memory_order_acquire) == 0 ? 0 : s.options.exchange(0, std::memory_order_acq_rel);
    while (o != 0) {
        std::uint32_t next = g_options.at(o).next.load(std::memory_order_relaxed);
        g_options.free(o);
        o = next;
    }
    g_slots.free(index);
}

namespace {

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

const SavedOption& option(std::uint32_t index) { return g_options.at(index); }

bool save_option(Slot& s, int level, int name, const void* value, unsigned len) {
    if (len > sizeof(SavedOption::value)) return false;
    std::atomic<std::uint32_t>* link = &s.options;
    unsigned count = 0;
    for (std::uint32_t i = link->load(std::memory_order_acquire); i != 0; i = link->load(std::memory_order_acquire)) {
        SavedOption& o = g_options.at(i);
        if (o.level == level && o.name == name) {
            o.len = static_cast<std::uint8_t>(len);
            __builtin_memcpy(o.value, value, len);
            return true;
        }
        link = &o.next;
        ++count;
    }
    if (count >= kMaxSavedOptions) return false;
    std::uint32_t fresh = g_options.allocate();
    if (fresh == 0) return false;
    SavedOption& o = g_options.at(fresh);
    o.level = level;
    o.name = name;
    o.len = static_cast<std::uint8_t>(len);
    __builtin_memcpy(o.value, value, len);
    o.next.store(0, std::memory_order_relaxed);
    link->store(fresh, std::memory_order_release);  // appended: replayed in the order first set
    return true;
}

std::uint32_t track_new(int fd, int domain) {
    std::uint32_t index = g_slots.allocate();
    if (index == 0) {
        clear(fd);
        return 0;
    }
    Slot& s = slot(index);
    s.flags.store(domain == AF_INET6 ? kInet6 : 0u, std::memory_order_relaxed);
    s.fork_epoch = fork_epoch();
    s.spawn_epoch = spawn_epoch();
    // Only the thread that allocated the slot writes it: no locked add needed.
    s.generation.store(s.generation.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    s.dest_family = 0;
    s.connect_start_ns.store(0, std::memory_order_relaxed);
    s.aux.store(0, std::memory_order_relaxed);
    s.refs.store(1, std::memory_order_release);
    install(fd, index);
    return index;
}

void track_owned(int fd) { install(fd, kOwned); }


void share(int from, int fd) { install(fd, reference_for_copy(from)); }

void detail::clear_slow(int fd) { install(fd, 0); }

void restore(int fd, std::uint32_t index) { install(fd, index); }


void bump_fork_epoch() { detail::g_fork_epoch.fetch_add(1, std::memory_order_acq_rel); }

void bump_spawn_epoch() { detail::g_spawn_epoch.fetch_add(1, std::memory_order_acq_rel); }

}  // namespace tcpfix::fdtable
