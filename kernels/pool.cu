// Pooling, linear and element-wise layers, NCHW, as src/backend/cpu/nn/{pool,linear,act}.rs:
// max pooling forward (value + argmax u32 inside the [H, W] plane) and backward (gather: each input pixel sums
// dout over the windows whose argmax it is; deterministic, no atomics), global average pooling forward/backward,
// a tiled GEMM with strided operands for linear forward/backward, the bias gradient, ReLU and the residual add.
// Mirrors shaders/pool.wgsl: same names, same work split (one thread per output / input element / plane /
// column; the GEMM computes T x T outputs per 16x16 block, K staged in T-deep chunks).
//
// Header-free (compiled by NVRTC at run time, and by tests/cuda_compile.rs in CI): no #include at all.
//
// Scalars: every kernel takes the WGSL uniform block `Params` by value as its first argument (same fields, same
// order, 80 bytes); the storage buffers the entry point uses follow in WGSL binding order.
// Block sizes: gemm runs with a (16, 16) block (the WGSL @workgroup_size(16, 16)); every other kernel with 256
// threads in x over a 2-D grid (flat index (blockIdx.x + blockIdx.y * gridDim.x) * 256 + threadIdx.x).

#define WG 256u
#define T 16u         // GEMM tile (T x T outputs per block, T-deep K chunks)
#define FLAG_ACC 1u   // GEMM: C += A.B (else C = A.B)
#define FLAG_BIAS 2u  // GEMM: + bias[col]

struct Params {
    // pooling: planes = N*C; element-wise: len
    unsigned int planes;
    unsigned int h;
    unsigned int w;
    unsigned int oh;
    unsigned int ow;
    unsigned int k;
    unsigned int stride;
    unsigned int pad;
    // GEMM C[M, NC] (+)= A[M, K].B[K, NC] (+ bias[NC]); A(m, k) at m*a_rs + k*a_cs, B(k, n) at k*b_rs + n*b_cs,
    // C row-major with row stride NC
    unsigned int m;
    unsigned int nc;
    unsigned int kk;
    unsigned int flags;
    unsigned int a_rs;
    unsigned int a_cs;
    unsigned int b_rs;
    unsigned int b_cs;
    unsigned int len;
    unsigned int hw;
    float inv_hw;
    unsigned int _pad;
};

__device__ __forceinline__ unsigned int flat_index() {
    return (blockIdx.x + blockIdx.y * gridDim.x) * WG + threadIdx.x;
}

// One thread per output element: max over the window (padding never wins), first maximum in scan order.
extern "C" __global__ void __launch_bounds__(256) maxpool_forward(Params P, const float* __restrict__ x, float* __restrict__ yout, unsigned int* __restrict__ argmax) {
    const unsigned int o = flat_index();
    if (o >= P.planes * P.oh * P.ow) return;
    const unsigned int p = o / (P.oh * P.ow);
    const unsigned int oy = (o / P.ow) % P.oh;
    const unsigned int ox = o % P.ow;
    const int y0 = (int)(oy * P.stride) - (int)P.pad;
    const int x0 = (int)(ox * P.stride) - (int)P.pad;
    const unsigned int ylo = (unsigned int)max(y0, 0);
    const unsigned int yhi = (unsigned int)min(y0 + (int)P.k, (int)P.h);
    const unsigned int xlo = (unsigned int)max(x0, 0);
    const unsigned int xhi = (unsigned int)min(x0 + (int)P.k, (int)P.w);
    const unsigned int base = p * P.h * P.w;
    float best = x[base + ylo * P.w + xlo];
    unsigned int bi = ylo * P.w + xlo;
    for (unsigned int iy = ylo; iy < yhi; ++iy) {
        for (unsigned int ix = xlo; ix < xhi; ++ix) {
            const float v = x[base + iy * P.w + ix];
            if (v > best) {
                best = v;
                bi = iy * P.w + ix;
            }
        }
    }
    yout[o] = best;
    argmax[o] = bi;
}

