//! The MoCo v3 front door: moco-v3's ViT (or, with `--model resnet18`, a ResNet-18) trained with MoCo v3 on the
//! crate's own kernels: projector and predictor with BN, the fused symmetric loss, the momentum encoder on a
//! cosine schedule to 1, AdamW (ViT) or LARS (ResNet) with warmup and a half-cosine set every step, and moco-v3's
//! asymmetric augmentation.
//!
//! With no `--data`, it trains on the embedded handwritten digits (1,497 train / 300 test) with small settings
//! chosen so that the ViT visibly learns in a few minutes on 2 CPU cores (README, "MoCo v3 with a ViT"). With
//! `--data`, the defaults are moco-v3's recipe (`--preset v3`). Any flag overrides; every run prints its settings.
//!
//! ```text
//! cargo run --release --example train_vit
//! cargo run --release --example train_vit -- --data cifar-10-batches-bin --epochs 300 --batch 256
//! cargo run --release --example train_vit -- --model resnet18 --data digits --epochs 20
//! cargo run --release --example train_vit -- --export vit.safetensors   # timm names (scripts/check_vit_export.py)
//! ```

use clap::Parser;
use moco::train::{self, cli, ModelKind, OptimizerKind, RunOptions, TrainConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "MoCo v3 training of moco-v3's ViT (or a ResNet-18) on moco's fused kernels")]
struct Args {
    /// auto (CUDA, else a hardware wgpu adapter, else the CPU), cpu, wgpu (any adapter, lavapipe included) or cuda
    #[arg(long, default_value = "auto")]
    backend: String,
    /// `digits` (the embedded handwritten digits), `synthetic`, a CIFAR-10 binary folder or .bin file, or an image
    /// folder (one subfolder per class). Default: the embedded digits with the demo settings
    #[arg(long)]
    data: Option<String>,
    /// vit (moco-v3's ViT, AdamW) or resnet18 (ResNet-18 CIFAR stem, LARS, solo-learn's CIFAR recipe)
    #[arg(long, default_value = "vit")]
    model: String,
    /// ViT patch side [4]
    #[arg(long)]
    patch: Option<usize>,
    /// ViT width D [192; embedded default: 128]
    #[arg(long)]
    dim: Option<usize>,
    /// ViT blocks [4; embedded default: 4]
    #[arg(long)]
    depth: Option<usize>,
    /// ViT heads [3; embedded default: 4]
    #[arg(long)]
    heads: Option<usize>,
    /// Train the patch projection (moco-v3 freezes it: --stop-grad-conv1)
    #[arg(long)]
    train_patch_embed: bool,
    /// Projector and predictor hidden width [1024; moco-v3: 4096; embedded default: 512]
    #[arg(long)]
    mlp_dim: Option<usize>,
    /// Output width of the projector and predictor [256; embedded default: 128]
    #[arg(long)]
    out_dim: Option<usize>,
    /// Arithmetic of the fused loss: fp32, tf32x3 (tensor cores with split operands, f32's accuracy; out-dim <= 128
    /// and a multiple of 4), tf32 (tensor cores, 10-bit mantissas; the same shapes), or half (q and k in bf16 with f32
    /// accumulation on CUDA's tensor cores, out-dim <= 128 and a multiple of 8). CUDA sm_80+; f32 on the CPU and wgpu
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Arithmetic of the linear layers (and convolutions, with --model resnet18) on CUDA: fp32 (CUDA cores), tf32x3
    /// (tensor cores with split operands, f32's accuracy), tf32 (tensor cores, 10-bit mantissas) or bf16 (tensor
    /// cores, bf16 operands, as PyTorch's bf16 autocast); sm_80+, f32 elsewhere
    #[arg(long, default_value = "fp32")]
    matmul_precision: String,
    /// On CUDA, launch the step's kernels one by one instead of capturing the step once as a CUDA graph and
    /// replaying it (the same results; for debugging and profiling)
    #[arg(long)]
    no_graph: bool,
    /// Image side [32]
    #[arg(long)]
    image_size: Option<usize>,
    /// Epochs [ViT 300, ResNet 1000; embedded default: 6]
    #[arg(long)]
    epochs: Option<usize>,
    /// Warmup epochs [ViT 40, ResNet 10; embedded default: 1]
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// Batch size [256; embedded default: 64]
    #[arg(long)]
    batch: Option<usize>,
    /// Learning rate for this batch [ViT 1.5e-4 x batch / 256, ResNet 0.3 x batch / 256; embedded default 1e-3]
    #[arg(long)]
    lr: Option<f64>,
    /// sgd, adamw or lars [ViT: adamw; ResNet: lars]
    #[arg(long)]
    optimizer: Option<String>,
    /// Weight decay [ViT 0.1; ResNet 1e-6]
    #[arg(long)]
    wd: Option<f64>,
    /// Base key-encoder momentum, raised to 1 on a cosine [0.99]
    #[arg(long)]
    momentum: Option<f64>,
    /// Constant key-encoder momentum (no cosine schedule)
    #[arg(long)]
    no_momentum_cosine: bool,
    /// Temperature T [0.2]
    #[arg(long)]
    temperature: Option<f64>,
    /// Constant learning rate (no warmup, no cosine)
    #[arg(long)]
    no_cosine: bool,
    /// Smallest crop area fraction [0.08; embedded default: 0.5]
    #[arg(long)]
    crop_min: Option<f64>,
    /// No horizontal flip [embedded default: no flip, digits are not mirror-symmetric]
    #[arg(long)]
    no_flip: bool,
    /// kNN neighbours [200]
    #[arg(long)]
    knn_k: Option<usize>,
    /// Also run the kNN monitor on the backbone features (the default monitor uses the projector's output)
    #[arg(long)]
    knn_backbone: bool,
    #[command(flatten)]
    health: cli::HealthArgs,
    /// Time the CPU convolution algorithms of each new shape in this process instead of applying the fixed rule
    /// (as cudnn.benchmark: sometimes faster, but two runs may then differ in their last bits)
    #[arg(long)]
    conv_benchmark: bool,
    /// Profile N training steps instead of training: a per-layer table of GPU times where the device has
    /// timestamps (wgpu adapters with timestamp queries), else says why, with the wall time per step
    #[arg(long, value_name = "N")]
    profile_steps: Option<u64>,
    /// Seed of everything random [0]
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run folder (checkpoint, metrics, plot)
    #[arg(long, default_value = "runs/moco-v3")]
    out: PathBuf,
    /// Continue the run in --out from its checkpoint
    #[arg(long)]
    resume: bool,
    /// Write the trained backbone as safetensors (ViT: timm names; ResNet: torchvision names)
    #[arg(long)]
    export: Option<PathBuf>,
    /// Write a PNG grid of N augmented pairs (view 1 left, view 2 right) to OUT/views.png and continue
    #[arg(long)]
    save_views: Option<usize>,
    /// Train a linear classifier on the frozen backbone features for this many epochs at the end
    #[arg(long)]
    linear_probe: Option<usize>,
    /// Stop after this many steps in total (with a checkpoint, as Ctrl-C does)
    #[arg(long)]
    max_steps: Option<u64>,
    /// No progress bar
    #[arg(long)]
    no_progress: bool,
}

