//! [`Device`] on CUDA: allocations are `CudaSlice`s, views are `CudaView`/`CudaViewMut`s of one allocation, and
//! every kernel is the `backend::cuda::{conv, norm, pool, vit}` function of the same name, launched on [`Cuda::stream`].
//!
//! Compile-checked only: no machine this was written on has a GPU, and the ResNet fixtures have not yet been run
//! through this implementation (the device check of issue 10 is where they will run).

use super::cuda::{conv, norm, optim::{CudaAdamW, CudaLars, CudaSgd}, pool, vit, Cuda, CudaQueue};
use super::device::{check_regions, Device, Epilogue, EpilogueGrad, MocoDevice, Region};
use crate::optim::{OptimizerConfig, ParamSpans};
use crate::shape::{EmaShape, InfoNceShape, QueueDType, QueueShape, SymmetricShape};
use super::BackendKind;
use crate::backend::cpu::nn::{AttentionShape, BatchNormShape, Conv2dShape, EltwiseShape, GlobalAvgPoolShape, LayerNormShape, LinearShape, MaxPool2dShape, PatchShape, TokensShape};
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

fn outside(op: &'static str, len: usize, at: Region) -> Error {
    Error::shape(op, format!("a region inside the {len}-element allocation"), format!("elements {}..{}", at.offset, at.offset.saturating_add(at.len)))
}

/// Splits `v` at `mid` (checked by the caller), both halves living as long as `v` did.
fn split_off<'a>(mut v: CudaViewMut<'a, f32>, mid: usize) -> Result<(CudaViewMut<'a, f32>, CudaViewMut<'a, f32>)> {
    let len = v.len();
    let (a, b) = v.try_split_at_mut(mid).ok_or_else(|| outside("cuda split", len, Region::new(0, mid)))?;
    // SAFETY: a `CudaViewMut` holds a device pointer, a length and shared references to its allocation's events and
    // stream; cudarc copies those references from `v`, so they are valid for `v`'s lifetime, and `CudaViewMut` has
    // no `Drop`. The two halves cover disjoint elements of `v`, which is consumed here, so no other view of those
    // elements exists. Only the borrow of the local `v` in cudarc's signature is lengthened back to `v`'s lifetime.
    Ok(unsafe { (std::mem::transmute::<CudaViewMut<'_, f32>, CudaViewMut<'a, f32>>(a), std::mem::transmute::<CudaViewMut<'_, f32>, CudaViewMut<'a, f32>>(b)) })
}

