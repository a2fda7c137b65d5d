// Fused contrastive kernels on rows normalised by normalize.wgsl: positive logits, materialised negative logits,
// and the streaming InfoNCE forward+backward (partial over key splits, combine, reduce). MoCo v3's in-batch loss
// runs the same streaming kernels with the normalised keys as the key set and the diagonal skipped.
// Mirrors kernels/infonce.cu: same names, same tiles (infonce_partial_c128 for C <= 128: 8-key tiles staged once,
// q̂ in registers; infonce_partial for larger C: TN x TK logit tiles staged in CC-channel chunks, 256 threads,
// ACC_MAX accumulators per thread). Bindings 1-3 are unused (they were the row normalisation's).
//
// The queue is [M, C] row-major (one key per row). QUEUE_DTYPE picks its storage at pipeline creation:
// 0 f32 (read through keys_f32), 1 f16 and 2 bf16 (read through keys_words, two elements per u32).

override QUEUE_DTYPE: u32 = 0u;

const TN: u32 = 32u;      // q rows per workgroup
const TK: u32 = 32u;      // keys per tile
const CC: u32 = 16u;      // channels per staged chunk
const WG: u32 = 256u;     // threads per workgroup
const ACC_GROUPS: u32 = 8u;   // threads sharing one row's accumulator (WG / TN)
const ACC_MAX: u32 = 32u; // accumulators per thread: one slice covers ACC_GROUPS * ACC_MAX = 256 channels
const MAX_SPLITS: u32 = 256u;
const NEG: f32 = -1.0e30; // "minus infinity": masked logits and empty states
const MASKED: f32 = -1.0e29;

struct InfoNceParams {
    n: u32,              // rows of q
    c: u32,              // feature dim
    m: u32,              // keys streamed (K, or N for v3)
    splits: u32,         // key splits
    keys_per_split: u32, // multiple of TK
    skip_diagonal: u32,  // 1: key j == row i is not streamed (v3)
    c_slice: u32,        // channels per accumulator slice (dispatch z = slices)
    rows: u32,           // rows of positive logits
    inv_t: f32,          // 1 / T
    grad_scale: f32,     // scale of dL/dq̂: loss_scale / (T N)
    loss_scale: f32,     // 1 for InfoNCE, 2T for v3
    _pad: u32,
}

struct Stats {
    loss: f32,
    top1: u32,
    top5: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: InfoNceParams;
@group(0) @binding(4) var<storage, read> q_hat: array<f32>;             // q̂: [N, C]
@group(0) @binding(5) var<storage, read> k_hat: array<f32>;             // k̂: [N, C] positives
@group(0) @binding(6) var<storage, read> keys_f32: array<f32>;          // keys: [M, C] (f32 storage)
@group(0) @binding(7) var<storage, read> keys_words: array<u32>;        // keys: [M, C] (16-bit storage)
@group(0) @binding(8) var<storage, read_write> partial: array<f32>;     // [splits, N, 3] states then [splits, N, C] acc
@group(0) @binding(9) var<storage, read_write> s_pos: array<f32>;       // positive logit * inv_t: [N]
@group(0) @binding(10) var<storage, read_write> dq: array<f32>;         // dq: [N, C]
@group(0) @binding(11) var<storage, read_write> row_loss: array<f32>;   // [N]
@group(0) @binding(12) var<storage, read_write> rank: array<u32>;       // [N]
@group(0) @binding(13) var<storage, read> q_inv_norm: array<f32>;       // [N]
@group(0) @binding(14) var<storage, read_write> stats: Stats;
@group(0) @binding(15) var<storage, read_write> l_neg: array<f32>;      // [N, M]
@group(0) @binding(16) var<storage, read> pos_logits: array<f32>;       // s_pos as input: [N]

fn load_key(idx: u32) -> f32 {
    if (QUEUE_DTYPE == 0u) {
        return keys_f32[idx];
    }
    let word = keys_words[idx >> 1u];
    let bits = select(word & 0xffffu, word >> 16u, (idx & 1u) == 1u);
    if (QUEUE_DTYPE == 1u) {
        return unpack2x16float(bits).x;
    }
    return bitcast<f32>(bits << 16u);
}

// s_pos[i] = (q̂_i · k̂_i) * inv_t; one thread per row.
@compute @workgroup_size(256)
fn positive_logits(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= P.n) {
        return;
    }
    var s = 0.0;
    for (var ch = 0u; ch < P.c; ch += 1u) {
        s += q_hat[i * P.c + ch] * k_hat[i * P.c + ch];
    }
    s_pos[i] = s * P.inv_t;
}

