//! Shuffle-BN on one device: the colab's `_batch_shuffle_single_gpu` / `_batch_unshuffle_single_gpu`.
//!
//! Before the key encoder, the key batch is permuted (`x_k[idx_shuffle]`); after it, the keys are put back in
//! the batch order (`k[idx_unshuffle]`, `idx_unshuffle = argsort(idx_shuffle)`). With SplitBatchNorm (sample `n`
//! of a batch in BN group `n % G`), query `i` is normalised with the statistics of group `i % G`, and key `i`
//! with those of group `idx_unshuffle[i] % G`, a different set of images for most `i`: the positive pair no
//! longer shares its BN statistics, which the queue's negatives never do (MoCo paper, §3.3).
//!
//! The permutation is drawn from the run's counter-based RNG keyed by `(seed, optimiser step, which)`, so it is a
//! pure function of the step: a resumed run draws the same permutations as an uninterrupted one. The training
//! engine ([`super::MocoEngine`], on every device) uploads the batch and both permutations, gathers `x[idx_shuffle]`
//! and the keys back (`k[idx_unshuffle]`) on the device ([`crate::ops::gather`]), so that neither the shuffled batch
//! nor the keys pass through the host; [`encode_keys`] is the same computation on the host (its reference, tested in
//! tests/train.rs).

use crate::data::CounterRng;
use crate::error::{Error, Result};

/// The `view` number of the shuffle-BN stream of [`CounterRng`] (distinct from the loader's streams).
const SHUFFLE_BN_STREAM: u64 = 0x5348_5546_4c45_424e; // "SHUFLEBN"

/// Which key batch of a step a permutation is for: `k2 = encoder_k(x_k)` (every step), or `k1 =
/// encoder_k(x_q)` (the symmetric loss's second direction). The colab draws a fresh `randperm` for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyBatch {
    /// Keys of the key views (`k2`).
    K2 = 0,
    /// Keys of the query views (`k1`, symmetric loss only).
    K1 = 1,
}

/// One permutation of a key batch and its inverse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyShuffle {
    /// Row `j` of the shuffled batch is row `idx_shuffle[j]` of the batch (`x[idx_shuffle]`).
    pub idx_shuffle: Vec<usize>,
    /// `argsort(idx_shuffle)`: sample `i` sits at row `idx_unshuffle[i]` of the shuffled batch.
    pub idx_unshuffle: Vec<usize>,
}

impl KeyShuffle {
    /// The permutation of step `step` (the optimiser steps taken before it) of a run seeded `seed`, for `n` keys:
    /// a Fisher-Yates shuffle from the counter-based RNG keyed by `(seed, step, which)`.
    pub fn draw(seed: u64, step: u64, which: KeyBatch, n: usize) -> Self {
        let mut idx_shuffle: Vec<usize> = (0..n).collect();
        CounterRng::new(seed, step, which as u64, SHUFFLE_BN_STREAM).shuffle(&mut idx_shuffle);
        let mut idx_unshuffle = vec![0; n];
        for (j, &i) in idx_shuffle.iter().enumerate() {
            idx_unshuffle[i] = j;
        }
        Self { idx_shuffle, idx_unshuffle }
    }

    /// Wraps a permutation of `0..n`; an error naming the first bad entry if it is not one.
    pub fn from_permutation(idx_shuffle: Vec<usize>) -> Result<Self> {
        let n = idx_shuffle.len();
        let mut idx_unshuffle = vec![usize::MAX; n];
        for (j, &i) in idx_shuffle.iter().enumerate() {
            if i >= n || idx_unshuffle[i] != usize::MAX {
                return Err(Error::shape("KeyShuffle", format!("a permutation of 0..{n}"), format!("entry {i} at position {j}")));
            }
            idx_unshuffle[i] = j;
        }
        Ok(Self { idx_shuffle, idx_unshuffle })
    }

    /// Batch size.
    pub fn len(&self) -> usize {
        self.idx_shuffle.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.idx_shuffle.is_empty()
    }

