// Stream order, deferred execution and race detection (see driver.h for the model).
#include "driver.h"
#include "launch_accesses.h"

#include <chrono>
#include <signal.h>
#include <stdio.h>
#include <string.h>

namespace emu {

uint64_t clock_at(const Clock& c, size_t i) {
    return i < c.size() ? c[i] : 0;
}

void join(Clock& into, const Clock& from) {
    if (into.size() < from.size()) into.resize(from.size(), 0);
    for (size_t i = 0; i < from.size(); ++i) into[i] = std::max(into[i], from[i]);
}

State& state() {
    static State* s = new State(); // never destroyed: cudarc's statics may call in during process exit
    return *s;
}

CUresult report(CUresult code, const std::string& msg, bool sticky) {
    State& S = state();
    fprintf(stderr, "cuda_emu: error: %s\n", msg.c_str());
    fflush(stderr);
    S.log += msg + "\n";
    if (sticky) {
        if (S.sticky == CUDA_SUCCESS) S.sticky = code;
        for (auto& s : S.streams) {
            if (s) s->pending.clear(); // the queued work is lost, as after a fault on a GPU
        }
    }
    return code;
}

CUresult unsupported(const std::string& what) {
    return report(CUDA_ERROR_NOT_SUPPORTED, "unsupported by the emulated CUDA driver: " + what, false);
}

std::string stream_name(uint32_t id) {
    return id == 0 ? std::string("the legacy default stream") : "stream " + std::to_string(id);
}

Stream* new_stream(unsigned int flags) {
    State& S = state();
    auto s = std::make_unique<Stream>();
    s->id = (uint32_t)S.streams.size();
    s->flags = flags;
    s->blocking = (flags & CU_STREAM_NON_BLOCKING) == 0;
    s->clock = S.host; // work queued later is ordered after what the host has seen complete
    S.streams.push_back(std::move(s));
    return S.streams.back().get();
}

Stream* stream_for(CUstream handle, CUresult* err) {
    State& S = state();
    *err = CUDA_SUCCESS;
    if (S.streams.empty()) new_stream(CU_STREAM_DEFAULT); // stream 0: the legacy default stream
    if (handle == nullptr || handle == CU_STREAM_LEGACY) return S.streams[0].get();
    if (handle == CU_STREAM_PER_THREAD) {
        // the per-thread default stream: a blocking stream of the calling thread
        static thread_local Stream* mine = nullptr;
        if (!mine) mine = new_stream(CU_STREAM_DEFAULT);
        return mine;
    }
    for (auto& s : S.streams) {
        if (s.get() == handle && !s->destroyed) return s.get();
    }
    *err = CUDA_ERROR_INVALID_HANDLE;
    return nullptr;
}

CUresult enqueue(Stream* s, Op op) {
    State& S = state();
    if (s->capture) {
        if (op.kind == Op::ALLOC || op.kind == Op::FREE) return unsupported("stream-ordered allocation or free inside a stream capture");
        if (op.kind == Op::DTOH && !op.pinned) return report(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "a copy to pageable host memory inside a stream capture", false);
        s->capture->ops.push_back(std::move(op));
        return CUDA_SUCCESS;
    }
    join(s->clock, S.host);
    if (s->id == 0) {
        // the legacy stream waits for all earlier work of every blocking stream
        for (auto& t : S.streams) {
            if (t->id != 0 && t->blocking) join(s->clock, t->clock);
        }
    } else if (s->blocking) {
        join(s->clock, S.streams[0]->clock); // ... and blocking streams wait for the legacy stream
    }
    if (s->clock.size() <= s->id) s->clock.resize(s->id + 1, 0);
    s->clock[s->id] += 1;
    op.stream = s->id;
    op.seq = s->clock[s->id];
    op.clock = s->clock;
    if (op.kind == Op::HTOD && op.pinned) op.checksum = host_checksum((const void*)op.src, op.bytes); // when queued
    if (op.kind == Op::RECORD) {
        Event* e = op.event;
        e->recorded = true;
        e->generation += 1;
        e->stream = s->id;
        e->seq = op.seq;
        e->clock = op.clock;
        e->query_answered_not_ready = false;
        op.record_generation = e->generation;
    }
    s->query_answered_not_ready = false;
    s->pending.push_back(std::move(op));
    return CUDA_SUCCESS;
}

bool run_until(Stream* s, uint64_t seq) {
    State& S = state();
    while (S.sticky == CUDA_SUCCESS && !s->pending.empty() && s->pending.front().seq <= seq) {
        // first everything the operation is ordered after, on the other streams
        const Clock deps = s->pending.front().clock;
        for (size_t u = 0; u < deps.size(); ++u) {
            if (u == s->id || deps[u] <= S.streams[u]->executed) continue;
            if (!run_until(S.streams[u].get(), deps[u])) return false;
        }
        if (S.sticky != CUDA_SUCCESS || s->pending.empty()) return false;
        Op op = std::move(s->pending.front());
        s->pending.pop_front();
        s->executed = op.seq;
        if (!execute(op)) return false;
    }
    return S.sticky == CUDA_SUCCESS;
}

bool run_all() {
    State& S = state();
    for (size_t i = 0; i < S.streams.size(); ++i) {
        Stream* s = S.streams[i].get();
        if (!run_until(s, clock_at(s->clock, s->id))) return false;
    }
    return true;
}

bool any_pending() {
    for (auto& s : state().streams) {
        if (!s->pending.empty()) return true;
    }
    return false;
}

CUresult host_waits_for(Stream* s, uint64_t seq, const Clock& c) {
    State& S = state();
    if (!run_until(s, seq)) return S.sticky;
    join(S.host, c);
    return CUDA_SUCCESS;
}

// ---- race detection ----------------------------------------------------------------------------------------------

// Drops the recorded accesses that every operation still to run is ordered after: the host has seen them complete
// (every later queued operation joins the host clock) and no queued operation predates that.
static void prune(Allocation* a) {
    State& S = state();
    Clock safe = S.host;
    for (auto& s : S.streams) {
        for (const Op& p : s->pending) {
            for (size_t t = 0; t < safe.size(); ++t) safe[t] = std::min(safe[t], clock_at(p.clock, t));
        }
    }
    std::vector<Access> keep;
    for (Access& r : a->accesses) {
        if (r.seq > clock_at(safe, r.stream)) keep.push_back(std::move(r));
    }
    a->accesses = std::move(keep);
}

static std::string range(uintptr_t lo, uintptr_t hi, const Allocation* a) {
    return "bytes [" + std::to_string(lo - a->base) + ", " + std::to_string(hi - a->base) + ")";
}

bool check_and_record(Allocation* a, uintptr_t lo, uintptr_t hi, bool write, const Op& op) {
    for (const Access& r : a->accesses) {
        if (r.stream == op.stream || clock_at(op.clock, r.stream) >= r.seq) continue; // ordered
        if (r.hi <= lo || hi <= r.lo) continue;                                        // disjoint bytes
        if (!write && !r.write) continue;                                              // two reads
        report(CUDA_ERROR_ILLEGAL_STATE,
               "race on allocation #" + std::to_string(a->id) + " (" + a->origin + "): " + *op.what + " on " + stream_name(op.stream) + (write ? " writes " : " reads ") + range(lo, hi, a) + ", and " + *r.what + " on " + stream_name(r.stream) + (r.write ? " wrote " : " read ") + range(r.lo, r.hi, a) + " with nothing ordering the two (no event recorded after one and waited on before the other, no synchronisation between them)",
               true);
        return false;
    }
    a->accesses.push_back(Access{op.stream, op.seq, lo, hi, write, op.what});
    if (a->accesses.size() > 64) prune(a);
    return true;
}

// ---- execution ---------------------------------------------------------------------------------------------------

// An address range of a copy or memset that must lie in one live allocation.
static bool device_range(const Op& op, uintptr_t p, size_t n, bool write, Allocation** out) {
    Allocation* a = find_allocation(p);
    if (!a || a->state != Allocation::LIVE || p + n > a->base + a->size) {
        report(CUDA_ERROR_ILLEGAL_ADDRESS, *op.what + " on " + stream_name(op.stream) + (write ? " writes " : " reads ") + std::to_string(n) + " bytes at " + describe_address(p) + (a && a->state == Allocation::LIVE ? ", past its end" : ""), true);
        return false;
    }
    *out = a;
    return true;
}

static uint64_t checksum(const void* p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char* b = (const unsigned char*)p;
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

uint64_t host_checksum(const void* p, size_t n) {
    return checksum(p, n);
}

// SIGSEGV / SIGBUS inside a kernel (a wild pointer outside device memory): the launch fails with the address.
static struct sigaction g_old_segv, g_old_bus;

static void on_fault(int sig, siginfo_t* info, void* ctx) {
    LaunchAccesses* L = g_launch;
    if (L && L->lib->in_launch()) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s at address %p (not device memory the driver handed out)", sig == SIGSEGV ? "segmentation fault" : "bus error", info->si_addr);
        L->illegal_address = true;
        L->lib->fail(msg);
    }
    struct sigaction* old = sig == SIGSEGV ? &g_old_segv : &g_old_bus;
    if (old->sa_flags & SA_SIGINFO) {
        old->sa_sigaction(sig, info, ctx);
    } else if (old->sa_handler != SIG_IGN && old->sa_handler != SIG_DFL) {
        old->sa_handler(sig);
    } else {
        signal(sig, SIG_DFL); // the fault repeats and ends the process
    }
}

static void install_fault_handler() {
    static bool done = false;
    if (done) return;
    done = true;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
}

static bool run_launch(Op& op) {
    State& S = state();
    Function* f = op.fn;
    std::vector<void*> args(op.params.size());
    for (size_t i = 0; i < op.params.size(); ++i) args[i] = op.params[i].data();
    install_fault_handler();
    LaunchAccesses acc;
    acc.lib = f->library->lib;
    acc.touched.reserve(16);
    char err[8192];
    err[0] = 0;
    const unsigned long long seed = S.seed * 0x9e3779b97f4a7c15ull + ++S.launch_counter;
    g_launch = &acc;
    const int rc = f->library->lib->launch(f->kernel, op.grid, op.block, args.data(), seed, err, sizeof err);
    g_launch = nullptr;
    if (rc != 0) {
        report(acc.illegal_address ? CUDA_ERROR_ILLEGAL_ADDRESS : CUDA_ERROR_LAUNCH_FAILED, *op.what + " on " + stream_name(op.stream) + " failed: " + err, true);
        return false;
    }
    S.launches[f->name] += 1;
    for (const Touch& t : acc.touched) {
        if (t.rlo < t.rhi && !check_and_record(t.alloc, t.rlo, t.rhi, false, op)) return false;
        if (t.wlo < t.whi && !check_and_record(t.alloc, t.wlo, t.whi, true, op)) return false;
    }
    return true;
}

bool execute(Op& op) {
    Allocation *a = nullptr, *b = nullptr;
    switch (op.kind) {
    case Op::LAUNCH:
        return run_launch(op);
    case Op::HTOD:
        if (!device_range(op, op.dst, op.bytes, true, &a) || !check_and_record(a, op.dst, op.dst + op.bytes, true, op)) return false;
        if (op.pinned) {
            if (checksum((const void*)op.src, op.bytes) != op.checksum) {
                report(CUDA_ERROR_ILLEGAL_STATE, *op.what + " on " + stream_name(op.stream) + ": its page-locked source was changed by the host after the copy was queued and before it ran (the host reused the staging buffer without waiting for the copy)", true);
                return false;
            }
            memcpy((void*)op.dst, (const void*)op.src, op.bytes);
        } else {
            memcpy((void*)op.dst, op.staged.data(), op.bytes);
        }
        return true;
    case Op::DTOH:
        if (!device_range(op, op.src, op.bytes, false, &a) || !check_and_record(a, op.src, op.src + op.bytes, false, op)) return false;
        memcpy((void*)op.dst, (const void*)op.src, op.bytes);
        return true;
    case Op::DTOD:
        if (!device_range(op, op.src, op.bytes, false, &a) || !device_range(op, op.dst, op.bytes, true, &b)) return false;
        if (!check_and_record(a, op.src, op.src + op.bytes, false, op) || !check_and_record(b, op.dst, op.dst + op.bytes, true, op)) return false;
        memmove((void*)op.dst, (const void*)op.src, op.bytes);
        return true;
    case Op::MEMSET: {
        const size_t n = op.bytes;
        if (!device_range(op, op.dst, n, true, &a) || !check_and_record(a, op.dst, op.dst + n, true, op)) return false;
        unsigned char* p = (unsigned char*)op.dst;
        for (size_t i = 0; i < n; i += op.elem) memcpy(p + i, &op.value, op.elem);
        return true;
    }
    case Op::ALLOC:
        if (op.alloc->state != Allocation::PENDING) {
            report(CUDA_ERROR_ILLEGAL_STATE, "internal: " + *op.what + " ran twice", true);
            return false;
        }
        op.alloc->state = Allocation::LIVE;
        // made in stream order: an access from another stream that is not ordered after this is a race
        op.alloc->accesses.push_back(Access{op.stream, op.seq, op.alloc->base, op.alloc->base + op.alloc->size, true, op.what});
        return true;
    case Op::FREE:
        if (op.alloc->state != Allocation::LIVE) {
            report(CUDA_ERROR_ILLEGAL_ADDRESS, *op.what + " on " + stream_name(op.stream) + ": " + describe_address(op.alloc->base) + " is not live when the free runs", true);
            return false;
        }
        if (op.alloc->size && !check_and_record(op.alloc, op.alloc->base, op.alloc->base + op.alloc->size, true, op)) return false;
        release(op.alloc, *op.what + " on " + stream_name(op.stream));
        return true;
    case Op::RECORD:
        op.event->done_generation = std::max(op.event->done_generation, op.record_generation);
        op.event->done_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
        return true;
    }
    return true;
}

} // namespace emu
