// 2-D convolution (NCHW, weight [C_out, C_in, KH, KW], zero padding, no bias) as tiled implicit GEMMs.
// Mirrors shaders/conv.wgsl: same names, same tiles (one 64x64 tile of C[M, N] = A[M, K] . B[K, N] per block,
// 256 threads each owning a 4x4 register micro-tile, K stepped in 16-deep chunks staged in shared memory,
// 2 x 4 KiB). The im2col matrix is never materialised: B (or A) is gathered from the image while loading the tile.
//
//   conv2d_forward          M = C_out, N = N*OH*OW, K = C_in*KH*KW   out    = weight . col          (overwrites)
//   conv2d_backward_weight  M = C_out, N = C_in*KH*KW, K = N*OH*OW   partial[s] = dout . col^T over K range s
//   conv2d_backward_weight_reduce                                    dweight += sum over s of partial[s]
//   conv2d_backward_data    M = C_in,  N = N*H*W,  K = C_out*KH*KW   dinp   += gather of weight . dout (no atomics)
//
// The backward data at stride s > 1 runs in s*s phases, one launch each (src/ops/conv/params.rs
// `ConvParams::backward_data`): the input pixels (iy, ix) with iy = ph_y (mod s), ix = ph_x (mod s) meet only the taps
// ky = (ph_y + pad) (mod s), kx = (ph_x + pad) (mod s), so a phase's GEMM has N = N * its pixels and K = C_out * its
// taps, and the zero taps of the transposed convolution (three quarters of them at stride 2) are never gathered.
// A phase without taps (a 1x1 kernel at stride 2 has one phase of four) adds nothing and is not launched.
//
// Each output element is owned by exactly one thread, so the backward kernels accumulate with a plain
// read-modify-write. Grid: x * z tiles over N (x <= 65535, the host splits), y tiles over M; the weight gradient
// instead uses z for its K ranges (split-K, src/ops/conv/params.rs `wgrad_split`: its GEMM has few tiles and a long
// K), each block writing its partial tile, and the reduce kernel sums the ranges in order (deterministic).
//
// Compiled after kernels/common.cuh by NVRTC at run time, and by tests/cuda_compile.rs in CI: no #include of its
// own.
//
// Scalars: every kernel takes the WGSL uniform block `ConvParams` by value as its first argument (same fields, same
// order, 96 bytes); the storage buffers the entry point uses follow in WGSL binding order
// (inp 1, weight 2, dout 3, result 4).

#define TILE_M 64u
#define TILE_N 64u
#define TILE_K 16u
#define WG 256u

struct ConvParams {
    unsigned int n;
    unsigned int c_in;
    unsigned int h;
    unsigned int w;
    unsigned int c_out;
    unsigned int kh;
    unsigned int kw;
    unsigned int stride;
    unsigned int pad;
    unsigned int oh;
    unsigned int ow;
    unsigned int gemm_m;
    unsigned int gemm_n;
    unsigned int gemm_k;
    unsigned int k_splits; // K ranges (split-K of the weight gradient; 1 otherwise)
    unsigned int k_chunk;  // K per range, a multiple of TILE_K
    // The backward data's phase (see below): input pixels (ph_y + stride*a, ph_x + stride*b) on a ph_h x ph_w grid,
    // taps (ph_ky + stride*ty, ph_kx + stride*tx) on a ph_kh x ph_kw grid. The whole convolution (0, 0, H, W, 0, 0,
    // KH, KW) at stride 1, and in the other passes.
    unsigned int ph_y;
    unsigned int ph_x;
    unsigned int ph_h;
    unsigned int ph_w;
    unsigned int ph_ky;
    unsigned int ph_kx;
    unsigned int ph_kh;
    unsigned int ph_kw;
};

// (i, y, x) of the index j = (i*H + y)*W + x of an [I, H, W] grid: a pixel (n, y, x), or a weight tap (c, ki, kj)
// with (H, W) = (KH, KW).
__device__ __forceinline__ uint3 unravel(unsigned int j, unsigned int h, unsigned int w) {
    const unsigned int hw = h * w;
    const unsigned int i = j / hw;
    const unsigned int pix = j - i * hw;
    const unsigned int y = pix / w;
    return uint3{i, y, pix - y * w};
}

// Offset of channel c of item j = n*Q + q of an [N, C, Q] tensor (C = channels).
__device__ __forceinline__ unsigned int channel_offset(unsigned int j, unsigned int c, unsigned int channels, unsigned int q) {
    const unsigned int n = j / q;
    return (n * channels + c) * q + (j - n * q);
}

