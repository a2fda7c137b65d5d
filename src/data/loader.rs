//! Batches of two-view pairs for MoCo training, and plain batches for feature extraction.
//!
//! [`PairLoader`] shuffles each epoch with a seeded order (`drop_last`), augments the two views of every sample
//! in parallel with rayon, and ([`PairLoader::epoch`]) runs ahead on a background thread through a bounded
//! channel, so the trainer finds the next batch ready. Every batch is a pure function of
//! `(seed, epoch, step)`: resuming at any `(epoch, step)` reproduces the same bytes.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::augment::{augment_pair_views, eval_view, AugmentConfig, ViewPair};
use super::dataset::Dataset;
use super::rng::CounterRng;
use crate::error::{Error, Result};

/// The `view` number of the epoch-order stream of [`CounterRng`] (distinct from views 0 and 1).
const SHUFFLE_STREAM: u64 = 0x5348_5546; // "SHUF"

/// One batch of MoCo pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct PairBatch {
    /// Query views, `[B, 3, S, S]`, normalised.
    pub x_q: Vec<f32>,
    /// Key views, `[B, 3, S, S]`, normalised.
    pub x_k: Vec<f32>,
    /// Labels, `[B]` (for monitoring only; MoCo does not train on them).
    pub labels: Vec<u16>,
    /// Dataset indices of the samples, `[B]`.
    pub indices: Vec<usize>,
    /// Epoch of the batch.
    pub epoch: usize,
    /// Step of the batch within its epoch.
    pub step: usize,
    /// B.
    pub batch_size: usize,
    /// S.
    pub size: usize,
}

/// One batch of un-augmented images for evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalBatch {
    /// Images, `[B, 3, S, S]`, normalised.
    pub x: Vec<f32>,
    /// Labels, `[B]`.
    pub labels: Vec<u16>,
    /// Dataset indices, `[B]`.
    pub indices: Vec<usize>,
    /// B (the last batch may be smaller than the others).
    pub batch_size: usize,
    /// S.
    pub size: usize,
}

/// Seeded, shuffled, augmented two-view batches over a dataset; see the module docs.
#[derive(Clone, Debug)]
pub struct PairLoader {
    dataset: Arc<Dataset>,
    views: Arc<ViewPair>,
    batch_size: usize,
    seed: u64,
    prefetch: usize,
}

