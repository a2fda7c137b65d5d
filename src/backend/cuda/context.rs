//! Library checks, NVRTC compilation and the per-context module cache of the CUDA backend.
//!
//! Every `.cu` file of `kernels/` is embedded at build time and compiled by NVRTC the first time one of its kernels
//! is launched on a context, for that device's compute capability (`--gpu-architecture=sm_XY`), and loaded as CUBIN
//! (PTX if the driver rejects the CUBIN). The module (one per
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
/// `kernels/conv.cu`
pub const CONV_CU: &str = include_str!("../../../kernels/conv.cu");
/// `kernels/norm.cu`
pub const NORM_CU: &str = include_str!("../../../kernels/norm.cu");
/// `kernels/pool.cu`
pub const POOL_CU: &str = include_str!("../../../kernels/pool.cu");
/// `kernels/optim.cu`
pub const OPTIM_CU: &str = include_str!("../../../kernels/optim.cu");
/// `kernels/vit.cu`
pub const VIT_CU: &str = include_str!("../../../kernels/vit.cu");

const SOURCES: &[(&str, &str)] = &[
    ("contrastive.cu", CONTRASTIVE_CU),
    ("conv.cu", CONV_CU),
    ("ema.cu", EMA_CU),
    ("norm.cu", NORM_CU),
    ("optim.cu", OPTIM_CU),
    ("pool.cu", POOL_CU),
    ("queue.cu", QUEUE_CU),
    ("vit.cu", VIT_CU),
];

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
    ("conv.cu", &["conv2d_forward", "conv2d_backward_weight", "conv2d_backward_data"]),
    ("ema.cu", &["ema_update", "ema_multi_tensor"]),
    (
        "norm.cu",
        &["bn_stats", "bn_running", "bn_apply", "bn_backward_sums", "bn_backward_coef", "bn_backward_dx"],
    ),
    (
        "pool.cu",
        &[
            "maxpool_forward",
            "maxpool_backward",
            "avgpool_forward",
            "avgpool_backward",
            "gemm",
            "bias_backward",
            "relu_forward",
            "relu_backward",
            "add_forward",
        ],
    ),
    ("optim.cu", &["sgd_step", "adamw_step", "lars_partial_norms", "lars_span_norms", "lars_update"]),
    ("queue.cu", &["enqueue_f32", "enqueue_packed16"]),
    (
        "vit.cu",
        &[
            "layernorm_forward",
            "layernorm_backward_dx",
            "layernorm_backward_params",
            "gelu_forward",
            "gelu_backward",
            "attention_forward",
            "attention_backward_dq",
            "attention_backward_dkv",
            "patch_im2col",
            "patch_im2col_backward",
            "tokens_forward",
            "tokens_backward_patches",
            "tokens_backward_cls",
            "cls_select_forward",
            "cls_select_backward",
            "add_backward",
        ],
    ),
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

/// NVRTC's output for one file: the CUBIN (SASS for the device's architecture) and the PTX of the same compilation.
pub(crate) struct Compiled {
    /// The CUBIN; `None` when NVRTC produced none.
    pub cubin: Option<Vec<u8>>,
    /// The PTX text.
    pub ptx: String,
}

/// Compiles `file` with NVRTC for compute capability `(major, minor)` (`--gpu-architecture=sm_XY`), keeping both
/// the CUBIN and the PTX. The CUBIN is what gets loaded: a driver older than the NVRTC release cannot JIT the newer
/// PTX ISA (CUDA_ERROR_UNSUPPORTED_PTX_VERSION) but still loads its SASS; the PTX is the fallback.
pub(crate) fn compile(file: &'static str, major: i32, minor: i32) -> Result<Compiled> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::{CStr, CString};
    check_nvrtc()?;
    let src = source(file)?;
    no_panic("NVRTC", || {
        let c_src = CString::new(src).map_err(|e| Error::Compile(format!("{file}: {e}")))?;
        let c_name = CString::new(file).map_err(|e| Error::Compile(format!("{file}: {e}")))?;
        let options = [format!("--gpu-architecture=sm_{major}{minor}")];
        let prog = result::create_program(&c_src, Some(&c_name)).map_err(|e| Error::Compile(format!("{file}: {e:?}")))?;
        // SAFETY: `prog` was created above and is destroyed once, after its last use; `c_src` and `c_name` outlive it.
        let out = unsafe {
            (|| {
                if let Err(e) = result::compile_program(prog, &options) {
                    let log = result::get_program_log(prog).map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned()).unwrap_or_default();
                    return Err(Error::Compile(format!("{file} ({e:?}, options {options:?}):\n{log}")));
                }
                let ptx = result::get_ptx(prog).map_err(|e| Error::Compile(format!("{file}: PTX: {e:?}")))?;
                let ptx = CStr::from_ptr(ptx.as_ptr()).to_string_lossy().into_owned();
                let mut size = 0usize;
                let cubin = if sys::nvrtcGetCUBINSize(prog, &mut size).result().is_ok() && size > 0 {
                    let mut buf = vec![0u8; size];
                    sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()).result().ok().map(|_| buf)
                } else {
                    None
                };
                Ok(Compiled { cubin, ptx })
            })()
        };
        // SAFETY: see above; destroyed exactly once.
        let _ = unsafe { result::destroy_program(prog) };
        out
    })
}

/// Loads the CUBIN of `c`, or its PTX when there is no CUBIN or the driver rejects it.
fn load(ctx: &Arc<CudaContext>, file: &str, major: i32, minor: i32, c: Compiled) -> Result<Arc<CudaModule>> {
    use cudarc::nvrtc::Ptx;
    let cubin_err = match c.cubin {
        Some(bin) => match ctx.load_module(Ptx::from_binary(bin)) {
            Ok(m) => return Ok(m),
            Err(e) => format!("{e:?}"),
        },
        None => "none produced".to_string(),
    };
    ctx.load_module(Ptx::from_src(c.ptx)).map_err(|e| Error::Cuda(format!("loading {file} (sm_{major}{minor}): CUBIN: {cubin_err}; PTX: {e:?}")))
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
    let compiled = compile(file, major, minor)?;
    let m = no_panic("CUDA module load", || load(ctx, file, major, minor, compiled))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `compile` yields an ELF CUBIN and a PTX with every launched entry point (no GPU needed; skipped without NVRTC).
    #[test]
    fn compile_yields_cubin_and_ptx() {
        if check_nvrtc().is_err() {
            eprintln!("compile_yields_cubin_and_ptx: skipped: no libnvrtc");
            return;
        }
        for (file, entries) in ENTRY_POINTS {
            for (major, minor) in [(8, 0), (9, 0)] {
                let c = compile(file, major, minor).unwrap_or_else(|e| panic!("{file} sm_{major}{minor}: {e}"));
                let cubin = c.cubin.unwrap_or_else(|| panic!("{file} sm_{major}{minor}: no CUBIN"));
                assert!(cubin.starts_with(b"\x7fELF"), "{file} sm_{major}{minor}: CUBIN is not ELF");
                assert!(c.ptx.contains(&format!(".target sm_{major}{minor}")), "{file}: PTX target");
                for name in entries.iter() {
                    assert!(c.ptx.contains(&format!(".entry {name}(")), "{file} sm_{major}{minor}: no entry {name}");
                }
            }
        }
    }
}