// Gather offsets. A thread's gathered operand is fixed along one GEMM dimension for the whole K loop (its column
// of B in the forward and backward data, its four tap rows of B in the weight gradient) and shared by its four
// elements along the other within a chunk (the pixel of the weight gradient, the tap of A's row offsets), so the
// divisions that decompose an index run once per thread, or once per chunk, not for every element (the WGSL
// shaders do the same, shaders/conv.wgsl).

// A tap k = (c, ki, kj) of a [C, KH, KW] weight, and whether k < C*KH*KW (w = 1).
__device__ __forceinline__ uint4 tap_of(const ConvParams& p, unsigned int k, unsigned int channels) {
    if (k >= channels * p.kh * p.kw) return uint4{0u, 0u, 0u, 0u};
    const uint3 t = unravel(k, p.kh, p.kw);
    return uint4{t.x, t.y, t.z, 1u};
}

// The window of output pixel j = (n, oy, ox) on the input: image offset n*C_in*H*W, top-left corner (y0, x0) (may
// be negative), and whether j < N*OH*OW.
struct Window {
    unsigned int base;
    int y0;
    int x0;
    unsigned int valid;
};

__device__ __forceinline__ Window window_of(const ConvParams& p, unsigned int j) {
    if (j >= p.n * p.oh * p.ow) return Window{0u, 0, 0, 0u};
    const uint3 o = unravel(j, p.oh, p.ow);
    return Window{o.x * p.c_in * p.h * p.w, (int)(o.y * p.stride) - (int)p.pad, (int)(o.z * p.stride) - (int)p.pad, 1u};
}

// The gathers return the element's address, or null where the im2col (or transposed) matrix holds a zero: the
// CUDA-core kernels load through it (load_or_zero), the tensor-core kernels copy through it (cp.async, zero-filled).
__device__ __forceinline__ float load_or_zero(const float* __restrict__ at) {
    return at != nullptr ? *at : 0.0f;
}

// im2col element (row: tap t = (ci, ki, kj), column: window w); null outside the image or the matrix.
__device__ __forceinline__ const float* col_at(const ConvParams& p, const float* __restrict__ inp, uint4 t, Window w) {
    const int iy = w.y0 + (int)t.y;
    const int ix = w.x0 + (int)t.z;
    if (t.w == 0u || w.valid == 0u || iy < 0 || ix < 0 || iy >= (int)p.h || ix >= (int)p.w) return nullptr;
    return inp + w.base + (t.x * p.h + (unsigned int)iy) * p.w + (unsigned int)ix;
}

// Input pixel j = (n, a, b) of the phase's grid, at (iy, ix) = (ph_y + stride*a, ph_x + stride*b), as the backward
// data gathers for it: dout's image offset n*C_out*OH*OW, (iy + pad, ix + pad), and whether j < N*ph_h*ph_w (w = 1).
__device__ __forceinline__ uint4 pixel_of(const ConvParams& p, unsigned int j) {
    if (j >= p.n * p.ph_h * p.ph_w) return uint4{0u, 0u, 0u, 0u};
    const uint3 i = unravel(j, p.ph_h, p.ph_w);
    return uint4{i.x * p.c_out * p.oh * p.ow, p.ph_y + p.stride * i.y + p.pad, p.ph_x + p.stride * i.z + p.pad, 1u};
}

// Tap k = (co, ty, tx) of the phase's grid: (co, ph_ky + stride*ty, ph_kx + stride*tx), and whether k < C_out*ph_kh*
// ph_kw (w = 1).
__device__ __forceinline__ uint4 phase_tap_of(const ConvParams& p, unsigned int k) {
    if (k >= p.c_out * p.ph_kh * p.ph_kw) return uint4{0u, 0u, 0u, 0u};
    const uint3 t = unravel(k, p.ph_kh, p.ph_kw);
    return uint4{t.x, p.ph_ky + p.stride * t.y, p.ph_kx + p.stride * t.z, 1u};
}

// Offset of the backward data's A column k (the phase's tap k) in weight [C_out, C_in, KH*KW]: row ci's element is
// at offset + ci*KH*KW, or 0xffffffff past the GEMM's K.
__device__ __forceinline__ unsigned int phase_column_offset(const ConvParams& p, unsigned int k) {
    const uint4 t = phase_tap_of(p, k);
    if (t.w == 0u || k >= p.gemm_k) return 0xffffffffu;
    return t.x * p.c_in * p.kh * p.kw + t.y * p.kw + t.z;
}

