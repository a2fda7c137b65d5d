//! The wgpu backend: host code for `shaders/*.wgsl`. Low-level functions take the caller's `wgpu::Buffer`s
//! (f32 storage buffers, element counts in the shape types) plus a [`WgpuContext`] wrapping the device and queue.

mod context;
pub mod contrastive;
pub mod conv;
pub mod ema;
pub mod norm;
/// SGD, AdamW and LARS steps over flat parameter buffers (`shaders/optim.wgsl`).
pub mod optim;
pub mod pool;
pub mod queue;
pub mod vit;

pub use context::{sources, Adapter, AsGpuSlice, GpuSlice, WgpuContext, SLICE_ALIGN_BYTES};
pub use contrastive::{infonce, logits, moco_v3_loss, InfoNceBuffers};
pub use ema::ema_update;
pub use queue::{enqueue, WgpuQueue};
