//! [`Device`]: the layer kernels a network plan needs, on regions of device allocations. One executor
//! ([`crate::nn::ResNet`]) runs a plan on any implementation: [`CpuDevice`](super::CpuDevice) (CPU slices),
//! [`WgpuContext`](super::wgpu::WgpuContext) (`GpuSlice`s) and, with the `cuda` feature,
//! [`Cuda`](super::cuda::Cuda) (`CudaView`/`CudaViewMut`s of one allocation). Each implementation
//! only forwards to its backend's low-level functions (`backend::cpu::nn`, `backend::wgpu::{conv, norm, pool}`,
//! `backend::cuda::{conv, norm, pool}`), which stay public for frameworks that own their memory.
//!
//! Why a trait beside [`super::Backend`] rather than more methods on it: the layer kernels address *regions of
//! one allocation* (an output region and an input region of the activation buffer in one call), so they take
//! views made by [`Device::split`] (written regions, checked disjoint from every other region of the call) rather
//! than whole borrowed buffers; and they need per-device mutable state (the CPU's convolution scratch, reused
//! across calls), hence `&mut self`, where `Backend` is `&self` on a unit `Cpu`.
//!
//! Backward kernels accumulate into their input gradients (`dinp += ...`, llm.c style), so a region read by two
//! nodes (a residual block's input) gets both contributions; the executor zeroes the gradient allocation once.
//!
//! [`MocoDevice`], a companion trait, adds what the MoCo step needs beyond the layers (queue, EMA, fused InfoNCE,
//! the v3 symmetric loss, enqueue, the optimisers), so [`crate::train::MocoEngine`] writes the step once for every device.
//!
//! The ViT's kernels (layer norm, GELU, the attention core, the patch im2col, token assembly and the cls feature,
//! the residual add's backward) take the same view arguments as ResNet's.

use super::BackendKind;
use crate::backend::cpu::nn::{AttentionShape, BatchNormShape, Conv2dShape, EltwiseShape, GlobalAvgPoolShape, LayerNormShape, LinearShape, MaxPool2dShape, PatchShape, TokensShape};
use crate::error::{Error, Result};

/// A region of an allocation, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First element.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl Region {
    /// `len` elements from `offset`.
    pub fn new(offset: usize, len: usize) -> Self {
        Self { offset, len }
    }
    /// The element range.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
    /// Whether the two regions share an element.
    pub fn overlaps(&self, other: &Region) -> bool {
        self.len > 0 && other.len > 0 && self.offset < other.offset + other.len && other.offset < self.offset + self.len
    }
}

/// What a batch-norm kernel does after normalising: nothing, ReLU, or add a residual (`identity`) then ReLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue<T> {
    /// `out = bn(inp)`.
    None,
    /// `out = relu(bn(inp))`.
    Relu,
    /// `out = relu(bn(inp) + identity)`.
    AddRelu(T),
}

impl<T> Epilogue<T> {
    /// The same epilogue with the identity replaced by `f(identity)`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Epilogue<U> {
        match self {
            Epilogue::None => Epilogue::None,
            Epilogue::Relu => Epilogue::Relu,
            Epilogue::AddRelu(t) => Epilogue::AddRelu(f(t)),
        }
    }
}

/// The batch-norm backward's view of its epilogue: what it re-reads (`out` after a ReLU) and where the residual's
/// gradient goes (`didentity`, accumulated).
pub enum EpilogueGrad<R, M> {
    /// No epilogue.
    None,
    /// ReLU: the forward output `out`.
    Relu {
        /// Forward output.
        out: R,
    },
    /// Add + ReLU: the forward output and the identity's gradient (accumulated).
    AddRelu {
        /// Forward output.
        out: R,
        /// Gradient of the residual input (`+=`).
        didentity: M,
    },
}

/// Checks that every region lies inside an allocation of `len` elements and that no written region overlaps any
/// other region of the call (reads may overlap each other).
pub fn check_regions(op: &'static str, len: usize, writes: &[Region], reads: &[Region]) -> Result<()> {
    for r in writes.iter().chain(reads) {
        if r.offset.checked_add(r.len).is_none_or(|end| end > len) {
            return Err(Error::shape(op, format!("regions inside the {len}-element allocation"), format!("elements {}..{}", r.offset, r.offset.saturating_add(r.len))));
        }
    }
    for (i, w) in writes.iter().enumerate() {
        if let Some(o) = writes[i + 1..].iter().chain(reads).find(|o| w.overlaps(o)) {
            return Err(Error::shape(op, "a written region disjoint from every other region of the call", format!("elements {:?} and {:?} overlap", w.range(), o.range())));
        }
    }
    Ok(())
}

