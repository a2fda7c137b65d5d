// 2-D convolution (NCHW, weight [C_out, C_in, KH, KW], zero padding, no bias) as tiled implicit GEMMs.
// Mirrors shaders/conv.wgsl: same names, same tiles (one 64x64 tile of C[M, N] = A[M, K] . B[K, N] per block,
// 256 threads each owning a 4x4 register micro-tile, K stepped in 16-deep chunks staged in shared memory,
// 2 x 4 KiB). The im2col matrix is never materialised: B (or A) is gathered from the image while loading the tile.
//
//   conv2d_forward          M = C_out, N = N*OH*OW, K = C_in*KH*KW   out    = weight . col          (overwrites)
//   conv2d_backward_weight  M = C_out, N = C_in*KH*KW, K = N*OH*OW   dweight += dout . col^T
//   conv2d_backward_data    M = C_in,  N = N*H*W,  K = C_out*KH*KW   dinp   += gather of weight . dout (no atomics)
//
// Each output element is owned by exactly one thread, so the backward kernels accumulate with a plain
// read-modify-write. Grid: x * z tiles over N (x <= 65535, the host splits), y tiles over M.
//
// Header-free (compiled by NVRTC at run time, and by tests/cuda_compile.rs in CI): no #include at all.
//
// Scalars: every kernel takes the WGSL uniform block `ConvParams` by value as its first argument (same fields, same
// order, 64 bytes); the storage buffers the entry point uses follow in WGSL binding order
// (inp 1, weight 2, dout 3, result 4).

#define TILE_M 64u
#define TILE_N 64u
#define TILE_K 16u
#define WG 256u

struct ConvParams {
    unsigned int n;
    unsigned int c_in;
    unsigned int h;
    unsigned int w;
    unsigned int c_out;
    unsigned int kh;
    unsigned int kw;
    unsigned int stride;
    unsigned int pad;
    unsigned int oh;
    unsigned int ow;
    unsigned int gemm_m;
    unsigned int gemm_n;
    unsigned int gemm_k;
    unsigned int _pad0;
    unsigned int _pad1;
};

// im2col element (row k = (ci, ki, kj), column j = (n, oy, ox)), 0 outside the image or the matrix.
__device__ __forceinline__ float col_value(const ConvParams& p, const float* __restrict__ inp, unsigned int k, unsigned int j) {
    const unsigned int khw = p.kh * p.kw;
    const unsigned int ohw = p.oh * p.ow;
    if (k >= p.c_in * khw || j >= p.n * ohw) return 0.0f;
    const unsigned int n = j / ohw;
    const unsigned int pix = j - n * ohw;
    const unsigned int oy = pix / p.ow;
    const unsigned int ox = pix - oy * p.ow;
    const unsigned int ci = k / khw;
    const unsigned int kr = k - ci * khw;
    const unsigned int ki = kr / p.kw;
    const unsigned int kj = kr - ki * p.kw;
    const int iy = (int)(oy * p.stride + ki) - (int)p.pad;
    const int ix = (int)(ox * p.stride + kj) - (int)p.pad;
    if (iy < 0 || ix < 0 || iy >= (int)p.h || ix >= (int)p.w) return 0.0f;
    return inp[((n * p.c_in + ci) * p.h + (unsigned int)iy) * p.w + (unsigned int)ix];
}

// The dout element that weight tap r = (co, ki, kj) meets at input pixel j = (n, iy, ix), 0 if none.
__device__ __forceinline__ float dout_gather(const ConvParams& p, const float* __restrict__ dout, unsigned int r, unsigned int j) {
    const unsigned int khw = p.kh * p.kw;
    const unsigned int hw = p.h * p.w;
    if (r >= p.c_out * khw || j >= p.n * hw) return 0.0f;
    const unsigned int co = r / khw;
    const unsigned int kr = r - co * khw;
    const unsigned int ki = kr / p.kw;
    const unsigned int kj = kr - ki * p.kw;
    const unsigned int n = j / hw;
    const unsigned int pix = j - n * hw;
    const unsigned int iy = pix / p.w;
    const unsigned int ix = pix - iy * p.w;
    const int ty = (int)(iy + p.pad) - (int)ki;
    const int tx = (int)(ix + p.pad) - (int)kj;
    if (ty < 0 || tx < 0) return 0.0f;
    const unsigned int uy = (unsigned int)ty;
    const unsigned int ux = (unsigned int)tx;
    if (uy % p.stride != 0u || ux % p.stride != 0u) return 0.0f;
    const unsigned int oy = uy / p.stride;
    const unsigned int ox = ux / p.stride;
    if (oy >= p.oh || ox >= p.ow) return 0.0f;
    return dout[((n * p.c_out + co) * p.oh + oy) * p.ow + ox];
}

