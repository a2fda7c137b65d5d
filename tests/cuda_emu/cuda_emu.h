// CUDA device emulation on the CPU, for tests only (tests/cuda_emulated.rs): makes a header-free kernels/*.cu file
// compile as C++17 with g++ and runs its kernels, as the CUDA toolkit's old device-emulation mode did.
//
//   - threadIdx / blockIdx / blockDim / gridDim, __shared__ (one copy, reused and re-poisoned per block),
//     __syncthreads with real barrier semantics, warp shuffles / votes over 32 lanes, atomics, __ldg, the f32
//     bit casts and the f16 conversion the kernels use, CUDA's min/max overloads and math intrinsics.
//   - Blocks run one after another (in reverse order). The threads of a block are fibers (a register switch on
//     x86-64, ucontext elsewhere: swapcontext's signal-mask system call per switch made the emulated driver's
//     InfoNCE test 2.4x slower, 56 s against 23 s) run by a
//     deterministic, deliberately adversarial scheduler: between two __syncthreads the warps run one after another,
//     each as far as it gets (a warp runs ahead of the others, as it may on a GPU), the last warp first and then in
//     a fresh pseudo-random order after every barrier; inside a warp each lane runs alone until its next warp
//     operation, last lane first, then shuffled. A missing __syncthreads therefore shows up as wrong results (a
//     read of another warp's not-yet-written or already-overwritten shared data), not as luck.
//   - Every buffer is allocated with its exact byte length and the runner is built with AddressSanitizer, so an
//     out-of-bounds global load or store aborts with ASan's report. __shared__ arrays live in the linker section
//     `cuda_emu_shared`, instrumented by ASan too (-fsanitize-sections=cuda_emu_shared), and are filled with 0xFF
//     bytes (a NaN for f32) before each block, so a read of shared memory that no thread of the block wrote is NaN.
//   - Errors (deadlock at a barrier, threads at different barriers, a barrier or warp operation after some
//     threads of the block/warp returned, a bad launch) print a message to stderr and exit with status 3.
//
// The kernel files stay as NVRTC compiles them; the one non-portable construct (inline PTX for cvt.f32.f16) has an
// `#ifdef MOCO_CUDA_EMU` portable form in the kernel file.
//
// Three modes:
//   MOCO_CUDA_EMU_LIST     only marks `__global__` and `__launch_bounds__` so that `g++ -E` lists the kernels of a
//                          file (the test parses the preprocessed text, which also expands macro-generated kernels);
//   MOCO_CUDA_EMU_LIBRARY  the emulation as a kernel library for the emulated CUDA driver (library_abi.h,
//                          MOCO_EMU_LIBRARY): a failure ends the launch with a message instead of the process;
//   otherwise              the full emulation plus a `main` that executes one launch request (see moco_emu::run).
#pragma once

#ifdef MOCO_CUDA_EMU_LIST

#define __global__ __moco_global__
#define __launch_bounds__(...) __moco_launch_bounds__(__VA_ARGS__)

#else // the emulation

#define MOCO_CUDA_EMU 1

#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// ---- qualifiers ------------------------------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static __attribute__((section("cuda_emu_shared")))
#define __constant__ static const
#define __align__(n) __attribute__((aligned(n)))

// ---- vector types ----------------------------------------------------------------------------------------------

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned int x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned int x, y, z, w; };
struct __attribute__((aligned(8))) int2 { int x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return uint4{x, y, z, w}; }

// ---- built-in variables (set by the scheduler for the running fiber; external linkage, so the compiler reloads
// them after every switch) --------------------------------------------------------------------------------------

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
const int warpSize = 32;

// ---- CUDA's min/max overloads and math intrinsics ----------------------------------------------------------------

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

inline float __uint_as_float(unsigned int u) { float f; memcpy(&f, &u, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
// round-to-nearest add and multiply that the compiler must not contract into an FMA (volatile blocks it)
inline float __fadd_rn(float x, float y) { volatile float r = x + y; return r; }
inline float __fmul_rn(float x, float y) { volatile float r = x * y; return r; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
template <typename T> inline T __ldg(const T* p) { return *p; }

// IEEE half bits -> f32 (exact; what PTX cvt.f32.f16 computes).
inline float moco_emu_f16_bits_to_f32(unsigned short h) {
    const unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    const unsigned int e = (h >> 10) & 0x1fu;
    const unsigned int m = h & 0x3ffu;
    unsigned int bits;
    if (e == 0x1fu) {
        bits = sign | 0x7f800000u | (m << 13);
    } else if (e != 0u) {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    } else if (m == 0u) {
        bits = sign;
    } else { // subnormal: m * 2^-24
        const float v = (float)m * 5.9604644775390625e-8f;
        bits = sign | __float_as_uint(v);
    }
    return __uint_as_float(bits);
}

// ---- the fiber scheduler -----------------------------------------------------------------------------------------

extern "C" {
// AddressSanitizer's fiber annotations (weak: absent when the runner is built without ASan).
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size) __attribute__((weak));
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old) __attribute__((weak));
int __asan_address_is_poisoned(void const volatile* addr) __attribute__((weak));
void __asan_unpoison_memory_region(void const volatile* addr, size_t size) __attribute__((weak));
extern char __start_cuda_emu_shared[] __attribute__((weak));
extern char __stop_cuda_emu_shared[] __attribute__((weak));
}

namespace moco_emu {

#ifdef MOCO_CUDA_EMU_LIBRARY
[[noreturn]] inline void lib_fail(const char* msg);
#endif

[[noreturn]] __attribute__((format(printf, 1, 2))) inline void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
#ifdef MOCO_CUDA_EMU_LIBRARY
    // a kernel library ends the launch, not the process (the driver reports the message)
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lib_fail(msg);
#else
    fprintf(stderr, "cuda_emu: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    _exit(3);
#endif
}

enum State { RUNNABLE, AT_BARRIER, AT_WARP, DONE };

// ---- fiber contexts --------------------------------------------------------------------------------------------
// A context is a saved stack pointer: switch_to pushes the callee-saved registers (and the SSE/x87 control words)
// on the current stack, stores the stack pointer, loads the other one and pops its registers. No system call.
#if defined(__x86_64__)
struct Context {
    void* sp = nullptr;
};
extern "C" void moco_emu_switch(void** save_sp, void* load_sp);
__asm__(".text\n"
        ".globl moco_emu_switch\n"
        ".hidden moco_emu_switch\n"
        ".type moco_emu_switch,@function\n"
        "moco_emu_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    subq $8, %rsp\n"
        "    stmxcsr (%rsp)\n"
        "    fnstcw 4(%rsp)\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    ldmxcsr (%rsp)\n"
        "    fldcw 4(%rsp)\n"
        "    addq $8, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size moco_emu_switch, .-moco_emu_switch\n");
inline void switch_context(Context& from, Context& to) { moco_emu_switch(&from.sp, to.sp); }
// A fresh context on `stack` that starts in `entry` (which must never return).
inline void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    uint64_t* top = (uint64_t*)(((uintptr_t)(stack + bytes)) & ~(uintptr_t)15);
    top[-1] = 0;                 // entry's return address (it never returns); entry starts with rsp = 8 mod 16
    top[-2] = (uint64_t)entry;   // where the first switch's `ret` goes
    for (int r = 3; r <= 8; ++r) top[-r] = 0; // rbp, rbx, r12-r15
    uint32_t mxcsr;
    uint16_t fpucw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpucw));
    uint64_t ctl = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
    top[-9] = ctl;
    c.sp = &top[-9];
}
#else
struct Context {
    ucontext_t uc;
};
inline void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

