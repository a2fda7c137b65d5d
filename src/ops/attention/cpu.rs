//! attention on the CPU (rayon).

use super::AttentionShape;
use super::Attention;
use crate::error::Result;
use rayon::prelude::*;

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
    s.check_forward(out.len(), att.len(), qkv.len())?;
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
    s.check_backward(dqkv.len(), dout.len(), qkv.len(), att.len())?;
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

impl Attention for crate::device::CpuDevice {
    fn attention_forward(&mut self, out: &mut [f32], att: &mut [f32], qkv: &[f32], shape: &AttentionShape) -> Result<()> {
        attention_forward(out, att, qkv, shape)
    }
    fn attention_backward(&mut self, dqkv: &mut [f32], dout: &[f32], qkv: &[f32], att: &[f32], shape: &AttentionShape) -> Result<()> {
        attention_backward(dqkv, dout, qkv, att, shape)
    }
}
