// Batch normalisation over [N, C, HW] with G groups (sample n in group n % G, statistic (g, c) at g*C + c), as
// src/ops/batchnorm/cpu.rs: statistics (one block per (group, channel), one pass: per-thread shifted sums merged as
// moments over the block), running-statistic update, forward apply (train: batch statistics; eval: running
// statistics) with epilogues none / relu / add+relu, and backward (per-statistic sums, per-channel coefficients,
// element-wise dx).
// Mirrors shaders/batchnorm.wgsl: same names, same work split. Optional tensors (gamma, beta, identity, dgamma, dbeta,
// didentity) are dummies when absent and gated by FLAG_* bits in P.flags.
//
// Compiled after kernels/common.cuh (flat_block, flat_thread, block_sum) by NVRTC at run time, and by
// tests/cuda_compile.rs in CI: no #include of its own.
//
// Scalars: every kernel takes the WGSL uniform block `BatchNormParams` by value as its first argument (same fields, same
// order, 48 bytes); the storage buffers the entry point uses follow in WGSL binding order.
// Block sizes: bn_stats, bn_apply, bn_backward_sums and bn_backward_dx assume 256 threads (WG); bn_running and
// bn_backward_coef index by blockIdx.x * blockDim.x + threadIdx.x and so run with the WGSL's 64 (or any size).
// The WGSL workgroup tree reductions are warp shuffles plus one value per warp here (same sums, different order).

#define WG 256u
#define FLAG_GAMMA 1u   // gamma given (else 1)
#define FLAG_BETA 2u    // beta given (else 0)
#define FLAG_RELU 4u    // ReLU epilogue (backward: dy masked by out > 0)
#define FLAG_ADD 8u     // + identity before the ReLU (backward: didentity += dy)
#define FLAG_EVAL 16u   // apply: mean/rstd bindings hold running_mean/running_var [C]
#define FLAG_DGAMMA 32u // dgamma given
#define FLAG_DBETA 64u  // dbeta given

struct BatchNormParams {
    unsigned int n;
    unsigned int c;
    unsigned int hw;
    unsigned int groups;
    unsigned int count; // M = (N/G)*HW elements per statistic
    unsigned int len;   // N*C*HW
    unsigned int flags;
    unsigned int _pad;
    float eps;
    float momentum;
    float _pad2[2];
};

// Offset in [N, C, HW] of element e (0..M) of statistic gc = (g, ch): sample g + (e / HW)*G, pixel e % HW.
__device__ __forceinline__ unsigned int stat_offset(const BatchNormParams& P, unsigned int gc, unsigned int e) {
    const unsigned int nn = gc / P.c + (e / P.hw) * P.groups;
    return (nn * P.c + gc % P.c) * P.hw + e % P.hw;
}

// The statistic (g, ch) at g*C + ch of element i of [N, C, HW]: sample i / (C*HW) in group (i / (C*HW)) % G.
__device__ __forceinline__ unsigned int stat_of(const BatchNormParams& P, unsigned int i) {
    return ((i / (P.hw * P.c)) % P.groups) * P.c + (i / P.hw) % P.c;
}

// The count, mean and sum of squared deviations (m2) of a set of values.
struct Moments {
    float n;
    float mean;
    float m2;
};

// The moments of the union of two sets (Chan, Golub and LeVeque's pairwise update): the means' difference d
// weighted by the counts, m2 = m2_a + m2_b + d^2 n_a n_b / n. An empty set is the identity.
__device__ __forceinline__ Moments merge_moments(Moments a, Moments b) {
    if (b.n == 0.0f) return a;
    if (a.n == 0.0f) return b;
    const float n = a.n + b.n;
    const float d = b.mean - a.mean;
    const float wb = b.n / n;
    return Moments{n, a.mean + d * wb, a.m2 + b.m2 + d * d * a.n * wb};
}