impl Device for Cuda {
    type Buf = CudaSlice<f32>;
    type IndexBuf = CudaSlice<u32>;
    type Ref<'a> = CudaView<'a, f32>;
    type Mut<'a> = CudaViewMut<'a, f32>;
    type IndexRef<'a> = CudaView<'a, u32>;
    type IndexMut<'a> = CudaViewMut<'a, u32>;
    type Input = CudaSlice<f32>;

    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }
    fn name(&self) -> String {
        Cuda::name(self)
    }

    fn alloc(&mut self, len: usize) -> Result<CudaSlice<f32>> {
        Ok(self.stream.alloc_zeros::<f32>(len)?)
    }
    fn alloc_index(&mut self, len: usize) -> Result<CudaSlice<u32>> {
        Ok(self.stream.alloc_zeros::<u32>(len)?)
    }
    fn upload(&mut self, data: &[f32]) -> Result<CudaSlice<f32>> {
        Ok(self.stream.clone_htod(data)?)
    }
    fn buf_len(buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }
    fn zero(&mut self, buf: &mut CudaSlice<f32>) -> Result<()> {
        Ok(self.stream.memset_zeros(buf)?)
    }
    fn write(&mut self, buf: &mut CudaSlice<f32>, at: Region, data: &[f32]) -> Result<()> {
        crate::error::check_len_eq("cuda write", "data of the region's length", at.len, data.len())?;
        let len = buf.len();
        let mut dst = buf.try_slice_mut(at.range()).ok_or_else(|| outside("cuda write", len, at))?;
        Ok(self.stream.memcpy_htod(data, &mut dst)?)
    }
    fn read(&self, buf: &CudaSlice<f32>, at: Region) -> Result<Vec<f32>> {
        let src = buf.try_slice(at.range()).ok_or_else(|| outside("cuda read", buf.len(), at))?;
        Ok(self.stream.clone_dtoh(&src)?)
    }
    fn copy(&mut self, mut dst: CudaViewMut<'_, f32>, src: CudaView<'_, f32>) -> Result<()> {
        crate::error::check_len_eq("cuda copy", "a destination of the source's length", src.len(), dst.len())?;
        Ok(self.stream.memcpy_dtod(&src, &mut dst)?)
    }

    fn input(x: &CudaSlice<f32>) -> (CudaView<'_, f32>, usize) {
        (x.as_view(), x.len())
    }
    fn view(buf: &CudaSlice<f32>, at: Region) -> Result<CudaView<'_, f32>> {
        buf.try_slice(at.range()).ok_or_else(|| outside("cuda view", buf.len(), at))
    }
    fn split<const W: usize, const R: usize>(buf: &mut CudaSlice<f32>, writes: [Region; W], reads: [Region; R]) -> Result<([CudaViewMut<'_, f32>; W], [CudaView<'_, f32>; R])> {
        check_regions("cuda split", buf.len(), &writes, &reads)?;
        // cut the allocation at the written regions, in offset order; the pieces between them become read-only
        let mut order: [usize; W] = std::array::from_fn(|i| i);
        order.sort_by_key(|&i| writes[i].offset);
        let mut out: [Option<CudaViewMut<'_, f32>>; W] = std::array::from_fn(|_| None);
        let mut gaps: Vec<(usize, CudaView<'_, f32>)> = Vec::with_capacity(W + 1);
        let (mut rest, mut pos) = (buf.as_view_mut(), 0);
        for i in order {
            let start = writes[i].offset.max(pos);
            let (gap, tail) = split_off(rest, start - pos)?;
            gaps.push((pos, gap.into_view()));
            let (w, tail) = split_off(tail, writes[i].len)?;
            out[i] = Some(w);
            (rest, pos) = (tail, start + writes[i].len);
        }
        gaps.push((pos, rest.into_view()));
        let mut err = None;
        let rd = reads.map(|r| {
            let found = gaps.iter().find(|(off, g)| *off <= r.offset && r.offset + r.len <= off + g.len()).and_then(|(off, g)| g.try_slice(r.offset - off..r.offset - off + r.len));
            found.unwrap_or_else(|| {
                err.get_or_insert_with(|| Error::shape("cuda split", "read regions that do not straddle a written one", format!("elements {:?}", r.range())));
                gaps[0].1.slice(0..0)
            })
        });
        if let Some(e) = err {
            return Err(e);
        }
        let w: Vec<CudaViewMut<'_, f32>> = out.into_iter().flatten().collect();
        let w: [CudaViewMut<'_, f32>; W] = w.try_into().map_err(|_| Error::shape("cuda split", format!("{W} written views"), "fewer"))?;
        Ok((w, rd))
    }
    fn index_view(buf: &CudaSlice<u32>, at: Region) -> Result<CudaView<'_, u32>> {
        buf.try_slice(at.range()).ok_or_else(|| outside("cuda index view", buf.len(), at))
    }
    fn index_mut(buf: &mut CudaSlice<u32>, at: Region) -> Result<CudaViewMut<'_, u32>> {
        let len = buf.len();
        buf.try_slice_mut(at.range()).ok_or_else(|| outside("cuda index view", len, at))
    }

    fn conv2d_forward(&mut self, mut out: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, weight: CudaView<'_, f32>, shape: &Conv2dShape) -> Result<()> {
        conv::conv2d_forward(&self.stream, &mut out, &inp, &weight, shape)
    }
    fn conv2d_backward(&mut self, mut dinp: Option<CudaViewMut<'_, f32>>, mut dweight: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, inp: CudaView<'_, f32>, weight: CudaView<'_, f32>, shape: &Conv2dShape) -> Result<()> {
        conv::conv2d_backward(&self.stream, dinp.as_mut(), &mut dweight, &dout, &inp, &weight, shape)
    }
    fn batchnorm_forward_train(&mut self, mut out: CudaViewMut<'_, f32>, mut mean: CudaViewMut<'_, f32>, mut rstd: CudaViewMut<'_, f32>, mut running_mean: CudaViewMut<'_, f32>, mut running_var: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, epilogue: Epilogue<CudaView<'_, f32>>, gamma: Option<CudaView<'_, f32>>, beta: Option<CudaView<'_, f32>>, shape: &BatchNormShape) -> Result<()> {
        let (s, g, b) = (&self.stream, gamma.as_ref(), beta.as_ref());
        match epilogue {
            Epilogue::None => norm::batchnorm_forward_train(s, &mut out, &mut mean, &mut rstd, &mut running_mean, &mut running_var, &inp, g, b, shape),
            Epilogue::Relu => norm::batchnorm_relu_forward_train(s, &mut out, &mut mean, &mut rstd, &mut running_mean, &mut running_var, &inp, g, b, shape),
            Epilogue::AddRelu(id) => norm::batchnorm_add_relu_forward_train(s, &mut out, &mut mean, &mut rstd, &mut running_mean, &mut running_var, &inp, &id, g, b, shape),
        }
    }
    fn batchnorm_forward_eval(&mut self, mut out: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, epilogue: Epilogue<CudaView<'_, f32>>, running_mean: CudaView<'_, f32>, running_var: CudaView<'_, f32>, gamma: Option<CudaView<'_, f32>>, beta: Option<CudaView<'_, f32>>, shape: &BatchNormShape) -> Result<()> {
        let (s, g, b) = (&self.stream, gamma.as_ref(), beta.as_ref());
        match epilogue {
            Epilogue::None => norm::batchnorm_forward_eval(s, &mut out, &inp, &running_mean, &running_var, g, b, shape),
            Epilogue::Relu => norm::batchnorm_relu_forward_eval(s, &mut out, &inp, &running_mean, &running_var, g, b, shape),
            Epilogue::AddRelu(id) => norm::batchnorm_add_relu_forward_eval(s, &mut out, &inp, &id, &running_mean, &running_var, g, b, shape),
        }
    }
    fn batchnorm_backward<'a>(&mut self, mut dinp: CudaViewMut<'a, f32>, epilogue: EpilogueGrad<CudaView<'a, f32>, CudaViewMut<'a, f32>>, mut dgamma: Option<CudaViewMut<'a, f32>>, mut dbeta: Option<CudaViewMut<'a, f32>>, dout: CudaView<'a, f32>, inp: CudaView<'a, f32>, mean: CudaView<'a, f32>, rstd: CudaView<'a, f32>, gamma: Option<CudaView<'a, f32>>, shape: &BatchNormShape) -> Result<()> {
        let (s, dg, db, g) = (&self.stream, dgamma.as_mut(), dbeta.as_mut(), gamma.as_ref());
        match epilogue {
            EpilogueGrad::None => norm::batchnorm_backward(s, &mut dinp, dg, db, &dout, &inp, &mean, &rstd, g, shape),
            EpilogueGrad::Relu { out } => norm::batchnorm_relu_backward(s, &mut dinp, dg, db, &dout, &out, &inp, &mean, &rstd, g, shape),
            EpilogueGrad::AddRelu { out, mut didentity } => norm::batchnorm_add_relu_backward(s, &mut dinp, &mut didentity, dg, db, &dout, &out, &inp, &mean, &rstd, g, shape),
        }
    }
    fn maxpool2d_forward(&mut self, mut out: CudaViewMut<'_, f32>, mut argmax: CudaViewMut<'_, u32>, inp: CudaView<'_, f32>, shape: &MaxPool2dShape) -> Result<()> {
        pool::maxpool2d_forward(&self.stream, &mut out, &mut argmax, &inp, shape)
    }
    fn maxpool2d_backward(&mut self, mut dinp: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, argmax: CudaView<'_, u32>, shape: &MaxPool2dShape) -> Result<()> {
        pool::maxpool2d_backward(&self.stream, &mut dinp, &dout, &argmax, shape)
    }
    fn global_avgpool_forward(&mut self, mut out: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, shape: &GlobalAvgPoolShape) -> Result<()> {
        pool::global_avgpool_forward(&self.stream, &mut out, &inp, shape)
    }
    fn global_avgpool_backward(&mut self, mut dinp: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, shape: &GlobalAvgPoolShape) -> Result<()> {
        pool::global_avgpool_backward(&self.stream, &mut dinp, &dout, shape)
    }
    fn linear_forward(&mut self, mut out: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, weight: CudaView<'_, f32>, bias: Option<CudaView<'_, f32>>, shape: &LinearShape) -> Result<()> {
        pool::linear_forward(&self.stream, &mut out, &inp, &weight, bias.as_ref(), shape)
    }
    fn linear_backward(&mut self, mut dinp: Option<CudaViewMut<'_, f32>>, mut dweight: CudaViewMut<'_, f32>, mut dbias: Option<CudaViewMut<'_, f32>>, dout: CudaView<'_, f32>, inp: CudaView<'_, f32>, weight: CudaView<'_, f32>, shape: &LinearShape) -> Result<()> {
        pool::linear_backward(&self.stream, dinp.as_mut(), &mut dweight, dbias.as_mut(), &dout, &inp, &weight, shape)
    }
    fn relu_forward(&mut self, mut out: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, shape: &EltwiseShape) -> Result<()> {
        pool::relu_forward(&self.stream, &mut out, &inp, shape)
    }
    fn relu_backward(&mut self, mut dinp: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, out: CudaView<'_, f32>, shape: &EltwiseShape) -> Result<()> {
        pool::relu_backward(&self.stream, &mut dinp, &dout, &out, shape)
    }
    fn add_forward(&mut self, mut out: CudaViewMut<'_, f32>, a: CudaView<'_, f32>, b: CudaView<'_, f32>, shape: &EltwiseShape) -> Result<()> {
        pool::add_forward(&self.stream, &mut out, &a, &b, shape)
    }
    fn add_backward(&mut self, mut da: CudaViewMut<'_, f32>, mut db: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, shape: &EltwiseShape) -> Result<()> {
        vit::add_backward(&self.stream, &mut da, &mut db, &dout, shape)
    }
    fn layernorm_forward(&mut self, mut out: CudaViewMut<'_, f32>, mut mean: CudaViewMut<'_, f32>, mut rstd: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, gamma: CudaView<'_, f32>, beta: CudaView<'_, f32>, shape: &LayerNormShape) -> Result<()> {
        vit::layernorm_forward(&self.stream, &mut out, &mut mean, &mut rstd, &inp, &gamma, &beta, shape)
    }
    fn layernorm_backward(&mut self, mut dinp: CudaViewMut<'_, f32>, mut dgamma: CudaViewMut<'_, f32>, mut dbeta: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, inp: CudaView<'_, f32>, gamma: CudaView<'_, f32>, mean: CudaView<'_, f32>, rstd: CudaView<'_, f32>, shape: &LayerNormShape) -> Result<()> {
        vit::layernorm_backward(&self.stream, &mut dinp, &mut dgamma, &mut dbeta, &dout, &inp, &gamma, &mean, &rstd, shape)
    }
    fn gelu_forward(&mut self, mut out: CudaViewMut<'_, f32>, inp: CudaView<'_, f32>, shape: &EltwiseShape) -> Result<()> {
        vit::gelu_forward(&self.stream, &mut out, &inp, shape)
    }
    fn gelu_backward(&mut self, mut dinp: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, inp: CudaView<'_, f32>, shape: &EltwiseShape) -> Result<()> {
        vit::gelu_backward(&self.stream, &mut dinp, &dout, &inp, shape)
    }
    fn attention_forward(&mut self, mut out: CudaViewMut<'_, f32>, mut att: CudaViewMut<'_, f32>, qkv: CudaView<'_, f32>, shape: &AttentionShape) -> Result<()> {
        vit::attention_forward(&self.stream, &mut out, &mut att, &qkv, shape)
    }
    fn attention_backward(&mut self, mut dqkv: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, qkv: CudaView<'_, f32>, att: CudaView<'_, f32>, shape: &AttentionShape) -> Result<()> {
        // the device's one ds [B, H, T, T] scratch, grown on demand
        let mut ds = self.attn_ds.get(&self.stream, shape.att_len())?;
        vit::attention_backward(&self.stream, &mut dqkv, &mut ds, &dout, &qkv, &att, shape)
    }
    fn patch_im2col(&mut self, mut cols: CudaViewMut<'_, f32>, images: CudaView<'_, f32>, shape: &PatchShape) -> Result<()> {
        vit::patch_im2col(&self.stream, &mut cols, &images, shape)
    }
    fn patch_im2col_backward(&mut self, mut dimages: CudaViewMut<'_, f32>, dcols: CudaView<'_, f32>, shape: &PatchShape) -> Result<()> {
        vit::patch_im2col_backward(&self.stream, &mut dimages, &dcols, shape)
    }
    fn tokens_forward(&mut self, mut tokens: CudaViewMut<'_, f32>, patches: CudaView<'_, f32>, cls: CudaView<'_, f32>, pos: CudaView<'_, f32>, shape: &TokensShape) -> Result<()> {
        vit::tokens_forward(&self.stream, &mut tokens, &patches, &cls, &pos, shape)
    }
    fn tokens_backward(&mut self, mut dpatches: Option<CudaViewMut<'_, f32>>, mut dcls: Option<CudaViewMut<'_, f32>>, dtokens: CudaView<'_, f32>, shape: &TokensShape) -> Result<()> {
        vit::tokens_backward(&self.stream, dpatches.as_mut(), dcls.as_mut(), &dtokens, shape)
    }
    fn cls_select_forward(&mut self, mut out: CudaViewMut<'_, f32>, tokens: CudaView<'_, f32>, shape: &TokensShape) -> Result<()> {
        vit::cls_select_forward(&self.stream, &mut out, &tokens, shape)
    }
    fn cls_select_backward(&mut self, mut dtokens: CudaViewMut<'_, f32>, dout: CudaView<'_, f32>, shape: &TokensShape) -> Result<()> {
        vit::cls_select_backward(&self.stream, &mut dtokens, &dout, shape)
    }
}

