//! Layers with explicit forward and backward, and the models built from them: flat parameter layouts with
//! torchvision names, the ResNet-18/50 layout and initialisation, its plan (node list), and ONE executor,
//! [`ResNet<D>`](ResNet), that runs the plan forward and backward on any [`crate::backend::Device`].

pub mod layout;
pub mod resnet;
pub mod resnet_layout;
mod resnet_plan;

pub use layout::{Layout, ParamInfo, SplitMix64};
pub use resnet::{ResNet, ResNetCpu};
#[cfg(feature = "wgpu")]
pub use resnet::ResNetWgpu;
#[cfg(feature = "cuda")]
pub use resnet::ResNetCuda;
pub use resnet_layout::{BlockSpec, Depth, ResNetConfig, ResNetLayout, Stem};
