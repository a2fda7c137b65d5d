// 2-D convolution (NCHW, weight [C_out, C_in, KH, KW], zero padding, no bias) as tiled implicit GEMMs.
// Host code: src/ops/conv/wgpu.rs; CPU version: src/ops/conv/cpu/mod.rs (same names, im2col + GEMM).
//
// Every entry point computes one 64x64 tile of a GEMM C[M, N] = A[M, K] · B[K, N] with 256 threads, each owning
// a 4x4 register micro-tile, stepping through K in 16-deep chunks staged in workgroup memory (2 x 4 KiB).
// The im2col matrix is never materialised: B (or A) is gathered from the image while loading the tile.
//
//   conv2d_forward          M = C_out, N = N*OH*OW, K = C_in*KH*KW   out    = weight · col          (overwrites)
//   conv2d_backward_weight  M = C_out, N = C_in*KH*KW, K = N*OH*OW   partial[s] = dout · colᵀ over K range s
//   conv2d_backward_weight_reduce                                    dweight += Σ_s partial[s] (in range order)
//   conv2d_backward_data    M = C_in,  N = N*H*W,  K = C_out*KH*KW   dinp   += gather of weight · dout (no atomics:
//                           each input pixel sums over the (c_out, kh, kw) whose window covers it; deterministic)
//
// Each output element is owned by exactly one thread, so the backward kernels accumulate with a plain
// read-modify-write. Grid: x * z tiles over N (x <= 65535, the host splits), y tiles over M; the weight gradient
// instead uses z for its K ranges (split-K, src/ops/conv/params.rs `wgrad_split`), as kernels/conv.cu.

struct ConvParams {
    n: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
    gemm_m: u32,
    gemm_n: u32,
    gemm_k: u32,
    k_splits: u32, // K ranges (split-K of the weight gradient; 1 otherwise)
    k_chunk: u32,  // K per range, a multiple of TILE_K
}

const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 16u;

@group(0) @binding(0) var<uniform> p: ConvParams;
// inp: [N, C_in, H, W]
@group(0) @binding(1) var<storage, read_write> inp: array<f32>;
// weight: [C_out, C_in, KH, KW]
@group(0) @binding(2) var<storage, read_write> weight: array<f32>;
// dout: [N, C_out, OH, OW]
@group(0) @binding(3) var<storage, read_write> dout: array<f32>;
// out (forward) / dweight (the reduce) / dinp, by entry point
@group(0) @binding(4) var<storage, read_write> result: array<f32>;
// the weight gradient's partial tiles: [k_splits, C_out, C_in*KH*KW]
@group(0) @binding(5) var<storage, read_write> partial: array<f32>;

// A tile stored k-major: a_tile[kk * TILE_M + mm]; B tile: b_tile[kk * TILE_N + nn].
var<workgroup> a_tile: array<f32, 1024>;
var<workgroup> b_tile: array<f32, 1024>;

// (i, y, x) of the index j = (i*H + y)*W + x of an [I, H, W] grid: a pixel (n, y, x), or a weight tap (c, ki, kj)
// with (H, W) = (KH, KW).
fn unravel(j: u32, h: u32, w: u32) -> vec3<u32> {
    let hw = h * w;
    let i = j / hw;
    let pix = j - i * hw;
    let y = pix / w;
    return vec3<u32>(i, y, pix - y * w);
}

// Offset of channel c of item j = n*Q + q of an [N, C, Q] tensor (C = channels).
fn channel_offset(j: u32, c: u32, channels: u32, q: u32) -> u32 {
    let n = j / q;
    return (n * channels + c) * q + (j - n * q);
}

// im2col element (row k = (ci, ki, kj), column j = (n, oy, ox)), 0 outside the image or the matrix.
fn col_value(k: u32, j: u32) -> f32 {
    let khw = p.kh * p.kw;
    if (k >= p.c_in * khw || j >= p.n * p.oh * p.ow) {
        return 0.0;
    }
    let tap = unravel(k, p.kh, p.kw); // (ci, ki, kj)
    let o = unravel(j, p.oh, p.ow);   // (n, oy, ox)
    let iy = i32(o.y * p.stride + tap.y) - i32(p.pad);
    let ix = i32(o.z * p.stride + tap.z) - i32(p.pad);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return 0.0;
    }
    return inp[((o.x * p.c_in + tap.x) * p.h + u32(iy)) * p.w + u32(ix)];
}