/// The InfoNCE outputs on CUDA: `dq [N, C]`, the per-row loss `[N]` and the four stats words.
#[derive(Debug)]
pub struct CudaNce {
    /// Gradient w.r.t. raw q.
    pub dq: CudaSlice<f32>,
    /// Per-row loss.
    pub row_loss: CudaSlice<f32>,
    /// `[loss bits, top1, top5, pad]`.
    pub stats: CudaSlice<u32>,
}

/// The MoCo v3 loss outputs on CUDA: `dq1, dq2 [N, C]` on the device and the loss that
/// [`super::cuda::moco_v3_loss`] returned (it waits).
#[derive(Debug)]
pub struct CudaV3Loss {
    /// Gradient w.r.t. raw q1.
    pub dq1: CudaSlice<f32>,
    /// Gradient w.r.t. raw q2.
    pub dq2: CudaSlice<f32>,
    /// The loss of the last call (NaN before the first).
    pub loss: f32,
}

/// An optimiser on CUDA: [`CudaSgd`], [`CudaAdamW`] or [`CudaLars`].
#[derive(Debug)]
pub enum CudaOpt {
    /// SGD.
    Sgd(CudaSgd),
    /// AdamW.
    AdamW(CudaAdamW),
    /// LARS.
    Lars(CudaLars),
}

