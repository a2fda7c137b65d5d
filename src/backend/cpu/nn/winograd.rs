//! Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray 2015): each 2x2 output tile is
//! `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its 4x4 input patch `d`, so a tile costs 16 multiplies per (C_in, C_out) pair
//! instead of 36 (2.25x fewer), plus the transforms.
//!
//! Batched over tiles, the ⊙ becomes 16 independent GEMMs, one per position ξ of the 4x4 transformed tile:
//! `M[ξ] [C_out, T] = U[ξ] [C_out, C_in] · V[ξ] [C_in, T]` with `U = G g Gᵀ` (the weights, transformed once per
//! call), `V = Bᵀ d B` (the input tiles) and `T` the tiles of a block of images. Per task (a contiguous range of
//! images, as in the im2col path) the scratch holds a zero-padded copy of one input plane, `V [16, C_in, T]` and
//! `M [16, C_out, T]`; `U [C_out, 16, C_in]` is shared. Nothing is allocated per call once `scratch` has grown.
//!
//! The same kernel gives the input gradient of a 3x3 stride-1 convolution with padding `p <= 2`: `dinp` is the
//! correlation of `dout` (padded by `2 - p`) with the flipped, transposed filter `w'[ci, co, i, j] =
//! w[co, ci, 2-i, 2-j]`, accumulated into `dinp`.
//!
//! Numerics: the transforms only add, subtract and halve, so the error stays close to that of the direct
//! sum (at most ~1.6x on ResNet-18's layers; tests/winograd.rs states the bound against the f64 reference).

use crate::backend::cpu::gemm::gemm_strided;
use rayon::prelude::*;

/// Target tile count `T` of one block of images (the GEMMs' column count).
const TILE_COLS: usize = 512;

/// A stride-1 3x3 correlation `out [N, C_out, OH, OW] (+)= inp [N, C_in, H, W] ⋆ w` with zero padding `pad`,
/// `OH = H + 2*pad - 2` (>= 1).
#[derive(Clone, Copy, Debug)]
pub(crate) struct WinoShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub pad: usize,
}

impl WinoShape {
    fn oh(&self) -> usize {
        self.h + 2 * self.pad - 2
    }
    fn ow(&self) -> usize {
        self.w + 2 * self.pad - 2
    }
    /// Tile rows and columns.
    fn tiles(&self) -> (usize, usize) {
        (self.oh().div_ceil(2), self.ow().div_ceil(2))
    }
    /// Padded plane `[2*TH + 2, 2*TW + 2]`: covers every tile's 4x4 patch.
    fn plane(&self) -> (usize, usize) {
        let (th, tw) = self.tiles();
        (2 * th + 2, 2 * tw + 2)
    }
}

/// How the weights enter: as given (`[C_out, C_in, 3, 3]`, forward) or flipped and transposed (the weights of a
/// forward convolution `[C_in', C_out', 3, 3]` = `[C_out, C_in, 3, 3]` of this correlation swapped: backward data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Filter {
    Direct,
    FlippedTransposed,
}

/// Scratch elements needed for `s` split into `tasks` tasks of at most `per` images.
pub(crate) fn scratch_len(s: &WinoShape, per: usize, tasks: usize) -> usize {
    let (ph, pw) = s.plane();
    let ld = block(s, per) * s.tiles().0 * s.tiles().1;
    16 * s.c_out * s.c_in + tasks * (ph * pw + 16 * (s.c_in + s.c_out) * ld)
}

/// Images per block for a task of `per` images.
fn block(s: &WinoShape, per: usize) -> usize {
    let (th, tw) = s.tiles();
    (TILE_COLS / (th * tw)).clamp(1, per.max(1))
}

