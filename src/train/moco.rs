//! The MoCo v1/v2 step, written once over [`MocoDevice`]: two [`ResNet`] encoders (query, key) and an eval-mode
//! copy for embeddings, the device's EMA, fused InfoNCE, enqueue and SGD, all on device allocations. The host
//! sees the two input batches, the loss statistics (the step's sync) and the features `[N, dim]` it checks for
//! non-finite values and puts back in batch order after shuffle-BN ([`super::shuffle`]).
//!
//! [`CpuEngine`], [`WgpuEngine`] and [`CudaEngine`] are this engine on [`CpuDevice`], [`WgpuContext`] and
//! [`Cuda`].
//!
//! [`WgpuContext`]: crate::backend::wgpu::WgpuContext
//! [`Cuda`]: crate::backend::cuda::Cuda

use super::config::TrainConfig;
use super::engine::{check_state, encoder_config, initial_queue, optimizer_config, Engine, EngineState, StepStats};
use super::shuffle::{self, KeyBatch};
use crate::backend::{CpuDevice, InfoNceStats, MocoDevice, Region};
use crate::error::Result;
use crate::nn::{ResNet, ResNetLayout};
use crate::optim::ParamSpans;
use crate::shape::{InfoNceShape, QueueShape};

/// Eval batch of [`Engine::embed`].
const EVAL_BATCH: usize = 128;

/// MoCo on the CPU.
pub type CpuEngine = MocoEngine<CpuDevice>;
/// MoCo on a wgpu device.
#[cfg(feature = "wgpu")]
pub type WgpuEngine = MocoEngine<crate::backend::wgpu::WgpuContext>;
/// MoCo on a CUDA device.
#[cfg(feature = "cuda")]
pub type CudaEngine = MocoEngine<crate::backend::cuda::Cuda>;

/// Query encoder, key encoder, an eval-mode copy for embeddings, SGD, the queue and the step's buffers on one
/// device.
pub struct MocoEngine<D: MocoDevice> {
    cfg: TrainConfig,
    dev: D,
    enc_q: ResNet<D>,
    enc_k: ResNet<D>,
    enc_eval: ResNet<D>,
    opt: D::Opt,
    queue: D::Queue,
    ptr: usize,
    /// Query features `[N, dim]` of the current half.
    q: D::Buf,
    /// Keys `[N, dim]` of the query views (symmetric loss only) and of the key views, in batch order.
    k1: D::Buf,
    k2: D::Buf,
    nce: D::Nce,
}

impl<D: MocoDevice> std::fmt::Debug for MocoEngine<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MocoEngine").field("device", &self.dev.name()).field("cfg", &self.cfg).field("queue_ptr", &self.ptr).finish_non_exhaustive()
    }
}

impl MocoEngine<CpuDevice> {
    /// The engine on the CPU.
    pub fn new(cfg: &TrainConfig) -> Result<Self> {
        Self::on(CpuDevice::new(), cfg)
    }
}

#[cfg(feature = "wgpu")]
impl MocoEngine<crate::backend::wgpu::WgpuContext> {
    /// The engine on `ctx` (initialised as the CPU engine for the same seed).
    pub fn new(ctx: &crate::backend::wgpu::WgpuContext, cfg: &TrainConfig) -> Result<Self> {
        Self::on(ctx.clone(), cfg)
    }
}

#[cfg(feature = "cuda")]
impl MocoEngine<crate::backend::cuda::Cuda> {
    /// The engine on `cuda` (initialised as the CPU engine for the same seed).
    pub fn new(cuda: &crate::backend::cuda::Cuda, cfg: &TrainConfig) -> Result<Self> {
        Self::on(cuda.clone(), cfg)
    }
}

