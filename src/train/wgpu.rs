//! The MoCo step on wgpu: [`ResNetWgpu`] encoders, the fused EMA, streaming InfoNCE and enqueue shaders, and
//! [`WgpuSgd`], all on device buffers. The host sees the two input batches, the loss statistics and the
//! features it checks for non-finite values (`[N, dim]`, to match the CPU engine's check). Shuffle-BN from
//! [`super::shuffle`], as the CPU engine.

use super::config::TrainConfig;
use super::shuffle::{self, KeyBatch};
use super::engine::{check_state, encoder_config, initial_queue, Engine, EngineState, StepStats};
use crate::backend::wgpu::{ema_update, enqueue, infonce, optim::WgpuSgd, GpuSlice, InfoNceBuffers, WgpuContext, WgpuQueue};
use crate::error::{Error, Result};
use crate::nn::{ResNetLayout, ResNetWgpu};
use crate::optim::SgdConfig;
use crate::shape::{EmaShape, InfoNceShape, QueueShape};

/// Eval batch of [`WgpuEngine::embed`].
const EVAL_BATCH: usize = 128;

/// Query encoder, key encoder, an eval-mode copy, SGD and the queue on one wgpu device.
#[derive(Debug)]
pub struct WgpuEngine {
    cfg: TrainConfig,
    ctx: WgpuContext,
    enc_q: ResNetWgpu,
    enc_k: ResNetWgpu,
    enc_eval: ResNetWgpu,
    opt: WgpuSgd,
    queue: WgpuQueue,
    ptr: usize,
    x_q: wgpu::Buffer,
    x_k: wgpu::Buffer,
    x_shuffled: wgpu::Buffer,
    q: wgpu::Buffer,
    k1: wgpu::Buffer,
    k2: wgpu::Buffer,
    nce: InfoNceBuffers,
}

fn copy(ctx: &WgpuContext, src: GpuSlice<'_>, dst: &wgpu::Buffer) {
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("moco copy") });
    enc.copy_buffer_to_buffer(src.buffer(), src.offset(), dst, 0, src.size());
    ctx.queue.submit([enc.finish()]);
}

fn copy_all(ctx: &WgpuContext, src: &wgpu::Buffer, dst: &wgpu::Buffer) {
    copy(ctx, GpuSlice::whole(src), dst);
}

impl WgpuEngine {
    /// Builds the engine on `ctx` (both encoders initialised as the CPU engine's for the same seed).
    pub fn new(ctx: &WgpuContext, cfg: &TrainConfig) -> Result<Self> {
        cfg.validate()?;
        let (ec, s, n) = (encoder_config(cfg), cfg.image_size, cfg.batch_size);
        let enc_q = ResNetWgpu::new(ctx, ec, n, s, s, cfg.bn_splits, cfg.seed)?;
        let enc_k = ResNetWgpu::new(ctx, ec, n, s, s, cfg.bn_splits, cfg.seed)?;
        let enc_eval = ResNetWgpu::new(ctx, ec, EVAL_BATCH, s, s, 1, cfg.seed)?;
        let opt = WgpuSgd::new(ctx, SgdConfig::new(cfg.lr, cfg.sgd_momentum, cfg.weight_decay), enc_q.layout.params.len)?;
        let queue = WgpuQueue::from_f32(ctx, &initial_queue(cfg), cfg.queue_len, cfg.dim, cfg.queue_dtype)?;
        let img = (n * 3 * s * s * 4) as u64;
        let feat = (n * cfg.dim * 4) as u64;
        Ok(Self {
            cfg: cfg.clone(),
            ctx: ctx.clone(),
            enc_q,
            enc_k,
            enc_eval,
            opt,
            queue,
            ptr: 0,
            x_q: ctx.storage_buffer("moco x_q", img),
            x_k: ctx.storage_buffer("moco x_k", img),
            x_shuffled: ctx.storage_buffer("moco x_k shuffled", img),
            q: ctx.storage_buffer("moco q", feat),
            k1: ctx.storage_buffer("moco k1", feat),
            k2: ctx.storage_buffer("moco k2", feat),
            nce: InfoNceBuffers::new(ctx, n, cfg.dim),
        })
    }

