// Optimiser steps over flat parameter buffers, the CPU references of src/optim/ as fused kernels:
//   sgd_step             torch.optim.SGD (momentum, dampening, weight decay, Nesterov)        src/optim/sgd.rs
//   adamw_step           torch.optim.AdamW (decoupled weight decay, bias correction)         src/optim/adamw.rs
//   lars_partial_norms   LARS pass 1a: per segment, (sum p^2, sum (g + wd*p)^2)               src/optim/lars.rs
//   lars_span_norms      LARS pass 1b: per span, the fixed-order sum of its segments' partials
//   lars_update          LARS pass 2: trust ratio per span from its norms, then the momentum update
// Mirrors shaders/optim.wgsl: same entry points, the WGSL uniform block `OptimParams` passed by value, same
// algorithm and reduction order (so results are deterministic). Compiled after kernels/common.cuh
// (flat_block, tree_sum) by NVRTC: no #include of its own.
//
// Hyperparameters arrive already rounded to f32 by the host, derived scalars (1 - dampening, 1 - beta2,
// 1 - lr*wd, lr / bc1, sqrt(bc2)) computed in f64 first, exactly as the CPU reference computes them. The
// elementwise arithmetic follows the reference's order; NVRTC contracts a*b + c into FMAs (--fmad=true).
//
// Captured steps (CUDA graphs): sgd_step, adamw_step and lars_update take `live`, when not null the launch's
// OptimParams in device memory, which replaces P (lr and AdamW's bias corrections change every step; the host writes
// them before each replay), and `skip`, when not null a count the step wrote on the device (its non-finite
// features): when it is not zero the step changes nothing, as the host skips the optimiser after a non-finite loss.
// WGSL has neither: its parameter block is a buffer already and its steps are not replayed.
//
// LARS tables, built by the host (src/ops/optim/params.rs `lars_tables`, shared by both GPU devices):
//   segments[s] = (span, first element, end element, 1 if the span has ndim > 1): each span cut into pieces of at
//                 most LARS_CHUNK elements, span by span, in buffer order; one block per segment.
//   spans[t]    = (first segment, end segment, 1 if ndim > 1, 0); one block per span.

#define WG 256u

#define FLAG_FIRST_STEP 1u // sgd: the momentum buffer holds nothing yet (torch: momentum_buffer is None)
#define FLAG_NESTEROV 2u   // sgd: Nesterov momentum
#define FLAG_MOMENTUM 4u   // sgd: momentum != 0 (momentum_buf is bound)
#define FLAG_DECOUPLED 8u  // adamw: weight_decay != 0 (p *= 1 - lr*wd)

struct OptimParams {
    unsigned int len;        // elements of params, grads and state (sgd, adamw)
    unsigned int stride;     // threads of the grid-stride launch (sgd, adamw)
    unsigned int flags;      // FLAG_*
    unsigned int count;      // lars: segments (partial norms, update) or spans (span norms)
    float lr;
    float momentum;          // sgd, lars
    float one_minus_damp;    // sgd: f32(1 - dampening)
    float weight_decay;      // sgd, lars (adamw uses decay)
    float one_minus_beta1;   // adamw: f32(1 - beta1)
    float beta2;             // adamw
    float one_minus_beta2;   // adamw: f32(1 - beta2)
    float eps;               // adamw
    float step_size;         // adamw: f32(lr / (1 - beta1^t))
    float bc2_sqrt;          // adamw: f32(sqrt(1 - beta2^t))
    float decay;             // adamw: f32(1 - lr * wd)
    float trust_coefficient; // lars
};

// params, momentum_buf: [len] updated in place (momentum_buf unused, may be null, without FLAG_MOMENTUM);
// grads: [len]. Grid-stride loop, one launch covers any length.
extern "C" __global__ void __launch_bounds__(256) sgd_step(OptimParams P, const OptimParams* __restrict__ live, const unsigned int* __restrict__ skip, float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ momentum_buf) {
    if (live != nullptr) P = *live;
    if (skip != nullptr && *skip != 0u) return;
    const bool has_momentum = (P.flags & FLAG_MOMENTUM) != 0u;
    const bool first = (P.flags & FLAG_FIRST_STEP) != 0u;
    const bool nesterov = (P.flags & FLAG_NESTEROV) != 0u;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < P.len; i += P.stride) {
        const float p = params[i];
        const float d_p = grads[i] + P.weight_decay * p;
        if (!has_momentum) {
            params[i] = p - P.lr * d_p;
            continue;
        }
        const float buf = first ? d_p : P.momentum * momentum_buf[i] + P.one_minus_damp * d_p;
        momentum_buf[i] = buf;
        const float upd = nesterov ? d_p + P.momentum * buf : buf;
        params[i] = p - P.lr * upd;
    }
}

