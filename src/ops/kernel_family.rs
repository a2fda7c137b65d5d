//! One kernel family's sources: `kernels/<family>.cu` (CUDA C, compiled by NVRTC at run time) and
//! `shaders/<family>.wgsl` (validated by naga at build time), embedded by [`kernel_family!`] from the family's name.

/// The CUDA C and WGSL sources of one op family.
#[derive(Clone, Copy, Debug)]
pub struct KernelFamily {
    /// The family, as its folder in `src/ops/` is named.
    pub name: &'static str,
    /// `<name>.cu`: the file NVRTC compiles (its name in compile logs and the module cache).
    pub cuda_file: &'static str,
    /// The CUDA C source.
    pub cuda: &'static str,
    /// `<name>.wgsl`.
    pub wgsl_file: &'static str,
    /// The WGSL source.
    pub wgsl: &'static str,
}

impl KernelFamily {
    /// The `extern "C" __global__` kernels of the CUDA source, by name, in source order; a kernel a macro stamps
    /// per suffix (`name_##SUFFIX` in `#define M(SUFFIX, ...)`) is listed once per use of the macro (`M(f32, ...)`).
    /// Comments are skipped.
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

/// The sources of family `$name` (`kernels/$name.cu`, `shaders/$name.wgsl`).
macro_rules! kernel_family {
    ($name:literal) => {
        $crate::ops::kernel_family::KernelFamily {
            name: $name,
            cuda_file: concat!($name, ".cu"),
            cuda: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/", $name, ".cu")),
            wgsl_file: concat!($name, ".wgsl"),
            wgsl: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name, ".wgsl")),
        }
    };
}
pub(crate) use kernel_family;

#[cfg(feature = "cuda")]
impl KernelFamily {
    /// Kernel `name` of this family on the stream's context (the module compiled by NVRTC on first use, cached).
    pub(crate) fn cuda_function(&self, stream: &std::sync::Arc<cudarc::driver::CudaStream>, name: &'static str) -> crate::Result<cudarc::driver::CudaFunction> {
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
