// Row L2 normalisation x_hat[r, :] = x[r, :] / max(||x[r, :]||, 1e-12), and the inverse norms: what the fused
// losses (infonce.wgsl) and the enqueue (queue.wgsl) run first on q and k. One 256-invocation workgroup per row.
// Mirrors kernels/normalize.cu: same name, same parameter block. The sum is a tree over the workgroup (CUDA sums
// with warp shuffles, then over the warps): both are exact to f32 rounding, in different orders.

const WG: u32 = 256u;

struct NormalizeParams {
    rows: u32, // rows of x [rows, C]
    c: u32,    // features per row
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: NormalizeParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;                   // [rows, C]
@group(0) @binding(2) var<storage, read_write> x_hat: array<f32>;         // [rows, C]
@group(0) @binding(3) var<storage, read_write> inv_norm_out: array<f32>;  // 1/max(||x||, eps) [rows]

// One workgroup per row (rows over x and y of the dispatch).
@compute @workgroup_size(256)
fn normalize_rows(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_block(wg, nwg);
    if (r >= P.rows) {
        return;
    }
    var ss = 0.0;
    for (var ch = tid; ch < P.c; ch += WG) {
        let v = x[r * P.c + ch];
        ss += v * v;
    }
    let inv = 1.0 / max(sqrt(tree_sum(tid, ss, WG)), 1e-12);
    for (var ch = tid; ch < P.c; ch += WG) {
        x_hat[r * P.c + ch] = x[r * P.c + ch] * inv;
    }
    if (tid == 0u) {
        inv_norm_out[r] = inv;
    }
}
