// The device helpers of more than one family: grid indexing and block reductions. Compiled in front of every
// kernels/<family>.cu: KernelFamily::cuda (src/ops/kernel_family.rs) is this file, `#line 1 "<family>.cu"`, then the
// family's file, which NVRTC compiles as one source (compile errors name common.cuh or the family's file, with their
// own line numbers); the CUDA emulation (tests/cuda_emu) includes this file before the family's. Mirrors
// shaders/common.wgsl: same helper names.
//
// Device functions only: no kernels (`__global__`), no #include, no #define (a family's macros, WG among them, come
// after this file, so every size here is a parameter); #if/#ifndef only around the inline-PTX wrappers at the end.

// This block's index in a 2-D grid (x <= 65535), flattened as blockIdx.x + blockIdx.y * gridDim.x.
__device__ __forceinline__ unsigned int flat_block() {
    return blockIdx.x + blockIdx.y * gridDim.x;
}

// This thread's element in a 2-D grid of `block`-thread blocks: flat_block() * block + threadIdx.x.
__device__ __forceinline__ unsigned int flat_thread(unsigned int block) {
    return flat_block() * block + threadIdx.x;
}

// ---- shared-memory tree reductions (the order of the WGSL's workgroup trees) ------------------------------------

struct SumOp {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
    __device__ __forceinline__ float2 operator()(float2 a, float2 b) const { return make_float2(a.x + b.x, a.y + b.y); }
};

// fmaxf: a NaN operand is ignored, as f32::max on the CPU.
struct MaxOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// `op` over the n threads of the block (n a power of two, every thread calls it), returned to every thread: a
// shared-memory tree, red[t] = op(red[t], red[t + s]) for s = n/2, n/4, ..., 1. `red` holds n values; the trailing
// barrier lets the caller reuse it.
template <typename T, typename Op> __device__ __forceinline__ T tree_reduce(T v, T* red, unsigned int n, Op op) {
    const unsigned int tid = threadIdx.x;
    red[tid] = v;
    __syncthreads();
    for (unsigned int s = n >> 1; s > 0u; s >>= 1) {
        if (tid < s) red[tid] = op(red[tid], red[tid + s]);
        __syncthreads();
    }
    const T r = red[0];
    __syncthreads();
    return r;
}

template <typename T> __device__ __forceinline__ T tree_sum(T v, T* red, unsigned int n) {
    return tree_reduce(v, red, n, SumOp());
}

__device__ __forceinline__ float tree_max(float v, float* red, unsigned int n) {
    return tree_reduce(v, red, n, MaxOp());
}

// ---- warp-shuffle reductions (CUDA only: the WGSL has no subgroup operations and sums with trees) -----------------

// Sum over the 32 lanes of the warp, returned to every lane (xor butterfly).
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum of `v` over the n threads of the block (n a multiple of 32, every thread calls it), returned to every thread:
// warp sums, then the n/32 warp sums in warp order. `scratch` holds n/32 values; the leading barrier lets the caller
// reuse it right after a previous call.
template <unsigned int N, typename T> __device__ __forceinline__ T block_sum(T v, T* scratch) {
    const unsigned int tid = threadIdx.x;
    v = warp_sum(v);
    __syncthreads(); // scratch may still be read from a previous call
    if ((tid & 31u) == 0u) scratch[tid >> 5] = v;
    __syncthreads();
    T total = 0;
#pragma unroll
    for (unsigned int w = 0; w < N / 32u; ++w) total += scratch[w];
    return total;
}

// ---- key loads, one per queue storage type -------------------------------------------------------------------

// IEEE half bits -> f32, exact (what PTX cvt.f32.f16 computes), in portable code: the prelude has no
// preprocessor directives, so the same lines run under NVRTC and on the CPU emulation of tests/cuda_emu. No
// branches: the exponent and mantissa moved to their f32 positions are rebiased by one multiplication by 2^112
// (exact for normal halves, and for subnormal ones, which land on f32 subnormals; NVRTC keeps denormals, no
// -ftz), and exponent 31 (inf, NaN) is selected apart.
__device__ __forceinline__ float f16_bits_to_f32(unsigned short h) {
    const unsigned int em = ((unsigned int)h & 0x7fffu) << 13;
    const unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
    const float scaled = __uint_as_float(em) * 5.192296858534828e33f; // 2^112
    const unsigned int mag = em >= 0x0f800000u ? (em | 0x7f800000u) : __float_as_uint(scaled);
    return __uint_as_float(sign | mag);
}

