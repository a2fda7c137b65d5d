// Layer norm over the last dimension, as src/ops/layernorm/cpu.rs: forward (mean, then the biased variance from the
// row again: two passes), backward dx, backward dgamma/dbeta. Mirrors shaders/layernorm.wgsl: same names, same work
// split (one block per row, one thread per column). Every backward accumulates (`+=`) and is deterministic (sums over
// rows run in index order).
//
// Compiled after kernels/common.cuh (flat_block, flat_thread, tree_sum) by NVRTC at run time, and by
// tests/cuda_compile.rs in CI: no #include of its own.
//
// Scalars: every kernel takes the WGSL uniform block `LayerNormParams` by value as its first argument (16 bytes); the
// buffers follow in the order of the CPU function's arguments (outputs first). Block sizes: 128 threads (LN_WG) for
// the row kernels, 64 (WG) for the column kernel; grids may be 2-D (x <= 65535), flattened as
// blockIdx.x + blockIdx.y * gridDim.x. Block reductions are shared-memory trees (no warp shuffles, as the WGSL has no
// subgroup operations).

#define LN_WG 128u
#define WG 64u

struct LayerNormParams {
    unsigned int rows; // R = B*T rows
    unsigned int c;    // features per row
    float eps;
    unsigned int _pad0;
};

// One block of 128 threads per row r of inp [R, C]: mean, then the biased variance from the row again (two passes);
// out[r, :] = (x - mean)*rstd*gamma + beta, mean[r], rstd[r] = 1/sqrt(var + eps).
extern "C" __global__ void __launch_bounds__(128) layernorm_forward(LayerNormParams P, float* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd, const float* __restrict__ inp, const float* __restrict__ gamma, const float* __restrict__ beta) {
    __shared__ float red[LN_WG];
    const unsigned int tid = threadIdx.x;
    const unsigned int row = flat_block();
    if (row >= P.rows) return; // whole block
    const float* x = inp + (size_t)row * P.c;
    float s = 0.0f;
    for (unsigned int c = tid; c < P.c; c += LN_WG) s += x[c];
    const float mu = tree_sum(s, red, LN_WG) / (float)P.c;
    float ss = 0.0f;
    for (unsigned int c = tid; c < P.c; c += LN_WG) {
        const float d = x[c] - mu;
        ss += d * d;
    }
    const float var = tree_sum(ss, red, LN_WG) / (float)P.c;
    const float r = 1.0f / sqrtf(var + P.eps);
    float* y = out + (size_t)row * P.c;
    for (unsigned int c = tid; c < P.c; c += LN_WG) y[c] = (x[c] - mu) * r * gamma[c] + beta[c];
    if (tid == 0u) {
        mean[row] = mu;
        rstd[row] = r;
    }
}
// One block of 128 threads per row: with xhat = (x - mean)*rstd and g = dout*gamma, reduces mean1 = mean_C(g) and
// mean2 = mean_C(g*xhat), then dinp[r, c] += rstd*(g - mean1 - xhat*mean2).
extern "C" __global__ void __launch_bounds__(128) layernorm_backward_dx(LayerNormParams P, float* __restrict__ dinp, const float* __restrict__ dout, const float* __restrict__ inp, const float* __restrict__ gamma, const float* __restrict__ mean, const float* __restrict__ rstd) {
    __shared__ float red[LN_WG];
    const unsigned int tid = threadIdx.x;
    const unsigned int row = flat_block();
    if (row >= P.rows) return; // whole block
    const size_t o = (size_t)row * P.c;
    const float m = mean[row];
    const float r = rstd[row];
    float sg = 0.0f;
    float sgx = 0.0f;
    for (unsigned int c = tid; c < P.c; c += LN_WG) {
        const float xh = (inp[o + c] - m) * r;
        const float g = dout[o + c] * gamma[c];
        sg += g;
        sgx += g * xh;
    }
    const float mean1 = tree_sum(sg, red, LN_WG) / (float)P.c;
    const float mean2 = tree_sum(sgx, red, LN_WG) / (float)P.c;
    for (unsigned int c = tid; c < P.c; c += LN_WG) {
        const float xh = (inp[o + c] - m) * r;
        dinp[o + c] += r * (dout[o + c] * gamma[c] - mean1 - xh * mean2);
    }
}
// One thread per column c (64-thread blocks over C), rows in order 0..R (deterministic):
// dgamma[c] += sum_r dout*xhat, dbeta[c] += sum_r dout.
extern "C" __global__ void __launch_bounds__(64) layernorm_backward_params(LayerNormParams P, float* __restrict__ dgamma, float* __restrict__ dbeta, const float* __restrict__ dout, const float* __restrict__ inp, const float* __restrict__ mean, const float* __restrict__ rstd) {
    const unsigned int c = flat_thread(WG);
    if (c >= P.c) return;
    float sg = 0.0f;
    float sb = 0.0f;
    for (unsigned int r = 0; r < P.rows; ++r) {
        const size_t o = (size_t)r * P.c + c;
        const float dy = dout[o];
        sg += dy * ((inp[o] - mean[r]) * rstd[r]);
        sb += dy;
    }
    dgamma[c] += sg;
    dbeta[c] += sb;
}
