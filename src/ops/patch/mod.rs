//! A ViT's input side: the patch embedding's im2col (`cols [B*P, C*p*p]` from `images [B, C, H, W]`; the
//! projection is a [`crate::ops::linear`] GEMM), the token assembly (`[cls; patches] + pos`), the fixed 2-D
//! sin-cos position embedding, and the class-token feature `tokens[:, 0]` at the output.
//!
//! | | |
//! |---|---|
//! | shapes | [`PatchShape`], [`TokensShape`], [`PosEmbedShape`] |
//! | CPU | [`cpu`]: `patch_im2col(_backward)`, `tokens_forward/backward`, `cls_select_forward/backward`, `sincos_pos_embed_2d` |
//! | wgpu / CUDA | the same names in `shaders/patch.wgsl` / `kernels/patch.cu` |
//! | reference | [`reference`](mod@reference) (f64; the patch embedding as a convolution) |

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::check::{elems, getters, lens, positives};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("patch");

/// A validated 2-D sin-cos position embedding: a `grid_h × grid_w` patch grid, width `dim` (a multiple of 4),
/// output `[1 + grid_h*grid_w, dim]` (the cls row first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PosEmbedShape {
    grid_h: usize,
    grid_w: usize,
    dim: usize,
}

getters!(PosEmbedShape { /** Grid rows. */ grid_h: usize, /** Grid columns. */ grid_w: usize, /** Embedding width D. */ dim: usize });

impl PosEmbedShape {
    /// Validates grid sizes >= 1, `dim >= 4` and `dim % 4 == 0` (moco-v3 asserts the same).
    pub fn new(grid_h: usize, grid_w: usize, dim: usize) -> Result<Self> {
        let op = "pos_embed";
        positives(op, &[("grid_h", grid_h), ("grid_w", grid_w), ("dim", dim)])?;
        if dim % 4 != 0 {
            return Err(Error::shape(op, "dim divisible by 4", format!("dim = {dim}")));
        }
        let p = elems(op, "grid", &[grid_h, grid_w])?;
        elems(op, "pos_embed", &[p + 1, dim])?;
        Ok(Self { grid_h, grid_w, dim })
    }
    /// Tokens: 1 + grid_h*grid_w.
    pub fn tokens(&self) -> usize {
        1 + self.grid_h * self.grid_w
    }
    /// Length of the output: tokens*dim.
    pub fn len(&self) -> usize {
        self.tokens() * self.dim
    }
    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A validated patch embedding: images `[B, C, H, W]` (NCHW), patch `p` (conv kernel = stride = p, no padding;
/// H and W multiples of p), patches `[B*P, C*p*p]` with P = (H/p)*(W/p).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchShape {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    patch: usize,
}

getters!(PatchShape { /** Batch B. */ b: usize, /** Channels C. */ c: usize, /** Image height H. */ h: usize, /** Image width W. */ w: usize, /** Patch size p. */ patch: usize });

impl PatchShape {
    /// Validates all sizes >= 1 and H, W divisible by the patch.
    pub fn new(b: usize, c: usize, h: usize, w: usize, patch: usize) -> Result<Self> {
        let op = "patch_embed";
        positives(op, &[("B", b), ("C", c), ("H", h), ("W", w), ("patch", patch)])?;
        if h % patch != 0 || w % patch != 0 {
            return Err(Error::shape(op, "H and W divisible by the patch size", format!("H = {h}, W = {w}, patch = {patch}")));
        }
        elems(op, "images", &[b, c, h, w])?;
        Ok(Self { b, c, h, w, patch })
    }
    /// Patch grid (rows, columns): (H/p, W/p).
    pub fn grid(&self) -> (usize, usize) {
        (self.h / self.patch, self.w / self.patch)
    }
    /// Patches per image P.
    pub fn patches(&self) -> usize {
        let (gh, gw) = self.grid();
        gh * gw
    }
    /// Columns of the patch matrix: C*p*p (the `IN` of the projection linear).
    pub fn cols(&self) -> usize {
        self.c * self.patch * self.patch
    }
    /// Length of the images: B*C*H*W (also the patch matrix's length: im2col is a permutation here).
    pub fn len(&self) -> usize {
        self.b * self.c * self.h * self.w
    }
    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Checks `images` (or `dimages`) `[B*C*H*W]` and `cols` (or `dcols`) `[B*P*C*p*p]`, the same length.
    pub(crate) fn check(&self, images: (&str, usize), cols: (&str, usize)) -> Result<()> {
        lens("patch_embed", &[(format!("{} [B*C*H*W]", images.0).as_str(), self.len(), images.1), (format!("{} [B*P*C*p*p]", cols.0).as_str(), self.len(), cols.1)])
    }
}

/// A validated token problem: `B` images of `T = 1 + P` tokens of `C` features; token 0 is the cls token.
/// Used by [`Patch::tokens_forward`] (assembly) and [`Patch::cls_select_forward`] (the cls feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokensShape {
    b: usize,
    t: usize,
    c: usize,
}