__device__ __forceinline__ float bf16_bits_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// ---- f32 -> 16-bit stores (queue.cu writes the queue, infonce.cu rounds q^ for the tensor cores) ---------------

// f32 -> IEEE half bits, round to nearest even (the rounding of half::f16::from_f32).
__device__ __forceinline__ unsigned int f32_to_f16_bits(float x) {
    const unsigned int b = __float_as_uint(x);
    const unsigned int sign = (b >> 16) & 0x8000u;
    const unsigned int e8 = (b >> 23) & 0xffu;
    unsigned int mant = b & 0x7fffffu;
    if (e8 == 0xffu) return sign | 0x7c00u | (mant != 0u ? (0x200u | (mant >> 13)) : 0u);
    const int e = (int)e8 - 112; // rebias 127 -> 15
    if (e >= 31) return sign | 0x7c00u;
    if (e <= 0) {
        if (e < -10) return sign;
        mant = mant | 0x800000u;
        const unsigned int shift = (unsigned int)(14 - e);
        unsigned int r = mant >> shift;
        const unsigned int rem = mant & ((1u << shift) - 1u);
        const unsigned int halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (r & 1u) == 1u)) r = r + 1u;
        return sign | r;
    }
    unsigned int r = ((unsigned int)e << 10) | (mant >> 13);
    const unsigned int rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u) == 1u)) r = r + 1u;
    return sign | r;
}

// f32 -> bf16 bits, round to nearest even; NaN stays NaN.
__device__ __forceinline__ unsigned int f32_to_bf16_bits(float x) {
    const unsigned int b = __float_as_uint(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (b >> 16) | 0x40u;
    return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
}

// DT: 0 f32, 1 f16, 2 bf16 (the WGSL QUEUE_DTYPE codes).
template <int DT> struct KeyType { typedef unsigned short T; };
template <> struct KeyType<0> { typedef float T; };

template <int DT> __device__ __forceinline__ float load_key(const typename KeyType<DT>::T* __restrict__ keys, unsigned int idx);
template <> __device__ __forceinline__ float load_key<0>(const float* __restrict__ keys, unsigned int idx) {
    return __ldg(keys + idx);
}
template <> __device__ __forceinline__ float load_key<1>(const unsigned short* __restrict__ keys, unsigned int idx) {
    return f16_bits_to_f32(__ldg(keys + idx));
}
template <> __device__ __forceinline__ float load_key<2>(const unsigned short* __restrict__ keys, unsigned int idx) {
    return bf16_bits_to_f32(__ldg(keys + idx));
}

// ---- tensor cores and asynchronous copies (sm_80+) -------------------------------------------------------------
//
// One inline-PTX wrapper per instruction. The CUDA emulation (tests/cuda_emu/cuda_emu.h) defines the same names with
// the PTX ISA's fragment layouts, so these are the only lines it does not compile. Below sm_80 they trap: the
// host launches the tensor-core kernels (infonce.cu, conv.cu) only on sm_80 and newer (a module must still compile
// for older devices). No WGSL mirror: WebGPU has no such instructions (the wgpu issue's cooperative matrices are
// the nearest).
//   mma_bf16_16816 / mma_f16_16816: D = A B + D, m16n8k16, A row-major, B column-major, 16-bit operands, f32 acc;
//   mma_tf32_1688: the same for m16n8k8 with TF32 operands (f32 registers, rounded by tf32_round);
//   pack_bf16x2: two f32 rounded to nearest-even bf16 in one register, lo in bits 0..15 (cvt.rn.bf16x2.f32);
//   ldmatrix_x4(_trans): four 8x8 b16 matrices from shared memory, lanes 8i..8i+7 give matrix i's row addresses;
//   cp_async_16: a 16-byte global -> shared copy that zero-fills past src_size bytes (cp.async.cg); cp_async_4 the
//   same for 4 bytes (cp.async.ca: .cg copies only 16), src_size 0 or 4; both with
//   cp_async_commit (close the thread's group) and cp_async_wait<N> (all but the N newest groups landed).
#ifndef MOCO_CUDA_EMU
__device__ __forceinline__ void mma_bf16_16816(float (&acc)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}
__device__ __forceinline__ void mma_f16_16816(float (&acc)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}
__device__ __forceinline__ void mma_tf32_1688(float (&acc)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}
__device__ __forceinline__ float tf32_round(float x) {
#if __CUDA_ARCH__ >= 800
    unsigned int r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return __uint_as_float(r);
#else
    __trap();
    return 0.0f;
#endif
}
__device__ __forceinline__ unsigned int pack_bf16x2(float lo, float hi) {
#if __CUDA_ARCH__ >= 800
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    __trap();
    return 0u;
#endif
}
__device__ __forceinline__ void ldmatrix_x4(unsigned int (&r)[4], const void* row) {
#if __CUDA_ARCH__ >= 800
    const unsigned int a = (unsigned int)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
#else
    __trap();
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned int (&r)[4], const void* row) {
#if __CUDA_ARCH__ >= 800
    const unsigned int a = (unsigned int)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
#else
    __trap();
#endif
}
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, unsigned int src_size) {
#if __CUDA_ARCH__ >= 800
    const unsigned int a = (unsigned int)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src), "r"(src_size) : "memory");