impl<D: MocoDevice> MocoEngine<D> {
    /// Builds both encoders (the same torchvision initialisation from the seed, so the key encoder starts as a copy
    /// of the query encoder), SGD and the queue from `cfg` on `dev`.
    pub fn on(mut dev: D, cfg: &TrainConfig) -> Result<Self> {
        cfg.validate()?;
        let (ec, s, n, dim) = (encoder_config(cfg), cfg.image_size, cfg.batch_size, cfg.dim);
        let enc_q = ResNet::on(dev.clone(), ec, n, s, s, cfg.bn_splits, cfg.seed)?;
        let enc_k = ResNet::on(dev.clone(), ec, n, s, s, cfg.bn_splits, cfg.seed)?;
        let enc_eval = ResNet::on(dev.clone(), ec, EVAL_BATCH, s, s, 1, cfg.seed)?;
        let opt = dev.opt_new(optimizer_config(cfg), &ParamSpans::from_layout(&enc_q.layout.params)?)?;
        let queue = dev.queue_from_f32(&initial_queue(cfg), cfg.queue_len, dim, cfg.queue_dtype)?;
        let (q, k1, k2) = (dev.alloc(n * dim)?, dev.alloc(n * dim)?, dev.alloc(n * dim)?);
        let nce = dev.nce_buffers(n, dim)?;
        Ok(Self { cfg: cfg.clone(), dev, enc_q, enc_k, enc_eval, opt, queue, ptr: 0, q, k1, k2, nce })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Keys `[N, dim]` of `x` in batch order through the key encoder (training mode), with shuffle-BN's
    /// permutation `which` of optimiser step `step`; on the host (for the finiteness check) and in `dst`.
    fn keys(&mut self, x: &[f32], step: u64, which: KeyBatch) -> Result<Vec<f32>> {
        let (n, dim) = (self.cfg.batch_size, self.cfg.dim);
        let enc_k = &mut self.enc_k;
        let k = shuffle::encode_keys(x, n, dim, shuffle::for_step(&self.cfg, step, which).as_ref(), |xs| enc_k.forward_host(xs, true))?;
        let dst = if which == KeyBatch::K2 { &mut self.k2 } else { &mut self.k1 };
        self.dev.write(dst, Region::new(0, n * dim), &k)?;
        Ok(k)
    }

    /// Query forward of `x`, loss against the keys `k` (`k_host` their host copy), backward (accumulating).
    /// Non-finite features give a NaN loss and no backward (the fused loss clamps its exponent arguments, so a
    /// NaN feature could otherwise pass as a finite loss).
    fn half(&mut self, x: &[f32], k_host: &[f32], which: KeyBatch, shape: &InfoNceShape) -> Result<InfoNceStats> {
        let q = self.enc_q.forward_host(x, true)?;
        if !q.iter().chain(k_host).all(|v| v.is_finite()) {
            return Ok(InfoNceStats { loss: f32::NAN, top1: 0, top5: 0 });
        }
        // q stays on the device: a device-side copy of the encoder's output region (no re-upload of the readback)
        let ([dst], []) = D::split(&mut self.q, [Region::new(0, q.len())], [])?;
        self.dev.copy(dst, self.enc_q.output())?;
        let k = if which == KeyBatch::K2 { &self.k2 } else { &self.k1 };
        self.dev.infonce(&mut self.nce, &self.q, k, &self.queue, shape)?;
        let stats = self.dev.read_stats(&self.nce)?;
        if stats.loss.is_finite() {
            self.enc_q.backward(D::nce_dq(&self.nce))?;
        }
        Ok(stats)
    }

    /// Copies the query encoder's parameters and running statistics into the eval copy.
    fn sync_eval(&mut self) -> Result<()> {
        let (p, b) = (self.enc_q.layout.params.len, self.enc_q.layout.buffers.len);
        let ([dst], []) = D::split(&mut self.enc_eval.params, [Region::new(0, p)], [])?;
        self.dev.copy(dst, D::view(&self.enc_q.params, Region::new(0, p))?)?;
        let ([dst], []) = D::split(&mut self.enc_eval.buffers, [Region::new(0, b)], [])?;
        self.dev.copy(dst, D::view(&self.enc_q.buffers, Region::new(0, b))?)
    }
}

impl<D: MocoDevice> Engine for MocoEngine<D> {
    fn name(&self) -> String {
        self.dev.name()
    }

