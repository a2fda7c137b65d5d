//! Library checks, NVRTC compilation and the per-context module cache of the CUDA backend.
//!
//! Every `.cu` file of `kernels/` is embedded at build time and compiled by NVRTC the first time one of its kernels
//! is launched on a context, for that device's compute capability (`--gpu-architecture=sm_XY`). The module (one per
//! file) and its functions are then cached per CUDA context for the rest of the process; a cached module keeps its
//! context alive.

use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// `kernels/ema.cu`
pub const EMA_CU: &str = include_str!("../../../kernels/ema.cu");
/// `kernels/contrastive.cu`
pub const CONTRASTIVE_CU: &str = include_str!("../../../kernels/contrastive.cu");
/// `kernels/queue.cu`
pub const QUEUE_CU: &str = include_str!("../../../kernels/queue.cu");

const SOURCES: &[(&str, &str)] = &[("contrastive.cu", CONTRASTIVE_CU), ("ema.cu", EMA_CU), ("queue.cu", QUEUE_CU)];

const ENTRY_POINTS: &[(&str, &[&str])] = &[
    (
        "contrastive.cu",
        &[
            "normalize_rows",
            "positive_logits",
            "negative_logits_f32",
            "negative_logits_f16",
            "negative_logits_bf16",
            "infonce_partial_f32",
            "infonce_partial_f16",
            "infonce_partial_bf16",
            "infonce_combine",
            "infonce_reduce",
        ],
    ),
    ("ema.cu", &["ema_update", "ema_multi_tensor"]),
    ("queue.cu", &["enqueue_f32", "enqueue_packed16"]),
];

/// Every CUDA source file of the crate as `(file name in kernels/, source)`, in the form NVRTC compiles it.
/// `tests/cuda_compile.rs` checks that this list covers every file of `kernels/`.
pub fn kernel_sources() -> &'static [(&'static str, &'static str)] {
    SOURCES
}

/// The kernels the host launches, per file: `(file name in kernels/, entry points)`.
pub fn kernel_entry_points() -> &'static [(&'static str, &'static [&'static str])] {
    ENTRY_POINTS
}

/// Returns [`Error::Unavailable`] unless the CUDA driver library (libcuda) can be loaded.
/// Checked before any cudarc driver call, which would otherwise panic on a machine without it.
pub fn check_driver() -> Result<()> {
    // SAFETY: only tries to dlopen the candidate library names; no symbol of it is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::Unavailable("the CUDA driver library (libcuda.so) is not installed or not on the loader path".into()));
    }
    Ok(())
}

/// Returns [`Error::Unavailable`] unless NVRTC (libnvrtc) can be loaded. Checked before any compilation.
pub fn check_nvrtc() -> Result<()> {
    // SAFETY: only tries to dlopen the candidate library names; no symbol of it is called.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::Unavailable(
            "NVRTC (libnvrtc.so / libnvrtc.so.12) is not on the loader path; install the CUDA toolkit or run scripts/install_cuda_wheels.sh".into(),
        ));
    }
    Ok(())
}

/// Runs `f`, turning a panic inside cudarc (a driver library that lacks a symbol, say) into [`Error::Unavailable`].
pub(crate) fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "unknown panic".into());
        Err(Error::Unavailable(format!("{what}: {msg}")))
    })
}

/// Opens device `ordinal`: checks the driver library, then creates (retains) the primary context.
pub(crate) fn open_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    check_driver()?;
    no_panic("CUDA driver", || {
        let count = CudaContext::device_count().map_err(|e| Error::Unavailable(format!("CUDA driver present but unusable: {e:?}")))?;
        if ordinal as i64 >= count as i64 {
            return Err(Error::Unavailable(format!("no CUDA device {ordinal}: {count} device(s) present")));
        }
        CudaContext::new(ordinal).map_err(|e| Error::Unavailable(format!("cannot open CUDA device {ordinal}: {e:?}")))
    })
}

/// The source of `file` (one of [`kernel_sources`]).
fn source(file: &'static str) -> Result<&'static str> {
    SOURCES.iter().find(|(f, _)| *f == file).map(|(_, s)| *s).ok_or_else(|| Error::Compile(format!("no embedded kernel file {file}")))
}

/// Compiles `file` to PTX with NVRTC for compute capability `(major, minor)`.
pub(crate) fn compile(file: &'static str, major: i32, minor: i32) -> Result<cudarc::nvrtc::Ptx> {
    check_nvrtc()?;
    let src = source(file)?;
    no_panic("NVRTC", || {
        let opts = cudarc::nvrtc::CompileOptions { options: vec![format!("--gpu-architecture=sm_{major}{minor}")], name: Some(file.to_string()), ..Default::default() };
        cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| match e {
            cudarc::nvrtc::CompileError::CompileError { nvrtc, options, log } => {
                Error::Compile(format!("{file} ({nvrtc:?}, options {options:?}):\n{}", log.to_string_lossy()))
            }
            other => Error::Compile(format!("{file}: {other:?}")),
        })
    })
}

type ModuleKey = (usize, &'static str);

fn modules() -> &'static Mutex<HashMap<ModuleKey, Arc<CudaModule>>> {
    static M: OnceLock<Mutex<HashMap<ModuleKey, Arc<CudaModule>>>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(HashMap::new()))
}

fn functions() -> &'static Mutex<HashMap<ModuleKey, CudaFunction>> {
    static F: OnceLock<Mutex<HashMap<ModuleKey, CudaFunction>>> = OnceLock::new();
    F.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The module of `file` on `ctx`, compiled and loaded on first use.
pub(crate) fn module(ctx: &Arc<CudaContext>, file: &'static str) -> Result<Arc<CudaModule>> {
    let key = (ctx.cu_ctx() as usize, file);
    let mut cache = modules().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = cache.get(&key) {
        return Ok(m.clone());
    }
    let (major, minor) = ctx.compute_capability()?;
    let ptx = compile(file, major, minor)?;
    let m = no_panic("CUDA module load", || ctx.load_module(ptx).map_err(|e| Error::Cuda(format!("loading {file} (sm_{major}{minor}): {e:?}"))))?;
    cache.insert(key, m.clone());
    Ok(m)
}

/// The kernel `name` of `file` for the stream's context (cached).
pub(crate) fn function(stream: &Arc<CudaStream>, file: &'static str, name: &'static str) -> Result<CudaFunction> {
    let ctx = stream.context();
    let key = (ctx.cu_ctx() as usize, name);
    if let Some(f) = functions().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(f.clone());
    }
    let m = module(ctx, file)?;
    let f = m.load_function(name).map_err(|e| Error::Cuda(format!("kernel {name} of {file}: {e:?}")))?;
    functions().lock().unwrap_or_else(|p| p.into_inner()).insert(key, f.clone());
    Ok(f)
}

/// Threads per block of every kernel (`WG` in the kernels, `__launch_bounds__(256)`).
pub(crate) const BLOCK: u32 = 256;

/// A launch of `grid` blocks of [`BLOCK`] threads, no dynamic shared memory.
pub(crate) fn cfg(grid: (u32, u32, u32)) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig { grid_dim: grid, block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// Largest grid x of a 1-D launch of one block per item (CUDA allows 2^31 - 1).
pub(crate) const MAX_GRID_X: usize = i32::MAX as usize;
/// Largest grid y and z.
pub(crate) const MAX_GRID_YZ: usize = 65535;
