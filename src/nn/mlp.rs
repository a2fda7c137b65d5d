//! moco-v3's projector and predictor MLPs (`_build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn)` in
//! `moco/builder.py`): `Linear(bias=False)`, `BatchNorm1d`, `ReLU` per hidden layer, a last `Linear(bias=False)`
//! and, with `last_bn`, a `BatchNorm1d(affine=False)`. Tensor names are the `nn.Sequential` indices
//! (`{prefix}.0.weight`, `{prefix}.1.weight`, ..., `{prefix}.{3(L-1)}.weight`, `{prefix}.{3(L-1)+1}.running_mean`).
//!
//! [`MlpSpec`] adds such a head to any layout and plan (the ViT's `head`, the ResNet's `fc`); [`MlpLayout`] is a
//! standalone MLP network (the predictor), whose backward also gives its input's gradient.

use super::layout::{Layout, SplitMix64, TENSOR_ALIGN};
use super::model::Model;
use super::plan::{Act, Epilogue, Plan, Planner};
use crate::error::{Error, Result};

/// One moco-v3 MLP: `layers` Linear layers, hidden width `hidden`, output width `out`, and a last affine-free BN
/// when `last_bn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlpSpec {
    /// Linear layers (>= 1).
    pub layers: usize,
    /// Hidden width (moco-v3's `mlp_dim`, 4096 there).
    pub hidden: usize,
    /// Output width (moco-v3's `dim`, 256 there).
    pub out: usize,
    /// A last `BatchNorm1d(affine=False)`.
    pub last_bn: bool,
}

impl MlpSpec {
    /// Checks the widths and depth.
    pub fn validate(&self) -> Result<()> {
        if self.layers == 0 || self.hidden == 0 || self.out == 0 || self.layers > 64 {
            return Err(Error::shape("mlp", "layers in 1..=64, hidden and out >= 1", format!("layers {}, hidden {}, out {}", self.layers, self.hidden, self.out)));
        }
        let fits = |a: usize, b: usize| a.checked_mul(b).is_some_and(|n| n <= i32::MAX as usize);
        if !fits(self.hidden, self.hidden) || !fits(self.hidden, self.out) {
            return Err(Error::shape("mlp", "weights of at most 2^31 - 1 elements", format!("hidden {}, out {}", self.hidden, self.out)));
        }
        Ok(())
    }

    /// (linear index, input width, output width) of each layer.
    fn linears(&self, in_dim: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.layers).map(move |l| {
            let i = if l == 0 { in_dim } else { self.hidden };
            let o = if l + 1 == self.layers { self.out } else { self.hidden };
            (3 * l, i, o)
        })
    }

    /// Registers the tensors under `prefix` for an input of `in_dim` features.
    pub fn push(&self, prefix: &str, in_dim: usize, params: &mut Layout, buffers: &mut Layout) -> Result<()> {
        self.validate()?;
        if in_dim.checked_mul(self.hidden.max(self.out)).is_none_or(|n| n > i32::MAX as usize) {
            return Err(Error::shape("mlp", "a first weight of at most 2^31 - 1 elements", format!("in {in_dim}, hidden {}", self.hidden)));
        }
        for (idx, i, o) in self.linears(in_dim) {
            params.push(format!("{prefix}.{idx}.weight"), &[o, i]);
            let last = idx == 3 * (self.layers - 1);
            if !last || self.last_bn {
                if !last {
                    params.push(format!("{prefix}.{}.weight", idx + 1), &[o]);
                    params.push(format!("{prefix}.{}.bias", idx + 1), &[o]);
                }
                buffers.push(format!("{prefix}.{}.running_mean", idx + 1), &[o]);
                buffers.push(format!("{prefix}.{}.running_var", idx + 1), &[o]);
            }
        }
        Ok(())
    }

    /// PyTorch's defaults for the tensors under `prefix`: Linear weight U(±1/sqrt(fan_in)) (kaiming-uniform with
    /// a = sqrt 5), BN weight 1, bias 0, running mean 0, var 1. One generator stream per tensor (`seed` and the
    /// tensor's name), so adding a tensor elsewhere does not move these values.
    pub fn init(prefix: &str, params_layout: &Layout, buffers_layout: &Layout, params: &mut [f32], buffers: &mut [f32], seed: u64) {
        let pre = format!("{prefix}.");
        for t in params_layout.tensors.iter().filter(|t| t.name.starts_with(&pre)) {
            let out = &mut params[t.range()];
            if t.shape.len() == 2 {
                let bound = 1.0 / (t.shape[1] as f64).sqrt();
                let mut rng = SplitMix64(seed ^ SplitMix64::name_seed(&t.name));
                out.iter_mut().for_each(|v| *v = ((rng.next_f64() * 2.0 - 1.0) * bound) as f32);
            } else {
                out.fill(if t.name.ends_with(".weight") { 1.0 } else { 0.0 });
            }
        }
        for t in buffers_layout.tensors.iter().filter(|t| t.name.starts_with(&pre)) {
            buffers[t.range()].fill(if t.name.ends_with("running_var") { 1.0 } else { 0.0 });
        }
    }

    /// Plans the MLP under `prefix` over `inp [N, in_dim]`; returns its output `[N, out]`.
    pub fn plan(&self, pl: &mut Planner<'_>, prefix: &str, mut x: Act, in_dim: usize) -> Result<Act> {
        let n = pl.n;
        for (idx, i, _) in self.linears(in_dim).collect::<Vec<_>>() {
            let (y, o) = pl.linear(&format!("{prefix}.{idx}"), x, n, i)?;
            let last = idx == 3 * (self.layers - 1);
            x = if !last {
                pl.bn(&format!("{prefix}.{}", idx + 1), y, o, 1, Epilogue::Relu)?
            } else if self.last_bn {
                pl.bn(&format!("{prefix}.{}", idx + 1), y, o, 1, Epilogue::None)?
            } else {
                y
            };
        }
        Ok(x)
    }
}