// The dout element that tap t = (co, ki, kj) meets at pixel q (pixel_of), null if none.
__device__ __forceinline__ const float* dout_at(const ConvParams& p, const float* __restrict__ dout, uint4 t, uint4 q) {
    if (t.w == 0u || q.w == 0u || q.y < t.y || q.z < t.z) return nullptr;
    const unsigned int uy = q.y - t.y;
    const unsigned int ux = q.z - t.z;
    unsigned int oy = uy;
    unsigned int ox = ux;
    if (p.stride != 1u) {
        if (uy % p.stride != 0u || ux % p.stride != 0u) return nullptr;
        oy = uy / p.stride;
        ox = ux / p.stride;
    }
    if (oy >= p.oh || ox >= p.ow) return nullptr;
    return dout + q.x + (t.x * p.oh + oy) * p.ow + ox;
}

// Offset of column k of an A operand stored as [N, C, Q] with rows c (dout [N, C_out, OH*OW] for the weight
// gradient, weight [C_out, C_in, KH*KW] for the backward data): row m's element is at offset + m*q, or
// 0xffffffff past the matrix's K.
__device__ __forceinline__ unsigned int column_offset(const ConvParams& p, unsigned int k, unsigned int channels, unsigned int q) {
    if (k >= p.gemm_k) return 0xffffffffu;
    const unsigned int n = k / q;
    return n * channels * q + (k - n * q);
}

// Row m of an A operand at column offset a_col (column_offset), row stride q; null outside the matrix.
__device__ __forceinline__ const float* a_at(const ConvParams& p, const float* __restrict__ a, unsigned int a_col, unsigned int m, unsigned int q) {
    if (m >= p.gemm_m || a_col == 0xffffffffu) return nullptr;
    return a + a_col + m * q;
}

// The A element of the forward: weight rows (null outside the matrix).
__device__ __forceinline__ const float* a_forward(const ConvParams& p, const float* __restrict__ weight, unsigned int m, unsigned int k) {
    if (m >= p.gemm_m || k >= p.gemm_k) return nullptr;
    return weight + m * p.gemm_k + k;
}

// acc[i][c] += a_tile[kk, ty*4 + i] * b_tile[kk, tx*4 + c] over the 16-deep chunk (tx, ty = lid % 16, lid / 16).
__device__ __forceinline__ void multiply_tile(float (&acc)[4][4], const float* a_tile, const float* b_tile, unsigned int lid) {
    const unsigned int tx = lid % 16u;
    const unsigned int ty = lid / 16u;
#pragma unroll
    for (unsigned int kk = 0; kk < TILE_K; ++kk) {
        const unsigned int ab = kk * TILE_M + ty * 4u;
        const unsigned int bb = kk * TILE_N + tx * 4u;
        const float a[4] = {a_tile[ab], a_tile[ab + 1u], a_tile[ab + 2u], a_tile[ab + 3u]};
        const float b[4] = {b_tile[bb], b_tile[bb + 1u], b_tile[bb + 2u], b_tile[bb + 3u]};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[i][c] += a[i] * b[c];
        }
    }
}

// The three GEMMs, by kernel (the GEMM template argument of conv_gemm and store_tile).
#define FORWARD 0         // conv2d_forward
#define BACKWARD_WEIGHT 1 // conv2d_backward_weight
#define BACKWARD_DATA 2   // conv2d_backward_data

// C[m, j] into result: out [N, C_out, OH, OW] overwritten (forward), the partial tile of K range `split`
// [k_splits, C_out, C_in*KH*KW] overwritten (backward weight), dinp [N, C_in, H, W] accumulated (backward data).
template <int GEMM>
__device__ __forceinline__ void store_result(const ConvParams& p, float* __restrict__ result, unsigned int m, unsigned int j, unsigned int split, float v) {
    if (GEMM == FORWARD) {
        result[channel_offset(j, m, p.c_out, p.oh * p.ow)] = v;
    } else if (GEMM == BACKWARD_WEIGHT) {
        result[(split * p.gemm_m + m) * p.gemm_n + j] = v;
    } else {
        // pixel j = (n, a, b) of the phase
        const uint3 i = unravel(j, p.ph_h, p.ph_w);
        const unsigned int idx = ((i.x * p.c_in + m) * p.h + p.ph_y + p.stride * i.y) * p.w + p.ph_x + p.stride * i.z;
        result[idx] = result[idx] + v;
    }
}

