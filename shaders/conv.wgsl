// 2-D convolution (NCHW, weight [C_out, C_in, KH, KW], zero padding, no bias) as tiled implicit GEMMs.
// Host code: src/ops/conv/wgpu.rs; CPU version: src/ops/conv/cpu/mod.rs (same names, im2col + GEMM).
//
// Every entry point computes one 64x64 tile of a GEMM C[M, N] = A[M, K] · B[K, N] with 256 threads, each owning
// a 4x4 register micro-tile, stepping through K in 16-deep chunks staged in workgroup memory (2 x 4 KiB).
// The im2col matrix is never materialised: B (or A) is gathered from the image while loading the tile.
//
//   conv2d_forward          M = C_out, N = N*OH*OW, K = C_in*KH*KW   out    = weight · col          (overwrites)
//   conv2d_backward_weight  M = C_out, N = C_in*KH*KW, K = N*OH*OW   dweight += dout · colᵀ
//   conv2d_backward_data    M = C_in,  N = N*H*W,  K = C_out*KH*KW   dinp   += gather of weight · dout (no atomics:
//                           each input pixel sums over the (c_out, kh, kw) whose window covers it; deterministic)
//
// Each output element is owned by exactly one thread, so the backward kernels accumulate with a plain
// read-modify-write. Grid: x * z tiles over N (x <= 65535, the host splits), y tiles over M.

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
    _pad0: u32,
    _pad1: u32,
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
// out (forward) / dweight / dinp, by entry point
@group(0) @binding(4) var<storage, read_write> result: array<f32>;

// A tile stored k-major: a_tile[kk * TILE_M + mm]; B tile: b_tile[kk * TILE_N + nn].
var<workgroup> a_tile: array<f32, 1024>;
var<workgroup> b_tile: array<f32, 1024>;

// im2col element (row k = (ci, ki, kj), column j = (n, oy, ox)), 0 outside the image or the matrix.
fn col_value(k: u32, j: u32) -> f32 {
    let khw = p.kh * p.kw;
    let ohw = p.oh * p.ow;
    if (k >= p.c_in * khw || j >= p.n * ohw) {
        return 0.0;
    }
    let n = j / ohw;
    let pix = j - n * ohw;
    let oy = pix / p.ow;
    let ox = pix - oy * p.ow;
    let ci = k / khw;
    let kr = k - ci * khw;
    let ki = kr / p.kw;
    let kj = kr - ki * p.kw;
    let iy = i32(oy * p.stride + ki) - i32(p.pad);
    let ix = i32(ox * p.stride + kj) - i32(p.pad);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return 0.0;
    }
    return inp[((n * p.c_in + ci) * p.h + u32(iy)) * p.w + u32(ix)];
}

// The dout element that weight tap r = (co, ki, kj) meets at input pixel j = (n, iy, ix), 0 if none.
fn dout_gather(r: u32, j: u32) -> f32 {
    let khw = p.kh * p.kw;
    let hw = p.h * p.w;
    if (r >= p.c_out * khw || j >= p.n * hw) {
        return 0.0;
    }
    let co = r / khw;
    let kr = r - co * khw;
    let ki = kr / p.kw;
    let kj = kr - ki * p.kw;
    let n = j / hw;
    let pix = j - n * hw;
    let iy = pix / p.w;
    let ix = pix - iy * p.w;
    let ty = i32(iy + p.pad) - i32(ki);
    let tx = i32(ix + p.pad) - i32(kj);
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
    return dout[((n * p.c_out + co) * p.oh + oy) * p.ow + ox];
}

