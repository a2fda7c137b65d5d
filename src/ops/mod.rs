//! The ops, one folder per family. Each folder holds the family's validated shape types, its trait of kernels
//! (implemented by every [`crate::device::Device`]), the CPU kernel, the wgpu launcher, the CUDA launcher and the
//! f64 reference, side by side; the CUDA C is `kernels/<family>.cu` and the WGSL `shaders/<family>.wgsl`, the
//! same algorithm with the same names and tiling where the hardware allows.
//!
//! | family | computes |
//! |---|---|
//! | [`normalize`] | row L2 normalisation (`F.normalize`), with the inverse norms |
//! | [`infonce`] | the fused streaming InfoNCE (forward + backward), normalised logits, MoCo v3's symmetric loss |
//! | [`queue`] | the ring-buffer queue of keys (f32, f16, bf16 storage) and its enqueue |
//! | [`ema`] | the momentum (EMA) update of the key encoder |
//! | [`conv`] | 2-D convolution (im2col + GEMM, Winograd on the CPU) |
//! | [`batchnorm`] | batch norm (plain, split, fused ReLU / residual + ReLU) |
//! | [`pool`] | max pooling and global average pooling |
//! | [`linear`] | fully connected layers (GEMM + bias) |
//! | [`eltwise`] | element-wise ReLU, GELU and the residual add |
//! | [`layernorm`] | layer norm |
//! | [`attention`] | the attention core (softmax(QKᵀ/√d) V, saved probabilities) |
//! | [`patch`] | the ViT's patch im2col, token assembly and class-token feature |
//! | [`optim`] | the SGD, AdamW and LARS steps over flat parameter buffers |
//! | [`finite`] | the count of NaN and ±inf elements (the step's device-side finiteness check) |
//!
//! Conventions (llm.c style): tensors are row-major f32; functions put outputs first and the shape last; every
//! call validates its buffer lengths against its shape type and returns [`crate::error::Error`] instead of panicking;
//! backward kernels accumulate into their gradients (`dinp += ...`), so gradients are zeroed once per step.
//!
//! Adding an op family: its folder, `kernels/<family>.cu`, `shaders/<family>.wgsl`, and its name in the
//! `families!` list below, which declares the module and registers its kernels for build.rs (naga), the CUDA
//! and wgpu devices, and the CUDA emulation test.

pub(crate) mod check;
pub(crate) mod window;
pub mod kernel_family;
#[doc(hidden)]
pub mod launch;

pub use kernel_family::KernelFamily;

/// Declares each op family's module and lists its kernels in [`KERNELS`].
macro_rules! families {
    ($($name:ident),* $(,)?) => {
        $(pub mod $name;)*
        /// Every kernel family, in one list: build.rs validates each `.wgsl` with naga, the CUDA device compiles each
        /// `.cu` with NVRTC on first use, and `tests/cuda_emulated.rs` runs every kernel of every family.
        pub const KERNELS: &[&KernelFamily] = &[$(&$name::KERNELS),*];
    };
}

families!(normalize, infonce, queue, ema, conv, batchnorm, pool, linear, eltwise, layernorm, attention, patch, optim, finite);