// One thread per input pixel: dx += sum dout over the windows that contain it and whose argmax it is.
// Indices outside the plane match no pixel (ignored).
extern "C" __global__ void __launch_bounds__(256) maxpool_backward(Params P, const unsigned int* __restrict__ argmax_in, const float* __restrict__ dy, float* __restrict__ dx) {
    const unsigned int i = flat_index();
    if (i >= P.planes * P.h * P.w) return;
    const unsigned int p = i / (P.h * P.w);
    const unsigned int q = i % (P.h * P.w);
    const unsigned int iy = q / P.w;
    const unsigned int ix = q % P.w;
    // windows oy with oy*stride - pad <= iy < oy*stride - pad + k
    const unsigned int ty = iy + P.pad;
    const unsigned int tx = ix + P.pad;
    const unsigned int oy_lo = (ty + 1u > P.k) ? (ty + 1u - P.k + P.stride - 1u) / P.stride : 0u;
    const unsigned int oy_hi = min(ty / P.stride + 1u, P.oh);
    const unsigned int ox_lo = (tx + 1u > P.k) ? (tx + 1u - P.k + P.stride - 1u) / P.stride : 0u;
    const unsigned int ox_hi = min(tx / P.stride + 1u, P.ow);
    float s = 0.0f;
    for (unsigned int oy = oy_lo; oy < oy_hi; ++oy) {
#pragma unroll 1 // windows are small (k / stride per axis); unrolling only adds register pressure
        for (unsigned int ox = ox_lo; ox < ox_hi; ++ox) {
            const unsigned int o = (p * P.oh + oy) * P.ow + ox;
            if (argmax_in[o] == q) s += dy[o];
        }
    }
    dx[i] += s;
}

// One thread per (n, c) plane: out = sum_HW x / HW.
extern "C" __global__ void __launch_bounds__(256) avgpool_forward(Params P, const float* __restrict__ x, float* __restrict__ yout) {
    const unsigned int p = flat_index();
    if (p >= P.planes) return;
    float s = 0.0f;
    for (unsigned int j = 0; j < P.hw; ++j) s += x[p * P.hw + j];
    yout[p] = s * P.inv_hw;
}

// One thread per input element: dx += dout[plane] / HW.
extern "C" __global__ void __launch_bounds__(256) avgpool_backward(Params P, const float* __restrict__ dy, float* __restrict__ dx) {
    const unsigned int i = flat_index();
    if (i >= P.planes * P.hw) return;
    dx[i] += dy[i / P.hw] * P.inv_hw;
}

// C[M, NC] (+)= A.B (+ bias): T x T outputs per (16, 16) block, one per thread, K staged in T-deep chunks.
// Out-of-range operands are not loaded (WGSL's select evaluates both sides under robust buffer access).
extern "C" __global__ void __launch_bounds__(256) gemm(Params P, const float* __restrict__ ga, const float* __restrict__ gb, float* __restrict__ gc, const float* __restrict__ bias) {
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
extern "C" __global__ void __launch_bounds__(256) bias_backward(Params P, const float* __restrict__ dy, float* __restrict__ dx) {
    const unsigned int col = flat_index();
    if (col >= P.nc) return;
    float s = 0.0f;
    for (unsigned int r = 0; r < P.m; ++r) s += dy[r * P.nc + col];
    dx[col] += s;
}

// out = max(a, 0).
extern "C" __global__ void __launch_bounds__(256) relu_forward(Params P, const float* __restrict__ x, float* __restrict__ yout) {
    const unsigned int i = flat_index();
    if (i >= P.len) return;
    yout[i] = x[i] < 0.0f ? 0.0f : x[i]; // NaN passes, as in torch
}

// dx += dout . (out > 0), with out (the forward's output) as x (binding 1).
extern "C" __global__ void __launch_bounds__(256) relu_backward(Params P, const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx) {
    const unsigned int i = flat_index();
    if (i >= P.len) return;
    dx[i] += (x[i] > 0.0f) ? dy[i] : 0.0f;
}

// out = a + b, with b as dy (binding 5).
extern "C" __global__ void __launch_bounds__(256) add_forward(Params P, const float* __restrict__ x, float* __restrict__ yout, const float* __restrict__ dy) {
    const unsigned int i = flat_index();
    if (i >= P.len) return;
    yout[i] = x[i] + dy[i];
}
