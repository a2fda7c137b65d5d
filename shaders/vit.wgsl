// The ViT layers that ResNet does not have, as src/backend/cpu/nn/vit.rs (same names, same semantics; kernels/vit.cu
// is the CUDA twin with the same decomposition). Host code: src/backend/wgpu/vit.rs. Token tensors are [B, T, C]
// row-major, so a "row" is one token's C features. Backward kernels ACCUMULATE (dinp += ...); every output element
// is owned by one thread (or one workgroup's thread for a column), so no atomics and the results are deterministic.
//
//   layernorm_forward          one workgroup (128) per row r of inp [R, C]: mean, then biased variance (two-pass
//                              tree reductions, no subgroup ops); out[r, :], mean[r], rstd[r] = 1/sqrt(var + eps)
//   layernorm_backward_dx      one workgroup (128) per row: Σ dout·gamma, Σ dout·gamma·x̂, then
//                              dinp[r, c] += rstd·(dout·gamma - mean1 - x̂·mean2)
//   layernorm_backward_params  one thread per column c (64 per workgroup), rows in order 0..R:
//                              dgamma[c] += Σ_r dout·x̂, dbeta[c] += Σ_r dout
//   gelu_forward/backward      one thread per element, grid-stride; exact erf GELU (erf below)
//   attention_forward          one workgroup (64) per (b, h, query i): scores into att[b, h, i, :], max and sum
//                              reductions, in-place softmax, barrier, out[b, i, h*D + d] = Σ_j p_j v_j[d]
//   attention_backward_dq      one workgroup (64) per (b, h, i): ds[b, h, i, j] = p_ij (dp_j - Σ_j p_ij dp_j),
//                              dp_j = dout_i · v_j; dq_i[d] += scale·Σ_j ds_ij k_j[d]
//   attention_backward_dkv     one workgroup (64) per (b, h, key j): dk_j[d] += scale·Σ_i ds_ij q_i[d],
//                              dv_j[d] += Σ_i p_ij dout_i[d]  (reads the ds written by attention_backward_dq)
//   patch_im2col(_backward)    one thread per element of cols / of dimages (the backward is a gather)
//   tokens_forward             one thread per element of tokens [B, T, C]
//   tokens_backward_patches    one thread per element of dpatches [B*P, C]
//   tokens_backward_cls        one thread per c, b in order 0..B
//   cls_select_forward/backward one thread per element of [B, C]
//   add_backward               one thread per element, grid-stride: da += dout, db += dout
//
// Grids: the host splits workgroup counts over x and y (each <= 65535); kernels flatten wg.x + wg.y * nwg.x and
// return when past the end (a workgroup-uniform condition, so the barriers stay in uniform control flow).
// qkv: [B, T, 3, H, D] (q at 0, k at C, v at 2C of each token's row of 3C, C = H*D); att, ds: [B, H, T, T].

const WG_LN: u32 = 128u;   // layer-norm rows
const WG: u32 = 64u;       // everything else

struct Params {
    len: u32,        // elements (element-wise kernels, im2col, tokens, cls select)
    rows: u32,       // layer norm: R
    c: u32,          // layer norm / tokens: C; attention: H*D
    b: u32,          // batch B
    t: u32,          // tokens T (cls included)
    heads: u32,      // attention: H
    head_dim: u32,   // attention: D
    img_c: u32,      // patch: image channels
    h: u32,          // patch: image height
    w: u32,          // patch: image width
    patch_size: u32, // patch: p
    patches: u32,    // patch / tokens: patches per image P
    cols: u32,       // patch: C*p*p
    _pad: u32,
    eps: f32,        // layer norm
    scale: f32,      // attention: 1/sqrt(D)
}

@group(0) @binding(0) var<uniform> P: Params;
// Every storage binding is read_write: two disjoint views of one buffer may be input and output of one dispatch.
@group(0) @binding(1) var<storage, read_write> inp: array<f32>;     // ln/gelu inp, images, patches, tokens, qkv
@group(0) @binding(2) var<storage, read_write> out: array<f32>;     // ln/gelu/attention out, cols, tokens, cls out
@group(0) @binding(3) var<storage, read_write> mean: array<f32>;    // [R]
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;    // [R]
@group(0) @binding(5) var<storage, read_write> gamma: array<f32>;   // [C]
@group(0) @binding(6) var<storage, read_write> beta: array<f32>;    // [C]
@group(0) @binding(7) var<storage, read_write> dout: array<f32>;    // upstream gradient (dcols, dtokens, ...)
@group(0) @binding(8) var<storage, read_write> dinp: array<f32>;    // accumulated: dinp, dimages, dpatches, dcls,
                                                                     // dqkv, dtokens (cls select), da (add)
