// Pooling over NCHW planes, as src/ops/pool/cpu.rs: max pooling forward (value + argmax u32 inside the [H, W]
// plane) and backward (gather: each input pixel sums dout over the windows whose argmax it is; deterministic, no
// atomics), global average pooling forward/backward. Mirrors shaders/pool.wgsl: same names, same work split (one
// thread per output / input element / plane).
//
// Compiled after kernels/common.cuh (flat_thread) by NVRTC at run time, and by tests/cuda_compile.rs in CI: no
// #include of its own.
//
// Scalars: every kernel takes the WGSL uniform block `PoolParams` by value as its first argument (same fields, same
// order, 48 bytes); the storage buffers the entry point uses follow in WGSL binding order. 256 threads per block
// over a 2-D grid (flat index (blockIdx.x + blockIdx.y * gridDim.x) * 256 + threadIdx.x).

#define WG 256u

struct PoolParams {
    unsigned int planes; // N*C
    unsigned int h;
    unsigned int w;
    unsigned int oh;
    unsigned int ow;
    unsigned int k;      // max-pool window (square)
    unsigned int stride;
    unsigned int pad;
    unsigned int hw;     // average pool: H*W
    float inv_hw;        // 1 / (H*W)
    unsigned int _pad0;
    unsigned int _pad1;
};

// One thread per output element: max over the window (padding never wins), first maximum in scan order.
extern "C" __global__ void __launch_bounds__(256) maxpool_forward(PoolParams P, const float* __restrict__ x, float* __restrict__ yout, unsigned int* __restrict__ argmax) {
    const unsigned int o = flat_thread(WG);
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
extern "C" __global__ void __launch_bounds__(256) maxpool_backward(PoolParams P, const unsigned int* __restrict__ argmax_in, const float* __restrict__ dy, float* __restrict__ dx) {
    const unsigned int i = flat_thread(WG);
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
extern "C" __global__ void __launch_bounds__(256) avgpool_forward(PoolParams P, const float* __restrict__ x, float* __restrict__ yout) {
    const unsigned int p = flat_thread(WG);
    if (p >= P.planes) return;
    float s = 0.0f;
    for (unsigned int j = 0; j < P.hw; ++j) s += x[p * P.hw + j];
    yout[p] = s * P.inv_hw;
}

// One thread per input element: dx += dout[plane] / HW.
extern "C" __global__ void __launch_bounds__(256) avgpool_backward(PoolParams P, const float* __restrict__ dy, float* __restrict__ dx) {
    const unsigned int i = flat_thread(WG);
    if (i >= P.planes * P.hw) return;
    dx[i] += dy[i / P.hw] * P.inv_hw;
}
