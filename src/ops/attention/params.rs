//! The parameter block and grid of `kernels/attention.cu` / `shaders/attention.wgsl`.

use super::AttentionShape;
use crate::ops::launch::{grid_2d, Grid};

/// Threads per group of every attention kernel.
pub const BLOCK: u32 = 64;

/// `struct AttentionParams` of the kernels (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[doc(hidden)]
pub struct AttentionParams {
    pub b: u32,
    pub t: u32,
    pub c: u32,
    pub heads: u32,
    pub head_dim: u32,
    pub scale: f32,
    pub _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<AttentionParams>() == 32);

impl AttentionParams {
    /// The parameter block and grid (one group per (b, h, token), over x and y) of every attention kernel. The
    /// shape's constructor bounds qkv and att by `i32::MAX` elements.
    pub fn launch(s: &AttentionShape) -> (Self, Grid) {
        let u = |v: usize| v as u32;
        let p = Self { b: u(s.b()), t: u(s.t()), c: u(s.c()), heads: u(s.heads()), head_dim: u(s.head_dim()), scale: s.scale(), _pad: [0; 2] };
        (p, grid_2d(s.b() * s.heads() * s.t()))
    }
}
