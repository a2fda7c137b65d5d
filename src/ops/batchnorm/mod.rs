//! Batch normalisation over `[N, C, HW]` (BatchNorm2d with `HW = H*W`, BatchNorm1d with `HW = 1`), in training
//! mode (batch statistics) and eval mode (running statistics), with or without the affine `gamma`/`beta`, and
//! split into `G` groups as MoCo's `SplitBatchNorm` does (shuffle-BN without a distributed shuffle).
//!
//! Fused epilogues: BN + ReLU, and BN + residual add + ReLU (`out = relu(bn(x) + identity)`, the end of a
//! residual block), each with its backward.
//!
//! **Groups.** facebookresearch/moco's `SplitBatchNorm` views the input `[N, C, H, W]` as `[N/G, C*G, H, W]`
//! and batch-normalises that, so sample `n` belongs to group `g = n % G` and statistic `(g, c)` (stored at index
//! `g*C + c`) covers samples `g, g+G, g+2G, ...`. Each of the `G` copies of the running statistics is updated
//! from its group, and the running statistics become their mean over the groups:
//! `running_mean = (1-m) running_mean + m mean_g(mean_gc)`, `running_var = (1-m) running_var + m
//! mean_g(var_gc * M/(M-1))` where `M = (N/G)*HW` and the variance is the unbiased one, as torch does. The
//! normalisation itself uses the biased variance: `rstd = 1/sqrt(var + eps)`. In eval mode groups play no role.
//!
//! **Backward** (training mode), per statistic `(g, c)` over its `M` elements, with `x̂ = (x - mean)·rstd` and
//! `dy` the upstream gradient (masked by `out > 0` after a fused ReLU):
//! `dx += gamma·rstd·(dy - Σdy/M - x̂·Σ(dy·x̂)/M)`, `dgamma += Σ dy·x̂`, `dbeta += Σ dy`; after a fused residual
//! add, `didentity += dy`. Without affine parameters `gamma = 1` and there is no `dgamma`/`dbeta`.

//!
//! | | |
//! |---|---|
//! | shape | [`BatchNormShape`]; the fused epilogue [`Epilogue`] / [`EpilogueGrad`] |
//! | CPU | [`cpu`]: `batchnorm_{,relu_,add_relu_}forward_{train,eval}` and their backwards |
//! | wgpu / CUDA | `bn_stats`, `bn_running`, `bn_apply`, `bn_backward_sums`, `bn_backward_coef`, `bn_backward_dx` of `shaders/batchnorm.wgsl` / `kernels/batchnorm.cu` |
//! | reference | [`reference`](mod@reference) (f64) |

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::check::{elems, lens, positives};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("batchnorm");

/// A validated batch-norm problem: `inp, out: [N, C, HW]`, `G` groups of `N/G` samples, statistics `[G, C]`,
/// parameters and running statistics `[C]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormShape {
    /// Batch N.
    pub n: usize,
    /// Channels C.
    pub c: usize,
    /// Spatial size H*W (1 for BatchNorm1d).
    pub hw: usize,
    /// Number of groups G (1 for plain batch norm); N % G == 0.
    pub groups: usize,
    /// Added to the variance before the square root (torch default 1e-5).
    pub eps: f32,
    /// Weight of the new statistics in the running statistics (torch default 0.1).
    pub momentum: f32,
}