// params, exp_avg, exp_avg_sq: [len] updated in place; grads: [len]. Bias corrections folded into step_size and
// bc2_sqrt by the host.
extern "C" __global__ void __launch_bounds__(256) adamw_step(OptimParams P, const OptimParams* __restrict__ live, const unsigned int* __restrict__ skip, float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq) {
    if (live != nullptr) P = *live;
    if (skip != nullptr && *skip != 0u) return;
    const bool decoupled = (P.flags & FLAG_DECOUPLED) != 0u;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < P.len; i += P.stride) {
        const float p = params[i];
        const float g = grads[i];
        const float m = exp_avg[i];
        const float v = exp_avg_sq[i];
        const float pd = decoupled ? p * P.decay : p;
        const float mn = m + P.one_minus_beta1 * (g - m);
        const float vn = v * P.beta2 + P.one_minus_beta2 * g * g;
        const float denom = sqrtf(vn) / P.bc2_sqrt + P.eps;
        exp_avg[i] = mn;
        exp_avg_sq[i] = vn;
        params[i] = pd - P.step_size * (mn / denom);
    }
}

// One block per segment: partials[s] = (sum p^2, sum (g + wd*p)^2) over its elements, (0, 0) for segments of 1-d
// spans (which need no norms). params, grads: [len]; segments: [count]; partials: [count].
extern "C" __global__ void __launch_bounds__(256) lars_partial_norms(OptimParams P, const float* __restrict__ params, const float* __restrict__ grads, const uint4* __restrict__ segments, float2* __restrict__ partials) {
    __shared__ float2 red[WG];
    const unsigned int s = flat_block();
    const unsigned int lid = threadIdx.x;
    if (s >= P.count) return;
    const uint4 seg = segments[s];
    const unsigned int end = seg.w == 0u ? seg.y : seg.z; // 1-d span: empty loop, partial (0, 0)
    float2 acc = make_float2(0.0f, 0.0f);
    for (unsigned int i = seg.y + lid; i < end; i += WG) {
        const float p = params[i];
        const float dp = grads[i] + P.weight_decay * p;
        acc.x += p * p;
        acc.y += dp * dp;
    }
    acc = tree_sum(acc, red, WG);
    if (lid == 0u) partials[s] = acc;
}

// One block per span: norms_sq[t] = the sum of its segments' partials (strided per thread, then a tree).
// spans, norms_sq: [count]; partials: [segments].
extern "C" __global__ void __launch_bounds__(256) lars_span_norms(OptimParams P, const uint4* __restrict__ spans, const float2* __restrict__ partials, float2* __restrict__ norms_sq) {
    __shared__ float2 red[WG];
    const unsigned int t = flat_block();
    const unsigned int lid = threadIdx.x;
    if (t >= P.count) return;
    const uint4 sp = spans[t];
    float2 acc = make_float2(0.0f, 0.0f);
    for (unsigned int s = sp.x + lid; s < sp.y; s += WG) {
        const float2 v = partials[s];
        acc.x += v.x;
        acc.y += v.y;
    }
    acc = tree_sum(acc, red, WG);
    if (lid == 0u) norms_sq[t] = acc;
}

// The trust ratio of one span from its squared norms: trust * ||p|| / ||dp|| when both norms are > 0, else 1.
__device__ __forceinline__ float trust_ratio(float2 n, float trust) {
    const float pn = sqrtf(n.x);
    const float un = sqrtf(n.y);
    return (pn > 0.0f && un > 0.0f) ? trust * pn / un : 1.0f;
}

// One block per segment: mu = momentum * mu + dp; p -= lr * mu, with dp = (g + wd*p) * q for spans with ndim > 1
// (q = trust_ratio of the span's norms) and dp = g otherwise. params, mu: [len] updated; grads: [len].
extern "C" __global__ void __launch_bounds__(256) lars_update(OptimParams P, const OptimParams* __restrict__ live, const unsigned int* __restrict__ skip, float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ mu, const uint4* __restrict__ segments, const float2* __restrict__ norms_sq) {
    if (live != nullptr) P = *live;
    if (skip != nullptr && *skip != 0u) return;
    const unsigned int s = flat_block();
    if (s >= P.count) return;
    const uint4 seg = segments[s];
    const bool matrix = seg.w != 0u;
    const float q = matrix ? trust_ratio(norms_sq[seg.x], P.trust_coefficient) : 1.0f;
    for (unsigned int i = seg.y + threadIdx.x; i < seg.z; i += WG) {
        const float p = params[i];
        const float g = grads[i];
        const float dp = matrix ? (g + P.weight_decay * p) * q : g;
        const float mn = P.momentum * mu[i] + dp;
        mu[i] = mn;
        params[i] = p - P.lr * mn;
    }
}
