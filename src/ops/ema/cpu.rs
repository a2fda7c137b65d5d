//! EMA momentum update on the CPU: `k = m*k + (1-m)*q`, memory bound, split over rayon threads.
//!
//! The two weights come from [`EmaShape::weights`]: `m` and `1 - m` are each rounded once from f64, and the update
//! is two products and a sum, as PyTorch's `param_k * m + param_q * (1. - m)` computes it.

use super::{Ema, EmaShape};
use crate::device::CpuDevice;
use crate::error::Result;
use rayon::prelude::*;

/// Chunk per rayon task: 256 KiB of k, big enough to stream, small enough to balance.
const EMA_CHUNK: usize = 1 << 16;

#[inline]
fn ema_slice(k: &mut [f32], q: &[f32], (m, one_minus_m): (f32, f32)) {
    for (kv, qv) in k.iter_mut().zip(q) {
        *kv = *kv * m + *qv * one_minus_m;
    }
}

/// `k[i] = m*k[i] + (1-m)*q[i]` for every i. `k, q: [len]`, `shape = EmaShape::new(len, m)`.
pub fn ema_update(k: &mut [f32], q: &[f32], shape: &EmaShape) -> Result<()> {
    shape.check(q.len(), k.len())?;
    let w = shape.weights();
    k.par_chunks_mut(EMA_CHUNK).zip(q.par_chunks(EMA_CHUNK)).for_each(|(kc, qc)| ema_slice(kc, qc, w));
    Ok(())
}

/// The multi-tensor form: one call over a list of `(k, q)` pairs of any lengths, momentum `m` in [0, 1].
pub fn ema_update_multi(pairs: &mut [(&mut [f32], &[f32])], momentum: f64) -> Result<()> {
    let mut w = (1.0, 0.0);
    for (i, (k, q)) in pairs.iter().enumerate() {
        let shape = EmaShape::for_buffers(k.len(), q.len(), momentum).map_err(|e| match e {
            crate::error::Error::Shape { expected, got, .. } => crate::error::Error::shape("ema_multi", format!("pair {i}: {expected}"), got),
            other => other,
        })?;
        w = shape.weights();
    }
    pairs.par_iter_mut().for_each(|(k, q)| ema_slice(k, q, w));
    Ok(())
}

impl Ema for CpuDevice {
    fn ema_update(&mut self, k: &mut [f32], q: &[f32], shape: &EmaShape) -> Result<()> {
        ema_update(k, q, shape)
    }
}
