//! The front door: MoCo v1/v2 training of a ResNet-18 (CIFAR stem) on the crate's own kernels, with the recipe of
//! facebookresearch/moco's CIFAR-10 colab (K=4096, m=0.99, T=0.1, lr 0.06 at batch 512, wd 5e-4, bn-splits 8,
//! cosine schedule, kNN monitor k=200 t=0.1). Any flag overrides the preset.
//!
//! With no `--data`, it trains on an embedded synthetic set (10 classes of shapes and textures) with small
//! defaults, so that a fresh clone trains, evaluates and finishes in about two minutes on the CPU:
//!
//! ```text
//! cargo run --release --example train_resnet18
//! cargo run --release --example train_resnet18 -- --data ../shared/data/digits --epochs 20
//! cargo run --release --example train_resnet18 -- --data cifar-10-batches-bin --preset v2 --epochs 200 --batch 512
//! ```

use clap::Parser;
use moco::data::{self, AugmentConfig, PairLoader, SyntheticConfig};
use moco::backend::wgpu::WgpuContext;
use moco::train::{self, CpuEngine, Engine, Preset, RunOptions, TrainConfig, WgpuEngine};
use moco::QueueDType;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(about = "MoCo v1/v2 training of ResNet-18 (CIFAR stem) on moco's fused kernels")]
struct Args {
    /// auto (a hardware wgpu adapter, else the CPU), cpu, wgpu (any adapter, lavapipe included) or cuda (not yet)
    #[arg(long, default_value = "auto")]
    backend: String,
    /// CIFAR-10 binary folder or .bin file, or an image folder (one subfolder per class); default: embedded synthetic set
    #[arg(long)]
    data: Option<PathBuf>,
    /// v1 (linear head, v1 augmentation) or v2 (MLP head, T=0.2, v2 augmentation)
    #[arg(long, default_value = "v1")]
    preset: String,
    /// Epochs [colab: 200; embedded default: 3]
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size [colab: 512; embedded default: 64]
    #[arg(long)]
    batch: Option<usize>,
    /// Learning rate [0.06 x batch / 512]
    #[arg(long)]
    lr: Option<f64>,
    /// Queue length K [4096; embedded default: 256]. Keep K well below the training set size, or images meet their own older keys as negatives
    #[arg(long)]
    queue: Option<usize>,
    /// Queue storage: f32 or bf16 (f16 also accepted)
    #[arg(long, default_value = "f32")]
    queue_dtype: String,
    /// Key-encoder momentum m [0.99]
    #[arg(long)]
    momentum: Option<f64>,
    /// Temperature T [v1: 0.1, v2: 0.2]
    #[arg(long)]
    temperature: Option<f64>,
    /// Weight decay [5e-4]
    #[arg(long)]
    wd: Option<f64>,
    /// SplitBatchNorm groups [8]
    #[arg(long)]
    bn_splits: Option<usize>,
    /// Symmetric loss (loss_12 + loss_21)
    #[arg(long)]
    symmetric: bool,
    /// Constant learning rate instead of the cosine schedule
    #[arg(long)]
    no_cosine: bool,
    /// kNN neighbours [200]
    #[arg(long)]
    knn_k: Option<usize>,
    /// Seed of everything random [0]
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run folder (checkpoint, metrics, plot)
    #[arg(long, default_value = "runs/moco")]
    out: PathBuf,
    /// Continue the run in --out from its checkpoint
    #[arg(long)]
    resume: bool,
    /// Write the trained backbone as safetensors with torchvision names
    #[arg(long)]
    export: Option<PathBuf>,
    /// Write a PNG grid of N augmented pairs to OUT/views.png and continue
    #[arg(long)]
    save_views: Option<usize>,
    /// Train a linear classifier on the frozen backbone features for this many epochs at the end
    #[arg(long)]
    linear_probe: Option<usize>,
    /// Synthetic set sizes (train, test) [1024, 256]
    #[arg(long, num_args = 2)]
    synthetic: Option<Vec<usize>>,
    /// Stop after this many steps in total (with a checkpoint, as Ctrl-C does)
    #[arg(long)]
    max_steps: Option<u64>,
    /// Smallest crop area fraction of RandomResizedCrop [0.2]
    #[arg(long)]
    crop_min: Option<f64>,
    /// No horizontal flip (for data whose classes are not mirror-symmetric, such as digits)
    #[arg(long)]
    no_flip: bool,
    /// Also run the kNN monitor on the pooled 512-d backbone features (the colab's monitor uses the head output)
    #[arg(long)]
    knn_backbone: bool,
    /// No progress bar
    #[arg(long)]
    no_progress: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> moco::Result<()> {
    let preset = match a.preset.as_str() {
        "v1" => Preset::V1,
        "v2" => Preset::V2,
        p => return Err(moco::Error::shape("--preset", "v1 or v2", p.to_string())),
    };
    let mut cfg = TrainConfig::preset(preset);
    let embedded = a.data.is_none();
    if embedded {
        // small defaults: about two minutes on 2 CPU cores
        cfg = cfg.with_batch(64);
        cfg.epochs = 3;
        cfg.queue_len = 256; // well below the 1024 images, so no image meets its own older key as a negative
        cfg.lr = 0.06;
        cfg.bn_splits = 2; // SplitBN groups of 32 (the colab's are 64; groups of 8 learn far worse, see README)
    }
    if let Some(b) = a.batch {
        cfg = cfg.with_batch(b);
    }
    cfg.epochs = a.epochs.unwrap_or(cfg.epochs);
    cfg.lr = a.lr.unwrap_or(cfg.lr);
    cfg.queue_len = a.queue.unwrap_or(cfg.queue_len);
    cfg.momentum = a.momentum.unwrap_or(cfg.momentum);
    cfg.temperature = a.temperature.unwrap_or(cfg.temperature);
    cfg.weight_decay = a.wd.unwrap_or(cfg.weight_decay);
    cfg.bn_splits = a.bn_splits.unwrap_or(cfg.bn_splits);
    cfg.knn_k = a.knn_k.unwrap_or(cfg.knn_k);
    cfg.symmetric = a.symmetric;
    cfg.cosine = !a.no_cosine;
    cfg.seed = a.seed;
    cfg.queue_dtype = match a.queue_dtype.as_str() {
        "f32" => QueueDType::F32,
        "bf16" => QueueDType::BF16,
        "f16" => QueueDType::F16,
        d => return Err(moco::Error::shape("--queue-dtype", "f32, bf16 or f16", d.to_string())),
    };
    cfg.validate()?;

    let (train_ds, test_ds, source) = match &a.data {
        Some(p) => {
            let (tr, te) = data::load(p, cfg.image_size)?;
            (tr, te, p.display().to_string())
        }
        None => {
            let sizes = a.synthetic.clone().unwrap_or(vec![1024, 256]);
            let sc = SyntheticConfig { train: sizes[0], test: sizes[1], size: cfg.image_size, seed: cfg.seed, ..SyntheticConfig::default() };
            let (tr, te) = data::synthetic(&sc)?;
            (tr, te, format!("embedded synthetic set ({} train / {} test, 10 classes)", sizes[0], sizes[1]))
        }
    };
    let aug = match preset {
        Preset::V1 => AugmentConfig::v1(cfg.image_size),
        Preset::V2 => AugmentConfig::v2(cfg.image_size),
    };
    let mut aug = aug;
    if let Some(c) = a.crop_min {
        aug.crop_scale.0 = c;
    }
    if a.no_flip {
        aug.flip_p = 0.0;
    }
    aug.validate()?;
    let (train_ds, test_ds) = (Arc::new(train_ds), Arc::new(test_ds));

    let mut engine: Box<dyn Engine> = match a.backend.as_str() {
        "cpu" => Box::new(CpuEngine::new(&cfg)?),
        // any adapter, lavapipe included, when asked for by name
        "wgpu" => Box::new(WgpuEngine::new(&WgpuContext::new(moco::backend::Adapter::Any)?, &cfg)?),
        // the CUDA kernels (loss, EMA, queue, layers, optimisers) have no training engine yet
        "cuda" => return Err(moco::Error::Unavailable("no CUDA training engine yet: use --backend wgpu or cpu".into())),
        // auto: a hardware wgpu adapter, else the CPU
        "auto" => match WgpuContext::new(moco::backend::Adapter::HardwareOnly) {
            Ok(ctx) => Box::new(WgpuEngine::new(&ctx, &cfg)?),
            Err(_) => Box::new(CpuEngine::new(&cfg)?),
        },
        b => return Err(moco::Error::shape("--backend", "auto, cpu, wgpu or cuda", b.to_string())),
    };
    println!("moco: MoCo {:?} / ResNet-18 (CIFAR stem) on {}", preset, engine.name());
    println!("data: {source}: {} train, {} test images", train_ds.len(), test_ds.len());
    println!(
        "config: epochs {}, batch {}, lr {} ({}), K {} ({:?}), m {}, T {}, wd {}, bn-splits {}, symmetric {}, head {}, kNN k={} t={}, seed {}",
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        if cfg.cosine { "cosine" } else { "constant" },
        cfg.queue_len,
        cfg.queue_dtype,
        cfg.momentum,
        cfg.temperature,
        cfg.weight_decay,
        cfg.bn_splits,
        cfg.symmetric,
        if cfg.mlp { "MLP 512-512-128" } else { "linear 512-128" },
        cfg.knn_k,
        cfg.knn_t,
        cfg.seed
    );
    println!("run folder: {}", a.out.display());

    if let Some(n) = a.save_views {
        std::fs::create_dir_all(&a.out).map_err(|e| moco::Error::Io { path: a.out.display().to_string(), source: e })?;
        let loader = PairLoader::new(train_ds.clone(), aug.clone(), cfg.batch_size.max(n), cfg.seed)?;
        let batch = loader.batch(0, 0)?;
        let path = a.out.join("views.png");
        data::save_views(&path, &batch, n, aug.mean, aug.std)?;
        println!("wrote {n} augmented pairs to {}", path.display());
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            eprintln!("\nCtrl-C: finishing the current step and writing a checkpoint");
            stop.store(true, Ordering::SeqCst);
        });
    }
    let opts = RunOptions { out_dir: a.out.clone(), resume: a.resume, progress: !a.no_progress, max_steps: a.max_steps, stop: Some(stop), no_knn: false, export: a.export.clone(), verbose: true, knn_backbone: a.knn_backbone };
    let summary = train::train(&cfg, engine.as_mut(), train_ds.clone(), test_ds.clone(), aug.clone(), &opts)?;
    if summary.interrupted {
        println!("stopped at step {}; continue with --resume --out {}", summary.global_step, a.out.display());
        return Ok(());
    }
    println!("throughput: {:.1} pairs/s ({:.1} img/s)", summary.pairs_per_s, 2.0 * summary.pairs_per_s);
    if let (Some(first), Some(last)) = (summary.knn.first(), summary.knn.last()) {
        println!("kNN top-1: epoch {} {:.2}% -> epoch {} {:.2}% ({:+.2} points)", first.0, first.1, last.0, last.1, last.1 - first.1);
    }
    if let (Some(first), Some(last)) = (summary.knn_backbone.first(), summary.knn_backbone.last()) {
        println!("kNN top-1 on backbone features: epoch {} {:.2}% -> epoch {} {:.2}% ({:+.2} points)", first.0, first.1, last.0, last.1, last.1 - first.1);
    }
    println!("metrics: {0}/metrics.jsonl, {0}/metrics.csv; curves: {0}/curves.png; checkpoint: {0}/checkpoint.safetensors", a.out.display());
    if let Some(p) = &a.export {
        println!("backbone written to {}. In PyTorch:", p.display());
        println!("  m = torchvision.models.resnet18(); m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)");
        println!("  m.maxpool = torch.nn.Identity(); m.fc = torch.nn.Identity()");
        println!("  m.load_state_dict(safetensors.torch.load_file('{}'), strict=True)", p.display());
    }
    if let Some(epochs) = a.linear_probe {
        let probe = train::linear_probe_on(engine.as_mut(), &cfg, &train_ds, &test_ds, &aug, epochs)?;
        println!("linear probe ({epochs} epochs on frozen backbone features): train {:.2}%, test {:.2}%", probe.0, probe.1);
    }
    Ok(())
}
