// Fused contrastive kernels on rows normalised by normalize.cu: positive logits, materialised negative logits, and
// the streaming InfoNCE forward+backward (partial over key splits, combine, reduce). MoCo v3's in-batch loss runs
// the same streaming kernels with the normalised keys as the key set and the diagonal skipped.
// Mirrors shaders/infonce.wgsl: same names, same tiles (infonce_partial_c128 for C <= 128: 8-key tiles staged once,
// q^ in registers; infonce_partial for larger C: TN x TK logit tiles staged in CC-channel chunks, 256 threads,
// ACC_MAX accumulators per thread), same partial-buffer layout. The tensor-core kernels (sm_80+) have no WGSL
// counterpart.
//
// Compiled after kernels/common.cuh (flat_block, block_sum) by NVRTC at run time, and by tests/cuda_compile.rs in CI:
// no #include of its own.
//
// The queue is [M, C] row-major (one key per row). WGSL picks the storage with `override QUEUE_DTYPE`; here each
// kernel that reads keys is instantiated once per storage type, with the type as a name suffix:
//   negative_logits_f32 / _f16 / _bf16, infonce_partial_f32 / _f16 / _bf16, infonce_partial_c128_f32 / _f16 / _bf16
// f32 keys are `const float*`, f16 and bf16 keys are `const unsigned short*` (one element per 16-bit word).
//
// Scalars: every kernel takes the WGSL uniform block `InfoNceParams` by value as its first argument (same fields, same
// order, 48 bytes); the host passes a #[repr(C)] copy of it (src/ops/infonce/params.rs).

#define TN 32u          // q rows per block
#define TK 32u          // keys per tile
#define CC 16u          // channels per staged chunk
#define WG 256u         // threads per block
#define ACC_GROUPS 8u   // threads sharing one row's accumulator (WG / TN)
#define ACC_MAX 32      // accumulators per thread: one slice covers ACC_GROUPS * ACC_MAX = 256 channels
#define MAX_SPLITS 256u
#define NEG (-1.0e30f)  // "minus infinity": masked logits and empty states
#define MASKED (-1.0e29f)

struct InfoNceParams {
    unsigned int n;              // rows of q
    unsigned int c;              // feature dim
    unsigned int m;              // keys streamed (K, or N for v3)
    unsigned int splits;         // key splits
    unsigned int keys_per_split; // multiple of TK
    unsigned int skip_diagonal;  // 1: key j == row i is not streamed (v3)
    unsigned int c_slice;        // channels per accumulator slice (grid z = slices)
    unsigned int rows;           // rows of positive logits
    float inv_t;                 // 1 / T
    float grad_scale;            // scale of dL/dq^: loss_scale / (T N)
    float loss_scale;            // 1 for InfoNCE, 2T for v3
    unsigned int _pad;
};

struct Stats {
    float loss;
    unsigned int top1;
    unsigned int top5;
    unsigned int _pad;
};

// The key loads (f16_bits_to_f32, bf16_bits_to_f32, KeyType, load_key) are in common.cuh, shared with health.cu.

// The tensor-core and cp.async wrappers (mma_*, ldmatrix_*, cp_async_*, tf32_round) are in common.cuh, shared with
// conv.cu.

// The key (DT storage) at row j, channel ch of keys [M, C], 0 for rows past j_end or channels past C.
template <int DT> __device__ __forceinline__ float key_or_zero(const InfoNceParams& P, const typename KeyType<DT>::T* __restrict__ keys, unsigned int j, unsigned int j_end, unsigned int ch) {
    return (j < j_end && ch < P.c) ? load_key<DT>(keys, j * P.c + ch) : 0.0f;
}

// q^[i, ch], 0 for rows past N or channels past C.
__device__ __forceinline__ float q_or_zero(const InfoNceParams& P, const float* __restrict__ q_hat, unsigned int i, unsigned int ch) {
    return (i < P.n && ch < P.c) ? q_hat[i * P.c + ch] : 0.0f;
}

// acc[u] += q_tile[r, :] . k_tile[j + u, :] over one staged CC-channel chunk, u = 0..3 (both tiles [rows][CC + 1]),
// channels in order.
__device__ __forceinline__ void tile_dot4(const float* q_tile, const float* k_tile, unsigned int r, unsigned int j, float (&acc)[4]) {
#pragma unroll
    for (unsigned int cc = 0; cc < CC; ++cc) {
        const float qv = q_tile[r * (CC + 1u) + cc];
#pragma unroll
        for (unsigned int u = 0; u < 4u; ++u) acc[u] += qv * k_tile[(j + u) * (CC + 1u) + cc];
    }
}

// ---- positive_logits -----------------------------------------------------------------------------------------

// s_pos[i] = (q^_i . k^_i) * inv_t; one thread per row.
extern "C" __global__ void __launch_bounds__(256) positive_logits(InfoNceParams P, const float* __restrict__ q_hat, const float* __restrict__ k_hat, float* __restrict__ s_pos) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= P.n) return;
    const float* qr = q_hat + (size_t)i * P.c;
    const float* kr = k_hat + (size_t)i * P.c;
    float s = 0.0f;
    for (unsigned int ch = 0; ch < P.c; ++ch) s += qr[ch] * kr[ch];
    s_pos[i] = s * P.inv_t;
}

// ---- negative_logits -----------------------------------------------------------------------------------------

// l_neg[i, j] = q^_i . key_j: tiles of 16 rows x 64 keys, 4 outputs per thread. Grid (ceil(M/64), ceil(N/16)).
template <int DT>
__device__ __forceinline__ void negative_logits_impl(const InfoNceParams& P, const float* __restrict__ q_hat, const typename KeyType<DT>::T* __restrict__ keys, float* __restrict__ l_neg) {
    __shared__ float q_tile[16 * (CC + 1u)];
    __shared__ float k_tile[64 * (CC + 1u)];
    const unsigned int tid = threadIdx.x;
    const unsigned int j0 = blockIdx.x * 64u;
    const unsigned int i0 = blockIdx.y * 16u;
    const unsigned int r = tid / 16u;         // row in tile
    const unsigned int jc = (tid % 16u) * 4u; // first of 4 keys
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (unsigned int c0 = 0; c0 < P.c; c0 += CC) {
        q_tile[(tid / CC) * (CC + 1u) + tid % CC] = q_or_zero(P, q_hat, i0 + tid / CC, c0 + tid % CC);
        for (unsigned int e = tid; e < 64u * CC; e += WG) k_tile[(e / CC) * (CC + 1u) + e % CC] = key_or_zero<DT>(P, keys, j0 + e / CC, P.m, c0 + e % CC);
        __syncthreads();
        tile_dot4(q_tile, k_tile, r, jc, acc);
        __syncthreads();
    }
    const unsigned int gi = i0 + r;
    if (gi < P.n) {
#pragma unroll
        for (unsigned int u = 0; u < 4u; ++u) {
            const unsigned int gj = j0 + jc + u;
            if (gj < P.m) l_neg[(size_t)gi * P.m + gj] = acc[u];
        }
    }
}

// ---- infonce_partial -----------------------------------------------------------------------------------------

