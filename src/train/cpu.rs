//! The MoCo step on the CPU backend: [`ResNetCpu`] encoders, the fused streaming InfoNCE, the EMA and the
//! ring-buffer enqueue of `backend::cpu`, and [`Sgd`] over the flat parameter buffer; shuffle-BN from
//! [`super::shuffle`].

use super::config::TrainConfig;
use super::shuffle::{self, KeyBatch};
use super::engine::{check_state, encoder_config, initial_queue, Engine, EngineState, StepStats};
use crate::backend::{cpu, Backend, Cpu, CpuQueue};
use crate::error::Result;
use crate::nn::{ResNetCpu, ResNetLayout};
use crate::optim::{Optimizer, Sgd, SgdConfig};
use crate::shape::{EmaShape, InfoNceShape, QueueShape};

/// Eval batch of [`CpuEngine::embed`].
const EVAL_BATCH: usize = 128;

/// Query encoder, key encoder, an eval-mode copy for embeddings, SGD and the queue, on the CPU.
#[derive(Debug)]
pub struct CpuEngine {
    cfg: TrainConfig,
    enc_q: ResNetCpu,
    enc_k: ResNetCpu,
    enc_eval: ResNetCpu,
    opt: Sgd,
    queue: CpuQueue,
    ptr: usize,
    dq: Vec<f32>,
    row_loss: Vec<f32>,
}

impl CpuEngine {
    /// Builds both encoders (the key encoder a copy of the query encoder), SGD and the queue from `cfg`.
    pub fn new(cfg: &TrainConfig) -> Result<Self> {
        cfg.validate()?;
        let ec = encoder_config(cfg);
        let s = cfg.image_size;
        let enc_q = ResNetCpu::new(ec, cfg.batch_size, s, s, cfg.bn_splits, cfg.seed)?;
        let mut enc_k = ResNetCpu::new(ec, cfg.batch_size, s, s, cfg.bn_splits, cfg.seed)?;
        enc_k.params.copy_from_slice(&enc_q.params);
        let enc_eval = ResNetCpu::new(ec, EVAL_BATCH, s, s, 1, cfg.seed)?;
        let opt = Sgd::new(SgdConfig::new(cfg.lr, cfg.sgd_momentum, cfg.weight_decay), enc_q.params.len())?;
        let queue = Cpu.queue_from_f32(&initial_queue(cfg), cfg.queue_len, cfg.dim, cfg.queue_dtype)?;
        let n = cfg.batch_size;
        Ok(Self { cfg: cfg.clone(), enc_q, enc_k, enc_eval, opt, queue, ptr: 0, dq: vec![0.0; n * cfg.dim], row_loss: vec![0.0; n] })
    }

    /// Query forward, loss against `k`, backward (accumulating). Returns the stats, or the non-finite loss.
    fn half(&mut self, x_q: &[f32], k: &[f32], shape: &InfoNceShape) -> Result<crate::backend::InfoNceStats> {
        let q = self.enc_q.forward(x_q, true)?.to_vec();
        // The fused loss clamps its exponent arguments, so a NaN feature could pass as a finite loss: check here.
        if !q.iter().chain(k).all(|v| v.is_finite()) {
            return Ok(crate::backend::InfoNceStats { loss: f32::NAN, top1: 0, top5: 0 });
        }
        let stats = cpu::infonce(&mut self.dq, &mut self.row_loss, &q, k, self.queue.view(), shape)?;
        if stats.loss.is_finite() {
            self.enc_q.backward(&self.dq)?;
        }
        Ok(stats)
    }
}

impl Engine for CpuEngine {
    fn name(&self) -> String {
        Cpu.name()
    }

