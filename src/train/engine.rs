//! What the trainer needs from a backend: one MoCo step, eval-mode embeddings, and the whole state (for
//! checkpoints). [`super::MocoEngine`] implements it once for every [`TrainDevice`](super::TrainDevice).

use super::config::TrainConfig;
use crate::error::{Error, Result};
use super::config::{ModelKind, OptimizerKind};
use crate::nn::{Depth, Layout, MlpSpec, ResNetConfig, SplitMix64, Stem};
use crate::optim::{AdamWConfig, LarsConfig, OptimizerConfig, SgdConfig};
use std::path::Path;

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
    /// MoCo v3's predictor: parameters, BN running statistics and optimiser state (empty for v1/v2).
    pub pred_params: Vec<f32>,
    /// See `pred_params`.
    pub pred_buffers: Vec<f32>,
    /// See `pred_params`.
    pub pred_opt_state: Vec<Vec<f32>>,
}

/// The flat layouts behind an [`EngineState`]: the encoder's (both encoders share it) and, for MoCo v3, the
/// predictor's.
#[derive(Clone, Copy, Debug)]
pub struct EngineLayouts<'a> {
    /// Encoder parameters.
    pub params: &'a Layout,
    /// Encoder buffers (BN running statistics, fixed embeddings, frozen weights).
    pub buffers: &'a Layout,
    /// The predictor's parameters and buffers (MoCo v3).
    pub predictor: Option<(&'a Layout, &'a Layout)>,
    /// Width of the backbone features.
    pub feature_dim: usize,
}

/// One backend's MoCo training step (v1/v2 or v3, as the config says) and evaluation.
pub trait Engine {
    /// Backend and device, for logs.
    fn name(&self) -> String;
    /// The run's configuration.
    fn config(&self) -> &TrainConfig;
    /// One step on two views `x_q, x_k: [N, 3, S, S]` at learning rate `lr` with key-encoder momentum
    /// `momentum`. v1/v2: EMA, keys (shuffle-BN), fused InfoNCE against the queue, backward, optimiser, enqueue.
    /// v3: EMA, keys of both views, queries of both views through the predictor, the fused symmetric loss, both
    /// backwards, optimiser. A non-finite loss returns `Ok(stats)` with the non-finite value and changes nothing
    /// that the step had not already changed before the loss (the caller stops and keeps the last checkpoint).
    fn step_with(&mut self, x_q: &[f32], x_k: &[f32], lr: f64, momentum: f64) -> Result<StepStats>;
    /// [`Engine::step_with`] at the config's constant momentum.
    fn step(&mut self, x_q: &[f32], x_k: &[f32], lr: f64) -> Result<StepStats> {
        let m = self.config().momentum;
        self.step_with(x_q, x_k, lr, m)
    }
    /// Asks the next [`Engine::step_with`] to measure representation health on the device (inside the step, after
    /// the optimiser and before the enqueue; nothing waits). Engines without it ignore the request.
    fn request_health(&mut self) {}
    /// The statistics the last step measured after [`Engine::request_health`], read back once; `None` when that
    /// step measured none (not asked, a non-finite loss, or an engine without them).
    fn take_health(&mut self) -> Result<Option<super::health::HealthSnapshot>> {
        Ok(None)
    }
    /// Starts a per-layer profile of the steps that follow (GPU timestamps; `--profile-steps`): an error saying why
    /// where the engine's device has none.
    fn start_profile(&mut self) -> Result<()> {
        Err(crate::error::Error::Unavailable(format!("{} records no per-layer GPU times", self.name())))
    }
    /// Ends the profile: each scope's (layer's, the loss's, the optimiser's) GPU time and dispatches.
    fn take_profile(&mut self) -> Result<Vec<crate::device::ProfileRow>> {
        Ok(Vec::new())
    }
    /// Eval-mode features of the query encoder for `n` images `x: [n, 3, S, S]`: the head's output `[n, dim]`
    /// (what the colab's kNN monitor uses; v3: the projector's), or with `backbone` the backbone features.
    fn embed(&mut self, x: &[f32], n: usize, backbone: bool) -> Result<Vec<f32>>;
    /// The state, copied to the host.
    fn state(&self) -> Result<EngineState>;
    /// Restores a state (shapes must match the layouts).
    fn load_state(&mut self, s: &EngineState) -> Result<()>;
    /// The layouts of the state.
    fn layouts(&self) -> EngineLayouts<'_>;
    /// Writes the query encoder's backbone (no head) with the reference library's names: torchvision's for a
    /// ResNet, timm's `VisionTransformer` for a ViT.
    fn export_backbone(&self, path: &Path) -> Result<()>;
}