// One block: rows [blockIdx.x*TN, +TN) against keys of split blockIdx.y, accumulator slice blockIdx.z.
// Streams TK keys at a time: logits tile (staged in CC-channel chunks), online softmax per row,
// then acc[row, ch] = acc * scale + sum_j p_j key_j[ch].
// partial: [splits, N, 3] states (m, l, bitcast rank) then [splits, N, C] acc.
template <int DT>
__device__ __forceinline__ void infonce_partial_impl(const InfoNceParams& P, const float* __restrict__ q_hat, const typename KeyType<DT>::T* __restrict__ keys, const float* __restrict__ pos_logits, float* __restrict__ partial) {
    __shared__ float q_tile[TN * (CC + 1u)];
    __shared__ float k_tile[TK * (CC + 1u)];
    __shared__ float p_tile[TN * (TK + 1u)];
    __shared__ float row_scale[TN];
    const unsigned int tid = threadIdx.x;
    const unsigned int row0 = blockIdx.x * TN;
    const unsigned int split = blockIdx.y;
    const unsigned int c0 = blockIdx.z * P.c_slice;
    const unsigned int c_end = min(c0 + P.c_slice, P.c);
    const unsigned int j_begin = split * P.keys_per_split;
    const unsigned int j_end = min(j_begin + P.keys_per_split, P.m);
    const unsigned int sr = tid % TN;        // logit tile: row
    const unsigned int sj = (tid / TN) * 4u; // logit tile: first of 4 keys
    const unsigned int ar = tid % TN;        // accumulator: row
    const unsigned int ag = tid / TN;        // accumulator: channel group, channels c0 + ag + ACC_GROUPS*t
    unsigned int n_acc = 0u;
    if (c0 + ag < c_end) n_acc = (c_end - c0 - ag + ACC_GROUPS - 1u) / ACC_GROUPS;
    float acc[ACC_MAX];
#pragma unroll
    for (int t = 0; t < ACC_MAX; ++t) acc[t] = 0.0f;
    float m_run = NEG;
    float l_run = 0.0f;
    unsigned int rank_run = 0u;
    const unsigned int my_row = min(row0 + sr, P.n - 1u);
    const float spos = pos_logits[my_row];
    for (unsigned int jt = j_begin; jt < j_end; jt += TK) {
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (unsigned int cc0 = 0; cc0 < P.c; cc0 += CC) {
            for (unsigned int e = tid; e < TN * CC; e += WG) {
                q_tile[(e / CC) * (CC + 1u) + e % CC] = q_or_zero(P, q_hat, row0 + e / CC, cc0 + e % CC);
                k_tile[(e / CC) * (CC + 1u) + e % CC] = key_or_zero<DT>(P, keys, jt + e / CC, j_end, cc0 + e % CC);
            }
            __syncthreads();
            tile_dot4(q_tile, k_tile, sr, sj, s);
            __syncthreads();
        }
#pragma unroll
        for (unsigned int u = 0; u < 4u; ++u) {
            const unsigned int j = jt + sj + u;
            float v = s[u] * P.inv_t;
            if (j >= j_end || (P.skip_diagonal == 1u && j == row0 + sr)) v = NEG;
            p_tile[sr * (TK + 1u) + sj + u] = v;
        }
        __syncthreads();
        if (tid < TN) {
            float bmax = NEG;
            for (unsigned int j = 0; j < TK; ++j) bmax = fmaxf(bmax, p_tile[tid * (TK + 1u) + j]);
            const float m_new = fmaxf(m_run, bmax);
            float sum = 0.0f;
            for (unsigned int j = 0; j < TK; ++j) {
                const float v = p_tile[tid * (TK + 1u) + j];
                float e = 0.0f;
                if (v > MASKED) {
                    e = expf(v - m_new);
                    rank_run += (v > spos) ? 1u : 0u;
                }
                p_tile[tid * (TK + 1u) + j] = e;
                sum += e;
            }
            float scale = 1.0f;
            if (m_new > MASKED) {
                scale = (m_run <= MASKED) ? 0.0f : expf(m_run - m_new);
                m_run = m_new;
            }
            l_run = l_run * scale + sum;
            row_scale[tid] = scale;
        }
        __syncthreads();
        const float sc = row_scale[ar];
        const unsigned int j_count = min(TK, j_end - jt);
#pragma unroll
        for (int t = 0; t < ACC_MAX; ++t) {
            if ((unsigned int)t < n_acc) acc[t] *= sc;
        }
        for (unsigned int j = 0; j < j_count; ++j) {
            const float p = p_tile[ar * (TK + 1u) + j];
            const unsigned int base = (jt + j) * P.c + c0 + ag;
#pragma unroll
            for (int t = 0; t < ACC_MAX; ++t) {
                if ((unsigned int)t < n_acc) acc[t] += p * load_key<DT>(keys, base + ACC_GROUPS * (unsigned int)t);
            }
        }
        __syncthreads();
    }
    const unsigned int i = row0 + ar;
    if (i < P.n) {
        const size_t acc_base = (size_t)P.splits * P.n * 3u + ((size_t)split * P.n + i) * P.c + c0 + ag;
#pragma unroll
        for (int t = 0; t < ACC_MAX; ++t) {
            if ((unsigned int)t < n_acc) partial[acc_base + ACC_GROUPS * (unsigned int)t] = acc[t];
        }
    }
    if (tid < TN && blockIdx.z == 0u && row0 + tid < P.n) {
        const size_t st = ((size_t)split * P.n + row0 + tid) * 3u;
        partial[st] = m_run;
        partial[st + 1u] = l_run;
        partial[st + 2u] = __uint_as_float(rank_run);
    }
}

// ---- infonce_partial_c128: the streaming pass for C <= 128, each key read from memory once ---------------------
//
// infonce_partial's job (the same plan, grid, masks and partial layout) for C <= 128, where a row's whole feature
// fits 8 threads' registers. Mirrors shaders/infonce.wgsl's infonce_partial_c128 (same names, tiles and order of
// sums):
//   - 256 threads = TN = 32 rows x 8 lanes, a row's lanes adjacent (r = tid / 8, g = tid % 8). Lane g holds its
//     row's q^ at channels g + 8u (u < RU = 16) in registers for the whole key stream, and the accumulators of the
//     same channels.
//   - A tile of RK = 8 keys x 128 channels is staged in shared memory once (key_res, 4 KB) and serves both
//     products: each lane's partial dot products with the 8 keys over its 16 channels, summed over the row's lanes
//     through shared memory (row_part, rows padded to 9: the lanes' reads of one key's partials hit distinct banks;
//     9 KB), then acc += p K from the same tile.
//   - After the sum, lane g holds the logit of (row, key g); the online softmax runs on every thread: each lane reads
//     its row's 8 logits (row_logits, 1 KB) and takes the max (the row's 8 lanes compute the same value), takes the
//     weight of its own key once (row_weights, 1 KB), then sums the row's 8 weights, and counts its own key against
//     the positive. 15 KB of shared memory (WGSL's budget is 16 KB).
// The row's 8 lanes sit in one warp, so __shfl_xor_sync could sum the partials without row_part; WGSL needs the
// SUBGROUP feature for that, which not every adapter has, so both use shared memory (one algorithm, one order of
// sums).
#define RK 8u    // keys per tile
#define RC 128u  // channels of the staged tile (C <= RC)
#define RU 16u   // channels per lane (RC / 8)

