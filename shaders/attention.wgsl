// The attention core of a ViT block, as src/ops/attention/cpu.rs: scores, softmax and P·V in one workgroup per query
// row; the backward in two dispatches: dq with the ds scratch, then dk/dv per key row. Mirrors
// kernels/attention.cu: same names, same work split. Every backward accumulates (+=) and is deterministic (no
// atomics: each workgroup owns what it writes; sums run in index order). Host code: src/ops/attention/wgpu.rs.
//
//   attention_forward          one workgroup (64) per (b, h, query i): scores into att[b, h, i, :], max and sum
//                              reductions, in-place softmax, barrier, out[b, i, h*D + d] = Σ_j p_j v_j[d]
//   attention_backward_dq      one workgroup (64) per (b, h, i): ds[b, h, i, j] = p_ij (dp_j - Σ_j p_ij dp_j),
//                              dp_j = dout_i · v_j; dq_i[d] += scale·Σ_j ds_ij k_j[d]
//   attention_backward_dkv     one workgroup (64) per (b, h, key j): dk_j[d] += scale·Σ_i ds_ij q_i[d],
//                              dv_j[d] += Σ_i p_ij dout_i[d]  (reads the ds written by attention_backward_dq)
//
// Grids: workgroup counts split over x and y (each <= 65535), flattened as wg.x + wg.y * nwg.x; workgroups past the
// end return (a workgroup-uniform condition, so the barriers stay in uniform control flow).
// qkv: [B, T, 3, H, D] (q at 0, k at C, v at 2C of each token's row of 3C, C = H*D); att, ds: [B, H, T, T].

const WG: u32 = 64u;

struct AttentionParams {
    b: u32,        // batch B
    t: u32,        // tokens T (cls included)
    c: u32,        // H*D
    heads: u32,    // H
    head_dim: u32, // D
    scale: f32,    // 1/sqrt(D)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: AttentionParams;
// Every storage binding is read_write: two disjoint views of one buffer may be input and output of one dispatch.
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // [B, T, C]
@group(0) @binding(2) var<storage, read_write> att: array<f32>;  // [B, H, T, T] probabilities
@group(0) @binding(3) var<storage, read_write> qkv: array<f32>;  // [B, T, 3C]
@group(0) @binding(4) var<storage, read_write> dqkv: array<f32>; // [B, T, 3C], accumulated
@group(0) @binding(5) var<storage, read_write> ds: array<f32>;   // [B, H, T, T] scratch (backward)
@group(0) @binding(6) var<storage, read_write> dout: array<f32>; // [B, T, C]

var<workgroup> red_a: array<f32, 64>;

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
            acc += qkv[q + d] * qkv[k + d];
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
            acc += att[row + j] * qkv[qkv_at(b, j, 2u, h) + d];
        }
        out[o + d] = acc;
    }
}

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
            dp += dout[dy + d] * qkv[v + d];
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
            g += ds[row + j] * qkv[qkv_at(b, j, 1u, h) + d];
        }
        dqkv[dq + d] += P.scale * g;
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
            gk += ds[tile + i * P.t + j] * qkv[qkv_at(b, i, 0u, h) + d];
            gv += att[tile + i * P.t + j] * dout[(b * P.t + i) * P.c + h * P.head_dim + d];
        }
        dqkv[dk + d] += P.scale * gk;
        dqkv[dv + d] += gv;
    }
}
