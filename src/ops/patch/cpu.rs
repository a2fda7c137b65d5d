//! patch on the CPU (rayon).

use super::{PatchShape, PosEmbedShape, TokensShape};
use super::Patch;
use crate::error::Result;
use crate::ops::check::len;
use rayon::prelude::*;

/// moco-v3's `build_2d_sincos_position_embedding` (temperature 10000), cls row included: `out [1 + P, D]`.
///
/// That code does
/// ```text
/// grid_w, grid_h = torch.meshgrid(arange(w), arange(h))       # 'ij' indexing: both [w, h]
/// omega = 1 / 10000 ** (arange(D/4) / (D/4))
/// out_w = grid_w.flatten()[:, None] * omega; out_h = grid_h.flatten()[:, None] * omega
/// pos_emb = cat([sin(out_w), cos(out_w), sin(out_h), cos(out_h)], dim=1)
/// ```
/// so patch token `m` (0-based, after the cls row) gets `a = m / h` (what that code calls `grid_w`) and
/// `b = m % h` (its `grid_h`), and row `1 + m` is `[sin(a·ω), cos(a·ω), sin(b·ω), cos(b·ω)]`, each block D/4
/// wide, `ω_k = 1/10000^(k/(D/4))`. timm flattens the patch grid row-major (`m = row*w + col`), so on the square
/// grids moco-v3 uses `a` is the patch's row (its h coordinate) and `b` its column: the first half of the
/// embedding encodes h, the second w. On a non-square grid this function keeps moco-v3's formula (`m / h`,
/// `m % h`) rather than "fixing" it. Row 0 (cls) is zero. Computed in f64 and rounded (torch computes in f32; the
/// two agree to a few f32 ulps of the argument). No gradient: the embedding is a constant.
pub fn sincos_pos_embed_2d(out: &mut [f32], shape: &PosEmbedShape) -> Result<()> {
    len("pos_embed", "out [(1+P)*D]", shape.len(), out.len())?;
    let (h, dim) = (shape.grid_h, shape.dim);
    let q = dim / 4;
    let omega: Vec<f64> = (0..q).map(|k| 1.0 / 10000f64.powf(k as f64 / q as f64)).collect();
    out[..dim].iter_mut().for_each(|v| *v = 0.0);
    for (m, row) in out[dim..].chunks_mut(dim).enumerate() {
        let (a, b) = ((m / h) as f64, (m % h) as f64);
        for k in 0..q {
            row[k] = (a * omega[k]).sin() as f32;
            row[q + k] = (a * omega[k]).cos() as f32;
            row[2 * q + k] = (b * omega[k]).sin() as f32;
            row[3 * q + k] = (b * omega[k]).cos() as f32;
        }
    }
    Ok(())
}

/// Patch im2col: `cols [B*P, C*p*p]` from `images [B, C, H, W]`. Row `b*P + py*(W/p) + px` (timm's
/// `flatten(2).transpose(1, 2)` token order: row-major over the grid), column `(ci*p + ky)*p + kx` holds
/// `images[b, ci, py*p + ky, px*p + kx]`. That column order is the torch conv weight `[D, C, p, p]` flattened, so
/// `linear_forward(tokens [B*P, D], cols, conv_weight as [D, C*p*p], bias)` is the patch projection. A
/// permutation: every image element lands in exactly one place.
pub fn patch_im2col(cols: &mut [f32], images: &[f32], shape: &PatchShape) -> Result<()> {
    let s = *shape;
    s.check(("images", images.len()), ("cols", cols.len()))?;
    let (p, (_, gw), np) = (s.patch, s.grid(), s.patches());
    cols.par_chunks_mut(s.cols()).enumerate().for_each(|(row, dst)| {
        let (b, m) = (row / np, row % np);
        let (py, px) = (m / gw, m % gw);
        for ci in 0..s.c {
            for ky in 0..p {
                let src = ((b * s.c + ci) * s.h + py * p + ky) * s.w + px * p;
                dst[(ci * p + ky) * p..][..p].copy_from_slice(&images[src..src + p]);
            }
        }
    });
    Ok(())
}

/// Backward of [`patch_im2col`]: `dimages [B, C, H, W] +=` `dcols [B*P, C*p*p]` scattered back (not needed with
/// moco-v3's frozen patch projection and image inputs, but cheap and it closes the layer).
pub fn patch_im2col_backward(dimages: &mut [f32], dcols: &[f32], shape: &PatchShape) -> Result<()> {
    let s = *shape;
    s.check(("dimages", dimages.len()), ("dcols", dcols.len()))?;
    let (p, (_, gw), np) = (s.patch, s.grid(), s.patches());
    let img = s.c * s.h * s.w;
    dimages.par_chunks_mut(img).enumerate().for_each(|(b, di)| {
        for m in 0..np {
            let (py, px) = (m / gw, m % gw);
            let src = &dcols[(b * np + m) * s.cols()..][..s.cols()];
            for ci in 0..s.c {
                for ky in 0..p {
                    let o = (ci * s.h + py * p + ky) * s.w + px * p;
                    di[o..o + p].iter_mut().zip(&src[(ci * p + ky) * p..][..p]).for_each(|(d, g)| *d += g);
                }
            }
        }
    });
    Ok(())
}