/// The ResNet encoder of a config: ResNet-18, CIFAR stem, head to `dim`: linear, or the v2 MLP with hidden 512;
/// for v3 `MoCo_ResNet`'s projector (2 layers, `mlp_dim` hidden, last BN affine-free).
pub fn encoder_config(cfg: &TrainConfig) -> ResNetConfig {
    let base = ResNetConfig { depth: Depth::R18, stem: Stem::Cifar, num_classes: Some(cfg.dim), zero_init_residual: false, mlp_hidden: cfg.mlp.then_some(512), projector: None };
    if cfg.is_v3() {
        return ResNetConfig { num_classes: None, mlp_hidden: None, projector: Some(MlpSpec { layers: 2, hidden: cfg.mlp_dim, out: cfg.dim, last_bn: true }), ..base };
    }
    base
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

/// The optimiser of a run: SGD (`lr`, `sgd_momentum`, `weight_decay`; v1/v2), AdamW (`lr`, `weight_decay`,
/// betas 0.9/0.999, eps 1e-8; v3 on a ViT) or LARS (moco-v3's: `lr`, `weight_decay`, momentum 0.9, trust 0.001;
/// v3 on a ResNet). The lr of each step comes from the schedule and replaces the config's.
pub fn optimizer_config(cfg: &TrainConfig) -> OptimizerConfig {
    match cfg.optimizer {
        OptimizerKind::Sgd => OptimizerConfig::Sgd(SgdConfig::new(cfg.lr, cfg.sgd_momentum, cfg.weight_decay)),
        OptimizerKind::AdamW => OptimizerConfig::AdamW(AdamWConfig::new(cfg.lr, cfg.weight_decay)),
        OptimizerKind::Lars => OptimizerConfig::Lars(LarsConfig::new(cfg.lr, cfg.weight_decay)),
    }
}

/// The queue's length in a state: `K * dim` for v1/v2, none for v3.
pub fn queue_elems(cfg: &TrainConfig) -> usize {
    if cfg.is_v3() {
        0
    } else {
        cfg.queue_len * cfg.dim
    }
}

/// Checks a restored state against the layouts and config.
pub fn check_state(s: &EngineState, layouts: &EngineLayouts<'_>, cfg: &TrainConfig) -> Result<()> {
    let (p, b, q) = (layouts.params.len, layouts.buffers.len, queue_elems(cfg));
    let (pp, pb) = layouts.predictor.map_or((0, 0), |(a, b)| (a.len, b.len));
    let lens = [s.q_params.len(), s.k_params.len(), s.q_buffers.len(), s.k_buffers.len(), s.queue.len(), s.pred_params.len(), s.pred_buffers.len()];
    if lens != [p, p, b, b, q, pp, pb] || (q > 0 && s.queue_ptr >= cfg.queue_len) {
        return Err(Error::shape("train state", format!("params {p} x2, buffers {b} x2, queue {q}, predictor params {pp} and buffers {pb}, queue ptr < {}", cfg.queue_len), format!("{lens:?}, ptr {}", s.queue_ptr)));
    }
    optimizer_config(cfg).check_state(p, &s.opt_state)?;
    if layouts.predictor.is_some() {
        optimizer_config(cfg).check_state(pp, &s.pred_opt_state)?;
    } else if !s.pred_opt_state.is_empty() {
        return Err(Error::shape("train state", "no predictor optimiser state (v1/v2)", format!("{} tensors", s.pred_opt_state.len())));
    }
    Ok(())
}

/// The model a config trains, for messages.
pub fn model_name(cfg: &TrainConfig) -> String {
    match cfg.model {
        ModelKind::ResNet18 => "ResNet-18 (CIFAR stem)".to_string(),
        ModelKind::Vit => {
            let v = cfg.vit_config();
            format!("ViT (patch {}, D {}, depth {}, {} heads)", v.patch, v.dim, v.depth, v.heads)
        }
    }
}
