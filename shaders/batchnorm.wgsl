// Batch normalisation over [N, C, HW] with G groups (sample n in group n % G, statistic (g, c) at g*C + c), as
// src/ops/batchnorm/cpu.rs: statistics (one workgroup per (group, channel), one pass: per-invocation shifted sums
// merged as moments over the workgroup), running-statistic update, forward apply (train: batch statistics; eval:
// running statistics) with epilogues none / relu / add+relu, and backward (per-statistic sums, per-channel
// coefficients, element-wise dx).
// Optional tensors (gamma, beta, identity, dgamma, dbeta, didentity) are bound to dummies when absent and
// gated by FLAG_* bits in P.flags.

const WG: u32 = 256u;
const FLAG_GAMMA: u32 = 1u;     // gamma given (else 1)
const FLAG_BETA: u32 = 2u;      // beta given (else 0)
const FLAG_RELU: u32 = 4u;      // ReLU epilogue (backward: dy masked by out > 0)
const FLAG_ADD: u32 = 8u;       // + identity before the ReLU (backward: didentity += dy)
const FLAG_EVAL: u32 = 16u;     // apply: mean/rstd bindings hold running_mean/running_var [C]
const FLAG_DGAMMA: u32 = 32u;   // dgamma given
const FLAG_DBETA: u32 = 64u;    // dbeta given

struct BatchNormParams {
    n: u32,
    c: u32,
    hw: u32,
    groups: u32,
    count: u32,    // M = (N/G)*HW elements per statistic
    len: u32,      // N*C*HW
    flags: u32,
    _pad: u32,
    eps: f32,
    momentum: f32,
    _pad2: vec2<f32>,
}

@group(0) @binding(0) var<uniform> P: BatchNormParams;
@group(0) @binding(1) var<storage, read_write> inp: array<f32>;                  // [N, C, HW]
@group(0) @binding(2) var<storage, read_write> out: array<f32>;            // [N, C, HW] (forward)
@group(0) @binding(3) var<storage, read_write> mean: array<f32>;           // [G, C] (eval apply: running_mean [C])
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;           // [G, C] (eval apply: running_var [C])
@group(0) @binding(5) var<storage, read_write> var_gc: array<f32>;         // biased variance scratch [G, C]
@group(0) @binding(6) var<storage, read_write> running_mean: array<f32>;   // [C]
@group(0) @binding(7) var<storage, read_write> running_var: array<f32>;    // [C]
@group(0) @binding(8) var<storage, read_write> gamma: array<f32>;                // [C]
@group(0) @binding(9) var<storage, read_write> beta: array<f32>;                 // [C]
@group(0) @binding(10) var<storage, read_write> identity: array<f32>;            // [N, C, HW]
@group(0) @binding(11) var<storage, read_write> dout: array<f32>;                // [N, C, HW]
@group(0) @binding(12) var<storage, read_write> y: array<f32>;                   // forward output [N, C, HW]
@group(0) @binding(13) var<storage, read_write> sums: array<f32>;          // [G, C, 2]: Σdy, Σdy·x̂
@group(0) @binding(14) var<storage, read_write> coef: array<f32>;          // [G, C, 3]: k1, k2, k3
@group(0) @binding(15) var<storage, read_write> dinp: array<f32>;          // [N, C, HW]
@group(0) @binding(16) var<storage, read_write> didentity: array<f32>;     // [N, C, HW]
@group(0) @binding(17) var<storage, read_write> dgamma: array<f32>;        // [C]
@group(0) @binding(18) var<storage, read_write> dbeta: array<f32>;         // [C]
@group(0) @binding(19) var<storage, read_write> mean_in: array<f32>;             // [G, C] saved by the forward
@group(0) @binding(20) var<storage, read_write> rstd_in: array<f32>;             // [G, C] saved by the forward

// Offset in [N, C, HW] of element e (0..M) of statistic gc = (g, ch): sample g + (e / HW)*G, pixel e % HW.
fn stat_offset(gc: u32, e: u32) -> u32 {
    let nn = gc / P.c + (e / P.hw) * P.groups;
    return (nn * P.c + gc % P.c) * P.hw + e % P.hw;
}

