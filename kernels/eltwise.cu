// Element-wise layers, as src/ops/eltwise/cpu.rs: ReLU forward and backward, the exact-erf GELU forward and backward,
// and the residual add forward and backward. Mirrors shaders/eltwise.wgsl: same names, one thread per element.
//
// Compiled after kernels/common.cuh (flat_thread) by NVRTC at run time, and by tests/cuda_compile.rs in CI: no
// #include of its own.
//
// Scalars: every kernel takes the WGSL uniform block `EltwiseParams` by value as its first argument (16 bytes); the
// buffers follow in the order of the CPU function's arguments (outputs first). 256 threads per block over a 2-D grid
// (flat index (blockIdx.x + blockIdx.y * gridDim.x) * 256 + threadIdx.x), a bounds guard on len.

#define WG 256u

struct EltwiseParams {
    unsigned int len; // elements
    unsigned int _pad0;
    unsigned int _pad1;
    unsigned int _pad2;
};

// out = max(a, 0).
extern "C" __global__ void __launch_bounds__(256) relu_forward(EltwiseParams P, float* __restrict__ out, const float* __restrict__ inp) {
    const unsigned int i = flat_thread(WG);
    if (i >= P.len) return;
    out[i] = inp[i] < 0.0f ? 0.0f : inp[i]; // NaN passes, as in torch
}

// dinp += dout . (out > 0), with out the forward's output.
extern "C" __global__ void __launch_bounds__(256) relu_backward(EltwiseParams P, float* __restrict__ dinp, const float* __restrict__ dout, const float* __restrict__ out) {
    const unsigned int i = flat_thread(WG);
    if (i >= P.len) return;
    dinp[i] += (out[i] > 0.0f) ? dout[i] : 0.0f;
}

// erf(x) for f32: the FreeBSD/musl s_erff.c algorithm (libm::erff; the CPU's GELU uses the branch-free fast_erf of
// src/ops/fastmath.rs, within 1.4e-7 of erf), written out so
// that the WGSL (which has no erf) and this file evaluate the same formula; CUDA's erff is deliberately not used.
// Branches at |x| < 2^-28, < 0.84375, < 1.25, < 1/0.35, < 6; at most 1-2 ulp from erf (tests/cuda_emulated.rs
// states the measured error against f64).
__device__ __forceinline__ float erfc_mid(unsigned int ix, float x) {
    const float ax = fabsf(x);
    if (ix < 0x3fa00000u) { // |x| < 1.25
        const float s = ax - 1.0f;
        const float p = -2.3621185683e-03f + s * (4.1485610604e-01f + s * (-3.7220788002e-01f + s * (3.1834661961e-01f + s * (-1.1089469492e-01f + s * (3.5478305072e-02f + s * -2.1663755178e-03f)))));
        const float q = 1.0f + s * (1.0642088205e-01f + s * (5.4039794207e-01f + s * (7.1828655899e-02f + s * (1.2617121637e-01f + s * (1.3637083583e-02f + s * 1.1984500103e-02f)))));
        return 1.0f - 8.4506291151e-01f - p / q;
    }
    const float s = 1.0f / (ax * ax);
    float r;
    float big_s;
    if (ix < 0x4036db6du) { // |x| < 1/0.35
        r = -9.8649440333e-03f + s * (-6.9385856390e-01f + s * (-1.0558626175e+01f + s * (-6.2375331879e+01f + s * (-1.6239666748e+02f + s * (-1.8460508728e+02f + s * (-8.1287437439e+01f + s * -9.8143291473e+00f))))));
        big_s = 1.0f + s * (1.9651271820e+01f + s * (1.3765776062e+02f + s * (4.3456588745e+02f + s * (6.4538726807e+02f + s * (4.2900814819e+02f + s * (1.0863500214e+02f + s * (6.5702495575e+00f + s * -6.0424413532e-02f)))))));
    } else {
        r = -9.8649431020e-03f + s * (-7.9928326607e-01f + s * (-1.7757955551e+01f + s * (-1.6063638306e+02f + s * (-6.3756646729e+02f + s * (-1.0250950928e+03f + s * -4.8351919556e+02f)))));
        big_s = 1.0f + s * (3.0338060379e+01f + s * (3.2579251099e+02f + s * (1.5367296143e+03f + s * (3.1998581543e+03f + s * (2.5530502930e+03f + s * (4.7452853394e+02f + s * -2.2440952301e+01f))))));
    }
    const float z = __uint_as_float(__float_as_uint(ax) & 0xffffe000u);
    return expf(-z * z - 0.5625f) * expf((z - ax) * (z + ax) + r / big_s) / ax;
}

