//! CPU layer kernels (forward and backward) for the networks: conv2d (im2col + GEMM, or Winograd F(2x2, 3x3)
//! for 3x3 stride-1 layers where it measures faster), batch norm (plain, split, fused with ReLU
//! and with a residual add + ReLU), max and global average pooling, linear, ReLU and residual add; and the ViT's
//! layer norm, exact GELU, attention core, sin-cos position embedding and patch im2col ([`vit`]).
//!
//! Conventions, as in the rest of the CPU backend (llm.c style):
//! - tensors are NCHW f32, row-major, laid out as PyTorch lays them out (conv weight `[C_out, C_in, KH, KW]`,
//!   linear weight `[OUT, IN]`);
//! - functions put outputs first and the shape last; every call validates buffer lengths against its shape type
//!   and returns [`crate::Error::Shape`] instead of panicking;
//! - backward functions **accumulate** into their gradients (`dinp += ...`, `dweight += ...`), so gradients are
//!   zeroed once per step.
//!
//! [`mod@reference`] holds the f64 versions (plain loops) the tests compare against.

mod check;
pub mod conv;
pub mod linear;
pub mod norm;
pub mod pool;
pub mod act;
pub mod reference;
pub mod vit;
mod winograd;
mod winograd4;

pub use act::{add_backward, add_forward, relu_backward, relu_forward, EltwiseShape};
pub use conv::{conv2d_backward, conv2d_backward_with, conv2d_forward, conv2d_forward_no_grad, conv2d_forward_with, conv_algo_choices, set_conv_algo_choice, Conv2dShape, ConvAlgo, Pass as ConvPass};
pub use linear::{linear_backward, linear_forward, LinearShape};
pub use norm::{
    batchnorm_add_relu_backward, batchnorm_add_relu_forward_eval, batchnorm_add_relu_forward_train, batchnorm_backward,
    batchnorm_forward_eval, batchnorm_forward_train, batchnorm_relu_backward, batchnorm_relu_forward_eval,
    batchnorm_relu_forward_train, BatchNormShape,
};
pub use vit::{
    attention_backward, attention_forward, cls_select_backward, cls_select_forward, gelu_backward, gelu_forward, layernorm_backward, layernorm_forward, patch_im2col,
    patch_im2col_backward, sincos_pos_embed_2d, tokens_backward, tokens_forward, AttentionShape, LayerNormShape, PatchShape, PosEmbedShape,
    TokensShape,
};
pub use pool::{global_avgpool_backward, global_avgpool_forward, maxpool2d_backward, maxpool2d_forward, GlobalAvgPoolShape, MaxPool2dShape};
