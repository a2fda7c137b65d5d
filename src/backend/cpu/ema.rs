//! EMA momentum update on the CPU: `k = m*k + (1-m)*q`, memory bound, split over rayon threads.

use crate::error::Result;
use crate::shape::EmaShape;
use rayon::prelude::*;

/// Chunk per rayon task: 256 KiB of k, big enough to stream, small enough to balance.
const EMA_CHUNK: usize = 1 << 16;

/// `k[i] = m*k[i] + (1-m)*q[i]` for every i. `k, q: [len]`.
pub fn ema_update(k: &mut [f32], q: &[f32], momentum: f32) -> Result<()> {
    let shape = EmaShape::new(k.len(), momentum)?;
    shape.check(q.len(), k.len())?;
    let one_minus_m = 1.0 - momentum;
    k.par_chunks_mut(EMA_CHUNK).zip(q.par_chunks(EMA_CHUNK)).for_each(|(kc, qc)| {
        for (kv, qv) in kc.iter_mut().zip(qc) {
            *kv = *kv * momentum + *qv * one_minus_m;
        }
    });
    Ok(())
}

/// The multi-tensor form: one call over a list of `(k, q)` pairs of any lengths.
pub fn ema_update_multi(pairs: &mut [(&mut [f32], &[f32])], momentum: f32) -> Result<()> {
    for (i, (k, q)) in pairs.iter().enumerate() {
        EmaShape::new(k.len(), momentum)
            .and_then(|s| s.check(q.len(), k.len()))
            .map_err(|e| match e {
                crate::Error::Shape { expected, got, .. } => crate::Error::shape("ema_multi", format!("pair {i}: {expected}"), got),
                other => other,
            })?;
    }
    let one_minus_m = 1.0 - momentum;
    pairs.par_iter_mut().for_each(|(k, q)| {
        for (kv, qv) in k.iter_mut().zip(q.iter()) {
            *kv = *kv * momentum + *qv * one_minus_m;
        }
    });
    Ok(())
}