fn main() {
    cli::main(run)
}

/// The run's config, and the warmup change a shorter `--epochs` made (for the settings line).
fn config(a: &Args, demo: bool) -> moco::Result<(TrainConfig, Option<String>)> {
    let model = ModelKind::parse(&a.model)?;
    let mut cfg = TrainConfig::v3(model);
    if demo {
        cfg = cli::vit_demo_config(cfg);
    }
    cfg.vit.patch = a.patch.unwrap_or(cfg.vit.patch);
    cfg.vit.dim = a.dim.unwrap_or(cfg.vit.dim);
    cfg.vit.depth = a.depth.unwrap_or(cfg.vit.depth);
    cfg.vit.heads = a.heads.unwrap_or(cfg.vit.heads);
    cfg.vit.stop_grad_conv1 = !a.train_patch_embed;
    cfg.mlp_dim = a.mlp_dim.unwrap_or(cfg.mlp_dim);
    cfg.dim = a.out_dim.unwrap_or(cfg.dim);
    cfg.image_size = a.image_size.unwrap_or(cfg.image_size);
    // the warmup follows a shorter --epochs unless it is given too (moco-v3's 40 of 300 become 1 of 10)
    let mut warmup_note = None;
    match (a.epochs, a.warmup_epochs) {
        (Some(e), None) => warmup_note = cfg.set_epochs_keeping_warmup_share(e),
        (e, w) => (cfg.epochs, cfg.warmup_epochs) = (e.unwrap_or(cfg.epochs), w.unwrap_or(cfg.warmup_epochs)),
    }
    if let Some(b) = a.batch {
        // the recipe's lr is per 256 images: scale it with the batch unless --lr is given
        cfg.lr *= b as f64 / cfg.batch_size as f64;
        cfg.batch_size = b;
    }
    cfg.lr = a.lr.unwrap_or(cfg.lr);
    if let Some(o) = &a.optimizer {
        cfg.optimizer = OptimizerKind::parse(o)?;
    }
    cfg.weight_decay = a.wd.unwrap_or(cfg.weight_decay);
    cfg.momentum = a.momentum.unwrap_or(cfg.momentum);
    cfg.momentum_cosine = !a.no_momentum_cosine;
    cfg.temperature = a.temperature.unwrap_or(cfg.temperature);
    cfg.cosine = !a.no_cosine;
    cfg.knn_k = a.knn_k.unwrap_or(cfg.knn_k);
    cfg.seed = a.seed;
    cfg.precision = moco::Precision::parse("--precision", &a.precision)?;
    cfg.matmul_precision = moco::MatmulPrecision::parse("--matmul-precision", &a.matmul_precision)?;
    cfg.cuda_graph = !a.no_graph;
    cfg.validate()?;
    Ok((cfg, warmup_note))
}