var<workgroup> q_tile: array<f32, 544>;   // [TN][CC+1]
var<workgroup> k_tile: array<f32, 1088>;  // [2*TK][CC+1] (negative_logits uses 64 keys)
var<workgroup> p_tile: array<f32, 1056>;  // [TN][TK+1]: logits, then probabilities
var<workgroup> row_scale: array<f32, 32>; // [TN]

// The key at row j, channel ch of keys [M, C], 0 for rows past j_end or channels past C.
fn key_or_zero(j: u32, j_end: u32, ch: u32) -> f32 {
    var v = 0.0;
    if (j < j_end && ch < P.c) {
        v = load_key(j * P.c + ch);
    }
    return v;
}

// q̂[i, ch], 0 for rows past N or channels past C.
fn q_or_zero(i: u32, ch: u32) -> f32 {
    return select(0.0, q_hat[i * P.c + ch], i < P.n && ch < P.c);
}

// acc + (q_tile[r, :] · k_tile[j + u, :])_u over one staged CC-channel chunk, u = 0..3 (both tiles [rows][CC + 1]),
// channels in order.
fn tile_dot4(acc: vec4<f32>, r: u32, j: u32) -> vec4<f32> {
    var a = acc;
    for (var cc = 0u; cc < CC; cc += 1u) {
        let qv = q_tile[r * (CC + 1u) + cc];
        a += qv * vec4<f32>(k_tile[(j + 0u) * (CC + 1u) + cc], k_tile[(j + 1u) * (CC + 1u) + cc],
                            k_tile[(j + 2u) * (CC + 1u) + cc], k_tile[(j + 3u) * (CC + 1u) + cc]);
    }
    return a;
}

// l_neg[i, j] = q̂_i · key_j: tiles of 16 rows x 64 keys, 4 outputs per thread.
@compute @workgroup_size(256)
fn negative_logits(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let j0 = wg.x * 64u;
    let i0 = wg.y * 16u;
    let r = tid / 16u;          // row in tile
    let jc = (tid % 16u) * 4u;  // first of 4 keys
    var acc = vec4<f32>(0.0);
    for (var c0 = 0u; c0 < P.c; c0 += CC) {
        q_tile[(tid / CC) * (CC + 1u) + tid % CC] = q_or_zero(i0 + tid / CC, c0 + tid % CC);
        for (var e = tid; e < 64u * CC; e += WG) {
            k_tile[(e / CC) * (CC + 1u) + e % CC] = key_or_zero(j0 + e / CC, P.m, c0 + e % CC);
        }
        workgroupBarrier();
        acc = tile_dot4(acc, r, jc);
        workgroupBarrier();
    }
    let gi = i0 + r;
    if (gi < P.n) {
        for (var u = 0u; u < 4u; u += 1u) {
            let gj = j0 + jc + u;
            if (gj < P.m) {
                l_neg[gi * P.m + gj] = acc[u];
            }
        }
    }
}