// The dout element that weight tap r = (co, ki, kj) meets at input pixel j = (n, iy, ix), 0 if none.
fn dout_gather(r: u32, j: u32) -> f32 {
    if (r >= p.c_out * p.kh * p.kw || j >= p.n * p.h * p.w) {
        return 0.0;
    }
    let tap = unravel(r, p.kh, p.kw); // (co, ki, kj)
    let i = unravel(j, p.h, p.w);     // (n, iy, ix)
    let ty = i32(i.y + p.pad) - i32(tap.y);
    let tx = i32(i.z + p.pad) - i32(tap.z);
    if (ty < 0 || tx < 0) {
        return 0.0;
    }
    let uy = u32(ty);
    let ux = u32(tx);
    if (uy % p.stride != 0u || ux % p.stride != 0u) {
        return 0.0;
    }
    let oy = uy / p.stride;
    let ox = ux / p.stride;
    if (oy >= p.oh || ox >= p.ow) {
        return 0.0;
    }
    return dout[((i.x * p.c_out + tap.x) * p.oh + oy) * p.ow + ox];
}

// The A element of each GEMM (0 outside the matrix), by entry point: weight rows (forward), dout [C_out, N*OH*OW]
// (backward weight), weight[co, m, ki, kj] at k = (co, ki, kj) (backward data). The B elements are col_value (forward),
// its transpose (backward weight) and dout_gather (backward data).
fn a_forward(m: u32, k: u32) -> f32 {
    if (m >= p.gemm_m || k >= p.gemm_k) {
        return 0.0;
    }
    return weight[m * p.gemm_k + k];
}

fn a_backward_weight(m: u32, k: u32) -> f32 {
    if (m >= p.gemm_m || k >= p.gemm_k) {
        return 0.0;
    }
    return dout[channel_offset(k, m, p.c_out, p.oh * p.ow)];
}

fn a_backward_data(m: u32, k: u32) -> f32 {
    if (m >= p.gemm_m || k >= p.gemm_k) {
        return 0.0;
    }
    return weight[channel_offset(k, m, p.c_in, p.kh * p.kw)];
}

// Slot of element e of a chunk read along k (e = mm * TILE_K + kk) in a k-major tile; a chunk read along m or n
// (e = kk * TILE_N + nn) lands at slot e.
fn k_major(e: u32) -> u32 {
    return (e % TILE_K) * TILE_M + e / TILE_K;
}

// acc[i] += a_tile[kk, ty*4 + i] * b_tile[kk, tx*4 .. tx*4 + 4] over the 16-deep chunk (tx, ty = lid % 16, lid / 16).
fn multiply_tile(acc: ptr<function, array<vec4<f32>, 4>>, lid: u32) {
    let tx = lid % 16u;
    let ty = lid / 16u;
    for (var kk = 0u; kk < TILE_K; kk++) {
        let ab = kk * TILE_M + ty * 4u;
        let bb = kk * TILE_N + tx * 4u;
        let a = vec4<f32>(a_tile[ab], a_tile[ab + 1u], a_tile[ab + 2u], a_tile[ab + 3u]);
        let b = vec4<f32>(b_tile[bb], b_tile[bb + 1u], b_tile[bb + 2u], b_tile[bb + 3u]);
        (*acc)[0] += a.x * b;
        (*acc)[1] += a.y * b;
        (*acc)[2] += a.z * b;
        (*acc)[3] += a.w * b;
    }
}

// The three GEMMs, by entry point (the `gemm` argument of store_tile).
const FORWARD: u32 = 0u;         // conv2d_forward
const BACKWARD_WEIGHT: u32 = 1u; // conv2d_backward_weight
const BACKWARD_DATA: u32 = 2u;   // conv2d_backward_data

// C[m, j] into result: out [N, C_out, OH, OW] overwritten (forward), dinp [N, C_in, H, W] accumulated (backward
// data).
fn store_result(gemm: u32, m: u32, j: u32, v: f32) {
    if (gemm == FORWARD) {
        result[channel_offset(j, m, p.c_out, p.oh * p.ow)] = v;
        return;
    }
    let idx = channel_offset(j, m, p.c_in, p.h * p.w);
    result[idx] = result[idx] + v;
}

// This thread's 4x4 micro-tile of the tile at (m0, j0), the elements inside C: into result (forward, backward
// data), or (backward weight) into the partial tile of K range `split`, [k_splits, C_out, C_in*KH*KW], overwritten.
// (kernels/conv.cu stores both through store_result: here the partial store is its own branch so that only the
// weight gradient's entry point binds `partial`, WGSL deriving each entry point's bindings from what it uses.)
fn store_tile(gemm: u32, acc: array<vec4<f32>, 4>, lid: u32, m0: u32, j0: u32) {
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + (lid / 16u) * 4u + i;
        for (var c = 0u; c < 4u; c++) {
            let j = j0 + (lid % 16u) * 4u + c;
            if (m < p.gemm_m && j < p.gemm_n) {
                store_result(gemm, m, j, acc[i][c]);
            }
        }
    }
}

