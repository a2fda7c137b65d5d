//! One kernel family's sources: `kernels/<family>.cu` (CUDA C, compiled by NVRTC at run time) and
//! `shaders/<family>.wgsl` (validated by naga at build time), embedded by `kernel_family!` from the family's name,
//! each joined to its language's prelude of shared helpers, `kernels/common.cuh` and `shaders/common.wgsl`.
//!
//! One mechanism for every compiler: the prelude's text and the family's text make one source. CUDA needs the
//! helpers declared first, so [`KernelFamily::cuda`] is the prelude, then `#line 1 "<family>.cu"` and the family's
//! file: NVRTC's messages name `common.cuh` or the family's file with their own line numbers (the CUDA emulation in
//! `tests/cuda_emu` includes `common.cuh` before the family's file, the same text). WGSL declarations may come in any
//! order and WGSL has no `#line`, so [`KernelFamily::wgsl`] is the family's file first, its lines numbered as in the
//! file, then the prelude (build.rs validates the prelude alone too, so an error in it names `shaders/common.wgsl`).

/// `kernels/common.cuh`: the device helpers (grid indexing, block reductions) every CUDA source starts with.
pub const CUDA_PRELUDE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/common.cuh"));
/// `shaders/common.wgsl`: the helpers (grid indexing, workgroup reductions and their scratch) every WGSL source
/// ends with.
pub const WGSL_PRELUDE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common.wgsl"));

/// A grid `(x, y, z)` in workgroups / blocks.
pub type Grid = (u32, u32, u32);

/// The CUDA C and WGSL sources of one op family.
#[derive(Clone, Copy, Debug)]
pub struct KernelFamily {
    /// The family, as its folder in `src/ops/` is named.
    pub name: &'static str,
    /// `<name>.cu`: the file NVRTC compiles (its name in compile logs and the module cache).
    pub cuda_file: &'static str,
    /// The CUDA C source NVRTC compiles: `#line 1 "common.cuh"`, [`CUDA_PRELUDE`], a newline, `#line 1 "<name>.cu"`,
    /// then the family's file.
    pub cuda: &'static str,
    /// `<name>.wgsl`.
    pub wgsl_file: &'static str,
    /// The WGSL source wgpu compiles: the family's file, a newline, then [`WGSL_PRELUDE`].
    pub wgsl: &'static str,
}

impl KernelFamily {
    /// The `extern "C" __global__` kernels of the CUDA source, by name, in source order; a kernel a macro stamps
    /// per suffix (`name_##SUFFIX` in `#define M(SUFFIX, ...)`) is listed once per use of the macro (`M(f32, ...)`).
    /// Comments are skipped; the prelude has no kernels.
    pub fn cuda_entry_points(&self) -> Vec<String> {
        // comments out (a `__global__` in a comment is no kernel), line continuations joined
        let mut code = String::with_capacity(self.cuda.len());
        let mut rest = self.cuda;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("//") {
                rest = r.find('\n').map_or("", |i| &r[i..]);
            } else if let Some(r) = rest.strip_prefix("/*") {
                rest = r.find("*/").map_or("", |i| &r[i + 2..]);
            } else {
                let c = rest.chars().next().unwrap_or(' ');
                code.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        let code = code.replace("\\\n", " ");
        let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '#').collect() };
        let mut out = Vec::new();
        for (at, _) in code.match_indices("__global__") {
            let mut s = code[at + "__global__".len()..].trim_start();
            s = s.strip_prefix("void").unwrap_or(s).trim_start();
            if let Some(r) = s.strip_prefix("__launch_bounds__") {
                s = r.find(')').map_or("", |i| &r[i + 1..]).trim_start();
            }
            let name = ident(s);
            let Some((stem, param)) = name.split_once("##") else {
                out.push(name);
                continue;
            };
            // inside `#define MACRO(P0, P1, ...)`: the name at every use of the macro
            let define = code[code[..at].rfind("#define").unwrap_or(0) + "#define".len()..].trim_start();
            let macro_name = ident(define);
            let params: Vec<&str> = define[macro_name.len()..].trim_start_matches('(').split(')').next().unwrap_or("").split(',').map(str::trim).collect();
            let Some(index) = params.iter().position(|p| *p == param) else { continue };
            for line in code.lines() {
                let Some(args) = line.trim().strip_prefix(macro_name.as_str()).and_then(|r| r.trim_start().strip_prefix('(')) else { continue };
                if let Some(arg) = args.split(')').next().unwrap_or("").split(',').nth(index) {
                    out.push(format!("{stem}{}", arg.trim()));
                }
            }
        }
        out
    }
}

/// The sources of family `$name` (`kernels/$name.cu`, `shaders/$name.wgsl`), each joined to its prelude (see the
/// module documentation; `tests/cuda_compile.rs` checks the texts against the files).
macro_rules! kernel_family {
    ($name:literal) => {
        $crate::device::kernel_family::KernelFamily {
            name: $name,
            cuda_file: concat!($name, ".cu"),
            cuda: concat!(
                "#line 1 \"common.cuh\"\n",
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/common.cuh")),
                "\n#line 1 \"",
                $name,
                ".cu\"\n",
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/", $name, ".cu"))
            ),
            wgsl_file: concat!($name, ".wgsl"),
            wgsl: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name, ".wgsl")),
                "\n",
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common.wgsl"))
            ),
        }
    };
}
pub(crate) use kernel_family;

#[cfg(feature = "cuda")]
impl KernelFamily {
    /// Kernel `name` of this family on the stream's context (the module compiled by NVRTC on first use, cached).
    pub(crate) fn cuda_function(&self, stream: &std::sync::Arc<cudarc::driver::CudaStream>, name: &'static str) -> crate::error::Result<cudarc::driver::CudaFunction> {
        crate::device::cuda::function(stream, self.cuda_file, self.cuda, name)
    }
}

#[cfg(feature = "wgpu")]
impl KernelFamily {
    /// The compute pipeline of entry point `entry` (cached per device), with the override constant `QUEUE_DTYPE =
    /// dtype` where the shader declares it.
    pub(crate) fn wgpu_pipeline(&self, ctx: &crate::device::Wgpu, entry: &'static str, dtype: Option<u32>) -> wgpu::ComputePipeline {
        ctx.pipeline(self.wgsl_file, self.wgsl, entry, dtype)
    }
}
