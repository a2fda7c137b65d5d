// The fully connected layer's GEMM and bias gradient, as src/ops/linear/cpu.rs: a tiled GEMM with strided operands
// (C[M, NC] (+)= A.B (+ bias), T x T outputs per 16x16 block, K staged in T-deep chunks), which runs linear forward
// (with bias) and both backward products, and the bias gradient (column sums of dout). Mirrors shaders/linear.wgsl.
//
// Compiled after kernels/common.cuh (flat_thread) by NVRTC at run time, and by tests/cuda_compile.rs in CI: no
// #include of its own.
//
// Scalars: every kernel takes the WGSL uniform block `LinearParams` by value as its first argument (same fields, same
// order, 32 bytes); the storage buffers follow in WGSL binding order. gemm runs with a (16, 16) block (the WGSL
// @workgroup_size(16, 16)); bias_backward with 256 threads in x over a 2-D grid.

#define WG 256u
#define T 16u         // GEMM tile (T x T outputs per block, T-deep K chunks)
#define FLAG_ACC 1u   // GEMM: C += A.B (else C = A.B)
#define FLAG_BIAS 2u  // GEMM: + bias[col]

struct LinearParams {
    // C[M, NC] (+)= A[M, K].B[K, NC] (+ bias[NC]); A(m, k) at m*a_rs + k*a_cs, B(k, n) at k*b_rs + n*b_cs, C row-major
    // with row stride NC
    unsigned int m;
    unsigned int nc;
    unsigned int kk;
    unsigned int flags;
    unsigned int a_rs;
    unsigned int a_cs;
    unsigned int b_rs;
    unsigned int b_cs;
};

// C[M, NC] (+)= A.B (+ bias): T x T outputs per (16, 16) block, one per thread, K staged in T-deep chunks.
// Out-of-range operands are not loaded (WGSL's select evaluates both sides under robust buffer access).
extern "C" __global__ void __launch_bounds__(256) gemm(LinearParams P, const float* __restrict__ ga, const float* __restrict__ gb, float* __restrict__ gc, const float* __restrict__ bias) {
    __shared__ float ta[T * (T + 1u)]; // [T][T+1]: A tile, (row, k)
    __shared__ float tb[T * (T + 1u)]; // [T][T+1]: B tile, (k, col)
    const unsigned int lx = threadIdx.x;
    const unsigned int ly = threadIdx.y;
    const unsigned int row = blockIdx.y * T + ly;
    const unsigned int col = blockIdx.x * T + lx;
    float acc = 0.0f;
    for (unsigned int k0 = 0; k0 < P.kk; k0 += T) {
        const unsigned int ka = k0 + lx;
        ta[ly * (T + 1u) + lx] = (row < P.m && ka < P.kk) ? ga[row * P.a_rs + ka * P.a_cs] : 0.0f;
        const unsigned int kb = k0 + ly;
        tb[ly * (T + 1u) + lx] = (kb < P.kk && col < P.nc) ? gb[kb * P.b_rs + col * P.b_cs] : 0.0f;
        __syncthreads();
#pragma unroll
        for (unsigned int t = 0; t < T; ++t) acc += ta[ly * (T + 1u) + t] * tb[t * (T + 1u) + lx];
        __syncthreads();
    }
    if (row < P.m && col < P.nc) {
        const unsigned int o = row * P.nc + col;
        if ((P.flags & FLAG_BIAS) != 0u) acc += bias[col];
        if ((P.flags & FLAG_ACC) != 0u) acc += gc[o];
        gc[o] = acc;
    }
}

// One thread per column of dout [M, NC]: dx[col] += sum_rows dout[row, col] (the linear bias gradient).
extern "C" __global__ void __launch_bounds__(256) bias_backward(LinearParams P, const float* __restrict__ dy, float* __restrict__ dx) {
    const unsigned int col = flat_thread(WG);
    if (col >= P.nc) return;
    float s = 0.0f;
    for (unsigned int r = 0; r < P.m; ++r) s += dy[r * P.nc + col];
    dx[col] += s;
}