template <int DT>
__device__ __forceinline__ void infonce_partial_c128_impl(const InfoNceParams& P, const float* __restrict__ q_hat, const typename KeyType<DT>::T* __restrict__ keys, const float* __restrict__ pos_logits, float* __restrict__ partial) {
    __shared__ float key_res[RK * RC];       // [RK][RC]: the key tile
    __shared__ float row_part[TN * RK * 9u]; // [TN][RK][9]: partial logits per lane, then the lanes' ranks
    __shared__ float row_logits[TN * RK];    // [TN][RK]
    __shared__ float row_weights[TN * RK];   // [TN][RK]: exp(logit - max)
    const unsigned int tid = threadIdx.x, r = tid / 8u, g = tid % 8u;
    const unsigned int row = blockIdx.x * TN + r, split = blockIdx.y;
    const unsigned int j_begin = split * P.keys_per_split, j_end = min(j_begin + P.keys_per_split, P.m);
    float qr[RU], acc[RU]; // q^[row, g + 8u]; sum_j p_j key_j[g + 8u]
#pragma unroll
    for (unsigned int u = 0; u < RU; ++u) {
        qr[u] = q_or_zero(P, q_hat, row, g + 8u * u);
        acc[u] = 0.0f;
    }
    const float spos = pos_logits[min(row, P.n - 1u)];
    float m_run = NEG, l_run = 0.0f;
    unsigned int rank_run = 0u;
    for (unsigned int jt = j_begin; jt < j_end; jt += RK) {
        for (unsigned int e = tid; e < RK * RC; e += WG) key_res[e] = key_or_zero<DT>(P, keys, jt + e / RC, j_end, e % RC);
        __syncthreads();
#pragma unroll
        for (unsigned int j = 0; j < RK; ++j) {
            float d = 0.0f;
#pragma unroll
            for (unsigned int u = 0; u < RU; ++u) d += qr[u] * key_res[j * RC + g + 8u * u];
            row_part[(r * RK + j) * 9u + g] = d;
        }
        __syncthreads();
        // lane g: the logit of key jt + g, its lanes' partials summed in lane order
        float v = 0.0f;
#pragma unroll
        for (unsigned int l = 0; l < 8u; ++l) v += row_part[(r * RK + g) * 9u + l];
        v *= P.inv_t;
        const unsigned int j = jt + g;
        if (j >= j_end || (P.skip_diagonal == 1u && j == row)) v = NEG;
        if (v > MASKED && v > spos) rank_run += 1u;
        row_logits[r * RK + g] = v;
        __syncthreads();
        // every lane: the row's max over the tile (the same value on the row's 8 lanes) and the rescaling
        float tmax = NEG;
#pragma unroll
        for (unsigned int l = 0; l < RK; ++l) tmax = fmaxf(tmax, row_logits[r * RK + l]);
        const float m_new = fmaxf(m_run, tmax);
        float scale = 1.0f;
        if (m_new > MASKED) {
            scale = (m_run <= MASKED) ? 0.0f : expf(m_run - m_new);
            m_run = m_new;
        }
        // lane g: the weight of its own key, once
        row_weights[r * RK + g] = v > MASKED ? expf(v - m_run) : 0.0f;
        __syncthreads();
        l_run *= scale;
#pragma unroll
        for (unsigned int u = 0; u < RU; ++u) acc[u] *= scale;
#pragma unroll
        for (unsigned int l = 0; l < RK; ++l) {
            const float p = row_weights[r * RK + l];
            l_run += p;
#pragma unroll
            for (unsigned int u = 0; u < RU; ++u) acc[u] += p * key_res[l * RC + g + 8u * u];
        }
        __syncthreads(); // the tile, partials, logits and weights are read before the next tile overwrites them
    }
    // each lane counted its own keys: the row's rank is the sum over its 8 lanes
    row_part[r * 9u + g] = __uint_as_float(rank_run);
    __syncthreads();
    if (row < P.n) {
        if (g == 0u) {
            unsigned int rank_row = 0u;
#pragma unroll
            for (unsigned int l = 0; l < 8u; ++l) rank_row += __float_as_uint(row_part[r * 9u + l]);
            const size_t st = ((size_t)split * P.n + row) * 3u;
            partial[st] = m_run;
            partial[st + 1u] = l_run;
            partial[st + 2u] = __uint_as_float(rank_row);
        }
        const size_t acc_base = (size_t)P.splits * P.n * 3u + ((size_t)split * P.n + row) * P.c;
#pragma unroll
        for (unsigned int u = 0; u < RU; ++u) {
            const unsigned int ch = g + 8u * u;
            if (ch < P.c) partial[acc_base + ch] = acc[u];
        }
    }
}

// Instantiations per queue storage type (the WGSL QUEUE_DTYPE override).
#define MOCO_KEYED_KERNELS(SUFFIX, DT, KT)                                                                           \
    extern "C" __global__ void __launch_bounds__(256) negative_logits_##SUFFIX(                                      \
        InfoNceParams P, const float* __restrict__ q_hat, const KT* __restrict__ keys, float* __restrict__ l_neg) {        \
        negative_logits_impl<DT>(P, q_hat, keys, l_neg);                                                             \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(256) infonce_partial_##SUFFIX(                                      \
        InfoNceParams P, const float* __restrict__ q_hat, const KT* __restrict__ keys, const float* __restrict__ pos_logits, \
        float* __restrict__ partial) {                                                                               \
        infonce_partial_impl<DT>(P, q_hat, keys, pos_logits, partial);                                               \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(256, 2) infonce_partial_c128_##SUFFIX(                              \
        InfoNceParams P, const float* __restrict__ q_hat, const KT* __restrict__ keys, const float* __restrict__ pos_logits, \
        float* __restrict__ partial) {                                                                               \
        infonce_partial_c128_impl<DT>(P, q_hat, keys, pos_logits, partial);                                          \
    }

MOCO_KEYED_KERNELS(f32, 0, float)
MOCO_KEYED_KERNELS(f16, 1, unsigned short)
MOCO_KEYED_KERNELS(bf16, 2, unsigned short)

// ---- negative_logits on tensor cores (sm_80+, 16-bit queues) ---------------------------------------------------
//
// l_neg[i, j] = q^_i . key_j with 16-bit operands and f32 accumulation: q^ rounded to the queue's format by
// round_rows_to_16 (the 16-bit copy `q16: [N, C]`), the keys as stored. The error against the exact cosine is the
// rounding of q^ (|q^_i| = |key_j| = 1: at most 2^-8 for bf16, 2^-11 for f16) plus the f32 sum's.
//
// Tiles: a block of MMA_WARPS = 4 warps computes 64 rows x 64 keys; warp w owns rows 16 w .. 16 w + 15 and all 64
// keys: 8 m16n8 accumulator tiles, 32 f32 registers. The C axis goes in chunks of MMA_KC = 32 channels (two k16
// steps): the chunk's q rows and key rows (64 + 64 rows of 64 bytes) are copied to shared memory by cp.async, two
// stages deep (16 KB: the next chunk lands while this one is multiplied), and read by ldmatrix. A row's four
// 16-byte pieces are stored at piece ^ ((row >> 1) & 3), so the 8 rows one ldmatrix phase reads hit 32 distinct
// banks. Rows past N or K and channels past C are zero-filled by the copies (the host requires C % 8 == 0, so a
// 16-byte piece is either all inside a row or all past its end). Registers: 32 accumulators, 4 + 8 operand words,
// addresses: well under the 255 cap; two blocks of 128 threads per 32 KB of shared memory.
//
// The WGSL has no counterpart (no tensor-core instructions in core WGSL); on every other device the f32 kernel above
// runs, which the bound holds a fortiori.
#define MMA_WARPS 4u
#define MMA_BM 64u    // rows per block
#define MMA_BN 64u    // keys per block
#define MMA_KC 32u    // channels per staged chunk
#define MMA_ROW 32u   // 16-bit elements per staged row (= MMA_KC)

// q16[i, c] = q^[i, c] rounded to nearest even in the 16-bit format DT (1 f16, 2 bf16; common.cuh's rounding).
template <int DT> __device__ __forceinline__ unsigned short round_to_16(float x) {
    return (unsigned short)(DT == 1 ? f32_to_f16_bits(x) : f32_to_bf16_bits(x));
}