struct Fiber {
    Context ctx;
    char* stack = nullptr;
    State state = DONE;
    uint3 idx{0, 0, 0};
    int line = 0; // source line of the barrier / warp operation it waits at
};

const size_t STACK_BYTES = 256 * 1024;

struct Sched {
    std::vector<Fiber> fibers;
    Context main_ctx;
    int current = -1;
    unsigned int nthreads = 0;
    void (*body)(void**) = nullptr;
    void** args = nullptr;
    uint64_t rng = 0;
    const char* kernel = "";
    // warp exchange: one 64-bit slot per lane
    std::vector<uint64_t> warp_slots;
    // the operand registers of a warp-wide tensor-core instruction: MMA_WORDS words per lane
    std::vector<uint32_t> mma_regs;
    // each thread's cp.async copies not yet completed, and the number of groups it committed (block-local)
    std::vector<std::vector<struct AsyncCopy>> async_copies;
    std::vector<unsigned int> async_groups;
    // the addressable byte ranges of the shared-memory section (ASan redzones excluded)
    std::vector<std::pair<char*, size_t>> shared_runs;
    void* fake_stack = nullptr;
    const void* main_stack_bottom = nullptr;
    size_t main_stack_size = 0;
    // library mode: where a failing launch jumps back to, and why it failed
    jmp_buf fail_jmp;
    bool failed = false;
    bool in_launch = false;
    char fail_msg[4096] = {0};
};

// One cp.async of a thread: the source bytes read at issue (the zero-filled tail included), written to `dst` when
// a cp.async.wait_group of that thread completes its group. Until then `dst` holds 0xFF bytes (NaN).
struct AsyncCopy {
    char* dst;
    unsigned char bytes[16];
    unsigned int size;
    unsigned int group;
};

const unsigned int MMA_WORDS = 8;

inline Sched& sched() {
    static Sched s;
    return s;
}

inline uint64_t next_rand() {
    uint64_t& x = sched().rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

// Switch from the running fiber back to the scheduler.
inline void yield_to_scheduler() {
    Sched& s = sched();
    Fiber& f = s.fibers[(size_t)s.current];
    void* fake = nullptr;
    if (__sanitizer_start_switch_fiber) __sanitizer_start_switch_fiber(f.state == DONE ? nullptr : &fake, s.main_stack_bottom, s.main_stack_size);
    switch_context(f.ctx, s.main_ctx);
    if (__sanitizer_finish_switch_fiber) __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
}

inline void fiber_entry() {
    Sched& s = sched();
    if (__sanitizer_finish_switch_fiber) __sanitizer_finish_switch_fiber(nullptr, &s.main_stack_bottom, &s.main_stack_size);
    s.body(s.args);
    s.fibers[(size_t)s.current].state = DONE;
    yield_to_scheduler();
    fail("a finished thread was resumed");
}

inline void resume(unsigned int id) {
    Sched& s = sched();
    Fiber& f = s.fibers[id];
    s.current = (int)id;
    threadIdx = f.idx;
    if (__sanitizer_start_switch_fiber) __sanitizer_start_switch_fiber(&s.fake_stack, f.stack, STACK_BYTES);
    switch_context(s.main_ctx, f.ctx);
    if (__sanitizer_finish_switch_fiber) __sanitizer_finish_switch_fiber(s.fake_stack, nullptr, nullptr);
    s.current = -1;
#ifdef MOCO_CUDA_EMU_LIBRARY
    if (s.failed) longjmp(s.fail_jmp, 1); // back to lib_launch, on this (the scheduler's) stack
#endif
}

inline unsigned int linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

inline void check_in_kernel(const char* what) {
    if (sched().current < 0) fail("%s called outside a kernel", what);
}

// __syncthreads: wait until every thread of the block has arrived.
inline void syncthreads(int line) {
    check_in_kernel("__syncthreads");
    Sched& s = sched();
    Fiber& f = s.fibers[(size_t)s.current];
    f.state = AT_BARRIER;
    f.line = line;
    yield_to_scheduler();
}

// All non-exited lanes of the caller's warp meet here (the two halves of a shuffle or vote).
inline void warp_barrier(unsigned int mask, int line, const char* what) {
    check_in_kernel(what);
    Sched& s = sched();
    const unsigned int tid = linear_tid();
    const unsigned int w0 = tid & ~31u;
    const unsigned int lanes = s.nthreads - w0 < 32u ? s.nthreads - w0 : 32u;
    const unsigned int present = lanes == 32u ? 0xffffffffu : ((1u << lanes) - 1u);
    if ((mask & present) != present) fail("%s at line %d: mask 0x%08x does not name every lane of the warp (the emulator supports full-warp masks only)", what, line, mask);
    Fiber& f = s.fibers[(size_t)s.current];
    f.state = AT_WARP;
    f.line = line;
    yield_to_scheduler();
}

template <typename T> inline uint64_t to_slot(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type larger than 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof(T));
    return u;
}
template <typename T> inline T from_slot(uint64_t u) {
    T v;
    memcpy(&v, &u, sizeof(T));
    return v;
}

