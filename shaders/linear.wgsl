// The fully connected layer's GEMM and bias gradient, as src/ops/linear/cpu.rs: a tiled GEMM with strided operands
// (C[M, NC] (+)= A·B (+ bias), T x T outputs per 16x16 workgroup, K staged in T-deep chunks), which runs linear
// forward (with bias) and both backward products, and the bias gradient (column sums of dout). Mirrors
// kernels/linear.cu. Host code: src/ops/linear/wgpu.rs.

const WG: u32 = 256u;
const T: u32 = 16u;          // GEMM tile (T x T outputs per workgroup, T-deep K chunks)
const FLAG_ACC: u32 = 1u;    // GEMM: C += A·B (else C = A·B)
const FLAG_BIAS: u32 = 2u;   // GEMM: + bias[col]

struct LinearParams {
    // C[M, NC] (+)= A[M, K]·B[K, NC] (+ bias[NC]); A(m, k) at m*a_rs + k*a_cs, B(k, n) at k*b_rs + n*b_cs,
    // C row-major with row stride NC
    m: u32,
    nc: u32,
    kk: u32,
    flags: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
}

@group(0) @binding(0) var<uniform> P: LinearParams;
@group(0) @binding(1) var<storage, read_write> ga: array<f32>;   // GEMM A
@group(0) @binding(2) var<storage, read_write> gb: array<f32>;   // GEMM B
@group(0) @binding(3) var<storage, read_write> gc: array<f32>;   // GEMM C
@group(0) @binding(4) var<storage, read_write> bias: array<f32>; // GEMM bias [NC]
@group(0) @binding(5) var<storage, read_write> dy: array<f32>;   // bias_backward: dout [M, NC]
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;   // bias_backward: dbias [NC], accumulated

var<workgroup> ta: array<f32, 272>; // [T][T+1]: A tile, (row, k)
var<workgroup> tb: array<f32, 272>; // [T][T+1]: B tile, (k, col)

// C[M, NC] (+)= A·B (+ bias): T x T outputs per workgroup, one per thread, K staged in T-deep chunks.
@compute @workgroup_size(16, 16)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let row = wg.y * T + lid.y;
    let col = wg.x * T + lid.x;
    var acc = 0.0;
    for (var k0 = 0u; k0 < P.kk; k0 += T) {
        let ka = k0 + lid.x;
        ta[lid.y * (T + 1u) + lid.x] = select(0.0, ga[row * P.a_rs + ka * P.a_cs], row < P.m && ka < P.kk);
        let kb = k0 + lid.y;
        tb[lid.y * (T + 1u) + lid.x] = select(0.0, gb[kb * P.b_rs + col * P.b_cs], kb < P.kk && col < P.nc);
        workgroupBarrier();
        for (var t = 0u; t < T; t += 1u) {
            acc += ta[lid.y * (T + 1u) + t] * tb[t * (T + 1u) + lid.x];
        }
        workgroupBarrier();
    }
    if (row < P.m && col < P.nc) {
        let o = row * P.nc + col;
        if ((P.flags & FLAG_BIAS) != 0u) {
            acc += bias[col];
        }
        if ((P.flags & FLAG_ACC) != 0u) {
            acc += gc[o];
        }
        gc[o] = acc;
    }
}

// One thread per column of dout [M, NC]: dx[col] += Σ_rows dout[row, col] (the linear bias gradient).
@compute @workgroup_size(256)
fn bias_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let col = flat_thread(tid, wg, nwg, WG);
    if (col >= P.nc) {
        return;
    }
    var s = 0.0;
    for (var r = 0u; r < P.m; r += 1u) {
        s += dy[r * P.nc + col];
    }
    dx[col] += s;
}
