//! The emulated CUDA driver (`tests/cuda_emu/driver/`, see its README.md): builds it and the kernel libraries it
//! runs, and installs it in this test process in place of `libcuda.so`.
//!
//! cudarc loads the driver with `dlopen("libcuda.so")`. The emulated library's SONAME is `libcuda.so`, and the
//! dynamic loader answers a `dlopen` by name with an already loaded library of that SONAME, so loading the emulated
//! one first (by path, `RTLD_GLOBAL`) makes every later cudarc call go to it. Nothing else changes: the crate's CUDA
//! path compiles its kernels with the real NVRTC, loads the cubin, allocates, copies and launches as on a GPU.
//!
//! Built once per content hash under the target directory (`target/release/build/../tmp/cuda_emu/`):
//!   - `driver-<hash>/libcuda.so`: the driver (g++ -O2);
//!   - `lib-<file>-<hash>.so`: each `kernels/*.cu` compiled against `cuda_emu.h` as a kernel library, with every
//!     memory access instrumented (`-fsanitize=kernel-address` in outline mode, the hooks in the driver).

use super::{compiler, compiler_version, kernel_files, root};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const DRIVER_FLAGS: &[&str] = &["-std=c++17", "-O2", "-g", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wl,-soname,libcuda.so"];

/// Kernel libraries: optimised (the fibers switch often), every access through the driver's hooks, hidden symbols
/// but the entry point, no fortified longjmp (a failing launch jumps out of its fibers).
const LIBRARY_FLAGS: &[&str] = &[
    "-std=c++17",
    "-O2",
    "-g",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-Wl,-Bsymbolic",
    "-DMOCO_CUDA_EMU_LIBRARY",
    "-fsanitize=kernel-address",
    "--param",
    "asan-instrumentation-with-call-threshold=0",
    "--param",
    "asan-stack=0",
    "--param",
    "asan-globals=0",
    "-U_FORTIFY_SOURCE",
    "-Wall",
    "-Wno-unknown-pragmas",
    "-Wno-unused-function",
    "-Wno-unused-variable",
];

fn cache_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cuda_emu");
    std::fs::create_dir_all(&d).expect("creating the emulation cache dir");
    d
}

fn driver_dir() -> PathBuf {
    root().join("tests/cuda_emu/driver")
}

fn hash_files(files: &[PathBuf], extra: &[&str], h: &mut impl Hasher) -> Result<(), String> {
    for f in files {
        f.file_name().hash(h);
        std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?.hash(h);
    }
    extra.hash(h);
    compiler_version()?.hash(h);
    Ok(())
}

