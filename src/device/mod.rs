//! The one device trait: memory, views and `split`, copies and synchronisation, on the CPU, wgpu and CUDA.
//!
//! Every op is reached the same way: an op family of [`crate::ops`] defines a trait of its kernels (`Conv`,
//! `Infonce`, `Ema`, ...) over [`Device`], and each device implements it in the family's folder, beside the CPU
//! kernel, the wgpu and CUDA launchers and the f64 reference. A framework calls an op on its own buffers through
//! the device's views (`&[f32]` on the CPU, [`GpuSlice`] on wgpu, `CudaView` on CUDA), zero-copy; the network
//! executor ([`crate::nn::Network`]) and the MoCo engine ([`crate::train::MocoEngine`]) are generic over the
//! device and the family traits they use.
//!
//! Memory: `Buf` is one f32 allocation (parameters, gradients, activations), `IndexBuf` one u32 allocation
//! (argmax indices, loss statistics). A kernel reads [`Device::Ref`] views and writes [`Device::Mut`] views;
//! [`Device::split`] makes both from one allocation at once, after checking that the written regions are disjoint
//! from every other region it hands out, so one call can read one region of the activation buffer and write
//! another. Every method validates and returns [`Error`] rather than panicking.
//!
//! [`GpuSlice`]: wgpu::GpuSlice

pub mod cpu;
pub mod kernel_family;
#[cfg(feature = "cuda")]
pub mod cuda;
mod select;
pub(crate) mod vector;
pub use vector::{cpu_isa, detected_cpu_isa, CpuIsa};
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use cpu::CpuDevice;
pub use kernel_family::{Grid, KernelFamily};
#[cfg(feature = "cuda")]
pub use cuda::Cuda;
pub use select::AnyDevice;
#[cfg(feature = "wgpu")]
pub use wgpu::{Adapter, Wgpu, WgpuCounters};

use crate::error::{Error, Result};

/// Which kind of device this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// The CPU (rayon + a fast GEMM).
    Cpu,
    /// wgpu (Vulkan, Metal, DX12; lavapipe in CI).
    Wgpu,
    /// CUDA through cudarc.
    Cuda,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Cuda => "cuda",
        })
    }
}

/// A region of an allocation, in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First element.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl Region {
    /// `len` elements from `offset`.
    pub fn new(offset: usize, len: usize) -> Self {
        Self { offset, len }
    }
    /// The element range.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
    /// Whether the two regions share an element.
    pub fn overlaps(&self, other: &Region) -> bool {
        self.len > 0 && other.len > 0 && self.offset < other.offset + other.len && other.offset < self.offset + self.len
    }
}

/// Checks that every region lies inside an allocation of `len` elements and that no written region overlaps any
/// other region of the call (reads may overlap each other).
pub fn check_regions(op: &'static str, len: usize, writes: &[Region], reads: &[Region]) -> Result<()> {
    for r in writes.iter().chain(reads) {
        if r.offset.checked_add(r.len).is_none_or(|end| end > len) {
            return Err(Error::shape(op, format!("regions inside the {len}-element allocation"), format!("elements {}..{}", r.offset, r.offset.saturating_add(r.len))));
        }
    }
    for (i, w) in writes.iter().enumerate() {
        if let Some(o) = writes[i + 1..].iter().chain(reads).find(|o| w.overlaps(o)) {
            return Err(Error::shape(op, "a written region disjoint from every other region of the call", format!("elements {:?} and {:?} overlap", w.range(), o.range())));
        }
    }
    Ok(())
}

/// One scope of a profile ([`Device::take_profile`]): a layer, the loss or the optimiser, its summed GPU time and
/// what it timed.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRow {
    /// The scope's name, e.g. `encoder_q fwd  3 conv`.
    pub scope: String,
    /// GPU time summed over the profiled steps, in milliseconds (from each dispatch's pass timestamps).
    pub gpu_ms: f64,
    /// What was timed: on wgpu the dispatches (each between its pass's two timestamps); on CUDA the intervals
    /// (the scope's entries, each from the event that starts it to the next).
    pub count: u64,
}

