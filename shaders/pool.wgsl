// Pooling over NCHW planes, as src/ops/pool/cpu.rs: max pooling forward (value + argmax u32 inside the [H, W]
// plane) and backward (gather: each input pixel sums dout over the windows whose argmax it is; deterministic, no
// atomics), global average pooling forward/backward. Mirrors kernels/pool.cu: same names, same work split (one
// thread per output / input element / plane). Host code: src/ops/pool/wgpu.rs.

const WG: u32 = 256u;

struct PoolParams {
    planes: u32, // N*C
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    k: u32,      // max-pool window (square)
    stride: u32,
    pad: u32,
    hw: u32,     // average pool: H*W
    inv_hw: f32, // 1 / (H*W)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: PoolParams;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;         // [N, C, H, W] input
@group(0) @binding(2) var<storage, read_write> yout: array<f32>;      // [N, C, OH, OW] (or [N, C]) output
@group(0) @binding(3) var<storage, read_write> argmax: array<u32>;    // [N, C, OH, OW] (forward)
@group(0) @binding(4) var<storage, read_write> argmax_in: array<u32>; // [N, C, OH, OW] (backward)
@group(0) @binding(5) var<storage, read_write> dy: array<f32>;        // upstream gradient
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;        // accumulated input gradient

// One thread per output element: max over the window (padding never wins), first maximum in scan order.
@compute @workgroup_size(256)
fn maxpool_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = flat_thread(tid, wg, nwg, WG);
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
    let i = flat_thread(tid, wg, nwg, WG);
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
    let p = flat_thread(tid, wg, nwg, WG);
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
    let i = flat_thread(tid, wg, nwg, WG);
    if (i >= P.planes * P.hw) {
        return;
    }
    dx[i] += dy[i / P.hw] * P.inv_hw;
}