// This thread's 4x4 micro-tile of the tile at (m0, j0), the elements inside C.
template <int GEMM>
__device__ __forceinline__ void store_tile(const ConvParams& p, float* __restrict__ result, const float (&acc)[4][4], unsigned int lid, unsigned int m0, unsigned int j0, unsigned int split) {
#pragma unroll
    for (unsigned int i = 0; i < 4u; ++i) {
        const unsigned int m = m0 + (lid / 16u) * 4u + i;
#pragma unroll
        for (unsigned int c = 0; c < 4u; ++c) {
            const unsigned int j = j0 + (lid % 16u) * 4u + c;
            if (m < p.gemm_m && j < p.gemm_n) store_result<GEMM>(p, result, m, j, split, acc[i][c]);
        }
    }
}

// What a block and thread keep over the K loop: the tile (m0, j0) = (blockIdx.y, blockIdx.x + blockIdx.z * gridDim.x)
// * 64 (the weight gradient: (blockIdx.y, blockIdx.x) * 64 and K range blockIdx.z), the K range [k_begin, k_end)
// (chunks of TILE_K from k_begin; k_chunk is a multiple of TILE_K, so a chunk never crosses into the next range;
// loads past gemm_k read 0), and this thread's fixed gather operand: its B column (forward: the window of output
// pixel j0 + lid % TILE_N; backward data: input pixel j0 + lid % TILE_N; e % TILE_N = lid % TILE_N for its four
// elements), or its four B rows (weight gradient: the taps j0 + e / TILE_K).
struct BlockTile {
    unsigned int m0;
    unsigned int j0;
    unsigned int split;
    unsigned int k_begin;
    unsigned int k_end;
    Window win;
    uint4 pix;
    uint4 taps[4];
};

template <int GEMM>
__device__ __forceinline__ BlockTile block_tile(const ConvParams& p, unsigned int lid) {
    BlockTile t;
    t.m0 = blockIdx.y * TILE_M;
    t.split = GEMM == BACKWARD_WEIGHT ? blockIdx.z : 0u;
    t.j0 = (GEMM == BACKWARD_WEIGHT ? blockIdx.x : blockIdx.z * gridDim.x + blockIdx.x) * TILE_N;
    t.k_begin = t.split * p.k_chunk;
    t.k_end = min(p.gemm_k, t.k_begin + p.k_chunk);
    t.win = GEMM == FORWARD ? window_of(p, t.j0 + lid % TILE_N) : Window{0u, 0, 0, 0u};
    t.pix = GEMM == BACKWARD_DATA ? pixel_of(p, t.j0 + lid % TILE_N) : uint4{0u, 0u, 0u, 0u};
#pragma unroll
    for (unsigned int i = 0; i < 4u; ++i) t.taps[i] = GEMM == BACKWARD_WEIGHT ? tap_of(p, t.j0 + (lid + i * WG) / TILE_K, p.c_in) : uint4{0u, 0u, 0u, 0u};
    return t;
}

// This thread's 4 elements of A (from a) and 4 of B (from b) of the chunk at k0: put(mm, kk, at_a, kb, nb, at_b)
// for each, with A's element (m0 + mm, k0 + kk) and B's (k0 + kb, j0 + nb) as addresses (null: zero). A is read
// along k in all three GEMMs (e = mm * TILE_K + kk); B along n in the forward and backward data (e = kb * TILE_N +
// nb), along k in the weight gradient.
template <int GEMM, typename Put>
__device__ __forceinline__ void gather_chunk(const ConvParams& p, const float* __restrict__ a, const float* __restrict__ b, const BlockTile& t, unsigned int k0, unsigned int lid, Put put) {
    // the weight gradient's pixel k of the chunk and the backward data's tap: the same for the thread's four
    // elements (e % TILE_K = lid % TILE_K)
    const unsigned int k = k0 + lid % TILE_K;
    const unsigned int khw = p.kh * p.kw;
    const unsigned int ohw = p.oh * p.ow;
    const Window k_win = GEMM == BACKWARD_WEIGHT ? window_of(p, k) : Window{0u, 0, 0, 0u};
    const unsigned int a_col = GEMM == BACKWARD_WEIGHT ? column_offset(p, k, p.c_out, ohw) : GEMM == BACKWARD_DATA ? phase_column_offset(p, k) : 0u;
#pragma unroll
    for (unsigned int i = 0; i < 4u; ++i) {
        const unsigned int e = lid + i * WG;
        const unsigned int mm = e / TILE_K;
        const unsigned int kk = e % TILE_K;
        if (GEMM == FORWARD) {
            // A = weight rows; B = im2col, read along output pixels
            put(mm, kk, a_forward(p, a, t.m0 + mm, k0 + kk), e / TILE_N, e % TILE_N, col_at(p, b, tap_of(p, k0 + e / TILE_N, p.c_in), t.win));
        } else if (GEMM == BACKWARD_WEIGHT) {
            // both operands read along the reduction (output pixels)
            put(mm, kk, a_at(p, a, a_col, t.m0 + mm, ohw), kk, mm, col_at(p, b, t.taps[i], k_win));
        } else {
            // A[ci, r = (co, ki, kj)] = weight[co, ci, ki, kj], read along the phase's taps; B = dout gathered, read
            // along the phase's input pixels
            put(mm, kk, a_at(p, a, a_col, t.m0 + mm, khw), e / TILE_N, e % TILE_N, dout_at(p, b, phase_tap_of(p, k0 + e / TILE_N), t.pix));
        }
    }
}