impl CudaOpt {
    /// The configuration.
    pub fn config(&self) -> OptimizerConfig {
        match self {
            CudaOpt::Sgd(o) => OptimizerConfig::Sgd(*o.config()),
            CudaOpt::AdamW(o) => OptimizerConfig::AdamW(*o.config()),
            CudaOpt::Lars(o) => OptimizerConfig::Lars(*o.config()),
        }
    }
    /// The state buffers in [`OptimizerConfig::state_names`] order, each `[len]`.
    pub fn state(&self) -> Vec<&CudaSlice<f32>> {
        let named = match self {
            CudaOpt::Sgd(o) => o.state(),
            CudaOpt::AdamW(o) => o.state(),
            CudaOpt::Lars(o) => o.state(),
        };
        named.into_iter().map(|(_, b)| b).collect()
    }
    /// The same, writable.
    pub fn state_mut(&mut self) -> Vec<&mut CudaSlice<f32>> {
        let named = match self {
            CudaOpt::Sgd(o) => o.state_mut(),
            CudaOpt::AdamW(o) => o.state_mut(),
            CudaOpt::Lars(o) => o.state_mut(),
        };
        named.into_iter().map(|(_, b)| b).collect()
    }
}

impl MocoDevice for Cuda {
    type Queue = CudaQueue;
    type Nce = CudaNce;
    type V3Loss = CudaV3Loss;
    type Opt = CudaOpt;

