//! [`Device`] on CUDA: allocations are `CudaSlice`s, views are `CudaView`/`CudaViewMut`s of one allocation, work
//! runs on [`Cuda::stream`]. Kernels (`kernels/*.cu`) are compiled by NVRTC on first use for the device's compute
//! capability and cached per context (one module per family). Nothing here panics on a machine without CUDA:
//! [`Cuda::new`] checks that libcuda and libnvrtc can be loaded before any cudarc call, and returns
//! [`Error::Unavailable`] when either is missing or no device is present.
//!
//! A framework that owns its memory passes `slice.as_view()` / `slice.as_view_mut()` of its `CudaSlice`s to the
//! ops, or wraps its stream with [`Cuda::from_stream`].

mod context;
mod graph;
mod profile;
mod workspace;

pub use context::{check_driver, check_nvrtc};
#[cfg(test)]
pub(crate) use context::compile;
pub(crate) use graph::Live;
pub(crate) use workspace::Workspace;
pub(crate) use context::{cfg, cfg_block, function, module, BLOCK, MAX_GRID_X, MAX_GRID_YZ};

use super::{check_regions, Device, DeviceKind, OpState, Region};
use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut};
use std::sync::Arc;

/// A CUDA device: its (primary) context, the stream every op runs on, and the ops' state (a clone starts without:
/// scratch is never shared between two devices). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    state: OpState,
    /// Fill every scratch hand-out with NaN first ([`Cuda::set_scratch_poison`]).
    poison_scratch: bool,
    /// The running profile's events (`--profile-steps`), shared by clones.
    profile: profile::Profile,
    /// The f32 matrix products' arithmetic ([`Cuda::set_matmul_precision`]).
    matmul_precision: crate::ops::precision::MatmulPrecision,
    /// The device's compute capability (major), asked once: the kernels' choice reads it at every launch.
    sm_major: i32,
    /// The captured step of an engine's device ([`Device::for_capture`]; `None` elsewhere), shared by its clones.
    step_graph: Option<Arc<std::sync::Mutex<graph::StepGraph>>>,
    /// The growths of this device's and its clones' scratch (a captured step must not outlive its scratch).
    growths: workspace::Growths,
}

impl Cuda {
    /// Opens device `ordinal`. Returns [`Error::Unavailable`] when libcuda or libnvrtc cannot be loaded or the
    /// device does not exist; never panics.
    pub fn new(ordinal: usize) -> Result<Self> {
        check_driver()?;
        check_nvrtc()?;
        let ctx = context::open_context(ordinal)?;
        let stream = ctx.default_stream();
        Self::from_stream(stream)
    }

