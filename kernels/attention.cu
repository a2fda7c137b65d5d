// The attention core of a ViT block, as src/ops/attention/cpu.rs: scores, softmax and P.V in one block per query
// row; the backward in two launches: dq with the ds scratch, then dk/dv per key row. Mirrors shaders/attention.wgsl:
// same names, same work split (one block per query / key, threads over keys or head dims). Every backward
// accumulates (`+=`) and is deterministic (no atomics: each block owns what it writes; sums run in index order).
//
// Compiled after kernels/common.cuh (flat_block, tree_sum, tree_max) by NVRTC at run time, and by
// tests/cuda_compile.rs in CI: no #include of its own.
//
// Scalars: every kernel takes the WGSL uniform block `AttentionParams` by value as its first argument (32 bytes);
// the buffers follow in the order of the CPU function's arguments (outputs first). 64 threads per block, grids 2-D
// (x <= 65535), flattened as blockIdx.x + blockIdx.y * gridDim.x. Block reductions are shared-memory trees.

#define WG 64u

struct AttentionParams {
    unsigned int b;        // batch B
    unsigned int t;        // tokens T (cls included)
    unsigned int c;        // H*D
    unsigned int heads;    // H
    unsigned int head_dim; // D
    float scale;           // 1/sqrt(D)
    unsigned int _pad0;
    unsigned int _pad1;
};

// qkv [B, T, 3, H, D]: token (b, t)'s row of 3C holds q at h*D, k at C + h*D, v at 2C + h*D; out [B, T, C];
// att, ds [B, H, T, T].

// Block blk = (b*H + h)*T + row of a grid over (sample b, head h, query or key row): row, b*H + h, h and b.
struct HeadRow {
    unsigned int row;
    unsigned int bh;
    unsigned int h;
    unsigned int b;
};

__device__ __forceinline__ HeadRow head_row(const AttentionParams& P, unsigned int blk) {
    HeadRow r;
    r.row = blk % P.t;
    r.bh = blk / P.t;
    r.h = r.bh % P.heads;
    r.b = r.bh / P.heads;
    return r;
}

// Offset of q (which = 0), k (1) or v (2) of head h of token t of sample b in qkv; token t + 1 is 3C further.
__device__ __forceinline__ size_t qkv_at(const AttentionParams& P, unsigned int b, unsigned int t, unsigned int which, unsigned int h) {
    return (size_t)(b * P.t + t) * (3u * P.c) + which * P.c + h * P.head_dim;
}

// Offset of head h of token t of sample b in out / dout [B, T, C]; token t + 1 is C further.
__device__ __forceinline__ size_t out_at(const AttentionParams& P, unsigned int b, unsigned int t, unsigned int h) {
    return (size_t)(b * P.t + t) * P.c + h * P.head_dim;
}

