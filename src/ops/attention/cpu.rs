//! attention on the CPU (rayon).

use super::AttentionShape;
use super::Attention;
use crate::device::vector::vectorized;
use crate::error::Result;
use crate::ops::fastmath::{fast_exp, lane_max, lane_sum};
use crate::ops::linear::gemm::gemm_strided;
use rayon::prelude::*;

/// Attention forward: per sample b and head h, `att[b,h] = softmax_rows(q·kᵀ·scale)` (`[T, T]`, saved for the
/// backward) and `out[b, t, h*D..(h+1)*D] = Σ_s att[b,h,t,s]·v_s`.
///
/// **Materialised probabilities.** Each head's `[T, T]` probability tile is written to `att` and reused by the
/// backward instead of being recomputed (flash-attention style). At the ViT's token counts this is small: 65 tokens
/// (CIFAR, patch 4) give 65² = 4225 floats (17 KB) per head, 197 tokens (224², patch 16) 39 K floats (155 KB); the
/// softmax is done in place on that tile (max-subtracted, [`fast_exp`], on the widest vector unit), so there is no
/// separate pass over a large buffer. The two products per head, `q·kᵀ` and `P·v`, are GEMMs on the strided views
/// of `qkv` (the `gemm` crate's micro-kernels; no copies). Parallel over the batch.
pub fn attention_forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], shape: &AttentionShape) -> Result<()> {
    let s = *shape;
    s.check_forward(out.len(), att.len(), qkv.len())?;
    let (t, hn, d, c) = (s.t, s.heads, s.head_dim, s.c());
    let scale = s.scale();
    out.par_chunks_mut(t * c).zip(att.par_chunks_mut(hn * t * t)).zip(qkv.par_chunks(t * 3 * c)).for_each(|((o, a), x)| {
        // x: [T, 3, H, D] of this sample (row stride 3C); o: [T, H, D] (row stride C); a: [H, T, T]
        for h in 0..hn {
            let a = &mut a[h * t * t..(h + 1) * t * t];
            // a [T, T] = scale · q_h [T, D] · k_hᵀ
            gemm_strided(a, t, 1, &x[h * d..], 3 * c, 1, &x[c + h * d..], 1, 3 * c, t, t, d, scale, false, false);
            vectorized(#[inline(always)] || softmax_rows_in_place(a, t));
            // o_h [T, D] = a · v_h
            gemm_strided(&mut o[h * d..], c, 1, a, t, 1, &x[2 * c + h * d..], 3 * c, 1, t, d, t, 1.0, false, false);
        }
    });
    Ok(())
}

/// Lanes of the row max and sums (see [`lane_max`]).
const L: usize = 16;

/// Each row of `a: [rows, t]` replaced by its softmax (max-subtracted): the max and the sum in [`L`] lanes, the
/// exp in a loop of its own so that it vectorises.
#[inline(always)]
fn softmax_rows_in_place(a: &mut [f32], t: usize) {
    for row in a.chunks_exact_mut(t) {
        let m = lane_max::<L>(row, f32::NEG_INFINITY);
        for p in row.iter_mut() {
            *p = fast_exp(*p - m);
        }
        let inv = 1.0 / lane_sum::<L>(row);
        for p in row.iter_mut() {
            *p *= inv;
        }
    }
}

/// Attention backward: `dqkv [B, T, 3, H, D] +=` the gradients of q, k and v for upstream `dout [B, T, C]`, from
/// the forward's `qkv` and saved `att`. Per (b, h), with `P = att[b,h]`:
/// `dv_s += Σ_t P[t,s]·dout_t`, `dP[t,s] = dout_t·v_s`, `dS[t,s] = P[t,s]·(dP[t,s] - Σ_s' P[t,s']·dP[t,s'])`,
/// `dq_t += scale·Σ_s dS[t,s]·k_s`, `dk_s += scale·Σ_t dS[t,s]·q_t`. The four products are GEMMs on strided views,
/// `dS` runs on the widest vector unit; parallel over the batch, one `[T, T]` scratch tile per sample.
pub fn attention_backward(dqkv: &mut [f32], dout: &[f32], qkv: &[f32], att: &[f32], shape: &AttentionShape) -> Result<()> {
    let s = *shape;
    s.check_backward(dqkv.len(), dout.len(), qkv.len(), att.len())?;
    let (t, hn, d, c) = (s.t, s.heads, s.head_dim, s.c());
    let scale = s.scale();
    dqkv.par_chunks_mut(t * 3 * c).zip(dout.par_chunks(t * c)).zip(qkv.par_chunks(t * 3 * c)).zip(att.par_chunks(hn * t * t)).for_each(|(((dx, dy), x), a)| {
        let mut ds = vec![0.0f32; t * t];
        for h in 0..hn {
            let p = &a[h * t * t..(h + 1) * t * t];
            // dP [T, T] = dout_h [T, D] · v_hᵀ, then dS = P ⊙ (dP - rowsum(P ⊙ dP)) in place
            gemm_strided(&mut ds, t, 1, &dy[h * d..], c, 1, &x[2 * c + h * d..], 1, 3 * c, t, t, d, 1.0, false, false);
            vectorized(#[inline(always)] || {
                let body = t / L * L;
                for (dr, pr) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                    // rowsum(P ⊙ dP) in L lanes (as lane_sum does)
                    let mut lanes = [0.0f32; L];
                    for (pc, dc) in pr[..body].chunks_exact(L).zip(dr[..body].chunks_exact(L)) {
                        for l in 0..L {
                            lanes[l] += pc[l] * dc[l];
                        }
                    }
                    let mut acc = lanes.iter().sum::<f32>();
                    for (&pv, &dv) in pr[body..].iter().zip(&dr[body..]) {
                        acc += pv * dv;
                    }
                    for (dv, &pv) in dr.iter_mut().zip(pr) {
                        *dv = pv * (*dv - acc);
                    }
                }
            });
            // dq_h += scale · dS · k_h ; dk_h += scale · dSᵀ · q_h ; dv_h += Pᵀ · dout_h
            gemm_strided(&mut dx[h * d..], 3 * c, 1, &ds, t, 1, &x[c + h * d..], 3 * c, 1, t, d, t, scale, true, false);
            gemm_strided(&mut dx[c + h * d..], 3 * c, 1, &ds, 1, t, &x[h * d..], 3 * c, 1, t, d, t, scale, true, false);
            gemm_strided(&mut dx[2 * c + h * d..], 3 * c, 1, p, 1, t, &dy[h * d..], c, 1, t, d, t, 1.0, true, false);
        }
    });
    Ok(())
}

impl Attention for crate::device::CpuDevice {
    fn attention_forward(&mut self, out: &mut [f32], att: &mut [f32], qkv: &[f32], shape: &AttentionShape) -> Result<()> {
        attention_forward(out, att, qkv, shape)
    }
    fn attention_backward(&mut self, dqkv: &mut [f32], dout: &[f32], qkv: &[f32], att: &[f32], shape: &AttentionShape) -> Result<()> {
        attention_backward(dqkv, dout, qkv, att, shape)
    }
}
