// The non-finite count, as src/ops/finite/cpu.rs: count[0] += the number of elements of x that are NaN or +-inf.
// What the training step checks on the device (features, losses) instead of reading tensors back to the host.
// Mirrors shaders/finite.wgsl: same name, same work split (one thread per element, a shared-memory tree sum per
// 256-thread block, one atomic add per block that saw a non-finite value). The count is an integer, so the order of
// the adds does not matter: the result is deterministic.
//
// Compiled after kernels/common.cuh (flat_thread, tree_sum) by NVRTC at run time, and by tests/cuda_compile.rs in
// CI: no #include of its own.
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
    const unsigned int i = flat_thread(WG);
    const unsigned int bad = tree_sum((i < P.len && (__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u) ? 1u : 0u, red, WG);
    if (threadIdx.x == 0u && bad != 0u) atomicAdd(count, bad);
}
