//! The f64 reference of the enqueue.

use crate::ops::normalize::reference::normalize;

/// Enqueue in f64: the queue after writing normalised `keys: [N, C]` at `ptr` (wrapping), and the new pointer.
pub fn enqueue(queue: &[f32], keys: &[f32], n: usize, c: usize, kk: usize, ptr: usize) -> (Vec<f64>, usize) {
    let mut out: Vec<f64> = queue.iter().map(|&v| v as f64).collect();
    let (kh, _) = normalize(keys, c);
    for r in 0..n {
        let dst = (ptr + r) % kk;
        out[dst * c..(dst + 1) * c].copy_from_slice(&kh[r * c..(r + 1) * c]);
    }
    (out, (ptr + n) % kk)
}