// The shared-memory offset (in 16-bit elements) of piece `piece` (8 elements, 16 bytes) of row `row` of a staged
// tile whose rows hold PIECES pieces (4: 64-byte rows, 16: 256-byte rows). The piece index is XORed with the row's
// position among the 8 rows one ldmatrix phase reads, so those 8 rows hit 8 distinct 16-byte bank groups: with
// 64-byte rows two rows share a 128-byte bank window, so rows 2x, 2x + 1 are told apart by the window and the pairs
// by (row / 2) & 3; with 256-byte rows every row starts at bank 0, so row & 7.
template <unsigned int PIECES> __device__ __forceinline__ unsigned int swizzled(unsigned int row, unsigned int piece) {
    const unsigned int x = PIECES >= 8u ? (row & 7u) : ((row / (8u / PIECES)) & (PIECES - 1u));
    return row * PIECES * 8u + ((piece ^ x) << 3);
}

// Copies channels c0 .. c0 + 8 PIECES - 1 of rows r0 .. r0 + 63 of `src: [rows, C]` (16-bit) into `tile: [64][8
// PIECES]` (swizzled), zero-filling rows >= rows and channels >= C: 64 PIECES pieces of 16 bytes, PIECES / 2 per
// thread.
template <unsigned int PIECES> __device__ __forceinline__ void stage_tile(unsigned short* tile, const unsigned short* __restrict__ src, unsigned int r0, unsigned int rows, unsigned int c, unsigned int c0) {
#pragma unroll
    for (unsigned int u = 0; u < PIECES / 2u; ++u) {
        const unsigned int e = threadIdx.x + u * (MMA_WARPS * 32u);
        const unsigned int row = e / PIECES, piece = e % PIECES;
        const unsigned int gr = r0 + row, gc = c0 + piece * 8u;
        const bool inside = gr < rows && gc < c;
        // a piece past the end copies 0 bytes (zero fill) from a valid address: the start of src
        cp_async_16(tile + swizzled<PIECES>(row, piece), inside ? src + (size_t)gr * c + gc : src, inside ? 16u : 0u);
    }
}

template <int DT> __device__ __forceinline__ void mma_16816(float (&acc)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
    if (DT == 2) mma_bf16_16816(acc, a, b);
    else mma_f16_16816(acc, a, b);
}

// The A fragment (16 x 16) of the warp's rows 16 warp .. 16 warp + 15, channels 16 ks .. 16 ks + 15 of a staged
// tile: matrix i = lane / 8 is rows 8 (i & 1) + lane % 8, channels 8 (i >> 1).
template <unsigned int PIECES> __device__ __forceinline__ void load_a(unsigned int (&a)[4], const unsigned short* tile, unsigned int warp, unsigned int ks, unsigned int lane) {
    ldmatrix_x4(a, tile + swizzled<PIECES>(warp * 16u + 8u * ((lane >> 3) & 1u) + (lane & 7u), 2u * ks + (lane >> 4)));
}

// s[nt] += A . keys^T for the 8 key tiles of a staged [64 keys][8 PIECES] tile, channels 16 ks .. 16 ks + 15. B for
// key tiles 2 np and 2 np + 1: matrix i is keys 8 (2 np + (i >> 1)) + lane % 8, channels 8 (i & 1).
template <int DT, unsigned int PIECES> __device__ __forceinline__ void qk_step(float (&s)[8][4], const unsigned int (&a)[4], const unsigned short* kt, unsigned int ks, unsigned int lane) {
#pragma unroll
    for (unsigned int np = 0; np < 4u; ++np) {
        unsigned int b[4];
        ldmatrix_x4(b, kt + swizzled<PIECES>(16u * np + 8u * (lane >> 4) + (lane & 7u), 2u * ks + ((lane >> 3) & 1u)));
        const unsigned int b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
        mma_16816<DT>(s[2u * np], a, b0);
        mma_16816<DT>(s[2u * np + 1u], a, b1);
    }
}

template <int DT>
__device__ __forceinline__ void negative_logits_mma_impl(const InfoNceParams& P, const unsigned short* __restrict__ q16, const unsigned short* __restrict__ keys, float* __restrict__ l_neg) {
    __shared__ __align__(16) unsigned short q_tile[2][MMA_BM * MMA_ROW];
    __shared__ __align__(16) unsigned short k_tile[2][MMA_BN * MMA_ROW];
    const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const unsigned int i0 = blockIdx.y * MMA_BM, j0 = blockIdx.x * MMA_BN;
    float acc[8][4];
#pragma unroll
    for (unsigned int nt = 0; nt < 8u; ++nt) {
#pragma unroll
        for (unsigned int e = 0; e < 4u; ++e) acc[nt][e] = 0.0f;
    }
    const unsigned int chunks = (P.c + MMA_KC - 1u) / MMA_KC;
    stage_tile<MMA_ROW / 8u>(q_tile[0], q16, i0, P.n, P.c, 0u);
    stage_tile<MMA_ROW / 8u>(k_tile[0], keys, j0, P.m, P.c, 0u);
    cp_async_commit();
    for (unsigned int ch = 0; ch < chunks; ++ch) {
        const unsigned int buf = ch & 1u;
        if (ch + 1u < chunks) { // the next chunk into the other stage, then wait for this one only
            stage_tile<MMA_ROW / 8u>(q_tile[buf ^ 1u], q16, i0, P.n, P.c, (ch + 1u) * MMA_KC);
            stage_tile<MMA_ROW / 8u>(k_tile[buf ^ 1u], keys, j0, P.m, P.c, (ch + 1u) * MMA_KC);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); // every thread's pieces of this stage have landed
#pragma unroll
        for (unsigned int ks = 0; ks < 2u; ++ks) {
            unsigned int a[4];
            load_a<MMA_ROW / 8u>(a, q_tile[buf], warp, ks, lane);
            qk_step<DT, MMA_ROW / 8u>(acc, a, k_tile[buf], ks, lane);
        }
        __syncthreads(); // this stage is read before the next iteration refills it
    }
    const unsigned int g = lane >> 2, t = lane & 3u;
#pragma unroll
    for (unsigned int nt = 0; nt < 8u; ++nt) {
#pragma unroll
        for (unsigned int e = 0; e < 4u; ++e) {
            const unsigned int gi = i0 + warp * 16u + g + 8u * (e >> 1), gj = j0 + nt * 8u + 2u * t + (e & 1u);
            if (gi < P.n && gj < P.m) l_neg[(size_t)gi * P.m + gj] = acc[nt][e];
        }
    }
}

// ---- infonce_partial on tensor cores (sm_80+, 16-bit queues, C <= 128) ---------------------------------------
//
// infonce_partial's job (the same [splits, N, 3] states and [splits, N, C] accumulators, so infonce_combine and
// infonce_reduce follow unchanged) as a flash-attention forward with the keys as both K and V. A block: 64 rows
// (4 warps x 16) against the keys of one split (grid y), in tiles of 64 keys.
//   - q16 (q^ rounded to the queue's format, round_rows_to_*) is staged once and held in registers as mma A
//     fragments for the whole key stream: C / 16 k-steps x 4 words (32 registers at C = 128).
//   - Each key tile [64 keys][C] is copied by cp.async into swizzled shared memory (rows of MMA_CMAX = 128 channels,
//     piece ^ (row & 7)), two stages deep: 2 x 16 KB.
//   - S = q^ K^T on the tensor cores (8 m16n8 tiles per warp), times 1/T, masked past the split's end and on the
//     diagonal (v3); the rank counts and the online softmax on every lane: each lane holds 16 logits of row g and
//     16 of row g + 8; the row max goes over the 4 lanes of the row (two xor shuffles); the row sums and ranks stay
//     per lane until the end.
//   - acc += P K on the tensor cores: the S accumulators are the P operand's A fragments (rounded to the 16-bit
//     format), the key tile is the B operand through ldmatrix.trans (keys along k, channels along n): C / 8 tiles of
//     m16n8, 64 registers at C = 128.
// Error (Precision::Half): the logits as in negative_logits_mma (u |key| per cosine, times 1/T) and P rounded to
// 16 bits (relative u per weight), both far inside the InfoNCE tolerance the precision states.
#define MMA_CMAX 128u // channels a block holds (the host takes this path for C <= 128, C % 8 == 0)

