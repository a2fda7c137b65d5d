//! Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray 2015, interpolation points 0, ±1, ±2, ∞):
//! each 4x4 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its 6x6 input patch `d`, 36 multiplies per
//! (C_in, C_out) pair for 16 outputs: 4x fewer than the direct sum (F(2x2, 3x3): 2.25x).
//!
//! Batched as in [`super::winograd`]: 36 GEMMs per block, `M[ξ] [C_out, T] = U[ξ] [C_out, C_in] · V[ξ] [C_in, T]`,
//! with the tiles of a block stored image-innermost (tile `t` of image `b` at column `t * nb + b`), so every
//! transform step is one 8-lane vector op across 8 images. [`winograd4_3x3`] runs the forward pass and, with the
//! flipped and transposed filter, the input gradient; [`winograd4_3x3_dweight`] is its adjoint, the weight
//! gradient.
//!
//! Numerics: `G` holds 1/6, 1/12 and 1/24 and `Bᵀ`, `Aᵀ` hold 4, 5 and 8, so the rounding error is ~20x
//! F(2x2, 3x3)'s (which only adds and halves); tests/winograd.rs states the measured error against the f64
//! reference. The measured per-shape choice tries it for the backward pass and for forward passes without
//! gradients (see [`super`]).

use super::winograd::{add, arr, bands, env_tiles, gather_filters, load, reduce_dweight, store, sub, transpose_in, transpose_out, Filter, Lanes, WinoShape, L};
use super::tasks::batch_split;
use crate::device::vector::vectorized;
use crate::ops::linear::gemm::gemm_strided;
use rayon::prelude::*;

/// 4x4 output tiles: (rows, columns).
fn tiles(s: &WinoShape) -> (usize, usize) {
    ((s.h + 2 * s.pad - 2).div_ceil(4), (s.w + 2 * s.pad - 2).div_ceil(4))
}

/// The zero-padded plane `[4*TH + 2, 4*TW + 2]` covering every tile's 6x6 patch.
fn plane(s: &WinoShape) -> (usize, usize) {
    let (th, tw) = tiles(s);
    (4 * th + 2, 4 * tw + 2)
}

/// Target tile count of one block. A block's 36 GEMMs each read `V[ξ] [C_in, T]` and write `M[ξ] [C_out, T]`,
/// which the transforms wrote (read) just before: 128 tiles keep a 128-channel block's `V` and `M` in L2. Measured
/// on ResNet-18's layers (batch 64, backward): 28.8 ms at 128 against 32.2 ms at 512 on 128 channels at 16x16,
/// 25.3 against 26.3 ms on 256 at 8x8 (`MOCO_WINO4_TILES` overrides it, for benchmarking).
const TILE_COLS4: usize = 128;

/// How a task of `per` images is cut into blocks of about [`TILE_COLS4`] tiles: `(images per block, tile rows per
/// band, ld)`. A block holds at least one 8-lane group of images (at most `per`); when that many whole planes hold
/// more tiles than the target (32x32 planes: 64 tiles each), each block is cut into bands of tile rows, so that
/// its `V` and `M` stay in L2. `ld` is the most tiles a band holds.
fn blocking(s: &WinoShape, per: usize) -> (usize, usize, usize) {
    static T: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let target = *T.get_or_init(|| env_tiles("MOCO_WINO4_TILES", TILE_COLS4));
    let (th, tw) = tiles(s);
    let bl = (target / (th * tw)).max(L).min(per.max(1));
    let rows = (target / (bl * tw)).clamp(1, th);
    (bl, rows, bl * rows * tw)
}

/// Per task: a band's padded input rows `[4R + 2, PW, bl]` and output rows `[4R, 4TW, bl]` (R tile rows), `V`
/// and `M`.
fn task_len(s: &WinoShape, per: usize) -> usize {
    let ((_, pw), (_, tw), (bl, rows, ld)) = (plane(s), tiles(s), blocking(s, per));
    (4 * rows + 2) * pw * bl + 16 * rows * tw * bl + 36 * (s.c_in + s.c_out) * ld
}

/// Scratch elements needed for `s` split into `tasks` tasks of at most `per` images.
pub(crate) fn scratch_len(s: &WinoShape, per: usize, tasks: usize) -> usize {
    36 * s.c_out * s.c_in + tasks * task_len(s, per)
}

