//! What the command-line front ends (`examples/train_resnet18.rs`, `examples/train_vit.rs`) share: the
//! environment a headless Vulkan probe needs, the device probe that picks an engine for a config (ResNet or ViT,
//! as `cfg.model` says) with the reason, and the data sources (`digits`, `synthetic`, a CIFAR-10 binary folder or
//! an image folder).

use super::config::{ModelKind, TrainConfig};
use super::engine::Engine;
use super::moco::{Encoder, MocoEngine};
use crate::backend::{CpuDevice, MocoDevice};
use crate::data::{self, Dataset, SyntheticConfig};
use crate::error::{Error, Result};
use crate::nn::{ResNetLayout, VitLayout};
use std::path::PathBuf;

/// Prepares the process for a GPU probe: compute needs Vulkan, Metal or DX12 only (the GL backend is not probed;
/// `WGPU_BACKEND`, if set, wins), and Mesa's window-system code wants a private `XDG_RUNTIME_DIR` on a machine
/// without a desktop session (it prints an error otherwise). Returns the folder it made, to remove at exit.
pub fn prepare_env() -> Option<PathBuf> {
    if std::env::var_os("WGPU_BACKEND").is_none() {
        std::env::set_var("WGPU_BACKEND", "vulkan,metal,dx12");
    }
    #[cfg(unix)]
    if !std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir()) {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("moco-xdg-runtime-{}", std::process::id()));
        if std::fs::create_dir_all(&dir).is_ok() && std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok() {
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
            return Some(dir);
        }
    }
    None
}

/// The engine of `cfg` (its model) on `dev`.
fn engine_on<D: MocoDevice + 'static>(dev: D, cfg: &TrainConfig) -> Result<Box<dyn Engine>> {
    fn boxed<D: MocoDevice + 'static, M: Encoder + 'static>(dev: D, cfg: &TrainConfig) -> Result<Box<dyn Engine>> {
        Ok(Box::new(MocoEngine::<D, M>::on(dev, cfg)?))
    }
    match cfg.model {
        ModelKind::ResNet18 => boxed::<D, ResNetLayout>(dev, cfg),
        ModelKind::Vit => boxed::<D, VitLayout>(dev, cfg),
    }
}

/// An error's message without the `Unavailable` prefix.
fn message(e: Error) -> String {
    match e {
        Error::Unavailable(m) => m,
        other => other.to_string(),
    }
}

#[cfg(feature = "cuda")]
fn cuda_engine(cfg: &TrainConfig) -> Result<(Box<dyn Engine>, String)> {
    let cuda = crate::backend::cuda::Cuda::new(0)?;
    let name = cuda.name();
    Ok((engine_on(cuda, cfg)?, name))
}

#[cfg(not(feature = "cuda"))]
fn cuda_engine(_: &TrainConfig) -> Result<(Box<dyn Engine>, String)> {
    Err(Error::Unavailable("this build has no `cuda` feature".into()))
}