    /// The device of a stream the caller owns (a framework's): every op of this device runs on it.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context().clone();
        let dev = context::no_panic("CUDA device name", || Ok(ctx.name().unwrap_or_else(|_| "unknown device".into())))?;
        let (major, minor) = ctx.compute_capability()?;
        Ok(Self { name: format!("cuda:{} {dev} (sm_{major}{minor})", ctx.ordinal()), ctx, stream, state: OpState::default(), poison_scratch: false, profile: Default::default(), matmul_precision: Default::default(), sm_major: major, step_graph: None, growths: Default::default() })
    }

    /// The device's context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every op of this device runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Fills the ops' reused scratch with 0xFF bytes (NaN as f32) before each op takes it, so that a kernel that
    /// reads scratch it did not write shows NaN: for tests (one memset per op call). Clones made after the call
    /// inherit it.
    pub fn set_scratch_poison(&mut self, on: bool) {
        self.poison_scratch = on;
    }

    /// The arithmetic of this device's f32 matrix products, the convolutions' and the linear layers' GEMMs (default
    /// [`MatmulPrecision::Fp32`](crate::MatmulPrecision::Fp32)): the tensor-core kernels at
    /// [`MatmulPrecision::Tf32x3`](crate::MatmulPrecision::Tf32x3), [`MatmulPrecision::Tf32`](crate::MatmulPrecision::Tf32)
    /// or [`MatmulPrecision::Bf16`](crate::MatmulPrecision::Bf16) on sm_80 and newer (elsewhere the f32 kernels, more accurate). Clones made after the call inherit it.
    pub fn set_matmul_precision(&mut self, precision: crate::ops::precision::MatmulPrecision) {
        self.matmul_precision = precision;
    }

    /// The arithmetic set by [`Cuda::set_matmul_precision`].
    pub fn matmul_precision(&self) -> crate::ops::precision::MatmulPrecision {
        self.matmul_precision
    }

    /// The arithmetic the matrix-product kernels run at: the one set, on sm_80 and newer (the tensor cores'
    /// instructions); [`MatmulPrecision::Fp32`](crate::MatmulPrecision::Fp32) below.
    pub(crate) fn matmul_arithmetic(&self) -> Result<crate::ops::precision::MatmulPrecision> {
        Ok(if self.sm_major >= 8 { self.matmul_precision } else { Default::default() })
    }

    /// How an op whose parameter block `block` changes every step runs now ([`Live`]): by value, reading it from
    /// the captured step's arena, or only recording it for a replay.
    pub(crate) fn live<T: bytemuck::Pod>(&self, block: &T) -> Result<Live> {
        match &self.step_graph {
            None => Ok(Live::Eager),
            Some(g) => g.lock().map_err(|_| Error::Cuda("step graph lock poisoned".into()))?.live(&self.stream, bytemuck::bytes_of(block)),
        }
    }

    /// Runs `f` on the captured step's state with the device's scratch growths so far.
    fn with_graph<T>(&self, f: impl FnOnce(&mut graph::StepGraph, u64) -> Result<T>) -> Result<T> {
        let g = self.step_graph.as_ref().ok_or_else(|| Error::Unavailable(format!("{}: a step is captured only on a device from for_capture", self.name)))?;
        let growths = self.growths.load(std::sync::atomic::Ordering::Relaxed);
        f(&mut *g.lock().map_err(|_| Error::Cuda("step graph lock poisoned".into()))?, growths)
    }

    /// The stream and this device's reused op scratch (see [`Workspace`]).
    pub(crate) fn workspace(&mut self) -> (Arc<CudaStream>, &mut Workspace) {
        let (stream, poison, growths) = (self.stream.clone(), self.poison_scratch, self.growths.clone());
        let ws = self.state.get::<Workspace>();
        ws.set_poison(poison);
        ws.set_growths(&growths);
        (stream, ws)
    }

    /// The per-device state of one op (see [`OpState`]).
    pub fn op_state<T: Default + Send + Sync + 'static>(&mut self) -> &mut T {
        self.state.get::<T>()
    }
}

fn outside(op: &'static str, len: usize, at: Region) -> Error {
    Error::shape(op, format!("a region inside the {len}-element allocation"), format!("elements {}..{}", at.offset, at.offset.saturating_add(at.len)))
}

/// Splits `v` at `mid` (checked by the caller), both halves living as long as `v` did.
fn split_off<'a>(mut v: CudaViewMut<'a, f32>, mid: usize) -> Result<(CudaViewMut<'a, f32>, CudaViewMut<'a, f32>)> {
    let len = v.len();
    let (a, b) = v.try_split_at_mut(mid).ok_or_else(|| outside("cuda split", len, Region::new(0, mid)))?;
    // SAFETY: a `CudaViewMut` holds a device pointer, a length and shared references to its allocation's events and
    // stream; cudarc copies those references from `v`, so they are valid for `v`'s lifetime, and `CudaViewMut` has
    // no `Drop`. The two halves cover disjoint elements of `v`, which is consumed here, so no other view of those
    // elements exists. Only the borrow of the local `v` in cudarc's signature is lengthened back to `v`'s lifetime.
    Ok(unsafe { (std::mem::transmute::<CudaViewMut<'_, f32>, CudaViewMut<'a, f32>>(a), std::mem::transmute::<CudaViewMut<'_, f32>, CudaViewMut<'a, f32>>(b)) })
}

