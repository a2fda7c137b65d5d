//! The parameter layout of moco-v3's ViT (`vits.py`'s `VisionTransformerMoCo`, on timm's `VisionTransformer`)
//! under timm's state-dict names, optionally with moco-v3's projector as `head`, and its initialisation.
//!
//! Trainable tensors go to the parameter allocation; the fixed 2-D sin-cos `pos_embed`, the BN running
//! statistics and, with `stop_grad_conv1` (moco-v3's default), the frozen patch projection go to the buffer
//! allocation, so neither the optimiser (weight decay included) nor the gradient ever touches them.

use super::layout::{Layout, SplitMix64, TENSOR_ALIGN};
use super::mlp::MlpSpec;
use crate::ops::patch::{cpu::sincos_pos_embed_2d, PosEmbedShape};
use crate::error::{Error, Result};

/// A ViT: `img_size` square inputs of 3 channels cut into `patch`-sized patches, width `dim`, `depth` blocks of
/// `heads` heads, MLP ratio `mlp_ratio`, LayerNorm eps 1e-6, qkv bias, cls-token feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VitConfig {
    /// Input side (square).
    pub img_size: usize,
    /// Patch side (the patch projection's kernel and stride).
    pub patch: usize,
    /// Embedding width D.
    pub dim: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads (D must be a multiple).
    pub heads: usize,
    /// MLP hidden width / D (4 in moco-v3).
    pub mlp_ratio: usize,
    /// moco-v3's projector as `head` (3 layers, last BN affine-free), or none (features out).
    pub projector: Option<MlpSpec>,
    /// Freeze the patch projection (moco-v3's `--stop-grad-conv1`, its default).
    pub stop_grad_conv1: bool,
}

impl VitConfig {
    /// moco-v3's `vit_small`: 224x224, patch 16, D 384, depth 12, 6 heads.
    pub fn vit_small() -> Self {
        Self { img_size: 224, patch: 16, dim: 384, depth: 12, heads: 6, mlp_ratio: 4, projector: None, stop_grad_conv1: true }
    }
    /// timm's `vit_tiny` geometry: 224x224, patch 16, D 192, depth 12, 3 heads.
    pub fn vit_tiny() -> Self {
        Self { dim: 192, heads: 3, ..Self::vit_small() }
    }
    /// The CIFAR-scale default of `train_vit`: 32x32, patch 4 (65 tokens), D 192, depth 4, 3 heads.
    pub fn cifar() -> Self {
        Self { img_size: 32, patch: 4, dim: 192, depth: 4, heads: 3, ..Self::vit_small() }
    }
    /// Tokens per image, cls included: 1 + (img/patch)^2.
    pub fn tokens(&self) -> usize {
        let g = self.img_size / self.patch.max(1);
        g.saturating_mul(g).saturating_add(1)
    }
    /// Checks every size.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, got: String| Err(Error::settings("vit (--patch, --dim, --heads, --depth, --image-size)", what.to_string(), got));
        if self.img_size == 0 || self.patch == 0 || self.img_size % self.patch != 0 {
            return bad("img_size a positive multiple of patch", format!("img_size {}, patch {}", self.img_size, self.patch));
        }
        if self.dim == 0 || self.heads == 0 || self.dim % self.heads != 0 {
            return bad("dim a positive multiple of heads", format!("dim {}, heads {}", self.dim, self.heads));
        }
        if self.dim % 4 != 0 {
            return bad("dim a multiple of 4 (the 2-D sin-cos position embedding)", format!("dim {}", self.dim));
        }
        if self.depth == 0 || self.mlp_ratio == 0 || self.depth > 1024 {
            return bad("depth in 1..=1024 and mlp_ratio >= 1", format!("depth {}, mlp_ratio {}", self.depth, self.mlp_ratio));
        }
        // every tensor (the widest is fc1's [ratio·D, D]; the patch projection [D, 3p²]; pos_embed [T, D]) must fit
        // the kernels' i32 element counts
        let fits = |dims: &[usize]| dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_some_and(|n| n <= i32::MAX as usize);
        let grid = self.img_size / self.patch;
        if !fits(&[self.dim, self.dim, self.mlp_ratio]) || !fits(&[self.dim, 3, self.patch, self.patch]) || !fits(&[grid, grid, self.dim]) || !fits(&[self.dim, 3 * self.dim]) {
            return bad("tensors of at most 2^31 - 1 elements", format!("img_size {}, patch {}, dim {}, mlp_ratio {}", self.img_size, self.patch, self.dim, self.mlp_ratio));
        }
        if let Some(p) = self.projector {
            p.validate()?;
        }
        Ok(())
    }
}

/// Names, shapes and offsets of a ViT's tensors.
#[derive(Clone, Debug)]
pub struct VitLayout {
    /// The architecture.
    pub config: VitConfig,
    /// Trainable tensors (timm's names, then `head.*`).
    pub params: Layout,
    /// `pos_embed`, the frozen patch projection (with `stop_grad_conv1`), BN running statistics.
    pub buffers: Layout,
}

/// The tensors of one block, in timm's order.
const BLOCK: [&str; 12] = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"];