/// The layer kernels of a network plan, on views of device allocations.
///
/// Memory: `Buf` is one f32 allocation (parameters, gradients, activations), `IndexBuf` one u32 allocation (the
/// max-pool argmax). A kernel reads [`Device::Ref`] views and writes [`Device::Mut`] views; [`Device::split`]
/// makes both from one allocation at once, after checking that the written regions are disjoint from every other
/// region it hands out, so one call can read one region of the activation buffer and write another.
///
/// Shapes are the validated problem descriptions of [`crate::backend::cpu::nn`], shared by every backend; each
/// kernel checks its views' lengths against them and returns [`Error`] rather than panicking.
pub trait Device {
    /// One f32 allocation (`Vec<f32>`, `wgpu::Buffer`, `CudaSlice<f32>`).
    type Buf;
    /// One u32 allocation.
    type IndexBuf;
    /// A read-only region of a [`Device::Buf`] (`&[f32]`, `GpuSlice`, `CudaView<f32>`).
    type Ref<'a>
    where
        Self: 'a;
    /// A written region of a [`Device::Buf`] (`&mut [f32]`, `GpuSlice`, `CudaViewMut<f32>`).
    type Mut<'a>
    where
        Self: 'a;
    /// A read-only region of a [`Device::IndexBuf`].
    type IndexRef<'a>
    where
        Self: 'a;
    /// A written region of a [`Device::IndexBuf`].
    type IndexMut<'a>
    where
        Self: 'a;
    /// What a caller hands a network as its input or output gradient (`[f32]` on the CPU, a `wgpu::Buffer` or
    /// `GpuSlice` on wgpu as `dyn AsGpuSlice`).
    type Input: ?Sized;

    /// Which kind of device this is.
    fn kind(&self) -> BackendKind;
    /// Human-readable device name.
    fn name(&self) -> String;

    // ---- memory ----

    /// A zero-filled allocation of `len` f32.
    fn alloc(&mut self, len: usize) -> Result<Self::Buf>;
    /// A zero-filled allocation of `len` u32.
    fn alloc_index(&mut self, len: usize) -> Result<Self::IndexBuf>;
    /// An allocation holding `data`.
    fn upload(&mut self, data: &[f32]) -> Result<Self::Buf>;
    /// Elements of an allocation.
    fn buf_len(buf: &Self::Buf) -> usize;
    /// Sets every element of `buf` to zero.
    fn zero(&mut self, buf: &mut Self::Buf) -> Result<()>;
    /// Copies `data` from the host into region `at` of `buf` (`data.len() == at.len`).
    fn write(&mut self, buf: &mut Self::Buf, at: Region, data: &[f32]) -> Result<()>;
    /// Copies region `at` of `buf` to the host.
    fn read(&self, buf: &Self::Buf, at: Region) -> Result<Vec<f32>>;
    /// Device-side copy, `dst.len() == src.len()`.
    fn copy(&mut self, dst: Self::Mut<'_>, src: Self::Ref<'_>) -> Result<()>;

    // ---- views ----