// The statistic (g, ch) at g*C + ch of element i of [N, C, HW]: sample i / (C*HW) in group (i / (C*HW)) % G.
fn stat_of(i: u32) -> u32 {
    return ((i / (P.hw * P.c)) % P.groups) * P.c + (i / P.hw) % P.c;
}

// The moments (count, mean, m2: the sum of squared deviations) of each invocation's elements, for the tree.
var<workgroup> red_m: array<vec3<f32>, 256>;

// The moments of the union of two sets (Chan, Golub and LeVeque's pairwise update): the means' difference d
// weighted by the counts, m2 = m2_a + m2_b + d² n_a n_b / n. An empty set is the identity.
fn merge_moments(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
    if (b.x == 0.0) {
        return a;
    }
    if (a.x == 0.0) {
        return b;
    }
    let n = a.x + b.x;
    let d = b.y - a.y;
    let wb = b.x / n;
    return vec3<f32>(n, a.y + d * wb, a.z + b.z + d * d * a.x * wb);
}

// The moments of this invocation's elements e = tid, tid + WG, ... < count of statistic gc, in one pass, their mean
// relative to `base` (the statistic's first element: the merges then subtract means of the values' spread, not of
// their magnitude). The sums are of x - k, k the invocation's first element, so that s2 - s1² / n cancels nothing
// unless k lies far off the invocation's others.
fn thread_moments(gc: u32, tid: u32, base: f32) -> vec3<f32> {
    var k = 0.0;
    if (tid < P.count) {
        k = inp[stat_offset(gc, tid)];
    }
    var s1 = 0.0;
    var s2 = 0.0;
    var n = 0.0;
    for (var e = tid; e < P.count; e += WG) {
        let d = inp[stat_offset(gc, e)] - k;
        s1 += d;
        s2 += d * d;
        n += 1.0;
    }
    if (n == 0.0) {
        return vec3<f32>(0.0, 0.0, 0.0);
    }
    return vec3<f32>(n, (k - base) + s1 / n, max(s2 - s1 * (s1 / n), 0.0));
}

// The moments over the workgroup's WG invocations, returned to every invocation: a tree, red_m[t] merged with
// red_m[t + s] for s = WG/2, ..., 1 (kernels/batchnorm.cu merges warps by butterflies, then in order: the same set,
// other roundings).
fn tree_moments(tid: u32, m: vec3<f32>) -> vec3<f32> {
    red_m[tid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (tid < s) {
            red_m[tid] = merge_moments(red_m[tid], red_m[tid + s]);
        }
        workgroupBarrier();
    }
    return red_m[0];
}

// One workgroup per statistic (g, c), one pass over its M elements (thread_moments, tree_moments); writes mean, rstd
// and the biased variance m2 / M.
@compute @workgroup_size(256)
fn bn_stats(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let gc = flat_block(wg, nwg);
    if (gc >= P.groups * P.c) {
        return;
    }
    let base = inp[stat_offset(gc, 0u)];
    let m = tree_moments(tid, thread_moments(gc, tid, base));
    let v = m.z / f32(P.count);
    if (tid == 0u) {
        mean[gc] = base + m.y;
        rstd[gc] = 1.0 / sqrt(v + P.eps);
        var_gc[gc] = v;
    }
}

// One thread per channel: running = (1 - m) running + m mean_g(stat), variance unbiased by M/(M-1).
@compute @workgroup_size(256)
fn bn_running(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ch = gid.x;
    if (ch >= P.c) {
        return;
    }
    var mu = 0.0;
    var v = 0.0;
    for (var g = 0u; g < P.groups; g += 1u) {
        mu += mean[g * P.c + ch];
        v += var_gc[g * P.c + ch];
    }
    let inv_g = 1.0 / f32(P.groups);
    let unbias = f32(P.count) / f32(P.count - 1u);
    let m = P.momentum;
    running_mean[ch] = (1.0 - m) * running_mean[ch] + m * mu * inv_g;
    running_var[ch] = (1.0 - m) * running_var[ch] + m * v * inv_g * unbias;
}

