//! The arithmetic of the f32 matrix products (convolutions and linear layers) on a device: [`MatmulPrecision`].

use crate::error::{Error, Result};

/// The arithmetic of a device's f32 matrix products, the convolutions' and the linear layers' GEMMs: the CUDA
/// device's [`crate::Cuda::set_matmul_precision`] (PyTorch's `torch.backends.cudnn.allow_tf32` and
/// `torch.backends.cuda.matmul.allow_tf32` make the same choice). The CPU and wgpu always compute in f32. Each
/// variant states its bound on `|computed − exact|` of one output, a sum of `k` products `a·b` (the GEMM's
/// reduction: `C_in·KH·KW` for a convolution's forward, `N·OH·OW` for its weight gradient, `C_out·KH·KW` for its
/// input gradient; `IN`, `N` and `OUT` for a linear layer's), as a multiple of `Σ |a·b|`: [`MatmulPrecision::bound`].
/// Tensor cores need sm_80 or newer; elsewhere every variant computes as [`MatmulPrecision::Fp32`], within its own
/// bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulPrecision {
    /// f32 FMAs on the CUDA cores (the default): the f32 sum's rounding, `(k + 2)·2^-24`.
    #[default]
    Fp32,
    /// Tensor cores with split operands (3xTF32: each operand `x = hi + lo`, both TF32, three products per
    /// product): f32's accuracy, `3·2^-22 + (k + 2)·2^-23` (the dropped `lo·lo` and the rounded `lo`s, then the
    /// tensor cores' f32 accumulation, whose rounding is not specified as round-to-nearest: one 2^-23 per add).
    Tf32x3,
    /// Tensor cores with TF32 operands (10-bit mantissas, rounded to nearest) and f32 accumulation, as cuDNN's
    /// default in PyTorch: `2^-10 + 2^-22 + (k + 2)·2^-23`.
    Tf32,
    /// Tensor cores with bf16 operands (8-bit significands, rounded to nearest even) and f32 accumulation: the
    /// matrix products of PyTorch's bf16 autocast, at twice TF32's tensor-core rate. The operands are rounded in
    /// registers; activations, weights and gradients stay f32 in memory. A rounded operand is within 2^-8 of its
    /// value, relatively (half a unit in the last of 8 bits), a product within `(1 + 2^-8)^2 − 1`:
    /// `2^-7 + 2^-16 + (k + 2)·2^-23`.
    Bf16,
}

impl MatmulPrecision {
    /// The bound of one output over `k` products, as a multiple of `Σ |a·b|` (see each variant).
    pub fn bound(self, k: usize) -> f64 {
        let sum = (k + 2) as f64;
        match self {
            MatmulPrecision::Fp32 => sum * 2f64.powi(-24),
            MatmulPrecision::Tf32x3 => 3.0 * 2f64.powi(-22) + sum * 2f64.powi(-23),
            MatmulPrecision::Tf32 => 2f64.powi(-10) + 2f64.powi(-22) + sum * 2f64.powi(-23),
            MatmulPrecision::Bf16 => 2f64.powi(-7) + 2f64.powi(-16) + sum * 2f64.powi(-23),
        }
    }
    /// Parses a command line's name: `fp32`, `tf32x3`, `tf32` or `bf16`.
    pub fn parse(flag: &'static str, name: &str) -> Result<Self> {
        match name {
            "fp32" => Ok(MatmulPrecision::Fp32),
            "tf32x3" => Ok(MatmulPrecision::Tf32x3),
            "tf32" => Ok(MatmulPrecision::Tf32),
            "bf16" => Ok(MatmulPrecision::Bf16),
            other => Err(Error::settings(flag, "fp32, tf32x3, tf32 or bf16", format!("{other:?}"))),
        }
    }
}
