//! [`Device`] on the CPU: allocations are `Vec`s, views are slices, and every kernel is the `backend::cpu::nn`
//! function of the same name. The device owns the convolution scratch (im2col columns), reused across calls.

use super::device::{check_regions, Device, Epilogue, EpilogueGrad, MocoDevice, Region};
use super::{Backend, BackendKind, Cpu, CpuQueue};
use crate::optim::{AdamW, Lars, Optimizer, OptimizerConfig, ParamSpans, Sgd};
use crate::shape::{EmaShape, InfoNceShape, QueueDType, QueueShape, SymmetricShape};
use crate::backend::cpu::nn as k;
use crate::backend::cpu::nn::{AttentionShape, BatchNormShape, Conv2dShape, EltwiseShape, GlobalAvgPoolShape, LayerNormShape, LinearShape, MaxPool2dShape, PatchShape, TokensShape};
use crate::error::Result;

/// The CPU as a [`Device`]: the CPU backend's layer kernels plus a scratch buffer that the convolutions reuse, so
/// a training step allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct CpuDevice {
    scratch: Vec<f32>,
}

impl CpuDevice {
    /// A device with an empty scratch buffer (it grows to the largest convolution's need on first use).
    pub fn new() -> Self {
        Self::default()
    }
}

/// Disjoint views of `buf` (see [`Device::split`]).
#[allow(clippy::type_complexity)]
fn split_slice<T, const W: usize, const R: usize>(buf: &mut [T], writes: [Region; W], reads: [Region; R]) -> Result<([&mut [T]; W], [&[T]; R])> {
    check_regions("cpu split", buf.len(), &writes, &reads)?;
    let base = buf.as_mut_ptr();
    // SAFETY: `check_regions` proved every region lies inside `buf` and that no written region overlaps any other
    // region handed out here; `buf` is borrowed mutably for the returned lifetime, so nothing else aliases it. Each
    // written region therefore gets exclusive access, and the read-only regions are only ever shared.
    let w = writes.map(|r| unsafe { std::slice::from_raw_parts_mut(base.add(r.offset), r.len) });
    // SAFETY: as above (read-only regions may overlap each other, never a written one).
    let rd = reads.map(|r| unsafe { std::slice::from_raw_parts(base.add(r.offset).cast_const(), r.len) });
    Ok((w, rd))
}

fn region<T>(buf: &[T], at: Region) -> Result<&[T]> {
    check_regions("cpu view", buf.len(), &[], &[at])?;
    Ok(&buf[at.range()])
}

impl Device for CpuDevice {
    type Buf = Vec<f32>;
    type IndexBuf = Vec<u32>;
    type Ref<'a> = &'a [f32];
    type Mut<'a> = &'a mut [f32];
    type IndexRef<'a> = &'a [u32];
    type IndexMut<'a> = &'a mut [u32];
    type Input = [f32];

    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn name(&self) -> String {
        super::Backend::name(&super::Cpu)
    }