// One workgroup: rows [wg.x*TN, +TN) against keys of split wg.y, accumulator slice wg.z.
// Streams TK keys at a time: logits tile (staged in CC-channel chunks), online softmax per row,
// then acc[row, ch] = acc * scale + Σ_j p_j key_j[ch].
@compute @workgroup_size(256)
fn infonce_partial(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let row0 = wg.x * TN;
    let split = wg.y;
    let c0 = wg.z * P.c_slice;
    let c_end = min(c0 + P.c_slice, P.c);
    let j_begin = split * P.keys_per_split;
    let j_end = min(j_begin + P.keys_per_split, P.m);
    let sr = tid % TN;          // logit tile: row
    let sj = (tid / TN) * 4u;   // logit tile: first of 4 keys
    let ar = tid % TN;          // accumulator: row
    let ag = tid / TN;          // accumulator: channel group, channels c0 + ag + ACC_GROUPS*t
    var n_acc = 0u;
    if (c0 + ag < c_end) {
        n_acc = (c_end - c0 - ag + ACC_GROUPS - 1u) / ACC_GROUPS;
    }
    var acc: array<f32, 32>;
    for (var t = 0u; t < ACC_MAX; t += 1u) {
        acc[t] = 0.0;
    }
    var m_run = NEG;
    var l_run = 0.0;
    var rank_run = 0u;
    let my_row = min(row0 + sr, P.n - 1u);
    let spos = pos_logits[my_row];
    for (var jt = j_begin; jt < j_end; jt += TK) {
        var s = vec4<f32>(0.0);
        for (var cc0 = 0u; cc0 < P.c; cc0 += CC) {
            for (var e = tid; e < TN * CC; e += WG) {
                q_tile[(e / CC) * (CC + 1u) + e % CC] = q_or_zero(row0 + e / CC, cc0 + e % CC);
                k_tile[(e / CC) * (CC + 1u) + e % CC] = key_or_zero(jt + e / CC, j_end, cc0 + e % CC);
            }
            workgroupBarrier();
            s = tile_dot4(s, sr, sj);
            workgroupBarrier();
        }
        for (var u = 0u; u < 4u; u += 1u) {
            let j = jt + sj + u;
            var v = s[u] * P.inv_t;
            if (j >= j_end || (P.skip_diagonal == 1u && j == row0 + sr)) {
                v = NEG;
            }
            p_tile[sr * (TK + 1u) + sj + u] = v;
        }
        workgroupBarrier();
        if (tid < TN) {
            var bmax = NEG;
            for (var j = 0u; j < TK; j += 1u) {
                bmax = max(bmax, p_tile[tid * (TK + 1u) + j]);
            }
            let m_new = max(m_run, bmax);
            var sum = 0.0;
            for (var j = 0u; j < TK; j += 1u) {
                let v = p_tile[tid * (TK + 1u) + j];
                var e = 0.0;
                if (v > MASKED) {
                    e = exp(v - m_new);
                    rank_run += select(0u, 1u, v > spos);
                }
                p_tile[tid * (TK + 1u) + j] = e;
                sum += e;
            }
            var scale = 1.0;
            if (m_new > MASKED) {
                scale = select(exp(m_run - m_new), 0.0, m_run <= MASKED);
                m_run = m_new;
            }
            l_run = l_run * scale + sum;
            row_scale[tid] = scale;
        }
        workgroupBarrier();
        let sc = row_scale[ar];
        let j_count = min(TK, j_end - jt);
        for (var t = 0u; t < ACC_MAX; t += 1u) {
            if (t < n_acc) {
                acc[t] *= sc;
            }
        }
        for (var j = 0u; j < j_count; j += 1u) {
            let p = p_tile[ar * (TK + 1u) + j];
            let base = (jt + j) * P.c + c0 + ag;
            for (var t = 0u; t < ACC_MAX; t += 1u) {
                if (t < n_acc) {
                    acc[t] += p * load_key(base + ACC_GROUPS * t);
                }
            }
        }
        workgroupBarrier();
    }
    let i = row0 + ar;
    if (i < P.n) {
        let acc_base = P.splits * P.n * 3u + (split * P.n + i) * P.c + c0 + ag;
        for (var t = 0u; t < ACC_MAX; t += 1u) {
            if (t < n_acc) {
                partial[acc_base + ACC_GROUPS * t] = acc[t];
            }
        }
    }
    if (tid < TN && wg.z == 0u && row0 + tid < P.n) {
        let st = (split * P.n + row0 + tid) * 3u;
        partial[st] = m_run;
        partial[st + 1u] = l_run;
        partial[st + 2u] = bitcast<f32>(rank_run);
    }
}