// The CUDA-core kernels: 4 elements of A and 4 of B staged per thread and chunk into k-major tiles, a 4x4
// micro-tile of FMAs per thread.
template <int GEMM>
__device__ __forceinline__ void conv_gemm(const ConvParams& p, const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ result) {
    __shared__ float a_tile[TILE_K * TILE_M];
    __shared__ float b_tile[TILE_K * TILE_N];
    const unsigned int lid = threadIdx.x;
    const BlockTile t = block_tile<GEMM>(p, lid);
    if (t.j0 >= p.gemm_n) return;
    float acc[4][4] = {};
    for (unsigned int k0 = t.k_begin; k0 < t.k_end; k0 += TILE_K) {
        gather_chunk<GEMM>(p, a, b, t, k0, lid, [&](unsigned int mm, unsigned int kk, const float* at_a, unsigned int kb, unsigned int nb, const float* at_b) {
            a_tile[kk * TILE_M + mm] = load_or_zero(at_a);
            b_tile[kb * TILE_N + nb] = load_or_zero(at_b);
        });
        __syncthreads();
        multiply_tile(acc, a_tile, b_tile, lid);
        __syncthreads();
    }
    store_tile<GEMM>(p, result, acc, lid, t.m0, t.j0, t.split);
}

// ---- the same GEMMs on tensor cores (sm_80+): conv2d_*_mma_tf32, _mma_tf32x3 and _mma_bf16 ----------------------
//
// The block tile, grid, split-K and gathers are the CUDA-core kernels' (one host-side plan for both); inside a block
// the chunk product is common.cuh's mma_chunk64 (tiles k-contiguous in MmaStage64, read by ldmatrix; each warp
// 16 x 32 of the tile; 4 mma.sync.m16n8k8 per 8-deep step at TF32, 12 at TF32X3, 4 m16n8k16 per 16-deep chunk at
// BF16; the arithmetic and the register and shared-memory budget are described there). The gathers go global -> shared by cp.async (4 bytes each,
// zero-filled where the gather has no element), two stages, so chunk c + 1 is in flight while chunk c multiplies.
// Why 4-byte copies and not 16: the gathered elements (im2col windows, strided dout taps) are not contiguous in
// general, and zero-fill at 4 bytes keeps the one gather for both kernel kinds.
// WGSL has no tensor-core instruction (the wgpu issue's cooperative matrices are the nearest), so these kernels
// have no shader mirror; the shaders' gathers return values where these return addresses (WGSL has no nullable
// pointer into a storage buffer).

// Issues this thread's copies of the chunk at k0 into st, as one cp.async group.
template <int GEMM>
__device__ __forceinline__ void copy_chunk(const ConvParams& p, const float* __restrict__ a, const float* __restrict__ b, const BlockTile& t, unsigned int k0, unsigned int lid, MmaStage64& st) {
    gather_chunk<GEMM>(p, a, b, t, k0, lid, [&](unsigned int mm, unsigned int kk, const float* at_a, unsigned int kb, unsigned int nb, const float* at_b) {
        // src_size 0 copies nothing and fills zeros; the source address must still be a valid one (the tensor's start)
        cp_async_4(&st.a[mma_slot(mm, kk)], at_a != nullptr ? at_a : a, at_a != nullptr ? 4u : 0u);
        cp_async_4(&st.b[mma_slot(nb, kb)], at_b != nullptr ? at_b : b, at_b != nullptr ? 4u : 0u);
    });
    cp_async_commit();
}

