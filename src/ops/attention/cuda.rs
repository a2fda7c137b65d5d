//! The ViT layers on CUDA (`kernels/vit.cu`), the same operations, argument order and validation as
//! [`crate::backend::cpu::nn::vit`] (and [`crate::backend::cpu::nn::add_backward`]): layer norm, exact erf GELU, the
//! attention core, the patch im2col, token assembly and the cls feature. Buffers are cudarc views (see
//! [`super::conv`]) of at least the element counts of the shape types; backward functions accumulate. Every
//! function runs asynchronously on `stream`.
//!
//! Work split (the same as `shaders/vit.wgsl`): one 128-thread block per layer-norm row, one 64-thread block per
//! attention (b, h, query) or (b, h, key), one thread per element or column elsewhere (grid-stride for GELU and
//! add_backward); see
//! [`crate::backend::plan::VitParams`] and the `vit_*_grid` functions next to it.

use super::conv::check_f32 as check_len;
use super::context::function;
use crate::backend::cpu::nn::{AttentionShape, EltwiseShape, LayerNormShape, PatchShape, TokensShape};
use crate::backend::plan::{vit_elem_grid, vit_row_grid, vit_stride_grid, Grid, VitParams, VIT_WG, VIT_WG_LN};
use crate::error::Result;
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};
use std::sync::Arc;

const FILE: &str = "vit.cu";

// SAFETY: #[repr(C)] plain-old-data (fourteen u32, two f32), the layout of `struct Params` in kernels/vit.cu.
unsafe impl DeviceRepr for VitParams {}

fn cfg(grid: Grid, block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// Launches a kernel of `vit.cu` taking `(Params, <views>)` with `$block`-thread blocks over `$grid`.
macro_rules! launch {
    ($stream:expr, $name:expr, $p:expr, $grid:expr, $block:expr $(, $buf:expr)*) => {{
        let f = function($stream, FILE, $name)?;
        let p: VitParams = $p;
        let mut b = $stream.launch_builder(&f);
        b.arg(&p);
        $(b.arg($buf);)*
        // SAFETY: at each use, the SAFETY comment before the macro gives the kernel signature the arguments
        // follow (in order) and why every access is in bounds.
        unsafe { b.launch(cfg($grid, $block)) }?;
    }};
}

// ---- layer norm ----------------------------------------------------------------------------------------------

/// Layer norm forward: `out [R, C] = (inp - mean)·rstd·gamma + beta` per row, saving `mean, rstd: [R]`.
/// Launches `layernorm_forward`, one 128-thread block per row.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, mean: &mut CudaViewMut<f32>, rstd: &mut CudaViewMut<f32>, inp: &CudaView<f32>, gamma: &CudaView<f32>, beta: &CudaView<f32>, shape: &LayerNormShape) -> Result<()> {
    let (op, s) = ("layernorm (cuda)", shape);
    check_len(op, "inp [R*C]", inp.len(), s.len())?;
    check_len(op, "out [R*C]", out.len(), s.len())?;
    check_len(op, "mean [R]", mean.len(), s.rows())?;
    check_len(op, "rstd [R]", rstd.len(), s.rows())?;
    check_len(op, "gamma [C]", gamma.len(), s.c())?;
    check_len(op, "beta [C]", beta.len(), s.c())?;
    // SAFETY: layernorm_forward(Params, float* out [R*C], float* mean [R], float* rstd [R], const float* inp [R*C],
    // const float* gamma [C], const float* beta [C]); block row < R touches row `row` of inp/out and index row of
    // mean/rstd, columns c < C (lengths checked above).
    launch!(stream, "layernorm_forward", VitParams::layernorm(s)?, vit_row_grid(s.rows()), VIT_WG_LN, out, mean, rstd, inp, gamma, beta);
    Ok(())
}

