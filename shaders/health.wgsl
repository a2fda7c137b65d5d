// Representation health, as src/ops/health/cpu.rs: from the L2-normalised q_hat, k_hat [N, d] and the queue
// [K, d] (f32, f16 or bf16), the statistics block [8] (alignment, uniformity, dim_std, pos_mean, neg_mean,
// neg_max, neg_row_max_mean, gap) and the Gram matrix [g, g] of q_hat (g = min(N, d)); and the key encoder's drift. Definitions:
// src/ops/health/mod.rs; launch plan: src/ops/health/params.rs; host code: src/ops/health/wgpu.rs.
// Mirrors kernels/health.cu: same entry points, parameter block, tiles and reduction trees (the prelude's
// tree_sum / tree_sum2 / tree_max); every partial is written by one workgroup and summed in a fixed order.
// No subgroup operations (lavapipe's subgroups are 8 wide, a GPU's 32 or 64).

const WG: u32 = 256u;
const TS: u32 = 16u;            // rows per tile, keys per tile, reduced elements per staged chunk
const TP: u32 = 17u;            // padded tile row
const NEG_BIG: f32 = -3.402823466e38; // the max's start (-FLT_MAX)

struct HealthParams {
    n: u32,              // pairs N
    d: u32,              // dimension d
    k: u32,              // queue length K
    rows: u32,           // health_gram: rows of the matrix whose Gram it forms
    red: u32,            // health_gram: length of the reduced dimension
    row_stride: u32,     // health_gram: element (r, t) at x[r * row_stride + t * red_stride]
    red_stride: u32,
    mode: u32,           // health_gram: 1 write the Gram tile, 2 write the pair sum
    splits: u32,         // health_logits: key splits (grid y)
    keys_per_split: u32, // health_logits: keys per split, a multiple of TS
    pair_blocks: u32,    // entries of pair_part
    len: u32,            // drift: parameters per buffer
    drift_blocks: u32,   // drift: workgroups of drift_partial
    skip_diagonal: u32,  // health_logits: 1 when the keys are k_hat itself (in-batch), key i of row i skipped
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: HealthParams;
@group(0) @binding(1) var<storage, read_write> stats: array<f32>;      // [8]
@group(0) @binding(2) var<storage, read_write> gram: array<f32>;       // [g, g]
@group(0) @binding(3) var<storage, read_write> q_hat: array<f32>;      // [N, d]
@group(0) @binding(4) var<storage, read_write> k_hat: array<f32>;      // [N, d]
@group(0) @binding(5) var<storage, read> keys_f32: array<f32>;        // the queue [K, d] (f32 storage)
@group(0) @binding(6) var<storage, read_write> dim_part: array<f32>;   // [d, 3]
@group(0) @binding(7) var<storage, read_write> pair_part: array<f32>;  // [pair_blocks]
@group(0) @binding(8) var<storage, read_write> logit_part: array<f32>; // [splits, N, 2]
@group(0) @binding(9) var<storage, read_write> drift_out: array<f32>;  // [1]
@group(0) @binding(10) var<storage, read_write> theta_k: array<f32>;   // [len]
@group(0) @binding(11) var<storage, read_write> theta_q: array<f32>;   // [len]
@group(0) @binding(12) var<storage, read_write> drift_part: array<f32>; // [drift_blocks, 2]
@group(0) @binding(13) var<storage, read> keys_words: array<u32>;     // the queue [K, d] (16-bit storage)

// The queue's storage, set at pipeline creation (health_logits only): 0 f32 (read through keys_f32), 1 f16 and
// 2 bf16 (read through keys_words, two elements per u32), as infonce.wgsl's.
override QUEUE_DTYPE: u32 = 0u;

// Element idx of the queue as f32.
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

var<workgroup> a_s: array<f32, 272>; // [TS][TP]
var<workgroup> b_s: array<f32, 272>;
var<workgroup> sum_s: array<f32, 256>; // [TS][TS]
var<workgroup> max_s: array<f32, 256>;

// A quiet NaN (a run-time value: a constant NaN is a WGSL shader-creation error).
fn quiet_nan() -> f32 {
    return bitcast<f32>(0x7fc00000u | (P.n & 0u));
}

// One 16 x 16 tile of pairs (i, j) of rows of x = q_hat per workgroup (i over wg.y, j over wg.x): prod = x_i . x_j and
// dist = ||x_i - x_j||^2 over the reduced dimension, staged 16 elements at a time. mode & 1: gram[i, j] = prod;
// mode & 2: pair_part[workgroup] = sum over the tile's pairs with i < j of exp(-2 dist).
@compute @workgroup_size(256)
fn health_gram(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let ty = tid / TS;
    let tx = tid % TS;
    let i0 = wg.y * TS;
    let j0 = wg.x * TS;
    let i = i0 + ty;
    let j = j0 + tx;
    // the loading invocation's (row, element): along the reduced dimension when it is contiguous, along the rows
    // when they are
    let rows_contiguous = P.row_stride == 1u;
    let lr = select(ty, tx, rows_contiguous);
    let lt = select(tx, ty, rows_contiguous);
    var prod = 0.0;
    var dist = 0.0;
    for (var t0 = 0u; t0 < P.red; t0 += TS) {
        let t = t0 + lt;
        var a = 0.0;
        if (i0 + lr < P.rows && t < P.red) {
            a = q_hat[(i0 + lr) * P.row_stride + t * P.red_stride];
        }
        var b = 0.0;
        if (j0 + lr < P.rows && t < P.red) {
            b = q_hat[(j0 + lr) * P.row_stride + t * P.red_stride];
        }
        a_s[lr * TP + lt] = a;
        b_s[lr * TP + lt] = b;
        workgroupBarrier();
        for (var u = 0u; u < TS; u++) {
            let av = a_s[ty * TP + u];
            let bv = b_s[tx * TP + u];
            prod += av * bv;
            let e = av - bv;
            dist += e * e;
        }
        workgroupBarrier();
    }
    let inside = i < P.rows && j < P.rows;
    if (inside && (P.mode & 1u) != 0u) {
        gram[i * P.rows + j] = prod;
    }
    if ((P.mode & 2u) != 0u) {
        var term = 0.0;
        if (inside && i < j) {
            term = exp(-2.0 * dist);
        }
        let s = tree_sum(tid, term, WG);
        if (tid == 0u) {
            pair_part[wg.y * nwg.x + wg.x] = s;
        }
    }
}

// One invocation per dimension c: the unbiased std of q_hat[:, c] over the batch (mean, then squares; divisor
// max(N - 1, 1), health_finish writes NaN for N = 1), sum_i (q_hat_ic - k_hat_ic)^2 and sum_i q_hat_ic k_hat_ic into
// dim_part[c, 0..3].
@compute @workgroup_size(256)
fn health_dims(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_thread(tid, wg, nwg, WG);
    if (c >= P.d) {
        return;
    }
    var s = 0.0;
    for (var i = 0u; i < P.n; i++) {
        s += q_hat[i * P.d + c];
    }
    let mean = s / f32(P.n);
    var v = 0.0;
    var al = 0.0;
    var pos = 0.0;
    for (var i = 0u; i < P.n; i++) {
        let a = q_hat[i * P.d + c];
        let b = k_hat[i * P.d + c];
        let e = a - mean;
        let f = a - b;
        v += e * e;
        al += f * f;
        pos += a * b;
    }
    dim_part[c * 3u] = sqrt(v / f32(max(P.n - 1u, 1u)));
    dim_part[c * 3u + 1u] = al;
    dim_part[c * 3u + 2u] = pos;
}

// 16 rows of q_hat (wg.x) against the keys of split wg.y, a 16 x 16 tile of cosines per step (invocation (ty, tx):
// row ty, key tx, the d channels staged 16 at a time); each row's sum and max over the split into
// logit_part[split, row, 0..2].
@compute @workgroup_size(256)
fn health_logits(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let ty = tid / TS;
    let tx = tid % TS;
    let i = wg.x * TS + ty;
    let kbeg = wg.y * P.keys_per_split;
    let kend = min(kbeg + P.keys_per_split, P.k);
    var rsum = 0.0;
    var rmax = NEG_BIG;
    for (var kt = kbeg; kt < kend; kt += TS) {
        var prod = 0.0;
        for (var c0 = 0u; c0 < P.d; c0 += TS) {
            let c = c0 + tx;
            var a = 0.0;
            if (i < P.n && c < P.d) {
                a = q_hat[i * P.d + c];
            }
            var b = 0.0;
            if (kt + ty < kend && c < P.d) {
                b = load_key((kt + ty) * P.d + c);
            }
            a_s[ty * TP + tx] = a;
            b_s[ty * TP + tx] = b;
            workgroupBarrier();
            for (var u = 0u; u < TS; u++) {
                prod += a_s[ty * TP + u] * b_s[tx * TP + u];
            }
            workgroupBarrier();
        }
        if (kt + tx < kend && !(P.skip_diagonal != 0u && kt + tx == i)) {
            rsum += prod;
            rmax = max(rmax, prod);
        }
    }
    sum_s[ty * TS + tx] = rsum;
    max_s[ty * TS + tx] = rmax;
    workgroupBarrier();
    if (tx == 0u && i < P.n) {
        var s = 0.0;
        var m = NEG_BIG;
        for (var u = 0u; u < TS; u++) {
            s += sum_s[ty * TS + u];
            m = max(m, max_s[ty * TS + u]);
        }
        logit_part[(wg.y * P.n + i) * 2u] = s;
        logit_part[(wg.y * P.n + i) * 2u + 1u] = m;
    }
}

// One workgroup: the partials of health_gram (pairs), health_dims and health_logits summed in a fixed order, the
// statistics written by invocation 0.
@compute @workgroup_size(256)
fn health_finish(@builtin(local_invocation_index) tid: u32) {
    var std_align = vec2<f32>(0.0, 0.0);
    var pos = 0.0;
    for (var c = tid; c < P.d; c += WG) {
        std_align += vec2<f32>(dim_part[c * 3u], dim_part[c * 3u + 1u]);
        pos += dim_part[c * 3u + 2u];
    }
    var pairs = 0.0;
    for (var b = tid; b < P.pair_blocks; b += WG) {
        pairs += pair_part[b];
    }
    var neg = vec2<f32>(0.0, 0.0); // (sum of every cosine, sum of the rows' maxima)
    var neg_max = NEG_BIG;
    for (var i = tid; i < P.n; i += WG) {
        var s = 0.0;
        var m = NEG_BIG;
        for (var sp = 0u; sp < P.splits; sp++) {
            s += logit_part[(sp * P.n + i) * 2u];
            m = max(m, logit_part[(sp * P.n + i) * 2u + 1u]);
        }
        neg += vec2<f32>(s, m);
        neg_max = max(neg_max, m);
    }
    std_align = tree_sum2(tid, std_align, WG);
    neg = tree_sum2(tid, neg, WG);
    pos = tree_sum(tid, pos, WG);
    pairs = tree_sum(tid, pairs, WG);
    neg_max = tree_max(tid, neg_max, WG);
    if (tid == 0u) {
        let n = f32(P.n);
        let pos_mean = pos / n;
        let row_max_mean = neg.y / n;
        stats[0] = std_align.y / n;
        if (P.n < 2u) {
            stats[1] = quiet_nan();
            stats[2] = quiet_nan();
        } else {
            stats[1] = log(pairs / (0.5 * n * (n - 1.0)));
            stats[2] = std_align.x / f32(P.d);
        }
        stats[3] = pos_mean;
        // negatives per row: K, or N - 1 in-batch (none when N = 1: the four logit statistics are NaN)
        let negs = f32(select(P.k, P.k - 1u, P.skip_diagonal != 0u));
        if (negs == 0.0) {
            stats[4] = quiet_nan();
            stats[5] = quiet_nan();
            stats[6] = quiet_nan();
            stats[7] = quiet_nan();
        } else {
            stats[4] = neg.x / (n * negs);
            stats[5] = neg_max;
            stats[6] = row_max_mean;
            stats[7] = pos_mean - row_max_mean;
        }
    }
}

// Grid-stride over the parameters: workgroup b's (sum (theta_k - theta_q)^2, sum theta_q^2) into drift_part[b, 0..2].
@compute @workgroup_size(256)
fn drift_partial(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = P.drift_blocks * WG;
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = flat_thread(tid, wg, nwg, WG); i < P.len; i += stride) {
        let q = theta_q[i];
        let e = theta_k[i] - q;
        acc += vec2<f32>(e * e, q * q);
    }
    acc = tree_sum2(tid, acc, WG);
    if (tid == 0u) {
        let b = flat_block(wg, nwg);
        drift_part[b * 2u] = acc.x;
        drift_part[b * 2u + 1u] = acc.y;
    }
}

// One workgroup: drift_out[0] = sqrt(sum of the differences' squares) / sqrt(sum of theta_q's squares).
@compute @workgroup_size(256)
fn drift_finish(@builtin(local_invocation_index) tid: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var b = tid; b < P.drift_blocks; b += WG) {
        acc += vec2<f32>(drift_part[b * 2u], drift_part[b * 2u + 1u]);
    }
    acc = tree_sum2(tid, acc, WG);
    if (tid == 0u) {
        drift_out[0] = sqrt(acc.x) / sqrt(acc.y);
    }
}
