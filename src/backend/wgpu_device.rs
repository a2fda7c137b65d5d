//! [`Device`] on wgpu: allocations are storage buffers, views are [`GpuSlice`]s (regions 256-byte aligned, as the
//! plans lay them out), and every kernel is the `backend::wgpu::{conv, norm, pool, vit}` function of the same name.

use super::device::{check_regions, Device, Epilogue, EpilogueGrad, MocoDevice, Region};
use super::wgpu::{conv, norm, optim::{WgpuAdamW, WgpuLars, WgpuSgd}, pool, vit, AsGpuSlice, GpuSlice, InfoNceBuffers, WgpuContext, WgpuQueue};
use crate::optim::{OptimizerConfig, ParamSpans};
use crate::shape::{EmaShape, InfoNceShape, QueueDType, QueueShape, SymmetricShape};
use super::BackendKind;
use crate::backend::cpu::nn::{AttentionShape, BatchNormShape, Conv2dShape, EltwiseShape, GlobalAvgPoolShape, LayerNormShape, LinearShape, MaxPool2dShape, PatchShape, TokensShape};
use crate::error::{Error, Result};

fn bytes(elems: usize) -> u64 {
    (elems.max(1) * 4) as u64
}

fn elems(buf: &wgpu::Buffer) -> usize {
    (buf.size() / 4) as usize
}

fn opt<'a>(s: &'a Option<GpuSlice<'_>>) -> Option<&'a dyn AsGpuSlice> {
    s.as_ref().map(|s| s as &dyn AsGpuSlice)
}