// Exchange `v` across the warp; lane l receives the value of lane src(l) (or its own when src(l) < 0).
template <typename T, typename Src> inline T shuffle(unsigned int mask, T v, Src src, int line, const char* what) {
    Sched& s = sched();
    const unsigned int tid = linear_tid();
    const unsigned int w0 = tid & ~31u;
    const unsigned int lane = tid & 31u;
    s.warp_slots[tid] = to_slot(v);
    warp_barrier(mask, line, what);
    const int from = src((int)lane);
    T r = v;
    if (from >= 0) {
        if (w0 + (unsigned int)from >= s.nthreads) fail("%s at line %d: lane %u reads lane %d, which does not exist", what, line, lane, from);
        r = from_slot<T>(s.warp_slots[w0 + (unsigned int)from]);
    }
    warp_barrier(mask, line, what);
    return r;
}

template <typename Pred> inline unsigned int vote(unsigned int mask, int pred, int line, const char* what) {
    Sched& s = sched();
    const unsigned int tid = linear_tid();
    const unsigned int w0 = tid & ~31u;
    s.warp_slots[tid] = pred ? 1u : 0u;
    warp_barrier(mask, line, what);
    unsigned int ballot = 0;
    for (unsigned int l = 0; l < 32u && w0 + l < s.nthreads; ++l) {
        if (s.warp_slots[w0 + l] != 0u) ballot |= 1u << l;
    }
    warp_barrier(mask, line, what);
    return ballot & mask;
}

inline int seg_base(int lane, int width) { return lane / width * width; }

// ---- tensor cores and asynchronous copies (sm_80+), with the PTX ISA's fragment layouts ------------------------
//
// The kernels call these through the same names as their inline-PTX wrappers (kernels/common.cuh): mma_*,
// ldmatrix_*, cp_async_*, tf32_round, pack_bf16x2. Each warp-wide instruction is a warp operation (every lane of a
// full warp meets twice: the operands are exchanged, then every lane computes its own part). Notation of the layouts: lane = 4 g + t
// (g = lane / 4, the "groupID"; t = lane % 4, the "threadID_in_group").

inline float bf16_bits(uint32_t h) { return __uint_as_float((h & 0xffffu) << 16); }
inline float f16_bits(uint32_t h) { return moco_emu_f16_bits_to_f32((unsigned short)(h & 0xffffu)); }
// what the tensor cores read of an f32 register holding a TF32 operand: the top 19 bits
inline float tf32_bits(uint32_t u) { return __uint_as_float(u & 0xffffe000u); }

inline uint32_t* mma_operands(const uint32_t* regs, unsigned int n, int line, const char* what) {
    check_in_kernel(what);
    Sched& s = sched();
    const unsigned int tid = linear_tid();
    if ((tid & ~31u) + 32u > s.nthreads) fail("%s at line %d: needs a full warp of 32 threads", what, line);
    uint32_t* mine = &s.mma_regs[(size_t)tid * MMA_WORDS];
    for (unsigned int i = 0; i < n; ++i) mine[i] = regs[i];
    warp_barrier(0xffffffffu, line, what);
    return &s.mma_regs[(size_t)(tid & ~31u) * MMA_WORDS]; // the warp's lane 0
}

