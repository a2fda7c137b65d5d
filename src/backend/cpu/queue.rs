//! Ring-buffer enqueue on the CPU.

use super::contrastive::NORM_EPS;
use super::queue_view::QueueViewMut;
use crate::error::Result;
use crate::shape::QueueShape;

/// Writes the N keys, L2-normalised, into rows `ptr, ptr+1, ... (mod K)` of `queue: [K, C]` and returns the new
/// pointer `(ptr + N) % K`. `keys: [N, C]` raw. Any `1 <= N <= K`; the write wraps around the end.
pub fn enqueue(queue: &mut QueueViewMut, keys: &[f32], shape: &QueueShape) -> Result<usize> {
    shape.check(keys.len(), queue.len())?;
    let c = shape.c;
    for r in 0..shape.n {
        let row = &keys[r * c..(r + 1) * c];
        let inv = 1.0 / row.iter().map(|v| v * v).sum::<f32>().sqrt().max(NORM_EPS);
        let dst = (shape.ptr + r) % shape.k;
        for (ch, v) in row.iter().enumerate() {
            queue.set(dst * c + ch, v * inv);
        }
    }
    Ok(shape.next_ptr())
}
