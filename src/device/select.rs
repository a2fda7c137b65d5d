//! Picking a device at run time: CUDA, then a wgpu GPU adapter, then the CPU.

use super::{CpuDevice, DeviceKind};
use crate::error::{Error, Result};

/// Which device [`AnyDevice::auto`] or [`AnyDevice::new`] ended up on.
#[derive(Debug)]
pub enum AnyDevice {
    /// CUDA (a GPU with libcuda present).
    #[cfg(feature = "cuda")]
    Cuda(super::Cuda),
    /// wgpu on an adapter.
    #[cfg(feature = "wgpu")]
    Wgpu(super::Wgpu),
    /// The CPU.
    Cpu(CpuDevice),
}

impl AnyDevice {
    /// Picks CUDA, then a wgpu GPU adapter (software adapters do not count), then the CPU. Each refusal is
    /// returned alongside, so a caller can say why a faster device was not used.
    pub fn auto() -> (Self, Vec<Error>) {
        #[allow(unused_mut)]
        let mut why = Vec::new();
        #[cfg(feature = "cuda")]
        match super::Cuda::new(0) {
            Ok(c) => return (AnyDevice::Cuda(c), why),
            Err(e) => why.push(e),
        }
        #[cfg(not(feature = "cuda"))]
        why.push(Error::Unavailable("CUDA: this build has no `cuda` feature".into()));
        #[cfg(feature = "wgpu")]
        match super::Wgpu::new(super::Adapter::HardwareOnly) {
            Ok(w) => return (AnyDevice::Wgpu(w), why),
            Err(e) => why.push(e),
        }
        #[cfg(not(feature = "wgpu"))]
        why.push(Error::Unavailable("wgpu: this build has no `wgpu` feature".into()));
        (AnyDevice::Cpu(CpuDevice::new()), why)
    }
    /// The device of `kind`; for wgpu any adapter, software (lavapipe) included.
    pub fn new(kind: DeviceKind) -> Result<Self> {
        match kind {
            DeviceKind::Cpu => Ok(AnyDevice::Cpu(CpuDevice::new())),
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => Ok(AnyDevice::Wgpu(super::Wgpu::new(super::Adapter::Any)?)),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => Ok(AnyDevice::Cuda(super::Cuda::new(0)?)),
            #[allow(unreachable_patterns)]
            other => Err(Error::Unavailable(format!("{other}: this build of moco has no `{other}` cargo feature"))),
        }
    }
    /// The device by name: `cpu`, `wgpu` (any adapter, software included), `cuda`, or `auto`.
    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "cpu" => Self::new(DeviceKind::Cpu),
            "wgpu" => Self::new(DeviceKind::Wgpu),
            "cuda" => Self::new(DeviceKind::Cuda),
            "auto" => Ok(Self::auto().0),
            other => Err(Error::shape("device", "one of cpu, wgpu, cuda, auto", other.to_string())),
        }
    }
    /// Which kind of device this is.
    pub fn kind(&self) -> DeviceKind {
        match self {
            #[cfg(feature = "cuda")]
            AnyDevice::Cuda(_) => DeviceKind::Cuda,
            #[cfg(feature = "wgpu")]
            AnyDevice::Wgpu(_) => DeviceKind::Wgpu,
            AnyDevice::Cpu(_) => DeviceKind::Cpu,
        }
    }
    /// Device name.
    pub fn name(&self) -> String {
        use super::Device;
        match self {
            #[cfg(feature = "cuda")]
            AnyDevice::Cuda(d) => d.name(),
            #[cfg(feature = "wgpu")]
            AnyDevice::Wgpu(d) => d.name(),
            AnyDevice::Cpu(d) => d.name(),
        }
    }
}
