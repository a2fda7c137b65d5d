// The ViT layers that ResNet does not have, as src/backend/cpu/nn/vit.rs (and add_backward of act.rs): layer norm
// (forward, backward dx, backward dgamma/dbeta), exact erf GELU, the attention core (scores, softmax and P.V in one
// block per query row; backward in two launches: dq with the ds scratch, then dk/dv per key row), the patch im2col
// and its backward, token assembly (cls + patches + pos) and its backward, the cls feature, and the residual add's
// backward. Mirrors shaders/vit.wgsl: same names, same work split (one block per row / query / key, one thread per
// element or column). Every backward accumulates (`+=`) and is deterministic (no atomics: each thread or block owns
// what it writes; sums over rows, batch and keys run in index order).
//
// Header-free (compiled by NVRTC at run time, and by tests/cuda_compile.rs in CI): no #include at all.
//
// Scalars: every kernel takes the WGSL uniform block `Params` (VitParams in src/backend/plan.rs, same fields, same
// order, 64 bytes) by value as its first argument; the buffers follow in the order of the CPU function's arguments
// (outputs first).
// Block sizes: 128 threads (LN_WG, VIT_WG_LN) for the layer-norm row kernels, 64 (WG, VIT_WG) for every other
// kernel. All grids may be 2-D (x <= 65535), flattened as blockIdx.x + blockIdx.y * gridDim.x: one block per row /
// query / key (vit_row_grid), one thread per element or column with a bounds guard (vit_elem_grid), and grid-stride
// loops for GELU and add_backward (vit_stride_grid). Block reductions are shared-memory trees (no warp shuffles, as
// the WGSL has no subgroup operations).

#define LN_WG 128u
#define WG 64u

struct Params {
    unsigned int len;        // elements of work (element-wise kernels, im2col, tokens, cls select)
    unsigned int rows;       // layer norm: R = B*T rows
    unsigned int c;          // features per row / token C (attention: H*D)
    unsigned int b;          // batch B
    unsigned int t;          // tokens T (cls included)
    unsigned int heads;      // attention heads H
    unsigned int head_dim;   // head dim D
    unsigned int img_c;      // image channels
    unsigned int h;          // image height
    unsigned int w;          // image width
    unsigned int patch_size; // patch size p
    unsigned int patches;    // patches per image P
    unsigned int cols;       // im2col columns img_c*p*p
    unsigned int _pad;
    float eps;               // layer-norm eps
    float scale;             // attention scale 1/sqrt(D)
};

__device__ __forceinline__ unsigned int flat_block() {
    return blockIdx.x + blockIdx.y * gridDim.x;
}

// This thread's element (or column) in a grid of WG-thread blocks, and the stride of a grid-stride loop over it.
__device__ __forceinline__ unsigned int first_elem() {
    return flat_block() * WG + threadIdx.x;
}
__device__ __forceinline__ unsigned int elem_stride() {
    return gridDim.x * gridDim.y * WG;
}

// Shared-memory tree sum over the n threads of the block (n a power of two), returned to every thread. `red` holds
// n floats; the trailing barrier lets the caller reuse it.
__device__ __forceinline__ float tree_sum(float v, float* red, unsigned int n) {
    const unsigned int tid = threadIdx.x;
    red[tid] = v;
    __syncthreads();
    for (unsigned int s = n >> 1; s > 0u; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        __syncthreads();
    }
    const float r = red[0];
    __syncthreads();
    return r;
}

// Shared-memory tree max, as tree_sum (fmaxf: a NaN operand is ignored, as f32::max on the CPU).
__device__ __forceinline__ float tree_max(float v, float* red, unsigned int n) {
    const unsigned int tid = threadIdx.x;
    red[tid] = v;
    __syncthreads();
    for (unsigned int s = n >> 1; s > 0u; s >>= 1) {
        if (tid < s) red[tid] = fmaxf(red[tid], red[tid + s]);
        __syncthreads();
    }
    const float r = red[0];
    __syncthreads();
    return r;
}

// ---- layer norm ------------------------------------------------------------------------------------------------