    fn step(&mut self, x_q: &[f32], x_k: &[f32], lr: f64) -> Result<StepStats> {
        let (n, dim) = (self.cfg.batch_size, self.cfg.dim);
        let shape = InfoNceShape::new(n, dim, self.cfg.queue_len, self.cfg.temperature as f32)?;
        // key encoder: EMA of the query encoder's parameters (not its BN statistics), then keys without grad
        cpu::ema_update(&mut self.enc_k.params, &self.enc_q.params, &EmaShape::new(self.enc_q.params.len(), self.cfg.momentum)?)?;
        // keys with shuffle-BN: the permutation of this step comes from (seed, optimiser steps taken)
        let step = self.opt.steps();
        let enc_k = &mut self.enc_k;
        let k2 = shuffle::encode_keys(x_k, n, dim, shuffle::for_step(&self.cfg, step, KeyBatch::K2).as_ref(), |x| Ok(enc_k.forward(x, true)?.to_vec()))?;
        let k1 = if self.cfg.symmetric { Some(shuffle::encode_keys(x_q, n, dim, shuffle::for_step(&self.cfg, step, KeyBatch::K1).as_ref(), |x| Ok(enc_k.forward(x, true)?.to_vec()))?) } else { None };
        self.enc_q.zero_grad()?;
        let s12 = self.half(x_q, &k2, &shape)?;
        let mut stats = StepStats { loss: s12.loss, acc1: s12.top1 as f32, acc5: s12.top5 as f32 };
        let mut rows = n as f32;
        if let (Some(k1), true) = (&k1, s12.loss.is_finite()) {
            let s21 = self.half(x_k, k1, &shape)?;
            stats = StepStats { loss: stats.loss + s21.loss, acc1: stats.acc1 + s21.top1 as f32, acc5: stats.acc5 + s21.top5 as f32 };
            rows *= 2.0;
        }
        stats.acc1 *= 100.0 / rows;
        stats.acc5 *= 100.0 / rows;
        if !stats.loss.is_finite() {
            return Ok(stats);
        }
        self.opt.set_lr(lr)?;
        self.opt.step(&mut self.enc_q.params, &self.enc_q.grads)?;
        // enqueue after the loss: k2 (and k1 for the symmetric loss, as the colab's cat([k1, k2]))
        for k in k1.iter().chain(std::iter::once(&k2)) {
            self.ptr = cpu::enqueue(&mut self.queue.view_mut(), k, &QueueShape::new(n, dim, self.cfg.queue_len, self.ptr)?)?;
        }
        Ok(stats)
    }

    fn embed(&mut self, x: &[f32], n: usize, backbone: bool) -> Result<Vec<f32>> {
        let img = 3 * self.cfg.image_size * self.cfg.image_size;
        crate::error::check_len_eq("embed", "x [n, 3, S, S]", n * img, x.len())?;
        self.enc_eval.params.copy_from_slice(&self.enc_q.params);
        self.enc_eval.buffers.copy_from_slice(&self.enc_q.buffers);
        let width = if backbone { self.enc_q.layout.feature_dim } else { self.cfg.dim };
        let mut out = Vec::with_capacity(n * width);
        let mut batch = vec![0.0f32; EVAL_BATCH * img];
        for start in (0..n).step_by(EVAL_BATCH) {
            let m = (n - start).min(EVAL_BATCH);
            batch[..m * img].copy_from_slice(&x[start * img..(start + m) * img]);
            batch[m * img..].fill(0.0); // padding rows: eval-mode BN does not mix samples
            let y = self.enc_eval.forward(&batch, false)?.to_vec();
            let y = if backbone { self.enc_eval.features().to_vec() } else { y };
            out.extend_from_slice(&y[..m * width]);
        }
        Ok(out)
    }

    fn state(&self) -> Result<EngineState> {
        Ok(EngineState {
            q_params: self.enc_q.params.clone(),
            k_params: self.enc_k.params.clone(),
            q_buffers: self.enc_q.buffers.clone(),
            k_buffers: self.enc_k.buffers.clone(),
            momentum_buffer: self.opt.momentum_buffer().to_vec(),
            opt_steps: self.opt.steps(),
            queue: Cpu.queue_to_f32(&self.queue)?,
            queue_ptr: self.ptr,
            q_tracked: self.enc_q.num_batches_tracked,
            k_tracked: self.enc_k.num_batches_tracked,
        })
    }

    fn load_state(&mut self, s: &EngineState) -> Result<()> {
        check_state(s, &self.enc_q.layout, &self.cfg)?;
        self.enc_q.params.copy_from_slice(&s.q_params);
        self.enc_k.params.copy_from_slice(&s.k_params);
        self.enc_q.buffers.copy_from_slice(&s.q_buffers);
        self.enc_k.buffers.copy_from_slice(&s.k_buffers);
        for (_, buf) in self.opt.state_mut() {
            buf.copy_from_slice(&s.momentum_buffer);
        }
        self.opt.set_steps(s.opt_steps);
        self.queue = Cpu.queue_from_f32(&s.queue, self.cfg.queue_len, self.cfg.dim, self.cfg.queue_dtype)?;
        self.ptr = s.queue_ptr;
        self.enc_q.num_batches_tracked = s.q_tracked;
        self.enc_k.num_batches_tracked = s.k_tracked;
        Ok(())
    }

    fn layout(&self) -> &ResNetLayout {
        &self.enc_q.layout
    }
}
