//! Layers with explicit forward and backward, and the models built from them. So far (CPU): flat parameter layouts with
//! torchvision names, the ResNet-18/50 layout and initialisation, and ResNet forward/backward on the CPU layer
//! kernels of `backend::cpu::nn`.

pub mod layout;
pub mod resnet;
pub mod resnet_layout;
mod resnet_plan;
#[cfg(feature = "wgpu")]
pub mod resnet_wgpu;

pub use layout::{Layout, ParamInfo, SplitMix64};
pub use resnet::ResNetCpu;
#[cfg(feature = "wgpu")]
pub use resnet_wgpu::ResNetWgpu;
pub use resnet_layout::{BlockSpec, Depth, ResNetConfig, ResNetLayout, Stem};