@group(0) @binding(9) var<storage, read_write> dgamma: array<f32>;  // [C]
@group(0) @binding(10) var<storage, read_write> dbeta: array<f32>;  // [C]
@group(0) @binding(11) var<storage, read_write> att: array<f32>;    // [B, H, T, T] probabilities
@group(0) @binding(12) var<storage, read_write> ds: array<f32>;     // [B, H, T, T] scratch (attention backward)
@group(0) @binding(13) var<storage, read_write> cls: array<f32>;    // [C]
@group(0) @binding(14) var<storage, read_write> pos: array<f32>;    // [T, C]
@group(0) @binding(15) var<storage, read_write> dinp2: array<f32>;  // accumulated: db (add)

var<workgroup> red_a: array<f32, 128>;
var<workgroup> red_b: array<f32, 128>;

fn flat_workgroup(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

// Tree sum of red_a[0..n) (n a power of two, every thread of the workgroup calls it); returns red_a[0] to all.
fn sum_a(tid: u32, n: u32) -> f32 {
    workgroupBarrier();
    for (var s = n / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red_a[tid] += red_a[tid + s];
        }
        workgroupBarrier();
    }
    let r = red_a[0];
    workgroupBarrier();
    return r;
}

// Tree max of red_a[0..n).
fn max_a(tid: u32, n: u32) -> f32 {
    workgroupBarrier();
    for (var s = n / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red_a[tid] = max(red_a[tid], red_a[tid + s]);
        }
        workgroupBarrier();
    }
    let r = red_a[0];
    workgroupBarrier();
    return r;
}

// ---------------------------------------------------------------------------------------------------------------
// layer norm

@compute @workgroup_size(128)
fn layernorm_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_workgroup(wg, nwg);
    if (r >= P.rows) {
        return;
    }
    let base = r * P.c;
    var s = 0.0;
    for (var c = tid; c < P.c; c += WG_LN) {
        s += inp[base + c];
    }
    red_a[tid] = s;
    let mu = sum_a(tid, WG_LN) / f32(P.c);
    var ss = 0.0;
    for (var c = tid; c < P.c; c += WG_LN) {
        let d = inp[base + c] - mu;
        ss += d * d;
    }
    red_a[tid] = ss;
    let rs = 1.0 / sqrt(sum_a(tid, WG_LN) / f32(P.c) + P.eps);
    for (var c = tid; c < P.c; c += WG_LN) {
        out[base + c] = (inp[base + c] - mu) * rs * gamma[c] + beta[c];
    }
    if (tid == 0u) {
        mean[r] = mu;
        rstd[r] = rs;
    }
}

@compute @workgroup_size(128)
fn layernorm_backward_dx(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_workgroup(wg, nwg);
    if (r >= P.rows) {
        return;
    }
    let base = r * P.c;
    let mu = mean[r];
    let rs = rstd[r];
    var sg = 0.0;
    var sgx = 0.0;
    for (var c = tid; c < P.c; c += WG_LN) {
        let g = dout[base + c] * gamma[c];
        sg += g;
        sgx += g * (inp[base + c] - mu) * rs;
    }
    red_a[tid] = sg;
    red_b[tid] = sgx;
    workgroupBarrier();
    for (var s = WG_LN / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red_a[tid] += red_a[tid + s];
            red_b[tid] += red_b[tid + s];
        }
        workgroupBarrier();
    }
    let m1 = red_a[0] / f32(P.c);
    let m2 = red_b[0] / f32(P.c);
    for (var c = tid; c < P.c; c += WG_LN) {
        let xh = (inp[base + c] - mu) * rs;
        dinp[base + c] += rs * (dout[base + c] * gamma[c] - m1 - xh * m2);
    }
}

@compute @workgroup_size(64)
fn layernorm_backward_params(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_workgroup(wg, nwg) * WG + tid;
    if (c >= P.c) {
        return;
    }
    var dg = 0.0;
    var db = 0.0;
    for (var r = 0u; r < P.rows; r += 1u) {
        let dy = dout[r * P.c + c];
        dg += dy * (inp[r * P.c + c] - mean[r]) * rstd[r];
        db += dy;
    }
    dgamma[c] += dg;
    dbeta[c] += db;
}

// ---------------------------------------------------------------------------------------------------------------
// GELU (exact, erf)

// erf in f32: FreeBSD's s_erff.c (Sun, 1993; musl's and the Rust libm crate's erff, which the CPU kernels call),
// the same rational approximations on |x| < 0.84375, [0.84375, 1.25), [1.25, 1/0.35), [1/0.35, 6), and ±1 beyond.
// kernels/vit.cu carries the same function. Max abs error against f64 erf: see tests/wgpu_vit.rs (erf_accuracy).
const ERX: f32 = 8.4506291151e-01;