impl PairLoader {
    /// A loader of `batch_size` pairs per step; an error for an invalid config, `batch_size == 0` or a dataset
    /// smaller than one batch. Prefetch depth 2. `aug` is one [`AugmentConfig`] for both views (MoCo v1/v2) or a
    /// [`ViewPair`] of one config per view (MoCo v3: [`ViewPair::mocov3`]).
    pub fn new(
        dataset: Arc<Dataset>,
        aug: impl Into<ViewPair>,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self> {
        let views = aug.into();
        views.validate()?;
        if batch_size == 0 || dataset.len() < batch_size {
            return Err(Error::shape(
                "PairLoader::new",
                format!("0 < batch_size <= dataset size {}", dataset.len()),
                batch_size.to_string(),
            ));
        }
        if dataset.height() == 0 || dataset.width() == 0 {
            return Err(Error::shape(
                "PairLoader::new",
                "non-empty images",
                format!("{}x{}", dataset.height(), dataset.width()),
            ));
        }
        Ok(PairLoader {
            dataset,
            views: Arc::new(views),
            batch_size,
            seed,
            prefetch: 2,
        })
    }

    /// The same loader with another prefetch depth (batches computed ahead; clamped to 1..=8).
    pub fn with_prefetch(mut self, depth: usize) -> Self {
        self.prefetch = depth.clamp(1, 8);
        self
    }

    /// Steps per epoch: `len / batch_size` (the last partial batch is dropped).
    pub fn steps_per_epoch(&self) -> usize {
        self.dataset.len() / self.batch_size
    }

    /// Pairs per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The augmentation of the first view (the query's; the only one when both views share it).
    pub fn augment_config(&self) -> &AugmentConfig {
        &self.views.view1
    }

    /// The augmentations of both views.
    pub fn views(&self) -> &ViewPair {
        &self.views
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The sample order of `epoch`: a Fisher-Yates shuffle of `0..len` drawn from `(seed, epoch)`.
    pub fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        CounterRng::new(self.seed, epoch as u64, u64::MAX, SHUFFLE_STREAM).shuffle(&mut order);
        order
    }

    fn build(&self, order: &[usize], epoch: usize, step: usize) -> Result<PairBatch> {
        if step >= self.steps_per_epoch() {
            return Err(Error::shape(
                "PairLoader::batch",
                format!("step < {}", self.steps_per_epoch()),
                step.to_string(),
            ));
        }
        let b = self.batch_size;
        let s = self.views.size();
        let per = 3 * s * s;
        let indices: Vec<usize> = order[step * b..(step + 1) * b].to_vec();
        let (mut x_q, mut x_k) = (vec![0.0f32; b * per], vec![0.0f32; b * per]);
        let ds = &*self.dataset;
        let (h, w) = (ds.height(), ds.width());
        x_q.par_chunks_mut(per)
            .zip(x_k.par_chunks_mut(per))
            .zip(indices.par_iter())
            .try_for_each(|((q, k), &i)| -> Result<()> {
                augment_pair_views(
                    &self.views,
                    ds.image(i)?,
                    h,
                    w,
                    self.seed,
                    epoch as u64,
                    i as u64,
                    q,
                    k,
                )
            })?;
        let labels = indices
            .iter()
            .map(|&i| ds.label(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(PairBatch {
            x_q,
            x_k,
            labels,
            indices,
            epoch,
            step,
            batch_size: b,
            size: s,
        })
    }

    /// Batch `step` of `epoch`, computed now on the calling thread (and rayon's pool).
    pub fn batch(&self, epoch: usize, step: usize) -> Result<PairBatch> {
        self.build(&self.epoch_order(epoch), epoch, step)
    }

    /// The batches of `epoch` from `start_step` to the end, computed ahead on a background thread through a
    /// channel of the prefetch depth. Dropping the iterator stops the thread. An error if
    /// `start_step > steps_per_epoch()`.
    pub fn epoch(&self, epoch: usize, start_step: usize) -> Result<PairIter> {
        self.epochs(epoch, start_step, epoch + 1)
    }

    /// The batches from `(start_epoch, start_step)` up to the end of epoch `end_epoch - 1`, prefetched across
    /// epoch boundaries (so the first batch of the next epoch is ready too). This is how a run resumes: pass
    /// the epoch and step to do next. An error if `start_step > steps_per_epoch()`.
    pub fn epochs(
        &self,
        start_epoch: usize,
        start_step: usize,
        end_epoch: usize,
    ) -> Result<PairIter> {
        let steps = self.steps_per_epoch();
        if start_step > steps {
            return Err(Error::shape(
                "PairLoader::epochs",
                format!("start_step <= {steps}"),
                start_step.to_string(),
            ));
        }
        let total = (start_epoch..end_epoch)
            .map(|e| {
                if e == start_epoch {
                    steps - start_step
                } else {
                    steps
                }
            })
            .sum();
        let (tx, rx) = sync_channel(self.prefetch);
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("moco-loader-e{start_epoch}"))
            .spawn(move || {
                for epoch in start_epoch..end_epoch {
                    let order = me.epoch_order(epoch);
                    let first = if epoch == start_epoch { start_step } else { 0 };
                    for step in first..steps {
                        let batch = me.build(&order, epoch, step);
                        let failed = batch.is_err();
                        if tx.send(batch).is_err() || failed {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| Error::Io {
                path: "<loader thread>".into(),
                source: e,
            })?;
        Ok(PairIter {
            rx: Some(rx),
            handle: Some(handle),
            remaining: total,
        })
    }

    /// Un-augmented batches of this loader's dataset, in order (see [`eval_batches`]), normalised as the first
    /// view.
    pub fn eval_batches(&self, batch_size: usize) -> Result<EvalIter> {
        let v1 = &self.views.view1;
        eval_batches(
            self.dataset.clone(),
            AugmentConfig::eval(v1.size).with_normalization(v1.mean, v1.std),
            batch_size,
        )
    }
}

/// The prefetched batches of one epoch; yields `Result<PairBatch>` and stops after the first error.
#[derive(Debug)]
pub struct PairIter {
    rx: Option<Receiver<Result<PairBatch>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for PairIter {
    type Item = Result<PairBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        match self.rx.as_ref()?.recv() {
            Ok(b) => {
                self.remaining = if b.is_err() { 0 } else { self.remaining - 1 };
                Some(b)
            }
            Err(_) => {
                self.remaining = 0;
                Some(Err(Error::Unavailable(
                    "the loader thread stopped before the end of the epoch".into(),
                )))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for PairIter {
    fn drop(&mut self) {
        // Dropping the receiver first makes a blocked `send` fail, so the thread exits and the join returns.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Batches of un-augmented images (eval transform) in dataset order; the last batch may be smaller.
#[derive(Debug)]
pub struct EvalIter {
    dataset: Arc<Dataset>,
    cfg: AugmentConfig,
    batch_size: usize,
    next: usize,
}

/// Un-augmented batches of `dataset` with `cfg`'s size and normalisation, computed on demand with rayon.
/// An error for an invalid config or `batch_size == 0`.
pub fn eval_batches(
    dataset: Arc<Dataset>,
    cfg: AugmentConfig,
    batch_size: usize,
) -> Result<EvalIter> {
    cfg.validate()?;
    if batch_size == 0 {
        return Err(Error::shape("eval_batches", "batch_size > 0", "0"));
    }
    Ok(EvalIter {
        dataset,
        cfg,
        batch_size,
        next: 0,
    })
}

impl Iterator for EvalIter {
    type Item = Result<EvalBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let n = self.dataset.len();
        if self.next >= n {
            return None;
        }
        let start = self.next;
        let end = (start + self.batch_size).min(n);
        self.next = end;
        let s = self.cfg.size;
        let per = 3 * s * s;
        let ds = &*self.dataset;
        let (h, w) = (ds.height(), ds.width());
        let mut x = vec![0.0f32; (end - start) * per];
        let res = x
            .par_chunks_mut(per)
            .enumerate()
            .try_for_each(|(j, out)| eval_view(&self.cfg, ds.image(start + j)?, h, w, out));
        if let Err(e) = res {
            self.next = n;
            return Some(Err(e));
        }
        let indices: Vec<usize> = (start..end).collect();
        let labels = ds.labels()[start..end].to_vec();
        Some(Ok(EvalBatch {
            x,
            labels,
            indices,
            batch_size: end - start,
            size: s,
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self
            .dataset
            .len()
            .saturating_sub(self.next)
            .div_ceil(self.batch_size);
        (left, Some(left))
    }
}
