//! The training configuration: the defaults of facebookresearch/moco's CIFAR-10 colab
//! (`colab/moco_cifar10_demo.ipynb`), the colab / v1 / v2 presets; validated once, and written into every
//! checkpoint as metadata.

use crate::error::{Error, Result};
use crate::ops::precision::MatmulPrecision;
use crate::ops::infonce::Precision;
use crate::ops::queue::QueueDType;
use std::collections::BTreeMap;

/// MoCo version: heads, temperature and augmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// The CIFAR-10 colab: linear head to `dim`, T = 0.1, the colab's augmentation
    /// ([`crate::data::AugmentConfig::colab_cifar`]).
    Colab,
    /// MoCo v1: linear head to `dim`, T = 0.1 (the colab's; the paper's ImageNet runs use 0.07), MoCo v1's
    /// ImageNet augmentation ([`crate::data::AugmentConfig::v1`]).
    V1,
    /// MoCo v2: MLP head (hidden = feature width), T = 0.2, v2 augmentation.
    V2,
    /// MoCo v3 (facebookresearch/moco-v3): projector and predictor MLPs with BN, the symmetric loss
    /// ctr(q1, k2) + ctr(q2, k1) (each CE x 2T, T = 0.2), no queue, a momentum encoder with the cosine momentum
    /// schedule 0.99 -> 1, the asymmetric augmentation; on a ViT with AdamW (moco-v3's ViT recipe) or on a
    /// ResNet-18 with LARS (solo-learn's CIFAR recipe).
    V3,
}

/// The backbone a run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// ResNet-18 with the CIFAR stem.
    ResNet18,
    /// moco-v3's ViT ([`TrainConfig::vit`]).
    Vit,
}

impl ModelKind {
    /// Parses `resnet18` or `vit`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "resnet18" => Ok(ModelKind::ResNet18),
            "vit" => Ok(ModelKind::Vit),
            m => Err(Error::settings("--model", "resnet18 or vit", m.to_string())),
        }
    }
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::ResNet18 => "resnet18",
            ModelKind::Vit => "vit",
        }
    }
}

/// The optimiser of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// SGD with momentum (MoCo v1/v2).
    Sgd,
    /// AdamW (moco-v3's ViT recipe).
    AdamW,
    /// LARS as moco-v3 defines it (weight decay and adaptation on matrices only).
    Lars,
}

impl OptimizerKind {
    /// Parses `sgd`, `adamw` or `lars`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adamw" => Ok(OptimizerKind::AdamW),
            "lars" => Ok(OptimizerKind::Lars),
            o => Err(Error::settings("--optimizer", "sgd, adamw or lars", o.to_string())),
        }
    }
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Lars => "lars",
        }
    }
}

impl Preset {
    /// Parses `colab`, `v1`, `v2` or `v3`; an error naming what is allowed otherwise.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "colab" => Ok(Preset::Colab),
            "v1" => Ok(Preset::V1),
            "v2" => Ok(Preset::V2),
            "v3" => Ok(Preset::V3),
            p => Err(Error::settings("--preset", "colab, v1, v2 or v3", p.to_string())),
        }
    }

    /// The preset's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Colab => "colab",
            Preset::V1 => "v1",
            Preset::V2 => "v2",
            Preset::V3 => "v3",
        }
    }
}