impl VitLayout {
    /// The layout of `config`.
    pub fn new(config: VitConfig) -> Result<Self> {
        config.validate()?;
        let (d, h) = (config.dim, config.dim * config.mlp_ratio);
        let (mut params, mut buffers) = (Layout::aligned(TENSOR_ALIGN), Layout::aligned(TENSOR_ALIGN));
        params.push("cls_token", &[1, 1, d]);
        buffers.push("pos_embed", &[1, config.tokens(), d]);
        let patch = if config.stop_grad_conv1 { &mut buffers } else { &mut params };
        patch.push("patch_embed.proj.weight", &[d, 3, config.patch, config.patch]);
        patch.push("patch_embed.proj.bias", &[d]);
        for i in 0..config.depth {
            for name in BLOCK {
                let shape: Vec<usize> = match name {
                    "attn.qkv.weight" => vec![3 * d, d],
                    "attn.qkv.bias" => vec![3 * d],
                    "attn.proj.weight" => vec![d, d],
                    "mlp.fc1.weight" => vec![h, d],
                    "mlp.fc1.bias" => vec![h],
                    "mlp.fc2.weight" => vec![d, h],
                    _ => vec![d],
                };
                params.push(format!("blocks.{i}.{name}"), &shape);
            }
        }
        params.push("norm.weight", &[d]);
        params.push("norm.bias", &[d]);
        if let Some(spec) = config.projector {
            spec.push("head", d, &mut params, &mut buffers)?;
        }
        Ok(Self { config, params, buffers })
    }

    /// The output width: the projector's, or D.
    pub fn out_dim(&self) -> usize {
        self.config.projector.map_or(self.config.dim, |p| p.out)
    }

    /// Every backbone tensor (parameters and buffers, the head excluded) in timm's `state_dict` order, as
    /// `(name, shape, allocation is buffers)`: what an export writes.
    pub fn backbone_tensors(&self) -> Vec<(&super::ParamInfo, bool)> {
        let mut all: Vec<(&super::ParamInfo, bool)> = self.params.tensors.iter().map(|t| (t, false)).chain(self.buffers.tensors.iter().map(|t| (t, true))).filter(|(t, _)| !t.name.starts_with("head.")).collect();
        let rank = |n: &str| match n {
            "cls_token" => 0,
            "pos_embed" => 1,
            _ if n.starts_with("patch_embed") => 2,
            _ if n.starts_with("blocks.") => 3,
            _ => 4,
        };
        all.sort_by_key(|(t, _)| (rank(&t.name), t.name.split('.').nth(1).and_then(|s| s.parse::<usize>().ok()).unwrap_or(0), BLOCK.iter().position(|b| t.name.ends_with(b)).unwrap_or(0), t.name.ends_with(".bias")));
        all
    }
}

/// `n` values uniform in (-bound, bound) from the tensor's own stream.
fn uniform(out: &mut [f32], name: &str, seed: u64, bound: f64) {
    let mut rng = SplitMix64(seed ^ SplitMix64::name_seed(name));
    out.iter_mut().for_each(|v| *v = ((rng.next_f64() * 2.0 - 1.0) * bound) as f32);
}

impl VitLayout {
    /// `vits.py`'s initialisation: qkv U(±sqrt(6/(3D/3 + D))), the other backbone linears xavier-uniform, every
    /// backbone bias 0, LayerNorm 1/0, cls N(0, 1e-6), patch projection U(±sqrt(6/(3p² + D))) with bias 0, the
    /// fixed 2-D sin-cos `pos_embed`; the projector as PyTorch's defaults (it is built after `vits.py`'s init).
    pub fn init_params(&self, params: &mut [f32], buffers: &mut [f32], seed: u64) -> Result<()> {
        super::model::check_init_lens("vit init", self, params, buffers)?;
        let (c, d) = (self.config, self.config.dim);
        for (t, in_buffers) in self.params.tensors.iter().map(|t| (t, false)).chain(self.buffers.tensors.iter().map(|t| (t, true))) {
            if t.name.starts_with("head.") {
                continue;
            }
            let out = if in_buffers { &mut buffers[t.range()] } else { &mut params[t.range()] };
            let name = t.name.as_str();
            if name == "cls_token" {
                let mut rng = SplitMix64(seed ^ SplitMix64::name_seed(name));
                out.iter_mut().for_each(|v| *v = (rng.normal() * 1e-6) as f32);
            } else if name == "pos_embed" {
                let g = c.img_size / c.patch;
                let shape = PosEmbedShape::new(g, g, d)?;
                sincos_pos_embed_2d(out, &shape)?;
            } else if name == "patch_embed.proj.weight" {
                uniform(out, name, seed, (6.0 / (3 * c.patch * c.patch + d) as f64).sqrt());
            } else if name.ends_with("qkv.weight") {
                uniform(out, name, seed, (6.0 / (t.shape[0] / 3 + t.shape[1]) as f64).sqrt());
            } else if t.shape.len() == 2 {
                uniform(out, name, seed, (6.0 / (t.shape[0] + t.shape[1]) as f64).sqrt());
            } else {
                out.fill(if name.ends_with("norm1.weight") || name.ends_with("norm2.weight") || name == "norm.weight" { 1.0 } else { 0.0 });
            }
        }
        if c.projector.is_some() {
            MlpSpec::init("head", &self.params, &self.buffers, params, buffers, seed);
        }
        Ok(())
    }
}