// D = A B + C for one m16n8k16 tile: A 16x16 (row), B 16x8 (col), C/D 16x8 f32, in place in `acc`; `cvt` reads a
// 16-bit operand. A: a[r] holds row g + 8 (r & 1), columns 2t + 8 (r >> 1) + {0, 1} (the lower column in the lower
// half); B: b[r] holds column g, rows 2t + 8 r + {0, 1}; C/D: acc[i] is row g + 8 (i >> 1), column 2t + (i & 1).
// The products are exact in f64 and summed there, rounded once to f32 (the hardware's rounding of its f32
// accumulation differs within the tolerance of f32 sums).
template <typename Cvt> inline void mma_m16n8k16(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], Cvt cvt, int line, const char* what) {
    const uint32_t regs[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    const uint32_t* warp = mma_operands(regs, 6, line, what);
    const unsigned int lane = linear_tid() & 31u, g = lane >> 2, t = lane & 3u;
    auto A = [&](unsigned int row, unsigned int col) {
        const uint32_t v = warp[((row & 7u) * 4u + ((col & 7u) >> 1)) * MMA_WORDS + (row >> 3) + 2u * (col >> 3)];
        return (double)cvt(col & 1u ? v >> 16 : v);
    };
    auto B = [&](unsigned int k, unsigned int col) {
        const uint32_t v = warp[(col * 4u + ((k & 7u) >> 1)) * MMA_WORDS + 4u + (k >> 3)];
        return (double)cvt(k & 1u ? v >> 16 : v);
    };
    float d[4];
    for (unsigned int i = 0; i < 4u; ++i) {
        const unsigned int row = g + 8u * (i >> 1), col = 2u * t + (i & 1u);
        double sum = acc[i];
        for (unsigned int k = 0; k < 16u; ++k) sum += A(row, k) * B(k, col);
        d[i] = (float)sum;
    }
    warp_barrier(0xffffffffu, line, what); // every lane has read the operands before any reuses the exchange
    for (unsigned int i = 0; i < 4u; ++i) acc[i] = d[i];
}

// D = A B + C for one m16n8k8 TF32 tile: A 16x8 (row), a[r] holds row g + 8 (r & 1), column t + 4 (r >> 1); B 8x8
// (col), b[r] holds row t + 4 r, column g; C/D as m16n8k16. The operands are f32 registers of which the tensor
// cores read the top 19 bits (round them first with tf32_round, as cvt.rna.tf32.f32).
inline void mma_m16n8k8_tf32_emu(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], int line) {
    const uint32_t regs[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    const uint32_t* warp = mma_operands(regs, 6, line, "mma.sync.m16n8k8.tf32");
    const unsigned int lane = linear_tid() & 31u, g = lane >> 2, t = lane & 3u;
    float d[4];
    for (unsigned int i = 0; i < 4u; ++i) {
        const unsigned int row = g + 8u * (i >> 1), col = 2u * t + (i & 1u);
        double sum = acc[i];
        for (unsigned int k = 0; k < 8u; ++k) {
            const double x = tf32_bits(warp[((row & 7u) * 4u + (k & 3u)) * MMA_WORDS + (row >> 3) + 2u * (k >> 2)]);
            const double y = tf32_bits(warp[(col * 4u + (k & 3u)) * MMA_WORDS + 4u + (k >> 2)]);
            sum += x * y;
        }
        d[i] = (float)sum;
    }
    warp_barrier(0xffffffffu, line, "mma.sync.m16n8k8.tf32");
    for (unsigned int i = 0; i < 4u; ++i) acc[i] = d[i];
}

// cvt.rna.tf32.f32: round to the nearest TF32 value (10 mantissa bits), ties away from zero; NaN and inf kept.
inline float tf32_round_emu(float x) {
    const uint32_t u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;
    return __uint_as_float((u + 0x1000u) & 0xffffe000u);
}

// cvt.rn.bf16x2.f32: each f32 rounded to the nearest bf16, ties to even (overflow to inf); a NaN becomes the
// canonical bf16 NaN 0x7fff, as the instruction's.
inline uint32_t bf16_round_bits(float x) {
    const uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lanes 8 i .. 8 i + 7 give the shared addresses of rows 0..7 of
// matrix i (16-byte aligned rows of eight 16-bit elements); r[i] of lane 4 g + t receives row g, elements 2t and
// 2t + 1 of matrix i (with .trans: element g of rows 2t and 2t + 1, the transposed matrix's row g).
inline void ldmatrix_x4_emu(uint32_t (&r)[4], const void* row, bool trans, int line) {
    const char* what = trans ? "ldmatrix.x4.trans" : "ldmatrix.x4";
    check_in_kernel(what);
    Sched& s = sched();
    const unsigned int tid = linear_tid(), w0 = tid & ~31u, lane = tid & 31u;
    if (w0 + 32u > s.nthreads) fail("%s at line %d: needs a full warp of 32 threads", what, line);
    if (((uintptr_t)row & 15u) != 0u) fail("%s at line %d: lane %u gives the row address %p, not 16-byte aligned", what, line, lane, row);
    s.warp_slots[tid] = (uint64_t)(uintptr_t)row;
    warp_barrier(0xffffffffu, line, what);
    const unsigned int g = lane >> 2, t = lane & 3u;
    uint32_t out[4];
    for (unsigned int i = 0; i < 4u; ++i) {
        uint16_t e[2];
        for (unsigned int j = 0; j < 2u; ++j) {
            const unsigned int src_row = trans ? 2u * t + j : g, col = trans ? g : 2u * t + j;
            const uint16_t* p = (const uint16_t*)(uintptr_t)s.warp_slots[w0 + 8u * i + src_row];
            e[j] = p[col];
        }
        out[i] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
    }
    warp_barrier(0xffffffffu, line, what);
    for (unsigned int i = 0; i < 4u; ++i) r[i] = out[i];
}

// cp.async.cg.shared.global [dst], [src], 16, src_size: reads src_size (0..16) bytes now, zero-fills the rest, and
// writes the 16 bytes to dst only when this thread's cp.async.wait_group completes the copy's group; dst holds 0xFF
// bytes until then, so a read before the wait (or before the barrier after it, from another thread) sees NaN.
inline void cp_async_16_emu(void* dst, const void* src, unsigned int src_size, int line) {
    check_in_kernel("cp.async");
    Sched& s = sched();
    if (((uintptr_t)dst & 15u) != 0u || ((uintptr_t)src & 15u) != 0u) fail("cp.async at line %d: 16-byte copy from %p to %p, not 16-byte aligned", line, src, dst);
    if (src_size > 16u) fail("cp.async at line %d: src_size %u > 16", line, src_size);
    const unsigned int tid = linear_tid();
    AsyncCopy c{(char*)dst, {0}, 16u, s.async_groups[tid]};
    if (src_size > 0u) memcpy(c.bytes, src, src_size);
    memset(dst, 0xff, 16);
    s.async_copies[tid].push_back(c);
}

// cp.async.ca.shared.global [dst], [src], 4, src_size: as cp_async_16_emu for one 4-byte element (src_size 0 or 4).
inline void cp_async_4_emu(void* dst, const void* src, unsigned int src_size, int line) {
    check_in_kernel("cp.async");
    Sched& s = sched();
    if (((uintptr_t)dst & 3u) != 0u || ((uintptr_t)src & 3u) != 0u) fail("cp.async at line %d: 4-byte copy from %p to %p, not 4-byte aligned", line, src, dst);
    if (src_size != 0u && src_size != 4u) fail("cp.async at line %d: src_size %u, expected 0 or 4", line, src_size);
    const unsigned int tid = linear_tid();
    AsyncCopy c{(char*)dst, {0}, 4u, s.async_groups[tid]};
    if (src_size > 0u) memcpy(c.bytes, src, src_size);
    memset(dst, 0xff, 4);
    s.async_copies[tid].push_back(c);
}

inline void cp_async_commit_emu() {
    check_in_kernel("cp.async.commit_group");
    ++sched().async_groups[linear_tid()];
}

// cp.async.wait_group n: completes every copy of this thread in a committed group older than its n newest ones.
inline void cp_async_wait_emu(unsigned int n) {
    check_in_kernel("cp.async.wait_group");
    Sched& s = sched();
    const unsigned int tid = linear_tid();
    const unsigned int committed = s.async_groups[tid];
    std::vector<AsyncCopy>& pending = s.async_copies[tid];
    size_t kept = 0;
    for (size_t i = 0; i < pending.size(); ++i) {
        if (pending[i].group + n < committed) memcpy(pending[i].dst, pending[i].bytes, pending[i].size);
        else pending[kept++] = pending[i];
    }
    pending.resize(kept);
}

} // namespace moco_emu

#define __syncthreads() moco_emu::syncthreads(__LINE__)
// the tensor-core and async-copy wrappers of the kernels (their inline PTX is compiled by NVRTC only)
inline void mma_bf16_16816(float (&acc)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
    moco_emu::mma_m16n8k16(acc, a, b, moco_emu::bf16_bits, 0, "mma.sync.m16n8k16.bf16");
}
inline void mma_f16_16816(float (&acc)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
    moco_emu::mma_m16n8k16(acc, a, b, moco_emu::f16_bits, 0, "mma.sync.m16n8k16.f16");
}
inline void mma_tf32_1688(float (&acc)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) { moco_emu::mma_m16n8k8_tf32_emu(acc, a, b, 0); }
inline float tf32_round(float x) { return moco_emu::tf32_round_emu(x); }
inline unsigned int pack_bf16x2(float lo, float hi) { return moco_emu::bf16_round_bits(lo) | (moco_emu::bf16_round_bits(hi) << 16); }
inline void ldmatrix_x4(unsigned int (&r)[4], const void* row) { moco_emu::ldmatrix_x4_emu(r, row, false, 0); }
inline void ldmatrix_x4_trans(unsigned int (&r)[4], const void* row) { moco_emu::ldmatrix_x4_emu(r, row, true, 0); }
inline void cp_async_16(void* dst, const void* src, unsigned int src_size) { moco_emu::cp_async_16_emu(dst, src, src_size, 0); }
inline void cp_async_4(void* dst, const void* src, unsigned int src_size) { moco_emu::cp_async_4_emu(dst, src, src_size, 0); }
inline void cp_async_commit() { moco_emu::cp_async_commit_emu(); }
template <int N> inline void cp_async_wait() { moco_emu::cp_async_wait_emu((unsigned int)N); }
#define __syncwarp(...) moco_emu::warp_barrier(0xffffffffu, __LINE__, "__syncwarp")
#define __threadfence() ((void)0)
#define __threadfence_block() ((void)0)

template <typename T> inline T moco_emu_shfl_xor(int line, unsigned int mask, T v, int lane_mask, int width = 32) {
    return moco_emu::shuffle(mask, v, [=](int l) { const int s = l ^ lane_mask; return s >= moco_emu::seg_base(l, width) + width ? -1 : s; }, line, "__shfl_xor_sync");
}
template <typename T> inline T moco_emu_shfl_down(int line, unsigned int mask, T v, unsigned int delta, int width = 32) {
    return moco_emu::shuffle(mask, v, [=](int l) { const int s = l + (int)delta; return s >= moco_emu::seg_base(l, width) + width ? -1 : s; }, line, "__shfl_down_sync");
}
template <typename T> inline T moco_emu_shfl_up(int line, unsigned int mask, T v, unsigned int delta, int width = 32) {
    return moco_emu::shuffle(mask, v, [=](int l) { const int s = l - (int)delta; return s < moco_emu::seg_base(l, width) ? -1 : s; }, line, "__shfl_up_sync");
}
template <typename T> inline T moco_emu_shfl(int line, unsigned int mask, T v, int src, int width = 32) {
    return moco_emu::shuffle(mask, v, [=](int l) { return moco_emu::seg_base(l, width) + (src % width); }, line, "__shfl_sync");
}
#define __shfl_xor_sync(...) moco_emu_shfl_xor(__LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) moco_emu_shfl_down(__LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) moco_emu_shfl_up(__LINE__, __VA_ARGS__)
#define __shfl_sync(...) moco_emu_shfl(__LINE__, __VA_ARGS__)
#define __ballot_sync(mask, p) moco_emu::vote<int>((mask), (p), __LINE__, "__ballot_sync")
#define __any_sync(mask, p) (moco_emu::vote<int>((mask), (p), __LINE__, "__any_sync") != 0u)
#define __all_sync(mask, p) (moco_emu::vote<int>((mask), (p), __LINE__, "__all_sync") == ((mask) & moco_emu_present_lanes()))
inline unsigned int moco_emu_present_lanes() {
    const unsigned int w0 = moco_emu::linear_tid() & ~31u;
    const unsigned int lanes = moco_emu::sched().nthreads - w0 < 32u ? moco_emu::sched().nthreads - w0 : 32u;
    return lanes == 32u ? 0xffffffffu : ((1u << lanes) - 1u);
}

// Atomics: fibers never interleave inside an expression, so a plain read-modify-write is atomic.
template <typename T> inline T atomicAdd(T* p, T v) { const T old = *p; *p = old + v; return old; }
template <typename T> inline T atomicSub(T* p, T v) { const T old = *p; *p = old - v; return old; }
template <typename T> inline T atomicExch(T* p, T v) { const T old = *p; *p = v; return old; }
template <typename T> inline T atomicMax(T* p, T v) { const T old = *p; *p = old > v ? old : v; return old; }
template <typename T> inline T atomicMin(T* p, T v) { const T old = *p; *p = old < v ? old : v; return old; }
template <typename T> inline T atomicCAS(T* p, T cmp, T v) { const T old = *p; if (old == cmp) *p = v; return old; }
template <typename T> inline T atomicOr(T* p, T v) { const T old = *p; *p = old | v; return old; }
template <typename T> inline T atomicAnd(T* p, T v) { const T old = *p; *p = old & v; return old; }

// ---- kernels table and launch ----------------------------------------------------------------------------------

namespace moco_emu {

struct Kernel {
    const char* name;
    void (*call)(void**);
    size_t nparams;
    const size_t* sizes;
    const bool* pointers;
    unsigned int launch_bounds; // 0: none given
};

template <auto F, typename... A, size_t... I> inline void call_unpacked(void** args, std::index_sequence<I...>) {
    F(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <auto F, typename... A> struct Thunk {
    static void call(void** args) { call_unpacked<F, A...>(args, std::index_sequence_for<A...>{}); }
};

template <auto F, typename... A> inline Kernel make_kernel_impl(const char* name, unsigned int lb, void (*)(A...)) {
    static const size_t sizes[] = {sizeof(A)..., 0};
    static const bool pointers[] = {std::is_pointer<A>::value..., false};
    return Kernel{name, &Thunk<F, A...>::call, sizeof...(A), sizes, pointers, lb};
}

template <auto F> inline Kernel make_kernel(const char* name, unsigned int lb) { return make_kernel_impl<F>(name, lb, F); }

// The addressable bytes of the shared-memory section, found once (ASan's redzones between the arrays stay
// poisoned, so an out-of-bounds shared access is reported).
inline void find_shared_runs() {
    Sched& s = sched();
    if (!__start_cuda_emu_shared || !__stop_cuda_emu_shared) return;
    char* p = __start_cuda_emu_shared;
    char* end = __stop_cuda_emu_shared;
    while (p < end) {
        while (p < end && __asan_address_is_poisoned && __asan_address_is_poisoned(p)) ++p;
        char* q = p;
        while (q < end && !(__asan_address_is_poisoned && __asan_address_is_poisoned(q))) ++q;
        if (q > p) s.shared_runs.push_back({p, (size_t)(q - p)});
        p = q;
    }
}

inline void poison_shared() {
    for (auto& r : sched().shared_runs) memset(r.first, 0xff, r.second);
}

inline void shuffle_order(std::vector<unsigned int>& order) {
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[next_rand() % i]);
}

inline const char* state_name(State st) {
    switch (st) {
    case RUNNABLE: return "runnable";
    case AT_BARRIER: return "at __syncthreads";
    case AT_WARP: return "at a warp shuffle/vote";
    default: return "returned";
    }
}

[[noreturn]] inline void report_stuck(const char* why) {
    Sched& s = sched();
    std::string msg = std::string("kernel ") + s.kernel + ", block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " + std::to_string(blockIdx.z) + "): " + why;
    unsigned int shown = 0;
    for (unsigned int t = 0; t < s.nthreads && shown < 12; ++t) {
        const Fiber& f = s.fibers[t];
        if (t == 0 || f.state != s.fibers[t - 1].state || f.line != s.fibers[t - 1].line) {
            msg += "\n  thread " + std::to_string(t) + " (" + std::to_string(f.idx.x) + ", " + std::to_string(f.idx.y) + ", " + std::to_string(f.idx.z) + "): " + state_name(f.state) + " (line " + std::to_string(f.line) + ")";
            ++shown;
        }
    }
    fail("%s", msg.c_str());
}

// Runs one block to completion.
inline void run_block() {
    Sched& s = sched();
    const unsigned int n = s.nthreads;
    for (auto& pending : s.async_copies) pending.clear(); // a block's copies never reach the next block
    s.async_groups.assign(n, 0u);
    for (unsigned int t = 0; t < n; ++t) {
        Fiber& f = s.fibers[t];
        f.idx = uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
        f.state = RUNNABLE;
        f.line = 0;
        if (__asan_unpoison_memory_region) __asan_unpoison_memory_region(f.stack, STACK_BYTES);
        make_context(f.ctx, f.stack, STACK_BYTES, fiber_entry);
    }
    // Between two block barriers, the warps run one after another, each as far as it can get (through its warp
    // shuffles and votes) before the next starts: the first time last warp first, then in a fresh pseudo-random
    // order; inside a warp, the lanes run one after another between two warp operations (last lane first, then
    // shuffled). So a warp can run ahead of the others up to the next __syncthreads, as on a GPU, and a missing
    // barrier between warps is exposed in both directions over the passes.
    const unsigned int nwarps = (n + 31u) / 32u;
    std::vector<unsigned int> warp_order(nwarps), lane_order(32);
    for (unsigned int w = 0; w < nwarps; ++w) warp_order[w] = nwarps - 1u - w;
    for (unsigned int l = 0; l < 32u; ++l) lane_order[l] = 31u - l;
    for (;;) {
        for (unsigned int w : warp_order) {
            const unsigned int w0 = w * 32u;
            const unsigned int w1 = w0 + 32u < n ? w0 + 32u : n;
            for (;;) {
                for (unsigned int l : lane_order) {
                    if (w0 + l < w1 && s.fibers[w0 + l].state == RUNNABLE) resume(w0 + l);
                }
                unsigned int at_warp = 0, done = 0;
                for (unsigned int t = w0; t < w1; ++t) {
                    at_warp += s.fibers[t].state == AT_WARP;
                    done += s.fibers[t].state == DONE;
                }
                if (at_warp == 0u) break;
                if (done > 0u) report_stuck("a warp shuffle/vote with a full mask was reached after some lanes of the warp returned");
                if (at_warp != w1 - w0) report_stuck("deadlock: some lanes of a warp wait at a shuffle/vote, others at __syncthreads");
                for (unsigned int t = w0; t < w1; ++t) s.fibers[t].state = RUNNABLE;
                shuffle_order(lane_order);
            }
        }
        // every thread is now at a block barrier or done
        unsigned int at_bar = 0, done = 0;
        int line = -1;
        for (unsigned int t = 0; t < n; ++t) {
            const Fiber& f = s.fibers[t];
            if (f.state == AT_BARRIER) {
                if (line >= 0 && f.line != line) report_stuck("threads wait at different __syncthreads calls");
                line = f.line;
                ++at_bar;
            }
            done += f.state == DONE;
        }
        if (done == n) return;
        if (done > 0u) report_stuck("__syncthreads reached after some threads of the block returned (undefined behaviour in CUDA)");
        if (at_bar != n) report_stuck("deadlock: no thread can make progress");
        for (unsigned int t = 0; t < n; ++t) s.fibers[t].state = RUNNABLE;
        shuffle_order(warp_order);
        shuffle_order(lane_order);
    }
}

inline void launch(const Kernel& k, dim3 grid, dim3 block, void** args, uint64_t seed) {
    Sched& s = sched();
    const uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0) fail("launch of %s with an empty grid or block", k.name);
    if (block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024) fail("launch of %s: block (%u, %u, %u) exceeds CUDA's limits", k.name, block.x, block.y, block.z);
    if (k.launch_bounds != 0 && threads > k.launch_bounds) fail("launch of %s: %llu threads per block exceed its __launch_bounds__(%u)", k.name, (unsigned long long)threads, k.launch_bounds);
    if (grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) fail("launch of %s: grid (%u, %u, %u) exceeds CUDA's limits", k.name, grid.x, grid.y, grid.z);
    s.nthreads = (unsigned int)threads;
    s.body = k.call;
    s.args = args;
    s.kernel = k.name;
    s.rng = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    s.warp_slots.assign(((threads + 31u) / 32u) * 32u, 0);
    s.mma_regs.assign((size_t)((threads + 31u) / 32u) * 32u * MMA_WORDS, 0);
    s.async_copies.assign(threads, {});
    while (s.fibers.size() < threads) {
        Fiber f;
        void* mem = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (mem == MAP_FAILED) fail("mmap of a fiber stack failed");
        f.stack = (char*)mem;
        s.fibers.push_back(f);
    }
    blockDim = block;
    gridDim = grid;
    const uint64_t blocks = (uint64_t)grid.x * grid.y * grid.z;
    for (uint64_t b = blocks; b-- > 0;) { // last block first
        blockIdx = uint3{(unsigned int)(b % grid.x), (unsigned int)((b / grid.x) % grid.y), (unsigned int)(b / ((uint64_t)grid.x * grid.y))};
        poison_shared();
        run_block();
    }
}

// ---- the launch request (written by tests/cuda_emu/mod.rs), little-endian -----------------------------------------
//
//   "MOCOEMU1", u32 name length, name, u32 grid[3], u32 block[3], u64 seed, u32 argument count, then per argument
//   u32 kind: 0 value (u64 size, bytes), 1 buffer (u64 size, bytes, u32 patches, each: u64 offset in this buffer,
//   u32 target argument, u64 byte offset in it: the target buffer's address plus that offset is stored as a u64 at
//   the offset, the way a host writes device pointers into a metadata buffer), 2 null pointer. Arguments past the
//   kernel's parameters must be buffers: side allocations that only pointer patches refer to.
// The response holds, per buffer argument in order, u64 size and its bytes after the launch.

struct Reader {
    std::vector<unsigned char> data;
    size_t pos = 0;
    void need(size_t n) {
        if (data.size() - pos < n) fail("truncated launch request");
    }
    const unsigned char* bytes(size_t n) {
        need(n);
        const unsigned char* p = &data[pos];
        pos += n;
        return p;
    }
    template <typename T> T value() {
        T v;
        memcpy(&v, bytes(sizeof v), sizeof v);
        return v;
    }
    uint32_t u32() { return value<uint32_t>(); }
    uint64_t u64() { return value<uint64_t>(); }
};

inline std::vector<unsigned char> read_file(const char* path) {
    FILE* f = fopen(path, "rb");
    if (!f) fail("cannot open %s", path);
    std::vector<unsigned char> out;
    unsigned char buf[1 << 16];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + got);
    fclose(f);
    return out;
}

struct Arg {
    uint32_t kind = 0;
    size_t size = 0;
    void* data = nullptr;   // value bytes or the buffer
    void* pointer = nullptr; // for buffers and null: the pointer argument the kernel receives
    std::vector<std::pair<uint64_t, std::pair<uint32_t, uint64_t>>> patches;
};

inline void timeout_handler(int) {
    static const char msg[] = "cuda_emu: error: the launch timed out (an endless loop in a kernel?)\n";
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    _exit(4);
}

inline int run(const Kernel* kernels, size_t count, int argc, char** argv) {
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < count; ++i) printf("%s %zu %u\n", kernels[i].name, kernels[i].nparams, kernels[i].launch_bounds);
        return 0;
    }
    if (argc != 3) fail("usage: %s REQUEST RESPONSE | --list", argv[0]);
    const char* timeout = getenv("MOCO_EMU_TIMEOUT");
    signal(SIGALRM, timeout_handler);
    alarm(timeout ? (unsigned int)atoi(timeout) : 600u);
    Reader r;
    r.data = read_file(argv[1]);
    if (memcmp(r.bytes(8), "MOCOEMU1", 8) != 0) fail("bad launch request magic");
    const uint32_t name_len = r.u32();
    const std::string name((const char*)r.bytes(name_len), name_len);
    dim3 grid, block;
    grid.x = r.u32(), grid.y = r.u32(), grid.z = r.u32();
    block.x = r.u32(), block.y = r.u32(), block.z = r.u32();
    const uint64_t seed = r.u64();
    const Kernel* k = nullptr;
    for (size_t i = 0; i < count; ++i) {
        if (name == kernels[i].name) k = &kernels[i];
    }
    if (!k) fail("no kernel named %s in this file", name.c_str());
    // the kernel's parameters, then side buffers that only pointer patches refer to
    const uint32_t nargs = r.u32();
    if (nargs < k->nparams) fail("%s takes %zu parameters, the launch passes %u", k->name, k->nparams, nargs);
    std::vector<Arg> args(nargs);
    for (uint32_t i = 0; i < nargs; ++i) {
        Arg& a = args[i];
        a.kind = r.u32();
        if (i >= k->nparams && a.kind != 1u) fail("argument %u of %s: past the kernel's %zu parameters, only side buffers may follow", i, k->name, k->nparams);
        if (a.kind == 0u) {
            a.size = (size_t)r.u64();
            if (i >= k->nparams || k->pointers[i]) fail("%s parameter %u is a pointer, the launch passes a %zu-byte value", k->name, i, a.size);
            if (a.size != k->sizes[i]) fail("%s parameter %u has %zu bytes, the launch passes %zu", k->name, i, k->sizes[i], a.size);
            a.data = malloc(a.size);
            memcpy(a.data, r.bytes(a.size), a.size);
        } else if (a.kind == 1u || a.kind == 2u) {
            if (i < k->nparams && !k->pointers[i]) fail("%s parameter %u is a %zu-byte value, the launch passes a buffer", k->name, i, k->sizes[i]);
            if (a.kind == 1u) {
                a.size = (size_t)r.u64();
                a.data = malloc(a.size); // exactly the buffer's length: ASan reports any access past it
                if (a.size) memcpy(a.data, r.bytes(a.size), a.size);
                const uint32_t np = r.u32();
                for (uint32_t p = 0; p < np; ++p) {
                    const uint64_t off = r.u64();
                    const uint32_t target = r.u32();
                    const uint64_t toff = r.u64();
                    a.patches.push_back({off, {target, toff}});
                }
            }
            a.pointer = a.data;
        } else {
            fail("bad argument kind %u", a.kind);
        }
    }
    for (auto& a : args) {
        for (auto& p : a.patches) {
            if (p.second.first >= nargs || args[p.second.first].kind != 1u) fail("pointer patch to argument %u, which is not a buffer", p.second.first);
            if (p.first + 8 > a.size) fail("pointer patch past the end of its buffer");
            const uint64_t addr = (uint64_t)(uintptr_t)args[p.second.first].data + p.second.second;
            memcpy((char*)a.data + p.first, &addr, 8);
        }
    }
    std::vector<void*> argv_k(nargs);
    for (uint32_t i = 0; i < k->nparams; ++i) argv_k[i] = args[i].kind == 0u ? args[i].data : (void*)&args[i].pointer;
    find_shared_runs();
    launch(*k, grid, block, argv_k.data(), seed);
    FILE* out = fopen(argv[2], "wb");
    if (!out) fail("cannot write %s", argv[2]);
    for (auto& a : args) {
        if (a.kind != 1u) continue;
        const uint64_t size = a.size;
        fwrite(&size, 8, 1, out);
        if (size) fwrite(a.data, 1, a.size, out);
    }
    if (fclose(out) != 0) fail("writing %s failed", argv[2]);
    return 0;
}

} // namespace moco_emu