// The moments of this thread's elements e = tid, tid + WG, ... < count of statistic gc, in one pass, their mean
// relative to `base` (the statistic's first element: the merges then subtract means of the values' spread, not of
// their magnitude, which would cost the variance the bits f32 spends on the magnitude). The sums are of x - k, k
// the thread's first element, so that s2 - s1^2 / n cancels nothing unless k lies far off the thread's others.
__device__ __forceinline__ Moments thread_moments(const BatchNormParams& P, const float* __restrict__ inp, unsigned int gc, unsigned int tid, float base) {
    const float k = tid < P.count ? inp[stat_offset(P, gc, tid)] : 0.0f;
    float s1 = 0.0f;
    float s2 = 0.0f;
    float n = 0.0f;
    for (unsigned int e = tid; e < P.count; e += WG) {
        const float d = inp[stat_offset(P, gc, e)] - k;
        s1 += d;
        s2 += d * d;
        n += 1.0f;
    }
    if (n == 0.0f) return Moments{0.0f, 0.0f, 0.0f};
    return Moments{n, (k - base) + s1 / n, fmaxf(s2 - s1 * (s1 / n), 0.0f)};
}

// The moments over the block's WG threads, returned to every thread: xor butterflies within each warp (lane 0's
// result is kept), then the warps' moments merged in warp order. The tree of the WGSL mirror merges in another
// order (the same set, other roundings).
__device__ __forceinline__ Moments block_moments(Moments m, Moments* scratch) {
    const unsigned int tid = threadIdx.x;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const Moments other = {__shfl_xor_sync(0xffffffffu, m.n, o), __shfl_xor_sync(0xffffffffu, m.mean, o), __shfl_xor_sync(0xffffffffu, m.m2, o)};
        m = merge_moments(m, other);
    }
    if ((tid & 31u) == 0u) scratch[tid >> 5] = m;
    __syncthreads();
    Moments total = scratch[0];
#pragma unroll
    for (unsigned int w = 1; w < WG / 32u; ++w) total = merge_moments(total, scratch[w]);
    return total;
}

// One block per statistic (g, c), one pass over its M elements (thread_moments, block_moments); writes mean, rstd
// and the biased variance m2 / M.
extern "C" __global__ void __launch_bounds__(256) bn_stats(BatchNormParams P, const float* __restrict__ inp, float* __restrict__ mean, float* __restrict__ rstd, float* __restrict__ var_gc) {
    __shared__ Moments red[WG / 32u];
    const unsigned int tid = threadIdx.x;
    const unsigned int gc = flat_block();
    if (gc >= P.groups * P.c) return;
    const float base = inp[stat_offset(P, gc, 0u)];
    const Moments m = block_moments(thread_moments(P, inp, gc, tid, base), red);
    const float v = m.m2 / (float)P.count;
    if (tid == 0u) {
        mean[gc] = base + m.mean;
        rstd[gc] = 1.0f / sqrtf(v + P.eps);
        var_gc[gc] = v;
    }
}

// One thread per channel: running = (1 - m) running + m mean_g(stat), variance unbiased by M/(M-1).
extern "C" __global__ void __launch_bounds__(256) bn_running(BatchNormParams P, const float* __restrict__ mean, const float* __restrict__ var_gc, float* __restrict__ running_mean, float* __restrict__ running_var) {
    const unsigned int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= P.c) return;
    float mu = 0.0f;
    float v = 0.0f;
    for (unsigned int g = 0; g < P.groups; ++g) {
        mu += mean[g * P.c + ch];
        v += var_gc[g * P.c + ch];
    }
    const float inv_g = 1.0f / (float)P.groups;
    const float unbias = (float)P.count / (float)(P.count - 1u);
    const float m = P.momentum;
    running_mean[ch] = (1.0f - m) * running_mean[ch] + m * mu * inv_g;
    running_var[ch] = (1.0f - m) * running_var[ch] + m * v * inv_g * unbias;
}

// One thread per element: out = (x - mean).rstd.gamma + beta (+ identity) (then ReLU).
extern "C" __global__ void __launch_bounds__(256) bn_apply(BatchNormParams P, const float* __restrict__ inp, float* __restrict__ out, const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ gamma, const float* __restrict__ beta, const float* __restrict__ identity) {
    const unsigned int i = flat_thread(WG);
    if (i >= P.len) return;
    const unsigned int ch = (i / P.hw) % P.c;
    float mu;
    float r;
    if ((P.flags & FLAG_EVAL) != 0u) {
        mu = mean[ch];
        r = 1.0f / sqrtf(rstd[ch] + P.eps);
    } else {
        const unsigned int gc = stat_of(P, i);
        mu = mean[gc];
        r = rstd[gc];
    }
    float gm = 1.0f;
    if ((P.flags & FLAG_GAMMA) != 0u) gm = gamma[ch];
    float bt = 0.0f;
    if ((P.flags & FLAG_BETA) != 0u) bt = beta[ch];
    const float a = gm * r;
    float v = inp[i] * a + (bt - mu * a);
    if ((P.flags & FLAG_ADD) != 0u) v += identity[i];
    if ((P.flags & FLAG_RELU) != 0u) v = v < 0.0f ? 0.0f : v; // NaN passes, as in torch
    out[i] = v;
}