/// Layer norm backward: `dinp += rstd·(g - mean_C(g) - x̂·mean_C(g·x̂))` with `g = dout·gamma`,
/// `dgamma += Σ_rows dout·x̂`, `dbeta += Σ_rows dout`. Launches `layernorm_backward_dx` (one 128-thread block per
/// row) and `layernorm_backward_params` (one thread per column, rows in order).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(stream: &Arc<CudaStream>, dinp: &mut CudaViewMut<f32>, dgamma: &mut CudaViewMut<f32>, dbeta: &mut CudaViewMut<f32>, dout: &CudaView<f32>, inp: &CudaView<f32>, gamma: &CudaView<f32>, mean: &CudaView<f32>, rstd: &CudaView<f32>, shape: &LayerNormShape) -> Result<()> {
    let (op, s) = ("layernorm (cuda)", shape);
    check_len(op, "dinp [R*C]", dinp.len(), s.len())?;
    check_len(op, "dout [R*C]", dout.len(), s.len())?;
    check_len(op, "inp [R*C]", inp.len(), s.len())?;
    check_len(op, "gamma [C]", gamma.len(), s.c())?;
    check_len(op, "dgamma [C]", dgamma.len(), s.c())?;
    check_len(op, "dbeta [C]", dbeta.len(), s.c())?;
    check_len(op, "mean [R]", mean.len(), s.rows())?;
    check_len(op, "rstd [R]", rstd.len(), s.rows())?;
    let p = VitParams::layernorm(s)?;
    // SAFETY: layernorm_backward_dx(Params, float* dinp [R*C], const float* dout [R*C], const float* inp [R*C],
    // const float* gamma [C], const float* mean [R], const float* rstd [R]); block row < R touches its row only.
    launch!(stream, "layernorm_backward_dx", p, vit_row_grid(s.rows()), VIT_WG_LN, dinp, dout, inp, gamma, mean, rstd);
    // SAFETY: layernorm_backward_params(Params, float* dgamma [C], float* dbeta [C], const float* dout [R*C],
    // const float* inp [R*C], const float* mean [R], const float* rstd [R]); thread c < C reads column c of every
    // row and updates index c.
    launch!(stream, "layernorm_backward_params", p, vit_elem_grid(s.c()), VIT_WG, dgamma, dbeta, dout, inp, mean, rstd);
    Ok(())
}

// ---- GELU ------------------------------------------------------------------------------------------------------

fn elt(op: &'static str, s: &EltwiseShape, lens: &[(&str, usize)]) -> Result<EltwiseShape> {
    let s = EltwiseShape::new(s.len)?; // the field is public: revalidate
    for &(what, len) in lens {
        check_len(op, what, len, s.len)?;
    }
    Ok(s)
}

/// GELU forward (exact erf): `out = 0.5·inp·(1 + erf(inp/√2))`. Launches `gelu_forward`, grid-stride.
pub fn gelu_forward(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, inp: &CudaView<f32>, shape: &EltwiseShape) -> Result<()> {
    let s = elt("gelu (cuda)", shape, &[("out", out.len()), ("inp", inp.len())])?;
    // SAFETY: gelu_forward(Params, float* out [len], const float* inp [len]); thread i < len touches index i.
    launch!(stream, "gelu_forward", VitParams::eltwise(&s)?, vit_stride_grid(s.len), VIT_WG, out, inp);
    Ok(())
}

/// GELU backward: `dinp += dout·(Φ(inp) + inp·φ(inp))`, `inp` the forward's input. Launches `gelu_backward`.
pub fn gelu_backward(stream: &Arc<CudaStream>, dinp: &mut CudaViewMut<f32>, dout: &CudaView<f32>, inp: &CudaView<f32>, shape: &EltwiseShape) -> Result<()> {
    let s = elt("gelu (cuda)", shape, &[("dinp", dinp.len()), ("dout", dout.len()), ("inp", inp.len())])?;
    // SAFETY: gelu_backward(Params, float* dinp [len], const float* dout [len], const float* inp [len]); index i < len.
    launch!(stream, "gelu_backward", VitParams::eltwise(&s)?, vit_stride_grid(s.len), VIT_WG, dinp, dout, inp);
    Ok(())
}