// ---- library mode: the entry points of library_abi.h ---------------------------------------------------------------

#ifdef MOCO_CUDA_EMU_LIBRARY
#include "library_abi.h"

namespace moco_emu {

// Ends the running launch: from a thread (fiber), switch back to the scheduler, which jumps out (resume); from the
// scheduler, jump out directly. Either way the jump lands in lib_launch on the scheduler's own stack.
[[noreturn]] inline void lib_fail(const char* msg) {
    Sched& s = sched();
    if (!s.in_launch) {
        fprintf(stderr, "cuda_emu: error outside a launch: %s\n", msg);
        abort();
    }
    if (!s.failed) {
        if (s.current >= 0) {
            snprintf(s.fail_msg, sizeof s.fail_msg, "kernel %s, block (%u, %u, %u), thread (%u, %u, %u): %s", s.kernel, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z, msg);
        } else {
            snprintf(s.fail_msg, sizeof s.fail_msg, "%s", msg);
        }
    }
    s.failed = true;
    if (s.current >= 0) {
        Fiber& f = s.fibers[(size_t)s.current];
        f.state = DONE;
        switch_context(f.ctx, s.main_ctx); // never resumed: resume() sees `failed` and jumps
    }
    longjmp(s.fail_jmp, 1);
}

inline void lib_fail_entry(const char* msg) { lib_fail(msg); }
inline int lib_in_launch() { return sched().in_launch ? 1 : 0; }

inline int lib_launch(const Kernel* kernels, size_t count, size_t k, const unsigned int g[3], const unsigned int b[3], void** args, unsigned long long seed, char* err, size_t errlen) {
    Sched& s = sched();
    if (k >= count) {
        snprintf(err, errlen, "kernel index %zu out of range (%zu kernels)", k, count);
        return 1;
    }
    static bool shared_found = false;
    if (!shared_found) {
        find_shared_runs();
        shared_found = true;
    }
    s.failed = false;
    s.fail_msg[0] = 0;
    s.in_launch = true;
    if (setjmp(s.fail_jmp) != 0) {
        s.in_launch = false;
        s.current = -1;
        snprintf(err, errlen, "%s", s.fail_msg);
        return 1;
    }
    launch(kernels[k], dim3(g[0], g[1], g[2]), dim3(b[0], b[1], b[2]), args, seed);
    s.in_launch = false;
    return 0;
}

} // namespace moco_emu