#[inline(always)]
fn scale(a: &Lanes, k: f32) -> Lanes {
    arr(#[inline(always)] |l| a[l] * k)
}

/// `G x` for one column `x = (a, b, c)` of a filter: `G = [[¼,0,0],[-⅙,-⅙,-⅙],[-⅙,⅙,-⅙],[1/24,1/12,⅙],[1/24,-1/12,⅙],[0,0,1]]`.
#[inline(always)]
fn g6(a: &Lanes, b: &Lanes, c: &Lanes) -> [Lanes; 6] {
    let (ac, q) = (add(a, c), scale(a, 1.0 / 24.0));
    let (r, t) = (scale(b, 1.0 / 12.0), scale(c, 1.0 / 6.0));
    [scale(a, 0.25), scale(&add(&ac, b), -1.0 / 6.0), scale(&sub(&ac, b), -1.0 / 6.0), add(&add(&q, &r), &t), add(&sub(&q, &r), &t), *c]
}

/// `Bᵀ x` for one column of a 6x6 patch: `Bᵀ = [[4,0,-5,0,1,0],[0,-4,-4,1,1,0],[0,4,-4,-1,1,0],[0,-2,-1,2,1,0],
/// [0,2,-1,-2,1,0],[0,4,0,-5,0,1]]`.
#[inline(always)]
fn bt6(d: &[Lanes; 6]) -> [Lanes; 6] {
    let (d12, d34) = (add(&d[1], &d[2]), add(&d[3], &d[4]));
    let (m12, m43) = (sub(&d[1], &d[2]), sub(&d[4], &d[3]));
    let (d42, m31) = (sub(&d[4], &d[2]), sub(&d[3], &d[1]));
    [
        add(&sub(&scale(&d[0], 4.0), &scale(&d[2], 5.0)), &d[4]),
        sub(&d34, &scale(&d12, 4.0)),
        add(&m43, &scale(&m12, 4.0)),
        add(&d42, &scale(&m31, 2.0)),
        sub(&d42, &scale(&m31, 2.0)),
        add(&sub(&scale(&d[1], 4.0), &scale(&d[3], 5.0)), &d[5]),
    ]
}

/// `Aᵀ x` for one column of a 6x6 product tile: `Aᵀ = [[1,1,1,1,1,0],[0,1,-1,2,-2,0],[0,1,1,4,4,0],[0,1,-1,8,-8,1]]`.
#[inline(always)]
fn at6(m: &[Lanes; 6]) -> [Lanes; 4] {
    let (p12, p34) = (add(&m[1], &m[2]), add(&m[3], &m[4]));
    let (m12, m34) = (sub(&m[1], &m[2]), sub(&m[3], &m[4]));
    [add(&add(&m[0], &p12), &p34), add(&m12, &scale(&m34, 2.0)), add(&p12, &scale(&p34, 4.0)), add(&add(&m12, &scale(&m34, 8.0)), &m[5])]
}

/// `u [C_out, 36, C_in]`: `G g Gᵀ` of every filter (8 input channels at a time; `filter` as in F(2x2, 3x3)).
fn transform_weights(u: &mut [f32], weight: &[f32], s: &WinoShape, filter: Filter) {
    let ci_n = s.c_in;
    u.par_chunks_mut(36 * ci_n).enumerate().for_each(|(co, uc)| vectorized(#[inline(always)] || {
        for ci0 in (0..ci_n).step_by(L) {
            let n = (ci_n - ci0).min(L);
            let g = gather_filters(weight, co, ci0, n, s, filter);
            // t = G g: [6, 3], then t Gᵀ: [6, 6]
            let cols: [[Lanes; 6]; 3] = arr(#[inline(always)] |j| g6(&g[j], &g[3 + j], &g[6 + j]));
            for i in 0..6 {
                let row = g6(&cols[0][i], &cols[1][i], &cols[2][i]);
                for (j, v) in row.iter().enumerate() {
                    store(&mut uc[(6 * i + j) * ci_n + ci0..], n, v);
                }
            }
        }
    }));
}

/// `out (+)= inp ⋆ w` by F(4x4, 3x3) (see [`WinoShape`]; lengths validated by the caller; `accumulate = false`
/// overwrites `out`).
pub(crate) fn winograd4_3x3(out: &mut [f32], accumulate: bool, scratch: &mut Vec<f32>, inp: &[f32], weight: &[f32], s: &WinoShape, filter: Filter) {
    let (per, tasks, par_gemm) = batch_split(s.n);
    let need = scratch_len(s, per, tasks);
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let ((_, pw), (th, tw), (bl, rows, ld)) = (plane(s), tiles(s), blocking(s, per));
    let (oh, ow) = (s.h + 2 * s.pad - 2, s.w + 2 * s.pad - 2);
    let (in_img, out_img) = (s.c_in * s.h * s.w, s.c_out * oh * ow);
    let task_len = task_len(s, per);
    let (u, rest) = scratch[..need].split_at_mut(36 * s.c_out * s.c_in);
    transform_weights(u, weight, s, filter);
    let u: &[f32] = u;
    inp.par_chunks(per * in_img).zip(out.par_chunks_mut(per * out_img)).zip(rest.par_chunks_mut(task_len)).for_each(|((x, y), buf)| vectorized(#[inline(always)] || {
        let (xt, rest) = buf.split_at_mut((4 * rows + 2) * pw * bl);
        let (yt, rest) = rest.split_at_mut(16 * rows * tw * bl);
        let (v, m) = rest.split_at_mut(36 * s.c_in * ld);
        for (xb, yb) in x.chunks(bl * in_img).zip(y.chunks_mut(bl * out_img)) {
            let nb = xb.len() / in_img;
            for band in bands(th, rows) {
                input_tiles(v, xt, xb, s, ld, nb, band);
                // m[ξ] [C_out, nt] = u[ξ] [C_out, C_in] · v[ξ] [C_in, nt]; u[ξ] row co at co*36*C_in + ξ*C_in
                for xi in 0..36 {
                    let (mx, ux, vx) = (&mut m[xi * s.c_out * ld..(xi + 1) * s.c_out * ld], &u[xi * s.c_in..], &v[xi * s.c_in * ld..(xi + 1) * s.c_in * ld]);
                    gemm_strided(mx, ld, 1, ux, 36 * s.c_in, 1, vx, ld, 1, s.c_out, nb * (band.1 - band.0) * tw, s.c_in, 1.0, false, par_gemm);
                }
                output_tiles(yb, m, yt, s, ld, nb, band, accumulate);
            }
        }
    }));
}