// acc[i] += a_tile[kk, ty*4 + i] * b_tile[kk, tx*4 .. tx*4 + 4] over the 16-deep chunk.
fn multiply_tile(acc: ptr<function, array<vec4<f32>, 4>>, tx: u32, ty: u32) {
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

// out [N, C_out, OH, OW] = weight [C_out, K] · col [K, N*OH*OW]
@compute @workgroup_size(256)
fn conv2d_forward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let m0 = wid.y * TILE_M;
    let j0 = (wid.z * nwg.x + wid.x) * TILE_N;
    if (j0 >= p.gemm_n) {
        return;
    }
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.gemm_k; k0 += TILE_K) {
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * 256u;
            // A = weight rows, contiguous along k
            let ka = e % TILE_K;
            let ma = e / TILE_K;
            var a = 0.0;
            if (m0 + ma < p.gemm_m && k0 + ka < p.gemm_k) {
                a = weight[(m0 + ma) * p.gemm_k + k0 + ka];
            }
            a_tile[ka * TILE_M + ma] = a;
            // B = im2col, contiguous along output pixels
            let nb = e % TILE_N;
            let kb = e / TILE_N;
            b_tile[kb * TILE_N + nb] = col_value(k0 + kb, j0 + nb);
        }
        workgroupBarrier();
        multiply_tile(&acc, tx, ty);
        workgroupBarrier();
    }
    let ohw = p.oh * p.ow;
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty * 4u + i;
        for (var c = 0u; c < 4u; c++) {
            let j = j0 + tx * 4u + c;
            if (m < p.gemm_m && j < p.gemm_n) {
                let n = j / ohw;
                result[(n * p.c_out + m) * ohw + (j - n * ohw)] = acc[i][c];
            }
        }
    }
}

// dweight [C_out, K] += dout [C_out, N*OH*OW] · colᵀ [N*OH*OW, K]
@compute @workgroup_size(256)
fn conv2d_backward_weight(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let m0 = wid.y * TILE_M;
    let j0 = (wid.z * nwg.x + wid.x) * TILE_N;
    if (j0 >= p.gemm_n) {
        return;
    }
    let tx = lid % 16u;
    let ty = lid / 16u;
    let ohw = p.oh * p.ow;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.gemm_k; k0 += TILE_K) {
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * 256u;
            // both operands contiguous along the reduction (output pixels)
            let kk = e % TILE_K;
            let mn = e / TILE_K;
            let r = k0 + kk;
            var a = 0.0;
            if (m0 + mn < p.gemm_m && r < p.gemm_k) {
                let n = r / ohw;
                a = dout[(n * p.c_out + m0 + mn) * ohw + (r - n * ohw)];
            }
            a_tile[kk * TILE_M + mn] = a;
            b_tile[kk * TILE_N + mn] = col_value(j0 + mn, r);
        }
        workgroupBarrier();
        multiply_tile(&acc, tx, ty);
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty * 4u + i;
        for (var c = 0u; c < 4u; c++) {
            let j = j0 + tx * 4u + c;
            if (m < p.gemm_m && j < p.gemm_n) {
                let idx = m * p.gemm_n + j;
                result[idx] = result[idx] + acc[i][c];
            }
        }
    }
}

// dinp [N, C_in, H, W] += Σ_(co, ki, kj) weight[co, ci, ki, kj] · dout[n, co, (iy + pad - ki) / stride, ...]
@compute @workgroup_size(256)
fn conv2d_backward_data(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let m0 = wid.y * TILE_M;
    let j0 = (wid.z * nwg.x + wid.x) * TILE_N;
    if (j0 >= p.gemm_n) {
        return;
    }
    let tx = lid % 16u;
    let ty = lid / 16u;
    let khw = p.kh * p.kw;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.gemm_k; k0 += TILE_K) {
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * 256u;
            // A[ci, r = (co, ki, kj)] = weight[co, ci, ki, kj], contiguous along the taps
            let ka = e % TILE_K;
            let ma = e / TILE_K;
            let r = k0 + ka;
            var a = 0.0;
            if (m0 + ma < p.gemm_m && r < p.gemm_k) {
                let co = r / khw;
                a = weight[(co * p.c_in + m0 + ma) * khw + (r - co * khw)];
            }
            a_tile[ka * TILE_M + ma] = a;
            // B[r, j = (n, iy, ix)] = dout gathered, contiguous along input pixels
            let nb = e % TILE_N;
            let kb = e / TILE_N;
            b_tile[kb * TILE_N + nb] = dout_gather(k0 + kb, j0 + nb);
        }
        workgroupBarrier();
        multiply_tile(&acc, tx, ty);
        workgroupBarrier();
    }
    let hw = p.h * p.w;
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + ty * 4u + i;
        for (var c = 0u; c < 4u; c++) {
            let j = j0 + tx * 4u + c;
            if (m < p.gemm_m && j < p.gemm_n) {
                let n = j / hw;
                let idx = (n * p.c_in + m) * hw + (j - n * hw);
                result[idx] = result[idx] + acc[i][c];
            }
        }
    }
}
