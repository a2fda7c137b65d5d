// Deliberately broken (and a few correct) kernels for the emulator's self-test (tests/cuda_emulated.rs): each
// defect must make the emulated launch fail or give a wrong result. Not part of kernels/ (never built by NVRTC).

// y[i] = x[i] + x[i + 1] for i < n with the bound written i < n instead of i + 1 < n: thread n - 1 reads x[n], one
// past the end of x [n]. AddressSanitizer must report it.
extern "C" __global__ void __launch_bounds__(256) oob_read(unsigned int n, const float* __restrict__ x, float* __restrict__ y) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] + x[i + 1u];
}

// Thread 63 reads t[64] of a 64-float shared array when k = 1: AddressSanitizer must report it.
extern "C" __global__ void __launch_bounds__(64) shared_oob(unsigned int k, float* __restrict__ out) {
    __shared__ float t[64];
    t[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = t[threadIdx.x + k];
}

// y[i] = x[255 - i] through shared memory, with the barrier.
extern "C" __global__ void __launch_bounds__(256) reverse_sync(const float* __restrict__ x, float* __restrict__ y) {
    __shared__ float t[256];
    t[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = t[255u - threadIdx.x];
}

// The same without the barrier: must give a wrong result under the emulator's scheduling.
extern "C" __global__ void __launch_bounds__(256) reverse_nosync(const float* __restrict__ x, float* __restrict__ y) {
    __shared__ float t[256];
    t[threadIdx.x] = x[threadIdx.x];
    y[threadIdx.x] = t[255u - threadIdx.x];
}

// A tiled sum with the second barrier of the loop missing (the next chunk overwrites the tile while other threads
// still read it): must give a wrong result.
extern "C" __global__ void __launch_bounds__(64) tile_war(unsigned int chunks, const float* __restrict__ x, float* __restrict__ y) {
    __shared__ float t[64];
    float acc = 0.0f;
    for (unsigned int c = 0; c < chunks; ++c) {
        t[threadIdx.x] = x[c * 64u + threadIdx.x];
        __syncthreads();
        for (unsigned int j = 0; j < 64u; ++j) acc += t[j] * (float)(j + 1u);
        // missing: __syncthreads();
    }
    y[threadIdx.x] = acc;
}

// Warp sums (xor and down shuffles), a broadcast and a ballot over the block's warps.
extern "C" __global__ void __launch_bounds__(128) warp_ops(const float* __restrict__ x, float* __restrict__ sums, unsigned int* __restrict__ ballots) {
    const unsigned int tid = threadIdx.x;
    float v = x[tid];
    float w = v;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    for (int o = 16; o > 0; o >>= 1) w += __shfl_down_sync(0xffffffffu, w, o);
    const float lane7 = __shfl_sync(0xffffffffu, x[tid], 7);
    const unsigned int b = __ballot_sync(0xffffffffu, x[tid] > 0.0f);
    sums[tid * 3u] = v;
    sums[tid * 3u + 1u] = __shfl_sync(0xffffffffu, w, 0); // lane 0 holds the shfl_down sum
    sums[tid * 3u + 2u] = lane7;
    if ((tid & 31u) == 0u) ballots[tid >> 5] = b;
}

// Some threads return before a barrier the others wait at (undefined behaviour in CUDA): must be reported.
extern "C" __global__ void __launch_bounds__(64) early_exit_barrier(float* __restrict__ y) {
    if (threadIdx.x == 0u) return;
    __syncthreads();
    y[threadIdx.x] = 1.0f;
}

// Half the block waits at one __syncthreads, half at another: must be reported.
extern "C" __global__ void __launch_bounds__(64) split_barriers(float* __restrict__ y) {
    if (threadIdx.x < 32u) {
        __syncthreads();
        y[threadIdx.x] = 1.0f;
    } else {
        __syncthreads();
        y[threadIdx.x] = 2.0f;
    }
}