// One block of 64 threads per (b, h, query i): s_j = scale*q_i.k_j into att[b, h, i, :] (threads stride j by 64),
// block max and sum, the row normalised in place, then out[b, i, h*D + d] = sum_j p_j v_j[d] (threads over d).
extern "C" __global__ void __launch_bounds__(64) attention_forward(AttentionParams P, float* __restrict__ out, float* __restrict__ att, const float* __restrict__ qkv) {
    __shared__ float red[WG];
    const unsigned int tid = threadIdx.x;
    const unsigned int blk = flat_block();
    if (blk >= P.b * P.heads * P.t) return; // whole block
    const HeadRow r = head_row(P, blk);
    const size_t c3 = 3u * P.c;
    const float* q = qkv + qkv_at(P, r.b, r.row, 0u, r.h);
    const float* kb = qkv + qkv_at(P, r.b, 0u, 1u, r.h); // k of token 0; token j at + j*3C
    const float* vb = kb + P.c;
    float* row = att + (size_t)blk * P.t;
    float mx = __uint_as_float(0xff800000u); // -inf
    for (unsigned int j = tid; j < P.t; j += WG) {
        const float* k = kb + j * c3;
        float s = 0.0f;
        for (unsigned int d = 0; d < P.head_dim; ++d) s += q[d] * k[d];
        s *= P.scale;
        row[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = tree_max(mx, red, WG);
    float sum = 0.0f;
    for (unsigned int j = tid; j < P.t; j += WG) {
        const float e = expf(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    const float inv = 1.0f / tree_sum(sum, red, WG);
    for (unsigned int j = tid; j < P.t; j += WG) row[j] *= inv;
    __syncthreads(); // the normalised row (global) is read by every thread below
    float* o = out + out_at(P, r.b, r.row, r.h);
    for (unsigned int d = tid; d < P.head_dim; d += WG) {
        float acc = 0.0f;
        for (unsigned int j = 0; j < P.t; ++j) acc += row[j] * vb[j * c3 + d];
        o[d] = acc;
    }
}
// One block of 64 threads per (b, h, query i): dp_j = dout_i.v_j, ds_ij = p_ij (dp_j - sum_j p_ij dp_j) into the
// scratch ds (indexed as att), then dq_i[d] += scale * sum_j ds_ij k_j[d]. The block owns its dq row.
extern "C" __global__ void __launch_bounds__(64) attention_backward_dq(AttentionParams P, float* __restrict__ dqkv, float* __restrict__ ds, const float* __restrict__ dout, const float* __restrict__ qkv, const float* __restrict__ att) {
    __shared__ float red[WG];
    const unsigned int tid = threadIdx.x;
    const unsigned int blk = flat_block();
    if (blk >= P.b * P.heads * P.t) return; // whole block
    const HeadRow r = head_row(P, blk);
    const size_t c3 = 3u * P.c;
    const float* dy = dout + out_at(P, r.b, r.row, r.h);
    const float* kb = qkv + qkv_at(P, r.b, 0u, 1u, r.h);
    const float* vb = kb + P.c;
    const float* prow = att + (size_t)blk * P.t;
    float* dsrow = ds + (size_t)blk * P.t;
    float acc = 0.0f;
    for (unsigned int j = tid; j < P.t; j += WG) {
        const float* v = vb + j * c3;
        float dp = 0.0f;
        for (unsigned int d = 0; d < P.head_dim; ++d) dp += dy[d] * v[d];
        dsrow[j] = dp;
        acc += prow[j] * dp;
    }
    acc = tree_sum(acc, red, WG);
    for (unsigned int j = tid; j < P.t; j += WG) dsrow[j] = prow[j] * (dsrow[j] - acc);
    __syncthreads(); // the ds row (global) is read by every thread below
    float* dq = dqkv + qkv_at(P, r.b, r.row, 0u, r.h);
    for (unsigned int d = tid; d < P.head_dim; d += WG) {
        float g = 0.0f;
        for (unsigned int j = 0; j < P.t; ++j) g += dsrow[j] * kb[j * c3 + d];
        dq[d] += P.scale * g;
    }
}
// One block of 64 threads per (b, h, key j), threads over d: dk_j[d] += scale * sum_i ds_ij q_i[d],
// dv_j[d] += sum_i p_ij dout_i[d] (i in order). The block owns its dk and dv rows: no atomics.
extern "C" __global__ void __launch_bounds__(64) attention_backward_dkv(AttentionParams P, float* __restrict__ dqkv, const float* __restrict__ ds, const float* __restrict__ dout, const float* __restrict__ qkv, const float* __restrict__ att) {
    const unsigned int tid = threadIdx.x;
    const unsigned int blk = flat_block();
    if (blk >= P.b * P.heads * P.t) return;
    const HeadRow r = head_row(P, blk); // r.row: the key j
    const size_t c3 = 3u * P.c;
    const float* qb = qkv + qkv_at(P, r.b, 0u, 0u, r.h); // q of token 0; token i at + i*3C
    const float* dyb = dout + out_at(P, r.b, 0u, r.h);
    const size_t col = (size_t)r.bh * P.t * P.t + r.row; // (b, h, i = 0, j); row i at + i*T
    float* dk = dqkv + qkv_at(P, r.b, r.row, 1u, r.h);
    float* dv = dk + P.c;
    for (unsigned int d = tid; d < P.head_dim; d += WG) {
        float gk = 0.0f;
        float gv = 0.0f;
        for (unsigned int i = 0; i < P.t; ++i) {
            const size_t a = col + (size_t)i * P.t;
            gk += ds[a] * qb[i * c3 + d];
            gv += att[a] * dyb[(size_t)i * P.c + d];
        }
        dk[d] += P.scale * gk;
        dv[d] += gv;
    }
}
