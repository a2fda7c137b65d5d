//! Library checks, NVRTC compilation and the per-context module cache of the CUDA device.
//!
//! Every `.cu` file of `kernels/` is embedded at build time (the op registry, [`crate::ops::KERNELS`]) and compiled
//! by NVRTC the first time one of its kernels is launched on a context, for that device's compute capability
//! (`--gpu-architecture=sm_XY`), and loaded as CUBIN (PTX if the driver rejects the CUBIN). The module (one per
//! file) and its functions are then cached per CUDA context for the rest of the process; a cached module keeps its
//! context alive.

use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

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
pub(crate) fn compile(file: &'static str, src: &'static str, major: i32, minor: i32) -> Result<Compiled> {
    use cudarc::nvrtc::{result, sys};
    use std::ffi::{CStr, CString};
    check_nvrtc()?;
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

/// The module of `file` (its CUDA C `source`) on `ctx`, compiled and loaded on first use.
pub(crate) fn module(ctx: &Arc<CudaContext>, file: &'static str, source: &'static str) -> Result<Arc<CudaModule>> {
    let key = (ctx.cu_ctx() as usize, file);
    let mut cache = modules().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = cache.get(&key) {
        return Ok(m.clone());
    }
    let (major, minor) = ctx.compute_capability()?;
    let compiled = compile(file, source, major, minor)?;
    let m = no_panic("CUDA module load", || load(ctx, file, major, minor, compiled))?;
    cache.insert(key, m.clone());
    Ok(m)
}

/// The kernel `name` of `file` (its CUDA C `source`) for the stream's context (cached).
pub(crate) fn function(stream: &Arc<CudaStream>, file: &'static str, source: &'static str, name: &'static str) -> Result<CudaFunction> {
    let ctx = stream.context();
    let key = (ctx.cu_ctx() as usize, name);
    if let Some(f) = functions().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(f.clone());
    }
    let m = module(ctx, file, source)?;
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

/// A launch of `grid` blocks of `block` threads (families whose kernels use other block sizes).
pub(crate) fn cfg_block(grid: (u32, u32, u32), block: u32) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// Largest grid x of a 1-D launch of one block per item (CUDA allows 2^31 - 1).
pub(crate) const MAX_GRID_X: usize = i32::MAX as usize;
/// Largest grid y and z.
pub(crate) const MAX_GRID_YZ: usize = 65535;
