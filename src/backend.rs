//! The paths of moco 0.1, kept for this release only. Every item here is a re-export of its new home (see the
//! README, "Migrating from 0.1"); functions whose arguments changed (the dimension order of `queue_from_ck`, the
//! wgpu ops' views) are not re-exported under the old name, so old code fails to compile instead of computing
//! something else.
#![allow(missing_docs)]

pub use crate::device::{AnyDevice as AnyBackend, CpuDevice, Device, DeviceKind as BackendKind, Region};
pub use crate::ops::infonce::InfoNceStats;
pub use crate::ops::queue::QueueDims;

/// The CPU kernels (now `moco::ops::<family>::cpu`).
pub mod cpu {
    pub use crate::ops::ema::cpu::{ema_update, ema_update_multi};
    pub use crate::ops::infonce::cpu::{infonce, logits, moco_v3_loss};
    pub use crate::ops::infonce::InfoNceStats;
    pub use crate::ops::normalize::cpu::normalize_rows;
    pub use crate::ops::queue::cpu::enqueue;
    pub use crate::ops::queue::{CpuQueue, CpuQueueStorage, QueueView, QueueViewMut};

    /// The layer kernels and their shape types (now `moco::ops::<family>`).
    pub mod nn {
        pub use crate::ops::attention::cpu::{attention_backward, attention_forward};
        pub use crate::ops::attention::AttentionShape;
        pub use crate::ops::batchnorm::BatchNormShape;
        pub use crate::ops::conv::cpu::{conv2d_backward, conv2d_backward_with, conv2d_forward, conv2d_forward_no_grad, conv2d_forward_with};
        pub use crate::ops::conv::{conv_algo_choices, set_conv_algo_choice, Conv2dShape, ConvAlgo, ConvPass};
        pub use crate::ops::eltwise::cpu::{add_backward, add_forward, gelu_backward, gelu_forward, relu_backward, relu_forward};
        pub use crate::ops::eltwise::EltwiseShape;
        pub use crate::ops::layernorm::cpu::{layernorm_backward, layernorm_forward};
        pub use crate::ops::layernorm::LayerNormShape;
        pub use crate::ops::linear::cpu::{linear_backward, linear_forward};
        pub use crate::ops::linear::LinearShape;
        pub use crate::ops::patch::cpu::{cls_select_backward, cls_select_forward, patch_im2col, patch_im2col_backward, sincos_pos_embed_2d, tokens_backward, tokens_forward};
        pub use crate::ops::patch::{PatchShape, PosEmbedShape, TokensShape};
        pub use crate::ops::pool::cpu::{global_avgpool_backward, global_avgpool_forward, maxpool2d_backward, maxpool2d_forward};
        pub use crate::ops::pool::{GlobalAvgPoolShape, MaxPool2dShape};
    }
}

/// The wgpu device and its low-level ops (now `moco::device::Wgpu` and `moco::ops::<family>::wgpu`).
#[cfg(feature = "wgpu")]
pub mod wgpu {
    pub use crate::device::wgpu::{Adapter, AsGpuSlice, GpuSlice, Wgpu as WgpuContext, SLICE_ALIGN_BYTES};
    pub use crate::ops::ema::wgpu::ema_update;
    pub use crate::ops::queue::wgpu::WgpuQueue;
}

/// The CUDA device and its low-level ops (now `moco::device::Cuda` and `moco::ops::<family>::cuda`).
#[cfg(feature = "cuda")]
pub mod cuda {
    pub use crate::device::cuda::{check_driver, check_nvrtc, Cuda};
    pub use crate::ops::ema::cuda::{ema_update, ema_update_multi};
    pub use crate::ops::infonce::cuda::{infonce, infonce_async, logits, moco_v3_loss, read_stats};
    pub use crate::ops::infonce::STATS_WORDS;
    pub use crate::ops::normalize::cuda::normalize_rows;
    pub use crate::ops::queue::cuda::{enqueue, CudaQueue, CudaQueueStorage};
}
