//! The parameter block and grids of `kernels/conv.cu` / `shaders/conv.wgsl`: each pass is a GEMM over the implicit
//! im2col matrix, in 64x64 output tiles. Shared by the wgpu and CUDA launchers and the CUDA emulation test.

use super::Conv2dShape;
use crate::ops::launch::Grid;

/// The conv kernels' parameter block (`struct ConvParams` of `kernels/conv.cu`, the uniform block of
/// `shaders/conv.wgsl`): the convolution and the GEMM it is computed as.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
#[doc(hidden)]
pub struct ConvParams {
    pub n: u32,
    pub c_in: u32,
    pub h: u32,
    pub w: u32,
    pub c_out: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    pub pad: u32,
    pub oh: u32,
    pub ow: u32,
    pub gemm_m: u32,
    pub gemm_n: u32,
    pub gemm_k: u32,
    /// K ranges of the GEMM, one block per (tile, range) (split-K of the weight gradient; 1 for the other passes).
    pub k_splits: u32,
    /// Length of each K range: a multiple of the 16-deep chunk (the last range may be shorter).
    pub k_chunk: u32,
    /// The backward data's phase ([`ConvParams::backward_data`]): its input pixels `(ph_y + stride*a, ph_x +
    /// stride*b)` on a `ph_h x ph_w` grid and its taps `(ph_ky + stride*ty, ph_kx + stride*tx)` on a `ph_kh x ph_kw`
    /// grid; the whole convolution `(0, 0, H, W, 0, 0, KH, KW)` in the other passes.
    pub ph_y: u32,
    pub ph_x: u32,
    pub ph_h: u32,
    pub ph_w: u32,
    pub ph_ky: u32,
    pub ph_kx: u32,
    pub ph_kh: u32,
    pub ph_kw: u32,
}
const _: () = assert!(std::mem::size_of::<ConvParams>() == 96 && std::mem::offset_of!(ConvParams, gemm_k) == 52 && std::mem::offset_of!(ConvParams, k_chunk) == 60 && std::mem::offset_of!(ConvParams, ph_kw) == 92);

/// Output tile of the conv kernels (64x64, 16-deep K chunks, 256 threads with 4x4 micro-tiles).
pub const CONV_TILE: usize = 64;
/// Depth of one K chunk of the conv kernels.
pub const CONV_TILE_K: usize = 16;

/// Blocks the weight gradient's split-K aims at. Its GEMM has few output tiles (M = C_out, N = C_in*KH*KW:
/// ResNet-18's layer1 has 1 x 9 tiles of 64x64) and a long reduction (K = N*OH*OW: 65,536 at batch 64, 4,096
/// chunks), so one block per tile leaves most of a GPU idle (an H100 has 132 SMs) and each block walks the whole
/// K. Cutting K into ranges gives one block per (tile, range); each writes its partial tile, and
/// `conv2d_backward_weight_reduce` adds the ranges in range order into dweight: deterministic, and the same on
/// every GPU (the rule depends on the shape only, not on the device's SM count). 512 blocks fill 132 SMs about
/// four deep.
pub const WGRAD_TARGET_BLOCKS: usize = 512;
/// The shortest K range: 32 chunks, so that a block's loads (2 x 4 KiB per chunk) dwarf its 16 KiB partial store
/// and the reduction's reads.
pub const WGRAD_MIN_K: usize = 512;
/// At most this many partial elements (1 GiB of f32) in the scratch: fewer ranges beyond it.
pub const WGRAD_MAX_PARTIAL: usize = 1 << 28;

/// The weight gradient's K ranges for a `tiles`-tile output of `mn` elements and reduction `gemm_k`:
/// `(ranges, range length)`, the length a multiple of [`CONV_TILE_K`] and no range empty.
pub fn wgrad_split(tiles: usize, mn: usize, gemm_k: usize) -> (usize, usize) {
    let want = WGRAD_TARGET_BLOCKS.div_ceil(tiles.max(1));
    let most = gemm_k.div_ceil(WGRAD_MIN_K).min(WGRAD_MAX_PARTIAL / mn.max(1)).clamp(1, 65535);
    let ranges = want.clamp(1, most);
    let chunk = gemm_k.div_ceil(ranges).div_ceil(CONV_TILE_K).max(1) * CONV_TILE_K;
    (gemm_k.div_ceil(chunk).max(1), chunk)
}