#[cfg(feature = "wgpu")]
fn wgpu_engine(cfg: &TrainConfig, hardware_only: bool) -> Result<(Box<dyn Engine>, String)> {
    let adapter = if hardware_only { crate::backend::Adapter::HardwareOnly } else { crate::backend::Adapter::Any };
    let ctx = crate::backend::wgpu::WgpuContext::new(adapter)?;
    let name = ctx.adapter_name.clone();
    Ok((engine_on(ctx, cfg)?, name))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_engine(_: &TrainConfig, _: bool) -> Result<(Box<dyn Engine>, String)> {
    Err(Error::Unavailable("this build has no `wgpu` feature".into()))
}

/// Picks the engine for `backend` (`auto`: CUDA, else a hardware wgpu adapter, else the CPU; `cpu`, `wgpu` (any
/// adapter, lavapipe included) or `cuda`), and says what it found and why it chose.
pub fn pick_engine(backend: &str, cfg: &TrainConfig) -> Result<(Box<dyn Engine>, String)> {
    let threads = rayon::current_num_threads();
    match backend {
        "cpu" => Ok((engine_on(CpuDevice::new(), cfg)?, format!("CPU engine ({threads} threads), as asked (--backend cpu); no GPU probe"))),
        "wgpu" => {
            let (e, name) = wgpu_engine(cfg, false)?;
            Ok((e, format!("wgpu engine on {name}, as asked (--backend wgpu)")))
        }
        "cuda" => {
            let (e, name) = cuda_engine(cfg)?;
            Ok((e, format!("CUDA engine on {name}, as asked (--backend cuda)")))
        }
        "auto" => {
            let cuda_why = match cuda_engine(cfg) {
                Ok((e, name)) => return Ok((e, format!("CUDA engine on {name} (a GPU with libcuda)"))),
                Err(e) => message(e),
            };
            match wgpu_engine(cfg, true) {
                Ok((e, name)) => Ok((e, format!("wgpu engine on {name} (a hardware GPU adapter); not CUDA: {cuda_why}"))),
                Err(e) => Ok((
                    engine_on(CpuDevice::new(), cfg)?,
                    format!("CPU engine ({threads} threads). Not a GPU: CUDA: {cuda_why}; wgpu: {} (a software adapter such as lavapipe is slower than the CPU engine; --backend wgpu uses it anyway)", message(e)),
                )),
            }
        }
        b => Err(Error::shape("--backend", "auto, cpu, wgpu or cuda", b.to_string())),
    }
}

/// The train and test sets of `--data` (`None` or `digits`: the embedded digits at 32x32; `synthetic`: generated
/// shapes of `synthetic` (train, test) sizes; otherwise a CIFAR-10 binary folder or file, or an image folder at
/// `image_size`), and a line describing them.
pub fn load_data(spec: Option<&str>, image_size: usize, synthetic: Option<(usize, usize)>, seed: u64) -> Result<(Dataset, Dataset, String)> {
    match spec {
        None | Some("digits") => {
            let (tr, te) = data::digits(32)?;
            Ok((tr, te, "embedded handwritten digits (UCI via scikit-learn, BSD-3-Clause; 8x8 upsampled to 32x32)".to_string()))
        }
        Some("synthetic") => {
            let (train, test) = synthetic.unwrap_or((1024, 256));
            let sc = SyntheticConfig { train, test, size: image_size, seed, ..SyntheticConfig::default() };
            let (tr, te) = data::synthetic(&sc)?;
            Ok((tr, te, "synthetic shapes and textures (10 classes)".to_string()))
        }
        Some(p) => {
            let (tr, te) = data::load(p, image_size)?;
            Ok((tr, te, p.to_string()))
        }
    }
}

/// Writes the embedded digits as CIFAR-10 binary (`dir/train.bin`, `dir/test.bin`, `dir/LICENSE.txt`).
pub fn export_data(dir: &std::path::Path) -> Result<()> {
    let (train, test) = data::digits(32)?;
    data::write_cifar_bin(&train, dir.join("train.bin"))?;
    data::write_cifar_bin(&test, dir.join("test.bin"))?;
    let license = include_str!("../data/DIGITS-LICENSE.txt");
    let text = format!(
        "The embedded digits of the moco crate as CIFAR-10 binary: train.bin ({} records), test.bin ({} records), 32x32,\n\
         8x8 originals upsampled bilinearly, grey in three channels. Read with `--data {}` or\n\
         scripts/moco_torch_reference.py --data {}.\n\n{license}",
        train.len(),
        test.len(),
        dir.display(),
        dir.display()
    );
    std::fs::write(dir.join("LICENSE.txt"), text).map_err(|e| Error::Io { path: dir.join("LICENSE.txt").display().to_string(), source: e })?;
    println!("wrote {} and {} ({} + {} handwritten digits, CIFAR-10 binary, 32x32)", dir.join("train.bin").display(), dir.join("test.bin").display(), train.len(), test.len());
    Ok(())
}
