//! The ViT kernels' parameter block and launch geometry (`struct Params` of `kernels/vit.cu`): one place for the
//! CUDA host code (src/backend/cuda/vit.rs) and tests/cuda_emulated.rs, which runs the kernels on the CPU with them.
//!
//! Blocks: [`LN_BLOCK`] threads for the layer-norm row kernels, [`VIT_BLOCK`] for every other one. Block-per-item
//! launches (a row, a query, a key) take [`super::grid_2d`]; element and column kernels loop grid-stride over
//! [`vit_elem_grid`] (at most 65535 blocks).

use super::Grid;
use crate::backend::cpu::nn::{AttentionShape, LayerNormShape, PatchShape, TokensShape};

/// Threads per block of `layernorm_forward` and `layernorm_backward_dx` (`LN_WG` in the kernel).
pub const LN_BLOCK: u32 = 128;
/// Threads per block of every other ViT kernel (`WG` in the kernel).
pub const VIT_BLOCK: u32 = 64;

/// The ViT kernels' parameter block (`struct Params` of `kernels/vit.cu`); unused fields are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[doc(hidden)]
pub struct VitParams {
    /// Layer norm: rows R.
    pub rows: u32,
    /// Features per row / token C (attention: H*D).
    pub c: u32,
    /// Elements an element-wise launch covers.
    pub len: u32,
    /// Batch B.
    pub b: u32,
    /// Tokens T.
    pub t: u32,
    /// Heads H.
    pub heads: u32,
    /// Head dim D.
    pub hd: u32,
    /// Image channels.
    pub img_c: u32,
    /// Image height.
    pub h: u32,
    /// Image width.
    pub w: u32,
    /// Patch size p.
    pub patch: u32,
    /// Patch grid columns W/p.
    pub gw: u32,
    /// Patches per image P.
    pub np: u32,
    /// im2col columns C*p*p.
    pub cols: u32,
    /// Layer-norm eps.
    pub eps: f32,
    /// Attention scale 1/sqrt(D).
    pub scale: f32,
}
const _: () = assert!(std::mem::size_of::<VitParams>() == 64 && std::mem::offset_of!(VitParams, eps) == 56);

impl VitParams {
    /// Layer norm over `s` (`rows`, `c`, `eps`).
    pub fn layernorm(s: &LayerNormShape) -> Self {
        Self { rows: s.rows() as u32, c: s.c() as u32, len: s.len() as u32, eps: s.eps(), ..Self::default() }
    }
    /// An element-wise kernel over `len` elements (GELU, add_backward).
    pub fn eltwise(len: usize) -> Self {
        Self { len: len as u32, ..Self::default() }
    }
    /// The attention kernels for `s`.
    pub fn attention(s: &AttentionShape) -> Self {
        Self { b: s.b() as u32, t: s.t() as u32, heads: s.heads() as u32, hd: s.head_dim() as u32, c: s.c() as u32, len: s.att_len() as u32, scale: s.scale(), ..Self::default() }
    }
    /// The patch im2col and its backward for `s` (`len` = B*C*H*W, both tensors' length).
    pub fn patch(s: &PatchShape) -> Self {
        let (_, gw) = s.grid();
        Self { b: s.b() as u32, img_c: s.c() as u32, h: s.h() as u32, w: s.w() as u32, patch: s.patch() as u32, gw: gw as u32, np: s.patches() as u32, cols: s.cols() as u32, len: s.len() as u32, ..Self::default() }
    }
    /// The token kernels for `s`, `len` the elements the launch covers: B*T*C (`tokens_forward`), B*(T-1)*C
    /// (`tokens_backward_patches`), B*C (`cls_select_*`); `tokens_backward_cls` covers `c`.
    pub fn tokens(s: &TokensShape, len: usize) -> Self {
        Self { b: s.b() as u32, t: s.t() as u32, c: s.c() as u32, len: len as u32, ..Self::default() }
    }
}

/// Grid-stride launches over `n` elements (or columns): one [`VIT_BLOCK`]-thread block per 64, at most 65535
/// blocks (at least 1).
pub fn vit_elem_grid(n: usize) -> Grid {
    (n.div_ceil(VIT_BLOCK as usize).clamp(1, 65535) as u32, 1, 1)
}

/// `layernorm_forward`, `layernorm_backward_dx`: one block per row.
pub fn layernorm_row_grid(s: &LayerNormShape) -> Grid {
    super::grid_2d(s.rows())
}

/// `attention_*`: one block per (b, h, query or key).
pub fn attention_grid(s: &AttentionShape) -> Grid {
    super::grid_2d(s.b() * s.heads() * s.t())
}