impl Device for WgpuContext {
    type Buf = wgpu::Buffer;
    type IndexBuf = wgpu::Buffer;
    type Ref<'a> = GpuSlice<'a>;
    type Mut<'a> = GpuSlice<'a>;
    type IndexRef<'a> = GpuSlice<'a>;
    type IndexMut<'a> = GpuSlice<'a>;
    type Input = dyn AsGpuSlice;

    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }
    fn name(&self) -> String {
        format!("wgpu: {}", self.adapter_name)
    }

    fn alloc(&mut self, len: usize) -> Result<wgpu::Buffer> {
        // WebGPU zero-initialises new buffers
        Ok(self.storage_buffer("moco f32 allocation", bytes(len)))
    }
    fn alloc_index(&mut self, len: usize) -> Result<wgpu::Buffer> {
        Ok(self.storage_buffer("moco u32 allocation", bytes(len)))
    }
    fn upload(&mut self, data: &[f32]) -> Result<wgpu::Buffer> {
        Ok(WgpuContext::upload(self, "moco f32 allocation", data))
    }
    fn buf_len(buf: &wgpu::Buffer) -> usize {
        elems(buf)
    }
    fn zero(&mut self, buf: &mut wgpu::Buffer) -> Result<()> {
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("moco zero") });
        enc.clear_buffer(buf, 0, None);
        self.queue.submit([enc.finish()]);
        Ok(())
    }
    fn write(&mut self, buf: &mut wgpu::Buffer, at: Region, data: &[f32]) -> Result<()> {
        crate::error::check_len_eq("wgpu write", "data of the region's length", at.len, data.len())?;
        check_regions("wgpu write", elems(buf), &[at], &[])?;
        if !data.is_empty() {
            self.queue.write_buffer(buf, (at.offset * 4) as u64, bytemuck::cast_slice(data));
        }
        Ok(())
    }
    fn read(&self, buf: &wgpu::Buffer, at: Region) -> Result<Vec<f32>> {
        check_regions("wgpu read", elems(buf), &[], &[at])?;
        if at.offset == 0 {
            return WgpuContext::read(self, buf, at.len);
        }
        // copy the region to the front of a temporary buffer, then read that
        let tmp = self.storage_buffer("moco region readback", bytes(at.len));
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("moco region") });
        enc.copy_buffer_to_buffer(buf, (at.offset * 4) as u64, &tmp, 0, (at.len * 4) as u64);
        self.queue.submit([enc.finish()]);
        WgpuContext::read(self, &tmp, at.len)
    }
    fn copy(&mut self, dst: GpuSlice<'_>, src: GpuSlice<'_>) -> Result<()> {
        if dst.size() != src.size() {
            return Err(Error::shape("wgpu copy", format!("a destination of {} bytes", src.size()), format!("{} bytes", dst.size())));
        }
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("moco copy") });
        enc.copy_buffer_to_buffer(src.buffer(), src.offset(), dst.buffer(), dst.offset(), src.size());
        self.queue.submit([enc.finish()]);
        Ok(())
    }

    fn input(x: &dyn AsGpuSlice) -> (GpuSlice<'_>, usize) {
        let s = x.as_gpu_slice();
        (s, (s.size() / 4) as usize)
    }
    fn view(buf: &wgpu::Buffer, at: Region) -> Result<GpuSlice<'_>> {
        GpuSlice::elems(buf, at.offset, at.len)
    }
    fn split<const W: usize, const R: usize>(buf: &mut wgpu::Buffer, writes: [Region; W], reads: [Region; R]) -> Result<([GpuSlice<'_>; W], [GpuSlice<'_>; R])> {
        check_regions("wgpu split", elems(buf), &writes, &reads)?;
        let buf = &*buf;
        let mut err = None;
        let mut one = |r: Region| {
            GpuSlice::elems(buf, r.offset, r.len).unwrap_or_else(|e| {
                err.get_or_insert(e);
                GpuSlice::whole(buf)
            })
        };
        let (w, rd) = (writes.map(&mut one), reads.map(&mut one));
        match err {
            Some(e) => Err(e),
            None => Ok((w, rd)),
        }
    }
    fn index_view(buf: &wgpu::Buffer, at: Region) -> Result<GpuSlice<'_>> {
        GpuSlice::elems(buf, at.offset, at.len)
    }
    fn index_mut(buf: &mut wgpu::Buffer, at: Region) -> Result<GpuSlice<'_>> {
        GpuSlice::elems(buf, at.offset, at.len)
    }

    fn conv2d_forward(&mut self, out: GpuSlice<'_>, inp: GpuSlice<'_>, weight: GpuSlice<'_>, shape: &Conv2dShape) -> Result<()> {
        conv::conv2d_forward(self, &out, &inp, &weight, shape)
    }
    fn conv2d_backward(&mut self, dinp: Option<GpuSlice<'_>>, dweight: GpuSlice<'_>, dout: GpuSlice<'_>, inp: GpuSlice<'_>, weight: GpuSlice<'_>, shape: &Conv2dShape) -> Result<()> {
        conv::conv2d_backward(self, opt(&dinp), &dweight, &dout, &inp, &weight, shape)
    }
    fn batchnorm_forward_train(&mut self, out: GpuSlice<'_>, mean: GpuSlice<'_>, rstd: GpuSlice<'_>, running_mean: GpuSlice<'_>, running_var: GpuSlice<'_>, inp: GpuSlice<'_>, epilogue: Epilogue<GpuSlice<'_>>, gamma: Option<GpuSlice<'_>>, beta: Option<GpuSlice<'_>>, shape: &BatchNormShape) -> Result<()> {
        let (g, b) = (opt(&gamma), opt(&beta));
        match epilogue {
            Epilogue::None => norm::batchnorm_forward_train(self, &out, &mean, &rstd, &running_mean, &running_var, &inp, g, b, shape),
            Epilogue::Relu => norm::batchnorm_relu_forward_train(self, &out, &mean, &rstd, &running_mean, &running_var, &inp, g, b, shape),
            Epilogue::AddRelu(id) => norm::batchnorm_add_relu_forward_train(self, &out, &mean, &rstd, &running_mean, &running_var, &inp, &id, g, b, shape),
        }
    }
    fn batchnorm_forward_eval(&mut self, out: GpuSlice<'_>, inp: GpuSlice<'_>, epilogue: Epilogue<GpuSlice<'_>>, running_mean: GpuSlice<'_>, running_var: GpuSlice<'_>, gamma: Option<GpuSlice<'_>>, beta: Option<GpuSlice<'_>>, shape: &BatchNormShape) -> Result<()> {
        let (g, b) = (opt(&gamma), opt(&beta));
        match epilogue {
            Epilogue::None => norm::batchnorm_forward_eval(self, &out, &inp, &running_mean, &running_var, g, b, shape),
            Epilogue::Relu => norm::batchnorm_relu_forward_eval(self, &out, &inp, &running_mean, &running_var, g, b, shape),
            Epilogue::AddRelu(id) => norm::batchnorm_add_relu_forward_eval(self, &out, &inp, &id, &running_mean, &running_var, g, b, shape),
        }
    }
    fn batchnorm_backward<'a>(&mut self, dinp: GpuSlice<'a>, epilogue: EpilogueGrad<GpuSlice<'a>, GpuSlice<'a>>, dgamma: Option<GpuSlice<'a>>, dbeta: Option<GpuSlice<'a>>, dout: GpuSlice<'a>, inp: GpuSlice<'a>, mean: GpuSlice<'a>, rstd: GpuSlice<'a>, gamma: Option<GpuSlice<'a>>, shape: &BatchNormShape) -> Result<()> {
        let (dg, db, g) = (opt(&dgamma), opt(&dbeta), opt(&gamma));
        match epilogue {
            EpilogueGrad::None => norm::batchnorm_backward(self, &dinp, dg, db, &dout, &inp, &mean, &rstd, g, shape),
            EpilogueGrad::Relu { out } => norm::batchnorm_relu_backward(self, &dinp, dg, db, &dout, &out, &inp, &mean, &rstd, g, shape),
            EpilogueGrad::AddRelu { out, didentity } => norm::batchnorm_add_relu_backward(self, &dinp, &didentity, dg, db, &dout, &out, &inp, &mean, &rstd, g, shape),
        }
    }
    fn maxpool2d_forward(&mut self, out: GpuSlice<'_>, argmax: GpuSlice<'_>, inp: GpuSlice<'_>, shape: &MaxPool2dShape) -> Result<()> {
        pool::maxpool2d_forward(self, &out, &argmax, &inp, shape)
    }
    fn maxpool2d_backward(&mut self, dinp: GpuSlice<'_>, dout: GpuSlice<'_>, argmax: GpuSlice<'_>, shape: &MaxPool2dShape) -> Result<()> {
        pool::maxpool2d_backward(self, &dinp, &dout, &argmax, shape)
    }
    fn global_avgpool_forward(&mut self, out: GpuSlice<'_>, inp: GpuSlice<'_>, shape: &GlobalAvgPoolShape) -> Result<()> {
        pool::global_avgpool_forward(self, &out, &inp, shape)
    }
    fn global_avgpool_backward(&mut self, dinp: GpuSlice<'_>, dout: GpuSlice<'_>, shape: &GlobalAvgPoolShape) -> Result<()> {
        pool::global_avgpool_backward(self, &dinp, &dout, shape)
    }
    fn linear_forward(&mut self, out: GpuSlice<'_>, inp: GpuSlice<'_>, weight: GpuSlice<'_>, bias: Option<GpuSlice<'_>>, shape: &LinearShape) -> Result<()> {
        pool::linear_forward(self, &out, &inp, &weight, opt(&bias), shape)
    }
    fn linear_backward(&mut self, dinp: Option<GpuSlice<'_>>, dweight: GpuSlice<'_>, dbias: Option<GpuSlice<'_>>, dout: GpuSlice<'_>, inp: GpuSlice<'_>, weight: GpuSlice<'_>, shape: &LinearShape) -> Result<()> {
        pool::linear_backward(self, opt(&dinp), &dweight, opt(&dbias), &dout, &inp, &weight, shape)
    }
    fn relu_forward(&mut self, out: GpuSlice<'_>, inp: GpuSlice<'_>, shape: &EltwiseShape) -> Result<()> {
        pool::relu_forward(self, &out, &inp, shape)
    }
    fn relu_backward(&mut self, dinp: GpuSlice<'_>, dout: GpuSlice<'_>, out: GpuSlice<'_>, shape: &EltwiseShape) -> Result<()> {
        pool::relu_backward(self, &dinp, &dout, &out, shape)
    }
    fn add_forward(&mut self, out: GpuSlice<'_>, a: GpuSlice<'_>, b: GpuSlice<'_>, shape: &EltwiseShape) -> Result<()> {
        pool::add_forward(self, &out, &a, &b, shape)
    }
    fn add_backward(&mut self, da: GpuSlice<'_>, db: GpuSlice<'_>, dout: GpuSlice<'_>, shape: &EltwiseShape) -> Result<()> {
        vit::add_backward(self, &da, &db, &dout, shape)
    }
    fn layernorm_forward(&mut self, out: GpuSlice<'_>, mean: GpuSlice<'_>, rstd: GpuSlice<'_>, inp: GpuSlice<'_>, gamma: GpuSlice<'_>, beta: GpuSlice<'_>, shape: &LayerNormShape) -> Result<()> {
        vit::layernorm_forward(self, &out, &mean, &rstd, &inp, &gamma, &beta, shape)
    }
    fn layernorm_backward(&mut self, dinp: GpuSlice<'_>, dgamma: GpuSlice<'_>, dbeta: GpuSlice<'_>, dout: GpuSlice<'_>, inp: GpuSlice<'_>, gamma: GpuSlice<'_>, mean: GpuSlice<'_>, rstd: GpuSlice<'_>, shape: &LayerNormShape) -> Result<()> {
        vit::layernorm_backward(self, &dinp, &dgamma, &dbeta, &dout, &inp, &gamma, &mean, &rstd, shape)
    }
    fn gelu_forward(&mut self, out: GpuSlice<'_>, inp: GpuSlice<'_>, shape: &EltwiseShape) -> Result<()> {
        vit::gelu_forward(self, &out, &inp, shape)
    }
    fn gelu_backward(&mut self, dinp: GpuSlice<'_>, dout: GpuSlice<'_>, inp: GpuSlice<'_>, shape: &EltwiseShape) -> Result<()> {
        vit::gelu_backward(self, &dinp, &dout, &inp, shape)
    }
    fn attention_forward(&mut self, out: GpuSlice<'_>, att: GpuSlice<'_>, qkv: GpuSlice<'_>, shape: &AttentionShape) -> Result<()> {
        vit::attention_forward(self, &out, &att, &qkv, shape)
    }
    fn attention_backward(&mut self, dqkv: GpuSlice<'_>, dout: GpuSlice<'_>, qkv: GpuSlice<'_>, att: GpuSlice<'_>, shape: &AttentionShape) -> Result<()> {
        vit::attention_backward(self, &dqkv, &dout, &qkv, &att, shape)
    }
    fn patch_im2col(&mut self, cols: GpuSlice<'_>, images: GpuSlice<'_>, shape: &PatchShape) -> Result<()> {
        vit::patch_im2col(self, &cols, &images, shape)
    }
    fn patch_im2col_backward(&mut self, dimages: GpuSlice<'_>, dcols: GpuSlice<'_>, shape: &PatchShape) -> Result<()> {
        vit::patch_im2col_backward(self, &dimages, &dcols, shape)
    }
    fn tokens_forward(&mut self, tokens: GpuSlice<'_>, patches: GpuSlice<'_>, cls: GpuSlice<'_>, pos: GpuSlice<'_>, shape: &TokensShape) -> Result<()> {
        vit::tokens_forward(self, &tokens, &patches, &cls, &pos, shape)
    }
    fn tokens_backward(&mut self, dpatches: Option<GpuSlice<'_>>, dcls: Option<GpuSlice<'_>>, dtokens: GpuSlice<'_>, shape: &TokensShape) -> Result<()> {
        vit::tokens_backward(self, opt(&dpatches), opt(&dcls), &dtokens, shape)
    }
    fn cls_select_forward(&mut self, out: GpuSlice<'_>, tokens: GpuSlice<'_>, shape: &TokensShape) -> Result<()> {
        vit::cls_select_forward(self, &out, &tokens, shape)
    }
    fn cls_select_backward(&mut self, dtokens: GpuSlice<'_>, dout: GpuSlice<'_>, shape: &TokensShape) -> Result<()> {
        vit::cls_select_backward(self, &dtokens, &dout, shape)
    }
}