/// Everything that defines a run. Field defaults: [`TrainConfig::colab`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Preset the run started from (heads and augmentation).
    pub preset: Preset,
    /// Output width of the head (`dim`, 128).
    pub dim: usize,
    /// MLP head (v2).
    pub mlp: bool,
    /// Queue length K.
    pub queue_len: usize,
    /// Queue storage.
    pub queue_dtype: QueueDType,
    /// The arithmetic of the fused losses (`--precision`): [`Precision::Fp32`] (default), [`Precision::Tf32x3`] or
    /// [`Precision::Tf32`] (TF32 tensor cores for an f32 queue and MoCo v3's keys; C % 4 == 0 and C <= 128), or
    /// [`Precision::Half`] (16-bit operands on CUDA's tensor cores: MoCo v1/v2 in the queue's format, bf16 for an f32
    /// queue, MoCo v3 with q̂ and k̂ in bf16; C % 8 == 0 and C <= 128). CUDA sm_80+; f32 elsewhere.
    pub precision: Precision,
    /// The arithmetic of the f32 matrix products, convolutions and linear layers, on CUDA (`--matmul-precision`):
    /// [`MatmulPrecision::Fp32`] (default), [`MatmulPrecision::Tf32x3`], [`MatmulPrecision::Tf32`] or
    /// [`MatmulPrecision::Bf16`] (tensor cores, sm_80+). The CPU and wgpu engines compute in f32 whatever it says.
    pub matmul_precision: MatmulPrecision,
    /// CUDA: capture the training step once as a CUDA graph and replay it (default), instead of launching its
    /// kernels one by one (`--no-graph`). The same results either way; the CPU and wgpu engines ignore it.
    pub cuda_graph: bool,
    /// Key-encoder momentum m.
    pub momentum: f64,
    /// Temperature T.
    pub temperature: f64,
    /// Batch size.
    pub batch_size: usize,
    /// Learning rate (the colab's 0.06, not scaled with the batch; see [`TrainConfig::scale_lr_linearly`]).
    pub lr: f64,
    /// SGD momentum.
    pub sgd_momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Epochs.
    pub epochs: usize,
    /// Cosine schedule (else constant lr).
    pub cosine: bool,
    /// How the cosine counts epochs. `true` (the colab's `adjust_learning_rate(epoch)` with `epoch` in
    /// `1..=epochs`): the `e`-th epoch (from 0) runs at `lr * (1 + cos(pi (e + 1) / epochs)) / 2`, so the last
    /// one runs at lr 0. `false`: at `lr * (1 + cos(pi e / epochs)) / 2`, the first epoch at the full lr and the
    /// last one above 0.
    pub cosine_from_one: bool,
    /// Shuffle-BN: the key batch is permuted before the key encoder and put back after (the colab's
    /// `_batch_shuffle_single_gpu` / `_batch_unshuffle_single_gpu`), see [`super::shuffle`].
    pub shuffle_bn: bool,
    /// SplitBatchNorm groups (1: plain BN).
    pub bn_splits: usize,
    /// Symmetric loss (loss_12 + loss_21).
    pub symmetric: bool,
    /// Image side (inputs are `[3, S, S]`).
    pub image_size: usize,
    /// kNN neighbours and temperature.
    pub knn_k: usize,
    /// kNN temperature.
    pub knn_t: f64,
    /// Seed of everything random (initialisation, queue, shuffles, augmentations).
    pub seed: u64,
    /// The backbone (ResNet-18, or the ViT of [`TrainConfig::vit`]).
    pub model: ModelKind,
    /// The ViT's geometry when `model` is [`ModelKind::Vit`] (its `projector` is built from `mlp_dim` and `dim`).
    pub vit: crate::nn::VitConfig,
    /// MoCo v3: hidden width of the projector and predictor MLPs (moco-v3's `mlp_dim`, 4096 there).
    pub mlp_dim: usize,
    /// The optimiser (v1/v2: SGD; v3: AdamW on a ViT, LARS on a ResNet).
    pub optimizer: OptimizerKind,
    /// Linear learning-rate warmup epochs before the half-cosine (v3; the lr is set every step).
    pub warmup_epochs: usize,
    /// The key encoder's momentum follows moco-v3's cosine `1 - (1 - m)(1 + cos(pi t / T)) / 2` from `momentum`
    /// to 1 over the run, set every step.
    pub momentum_cosine: bool,
}

impl TrainConfig {
    /// The official CIFAR-10 colab: ResNet-18 (CIFAR stem), K=4096, m=0.99, T=0.1, lr 0.06 (at any batch), wd
    /// 5e-4, 200 epochs, cosine counting epochs from 1, bn-splits 8 with shuffle-BN, batch 512, not symmetric,
    /// linear head to 128, kNN k=200 t=0.1.
    pub fn colab() -> Self {
        Self {
            preset: Preset::Colab,
            dim: 128,
            mlp: false,
            queue_len: 4096,
            queue_dtype: QueueDType::F32,
            precision: Precision::Fp32,
            matmul_precision: MatmulPrecision::Fp32,
            cuda_graph: true,
            momentum: 0.99,
            temperature: 0.1,
            batch_size: 512,
            lr: 0.06,
            sgd_momentum: 0.9,
            weight_decay: 5e-4,
            epochs: 200,
            cosine: true,
            cosine_from_one: true,
            shuffle_bn: true,
            bn_splits: 8,
            symmetric: false,
            image_size: 32,
            knn_k: 200,
            knn_t: 0.1,
            seed: 0,
            model: ModelKind::ResNet18,
            vit: crate::nn::VitConfig::cifar(),
            mlp_dim: 512,
            optimizer: OptimizerKind::Sgd,
            warmup_epochs: 0,
            momentum_cosine: false,
        }
    }