#define WIDE (MMA_CMAX / 8u) // pieces per staged row of the wide tiles


// Two f32 as the low and high 16-bit halves of one register, in the format DT, rounded to nearest even: one
// cvt.rn.{bf16x2,f16x2}.f32 on sm_80+ (the portable rounding of common.cuh is branchy: inlined 32 times per key tile
// it spilled registers), common.cuh's rounding elsewhere and in the CUDA emulation (the same results).
template <int DT> __device__ __forceinline__ unsigned int pack_16(float lo, float hi) {
#if defined(MOCO_CUDA_EMU) || __CUDA_ARCH__ < 800
    return (unsigned int)round_to_16<DT>(lo) | ((unsigned int)round_to_16<DT>(hi) << 16);
#else
    unsigned int r;
    if (DT == 2) asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

// A warp's running state over the key stream in the tensor-core flash pass: its lane's two rows (rows[0] = 16 warp
// + g, rows[1] = + 8 of the block's), their positive logits, running max, sum and rank, and the P K accumulators
// (ACC m16n8 tiles: acc[ct][e] is row rows[e >> 1], channel 8 ct + 2 t + (e & 1)).
template <unsigned int ACC>
struct FlashRows {
    unsigned int rows[2];
    float spos[2], m_run[2], l_run[2];
    unsigned int rank_run[2];
    float acc[ACC][4];

    __device__ __forceinline__ FlashRows(const InfoNceParams& P, const float* __restrict__ pos_logits, unsigned int row0, unsigned int warp, unsigned int g) {
#pragma unroll
        for (unsigned int r = 0; r < 2u; ++r) {
            rows[r] = row0 + warp * 16u + g + 8u * r;
            spos[r] = pos_logits[min(rows[r], P.n - 1u)];
            m_run[r] = NEG;
            l_run[r] = 0.0f;
            rank_run[r] = 0u;
        }
#pragma unroll
        for (unsigned int ct = 0; ct < ACC; ++ct) {
#pragma unroll
            for (unsigned int e = 0; e < 4u; ++e) acc[ct][e] = 0.0f;
        }
    }

    // The online softmax of one key tile on the tensor cores' S accumulators (NT m16n8 tiles: s[nt][e] is row
    // rows[e >> 1], key jt + 8 nt + 2 t + (e & 1)): the logits scaled by 1/T and masked past the split's end and on
    // the diagonal (v3), the keys above the positive counted, the running max and sum updated (the row's max over
    // its 4 lanes by two xor shuffles; the sums and ranks stay per lane until store), the accumulators rescaled, and
    // the weights p = exp(s - m) left in s (0 where masked).
    template <unsigned int NT>
    __device__ __forceinline__ void softmax_tile(const InfoNceParams& P, float (&s)[NT][4], unsigned int jt, unsigned int j_end, unsigned int t) {
        float tmax[2] = {NEG, NEG};
#pragma unroll
        for (unsigned int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (unsigned int e = 0; e < 4u; ++e) {
                const unsigned int j = jt + nt * 8u + 2u * t + (e & 1u), r = e >> 1;
                float v = s[nt][e] * P.inv_t;
                if (j >= j_end || (P.skip_diagonal == 1u && j == rows[r])) v = NEG;
                s[nt][e] = v;
                tmax[r] = fmaxf(tmax[r], v);
            }
        }
        float scale[2];
#pragma unroll
        for (unsigned int r = 0; r < 2u; ++r) {
            tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 1));
            tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 2));
            const float m_new = fmaxf(m_run[r], tmax[r]);
            scale[r] = 1.0f;
            if (m_new > MASKED) {
                scale[r] = (m_run[r] <= MASKED) ? 0.0f : expf(m_run[r] - m_new);
                m_run[r] = m_new;
            }
            l_run[r] *= scale[r];
        }
#pragma unroll
        for (unsigned int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (unsigned int e = 0; e < 4u; ++e) {
                const unsigned int r = e >> 1;
                const float v = s[nt][e];
                float p = 0.0f;
                if (v > MASKED) {
                    p = expf(v - m_run[r]);
                    rank_run[r] += (v > spos[r]) ? 1u : 0u;
                }
                s[nt][e] = p;
                l_run[r] += p;
            }
        }
#pragma unroll
        for (unsigned int ct = 0; ct < ACC; ++ct) {
#pragma unroll
            for (unsigned int e = 0; e < 4u; ++e) acc[ct][e] *= scale[e >> 1];
        }
    }

    // The block's results for its split: each row's sum and rank over its 4 lanes, the states (max, sum, rank)
    // written by lane t = 0, then the accumulators.
    __device__ __forceinline__ void store(const InfoNceParams& P, float* __restrict__ partial, unsigned int split, unsigned int t) {

#pragma unroll
        for (unsigned int r = 0; r < 2u; ++r) {
            l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
            l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
            rank_run[r] += __shfl_xor_sync(0xffffffffu, rank_run[r], 1);
            rank_run[r] += __shfl_xor_sync(0xffffffffu, rank_run[r], 2);
            if (t == 0u && rows[r] < P.n) {
                const size_t st = ((size_t)split * P.n + rows[r]) * 3u;
                partial[st] = m_run[r];
                partial[st + 1u] = l_run[r];
                partial[st + 2u] = __uint_as_float(rank_run[r]);
            }
        }
        const size_t acc_base = (size_t)P.splits * P.n * 3u;
#pragma unroll
        for (unsigned int ct = 0; ct < ACC; ++ct) {
#pragma unroll
            for (unsigned int e = 0; e < 4u; ++e) {
                const unsigned int i = rows[e >> 1], ch = ct * 8u + 2u * t + (e & 1u);
                if (i < P.n && ch < P.c) partial[acc_base + ((size_t)split * P.n + i) * P.c + ch] = acc[ct][e];
            }
        }
    }
};

