// The row gather, as src/ops/gather/cpu.rs: out[r, :] = x[idx[r], :]. Shuffle-BN's unshuffle of the keys on the
// device. Mirrors kernels/gather.cu: one thread per output element; an index at or past src_rows gives a zero row.
// Host code: src/ops/gather/wgpu.rs.

const WG: u32 = 256u;

struct GatherParams {
    rows: u32,     // output rows (= indices)
    src_rows: u32, // rows of x
    row: u32,      // values per row
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: GatherParams;
@group(0) @binding(1) var<storage, read_write> out: array<f32>; // [rows, row]
@group(0) @binding(2) var<storage, read_write> idx: array<u32>; // [rows]
@group(0) @binding(3) var<storage, read_write> x: array<f32>;   // [src_rows, row]

@compute @workgroup_size(256)
fn gather_rows(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_thread(tid, wg, nwg, WG);
    if (e >= P.rows * P.row) {
        return;
    }
    let r = e / P.row;
    let c = e - r * P.row;
    let src = idx[r];
    var v = 0.0;
    if (src < P.src_rows) {
        v = x[src * P.row + c];
    }
    out[e] = v;
}