impl Device for Cuda {
    fn set_matmul_precision(&mut self, precision: crate::ops::precision::MatmulPrecision) {
        Cuda::set_matmul_precision(self, precision);
    }
    fn for_capture(&self) -> Result<Self> {
        // SAFETY: from here on the context's new allocations record no cudarc events. Every `Cuda` runs all its
        // work on its one stream (clones share it), and buffers are not shared between devices of different
        // streams; the engine that captures owns its buffers. (A captured stream may not wait on events recorded
        // before the capture, which cudarc's tracking would make it do.)
        unsafe { self.ctx.disable_event_tracking() };
        let stream = self.ctx.new_stream()?;
        Ok(Self { stream, state: OpState::default(), profile: Default::default(), step_graph: Some(Default::default()), growths: Default::default(), ..self.clone() })
    }
    fn can_capture(&self) -> bool {
        self.step_graph.is_some()
    }
    fn begin_capture(&mut self, skip: CudaView<'_, u32>) -> Result<()> {
        use cudarc::driver::DevicePtr;
        let at = skip.device_ptr(&self.stream).0;
        let stream = self.stream.clone();
        self.with_graph(|g, grown| g.begin_capture(&stream, at, grown))
    }
    fn end_capture(&mut self, keep: bool) -> Result<()> {
        let stream = self.stream.clone();
        self.with_graph(|g, grown| g.end_capture(&stream, keep, grown))
    }
    fn begin_replay(&mut self) -> Result<bool> {
        if self.step_graph.is_none() {
            return Ok(false);
        }
        self.with_graph(|g, grown| g.begin_replay(grown))
    }
    fn end_replay(&mut self, ok: bool) -> Result<()> {
        let stream = self.stream.clone();
        self.with_graph(|g, _| g.end_replay(&stream, ok))
    }
    fn drop_capture(&mut self) {
        let _ = self.with_graph(|g, _| {
            g.drop_graph();
            Ok(())
        });
    }
    type Buf = CudaSlice<f32>;
    type IndexBuf = CudaSlice<u32>;
    type Ref<'a> = CudaView<'a, f32>;
    type Mut<'a> = CudaViewMut<'a, f32>;
    type IndexRef<'a> = CudaView<'a, u32>;
    type IndexMut<'a> = CudaViewMut<'a, u32>;
    type Input = CudaSlice<f32>;