    /// MoCo v3 on `model`. ViT (moco-v3's `main_moco.py` recipe for ViTs): AdamW, lr 1.5e-4 x batch / 256, wd 0.1,
    /// 40 warmup epochs of 300 then half-cosine, T 0.2, momentum 0.99 -> 1 (cosine), projector and predictor of
    /// hidden width 1024 (moco-v3: 4096, see [`TrainConfig::mlp_dim`]) to 256, batch 256, the CIFAR-scale ViT
    /// (32x32, patch 4, D 192, depth 4, 3 heads), frozen patch projection. ResNet-18 (solo-learn's CIFAR recipe
    /// `scripts/pretrain/cifar/mocov3.yaml`): LARS lr 0.3 x batch / 256, wd 1e-6, 10 warmup epochs of 1000, the
    /// same T, momentum schedule and head widths as the ViT (solo-learn: 4096), moco-v3's `MoCo_ResNet` heads.
    pub fn v3(model: ModelKind) -> Self {
        let base = Self { preset: Preset::V3, dim: 256, mlp_dim: 1024, temperature: 0.2, momentum: 0.99, momentum_cosine: true, batch_size: 256, shuffle_bn: false, bn_splits: 1, symmetric: true, cosine: true, cosine_from_one: false, model, ..Self::colab() };
        match model {
            ModelKind::Vit => Self { optimizer: OptimizerKind::AdamW, lr: 1.5e-4, weight_decay: 0.1, epochs: 300, warmup_epochs: 40, ..base },
            ModelKind::ResNet18 => Self { optimizer: OptimizerKind::Lars, lr: 0.3, weight_decay: 1e-6, epochs: 1000, warmup_epochs: 10, ..base },
        }
    }

    /// Whether this is a MoCo v3 run.
    pub fn is_v3(&self) -> bool {
        self.preset == Preset::V3
    }

    /// Sets the number of epochs, keeping the warmup's share of the run where there is one (v3 with the cosine
    /// schedule): the warmup becomes `round(warmup × epochs / old epochs)`, at least 1 and at most `epochs - 1`
    /// (0 for a one-epoch run). moco-v3's 40 of 300 epochs become 1 of 10. Returns the change for the run's
    /// settings block when the warmup moved. A front end that was given the warmup explicitly sets `epochs` and
    /// `warmup_epochs` itself instead.
    pub fn set_epochs_keeping_warmup_share(&mut self, epochs: usize) -> Option<String> {
        let (old_epochs, old_warmup) = (self.epochs, self.warmup_epochs);
        self.epochs = epochs;
        if !(self.is_v3() && self.cosine) || old_warmup == 0 || old_epochs == 0 || epochs == old_epochs {
            return None;
        }
        let scaled = (old_warmup as f64 * epochs as f64 / old_epochs as f64).round() as usize;
        self.warmup_epochs = scaled.max(1).min(epochs.saturating_sub(1));
        (self.warmup_epochs != old_warmup).then(|| format!("warmup scaled with --epochs: {old_warmup} of {old_epochs} epochs -> {} of {epochs} (--warmup-epochs sets it)", self.warmup_epochs))
    }

    /// The learning rate at fractional epoch `epoch` (epoch + step / steps per epoch). v3: linear warmup then
    /// half-cosine, set every step (moco-v3's `adjust_learning_rate`); v1/v2: [`TrainConfig::lr_at`] of the
    /// epoch (set once per epoch, as the colab).
    pub fn lr_at_step(&self, epoch: f64) -> Result<f64> {
        if !self.is_v3() {
            return self.lr_at(epoch.floor() as usize);
        }
        if !self.cosine {
            return Ok(self.lr);
        }
        crate::optim::LrSchedule::warmup_cosine(self.lr, self.warmup_epochs as f64, self.epochs as f64)?.lr(epoch)
    }

