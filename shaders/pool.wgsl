// Pooling, linear and element-wise layers, NCHW, as src/backend/cpu/nn/{pool,linear,act}.rs:
// max pooling forward (value + argmax u32 inside the [H, W] plane) and backward (gather: each input pixel sums
// dout over the windows whose argmax it is; deterministic, no atomics), global average pooling forward/backward,
// a tiled GEMM with strided operands for linear forward/backward, the bias gradient, ReLU and the residual add.

const WG: u32 = 256u;
const T: u32 = 16u;          // GEMM tile (T x T outputs per workgroup, T-deep K chunks)
const FLAG_ACC: u32 = 1u;    // GEMM: C += A·B (else C = A·B)
const FLAG_BIAS: u32 = 2u;   // GEMM: + bias[col]

struct Params {
    // pooling: planes = N*C; element-wise: len
    planes: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    k: u32,
    stride: u32,
    pad: u32,
    // GEMM C[M, NC] (+)= A[M, K]·B[K, NC] (+ bias[NC]); A(m, k) at m*a_rs + k*a_cs, B(k, n) at k*b_rs + n*b_cs,
    // C row-major with row stride NC
    m: u32,
    nc: u32,
    kk: u32,
    flags: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
    len: u32,
    hw: u32,
    inv_hw: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;                  // pooling input / element-wise a
@group(0) @binding(2) var<storage, read_write> yout: array<f32>;         // pooling output / element-wise out
@group(0) @binding(3) var<storage, read_write> argmax: array<u32>;       // [N, C, OH, OW] (forward)
@group(0) @binding(4) var<storage, read_write> argmax_in: array<u32>;          // [N, C, OH, OW] (backward)
@group(0) @binding(5) var<storage, read_write> dy: array<f32>;                 // upstream gradient / element-wise b
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;           // accumulated input gradient
@group(0) @binding(7) var<storage, read_write> ga: array<f32>;                 // GEMM A
@group(0) @binding(8) var<storage, read_write> gb: array<f32>;                 // GEMM B
@group(0) @binding(9) var<storage, read_write> gc: array<f32>;           // GEMM C
@group(0) @binding(10) var<storage, read_write> bias: array<f32>;              // GEMM bias [NC]

fn flat_index(tid: u32, wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wg.x + wg.y * nwg.x) * WG + tid;
}

// One thread per output element: max over the window (padding never wins), first maximum in scan order.
@compute @workgroup_size(256)
fn maxpool_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = flat_index(tid, wg, nwg);
    if (o >= P.planes * P.oh * P.ow) {
        return;
    }
    let p = o / (P.oh * P.ow);
    let oy = (o / P.ow) % P.oh;
    let ox = o % P.ow;
    let y0 = i32(oy * P.stride) - i32(P.pad);
    let x0 = i32(ox * P.stride) - i32(P.pad);
    let ylo = u32(max(y0, 0));
    let yhi = u32(min(y0 + i32(P.k), i32(P.h)));
    let xlo = u32(max(x0, 0));
    let xhi = u32(min(x0 + i32(P.k), i32(P.w)));
    let base = p * P.h * P.w;
    var best = x[base + ylo * P.w + xlo];
    var bi = ylo * P.w + xlo;
    for (var iy = ylo; iy < yhi; iy += 1u) {
        for (var ix = xlo; ix < xhi; ix += 1u) {
            let v = x[base + iy * P.w + ix];
            if (v > best) {
                best = v;
                bi = iy * P.w + ix;
            }
        }
    }
    yout[o] = best;
    argmax[o] = bi;
}

// One thread per input pixel: dx += Σ dout over the windows that contain it and whose argmax it is.
// Indices outside the plane match no pixel (ignored).
@compute @workgroup_size(256)
fn maxpool_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(tid, wg, nwg);
    if (i >= P.planes * P.h * P.w) {
        return;
    }
    let p = i / (P.h * P.w);
    let q = i % (P.h * P.w);
    let iy = q / P.w;
    let ix = q % P.w;
    // windows oy with oy*stride - pad <= iy < oy*stride - pad + k
    let ty = iy + P.pad;
    let tx = ix + P.pad;
    let oy_lo = select(0u, (ty + 1u - P.k + P.stride - 1u) / P.stride, ty + 1u > P.k);
    let oy_hi = min(ty / P.stride + 1u, P.oh);
    let ox_lo = select(0u, (tx + 1u - P.k + P.stride - 1u) / P.stride, tx + 1u > P.k);
    let ox_hi = min(tx / P.stride + 1u, P.ow);
    var s = 0.0;
    for (var oy = oy_lo; oy < oy_hi; oy += 1u) {
        for (var ox = ox_lo; ox < ox_hi; ox += 1u) {
            let o = (p * P.oh + oy) * P.ow + ox;
            if (argmax_in[o] == q) {
                s += dy[o];
            }
        }
    }
    dx[i] += s;
}

// One thread per (n, c) plane: out = Σ_HW x / HW.
@compute @workgroup_size(256)
fn avgpool_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = flat_index(tid, wg, nwg);
    if (p >= P.planes) {
        return;
    }
    var s = 0.0;
    for (var j = 0u; j < P.hw; j += 1u) {
        s += x[p * P.hw + j];
    }
    yout[p] = s * P.inv_hw;
}

// One thread per input element: dx += dout[plane] / HW.
@compute @workgroup_size(256)
fn avgpool_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(tid, wg, nwg);
    if (i >= P.planes * P.hw) {
        return;
    }
    dx[i] += dy[i / P.hw] * P.inv_hw;
}

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
    let col = flat_index(tid, wg, nwg);
    if (col >= P.nc) {
        return;
    }
    var s = 0.0;
    for (var r = 0u; r < P.m; r += 1u) {
        s += dy[r * P.nc + col];
    }
    dx[col] += s;
}

// out = max(a, 0).
@compute @workgroup_size(256)
fn relu_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(tid, wg, nwg);
    if (i >= P.len) {
        return;
    }
    yout[i] = select(x[i], 0.0, x[i] < 0.0); // NaN passes, as in torch
}

// dx += dout · (out > 0), with out (the forward's output) at binding 1.
@compute @workgroup_size(256)
fn relu_backward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(tid, wg, nwg);
    if (i >= P.len) {
        return;
    }
    dx[i] += select(0.0, dy[i], x[i] > 0.0);
}

// out = a + b, with b at binding 5.
@compute @workgroup_size(256)
fn add_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(tid, wg, nwg);
    if (i >= P.len) {
        return;
    }
    yout[i] = x[i] + dy[i];
}
