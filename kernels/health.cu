// Representation health, as src/ops/health/cpu.rs: from the L2-normalised q_hat, k_hat [N, d] and the queue
// [K, d] (f32, f16 or bf16), the statistics block [8] (alignment, uniformity, dim_std, pos_mean, neg_mean,
// neg_max, neg_row_max_mean, gap) and the Gram matrix [g, g] of q_hat (g = min(N, d)) whose eigenvalues the host turns into the effective
// rank; and the key encoder's drift ||theta_k - theta_q|| / ||theta_q||. Definitions: src/ops/health/mod.rs.
// Launch plan (order, grids, scratch): src/ops/health/params.rs.
//
// Mirrors shaders/health.wgsl: same entry points, same parameter block, same tiles, same reduction trees
// (tree_sum / tree_max of kernels/common.cuh, the order of the WGSL's workgroup trees). Every partial is written by
// one block and summed by health_finish / drift_finish in a fixed order: deterministic, no float atomics.
//
// Compiled after kernels/common.cuh (flat_block, flat_thread, tree_sum, tree_max, load_key) by NVRTC at run time; no #include.
// Scalars: `HealthParams` by value first (64 bytes), then the buffers in the order of the WGSL bindings (outputs
// first).

#define WG 256u
#define TS 16u  // rows per tile, keys per tile, reduced elements per staged chunk
#define NEG_BIG (-3.402823466e38f) // the max's start (-FLT_MAX; the WGSL has no infinity literal)

struct HealthParams {
    unsigned int n;              // pairs N
    unsigned int d;              // dimension d
    unsigned int k;              // queue length K
    unsigned int rows;           // health_gram: rows of the matrix whose Gram it forms
    unsigned int red;            // health_gram: length of the reduced dimension
    unsigned int row_stride;     // health_gram: element (r, t) at x[r * row_stride + t * red_stride]
    unsigned int red_stride;
    unsigned int mode;           // health_gram: 1 write the Gram tile, 2 write the pair sum
    unsigned int splits;         // health_logits: key splits (grid y)
    unsigned int keys_per_split; // health_logits: keys per split, a multiple of TS
    unsigned int pair_blocks;    // entries of pair_part
    unsigned int len;            // drift: parameters per buffer
    unsigned int drift_blocks;   // drift: blocks of drift_partial
    unsigned int skip_diagonal;  // health_logits: 1 when the keys are k_hat itself (in-batch), key i of row i skipped
    unsigned int _pad1;
    unsigned int _pad2;
};

__device__ __forceinline__ float quiet_nan() {
    return __uint_as_float(0x7fc00000u);
}

// One 16 x 16 tile of pairs (i, j) of rows of x per block (i over blockIdx.y, j over blockIdx.x): prod = x_i . x_j
// and dist = ||x_i - x_j||^2 over the reduced dimension, staged 16 elements at a time. mode & 1: gram[i, j] = prod;
// mode & 2: pair_part[block] = sum over the tile's pairs with i < j of exp(-2 dist).
extern "C" __global__ void __launch_bounds__(256) health_gram(HealthParams P, float* __restrict__ gram, const float* __restrict__ x, float* __restrict__ pair_part) {
    __shared__ float a_s[TS][TS + 1];
    __shared__ float b_s[TS][TS + 1];
    __shared__ float red[WG];
    const unsigned int tid = threadIdx.x;
    const unsigned int ty = tid / TS, tx = tid % TS;
    const unsigned int i0 = blockIdx.y * TS, j0 = blockIdx.x * TS;
    const unsigned int i = i0 + ty, j = j0 + tx;
    // the loading thread's (row, element) of a tile: along the reduced dimension when it is contiguous, along
    // the rows when they are (coalesced either way)
    const bool rows_contiguous = P.row_stride == 1u;
    const unsigned int lr = rows_contiguous ? tx : ty;
    const unsigned int lt = rows_contiguous ? ty : tx;
    float prod = 0.0f, dist = 0.0f;
    for (unsigned int t0 = 0u; t0 < P.red; t0 += TS) {
        const unsigned int t = t0 + lt;
        a_s[lr][lt] = (i0 + lr < P.rows && t < P.red) ? x[(i0 + lr) * P.row_stride + t * P.red_stride] : 0.0f;
        b_s[lr][lt] = (j0 + lr < P.rows && t < P.red) ? x[(j0 + lr) * P.row_stride + t * P.red_stride] : 0.0f;
        __syncthreads();
#pragma unroll
        for (unsigned int u = 0u; u < TS; ++u) {
            const float a = a_s[ty][u], b = b_s[tx][u];
            prod += a * b;
            const float e = a - b;
            dist += e * e;
        }
        __syncthreads();
    }
    const bool inside = i < P.rows && j < P.rows;
    if (inside && (P.mode & 1u) != 0u) gram[i * P.rows + j] = prod;
    if ((P.mode & 2u) != 0u) {
        const float s = tree_sum((inside && i < j) ? expf(-2.0f * dist) : 0.0f, red, WG);
        if (tid == 0u) pair_part[blockIdx.y * gridDim.x + blockIdx.x] = s;
    }
}

