// The non-finite count, as src/ops/finite/cpu.rs: count[0] += the number of elements of x that are NaN or +-inf.
// Mirrors kernels/finite.cu: one thread per element, a workgroup tree sum, one atomic add per workgroup that saw a
// non-finite value (integer adds: deterministic). Host code: src/ops/finite/wgpu.rs.

const WG: u32 = 256u;

struct FiniteParams {
    len: u32, // elements of x
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: FiniteParams;
@group(0) @binding(1) var<storage, read_write> count: array<atomic<u32>>; // [1], accumulated
@group(0) @binding(2) var<storage, read_write> x: array<f32>;             // [len]

// One thread per element of x: exponent bits all set (NaN or +-inf) counts 1.
@compute @workgroup_size(256)
fn count_nonfinite(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_thread(tid, wg, nwg, WG);
    var bad = 0u;
    if (i < P.len) {
        bad = select(0u, 1u, (bitcast<u32>(x[i]) & 0x7f800000u) == 0x7f800000u);
    }
    let total = tree_sum_u(tid, bad, WG);
    if (tid == 0u && total != 0u) {
        atomicAdd(&count[0], total);
    }
}