/// A standalone MLP network over `[N, in_dim]` vectors (moco-v3's predictor, `prefix` "predictor").
#[derive(Clone, Debug)]
pub struct MlpLayout {
    /// The MLP.
    pub spec: MlpSpec,
    /// Input features.
    pub in_dim: usize,
    /// Name prefix of every tensor.
    pub prefix: String,
    /// Parameters.
    pub params: Layout,
    /// BN running statistics.
    pub buffers: Layout,
}

impl MlpLayout {
    /// The layout of `spec` over `in_dim` inputs, tensors named `{prefix}.*`.
    pub fn new(prefix: &str, in_dim: usize, spec: MlpSpec) -> Result<Self> {
        if in_dim == 0 {
            return Err(Error::shape("mlp", "in_dim >= 1", "0"));
        }
        let (mut params, mut buffers) = (Layout::aligned(TENSOR_ALIGN), Layout::aligned(TENSOR_ALIGN));
        spec.push(prefix, in_dim, &mut params, &mut buffers)?;
        Ok(Self { spec, in_dim, prefix: prefix.to_string(), params, buffers })
    }
}

impl Model for MlpLayout {
    super::model::layouts_in_fields!();
    fn feature_dim(&self) -> usize {
        self.spec.out
    }
    fn init(&self, params: &mut [f32], buffers: &mut [f32], seed: u64) -> Result<()> {
        super::model::check_init_lens("mlp init", self, params, buffers)?;
        MlpSpec::init(&self.prefix, &self.params, &self.buffers, params, buffers, seed);
        Ok(())
    }
    /// `[n, in_dim]` inputs (`h`, `w` must be 1); backward gives the input's gradient.
    fn plan(&self, n: usize, h: usize, w: usize, bn_groups: usize) -> Result<Plan> {
        if n == 0 || h != 1 || w != 1 {
            return Err(Error::shape("mlp", "input [N, in_dim] with N >= 1 (h = w = 1)", format!("N {n}, h {h}, w {w}")));
        }
        let mut pl = Planner::new(&self.params, &self.buffers, n, bn_groups);
        let input = pl.alloc(n * self.in_dim);
        let out = self.spec.plan(&mut pl, &self.prefix, input, self.in_dim)?;
        Ok(pl.finish(input, vec![n, self.in_dim], out, out, true, (1, 1)))
    }
}