    /// The key encoder's momentum at fractional epoch `epoch`: moco-v3's cosine schedule to 1 with
    /// `momentum_cosine`, else `momentum`.
    pub fn momentum_at(&self, epoch: f64) -> Result<f64> {
        if !self.momentum_cosine {
            return Ok(self.momentum);
        }
        crate::optim::MomentumSchedule::new(self.momentum, self.epochs as f64)?.momentum(epoch)
    }

    /// The ViT of a v3 run: [`TrainConfig::vit`] with the projector (3 layers, `mlp_dim` to `dim`, last BN).
    pub fn vit_config(&self) -> crate::nn::VitConfig {
        crate::nn::VitConfig { img_size: self.image_size, projector: Some(crate::nn::MlpSpec { layers: 3, hidden: self.mlp_dim, out: self.dim, last_bn: true }), ..self.vit }
    }

    /// moco-v3's predictor: 2 layers, `mlp_dim` hidden, last BN on the ViT (`MoCo_ViT`), off on the ResNet
    /// (`MoCo_ResNet`).
    pub fn predictor_spec(&self) -> crate::nn::MlpSpec {
        crate::nn::MlpSpec { layers: 2, hidden: self.mlp_dim, out: self.dim, last_bn: self.model == ModelKind::Vit }
    }

    /// A preset on top of the colab defaults: colab and v1 keep them (v1 differs in augmentation only); v2 adds
    /// the MLP head and T = 0.2.
    pub fn preset(p: Preset) -> Self {
        if p == Preset::V3 {
            return Self::v3(ModelKind::Vit);
        }
        let mut c = Self::colab();
        c.preset = p;
        if p == Preset::V2 {
            c.mlp = true;
            c.temperature = 0.2;
        }
        c
    }

