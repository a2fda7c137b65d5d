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
    /// The `extern "C" __global__` kernels of the CUDA source, by name, in source order.
    pub fn cuda_entry_points(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut rest = self.cuda;
        while let Some(i) = rest.find("__global__") {
            rest = &rest[i + "__global__".len()..];
            let decl = rest.split('(').next().unwrap_or("");
            if let Some(name) = decl.split_whitespace().last() {
                out.push(name);
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
