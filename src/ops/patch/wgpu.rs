//! The ViT's input side on wgpu (`shaders/patch.wgsl`): patch im2col and its backward, token assembly and its
//! backward, the cls feature; one thread per element (or column for the cls gradient).

use super::params::PatchParams;
use super::{Patch, PatchShape, TokensShape, KERNELS};
use crate::device::wgpu::{GpuSlice, Launch, Wgpu};
use crate::error::Result;

impl Patch for Wgpu {
    fn patch_im2col(&mut self, cols: GpuSlice<'_>, images: GpuSlice<'_>, shape: &PatchShape) -> Result<()> {
        shape.check(("images", images.len()), ("cols", cols.len()))?;
        let (p, grid) = PatchParams::im2col(shape);
        self.run(&KERNELS, vec![Launch::new("patch_im2col", &p, vec![(1, cols), (2, images)], grid)])
    }
    fn patch_im2col_backward(&mut self, dimages: GpuSlice<'_>, dcols: GpuSlice<'_>, shape: &PatchShape) -> Result<()> {
        shape.check(("dimages", dimages.len()), ("dcols", dcols.len()))?;
        let (p, grid) = PatchParams::im2col(shape);
        self.run(&KERNELS, vec![Launch::new("patch_im2col_backward", &p, vec![(3, dimages), (4, dcols)], grid)])
    }
    fn tokens_forward(&mut self, tokens: GpuSlice<'_>, patches: GpuSlice<'_>, cls: GpuSlice<'_>, pos: GpuSlice<'_>, shape: &TokensShape) -> Result<()> {
        shape.check_forward(tokens.len(), patches.len(), cls.len(), pos.len())?;
        let (p, grid) = PatchParams::tokens(shape, shape.len());
        self.run(&KERNELS, vec![Launch::new("tokens_forward", &p, vec![(5, tokens), (6, patches), (7, cls), (8, pos)], grid)])
    }
    fn tokens_backward(&mut self, dpatches: Option<GpuSlice<'_>>, dcls: Option<GpuSlice<'_>>, dtokens: GpuSlice<'_>, shape: &TokensShape) -> Result<()> {
        shape.check_backward(dpatches.map(|d| d.len()), dcls.map(|d| d.len()), dtokens.len())?;
        let np = shape.b() * shape.patches() * shape.c();
        let mut launches = Vec::new();
        if let Some(d) = dpatches.filter(|_| np > 0) {
            let (p, grid) = PatchParams::tokens(shape, np);
            launches.push(Launch::new("tokens_backward_patches", &p, vec![(9, d), (10, dtokens)], grid));
        }
        if let Some(d) = dcls {
            let (p, grid) = PatchParams::tokens(shape, shape.c());
            launches.push(Launch::new("tokens_backward_cls", &p, vec![(11, d), (10, dtokens)], grid));
        }
        if launches.is_empty() {
            return Ok(());
        }
        self.run(&KERNELS, launches)
    }
    fn cls_select_forward(&mut self, out: GpuSlice<'_>, tokens: GpuSlice<'_>, shape: &TokensShape) -> Result<()> {
        shape.check_cls("cls_select_forward", ("out", out.len()), ("tokens", tokens.len()))?;
        let (p, grid) = PatchParams::tokens(shape, shape.b() * shape.c());
        self.run(&KERNELS, vec![Launch::new("cls_select_forward", &p, vec![(12, out), (5, tokens)], grid)])
    }
    fn cls_select_backward(&mut self, dtokens: GpuSlice<'_>, dout: GpuSlice<'_>, shape: &TokensShape) -> Result<()> {
        shape.check_cls("cls_select_backward", ("dout", dout.len()), ("dtokens", dtokens.len()))?;
        let (p, grid) = PatchParams::tokens(shape, shape.b() * shape.c());
        self.run(&KERNELS, vec![Launch::new("cls_select_backward", &p, vec![(10, dtokens), (13, dout)], grid)])
    }
}