/// The MoCo v3 loss outputs on wgpu: `dq1, dq2 [N, C]` on the device and the loss that
/// [`super::wgpu::moco_v3_loss`] returned (it waits).
#[derive(Debug)]
pub struct WgpuV3Loss {
    /// Gradient w.r.t. raw q1.
    pub dq1: wgpu::Buffer,
    /// Gradient w.r.t. raw q2.
    pub dq2: wgpu::Buffer,
    /// The loss of the last call (NaN before the first).
    pub loss: f32,
}

/// An optimiser on wgpu: [`WgpuSgd`], [`WgpuAdamW`] or [`WgpuLars`].
#[derive(Debug)]
pub enum WgpuOpt {
    /// SGD.
    Sgd(WgpuSgd),
    /// AdamW.
    AdamW(WgpuAdamW),
    /// LARS.
    Lars(WgpuLars),
}

impl WgpuOpt {
    /// The configuration.
    pub fn config(&self) -> OptimizerConfig {
        match self {
            WgpuOpt::Sgd(o) => OptimizerConfig::Sgd(*o.config()),
            WgpuOpt::AdamW(o) => OptimizerConfig::AdamW(*o.config()),
            WgpuOpt::Lars(o) => OptimizerConfig::Lars(*o.config()),
        }
    }
    /// Parameters per step.
    pub fn len(&self) -> usize {
        match self {
            WgpuOpt::Sgd(o) => o.len(),
            WgpuOpt::AdamW(o) => o.len(),
            WgpuOpt::Lars(o) => o.spans().len(),
        }
    }
    /// Always false (`len >= 1`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The state buffers in [`OptimizerConfig::state_names`] order, each `[len]`.
    pub fn state(&self) -> Vec<&wgpu::Buffer> {
        let named = match self {
            WgpuOpt::Sgd(o) => o.state(),
            WgpuOpt::AdamW(o) => o.state(),
            WgpuOpt::Lars(o) => o.state(),
        };
        named.into_iter().map(|(_, b)| b).collect()
    }
}

