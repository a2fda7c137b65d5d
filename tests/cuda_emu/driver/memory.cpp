// Device memory of the emulated driver: one reserved address range, allocations bump-allocated in it (never reused,
// so a stale pointer always names its freed allocation), 256-byte aligned with a 256-byte gap between them, filled
// with 0xFF bytes (NaN as f32) when made. Page-locked host memory is tracked by range.
//
// Kernel libraries are compiled with g++ -fsanitize=kernel-address in outline mode, so every load and store in a
// kernel calls one of the __asan_{load,store}N_noabort hooks defined here. An access outside the reserved range
// (the kernel's stack, shared memory, its parameters) returns at once; an access to device memory must lie inside
// a live allocation, else the launch fails with where the address is. The bytes each launch reads and writes are
// collected per allocation (lowest and highest) for race detection.
#include "driver.h"
#include "launch_accesses.h"

#include <algorithm>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

namespace emu {

namespace {

const size_t RESERVED = size_t(256) << 30; // 256 GiB of address space
const size_t ALIGN = 256;                  // cuMemAlloc's alignment
const size_t GAP = 256;                    // bytes between two allocations that no allocation covers

uintptr_t g_base = 0, g_cursor = 0;
std::vector<std::unique_ptr<Allocation>> g_allocations; // sorted by base (bump allocation)
uint64_t g_next_id = 1;
std::map<uintptr_t, size_t> g_pinned; // base -> bytes
std::map<uintptr_t, size_t> g_pinned_owned; // allocated here (cuMemAllocHost / cuMemHostAlloc)

size_t page() {
    static size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

bool reserve() {
    if (g_base) return true;
    void* p = mmap(nullptr, RESERVED, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return false;
    g_base = (uintptr_t)p;
    g_cursor = g_base + ALIGN; // never hand out the first bytes: a device pointer is never the range's start
    return true;
}

} // namespace

LaunchAccesses* g_launch = nullptr;

bool is_device(uintptr_t addr) {
    return g_base != 0 && addr - g_base < RESERVED;
}

Allocation* find_allocation(uintptr_t addr) {
    if (!is_device(addr) || g_allocations.empty()) return nullptr;
    auto it = std::upper_bound(g_allocations.begin(), g_allocations.end(), addr, [](uintptr_t a, const std::unique_ptr<Allocation>& al) { return a < al->base; });
    if (it == g_allocations.begin()) return nullptr;
    Allocation* a = (--it)->get();
    if (addr < a->base + a->size || (a->size == 0 && addr == a->base)) return a;
    return nullptr;
}

Allocation* allocation_at(uintptr_t addr) {
    Allocation* a = find_allocation(addr);
    return a && a->base == addr ? a : nullptr;
}

Allocation* allocate(size_t bytes, Allocation::State st, std::string origin) {
    if (!reserve()) return nullptr;
    const uintptr_t start = (g_cursor + ALIGN - 1) / ALIGN * ALIGN;
    const uintptr_t end = start + bytes;
    if (end + GAP > g_base + RESERVED) return nullptr;
    const uintptr_t p0 = start / page() * page();
    const uintptr_t p1 = (end + page() - 1) / page() * page();
    if (p1 > p0 && mprotect((void*)p0, p1 - p0, PROT_READ | PROT_WRITE) != 0) return nullptr;
    if (bytes) memset((void*)start, 0xff, bytes);
    g_cursor = end + GAP;
    auto a = std::make_unique<Allocation>();
    a->id = g_next_id++;
    a->base = start;
    a->size = bytes;
    a->state = st;
    a->origin = std::move(origin);
    g_allocations.push_back(std::move(a));
    return g_allocations.back().get();
}

void release(Allocation* a, std::string freed_by) {
    a->state = Allocation::FREED;
    a->freed_by = std::move(freed_by);
    a->accesses.clear();
    // give back the pages that lie wholly inside the allocation (the gaps keep neighbours off them)
    const uintptr_t p0 = (a->base + page() - 1) / page() * page();
    const uintptr_t p1 = (a->base + a->size) / page() * page();
    if (p1 > p0) {
        madvise((void*)p0, p1 - p0, MADV_DONTNEED);
        mprotect((void*)p0, p1 - p0, PROT_NONE);
    }
}

static const char* state_name(Allocation::State s) {
    switch (s) {
    case Allocation::PENDING: return "not yet made in stream order";
    case Allocation::LIVE: return "live";
    default: return "freed";
    }
}

static std::string describe(const Allocation* a) {
    std::string s = "allocation #" + std::to_string(a->id) + " (" + std::to_string(a->size) + " bytes at 0x";
    char buf[32];
    snprintf(buf, sizeof buf, "%llx", (unsigned long long)a->base);
    s += buf;
    s += ", " + a->origin + ", " + state_name(a->state);
    if (a->state == Allocation::FREED) s += " by " + a->freed_by;
    return s + ")";
}

std::string describe_address(uintptr_t addr) {
    char buf[64];
    snprintf(buf, sizeof buf, "0x%llx", (unsigned long long)addr);
    std::string s = buf;
    if (!is_device(addr)) return s + " (not device memory)";
    if (Allocation* a = find_allocation(addr)) return s + ": byte " + std::to_string(addr - a->base) + " of " + describe(a);
    auto it = std::upper_bound(g_allocations.begin(), g_allocations.end(), addr, [](uintptr_t x, const std::unique_ptr<Allocation>& al) { return x < al->base; });
    std::string where;
    if (it != g_allocations.begin()) {
        const Allocation* before = std::prev(it)->get();
        where = std::to_string(addr - (before->base + before->size)) + " bytes past the end of " + describe(before);
    }
    if (it != g_allocations.end()) {
        if (!where.empty()) where += "; ";
        where += std::to_string((*it)->base - addr) + " bytes before the start of " + describe(it->get());
    }
    return s + " (in no allocation: " + (where.empty() ? std::string("nothing allocated yet") : where) + ")";
}

// ---- page-locked host memory ------------------------------------------------------------------------------------

bool is_pinned(const void* p, size_t n) {
    const uintptr_t a = (uintptr_t)p;
    auto it = g_pinned.upper_bound(a);
    if (it == g_pinned.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

void* alloc_pinned(size_t bytes) {
    const size_t rounded = (bytes + page() - 1) / page() * page();
    void* p = nullptr;
    if (posix_memalign(&p, page(), rounded ? rounded : page()) != 0) return nullptr;
    memset(p, 0xff, rounded ? rounded : page()); // never-written page-locked memory reads as NaN
    g_pinned[(uintptr_t)p] = bytes;
    g_pinned_owned[(uintptr_t)p] = bytes;
    return p;
}

bool free_pinned(void* p) {
    auto it = g_pinned_owned.find((uintptr_t)p);
    if (it == g_pinned_owned.end()) return false;
    g_pinned_owned.erase(it);
    g_pinned.erase((uintptr_t)p);
    free(p);
    return true;
}

bool register_pinned(void* p, size_t bytes) {
    if (is_pinned(p, 1)) return false;
    g_pinned[(uintptr_t)p] = bytes;
    return true;
}

bool unregister_pinned(void* p) {
    if (g_pinned_owned.count((uintptr_t)p)) return false;
    return g_pinned.erase((uintptr_t)p) == 1;
}

// ---- the access hooks -------------------------------------------------------------------------------------------

[[noreturn]] static void bad_access(LaunchAccesses* L, uintptr_t addr, size_t n, bool write) {
    L->illegal_address = true;
    std::string msg = std::string(write ? "writes " : "reads ") + std::to_string(n) + " bytes at " + describe_address(addr);
    if (Allocation* a = find_allocation(addr); a && a->state == Allocation::LIVE && addr + n > a->base + a->size) {
        msg += ", which runs " + std::to_string(addr + n - (a->base + a->size)) + " bytes past its end";
    }
    L->lib->fail(msg.c_str());
    __builtin_unreachable();
}

__attribute__((noinline)) static void device_access(uintptr_t addr, size_t n, bool write) {
    LaunchAccesses* L = g_launch;
    if (!L) return; // no launch runs: device memory is touched only by the driver itself
    Touch* t = L->last;
    if (!t || addr < t->base || addr + n > t->end) {
        t = nullptr;
        for (Touch& x : L->touched) { // the few allocations a launch uses, before a search of them all
            if (addr >= x.base && addr + n <= x.end) t = &x;
        }
        if (!t) {
            Allocation* a = find_allocation(addr);
            if (!a || a->state != Allocation::LIVE || addr + n > a->base + a->size) bad_access(L, addr, n, write);
            L->touched.push_back(Touch{a, a->base, a->base + a->size, UINTPTR_MAX, 0, UINTPTR_MAX, 0});
            t = &L->touched.back();
        }
        L->last = t;
    }
    if (write) {
        t->wlo = std::min(t->wlo, addr);
        t->whi = std::max(t->whi, addr + n);
    } else {
        t->rlo = std::min(t->rlo, addr);
        t->rhi = std::max(t->rhi, addr + n);
    }
}

static inline void hook(uintptr_t addr, size_t n, bool write) {
    if (addr - g_base < RESERVED) device_access(addr, n, write);
}

} // namespace emu

extern "C" {
#define MOCO_EMU_HOOKS(n)                                                                                      \
    __attribute__((visibility("default"))) void __asan_load##n##_noabort(uintptr_t a) { emu::hook(a, n, false); } \
    __attribute__((visibility("default"))) void __asan_store##n##_noabort(uintptr_t a) { emu::hook(a, n, true); }
MOCO_EMU_HOOKS(1)
MOCO_EMU_HOOKS(2)
MOCO_EMU_HOOKS(4)
MOCO_EMU_HOOKS(8)
MOCO_EMU_HOOKS(16)
__attribute__((visibility("default"))) void __asan_loadN_noabort(uintptr_t a, size_t n) { emu::hook(a, n, false); }
__attribute__((visibility("default"))) void __asan_storeN_noabort(uintptr_t a, size_t n) { emu::hook(a, n, true); }
__attribute__((visibility("default"))) void __asan_handle_no_return(void) {}
// dynamic-initialisation order checking: nothing to check in a kernel library
__attribute__((visibility("default"))) void __asan_before_dynamic_init(const char*) {}
__attribute__((visibility("default"))) void __asan_after_dynamic_init(void) {}
}
