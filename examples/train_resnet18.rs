//! The front door. Until the ResNet trainer lands, this runs the fused MoCo head end to end on the best available
//! backend: a linear encoder on the digits (CIFAR-10 binary format) or on synthetic data, trained with the fused
//! InfoNCE (loss, acc@1/acc@5 and dq from one kernel), a momentum encoder updated by the fused EMA, and a
//! ring-buffer queue. It prints loss, acc@1/acc@5 (from the loss kernel) and timing. The kNN monitor and the
//! ResNet encoders come with the trainer issue.
//!
//! `cargo run --release --example train_resnet18 -- --help`

use clap::Parser;
use moco::backend::{AnyBackend, Backend};
use moco::shape::{InfoNceShape, QueueDType, QueueShape};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "MoCo head demo on the fused kernels (the ResNet-18 trainer lands with a later issue)")]
struct Args {
    /// cpu, wgpu, cuda or auto (CUDA, then a GPU wgpu adapter, then the CPU)
    #[arg(long, default_value = "auto")]
    backend: String,
    /// CIFAR-10 binary file to train on; defaults to ../shared/data/digits/train.bin, else synthetic data
    #[arg(long)]
    data: Option<String>,
    /// Training steps
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Batch size N
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Queue length K (any K >= N; no K % N requirement)
    #[arg(long, default_value_t = 1000)]
    queue: usize,
    /// Feature dimension C
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Temperature T
    #[arg(long, default_value_t = 0.2)]
    temperature: f32,
    /// EMA momentum m
    #[arg(long, default_value_t = 0.99)]
    momentum: f32,
    /// Learning rate
    #[arg(long, default_value_t = 2.0)]
    lr: f32,
    /// Queue storage: f32, f16 or bf16
    #[arg(long, default_value = "f32")]
    queue_dtype: String,
    /// Random seed
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Pixels per image after 2x2 average pooling of one channel: 16 x 16.
const D: usize = 256;

struct Data {
    images: Vec<Vec<f32>>, // each [32 * 32], values in [0, 1]
    #[allow(dead_code)] // used by the kNN monitor of the trainer issue
    labels: Vec<u8>,
}

fn load_cifar(path: &str) -> moco::Result<Data> {
    let bytes = std::fs::read(path).map_err(|e| moco::Error::Io { path: path.into(), source: e })?;
    if bytes.is_empty() || bytes.len() % 3073 != 0 {
        return Err(moco::Error::BadFile { path: path.into(), reason: format!("size {} is not a multiple of 3073 (CIFAR-10 binary records)", bytes.len()) });
    }
    let mut d = Data { images: Vec::new(), labels: Vec::new() };
    for rec in bytes.chunks_exact(3073) {
        if rec[0] > 9 {
            return Err(moco::Error::BadFile { path: path.into(), reason: format!("label {} out of range 0..9", rec[0]) });
        }
        d.labels.push(rec[0]);
        d.images.push(rec[1..1025].iter().map(|&p| p as f32 / 255.0).collect());
    }
    Ok(d)
}

fn synthetic(n: usize, rng: &mut Rng) -> Data {
    // ten blob prototypes plus noise
    let protos: Vec<Vec<f32>> = (0..10).map(|_| (0..1024).map(|_| rng.uniform().max(0.0)).collect()).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let images = labels.iter().map(|&l| protos[l as usize].iter().map(|&p| (p + 0.3 * rng.uniform()).clamp(0.0, 1.0)).collect()).collect();
    Data { images, labels }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random shift by up to 3 pixels, brightness jitter and noise, then 2x2 pooling to 16 x 16, centred.
fn augment(img: &[f32], rng: &mut Rng) -> Vec<f32> {
    let (dx, dy) = (rng.below(7) as i32 - 3, rng.below(7) as i32 - 3);
    let gain = 1.0 + 0.3 * rng.uniform();
    let mut out = vec![0.0; D];
    for y in 0..16 {
        for x in 0..16 {
            let mut s = 0.0;
            for (oy, ox) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let (sy, sx) = (2 * y as i32 + oy - dy, 2 * x as i32 + ox - dx);
                if (0..32).contains(&sy) && (0..32).contains(&sx) {
                    s += img[(sy * 32 + sx) as usize];
                }
            }
            out[y * 16 + x] = (s / 4.0) * gain + 0.05 * rng.uniform() - 0.5;
        }
    }
    out
}

#[allow(dead_code)]
fn plain(img: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; D];
    for y in 0..16 {
        for x in 0..16 {
            out[y * 16 + x] = (img[2 * y * 32 + 2 * x] + img[2 * y * 32 + 2 * x + 1] + img[(2 * y + 1) * 32 + 2 * x] + img[(2 * y + 1) * 32 + 2 * x + 1]) / 4.0 - 0.5;
        }
    }
    out
}

/// `out [rows, C] = x [rows, D] · wᵀ`, `w: [C, D]`.
fn encode(x: &[f32], w: &[f32], rows: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; rows * c];
    for r in 0..rows {
        for o in 0..c {
            out[r * c + o] = x[r * D..(r + 1) * D].iter().zip(&w[o * D..(o + 1) * D]).map(|(a, b)| a * b).sum();
        }
    }
    out
}