template <int DT>
__device__ __forceinline__ void infonce_partial_mma_impl(const InfoNceParams& P, const unsigned short* __restrict__ q16, const unsigned short* __restrict__ keys, const float* __restrict__ pos_logits, float* __restrict__ partial) {
    __shared__ __align__(16) unsigned short k_tile[2][MMA_BN * MMA_CMAX];
    const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3u;
    const unsigned int row0 = blockIdx.x * MMA_BM, split = blockIdx.y;
    const unsigned int j_begin = split * P.keys_per_split, j_end = min(j_begin + P.keys_per_split, P.m);
    const unsigned int ksteps = (P.c + 15u) / 16u; // C / 16 rounded up (zero-filled past C)
    // q^ rows of this block into stage 1 (free until the second key tile), then into registers
    stage_tile<WIDE>(k_tile[1], q16, row0, P.n, P.c, 0u);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    unsigned int qa[MMA_CMAX / 16u][4];
#pragma unroll
    for (unsigned int ks = 0; ks < MMA_CMAX / 16u; ++ks) {
        if (ks < ksteps) load_a<WIDE>(qa[ks], k_tile[1], warp, ks, lane);
    }
    __syncthreads(); // stage 1 is free again
    FlashRows<MMA_CMAX / 8u> st(P, pos_logits, row0, warp, g);
    float (&acc)[MMA_CMAX / 8u][4] = st.acc;
    const unsigned int tiles = (j_end > j_begin) ? (j_end - j_begin + MMA_BN - 1u) / MMA_BN : 0u;
    if (tiles > 0u) {
        stage_tile<WIDE>(k_tile[0], keys, j_begin, j_end, P.c, 0u);
        cp_async_commit();
    }
    for (unsigned int tile = 0; tile < tiles; ++tile) {
        const unsigned int buf = tile & 1u, jt = j_begin + tile * MMA_BN;
        if (tile + 1u < tiles) {
            stage_tile<WIDE>(k_tile[buf ^ 1u], keys, jt + MMA_BN, j_end, P.c, 0u);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const unsigned short* kt = k_tile[buf];
        // S = q^ K^T: s[nt][e] is row rows[e >> 1], key jt + 8 nt + 2 t + (e & 1)
        float s[8][4];
#pragma unroll
        for (unsigned int nt = 0; nt < 8u; ++nt) {
#pragma unroll
            for (unsigned int e = 0; e < 4u; ++e) s[nt][e] = 0.0f;
        }
#pragma unroll
        for (unsigned int ks = 0; ks < MMA_CMAX / 16u; ++ks) {
            if (ks < ksteps) qk_step<DT, WIDE>(s, qa[ks], kt, ks, lane);
        }
        st.softmax_tile(P, s, jt, j_end, t);
        // acc += P K: P's A fragment for keys 16 kk .. 16 kk + 15 is s[2 kk] (keys 0..7) and s[2 kk + 1] (8..15)
#pragma unroll
        for (unsigned int kk = 0; kk < 4u; ++kk) {
            const unsigned int pa[4] = {pack_16<DT>(s[2u * kk][0], s[2u * kk][1]), pack_16<DT>(s[2u * kk][2], s[2u * kk][3]), pack_16<DT>(s[2u * kk + 1u][0], s[2u * kk + 1u][1]), pack_16<DT>(s[2u * kk + 1u][2], s[2u * kk + 1u][3])};
#pragma unroll
            for (unsigned int cp = 0; cp < MMA_CMAX / 16u; ++cp) {
                if (cp < ksteps) {
                    // matrix i: keys 16 kk + 8 (i & 1) + lane % 8, channels 8 (2 cp + (i >> 1)); transposed
                    unsigned int b[4];
                    ldmatrix_x4_trans(b, kt + swizzled<WIDE>(16u * kk + 8u * ((lane >> 3) & 1u) + (lane & 7u), 2u * cp + (lane >> 4)));
                    const unsigned int b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
                    mma_16816<DT>(acc[2u * cp], pa, b0);
                    mma_16816<DT>(acc[2u * cp + 1u], pa, b1);
                }
            }
        }
        __syncthreads(); // this stage is read before the next iteration refills it
    }
    st.store(P, partial, split, t);
}

#define MOCO_MMA_KERNELS(SUFFIX, DT)                                                                                 \
    extern "C" __global__ void __launch_bounds__(256) round_rows_to_##SUFFIX(InfoNceParams P, const float* __restrict__ x, unsigned short* __restrict__ y) { \
        const unsigned int i = flat_thread(WG);                                                                      \
        if (i < P.n * P.c) y[i] = round_to_16<DT>(x[i]);                                                             \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128) negative_logits_mma_##SUFFIX(                                  \
        InfoNceParams P, const unsigned short* __restrict__ q16, const unsigned short* __restrict__ keys, float* __restrict__ l_neg) { \
        negative_logits_mma_impl<DT>(P, q16, keys, l_neg);                                                           \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128) infonce_partial_mma_##SUFFIX(                                  \
        InfoNceParams P, const unsigned short* __restrict__ q16, const unsigned short* __restrict__ keys,             \
        const float* __restrict__ pos_logits, float* __restrict__ partial) {                                         \
        infonce_partial_mma_impl<DT>(P, q16, keys, pos_logits, partial);                                             \
    }

MOCO_MMA_KERNELS(f16, 1)
MOCO_MMA_KERNELS(bf16, 2)

// ---- infonce_partial and negative_logits on tensor cores for f32 keys (sm_80+, TF32 and 3xTF32) -------------
//
// The 16-bit kernels' algorithm with f32 keys on mma.sync.m16n8k8 (TF32 operands, f32 accumulation), at ARITH
// MMA_TF32 (each operand rounded to TF32: Precision::Tf32) or MMA_TF32X3 (each operand split as hi + lo, three
// products: f32's accuracy, Precision::Tf32x3; split_loss below). The host takes these kernels for f32 keys (the
// queue, or MoCo v3's k^) with C % 4 == 0 and C <= 128.
// Tiles, by the budget:
//   - shared memory: a key tile is F32_BN = 32 keys x 128 channels of f32, 16 KB, rows padded to F32_ROW = 132
//     floats (528 bytes, 16-byte aligned for cp.async); two stages take 33.8 KB, under the 48 KB of static shared
//     memory. 64 keys, as the 16-bit kernels take, would need 67.6 KB (the dynamic opt-in).
//   - registers: q^ is held as raw f32 A fragments for the whole key stream, 4 per 8 channels (64 at C = 128; split
//     per use, since TF32X3's hi and lo together would take 128); the P K accumulators 4 per 8 channels (64); S of
//     32 keys 4 per 8 keys (16): about 150 of the 255 a thread may have at 128 threads per block.
//   - shared-memory banks: S's B fragment (key g, channels t and t + 4) is read by ldmatrix.x4: an 8x8 b16 matrix is
//     8 keys x 4 f32, a TF32 fragment's quarter, and the row stride 132 = 4 (mod 32) words puts the 8 rows of a
//     phase on distinct 4-bank groups. P K's B (keys along k, channels along n) is a transposed 32-bit read, which
//     ldmatrix (b16 only) cannot do: each lane reads its two words by LDS.32 at keys 2 t, 2 t + 1 and channel g,
//     banks 8 t + g + const, 32 distinct. Padding, not a swizzle: with 4-byte elements the pad serves both reads.
//   - P's A fragment comes from S's accumulators with no shuffle: TF32's A wants (row g, k t) and (row g, k t + 4)
//     where S holds (row g, keys 2 t and 2 t + 1). P K sums over the keys in any order, so within each 8-key step
//     k = t stands for key 2 t and k = t + 4 for key 2 t + 1, and B reads the same keys.
// WGSL has no tensor-core instruction: on every other device the f32 kernels above run (within any bound here).
#define F32_BN 32u              // keys per tile
#define F32_ROW (MMA_CMAX + 4u) // floats per staged key row (128 channels and a 4-float pad)

// Copies channels 0 .. 127 of rows r0 .. r0 + 31 of src: [rows, C] (f32) into tile [32][F32_ROW], zero-filling
// rows >= rows and channels >= C: 1024 pieces of 16 bytes (C % 4 == 0), 8 per thread.
__device__ __forceinline__ void stage_f32_tile(float* tile, const float* __restrict__ src, unsigned int r0, unsigned int rows, unsigned int c) {
#pragma unroll
    for (unsigned int u = 0; u < F32_BN * (MMA_CMAX / 4u) / (MMA_WARPS * 32u); ++u) {
        const unsigned int e = threadIdx.x + u * (MMA_WARPS * 32u);
        const unsigned int row = e / (MMA_CMAX / 4u), ch = (e % (MMA_CMAX / 4u)) * 4u;
        const bool inside = r0 + row < rows && ch < c;
        // a piece past the end copies 0 bytes (zero fill) from a valid address: the start of src
        cp_async_16(tile + row * F32_ROW + ch, inside ? src + (size_t)(r0 + row) * c + ch : src, inside ? 16u : 0u);
    }
}