/// `v [36, C_in, ld]` (column `((ty - ty0) * TW + tx) * nb + b`): `Bᵀ d B` of every 6x6 patch in tile rows
/// `band = (ty0, ty1)` of every channel of the `nb` images `xb`, through `xt [4(ty1-ty0) + 2, PW, nb]` (the
/// band's zero-padded rows of one channel's planes, image innermost).
#[inline(always)]
fn input_tiles(v: &mut [f32], xt: &mut [f32], xb: &[f32], s: &WinoShape, ld: usize, nb: usize, band: (usize, usize)) {
    let ((_, pw), (_, tw), (ty0, ty1)) = (plane(s), tiles(s), band);
    let (hw, xs) = (s.h * s.w, s.c_in * ld);
    // padded rows pr0..pr0 + rows of the plane; image rows r0..r1 fall inside them
    let (pr0, rows) = (4 * ty0, 4 * (ty1 - ty0) + 2);
    let (r0, r1) = ((pr0.max(s.pad) - s.pad).min(s.h), (pr0 + rows).saturating_sub(s.pad).min(s.h));
    let xt = &mut xt[..rows * pw * nb];
    // the border stays zero: every channel writes the same image positions below
    xt.fill(0.0);
    for c in 0..s.c_in {
        if r0 < r1 {
            transpose_in(&mut xt[((r0 + s.pad - pr0) * pw + s.pad) * nb..], pw, nb, r1 - r0, s.w, xb, |b| (b * s.c_in + c) * hw + r0 * s.w);
        }
        for ty in 0..ty1 - ty0 {
            for tx in 0..tw {
                let col = c * ld + (ty * tw + tx) * nb;
                for b0 in (0..nb).step_by(L) {
                    let n = (nb - b0).min(L);
                    let at = (4 * ty * pw + 4 * tx) * nb + b0;
                    // t = Bᵀ d (per column j), then each row of t times B
                    let t: [[Lanes; 6]; 6] = arr(#[inline(always)] |j| bt6(&arr(#[inline(always)] |i| load(&xt[at + (i * pw + j) * nb..], n))));
                    for i in 0..6 {
                        let row = bt6(&arr(#[inline(always)] |j| t[j][i]));
                        for (k, o) in row.iter().enumerate() {
                            store(&mut v[(6 * i + k) * xs + col + b0..], n, o);
                        }
                    }
                }
            }
        }
    }
}

/// `yb [nb, C_out, OH, OW] (+)= Aᵀ m A` for tile rows `band = (ty0, ty1)` from `m [36, C_out, ld]` (column
/// `((ty - ty0) * TW + tx) * nb + b`), through `yt [4(ty1-ty0), 4TW, nb]` per channel, clipped to the plane.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_tiles(yb: &mut [f32], m: &[f32], yt: &mut [f32], s: &WinoShape, ld: usize, nb: usize, band: (usize, usize), accumulate: bool) {
    let ((_, tw), (ty0, ty1)) = (tiles(s), band);
    let (oh, ow) = (s.h + 2 * s.pad - 2, s.w + 2 * s.pad - 2);
    let (ohw, xs, yw) = (oh * ow, s.c_out * ld, 4 * tw);
    // output rows 4*ty0 .. r1 of the plane
    let r1 = (4 * ty1).min(oh);
    for c in 0..s.c_out {
        for ty in 0..ty1 - ty0 {
            for tx in 0..tw {
                let col = c * ld + (ty * tw + tx) * nb;
                for b0 in (0..nb).step_by(L) {
                    let n = (nb - b0).min(L);
                    // s = Aᵀ m (per column j): [4, 6], then each row of s times A: [4, 4]
                    let sc: [[Lanes; 4]; 6] = arr(#[inline(always)] |j| at6(&arr(#[inline(always)] |i| load(&m[(6 * i + j) * xs + col + b0..], n))));
                    for r in 0..4 {
                        let row = at6(&arr(#[inline(always)] |j| sc[j][r]));
                        let at = ((4 * ty + r) * yw + 4 * tx) * nb + b0;
                        for (e, o) in row.iter().enumerate() {
                            store(&mut yt[at + e * nb..], n, o);
                        }
                    }
                }
            }
        }
        transpose_out(yb, nb, r1 - 4 * ty0, ow, yt, yw, accumulate, |b| (b * s.c_out + c) * ohw + 4 * ty0 * ow);
    }
}

/// `A y` for one column `y` of a 4x4 output-gradient tile (`A = (Aᵀ)ᵀ`, 6x4): the adjoint of [`at6`].
#[inline(always)]
fn a6(y: &[Lanes; 4]) -> [Lanes; 6] {
    let (e, o) = (add(&y[0], &y[2]), add(&y[1], &y[3]));
    let (e4, o2) = (add(&y[0], &scale(&y[2], 4.0)), add(&scale(&y[1], 2.0), &scale(&y[3], 8.0)));
    [y[0], add(&e, &o), sub(&e, &o), add(&e4, &o2), sub(&e4, &o2), y[3]]
}

/// `Gᵀ d` for one column of a 6x6 gradient tile: the adjoint of [`g6`],
/// `Gᵀ = [[¼,-⅙,-⅙,1/24,1/24,0],[0,-⅙,⅙,1/12,-1/12,0],[0,-⅙,-⅙,⅙,⅙,1]]`.
#[inline(always)]
fn gt6(d: &[Lanes; 6]) -> [Lanes; 3] {
    let (p12, m21) = (add(&d[1], &d[2]), sub(&d[2], &d[1]));
    let (p34, m34) = (add(&d[3], &d[4]), sub(&d[3], &d[4]));
    [
        add(&sub(&scale(&d[0], 0.25), &scale(&p12, 1.0 / 6.0)), &scale(&p34, 1.0 / 24.0)),
        add(&scale(&m21, 1.0 / 6.0), &scale(&m34, 1.0 / 12.0)),
        add(&scale(&sub(&p34, &p12), 1.0 / 6.0), &d[5]),
    ]
}

/// Weight gradient of the forward correlation `s` ([`Filter::Direct`]) by F(4x4, 3x3): `dweight [C_out, C_in, 3, 3]
/// += Gᵀ dU G` with `dU[ξ] [C_out, C_in] = Σ_tiles dM[ξ] · V[ξ]ᵀ`, `V = Bᵀ d B` (as in the forward pass) and
/// `dM = A dy Aᵀ`: the adjoint of [`winograd4_3x3`], 36 GEMMs with inner dimension T per block. Each task sums its
/// own `dU [36, C_out, C_in]`; the partials are added in task order (deterministic for a thread count).
pub(crate) fn winograd4_3x3_dweight(dweight: &mut [f32], scratch: &mut Vec<f32>, dout: &[f32], inp: &[f32], s: &WinoShape) {
    let (per, tasks, par_gemm) = batch_split(s.n);
    let ((_, pw), (th, tw), (bl, rows, ld)) = (plane(s), tiles(s), blocking(s, per));
    let (oh, ow) = (s.h + 2 * s.pad - 2, s.w + 2 * s.pad - 2);
    let (in_img, out_img) = (s.c_in * s.h * s.w, s.c_out * oh * ow);
    let du_len = 36 * s.c_out * s.c_in;
    let task_len = task_len(s, per) + du_len;
    if scratch.len() < tasks * task_len {
        scratch.resize(tasks * task_len, 0.0);
    }
    let scratch = &mut scratch[..tasks * task_len];
    inp.par_chunks(per * in_img).zip(dout.par_chunks(per * out_img)).zip(scratch.par_chunks_mut(task_len)).for_each(|((x, dy), buf)| vectorized(#[inline(always)] || {
        let (xt, rest) = buf.split_at_mut((4 * rows + 2) * pw * bl);
        let (yt, rest) = rest.split_at_mut(16 * rows * tw * bl);
        let (v, rest) = rest.split_at_mut(36 * s.c_in * ld);
        let (dm, du) = rest.split_at_mut(36 * s.c_out * ld);
        let mut first = true;
        for (xb, dyb) in x.chunks(bl * in_img).zip(dy.chunks(bl * out_img)) {
            let nb = xb.len() / in_img;
            for band in bands(th, rows) {
                input_tiles(v, xt, xb, s, ld, nb, band);
                grad_tiles(dm, yt, dyb, s, ld, nb, band);
                // du[ξ] [C_out, C_in] (+)= dm[ξ] [C_out, nt] · v[ξ] [C_in, nt]ᵀ
                for xi in 0..36 {
                    let (dux, dmx, vx) = (&mut du[xi * s.c_out * s.c_in..(xi + 1) * s.c_out * s.c_in], &dm[xi * s.c_out * ld..(xi + 1) * s.c_out * ld], &v[xi * s.c_in * ld..(xi + 1) * s.c_in * ld]);
                    gemm_strided(dux, s.c_in, 1, dmx, ld, 1, vx, 1, ld, s.c_out, s.c_in, nb * (band.1 - band.0) * tw, 1.0, !first, par_gemm);
                }
                first = false;
            }
        }
    }));
    reduce_dweight(dweight, scratch, tasks, task_len, gt6);
}

/// `dm [36, C_out, ld]` (column `((ty - ty0) * TW + tx) * nb + b`) `= A dy Aᵀ` of every 4x4 tile in tile rows
/// `band = (ty0, ty1)` of every channel of `dyb [nb, C_out, OH, OW]`, through `yt [4(ty1-ty0), 4TW, nb]` per
/// channel (zero past OH x OW).
#[inline(always)]
fn grad_tiles(dm: &mut [f32], yt: &mut [f32], dyb: &[f32], s: &WinoShape, ld: usize, nb: usize, band: (usize, usize)) {
    let ((_, tw), (ty0, ty1)) = (tiles(s), band);
    let (oh, ow) = (s.h + 2 * s.pad - 2, s.w + 2 * s.pad - 2);
    let (ohw, xs, yw) = (oh * ow, s.c_out * ld, 4 * tw);
    // output rows 4*ty0 .. r1 of the plane; the rest of the band's rows and columns stay zero
    let r1 = (4 * ty1).min(oh);
    let yt = &mut yt[..4 * (ty1 - ty0) * yw * nb];
    if r1 < 4 * ty1 || ow % 4 != 0 {
        yt.fill(0.0);
    }
    for c in 0..s.c_out {
        transpose_in(yt, yw, nb, r1 - 4 * ty0, ow, dyb, |b| (b * s.c_out + c) * ohw + 4 * ty0 * ow);
        for ty in 0..ty1 - ty0 {
            for tx in 0..tw {
                let col = c * ld + (ty * tw + tx) * nb;
                for b0 in (0..nb).step_by(L) {
                    let n = (nb - b0).min(L);
                    let at = (4 * ty * yw + 4 * tx) * nb + b0;
                    // p = A dy (per column j): [6, 4], then each row of p times Aᵀ: [6, 6]
                    let p: [[Lanes; 6]; 4] = arr(#[inline(always)] |j| a6(&arr(#[inline(always)] |r| load(&yt[at + (r * yw + j) * nb..], n))));
                    for i in 0..6 {
                        let row = a6(&arr(#[inline(always)] |j| p[j][i]));
                        for (k, o) in row.iter().enumerate() {
                            store(&mut dm[(6 * i + k) * xs + col + b0..], n, o);
                        }
                    }
                }
            }
        }
    }
}
