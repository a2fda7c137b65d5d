//! What the trainer needs from a backend: one MoCo step, eval-mode embeddings, and the whole state (for
//! checkpoints). [`super::MocoEngine`] implements it once for every [`crate::backend::MocoDevice`].

use super::config::TrainConfig;
use crate::error::{Error, Result};
use crate::optim::{OptimizerConfig, SgdConfig};
use crate::nn::{Depth, ResNetConfig, ResNetLayout, SplitMix64, Stem};

/// Scalars of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// InfoNCE loss (the sum of both directions with the symmetric loss, as in the colab).
    pub loss: f32,
    /// acc@1 in percent (over both directions when symmetric).
    pub acc1: f32,
    /// acc@5 in percent.
    pub acc5: f32,
}

/// Everything a checkpoint holds about the model and optimiser, in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineState {
    /// Query encoder parameters (`layout.params`).
    pub q_params: Vec<f32>,
    /// Key encoder parameters.
    pub k_params: Vec<f32>,
    /// Query encoder BN running statistics (`layout.buffers`).
    pub q_buffers: Vec<f32>,
    /// Key encoder BN running statistics.
    pub k_buffers: Vec<f32>,
    /// The optimiser's state tensors, each `[layout.params]`, in the order of
    /// [`crate::optim::OptimizerConfig::state_names`] of [`optimizer_config`] (SGD: the momentum buffer, or none
    /// without momentum).
    pub opt_state: Vec<Vec<f32>>,
    /// Optimiser steps taken.
    pub opt_steps: u64,
    /// Queue `[K, dim]`, as f32.
    pub queue: Vec<f32>,
    /// Next row of the queue to overwrite.
    pub queue_ptr: usize,
    /// Training forwards of the query / key encoders (torchvision's `num_batches_tracked`).
    pub q_tracked: i64,
    /// See `q_tracked`.
    pub k_tracked: i64,
}

/// One backend's MoCo v1/v2 training step and evaluation.
pub trait Engine {
    /// Backend and device, for logs.
    fn name(&self) -> String;
    /// One step on two views `x_q, x_k: [N, 3, S, S]` at learning rate `lr`: key-encoder EMA, forwards, fused
    /// InfoNCE, backward, SGD, enqueue. With `symmetric`, both directions. A non-finite loss returns
    /// `Ok(stats)` with the non-finite value and changes nothing (the caller stops).
    fn step(&mut self, x_q: &[f32], x_k: &[f32], lr: f64) -> Result<StepStats>;
    /// Eval-mode features of the query encoder for `n` images `x: [n, 3, S, S]`: the head's output `[n, dim]`
    /// (what the colab's kNN monitor uses), or with `backbone` the pooled backbone features `[n, 512]`.
    fn embed(&mut self, x: &[f32], n: usize, backbone: bool) -> Result<Vec<f32>>;
    /// The state, copied to the host.
    fn state(&self) -> Result<EngineState>;
    /// Restores a state (shapes must match the layout).
    fn load_state(&mut self, s: &EngineState) -> Result<()>;
    /// The layout of either encoder.
    fn layout(&self) -> &ResNetLayout;
}

/// The encoder of a config: ResNet-18, CIFAR stem, head to `dim` (linear, or the v2 MLP with hidden 512).
pub fn encoder_config(cfg: &TrainConfig) -> ResNetConfig {
    ResNetConfig { depth: Depth::R18, stem: Stem::Cifar, num_classes: Some(cfg.dim), zero_init_residual: false, mlp_hidden: cfg.mlp.then_some(512), projector: None }
}

/// The initial queue: `[K, dim]` rows of standard normals, L2-normalised (the colab's `randn` + `normalize`),
/// from the run's seed.
pub fn initial_queue(cfg: &TrainConfig) -> Vec<f32> {
    let mut rng = SplitMix64(cfg.seed ^ 0x5155_4555_4555);
    let mut q: Vec<f32> = (0..cfg.queue_len * cfg.dim).map(|_| rng.normal() as f32).collect();
    for row in q.chunks_mut(cfg.dim) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= n);
    }
    q
}

/// The optimiser of a run: MoCo v1/v2's SGD (`lr`, `sgd_momentum`, `weight_decay`). The lr of each step comes
/// from the schedule ([`TrainConfig::lr_at`]) and replaces the config's.
pub fn optimizer_config(cfg: &TrainConfig) -> OptimizerConfig {
    OptimizerConfig::Sgd(SgdConfig::new(cfg.lr, cfg.sgd_momentum, cfg.weight_decay))
}

/// Checks a restored state against the layout and config.
pub fn check_state(s: &EngineState, layout: &ResNetLayout, cfg: &TrainConfig) -> Result<()> {
    let (p, b, q) = (layout.params.len, layout.buffers.len, cfg.queue_len * cfg.dim);
    let lens = [s.q_params.len(), s.k_params.len(), s.q_buffers.len(), s.k_buffers.len(), s.queue.len()];
    if lens != [p, p, b, b, q] || s.queue_ptr >= cfg.queue_len {
        return Err(Error::shape("train state", format!("params {p} x2, buffers {b} x2, queue {q}, ptr < {}", cfg.queue_len), format!("{lens:?}, ptr {}", s.queue_ptr)));
    }
    optimizer_config(cfg).check_state(p, &s.opt_state)
}