// The warp's q^ rows as TF32 A fragments, from global memory: qa[ks] = (g, 8 ks + t), (g + 8, 8 ks + t), (g, 8 ks
// + t + 4), (g + 8, 8 ks + t + 4) of rows[0] = g, rows[1] = g + 8; 0 past N and C. Rounded to TF32 here at MMA_TF32
// (then used as they are), raw at MMA_TF32X3 (split per use).
template <MmaArith ARITH>
__device__ __forceinline__ void load_q_tf32(float (&qa)[MMA_CMAX / 8u][4], const InfoNceParams& P, const float* __restrict__ q_hat, const unsigned int (&rows)[2], unsigned int t) {
#pragma unroll
    for (unsigned int ks = 0; ks < MMA_CMAX / 8u; ++ks) {
#pragma unroll
        for (unsigned int r = 0; r < 4u; ++r) {
            const float v = q_or_zero(P, q_hat, rows[r & 1u], 8u * ks + t + 4u * (r >> 1));
            qa[ks][r] = ARITH == MMA_TF32 ? tf32_round(v) : v;
        }
    }
}

// The operands' halves. TF32: hi = x rounded to nearest (cvt.rna, as tf32_round; feeding only mma, ptxas makes it an
// add of half a TF32 ulp, the tensor cores dropping the low 13 bits). TF32X3: hi = x truncated to TF32 (one and:
// |x - hi| < 2^-10 |x|), lo = x - hi (exact in f32), read by the tensor cores truncated too (|lo - lo'| < 2^-10 |lo|
// < 2^-20 |x|): a product within 3 2^-20 of a b (the dropped lo lo and the two truncated lo's), at two instructions
// per split where rounding both halves takes eight (the split of every operand of every product is the kernel's
// largest cost after the mma). NaN stays NaN (the and keeps a NaN's top mantissa bits or makes it inf; lo = NaN).
template <MmaArith ARITH>
__device__ __forceinline__ void split_loss(unsigned int x, unsigned int& hi, unsigned int& lo) {
    if (ARITH == MMA_TF32) {
        hi = __float_as_uint(tf32_round(__uint_as_float(x)));
        lo = 0u;
    } else {
        hi = x & 0xffffe000u;
        lo = __float_as_uint(__uint_as_float(x) - __uint_as_float(hi));
    }
}

// split_loss of q^'s fragments, which are the same for every key tile: the compiler must split them again at every
// use, since hoisting their TF32X3 halves out of the key loop holds 128 registers beside the 64 accumulators (ptxas
// then spills); a volatile and stays in the loop. At TF32 they were rounded once by load_q_tf32 and are used as
// they are.
template <MmaArith ARITH>
__device__ __forceinline__ void split_q(const float (&x)[4], unsigned int (&hi)[4], unsigned int (&lo)[4]) {
#pragma unroll
    for (unsigned int r = 0; r < 4u; ++r) {
        unsigned int h = __float_as_uint(x[r]);
#if !defined(MOCO_CUDA_EMU) && __CUDA_ARCH__ >= 800
        if (ARITH == MMA_TF32X3) asm volatile("and.b32 %0, %1, 0xffffe000;\n" : "=r"(h) : "r"(h));
#else
        if (ARITH == MMA_TF32X3) h &= 0xffffe000u;
#endif
        hi[r] = h;
        lo[r] = ARITH == MMA_TF32X3 ? __float_as_uint(x[r] - __uint_as_float(h)) : 0u;
    }
}

// acc += A B on one m16n8k8 step, A split, B raw (f32 bits b0, b1) split here by split_loss.
template <MmaArith ARITH>
__device__ __forceinline__ void mma_loss(float (&acc)[4], const unsigned int (&a_hi)[4], const unsigned int (&a_lo)[4], unsigned int b0, unsigned int b1) {
    unsigned int b_hi[2], b_lo[2];
    split_loss<ARITH>(b0, b_hi[0], b_lo[0]);
    split_loss<ARITH>(b1, b_hi[1], b_lo[1]);
    mma_tf32_split<ARITH>(acc, a_hi, a_lo, b_hi, b_lo);
}

// s[nt] = q^ K^T for the 4 key tiles (8 keys each) of a staged [32 keys][F32_ROW] tile, over ksteps 8-channel steps.
// B for key tiles 2 np and 2 np + 1 by one ldmatrix.x4: matrix i is keys 8 (2 np + (i >> 1)) + lane % 8, channels
// 8 ks + 4 (i & 1).
template <MmaArith ARITH>
__device__ __forceinline__ void qk_tile_tf32(float (&s)[F32_BN / 8u][4], const float (&qa)[MMA_CMAX / 8u][4], const float* kt, unsigned int ksteps, unsigned int lane) {
#pragma unroll
    for (unsigned int nt = 0; nt < F32_BN / 8u; ++nt) {
#pragma unroll
        for (unsigned int e = 0; e < 4u; ++e) s[nt][e] = 0.0f;
    }
#pragma unroll
    for (unsigned int ks = 0; ks < MMA_CMAX / 8u; ++ks) {
        if (ks < ksteps) {
            unsigned int a_hi[4], a_lo[4];
            split_q<ARITH>(qa[ks], a_hi, a_lo);
#pragma unroll
            for (unsigned int np = 0; np < F32_BN / 16u; ++np) {
                unsigned int b[4];
                ldmatrix_x4(b, kt + (16u * np + 8u * (lane >> 4) + (lane & 7u)) * F32_ROW + 8u * ks + 4u * ((lane >> 3) & 1u));
                mma_loss<ARITH>(s[2u * np], a_hi, a_lo, b[0], b[1]);
                mma_loss<ARITH>(s[2u * np + 1u], a_hi, a_lo, b[2], b[3]);
            }
        }
    }
}

template <MmaArith ARITH>
__device__ __forceinline__ void negative_logits_mma_f32_impl(const InfoNceParams& P, const float* __restrict__ q_hat, const float* __restrict__ keys, float* __restrict__ l_neg) {
    __shared__ __align__(16) float k_tile[F32_BN * F32_ROW];
    const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3u;
    const unsigned int j0 = blockIdx.x * F32_BN;
    const unsigned int rows[2] = {blockIdx.y * MMA_BM + warp * 16u + g, blockIdx.y * MMA_BM + warp * 16u + g + 8u};
    stage_f32_tile(k_tile, keys, j0, P.m, P.c);
    cp_async_commit();
    float qa[MMA_CMAX / 8u][4];
    load_q_tf32<ARITH>(qa, P, q_hat, rows, t); // while the keys land
    cp_async_wait<0>();
    __syncthreads();
    float s[F32_BN / 8u][4];
    qk_tile_tf32<ARITH>(s, qa, k_tile, (P.c + 7u) / 8u, lane);
#pragma unroll
    for (unsigned int nt = 0; nt < F32_BN / 8u; ++nt) {
#pragma unroll
        for (unsigned int e = 0; e < 4u; ++e) {
            const unsigned int i = rows[e >> 1], j = j0 + nt * 8u + 2u * t + (e & 1u);
            if (i < P.n && j < P.m) l_neg[(size_t)i * P.m + j] = s[nt][e];
        }
    }
}

