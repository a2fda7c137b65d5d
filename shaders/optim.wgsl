// Optimiser steps over flat parameter buffers, the CPU references of src/optim/ as fused kernels:
//   sgd_step             torch.optim.SGD (momentum, dampening, weight decay, Nesterov)        src/optim/sgd.rs
//   adamw_step           torch.optim.AdamW (decoupled weight decay, bias correction)         src/optim/adamw.rs
//   lars_partial_norms   LARS pass 1a: per segment, (sum p^2, sum (g + wd*p)^2)               src/optim/lars.rs
//   lars_span_norms      LARS pass 1b: per span, the fixed-order sum of its segments' partials
//   lars_update          LARS pass 2: trust ratio per span from its norms, then the momentum update
// Mirrors kernels/optim.cu (same entry points, same uniform block, same algorithm).
//
// Every storage binding is read_write: params, grads and state may be slices of one bigger buffer, and WebGPU
// forbids a read-only and a writable view of one buffer in the same dispatch.
//
// Hyperparameters arrive already rounded to f32 by the host, derived scalars (1 - dampening, 1 - beta2,
// 1 - lr*wd, lr / bc1, sqrt(bc2)) computed in f64 first, exactly as the CPU reference computes them. The
// elementwise arithmetic follows the reference's order; the GPU may contract a*b + c into an FMA.

const WG: u32 = 256u;

const FLAG_FIRST_STEP: u32 = 1u; // sgd: the momentum buffer holds nothing yet (torch: momentum_buffer is None)
const FLAG_NESTEROV: u32 = 2u;   // sgd: Nesterov momentum
const FLAG_MOMENTUM: u32 = 4u;   // sgd: momentum != 0 (state0 is the momentum buffer)
const FLAG_DECOUPLED: u32 = 8u;  // adamw: weight_decay != 0 (p *= 1 - lr*wd)

struct OptimParams {
    len: u32,                // elements of params, grads and state (sgd, adamw)
    stride: u32,             // threads of the grid-stride dispatch (sgd, adamw)
    flags: u32,              // FLAG_*
    count: u32,              // lars: segments (partial norms, update) or spans (span norms)
    lr: f32,
    momentum: f32,           // sgd, lars
    one_minus_damp: f32,     // sgd: f32(1 - dampening)
    weight_decay: f32,       // sgd, lars (adamw uses decay)
    one_minus_beta1: f32,    // adamw: f32(1 - beta1)
    beta2: f32,              // adamw
    one_minus_beta2: f32,    // adamw: f32(1 - beta2)
    eps: f32,                // adamw
    step_size: f32,          // adamw: f32(lr / (1 - beta1^t))
    bc2_sqrt: f32,           // adamw: f32(sqrt(1 - beta2^t))
    decay: f32,              // adamw: f32(1 - lr * wd)
    trust_coefficient: f32,  // lars
}

@group(0) @binding(0) var<uniform> P: OptimParams;
@group(0) @binding(1) var<storage, read_write> params: array<f32>;     // params: [len], updated in place
@group(0) @binding(2) var<storage, read_write> grads: array<f32>;      // grads: [len], only read
@group(0) @binding(3) var<storage, read_write> state0: array<f32>;     // momentum_buffer | exp_avg | mu: [len]
@group(0) @binding(4) var<storage, read_write> state1: array<f32>;     // exp_avg_sq: [len]
// LARS segment table: per segment (span index, first element, end element, 1 if the span has ndim > 1).
// Segments are the spans cut into pieces of at most LARS_CHUNK elements, span by span, in buffer order.
@group(0) @binding(5) var<storage, read_write> segments: array<vec4<u32>>;
// LARS span table: per span (first segment, end segment, 1 if ndim > 1, 0).
@group(0) @binding(6) var<storage, read_write> spans: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> partials: array<vec2<f32>>; // [segments]: (sum p^2, sum dp^2)
@group(0) @binding(8) var<storage, read_write> norms_sq: array<vec2<f32>>; // [spans]: (||p||^2, ||dp||^2)