    /// Query forward of `x` (a device batch), loss against `k`, backward. Non-finite features give a NaN loss
    /// and no backward.
    fn half(&mut self, x: &wgpu::Buffer, k: &wgpu::Buffer, shape: &InfoNceShape) -> Result<crate::backend::InfoNceStats> {
        let out = self.enc_q.forward(x, true)?;
        copy(&self.ctx, out, &self.q);
        let n = self.cfg.batch_size * self.cfg.dim;
        let (qv, kv): (Vec<f32>, Vec<f32>) = (self.ctx.read(&self.q, n)?, self.ctx.read(k, n)?);
        if !qv.iter().chain(&kv).all(|v| v.is_finite()) {
            return Ok(crate::backend::InfoNceStats { loss: f32::NAN, top1: 0, top5: 0 });
        }
        let stats = infonce(&self.ctx, &self.nce, &self.q, k, &self.queue, shape)?;
        if stats.loss.is_finite() {
            self.enc_q.backward(&self.nce.dq)?;
        }
        Ok(stats)
    }

    /// The device.
    pub fn context(&self) -> &WgpuContext {
        &self.ctx
    }
}

impl Engine for WgpuEngine {
    fn name(&self) -> String {
        format!("wgpu: {}", self.ctx.adapter_name)
    }

    fn step(&mut self, x_q: &[f32], x_k: &[f32], lr: f64) -> Result<StepStats> {
        let (n, dim, s) = (self.cfg.batch_size, self.cfg.dim, self.cfg.image_size);
        crate::error::check_len_eq("train step", "x_q [N, 3, S, S]", n * 3 * s * s, x_q.len())?;
        crate::error::check_len_eq("train step", "x_k [N, 3, S, S]", n * 3 * s * s, x_k.len())?;
        self.ctx.queue.write_buffer(&self.x_q, 0, bytemuck::cast_slice(x_q));
        self.ctx.queue.write_buffer(&self.x_k, 0, bytemuck::cast_slice(x_k));
        let shape = InfoNceShape::new(n, dim, self.cfg.queue_len, self.cfg.temperature as f32)?;
        let len = self.enc_q.layout.params.len;
        ema_update(&self.ctx, &self.enc_k.params, &self.enc_q.params, &EmaShape::new(len, self.cfg.momentum)?)?;
        // keys with shuffle-BN (the permutation of this step from (seed, optimiser steps taken)): the shuffled
        // batch is uploaded to its own buffer (x_q and x_k stay in batch order for the query halves), the keys
        // come back to the host to be put in batch order, as the finiteness check reads them anyway
        let step = self.opt.steps();
        let mut pairs = vec![(x_k, KeyBatch::K2, self.k2.clone())];
        if self.cfg.symmetric {
            pairs.push((x_q, KeyBatch::K1, self.k1.clone()));
        }
        for (x, which, dst) in pairs {
            let perm = shuffle::for_step(&self.cfg, step, which);
            let (ctx, enc_k, x_in) = (&self.ctx, &mut self.enc_k, &self.x_shuffled);
            let k = shuffle::encode_keys(x, n, dim, perm.as_ref(), |xs| {
                ctx.queue.write_buffer(x_in, 0, bytemuck::cast_slice(xs));
                let out = enc_k.forward(x_in, true)?;
                copy(ctx, out, &dst);
                ctx.read(&dst, n * dim)
            })?;
            if perm.is_some() {
                self.ctx.queue.write_buffer(&dst, 0, bytemuck::cast_slice(&k));
            }
        }
        self.enc_q.zero_grad()?;
        let (xq, xk, k1, k2) = (self.x_q.clone(), self.x_k.clone(), self.k1.clone(), self.k2.clone());
        let s12 = self.half(&xq, &k2, &shape)?;
        let mut stats = StepStats { loss: s12.loss, acc1: s12.top1 as f32, acc5: s12.top5 as f32 };
        let mut rows = n as f32;
        if self.cfg.symmetric && s12.loss.is_finite() {
            let s21 = self.half(&xk, &k1, &shape)?;
            stats = StepStats { loss: stats.loss + s21.loss, acc1: stats.acc1 + s21.top1 as f32, acc5: stats.acc5 + s21.top5 as f32 };
            rows *= 2.0;
        }
        stats.acc1 *= 100.0 / rows;
        stats.acc5 *= 100.0 / rows;
        if !stats.loss.is_finite() {
            return Ok(stats);
        }
        self.opt.set_lr(lr)?;
        self.opt.step(&self.ctx, &self.enc_q.params, &self.enc_q.grads)?;
        let keys: Vec<&wgpu::Buffer> = if self.cfg.symmetric { vec![&k1, &k2] } else { vec![&k2] };
        for k in keys {
            self.ptr = enqueue(&self.ctx, &self.queue, k, &QueueShape::new(n, dim, self.cfg.queue_len, self.ptr)?)?;
        }
        Ok(stats)
    }