/// Residual add backward: `da += dout`, `db += dout`. Launches `add_backward`, grid-stride.
pub fn add_backward(stream: &Arc<CudaStream>, da: &mut CudaViewMut<f32>, db: &mut CudaViewMut<f32>, dout: &CudaView<f32>, shape: &EltwiseShape) -> Result<()> {
    let s = elt("add (cuda)", shape, &[("da", da.len()), ("db", db.len()), ("dout", dout.len())])?;
    // SAFETY: add_backward(Params, float* da [len], float* db [len], const float* dout [len]); index i < len.
    launch!(stream, "add_backward", VitParams::eltwise(&s)?, vit_stride_grid(s.len), VIT_WG, da, db, dout);
    Ok(())
}

// ---- attention core --------------------------------------------------------------------------------------------

/// Attention forward: `att [B, H, T, T] = softmax_rows(q·kᵀ·scale)` (saved for the backward) and
/// `out [B, T, C] = att·v` per head, from `qkv [B, T, 3, H, D]`. Launches `attention_forward`, one 64-thread block
/// per (b, h, query).
pub fn attention_forward(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, att: &mut CudaViewMut<f32>, qkv: &CudaView<f32>, shape: &AttentionShape) -> Result<()> {
    let (op, s) = ("attention (cuda)", shape);
    check_len(op, "qkv [B*T*3C]", qkv.len(), s.qkv_len())?;
    check_len(op, "out [B*T*C]", out.len(), s.out_len())?;
    check_len(op, "att [B*H*T*T]", att.len(), s.att_len())?;
    // SAFETY: attention_forward(Params, float* out [B*T*C], float* att [B*H*T*T], const float* qkv [B*T*3C]); block
    // (b, h, i) < B*H*T writes att row (b, h, i) and out[b, i, h*D..(h+1)*D] and reads qkv rows of sample b.
    launch!(stream, "attention_forward", VitParams::attention(s)?, vit_row_grid(s.b() * s.heads() * s.t()), VIT_WG, out, att, qkv);
    Ok(())
}

/// Attention backward: `dqkv [B, T, 3, H, D] +=` the gradients of q, k and v for `dout [B, T, C]`, from the
/// forward's `qkv` and `att`. `ds` is scratch of at least B*H*T*T elements (overwritten; the [`Device`] impl of
/// [`super::Cuda`] keeps one). Launches `attention_backward_dq` (one 64-thread block per (b, h, query): ds and
/// dq) and `attention_backward_dkv` (one per (b, h, key): dk, dv). Deterministic, no atomics.
///
/// [`Device`]: crate::backend::device::Device
pub fn attention_backward(stream: &Arc<CudaStream>, dqkv: &mut CudaViewMut<f32>, ds: &mut CudaViewMut<f32>, dout: &CudaView<f32>, qkv: &CudaView<f32>, att: &CudaView<f32>, shape: &AttentionShape) -> Result<()> {
    let (op, s) = ("attention (cuda)", shape);
    check_len(op, "dqkv [B*T*3C]", dqkv.len(), s.qkv_len())?;
    check_len(op, "dout [B*T*C]", dout.len(), s.out_len())?;
    check_len(op, "qkv [B*T*3C]", qkv.len(), s.qkv_len())?;
    check_len(op, "att [B*H*T*T]", att.len(), s.att_len())?;
    check_len(op, "ds scratch [B*H*T*T]", ds.len(), s.att_len())?;
    let (p, grid) = (VitParams::attention(s)?, vit_row_grid(s.b() * s.heads() * s.t()));
    // SAFETY: attention_backward_dq(Params, float* dqkv [B*T*3C], float* ds [B*H*T*T], const float* dout [B*T*C],
    // const float* qkv [B*T*3C], const float* att [B*H*T*T]); block (b, h, i) writes ds row (b, h, i) and the dq
    // part of dqkv row (b, i) for head h only, and reads rows of sample b.
    launch!(stream, "attention_backward_dq", p, grid, VIT_WG, &mut *dqkv, &mut *ds, dout, qkv, att);
    // SAFETY: attention_backward_dkv(Params, float* dqkv, const float* ds, const float* dout, const float* qkv,
    // const float* att), the same lengths; block (b, h, j) writes the dk and dv parts of dqkv row (b, j) for head h
    // only and reads column j of ds/att (b, h) and rows of sample b. Runs after the dq launch on the same stream.
    let ds = ds.as_view();
    launch!(stream, "attention_backward_dkv", p, grid, VIT_WG, dqkv, &ds, dout, qkv, att);
    Ok(())
}

