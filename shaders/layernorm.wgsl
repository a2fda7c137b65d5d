// Layer norm over the last dimension, as src/ops/layernorm/cpu.rs: forward (mean, then the biased variance from
// the row again: two passes), backward dx, backward dgamma/dbeta. Mirrors kernels/layernorm.cu: same names, same
// work split. Every backward accumulates (dinp += ...) and is deterministic (sums over rows run in index order).
// Host code: src/ops/layernorm/wgpu.rs.
//
//   layernorm_forward          one workgroup (128) per row r of inp [R, C]: mean, then biased variance (two-pass
//                              tree reductions, no subgroup ops); out[r, :], mean[r], rstd[r] = 1/sqrt(var + eps)
//   layernorm_backward_dx      one workgroup (128) per row: Σ dout·gamma, Σ dout·gamma·x̂, then
//                              dinp[r, c] += rstd·(dout·gamma - mean1 - x̂·mean2)
//   layernorm_backward_params  one thread per column c (64 per workgroup), rows in order 0..R:
//                              dgamma[c] += Σ_r dout·x̂, dbeta[c] += Σ_r dout
//
// Grids: the host splits workgroup counts over x and y (each <= 65535); kernels flatten wg.x + wg.y * nwg.x and
// return when past the end (a workgroup-uniform condition, so the barriers stay in uniform control flow).

const WG_LN: u32 = 128u; // row kernels
const WG: u32 = 64u;     // column kernel

struct LayerNormParams {
    rows: u32, // R = B*T rows
    c: u32,    // features per row
    eps: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> P: LayerNormParams;
// Every storage binding is read_write: two disjoint views of one buffer may be input and output of one dispatch.
@group(0) @binding(1) var<storage, read_write> out: array<f32>;     // [R, C]
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;    // [R]
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;    // [R]
@group(0) @binding(4) var<storage, read_write> inp: array<f32>;     // [R, C]
@group(0) @binding(5) var<storage, read_write> gamma: array<f32>;   // [C]
@group(0) @binding(6) var<storage, read_write> beta: array<f32>;    // [C]
@group(0) @binding(7) var<storage, read_write> dinp: array<f32>;    // [R, C], accumulated
@group(0) @binding(8) var<storage, read_write> dout: array<f32>;    // [R, C]
@group(0) @binding(9) var<storage, read_write> dgamma: array<f32>;  // [C], accumulated
@group(0) @binding(10) var<storage, read_write> dbeta: array<f32>;  // [C], accumulated

@compute @workgroup_size(128)
fn layernorm_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_block(wg, nwg);
    if (r >= P.rows) {
        return;
    }
    let base = r * P.c;
    var s = 0.0;
    for (var c = tid; c < P.c; c += WG_LN) {
        s += inp[base + c];
    }
    let mu = tree_sum(tid, s, WG_LN) / f32(P.c);
    var ss = 0.0;
    for (var c = tid; c < P.c; c += WG_LN) {
        let d = inp[base + c] - mu;
        ss += d * d;
    }
    let rs = 1.0 / sqrt(tree_sum(tid, ss, WG_LN) / f32(P.c) + P.eps);
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
    let r = flat_block(wg, nwg);
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
    let m = tree_sum2(tid, vec2<f32>(sg, sgx), WG_LN) / f32(P.c);
    let m1 = m.x;
    let m2 = m.y;
    for (var c = tid; c < P.c; c += WG_LN) {
        let xh = (inp[base + c] - mu) * rs;
        dinp[base + c] += rs * (dout[base + c] * gamma[c] - m1 - xh * m2);
    }
}

@compute @workgroup_size(64)
fn layernorm_backward_params(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_thread(tid, wg, nwg, WG);
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