    fn embed(&mut self, x: &[f32], n: usize, backbone: bool) -> Result<Vec<f32>> {
        let img = 3 * self.cfg.image_size * self.cfg.image_size;
        crate::error::check_len_eq("embed", "x [n, 3, S, S]", n * img, x.len())?;
        copy_all(&self.ctx, &self.enc_q.params, &self.enc_eval.params);
        copy_all(&self.ctx, &self.enc_q.buffers, &self.enc_eval.buffers);
        let width = if backbone { self.enc_q.layout.feature_dim } else { self.cfg.dim };
        let mut out = Vec::with_capacity(n * width);
        let mut batch = vec![0.0f32; EVAL_BATCH * img];
        for start in (0..n).step_by(EVAL_BATCH) {
            let m = (n - start).min(EVAL_BATCH);
            batch[..m * img].copy_from_slice(&x[start * img..(start + m) * img]);
            batch[m * img..].fill(0.0);
            let y = self.enc_eval.forward_host(&batch, false)?;
            let y = if backbone { self.enc_eval.read_features()? } else { y };
            out.extend_from_slice(&y[..m * width]);
        }
        Ok(out)
    }

    fn state(&self) -> Result<EngineState> {
        let len = self.enc_q.layout.params.len;
        let momentum_buffer = match self.opt.momentum_buffer() {
            Some(b) => self.ctx.read(b, len)?,
            None => vec![0.0; len],
        };
        Ok(EngineState {
            q_params: self.enc_q.read_params()?,
            k_params: self.enc_k.read_params()?,
            q_buffers: self.enc_q.read_buffers()?,
            k_buffers: self.enc_k.read_buffers()?,
            momentum_buffer,
            opt_steps: self.opt.steps(),
            queue: self.queue.to_f32(&self.ctx)?,
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
        match self.opt.momentum_buffer() {
            Some(b) => self.ctx.queue.write_buffer(b, 0, bytemuck::cast_slice(&s.momentum_buffer)),
            None if s.momentum_buffer.iter().any(|&v| v != 0.0) => return Err(Error::shape("train state", "a zero momentum buffer (SGD momentum 0)", "a non-zero one")),
            None => {}
        }
        self.opt.set_steps(s.opt_steps);
        self.queue = WgpuQueue::from_f32(&self.ctx, &s.queue, self.cfg.queue_len, self.cfg.dim, self.cfg.queue_dtype)?;
        self.ptr = s.queue_ptr;
        self.enc_q.num_batches_tracked = s.q_tracked;
        self.enc_k.num_batches_tracked = s.k_tracked;
        self.ctx.synchronize()
    }

    fn layout(&self) -> &ResNetLayout {
        &self.enc_q.layout
    }
}
