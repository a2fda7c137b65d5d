//! The front door: MoCo v1/v2 training of a ResNet-18 (CIFAR stem) on the crate's own kernels.
//!
//! With no `--data`, it trains on the embedded handwritten digits (real images, 1,497 train / 300 test, shipped in
//! the crate at 8x8) at their native 8x8 with small settings chosen so that MoCo visibly learns in a few minutes
//! on 2 CPU cores (README, "What you see").
//! With `--data`, the defaults are the official CIFAR-10 colab's (facebookresearch/moco,
//! `colab/moco_cifar10_demo.ipynb`): its augmentation, lr 0.06 at any batch, cosine, K=4096, m=0.99, T=0.1,
//! wd 5e-4, SplitBN 8 with shuffle-BN. Any flag overrides; every run prints its settings.
//!
//! ```text
//! cargo run --release --example train_resnet18
//! cargo run --release --example train_resnet18 -- --data digits --epochs 20 --batch 64
//! cargo run --release --example train_resnet18 -- --data cifar-10-batches-bin --preset v2 --epochs 200 --batch 512
//! cargo run --release --example train_resnet18 -- --export-data digits-cifar   # the digits as CIFAR-10 binary
//! ```

use clap::Parser;
use moco::data::ViewPair;
use moco::train::{self, cli, Preset, RunOptions, TrainConfig};
use moco::QueueDType;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "MoCo v1/v2 training of ResNet-18 (CIFAR stem) on moco's fused kernels")]
struct Args {
    /// auto (CUDA, else a hardware wgpu adapter, else the CPU), cpu, wgpu (any adapter, lavapipe included) or cuda
    #[arg(long, default_value = "auto")]
    backend: String,
    /// `digits` (the embedded handwritten digits), `synthetic` (generated shapes), a CIFAR-10 binary folder or
    /// .bin file, or an image folder (one subfolder per class). Default: the embedded digits with the demo settings
    #[arg(long)]
    data: Option<String>,
    /// colab (the CIFAR-10 colab: linear head, T=0.1, its augmentation), v1 (MoCo v1's ImageNet augmentation),
    /// v2 (MLP head, T=0.2, v2 augmentation) or v3 (MoCo v3 on this ResNet-18: LARS, projector and predictor, the
    /// symmetric loss; `train_vit --model resnet18` has the v3 flags)
    #[arg(long, default_value = "colab")]
    preset: String,
    /// Image side the network sees [--data: 32; embedded default: 8]
    #[arg(long)]
    image_size: Option<usize>,
    /// Epochs [colab: 200; embedded default: 10]
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size [colab: 512; embedded default: 64]
    #[arg(long)]
    batch: Option<usize>,
    /// Learning rate [0.06, at any batch size, as the colab]
    #[arg(long)]
    lr: Option<f64>,
    /// Scale the learning rate linearly with the batch: lr x batch / 512 (not the colab's recipe)
    #[arg(long)]
    lr_scale_linear: bool,
    /// Queue length K [4096; embedded default: 512]. Keep K well below the training set size, or images meet their own older keys as negatives
    #[arg(long)]
    queue: Option<usize>,
    /// Queue storage: f32 or bf16 (f16 also accepted)
    #[arg(long, default_value = "f32")]
    queue_dtype: String,
    /// Arithmetic of the fused loss: fp32, tf32x3 (tensor cores with split operands, f32's accuracy) or tf32 (tensor
    /// cores, 10-bit mantissas) for an f32 queue or v3, head dim <= 128 and a multiple of 4; or half (16-bit operands
    /// with f32 accumulation on CUDA's tensor cores: v1/v2 in the queue's format, bf16 for an f32 queue, v3 with q and
    /// k in bf16; head dim <= 128 and a multiple of 8). CUDA sm_80+; f32 on the CPU and wgpu
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Arithmetic of the convolutions and linear layers on CUDA: fp32 (CUDA cores), tf32x3 (tensor cores with split
    /// operands, f32's accuracy), tf32 (tensor cores, 10-bit mantissas, as cuDNN's default in PyTorch) or bf16
    /// (tensor cores, bf16 operands, as PyTorch's bf16 autocast); sm_80+, f32 elsewhere
    #[arg(long, default_value = "fp32")]
    matmul_precision: String,
    /// On CUDA, launch the step's kernels one by one instead of capturing the step once as a CUDA graph and
    /// replaying it (the same results; for debugging and profiling)
    #[arg(long)]
    no_graph: bool,
    /// Key-encoder momentum m [0.99]
    #[arg(long)]
    momentum: Option<f64>,
    /// Temperature T [colab, v1: 0.1; v2: 0.2]
    #[arg(long)]
    temperature: Option<f64>,
    /// Weight decay [5e-4]
    #[arg(long)]
    wd: Option<f64>,
    /// SplitBatchNorm groups [8; embedded default: 2]
    #[arg(long)]
    bn_splits: Option<usize>,
    /// No shuffle-BN (the key batch goes through the key encoder in loader order): for ablations
    #[arg(long)]
    no_shuffle_bn: bool,
    /// Symmetric loss (loss_12 + loss_21)
    #[arg(long)]
    symmetric: bool,
    /// Constant learning rate instead of the cosine schedule
    #[arg(long)]
    no_cosine: bool,
    /// Count the cosine's epochs from 0 (first epoch at the full lr, last above 0) instead of from 1 as the colab
    /// (whose last epoch runs at lr 0) [embedded default: from 0]
    #[arg(long)]
    cosine_from_zero: bool,
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
    /// Write the embedded digits as CIFAR-10 binary (DIR/train.bin, DIR/test.bin, DIR/LICENSE.txt) and exit
    #[arg(long)]
    export_data: Option<PathBuf>,
    /// Write a PNG grid of N augmented pairs to OUT/views.png and continue
    #[arg(long)]
    save_views: Option<usize>,
    /// Train a linear classifier on the frozen backbone features for this many epochs at the end
    #[arg(long)]
    linear_probe: Option<usize>,
    /// Synthetic set sizes (train, test) for --data synthetic [1024, 256]
    #[arg(long, num_args = 2)]
    synthetic: Option<Vec<usize>>,
    /// Stop after this many steps in total (with a checkpoint, as Ctrl-C does)
    #[arg(long)]
    max_steps: Option<u64>,
    /// Smallest crop area fraction of RandomResizedCrop [colab: 0.08; v1, v2: 0.2; embedded default: 0.5]
    #[arg(long)]
    crop_min: Option<f64>,
    /// No horizontal flip (for data whose classes are not mirror-symmetric, such as digits) [embedded default: on]
    #[arg(long)]
    no_flip: bool,
    /// Also run the kNN monitor on the pooled 512-d backbone features (the colab's monitor uses the head output)
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
    /// No progress bar
    #[arg(long)]
    no_progress: bool,
}

fn main() {
    cli::main(run)
}

fn run(a: Args) -> moco::Result<()> {
    let t_start = Instant::now();
    if let Some(dir) = &a.export_data {
        return cli::export_data(dir);
    }
    let preset = Preset::parse(&a.preset)?;
    // --preset v3 trains MoCo v3 on the ResNet-18 (examples/train_vit.rs has the ViT and the v3 flags)
    let mut cfg = if preset == Preset::V3 { TrainConfig::v3(train::ModelKind::ResNet18) } else { TrainConfig::preset(preset) };
    let demo = a.data.is_none();
    if demo {
        cfg = cli::resnet18_demo_config(cfg);
    }
    cfg.image_size = a.image_size.unwrap_or(cfg.image_size);
    if let Some(b) = a.batch {
        cfg = cfg.with_batch(b);
    }
    // --preset v3's warmup follows a shorter --epochs (printed in the settings)
    let warmup_note = a.epochs.and_then(|e| cfg.set_epochs_keeping_warmup_share(e));
    cfg.lr = a.lr.unwrap_or(cfg.lr);
    if a.lr_scale_linear {
        cfg = cfg.scale_lr_linearly();
    }
    cfg.queue_len = a.queue.unwrap_or(cfg.queue_len);
    cfg.momentum = a.momentum.unwrap_or(cfg.momentum);
    cfg.temperature = a.temperature.unwrap_or(cfg.temperature);
    cfg.weight_decay = a.wd.unwrap_or(cfg.weight_decay);
    cfg.bn_splits = a.bn_splits.unwrap_or(cfg.bn_splits);
    cfg.shuffle_bn = !a.no_shuffle_bn;
    cfg.knn_k = a.knn_k.unwrap_or(cfg.knn_k);
    cfg.symmetric = a.symmetric;
    cfg.cosine = !a.no_cosine;
    if a.cosine_from_zero {
        cfg.cosine_from_one = false;
    }
    cfg.seed = a.seed;
    cfg.queue_dtype = match a.queue_dtype.as_str() {
        "f32" => QueueDType::F32,
        "bf16" => QueueDType::BF16,
        "f16" => QueueDType::F16,
        d => return Err(moco::Error::settings("--queue-dtype", "f32, bf16 or f16", d.to_string())),
    };
    cfg.precision = moco::Precision::parse("--precision", &a.precision)?;
    cfg.matmul_precision = moco::MatmulPrecision::parse("--matmul-precision", &a.matmul_precision)?;
    cfg.cuda_graph = !a.no_graph;
    if cfg.is_v3() {
        // moco-v3 normalises over the whole batch (SyncBN) and has no shuffle-BN, no queue
        (cfg.bn_splits, cfg.shuffle_bn, cfg.symmetric) = (a.bn_splits.unwrap_or(1), false, true);
    }
    cfg.validate()?;

    let mut settings = if demo {
        format!("the embedded default (no --data): the colab's recipe at a demo's size, with these changes: {}x{} images, {} epochs, batch {}, K {}, SplitBN {} (groups of {}), crops of {}-100 % and no flip (digits are small and not mirror-symmetric), cosine counted from 0", cfg.image_size, cfg.image_size, cfg.epochs, cfg.batch_size, cfg.queue_len, cfg.bn_splits, cfg.batch_size / cfg.bn_splits, cli::DEMO_CROP_MIN)
    } else {
        format!("preset {} (the colab's defaults; flags override){}", preset.name(), if a.lr_scale_linear { "; lr scaled linearly, batch / 512 (--lr-scale-linear)" } else { "" })
    };
    if let Some(note) = warmup_note {
        settings = format!("{settings}; {note}");
    }
    let intro = cli::Intro { title: format!("MoCo ({} preset)", preset.name()), settings, views_label: "augmentation" };
    let run = RunOptions { out_dir: a.out, resume: a.resume, progress: !a.no_progress, max_steps: a.max_steps, export: a.export, verbose: true, knn_backbone: a.knn_backbone, health: a.health.options(), ..RunOptions::default() };
    let flags = cli::RunFlags { backend: a.backend, data: a.data, synthetic: a.synthetic.map(|s| (s[0], s[1])), crop_min: a.crop_min, no_flip: a.no_flip, save_views: a.save_views, linear_probe: a.linear_probe, conv_benchmark: a.conv_benchmark, profile_steps: a.profile_steps, run };
    // one augmentation for both views, v3 included (train_vit has moco-v3's asymmetric pair)
    cli::train_run(&cfg, ViewPair::same(cfg.augmentation()), &flags, &intro, t_start, |_, _, _, p| {
        println!("backbone written to {}. In PyTorch:", p.display());
        println!("  m = torchvision.models.resnet18(); m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)");
        println!("  m.maxpool = torch.nn.Identity(); m.fc = torch.nn.Identity()");
        println!("  m.load_state_dict(safetensors.torch.load_file('{}'), strict=True)", p.display());
        Ok(())
    })
}
