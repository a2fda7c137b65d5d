// Element-wise layers, as src/ops/eltwise/cpu.rs: ReLU forward and backward, the exact-erf GELU forward and
// backward, and the residual add forward and backward. Mirrors kernels/eltwise.cu: same names, one thread per
// element. Host code: src/ops/eltwise/wgpu.rs.

const WG: u32 = 256u;

struct EltwiseParams {
    len: u32, // elements
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: EltwiseParams;
// Every storage binding is read_write: two disjoint views of one buffer may be input and output of one dispatch.
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // forward output (relu_backward: the forward's output)
@group(0) @binding(2) var<storage, read_write> inp: array<f32>;  // forward input
@group(0) @binding(3) var<storage, read_write> dinp: array<f32>; // accumulated input gradient
@group(0) @binding(4) var<storage, read_write> dout: array<f32>; // upstream gradient
@group(0) @binding(5) var<storage, read_write> a: array<f32>;    // add: first operand
@group(0) @binding(6) var<storage, read_write> b: array<f32>;    // add: second operand
@group(0) @binding(7) var<storage, read_write> da: array<f32>;   // add backward: accumulated
@group(0) @binding(8) var<storage, read_write> db: array<f32>;   // add backward: accumulated

// out = max(inp, 0).
@compute @workgroup_size(256)
fn relu_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_thread(tid, wg, nwg, WG);
    if (i >= P.len) {
        return;
    }
    out[i] = select(inp[i], 0.0, inp[i] < 0.0); // NaN passes, as in torch
}

// dinp += dout · (out > 0), with out the forward's output.
@compute @workgroup_size(256)
fn relu_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_thread(tid, wg, nwg, WG);
    if (i >= P.len) {
        return;
    }
    dinp[i] += select(0.0, dout[i], out[i] > 0.0);
}

// erf in f32: FreeBSD's s_erff.c (Sun, 1993; musl's and the Rust libm crate's erff; the CPU's GELU uses its own
// branch-free fast_erf, src/ops/fastmath.rs, within 1.4e-7 of erf),
// the same rational approximations on |x| < 0.84375, [0.84375, 1.25), [1.25, 1/0.35), [1/0.35, 6), and ±1 beyond.
// kernels/eltwise.cu carries the same function. Max abs error against f64 erf: see the eltwise tests (erf_accuracy).
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

// out = 0.5·x·(1 + erf(x/√2)), one thread per element.
@compute @workgroup_size(256)
fn gelu_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_thread(tid, wg, nwg, WG);
    if (i >= P.len) {
        return;
    }
    let x = inp[i];
    out[i] = 0.5 * x * (1.0 + erf_f32(x * FRAC_1_SQRT_2));
}

// dinp += dout·(Φ(x) + x·φ(x)), one thread per element.
@compute @workgroup_size(256)
fn gelu_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_thread(tid, wg, nwg, WG);
    if (i >= P.len) {
        return;
    }
    let x = inp[i];
    let cdf = 0.5 * (1.0 + erf_f32(x * FRAC_1_SQRT_2));
    dinp[i] += dout[i] * (cdf + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x));
}

// out = a + b.
@compute @workgroup_size(256)
fn add_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_thread(tid, wg, nwg, WG);
    if (i >= P.len) {
        return;
    }
    out[i] = a[i] + b[i];
}

// da += dout, db += dout, one thread per element.
@compute @workgroup_size(256)
fn add_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_thread(tid, wg, nwg, WG);
    if (i >= P.len) {
        return;
    }
    let g = dout[i];
    da[i] += g;
    db[i] += g;
}