/// Compiles `sources` to `out` with `flags` (through a temporary name, so concurrent builds never see half a file).
fn compile(sources: &[PathBuf], flags: &[&str], out: &Path) -> Result<(), String> {
    if out.is_file() {
        return Ok(());
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let o = Command::new(compiler()).args(flags).args(sources).arg("-o").arg(&tmp).output().map_err(|e| format!("running {}: {e}", compiler()))?;
    if !o.status.success() {
        return Err(format!("building {} failed:\n{}", out.display(), String::from_utf8_lossy(&o.stderr)));
    }
    std::fs::rename(&tmp, out).map_err(|e| e.to_string())
}

/// Builds the emulated driver; returns the path of its `libcuda.so`.
pub fn build_driver() -> Result<PathBuf, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(driver_dir()).map_err(|e| e.to_string())?.flatten().map(|e| e.path()).collect();
    files.push(root().join("tests/cuda_emu/library_abi.h"));
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    hash_files(&files, DRIVER_FLAGS, &mut h)?;
    let dir = cache_dir().join(format!("driver-{:016x}", h.finish()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let out = dir.join("libcuda.so");
    let sources: Vec<PathBuf> = files.iter().filter(|p| p.extension().is_some_and(|e| e == "cpp")).cloned().collect();
    compile(&sources, DRIVER_FLAGS, &out)?;
    Ok(out)
}

/// Builds the kernel library of one `.cu` file.
pub fn build_library(cu: &Path) -> Result<PathBuf, String> {
    let (source, mut h) = super::emulation_source(cu, "MOCO_EMU_LIBRARY", "the kernels as a library of the emulated driver")?;
    LIBRARY_FLAGS.hash(&mut h);
    compiler_version()?.hash(&mut h);
    let stem = cu.file_stem().unwrap().to_string_lossy().into_owned();
    let out = cache_dir().join(format!("lib-{stem}-{:016x}.so", h.finish()));
    if out.is_file() {
        return Ok(out);
    }
    let src = cache_dir().join(format!("lib-{stem}-{}.cpp", std::process::id()));
    std::fs::write(&src, source).map_err(|e| e.to_string())?;
    let r = compile(&[src.clone()], LIBRARY_FLAGS, &out);
    let _ = std::fs::remove_file(&src);
    r.map(|_| out)
}

/// The driver and every kernel library (kernels/*.cu and the probe kernels), built (2 at a time).
pub fn build_all() -> Result<(PathBuf, Vec<PathBuf>), String> {
    let mut files = kernel_files();
    files.push(root().join("tests/cuda_emu/driver_probe.cu")); // the driver's own tests (tests/cuda_emu_driver.rs)
    let libs: Vec<Result<PathBuf, String>> = std::thread::scope(|s| {
        let driver = s.spawn(build_driver);
        let chunks: Vec<_> = files.chunks(files.len().div_ceil(2).max(1)).map(|c| s.spawn(move || c.iter().map(|f| build_library(f)).collect::<Vec<_>>())).collect();
        let mut out: Vec<Result<PathBuf, String>> = vec![driver.join().unwrap_or_else(|_| Err("the driver build panicked".into()))];
        for c in chunks {
            out.extend(c.join().unwrap_or_else(|_| vec![Err("a library build panicked".into())]));
        }
        out
    });
    let mut it = libs.into_iter();
    let driver = it.next().unwrap()?;
    let libs = it.collect::<Result<Vec<_>, _>>()?;
    Ok((driver, libs))
}

/// The emulated driver, loaded in this process.
pub struct Driver {
    lib: libloading::os::unix::Library,
    pub path: PathBuf,
}

impl Driver {
    fn text(&self, symbol: &[u8]) -> String {
        // SAFETY: the symbol is one of the driver's `const char* f(void)` functions (api.cpp); the string is copied
        // before the lock that guards it could let another call replace it.
        unsafe {
            let f: libloading::os::unix::Symbol<unsafe extern "C" fn() -> *const std::ffi::c_char> = self.lib.get(symbol).expect("emulated driver symbol");
            std::ffi::CStr::from_ptr(f()).to_string_lossy().into_owned()
        }
    }

    /// Every error and unsupported call the driver reported so far, one per line.
    pub fn log(&self) -> String {
        self.text(b"moco_emu_log\0")
    }

    /// Launches that ran, per kernel.
    pub fn launch_counts(&self) -> BTreeMap<String, u64> {
        self.text(b"moco_emu_launch_counts\0").lines().filter_map(|l| l.split_once(' ')).map(|(k, n)| (k.to_string(), n.parse().unwrap_or(0))).collect()
    }

    /// Calls made so far, per driver entry point (allocations, copies, synchronisations, launches as issued).
    pub fn call_counts(&self) -> BTreeMap<String, u64> {
        self.text(b"moco_emu_call_counts\0").lines().filter_map(|l| l.split_once(' ')).map(|(k, n)| (k.to_string(), n.parse().unwrap_or(0))).collect()
    }

    /// Forgets a sticky error, queued work and the log (for the emulator's own tests of what it detects).
    pub fn reset(&self) {
        // SAFETY: `void moco_emu_reset(void)` (api.cpp).
        unsafe {
            let f: libloading::os::unix::Symbol<unsafe extern "C" fn()> = self.lib.get(b"moco_emu_reset\0").expect("moco_emu_reset");
            f()
        }
    }
}

/// Where [`install`] records the driver and the kernel libraries it configured: the driver's path on the first
/// line, one kernel library per line after it. Other processes that load the emulated driver themselves read it
/// (the Python package's CUDA test, `python/tests/test_cuda_emulated.py`).
pub fn manifest_path() -> PathBuf {
    cache_dir().join("installed.txt")
}

fn write_manifest(driver: &Path, libs: &[PathBuf]) -> Result<(), String> {
    let text: String = std::iter::once(driver).chain(libs.iter().map(|p| p.as_path())).map(|p| format!("{}\n", p.display())).collect();
    let out = manifest_path();
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &out)).map_err(|e| format!("writing {}: {e}", out.display()))
}

/// Builds the emulated driver and installs it in this process (once): every later `dlopen("libcuda.so")`, cudarc's
/// included, gets it. Must run before cudarc loads a real driver; see [`use_emulator`].
pub fn install() -> Result<&'static Driver, String> {
    static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            let (path, libs) = build_all()?;
            // SAFETY: loading our own library; its initialisers only set up static state.
            let lib = unsafe { libloading::os::unix::Library::open(Some(&path), libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL) }.map_err(|e| format!("loading {}: {e}", path.display()))?;
            let list: String = libs.iter().map(|p| format!("{}\n", p.display())).collect();
            let list = std::ffi::CString::new(list).map_err(|e| e.to_string())?;
            // SAFETY: `int moco_emu_configure(const char*)` (api.cpp), given a NUL-terminated list.
            let rc = unsafe {
                let f: libloading::os::unix::Symbol<unsafe extern "C" fn(*const std::ffi::c_char) -> i32> = lib.get(b"moco_emu_configure\0").map_err(|e| e.to_string())?;
                f(list.as_ptr())
            };
            let d = Driver { lib, path };
            if rc != 0 {
                return Err(format!("configuring the emulated driver: {}", d.log()));
            }
            write_manifest(&d.path, &libs)?;
            Ok(d)
        })
        .as_ref()
        .map_err(|e| e.clone())
}

/// Whether this process should run CUDA on the emulated driver: `MOCO_CUDA_EMU=1` forces it, `0` forbids it;
/// otherwise it is used when no real libcuda can be loaded (no GPU), so a GPU machine runs the same tests on the
/// real driver.
/// Decided once per process, before anything loads a driver.
pub fn use_emulator() -> bool {
    static USE: OnceLock<bool> = OnceLock::new();
    *USE.get_or_init(|| match std::env::var("MOCO_CUDA_EMU").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        // SAFETY: only dlopens the candidate library names (and closes them again).
        _ => !unsafe { cudarc::driver::sys::is_culib_present() },
    })
}
