//! The shape types of moco 0.1's contrastive ops, kept at their old path for this release (they live in their op
//! families now, and at the crate root).
pub use crate::ops::ema::EmaShape;
pub use crate::ops::infonce::{InfoNceShape, LogitsShape, SymmetricShape, MAX_TEMPERATURE, MIN_TEMPERATURE};
pub use crate::ops::queue::{QueueDType, QueueShape};