    fn step(&mut self, x_q: &[f32], x_k: &[f32], lr: f64) -> Result<StepStats> {
        let (n, dim, s) = (self.cfg.batch_size, self.cfg.dim, self.cfg.image_size);
        crate::error::check_len_eq("train step", "x_q [N, 3, S, S]", n * 3 * s * s, x_q.len())?;
        crate::error::check_len_eq("train step", "x_k [N, 3, S, S]", n * 3 * s * s, x_k.len())?;
        let shape = InfoNceShape::new(n, dim, self.cfg.queue_len, self.cfg.temperature as f32)?;
        // key encoder: EMA of the query encoder's parameters (not its BN statistics), then keys without grad
        self.dev.ema_update(&mut self.enc_k.params, &self.enc_q.params, self.cfg.momentum)?;
        // keys with shuffle-BN: the permutation of this step comes from (seed, optimiser steps taken)
        let step = D::opt_steps(&self.opt);
        let k2 = self.keys(x_k, step, KeyBatch::K2)?;
        let k1 = if self.cfg.symmetric { Some(self.keys(x_q, step, KeyBatch::K1)?) } else { None };
        self.enc_q.zero_grad()?;
        let s12 = self.half(x_q, &k2, KeyBatch::K2, &shape)?;
        let mut stats = StepStats { loss: s12.loss, acc1: s12.top1 as f32, acc5: s12.top5 as f32 };
        let mut rows = n as f32;
        if let (Some(k1), true) = (&k1, s12.loss.is_finite()) {
            let s21 = self.half(x_k, k1, KeyBatch::K1, &shape)?;
            stats = StepStats { loss: stats.loss + s21.loss, acc1: stats.acc1 + s21.top1 as f32, acc5: stats.acc5 + s21.top5 as f32 };
            rows *= 2.0;
        }
        stats.acc1 *= 100.0 / rows;
        stats.acc5 *= 100.0 / rows;
        if !stats.loss.is_finite() {
            return Ok(stats);
        }
        self.dev.opt_step(&mut self.opt, &mut self.enc_q.params, &self.enc_q.grads, lr)?;
        // enqueue after the loss: k2 (and k1 first for the symmetric loss, as the colab's cat([k1, k2]))
        let qs = QueueShape::new(n, dim, self.cfg.queue_len, self.ptr)?;
        if self.cfg.symmetric {
            self.ptr = self.dev.enqueue(&mut self.queue, &self.k1, &qs)?;
        }
        let qs = QueueShape::new(n, dim, self.cfg.queue_len, self.ptr)?;
        self.ptr = self.dev.enqueue(&mut self.queue, &self.k2, &qs)?;
        Ok(stats)
    }

    fn embed(&mut self, x: &[f32], n: usize, backbone: bool) -> Result<Vec<f32>> {
        let img = 3 * self.cfg.image_size * self.cfg.image_size;
        crate::error::check_len_eq("embed", "x [n, 3, S, S]", n * img, x.len())?;
        self.sync_eval()?;
        let width = if backbone { self.enc_q.layout.feature_dim } else { self.cfg.dim };
        let mut out = Vec::with_capacity(n * width);
        let mut batch = vec![0.0f32; EVAL_BATCH * img];
        for start in (0..n).step_by(EVAL_BATCH) {
            let m = (n - start).min(EVAL_BATCH);
            batch[..m * img].copy_from_slice(&x[start * img..(start + m) * img]);
            batch[m * img..].fill(0.0); // padding rows: eval-mode BN does not mix samples
            let y = self.enc_eval.forward_host(&batch, false)?;
            let y = if backbone { self.enc_eval.read_features()? } else { y };
            out.extend_from_slice(&y[..m * width]);
        }
        Ok(out)
    }

    fn state(&self) -> Result<EngineState> {
        Ok(EngineState {
            q_params: self.enc_q.read_params()?,
            k_params: self.enc_k.read_params()?,
            q_buffers: self.enc_q.read_buffers()?,
            k_buffers: self.enc_k.read_buffers()?,
            opt_state: self.dev.opt_read_state(&self.opt)?,
            opt_steps: D::opt_steps(&self.opt),
            queue: self.dev.queue_to_f32(&self.queue)?,
            queue_ptr: self.ptr,
            q_tracked: self.enc_q.num_batches_tracked,
            k_tracked: self.enc_k.num_batches_tracked,
        })
    }

    fn load_state(&mut self, s: &EngineState) -> Result<()> {
        check_state(s, &self.enc_q.layout, &self.cfg)?;
        self.enc_q.write_params(&s.q_params)?;
        self.enc_k.write_params(&s.k_params)?;
        self.enc_q.write_buffers(&s.q_buffers)?;
        self.enc_k.write_buffers(&s.k_buffers)?;
        self.dev.opt_write_state(&mut self.opt, &s.opt_state)?;
        D::opt_set_steps(&mut self.opt, s.opt_steps);
        self.queue = self.dev.queue_from_f32(&s.queue, self.cfg.queue_len, self.cfg.dim, self.cfg.queue_dtype)?;
        self.ptr = s.queue_ptr;
        self.enc_q.num_batches_tracked = s.q_tracked;
        self.enc_k.num_batches_tracked = s.k_tracked;
        self.dev.synchronize()
    }

    fn layout(&self) -> &ResNetLayout {
        &self.enc_q.layout
    }
}
