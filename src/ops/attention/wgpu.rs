//! The ViT layers on wgpu (`shaders/vit.wgsl`), the same operations and names as [`crate::backend::cpu::nn::vit`]
//! (and [`crate::backend::cpu::nn::add_backward`]): layer norm, exact erf GELU, the attention core, the patch
//! im2col, token assembly and the cls feature. Buffers are f32 storage buffers (or [`super::GpuSlice`]s of one)
//! of at least the element counts of the shape types; forward functions overwrite their outputs, backward
//! functions accumulate. The work decomposition (one workgroup per row / per (b, h, token), one thread per
//! element or column) is described at the top of the shader and shared with `kernels/vit.cu`; the grids and the
//! parameter block are [`crate::backend::plan::VitParams`] and its grid functions.

use super::context::{sources, AsGpuSlice, Dispatch, GpuSlice, WgpuContext};
use super::norm::run;
use super::pool::check_bytes;
use crate::backend::cpu::nn::{AttentionShape, EltwiseShape, LayerNormShape, PatchShape, TokensShape};
use crate::backend::plan::{vit_elem_grid, vit_row_grid, vit_stride_grid, Grid, VitParams};
use crate::error::Result;

/// One dispatch of `entry` with parameter block `p`.
fn step<'a>(ctx: &WgpuContext, entry: &'static str, p: &VitParams, buffers: Vec<(u32, &'a dyn AsGpuSlice)>, grid: Grid) -> (Vec<u8>, Dispatch<'a>) {
    let buffers = buffers.into_iter().map(|(b, x)| (b, x.as_gpu_slice())).collect();
    (bytemuck::bytes_of(p).to_vec(), Dispatch { pipeline: ctx.pipeline("vit", sources::VIT, entry, None), buffers, grid })
}