/// `u [C_out, 16, C_in]`: `G g Gᵀ` of every 3x3 filter, `G = [[1,0,0],[½,½,½],[½,-½,½],[0,0,1]]` (parallel over
/// output channels).
fn transform_weights(u: &mut [f32], weight: &[f32], s: &WinoShape, filter: Filter) {
    let (co_n, ci_n) = (s.c_out, s.c_in);
    u.par_chunks_mut(16 * ci_n).enumerate().for_each(|(co, uc)| {
        for ci in 0..ci_n {
            let mut g = [0.0f32; 9];
            match filter {
                Filter::Direct => g.copy_from_slice(&weight[(co * ci_n + ci) * 9..(co * ci_n + ci + 1) * 9]),
                Filter::FlippedTransposed => {
                    // g[i, j] = w[ci, co, 2-i, 2-j], w: [C_in (= this C_out), C_out (= this C_in), 3, 3]... as a
                    // forward convolution's weight [C_out_fwd = ci_n, C_in_fwd = co_n, 3, 3]
                    let src = &weight[(ci * co_n + co) * 9..(ci * co_n + co + 1) * 9];
                    for (k, v) in g.iter_mut().enumerate() {
                        *v = src[8 - k];
                    }
                }
            }
            // t = G g: [4, 3]
            let mut t = [[0.0f32; 3]; 4];
            for j in 0..3 {
                let (a, b, c) = (g[j], g[3 + j], g[6 + j]);
                t[0][j] = a;
                t[1][j] = 0.5 * (a + b + c);
                t[2][j] = 0.5 * (a - b + c);
                t[3][j] = c;
            }
            // t Gᵀ: [4, 4]
            for (i, r) in t.iter().enumerate() {
                let (a, b, c) = (r[0], r[1], r[2]);
                let row = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
                for (j, v) in row.into_iter().enumerate() {
                    uc[(i * 4 + j) * ci_n + ci] = v;
                }
            }
        }
    });
}

/// `out (+)= inp ⋆ w` (see [`WinoShape`]). Lengths must already be validated by the caller:
/// `inp` N*C_in*H*W, `out` N*C_out*OH*OW, `weight` 9*C_out*C_in. `accumulate = false` overwrites `out`.
pub(crate) fn winograd_3x3(out: &mut [f32], accumulate: bool, scratch: &mut Vec<f32>, inp: &[f32], weight: &[f32], s: &WinoShape, filter: Filter) {
    let t = rayon::current_num_threads().max(1);
    let (per, tasks, par_gemm) = if s.n >= t {
        let per = s.n.div_ceil(t);
        (per, s.n.div_ceil(per), false)
    } else {
        (s.n, 1, t > 1)
    };
    let need = scratch_len(s, per, tasks);
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (ph, pw) = s.plane();
    let (th, tw) = s.tiles();
    let tpi = th * tw;
    let bl = block(s, per);
    let ld = bl * tpi;
    let (oh, ow) = (s.oh(), s.ow());
    let (in_img, out_img) = (s.c_in * s.h * s.w, s.c_out * oh * ow);
    let task_len = ph * pw + 16 * (s.c_in + s.c_out) * ld;
    let (u, rest) = scratch[..need].split_at_mut(16 * s.c_out * s.c_in);
    transform_weights(u, weight, s, filter);
    let u: &[f32] = u;
    inp.par_chunks(per * in_img).zip(out.par_chunks_mut(per * out_img)).zip(rest.par_chunks_mut(task_len)).for_each(|((x, y), buf)| {
        let (plane, rest) = buf.split_at_mut(ph * pw);
        let (v, m) = rest.split_at_mut(16 * s.c_in * ld);
        plane.fill(0.0);
        for (xb, yb) in x.chunks(bl * in_img).zip(y.chunks_mut(bl * out_img)) {
            let nb = xb.len() / in_img;
            let nt = nb * tpi;
            // v [16, C_in, ld]: Bᵀ d B of every tile of every channel of the block
            for (b, x_n) in xb.chunks(in_img).enumerate() {
                for (c, src) in x_n.chunks(s.h * s.w).enumerate() {
                    for (r, row) in src.chunks(s.w).enumerate() {
                        let at = (r + s.pad) * pw + s.pad;
                        plane[at..at + s.w].copy_from_slice(row);
                    }
                    input_tiles(v, c * ld + b * tpi, s.c_in * ld, plane, pw, th, tw);
                }
            }
            // m[ξ] [C_out, nt] = u[ξ] [C_out, C_in] · v[ξ] [C_in, nt]
            for xi in 0..16 {
                let (mx, ux, vx) = (&mut m[xi * s.c_out * ld..(xi + 1) * s.c_out * ld], &u[xi * s.c_in..], &v[xi * s.c_in * ld..(xi + 1) * s.c_in * ld]);
                // u[ξ] row co at co*16*C_in + ξ*C_in
                gemm_strided(mx, ld, 1, ux, 16 * s.c_in, 1, vx, ld, 1, s.c_out, nt, s.c_in, 1.0, false, par_gemm);
            }
            // y (+)= Aᵀ m A, clipped to the output plane
            for (b, y_n) in yb.chunks_mut(out_img).enumerate() {
                for (c, dst) in y_n.chunks_mut(oh * ow).enumerate() {
                    output_tiles(dst, oh, ow, m, c * ld + b * tpi, s.c_out * ld, th, tw, accumulate);
                }
            }
        }
    });
}