fn store_partial_tile(acc: array<vec4<f32>, 4>, lid: u32, m0: u32, j0: u32, split: u32) {
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + (lid / 16u) * 4u + i;
        for (var c = 0u; c < 4u; c++) {
            let j = j0 + (lid % 16u) * 4u + c;
            if (m < p.gemm_m && j < p.gemm_n) {
                partial[(split * p.gemm_m + m) * p.gemm_n + j] = acc[i][c];
            }
        }
    }
}

// Each entry point: the tile (m0, j0) = (wid.y, wid.x + wid.z * nwg.x) * 64, K in 16-deep chunks, 4 elements of A
// and 4 of B staged per thread and chunk.

// out [N, C_out, OH, OW] = weight [C_out, K] · col [K, N*OH*OW]
@compute @workgroup_size(256)
fn conv2d_forward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let m0 = wid.y * TILE_M;
    let j0 = (wid.z * nwg.x + wid.x) * TILE_N;
    if (j0 >= p.gemm_n) {
        return;
    }
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.gemm_k; k0 += TILE_K) {
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * 256u;
            // A = weight rows, read along k; B = im2col, read along output pixels
            a_tile[k_major(e)] = a_forward(m0 + e / TILE_K, k0 + e % TILE_K);
            b_tile[e] = col_value(k0 + e / TILE_N, j0 + e % TILE_N);
        }
        workgroupBarrier();
        multiply_tile(&acc, lid);
        workgroupBarrier();
    }
    store_tile(FORWARD, acc, lid, m0, j0);
}

// partial [k_splits, C_out, K] = dout [C_out, N*OH*OW] · colᵀ [N*OH*OW, K], each over its K range of N*OH*OW:
// the tile (m0, j0) = (wid.y, wid.x) * 64, the range wid.z
@compute @workgroup_size(256)
fn conv2d_backward_weight(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let m0 = wid.y * TILE_M;
    let j0 = wid.x * TILE_N;
    let split = wid.z;
    if (j0 >= p.gemm_n) {
        return;
    }
    // K range [k_begin, k_end) in chunks of TILE_K (k_chunk is a multiple of it; loads past gemm_k read 0)
    let k_begin = split * p.k_chunk;
    let k_end = min(p.gemm_k, k_begin + p.k_chunk);
    var acc: array<vec4<f32>, 4>;
    for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * 256u;
            // both operands read along the reduction (output pixels)
            a_tile[k_major(e)] = a_backward_weight(m0 + e / TILE_K, k0 + e % TILE_K);
            b_tile[k_major(e)] = col_value(j0 + e / TILE_K, k0 + e % TILE_K);
        }
        workgroupBarrier();
        multiply_tile(&acc, lid);
        workgroupBarrier();
    }
    store_partial_tile(acc, lid, m0, j0, split);
}

// dweight [C_out, K] += the K ranges' partials summed in range order, one thread per element
@compute @workgroup_size(256)
fn conv2d_backward_weight_reduce(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_thread(lid, wid, nwg, 256u);
    let len = p.gemm_m * p.gemm_n;
    if (e >= len) {
        return;
    }
    var sum = 0.0;
    for (var s = 0u; s < p.k_splits; s++) {
        sum += partial[s * len + e];
    }
    result[e] = result[e] + sum;
}

// dinp [N, C_in, H, W] += Σ_(co, ki, kj) weight[co, ci, ki, kj] · dout[n, co, (iy + pad - ki) / stride, ...]
@compute @workgroup_size(256)
fn conv2d_backward_data(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let m0 = wid.y * TILE_M;
    let j0 = (wid.z * nwg.x + wid.x) * TILE_N;
    if (j0 >= p.gemm_n) {
        return;
    }
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.gemm_k; k0 += TILE_K) {
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * 256u;
            // A[ci, r = (co, ki, kj)] = weight[co, ci, ki, kj], read along the taps; B = dout gathered, read along
            // input pixels
            a_tile[k_major(e)] = a_backward_data(m0 + e / TILE_K, k0 + e % TILE_K);
            b_tile[e] = dout_gather(k0 + e / TILE_N, j0 + e % TILE_N);
        }
        workgroupBarrier();
        multiply_tile(&acc, lid);
        workgroupBarrier();
    }
    store_tile(BACKWARD_DATA, acc, lid, m0, j0);
}