fn erf_f32(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    let ix = bits & 0x7fffffffu;
    let neg = (bits >> 31u) != 0u;
    if (ix > 0x7f800000u) {
        return x; // NaN
    }
    if (ix < 0x3f580000u) {
        // |x| < 0.84375
        if (ix < 0x31800000u) {
            // |x| < 2^-28
            return 0.125 * (8.0 * x + 1.0270333290e+00 * x);
        }
        let z = x * x;
        let r = 1.2837916613e-01 + z * (-3.2504209876e-01 + z * (-2.8481749818e-02 + z * (-5.7702702470e-03 + z * -2.3763017452e-05)));
        let s = 1.0 + z * (3.9791721106e-01 + z * (6.5022252500e-02 + z * (5.0813062117e-03 + z * (1.3249473704e-04 + z * -3.9602282413e-06))));
        return x + x * (r / s);
    }
    var y: f32;
    if (ix < 0x3fa00000u) {
        // 0.84375 <= |x| < 1.25: erf = erx + P(s)/Q(s), s = |x| - 1
        let s = abs(x) - 1.0;
        let p = -2.3621185683e-03 + s * (4.1485610604e-01 + s * (-3.7220788002e-01 + s * (3.1834661961e-01 + s * (-1.1089469492e-01 + s * (3.5478305072e-02 + s * -2.1663755178e-03)))));
        let q = 1.0 + s * (1.0642088205e-01 + s * (5.4039794207e-01 + s * (7.1828655899e-02 + s * (1.2617121637e-01 + s * (1.3637083583e-02 + s * 1.1984500103e-02)))));
        y = 1.0 - (1.0 - ERX - p / q);
    } else if (ix < 0x40c00000u) {
        // 1.25 <= |x| < 6: erf = 1 - erfc, erfc = exp(-x² - 0.5625 + R/S)/x with 1/x² arguments
        let a = abs(x);
        let s = 1.0 / (a * a);
        var r: f32;
        var bs: f32;
        if (ix < 0x4036db6du) {
            // |x| < 1/0.35
            r = -9.8649440333e-03 + s * (-6.9385856390e-01 + s * (-1.0558626175e+01 + s * (-6.2375331879e+01 + s * (-1.6239666748e+02 + s * (-1.8460508728e+02 + s * (-8.1287437439e+01 + s * -9.8143291473e+00))))));
            bs = 1.0 + s * (1.9651271820e+01 + s * (1.3765776062e+02 + s * (4.3456588745e+02 + s * (6.4538726807e+02 + s * (4.2900814819e+02 + s * (1.0863500214e+02 + s * (6.5702495575e+00 + s * -6.0424413532e-02)))))));
        } else {
            r = -9.8649431020e-03 + s * (-7.9928326607e-01 + s * (-1.7757955551e+01 + s * (-1.6063638306e+02 + s * (-6.3756646729e+02 + s * (-1.0250950928e+03 + s * -4.8351919556e+02)))));
            bs = 1.0 + s * (3.0338060379e+01 + s * (3.2579251099e+02 + s * (1.5367296143e+03 + s * (3.1998581543e+03 + s * (2.5530502930e+03 + s * (4.7452853394e+02 + s * -2.2440952301e+01))))));
        }
        // z: a with the low 13 mantissa bits cleared, so -z² is exact and exp(-a²) = exp(-z²)·exp((z - a)(z + a))
        let z = bitcast<f32>(bitcast<u32>(a) & 0xffffe000u);
        y = 1.0 - exp(-z * z - 0.5625) * exp((z - a) * (z + a) + r / bs) / a;
    } else {
        y = 1.0; // |x| >= 6 (±inf included): 1 - 2^-120 rounds to 1
    }
    return select(y, -y, neg);
}

const FRAC_1_SQRT_2: f32 = 0.70710678118654752;
const FRAC_1_SQRT_2PI: f32 = 0.39894228040143268;

// One thread per element, grid-stride: out = 0.5·x·(1 + erf(x/√2)).
@compute @workgroup_size(64)
fn gelu_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * nwg.y * WG;
    for (var i = flat_workgroup(wg, nwg) * WG + tid; i < P.len; i += stride) {
        let x = inp[i];
        out[i] = 0.5 * x * (1.0 + erf_f32(x * FRAC_1_SQRT_2));
    }
}