/// Token assembly (timm's `_pos_embed` with a cls token): `tokens [B, T, C]`, `tokens[b, 0] = cls + pos[0]`,
/// `tokens[b, 1 + p] = patches[b*P + p] + pos[1 + p]`; `patches [B*P, C]`, `cls [C]`, `pos [T, C]`.
pub fn tokens_forward(tokens: &mut [f32], patches: &[f32], cls: &[f32], pos: &[f32], shape: &TokensShape) -> Result<()> {
    let s = *shape;
    s.check_forward(tokens.len(), patches.len(), cls.len(), pos.len())?;
    tokens.par_chunks_mut(s.c).enumerate().for_each(|(row, dst)| {
        let (b, t) = (row / s.t, row % s.t);
        let src = if t == 0 { cls } else { &patches[(b * s.patches() + t - 1) * s.c..][..s.c] };
        dst.iter_mut().zip(src).zip(&pos[t * s.c..][..s.c]).for_each(|((d, x), p)| *d = x + p);
    });
    Ok(())
}

/// Backward of [`tokens_forward`]: `dpatches [B*P, C] +=` the patch rows of `dtokens`, `dcls [C] +=` the sum over
/// the batch of the cls rows (each skipped when `None`); the position embedding is fixed (no gradient).
pub fn tokens_backward(dpatches: Option<&mut [f32]>, dcls: Option<&mut [f32]>, dtokens: &[f32], shape: &TokensShape) -> Result<()> {
    let s = *shape;
    s.check_backward(dpatches.as_ref().map(|d| d.len()), dcls.as_ref().map(|d| d.len()), dtokens.len())?;
    if let Some(dp) = dpatches {
        if s.patches() > 0 {
            dp.par_chunks_mut(s.c).enumerate().for_each(|(row, dst)| {
                let (b, p) = (row / s.patches(), row % s.patches());
                dst.iter_mut().zip(&dtokens[(b * s.t + 1 + p) * s.c..][..s.c]).for_each(|(d, g)| *d += g);
            });
        }
    }
    if let Some(dc) = dcls {
        for b in 0..s.b {
            dc.iter_mut().zip(&dtokens[b * s.t * s.c..][..s.c]).for_each(|(d, g)| *d += g);
        }
    }
    Ok(())
}

/// The cls feature: `out [B, C] = tokens[:, 0]` of `tokens [B, T, C]`.
pub fn cls_select_forward(out: &mut [f32], tokens: &[f32], shape: &TokensShape) -> Result<()> {
    let s = *shape;
    s.check_cls("cls_select_forward", ("out", out.len()), ("tokens", tokens.len()))?;
    out.chunks_mut(s.c).enumerate().for_each(|(b, dst)| dst.copy_from_slice(&tokens[b * s.t * s.c..][..s.c]));
    Ok(())
}

/// Backward of [`cls_select_forward`]: `dtokens[:, 0] += dout [B, C]`.
pub fn cls_select_backward(dtokens: &mut [f32], dout: &[f32], shape: &TokensShape) -> Result<()> {
    let s = *shape;
    s.check_cls("cls_select_backward", ("dout", dout.len()), ("dtokens", dtokens.len()))?;
    for (b, g) in dout.chunks(s.c).enumerate() {
        dtokens[b * s.t * s.c..][..s.c].iter_mut().zip(g).for_each(|(d, g)| *d += g);
    }
    Ok(())
}

impl Patch for crate::device::CpuDevice {
    fn patch_im2col(&mut self, cols: &mut [f32], images: &[f32], shape: &PatchShape) -> Result<()> {
        patch_im2col(cols, images, shape)
    }
    fn patch_im2col_backward(&mut self, dimages: &mut [f32], dcols: &[f32], shape: &PatchShape) -> Result<()> {
        patch_im2col_backward(dimages, dcols, shape)
    }
    fn tokens_forward(&mut self, tokens: &mut [f32], patches: &[f32], cls: &[f32], pos: &[f32], shape: &TokensShape) -> Result<()> {
        tokens_forward(tokens, patches, cls, pos, shape)
    }
    fn tokens_backward(&mut self, dpatches: Option<&mut [f32]>, dcls: Option<&mut [f32]>, dtokens: &[f32], shape: &TokensShape) -> Result<()> {
        tokens_backward(dpatches, dcls, dtokens, shape)
    }
    fn cls_select_forward(&mut self, out: &mut [f32], tokens: &[f32], shape: &TokensShape) -> Result<()> {
        cls_select_forward(out, tokens, shape)
    }
    fn cls_select_backward(&mut self, dtokens: &mut [f32], dout: &[f32], shape: &TokensShape) -> Result<()> {
        cls_select_backward(dtokens, dout, shape)
    }
}