// acc[i][c] += a_tile[kk, ty*4 + i] * b_tile[kk, tx*4 + c] over the 16-deep chunk.
// A tile stored k-major: a_tile[kk * TILE_M + mm]; B tile: b_tile[kk * TILE_N + nn].
__device__ __forceinline__ void multiply_tile(float (&acc)[4][4], const float* a_tile, const float* b_tile, unsigned int tx, unsigned int ty) {
#pragma unroll
    for (unsigned int kk = 0; kk < TILE_K; ++kk) {
        const unsigned int ab = kk * TILE_M + ty * 4u;
        const unsigned int bb = kk * TILE_N + tx * 4u;
        const float a[4] = {a_tile[ab], a_tile[ab + 1u], a_tile[ab + 2u], a_tile[ab + 3u]};
        const float b[4] = {b_tile[bb], b_tile[bb + 1u], b_tile[bb + 2u], b_tile[bb + 3u]};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[i][c] += a[i] * b[c];
        }
    }
}

// Tile index over N: x * z blocks (x <= 65535, the host splits).
__device__ __forceinline__ unsigned int tile_n0() {
    return (blockIdx.z * gridDim.x + blockIdx.x) * TILE_N;
}

// out [N, C_out, OH, OW] = weight [C_out, K] . col [K, N*OH*OW]
extern "C" __global__ void __launch_bounds__(256) conv2d_forward(ConvParams p, const float* __restrict__ inp, const float* __restrict__ weight, float* __restrict__ result) {
    __shared__ float a_tile[TILE_K * TILE_M];
    __shared__ float b_tile[TILE_K * TILE_N];
    const unsigned int lid = threadIdx.x;
    const unsigned int m0 = blockIdx.y * TILE_M;
    const unsigned int j0 = tile_n0();
    if (j0 >= p.gemm_n) return;
    const unsigned int tx = lid % 16u;
    const unsigned int ty = lid / 16u;
    float acc[4][4] = {};
    for (unsigned int k0 = 0; k0 < p.gemm_k; k0 += TILE_K) {
#pragma unroll
        for (unsigned int i = 0; i < 4u; ++i) {
            const unsigned int e = lid + i * WG;
            // A = weight rows, contiguous along k
            const unsigned int ka = e % TILE_K;
            const unsigned int ma = e / TILE_K;
            float a = 0.0f;
            if (m0 + ma < p.gemm_m && k0 + ka < p.gemm_k) a = weight[(m0 + ma) * p.gemm_k + k0 + ka];
            a_tile[ka * TILE_M + ma] = a;
            // B = im2col, contiguous along output pixels
            const unsigned int nb = e % TILE_N;
            const unsigned int kb = e / TILE_N;
            b_tile[kb * TILE_N + nb] = col_value(p, inp, k0 + kb, j0 + nb);
        }
        __syncthreads();
        multiply_tile(acc, a_tile, b_tile, tx, ty);
        __syncthreads();
    }
    const unsigned int ohw = p.oh * p.ow;
#pragma unroll
    for (unsigned int i = 0; i < 4u; ++i) {
        const unsigned int m = m0 + ty * 4u + i;
#pragma unroll
        for (unsigned int c = 0; c < 4u; ++c) {
            const unsigned int j = j0 + tx * 4u + c;
            if (m < p.gemm_m && j < p.gemm_n) {
                const unsigned int n = j / ohw;
                result[(n * p.c_out + m) * ohw + (j - n * ohw)] = acc[i][c];
            }
        }
    }
}