impl BatchNormShape {
    /// Validates N, C, HW, G >= 1, `N % G == 0` and the sizes; `eps = 1e-5`, `momentum = 0.1`.
    pub fn new(n: usize, c: usize, hw: usize, groups: usize) -> Result<Self> {
        let op = "batchnorm";
        positives(op, &[("N", n), ("C", c), ("HW", hw), ("groups G", groups)])?;
        if n % groups != 0 {
            return Err(Error::shape(op, format!("batch N divisible by the number of groups G = {groups}"), format!("N = {n}")));
        }
        elems(op, "inp", &[n, c, hw])?;
        Ok(Self { n, c, hw, groups, eps: 1e-5, momentum: 0.1 })
    }
    /// The same problem with another `eps` (finite, > 0) and `momentum` (finite, in [0, 1]).
    pub fn with_eps_momentum(self, eps: f32, momentum: f32) -> Result<Self> {
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::shape("batchnorm", "finite eps > 0", format!("eps = {eps}")));
        }
        if !(momentum.is_finite() && (0.0..=1.0).contains(&momentum)) {
            return Err(Error::shape("batchnorm", "momentum in [0, 1]", format!("momentum = {momentum}")));
        }
        Ok(Self { eps, momentum, ..self })
    }
    /// Elements of `inp` and `out`: N*C*HW.
    pub fn len(&self) -> usize {
        self.n * self.c * self.hw
    }
    /// Always false: a validated shape holds at least one element.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Elements per statistic: `M = (N/G)*HW`.
    pub fn count(&self) -> usize {
        self.n / self.groups * self.hw
    }
    /// Length of the saved statistics `mean, rstd: [G, C]`.
    pub fn stats_len(&self) -> usize {
        self.groups * self.c
    }
    /// The same shape through the validating constructors (a struct literal may hold anything).
    pub(crate) fn revalidate(&self) -> Result<Self> {
        Self::new(self.n, self.c, self.hw, self.groups)?.with_eps_momentum(self.eps, self.momentum)
    }
    /// Re-validates the shape, then checks the eval forward's buffers: `out, inp` (and `identity` of an add epilogue) `[N*C*HW]`, the rest `[C]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_eval(&self, out: usize, inp: usize, identity: Option<usize>, running_mean: usize, running_var: usize, gamma: Option<usize>, beta: Option<usize>) -> Result<()> {
        self.revalidate()?;
        let (n, c) = (self.len(), self.c);
        lens("batchnorm", &[("inp [N*C*HW]", n, Some(inp)), ("out [N*C*HW]", n, Some(out)), ("identity [N*C*HW]", n, identity)])?;
        lens("batchnorm", &[("running_mean [C]", c, Some(running_mean)), ("running_var [C]", c, Some(running_var)), ("gamma [C]", c, gamma), ("beta [C]", c, beta)])
    }
    /// Checks the training forward's buffers (as [`Self::check_eval`], and `mean, rstd: [G*C]`) and that every
    /// statistic averages more than one value.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_train(&self, out: usize, mean: usize, rstd: usize, running_mean: usize, running_var: usize, inp: usize, identity: Option<usize>, gamma: Option<usize>, beta: Option<usize>) -> Result<()> {
        self.check_eval(out, inp, identity, running_mean, running_var, gamma, beta)?;
        lens("batchnorm", &[("mean [G*C]", self.stats_len(), mean), ("rstd [G*C]", self.stats_len(), rstd)])?;
        if self.count() < 2 {
            return Err(Error::shape("batchnorm", "more than one value per channel and group in training mode ((N/G)*HW >= 2)", format!("N = {}, G = {}, HW = {}", self.n, self.groups, self.hw)));
        }
        Ok(())
    }
    /// Checks the backward's buffers: `dinp, dout, inp` (`out` after a ReLU, `didentity` after an add)
    /// `[N*C*HW]`, `mean, rstd: [G*C]`, `gamma, dgamma, dbeta: [C]` when given.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_backward(&self, dinp: usize, didentity: Option<usize>, dgamma: Option<usize>, dbeta: Option<usize>, dout: usize, out: Option<usize>, inp: usize, mean: usize, rstd: usize, gamma: Option<usize>) -> Result<()> {
        self.revalidate()?;
        let (n, g, c) = (self.len(), self.stats_len(), self.c);
        lens("batchnorm", &[("dinp [N*C*HW]", n, Some(dinp)), ("dout [N*C*HW]", n, Some(dout)), ("inp [N*C*HW]", n, Some(inp)), ("out [N*C*HW]", n, out), ("didentity [N*C*HW]", n, didentity)])?;
        lens("batchnorm", &[("mean [G*C]", g, Some(mean)), ("rstd [G*C]", g, Some(rstd)), ("gamma [C]", c, gamma), ("dgamma [C]", c, dgamma), ("dbeta [C]", c, dbeta)])
    }
}

/// What a batch-norm kernel does after normalising: nothing, ReLU, or add a residual (`identity`) then ReLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue<T> {
    /// `out = bn(inp)`.
    None,
    /// `out = relu(bn(inp))`.
    Relu,
    /// `out = relu(bn(inp) + identity)`.
    AddRelu(T),
}

impl<T> Epilogue<T> {
    /// The same epilogue with the identity replaced by `f(identity)`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Epilogue<U> {
        match self {
            Epilogue::None => Epilogue::None,
            Epilogue::Relu => Epilogue::Relu,
            Epilogue::AddRelu(t) => Epilogue::AddRelu(f(t)),
        }
    }
}

/// The batch-norm backward's view of its epilogue: what it re-reads (`out` after a ReLU) and where the residual's
/// gradient goes (`didentity`, accumulated).
pub enum EpilogueGrad<R, M> {
    /// No epilogue.
    None,
    /// ReLU: the forward output `out`.
    Relu {
        /// Forward output.
        out: R,
    },
    /// Add + ReLU: the forward output and the identity's gradient (accumulated).
    AddRelu {
        /// Forward output.
        out: R,
        /// Gradient of the residual input (`+=`).
        didentity: M,
    },
}


/// Batch norm on a device, with its fused epilogue: `out` first, inputs after, shape last; the backward accumulates.
pub trait BatchNorm: Device {
    /// Training-mode batch norm (SplitBatchNorm when `shape.groups > 1`) with its epilogue: writes `out` and the
    /// per-(group, channel) `mean`, `rstd` that backward reads, and updates the running statistics.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward_train(&mut self, out: Self::Mut<'_>, mean: Self::Mut<'_>, rstd: Self::Mut<'_>, running_mean: Self::Mut<'_>, running_var: Self::Mut<'_>, inp: Self::Ref<'_>, epilogue: Epilogue<Self::Ref<'_>>, gamma: Option<Self::Ref<'_>>, beta: Option<Self::Ref<'_>>, shape: &BatchNormShape) -> Result<()>;
    /// Eval-mode batch norm (running statistics) with its epilogue.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward_eval(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, epilogue: Epilogue<Self::Ref<'_>>, running_mean: Self::Ref<'_>, running_var: Self::Ref<'_>, gamma: Option<Self::Ref<'_>>, beta: Option<Self::Ref<'_>>, shape: &BatchNormShape) -> Result<()>;
    /// Batch-norm backward through its epilogue: `dinp`, `dgamma`, `dbeta` (and the identity's gradient) `+=`.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward<'a>(&mut self, dinp: Self::Mut<'a>, epilogue: EpilogueGrad<Self::Ref<'a>, Self::Mut<'a>>, dgamma: Option<Self::Mut<'a>>, dbeta: Option<Self::Mut<'a>>, dout: Self::Ref<'a>, inp: Self::Ref<'a>, mean: Self::Ref<'a>, rstd: Self::Ref<'a>, gamma: Option<Self::Ref<'a>>, shape: &BatchNormShape) -> Result<()>;
}
