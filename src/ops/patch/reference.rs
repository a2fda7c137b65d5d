//! The f64 reference of the patch embedding and position embedding: plain loops, one thread, the textbook formulas. The tests compare the f32
//! kernels against it, and its backward against central finite differences of its forward. Inputs are f64 (so a
//! test can perturb them).

use super::{PatchShape, PosEmbedShape};

/// f64 2-D sin-cos position embedding `[1 + P, D]`, written directly from moco-v3's code: `meshgrid` ('ij') of
/// `arange(w)` and `arange(h)`, flattened, so `grid_w.flatten()[m] = m / h` and `grid_h.flatten()[m] = m % h`;
/// `cat([sin(out_w), cos(out_w), sin(out_h), cos(out_h)])`; a zero cls row first.
pub fn sincos_pos_embed_2d(s: &PosEmbedShape) -> Vec<f64> {
    let (h, w, dim) = (s.grid_h(), s.grid_w(), s.dim());
    let q = dim / 4;
    // torch.meshgrid(arange(w), arange(h)) with indexing='ij': outputs [w, h], first[i][j] = i, second[i][j] = j
    let mut grid_w = Vec::new();
    let mut grid_h = Vec::new();
    for i in 0..w {
        for j in 0..h {
            grid_w.push(i as f64);
            grid_h.push(j as f64);
        }
    }
    let omega: Vec<f64> = (0..q).map(|k| 1.0 / 10000f64.powf(k as f64 / q as f64)).collect();
    let mut out = vec![0.0; dim];
    for m in 0..h * w {
        out.extend(omega.iter().map(|o| (grid_w[m] * o).sin()));
        out.extend(omega.iter().map(|o| (grid_w[m] * o).cos()));
        out.extend(omega.iter().map(|o| (grid_h[m] * o).sin()));
        out.extend(omega.iter().map(|o| (grid_h[m] * o).cos()));
    }
    out
}

/// f64 patch embedding: the strided conv `tokens [B, P, D]` (row-major grid order) from `images [B, C, H, W]`,
/// `weight [D, C, p, p]`, `bias [D]`, computed as a convolution (no im2col), so it checks the im2col layout.
pub fn patch_embed_forward(images: &[f64], weight: &[f64], bias: &[f64], dim: usize, s: &PatchShape) -> Vec<f64> {
    let (p, (gh, gw)) = (s.patch(), s.grid());
    let mut out = vec![0.0; s.b() * gh * gw * dim];
    for b in 0..s.b() {
        for py in 0..gh {
            for px in 0..gw {
                for o in 0..dim {
                    let mut acc = bias[o];
                    for ci in 0..s.c() {
                        for ky in 0..p {
                            for kx in 0..p {
                                acc += images[((b * s.c() + ci) * s.h() + py * p + ky) * s.w() + px * p + kx] * weight[((o * s.c() + ci) * p + ky) * p + kx];
                            }
                        }
                    }
                    out[((b * gh + py) * gw + px) * dim + o] = acc;
                }
            }
        }
    }
    out
}
