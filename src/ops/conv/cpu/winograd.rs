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
//! Two tile orders ([`TileOrder`]): large planes keep each image's tiles together and vectorise the transforms
//! along tile rows; small planes (8x8 and 4x4 in ResNet-18, where a tile row is 2-4 tiles) batch at least 8
//! whole images per block and store tile `t` of image `b` at column `t * nb + b`, so every transform step is
//! one 8-lane op across 8 images (the planes are transposed to image-innermost first). Both run compiled for
//! AVX2 when the CPU has it ([`crate::device::vector`]; bit-identical results).
//!
//! The weight gradient is the adjoint of the forward pass ([`winograd_3x3_dweight`]). The same forward kernel gives
//! the input gradient of a 3x3 stride-1 convolution with padding `p <= 2`: `dinp` is the
//! correlation of `dout` (padded by `2 - p`) with the flipped, transposed filter `w'[ci, co, i, j] =
//! w[co, ci, 2-i, 2-j]`, accumulated into `dinp`.
//!
//! Numerics: the transforms only add, subtract and halve, so the error stays close to that of the direct
//! sum (at most ~1.6x on ResNet-18's layers; tests/winograd.rs states the bound against the f64 reference).

use super::tasks::batch_split;
use crate::device::vector::vectorized;
use crate::ops::linear::gemm::gemm_strided;
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
    /// Padded plane `[2*TH + 2, 2, TW + 1]` (each row split into its even and its odd columns): covers every
    /// tile's 4x4 patch.
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
    16 * s.c_out * s.c_in + tasks * task_len(s, per)
}

/// Per task: the padded plane(s), the temporaries, `V` and `M`. Ordered by rows: one parity-split plane and 12
/// rows of TW + 1; ordered by images: the block's planes image-innermost `[PH, PW, bl]` and one output plane per
/// image `[2TH, 2TW, bl]`.
fn task_len(s: &WinoShape, per: usize) -> usize {
    let (ph, pw) = s.plane();
    let (th, tw) = s.tiles();
    let (bl, _, ld) = blocking(s, per);
    let (plane, tmp) = match order(s, per) {
        TileOrder::Rows => (ph * pw, 12 * (tw + 1)),
        TileOrder::Images => (ph * pw * bl, 4 * th * tw * bl),
    };
    plane + tmp + 16 * (s.c_in + s.c_out) * ld
}

/// Where tile `t` of image `b` of a block sits in the block's `V` and `M` columns, and so which way the transforms
/// vectorise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TileOrder {
    /// `b * tiles_per_image + t`: along tile rows (large planes: TW is long).
    Rows,
    /// `t * nb + b`: across the block's `nb` images, 8 lanes at a time (small planes, where a tile row is a
    /// handful of tiles).
    Images,
}

/// [`TileOrder::Images`] when a block holds whole images, at least 8 of them (`MOCO_WINO_ORDER=rows|images`
/// forces one where it applies).
fn order(s: &WinoShape, per: usize) -> TileOrder {
    static FORCED: std::sync::OnceLock<Option<TileOrder>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| match std::env::var("MOCO_WINO_ORDER").as_deref() {
        Ok("rows") => Some(TileOrder::Rows),
        Ok("images") => Some(TileOrder::Images),
        _ => None,
    });
    let (bl, rows, _) = blocking(s, per);
    let whole = rows == s.tiles().0;
    match forced {
        Some(TileOrder::Images) if whole => TileOrder::Images,
        Some(_) => TileOrder::Rows,
        None if whole && bl >= L => TileOrder::Images,
        None => TileOrder::Rows,
    }
}

/// Lanes of the image-innermost transforms (one AVX2 register).
pub(super) const L: usize = 8;
pub(super) type Lanes = [f32; L];

/// `[f(0), .., f(N - 1)]`, always inlined. `std::array::from_fn` can stay an out-of-line call, and a call leaves
/// the AVX2 context of [`vectorized`](crate::device::vector::vectorized): its 6x6 tiles then ran on 4-wide
/// SSE through the stack (11 % of a 64-channel F(4x4) backward pass in one profile).
#[inline(always)]
pub(super) fn arr<T: Copy, const N: usize>(mut f: impl FnMut(usize) -> T) -> [T; N] {
    // no zero fill first (a 6x6 tile of lanes would be a memset call): each element is written once
    let mut out = std::mem::MaybeUninit::<[T; N]>::uninit();
    let first = out.as_mut_ptr().cast::<T>();
    for i in 0..N {
        // SAFETY: i < N, inside the array; T: Copy, so an early return by a panic in f leaks nothing
        unsafe { first.add(i).write(f(i)) };
    }
    // SAFETY: all N elements were written above
    unsafe { out.assume_init() }
}

/// Up to `n <= L` values from `src` (zeros past `n`).
#[inline(always)]
pub(super) fn load(src: &[f32], n: usize) -> Lanes {
    if n == L {
        // a fixed-size copy: one vector load (a variable-length one would become a call to memcpy)
        let v: &Lanes = src[..L].try_into().expect("L values");
        *v
    } else {
        load_partial(src, n)
    }
}

