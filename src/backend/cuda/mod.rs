//! The CUDA backend: host code for `kernels/*.cu`, launched through `cudarc` (driver API, loaded at run time).
//!
//! Kernels are compiled by NVRTC on first use for the device's compute capability and cached per context (one
//! module per `.cu` file, see [`kernel_sources`]). Nothing here panics on a machine without CUDA: [`Cuda::new`]
//! checks that libcuda and libnvrtc can be loaded before any cudarc call, and returns [`Error::Unavailable`]
//! when either is missing or no device is present.
//!
//! Low-level functions work on the caller's own buffers (`CudaSlice<f32>`, a [`CudaQueue`]) and stream, and run
//! asynchronously unless they return a host value: [`ema_update`], [`ema_update_multi`], [`logits`],
//! [`infonce_async`] / [`infonce`], [`moco_v3_loss`], [`enqueue`], [`normalize_rows`]. Kernel scalars are passed as
//! one `#[repr(C)]` struct by value (the WGSL uniform block of the same kernel). Every op runs 256-thread blocks.
//!
//! ResNet layers, with the function names and argument order of the wgpu backend, on views into the caller's
//! allocations (`&CudaView<f32>` inputs, `&mut CudaViewMut<f32>` outputs): [`conv`] (`conv2d_forward`,
//! `conv2d_backward`), [`norm`] (`batchnorm_*`: train/eval, plain, ReLU and add + ReLU, backward) and [`pool`]
//! (`maxpool2d_*`, `global_avgpool_*`, `linear_*`, `relu_*`, `add_forward`). ViT layers: [`vit`] (`layernorm_*`,
//! `gelu_*`, `attention_*`, `patch_im2col*`, `tokens_*`, `cls_select_*`, `add_backward`).
//!
//! [`Error::Unavailable`]: crate::Error::Unavailable

mod context;
pub mod contrastive;
pub mod conv;
pub mod ema;
pub mod norm;
/// SGD, AdamW and LARS steps over flat parameter buffers (`kernels/optim.cu`).
pub mod optim;
pub mod pool;
pub mod queue;
pub mod vit;

pub use context::{check_driver, check_nvrtc, kernel_entry_points, kernel_sources};
pub use contrastive::{infonce, infonce_async, logits, moco_v3_loss, normalize_rows, read_stats, STATS_WORDS};
pub use ema::{ema_update, ema_update_multi, EMA_CHUNK};
pub use queue::{enqueue, CudaQueue, CudaQueueStorage};

use crate::backend::{Backend, BackendKind, InfoNceStats};
use std::borrow::{Borrow, BorrowMut};
use crate::error::Result;
use crate::shape::{EmaShape, InfoNceShape, LogitsShape, QueueDType, QueueShape, SymmetricShape};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use std::sync::Arc;

/// A CUDA device: its (primary) context and the stream every op of the [`Backend`] impl runs on. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Cuda {
    /// The device's primary context.
    pub ctx: Arc<CudaContext>,
    /// The stream the [`Backend`] methods launch on (the context's default stream).
    pub stream: Arc<CudaStream>,
    name: String,
    /// The attention backward's `ds [B, H, T, T]` scratch, grown on demand (see [`AttentionScratch`]).
    pub(crate) attn_ds: AttentionScratch,
}

/// The attention backward's `ds` scratch of a [`Cuda`] device: one allocation, grown when a larger problem comes,
/// reused otherwise. A clone of the device starts without one (two devices never share scratch).
#[derive(Default)]
pub(crate) struct AttentionScratch(Option<CudaSlice<f32>>);

impl Clone for AttentionScratch {
    fn clone(&self) -> Self {
        Self(None)
    }
}

impl std::fmt::Debug for AttentionScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AttentionScratch({} elements)", self.0.as_ref().map_or(0, |s| s.len()))
    }
}

impl AttentionScratch {
    /// A view of at least `len` elements, (re)allocated on `stream` when the current one is smaller.
    pub(crate) fn get(&mut self, stream: &Arc<CudaStream>, len: usize) -> Result<cudarc::driver::CudaViewMut<'_, f32>> {
        if self.0.as_ref().is_none_or(|s| s.len() < len) {
            self.0 = None; // free the old one first
            self.0 = Some(stream.alloc_zeros::<f32>(len.max(1))?);
        }
        match self.0.as_mut() {
            Some(s) => Ok(s.as_view_mut()),
            None => Err(crate::Error::Unavailable("attention scratch: not allocated".into())),
        }
    }
}

