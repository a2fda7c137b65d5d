//! The layers of moco-v3's ViT (`vits.py`, on timm's `VisionTransformer`) that ResNet does not have: layer norm,
//! exact erf GELU, the multi-head self-attention core, the fixed 2-D sin-cos position embedding and the patch
//! embedding's im2col. The projections (patch projection, qkv, attention proj, MLP fc1/fc2) are
//! [`super::linear_forward`] / [`super::linear_backward`]; nothing here is a GEMM.
//!
//! Same conventions as the rest of [`super`]: outputs first, shape last, lengths validated against the shape
//! (fields private, built only by the constructors), backward **accumulates** (`dinp += ...`, `dgamma += ...`).
//! Token tensors are `[B, T, C]` row-major (timm's layout), so a "row" is one token's C features.
//!
//! [`reference`] holds the f64 versions the tests compare against.

use super::check;
use crate::error::{Error, Result};
use rayon::prelude::*;

pub mod reference;

/// Element-wise work is split into chunks of this many elements.
const CHUNK: usize = 1 << 14;

// ---------------------------------------------------------------------------------------------------------------
// layer norm

/// A validated layer-norm problem: `inp, out: [R, C]` (R = B*T tokens), `gamma, beta: [C]`, saved
/// `mean, rstd: [R]`, `rstd = 1/sqrt(var + eps)` with the biased variance (as torch's `nn.LayerNorm`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNormShape {
    rows: usize,
    c: usize,
    eps: f32,
}

impl LayerNormShape {
    /// Validates R, C >= 1, a finite `eps > 0` (moco-v3 uses 1e-6) and the sizes.
    pub fn new(rows: usize, c: usize, eps: f32) -> Result<Self> {
        let op = "layernorm";
        check::positive(op, "rows R", rows)?;
        check::positive(op, "C", c)?;
        check::elems(op, "inp", &[rows, c])?;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::shape(op, "finite eps > 0", format!("eps = {eps}")));
        }
        Ok(Self { rows, c, eps })
    }
    /// Rows R (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Features C.
    pub fn c(&self) -> usize {
        self.c
    }
    /// The eps added to the variance.
    pub fn eps(&self) -> f32 {
        self.eps
    }
    /// Elements of `inp` and `out`: R*C.
    pub fn len(&self) -> usize {
        self.rows * self.c
    }
    /// Always false: a validated shape holds at least one element.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Rows per task in the layer-norm kernels (and per partial sum of `dgamma`/`dbeta`: the partials are added in a
/// fixed order, so the result does not depend on the thread count).
const LN_ROWS: usize = 32;

/// Layer norm forward: `out [R, C] = (inp - mean)·rstd·gamma + beta` per row; writes `mean, rstd: [R]` for the
/// backward. Statistics are accumulated in f64 (two passes: mean, then Σ(x - mean)²).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], gamma: &[f32], beta: &[f32], shape: &LayerNormShape) -> Result<()> {
    let s = *shape;
    let op = "layernorm";
    check::len(op, "inp [R*C]", s.len(), inp.len())?;
    check::len(op, "out [R*C]", s.len(), out.len())?;
    check::len(op, "mean [R]", s.rows, mean.len())?;
    check::len(op, "rstd [R]", s.rows, rstd.len())?;
    check::len(op, "gamma [C]", s.c, gamma.len())?;
    check::len(op, "beta [C]", s.c, beta.len())?;
    let c = s.c;
    out.par_chunks_mut(LN_ROWS * c)
        .zip(inp.par_chunks(LN_ROWS * c))
        .zip(mean.par_chunks_mut(LN_ROWS).zip(rstd.par_chunks_mut(LN_ROWS)))
        .for_each(|((y, x), (mu, rs))| {
            for (r, (y, x)) in y.chunks_mut(c).zip(x.chunks(c)).enumerate() {
                let m = x.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                let var = x.iter().map(|&v| (v as f64 - m) * (v as f64 - m)).sum::<f64>() / c as f64;
                let rr = 1.0 / (var + s.eps as f64).sqrt();
                let (mf, rf) = (m as f32, rr as f32);
                mu[r] = mf;
                rs[r] = rf;
                for i in 0..c {
                    y[i] = (x[i] - mf) * rf * gamma[i] + beta[i];
                }
            }
        });
    Ok(())
}