// ---- infonce_partial_c128: the streaming pass for C <= 128, each key read from memory once ---------------------
//
// The job of infonce_partial (the same plan, grid, masks and [splits, N, 3] states / [splits, N, C] accumulators)
// for C <= 128, where a row's whole feature fits 8 invocations' registers:
//   - 256 invocations = TN = 32 rows x 8 lanes, a row's lanes adjacent (r = tid / 8, g = tid % 8). Lane g holds its
//     row's q̂ at channels g + 8u (u < RU = 16) for the whole key stream, and the accumulators of the same channels.
//   - A tile of RK = 8 keys x 128 channels is staged in workgroup memory once (key_res, 4 KB) and serves both
//     products: each lane's partial dot products with the 8 keys over its 16 channels, summed over the row's lanes
//     through workgroup memory (row_part, rows padded to 9 so that the lanes' reads of one key's partials hit
//     distinct banks: 9 KB), then acc += p K from the same tile.
//   - After the sum, lane g holds the logit of (row, key g); the online softmax runs on every invocation: each lane
//     reads its row's 8 logits (row_logits, 1 KB) and takes the max (the row's 8 lanes compute the same value), takes
//     the weight of its own key once (row_weights, 1 KB), then sums the row's 8 weights, and counts its own key
//     against the positive.
// 15 KB of workgroup memory, within the 16 KB every adapter offers. Subgroup sums could replace row_part where the
// adapter has SUBGROUP; not done yet. Mirrored by infonce_partial_c128_* in kernels/infonce.cu.
const RK: u32 = 8u;     // keys per tile
const RC: u32 = 128u;   // channels of the staged tile (C <= RC)
const RU: u32 = 16u;    // channels per lane (RC / 8)

var<workgroup> key_res: array<f32, 1024>;   // [RK][RC]: the key tile
var<workgroup> row_part: array<f32, 2304>;  // [TN][RK][9]: partial logits per lane, then the lanes' ranks
var<workgroup> row_logits: array<f32, 256>; // [TN][RK]
var<workgroup> row_weights: array<f32, 256>; // [TN][RK]: exp(logit - max)

@compute @workgroup_size(256)
fn infonce_partial_c128(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let r = tid / 8u;
    let g = tid % 8u;
    let row = wg.x * TN + r;
    let split = wg.y;
    let j_begin = split * P.keys_per_split;
    let j_end = min(j_begin + P.keys_per_split, P.m);
    var qr: array<f32, 16>;  // q̂[row, g + 8u]
    var acc: array<f32, 16>; // Σ_j p_j key_j[g + 8u]
    for (var u = 0u; u < RU; u += 1u) {
        qr[u] = q_or_zero(row, g + 8u * u);
        acc[u] = 0.0;
    }
    let spos = pos_logits[min(row, P.n - 1u)];
    var m_run = NEG;
    var l_run = 0.0;
    var rank_run = 0u;
    for (var jt = j_begin; jt < j_end; jt += RK) {
        for (var e = tid; e < RK * RC; e += WG) {
            key_res[e] = key_or_zero(jt + e / RC, j_end, e % RC);
        }
        workgroupBarrier();
        for (var j = 0u; j < RK; j += 1u) {
            var d = 0.0;
            for (var u = 0u; u < RU; u += 1u) {
                d += qr[u] * key_res[j * RC + g + 8u * u];
            }
            row_part[(r * RK + j) * 9u + g] = d;
        }
        workgroupBarrier();
        // lane g: the logit of key jt + g, its lanes' partials summed in lane order
        var v = 0.0;
        for (var l = 0u; l < 8u; l += 1u) {
            v += row_part[(r * RK + g) * 9u + l];
        }
        v *= P.inv_t;
        let j = jt + g;
        if (j >= j_end || (P.skip_diagonal == 1u && j == row)) {
            v = NEG;
        }
        if (v > MASKED && v > spos) {
            rank_run += 1u;
        }
        row_logits[r * RK + g] = v;
        workgroupBarrier();
        // every lane: the row's max over the tile (the same value on the row's 8 lanes) and the rescaling
        var tmax = NEG;
        for (var l = 0u; l < RK; l += 1u) {
            tmax = max(tmax, row_logits[r * RK + l]);
        }
        let m_new = max(m_run, tmax);
        var scale = 1.0;
        if (m_new > MASKED) {
            scale = select(exp(m_run - m_new), 0.0, m_run <= MASKED);
            m_run = m_new;
        }
        // lane g: the weight of its own key, once
        var p_own = 0.0;
        if (v > MASKED) {
            p_own = exp(v - m_run);
        }
        row_weights[r * RK + g] = p_own;
        workgroupBarrier();
        l_run *= scale;
        for (var u = 0u; u < RU; u += 1u) {
            acc[u] *= scale;
        }
        for (var l = 0u; l < RK; l += 1u) {
            let p = row_weights[r * RK + l];
            l_run += p;
            for (var u = 0u; u < RU; u += 1u) {
                acc[u] += p * key_res[l * RC + g + 8u * u];
            }
        }
        workgroupBarrier(); // the tile, partials, logits and weights are read before the next tile overwrites them
    }
    // each lane counted its own keys: the row's rank is the sum over its 8 lanes
    row_part[r * 9u + g] = bitcast<f32>(rank_run);
    workgroupBarrier();
    if (row < P.n) {
        if (g == 0u) {
            var rank_row = 0u;
            for (var l = 0u; l < 8u; l += 1u) {
                rank_row += bitcast<u32>(row_part[r * 9u + l]);
            }
            let st = (split * P.n + row) * 3u;
            partial[st] = m_run;
            partial[st + 1u] = l_run;
            partial[st + 2u] = bitcast<f32>(rank_row);
        }
        let acc_base = P.splits * P.n * 3u + (split * P.n + row) * P.c;
        for (var u = 0u; u < RU; u += 1u) {
            let ch = g + 8u * u;
            if (ch < P.c) {
                partial[acc_base + ch] = acc[u];
            }
        }
    }
}

