// EMA momentum update over a flat parameter buffer: k = m*k + (1-m)*q.
// Mirrors kernels/ema.cu (ema_update). Grid-stride loop, so one dispatch covers any length.

struct EmaParams {
    len: u32,        // elements in q and k
    stride: u32,     // total threads in the dispatch
    momentum: f32,     // m in [0, 1], rounded from f64 on the host
    one_minus_m: f32,  // 1 - m taken in f64 on the host, then rounded (as PyTorch's `1. - m`)
}

@group(0) @binding(0) var<uniform> P: EmaParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;        // q: [len]
@group(0) @binding(2) var<storage, read_write> k: array<f32>;  // k: [len]

@compute @workgroup_size(256)
fn ema_update(@builtin(global_invocation_id) gid: vec3<u32>) {
    for (var i = gid.x; i < P.len; i += P.stride) {
        k[i] = k[i] * P.momentum + q[i] * P.one_minus_m;
    }
}