/// Layer norm backward, with `x̂ = (inp - mean)·rstd` and `g = dout·gamma` per row:
/// `dinp += rstd·(g - mean_C(g) - x̂·mean_C(g·x̂))`, `dgamma += Σ_rows dout·x̂`, `dbeta += Σ_rows dout`.
/// `mean, rstd: [R]` as saved by [`layernorm_forward`].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(dinp: &mut [f32], dgamma: &mut [f32], dbeta: &mut [f32], dout: &[f32], inp: &[f32], gamma: &[f32], mean: &[f32], rstd: &[f32], shape: &LayerNormShape) -> Result<()> {
    let s = *shape;
    let op = "layernorm";
    check::len(op, "dinp [R*C]", s.len(), dinp.len())?;
    check::len(op, "dout [R*C]", s.len(), dout.len())?;
    check::len(op, "inp [R*C]", s.len(), inp.len())?;
    check::len(op, "gamma [C]", s.c, gamma.len())?;
    check::len(op, "dgamma [C]", s.c, dgamma.len())?;
    check::len(op, "dbeta [C]", s.c, dbeta.len())?;
    check::len(op, "mean [R]", s.rows, mean.len())?;
    check::len(op, "rstd [R]", s.rows, rstd.len())?;
    let c = s.c;
    // per block of LN_ROWS rows: dinp in place, and the block's partial (dgamma, dbeta)
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dinp
        .par_chunks_mut(LN_ROWS * c)
        .zip(dout.par_chunks(LN_ROWS * c))
        .zip(inp.par_chunks(LN_ROWS * c))
        .zip(mean.par_chunks(LN_ROWS).zip(rstd.par_chunks(LN_ROWS)))
        .map(|(((dx, dy), x), (mu, rs))| {
            let (mut dg, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
            for (r, ((dx, dy), x)) in dx.chunks_mut(c).zip(dy.chunks(c)).zip(x.chunks(c)).enumerate() {
                let (m, rr) = (mu[r], rs[r]);
                let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                for i in 0..c {
                    let xh = (x[i] - m) * rr;
                    let g = dy[i] * gamma[i];
                    sg += g as f64;
                    sgx += (g * xh) as f64;
                    dg[i] += dy[i] * xh;
                    db[i] += dy[i];
                }
                let (mg, mgx) = ((sg / c as f64) as f32, (sgx / c as f64) as f32);
                for i in 0..c {
                    let xh = (x[i] - m) * rr;
                    dx[i] += rr * (dy[i] * gamma[i] - mg - xh * mgx);
                }
            }
            (dg, db)
        })
        .collect();
    for (dg, db) in &partials {
        dgamma.iter_mut().zip(dg).for_each(|(a, b)| *a += b);
        dbeta.iter_mut().zip(db).for_each(|(a, b)| *a += b);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// GELU (exact, erf)

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `gelu(x) = 0.5·x·(1 + erf(x/√2))`, torch's default (`approximate='none'`), with `libm::erff`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `gelu'(x) = Φ(x) + x·φ(x)`.
#[inline(always)]
pub(crate) fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * FRAC_1_SQRT_2PI * (-0.5 * x * x).exp()
}

/// GELU forward (exact erf form): `out = 0.5·inp·(1 + erf(inp/√2))`. Any layout.
pub fn gelu_forward(out: &mut [f32], inp: &[f32], shape: &super::EltwiseShape) -> Result<()> {
    check::len("gelu", "out", shape.len, out.len())?;
    check::len("gelu", "inp", shape.len, inp.len())?;
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = gelu(x)));
    Ok(())
}

/// GELU backward: `dinp += dout·(Φ(inp) + inp·φ(inp))`, `inp` the forward's input.
pub fn gelu_backward(dinp: &mut [f32], dout: &[f32], inp: &[f32], shape: &super::EltwiseShape) -> Result<()> {
    for (what, got) in [("dinp", dinp.len()), ("dout", dout.len()), ("inp", inp.len())] {
        check::len("gelu", what, shape.len, got)?;
    }
    dinp.par_chunks_mut(CHUNK).zip(dout.par_chunks(CHUNK)).zip(inp.par_chunks(CHUNK)).for_each(|((dx, dy), x)| {
        dx.iter_mut().zip(dy).zip(x).for_each(|((dx, &dy), &x)| *dx += dy * gelu_grad(x))
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// multi-head self-attention core

/// A validated attention problem (timm's `Attention` between its `qkv` and `proj` linears):
/// `qkv: [B, T, 3, H, D]` (the `qkv` linear's output `[B, T, 3C]`, C = H*D), `out: [B, T, H, D]` = `[B, T, C]`
/// (the input of `proj`), saved probabilities `att: [B, H, T, T]`, scale `1/√D`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    b: usize,
    t: usize,
    heads: usize,
    head_dim: usize,
}

impl AttentionShape {
    /// Validates B, T, H, D >= 1 and the sizes of `qkv` and `att`.
    pub fn new(b: usize, t: usize, heads: usize, head_dim: usize) -> Result<Self> {
        let op = "attention";
        for (what, v) in [("B", b), ("T", t), ("heads H", heads), ("head dim D", head_dim)] {
            check::positive(op, what, v)?;
        }
        check::elems(op, "qkv", &[b, t, 3, heads, head_dim])?;
        check::elems(op, "att", &[b, heads, t, t])?;
        Ok(Self { b, t, heads, head_dim })
    }
    /// Batch B.
    pub fn b(&self) -> usize {
        self.b
    }
    /// Tokens T (cls included).
    pub fn t(&self) -> usize {
        self.t
    }
    /// Heads H.
    pub fn heads(&self) -> usize {
        self.heads
    }
    /// Head dimension D.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// Model width C = H*D.
    pub fn c(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Length of `qkv`: B*T*3C.
    pub fn qkv_len(&self) -> usize {
        self.b * self.t * 3 * self.c()
    }
    /// Length of `out`: B*T*C.
    pub fn out_len(&self) -> usize {
        self.b * self.t * self.c()
    }
    /// Length of the saved probabilities `att`: B*H*T*T.
    pub fn att_len(&self) -> usize {
        self.b * self.heads * self.t * self.t
    }
    /// The softmax scale `1/√D` (timm: `head_dim ** -0.5`).
    pub fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Attention forward: per sample b and head h, `att[b,h] = softmax_rows(q·kᵀ·scale)` (`[T, T]`, saved for the
/// backward) and `out[b, t, h*D..(h+1)*D] = Σ_s att[b,h,t,s]·v_s`.
///
/// **Materialised probabilities.** Each head's `[T, T]` probability tile is written to `att` and reused by the
/// backward instead of being recomputed (flash-attention style). At the ViT's token counts this is small: 65 tokens
/// (CIFAR, patch 4) give 65² = 4225 floats (17 KB) per head, 197 tokens (224², patch 16) 39 K floats (155 KB); the
/// softmax is done in place on that tile (max-subtracted), so there is no separate pass over a large buffer.
/// Parallel over the batch.
pub fn attention_forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], shape: &AttentionShape) -> Result<()> {
    let s = *shape;
    check::len("attention", "qkv [B*T*3C]", s.qkv_len(), qkv.len())?;
    check::len("attention", "out [B*T*C]", s.out_len(), out.len())?;
    check::len("attention", "att [B*H*T*T]", s.att_len(), att.len())?;
    let (t, hn, d, c) = (s.t, s.heads, s.head_dim, s.c());
    let scale = s.scale();
    out.par_chunks_mut(t * c).zip(att.par_chunks_mut(hn * t * t)).zip(qkv.par_chunks(t * 3 * c)).for_each(|((o, a), x)| {
        // x: [T, 3, H, D] of this sample; o: [T, H, D]; a: [H, T, T]
        for h in 0..hn {
            let a = &mut a[h * t * t..(h + 1) * t * t];
            for i in 0..t {
                let q = &x[i * 3 * c + h * d..][..d];
                let row = &mut a[i * t..(i + 1) * t];
                let mut mx = f32::NEG_INFINITY;
                for (j, p) in row.iter_mut().enumerate() {
                    let k = &x[j * 3 * c + c + h * d..][..d];
                    *p = dot(q, k) * scale;
                    mx = mx.max(*p);
                }
                let mut sum = 0.0f32;
                for p in row.iter_mut() {
                    *p = (*p - mx).exp();
                    sum += *p;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|p| *p *= inv);
                let oi = &mut o[i * c + h * d..][..d];
                oi.iter_mut().for_each(|v| *v = 0.0);
                for (j, &p) in row.iter().enumerate() {
                    let v = &x[j * 3 * c + 2 * c + h * d..][..d];
                    oi.iter_mut().zip(v).for_each(|(o, &v)| *o += p * v);
                }
            }
        }
    });
    Ok(())
}

/// Attention backward: `dqkv [B, T, 3, H, D] +=` the gradients of q, k and v for upstream `dout [B, T, C]`, from
/// the forward's `qkv` and saved `att`. Per (b, h), with `P = att[b,h]`:
/// `dv_s += Σ_t P[t,s]·dout_t`, `dP[t,s] = dout_t·v_s`, `dS[t,s] = P[t,s]·(dP[t,s] - Σ_s' P[t,s']·dP[t,s'])`,
/// `dq_t += scale·Σ_s dS[t,s]·k_s`, `dk_s += scale·Σ_t dS[t,s]·q_t`. Parallel over the batch; one `[T, T]`
/// scratch tile per sample.
pub fn attention_backward(dqkv: &mut [f32], dout: &[f32], qkv: &[f32], att: &[f32], shape: &AttentionShape) -> Result<()> {
    let s = *shape;
    check::len("attention", "dqkv [B*T*3C]", s.qkv_len(), dqkv.len())?;
    check::len("attention", "dout [B*T*C]", s.out_len(), dout.len())?;
    check::len("attention", "qkv [B*T*3C]", s.qkv_len(), qkv.len())?;
    check::len("attention", "att [B*H*T*T]", s.att_len(), att.len())?;
    let (t, hn, d, c) = (s.t, s.heads, s.head_dim, s.c());
    let scale = s.scale();
    dqkv.par_chunks_mut(t * 3 * c).zip(dout.par_chunks(t * c)).zip(qkv.par_chunks(t * 3 * c)).zip(att.par_chunks(hn * t * t)).for_each(|(((dx, dy), x), a)| {
        let mut ds = vec![0.0f32; t * t];
        for h in 0..hn {
            let p = &a[h * t * t..(h + 1) * t * t];
            // dS = P ⊙ (dP - rowsum(P ⊙ dP)), dP[i,j] = dout_i · v_j
            for i in 0..t {
                let dyi = &dy[i * c + h * d..][..d];
                let (pr, dr) = (&p[i * t..(i + 1) * t], &mut ds[i * t..(i + 1) * t]);
                let mut acc = 0.0f32;
                for j in 0..t {
                    let v = &x[j * 3 * c + 2 * c + h * d..][..d];
                    dr[j] = dot(dyi, v);
                    acc += pr[j] * dr[j];
                }
                for j in 0..t {
                    dr[j] = pr[j] * (dr[j] - acc);
                }
            }
            for i in 0..t {
                // dq_i += scale·Σ_j dS[i,j]·k_j
                let dsr = &ds[i * t..(i + 1) * t];
                for j in 0..t {
                    let w = scale * dsr[j];
                    let k = &x[j * 3 * c + c + h * d..][..d];
                    dx[i * 3 * c + h * d..][..d].iter_mut().zip(k).for_each(|(g, &k)| *g += w * k);
                }
            }
            for j in 0..t {
                // dk_j += scale·Σ_i dS[i,j]·q_i ; dv_j += Σ_i P[i,j]·dout_i
                for i in 0..t {
                    let w = scale * ds[i * t + j];
                    let pw = p[i * t + j];
                    let q = &x[i * 3 * c + h * d..][..d];
                    let dyi = &dy[i * c + h * d..][..d];
                    let row = &mut dx[j * 3 * c..(j + 1) * 3 * c];
                    row[c + h * d..][..d].iter_mut().zip(q).for_each(|(g, &q)| *g += w * q);
                    row[2 * c + h * d..][..d].iter_mut().zip(dyi).for_each(|(g, &dyv)| *g += pw * dyv);
                }
            }
        }
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// position embedding

/// A validated 2-D sin-cos position embedding: a `grid_h × grid_w` patch grid, width `dim` (a multiple of 4),
/// output `[1 + grid_h*grid_w, dim]` (the cls row first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PosEmbedShape {
    grid_h: usize,
    grid_w: usize,
    dim: usize,
}

impl PosEmbedShape {
    /// Validates grid sizes >= 1, `dim >= 4` and `dim % 4 == 0` (moco-v3 asserts the same).
    pub fn new(grid_h: usize, grid_w: usize, dim: usize) -> Result<Self> {
        let op = "pos_embed";
        check::positive(op, "grid_h", grid_h)?;
        check::positive(op, "grid_w", grid_w)?;
        check::positive(op, "dim", dim)?;
        if dim % 4 != 0 {
            return Err(Error::shape(op, "dim divisible by 4", format!("dim = {dim}")));
        }
        let p = check::elems(op, "grid", &[grid_h, grid_w])?;
        check::elems(op, "pos_embed", &[p + 1, dim])?;
        Ok(Self { grid_h, grid_w, dim })
    }
    /// Grid rows.
    pub fn grid_h(&self) -> usize {
        self.grid_h
    }
    /// Grid columns.
    pub fn grid_w(&self) -> usize {
        self.grid_w
    }
    /// Embedding width D.
    pub fn dim(&self) -> usize {
        self.dim
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
    check::len("pos_embed", "out [(1+P)*D]", shape.len(), out.len())?;
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

// ---------------------------------------------------------------------------------------------------------------
// patch embedding (im2col)

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

impl PatchShape {
    /// Validates all sizes >= 1 and H, W divisible by the patch.
    pub fn new(b: usize, c: usize, h: usize, w: usize, patch: usize) -> Result<Self> {
        let op = "patch_embed";
        for (what, v) in [("B", b), ("C", c), ("H", h), ("W", w), ("patch", patch)] {
            check::positive(op, what, v)?;
        }
        if h % patch != 0 || w % patch != 0 {
            return Err(Error::shape(op, "H and W divisible by the patch size", format!("H = {h}, W = {w}, patch = {patch}")));
        }
        check::elems(op, "images", &[b, c, h, w])?;
        Ok(Self { b, c, h, w, patch })
    }
    /// Batch B.
    pub fn b(&self) -> usize {
        self.b
    }
    /// Channels C.
    pub fn c(&self) -> usize {
        self.c
    }
    /// Image height H.
    pub fn h(&self) -> usize {
        self.h
    }
    /// Image width W.
    pub fn w(&self) -> usize {
        self.w
    }
    /// Patch size p.
    pub fn patch(&self) -> usize {
        self.patch
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
}

/// Patch im2col: `cols [B*P, C*p*p]` from `images [B, C, H, W]`. Row `b*P + py*(W/p) + px` (timm's
/// `flatten(2).transpose(1, 2)` token order: row-major over the grid), column `(ci*p + ky)*p + kx` holds
/// `images[b, ci, py*p + ky, px*p + kx]`. That column order is the torch conv weight `[D, C, p, p]` flattened, so
/// `linear_forward(tokens [B*P, D], cols, conv_weight as [D, C*p*p], bias)` is the patch projection. A
/// permutation: every image element lands in exactly one place.
pub fn patch_im2col(cols: &mut [f32], images: &[f32], shape: &PatchShape) -> Result<()> {
    let s = *shape;
    check::len("patch_embed", "images [B*C*H*W]", s.len(), images.len())?;
    check::len("patch_embed", "cols [B*P*C*p*p]", s.len(), cols.len())?;
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
    check::len("patch_embed", "dimages [B*C*H*W]", s.len(), dimages.len())?;
    check::len("patch_embed", "dcols [B*P*C*p*p]", s.len(), dcols.len())?;
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

// ---------------------------------------------------------------------------------------------------------------
// token assembly: cls token + patch tokens + position embedding, and the cls feature

/// A validated token problem: `B` images of `T = 1 + P` tokens of `C` features; token 0 is the cls token.
/// Used by [`tokens_forward`] (assembly) and [`cls_select_forward`] (the cls feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokensShape {
    b: usize,
    t: usize,
    c: usize,
}

impl TokensShape {
    /// Validates B >= 1, T >= 1 (the cls token; P = T - 1 patches may be 0), C >= 1 and the sizes.
    pub fn new(b: usize, t: usize, c: usize) -> Result<Self> {
        let op = "tokens";
        check::positive(op, "B", b)?;
        check::positive(op, "T", t)?;
        check::positive(op, "C", c)?;
        check::elems(op, "tokens", &[b, t, c])?;
        Ok(Self { b, t, c })
    }
    /// Batch B.
    pub fn b(&self) -> usize {
        self.b
    }
    /// Tokens per image T (cls included).
    pub fn t(&self) -> usize {
        self.t
    }
    /// Features C.
    pub fn c(&self) -> usize {
        self.c
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
}

/// Token assembly (timm's `_pos_embed` with a cls token): `tokens [B, T, C]`, `tokens[b, 0] = cls + pos[0]`,
/// `tokens[b, 1 + p] = patches[b*P + p] + pos[1 + p]`; `patches [B*P, C]`, `cls [C]`, `pos [T, C]`.
pub fn tokens_forward(tokens: &mut [f32], patches: &[f32], cls: &[f32], pos: &[f32], shape: &TokensShape) -> Result<()> {
    let s = *shape;
    let op = "tokens_forward";
    check::len(op, "tokens [B*T*C]", s.len(), tokens.len())?;
    check::len(op, "patches [B*P*C]", s.b * s.patches() * s.c, patches.len())?;
    check::len(op, "cls [C]", s.c, cls.len())?;
    check::len(op, "pos [T*C]", s.t * s.c, pos.len())?;
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
    let op = "tokens_backward";
    check::len(op, "dtokens [B*T*C]", s.len(), dtokens.len())?;
    if let Some(dp) = dpatches {
        check::len(op, "dpatches [B*P*C]", s.b * s.patches() * s.c, dp.len())?;
        if s.patches() > 0 {
            dp.par_chunks_mut(s.c).enumerate().for_each(|(row, dst)| {
                let (b, p) = (row / s.patches(), row % s.patches());
                dst.iter_mut().zip(&dtokens[(b * s.t + 1 + p) * s.c..][..s.c]).for_each(|(d, g)| *d += g);
            });
        }
    }
    if let Some(dc) = dcls {
        check::len(op, "dcls [C]", s.c, dc.len())?;
        for b in 0..s.b {
            dc.iter_mut().zip(&dtokens[b * s.t * s.c..][..s.c]).for_each(|(d, g)| *d += g);
        }
    }
    Ok(())
}

/// The cls feature: `out [B, C] = tokens[:, 0]` of `tokens [B, T, C]`.
pub fn cls_select_forward(out: &mut [f32], tokens: &[f32], shape: &TokensShape) -> Result<()> {
    let s = *shape;
    check::len("cls_select_forward", "out [B*C]", s.b * s.c, out.len())?;
    check::len("cls_select_forward", "tokens [B*T*C]", s.len(), tokens.len())?;
    out.chunks_mut(s.c).enumerate().for_each(|(b, dst)| dst.copy_from_slice(&tokens[b * s.t * s.c..][..s.c]));
    Ok(())
}

/// Backward of [`cls_select_forward`]: `dtokens[:, 0] += dout [B, C]`.
pub fn cls_select_backward(dtokens: &mut [f32], dout: &[f32], shape: &TokensShape) -> Result<()> {
    let s = *shape;
    check::len("cls_select_backward", "dtokens [B*T*C]", s.len(), dtokens.len())?;
    check::len("cls_select_backward", "dout [B*C]", s.b * s.c, dout.len())?;
    for (b, g) in dout.chunks(s.c).enumerate() {
        dtokens[b * s.t * s.c..][..s.c].iter_mut().zip(g).for_each(|(d, g)| *d += g);
    }
    Ok(())
}
