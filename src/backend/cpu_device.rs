//! [`Device`] on the CPU: allocations are `Vec`s, views are slices, and every kernel is the `backend::cpu::nn`
//! function of the same name. The device owns the convolution scratch (im2col columns), reused across calls.

use super::device::{check_regions, no_momentum_buffer, Device, Epilogue, EpilogueGrad, MocoDevice, Region};
use super::{Backend, BackendKind, Cpu, CpuQueue};
use crate::optim::{Optimizer, Sgd, SgdConfig};
use crate::shape::{EmaShape, InfoNceShape, QueueDType, QueueShape};
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

impl MocoDevice for CpuDevice {
    type Queue = crate::backend::CpuQueue;
    type Nce = CpuNce;
    type Sgd = crate::optim::Sgd;

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
    fn sgd_new(&mut self, config: SgdConfig, len: usize) -> Result<Sgd> {
        Sgd::new(config, len)
    }
    fn sgd_step(&mut self, opt: &mut Sgd, params: &mut Vec<f32>, grads: &Vec<f32>, lr: f64) -> Result<()> {
        opt.set_lr(lr)?;
        opt.step(params, grads)
    }
    fn sgd_steps(opt: &Sgd) -> u64 {
        opt.steps()
    }
    fn sgd_set_steps(opt: &mut Sgd, steps: u64) {
        opt.set_steps(steps)
    }
    fn sgd_read_momentum(&self, opt: &Sgd, len: usize) -> Result<Vec<f32>> {
        let m = opt.momentum_buffer();
        Ok(if m.is_empty() { vec![0.0; len] } else { m.to_vec() })
    }
    fn sgd_write_momentum(&mut self, opt: &mut Sgd, data: &[f32]) -> Result<()> {
        if opt.momentum_buffer().is_empty() {
            return no_momentum_buffer(data);
        }
        for (_, buf) in opt.state_mut() {
            crate::error::check_len_eq("train state", "momentum buffer", buf.len(), data.len())?;
            buf.copy_from_slice(data);
        }
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