// One thread per element, grid-stride: dinp += dout·(Φ(x) + x·φ(x)).
@compute @workgroup_size(64)
fn gelu_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * nwg.y * WG;
    for (var i = flat_workgroup(wg, nwg) * WG + tid; i < P.len; i += stride) {
        let x = inp[i];
        let cdf = 0.5 * (1.0 + erf_f32(x * FRAC_1_SQRT_2));
        dinp[i] += dout[i] * (cdf + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// multi-head self-attention core

// Offset of q (which = 0), k (1) or v (2) of token t of sample b, head h, in qkv [B, T, 3, H, D].
fn qkv_at(b: u32, t: u32, which: u32, h: u32) -> u32 {
    return (b * P.t + t) * 3u * P.c + which * P.c + h * P.head_dim;
}

@compute @workgroup_size(64)
fn attention_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = flat_workgroup(wg, nwg); // (b*H + h)*T + i
    if (id >= P.b * P.heads * P.t) {
        return;
    }
    let i = id % P.t;
    let h = (id / P.t) % P.heads;
    let b = id / (P.t * P.heads);
    let row = id * P.t; // att[b, h, i, :]
    let q = qkv_at(b, i, 0u, h);
    // scores s_j = scale·q_i·k_j, threads over j
    var mx = -3.402823466e+38;
    for (var j = tid; j < P.t; j += WG) {
        let k = qkv_at(b, j, 1u, h);
        var acc = 0.0;
        for (var d = 0u; d < P.head_dim; d += 1u) {
            acc += inp[q + d] * inp[k + d];
        }
        let sc = acc * P.scale;
        att[row + j] = sc;
        mx = max(mx, sc);
    }
    red_a[tid] = mx;
    mx = max_a(tid, WG);
    var sum = 0.0;
    for (var j = tid; j < P.t; j += WG) {
        let e = exp(att[row + j] - mx);
        att[row + j] = e;
        sum += e;
    }
    red_a[tid] = sum;
    let inv = 1.0 / sum_a(tid, WG);
    for (var j = tid; j < P.t; j += WG) {
        att[row + j] *= inv;
    }
    // the row is read by every thread below
    storageBarrier();
    workgroupBarrier();
    let o = (b * P.t + i) * P.c + h * P.head_dim;
    for (var d = tid; d < P.head_dim; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j < P.t; j += 1u) {
            acc += att[row + j] * inp[qkv_at(b, j, 2u, h) + d];
        }
        out[o + d] = acc;
    }
}

// dqkv at binding `dinp`; qkv at `inp`; att, ds, dout.
@compute @workgroup_size(64)
fn attention_backward_dq(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = flat_workgroup(wg, nwg); // (b*H + h)*T + i
    if (id >= P.b * P.heads * P.t) {
        return;
    }
    let i = id % P.t;
    let h = (id / P.t) % P.heads;
    let b = id / (P.t * P.heads);
    let row = id * P.t;
    let dy = (b * P.t + i) * P.c + h * P.head_dim; // dout_i
    // dp_j = dout_i·v_j into ds, and Σ_j p_ij dp_j
    var acc = 0.0;
    for (var j = tid; j < P.t; j += WG) {
        let v = qkv_at(b, j, 2u, h);
        var dp = 0.0;
        for (var d = 0u; d < P.head_dim; d += 1u) {
            dp += dout[dy + d] * inp[v + d];
        }
        ds[row + j] = dp;
        acc += att[row + j] * dp;
    }
    red_a[tid] = acc;
    let rs = sum_a(tid, WG);
    for (var j = tid; j < P.t; j += WG) {
        ds[row + j] = att[row + j] * (ds[row + j] - rs);
    }
    storageBarrier();
    workgroupBarrier();
    let dq = qkv_at(b, i, 0u, h);
    for (var d = tid; d < P.head_dim; d += WG) {
        var g = 0.0;
        for (var j = 0u; j < P.t; j += 1u) {
            g += ds[row + j] * inp[qkv_at(b, j, 1u, h) + d];
        }
        dinp[dq + d] += P.scale * g;
    }
}

