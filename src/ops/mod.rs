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
//! | [`gather`] | the row gather `out[r] = x[idx[r]]` (shuffle-BN on the device) |
//! | [`health`] | representation health: alignment, uniformity, per-dimension std, logit statistics, the Gram matrix for the effective rank, the key encoder's drift |
//!
//! Conventions (llm.c style): tensors are row-major f32; functions put outputs first and the shape last; every
//! call validates its buffer lengths against its shape type and returns [`crate::error::Error`] instead of panicking;
//! backward kernels accumulate into their gradients (`dinp += ...`), so gradients are zeroed once per step.
//!
//! Adding an op family: its folder, `kernels/<family>.cu`, `shaders/<family>.wgsl`, and its name in the
//! `families!` list below, which declares the module and registers its kernels for build.rs (naga), the CUDA
//! and wgpu devices, and the CUDA emulation test.

pub(crate) mod check;
pub mod fastmath;
pub mod precision;
pub(crate) mod window;
#[doc(hidden)]
pub mod launch;

pub use crate::device::KernelFamily;

/// Declares each op family's module and lists its kernels in [`KERNELS`].
macro_rules! families {
    ($($name:ident),* $(,)?) => {
        $(pub mod $name;)*
        /// Every kernel family, in one list: build.rs validates each `.wgsl` with naga, the CUDA device compiles each
        /// `.cu` with NVRTC on first use, and `tests/cuda_emulated.rs` runs every kernel of every family.
        pub const KERNELS: &[&KernelFamily] = &[$(&$name::KERNELS),*];
    };
}

families!(normalize, infonce, queue, ema, conv, batchnorm, pool, linear, eltwise, layernorm, attention, patch, optim, finite, health, gather);

#[cfg(feature = "cuda")]
impl crate::device::Cuda {
    /// Compiles and loads every kernel family of [`KERNELS`] now instead of on first use (NVRTC takes a second or
    /// two per family).
    pub fn warm_up(&self) -> crate::error::Result<()> {
        for family in KERNELS {
            crate::device::cuda::module(self.context(), family.cuda_file, family.cuda)?;
        }
        Ok(())
    }
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    use super::KERNELS;
    use crate::device::cuda::{check_nvrtc, compile};

    /// `compile` yields an ELF CUBIN and a PTX with an entry for every `extern "C" __global__` of every family (no
    /// GPU needed; skipped without NVRTC).
    #[test]
    fn compile_yields_cubin_and_ptx() {
        if check_nvrtc().is_err() {
            eprintln!("compile_yields_cubin_and_ptx: skipped: no libnvrtc");
            return;
        }
        for family in KERNELS {
            for (major, minor) in [(8, 0), (9, 0)] {
                let c = compile(family.cuda_file, family.cuda, major, minor).unwrap_or_else(|e| panic!("{} sm_{major}{minor}: {e}", family.name));
                let cubin = c.cubin.unwrap_or_else(|| panic!("{} sm_{major}{minor}: no CUBIN", family.name));
                assert!(cubin.starts_with(b"\x7fELF"), "{} sm_{major}{minor}: CUBIN is not ELF", family.name);
                assert!(c.ptx.contains(&format!(".target sm_{major}{minor}")), "{}: PTX target", family.name);
                for name in family.cuda_entry_points() {
                    assert!(c.ptx.contains(&format!(".entry {name}(")), "{} sm_{major}{minor}: no entry {name}", family.name);
                }
            }
        }
    }
}