// infonce_partial's job on f32 keys: the flash-style pass of infonce_partial_mma_impl (the same states,
// accumulators, masks and online softmax) with 32-key tiles and q^ as f32 fragments.
template <MmaArith ARITH>
__device__ __forceinline__ void infonce_partial_mma_f32_impl(const InfoNceParams& P, const float* __restrict__ q_hat, const float* __restrict__ keys, const float* __restrict__ pos_logits, float* __restrict__ partial) {
    __shared__ __align__(16) float k_tile[2][F32_BN * F32_ROW];
    const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3u;
    const unsigned int row0 = blockIdx.x * MMA_BM, split = blockIdx.y;
    const unsigned int j_begin = split * P.keys_per_split, j_end = min(j_begin + P.keys_per_split, P.m);
    const unsigned int ksteps = (P.c + 7u) / 8u; // C / 8 rounded up (zero-filled past C)
    const unsigned int tiles = (j_end > j_begin) ? (j_end - j_begin + F32_BN - 1u) / F32_BN : 0u;
    if (tiles > 0u) {
        stage_f32_tile(k_tile[0], keys, j_begin, j_end, P.c);
        cp_async_commit();
    }
    FlashRows<MMA_CMAX / 8u> st(P, pos_logits, row0, warp, g);
    float (&acc)[MMA_CMAX / 8u][4] = st.acc;
    float qa[MMA_CMAX / 8u][4];
    load_q_tf32<ARITH>(qa, P, q_hat, st.rows, t);
    for (unsigned int tile = 0; tile < tiles; ++tile) {
        const unsigned int buf = tile & 1u, jt = j_begin + tile * F32_BN;
        if (tile + 1u < tiles) {
            stage_f32_tile(k_tile[buf ^ 1u], keys, jt + F32_BN, j_end, P.c);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const float* kt = k_tile[buf];
        float s[F32_BN / 8u][4]; // s[nt][e]: row rows[e >> 1], key jt + 8 nt + 2 t + (e & 1)
        qk_tile_tf32<ARITH>(s, qa, kt, ksteps, lane);
        st.softmax_tile(P, s, jt, j_end, t);
        // acc += P K, 8 keys per step: k = t is key 8 kk + 2 t, k = t + 4 key 8 kk + 2 t + 1 (see above)
#pragma unroll
        for (unsigned int kk = 0; kk < F32_BN / 8u; ++kk) {
            const float pa[4] = {s[kk][0], s[kk][2], s[kk][1], s[kk][3]};
            unsigned int p_hi[4], p_lo[4];
#pragma unroll
            for (unsigned int r = 0; r < 4u; ++r) split_loss<ARITH>(__float_as_uint(pa[r]), p_hi[r], p_lo[r]);
            const float* key = kt + (8u * kk + 2u * t) * F32_ROW + g; // keys 8 kk + 2 t (+1), channel g (+ 8 ct)
#pragma unroll
            for (unsigned int ct = 0; ct < MMA_CMAX / 8u; ++ct) {
                if (ct < ksteps) mma_loss<ARITH>(acc[ct], p_hi, p_lo, __float_as_uint(key[8u * ct]), __float_as_uint(key[F32_ROW + 8u * ct]));
            }
        }
        __syncthreads(); // this stage is read before the next iteration refills it
    }
    st.store(P, partial, split, t);
}

#define MOCO_TF32_KERNELS(SUFFIX, ARITH)                                                                             \
    extern "C" __global__ void __launch_bounds__(128) negative_logits_mma_##SUFFIX(                                  \
        InfoNceParams P, const float* __restrict__ q_hat, const float* __restrict__ keys, float* __restrict__ l_neg) { \
        negative_logits_mma_f32_impl<ARITH>(P, q_hat, keys, l_neg);                                                  \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(128) infonce_partial_mma_##SUFFIX(                                  \
        InfoNceParams P, const float* __restrict__ q_hat, const float* __restrict__ keys,                            \
        const float* __restrict__ pos_logits, float* __restrict__ partial) {                                         \
        infonce_partial_mma_f32_impl<ARITH>(P, q_hat, keys, pos_logits, partial);                                    \
    }

MOCO_TF32_KERNELS(tf32, MMA_TF32)
MOCO_TF32_KERNELS(tf32x3, MMA_TF32X3)


// ---- infonce_combine -----------------------------------------------------------------------------------------

// One block per row: merge the split states, add the positive logit, write row_loss, rank and
// dq = (I - q^q^T)/||q|| . grad_scale . (sum_s w_s acc_s + (p0 - 1) k^).
extern "C" __global__ void __launch_bounds__(256) infonce_combine(InfoNceParams P, const float* __restrict__ q_hat, const float* __restrict__ k_hat, const float* __restrict__ partial, const float* __restrict__ pos_logits, const float* __restrict__ q_inv_norm, float* __restrict__ dq, float* __restrict__ row_loss, unsigned int* __restrict__ rank) {
    __shared__ float split_weight[MAX_SPLITS];
    __shared__ float row_consts[4]; // p0, 1/z, loss, unused
    __shared__ float red[WG / 32u];
    const unsigned int tid = threadIdx.x;
    const unsigned int i = flat_block();
    if (i >= P.n) return;
    const float s0 = pos_logits[i];
    // every thread finds the max (splits are few), then the weights are filled in parallel
    float m = s0;
    for (unsigned int s = 0; s < P.splits; ++s) m = fmaxf(m, partial[((size_t)s * P.n + i) * 3u]);
    for (unsigned int s = tid; s < P.splits; s += WG) {
        const float ms = partial[((size_t)s * P.n + i) * 3u];
        split_weight[s] = (ms <= MASKED) ? 0.0f : expf(ms - m);
    }
    __syncthreads();
    if (tid == 0u) {
        float z = expf(s0 - m);
        unsigned int rk = 0u;
        for (unsigned int s = 0; s < P.splits; ++s) {
            z += partial[((size_t)s * P.n + i) * 3u + 1u] * split_weight[s];
            rk += __float_as_uint(partial[((size_t)s * P.n + i) * 3u + 2u]);
        }
        row_consts[0] = expf(s0 - m) / z;
        row_consts[1] = 1.0f / z;
        const float loss = logf(z) + m - s0;
        row_loss[i] = loss;
        rank[i] = rk;
    }
    __syncthreads();
    const float p0 = row_consts[0];
    const float inv_z = row_consts[1];
    const size_t acc_base = (size_t)P.splits * P.n * 3u;
    const size_t row = (size_t)i * P.c;
    float dot = 0.0f;
    for (unsigned int ch = tid; ch < P.c; ch += WG) {
        float a = 0.0f;
        for (unsigned int s = 0; s < P.splits; ++s) a += partial[acc_base + ((size_t)s * P.n + i) * P.c + ch] * split_weight[s];
        const float g = P.grad_scale * (a * inv_z + (p0 - 1.0f) * k_hat[row + ch]);
        dq[row + ch] = g;
        dot += g * q_hat[row + ch];
    }
    const float d = block_sum<WG>(dot, red);
    const float inv = q_inv_norm[i];
    const bool projected = inv < 1.0e12f;
    for (unsigned int ch = tid; ch < P.c; ch += WG) {
        const float g = dq[row + ch];
        dq[row + ch] = projected ? (g - q_hat[row + ch] * d) * inv : g * inv;
    }
}

// ---- infonce_reduce ------------------------------------------------------------------------------------------

// One block: mean loss (times loss_scale) and the acc@1 / acc@5 counts.
extern "C" __global__ void __launch_bounds__(256) infonce_reduce(InfoNceParams P, const float* __restrict__ row_loss, const unsigned int* __restrict__ rank, Stats* __restrict__ stats) {
    __shared__ float red[WG / 32u];
    __shared__ unsigned int red_u[WG / 32u];
    const unsigned int tid = threadIdx.x;
    float sum = 0.0f;
    unsigned int c1 = 0u, c5 = 0u;
    for (unsigned int i = tid; i < P.n; i += WG) {
        sum += row_loss[i];
        c1 += (rank[i] < 1u) ? 1u : 0u;
        c5 += (rank[i] < 5u) ? 1u : 0u;
    }
    sum = block_sum<WG>(sum, red);
    c1 = block_sum<WG>(c1, red_u);
    c5 = block_sum<WG>(c5, red_u);
    if (tid == 0u) {
        stats->loss = sum / (float)P.n * P.loss_scale;
        stats->top1 = c1;
        stats->top5 = c5;
        stats->_pad = 0u;
    }
}