/// A device: its memory (f32 and u32 allocations), views of regions of them, copies and synchronisation. The
/// kernels are the op families' traits ([`crate::ops`]), implemented by each device.
pub trait Device: Clone {
    /// One f32 allocation (`Vec<f32>`, `wgpu::Buffer`, `CudaSlice<f32>`).
    type Buf;
    /// One u32 allocation.
    type IndexBuf;
    /// A read-only region of a [`Device::Buf`] (`&[f32]`, `GpuSlice`, `CudaView<f32>`).
    type Ref<'a>
    where
        Self: 'a;
    /// A written region of a [`Device::Buf`] (`&mut [f32]`, `GpuSlice`, `CudaViewMut<f32>`).
    type Mut<'a>
    where
        Self: 'a;
    /// A read-only region of a [`Device::IndexBuf`].
    type IndexRef<'a>
    where
        Self: 'a;
    /// A written region of a [`Device::IndexBuf`].
    type IndexMut<'a>
    where
        Self: 'a;
    /// What a caller hands a network as its input or output gradient (`[f32]` on the CPU, a `wgpu::Buffer` or
    /// `GpuSlice` on wgpu as `dyn AsGpuSlice`, a `CudaSlice<f32>` on CUDA).
    type Input: ?Sized;

    /// Which kind of device this is.
    fn kind(&self) -> DeviceKind;
    /// Human-readable device name.
    fn name(&self) -> String;

    // ---- memory ----