#[cold]
#[inline(never)]
fn load_partial(src: &[f32], n: usize) -> Lanes {
    let mut v = [0.0; L];
    v[..n].copy_from_slice(&src[..n]);
    v
}

/// The first `n <= L` lanes of `v` to `dst`.
#[inline(always)]
pub(super) fn store(dst: &mut [f32], n: usize, v: &Lanes) {
    if n == L {
        let d: &mut Lanes = (&mut dst[..L]).try_into().expect("L values");
        *d = *v;
    } else {
        store_partial(dst, n, v)
    }
}

#[cold]
#[inline(never)]
fn store_partial(dst: &mut [f32], n: usize, v: &Lanes) {
    dst[..n].copy_from_slice(&v[..n]);
}

#[inline(always)]
pub(super) fn add(a: &Lanes, b: &Lanes) -> Lanes {
    arr(#[inline(always)] |l| a[l] + b[l])
}

#[inline(always)]
pub(super) fn sub(a: &Lanes, b: &Lanes) -> Lanes {
    arr(#[inline(always)] |l| a[l] - b[l])
}

#[inline(always)]
fn neg(a: &Lanes) -> Lanes {
    arr(#[inline(always)] |l| -a[l])
}

/// `dst[(r * dst_row + x) * nb + b] = plane_b[r * w + x]` for the `nb` planes `src[plane_at(b)..][..h*w]`: a
/// transpose to image-innermost, 8 images at a time (8 loads, one vector store).
#[inline(always)]
pub(super) fn transpose_in(dst: &mut [f32], dst_row: usize, nb: usize, h: usize, w: usize, src: &[f32], plane_at: impl Fn(usize) -> usize) {
    let hw = h * w;
    for b0 in (0..nb).step_by(L) {
        if nb - b0 == L {
            let p: [&[f32]; L] = arr(#[inline(always)] |l| &src[plane_at(b0 + l)..plane_at(b0 + l) + hw]);
            for r in 0..h {
                for x in 0..w {
                    let v: Lanes = arr(#[inline(always)] |l| p[l][r * w + x]);
                    store(&mut dst[(r * dst_row + x) * nb + b0..], L, &v);
                }
            }
        } else {
            for b in b0..nb {
                let p = &src[plane_at(b)..plane_at(b) + hw];
                for r in 0..h {
                    for x in 0..w {
                        dst[(r * dst_row + x) * nb + b] = p[r * w + x];
                    }
                }
            }
        }
    }
}

/// Target tile count `T` of one block (the GEMMs' column count): `MOCO_WINO_TILES` or [`TILE_COLS`].
fn tile_cols() -> usize {
    static T: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *T.get_or_init(|| env_tiles("MOCO_WINO_TILES", TILE_COLS))
}

/// A positive tile count from the environment variable `var` (a benchmarking switch), else `default`.
pub(super) fn env_tiles(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).filter(|&v| v > 0).unwrap_or(default)
}

/// How a task of `per` images is cut into blocks of about [`tile_cols`] tiles: `(images per block, tile rows per
/// block, ld)`. A plane with at least that many tiles is cut into bands of tile rows (one image per block);
/// smaller planes are grouped, whole, several images to a block. `ld` is the most tiles a block holds.
fn blocking(s: &WinoShape, per: usize) -> (usize, usize, usize) {
    let (th, tw) = s.tiles();
    let target = tile_cols();
    if th * tw >= target {
        let rows = (target / tw).clamp(1, th);
        (1, rows, rows * tw)
    } else {
        let bl = (target / (th * tw)).clamp(1, per.max(1));
        (bl, th, bl * th * tw)
    }
}

/// `g[k][l]`: tap k of the 3x3 filter (co, ci0 + l) of this correlation, for `l < n <= L` (zeros past `n`):
/// [`Filter::Direct`] reads `weight [C_out, C_in, 3, 3]`; [`Filter::FlippedTransposed`] reads a forward weight
/// `[C_out_fwd = C_in, C_in_fwd = C_out, 3, 3]` as `g[i, j] = w[ci, co, 2-i, 2-j]`.
#[inline(always)]
pub(super) fn gather_filters(weight: &[f32], co: usize, ci0: usize, n: usize, s: &WinoShape, filter: Filter) -> [Lanes; 9] {
    let (co_n, ci_n) = (s.c_out, s.c_in);
    let mut g = [[0.0f32; L]; 9];
    for l in 0..n {
        let ci = ci0 + l;
        let (at, flip) = match filter {
            Filter::Direct => ((co * ci_n + ci) * 9, false),
            Filter::FlippedTransposed => ((ci * co_n + co) * 9, true),
        };
        let src = &weight[at..at + 9];
        for (k, gk) in g.iter_mut().enumerate() {
            gk[l] = src[if flip { 8 - k } else { k }];
        }
    }
    g
}

/// `u [C_out, 16, C_in]`: `G g Gᵀ` of every 3x3 filter, `G = [[1,0,0],[½,½,½],[½,-½,½],[0,0,1]]` (parallel over
/// output channels, 8 input channels at a time).
fn transform_weights(u: &mut [f32], weight: &[f32], s: &WinoShape, filter: Filter) {
    let ci_n = s.c_in;
    u.par_chunks_mut(16 * ci_n).enumerate().for_each(|(co, uc)| vectorized(#[inline(always)] || {
        for ci0 in (0..ci_n).step_by(L) {
            let n = (ci_n - ci0).min(L);
            let g = gather_filters(weight, co, ci0, n, s, filter);
            let half = |a: &Lanes, b: &Lanes, c: &Lanes| -> (Lanes, Lanes) { (arr(#[inline(always)] |l| 0.5 * (a[l] + b[l] + c[l])), arr(#[inline(always)] |l| 0.5 * (a[l] - b[l] + c[l]))) };
            // t = G g: [4, 3]
            let mut t = [[[0.0f32; L]; 3]; 4];
            for j in 0..3 {
                let (a, b, c) = (&g[j], &g[3 + j], &g[6 + j]);
                let (p, m) = half(a, b, c);
                (t[0][j], t[1][j], t[2][j], t[3][j]) = (*a, p, m, *c);
            }
            // t Gᵀ: [4, 4]
            for (i, r) in t.iter().enumerate() {
                let (p, m) = half(&r[0], &r[1], &r[2]);
                for (j, v) in [r[0], p, m, r[2]].iter().enumerate() {
                    store(&mut uc[(i * 4 + j) * ci_n + ci0..], n, v);
                }
            }
        }
    }));
}

/// `out (+)= inp ⋆ w` (see [`WinoShape`]). Lengths must already be validated by the caller:
/// `inp` N*C_in*H*W, `out` N*C_out*OH*OW, `weight` 9*C_out*C_in. `accumulate = false` overwrites `out`.
pub(crate) fn winograd_3x3(out: &mut [f32], accumulate: bool, scratch: &mut Vec<f32>, inp: &[f32], weight: &[f32], s: &WinoShape, filter: Filter) {
    let (per, tasks, par_gemm) = batch_split(s.n);
    let need = scratch_len(s, per, tasks);
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (ph, pw) = s.plane();
    let (th, tw) = s.tiles();
    let (bl, rows_per, ld) = blocking(s, per);
    let (oh, ow) = (s.oh(), s.ow());
    let (in_img, out_img) = (s.c_in * s.h * s.w, s.c_out * oh * ow);
    let order = order(s, per);
    let (plane_len, tmp_len) = match order {
        TileOrder::Rows => (ph * pw, 12 * (tw + 1)),
        TileOrder::Images => (ph * pw * bl, 4 * th * tw * bl),
    };
    let task_len = task_len(s, per);
    let (u, rest) = scratch[..need].split_at_mut(16 * s.c_out * s.c_in);
    transform_weights(u, weight, s, filter);
    let u: &[f32] = u;
    inp.par_chunks(per * in_img).zip(out.par_chunks_mut(per * out_img)).zip(rest.par_chunks_mut(task_len)).for_each(|((x, y), buf)| vectorized(#[inline(always)] || {
        let (plane, rest) = buf.split_at_mut(plane_len);
        let (tmp, rest) = rest.split_at_mut(tmp_len);
        let (v, m) = rest.split_at_mut(16 * s.c_in * ld);
        plane.fill(0.0);
        for (xb, yb) in x.chunks(bl * in_img).zip(y.chunks_mut(bl * out_img)) {
            let nb = xb.len() / in_img;
            // one band of tile rows per block in the image order (its blocks hold whole images)
            for (ty0, ty1) in bands(th, rows_per) {
                // tiles per image in this block, and in all
                let tpb = (ty1 - ty0) * tw;
                let nt = nb * tpb;
                match order {
                    TileOrder::Images => input_images(v, plane, xb, s, ld, nb),
                    TileOrder::Rows => input_block(v, plane, tmp, xb, s, ld, ty0, ty1),
                }
                // m[ξ] [C_out, nt] = u[ξ] [C_out, C_in] · v[ξ] [C_in, nt]
                for xi in 0..16 {
                    let (mx, ux, vx) = (&mut m[xi * s.c_out * ld..(xi + 1) * s.c_out * ld], &u[xi * s.c_in..], &v[xi * s.c_in * ld..(xi + 1) * s.c_in * ld]);
                    // u[ξ] row co at co*16*C_in + ξ*C_in
                    gemm_strided(mx, ld, 1, ux, 16 * s.c_in, 1, vx, ld, 1, s.c_out, nt, s.c_in, 1.0, false, par_gemm);
                }
                // y (+)= Aᵀ m A, clipped to the output plane
                match order {
                    TileOrder::Images => output_images(yb, m, tmp, s, ld, nb, accumulate),
                    TileOrder::Rows => {
                        for (b, y_n) in yb.chunks_mut(out_img).enumerate() {
                            for (c, dst) in y_n.chunks_mut(oh * ow).enumerate() {
                                output_tiles(dst, oh, ow, m, c * ld + b * tpb, s.c_out * ld, tmp, ty0, ty1, tw, accumulate);
                            }
                        }
                    }
                }
            }
        }
    }));
}

/// [`TileOrder::Images`]: `v [16, C_in, ld]`, tile `t` of image `b` at column `t * nb + b`, `Bᵀ d B` of every
/// tile of every channel of the `nb` images `xb`. Per channel the planes go to `xt [PH, PW, nb]` (zero-padded,
/// image innermost), then every transform step is a vector op across the images.
#[inline(always)]
fn input_images(v: &mut [f32], xt: &mut [f32], xb: &[f32], s: &WinoShape, ld: usize, nb: usize) {
    let ((_, pw), (th, tw)) = (s.plane(), s.tiles());
    let (hw, xs) = (s.h * s.w, s.c_in * ld);
    // the border stays zero: only image positions are written below
    xt.fill(0.0);
    for c in 0..s.c_in {
        transpose_in(&mut xt[(s.pad * pw + s.pad) * nb..], pw, nb, s.h, s.w, xb, |b| (b * s.c_in + c) * hw);
        for ty in 0..th {
            for tx in 0..tw {
                let col = c * ld + (ty * tw + tx) * nb;
                for b0 in (0..nb).step_by(L) {
                    let n = (nb - b0).min(L);
                    let d = |i: usize, j: usize| load(&xt[((2 * ty + i) * pw + 2 * tx + j) * nb + b0..], n);
                    // t = Bᵀ d per column j, then t B per row i: the same steps as input_tiles
                    let mut t = [[[0.0f32; L]; 4]; 4];
                    for j in 0..4 {
                        let (a, b, c, e) = (d(0, j), d(1, j), d(2, j), d(3, j));
                        (t[0][j], t[1][j], t[2][j], t[3][j]) = (sub(&a, &c), add(&b, &c), sub(&c, &b), sub(&b, &e));
                    }
                    for (i, r) in t.iter().enumerate() {
                        let out = [sub(&r[0], &r[2]), add(&r[1], &r[2]), sub(&r[2], &r[1]), sub(&r[1], &r[3])];
                        for (k, o) in out.iter().enumerate() {
                            store(&mut v[(4 * i + k) * xs + col + b0..], n, o);
                        }
                    }
                }
            }
        }
    }
}

/// [`TileOrder::Images`]: `yb [nb, C_out, OH, OW] (+)= Aᵀ m A` from `m [16, C_out, ld]` (column `t * nb + b`),
/// through `yt [2TH, 2TW, nb]` per channel (the same steps as output_tiles, across the images), clipped to the
/// plane.
#[inline(always)]
fn output_images(yb: &mut [f32], m: &[f32], yt: &mut [f32], s: &WinoShape, ld: usize, nb: usize, accumulate: bool) {
    let ((th, tw), oh, ow) = (s.tiles(), s.oh(), s.ow());
    let (ohw, xs, yw) = (oh * ow, s.c_out * ld, 2 * tw);
    for c in 0..s.c_out {
        for ty in 0..th {
            for tx in 0..tw {
                let col = c * ld + (ty * tw + tx) * nb;
                for b0 in (0..nb).step_by(L) {
                    let n = (nb - b0).min(L);
                    let g = |xi: usize| load(&m[xi * xs + col + b0..], n);
                    let (mut s0, mut s1) = ([[0.0f32; L]; 4], [[0.0f32; L]; 4]);
                    for k in 0..4 {
                        let (a, b, c, d) = (g(k), g(4 + k), g(8 + k), g(12 + k));
                        s0[k] = add(&add(&a, &b), &c);
                        s1[k] = sub(&sub(&b, &c), &d);
                    }
                    for (r, sr) in [s0, s1].iter().enumerate() {
                        let ya = add(&add(&sr[0], &sr[1]), &sr[2]);
                        let yc = sub(&sub(&sr[1], &sr[2]), &sr[3]);
                        let at = ((2 * ty + r) * yw + 2 * tx) * nb + b0;
                        store(&mut yt[at..], n, &ya);
                        store(&mut yt[at + nb..], n, &yc);
                    }
                }
            }
        }
        transpose_out(yb, nb, oh, ow, yt, yw, accumulate, |b| (b * s.c_out + c) * ohw);
    }
}

/// [`TileOrder::Images`]: `dm [16, C_out, ld]` (column `t * nb + b`) `= A dy Aᵀ` of every 2x2 tile of every
/// channel of `dyb [nb, C_out, OH, OW]`, through `dyt [2TH, 2TW, nb]` per channel (zero past OH x OW).
#[inline(always)]
fn grad_images(dm: &mut [f32], dyt: &mut [f32], dyb: &[f32], s: &WinoShape, ld: usize, nb: usize) {
    let ((th, tw), oh, ow) = (s.tiles(), s.oh(), s.ow());
    let (ohw, xs, yw) = (oh * ow, s.c_out * ld, 2 * tw);
    let dyt = &mut dyt[..2 * th * yw * nb];
    if oh % 2 == 1 || ow % 2 == 1 {
        dyt.fill(0.0);
    }
    for c in 0..s.c_out {
        transpose_in(dyt, yw, nb, oh, ow, dyb, |b| (b * s.c_out + c) * ohw);
        for ty in 0..th {
            for tx in 0..tw {
                let col = c * ld + (ty * tw + tx) * nb;
                for b0 in (0..nb).step_by(L) {
                    let n = (nb - b0).min(L);
                    let at = (2 * ty * yw + 2 * tx) * nb + b0;
                    let (a, b, c, d) = (load(&dyt[at..], n), load(&dyt[at + nb..], n), load(&dyt[at + yw * nb..], n), load(&dyt[at + (yw + 1) * nb..], n));
                    // rows (x0, x1) of A dy, then each row -> x0, x0+x1, x0-x1, -x1 (as grad_tiles)
                    let rows = [(a, b), (add(&a, &c), add(&b, &d)), (sub(&a, &c), sub(&b, &d)), (neg(&c), neg(&d))];
                    for (i, (x0, x1)) in rows.iter().enumerate() {
                        let out = [*x0, add(x0, x1), sub(x0, x1), neg(x1)];
                        for (k, o) in out.iter().enumerate() {
                            store(&mut dm[(4 * i + k) * xs + col + b0..], n, o);
                        }
                    }
                }
            }
        }
    }
}

/// `v [16, C_in, ld]`: `Bᵀ d B` of every tile in tile rows `ty0..ty1` of every channel of the images `xb`
/// (image b's tiles at `b * (ty1 - ty0) * TW`), through the parity-split zero-padded `plane` (its padding stays
/// zero: only image rows are ever written).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn input_block(v: &mut [f32], plane: &mut [f32], tmp: &mut [f32], xb: &[f32], s: &WinoShape, ld: usize, ty0: usize, ty1: usize) {
    let (pw, tw) = (s.plane().1, s.tiles().1);
    let tpb = (ty1 - ty0) * tw;
    // padded rows 2ty0..2ty1+2 hold image rows r0..r1
    let (r0, r1) = ((2 * ty0).saturating_sub(s.pad).min(s.h), (2 * ty1 + 2).saturating_sub(s.pad).min(s.h));
    for (b, x_n) in xb.chunks(s.c_in * s.h * s.w).enumerate() {
        for (c, src) in x_n.chunks(s.h * s.w).enumerate() {
            for r in r0..r1 {
                split_row(&mut plane[(r + s.pad) * pw..(r + s.pad + 1) * pw], &src[r * s.w..(r + 1) * s.w], s.pad, tw + 1);
            }
            input_tiles(v, c * ld + b * tpb, s.c_in * ld, plane, tmp, ty0, ty1, tw);
        }
    }
}

/// `even[k] = src[2k]`, `odd[k] = src[2k + 1]` for `k < even.len()` (`== odd.len()`, `2 * len <= src.len()`),
/// 8 pairs at a time (fixed-size arrays: the compiler turns them into shuffles).
#[inline(always)]
fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let n = even.len().min(odd.len());
    let full = n / L * L;
    for ((p, e), o) in src[..2 * full].chunks_exact(2 * L).zip(even[..full].chunks_exact_mut(L)).zip(odd[..full].chunks_exact_mut(L)) {
        let p: &[f32; 2 * L] = p.try_into().expect("2L values");
        let (e, o): (&mut Lanes, &mut Lanes) = (e.try_into().expect("L values"), o.try_into().expect("L values"));
        *e = arr(#[inline(always)] |l| p[2 * l]);
        *o = arr(#[inline(always)] |l| p[2 * l + 1]);
    }
    for k in full..n {
        even[k] = src[2 * k];
        odd[k] = src[2 * k + 1];
    }
}

/// The adjoint layout move of [`transpose_in`]: `plane_b[r * w + x] (+)= src[(r * src_row + x) * nb + b]` for the
/// `nb` planes `dst[plane_at(b)..][..h*w]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn transpose_out(dst: &mut [f32], nb: usize, h: usize, w: usize, src: &[f32], src_row: usize, accumulate: bool, plane_at: impl Fn(usize) -> usize) {
    for b in 0..nb {
        let plane = &mut dst[plane_at(b)..plane_at(b) + h * w];
        for (r, row) in plane.chunks_exact_mut(w).enumerate() {
            let at = r * src_row * nb + b;
            if accumulate {
                for (x, y) in row.iter_mut().enumerate() {
                    *y += src[at + x * nb];
                }
            } else {
                for (x, y) in row.iter_mut().enumerate() {
                    *y = src[at + x * nb];
                }
            }
        }
    }
}

/// Writes image row `row` into a padded plane row `dst [2, half]` split by parity: padded column `px = x + pad`
/// goes to `dst[(px & 1) * half + px / 2]`. Pairs `(row[2k], row[2k+1])` land at `k + pad/2` of one half and
/// `k + (pad+1)/2` of the other, so the loop is a plain de-interleave (it vectorises).
#[inline(always)]
fn split_row(dst: &mut [f32], row: &[f32], pad: usize, half: usize) {
    let (even, odd) = dst.split_at_mut(half);
    let (first, second) = if pad % 2 == 0 { (even, odd) } else { (odd, even) };
    let (first, second) = (&mut first[pad / 2..], &mut second[pad.div_ceil(2)..]);
    let pairs = row.len() / 2;
    deinterleave(row, &mut first[..pairs], &mut second[..pairs]);
    if row.len() % 2 == 1 {
        first[pairs] = row[2 * pairs];
    }
}

/// Writes `Bᵀ d B` of every 4x4 patch of `plane [2*TH + 2, 2, TW + 1]` (tile (ty, tx) at rows `2ty..2ty+4`,
/// padded columns `2tx..2tx+4`), for tile rows `ty0..ty1`, to `v[ξ * xs + at + (ty - ty0)*tw + tx]`,
/// `Bᵀ = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]`. With the columns split by parity, the row transform is
/// elementwise and the column transform reads `even[tx], odd[tx], even[tx+1], odd[tx+1]`: both vectorise over tx.
/// `tmp`: 8 rows of TW + 1.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn input_tiles(v: &mut [f32], at: usize, xs: usize, plane: &[f32], tmp: &mut [f32], ty0: usize, ty1: usize, tw: usize) {
    let (hw, pw) = (tw + 1, 2 * tw + 2);
    for ty in ty0..ty1 {
        let r = &plane[2 * ty * pw..(2 * ty + 4) * pw];
        // t[i] = (Bᵀ d)[i], both parities: tmp [4, 2, TW + 1]
        {
            let (r0, r1, r2, r3) = (&r[..pw], &r[pw..2 * pw], &r[2 * pw..3 * pw], &r[3 * pw..4 * pw]);
            let (t0, rest) = tmp[..8 * hw].split_at_mut(pw);
            let (t1, rest) = rest.split_at_mut(pw);
            let (t2, t3) = rest.split_at_mut(pw);
            for x in 0..pw {
                let (a, b, c, d) = (r0[x], r1[x], r2[x], r3[x]);
                t0[x] = a - c;
                t1[x] = b + c;
                t2[x] = c - b;
                t3[x] = b - d;
            }
        }
        let o = at + (ty - ty0) * tw;
        for i in 0..4 {
            let (e, od) = (&tmp[i * pw..i * pw + hw], &tmp[i * pw + hw..(i + 1) * pw]);
            let (e0, e1, o0, o1) = (&e[..tw], &e[1..=tw], &od[..tw], &od[1..=tw]);
            let (v0, rest) = v[(4 * i) * xs + o..].split_at_mut(xs);
            let (v1, rest) = rest.split_at_mut(xs);
            let (v2, v3) = rest.split_at_mut(xs);
            let (v0, v1, v2, v3) = (&mut v0[..tw], &mut v1[..tw], &mut v2[..tw], &mut v3[..tw]);
            for tx in 0..tw {
                v0[tx] = e0[tx] - e1[tx];
                v1[tx] = o0[tx] + e1[tx];
                v2[tx] = e1[tx] - o0[tx];
                v3[tx] = o0[tx] - o1[tx];
            }
        }
    }
}

/// `dst [oh, ow] (+)= Aᵀ m A` for tile rows `ty0..ty1`, `m[ξ * xs + at + (ty - ty0)*tw + tx]`, `Aᵀ = [[1,1,1,0],[0,1,-1,-1]]`;
/// outputs past the plane's edge (odd OH/OW) are dropped. Vectorised over tx into `tmp` (12 rows of TW + 1).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_tiles(dst: &mut [f32], oh: usize, ow: usize, m: &[f32], at: usize, xs: usize, tmp: &mut [f32], ty0: usize, ty1: usize, tw: usize, accumulate: bool) {
    for ty in ty0..ty1 {
        let o = at + (ty - ty0) * tw;
        let g = |xi: usize| &m[xi * xs + o..xi * xs + o + tw];
        // s = Aᵀ m: tmp rows 0..4 (s0[k]) and 4..8 (s1[k]); y: rows 8..12 (y00, y01, y10, y11)
        let (sr, y) = tmp.split_at_mut(8 * tw);
        for k in 0..4 {
            let (a, b, c, d) = (g(k), g(4 + k), g(8 + k), g(12 + k));
            let (s0, s1) = sr.split_at_mut(4 * tw);
            let (s0, s1) = (&mut s0[k * tw..(k + 1) * tw], &mut s1[k * tw..(k + 1) * tw]);
            for tx in 0..tw {
                s0[tx] = a[tx] + b[tx] + c[tx];
                s1[tx] = b[tx] - c[tx] - d[tx];
            }
        }
        for r in 0..2 {
            let sk = |k: usize| &sr[(4 * r + k) * tw..(4 * r + k + 1) * tw];
            let (s0, s1, s2, s3) = (sk(0), sk(1), sk(2), sk(3));
            let (ya, yb) = y[2 * r * tw..(2 * r + 2) * tw].split_at_mut(tw);
            for tx in 0..tw {
                ya[tx] = s0[tx] + s1[tx] + s2[tx];
                yb[tx] = s1[tx] - s2[tx] - s3[tx];
            }
        }
        for a in 0..(oh - 2 * ty).min(2) {
            let (ya, yb) = (&y[2 * a * tw..(2 * a + 1) * tw], &y[(2 * a + 1) * tw..(2 * a + 2) * tw]);
            let row = &mut dst[(2 * ty + a) * ow..(2 * ty + a + 1) * ow];
            let full = ow / 2;
            if accumulate {
                for ((r, a), b) in row.chunks_exact_mut(2).zip(&ya[..full]).zip(&yb[..full]) {
                    r[0] += a;
                    r[1] += b;
                }
                if ow % 2 == 1 {
                    row[ow - 1] += ya[full];
                }
            } else {
                for ((r, a), b) in row.chunks_exact_mut(2).zip(&ya[..full]).zip(&yb[..full]) {
                    r[0] = *a;
                    r[1] = *b;
                }
                if ow % 2 == 1 {
                    row[ow - 1] = ya[full];
                }
            }
        }
    }
}

/// Weight gradient of the forward correlation `s` (weights as given, [`Filter::Direct`]):
/// `dweight [C_out, C_in, 3, 3] += Gᵀ dU G` with `dU[ξ] [C_out, C_in] = Σ_tiles dM[ξ] · V[ξ]ᵀ`, `V = Bᵀ d B` the
/// input tiles (as in forward) and `dM = A dy Aᵀ` the output-gradient tiles (the adjoint of the output
/// transform): the adjoint of the forward pass, 16 GEMMs with inner dimension T per block. Each task sums its
/// own `dU [16, C_out, C_in]`; the tasks' partials are then added in a fixed order (deterministic for a given
/// thread count). `dout`: `[N, C_out, OH, OW]`; lengths validated by the caller.
pub(crate) fn winograd_3x3_dweight(dweight: &mut [f32], scratch: &mut Vec<f32>, dout: &[f32], inp: &[f32], s: &WinoShape) {
    let (per, tasks, par_gemm) = batch_split(s.n);
    let (ph, pw) = s.plane();
    let (th, tw) = s.tiles();
    let (bl, rows_per, ld) = blocking(s, per);
    let (oh, ow) = (s.oh(), s.ow());
    let (in_img, out_img) = (s.c_in * s.h * s.w, s.c_out * oh * ow);
    let (du_len, dyp_len) = (16 * s.c_out * s.c_in, 4 * th * tw);
    let order = order(s, per);
    let (plane_len, tmp_len) = match order {
        TileOrder::Rows => (ph * pw, 12 * (tw + 1)),
        TileOrder::Images => (ph * pw * bl, 4 * th * tw * bl),
    };
    let task_len = task_len(s, per) + dyp_len + du_len;
    if scratch.len() < tasks * task_len {
        scratch.resize(tasks * task_len, 0.0);
    }
    let scratch = &mut scratch[..tasks * task_len];
    inp.par_chunks(per * in_img).zip(dout.par_chunks(per * out_img)).zip(scratch.par_chunks_mut(task_len)).for_each(|((x, dy), buf)| vectorized(#[inline(always)] || {
        let (plane, rest) = buf.split_at_mut(plane_len);
        let (tmp, rest) = rest.split_at_mut(tmp_len);
        let (v, rest) = rest.split_at_mut(16 * s.c_in * ld);
        let (dm, rest) = rest.split_at_mut(16 * s.c_out * ld);
        let (dyp, du) = rest.split_at_mut(dyp_len);
        plane.fill(0.0);
        // dyp [2TH, 2TW]: one output-gradient plane, zero past OH x OW (never written there)
        dyp.fill(0.0);
        let mut first = true;
        for (xb, dyb) in x.chunks(bl * in_img).zip(dy.chunks(bl * out_img)) {
            let nb = xb.len() / in_img;
            for (ty0, ty1) in bands(th, rows_per) {
                let tpb = (ty1 - ty0) * tw;
                let nt = nb * tpb;
                // v: Bᵀ d B of the input tiles (as in forward); dm [16, C_out, ld]: A dy Aᵀ, A = [[1,0],[1,1],[1,-1],[0,-1]]
                match order {
                    TileOrder::Images => {
                        input_images(v, plane, xb, s, ld, nb);
                        grad_images(dm, tmp, dyb, s, ld, nb);
                    }
                    TileOrder::Rows => {
                        input_block(v, plane, tmp, xb, s, ld, ty0, ty1);
                        for (b, dy_n) in dyb.chunks(out_img).enumerate() {
                            for (c, src) in dy_n.chunks(oh * ow).enumerate() {
                                // an even plane is its own padded copy
                                let plane: &[f32] = if oh % 2 == 0 && ow % 2 == 0 {
                                    src
                                } else {
                                    for r in 2 * ty0..(2 * ty1).min(oh) {
                                        dyp[r * 2 * tw..r * 2 * tw + ow].copy_from_slice(&src[r * ow..(r + 1) * ow]);
                                    }
                                    dyp
                                };
                                grad_tiles(dm, c * ld + b * tpb, s.c_out * ld, plane, tmp, ty0, ty1, tw);
                            }
                        }
                    }
                }
                // du[ξ] [C_out, C_in] (+)= dm[ξ] [C_out, nt] · v[ξ] [C_in, nt]ᵀ
                for xi in 0..16 {
                    let (dux, dmx, vx) = (&mut du[xi * s.c_out * s.c_in..(xi + 1) * s.c_out * s.c_in], &dm[xi * s.c_out * ld..(xi + 1) * s.c_out * ld], &v[xi * s.c_in * ld..(xi + 1) * s.c_in * ld]);
                    gemm_strided(dux, s.c_in, 1, dmx, ld, 1, vx, 1, ld, s.c_out, s.c_in, nt, 1.0, !first, par_gemm);
                }
                first = false;
            }
        }
    }));
    reduce_dweight(dweight, scratch, tasks, task_len, gt4);
}

/// `Gᵀ d` for one column of a 4x4 gradient tile: `Gᵀ = [[1,½,½,0],[0,½,-½,0],[0,½,½,1]]`.
#[inline(always)]
fn gt4(d: &[Lanes; 4]) -> [Lanes; 3] {
    let half = |v: &Lanes| -> Lanes { arr(#[inline(always)] |l| 0.5 * v[l]) };
    let (a, b, c, e) = (&d[0], &d[1], &d[2], &d[3]);
    [add(a, &half(&add(b, c))), half(&sub(b, c)), add(&half(&add(b, c)), e)]
}

/// `dweight [C_out * C_in, 3, 3] += Gᵀ (Σ_tasks dU) G` for every filter, 8 at a time: the last `X * X * C_out *
/// C_in` values of task `t`'s slice `scratch[t * task_len..(t + 1) * task_len]` are its partial `dU [X, X, C_out *
/// C_in]`, added in task order (deterministic for a thread count); `gt` is `Gᵀ` on one column, `[X] -> [3]`.
pub(super) fn reduce_dweight<const X: usize>(dweight: &mut [f32], scratch: &[f32], tasks: usize, task_len: usize, gt: fn(&[Lanes; X]) -> [Lanes; 3]) {
    let filters = dweight.len() / 9;
    let du_len = X * X * filters;
    dweight.par_chunks_mut(9 * L).enumerate().for_each(|(blk, dw)| vectorized(#[inline(always)] || {
        let (p0, n) = (blk * L, dw.len() / 9);
        let mut d = [[[0.0f32; L]; X]; X];
        for t in 0..tasks {
            let du = &scratch[(t + 1) * task_len - du_len..(t + 1) * task_len];
            for (xi, v) in d.iter_mut().flatten().enumerate() {
                *v = add(v, &load(&du[xi * filters + p0..], n));
            }
        }
        // r = Gᵀ d: [3, X] (per column k), then each row of r times G: [3, 3]
        let r: [[Lanes; 3]; X] = arr(#[inline(always)] |k| gt(&arr(#[inline(always)] |i| d[i][k])));
        for i in 0..3 {
            let row = gt(&arr(#[inline(always)] |k| r[k][i]));
            for (j, o) in row.iter().enumerate() {
                for l in 0..n {
                    dw[9 * l + 3 * i + j] += o[l];
                }
            }
        }
    }));
}

/// `dm[ξ * xs + at + (ty - ty0)*tw + tx] = (A dy Aᵀ)[ξ]` for the 2x2 tiles of `dyp [2*TH, 2*TW]` in tile rows
/// `ty0..ty1`, `A = [[1,0],[1,1],[1,-1],[0,-1]]`. Each tile row's two plane rows are de-interleaved into `tmp`
/// (4 rows of TW: a = dy[0][0], b = dy[0][1], c = dy[1][0], d = dy[1][1] of every tile), then each of the 16
/// outputs is one loop over tx (both vectorise).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn grad_tiles(dm: &mut [f32], at: usize, xs: usize, dyp: &[f32], tmp: &mut [f32], ty0: usize, ty1: usize, tw: usize) {
    let pw = 2 * tw;
    for ty in ty0..ty1 {
        let (r0, r1) = (&dyp[2 * ty * pw..(2 * ty + 1) * pw], &dyp[(2 * ty + 1) * pw..(2 * ty + 2) * pw]);
        let (a, rest) = tmp[..6 * tw].split_at_mut(tw);
        let (b, rest) = rest.split_at_mut(tw);
        let (c, rest) = rest.split_at_mut(tw);
        let (d, rest) = rest.split_at_mut(tw);
        let (x0, x1) = rest.split_at_mut(tw);
        deinterleave(r0, a, b);
        deinterleave(r1, c, d);
        let o = at + (ty - ty0) * tw;
        // p = A dy: rows (x0, x1) = (a, b), (a+c, b+d), (a-c, b-d), (-c, -d); then each row -> x0, x0+x1, x0-x1, -x1
        for i in 0..4 {
            for t in 0..tw {
                (x0[t], x1[t]) = match i {
                    0 => (a[t], b[t]),
                    1 => (a[t] + c[t], b[t] + d[t]),
                    2 => (a[t] - c[t], b[t] - d[t]),
                    _ => (-c[t], -d[t]),
                };
            }
            let (d0, rest) = dm[(4 * i) * xs + o..].split_at_mut(xs);
            let (d1, rest) = rest.split_at_mut(xs);
            let (d2, d3) = rest.split_at_mut(xs);
            let (d0, d1, d2, d3) = (&mut d0[..tw], &mut d1[..tw], &mut d2[..tw], &mut d3[..tw]);
            for t in 0..tw {
                let (u, v) = (x0[t], x1[t]);
                d0[t] = u;
                d1[t] = u + v;
                d2[t] = u - v;
                d3[t] = -v;
            }
        }
    }
}

/// The bands of `rows` tile rows (the last one shorter) that `th` tile rows split into: `(first, end)`.
pub(super) fn bands(th: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..th).step_by(rows.max(1)).map(move |ty0| (ty0, (ty0 + rows).min(th)))
}