    fn kind(&self) -> DeviceKind {
        DeviceKind::Cuda
    }
    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&mut self, len: usize) -> Result<CudaSlice<f32>> {
        Ok(self.stream.alloc_zeros::<f32>(len)?)
    }
    fn alloc_index(&mut self, len: usize) -> Result<CudaSlice<u32>> {
        Ok(self.stream.alloc_zeros::<u32>(len)?)
    }
    fn upload(&mut self, data: &[f32]) -> Result<CudaSlice<f32>> {
        Ok(self.stream.clone_htod(data)?)
    }
    fn buf_len(buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }
    fn index_len(buf: &CudaSlice<u32>) -> usize {
        buf.len()
    }
    fn zero(&mut self, buf: &mut CudaSlice<f32>) -> Result<()> {
        Ok(self.stream.memset_zeros(buf)?)
    }
    fn write(&mut self, buf: &mut CudaSlice<f32>, at: Region, data: &[f32]) -> Result<()> {
        crate::error::check_len_eq("cuda write", "data of the region's length", at.len, data.len())?;
        let len = buf.len();
        let mut dst = buf.try_slice_mut(at.range()).ok_or_else(|| outside("cuda write", len, at))?;
        Ok(self.stream.memcpy_htod(data, &mut dst)?)
    }
    fn write_index(&mut self, buf: &mut CudaSlice<u32>, at: Region, data: &[u32]) -> Result<()> {
        crate::error::check_len_eq("cuda write_index", "data of the region's length", at.len, data.len())?;
        let len = buf.len();
        let mut dst = buf.try_slice_mut(at.range()).ok_or_else(|| outside("cuda write_index", len, at))?;
        Ok(self.stream.memcpy_htod(data, &mut dst)?)
    }
    fn read(&self, buf: &CudaSlice<f32>, at: Region) -> Result<Vec<f32>> {
        let src = buf.try_slice(at.range()).ok_or_else(|| outside("cuda read", buf.len(), at))?;
        let out = self.stream.clone_dtoh(&src)?;
        self.stream.synchronize()?;
        Ok(out)
    }
    fn read_index(&self, buf: &CudaSlice<u32>, at: Region) -> Result<Vec<u32>> {
        let src = buf.try_slice(at.range()).ok_or_else(|| outside("cuda read", buf.len(), at))?;
        let out = self.stream.clone_dtoh(&src)?;
        self.stream.synchronize()?;
        Ok(out)
    }
    fn copy(&mut self, mut dst: CudaViewMut<'_, f32>, src: CudaView<'_, f32>) -> Result<()> {
        crate::error::check_len_eq("cuda copy", "a destination of the source's length", src.len(), dst.len())?;
        Ok(self.stream.memcpy_dtod(&src, &mut dst)?)
    }
    fn start_profile(&mut self) -> Result<()> {
        self.profile.start(&self.stream)
    }
    fn profiling(&self) -> bool {
        self.profile.running()
    }
    fn profile_scope(&self, name: &str) {
        self.profile.enter(&self.stream, name)
    }
    fn take_profile(&mut self) -> Result<Vec<super::ProfileRow>> {
        self.profile.take(&self.stream)
    }
    fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    fn input(x: &CudaSlice<f32>) -> (CudaView<'_, f32>, usize) {
        (x.as_view(), x.len())
    }
    fn as_input(buf: &CudaSlice<f32>) -> &CudaSlice<f32> {
        buf
    }
    fn ref_len(v: &CudaView<'_, f32>) -> usize {
        v.len()
    }
    fn mut_len(v: &CudaViewMut<'_, f32>) -> usize {
        v.len()
    }
    fn view(buf: &CudaSlice<f32>, at: Region) -> Result<CudaView<'_, f32>> {
        buf.try_slice(at.range()).ok_or_else(|| outside("cuda view", buf.len(), at))
    }
    fn whole(buf: &CudaSlice<f32>) -> CudaView<'_, f32> {
        buf.as_view()
    }
    fn whole_mut(buf: &mut CudaSlice<f32>) -> CudaViewMut<'_, f32> {
        buf.as_view_mut()
    }
    fn split<const W: usize, const R: usize>(buf: &mut CudaSlice<f32>, writes: [Region; W], reads: [Region; R]) -> Result<([CudaViewMut<'_, f32>; W], [CudaView<'_, f32>; R])> {
        check_regions("cuda split", buf.len(), &writes, &reads)?;
        // cut the allocation at the written regions, in offset order; the pieces between them become read-only
        let mut order: [usize; W] = std::array::from_fn(|i| i);
        order.sort_by_key(|&i| writes[i].offset);
        let mut out: [Option<CudaViewMut<'_, f32>>; W] = std::array::from_fn(|_| None);
        let mut gaps: Vec<(usize, CudaView<'_, f32>)> = Vec::with_capacity(W + 1);
        let (mut rest, mut pos) = (buf.as_view_mut(), 0);
        for i in order {
            let start = writes[i].offset.max(pos);
            let (gap, tail) = split_off(rest, start - pos)?;
            gaps.push((pos, gap.into_view()));
            let (w, tail) = split_off(tail, writes[i].len)?;
            out[i] = Some(w);
            (rest, pos) = (tail, start + writes[i].len);
        }
        gaps.push((pos, rest.into_view()));
        let mut err = None;
        let rd = reads.map(|r| {
            let found = gaps.iter().find(|(off, g)| *off <= r.offset && r.offset + r.len <= off + g.len()).and_then(|(off, g)| g.try_slice(r.offset - off..r.offset - off + r.len));
            found.unwrap_or_else(|| {
                err.get_or_insert_with(|| Error::shape("cuda split", "read regions that do not straddle a written one", format!("elements {:?}", r.range())));
                gaps[0].1.slice(0..0)
            })
        });
        if let Some(e) = err {
            return Err(e);
        }
        let w: Vec<CudaViewMut<'_, f32>> = out.into_iter().flatten().collect();
        let w: [CudaViewMut<'_, f32>; W] = w.try_into().map_err(|_| Error::shape("cuda split", format!("{W} written views"), "fewer"))?;
        Ok((w, rd))
    }
    fn index_view(buf: &CudaSlice<u32>, at: Region) -> Result<CudaView<'_, u32>> {
        buf.try_slice(at.range()).ok_or_else(|| outside("cuda index view", buf.len(), at))
    }
    fn index_mut(buf: &mut CudaSlice<u32>, at: Region) -> Result<CudaViewMut<'_, u32>> {
        let len = buf.len();
        buf.try_slice_mut(at.range()).ok_or_else(|| outside("cuda index view", len, at))
    }
    fn index_whole_mut(buf: &mut CudaSlice<u32>) -> CudaViewMut<'_, u32> {
        buf.as_view_mut()
    }
}

/// The device pointer passed for an absent optional tensor (kernels gate every access to it by a flag).
static NULL_PTR: u64 = 0;

/// Pushes an optional input, or a null pointer.
pub(crate) fn push_opt<'a, 'c: 'a>(b: &mut cudarc::driver::LaunchArgs<'a>, v: Option<&'a CudaView<'c, f32>>) {
    use cudarc::driver::PushKernelArg;
    match v {
        Some(v) => b.arg(v),
        None => b.arg(&NULL_PTR),
    };
}

/// Pushes an optional output, or a null pointer.
pub(crate) fn push_opt_mut<'a, 'c: 'a>(b: &mut cudarc::driver::LaunchArgs<'a>, v: Option<&'a mut CudaViewMut<'c, f32>>) {
    use cudarc::driver::PushKernelArg;
    match v {
        Some(v) => b.arg(v),
        None => b.arg(&NULL_PTR),
    };
}
