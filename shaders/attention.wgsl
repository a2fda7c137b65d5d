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

// Workgroup id = (b*H + h)*T + row of a grid over (sample b, head h, query or key row): row, h and b.
struct HeadRow {
    row: u32,
    h: u32,
    b: u32,
}

fn head_row(id: u32) -> HeadRow {
    return HeadRow(id % P.t, (id / P.t) % P.heads, id / (P.t * P.heads));
}

// Offset of q (which = 0), k (1) or v (2) of token t of sample b, head h, in qkv [B, T, 3, H, D].
fn qkv_at(b: u32, t: u32, which: u32, h: u32) -> u32 {
    return (b * P.t + t) * 3u * P.c + which * P.c + h * P.head_dim;
}

// Offset of head h of token t of sample b in out / dout [B, T, C].
fn out_at(b: u32, t: u32, h: u32) -> u32 {
    return (b * P.t + t) * P.c + h * P.head_dim;
}

@compute @workgroup_size(64)
fn attention_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = flat_block(wg, nwg); // (b*H + h)*T + i
    if (id >= P.b * P.heads * P.t) {
        return;
    }
    let r = head_row(id); // query i = r.row
    let row = id * P.t; // att[b, h, i, :]
    let q = qkv_at(r.b, r.row, 0u, r.h);
    // scores s_j = scale·q_i·k_j, threads over j
    var mx = -3.402823466e+38;
    for (var j = tid; j < P.t; j += WG) {
        let k = qkv_at(r.b, j, 1u, r.h);
        var acc = 0.0;
        for (var d = 0u; d < P.head_dim; d += 1u) {
            acc += qkv[q + d] * qkv[k + d];
        }
        let sc = acc * P.scale;
        att[row + j] = sc;
        mx = max(mx, sc);
    }
    mx = tree_max(tid, mx, WG);
    var sum = 0.0;
    for (var j = tid; j < P.t; j += WG) {
        let e = exp(att[row + j] - mx);
        att[row + j] = e;
        sum += e;
    }
    let inv = 1.0 / tree_sum(tid, sum, WG);
    for (var j = tid; j < P.t; j += WG) {
        att[row + j] *= inv;
    }
    // the row is read by every thread below
    storageBarrier();
    workgroupBarrier();
    let o = out_at(r.b, r.row, r.h);
    for (var d = tid; d < P.head_dim; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j < P.t; j += 1u) {
            acc += att[row + j] * qkv[qkv_at(r.b, j, 2u, r.h) + d];
        }
        out[o + d] = acc;
    }
}

@compute @workgroup_size(64)
fn attention_backward_dq(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = flat_block(wg, nwg); // (b*H + h)*T + i
    if (id >= P.b * P.heads * P.t) {
        return;
    }
    let r = head_row(id); // query i = r.row
    let row = id * P.t;
    let dy = out_at(r.b, r.row, r.h); // dout_i
    // dp_j = dout_i·v_j into ds, and Σ_j p_ij dp_j
    var acc = 0.0;
    for (var j = tid; j < P.t; j += WG) {
        let v = qkv_at(r.b, j, 2u, r.h);
        var dp = 0.0;
        for (var d = 0u; d < P.head_dim; d += 1u) {
            dp += dout[dy + d] * qkv[v + d];
        }
        ds[row + j] = dp;
        acc += att[row + j] * dp;
    }
    let rs = tree_sum(tid, acc, WG);
    for (var j = tid; j < P.t; j += WG) {
        ds[row + j] = att[row + j] * (ds[row + j] - rs);
    }
    storageBarrier();
    workgroupBarrier();
    let dq = qkv_at(r.b, r.row, 0u, r.h);
    for (var d = tid; d < P.head_dim; d += WG) {
        var g = 0.0;
        for (var j = 0u; j < P.t; j += 1u) {
            g += ds[row + j] * qkv[qkv_at(r.b, j, 1u, r.h) + d];
        }
        dqkv[dq + d] += P.scale * g;
    }
}

@compute @workgroup_size(64)
fn attention_backward_dkv(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = flat_block(wg, nwg); // (b*H + h)*T + j
    if (id >= P.b * P.heads * P.t) {
        return;
    }
    let r = head_row(id);
    let j = r.row;
    let tile = (id - j) * P.t; // att[b, h, 0, 0]
    let dk = qkv_at(r.b, j, 1u, r.h);
    let dv = qkv_at(r.b, j, 2u, r.h);
    for (var d = tid; d < P.head_dim; d += WG) {
        var gk = 0.0;
        var gv = 0.0;
        for (var i = 0u; i < P.t; i += 1u) {
            gk += ds[tile + i * P.t + j] * qkv[qkv_at(r.b, i, 0u, r.h) + d];
            gv += att[tile + i * P.t + j] * dout[out_at(r.b, i, r.h) + d];
        }
        dqkv[dk + d] += P.scale * gk;
        dqkv[dv + d] += gv;
    }
}