#define MOCO_EMU_LIBRARY(...)                                                                                        \
    static const moco_emu::Kernel moco_emu_kernels[] = {__VA_ARGS__};                                                \
    static const size_t moco_emu_count = sizeof moco_emu_kernels / sizeof moco_emu_kernels[0];                       \
    static int moco_emu_launch(size_t k, const unsigned int g[3], const unsigned int b[3], void** args, unsigned long long seed, char* err, size_t errlen) { \
        return moco_emu::lib_launch(moco_emu_kernels, moco_emu_count, k, g, b, args, seed, err, errlen);            \
    }                                                                                                                \
    extern "C" __attribute__((visibility("default"))) const MocoEmuLibrary* moco_emu_library(void) {                 \
        static MocoEmuKernelInfo infos[sizeof moco_emu_kernels / sizeof moco_emu_kernels[0]];                        \
        static MocoEmuLibrary lib;                                                                                   \
        if (lib.abi == 0) {                                                                                          \
            for (size_t i = 0; i < moco_emu_count; ++i) {                                                            \
                const moco_emu::Kernel& k = moco_emu_kernels[i];                                                     \
                infos[i] = MocoEmuKernelInfo{k.name, k.nparams, k.sizes, k.pointers, k.launch_bounds};               \
            }                                                                                                        \
            lib = MocoEmuLibrary{MOCO_EMU_LIBRARY_ABI, moco_emu_count, infos, &moco_emu_launch, &moco_emu::lib_fail_entry, &moco_emu::lib_in_launch}; \
        }                                                                                                            \
        return &lib;                                                                                                 \
    }
#endif // MOCO_CUDA_EMU_LIBRARY

#define MOCO_EMU_KERNEL(name, bounds) moco_emu::make_kernel<&name>(#name, bounds)
#define MOCO_EMU_MAIN(...)                                                                              \
    static const moco_emu::Kernel moco_emu_kernels[] = {__VA_ARGS__};                                   \
    int main(int argc, char** argv) {                                                                   \
        return moco_emu::run(moco_emu_kernels, sizeof moco_emu_kernels / sizeof moco_emu_kernels[0], argc, argv); \
    }

#endif // MOCO_CUDA_EMU_LIST