impl ConvParams {
    pub fn new(s: &Conv2dShape, gemm_m: usize, gemm_n: usize, gemm_k: usize) -> Self {
        let u = |v: usize| v as u32; // every size is <= i32::MAX (conv_revalidate checks)
        Self {
            n: u(s.n),
            c_in: u(s.c_in),
            h: u(s.h),
            w: u(s.w),
            c_out: u(s.c_out),
            kh: u(s.kh),
            kw: u(s.kw),
            stride: u(s.stride),
            pad: u(s.pad),
            oh: u(s.out_h()),
            ow: u(s.out_w()),
            gemm_m: u(gemm_m),
            gemm_n: u(gemm_n),
            gemm_k: u(gemm_k),
            k_splits: 1,
            k_chunk: u(gemm_k.div_ceil(CONV_TILE_K).max(1) * CONV_TILE_K),
            ph_y: 0,
            ph_x: 0,
            ph_h: u(s.h),
            ph_w: u(s.w),
            ph_ky: 0,
            ph_kx: 0,
            ph_kh: u(s.kh),
            ph_kw: u(s.kw),
        }
    }
}

/// Re-validates a conv shape for the GPU kernels (its fields are public, so it may not come from
/// `Conv2dShape::new`), which index in u32 with a few products of sizes (e.g. `(oy*stride + ki)`, `C_out*KH*KW`).
#[doc(hidden)]
pub fn conv_revalidate(s: &Conv2dShape) -> crate::error::Result<Conv2dShape> {
    let v = Conv2dShape::new(s.n, s.c_in, s.h, s.w, s.c_out, s.kh, s.kw, s.stride, s.pad)?;
    let taps = v.c_out.checked_mul(v.kh * v.kw).filter(|&t| t <= i32::MAX as usize);
    if taps.is_none() || v.h + 2 * v.pad > i32::MAX as usize || v.w + 2 * v.pad > i32::MAX as usize {
        return Err(crate::error::Error::shape("conv2d", "C_out*KH*KW and H, W + 2*pad at most i32::MAX", format!("{v:?}")));
    }
    Ok(v)
}

/// The conv grid for a `gemm_m x gemm_n` output in [`CONV_TILE`] tiles: tiles over N split over x and z (each at
/// most 65535), tiles over M on y (`tile_n0()` in the kernels flattens x and z).
#[doc(hidden)]
pub fn conv_grid(op: &'static str, gemm_m: usize, gemm_n: usize) -> crate::error::Result<(u32, u32, u32)> {
    const MAX: usize = 65535;
    let (tm, tn) = (gemm_m.div_ceil(CONV_TILE), gemm_n.div_ceil(CONV_TILE));
    let (x, z) = if tn <= MAX { (tn, 1) } else { (MAX, tn.div_ceil(MAX)) };
    if tm > MAX || z > MAX {
        return Err(crate::error::Error::shape(op, format!("at most {} rows and {} columns in the GEMM", MAX * CONV_TILE, MAX * MAX * CONV_TILE), format!("{gemm_m} x {gemm_n}")));
    }
    Ok((x as u32, tm as u32, z as u32))
}

