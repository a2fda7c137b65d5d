//! The CPU backend: the low-level ops on `&[f32]` / `&mut [f32]`, the unfused path, and the f64 reference that
//! every other backend is tested against.

pub mod contrastive;
pub mod ema;
mod gemm;
pub mod nn;
pub mod queue;
pub mod queue_view;
pub mod reference;
pub mod softmax;
pub mod unfused;
pub(crate) mod vector;

pub use contrastive::{infonce, logits, moco_v3_loss, normalize_rows, InfoNceStats};
pub use ema::{ema_update, ema_update_multi};
pub use queue::enqueue;
pub use queue_view::{queue_from_ck, queue_to_ck, QueueView, QueueViewMut};
