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
// The backward data at stride s > 1 runs in s*s phases, one dispatch each, so that no zero tap is gathered (see
// kernels/conv.cu and src/ops/conv/params.rs `ConvParams::backward_data`).
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
    // the backward data's phase, as kernels/conv.cu: input pixels (ph_y + stride*a, ph_x + stride*b) on a
    // ph_h x ph_w grid, taps (ph_ky + stride*ty, ph_kx + stride*tx) on a ph_kh x ph_kw grid
    ph_y: u32,
    ph_x: u32,
    ph_h: u32,
    ph_w: u32,
    ph_ky: u32,
    ph_kx: u32,
    ph_kh: u32,
    ph_kw: u32,
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

// Gather offsets. A thread's gathered operand is fixed along one GEMM dimension for the whole K loop (its column
// of B in the forward and backward data, its four tap rows of B in the weight gradient) and shared by its four
// elements along the other within a chunk (the pixel of the weight gradient, the tap of A's row offsets), so the
// divisions that decompose an index run once per thread, or once per chunk, not for every element (the CUDA
// kernels do the same, kernels/conv.cu).

// A tap k = (c, ki, kj) of a [C, KH, KW] weight, and whether k < C*KH*KW (w = 1).
fn tap_of(k: u32, channels: u32) -> vec4<u32> {
    if (k >= channels * p.kh * p.kw) {
        return vec4<u32>(0u, 0u, 0u, 0u);
    }
    let t = unravel(k, p.kh, p.kw);
    return vec4<u32>(t, 1u);
}

// The window of output pixel j = (n, oy, ox) on the input: image offset n*C_in*H*W, top-left corner (y0, x0) (may
// be negative), and whether j < N*OH*OW (w = 1).
struct Window {
    base: u32,
    y0: i32,
    x0: i32,
    valid: u32,
}

fn window_of(j: u32) -> Window {
    if (j >= p.n * p.oh * p.ow) {
        return Window(0u, 0, 0, 0u);
    }
    let o = unravel(j, p.oh, p.ow);
    return Window(o.x * p.c_in * p.h * p.w, i32(o.y * p.stride) - i32(p.pad), i32(o.z * p.stride) - i32(p.pad), 1u);
}

// im2col element (row: tap t = (ci, ki, kj), column: window w), 0 outside the image or the matrix.
fn col_at(t: vec4<u32>, w: Window) -> f32 {
    let iy = w.y0 + i32(t.y);
    let ix = w.x0 + i32(t.z);
    if (t.w == 0u || w.valid == 0u || iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return 0.0;
    }
    return inp[w.base + (t.x * p.h + u32(iy)) * p.w + u32(ix)];
}

// Input pixel j = (n, a, b) of the phase's grid, at (iy, ix) = (ph_y + stride*a, ph_x + stride*b), as the backward
// data gathers for it: dout's image offset n*C_out*OH*OW, (iy + pad, ix + pad), and whether j < N*ph_h*ph_w (w = 1).
fn pixel_of(j: u32) -> vec4<u32> {
    if (j >= p.n * p.ph_h * p.ph_w) {
        return vec4<u32>(0u, 0u, 0u, 0u);
    }
    let i = unravel(j, p.ph_h, p.ph_w);
    return vec4<u32>(i.x * p.c_out * p.oh * p.ow, p.ph_y + p.stride * i.y + p.pad, p.ph_x + p.stride * i.z + p.pad, 1u);
}

// Tap k = (co, ty, tx) of the phase's grid: (co, ph_ky + stride*ty, ph_kx + stride*tx), and whether
// k < C_out*ph_kh*ph_kw (w = 1).
fn phase_tap_of(k: u32) -> vec4<u32> {
    if (k >= p.c_out * p.ph_kh * p.ph_kw) {
        return vec4<u32>(0u, 0u, 0u, 0u);
    }
    let t = unravel(k, p.ph_kh, p.ph_kw);
    return vec4<u32>(t.x, p.ph_ky + p.stride * t.y, p.ph_kx + p.stride * t.z, 1u);
}

// Offset of the backward data's A column k (the phase's tap k) in weight [C_out, C_in, KH*KW]: row ci's element is
// at offset + ci*KH*KW, or 0xffffffff past the GEMM's K.
fn phase_column_offset(k: u32) -> u32 {
    let t = phase_tap_of(k);
    if (t.w == 0u || k >= p.gemm_k) {
        return 0xffffffffu;
    }
    return t.x * p.c_in * p.kh * p.kw + t.y * p.kw + t.z;
}

