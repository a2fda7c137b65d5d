//! Evaluation of frozen features: the kNN monitor and the linear probe.
//!
//! - [`knn`]: the weighted kNN monitor of the MoCo CIFAR-10 notebook (cosine similarity to a labelled bank,
//!   top-k neighbours vote with `exp(sim / t)`); cheap enough to run every epoch.
//! - [`mod@linear_probe`]: a softmax linear classifier trained on frozen (standardised) features with SGD + momentum
//!   and a cosine schedule; the standard end-of-training evaluation.
//!
//! Features are row-major `[rows, D]` f32, raw encoder outputs; labels are `u32` in `0..num_classes`. Every entry
//! point validates its inputs and returns [`crate::error::Error::Shape`] instead of panicking.

pub mod knn;
mod knn_reference;
pub mod linear_probe;

pub use knn::{knn_top1, KnnBank, KnnConfig, KnnReport};
pub use linear_probe::{linear_probe, FeatureNorm, LinearClassifier, ProbeConfig, ProbeReport};

use crate::error::{Error, Result};

/// Checks `D >= 1` and `num_classes >= 1`.
fn check_dims(op: &'static str, d: usize, num_classes: usize) -> Result<()> {
    if d == 0 {
        return Err(Error::shape(op, "feature dimension D >= 1", "D = 0"));
    }
    if num_classes == 0 {
        return Err(Error::shape(op, "num_classes >= 1", "num_classes = 0"));
    }
    Ok(())
}

/// At most `u32::MAX` rows (`name` is their count's letter in the error), so that a row index fits a `u32`.
fn check_row_count(op: &'static str, name: &str, rows: usize) -> Result<()> {
    if rows > u32::MAX as usize {
        return Err(Error::shape(op, format!("{name} <= {}", u32::MAX), format!("{name} = {rows}")));
    }
    Ok(())
}

/// Checks that `x` holds whole rows of length `d` and only finite values; returns the row count. `op` names the
/// caller in the error.
fn check_rows(op: &'static str, what: &str, x: &[f32], d: usize) -> Result<usize> {
    if x.len() % d != 0 {
        return Err(Error::shape(op, format!("{what} of length rows * D (D = {d})"), format!("length {}", x.len())));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::shape(op, format!("finite {what}"), format!("{} at index {i}", x[i])));
    }
    Ok(x.len() / d)
}

/// Checks that `labels` holds `rows` labels, each `< num_classes`.
fn check_labels(op: &'static str, what: &str, labels: &[u32], rows: usize, num_classes: usize) -> Result<()> {
    if labels.len() != rows {
        return Err(Error::shape(op, format!("{what} of length {rows}"), format!("length {}", labels.len())));
    }
    if let Some(&l) = labels.iter().find(|&&l| l as usize >= num_classes) {
        return Err(Error::shape(op, format!("{what} < num_classes = {num_classes}"), format!("label {l}")));
    }
    Ok(())
}
