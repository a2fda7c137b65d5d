// Kernels of the emulated driver's own tests (tests/cuda_emu_driver.rs): small enough to reason about, so each test
// can plant one host-side mistake (an out-of-bounds length, a freed buffer, a missing event) and check the report.
// Compiled by NVRTC in the test (PTX and CUBIN) and, like kernels/*.cu, into a kernel library of the driver.

// dst[i] = src[i] * scale, i < n
extern "C" __global__ void __launch_bounds__(256) probe_scale(const float* __restrict__ src, float* __restrict__ dst, unsigned int n, float scale) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = src[i] * scale;
}

// x[i] += 1, i < n
extern "C" __global__ void __launch_bounds__(256) probe_add_one(float* __restrict__ x, unsigned int n) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1.0f;
}

struct ProbeParams {
    unsigned int n;
    float value;
    unsigned long long stride;
};

// x[i * stride] = value, i < n (a struct parameter, passed by value as the crate's kernels take theirs)
extern "C" __global__ void __launch_bounds__(128) probe_fill(ProbeParams p, float* __restrict__ x) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) x[i * p.stride] = p.value;
}