// dweight [C_out, K] += dout [C_out, N*OH*OW] . col^T [N*OH*OW, K]
extern "C" __global__ void __launch_bounds__(256) conv2d_backward_weight(ConvParams p, const float* __restrict__ inp, const float* __restrict__ dout, float* __restrict__ result) {
    __shared__ float a_tile[TILE_K * TILE_M];
    __shared__ float b_tile[TILE_K * TILE_N];
    const unsigned int lid = threadIdx.x;
    const unsigned int m0 = blockIdx.y * TILE_M;
    const unsigned int j0 = tile_n0();
    if (j0 >= p.gemm_n) return;
    const unsigned int tx = lid % 16u;
    const unsigned int ty = lid / 16u;
    const unsigned int ohw = p.oh * p.ow;
    float acc[4][4] = {};
    for (unsigned int k0 = 0; k0 < p.gemm_k; k0 += TILE_K) {
#pragma unroll
        for (unsigned int i = 0; i < 4u; ++i) {
            const unsigned int e = lid + i * WG;
            // both operands contiguous along the reduction (output pixels)
            const unsigned int kk = e % TILE_K;
            const unsigned int mn = e / TILE_K;
            const unsigned int r = k0 + kk;
            float a = 0.0f;
            if (m0 + mn < p.gemm_m && r < p.gemm_k) {
                const unsigned int n = r / ohw;
                a = dout[(n * p.c_out + m0 + mn) * ohw + (r - n * ohw)];
            }
            a_tile[kk * TILE_M + mn] = a;
            b_tile[kk * TILE_N + mn] = col_value(p, inp, j0 + mn, r);
        }
        __syncthreads();
        multiply_tile(acc, a_tile, b_tile, tx, ty);
        __syncthreads();
    }
#pragma unroll
    for (unsigned int i = 0; i < 4u; ++i) {
        const unsigned int m = m0 + ty * 4u + i;
#pragma unroll
        for (unsigned int c = 0; c < 4u; ++c) {
            const unsigned int j = j0 + tx * 4u + c;
            if (m < p.gemm_m && j < p.gemm_n) {
                const unsigned int idx = m * p.gemm_n + j;
                result[idx] = result[idx] + acc[i][c];
            }
        }
    }
}

// dinp [N, C_in, H, W] += sum_(co, ki, kj) weight[co, ci, ki, kj] . dout[n, co, (iy + pad - ki) / stride, ...]
extern "C" __global__ void __launch_bounds__(256) conv2d_backward_data(ConvParams p, const float* __restrict__ weight, const float* __restrict__ dout, float* __restrict__ result) {
    __shared__ float a_tile[TILE_K * TILE_M];
    __shared__ float b_tile[TILE_K * TILE_N];
    const unsigned int lid = threadIdx.x;
    const unsigned int m0 = blockIdx.y * TILE_M;
    const unsigned int j0 = tile_n0();
    if (j0 >= p.gemm_n) return;
    const unsigned int tx = lid % 16u;
    const unsigned int ty = lid / 16u;
    const unsigned int khw = p.kh * p.kw;
    float acc[4][4] = {};
    for (unsigned int k0 = 0; k0 < p.gemm_k; k0 += TILE_K) {
#pragma unroll
        for (unsigned int i = 0; i < 4u; ++i) {
            const unsigned int e = lid + i * WG;
            // A[ci, r = (co, ki, kj)] = weight[co, ci, ki, kj], contiguous along the taps
            const unsigned int ka = e % TILE_K;
            const unsigned int ma = e / TILE_K;
            const unsigned int r = k0 + ka;
            float a = 0.0f;
            if (m0 + ma < p.gemm_m && r < p.gemm_k) {
                const unsigned int co = r / khw;
                a = weight[(co * p.c_in + m0 + ma) * khw + (r - co * khw)];
            }
            a_tile[ka * TILE_M + ma] = a;
            // B[r, j = (n, iy, ix)] = dout gathered, contiguous along input pixels
            const unsigned int nb = e % TILE_N;
            const unsigned int kb = e / TILE_N;
            b_tile[kb * TILE_N + nb] = dout_gather(p, dout, k0 + kb, j0 + nb);
        }
        __syncthreads();
        multiply_tile(acc, a_tile, b_tile, tx, ty);
        __syncthreads();
    }
    const unsigned int hw = p.h * p.w;
#pragma unroll
    for (unsigned int i = 0; i < 4u; ++i) {
        const unsigned int m = m0 + ty * 4u + i;
#pragma unroll
        for (unsigned int c = 0; c < 4u; ++c) {
            const unsigned int j = j0 + tx * 4u + c;
            if (m < p.gemm_m && j < p.gemm_n) {
                const unsigned int n = j / hw;
                const unsigned int idx = (n * p.c_in + m) * hw + (j - n * hw);
                result[idx] = result[idx] + acc[i][c];
            }
        }
    }
}
