// The non-finite count, as src/ops/finite/cpu.rs: count[0] += the number of elements of x that are NaN or +-inf.
// What the training step checks on the device (features, losses) instead of reading tensors back to the host.
// Mirrors shaders/finite.wgsl: same name, same work split (one thread per element, a shared-memory tree sum per
// 256-thread block, one atomic add per block that saw a non-finite value). The count is an integer, so the order of
// the adds does not matter: the result is deterministic.
//
// Header-free (compiled by NVRTC at run time, and by tests/cuda_compile.rs in CI): no #include at all.
//
// Scalars: the kernel takes the WGSL uniform block `FiniteParams` by value as its first argument (16 bytes); the
// buffers follow in the order of the trait's arguments (the output first). Grid 2-D (x <= 65535), flattened as
// blockIdx.x + blockIdx.y * gridDim.x.

#define WG 256u

struct FiniteParams {
    unsigned int len; // elements of x
    unsigned int _pad0;
    unsigned int _pad1;
    unsigned int _pad2;
};

// One thread per element of x: exponent bits all set (NaN or +-inf; a bit test, immune to fast-math) counts 1.
extern "C" __global__ void __launch_bounds__(256) count_nonfinite(FiniteParams P, unsigned int* __restrict__ count, const float* __restrict__ x) {
    __shared__ unsigned int red[WG];
    const unsigned int tid = threadIdx.x;
    const unsigned int i = (blockIdx.x + blockIdx.y * gridDim.x) * WG + tid;
    red[tid] = (i < P.len && (__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u) ? 1u : 0u;
    __syncthreads();
    for (unsigned int s = WG / 2u; s > 0u; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        __syncthreads();
    }
    if (tid == 0u && red[0] != 0u) atomicAdd(count, red[0]);
}
