//! [`Model`]: what the one executor [`super::Network`] needs from an architecture: its flat parameter and buffer
//! layouts, its initialisation, and its plan for a batch shape. ResNet ([`super::ResNetLayout`]), ViT
//! ([`super::VitLayout`]) and the standalone MLP ([`super::MlpLayout`]) implement it; none of them runs anything.

use super::layout::Layout;
use super::plan::Plan;
use crate::error::{Error, Result};

/// An architecture: layouts, initialisation and plan.
pub trait Model: Clone + std::fmt::Debug {
    /// Trainable parameters (names as torchvision / timm / moco-v3 name them).
    fn params(&self) -> &Layout;
    /// Non-trainable state: BN running statistics, fixed embeddings, frozen weights.
    fn buffers(&self) -> &Layout;
    /// Width of the backbone features (the kNN monitor's).
    fn feature_dim(&self) -> usize;
    /// The initialisation of the reference implementation, from `seed` (lengths must match the layouts).
    fn init(&self, params: &mut [f32], buffers: &mut [f32], seed: u64) -> Result<()>;
    /// The node list for inputs `[n, 3, h, w]` (`[n, in]` for an MLP), BN split in `bn_groups`.
    #[doc(hidden)]
    fn plan(&self, n: usize, h: usize, w: usize, bn_groups: usize) -> Result<Plan>;
}

/// [`Model::params`] and [`Model::buffers`] for an architecture that keeps its two layouts in fields `params` and
/// `buffers`.
macro_rules! layouts_in_fields {
    () => {
        fn params(&self) -> &$crate::nn::Layout {
            &self.params
        }
        fn buffers(&self) -> &$crate::nn::Layout {
            &self.buffers
        }
    };
}
pub(crate) use layouts_in_fields;

/// The error for init buffers of the wrong lengths.
pub(crate) fn check_init_lens(op: &'static str, m: &impl Model, params: &[f32], buffers: &[f32]) -> Result<()> {
    let (p, b) = (m.params().len, m.buffers().len);
    if params.len() != p || buffers.len() != b {
        return Err(Error::shape(op, format!("params {p} and buffers {b}"), format!("params {} and buffers {}", params.len(), buffers.len())));
    }
    Ok(())
}