// ---- patch embedding -------------------------------------------------------------------------------------------

/// Patch im2col: `cols [B*P, C*p*p]` from `images [B, C, H, W]` (the column order of the conv weight
/// `[D, C, p, p]`). Launches `patch_im2col`, one thread per element of cols.
pub fn patch_im2col(stream: &Arc<CudaStream>, cols: &mut CudaViewMut<f32>, images: &CudaView<f32>, shape: &PatchShape) -> Result<()> {
    let (op, s) = ("patch_embed (cuda)", shape);
    check_len(op, "images [B*C*H*W]", images.len(), s.len())?;
    check_len(op, "cols [B*P*C*p*p]", cols.len(), s.len())?;
    // SAFETY: patch_im2col(Params, float* cols [len], const float* images [len]); element o < len of cols reads the
    // one image element it maps to (a permutation of 0..len).
    launch!(stream, "patch_im2col", VitParams::patch(s)?, vit_elem_grid(s.len()), VIT_WG, cols, images);
    Ok(())
}

/// Backward of [`patch_im2col`]: `dimages [B, C, H, W] += dcols` gathered (each image element from exactly one
/// cols element: no atomics). Launches `patch_im2col_backward`, one thread per image element.
pub fn patch_im2col_backward(stream: &Arc<CudaStream>, dimages: &mut CudaViewMut<f32>, dcols: &CudaView<f32>, shape: &PatchShape) -> Result<()> {
    let (op, s) = ("patch_embed (cuda)", shape);
    check_len(op, "dimages [B*C*H*W]", dimages.len(), s.len())?;
    check_len(op, "dcols [B*P*C*p*p]", dcols.len(), s.len())?;
    // SAFETY: patch_im2col_backward(Params, float* dimages [len], const float* dcols [len]); element e < len reads
    // the one cols element it came from.
    launch!(stream, "patch_im2col_backward", VitParams::patch(s)?, vit_elem_grid(s.len()), VIT_WG, dimages, dcols);
    Ok(())
}

// ---- tokens ----------------------------------------------------------------------------------------------------

/// Token assembly: `tokens [B, T, C]`, `tokens[b, 0] = cls + pos[0]`, `tokens[b, 1 + p] = patches[b*P + p] +
/// pos[1 + p]` (`patches [B*P, C]`, `cls [C]`, `pos [T, C]`). Launches `tokens_forward`, one thread per element.
pub fn tokens_forward(stream: &Arc<CudaStream>, tokens: &mut CudaViewMut<f32>, patches: &CudaView<f32>, cls: &CudaView<f32>, pos: &CudaView<f32>, shape: &TokensShape) -> Result<()> {
    let (op, s) = ("tokens_forward (cuda)", shape);
    check_len(op, "tokens [B*T*C]", tokens.len(), s.len())?;
    check_len(op, "patches [B*P*C]", patches.len(), s.b() * s.patches() * s.c())?;
    check_len(op, "cls [C]", cls.len(), s.c())?;
    check_len(op, "pos [T*C]", pos.len(), s.t() * s.c())?;
    // SAFETY: tokens_forward(Params, float* tokens [B*T*C], const float* patches [B*P*C], const float* cls [C],
    // const float* pos [T*C]); element e < B*T*C reads cls (t = 0) or its patch row (t >= 1, so P >= 1) and pos.
    launch!(stream, "tokens_forward", VitParams::tokens(s, s.len())?, vit_elem_grid(s.len()), VIT_WG, tokens, patches, cls, pos);
    Ok(())
}

