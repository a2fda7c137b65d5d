//! Layers with explicit forward and backward, and the models built from them: flat parameter layouts with
//! torchvision / timm names, the ResNet-18/50, ViT and MLP layouts and initialisations ([`Model`]), their plans
//! (node lists), and ONE executor, [`Network<D, M>`](Network), that runs any plan forward and backward on any
//! [`crate::device::Device`] ([`Layers`]: the op families it needs).

pub mod layout;
pub mod mlp;
pub mod model;
pub mod network;
#[doc(hidden)]
pub mod plan;
pub mod resnet_layout;
mod resnet_plan;
pub mod vit_layout;
mod vit_plan;

pub use layout::{Layout, ParamInfo, SplitMix64};
pub use mlp::{MlpLayout, MlpSpec};
pub use model::Model;
pub use network::{Mlp, Network, ResNet, ResNetCpu, Vit};
#[cfg(feature = "wgpu")]
pub use network::ResNetWgpu;
#[cfg(feature = "cuda")]
pub use network::ResNetCuda;
pub use resnet_layout::{BlockSpec, Depth, ResNetConfig, ResNetLayout, Stem};
pub use vit_layout::{VitConfig, VitLayout};
pub use vit_plan::LN_EPS;

use crate::device::Device;
pub use crate::ops::attention::Attention;
pub use crate::ops::batchnorm::BatchNorm;
pub use crate::ops::conv::Conv;
pub use crate::ops::eltwise::Eltwise;
pub use crate::ops::layernorm::LayerNorm;
pub use crate::ops::linear::Linear;
pub use crate::ops::patch::Patch;
pub use crate::ops::pool::Pool;

/// The op families a network runs on (every device of [`crate::device`] has them all): what the executor
/// [`Network`] asks of its device.
pub trait Layers: Device + Conv + BatchNorm + Pool + Linear + Eltwise + LayerNorm + Attention + Patch {}

impl<D: Device + Conv + BatchNorm + Pool + Linear + Eltwise + LayerNorm + Attention + Patch> Layers for D {}