    /// A zero-filled allocation of `len` f32.
    fn alloc(&mut self, len: usize) -> Result<Self::Buf>;
    /// A zero-filled allocation of `len` u32.
    fn alloc_index(&mut self, len: usize) -> Result<Self::IndexBuf>;
    /// An allocation holding `data`.
    fn upload(&mut self, data: &[f32]) -> Result<Self::Buf>;
    /// An allocation of `len` f32 filled with NaN (so an unwritten output shows).
    fn alloc_nan(&mut self, len: usize) -> Result<Self::Buf> {
        self.upload(&vec![f32::NAN; len])
    }
    /// Elements of an allocation.
    fn buf_len(buf: &Self::Buf) -> usize;
    /// Elements of an index allocation.
    fn index_len(buf: &Self::IndexBuf) -> usize;
    /// Sets every element of `buf` to zero.
    fn zero(&mut self, buf: &mut Self::Buf) -> Result<()>;
    /// Copies `data` from the host into region `at` of `buf` (`data.len() == at.len`).
    fn write(&mut self, buf: &mut Self::Buf, at: Region, data: &[f32]) -> Result<()>;
    /// Copies `data` from the host into region `at` of an index allocation (`data.len() == at.len`).
    fn write_index(&mut self, buf: &mut Self::IndexBuf, at: Region, data: &[u32]) -> Result<()>;
    /// Copies region `at` of `buf` to the host.
    fn read(&self, buf: &Self::Buf, at: Region) -> Result<Vec<f32>>;
    /// Copies region `at` of an index allocation to the host.
    fn read_index(&self, buf: &Self::IndexBuf, at: Region) -> Result<Vec<u32>>;
    /// The whole of `buf` on the host.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>> {
        self.read(buf, Region::new(0, Self::buf_len(buf)))
    }
    /// Device-side copy, `dst.len() == src.len()`.
    fn copy(&mut self, dst: Self::Mut<'_>, src: Self::Ref<'_>) -> Result<()>;
    /// Waits for every queued device operation.
    fn synchronize(&self) -> Result<()>;
    /// Lets ops leave their work queued for one later submission (at the next read or [`Device::synchronize`])
    /// instead of submitting it per call: the training engine's step. A no-op where launches are already
    /// asynchronous and batched by the driver (CPU, CUDA streams); on wgpu see `Wgpu::defer_submissions`.
    fn defer_submissions(&mut self, _on: bool) {}
    /// Sets the arithmetic of this device's f32 matrix products, convolutions and linear layers (and of the clones
    /// made after the call): the CUDA device's [`Cuda::set_matmul_precision`](crate::Cuda::set_matmul_precision).
    /// The CPU and wgpu compute in f32 whatever it says (the default, a no-op).
    fn set_matmul_precision(&mut self, _precision: crate::ops::precision::MatmulPrecision) {}

    // ---- captured steps (CUDA graphs) ----

    /// A handle for an engine that captures its steps ([`Device::begin_capture`]): on CUDA a device on a stream of
    /// its own (capture needs a created stream) with its own capture state; elsewhere a clone.
    fn for_capture(&self) -> Result<Self> {
        Ok(self.clone())
    }
    /// Whether [`Device::begin_capture`] works on this handle (a CUDA device from [`Device::for_capture`]).
    fn can_capture(&self) -> bool {
        false
    }
    /// Starts recording the work issued from now on, which does not run, until [`Device::end_capture`]. The ops
    /// whose parameters change every step (the EMA, the optimisers, the enqueue) then read them from device memory
    /// at each replay, and change nothing when the count at `skip` (the step's non-finite features) is not zero.
    fn begin_capture(&mut self, _skip: Self::IndexRef<'_>) -> Result<()> {
        Err(Error::Unavailable(format!("{} does not capture steps", self.name())))
    }
    /// Ends the recording; with `keep`, keeps it and runs it once (the captured work has not run yet), without,
    /// discards it.
    fn end_capture(&mut self, _keep: bool) -> Result<()> {
        Err(Error::Unavailable(format!("{} does not capture steps", self.name())))
    }
    /// Starts a replay of the captured step: the step-varying ops called until [`Device::end_replay`] record their
    /// parameters and launch nothing. `false` (nothing started) when there is no valid capture: capture anew.
    fn begin_replay(&mut self) -> Result<bool> {
        Ok(false)
    }
    /// Ends a replay: with `ok`, checks that the ops recorded what the capture took, then writes their parameters
    /// and launches the captured step (queued, not waited for).
    fn end_replay(&mut self, _ok: bool) -> Result<()> {
        Err(Error::Unavailable(format!("{} does not capture steps", self.name())))
    }
    /// Forgets the captured step (its buffers changed).
    fn drop_capture(&mut self) {}

    // ---- profile (`--profile-steps`) ----

    /// Starts timing the device's work with GPU timestamps, per scope ([`Device::profile_scope`]); an error
    /// saying why where the device has none.
    fn start_profile(&mut self) -> Result<()> {
        Err(crate::error::Error::Unavailable(format!("{} records no per-layer GPU times (wgpu adapters with timestamp queries and CUDA devices do)", self.name())))
    }
    /// Whether a profile runs: callers build scope names only then.
    fn profiling(&self) -> bool {
        false
    }
    /// Names the work queued from now on in a running profile.
    fn profile_scope(&self, _name: &str) {}
    /// Ends the profile: each scope's GPU time and count, in order of first use.
    fn take_profile(&mut self) -> Result<Vec<ProfileRow>> {
        Ok(Vec::new())
    }

    // ---- views ----

    /// The caller's input as a view, and its length in elements.
    fn input(x: &Self::Input) -> (Self::Ref<'_>, usize);
    /// A whole allocation as an input.
    fn as_input(buf: &Self::Buf) -> &Self::Input;
    /// Elements of a read-only view.
    fn ref_len(v: &Self::Ref<'_>) -> usize;
    /// Elements of a written view.
    fn mut_len(v: &Self::Mut<'_>) -> usize;
    /// A read-only view of region `at` of `buf`.
    fn view(buf: &Self::Buf, at: Region) -> Result<Self::Ref<'_>>;
    /// A read-only view of the whole of `buf`.
    fn whole(buf: &Self::Buf) -> Self::Ref<'_>;
    /// A writable view of the whole of `buf`.
    fn whole_mut(buf: &mut Self::Buf) -> Self::Mut<'_>;
    /// Views of `buf`: the `writes` regions writable, the `reads` regions read-only. Every region must lie inside
    /// `buf`, and no written region may overlap another region of the call ([`check_regions`]).
    #[allow(clippy::type_complexity)]
    fn split<const W: usize, const R: usize>(buf: &mut Self::Buf, writes: [Region; W], reads: [Region; R]) -> Result<([Self::Mut<'_>; W], [Self::Ref<'_>; R])>;
    /// A read-only view of region `at` of an index allocation.
    fn index_view(buf: &Self::IndexBuf, at: Region) -> Result<Self::IndexRef<'_>>;
    /// A writable view of region `at` of an index allocation.
    fn index_mut(buf: &mut Self::IndexBuf, at: Region) -> Result<Self::IndexMut<'_>>;
    /// A writable view of the whole of an index allocation.
    fn index_whole_mut(buf: &mut Self::IndexBuf) -> Self::IndexMut<'_>;
}

/// Per-device state that an op keeps between calls (the CPU convolutions' scratch and measured algorithm
/// choices, the GPU attention backward's scratch), found by type so a device needs no field per op.
#[derive(Default)]
pub struct OpState(std::collections::HashMap<std::any::TypeId, Box<dyn std::any::Any + Send + Sync>>);

impl OpState {
    /// The state of type `T`, made with `T::default()` on first use.
    pub fn get<T: Default + Send + Sync + 'static>(&mut self) -> &mut T {
        self.0.entry(std::any::TypeId::of::<T>()).or_insert_with(|| Box::new(T::default())).downcast_mut::<T>().unwrap_or_else(|| unreachable!("the map is keyed by the type"))
    }
}

/// A clone starts without state: scratch is never shared between two devices.
impl Clone for OpState {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for OpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpState({} entries)", self.0.len())
    }
}