#else
    __trap();
#endif
}
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, unsigned int src_size) {
#if __CUDA_ARCH__ >= 800
    const unsigned int a = (unsigned int)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(a), "l"(src), "r"(src_size) : "memory");
#else
    __trap();
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#else
    __trap();
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#else
    __trap();
#endif
}
#endif

// ---- a 64 x 64 block tile on tensor cores (conv.cu, linear.cu) -------------------------------------------------
//
// A 256-thread block's product of a 64 x 64 output tile, in 16-deep chunks staged in shared memory (MmaStage64),
// on mma.sync.m16n8k8 with TF32 operands:
//  - Tiles are stored k-contiguous, A as [m][k] and B as [n][k], rows padded to 20 floats (80 bytes, mma_slot): an
//    8x8 b16 matrix of ldmatrix is then 8 rows x 4 f32, exactly a TF32 fragment's quarter (lane 4g + t gets row g,
//    element t), and the eight 16-byte rows of one ldmatrix phase start at banks 0, 20, 8, 28, 16, 4, 24, 12: no
//    two on the same bank. (Unpadded, rows 64 bytes apart would put rows 0 and 2 on the same banks.)
//  - Each of the 8 warps owns a 16 x 32 piece of the tile: one m16 block and four n8 blocks, so per 8-deep k step
//    one ldmatrix.x4 for A, two for B, and 4 mma (TF32) or 12 (TF32X3). 16 f32 accumulators per thread; with the
//    fragments (4 + 8 words, doubled for TF32X3's hi and lo halves) and a caller's gather state this stays well
//    under 128 registers, so two blocks (512 threads) fit an SM's 64 K registers. Two stages are 20 KB of static
//    shared memory (under the 48 KB static limit; several blocks per SM).
//  - TF32: operands rounded to TF32 (cvt.rna, as cuBLAS and cuDNN do), f32 accumulation. TF32X3: each operand split
//    as x = hi + lo, both TF32 (x - hi is exact in f32), and a b ~ lo_a hi_b + hi_a lo_b + hi_a hi_b, the small
//    terms first; the dropped lo_a lo_b is under 2^-22 |a b|, so the result has f32's accuracy at three
//    tensor-core products per product (the bounds: src/ops/precision.rs, MatmulPrecision).
//  - BF16: operands rounded to nearest-even bf16 (8-bit significands) and f32 accumulation, one m16n8k16 per n8 block
//    and chunk: 4 mma per 16-deep chunk against TF32's 8, at twice TF32's rate per instruction on sm_80 and sm_90.
//    The chunk stays f32 in shared memory (the same copies, stages and ldmatrix reads as TF32); the fragments are
//    rounded and packed in registers (pack_bf16x2), so the operands' memory traffic is f32's.
// mma_pipeline64 runs the K loop over a caller's copies (cp.async, two stages); mma_acc_at64 says which output each
// accumulator holds.
enum MmaArith { MMA_TF32 = 0, MMA_TF32X3 = 1, MMA_BF16 = 2 };