getters!(TokensShape { /** Batch B. */ b: usize, /** Tokens per image T (cls included). */ t: usize, /** Features C. */ c: usize });

impl TokensShape {
    /// Validates B >= 1, T >= 1 (the cls token; P = T - 1 patches may be 0), C >= 1 and the sizes.
    pub fn new(b: usize, t: usize, c: usize) -> Result<Self> {
        let op = "tokens";
        positives(op, &[("B", b), ("T", t), ("C", c)])?;
        elems(op, "tokens", &[b, t, c])?;
        Ok(Self { b, t, c })
    }
    /// Patches per image P = T - 1.
    pub fn patches(&self) -> usize {
        self.t - 1
    }
    /// Length of the token tensor B*T*C.
    pub fn len(&self) -> usize {
        self.b * self.t * self.c
    }
    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Checks the token assembly's buffers: `tokens [B*T*C]`, `patches [B*P*C]`, `cls [C]`, `pos [T*C]`.
    pub(crate) fn check_forward(&self, tokens: usize, patches: usize, cls: usize, pos: usize) -> Result<()> {
        lens("tokens_forward", &[("tokens [B*T*C]", self.len(), tokens), ("patches [B*P*C]", self.b * self.patches() * self.c, patches), ("cls [C]", self.c, cls), ("pos [T*C]", self.t * self.c, pos)])
    }
    /// Checks the token assembly's backward: `dtokens [B*T*C]`, `dpatches [B*P*C]` and `dcls [C]` when given.
    pub(crate) fn check_backward(&self, dpatches: Option<usize>, dcls: Option<usize>, dtokens: usize) -> Result<()> {
        lens("tokens_backward", &[("dtokens [B*T*C]", self.len(), Some(dtokens)), ("dpatches [B*P*C]", self.b * self.patches() * self.c, dpatches), ("dcls [C]", self.c, dcls)])
    }
    /// Checks the cls feature's buffers: `out` (or `dout`) `[B*C]` and `tokens` (or `dtokens`) `[B*T*C]`.
    pub(crate) fn check_cls(&self, op: &'static str, out: (&str, usize), tokens: (&str, usize)) -> Result<()> {
        lens(op, &[(format!("{} [B*C]", out.0).as_str(), self.b * self.c, out.1), (format!("{} [B*T*C]", tokens.0).as_str(), self.len(), tokens.1)])
    }
}

/// Patch embedding, token assembly and the class-token feature on a device; backwards accumulate.
pub trait Patch: Device {
    /// Patch im2col: `cols [B*P, C*p*p]` from `images [B, C, H, W]`.
    fn patch_im2col(&mut self, cols: Self::Mut<'_>, images: Self::Ref<'_>, shape: &PatchShape) -> Result<()>;
    /// Patch im2col backward: `dimages +=`.
    fn patch_im2col_backward(&mut self, dimages: Self::Mut<'_>, dcols: Self::Ref<'_>, shape: &PatchShape) -> Result<()>;
    /// Token assembly: `tokens [B, T, C]` from the cls token, the patch tokens `[B*P, C]` and `pos [T, C]`.
    fn tokens_forward(&mut self, tokens: Self::Mut<'_>, patches: Self::Ref<'_>, cls: Self::Ref<'_>, pos: Self::Ref<'_>, shape: &TokensShape) -> Result<()>;
    /// Token assembly backward: `dpatches`, `dcls` `+=` (each skipped when `None`).
    fn tokens_backward(&mut self, dpatches: Option<Self::Mut<'_>>, dcls: Option<Self::Mut<'_>>, dtokens: Self::Ref<'_>, shape: &TokensShape) -> Result<()>;
    /// The cls feature `out [B, C] = tokens[:, 0]`.
    fn cls_select_forward(&mut self, out: Self::Mut<'_>, tokens: Self::Ref<'_>, shape: &TokensShape) -> Result<()>;
    /// `dtokens[:, 0] += dout`.
    fn cls_select_backward(&mut self, dtokens: Self::Mut<'_>, dout: Self::Ref<'_>, shape: &TokensShape) -> Result<()>;
}