/// Writes `{x: [n, 3, S, S], features: [n, D]}` for 16 test images (eval transform) next to the exported
/// backbone: what scripts/check_vit_export.py compares timm's features with.
fn write_features(engine: &mut dyn train::Engine, cfg: &TrainConfig, test: &Arc<moco::data::Dataset>, aug: &moco::data::AugmentConfig, backbone: &std::path::Path) -> moco::Result<PathBuf> {
    let eval = moco::data::AugmentConfig::eval(cfg.image_size).with_normalization(aug.mean, aug.std);
    let b = moco::data::eval_batches(test.clone(), eval, 16)?.next().ok_or_else(|| moco::Error::shape("export", "a test set of at least one image", "an empty one"))??;
    let f = engine.embed(&b.x, b.batch_size, true)?;
    let mut io = moco::checkpoint::Layout::default();
    io.push("x", &[b.batch_size, 3, cfg.image_size, cfg.image_size]);
    io.push("features", &[b.batch_size, f.len() / b.batch_size]);
    let data: Vec<f32> = b.x.iter().chain(&f).copied().collect();
    let path = backbone.with_extension("features.safetensors");
    moco::checkpoint::save(&path, &[moco::checkpoint::Part::new(&io, &data)], &[], &Default::default())?;
    Ok(path)
}

fn run(a: Args) -> moco::Result<()> {
    let t_start = Instant::now();
    let demo = a.data.is_none();
    let (cfg, warmup_note) = config(&a, demo)?;
    let mut settings = if demo {
        format!(
            "the embedded default (no --data): moco-v3's recipe at a demo's size, with these changes: ViT D {} depth {} heads {}, heads' hidden width {} to {}, {} epochs with {} of warmup, batch {}, lr {}, crops of {}-100 % and no flip (digits are small and not mirror-symmetric)",
            cfg.vit.dim, cfg.vit.depth, cfg.vit.heads, cfg.mlp_dim, cfg.dim, cfg.epochs, cfg.warmup_epochs, cfg.batch_size, cfg.lr, cli::DEMO_CROP_MIN
        )
    } else {
        "preset v3 (moco-v3's recipe; flags override)".to_string()
    };
    if let Some(note) = warmup_note {
        settings = format!("{settings}; {note}");
    }
    let intro = cli::Intro { title: "MoCo v3".to_string(), settings, views_label: "views" };
    let run = RunOptions { out_dir: a.out, resume: a.resume, progress: !a.no_progress, max_steps: a.max_steps, export: a.export, verbose: true, knn_backbone: a.knn_backbone, health: a.health.options(), ..RunOptions::default() };
    let flags = cli::RunFlags { backend: a.backend, data: a.data, synthetic: None, crop_min: a.crop_min, no_flip: a.no_flip, save_views: a.save_views, linear_probe: a.linear_probe, conv_benchmark: a.conv_benchmark, profile_steps: a.profile_steps, run };
    cli::train_run(&cfg, cfg.views(), &flags, &intro, t_start, |engine, test_ds, view1, p| {
        let feats = write_features(engine, &cfg, test_ds, view1, p)?;
        match cfg.model {
            ModelKind::Vit => println!(
                "backbone written to {} with timm's names, and 16 test images with their eval-mode cls features to {}; check in PyTorch: python scripts/check_vit_export.py {} {}",
                p.display(),
                feats.display(),
                p.display(),
                feats.display()
            ),
            ModelKind::ResNet18 => println!("backbone written to {} with torchvision's names (CIFAR stem, fc = Identity)", p.display()),
        }
        Ok(())
    })
}
