//! Evaluation of frozen features: the kNN monitor and the linear probe.
//!
//! - [`knn`]: the weighted kNN monitor of the MoCo CIFAR-10 notebook (cosine similarity to a labelled bank,
//!   top-k neighbours vote with `exp(sim / t)`); cheap enough to run every epoch.
//! - [`mod@linear_probe`]: a softmax linear classifier trained on frozen (standardised) features with SGD + momentum
//!   and a cosine schedule; the standard end-of-training evaluation.
//!
//! Features are row-major `[rows, D]` f32, raw encoder outputs; labels are `u32` in `0..num_classes`. Every entry
//! point validates its inputs and returns [`crate::Error::Shape`] instead of panicking.

pub mod knn;
mod knn_reference;
pub mod linear_probe;

pub use knn::{knn_top1, KnnBank, KnnConfig, KnnReport};
pub use linear_probe::{linear_probe, FeatureNorm, LinearClassifier, ProbeConfig, ProbeReport};