// One thread per dimension c: the unbiased std of q_hat[:, c] over the batch (two passes: mean, then squares;
// divisor max(N - 1, 1), health_finish writes NaN for N = 1), sum_i (q_hat_ic - k_hat_ic)^2 and sum_i q_hat_ic
// k_hat_ic into dim_part[c, 0..3].
extern "C" __global__ void __launch_bounds__(256) health_dims(HealthParams P, const float* __restrict__ q_hat, const float* __restrict__ k_hat, float* __restrict__ dim_part) {
    const unsigned int c = flat_thread(WG);
    if (c >= P.d) return; // no barrier in this kernel
    float s = 0.0f;
    for (unsigned int i = 0u; i < P.n; ++i) s += q_hat[i * P.d + c];
    const float mean = s / (float)P.n;
    float var = 0.0f, align = 0.0f, pos = 0.0f;
    for (unsigned int i = 0u; i < P.n; ++i) {
        const float a = q_hat[i * P.d + c], b = k_hat[i * P.d + c];
        const float e = a - mean, f = a - b;
        var += e * e;
        align += f * f;
        pos += a * b;
    }
    dim_part[c * 3u] = sqrtf(var / (float)(P.n > 1u ? P.n - 1u : 1u));
    dim_part[c * 3u + 1u] = align;
    dim_part[c * 3u + 2u] = pos;
}

// 16 rows of q_hat (blockIdx.x) against the keys of split blockIdx.y, a 16 x 16 tile of cosines per step (thread
// (ty, tx): row ty, key tx of the tile, the d channels staged 16 at a time); each row's sum and max over the split
// into logit_part[split, row, 0..2].
// DT: the queue's storage (0 f32, 1 f16, 2 bf16; load_key of common.cuh), one instantiation per type below.
template <int DT>
__device__ __forceinline__ void health_logits_impl(const HealthParams& P, const float* __restrict__ q_hat, const typename KeyType<DT>::T* __restrict__ keys, float* __restrict__ logit_part) {
    __shared__ float a_s[TS][TS + 1];
    __shared__ float b_s[TS][TS + 1];
    __shared__ float sum_s[TS][TS];
    __shared__ float max_s[TS][TS];
    const unsigned int tid = threadIdx.x;
    const unsigned int ty = tid / TS, tx = tid % TS;
    const unsigned int i = blockIdx.x * TS + ty;
    const unsigned int kbeg = blockIdx.y * P.keys_per_split;
    const unsigned int kend = kbeg + P.keys_per_split < P.k ? kbeg + P.keys_per_split : P.k;
    float rsum = 0.0f, rmax = NEG_BIG;
    for (unsigned int kt = kbeg; kt < kend; kt += TS) {
        float prod = 0.0f;
        for (unsigned int c0 = 0u; c0 < P.d; c0 += TS) {
            const unsigned int c = c0 + tx;
            a_s[ty][tx] = (i < P.n && c < P.d) ? q_hat[i * P.d + c] : 0.0f;
            b_s[ty][tx] = (kt + ty < kend && c < P.d) ? load_key<DT>(keys, (kt + ty) * P.d + c) : 0.0f;
            __syncthreads();
#pragma unroll
            for (unsigned int u = 0u; u < TS; ++u) prod += a_s[ty][u] * b_s[tx][u];
            __syncthreads();
        }
        if (kt + tx < kend && !(P.skip_diagonal != 0u && kt + tx == i)) {
            rsum += prod;
            rmax = fmaxf(rmax, prod);
        }
    }
    sum_s[ty][tx] = rsum;
    max_s[ty][tx] = rmax;
    __syncthreads();
    if (tx == 0u && i < P.n) {
        float s = 0.0f, m = NEG_BIG;
        for (unsigned int u = 0u; u < TS; ++u) {
            s += sum_s[ty][u];
            m = fmaxf(m, max_s[ty][u]);
        }
        logit_part[(blockIdx.y * P.n + i) * 2u] = s;
        logit_part[(blockIdx.y * P.n + i) * 2u + 1u] = m;
    }
}

// Instantiations per queue storage type (the WGSL QUEUE_DTYPE override).
#define MOCO_HEALTH_LOGITS(SUFFIX, DT, KT)                                                                           \
    extern "C" __global__ void __launch_bounds__(256) health_logits_##SUFFIX(                                        \
        HealthParams P, const float* __restrict__ q_hat, const KT* __restrict__ keys, float* __restrict__ logit_part) { \
        health_logits_impl<DT>(P, q_hat, keys, logit_part);                                                          \
    }

