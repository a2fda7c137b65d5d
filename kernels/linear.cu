// The fully connected layer's GEMM and bias gradient, as src/ops/linear/cpu.rs: a tiled GEMM with strided operands
// (C[M, NC] (+)= A.B (+ bias), T x T outputs per 16x16 block, K staged in T-deep chunks), which runs linear forward
// (with bias) and both backward products, and the bias gradient (column sums of dout). Mirrors shaders/linear.wgsl.
//
// Compiled after kernels/common.cuh (flat_thread) by NVRTC at run time, and by tests/cuda_compile.rs in CI: no
// #include of its own.
//
// Scalars: every kernel takes the WGSL uniform block `LinearParams` by value as its first argument (same fields, same
// order, 32 bytes); the storage buffers follow in WGSL binding order. gemm runs with a (16, 16) block (the WGSL
// @workgroup_size(16, 16)); gemm_mma_* and bias_backward with 256 threads in x, over 2-D grids.

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

// The same GEMM on tensor cores (sm_80+; MatmulPrecision::Tf32x3, Tf32 and Bf16, src/ops/precision.rs): 64 x 64 output
// tiles per 256-thread block, K in 16-deep chunks through common.cuh's mma_pipeline64 (ldmatrix fragments, two
// cp.async stages). Each operand is copied along its contiguous dimension where that is K (A with a_cs = 1, B with
// b_rs = 1: 16 consecutive k per row, so a warp reads two 64-byte runs), else along M or N (64 consecutive rows).
// 4-byte copies, zero-filled outside the matrix, so any strides work. Same arguments, flags and results as gemm;
// launched with 256 threads in x (GemmLaunch::mma_grid). No WGSL mirror: WebGPU has no tensor-core instruction.
template <MmaArith ARITH>
__device__ __forceinline__ void gemm_mma(const LinearParams& P, const float* __restrict__ ga, const float* __restrict__ gb, float* __restrict__ gc, const float* __restrict__ bias) {
    __shared__ __align__(16) MmaStage64 stages[2];
    const unsigned int lid = threadIdx.x;
    const unsigned int m0 = blockIdx.y * 64u;
    const unsigned int n0 = blockIdx.x * 64u;
    const bool a_along_k = P.a_cs == 1u;
    const bool b_along_k = P.b_rs == 1u;
    float acc[4][4] = {};
    mma_pipeline64<ARITH>(acc, stages, 0u, P.kk, lid, [&](unsigned int k0, MmaStage64& st) {
#pragma unroll
        for (unsigned int i = 0; i < 4u; ++i) {
            const unsigned int e = lid + i * WG;
            // A element (m0 + r, k0 + k) and B element (k0 + kb, n0 + c)
            const unsigned int r = a_along_k ? e / 16u : e % 64u;
            const unsigned int k = a_along_k ? e % 16u : e / 64u;
            const unsigned int c = b_along_k ? e / 16u : e % 64u;
            const unsigned int kb = b_along_k ? e % 16u : e / 64u;
            const bool a_in = m0 + r < P.m && k0 + k < P.kk;
            const bool b_in = n0 + c < P.nc && k0 + kb < P.kk;
            // src_size 0 copies nothing and fills zeros; the source address must still be a valid one
            cp_async_4(&st.a[mma_slot(r, k)], a_in ? ga + (m0 + r) * P.a_rs + (k0 + k) * P.a_cs : ga, a_in ? 4u : 0u);
            cp_async_4(&st.b[mma_slot(c, kb)], b_in ? gb + (k0 + kb) * P.b_rs + (n0 + c) * P.b_cs : gb, b_in ? 4u : 0u);
        }
        cp_async_commit();
    });
#pragma unroll
    for (unsigned int nt = 0; nt < 4u; ++nt) {
#pragma unroll
        for (unsigned int i = 0; i < 4u; ++i) {
            const uint2 at = mma_acc_at64(lid, nt, i);
            const unsigned int row = m0 + at.x;
            const unsigned int col = n0 + at.y;
            if (row < P.m && col < P.nc) {
                const unsigned int o = row * P.nc + col;
                float v = acc[nt][i];
                if ((P.flags & FLAG_BIAS) != 0u) v += bias[col];
                if ((P.flags & FLAG_ACC) != 0u) v += gc[o];
                gc[o] = v;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) gemm_mma_tf32(LinearParams P, const float* __restrict__ ga, const float* __restrict__ gb, float* __restrict__ gc, const float* __restrict__ bias) {
    gemm_mma<MMA_TF32>(P, ga, gb, gc, bias);
}
extern "C" __global__ void __launch_bounds__(256) gemm_mma_tf32x3(LinearParams P, const float* __restrict__ ga, const float* __restrict__ gb, float* __restrict__ gc, const float* __restrict__ bias) {
    gemm_mma<MMA_TF32X3>(P, ga, gb, gc, bias);
}
extern "C" __global__ void __launch_bounds__(256) gemm_mma_bf16(LinearParams P, const float* __restrict__ ga, const float* __restrict__ gb, float* __restrict__ gc, const float* __restrict__ bias) {
    gemm_mma<MMA_BF16>(P, ga, gb, gc, bias);
}

// One thread per column of dout [M, NC]: dx[col] += sum_rows dout[row, col] (the linear bias gradient).
extern "C" __global__ void __launch_bounds__(256) bias_backward(LinearParams P, const float* __restrict__ dy, float* __restrict__ dx) {
    const unsigned int col = flat_thread(WG);
    if (col >= P.nc) return;
    float s = 0.0f;
    for (unsigned int r = 0; r < P.m; ++r) s += dy[r * P.nc + col];
    dx[col] += s;
}