/// Backward of [`tokens_forward`]: `dpatches [B*P, C] +=` the patch rows of `dtokens`, `dcls [C] +=` the sum over
/// the batch of the cls rows (each skipped when `None`). Launches `tokens_backward_patches` (one thread per
/// element, skipped when P = 0) and `tokens_backward_cls` (one thread per feature, batch in order).
pub fn tokens_backward(stream: &Arc<CudaStream>, dpatches: Option<&mut CudaViewMut<f32>>, dcls: Option<&mut CudaViewMut<f32>>, dtokens: &CudaView<f32>, shape: &TokensShape) -> Result<()> {
    let (op, s) = ("tokens_backward (cuda)", shape);
    check_len(op, "dtokens [B*T*C]", dtokens.len(), s.len())?;
    let plen = s.b() * s.patches() * s.c();
    if let Some(dp) = &dpatches {
        check_len(op, "dpatches [B*P*C]", dp.len(), plen)?;
    }
    if let Some(dc) = &dcls {
        check_len(op, "dcls [C]", dc.len(), s.c())?;
    }
    if let Some(dp) = dpatches.filter(|_| plen > 0) {
        // SAFETY: tokens_backward_patches(Params, float* dpatches [B*P*C], const float* dtokens [B*T*C]); element
        // e < B*P*C (P >= 1 here) reads dtokens row (b, 1 + p).
        launch!(stream, "tokens_backward_patches", VitParams::tokens(s, plen)?, vit_elem_grid(plen), VIT_WG, dp, dtokens);
    }
    if let Some(dc) = dcls {
        // SAFETY: tokens_backward_cls(Params, float* dcls [C], const float* dtokens [B*T*C]); thread c < C reads
        // dtokens[b, 0, c] for b < B and updates index c.
        launch!(stream, "tokens_backward_cls", VitParams::tokens(s, s.c())?, vit_elem_grid(s.c()), VIT_WG, dc, dtokens);
    }
    Ok(())
}

/// The cls feature: `out [B, C] = tokens[:, 0]`. Launches `cls_select_forward`, one thread per element of out.
pub fn cls_select_forward(stream: &Arc<CudaStream>, out: &mut CudaViewMut<f32>, tokens: &CudaView<f32>, shape: &TokensShape) -> Result<()> {
    let (op, s) = ("cls_select_forward (cuda)", shape);
    check_len(op, "out [B*C]", out.len(), s.b() * s.c())?;
    check_len(op, "tokens [B*T*C]", tokens.len(), s.len())?;
    let n = s.b() * s.c();
    // SAFETY: cls_select_forward(Params, float* out [B*C], const float* tokens [B*T*C]); element e < B*C reads
    // tokens[b, 0, c].
    launch!(stream, "cls_select_forward", VitParams::tokens(s, n)?, vit_elem_grid(n), VIT_WG, out, tokens);
    Ok(())
}

/// Backward of [`cls_select_forward`]: `dtokens[:, 0] += dout [B, C]`. Launches `cls_select_backward`.
pub fn cls_select_backward(stream: &Arc<CudaStream>, dtokens: &mut CudaViewMut<f32>, dout: &CudaView<f32>, shape: &TokensShape) -> Result<()> {
    let (op, s) = ("cls_select_backward (cuda)", shape);
    check_len(op, "dtokens [B*T*C]", dtokens.len(), s.len())?;
    check_len(op, "dout [B*C]", dout.len(), s.b() * s.c())?;
    let n = s.b() * s.c();
    // SAFETY: cls_select_backward(Params, float* dtokens [B*T*C], const float* dout [B*C]); element e < B*C updates
    // dtokens[b, 0, c] (distinct per e).
    launch!(stream, "cls_select_backward", VitParams::tokens(s, n)?, vit_elem_grid(n), VIT_WG, dtokens, dout);
    Ok(())
}