struct MmaStage64 {
    float a[64u * 20u]; // A chunk [m][k], k < 16 used
    float b[64u * 20u]; // B chunk [n][k]
};

// Slot of (row, k) in an MmaStage64 tile: row m of A or n of B, k < 16.
__device__ __forceinline__ unsigned int mma_slot(unsigned int row, unsigned int k) {
    return row * 20u + k;
}

// A fragment register (f32 bits) as TF32: the value rounded (hi), and for TF32X3 the remainder rounded (lo).
__device__ __forceinline__ void split_tf32(unsigned int x, unsigned int& hi, unsigned int& lo) {
    const float v = __uint_as_float(x);
    const float h = tf32_round(v);
    hi = __float_as_uint(h);
    lo = __float_as_uint(tf32_round(v - h));
}

// acc += A B on one m16n8k8 step at ARITH (MMA_TF32 or MMA_TF32X3) from split operands (hi, and lo for TF32X3);
// TF32X3 adds the small products first (lo_a hi_b, hi_a lo_b).
template <MmaArith ARITH>
__device__ __forceinline__ void mma_tf32_split(float (&acc)[4], const unsigned int (&a_hi)[4], const unsigned int (&a_lo)[4], const unsigned int (&b_hi)[2], const unsigned int (&b_lo)[2]) {
    if (ARITH == MMA_TF32X3) {
        mma_tf32_1688(acc, a_lo, b_hi);
        mma_tf32_1688(acc, a_hi, b_lo);
    }
    mma_tf32_1688(acc, a_hi, b_hi);
}

// acc[nt] += A[warp's 16 rows, chunk] B[chunk, warp's n8 block nt] in bf16: the chunk's 16 k as one m16n8k16 step.
// One ldmatrix.x4 over 8 rows x 16 k gives lane 4 g + t the f32 at k = t, t + 4, t + 8, t + 12 of row g, and a
// bf16 register holds two k's: mma's k pair (2 t, 2 t + 1) is taken as (t, t + 4), and (2 t + 8, 2 t + 9) as
// (t + 8, t + 12), in A and B alike. That renames the reduction's index (one fixed bijection of the 16 k), so the
// product is the same sum of the same terms.
__device__ __forceinline__ void mma_chunk64_bf16(float (&acc)[4][4], const MmaStage64& st, unsigned int warp_m, unsigned int warp_n, unsigned int mat, unsigned int row) {
    unsigned int top[4], bottom[4]; // rows g and g + 8 of the warp's 16: [i] = k 4 i + t
    ldmatrix_x4(top, &st.a[mma_slot(warp_m + row, 4u * mat)]);
    ldmatrix_x4(bottom, &st.a[mma_slot(warp_m + 8u + row, 4u * mat)]);
    const unsigned int a[4] = {
        pack_bf16x2(__uint_as_float(top[0]), __uint_as_float(top[1])),
        pack_bf16x2(__uint_as_float(bottom[0]), __uint_as_float(bottom[1])),
        pack_bf16x2(__uint_as_float(top[2]), __uint_as_float(top[3])),
        pack_bf16x2(__uint_as_float(bottom[2]), __uint_as_float(bottom[3])),
    };
#pragma unroll
    for (unsigned int nt = 0; nt < 4u; ++nt) {
        unsigned int col[4]; // column g of n8 block nt: [i] = k 4 i + t
        ldmatrix_x4(col, &st.b[mma_slot(warp_n + 8u * nt + row, 4u * mat)]);
        const unsigned int b[2] = {pack_bf16x2(__uint_as_float(col[0]), __uint_as_float(col[1])), pack_bf16x2(__uint_as_float(col[2]), __uint_as_float(col[3]))};
        mma_bf16_16816(acc[nt], a, b);
    }
}