    /// Sets the batch size. The learning rate is left as it is: the colab does not scale it with the batch.
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch_size = batch;
        self
    }

    /// Opt-in linear scaling (Goyal et al.; not what the colab does): `lr * batch / 512`.
    pub fn scale_lr_linearly(mut self) -> Self {
        self.lr = self.lr * self.batch_size as f64 / 512.0;
        self
    }

    /// The learning rate of epoch `epoch` (counted from 0), as [`TrainConfig::cosine`] and
    /// [`TrainConfig::cosine_from_one`] say.
    pub fn lr_at(&self, epoch: usize) -> Result<f64> {
        if !self.cosine {
            return Ok(self.lr);
        }
        let e = epoch + usize::from(self.cosine_from_one);
        crate::optim::LrSchedule::cosine(self.lr, self.epochs as f64)?.lr(e as f64)
    }

    /// The preset's augmentation at this image size: the colab's ([`AugmentConfig::colab_cifar`]), MoCo v1's
    /// or v2's.
    ///
    /// [`AugmentConfig::colab_cifar`]: crate::data::AugmentConfig::colab_cifar
    pub fn augmentation(&self) -> crate::data::AugmentConfig {
        use crate::data::AugmentConfig;
        match self.preset {
            Preset::Colab => AugmentConfig::colab_cifar().with_size(self.image_size),
            Preset::V1 => AugmentConfig::v1(self.image_size),
            Preset::V2 => AugmentConfig::v2(self.image_size),
            Preset::V3 => AugmentConfig::mocov3_view1(self.image_size),
        }
    }

    /// The augmentation of the two views: moco-v3's asymmetric pair for v3, the same config twice otherwise.
    pub fn views(&self) -> crate::data::ViewPair {
        match self.preset {
            Preset::V3 => crate::data::ViewPair::mocov3(self.image_size),
            _ => crate::data::ViewPair::same(self.augmentation()),
        }
    }

    /// One line per setting, for the start of a run; last lines for matrix products not at f32 and for `--no-graph`.
    pub fn describe(&self) -> String {
        let mut lines = self.describe_recipe();
        if self.matmul_precision != MatmulPrecision::Fp32 {
            lines.push_str(&format!("\n  matrix products (convolutions, linear layers) at {:?} on CUDA's tensor cores (sm_80+; f32 elsewhere)", self.matmul_precision));
        }
        if !self.cuda_graph {
            lines.push_str("\n  CUDA steps launched op by op (--no-graph), not captured as a graph");
        }
        lines
    }

    fn describe_recipe(&self) -> String {
        let sched = match (self.cosine, self.cosine_from_one) {
            (false, _) => "constant".to_string(),
            (true, true) => format!("cosine over {} epochs counted from 1 as the colab (the last epoch runs at lr 0)", self.epochs),
            (true, false) => format!("cosine over {} epochs counted from 0 (the first epoch at the full lr, the last above 0)", self.epochs),
        };
        if self.is_v3() {
            let backbone = match self.model {
                ModelKind::Vit => {
                    let v = self.vit_config();
                    format!("ViT {}x{} patch {} ({} tokens), D {}, depth {}, {} heads, MLP ratio {}, patch projection {}", v.img_size, v.img_size, v.patch, v.tokens(), v.dim, v.depth, v.heads, v.mlp_ratio, if v.stop_grad_conv1 { "frozen" } else { "trained" })
                }
                ModelKind::ResNet18 => "ResNet-18 (CIFAR stem)".to_string(),
            };
            let sched = if self.cosine { format!("{} warmup epochs, then half-cosine, set every step", self.warmup_epochs) } else { "constant".to_string() };
            let pred = self.predictor_spec();
            return format!(
                "  preset v3: {backbone}\n  projector {} layers {} -> {} (BN, last BN affine-free), predictor 2 layers {} -> {}{}\n  symmetric loss ctr(q1,k2)+ctr(q2,k1), T {}{}, no queue\n  epochs {}, batch {}, {} lr {} ({sched}), wd {}\n  key momentum {} {}\n  image size {}x{}, kNN monitor k={} t={}, seed {}",
                if self.model == ModelKind::Vit { 3 } else { 2 },
                self.mlp_dim,
                self.dim,
                self.mlp_dim,
                self.dim,
                if pred.last_bn { " (last BN)" } else { " (no last BN)" },
                self.temperature,
                if self.precision == Precision::Fp32 { String::new() } else { format!(", loss at {:?} precision", self.precision) },
                self.epochs,
                self.batch_size,
                self.optimizer.name(),
                self.lr,
                self.weight_decay,
                self.momentum,
                if self.momentum_cosine { "-> 1 (cosine, every step)" } else { "(constant)" },
                self.image_size,
                self.image_size,
                self.knn_k,
                self.knn_t,
                self.seed
            );
        }
        format!(
            "  preset {}: ResNet-18 (CIFAR stem), {} head to {}, T {}\n  epochs {}, batch {}, lr {} ({sched}), SGD momentum {}, wd {}\n  queue K {} ({:?}{}), key momentum m {}, symmetric loss {}\n  SplitBN {} groups of {}, shuffle-BN {}\n  image size {}x{}, kNN monitor k={} t={}, seed {}",
            self.preset.name(),
            if self.mlp { "MLP 512-512" } else { "linear 512" },
            self.dim,
            self.temperature,
            self.epochs,
            self.batch_size,
            self.lr,
            self.sgd_momentum,
            self.weight_decay,
            self.queue_len,
            self.queue_dtype,
            if self.precision == Precision::Fp32 { String::new() } else { format!(", loss at {:?} precision", self.precision) },
            self.momentum,
            self.symmetric,
            self.bn_splits,
            self.batch_size / self.bn_splits.max(1),
            if self.shuffle_bn { "on" } else { "off" },
            self.image_size,
            self.image_size,
            self.knn_k,
            self.knn_t,
            self.seed
        )
    }

    /// Checks every field; the error names the field, what is allowed and what was given.
    pub fn validate(&self) -> Result<()> {
        let pos = |v: f64| v.is_finite() && v > 0.0;
        if self.dim == 0 || self.batch_size == 0 || self.epochs == 0 || self.image_size < 8 {
            return Err(Error::settings("dim, batch_size, epochs, image_size (--out-dim, --batch, --epochs, --image-size)", "dim, batch size, epochs >= 1 and image size >= 8", format!("dim {}, batch {}, epochs {}, image size {}", self.dim, self.batch_size, self.epochs, self.image_size)));
        }
        if self.is_v3() {
            if self.mlp_dim == 0 || self.batch_size < 2 {
                return Err(Error::settings("mlp_dim, batch_size (--mlp-dim, --batch)", "mlp-dim >= 1 and a batch of at least 2 (BN in the heads)", format!("mlp-dim {}, batch {}", self.mlp_dim, self.batch_size)));
            }
            if self.warmup_epochs >= self.epochs && self.cosine {
                return Err(Error::settings("warmup_epochs (--warmup-epochs)", "warmup epochs < epochs (with the cosine schedule)", format!("warmup {}, epochs {}", self.warmup_epochs, self.epochs)));
            }
            if self.model == ModelKind::Vit {
                self.vit_config().validate()?;
            }
        } else if self.queue_len < self.batch_size * if self.symmetric { 2 } else { 1 } {
            return Err(Error::settings("queue_len (--queue)", "queue length K >= the keys enqueued per step (batch, or 2x batch with --symmetric)", format!("K = {}, batch {}", self.queue_len, self.batch_size)));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::settings("momentum (--momentum)", "momentum m in [0, 1]", format!("{}", self.momentum)));
        }
        if !pos(self.temperature) || !pos(self.lr) || !pos(self.knn_t) {
            return Err(Error::settings("temperature, lr (--temperature, --lr), knn_t", "finite temperature, lr and kNN t > 0", format!("T {}, lr {}, knn-t {}", self.temperature, self.lr, self.knn_t)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) || !(0.0..1.0).contains(&self.sgd_momentum) {
            return Err(Error::settings("weight_decay (--wd), sgd_momentum", "weight decay >= 0 and SGD momentum in [0, 1)", format!("wd {}, momentum {}", self.weight_decay, self.sgd_momentum)));
        }
        if self.bn_splits == 0 || self.batch_size % self.bn_splits != 0 || self.batch_size / self.bn_splits < 2 {
            return Err(Error::settings("bn_splits (--bn-splits)", "bn-splits >= 1 dividing the batch into groups of at least 2", format!("bn-splits {}, batch {}", self.bn_splits, self.batch_size)));
        }
        if self.knn_k == 0 {
            return Err(Error::settings("knn_k (--knn-k)", "knn-k >= 1", "0"));
        }
        Ok(())
    }

    /// The fields as strings (checkpoint metadata).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(format!("config.{k}"), v);
        };
        put("preset", format!("{:?}", self.preset));
        put("dim", self.dim.to_string());
        put("mlp", self.mlp.to_string());
        put("queue_len", self.queue_len.to_string());
        put("queue_dtype", format!("{:?}", self.queue_dtype));
        put("precision", format!("{:?}", self.precision));
        put("matmul_precision", format!("{:?}", self.matmul_precision));
        put("momentum", self.momentum.to_string());
        put("temperature", self.temperature.to_string());
        put("batch_size", self.batch_size.to_string());
        put("lr", self.lr.to_string());
        put("sgd_momentum", self.sgd_momentum.to_string());
        put("weight_decay", self.weight_decay.to_string());
        put("epochs", self.epochs.to_string());
        put("cosine", self.cosine.to_string());
        put("cosine_from_one", self.cosine_from_one.to_string());
        put("shuffle_bn", self.shuffle_bn.to_string());
        put("bn_splits", self.bn_splits.to_string());
        put("symmetric", self.symmetric.to_string());
        put("image_size", self.image_size.to_string());
        put("knn_k", self.knn_k.to_string());
        put("knn_t", self.knn_t.to_string());
        put("seed", self.seed.to_string());
        if self.is_v3() {
            let v = self.vit;
            put("model", self.model.name().to_string());
            if self.model == ModelKind::Vit {
                put("vit", format!("patch {} dim {} depth {} heads {} mlp_ratio {} stop_grad_conv1 {}", v.patch, v.dim, v.depth, v.heads, v.mlp_ratio, v.stop_grad_conv1));
            }
            put("mlp_dim", self.mlp_dim.to_string());
            put("optimizer", self.optimizer.name().to_string());
            put("warmup_epochs", self.warmup_epochs.to_string());
            put("momentum_cosine", self.momentum_cosine.to_string());
        }
        m
    }

    /// Fields that must agree for a checkpoint to resume this run (everything but `epochs`, which may be extended).
    pub fn mismatches(&self, meta: &BTreeMap<String, String>) -> Vec<String> {
        let mine = self.to_metadata();
        mine.iter()
            // epochs may be extended, and the arithmetic of the loss and the convolutions may change (a checkpoint
            // written before either existed has none)
            .filter(|(k, _)| !["config.epochs", "config.precision", "config.matmul_precision"].contains(&k.as_str()))
            .filter_map(|(k, v)| match meta.get(k) {
                Some(o) if o == v => None,
                Some(o) => Some(format!("{}: checkpoint {o}, this run {v}", &k[7..])),
                None => Some(format!("{}: missing in the checkpoint", &k[7..])),
            })
            .collect()
    }
}