fn run<B: Backend>(b: &B, args: &Args, train: &Data) -> moco::Result<()> {
    let (n, c, k) = (args.batch, args.dim, args.queue);
    let shape = InfoNceShape::new(n, c, k, args.temperature)?;
    let dtype = match args.queue_dtype.as_str() {
        "f32" => QueueDType::F32,
        "f16" => QueueDType::F16,
        "bf16" => QueueDType::BF16,
        other => return Err(moco::Error::shape("--queue-dtype", "f32, f16 or bf16", other.to_string())),
    };
    let mut rng = Rng(args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // query encoder w: [C, D]; key encoder starts as a copy and follows by EMA on the device
    let scale = (1.0 / D as f32).sqrt();
    let mut w: Vec<f32> = (0..c * D).map(|_| rng.uniform() * scale).collect();
    let mut w_key = b.upload(&w)?;
    let init: Vec<f32> = (0..k * c).map(|_| rng.uniform()).collect();
    let mut queue = b.queue_from_f32(&init, QueueDType::F32).and_then(|q0| {
        // normalise the random initial queue through the enqueue kernel, N rows at a time
        let mut q0 = q0;
        let mut ptr = 0;
        for start in (0..k).step_by(n) {
            let rows = n.min(k - start);
            ptr = b.enqueue(&mut q0, &b.upload(&init[start * c..(start + rows) * c])?, &QueueShape::new(rows, c, k, ptr)?)?;
        }
        Ok(q0)
    })?;
    if dtype != QueueDType::F32 {
        queue = b.queue_from_f32(&b.queue_to_f32(&queue)?, dtype)?;
    }
    println!("backend: {}  N={n} C={c} K={k} T={} m={} queue={dtype:?}", b.name(), args.temperature, args.momentum);
    let (mut dq, mut row_loss) = (b.alloc_nan(n * c)?, b.alloc_nan(n)?);
    let mut ptr = 0;
    let mut op_time = Duration::ZERO;
    let t_all = Instant::now();
    for step in 0..args.steps {
        let idx: Vec<usize> = (0..n).map(|_| rng.below(train.images.len())).collect();
        let x1: Vec<f32> = idx.iter().flat_map(|&i| augment(&train.images[i], &mut rng)).collect();
        let x2: Vec<f32> = idx.iter().flat_map(|&i| augment(&train.images[i], &mut rng)).collect();
        let t0 = Instant::now();
        let wq = b.upload(&w)?;
        b.ema_update(&mut w_key, &wq, args.momentum)?;
        let wk = b.download(&w_key)?;
        op_time += t0.elapsed();
        let q = encode(&x1, &w, n, c);
        let key = encode(&x2, &wk, n, c);
        let t1 = Instant::now();
        let (qb, kb) = (b.upload(&q)?, b.upload(&key)?);
        let stats = b.infonce(&mut dq, &mut row_loss, &qb, &kb, &queue, &shape)?;
        if !stats.loss.is_finite() {
            return Err(moco::Error::shape("train", "a finite loss", format!("loss {} at step {step}", stats.loss)));
        }
        ptr = b.enqueue(&mut queue, &kb, &QueueShape::new(n, c, k, ptr)?)?;
        let g = b.download(&dq)?;
        op_time += t1.elapsed();
        // w -= lr * dqᵀ · x1
        for o in 0..c {
            for r in 0..n {
                let go = args.lr * g[r * c + o];
                if go != 0.0 {
                    for (wv, xv) in w[o * D..(o + 1) * D].iter_mut().zip(&x1[r * D..(r + 1) * D]) {
                        *wv -= go * xv;
                    }
                }
            }
        }
        if step % 25 == 0 || step + 1 == args.steps {
            println!("step {step:4}  loss {:.4}  acc@1 {:5.1}%  acc@5 {:5.1}%  ptr {ptr}", stats.loss, 100.0 * stats.top1 as f32 / n as f32, 100.0 * stats.top5 as f32 / n as f32);
        }
    }
    let total = t_all.elapsed();
    println!(
        "{} steps in {:.2} s; fused ops (EMA, InfoNCE fwd+bwd, enqueue, transfers) {:.2} ms/step",
        args.steps,
        total.as_secs_f64(),
        op_time.as_secs_f64() * 1e3 / args.steps as f64
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = main_inner(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn main_inner(args: &Args) -> moco::Result<()> {
    let default = format!("{}/../shared/data/digits/train.bin", env!("CARGO_MANIFEST_DIR"));
    let train = match &args.data {
        Some(p) => load_cifar(p)?,
        None if std::path::Path::new(&default).exists() => load_cifar(&default)?,
        None => {
            println!("no --data and no ../shared/data/digits: using synthetic blobs");
            synthetic(1000, &mut Rng(12345))
        }
    };
    println!("data: {} images", train.images.len());
    let backend = if args.backend == "auto" {
        let (b, why) = AnyBackend::auto();
        for e in why {
            println!("(skipped: {e})");
        }
        b
    } else {
        AnyBackend::by_name(&args.backend)?
    };
    match &backend {
        AnyBackend::Cpu(b) => run(b, args, &train),
        AnyBackend::Wgpu(b) => run(b, args, &train),
        AnyBackend::Cuda(b) => run(b, args, &train),
    }
}
