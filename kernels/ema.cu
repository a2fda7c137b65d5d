// EMA momentum update of the key encoder: k = m*k + (1-m)*q.
// Compiled after kernels/common.cuh by NVRTC at run time: no #include of its own.
//
// ema_update mirrors shaders/ema.wgsl: one flat buffer, grid-stride loop, the WGSL uniform block `EmaParams` passed
// by value. `live`, when not null, points at the launch's parameters in device memory and replaces P: a captured
// CUDA graph replays the launch with the momentum of each step, written there by the host before the replay (the
// WGSL block is a buffer already).
//
// ema_multi_tensor (CUDA only) updates a whole list of (k, q) buffer pairs of arbitrary lengths in one launch, in
// the style of apex's multi_tensor_apply. The host cuts every tensor into chunks of EMA_CHUNK elements and uploads
// one metadata buffer of 64-bit words:
//
//   meta[3*t + 0]            device address of k_t (float*, updated in place)        t in [0, n_tensors)
//   meta[3*t + 1]            device address of q_t (const float*)
//   meta[3*t + 2]            len_t, elements of k_t and q_t
//   meta[3*n_tensors + b]    chunk map of block b: tensor index in the low 32 bits, chunk index in the high 32
//
// Block b updates elements [chunk*EMA_CHUNK, min((chunk+1)*EMA_CHUNK, len_t)) of tensor t; the grid has exactly
// one block per chunk, so every element of every tensor is written once.

#define EMA_CHUNK 8192u // elements per block of ema_multi_tensor (must match EMA_CHUNK in src/ops/ema/params.rs)

struct EmaParams {
    unsigned int len;    // elements in q and k
    unsigned int stride; // total threads in the launch
    float momentum;      // m in [0, 1], rounded from f64 on the host
    float one_minus_m;   // 1 - m taken in f64 on the host, then rounded (as PyTorch's `1. - m`)
};

// k*m + q*(1-m) as PyTorch rounds it: two rounded products and a rounded sum (no FMA contraction).
__device__ __forceinline__ float ema1(float k, float q, float m, float one_minus_m) {
    return __fadd_rn(__fmul_rn(k, m), __fmul_rn(q, one_minus_m));
}

// k[i] = k[i] * m + q[i] * (1 - m) for i < len; grid-stride loop, so one launch covers any length.
extern "C" __global__ void __launch_bounds__(256) ema_update(EmaParams P, const EmaParams* __restrict__ live, const float* __restrict__ q, float* __restrict__ k) {
    if (live != nullptr) P = *live;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < P.len; i += P.stride) {
        k[i] = ema1(k[i], q[i], P.momentum, P.one_minus_m);
    }
}

// One block per chunk of one tensor (see the metadata layout above). Vectorised (float4) when both buffers are
// 16-byte aligned, scalar otherwise; the chunk start is a multiple of 4 elements, so alignment is per tensor.
extern "C" __global__ void __launch_bounds__(256) ema_multi_tensor(const unsigned long long* __restrict__ meta, unsigned int n_tensors, float momentum, float one_minus_momentum) {
    const unsigned long long map = meta[3ull * n_tensors + blockIdx.x];
    const unsigned int t = (unsigned int)(map & 0xffffffffull);
    const unsigned long long chunk = map >> 32;
    float* k = (float*)meta[3ull * t];
    const float* q = (const float*)meta[3ull * t + 1ull];
    const unsigned long long len = meta[3ull * t + 2ull];
    const unsigned long long start = chunk * EMA_CHUNK;
    if (start >= len) return;
    const unsigned int count = (unsigned int)min((unsigned long long)EMA_CHUNK, len - start);
    const float m = momentum;
    const float one_minus_m = one_minus_momentum; // 1 - m taken in f64 on the host
    float* kc = k + start;
    const float* qc = q + start;
    if ((((unsigned long long)kc | (unsigned long long)qc) & 15ull) == 0ull) {
        const unsigned int n4 = count / 4u;
        float4* k4 = (float4*)kc;
        const float4* q4 = (const float4*)qc;
        for (unsigned int i = threadIdx.x; i < n4; i += blockDim.x) {
            float4 kv = k4[i];
            const float4 qv = q4[i];
            kv.x = ema1(kv.x, qv.x, m, one_minus_m);
            kv.y = ema1(kv.y, qv.y, m, one_minus_m);
            kv.z = ema1(kv.z, qv.z, m, one_minus_m);
            kv.w = ema1(kv.w, qv.w, m, one_minus_m);
            k4[i] = kv;
        }
        for (unsigned int i = n4 * 4u + threadIdx.x; i < count; i += blockDim.x) kc[i] = ema1(kc[i], qc[i], m, one_minus_m);
    } else {
        for (unsigned int i = threadIdx.x; i < count; i += blockDim.x) kc[i] = ema1(kc[i], qc[i], m, one_minus_m);
    }
}