__device__ __forceinline__ float masked_dy(const BatchNormParams& P, const float* __restrict__ dout, const float* __restrict__ y, unsigned int i) {
    const float d = dout[i];
    if ((P.flags & FLAG_RELU) != 0u) return (y[i] > 0.0f) ? d : 0.0f;
    return d;
}

// One block per statistic (g, c): sum dy and sum dy.x^ over its M elements.
extern "C" __global__ void __launch_bounds__(256) bn_backward_sums(BatchNormParams P, const float* __restrict__ inp, const float* __restrict__ dout, const float* __restrict__ y, float* __restrict__ sums, const float* __restrict__ mean_in, const float* __restrict__ rstd_in) {
    __shared__ float red[WG / 32u];
    const unsigned int tid = threadIdx.x;
    const unsigned int gc = flat_block();
    if (gc >= P.groups * P.c) return;
    const float mu = mean_in[gc];
    float a = 0.0f;
    float b = 0.0f;
    for (unsigned int e = tid; e < P.count; e += WG) {
        const unsigned int o = stat_offset(P, gc, e);
        const float d = masked_dy(P, dout, y, o);
        a += d;
        b += d * (inp[o] - mu);
    }
    a = block_sum<WG>(a, red);
    b = block_sum<WG>(b, red);
    if (tid == 0u) {
        sums[gc * 2u] = a;
        sums[gc * 2u + 1u] = b * rstd_in[gc];
    }
}

// One thread per channel: dx = k1.dy + k2.(x - mean) + k3 per (g, c); dgamma += sum_g sum dy.x^, dbeta += sum_g sum dy.
extern "C" __global__ void __launch_bounds__(256) bn_backward_coef(BatchNormParams P, const float* __restrict__ gamma, const float* __restrict__ sums, float* __restrict__ coef, float* __restrict__ dgamma, float* __restrict__ dbeta, const float* __restrict__ rstd_in) {
    const unsigned int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= P.c) return;
    float gm = 1.0f;
    if ((P.flags & FLAG_GAMMA) != 0u) gm = gamma[ch];
    const float inv_m = 1.0f / (float)P.count;
    float sg = 0.0f;
    float sb = 0.0f;
    for (unsigned int g = 0; g < P.groups; ++g) {
        const unsigned int gc = g * P.c + ch;
        const float sdy = sums[gc * 2u];
        const float sdyx = sums[gc * 2u + 1u];
        const float r = rstd_in[gc];
        const float a = gm * r;
        coef[gc * 3u] = a;
        coef[gc * 3u + 1u] = -a * r * sdyx * inv_m;
        coef[gc * 3u + 2u] = -a * sdy * inv_m;
        sg += sdyx;
        sb += sdy;
    }
    if ((P.flags & FLAG_DGAMMA) != 0u) dgamma[ch] += sg;
    if ((P.flags & FLAG_DBETA) != 0u) dbeta[ch] += sb;
}

// One thread per element: dinp += k1.dy + k2.(x - mean) + k3; after add+relu, didentity += dy.
extern "C" __global__ void __launch_bounds__(256) bn_backward_dx(BatchNormParams P, const float* __restrict__ inp, const float* __restrict__ dout, const float* __restrict__ y, const float* __restrict__ coef, float* __restrict__ dinp, float* __restrict__ didentity, const float* __restrict__ mean_in) {
    const unsigned int i = flat_thread(WG);
    if (i >= P.len) return;
    const unsigned int gc = stat_of(P, i);
    const float d = masked_dy(P, dout, y, i);
    dinp[i] += coef[gc * 3u] * d + coef[gc * 3u + 1u] * (inp[i] - mean_in[gc]) + coef[gc * 3u + 2u];
    if ((P.flags & FLAG_ADD) != 0u) didentity[i] += d;
}