/// Submits the dispatches (one compute pass each, so each sees the previous one's writes) inside error scopes.
fn launch(ctx: &WgpuContext, steps: Vec<(Vec<u8>, Dispatch)>) -> Result<()> {
    ctx.scoped(|| {
        run(ctx, steps);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------------------------
// layer norm

/// Layer norm forward: `out [R, C] = (inp - mean)·rstd·gamma + beta` per row, writing `mean, rstd: [R]`
/// (biased variance, two-pass f32 tree reductions per row).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(ctx: &WgpuContext, out: &dyn AsGpuSlice, mean: &dyn AsGpuSlice, rstd: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, gamma: &dyn AsGpuSlice, beta: &dyn AsGpuSlice, shape: &LayerNormShape) -> Result<()> {
    let (op, s) = ("layernorm (wgpu)", shape);
    check_bytes(op, "inp [R*C]", inp, s.len())?;
    check_bytes(op, "out [R*C]", out, s.len())?;
    check_bytes(op, "mean [R]", mean, s.rows())?;
    check_bytes(op, "rstd [R]", rstd, s.rows())?;
    check_bytes(op, "gamma [C]", gamma, s.c())?;
    check_bytes(op, "beta [C]", beta, s.c())?;
    let p = VitParams::layernorm(s)?;
    launch(ctx, vec![step(ctx, "layernorm_forward", &p, vec![(1, inp), (2, out), (3, mean), (4, rstd), (5, gamma), (6, beta)], vit_row_grid(s.rows()))])
}

/// Layer norm backward with `x̂ = (inp - mean)·rstd`, `g = dout·gamma`: `dinp += rstd·(g - mean_C(g) -
/// x̂·mean_C(g·x̂))` (one workgroup per row), then `dgamma += Σ_rows dout·x̂`, `dbeta += Σ_rows dout` (one thread
/// per column, rows in order). `mean, rstd: [R]` as saved by [`layernorm_forward`].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(ctx: &WgpuContext, dinp: &dyn AsGpuSlice, dgamma: &dyn AsGpuSlice, dbeta: &dyn AsGpuSlice, dout: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, gamma: &dyn AsGpuSlice, mean: &dyn AsGpuSlice, rstd: &dyn AsGpuSlice, shape: &LayerNormShape) -> Result<()> {
    let (op, s) = ("layernorm (wgpu)", shape);
    check_bytes(op, "dinp [R*C]", dinp, s.len())?;
    check_bytes(op, "dout [R*C]", dout, s.len())?;
    check_bytes(op, "inp [R*C]", inp, s.len())?;
    check_bytes(op, "gamma [C]", gamma, s.c())?;
    check_bytes(op, "dgamma [C]", dgamma, s.c())?;
    check_bytes(op, "dbeta [C]", dbeta, s.c())?;
    check_bytes(op, "mean [R]", mean, s.rows())?;
    check_bytes(op, "rstd [R]", rstd, s.rows())?;
    let p = VitParams::layernorm(s)?;
    launch(
        ctx,
        vec![
            step(ctx, "layernorm_backward_dx", &p, vec![(1, inp), (3, mean), (4, rstd), (5, gamma), (7, dout), (8, dinp)], vit_row_grid(s.rows())),
            step(ctx, "layernorm_backward_params", &p, vec![(1, inp), (3, mean), (4, rstd), (7, dout), (9, dgamma), (10, dbeta)], vit_elem_grid(s.c())),
        ],
    )
}

// ---------------------------------------------------------------------------------------------------------------
// GELU

/// GELU forward (exact erf form): `out = 0.5·inp·(1 + erf(inp/√2))`. Any layout.
pub fn gelu_forward(ctx: &WgpuContext, out: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, shape: &EltwiseShape) -> Result<()> {
    check_bytes("gelu (wgpu)", "out", out, shape.len)?;
    check_bytes("gelu (wgpu)", "inp", inp, shape.len)?;
    let p = VitParams::eltwise(shape)?;
    launch(ctx, vec![step(ctx, "gelu_forward", &p, vec![(1, inp), (2, out)], vit_stride_grid(shape.len))])
}

/// GELU backward: `dinp += dout·(Φ(inp) + inp·φ(inp))`, `inp` the forward's input.
pub fn gelu_backward(ctx: &WgpuContext, dinp: &dyn AsGpuSlice, dout: &dyn AsGpuSlice, inp: &dyn AsGpuSlice, shape: &EltwiseShape) -> Result<()> {
    for (what, b) in [("dinp", dinp), ("dout", dout), ("inp", inp)] {
        check_bytes("gelu (wgpu)", what, b, shape.len)?;
    }
    let p = VitParams::eltwise(shape)?;
    launch(ctx, vec![step(ctx, "gelu_backward", &p, vec![(1, inp), (7, dout), (8, dinp)], vit_stride_grid(shape.len))])
}

// ---------------------------------------------------------------------------------------------------------------
// attention core

/// Attention forward: `att [B, H, T, T] = softmax_rows(q·kᵀ·scale)` per (b, h) (saved for the backward) and
/// `out [B, T, C] = att·v` per head, from `qkv [B, T, 3, H, D]`. One workgroup of 64 per (b, h, query).
pub fn attention_forward(ctx: &WgpuContext, out: &dyn AsGpuSlice, att: &dyn AsGpuSlice, qkv: &dyn AsGpuSlice, shape: &AttentionShape) -> Result<()> {
    let (op, s) = ("attention (wgpu)", shape);
    check_bytes(op, "qkv [B*T*3C]", qkv, s.qkv_len())?;
    check_bytes(op, "out [B*T*C]", out, s.out_len())?;
    check_bytes(op, "att [B*H*T*T]", att, s.att_len())?;
    let p = VitParams::attention(s)?;
    launch(ctx, vec![step(ctx, "attention_forward", &p, vec![(1, qkv), (2, out), (11, att)], vit_row_grid(s.b() * s.heads() * s.t()))])
}

/// Attention backward: `dqkv [B, T, 3, H, D] +=` the gradients of q, k, v for upstream `dout [B, T, C]`, from the
/// forward's `qkv` and `att`. Two launches: `attention_backward_dq` (per query row: `dS` into the context's
/// `[B, H, T, T]` scratch, and `dq`), then `attention_backward_dkv` (per key row: `dk`, `dv`).
pub fn attention_backward(ctx: &WgpuContext, dqkv: &dyn AsGpuSlice, dout: &dyn AsGpuSlice, qkv: &dyn AsGpuSlice, att: &dyn AsGpuSlice, shape: &AttentionShape) -> Result<()> {
    let (op, s) = ("attention (wgpu)", shape);
    check_bytes(op, "dqkv [B*T*3C]", dqkv, s.qkv_len())?;
    check_bytes(op, "dout [B*T*C]", dout, s.out_len())?;
    check_bytes(op, "qkv [B*T*3C]", qkv, s.qkv_len())?;
    check_bytes(op, "att [B*H*T*T]", att, s.att_len())?;
    let p = VitParams::attention(s)?;
    let ds = ctx.attention_scratch((s.att_len() * 4) as u64);
    let ds = GpuSlice::elems(&ds, 0, s.att_len())?;
    let grid = vit_row_grid(s.b() * s.heads() * s.t());
    launch(
        ctx,
        vec![
            step(ctx, "attention_backward_dq", &p, vec![(1, qkv), (7, dout), (8, dqkv), (11, att), (12, &ds)], grid),
            step(ctx, "attention_backward_dkv", &p, vec![(1, qkv), (7, dout), (8, dqkv), (11, att), (12, &ds)], grid),
        ],
    )
}

// ---------------------------------------------------------------------------------------------------------------
// patch im2col

/// Patch im2col: `cols [B*P, C*p*p]` from `images [B, C, H, W]` (row `b*P + py*(W/p) + px`, column
/// `(ci*p + ky)*p + kx`; see [`crate::backend::cpu::nn::patch_im2col`]).
pub fn patch_im2col(ctx: &WgpuContext, cols: &dyn AsGpuSlice, images: &dyn AsGpuSlice, shape: &PatchShape) -> Result<()> {
    check_bytes("patch_embed (wgpu)", "images [B*C*H*W]", images, shape.len())?;
    check_bytes("patch_embed (wgpu)", "cols [B*P*C*p*p]", cols, shape.len())?;
    let p = VitParams::patch(shape)?;
    launch(ctx, vec![step(ctx, "patch_im2col", &p, vec![(1, images), (2, cols)], vit_elem_grid(shape.len()))])
}

/// Backward of [`patch_im2col`]: `dimages [B, C, H, W] +=` `dcols` gathered back (each image element from the one
/// column element it went to).
pub fn patch_im2col_backward(ctx: &WgpuContext, dimages: &dyn AsGpuSlice, dcols: &dyn AsGpuSlice, shape: &PatchShape) -> Result<()> {
    check_bytes("patch_embed (wgpu)", "dimages [B*C*H*W]", dimages, shape.len())?;
    check_bytes("patch_embed (wgpu)", "dcols [B*P*C*p*p]", dcols, shape.len())?;
    let p = VitParams::patch(shape)?;
    launch(ctx, vec![step(ctx, "patch_im2col_backward", &p, vec![(7, dcols), (8, dimages)], vit_elem_grid(shape.len()))])
}

// ---------------------------------------------------------------------------------------------------------------
// token assembly and the cls feature

/// Token assembly: `tokens [B, T, C]`, `tokens[b, 0] = cls + pos[0]`, `tokens[b, 1 + p] = patches[b*P + p] +
/// pos[1 + p]`; `patches [B*P, C]` (unused when P = 0), `cls [C]`, `pos [T, C]`.
pub fn tokens_forward(ctx: &WgpuContext, tokens: &dyn AsGpuSlice, patches: &dyn AsGpuSlice, cls: &dyn AsGpuSlice, pos: &dyn AsGpuSlice, shape: &TokensShape) -> Result<()> {
    let (op, s) = ("tokens_forward (wgpu)", shape);
    check_bytes(op, "tokens [B*T*C]", tokens, s.len())?;
    check_bytes(op, "patches [B*P*C]", patches, s.b() * s.patches() * s.c())?;
    check_bytes(op, "cls [C]", cls, s.c())?;
    check_bytes(op, "pos [T*C]", pos, s.t() * s.c())?;
    let p = VitParams::tokens(s, s.len())?;
    // with no patches the caller's patches buffer may be empty (unbindable): bind a dummy the kernel never reads
    let dummy = (s.patches() == 0).then(|| ctx.storage_buffer("moco tokens dummy", 16));
    let patches = dummy.as_ref().map_or(patches, |d| d as &dyn AsGpuSlice);
    launch(ctx, vec![step(ctx, "tokens_forward", &p, vec![(1, patches), (2, tokens), (13, cls), (14, pos)], vit_elem_grid(s.len()))])
}

/// Backward of [`tokens_forward`]: `dpatches [B*P, C] +=` the patch rows of `dtokens`, `dcls [C] +=` the sum over
/// the batch (in order) of its cls rows; each skipped when `None`. The position embedding is fixed.
pub fn tokens_backward(ctx: &WgpuContext, dpatches: Option<&dyn AsGpuSlice>, dcls: Option<&dyn AsGpuSlice>, dtokens: &dyn AsGpuSlice, shape: &TokensShape) -> Result<()> {
    let (op, s) = ("tokens_backward (wgpu)", shape);
    let np = s.b() * s.patches() * s.c();
    check_bytes(op, "dtokens [B*T*C]", dtokens, s.len())?;
    if let Some(d) = dpatches {
        check_bytes(op, "dpatches [B*P*C]", d, np)?;
    }
    if let Some(d) = dcls {
        check_bytes(op, "dcls [C]", d, s.c())?;
    }
    let mut steps = Vec::new();
    if let Some(d) = dpatches.filter(|_| np > 0) {
        steps.push(step(ctx, "tokens_backward_patches", &VitParams::tokens(s, np)?, vec![(7, dtokens), (8, d)], vit_elem_grid(np)));
    }
    if let Some(d) = dcls {
        steps.push(step(ctx, "tokens_backward_cls", &VitParams::tokens(s, s.c())?, vec![(7, dtokens), (8, d)], vit_elem_grid(s.c())));
    }
    if steps.is_empty() {
        return Ok(());
    }
    launch(ctx, steps)
}

/// The cls feature: `out [B, C] = tokens[:, 0]` of `tokens [B, T, C]`.
pub fn cls_select_forward(ctx: &WgpuContext, out: &dyn AsGpuSlice, tokens: &dyn AsGpuSlice, shape: &TokensShape) -> Result<()> {
    let (op, s) = ("cls_select_forward (wgpu)", shape);
    check_bytes(op, "out [B*C]", out, s.b() * s.c())?;
    check_bytes(op, "tokens [B*T*C]", tokens, s.len())?;
    let p = VitParams::tokens(s, s.b() * s.c())?;
    launch(ctx, vec![step(ctx, "cls_select_forward", &p, vec![(1, tokens), (2, out)], vit_elem_grid(s.b() * s.c()))])
}

/// Backward of [`cls_select_forward`]: `dtokens[:, 0] += dout [B, C]`.
pub fn cls_select_backward(ctx: &WgpuContext, dtokens: &dyn AsGpuSlice, dout: &dyn AsGpuSlice, shape: &TokensShape) -> Result<()> {
    let (op, s) = ("cls_select_backward (wgpu)", shape);
    check_bytes(op, "dtokens [B*T*C]", dtokens, s.len())?;
    check_bytes(op, "dout [B*C]", dout, s.b() * s.c())?;
    let p = VitParams::tokens(s, s.b() * s.c())?;
    launch(ctx, vec![step(ctx, "cls_select_backward", &p, vec![(7, dout), (8, dtokens)], vit_elem_grid(s.b() * s.c()))])
}

// ---------------------------------------------------------------------------------------------------------------
// residual add backward (its forward is `pool::add_forward`)

/// Backward of the residual add: `da += dout`, `db += dout`.
pub fn add_backward(ctx: &WgpuContext, da: &dyn AsGpuSlice, db: &dyn AsGpuSlice, dout: &dyn AsGpuSlice, shape: &EltwiseShape) -> Result<()> {
    for (what, b) in [("da", da), ("db", db), ("dout", dout)] {
        check_bytes("add (wgpu)", what, b, shape.len)?;
    }
    let p = VitParams::eltwise(shape)?;
    launch(ctx, vec![step(ctx, "add_backward", &p, vec![(7, dout), (8, da), (15, db)], vit_stride_grid(shape.len))])
}