__device__ __forceinline__ float moco_erf(float x) {
    const unsigned int bits = __float_as_uint(x);
    const unsigned int ix = bits & 0x7fffffffu;
    const bool neg = (bits >> 31) != 0u;
    if (ix >= 0x7f800000u) return (neg ? -1.0f : 1.0f) + 1.0f / x; // erf(NaN) = NaN, erf(+-inf) = +-1
    if (ix < 0x3f580000u) {                                            // |x| < 0.84375
        if (ix < 0x31800000u) return 0.125f * (8.0f * x + 1.0270333290e+00f * x); // |x| < 2^-28
        const float z = x * x;
        const float r = 1.2837916613e-01f + z * (-3.2504209876e-01f + z * (-2.8481749818e-02f + z * (-5.7702702470e-03f + z * -2.3763017452e-05f)));
        const float s = 1.0f + z * (3.9791721106e-01f + z * (6.5022252500e-02f + z * (5.0813062117e-03f + z * (1.3249473704e-04f + z * -3.9602282413e-06f))));
        return x + x * (r / s);
    }
    const float y = ix < 0x40c00000u ? 1.0f - erfc_mid(ix, x) : 1.0f; // |x| < 6, else 1 - 2^-120 = 1 in f32
    return neg ? -y : y;
}

#define FRAC_1_SQRT_2 0.70710678118654752f
#define FRAC_1_SQRT_2PI 0.39894228040143268f

// out = 0.5*x*(1 + erf(x/sqrt 2)), one thread per element.
extern "C" __global__ void __launch_bounds__(256) gelu_forward(EltwiseParams P, float* __restrict__ out, const float* __restrict__ inp) {
    const unsigned int i = flat_thread(WG);
    if (i < P.len) {
        const float x = inp[i];
        out[i] = 0.5f * x * (1.0f + moco_erf(x * FRAC_1_SQRT_2));
    }
}
// dinp += dout*(0.5*(1 + erf(x/sqrt 2)) + x*exp(-x^2/2)/sqrt(2 pi)), one thread per element.
extern "C" __global__ void __launch_bounds__(256) gelu_backward(EltwiseParams P, float* __restrict__ dinp, const float* __restrict__ dout, const float* __restrict__ inp) {
    const unsigned int i = flat_thread(WG);
    if (i < P.len) {
        const float x = inp[i];
        const float cdf = 0.5f * (1.0f + moco_erf(x * FRAC_1_SQRT_2));
        dinp[i] += dout[i] * (cdf + x * FRAC_1_SQRT_2PI * expf(-0.5f * x * x));
    }
}

// out = a + b.
extern "C" __global__ void __launch_bounds__(256) add_forward(EltwiseParams P, float* __restrict__ out, const float* __restrict__ a, const float* __restrict__ b) {
    const unsigned int i = flat_thread(WG);
    if (i >= P.len) return;
    out[i] = a[i] + b[i];
}

// da += dout, db += dout, one thread per element.
extern "C" __global__ void __launch_bounds__(256) add_backward(EltwiseParams P, float* __restrict__ da, float* __restrict__ db, const float* __restrict__ dout) {
    const unsigned int i = flat_thread(WG);
    if (i < P.len) {
        const float g = dout[i];
        da[i] += g;
        db[i] += g;
    }
}