    fn queue_from_f32(&mut self, data: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<CudaQueue> {
        CudaQueue::from_f32(&self.stream, data, k, c, dtype)
    }
    fn queue_to_f32(&self, queue: &CudaQueue) -> Result<Vec<f32>> {
        queue.to_f32(&self.stream)
    }
    fn ema_update(&mut self, k: &mut CudaSlice<f32>, q: &CudaSlice<f32>, momentum: f64) -> Result<()> {
        super::cuda::ema_update(&self.stream, k, q, &EmaShape::new(q.len(), momentum)?)
    }
    fn nce_buffers(&mut self, n: usize, c: usize) -> Result<CudaNce> {
        Ok(CudaNce { dq: self.stream.alloc_zeros::<f32>(n * c)?, row_loss: self.stream.alloc_zeros::<f32>(n)?, stats: self.stream.alloc_zeros::<u32>(super::cuda::STATS_WORDS)? })
    }
    fn infonce(&mut self, nce: &mut CudaNce, q: &CudaSlice<f32>, k: &CudaSlice<f32>, queue: &CudaQueue, shape: &InfoNceShape) -> Result<()> {
        super::cuda::infonce_async(&self.stream, &mut nce.dq, &mut nce.row_loss, &mut nce.stats, q, k, queue, shape)
    }
    fn read_stats(&self, nce: &CudaNce) -> Result<crate::backend::InfoNceStats> {
        super::cuda::read_stats(&self.stream, &nce.stats)
    }
    fn nce_dq(nce: &CudaNce) -> &CudaSlice<f32> {
        &nce.dq
    }
    fn enqueue(&mut self, queue: &mut CudaQueue, keys: &CudaSlice<f32>, shape: &QueueShape) -> Result<usize> {
        super::cuda::enqueue(&self.stream, queue, keys, shape)
    }
    fn v3_buffers(&mut self, n: usize, c: usize) -> Result<CudaV3Loss> {
        let len = n.checked_mul(c).ok_or_else(|| Error::shape("moco_v3_loss", "N*C that fits usize", format!("N = {n}, C = {c}")))?;
        Ok(CudaV3Loss { dq1: self.stream.alloc_zeros::<f32>(len)?, dq2: self.stream.alloc_zeros::<f32>(len)?, loss: f32::NAN })
    }
    fn moco_v3_loss(&mut self, out: &mut CudaV3Loss, q1: &CudaSlice<f32>, q2: &CudaSlice<f32>, k1: &CudaSlice<f32>, k2: &CudaSlice<f32>, shape: &SymmetricShape) -> Result<()> {
        out.loss = super::cuda::moco_v3_loss(&self.stream, &mut out.dq1, &mut out.dq2, q1, q2, k1, k2, shape)?;
        Ok(())
    }
    fn read_v3_loss(&self, out: &CudaV3Loss) -> Result<f32> {
        Ok(out.loss)
    }
    fn v3_dq1(out: &CudaV3Loss) -> &CudaSlice<f32> {
        &out.dq1
    }
    fn v3_dq2(out: &CudaV3Loss) -> &CudaSlice<f32> {
        &out.dq2
    }
    fn opt_new(&mut self, config: OptimizerConfig, spans: &ParamSpans) -> Result<CudaOpt> {
        Ok(match config {
            OptimizerConfig::Sgd(c) => CudaOpt::Sgd(CudaSgd::new(&self.stream, c, spans.len())?),
            OptimizerConfig::AdamW(c) => CudaOpt::AdamW(CudaAdamW::new(&self.stream, c, spans.len())?),
            OptimizerConfig::Lars(c) => CudaOpt::Lars(CudaLars::new(&self.stream, c, spans.clone())?),
        })
    }
    fn opt_step(&mut self, opt: &mut CudaOpt, params: &mut CudaSlice<f32>, grads: &CudaSlice<f32>, lr: f64) -> Result<()> {
        let (p, g) = (&mut params.as_view_mut(), &grads.as_view());
        match opt {
            CudaOpt::Sgd(o) => {
                o.set_lr(lr)?;
                o.step(&self.stream, p, g)
            }
            CudaOpt::AdamW(o) => {
                o.set_lr(lr)?;
                o.step(&self.stream, p, g)
            }
            CudaOpt::Lars(o) => {
                o.set_lr(lr)?;
                o.step(&self.stream, p, g)
            }
        }
    }
    fn opt_steps(opt: &CudaOpt) -> u64 {
        match opt {
            CudaOpt::Sgd(o) => o.steps(),
            CudaOpt::AdamW(o) => o.steps(),
            CudaOpt::Lars(o) => o.steps(),
        }
    }
    fn opt_set_steps(opt: &mut CudaOpt, steps: u64) {
        match opt {
            CudaOpt::Sgd(o) => o.set_steps(steps),
            CudaOpt::AdamW(o) => o.set_steps(steps),
            CudaOpt::Lars(o) => o.set_steps(steps),
        }
    }
    fn opt_read_state(&self, opt: &CudaOpt) -> Result<Vec<Vec<f32>>> {
        opt.state().into_iter().map(|b| Ok(self.stream.clone_dtoh(b)?)).collect()
    }
    fn opt_write_state(&mut self, opt: &mut CudaOpt, state: &[Vec<f32>]) -> Result<()> {
        // every state buffer is `[len]`; SGD without momentum has none (and expects none)
        let len = opt.state().first().map_or(0, |b| b.len());
        opt.config().check_state(len, state)?;
        for (b, src) in opt.state_mut().into_iter().zip(state) {
            self.stream.memcpy_htod(src, b)?;
        }
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Cuda::synchronize(self)
    }
}
