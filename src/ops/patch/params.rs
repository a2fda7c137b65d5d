//! The parameter block and grids of `kernels/patch.cu` / `shaders/patch.wgsl`: one thread per element of work, 64
//! per group.

use super::{PatchShape, TokensShape};
use crate::ops::launch::{grid_2d, Grid};

/// Threads per group of every patch kernel.
pub const BLOCK: u32 = 64;

/// `struct PatchParams` of the kernels (48 bytes); each constructor fills the fields its kernels read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[doc(hidden)]
pub struct PatchParams {
    pub len: u32,
    pub b: u32,
    pub t: u32,
    pub c: u32,
    pub img_c: u32,
    pub h: u32,
    pub w: u32,
    pub patch_size: u32,
    pub patches: u32,
    pub cols: u32,
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<PatchParams>() == 48);

/// One thread per element of `len`, [`BLOCK`] per group.
pub fn elem_grid(len: usize) -> Grid {
    grid_2d(len.div_ceil(BLOCK as usize))
}

impl PatchParams {
    /// `patch_im2col` / `patch_im2col_backward`: `len` = B*C*H*W, the length of both images and cols.
    pub fn im2col(s: &PatchShape) -> (Self, Grid) {
        let u = |v: usize| v as u32;
        let p = Self { b: u(s.b()), img_c: u(s.c()), h: u(s.h()), w: u(s.w()), patch_size: u(s.patch()), patches: u(s.patches()), cols: u(s.cols()), len: u(s.len()), ..Default::default() };
        (p, elem_grid(s.len()))
    }
    /// Token assembly and the cls feature with `len` elements of work (B*T*C for `tokens_forward`, B*P*C for
    /// `tokens_backward_patches`, C for `tokens_backward_cls`, B*C for `cls_select_*`).
    pub fn tokens(s: &TokensShape, len: usize) -> (Self, Grid) {
        let u = |v: usize| v as u32;
        (Self { b: u(s.b()), t: u(s.t()), c: u(s.c()), patches: u(s.patches()), len: u(len), ..Default::default() }, elem_grid(len))
    }
}
