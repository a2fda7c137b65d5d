// Row L2 normalisation x_hat[r, :] = x[r, :] / max(||x[r, :]||, 1e-12), and the inverse norms: what the fused
// losses (infonce.cu) and the enqueue (queue.cu) run first on q and k. One 256-thread block per row.
// Mirrors shaders/normalize.wgsl: same name, same parameter block, same reduction tree shape.
// Compiled after kernels/common.cuh (block_sum, flat_block); no #include.

#define WG 256u

struct NormalizeParams {
    unsigned int rows; // rows of x [rows, C]
    unsigned int c;    // features per row
    unsigned int _pad0;
    unsigned int _pad1;
};

// x_hat[r, :] = x[r, :] / max(||x[r, :]||, 1e-12), inv_norm_out[r] = 1 / max(||x[r, :]||, 1e-12); one block per row.
extern "C" __global__ void __launch_bounds__(256) normalize_rows(NormalizeParams P, const float* __restrict__ x, float* __restrict__ x_hat, float* __restrict__ inv_norm_out) {
    __shared__ float red[WG / 32u];
    const unsigned int tid = threadIdx.x;
    const unsigned int r = flat_block();
    if (r >= P.rows) return;
    const float* xr = x + (size_t)r * P.c;
    float ss = 0.0f;
    for (unsigned int ch = tid; ch < P.c; ch += WG) {
        const float v = xr[ch];
        ss += v * v;
    }
    const float inv = 1.0f / fmaxf(sqrtf(block_sum<WG>(ss, red)), 1e-12f);
    float* outr = x_hat + (size_t)r * P.c;
    for (unsigned int ch = tid; ch < P.c; ch += WG) outr[ch] = xr[ch] * inv;
    if (tid == 0u) inv_norm_out[r] = inv;
}