    /// The caller's input as a view, and its length in elements.
    fn input(x: &Self::Input) -> (Self::Ref<'_>, usize);
    /// A read-only view of region `at` of `buf`.
    fn view(buf: &Self::Buf, at: Region) -> Result<Self::Ref<'_>>;
    /// Views of `buf`: the `writes` regions writable, the `reads` regions read-only. Every region must lie inside
    /// `buf`, and no written region may overlap another region of the call ([`check_regions`]).
    #[allow(clippy::type_complexity)]
    fn split<const W: usize, const R: usize>(buf: &mut Self::Buf, writes: [Region; W], reads: [Region; R]) -> Result<([Self::Mut<'_>; W], [Self::Ref<'_>; R])>;
    /// A read-only view of region `at` of an index allocation.
    fn index_view(buf: &Self::IndexBuf, at: Region) -> Result<Self::IndexRef<'_>>;
    /// A writable view of region `at` of an index allocation.
    fn index_mut(buf: &mut Self::IndexBuf, at: Region) -> Result<Self::IndexMut<'_>>;

    // ---- layers: `out` first, inputs after, shape last ----

    /// `out[N, Co, Ho, Wo] = conv2d(inp[N, Ci, H, W], weight[Co, Ci, Kh, Kw])` (no bias).
    fn conv2d_forward(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, weight: Self::Ref<'_>, shape: &Conv2dShape) -> Result<()>;
    /// [`Device::conv2d_forward`] for a network no backward pass runs through (a momentum encoder, embeddings):
    /// a device may then pick a faster algorithm whose rounding error would upset gradients (the CPU's
    /// F(4x4, 3x3)). The default is `conv2d_forward`.
    fn conv2d_forward_no_grad(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, weight: Self::Ref<'_>, shape: &Conv2dShape) -> Result<()> {
        self.conv2d_forward(out, inp, weight, shape)
    }
    /// Convolution backward: data (`dinp += ...`, skipped when `None`) and weight (`dweight += ...`).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward(&mut self, dinp: Option<Self::Mut<'_>>, dweight: Self::Mut<'_>, dout: Self::Ref<'_>, inp: Self::Ref<'_>, weight: Self::Ref<'_>, shape: &Conv2dShape) -> Result<()>;
    /// Training-mode batch norm (SplitBatchNorm when `shape.groups > 1`) with its epilogue: writes `out` and the
    /// per-(group, channel) `mean`, `rstd` that backward reads, and updates the running statistics.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward_train(&mut self, out: Self::Mut<'_>, mean: Self::Mut<'_>, rstd: Self::Mut<'_>, running_mean: Self::Mut<'_>, running_var: Self::Mut<'_>, inp: Self::Ref<'_>, epilogue: Epilogue<Self::Ref<'_>>, gamma: Option<Self::Ref<'_>>, beta: Option<Self::Ref<'_>>, shape: &BatchNormShape) -> Result<()>;
    /// Eval-mode batch norm (running statistics) with its epilogue.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward_eval(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, epilogue: Epilogue<Self::Ref<'_>>, running_mean: Self::Ref<'_>, running_var: Self::Ref<'_>, gamma: Option<Self::Ref<'_>>, beta: Option<Self::Ref<'_>>, shape: &BatchNormShape) -> Result<()>;
    /// Batch-norm backward through its epilogue: `dinp`, `dgamma`, `dbeta` (and the identity's gradient) `+=`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward<'a>(&mut self, dinp: Self::Mut<'a>, epilogue: EpilogueGrad<Self::Ref<'a>, Self::Mut<'a>>, dgamma: Option<Self::Mut<'a>>, dbeta: Option<Self::Mut<'a>>, dout: Self::Ref<'a>, inp: Self::Ref<'a>, mean: Self::Ref<'a>, rstd: Self::Ref<'a>, gamma: Option<Self::Ref<'a>>, shape: &BatchNormShape) -> Result<()>;
    /// Max pooling, recording the argmax (flat input index) of every output.
    fn maxpool2d_forward(&mut self, out: Self::Mut<'_>, argmax: Self::IndexMut<'_>, inp: Self::Ref<'_>, shape: &MaxPool2dShape) -> Result<()>;
    /// Max-pool backward: `dinp[argmax] += dout`.
    fn maxpool2d_backward(&mut self, dinp: Self::Mut<'_>, dout: Self::Ref<'_>, argmax: Self::IndexRef<'_>, shape: &MaxPool2dShape) -> Result<()>;
    /// `out[N, C]` = mean over H*W of `inp[N, C, H*W]`.
    fn global_avgpool_forward(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, shape: &GlobalAvgPoolShape) -> Result<()>;
    /// Global average pool backward (`dinp +=`).
    fn global_avgpool_backward(&mut self, dinp: Self::Mut<'_>, dout: Self::Ref<'_>, shape: &GlobalAvgPoolShape) -> Result<()>;
    /// `out[N, O] = inp[N, I] weight[O, I]^T + bias[O]`.
    fn linear_forward(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, weight: Self::Ref<'_>, bias: Option<Self::Ref<'_>>, shape: &LinearShape) -> Result<()>;
    /// Linear backward: `dinp`, `dweight`, `dbias` `+=` (`dinp`, `dbias` skipped when `None`).
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(&mut self, dinp: Option<Self::Mut<'_>>, dweight: Self::Mut<'_>, dbias: Option<Self::Mut<'_>>, dout: Self::Ref<'_>, inp: Self::Ref<'_>, weight: Self::Ref<'_>, shape: &LinearShape) -> Result<()>;
    /// `out = max(inp, 0)`.
    fn relu_forward(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, shape: &EltwiseShape) -> Result<()>;
    /// `dinp += dout * (out > 0)`.
    fn relu_backward(&mut self, dinp: Self::Mut<'_>, dout: Self::Ref<'_>, out: Self::Ref<'_>, shape: &EltwiseShape) -> Result<()>;
    /// `out = a + b`.
    fn add_forward(&mut self, out: Self::Mut<'_>, a: Self::Ref<'_>, b: Self::Ref<'_>, shape: &EltwiseShape) -> Result<()>;
    /// `da += dout`, `db += dout`.
    fn add_backward(&mut self, da: Self::Mut<'_>, db: Self::Mut<'_>, dout: Self::Ref<'_>, shape: &EltwiseShape) -> Result<()>;

    // ---- ViT ----

    /// `out[R, C] = layernorm(inp) * gamma + beta`, saving `mean, rstd: [R]`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(&mut self, out: Self::Mut<'_>, mean: Self::Mut<'_>, rstd: Self::Mut<'_>, inp: Self::Ref<'_>, gamma: Self::Ref<'_>, beta: Self::Ref<'_>, shape: &LayerNormShape) -> Result<()>;
    /// Layer-norm backward: `dinp`, `dgamma`, `dbeta` `+=`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(&mut self, dinp: Self::Mut<'_>, dgamma: Self::Mut<'_>, dbeta: Self::Mut<'_>, dout: Self::Ref<'_>, inp: Self::Ref<'_>, gamma: Self::Ref<'_>, mean: Self::Ref<'_>, rstd: Self::Ref<'_>, shape: &LayerNormShape) -> Result<()>;
    /// `out = gelu(inp)` (exact, erf).
    fn gelu_forward(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, shape: &EltwiseShape) -> Result<()>;
    /// `dinp += dout * gelu'(inp)`.
    fn gelu_backward(&mut self, dinp: Self::Mut<'_>, dout: Self::Ref<'_>, inp: Self::Ref<'_>, shape: &EltwiseShape) -> Result<()>;
    /// Attention core: `out [B, T, H*D]` and the saved probabilities `att [B, H, T, T]` from `qkv [B, T, 3, H, D]`.
    fn attention_forward(&mut self, out: Self::Mut<'_>, att: Self::Mut<'_>, qkv: Self::Ref<'_>, shape: &AttentionShape) -> Result<()>;
    /// Attention backward: `dqkv +=`.
    fn attention_backward(&mut self, dqkv: Self::Mut<'_>, dout: Self::Ref<'_>, qkv: Self::Ref<'_>, att: Self::Ref<'_>, shape: &AttentionShape) -> Result<()>;
    /// Patch im2col: `cols [B*P, C*p*p]` from `images [B, C, H, W]`.
    fn patch_im2col(&mut self, cols: Self::Mut<'_>, images: Self::Ref<'_>, shape: &PatchShape) -> Result<()>;
    /// Patch im2col backward: `dimages +=`.
    fn patch_im2col_backward(&mut self, dimages: Self::Mut<'_>, dcols: Self::Ref<'_>, shape: &PatchShape) -> Result<()>;
    /// Token assembly: `tokens [B, T, C]` from the cls token, the patch tokens `[B*P, C]` and `pos [T, C]`.
    fn tokens_forward(&mut self, tokens: Self::Mut<'_>, patches: Self::Ref<'_>, cls: Self::Ref<'_>, pos: Self::Ref<'_>, shape: &TokensShape) -> Result<()>;
    /// Token assembly backward: `dpatches`, `dcls` `+=` (each skipped when `None`).
    fn tokens_backward(&mut self, dpatches: Option<Self::Mut<'_>>, dcls: Option<Self::Mut<'_>>, dtokens: Self::Ref<'_>, shape: &TokensShape) -> Result<()>;
    /// The cls feature `out [B, C] = tokens[:, 0]`.
    fn cls_select_forward(&mut self, out: Self::Mut<'_>, tokens: Self::Ref<'_>, shape: &TokensShape) -> Result<()>;
    /// `dtokens[:, 0] += dout`.
    fn cls_select_backward(&mut self, dtokens: Self::Mut<'_>, dout: Self::Ref<'_>, shape: &TokensShape) -> Result<()>;
}

/// What a MoCo step needs from a device beyond the layers: the queue, the EMA over a whole flat allocation, the
/// fused InfoNCE forward + backward (v1/v2), the fused symmetric loss (v3), the enqueue and the optimiser step,
/// each forwarding to the backend's existing low-level function:
///
/// | op | CPU | wgpu | CUDA |
/// |---|---|---|---|
/// | EMA, InfoNCE, enqueue | `backend::cpu::{ema_update, infonce, enqueue}` | `backend::wgpu::{ema_update, infonce_async, enqueue}` | `backend::cuda::{ema_update, infonce_async, enqueue}` |
/// | v3 loss | `backend::cpu::moco_v3_loss` | `backend::wgpu::moco_v3_loss` | `backend::cuda::moco_v3_loss` |
/// | optimiser | [`crate::optim::{Sgd, AdamW, Lars}`](crate::optim) | `backend::wgpu::optim::{WgpuSgd, WgpuAdamW, WgpuLars}` | `backend::cuda::optim::{CudaSgd, CudaAdamW, CudaLars}` |
///
/// [`crate::train::MocoEngine`] writes the step once over it.
///
/// A companion of [`Device`] rather than more methods on it: these ops carry per-backend state types (the queue
/// with its storage dtype, the loss outputs, the optimiser and its state) that the layer executor never needs, so
/// [`crate::nn::ResNet`] keeps its bound to the layer kernels, and a framework that only runs networks does not
/// implement the trainer's ops. Every [`Device`] of the crate implements both.
pub trait MocoDevice: Device + Clone {
    /// A queue `[K, C]` of keys in its storage dtype.
    type Queue;
    /// The outputs of the fused InfoNCE: `dq [N, C]` (the query encoder's output gradient), the per-row loss and
    /// the statistics (on the device until [`MocoDevice::read_stats`]).
    type Nce;
    /// The outputs of the MoCo v3 symmetric loss: `dq1, dq2 [N, C]` on the device, and the loss (see
    /// [`MocoDevice::moco_v3_loss`]).
    type V3Loss;
    /// An optimiser (SGD, AdamW or LARS, [`crate::optim::OptimizerConfig`]) over one flat parameter allocation,
    /// with its state tensors on the device and its step count.
    type Opt;

    /// A queue of `k` keys of `c` features holding `data` (`[K, C]`) converted to `dtype`.
    fn queue_from_f32(&mut self, data: &[f32], k: usize, c: usize, dtype: crate::shape::QueueDType) -> Result<Self::Queue>;
    /// The queue's contents as f32 `[K, C]`.
    fn queue_to_f32(&self, queue: &Self::Queue) -> Result<Vec<f32>>;
    /// `k = m*k + (1-m)*q` over the whole allocations (`1 - m` taken in f64).
    fn ema_update(&mut self, k: &mut Self::Buf, q: &Self::Buf, momentum: f64) -> Result<()>;
    /// InfoNCE outputs for batch `n`, dimension `c`.
    fn nce_buffers(&mut self, n: usize, c: usize) -> Result<Self::Nce>;
    /// Fused streaming InfoNCE forward + backward of raw `q, k: [N, C]` (whole allocations) against `queue`; the
    /// results stay in `nce` (no host sync on a GPU).
    fn infonce(&mut self, nce: &mut Self::Nce, q: &Self::Buf, k: &Self::Buf, queue: &Self::Queue, shape: &crate::shape::InfoNceShape) -> Result<()>;
    /// The loss and accuracy counts of the last [`MocoDevice::infonce`] (the step's host sync).
    fn read_stats(&self, nce: &Self::Nce) -> Result<crate::backend::InfoNceStats>;
    /// `dq` of the last [`MocoDevice::infonce`], as a network's output gradient.
    fn nce_dq(nce: &Self::Nce) -> &Self::Input;
    /// Enqueues raw `keys: [N, C]` (normalised on the way in) at `shape.ptr()`, wrapping; returns the new pointer.
    fn enqueue(&mut self, queue: &mut Self::Queue, keys: &Self::Buf, shape: &crate::shape::QueueShape) -> Result<usize>;

    // ---- MoCo v3: the symmetric in-batch loss ----

    /// v3 loss outputs for batch `n`, dimension `c` (`dq1, dq2: [N, C]`).
    fn v3_buffers(&mut self, n: usize, c: usize) -> Result<Self::V3Loss>;
    /// MoCo v3's symmetric loss, forward and backward, fused (no `N x N` buffer): with `q̂, k̂` the L2-normalised
    /// rows of raw `q1, q2, k1, k2: [N, C]` (whole allocations) and `T = shape.temperature()`,
    ///
    /// ```text
    /// loss     = ctr(q1, k2) + ctr(q2, k1)
    /// ctr(q,k) = 2T · CE(q̂ k̂ᵀ / T, arange(N))     CE averaged over the N rows (moco-v3's `* 2 * self.T`)
    /// ```
    ///
    /// `out.dq1 = dloss/dq1` and `out.dq2 = dloss/dq2` (w.r.t. the raw features, through the normalisation) are
    /// overwritten, not accumulated; the keys get no gradient (they come from the momentum encoder). The loss is
    /// kept in `out` for [`MocoDevice::read_v3_loss`]. The backends' existing functions wait for the GPU and
    /// return the loss, so on wgpu and CUDA this call synchronises (one wait per step, as the v1/v2 step's
    /// [`MocoDevice::read_stats`]).
    #[allow(clippy::too_many_arguments)]
    fn moco_v3_loss(&mut self, out: &mut Self::V3Loss, q1: &Self::Buf, q2: &Self::Buf, k1: &Self::Buf, k2: &Self::Buf, shape: &crate::shape::SymmetricShape) -> Result<()>;
    /// The loss of the last [`MocoDevice::moco_v3_loss`] (NaN before the first).
    fn read_v3_loss(&self, out: &Self::V3Loss) -> Result<f32>;
    /// `dq1` of the last [`MocoDevice::moco_v3_loss`], as a network's output gradient.
    fn v3_dq1(out: &Self::V3Loss) -> &Self::Input;
    /// `dq2` of the last [`MocoDevice::moco_v3_loss`], as a network's output gradient.
    fn v3_dq2(out: &Self::V3Loss) -> &Self::Input;

    // ---- the optimiser ----

    /// The optimiser of `config` over the flat parameter allocation that `spans` tile (state zeroed, 0 steps
    /// taken). LARS reads the spans (tensors with `ndim <= 1`, biases and norm weights, get neither weight decay
    /// nor the trust ratio); SGD and AdamW only their total, `spans.len()`.
    fn opt_new(&mut self, config: crate::optim::OptimizerConfig, spans: &crate::optim::ParamSpans) -> Result<Self::Opt>;
    /// One step on whole allocations `params`, `grads` (`[spans.len()]` each) at learning rate `lr`, which
    /// replaces the configuration's (and the previous step's) from this step on. AdamW's bias corrections use the
    /// step count ([`MocoDevice::opt_steps`] + 1). A failed step counts no step.
    fn opt_step(&mut self, opt: &mut Self::Opt, params: &mut Self::Buf, grads: &Self::Buf, lr: f64) -> Result<()>;
    /// Steps taken.
    fn opt_steps(opt: &Self::Opt) -> u64;
    /// Sets the step count (resume, with [`MocoDevice::opt_write_state`]).
    fn opt_set_steps(opt: &mut Self::Opt, steps: u64);
    /// The state tensors on the host, in the order of [`crate::optim::OptimizerConfig::state_names`], each
    /// `[len]`: SGD `[momentum_buffer]` (`[]` without momentum), AdamW `[exp_avg, exp_avg_sq]`, LARS `[mu]`.
    fn opt_read_state(&self, opt: &Self::Opt) -> Result<Vec<Vec<f32>>>;
    /// Restores the state tensors (the layout of [`MocoDevice::opt_read_state`]); a wrong count or length is an
    /// error naming what was expected and given, and changes nothing.
    fn opt_write_state(&mut self, opt: &mut Self::Opt, state: &[Vec<f32>]) -> Result<()>;

    /// Waits for every queued device operation.
    fn synchronize(&self) -> Result<()>;
}