// p -= lr * d_p with torch's momentum buffer; grid-stride loop, one dispatch covers any length.
@compute @workgroup_size(256)
fn sgd_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let has_momentum = (P.flags & FLAG_MOMENTUM) != 0u;
    let first = (P.flags & FLAG_FIRST_STEP) != 0u;
    let nesterov = (P.flags & FLAG_NESTEROV) != 0u;
    for (var i = gid.x; i < P.len; i += P.stride) {
        let p = params[i];
        let d_p = grads[i] + P.weight_decay * p;
        if (!has_momentum) {
            params[i] = p - P.lr * d_p;
            continue;
        }
        var buf = d_p;
        if (!first) {
            buf = P.momentum * state0[i] + P.one_minus_damp * d_p;
        }
        state0[i] = buf;
        var upd = buf;
        if (nesterov) {
            upd = d_p + P.momentum * buf;
        }
        params[i] = p - P.lr * upd;
    }
}

// AdamW at 1-based step t (bias corrections folded into step_size and bc2_sqrt by the host).
@compute @workgroup_size(256)
fn adamw_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let decoupled = (P.flags & FLAG_DECOUPLED) != 0u;
    for (var i = gid.x; i < P.len; i += P.stride) {
        let p = params[i];
        let g = grads[i];
        let m = state0[i];
        let v = state1[i];
        var pd = p;
        if (decoupled) {
            pd = p * P.decay;
        }
        let mn = m + P.one_minus_beta1 * (g - m);
        let vn = v * P.beta2 + P.one_minus_beta2 * g * g;
        let denom = sqrt(vn) / P.bc2_sqrt + P.eps;
        state0[i] = mn;
        state1[i] = vn;
        params[i] = pd - P.step_size * (mn / denom);
    }
}

// One workgroup per segment: partials[s] = (sum p^2, sum (g + wd*p)^2) over its elements, (0, 0) for segments
// of 1-d spans (which need no norms).
@compute @workgroup_size(256)
fn lars_partial_norms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = flat_block(wid, nwg);
    if (s >= P.count) {
        return;
    }
    let seg = segments[s];
    var end = seg.z;
    if (seg.w == 0u) {
        end = seg.y; // 1-d span: empty loop, partial (0, 0)
    }
    var acc = vec2<f32>(0.0, 0.0);
    for (var i = seg.y + lid; i < end; i += WG) {
        let p = params[i];
        let dp = grads[i] + P.weight_decay * p;
        acc += vec2<f32>(p * p, dp * dp);
    }
    let n = tree_sum2(lid, acc, WG);
    if (lid == 0u) {
        partials[s] = n;
    }
}

// One workgroup per span: norms_sq[span] = the sum of its segments' partials (strided per thread, then a tree).
@compute @workgroup_size(256)
fn lars_span_norms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = flat_block(wid, nwg);
    if (t >= P.count) {
        return;
    }
    let sp = spans[t];
    var acc = vec2<f32>(0.0, 0.0);
    for (var s = sp.x + lid; s < sp.y; s += WG) {
        acc += partials[s];
    }
    let n = tree_sum2(lid, acc, WG);
    if (lid == 0u) {
        norms_sq[t] = n;
    }
}

// The trust ratio of one span from its squared norms: trust * ||p|| / ||dp|| when both norms are > 0, else 1.
fn trust_ratio(n: vec2<f32>) -> f32 {
    let pn = sqrt(n.x);
    let un = sqrt(n.y);
    if (pn > 0.0 && un > 0.0) {
        return P.trust_coefficient * pn / un;
    }
    return 1.0;
}

// One workgroup per segment: mu = momentum * mu + dp; p -= lr * mu, with dp = (g + wd*p) * q for spans with
// ndim > 1 (q = trust_ratio of the span's norms) and dp = g otherwise.
@compute @workgroup_size(256)
fn lars_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = flat_block(wid, nwg);
    if (s >= P.count) {
        return;
    }
    let seg = segments[s];
    let matrix = seg.w != 0u;
    var q = 1.0;
    if (matrix) {
        q = trust_ratio(norms_sq[seg.x]);
    }
    for (var i = seg.y + lid; i < seg.z; i += WG) {
        let p = params[i];
        let g = grads[i];
        var dp = g;
        if (matrix) {
            dp = (g + P.weight_decay * p) * q;
        }
        let mn = P.momentum * state0[i] + dp;
        state0[i] = mn;
        params[i] = p - P.lr * mn;
    }
}
