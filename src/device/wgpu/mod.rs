//! [`Device`] on wgpu: allocations are storage buffers, views are [`GpuSlice`]s (regions 256-byte aligned, as the
//! network plans lay them out). A framework wraps its own device with [`Wgpu::from_device`] and passes its buffers
//! as `GpuSlice::whole(&buffer)`.

mod context;
mod dispatch;
mod recorder;
mod slice;

pub use context::{Adapter, Wgpu};
pub use recorder::WgpuCounters;
pub(crate) use dispatch::{submit, Dispatch, Launch};
pub use slice::{AsGpuSlice, GpuSlice, SLICE_ALIGN_BYTES};

use super::{check_regions, Device, DeviceKind, Region};
use crate::error::{Error, Result};

/// The former name of [`Wgpu`].
#[deprecated(since = "0.2.0", note = "the wgpu device is `moco::device::Wgpu`")]
pub type WgpuContext = Wgpu;

pub(crate) fn bytes(elems: usize) -> u64 {
    (elems.max(1) * 4) as u64
}

fn elems(buf: &wgpu::Buffer) -> usize {
    (buf.size() / 4) as usize
}

impl Wgpu {
    fn read_region<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, at: Region) -> Result<Vec<T>> {
        check_regions("wgpu read", elems(buf), &[], &[at])?;
        let bytes = self.read_bytes_at(buf, (at.offset * 4) as u64, (at.len * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// `data` (f32 or u32 words) into the region `at` of `buf`, after checking that it fits (`op` names the call).
    /// With work recorded and not yet submitted, the data is copied in after it (through the recorder's arena).
    fn write_region<T: bytemuck::Pod>(&self, op: &'static str, buf: &wgpu::Buffer, at: Region, data: &[T]) -> Result<()> {
        crate::error::check_len_eq(op, "data of the region's length", at.len, data.len())?;
        check_regions(op, elems(buf), &[at], &[])?;
        if data.is_empty() {
            return Ok(());
        }
        let mut rec = self.recorder();
        if rec.pending() {
            rec.upload(self, buf, (at.offset * 4) as u64, bytemuck::cast_slice(data))?;
            rec.end_op(self)
        } else {
            self.queue().write_buffer(buf, (at.offset * 4) as u64, bytemuck::cast_slice(data));
            Ok(())
        }
    }
}

impl Device for Wgpu {
    type Buf = wgpu::Buffer;
    type IndexBuf = wgpu::Buffer;
    type Ref<'a> = GpuSlice<'a>;
    type Mut<'a> = GpuSlice<'a>;
    type IndexRef<'a> = GpuSlice<'a>;
    type IndexMut<'a> = GpuSlice<'a>;
    type Input = dyn AsGpuSlice;

    fn kind(&self) -> DeviceKind {
        DeviceKind::Wgpu
    }
    fn name(&self) -> String {
        format!("wgpu: {}", self.adapter_name())
    }

    fn alloc(&mut self, len: usize) -> Result<wgpu::Buffer> {
        // WebGPU zero-initialises new buffers
        Ok(self.storage_buffer("moco f32 allocation", bytes(len)))
    }
    fn alloc_index(&mut self, len: usize) -> Result<wgpu::Buffer> {
        Ok(self.storage_buffer("moco u32 allocation", bytes(len)))
    }
    fn upload(&mut self, data: &[f32]) -> Result<wgpu::Buffer> {
        Ok(self.upload_pod("moco f32 allocation", data))
    }
    fn buf_len(buf: &wgpu::Buffer) -> usize {
        elems(buf)
    }
    fn index_len(buf: &wgpu::Buffer) -> usize {
        elems(buf)
    }
    fn zero(&mut self, buf: &mut wgpu::Buffer) -> Result<()> {
        self.encode(|enc| enc.clear_buffer(buf, 0, None))
    }
    fn write(&mut self, buf: &mut wgpu::Buffer, at: Region, data: &[f32]) -> Result<()> {
        self.write_region("wgpu write", buf, at, data)
    }
    fn write_index(&mut self, buf: &mut wgpu::Buffer, at: Region, data: &[u32]) -> Result<()> {
        self.write_region("wgpu write_index", buf, at, data)
    }
    fn read(&self, buf: &wgpu::Buffer, at: Region) -> Result<Vec<f32>> {
        self.read_region(buf, at)
    }
    fn read_index(&self, buf: &wgpu::Buffer, at: Region) -> Result<Vec<u32>> {
        self.read_region(buf, at)
    }
    fn copy(&mut self, dst: GpuSlice<'_>, src: GpuSlice<'_>) -> Result<()> {
        if dst.len() != src.len() {
            return Err(Error::shape("wgpu copy", format!("a destination of the source's length of {} elements", src.len()), format!("{} elements", dst.len())));
        }
        if src.is_empty() {
            return Ok(());
        }
        // WebGPU copies only between two buffers: two regions of one go through a scratch buffer
        let staging = (src.buffer() == dst.buffer()).then(|| self.scratch("moco copy staging", src.size()));
        self.scoped(|| {
            self.encode(|enc| match &staging {
                Some(staging) => {
                    enc.copy_buffer_to_buffer(src.buffer(), src.offset(), staging, 0, src.size());
                    enc.copy_buffer_to_buffer(staging, 0, dst.buffer(), dst.offset(), src.size());
                }
                None => enc.copy_buffer_to_buffer(src.buffer(), src.offset(), dst.buffer(), dst.offset(), src.size()),
            })
        })
    }
    fn defer_submissions(&mut self, on: bool) {
        Wgpu::defer_submissions(self, on)
    }
    fn start_profile(&mut self) -> Result<()> {
        Wgpu::start_profile(self)
    }
    fn profiling(&self) -> bool {
        Wgpu::profiling(self)
    }
    fn profile_scope(&self, name: &str) {
        Wgpu::profile_scope(self, name)
    }
    fn take_profile(&mut self) -> Result<Vec<super::ProfileRow>> {
        Wgpu::take_profile(self)
    }
    fn synchronize(&self) -> Result<()> {
        self.flush()?;
        self.device().poll(wgpu::PollType::wait_indefinitely()).map(|_| ()).map_err(|e| Error::Wgpu(format!("poll: {e}")))
    }

    fn input(x: &dyn AsGpuSlice) -> (GpuSlice<'_>, usize) {
        let s = x.as_gpu_slice();
        (s, s.len())
    }
    fn as_input(buf: &wgpu::Buffer) -> &(dyn AsGpuSlice + 'static) {
        buf
    }
    fn ref_len(v: &GpuSlice<'_>) -> usize {
        v.len()
    }
    fn mut_len(v: &GpuSlice<'_>) -> usize {
        v.len()
    }
    fn view(buf: &wgpu::Buffer, at: Region) -> Result<GpuSlice<'_>> {
        GpuSlice::elems(buf, at.offset, at.len)
    }
    fn whole(buf: &wgpu::Buffer) -> GpuSlice<'_> {
        GpuSlice::whole(buf)
    }
    fn whole_mut(buf: &mut wgpu::Buffer) -> GpuSlice<'_> {
        GpuSlice::whole(buf)
    }
    fn split<const W: usize, const R: usize>(buf: &mut wgpu::Buffer, writes: [Region; W], reads: [Region; R]) -> Result<([GpuSlice<'_>; W], [GpuSlice<'_>; R])> {
        check_regions("wgpu split", elems(buf), &writes, &reads)?;
        let buf = &*buf;
        let mut err = None;
        let mut one = |r: Region| {
            GpuSlice::elems(buf, r.offset, r.len).unwrap_or_else(|e| {
                err.get_or_insert(e);
                GpuSlice::whole(buf)
            })
        };
        let (w, rd) = (writes.map(&mut one), reads.map(&mut one));
        match err {
            Some(e) => Err(e),
            None => Ok((w, rd)),
        }
    }
    fn index_view(buf: &wgpu::Buffer, at: Region) -> Result<GpuSlice<'_>> {
        GpuSlice::elems(buf, at.offset, at.len)
    }
    fn index_mut(buf: &mut wgpu::Buffer, at: Region) -> Result<GpuSlice<'_>> {
        GpuSlice::elems(buf, at.offset, at.len)
    }
    fn index_whole_mut(buf: &mut wgpu::Buffer) -> GpuSlice<'_> {
        GpuSlice::whole(buf)
    }
}