// One block of 128 threads per row r of inp [R, C]: mean, then the biased variance from the row again (two passes);
// out[r, :] = (x - mean)*rstd*gamma + beta, mean[r], rstd[r] = 1/sqrt(var + eps).
extern "C" __global__ void __launch_bounds__(128) layernorm_forward(Params P, float* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd, const float* __restrict__ inp, const float* __restrict__ gamma, const float* __restrict__ beta) {
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
extern "C" __global__ void __launch_bounds__(128) layernorm_backward_dx(Params P, float* __restrict__ dinp, const float* __restrict__ dout, const float* __restrict__ inp, const float* __restrict__ gamma, const float* __restrict__ mean, const float* __restrict__ rstd) {
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
extern "C" __global__ void __launch_bounds__(64) layernorm_backward_params(Params P, float* __restrict__ dgamma, float* __restrict__ dbeta, const float* __restrict__ dout, const float* __restrict__ inp, const float* __restrict__ mean, const float* __restrict__ rstd) {
    const unsigned int c = first_elem();
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

// ---- GELU (exact, erf) -----------------------------------------------------------------------------------------

// erf(x) for f32: the FreeBSD/musl s_erff.c algorithm (what libm::erff of the CPU kernels computes), written out so
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

// out = 0.5*x*(1 + erf(x/sqrt 2)), one thread per element, grid-stride.
extern "C" __global__ void __launch_bounds__(64) gelu_forward(Params P, float* __restrict__ out, const float* __restrict__ inp) {
    for (unsigned int i = first_elem(); i < P.len; i += elem_stride()) {
        const float x = inp[i];
        out[i] = 0.5f * x * (1.0f + moco_erf(x * FRAC_1_SQRT_2));
    }
}

// dinp += dout*(0.5*(1 + erf(x/sqrt 2)) + x*exp(-x^2/2)/sqrt(2 pi)), one thread per element, grid-stride.
extern "C" __global__ void __launch_bounds__(64) gelu_backward(Params P, float* __restrict__ dinp, const float* __restrict__ dout, const float* __restrict__ inp) {
    for (unsigned int i = first_elem(); i < P.len; i += elem_stride()) {
        const float x = inp[i];
        const float cdf = 0.5f * (1.0f + moco_erf(x * FRAC_1_SQRT_2));
        dinp[i] += dout[i] * (cdf + x * FRAC_1_SQRT_2PI * expf(-0.5f * x * x));
    }
}

// ---- attention core --------------------------------------------------------------------------------------------
//
// qkv [B, T, 3, H, D]: token (b, t)'s row of 3C holds q at h*D, k at C + h*D, v at 2C + h*D; out [B, T, C];
// att, ds [B, H, T, T].

// One block of 64 threads per (b, h, query i): s_j = scale*q_i.k_j into att[b, h, i, :] (threads stride j by 64),
// block max and sum, the row normalised in place, then out[b, i, h*D + d] = sum_j p_j v_j[d] (threads over d).
extern "C" __global__ void __launch_bounds__(64) attention_forward(Params P, float* __restrict__ out, float* __restrict__ att, const float* __restrict__ qkv) {
    __shared__ float red[WG];
    const unsigned int tid = threadIdx.x;
    const unsigned int blk = flat_block();
    if (blk >= P.b * P.heads * P.t) return; // whole block
    const unsigned int i = blk % P.t;
    const unsigned int bh = blk / P.t;
    const unsigned int h = bh % P.heads;
    const unsigned int b = bh / P.heads;
    const unsigned int c3 = 3u * P.c;
    const float* q = qkv + (size_t)(b * P.t + i) * c3 + h * P.head_dim;
    const float* kb = qkv + (size_t)b * P.t * c3 + P.c + h * P.head_dim; // k of token 0; token j at + j*3C
    const float* vb = kb + P.c;
    float* row = att + (size_t)blk * P.t;
    float mx = __uint_as_float(0xff800000u); // -inf
    for (unsigned int j = tid; j < P.t; j += WG) {
        const float* k = kb + (size_t)j * c3;
        float s = 0.0f;
        for (unsigned int d = 0; d < P.head_dim; ++d) s += q[d] * k[d];
        s *= P.scale;
        row[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = tree_max(mx, red, WG);
    float sum = 0.0f;
    for (unsigned int j = tid; j < P.t; j += WG) {
        const float e = expf(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    const float inv = 1.0f / tree_sum(sum, red, WG);
    for (unsigned int j = tid; j < P.t; j += WG) row[j] *= inv;
    __syncthreads(); // the normalised row (global) is read by every thread below
    float* o = out + (size_t)(b * P.t + i) * P.c + h * P.head_dim;
    for (unsigned int d = tid; d < P.head_dim; d += WG) {
        float acc = 0.0f;
        for (unsigned int j = 0; j < P.t; ++j) acc += row[j] * vb[(size_t)j * c3 + d];
        o[d] = acc;
    }
}

// One block of 64 threads per (b, h, query i): dp_j = dout_i.v_j, ds_ij = p_ij (dp_j - sum_j p_ij dp_j) into the
// scratch ds (indexed as att), then dq_i[d] += scale * sum_j ds_ij k_j[d]. The block owns its dq row.
extern "C" __global__ void __launch_bounds__(64) attention_backward_dq(Params P, float* __restrict__ dqkv, float* __restrict__ ds, const float* __restrict__ dout, const float* __restrict__ qkv, const float* __restrict__ att) {
    __shared__ float red[WG];
    const unsigned int tid = threadIdx.x;
    const unsigned int blk = flat_block();
    if (blk >= P.b * P.heads * P.t) return; // whole block
    const unsigned int i = blk % P.t;
    const unsigned int bh = blk / P.t;
    const unsigned int h = bh % P.heads;
    const unsigned int b = bh / P.heads;
    const unsigned int c3 = 3u * P.c;
    const float* dy = dout + (size_t)(b * P.t + i) * P.c + h * P.head_dim;
    const float* kb = qkv + (size_t)b * P.t * c3 + P.c + h * P.head_dim;
    const float* vb = kb + P.c;
    const float* prow = att + (size_t)blk * P.t;
    float* dsrow = ds + (size_t)blk * P.t;
    float acc = 0.0f;
    for (unsigned int j = tid; j < P.t; j += WG) {
        const float* v = vb + (size_t)j * c3;
        float dp = 0.0f;
        for (unsigned int d = 0; d < P.head_dim; ++d) dp += dy[d] * v[d];
        dsrow[j] = dp;
        acc += prow[j] * dp;
    }
    acc = tree_sum(acc, red, WG);
    for (unsigned int j = tid; j < P.t; j += WG) dsrow[j] = prow[j] * (dsrow[j] - acc);
    __syncthreads(); // the ds row (global) is read by every thread below
    float* dq = dqkv + (size_t)(b * P.t + i) * c3 + h * P.head_dim;
    for (unsigned int d = tid; d < P.head_dim; d += WG) {
        float g = 0.0f;
        for (unsigned int j = 0; j < P.t; ++j) g += dsrow[j] * kb[(size_t)j * c3 + d];
        dq[d] += P.scale * g;
    }
}

// One block of 64 threads per (b, h, key j), threads over d: dk_j[d] += scale * sum_i ds_ij q_i[d],
// dv_j[d] += sum_i p_ij dout_i[d] (i in order). The block owns its dk and dv rows: no atomics.
extern "C" __global__ void __launch_bounds__(64) attention_backward_dkv(Params P, float* __restrict__ dqkv, const float* __restrict__ ds, const float* __restrict__ dout, const float* __restrict__ qkv, const float* __restrict__ att) {
    const unsigned int tid = threadIdx.x;
    const unsigned int blk = flat_block();
    if (blk >= P.b * P.heads * P.t) return;
    const unsigned int j = blk % P.t;
    const unsigned int bh = blk / P.t;
    const unsigned int h = bh % P.heads;
    const unsigned int b = bh / P.heads;
    const unsigned int c3 = 3u * P.c;
    const float* qb = qkv + (size_t)b * P.t * c3 + h * P.head_dim; // q of token 0; token i at + i*3C
    const float* dyb = dout + (size_t)b * P.t * P.c + h * P.head_dim;
    const size_t col = (size_t)bh * P.t * P.t + j; // (b, h, i = 0, j); row i at + i*T
    float* dk = dqkv + (size_t)(b * P.t + j) * c3 + P.c + h * P.head_dim;
    float* dv = dk + P.c;
    for (unsigned int d = tid; d < P.head_dim; d += WG) {
        float gk = 0.0f;
        float gv = 0.0f;
        for (unsigned int i = 0; i < P.t; ++i) {
            const size_t a = col + (size_t)i * P.t;
            gk += ds[a] * qb[(size_t)i * c3 + d];
            gv += att[a] * dyb[(size_t)i * P.c + d];
        }
        dk[d] += P.scale * gk;
        dv[d] += gv;
    }
}

// ---- patch embedding (im2col) -----------------------------------------------------------------------------------

// One thread per element of cols [B*P, C*p*p]: row b*P + py*gw + px, column (ci*p + ky)*p + kx holds
// images[b, ci, py*p + ky, px*p + kx] (images [B, C, H, W], gw = W/p).
extern "C" __global__ void __launch_bounds__(64) patch_im2col(Params P, float* __restrict__ cols, const float* __restrict__ images) {
    const unsigned int o = first_elem();
    if (o >= P.len) return;
    const unsigned int p = P.patch_size;
    const unsigned int gw = P.w / p;
    const unsigned int row = o / P.cols;
    const unsigned int col = o % P.cols;
    const unsigned int b = row / P.patches;
    const unsigned int m = row % P.patches;
    const unsigned int ci = col / (p * p);
    const unsigned int ky = (col / p) % p;
    const unsigned int kx = col % p;
    cols[o] = images[((b * P.img_c + ci) * P.h + (m / gw) * p + ky) * P.w + (m % gw) * p + kx];
}

// One thread per element of dimages [B, C, H, W], gathering the one cols element it came from: dimages += dcols.
extern "C" __global__ void __launch_bounds__(64) patch_im2col_backward(Params P, float* __restrict__ dimages, const float* __restrict__ dcols) {
    const unsigned int e = first_elem();
    if (e >= P.len) return;
    const unsigned int p = P.patch_size;
    const unsigned int x = e % P.w;
    const unsigned int y = (e / P.w) % P.h;
    const unsigned int ci = (e / (P.w * P.h)) % P.img_c;
    const unsigned int b = e / (P.w * P.h * P.img_c);
    const unsigned int row = b * P.patches + (y / p) * (P.w / p) + x / p;
    const unsigned int col = (ci * p + y % p) * p + x % p;
    dimages[e] += dcols[row * P.cols + col];
}

// ---- token assembly and the cls feature ----------------------------------------------------------------------
//
// tokens [B, T, C] (token 0: cls), patches [B*P, C] with P = T - 1, cls [C], pos [T, C].

// One thread per element of tokens: tokens[b, 0] = cls + pos[0], tokens[b, 1 + p] = patches[b*P + p] + pos[1 + p].
extern "C" __global__ void __launch_bounds__(64) tokens_forward(Params P, float* __restrict__ tokens, const float* __restrict__ patches, const float* __restrict__ cls, const float* __restrict__ pos) {
    const unsigned int e = first_elem();
    if (e >= P.len) return;
    const unsigned int c = e % P.c;
    const unsigned int t = (e / P.c) % P.t;
    const unsigned int b = e / (P.c * P.t);
    const float x = t == 0u ? cls[c] : patches[(b * P.patches + t - 1u) * P.c + c];
    tokens[e] = x + pos[t * P.c + c];
}

// One thread per element of dpatches [B*P, C] (len = B*P*C, P >= 1): dpatches += the patch rows of dtokens.
extern "C" __global__ void __launch_bounds__(64) tokens_backward_patches(Params P, float* __restrict__ dpatches, const float* __restrict__ dtokens) {
    const unsigned int e = first_elem();
    if (e >= P.len) return;
    const unsigned int c = e % P.c;
    const unsigned int row = e / P.c;
    const unsigned int b = row / P.patches;
    const unsigned int p = row % P.patches;
    dpatches[e] += dtokens[(b * P.t + 1u + p) * P.c + c];
}

// One thread per feature c: dcls[c] += dtokens[b, 0, c] for b in order 0..B (as the CPU adds them).
extern "C" __global__ void __launch_bounds__(64) tokens_backward_cls(Params P, float* __restrict__ dcls, const float* __restrict__ dtokens) {
    const unsigned int c = first_elem();
    if (c >= P.c) return;
    float acc = dcls[c];
    for (unsigned int b = 0; b < P.b; ++b) acc += dtokens[b * P.t * P.c + c];
    dcls[c] = acc;
}

// One thread per element of out [B, C] (len = B*C): out[b, c] = tokens[b, 0, c].
extern "C" __global__ void __launch_bounds__(64) cls_select_forward(Params P, float* __restrict__ out, const float* __restrict__ tokens) {
    const unsigned int e = first_elem();
    if (e >= P.len) return;
    out[e] = tokens[(e / P.c) * P.t * P.c + e % P.c];
}

// One thread per element of dout [B, C]: dtokens[b, 0, c] += dout[b, c].
extern "C" __global__ void __launch_bounds__(64) cls_select_backward(Params P, float* __restrict__ dtokens, const float* __restrict__ dout) {
    const unsigned int e = first_elem();
    if (e >= P.len) return;
    dtokens[(e / P.c) * P.t * P.c + e % P.c] += dout[e];
}

// ---- residual add backward -------------------------------------------------------------------------------------

// da += dout, db += dout, one thread per element, grid-stride.
extern "C" __global__ void __launch_bounds__(64) add_backward(Params P, float* __restrict__ da, float* __restrict__ db, const float* __restrict__ dout) {
    for (unsigned int i = first_elem(); i < P.len; i += elem_stride()) {
        const float g = dout[i];
        da[i] += g;
        db[i] += g;
    }
}