    /// The SplitBatchNorm group (of `groups`) that normalises sample `i` inside the key encoder.
    pub fn key_group(&self, i: usize, groups: usize) -> usize {
        self.idx_unshuffle[i] % groups.max(1)
    }

    /// `x[idx_shuffle]`: rows of `row` values each.
    pub fn shuffle_rows(&self, x: &[f32], row: usize) -> Result<Vec<f32>> {
        crate::error::check_len_eq("shuffle-BN: shuffle", "x [N, row]", self.len() * row, x.len())?;
        Ok(gather_rows(x, &self.idx_shuffle, row))
    }

    /// `y[idx_unshuffle]`: back to the batch order.
    pub fn unshuffle_rows(&self, y: &[f32], row: usize) -> Result<Vec<f32>> {
        crate::error::check_len_eq("shuffle-BN: unshuffle", "y [N, row]", self.len() * row, y.len())?;
        Ok(gather_rows(y, &self.idx_unshuffle, row))
    }
}

/// `x[idx]`: row `idx[r]` of `x` (rows of `row` values) as row `r` of the result.
fn gather_rows(x: &[f32], idx: &[usize], row: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * row);
    for &i in idx {
        out.extend_from_slice(&x[i * row..(i + 1) * row]);
    }
    out
}

/// Keys `[n, dim]` of `x: [n, img]` in batch order, through `forward` (the key encoder in training mode). With
/// `shuffle`, as the colab: `forward(x[idx_shuffle])[idx_unshuffle]`; without, `forward(x)`.
pub fn encode_keys(x: &[f32], n: usize, dim: usize, shuffle: Option<&KeyShuffle>, forward: impl FnOnce(&[f32]) -> Result<Vec<f32>>) -> Result<Vec<f32>> {
    let img = if n == 0 { 0 } else { x.len() / n };
    crate::error::check_len_eq("shuffle-BN: keys", "x [N, img]", n * img, x.len())?;
    let k = match shuffle {
        Some(s) => {
            if s.len() != n {
                return Err(Error::shape("shuffle-BN", format!("a permutation of the batch ({n})"), format!("one of {}", s.len())));
            }
            let k = forward(&s.shuffle_rows(x, img)?)?;
            crate::error::check_len_eq("shuffle-BN: keys", "k [N, dim]", n * dim, k.len())?;
            s.unshuffle_rows(&k, dim)?
        }
        None => forward(x)?,
    };
    crate::error::check_len_eq("shuffle-BN: keys", "k [N, dim]", n * dim, k.len())?;
    Ok(k)
}

/// The permutation of `which` at optimiser step `step`, or `None` when shuffle-BN is off.
pub fn for_step(cfg: &super::TrainConfig, step: u64, which: KeyBatch) -> Option<KeyShuffle> {
    cfg.shuffle_bn.then(|| KeyShuffle::draw(cfg.seed, step, which, cfg.batch_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_and_inverse() {
        for step in 0..20 {
            let s = KeyShuffle::draw(7, step, KeyBatch::K2, 64);
            let mut sorted = s.idx_shuffle.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..64).collect::<Vec<_>>());
            for i in 0..64 {
                assert_eq!(s.idx_shuffle[s.idx_unshuffle[i]], i);
            }
        }
        assert_ne!(KeyShuffle::draw(7, 3, KeyBatch::K2, 64), KeyShuffle::draw(7, 4, KeyBatch::K2, 64));
        assert_ne!(KeyShuffle::draw(7, 3, KeyBatch::K2, 64), KeyShuffle::draw(7, 3, KeyBatch::K1, 64));
        assert_eq!(KeyShuffle::draw(7, 3, KeyBatch::K1, 64), KeyShuffle::draw(7, 3, KeyBatch::K1, 64));
        assert!(KeyShuffle::from_permutation(vec![0, 0, 1]).is_err());
        assert!(KeyShuffle::from_permutation(vec![0, 3, 1]).is_err());
    }
}