/// Writes `Bᵀ d B` of every 4x4 patch of `plane [.., pw]` (tile (ty, tx) at `(2ty, 2tx)`) to
/// `v[ξ * xs + at + ty*tw + tx]`, `Bᵀ = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]`.
fn input_tiles(v: &mut [f32], at: usize, xs: usize, plane: &[f32], pw: usize, th: usize, tw: usize) {
    for ty in 0..th {
        let r = &plane[2 * ty * pw..(2 * ty + 4) * pw];
        let (r0, r1, r2, r3) = (&r[..pw], &r[pw..2 * pw], &r[2 * pw..3 * pw], &r[3 * pw..]);
        let base = at + ty * tw;
        for tx in 0..tw {
            let j = 2 * tx;
            // t = Bᵀ d (columns j..j+4)
            let mut t = [[0.0f32; 4]; 4];
            for k in 0..4 {
                let (a, b, c, d) = (r0[j + k], r1[j + k], r2[j + k], r3[j + k]);
                t[0][k] = a - c;
                t[1][k] = b + c;
                t[2][k] = c - b;
                t[3][k] = b - d;
            }
            for (i, row) in t.iter().enumerate() {
                let (a, b, c, d) = (row[0], row[1], row[2], row[3]);
                let o = base + tx;
                v[(4 * i) * xs + o] = a - c;
                v[(4 * i + 1) * xs + o] = b + c;
                v[(4 * i + 2) * xs + o] = c - b;
                v[(4 * i + 3) * xs + o] = b - d;
            }
        }
    }
}

/// `dst [oh, ow] (+)= Aᵀ m A` for every tile, `m[ξ * xs + at + ty*tw + tx]`, `Aᵀ = [[1,1,1,0],[0,1,-1,-1]]`;
/// outputs past the plane's edge (odd OH/OW) are dropped.
#[allow(clippy::too_many_arguments)]
fn output_tiles(dst: &mut [f32], oh: usize, ow: usize, m: &[f32], at: usize, xs: usize, th: usize, tw: usize, accumulate: bool) {
    for ty in 0..th {
        let base = at + ty * tw;
        let rows = (oh - 2 * ty).min(2);
        for tx in 0..tw {
            let o = base + tx;
            let g = |xi: usize| m[xi * xs + o];
            // s = Aᵀ m: [2, 4]
            let mut sr = [[0.0f32; 4]; 2];
            for k in 0..4 {
                let (a, b, c, d) = (g(k), g(4 + k), g(8 + k), g(12 + k));
                sr[0][k] = a + b + c;
                sr[1][k] = b - c - d;
            }
            let cols = (ow - 2 * tx).min(2);
            for (a, row) in sr.iter().enumerate().take(rows) {
                let y = [row[0] + row[1] + row[2], row[1] - row[2] - row[3]];
                let d = &mut dst[(2 * ty + a) * ow + 2 * tx..(2 * ty + a) * ow + 2 * tx + cols];
                for (dv, yv) in d.iter_mut().zip(y) {
                    *dv = if accumulate { *dv + yv } else { yv };
                }
            }
        }
    }
}