impl ConvParams {
    /// `conv2d_forward`: M = C_out, N = N*OH*OW, K = C_in*KH*KW.
    pub fn forward(s: &Conv2dShape) -> Self {
        Self::new(s, s.c_out, s.n * s.out_h() * s.out_w(), s.c_in * s.kh * s.kw)
    }
    /// `conv2d_backward_weight`: M = C_out, N = C_in*KH*KW, K = N*OH*OW, K cut into ranges by [`wgrad_split`].
    pub fn backward_weight(s: &Conv2dShape) -> Self {
        let (m, n, k) = (s.c_out, s.c_in * s.kh * s.kw, s.n * s.out_h() * s.out_w());
        let (ranges, chunk) = wgrad_split(m.div_ceil(CONV_TILE) * n.div_ceil(CONV_TILE), m * n, k);
        Self { k_splits: ranges as u32, k_chunk: chunk as u32, ..Self::new(s, m, n, k) }
    }
    /// The weight gradient's partial tiles `[k_splits, C_out, C_in*KH*KW]`: the scratch's length.
    pub fn partial_len(&self) -> usize {
        self.k_splits as usize * self.gemm_m as usize * self.gemm_n as usize
    }
    /// The grid of `conv2d_backward_weight`: (tiles over N, tiles over M, K ranges); N = C_in*KH*KW tiles fit x.
    pub fn backward_weight_grid(&self, op: &'static str) -> crate::error::Result<Grid> {
        let (tm, tn) = ((self.gemm_m as usize).div_ceil(CONV_TILE), (self.gemm_n as usize).div_ceil(CONV_TILE));
        if tm > 65535 || tn > 65535 {
            return Err(crate::error::Error::shape(op, format!("at most {} output and input channel taps", 65535 * CONV_TILE), format!("{} x {}", self.gemm_m, self.gemm_n)));
        }
        Ok((tn as u32, tm as u32, self.k_splits))
    }
    /// The grid of `conv2d_backward_weight_reduce`: one thread per dweight element.
    pub fn backward_weight_reduce_grid(&self) -> Grid {
        crate::ops::launch::elem_grid(self.gemm_m as usize * self.gemm_n as usize)
    }
    /// `conv2d_backward_data`, one launch per phase: M = C_in, N = N * the phase's pixels, K = C_out * its taps.
    ///
    /// At stride `s` input pixel `iy` meets dout row `oy = (iy + pad - ky) / s` only for the taps `ky` with
    /// `ky = iy + pad (mod s)`: the `s*s` phases `(iy mod s, ix mod s)` each meet their own taps, `ceil((KH -
    /// ky0) / s)` of them per axis from `ky0 = (ph_y + pad) mod s`, so that no zero of the transposed convolution is
    /// gathered (at stride 2 a 3x3 kernel has 1, 2, 2 and 4 taps in its four phases, not 9 each). Phases without
    /// taps or pixels are left out (they add nothing to dinp). At stride 1 the one phase is the whole convolution.
    pub fn backward_data(s: &Conv2dShape) -> Vec<Self> {
        let st = s.stride.max(1);
        let count = |len: usize, first: usize| if first < len { (len - first).div_ceil(st) } else { 0 };
        let mut phases = Vec::with_capacity(st * st);
        for ph_y in 0..st {
            for ph_x in 0..st {
                let (ph_ky, ph_kx) = ((ph_y + s.pad) % st, (ph_x + s.pad) % st);
                let (ph_h, ph_w, ph_kh, ph_kw) = (count(s.h, ph_y), count(s.w, ph_x), count(s.kh, ph_ky), count(s.kw, ph_kx));
                if ph_h * ph_w * ph_kh * ph_kw == 0 {
                    continue;
                }
                let u = |v: usize| v as u32;
                let base = Self::new(s, s.c_in, s.n * ph_h * ph_w, s.c_out * ph_kh * ph_kw);
                phases.push(Self { ph_y: u(ph_y), ph_x: u(ph_x), ph_h: u(ph_h), ph_w: u(ph_w), ph_ky: u(ph_ky), ph_kx: u(ph_kx), ph_kh: u(ph_kh), ph_kw: u(ph_kw), ..base });
            }
        }
        phases
    }
    /// The grid of this GEMM ([`conv_grid`]).
    pub fn grid(&self, op: &'static str) -> crate::error::Result<Grid> {
        conv_grid(op, self.gemm_m as usize, self.gemm_n as usize)
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    /// The backward data's phases partition the input pixels, each meets only the taps of its residue, and
    /// together they gather each (pixel, tap) pair the transposed convolution can reach once: 1 + 2 + 2 + 4 taps
    /// for a 3x3 kernel at stride 2, one phase of four for a 1x1 one, the whole convolution at stride 1.
    #[test]
    fn backward_data_phases_partition_pixels_and_taps() {
        for (shape, taps) in [((2, 3, 9, 7, 5, 3, 3, 2, 1), vec![1, 2, 2, 4]), ((2, 5, 7, 5, 3, 1, 1, 2, 0), vec![1]), ((1, 2, 6, 6, 2, 3, 3, 1, 1), vec![9]), ((1, 2, 8, 8, 2, 3, 3, 3, 1), vec![1, 1, 1, 1, 1, 1, 1, 1, 1])] {
            let (n, ci, h, w, co, kh, kw, st, pad) = shape;
            let s = Conv2dShape::new(n, ci, h, w, co, kh, kw, st, pad).unwrap();
            let phases = ConvParams::backward_data(&s);
            let got: Vec<u32> = phases.iter().map(|p| p.ph_kh * p.ph_kw).collect();
            assert_eq!(got, taps, "{shape:?}: taps per phase");
            let mut seen = vec![0u32; h * w];
            for p in &phases {
                assert_eq!((p.gemm_n, p.gemm_k), (n as u32 * p.ph_h * p.ph_w, co as u32 * p.ph_kh * p.ph_kw), "{shape:?}");
                for a in 0..p.ph_h {
                    for b in 0..p.ph_w {
                        let (iy, ix) = ((p.ph_y + p.stride * a) as usize, (p.ph_x + p.stride * b) as usize);
                        seen[iy * w + ix] += 1;
                        // every tap of the phase lands on a whole output row and column for this pixel
                        for ty in 0..p.ph_kh {
                            let ky = p.ph_ky + p.stride * ty;
                            assert!(ky < kh as u32 && (iy as i64 + p.pad as i64 - ky as i64).rem_euclid(p.stride as i64) == 0, "{shape:?}: tap {ky} at row {iy}");
                        }
                    }
                }
            }
            // pixels of a phase without taps get nothing, as the transposed convolution gives them nothing
            let untouched = seen.iter().filter(|&&c| c == 0).count();
            assert!(seen.iter().all(|&c| c <= 1), "{shape:?}: a pixel in two phases");
            assert_eq!(untouched == 0, kh >= st && kw >= st, "{shape:?}: {untouched} pixels in no phase");
        }
    }
}