impl Cuda {
    /// Opens device `ordinal`. Returns [`Error::Unavailable`](crate::Error::Unavailable) when libcuda or libnvrtc cannot be loaded or the
    /// device does not exist; never panics.
    pub fn new(ordinal: usize) -> Result<Self> {
        check_driver()?;
        check_nvrtc()?;
        let ctx = context::open_context(ordinal)?;
        let dev = ctx.name().unwrap_or_else(|_| "unknown device".into());
        let (major, minor) = ctx.compute_capability()?;
        let stream = ctx.default_stream();
        Ok(Self { ctx, stream, name: format!("cuda:{ordinal} {dev} (sm_{major}{minor})"), attn_ds: AttentionScratch::default() })
    }

    /// Compiles and loads every kernel module now instead of on first use (NVRTC takes a second or two).
    pub fn warm_up(&self) -> Result<()> {
        for (file, entries) in kernel_entry_points() {
            for name in entries.iter() {
                context::function(&self.stream, file, name)?;
            }
        }
        Ok(())
    }

    /// Device name, e.g. `cuda:0 NVIDIA H100 (sm_90)`.
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Waits for all work queued on [`Cuda::stream`].
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }
}

impl Backend for Cuda {
    type Buffer = CudaSlice<f32>;
    type OwnedBuffer = CudaSlice<f32>;
    type Queue = CudaQueue;
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }
    fn name(&self) -> String {
        Cuda::name(self)
    }
    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        Ok(self.stream.clone_htod(data)?)
    }
    fn download(&self, buf: &(impl Borrow<CudaSlice<f32>> + ?Sized)) -> Result<Vec<f32>> {
        let out = self.stream.clone_dtoh(buf.borrow())?;
        self.stream.synchronize()?;
        Ok(out)
    }
    fn queue_from_f32(&self, data: &[f32], k: usize, c: usize, dtype: QueueDType) -> Result<CudaQueue> {
        CudaQueue::from_f32(&self.stream, data, k, c, dtype)
    }
    fn queue_to_f32(&self, queue: &CudaQueue) -> Result<Vec<f32>> {
        queue.to_f32(&self.stream)
    }
    fn ema_update(&self, k: &mut (impl BorrowMut<CudaSlice<f32>> + ?Sized), q: &(impl Borrow<CudaSlice<f32>> + ?Sized), momentum: f64) -> Result<()> {
        let (k, q) = (k.borrow_mut(), q.borrow());
        let shape = EmaShape::new(k.len(), momentum)?;
        ema::ema_update(&self.stream, k, q, &shape)
    }
    fn logits(&self, l_pos: &mut (impl BorrowMut<CudaSlice<f32>> + ?Sized), l_neg: &mut (impl BorrowMut<CudaSlice<f32>> + ?Sized), q: &(impl Borrow<CudaSlice<f32>> + ?Sized), k: &(impl Borrow<CudaSlice<f32>> + ?Sized), queue: &CudaQueue, shape: &LogitsShape) -> Result<()> {
        contrastive::logits(&self.stream, l_pos.borrow_mut(), l_neg.borrow_mut(), q.borrow(), k.borrow(), queue, shape)
    }
    fn infonce(&self, dq: &mut (impl BorrowMut<CudaSlice<f32>> + ?Sized), row_loss: &mut (impl BorrowMut<CudaSlice<f32>> + ?Sized), q: &(impl Borrow<CudaSlice<f32>> + ?Sized), k: &(impl Borrow<CudaSlice<f32>> + ?Sized), queue: &CudaQueue, shape: &InfoNceShape) -> Result<InfoNceStats> {
        let (dq, row_loss, q, k) = (dq.borrow_mut(), row_loss.borrow_mut(), q.borrow(), k.borrow());
        shape.check_inputs(q.len(), k.len(), queue.len())?;
        shape.check_outputs(dq.len(), row_loss.len())?;
        let mut stats = self.stream.alloc_zeros::<u32>(STATS_WORDS)?;
        contrastive::infonce(&self.stream, dq, row_loss, &mut stats, q, k, queue, shape)
    }
    fn moco_v3_loss(&self, dq1: &mut (impl BorrowMut<CudaSlice<f32>> + ?Sized), dq2: &mut (impl BorrowMut<CudaSlice<f32>> + ?Sized), q1: &(impl Borrow<CudaSlice<f32>> + ?Sized), q2: &(impl Borrow<CudaSlice<f32>> + ?Sized), k1: &(impl Borrow<CudaSlice<f32>> + ?Sized), k2: &(impl Borrow<CudaSlice<f32>> + ?Sized), shape: &SymmetricShape) -> Result<f32> {
        contrastive::moco_v3_loss(&self.stream, dq1.borrow_mut(), dq2.borrow_mut(), q1.borrow(), q2.borrow(), k1.borrow(), k2.borrow(), shape)
    }
    fn enqueue(&self, queue: &mut CudaQueue, keys: &(impl Borrow<CudaSlice<f32>> + ?Sized), shape: &QueueShape) -> Result<usize> {
        queue::enqueue(&self.stream, queue, keys.borrow(), shape)
    }
}
