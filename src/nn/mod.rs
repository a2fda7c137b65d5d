//! Layers with explicit forward and backward, and the models built from them. So far: flat parameter layouts with
//! torchvision names and the ResNet-18/50 layout and initialisation; the forward/backward assembly lands with the
//! ResNet issue.

pub mod layout;
pub mod resnet_layout;

pub use layout::{Layout, ParamInfo, SplitMix64};
pub use resnet_layout::{BlockSpec, Depth, ResNetConfig, ResNetLayout, Stem};