    fn alloc(&mut self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn alloc_index(&mut self, len: usize) -> Result<Vec<u32>> {
        Ok(vec![0; len])
    }
    fn upload(&mut self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn buf_len(buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn zero(&mut self, buf: &mut Vec<f32>) -> Result<()> {
        buf.fill(0.0);
        Ok(())
    }
    fn write(&mut self, buf: &mut Vec<f32>, at: Region, data: &[f32]) -> Result<()> {
        crate::error::check_len_eq("cpu write", "data of the region's length", at.len, data.len())?;
        let ([dst], []) = split_slice(buf, [at], [])?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn read(&self, buf: &Vec<f32>, at: Region) -> Result<Vec<f32>> {
        Ok(region(buf, at)?.to_vec())
    }
    fn copy(&mut self, dst: &mut [f32], src: &[f32]) -> Result<()> {
        crate::error::check_len_eq("cpu copy", "a destination of the source's length", src.len(), dst.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn input(x: &[f32]) -> (&[f32], usize) {
        (x, x.len())
    }
    fn view(buf: &Vec<f32>, at: Region) -> Result<&[f32]> {
        region(buf, at)
    }
    fn split<const W: usize, const R: usize>(buf: &mut Vec<f32>, writes: [Region; W], reads: [Region; R]) -> Result<([&mut [f32]; W], [&[f32]; R])> {
        split_slice(buf, writes, reads)
    }
    fn index_view(buf: &Vec<u32>, at: Region) -> Result<&[u32]> {
        region(buf, at)
    }
    fn index_mut(buf: &mut Vec<u32>, at: Region) -> Result<&mut [u32]> {
        let ([v], []) = split_slice(buf, [at], [])?;
        Ok(v)
    }

    fn conv2d_forward(&mut self, out: &mut [f32], inp: &[f32], weight: &[f32], shape: &Conv2dShape) -> Result<()> {
        k::conv2d_forward(out, &mut self.scratch, inp, weight, shape)
    }
    fn conv2d_forward_no_grad(&mut self, out: &mut [f32], inp: &[f32], weight: &[f32], shape: &Conv2dShape) -> Result<()> {
        k::conv2d_forward_no_grad(out, &mut self.scratch, inp, weight, shape)
    }
    fn conv2d_backward(&mut self, dinp: Option<&mut [f32]>, dweight: &mut [f32], dout: &[f32], inp: &[f32], weight: &[f32], shape: &Conv2dShape) -> Result<()> {
        k::conv2d_backward(dinp, dweight, &mut self.scratch, dout, inp, weight, shape)
    }
    fn batchnorm_forward_train(&mut self, out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], running_mean: &mut [f32], running_var: &mut [f32], inp: &[f32], epilogue: Epilogue<&[f32]>, gamma: Option<&[f32]>, beta: Option<&[f32]>, shape: &BatchNormShape) -> Result<()> {
        match epilogue {
            Epilogue::None => k::batchnorm_forward_train(out, mean, rstd, running_mean, running_var, inp, gamma, beta, shape),
            Epilogue::Relu => k::batchnorm_relu_forward_train(out, mean, rstd, running_mean, running_var, inp, gamma, beta, shape),
            Epilogue::AddRelu(id) => k::batchnorm_add_relu_forward_train(out, mean, rstd, running_mean, running_var, inp, id, gamma, beta, shape),
        }
    }
    fn batchnorm_forward_eval(&mut self, out: &mut [f32], inp: &[f32], epilogue: Epilogue<&[f32]>, running_mean: &[f32], running_var: &[f32], gamma: Option<&[f32]>, beta: Option<&[f32]>, shape: &BatchNormShape) -> Result<()> {
        match epilogue {
            Epilogue::None => k::batchnorm_forward_eval(out, inp, running_mean, running_var, gamma, beta, shape),
            Epilogue::Relu => k::batchnorm_relu_forward_eval(out, inp, running_mean, running_var, gamma, beta, shape),
            Epilogue::AddRelu(id) => k::batchnorm_add_relu_forward_eval(out, inp, id, running_mean, running_var, gamma, beta, shape),
        }
    }
    fn batchnorm_backward<'a>(&mut self, dinp: &'a mut [f32], epilogue: EpilogueGrad<&'a [f32], &'a mut [f32]>, dgamma: Option<&'a mut [f32]>, dbeta: Option<&'a mut [f32]>, dout: &'a [f32], inp: &'a [f32], mean: &'a [f32], rstd: &'a [f32], gamma: Option<&'a [f32]>, shape: &BatchNormShape) -> Result<()> {
        match epilogue {
            EpilogueGrad::None => k::batchnorm_backward(dinp, dgamma, dbeta, dout, inp, mean, rstd, gamma, shape),
            EpilogueGrad::Relu { out } => k::batchnorm_relu_backward(dinp, dgamma, dbeta, dout, out, inp, mean, rstd, gamma, shape),
            EpilogueGrad::AddRelu { out, didentity } => k::batchnorm_add_relu_backward(dinp, didentity, dgamma, dbeta, dout, out, inp, mean, rstd, gamma, shape),
        }
    }
    fn maxpool2d_forward(&mut self, out: &mut [f32], argmax: &mut [u32], inp: &[f32], shape: &MaxPool2dShape) -> Result<()> {
        k::maxpool2d_forward(out, argmax, inp, shape)
    }
    fn maxpool2d_backward(&mut self, dinp: &mut [f32], dout: &[f32], argmax: &[u32], shape: &MaxPool2dShape) -> Result<()> {
        k::maxpool2d_backward(dinp, dout, argmax, shape)
    }
    fn global_avgpool_forward(&mut self, out: &mut [f32], inp: &[f32], shape: &GlobalAvgPoolShape) -> Result<()> {
        k::global_avgpool_forward(out, inp, shape)
    }
    fn global_avgpool_backward(&mut self, dinp: &mut [f32], dout: &[f32], shape: &GlobalAvgPoolShape) -> Result<()> {
        k::global_avgpool_backward(dinp, dout, shape)
    }
    fn linear_forward(&mut self, out: &mut [f32], inp: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: &LinearShape) -> Result<()> {
        k::linear_forward(out, inp, weight, bias, shape)
    }
    fn linear_backward(&mut self, dinp: Option<&mut [f32]>, dweight: &mut [f32], dbias: Option<&mut [f32]>, dout: &[f32], inp: &[f32], weight: &[f32], shape: &LinearShape) -> Result<()> {
        k::linear_backward(dinp, dweight, dbias, dout, inp, weight, shape)
    }
    fn relu_forward(&mut self, out: &mut [f32], inp: &[f32], shape: &EltwiseShape) -> Result<()> {
        k::relu_forward(out, inp, shape)
    }
    fn relu_backward(&mut self, dinp: &mut [f32], dout: &[f32], out: &[f32], shape: &EltwiseShape) -> Result<()> {
        k::relu_backward(dinp, dout, out, shape)
    }
    fn add_forward(&mut self, out: &mut [f32], a: &[f32], b: &[f32], shape: &EltwiseShape) -> Result<()> {
        k::add_forward(out, a, b, shape)
    }
    fn add_backward(&mut self, da: &mut [f32], db: &mut [f32], dout: &[f32], shape: &EltwiseShape) -> Result<()> {
        k::add_backward(da, db, dout, shape)
    }
    fn layernorm_forward(&mut self, out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], gamma: &[f32], beta: &[f32], shape: &LayerNormShape) -> Result<()> {
        k::layernorm_forward(out, mean, rstd, inp, gamma, beta, shape)
    }
    fn layernorm_backward(&mut self, dinp: &mut [f32], dgamma: &mut [f32], dbeta: &mut [f32], dout: &[f32], inp: &[f32], gamma: &[f32], mean: &[f32], rstd: &[f32], shape: &LayerNormShape) -> Result<()> {
        k::layernorm_backward(dinp, dgamma, dbeta, dout, inp, gamma, mean, rstd, shape)
    }
    fn gelu_forward(&mut self, out: &mut [f32], inp: &[f32], shape: &EltwiseShape) -> Result<()> {
        k::gelu_forward(out, inp, shape)
    }
    fn gelu_backward(&mut self, dinp: &mut [f32], dout: &[f32], inp: &[f32], shape: &EltwiseShape) -> Result<()> {
        k::gelu_backward(dinp, dout, inp, shape)
    }
    fn attention_forward(&mut self, out: &mut [f32], att: &mut [f32], qkv: &[f32], shape: &AttentionShape) -> Result<()> {
        k::attention_forward(out, att, qkv, shape)
    }
    fn attention_backward(&mut self, dqkv: &mut [f32], dout: &[f32], qkv: &[f32], att: &[f32], shape: &AttentionShape) -> Result<()> {
        k::attention_backward(dqkv, dout, qkv, att, shape)
    }
    fn patch_im2col(&mut self, cols: &mut [f32], images: &[f32], shape: &PatchShape) -> Result<()> {
        k::patch_im2col(cols, images, shape)
    }
    fn patch_im2col_backward(&mut self, dimages: &mut [f32], dcols: &[f32], shape: &PatchShape) -> Result<()> {
        k::patch_im2col_backward(dimages, dcols, shape)
    }
    fn tokens_forward(&mut self, tokens: &mut [f32], patches: &[f32], cls: &[f32], pos: &[f32], shape: &TokensShape) -> Result<()> {
        k::tokens_forward(tokens, patches, cls, pos, shape)
    }
    fn tokens_backward(&mut self, dpatches: Option<&mut [f32]>, dcls: Option<&mut [f32]>, dtokens: &[f32], shape: &TokensShape) -> Result<()> {
        k::tokens_backward(dpatches, dcls, dtokens, shape)
    }
    fn cls_select_forward(&mut self, out: &mut [f32], tokens: &[f32], shape: &TokensShape) -> Result<()> {
        k::cls_select_forward(out, tokens, shape)
    }
    fn cls_select_backward(&mut self, dtokens: &mut [f32], dout: &[f32], shape: &TokensShape) -> Result<()> {
        k::cls_select_backward(dtokens, dout, shape)
    }
}

/// The InfoNCE outputs on the CPU: `dq`, the per-row loss and the statistics of the last call.
#[derive(Debug, Clone)]
pub struct CpuNce {
    /// Gradient w.r.t. raw q, `[N, C]`.
    pub dq: Vec<f32>,
    /// Per-row loss `[N]`.
    pub row_loss: Vec<f32>,
    /// Loss and accuracy counts of the last call.
    pub stats: crate::backend::InfoNceStats,
}

/// The MoCo v3 loss outputs on the CPU.
#[derive(Debug, Clone)]
pub struct CpuV3Loss {
    /// Gradient w.r.t. raw q1, `[N, C]`.
    pub dq1: Vec<f32>,
    /// Gradient w.r.t. raw q2, `[N, C]`.
    pub dq2: Vec<f32>,
    /// The loss of the last call (NaN before the first).
    pub loss: f32,
}

/// An optimiser on the CPU: [`crate::optim`]'s [`Sgd`], [`AdamW`] or [`Lars`].
#[derive(Debug, Clone)]
pub enum CpuOpt {
    /// SGD.
    Sgd(Sgd),
    /// AdamW.
    AdamW(AdamW),
    /// LARS.
    Lars(Lars),
}

impl CpuOpt {
    /// The one optimiser inside, through the [`Optimizer`] trait.
    pub fn as_dyn(&self) -> &dyn Optimizer {
        match self {
            CpuOpt::Sgd(o) => o,
            CpuOpt::AdamW(o) => o,
            CpuOpt::Lars(o) => o,
        }
    }
    /// The same, writable.
    pub fn as_dyn_mut(&mut self) -> &mut dyn Optimizer {
        match self {
            CpuOpt::Sgd(o) => o,
            CpuOpt::AdamW(o) => o,
            CpuOpt::Lars(o) => o,
        }
    }
    /// The configuration.
    pub fn config(&self) -> OptimizerConfig {
        match self {
            CpuOpt::Sgd(o) => OptimizerConfig::Sgd(*o.config()),
            CpuOpt::AdamW(o) => OptimizerConfig::AdamW(*o.config()),
            CpuOpt::Lars(o) => OptimizerConfig::Lars(*o.config()),
        }
    }
}

impl MocoDevice for CpuDevice {
    type Queue = crate::backend::CpuQueue;
    type Nce = CpuNce;
    type V3Loss = CpuV3Loss;
    type Opt = CpuOpt;

    fn queue_from_f32(&mut self, data: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<CpuQueue> {
        Cpu.queue_from_f32(data, k, c, dtype)
    }
    fn queue_to_f32(&self, queue: &CpuQueue) -> Result<Vec<f32>> {
        Cpu.queue_to_f32(queue)
    }
    fn ema_update(&mut self, k: &mut Vec<f32>, q: &Vec<f32>, momentum: f64) -> Result<()> {
        crate::backend::cpu::ema_update(k, q, &EmaShape::new(q.len(), momentum)?)
    }
    fn nce_buffers(&mut self, n: usize, c: usize) -> Result<CpuNce> {
        Ok(CpuNce { dq: vec![0.0; n * c], row_loss: vec![0.0; n], stats: crate::backend::InfoNceStats { loss: f32::NAN, top1: 0, top5: 0 } })
    }
    fn infonce(&mut self, nce: &mut CpuNce, q: &Vec<f32>, k: &Vec<f32>, queue: &CpuQueue, shape: &InfoNceShape) -> Result<()> {
        nce.stats = crate::backend::cpu::infonce(&mut nce.dq, &mut nce.row_loss, q, k, queue.view(), shape)?;
        Ok(())
    }
    fn read_stats(&self, nce: &CpuNce) -> Result<crate::backend::InfoNceStats> {
        Ok(nce.stats)
    }
    fn nce_dq(nce: &CpuNce) -> &[f32] {
        &nce.dq
    }
    fn enqueue(&mut self, queue: &mut CpuQueue, keys: &Vec<f32>, shape: &QueueShape) -> Result<usize> {
        crate::backend::cpu::enqueue(&mut queue.view_mut(), keys, shape)
    }
    fn v3_buffers(&mut self, n: usize, c: usize) -> Result<CpuV3Loss> {
        Ok(CpuV3Loss { dq1: vec![0.0; n * c], dq2: vec![0.0; n * c], loss: f32::NAN })
    }
    fn moco_v3_loss(&mut self, out: &mut CpuV3Loss, q1: &Vec<f32>, q2: &Vec<f32>, k1: &Vec<f32>, k2: &Vec<f32>, shape: &SymmetricShape) -> Result<()> {
        out.loss = crate::backend::cpu::moco_v3_loss(&mut out.dq1, &mut out.dq2, q1, q2, k1, k2, shape)?;
        Ok(())
    }
    fn read_v3_loss(&self, out: &CpuV3Loss) -> Result<f32> {
        Ok(out.loss)
    }
    fn v3_dq1(out: &CpuV3Loss) -> &[f32] {
        &out.dq1
    }
    fn v3_dq2(out: &CpuV3Loss) -> &[f32] {
        &out.dq2
    }
    fn opt_new(&mut self, config: OptimizerConfig, spans: &ParamSpans) -> Result<CpuOpt> {
        Ok(match config {
            OptimizerConfig::Sgd(c) => CpuOpt::Sgd(Sgd::new(c, spans.len())?),
            OptimizerConfig::AdamW(c) => CpuOpt::AdamW(AdamW::new(c, spans.len())?),
            OptimizerConfig::Lars(c) => CpuOpt::Lars(Lars::new(c, spans.clone())?),
        })
    }
    fn opt_step(&mut self, opt: &mut CpuOpt, params: &mut Vec<f32>, grads: &Vec<f32>, lr: f64) -> Result<()> {
        let o = opt.as_dyn_mut();
        o.set_lr(lr)?;
        o.step(params, grads)
    }
    fn opt_steps(opt: &CpuOpt) -> u64 {
        opt.as_dyn().steps()
    }
    fn opt_set_steps(opt: &mut CpuOpt, steps: u64) {
        opt.as_dyn_mut().set_steps(steps)
    }
    fn opt_read_state(&self, opt: &CpuOpt) -> Result<Vec<Vec<f32>>> {
        // SGD without momentum lends an empty buffer: not a state tensor
        Ok(opt.as_dyn().state().into_iter().filter(|(_, b)| !b.is_empty()).map(|(_, b)| b.to_vec()).collect())
    }
    fn opt_write_state(&mut self, opt: &mut CpuOpt, state: &[Vec<f32>]) -> Result<()> {
        // the parameters' length (SGD without momentum: no state, so no length to check)
        let len = match opt {
            CpuOpt::Sgd(o) => o.momentum_buffer().len(),
            CpuOpt::AdamW(o) => o.exp_avg().len(),
            CpuOpt::Lars(o) => o.spans().len(),
        };
        opt.config().check_state(len, state)?;
        let bufs = opt.as_dyn_mut().state_mut().into_iter().filter(|(_, b)| !b.is_empty());
        for ((_, buf), src) in bufs.zip(state) {
            buf.copy_from_slice(src);
        }
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