@compute @workgroup_size(64)
fn attention_backward_dkv(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = flat_workgroup(wg, nwg); // (b*H + h)*T + j
    if (id >= P.b * P.heads * P.t) {
        return;
    }
    let j = id % P.t;
    let h = (id / P.t) % P.heads;
    let b = id / (P.t * P.heads);
    let tile = (id - j) * P.t; // att[b, h, 0, 0]
    let dk = qkv_at(b, j, 1u, h);
    let dv = qkv_at(b, j, 2u, h);
    for (var d = tid; d < P.head_dim; d += WG) {
        var gk = 0.0;
        var gv = 0.0;
        for (var i = 0u; i < P.t; i += 1u) {
            gk += ds[tile + i * P.t + j] * inp[qkv_at(b, i, 0u, h) + d];
            gv += att[tile + i * P.t + j] * dout[(b * P.t + i) * P.c + h * P.head_dim + d];
        }
        dinp[dk + d] += P.scale * gk;
        dinp[dv + d] += gv;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// patch embedding (im2col): images [B, C, H, W] -> cols [B*P, C*p*p], row b*P + py*(W/p) + px,
// column (ci*p + ky)*p + kx

// One thread per element of cols: cols = images gathered.
@compute @workgroup_size(64)
fn patch_im2col(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_workgroup(wg, nwg) * WG + tid;
    if (e >= P.len) {
        return;
    }
    let p = P.patch_size;
    let row = e / P.cols;
    let col = e % P.cols;
    let b = row / P.patches;
    let m = row % P.patches;
    let gw = P.w / p;
    let ci = col / (p * p);
    let ky = (col / p) % p;
    let kx = col % p;
    out[e] = inp[((b * P.img_c + ci) * P.h + (m / gw) * p + ky) * P.w + (m % gw) * p + kx];
}

// One thread per element of dimages (binding dinp): dimages += the one dcols (binding dout) element it came from.
@compute @workgroup_size(64)
fn patch_im2col_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_workgroup(wg, nwg) * WG + tid;
    if (e >= P.len) {
        return;
    }
    let p = P.patch_size;
    let x = e % P.w;
    let y = (e / P.w) % P.h;
    let ci = (e / (P.w * P.h)) % P.img_c;
    let b = e / (P.w * P.h * P.img_c);
    let m = (y / p) * (P.w / p) + x / p;
    dinp[e] += dout[(b * P.patches + m) * P.cols + (ci * p + y % p) * p + x % p];
}

// ---------------------------------------------------------------------------------------------------------------
// token assembly and the cls feature: tokens [B, T, C], token 0 the cls token, patches [B*P, C] (P = T - 1)

// One thread per element of tokens (binding out): cls or patch row, plus pos[t].
@compute @workgroup_size(64)
fn tokens_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_workgroup(wg, nwg) * WG + tid;
    if (e >= P.len) {
        return;
    }
    let c = e % P.c;
    let t = (e / P.c) % P.t;
    let b = e / (P.c * P.t);
    var x: f32;
    if (t == 0u) {
        x = cls[c];
    } else {
        x = inp[(b * P.patches + t - 1u) * P.c + c];
    }
    out[e] = x + pos[t * P.c + c];
}

// One thread per element of dpatches (binding dinp): dpatches[b*P + p] += dtokens[b, 1 + p].
@compute @workgroup_size(64)
fn tokens_backward_patches(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_workgroup(wg, nwg) * WG + tid;
    if (e >= P.len) {
        return;
    }
    let c = e % P.c;
    let row = e / P.c;
    let b = row / P.patches;
    let p = row % P.patches;
    dinp[e] += dout[(b * P.t + 1u + p) * P.c + c];
}

// One thread per c (binding dinp = dcls [C]): dcls[c] += dtokens[b, 0, c] for b in order 0..B.
@compute @workgroup_size(64)
fn tokens_backward_cls(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_workgroup(wg, nwg) * WG + tid;
    if (c >= P.c) {
        return;
    }
    var acc = dinp[c];
    for (var b = 0u; b < P.b; b += 1u) {
        acc += dout[b * P.t * P.c + c];
    }
    dinp[c] = acc;
}

// One thread per element of out [B, C]: out[b, c] = tokens[b, 0, c].
@compute @workgroup_size(64)
fn cls_select_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_workgroup(wg, nwg) * WG + tid;
    if (e >= P.len) {
        return;
    }
    out[e] = inp[(e / P.c) * P.t * P.c + e % P.c];
}

// One thread per element of dout [B, C]: dtokens[b, 0, c] (binding dinp) += dout[b, c].
@compute @workgroup_size(64)
fn cls_select_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_workgroup(wg, nwg) * WG + tid;
    if (e >= P.len) {
        return;
    }
    dinp[(e / P.c) * P.t * P.c + e % P.c] += dout[e];
}

// ---------------------------------------------------------------------------------------------------------------
// residual add backward

// One thread per element, grid-stride: da (binding dinp) += dout, db (binding dinp2) += dout.
@compute @workgroup_size(64)
fn add_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * nwg.y * WG;
    for (var i = flat_workgroup(wg, nwg) * WG + tid; i < P.len; i += stride) {
        let g = dout[i];
        dinp[i] += g;
        dinp2[i] += g;
    }
}