MOCO_HEALTH_LOGITS(f32, 0, float)
MOCO_HEALTH_LOGITS(f16, 1, unsigned short)
MOCO_HEALTH_LOGITS(bf16, 2, unsigned short)

// One block: the partials of health_gram (pairs), health_dims and health_logits summed in a fixed order, the
// statistics written by thread 0.
extern "C" __global__ void __launch_bounds__(256) health_finish(HealthParams P, float* __restrict__ stats, const float* __restrict__ dim_part, const float* __restrict__ pair_part, const float* __restrict__ logit_part) {
    __shared__ float2 red2[WG];
    __shared__ float red[WG];
    const unsigned int tid = threadIdx.x;
    float2 std_align = make_float2(0.0f, 0.0f);
    float pos = 0.0f;
    for (unsigned int c = tid; c < P.d; c += WG) {
        std_align.x += dim_part[c * 3u];
        std_align.y += dim_part[c * 3u + 1u];
        pos += dim_part[c * 3u + 2u];
    }
    float pairs = 0.0f;
    for (unsigned int b = tid; b < P.pair_blocks; b += WG) pairs += pair_part[b];
    float2 neg = make_float2(0.0f, 0.0f); // (sum of every cosine, sum of the rows' maxima)
    float neg_max = NEG_BIG;
    for (unsigned int i = tid; i < P.n; i += WG) {
        float s = 0.0f, m = NEG_BIG;
        for (unsigned int sp = 0u; sp < P.splits; ++sp) {
            s += logit_part[(sp * P.n + i) * 2u];
            m = fmaxf(m, logit_part[(sp * P.n + i) * 2u + 1u]);
        }
        neg.x += s;
        neg.y += m;
        neg_max = fmaxf(neg_max, m);
    }
    std_align = tree_sum(std_align, red2, WG);
    neg = tree_sum(neg, red2, WG);
    pos = tree_sum(pos, red, WG);
    pairs = tree_sum(pairs, red, WG);
    neg_max = tree_max(neg_max, red, WG);
    if (tid == 0u) {
        const float n = (float)P.n;
        const float pos_mean = pos / n;
        const float row_max_mean = neg.y / n;
        stats[0] = std_align.y / n;
        stats[1] = P.n < 2u ? quiet_nan() : logf(pairs / (0.5f * n * (n - 1.0f)));
        stats[2] = P.n < 2u ? quiet_nan() : std_align.x / (float)P.d;
        stats[3] = pos_mean;
        // negatives per row: K, or N - 1 in-batch (none when N = 1: the four logit statistics are NaN)
        const float negs = (float)(P.skip_diagonal != 0u ? P.k - 1u : P.k);
        const bool none = negs == 0.0f;
        stats[4] = none ? quiet_nan() : neg.x / (n * negs);
        stats[5] = none ? quiet_nan() : neg_max;
        stats[6] = none ? quiet_nan() : row_max_mean;
        stats[7] = none ? quiet_nan() : pos_mean - row_max_mean;
    }
}

// Grid-stride over the parameters: block b's (sum (theta_k - theta_q)^2, sum theta_q^2) into drift_part[b, 0..2].
extern "C" __global__ void __launch_bounds__(256) drift_partial(HealthParams P, const float* __restrict__ theta_k, const float* __restrict__ theta_q, float* __restrict__ drift_part) {
    __shared__ float2 red2[WG];
    const unsigned int stride = P.drift_blocks * WG;
    float2 acc = make_float2(0.0f, 0.0f);
    for (unsigned int i = flat_thread(WG); i < P.len; i += stride) {
        const float q = theta_q[i];
        const float e = theta_k[i] - q;
        acc.x += e * e;
        acc.y += q * q;
    }
    acc = tree_sum(acc, red2, WG);
    if (threadIdx.x == 0u) {
        drift_part[flat_block() * 2u] = acc.x;
        drift_part[flat_block() * 2u + 1u] = acc.y;
    }
}

// One block: out[0] = sqrt(sum of the differences' squares) / sqrt(sum of theta_q's squares).
extern "C" __global__ void __launch_bounds__(256) drift_finish(HealthParams P, float* __restrict__ out, const float* __restrict__ drift_part) {
    __shared__ float2 red2[WG];
    float2 acc = make_float2(0.0f, 0.0f);
    for (unsigned int b = threadIdx.x; b < P.drift_blocks; b += WG) {
        acc.x += drift_part[b * 2u];
        acc.y += drift_part[b * 2u + 1u];
    }
    acc = tree_sum(acc, red2, WG);
    if (threadIdx.x == 0u) out[0] = sqrtf(acc.x) / sqrtf(acc.y);
}