// One thread per element: out = (x - mean)·rstd·gamma + beta (+ identity) (then ReLU).
@compute @workgroup_size(256)
fn bn_apply(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_thread(tid, wg, nwg, WG);
    if (i >= P.len) {
        return;
    }
    let ch = (i / P.hw) % P.c;
    var mu: f32;
    var r: f32;
    if ((P.flags & FLAG_EVAL) != 0u) {
        mu = mean[ch];
        r = 1.0 / sqrt(rstd[ch] + P.eps);
    } else {
        let gc = stat_of(i);
        mu = mean[gc];
        r = rstd[gc];
    }
    var gm = 1.0;
    if ((P.flags & FLAG_GAMMA) != 0u) {
        gm = gamma[ch];
    }
    var bt = 0.0;
    if ((P.flags & FLAG_BETA) != 0u) {
        bt = beta[ch];
    }
    let a = gm * r;
    var v = inp[i] * a + (bt - mu * a);
    if ((P.flags & FLAG_ADD) != 0u) {
        v += identity[i];
    }
    if ((P.flags & FLAG_RELU) != 0u) {
        v = select(v, 0.0, v < 0.0); // NaN passes, as in torch
    }
    out[i] = v;
}

fn masked_dy(i: u32) -> f32 {
    let d = dout[i];
    if ((P.flags & FLAG_RELU) != 0u) {
        return select(0.0, d, y[i] > 0.0);
    }
    return d;
}

// One workgroup per statistic (g, c): Σ dy and Σ dy·x̂ over its M elements.
@compute @workgroup_size(256)
fn bn_backward_sums(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let gc = flat_block(wg, nwg);
    if (gc >= P.groups * P.c) {
        return;
    }
    let mu = mean_in[gc];
    var a = 0.0;
    var b = 0.0;
    for (var e = tid; e < P.count; e += WG) {
        let o = stat_offset(gc, e);
        let d = masked_dy(o);
        a += d;
        b += d * (inp[o] - mu);
    }
    let ab = tree_sum2(tid, vec2<f32>(a, b), WG);
    if (tid == 0u) {
        sums[gc * 2u] = ab.x;
        sums[gc * 2u + 1u] = ab.y * rstd_in[gc];
    }
}

// One thread per channel: dx = k1·dy + k2·(x - mean) + k3 per (g, c); dgamma += Σ_g Σdy·x̂, dbeta += Σ_g Σdy.
@compute @workgroup_size(256)
fn bn_backward_coef(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ch = gid.x;
    if (ch >= P.c) {
        return;
    }
    var gm = 1.0;
    if ((P.flags & FLAG_GAMMA) != 0u) {
        gm = gamma[ch];
    }
    let inv_m = 1.0 / f32(P.count);
    var sg = 0.0;
    var sb = 0.0;
    for (var g = 0u; g < P.groups; g += 1u) {
        let gc = g * P.c + ch;
        let sdy = sums[gc * 2u];
        let sdyx = sums[gc * 2u + 1u];
        let r = rstd_in[gc];
        let a = gm * r;
        coef[gc * 3u] = a;
        coef[gc * 3u + 1u] = -a * r * sdyx * inv_m;
        coef[gc * 3u + 2u] = -a * sdy * inv_m;
        sg += sdyx;
        sb += sdy;
    }
    if ((P.flags & FLAG_DGAMMA) != 0u) {
        dgamma[ch] += sg;
    }
    if ((P.flags & FLAG_DBETA) != 0u) {
        dbeta[ch] += sb;
    }
}

// One thread per element: dinp += k1·dy + k2·(x - mean) + k3; after add+relu, didentity += dy.
@compute @workgroup_size(256)
fn bn_backward_dx(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_thread(tid, wg, nwg, WG);
    if (i >= P.len) {
        return;
    }
    let gc = stat_of(i);
    let d = masked_dy(i);
    dinp[i] += coef[gc * 3u] * d + coef[gc * 3u + 1u] * (inp[i] - mean_in[gc]) + coef[gc * 3u + 2u];
    if ((P.flags & FLAG_ADD) != 0u) {
        didentity[i] += d;
    }
}