// The dout element that tap t = (co, ki, kj) meets at pixel q (pixel_of), 0 if none.
fn dout_at(t: vec4<u32>, q: vec4<u32>) -> f32 {
    if (t.w == 0u || q.w == 0u || q.y < t.y || q.z < t.z) {
        return 0.0;
    }
    let uy = q.y - t.y;
    let ux = q.z - t.z;
    var oy = uy;
    var ox = ux;
    if (p.stride != 1u) {
        if (uy % p.stride != 0u || ux % p.stride != 0u) {
            return 0.0;
        }
        oy = uy / p.stride;
        ox = ux / p.stride;
    }
    if (oy >= p.oh || ox >= p.ow) {
        return 0.0;
    }
    return dout[q.x + (t.x * p.oh + oy) * p.ow + ox];
}

// Offset of column k of an A operand stored as [N, C, Q] with rows c (dout [N, C_out, OH*OW] for the weight
// gradient, weight [C_out, C_in, KH*KW] for the backward data): row m's element is at offset + m*q, or
// 0xffffffff past the matrix's K.
fn column_offset(k: u32, channels: u32, q: u32) -> u32 {
    if (k >= p.gemm_k) {
        return 0xffffffffu;
    }
    let n = k / q;
    return n * channels * q + (k - n * q);
}

// Element e of the weight gradient's chunk: A = dout[m0 + e / TILE_K] at the chunk's pixel (column offset a_col),
// B = im2col at tap t and the chunk's window; both k-major.
fn stage_weight_grad(e: u32, m0: u32, a_col: u32, t: vec4<u32>, win: Window) {
    let m = m0 + e / TILE_K;
    var a = 0.0;
    if (m < p.gemm_m && a_col != 0xffffffffu) {
        a = dout[a_col + m * p.oh * p.ow];
    }
    a_tile[k_major(e)] = a;
    b_tile[k_major(e)] = col_at(t, win);
}

// The A element of the forward: weight rows (0 outside the matrix).
fn a_forward(m: u32, k: u32) -> f32 {
    if (m >= p.gemm_m || k >= p.gemm_k) {
        return 0.0;
    }
    return weight[m * p.gemm_k + k];
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
    // pixel j = (n, a, b) of the backward data's phase
    let i = unravel(j, p.ph_h, p.ph_w);
    let idx = ((i.x * p.c_in + m) * p.h + p.ph_y + p.stride * i.y) * p.w + p.ph_x + p.stride * i.z;
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
    // this thread's B column (e % TILE_N = lid % TILE_N for its four elements), the same in every chunk
    let win = window_of(j0 + lid % TILE_N);
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.gemm_k; k0 += TILE_K) {
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * 256u;
            // A = weight rows, read along k; B = im2col, read along output pixels
            a_tile[k_major(e)] = a_forward(m0 + e / TILE_K, k0 + e % TILE_K);
            b_tile[e] = col_at(tap_of(k0 + e / TILE_N, p.c_in), win);
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
    // this thread's four B rows: the taps j0 + e / TILE_K (e = lid + 256 i), the same in every chunk (four
    // values, not an array: no dynamically indexed private memory)
    let t0 = tap_of(j0 + lid / TILE_K, p.c_in);
    let t1 = tap_of(j0 + (lid + 256u) / TILE_K, p.c_in);
    let t2 = tap_of(j0 + (lid + 512u) / TILE_K, p.c_in);
    let t3 = tap_of(j0 + (lid + 768u) / TILE_K, p.c_in);
    var acc: array<vec4<f32>, 4>;
    for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        // both operands read along the reduction (output pixels): this thread's pixel k of the chunk
        // (e % TILE_K = lid % TILE_K) is the same for its four elements
        let k = k0 + lid % TILE_K;
        let win = window_of(k);
        let a_col = column_offset(k, p.c_out, p.oh * p.ow);
        stage_weight_grad(lid, m0, a_col, t0, win);
        stage_weight_grad(lid + 256u, m0, a_col, t1, win);
        stage_weight_grad(lid + 512u, m0, a_col, t2, win);
        stage_weight_grad(lid + 768u, m0, a_col, t3, win);
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
    // this thread's B column: the phase's input pixel j0 + lid % TILE_N, the same in every chunk
    let pix = pixel_of(j0 + lid % TILE_N);
    let khw = p.kh * p.kw;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.gemm_k; k0 += TILE_K) {
        // A[ci, r = (co, ki, kj)] = weight[co, ci, ki, kj], read along the phase's taps: this thread's tap r of the chunk
        // (e % TILE_K = lid % TILE_K) is the same for its four elements; B = dout gathered, read along input pixels
        let a_col = phase_column_offset(k0 + lid % TILE_K);
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * 256u;
            let m = m0 + e / TILE_K;
            var a = 0.0;
            if (m < p.gemm_m && a_col != 0xffffffffu) {
                a = weight[a_col + m * khw];
            }
            a_tile[k_major(e)] = a;
            b_tile[e] = dout_at(phase_tap_of(k0 + e / TILE_N), pix);
        }
        workgroupBarrier();
        multiply_tile(&acc, lid);
        workgroupBarrier();
    }
    store_tile(BACKWARD_DATA, acc, lid, m0, j0);
}