// acc[nt] += A[warp's 16 rows, chunk] B[chunk, warp's n8 block nt] at arithmetic ARITH: TF32 and TF32X3 over the
// chunk's two 8-deep k steps, BF16 in one 16-deep step (lid: the thread's index in the 256-thread block).
template <MmaArith ARITH>
__device__ __forceinline__ void mma_chunk64(float (&acc)[4][4], const MmaStage64& st, unsigned int lid) {
    const unsigned int lane = lid % 32u;
    const unsigned int warp_m = (lid / 32u) % 4u * 16u; // the warp's rows and columns within the tile
    const unsigned int warp_n = (lid / 32u) / 4u * 32u;
    const unsigned int mat = lane / 8u; // the ldmatrix matrix this lane addresses a row of
    const unsigned int row = lane % 8u;
    if (ARITH == MMA_BF16) {
        mma_chunk64_bf16(acc, st, warp_m, warp_n, mat, row);
        return;
    }
#pragma unroll
    for (unsigned int ks = 0; ks < 16u; ks += 8u) {
        // A: matrices (rows +0 / +8) x (k +0 / +4) -> a[0..3] = (g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4)
        unsigned int a_raw[4];
        ldmatrix_x4(a_raw, &st.a[mma_slot(warp_m + row + 8u * (mat & 1u), ks + 4u * (mat >> 1))]);
        // B: n8 blocks (2 h, 2 h + 1) x (k +0 / +4) -> b_raw[h][0..3] = b0, b1 of block 2 h, then of 2 h + 1
        unsigned int b_raw[2][4];
#pragma unroll
        for (unsigned int h = 0; h < 2u; ++h) ldmatrix_x4(b_raw[h], &st.b[mma_slot(warp_n + 16u * h + 8u * (mat >> 1) + row, ks + 4u * (mat & 1u))]);
        unsigned int a_hi[4], a_lo[4];
#pragma unroll
        for (unsigned int r = 0; r < 4u; ++r) split_tf32(a_raw[r], a_hi[r], a_lo[r]);
#pragma unroll
        for (unsigned int nt = 0; nt < 4u; ++nt) {
            unsigned int b_hi[2], b_lo[2];
#pragma unroll
            for (unsigned int r = 0; r < 2u; ++r) split_tf32(b_raw[nt / 2u][2u * (nt % 2u) + r], b_hi[r], b_lo[r]);
            mma_tf32_split<ARITH>(acc[nt], a_hi, a_lo, b_hi, b_lo);
        }
    }
}

// The (row, column) within the 64 x 64 tile of accumulator acc[nt][i] of thread lid (the C fragment: row g + 8
// (i / 2), column 2 t + i % 2 of n8 block nt, lane = 4 g + t).
__device__ __forceinline__ uint2 mma_acc_at64(unsigned int lid, unsigned int nt, unsigned int i) {
    const unsigned int lane = lid % 32u;
    const unsigned int warp_m = (lid / 32u) % 4u * 16u;
    const unsigned int warp_n = (lid / 32u) / 4u * 32u;
    return uint2{warp_m + lane / 4u + 8u * (i / 2u), warp_n + 8u * nt + 2u * (lane % 4u) + i % 2u};
}

// acc += the block's product over K in [k_begin, k_end), 16-deep chunks: copy(k0, stage) issues this thread's
// cp.async copies of the chunk at k0 into the stage and commits them as one group. Two stages: the next chunk's
// copies go into the other stage (which every warp finished reading before the barrier that ended the last
// iteration), then the thread waits for this chunk's group only.
template <MmaArith ARITH, typename Copy>
__device__ __forceinline__ void mma_pipeline64(float (&acc)[4][4], MmaStage64 (&stages)[2], unsigned int k_begin, unsigned int k_end, unsigned int lid, Copy copy) {
    unsigned int stage = 0u;
    if (k_begin < k_end) copy(k_begin, stages[0]);
    for (unsigned int k0 = k_begin; k0 < k_end; k0 += 16u) {
        if (k0 + 16u < k_end) {
            copy(k0 + 16u, stages[stage ^ 1u]);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        mma_chunk64<ARITH>(acc, stages[stage], lid);
        __syncthreads();
        stage ^= 1u;
    }
}