template <int GEMM, MmaArith ARITH>
__device__ __forceinline__ void conv_gemm_mma(const ConvParams& p, const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ result) {
    __shared__ __align__(16) MmaStage64 stages[2];
    const unsigned int lid = threadIdx.x;
    const BlockTile t = block_tile<GEMM>(p, lid);
    if (t.j0 >= p.gemm_n) return;
    float acc[4][4] = {};
    mma_pipeline64<ARITH>(acc, stages, t.k_begin, t.k_end, lid, [&](unsigned int k0, MmaStage64& st) { copy_chunk<GEMM>(p, a, b, t, k0, lid, st); });
#pragma unroll
    for (unsigned int nt = 0; nt < 4u; ++nt) {
#pragma unroll
        for (unsigned int i = 0; i < 4u; ++i) {
            const uint2 at = mma_acc_at64(lid, nt, i);
            const unsigned int m = t.m0 + at.x;
            const unsigned int j = t.j0 + at.y;
            if (m < p.gemm_m && j < p.gemm_n) store_result<GEMM>(p, result, m, j, t.split, acc[nt][i]);
        }
    }
}

// out [N, C_out, OH, OW] = weight [C_out, K] . col [K, N*OH*OW]
extern "C" __global__ void __launch_bounds__(256) conv2d_forward(ConvParams p, const float* __restrict__ inp, const float* __restrict__ weight, float* __restrict__ result) {
    conv_gemm<FORWARD>(p, weight, inp, result);
}

// partial [k_splits, C_out, K] = dout [C_out, N*OH*OW] . col^T [N*OH*OW, K], each over its K range of N*OH*OW
extern "C" __global__ void __launch_bounds__(256) conv2d_backward_weight(ConvParams p, const float* __restrict__ inp, const float* __restrict__ dout, float* __restrict__ partial) {
    conv_gemm<BACKWARD_WEIGHT>(p, dout, inp, partial);
}

// dweight [C_out, K] += the K ranges' partials summed in range order, one thread per element
extern "C" __global__ void __launch_bounds__(256) conv2d_backward_weight_reduce(ConvParams p, const float* __restrict__ partial, float* __restrict__ result) {
    const unsigned int e = flat_thread(WG);
    const unsigned int len = p.gemm_m * p.gemm_n;
    if (e >= len) return;
    float sum = 0.0f;
    for (unsigned int s = 0; s < p.k_splits; ++s) sum += partial[s * len + e];
    result[e] = result[e] + sum;
}

// dinp [N, C_in, H, W] += sum_(co, ki, kj) weight[co, ci, ki, kj] . dout[n, co, (iy + pad - ki) / stride, ...]
extern "C" __global__ void __launch_bounds__(256) conv2d_backward_data(ConvParams p, const float* __restrict__ weight, const float* __restrict__ dout, float* __restrict__ result) {
    conv_gemm<BACKWARD_DATA>(p, weight, dout, result);
}

// The tensor-core kernels (sm_80+; same arguments, grids and results as the CUDA-core ones above) at the arithmetic
// their suffix names: MatmulPrecision::Tf32, Tf32x3 and Bf16 (src/ops/precision.rs).
#define MOCO_CONV_MMA_KERNELS(SUFFIX, ARITH)                                                                         \
    extern "C" __global__ void __launch_bounds__(256) conv2d_forward_mma_##SUFFIX(ConvParams p, const float* __restrict__ inp, const float* __restrict__ weight, float* __restrict__ result) { \
        conv_gemm_mma<FORWARD, ARITH>(p, weight, inp, result);                                                      \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(256) conv2d_backward_weight_mma_##SUFFIX(ConvParams p, const float* __restrict__ inp, const float* __restrict__ dout, float* __restrict__ partial) { \
        conv_gemm_mma<BACKWARD_WEIGHT, ARITH>(p, dout, inp, partial);                                               \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(256) conv2d_backward_data_mma_##SUFFIX(ConvParams p, const float* __restrict__ weight, const float* __restrict__ dout, float* __restrict__ result) { \
        conv_gemm_mma<BACKWARD_DATA, ARITH>(p, weight, dout, result);                                               \
    }

MOCO_CONV_MMA_KERNELS(tf32, MMA_TF32)
MOCO_CONV_MMA_KERNELS(tf32x3, MMA_TF32X3)
MOCO_CONV_MMA_KERNELS(bf16, MMA_BF16)