var<workgroup> split_weight: array<f32, 256>; // [MAX_SPLITS]
var<workgroup> row_consts: array<f32, 4>;      // p0, 1/z, loss, unused

// One workgroup per row: merge the split states, add the positive logit, write row_loss, rank and
// dq = (I - q̂q̂ᵀ)/||q|| · grad_scale · (Σ_s w_s acc_s + (p0 - 1) k̂).
@compute @workgroup_size(256)
fn infonce_combine(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_block(wg, nwg);
    if (i >= P.n) {
        return;
    }
    let s0 = pos_logits[i];
    // every thread finds the max (splits are few), then the weights are filled in parallel
    var m = s0;
    for (var s = 0u; s < P.splits; s += 1u) {
        m = max(m, partial[(s * P.n + i) * 3u]);
    }
    for (var s = tid; s < P.splits; s += WG) {
        let ms = partial[(s * P.n + i) * 3u];
        split_weight[s] = select(exp(ms - m), 0.0, ms <= MASKED);
    }
    workgroupBarrier();
    if (tid == 0u) {
        var z = exp(s0 - m);
        var rk = 0u;
        for (var s = 0u; s < P.splits; s += 1u) {
            z += partial[(s * P.n + i) * 3u + 1u] * split_weight[s];
            rk += bitcast<u32>(partial[(s * P.n + i) * 3u + 2u]);
        }
        row_consts[0] = exp(s0 - m) / z;
        row_consts[1] = 1.0 / z;
        let loss = log(z) + m - s0;
        row_loss[i] = loss;
        rank[i] = rk;
    }
    workgroupBarrier();
    let p0 = row_consts[0];
    let inv_z = row_consts[1];
    let acc_base = P.splits * P.n * 3u;
    var dot = 0.0;
    for (var ch = tid; ch < P.c; ch += WG) {
        var a = 0.0;
        for (var s = 0u; s < P.splits; s += 1u) {
            a += partial[acc_base + (s * P.n + i) * P.c + ch] * split_weight[s];
        }
        let g = P.grad_scale * (a * inv_z + (p0 - 1.0) * k_hat[i * P.c + ch]);
        dq[i * P.c + ch] = g;
        dot += g * q_hat[i * P.c + ch];
    }
    let d = tree_sum(tid, dot, WG);
    let inv = q_inv_norm[i];
    let projected = inv < 1.0e12;
    for (var ch = tid; ch < P.c; ch += WG) {
        let g = dq[i * P.c + ch];
        dq[i * P.c + ch] = select(g * inv, (g - q_hat[i * P.c + ch] * d) * inv, projected);
    }
}

// One workgroup: mean loss (times loss_scale) and the acc@1 / acc@5 counts.
@compute @workgroup_size(256)
fn infonce_reduce(@builtin(local_invocation_index) tid: u32) {
    var sum = 0.0;
    var c1 = 0u;
    var c5 = 0u;
    for (var i = tid; i < P.n; i += WG) {
        sum += row_loss[i];
        c1 += select(0u, 1u, rank[i] < 1u);
        c5 += select(0u, 1u, rank[i] < 5u);
    }
    let total = tree_sum(tid, sum, WG);
    let top1 = tree_sum_u(tid, c1, WG);
    let top5 = tree_sum_u(tid, c5, WG);
    if (tid == 0u) {
        stats.loss = total / f32(P.n) * P.loss_scale;
        stats.top1 = top1;
        stats.top5 = top5;
        stats._pad = 0u;
    }
}