impl MocoDevice for WgpuContext {
    type Queue = WgpuQueue;
    type Nce = InfoNceBuffers;
    type V3Loss = WgpuV3Loss;
    type Opt = WgpuOpt;

    fn queue_from_f32(&mut self, data: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<WgpuQueue> {
        WgpuQueue::from_f32(self, data, k, c, dtype)
    }
    fn queue_to_f32(&self, queue: &WgpuQueue) -> Result<Vec<f32>> {
        queue.to_f32(self)
    }
    fn ema_update(&mut self, k: &mut wgpu::Buffer, q: &wgpu::Buffer, momentum: f64) -> Result<()> {
        super::wgpu::ema_update(self, k, q, &EmaShape::new(elems(q), momentum)?)
    }
    fn nce_buffers(&mut self, n: usize, c: usize) -> Result<InfoNceBuffers> {
        Ok(InfoNceBuffers::new(self, n, c))
    }
    fn infonce(&mut self, nce: &mut InfoNceBuffers, q: &wgpu::Buffer, k: &wgpu::Buffer, queue: &WgpuQueue, shape: &InfoNceShape) -> Result<()> {
        super::wgpu::contrastive::infonce_async(self, nce, q, k, queue, shape)
    }
    fn read_stats(&self, nce: &InfoNceBuffers) -> Result<crate::backend::InfoNceStats> {
        nce.read_stats(self)
    }
    fn nce_dq(nce: &InfoNceBuffers) -> &(dyn AsGpuSlice + 'static) {
        &nce.dq
    }
    fn enqueue(&mut self, queue: &mut WgpuQueue, keys: &wgpu::Buffer, shape: &QueueShape) -> Result<usize> {
        super::wgpu::enqueue(self, queue, keys, shape)
    }
    fn v3_buffers(&mut self, n: usize, c: usize) -> Result<WgpuV3Loss> {
        let len = n.checked_mul(c).ok_or_else(|| Error::shape("moco_v3_loss", "N*C that fits usize", format!("N = {n}, C = {c}")))?;
        Ok(WgpuV3Loss { dq1: self.storage_buffer("moco v3 dq1", bytes(len)), dq2: self.storage_buffer("moco v3 dq2", bytes(len)), loss: f32::NAN })
    }
    fn moco_v3_loss(&mut self, out: &mut WgpuV3Loss, q1: &wgpu::Buffer, q2: &wgpu::Buffer, k1: &wgpu::Buffer, k2: &wgpu::Buffer, shape: &SymmetricShape) -> Result<()> {
        // whole allocations of exactly N*C, as on the CPU and CUDA (the low-level function accepts longer buffers)
        shape.check(&[("q1", elems(q1)), ("q2", elems(q2)), ("k1", elems(k1)), ("k2", elems(k2)), ("dq1", elems(&out.dq1)), ("dq2", elems(&out.dq2))])?;
        out.loss = super::wgpu::moco_v3_loss(self, &out.dq1, &out.dq2, q1, q2, k1, k2, shape)?;
        Ok(())
    }
    fn read_v3_loss(&self, out: &WgpuV3Loss) -> Result<f32> {
        Ok(out.loss)
    }
    fn v3_dq1(out: &WgpuV3Loss) -> &(dyn AsGpuSlice + 'static) {
        &out.dq1
    }
    fn v3_dq2(out: &WgpuV3Loss) -> &(dyn AsGpuSlice + 'static) {
        &out.dq2
    }
    fn opt_new(&mut self, config: OptimizerConfig, spans: &ParamSpans) -> Result<WgpuOpt> {
        Ok(match config {
            OptimizerConfig::Sgd(c) => WgpuOpt::Sgd(WgpuSgd::new(self, c, spans.len())?),
            OptimizerConfig::AdamW(c) => WgpuOpt::AdamW(WgpuAdamW::new(self, c, spans.len())?),
            OptimizerConfig::Lars(c) => WgpuOpt::Lars(WgpuLars::new(self, c, spans.clone())?),
        })
    }
    fn opt_step(&mut self, opt: &mut WgpuOpt, params: &mut wgpu::Buffer, grads: &wgpu::Buffer, lr: f64) -> Result<()> {
        match opt {
            WgpuOpt::Sgd(o) => {
                o.set_lr(lr)?;
                o.step(self, params, grads)
            }
            WgpuOpt::AdamW(o) => {
                o.set_lr(lr)?;
                o.step(self, params, grads)
            }
            WgpuOpt::Lars(o) => {
                o.set_lr(lr)?;
                o.step(self, params, grads)
            }
        }
    }
    fn opt_steps(opt: &WgpuOpt) -> u64 {
        match opt {
            WgpuOpt::Sgd(o) => o.steps(),
            WgpuOpt::AdamW(o) => o.steps(),
            WgpuOpt::Lars(o) => o.steps(),
        }
    }
    fn opt_set_steps(opt: &mut WgpuOpt, steps: u64) {
        match opt {
            WgpuOpt::Sgd(o) => o.set_steps(steps),
            WgpuOpt::AdamW(o) => o.set_steps(steps),
            WgpuOpt::Lars(o) => o.set_steps(steps),
        }
    }
    fn opt_read_state(&self, opt: &WgpuOpt) -> Result<Vec<Vec<f32>>> {
        opt.state().into_iter().map(|b| WgpuContext::read(self, b, opt.len())).collect()
    }
    fn opt_write_state(&mut self, opt: &mut WgpuOpt, state: &[Vec<f32>]) -> Result<()> {
        opt.config().check_state(opt.len(), state)?;
        for (b, src) in opt.state().into_iter().zip(state) {
            self.queue.write_buffer(b, 0, bytemuck::cast_slice(src));
        }
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        WgpuContext::synchronize(self)
    }
}
