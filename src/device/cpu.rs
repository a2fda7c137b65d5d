//! [`Device`] on the CPU: allocations are `Vec`s, views are slices. A framework's own `&[f32]` / `&mut [f32]` go
//! into every op with no copy.

use super::{check_regions, Device, DeviceKind, OpState, Region};
use crate::error::Result;

/// The CPU as a device: memory is host memory, and the ops keep their scratch (the convolutions' im2col columns and
/// measured algorithm choices) in the device, so a training step allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct CpuDevice {
    state: OpState,
}

impl CpuDevice {
    /// A device with no scratch yet (it grows to the largest op's need on first use).
    pub fn new() -> Self {
        Self::default()
    }
    /// The per-device state of one op (see [`OpState`]).
    pub fn op_state<T: Default + Send + Sync + 'static>(&mut self) -> &mut T {
        self.state.get::<T>()
    }
}

/// Disjoint views of `buf` (see [`Device::split`]).
#[allow(clippy::type_complexity)]
pub(crate) fn split_slice<T, const W: usize, const R: usize>(buf: &mut [T], writes: [Region; W], reads: [Region; R]) -> Result<([&mut [T]; W], [&[T]; R])> {
    check_regions("cpu split", buf.len(), &writes, &reads)?;
    let base = buf.as_mut_ptr();
    // SAFETY: `check_regions` proved every region lies inside `buf` and that no written region overlaps any other
    // region handed out here; `buf` is borrowed mutably for the returned lifetime, so nothing else aliases it. Each
    // written region therefore gets exclusive access, and the read-only regions are only ever shared.
    let w = writes.map(|r| unsafe { std::slice::from_raw_parts_mut(base.add(r.offset), r.len) });
    // SAFETY: as above (read-only regions may overlap each other, never a written one).
    let rd = reads.map(|r| unsafe { std::slice::from_raw_parts(base.add(r.offset).cast_const(), r.len) });
    Ok((w, rd))
}

fn region<T>(buf: &[T], at: Region) -> Result<&[T]> {
    check_regions("cpu view", buf.len(), &[], &[at])?;
    Ok(&buf[at.range()])
}

impl Device for CpuDevice {
    type Buf = Vec<f32>;
    type IndexBuf = Vec<u32>;
    type Ref<'a> = &'a [f32];
    type Mut<'a> = &'a mut [f32];
    type IndexRef<'a> = &'a [u32];
    type IndexMut<'a> = &'a mut [u32];
    type Input = [f32];

    fn kind(&self) -> DeviceKind {
        DeviceKind::Cpu
    }
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn alloc(&mut self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn alloc_index(&mut self, len: usize) -> Result<Vec<u32>> {
        Ok(vec![0; len])
    }
    fn upload(&mut self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn buf_len(buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn index_len(buf: &Vec<u32>) -> usize {
        buf.len()
    }
    fn zero(&mut self, buf: &mut Vec<f32>) -> Result<()> {
        // on every core: a network's activation gradients are hundreds of MB (the ViT's: 252 MB per view)
        use rayon::prelude::*;
        buf.par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
        Ok(())
    }
    fn write(&mut self, buf: &mut Vec<f32>, at: Region, data: &[f32]) -> Result<()> {
        crate::error::check_len_eq("cpu write", "data of the region's length", at.len, data.len())?;
        let ([dst], []) = split_slice(buf, [at], [])?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn write_index(&mut self, buf: &mut Vec<u32>, at: Region, data: &[u32]) -> Result<()> {
        crate::error::check_len_eq("cpu write_index", "data of the region's length", at.len, data.len())?;
        check_regions("cpu write_index", buf.len(), &[at], &[])?;
        buf[at.range()].copy_from_slice(data);
        Ok(())
    }
    fn read(&self, buf: &Vec<f32>, at: Region) -> Result<Vec<f32>> {
        Ok(region(buf, at)?.to_vec())
    }
    fn read_index(&self, buf: &Vec<u32>, at: Region) -> Result<Vec<u32>> {
        Ok(region(buf, at)?.to_vec())
    }
    fn copy(&mut self, dst: &mut [f32], src: &[f32]) -> Result<()> {
        crate::error::check_len_eq("cpu copy", "a destination of the source's length", src.len(), dst.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn input(x: &[f32]) -> (&[f32], usize) {
        (x, x.len())
    }
    fn as_input(buf: &Vec<f32>) -> &[f32] {
        buf
    }
    fn ref_len(v: &&[f32]) -> usize {
        v.len()
    }
    fn mut_len(v: &&mut [f32]) -> usize {
        v.len()
    }
    fn view(buf: &Vec<f32>, at: Region) -> Result<&[f32]> {
        region(buf, at)
    }
    fn whole(buf: &Vec<f32>) -> &[f32] {
        buf
    }
    fn whole_mut(buf: &mut Vec<f32>) -> &mut [f32] {
        buf
    }
    fn split<const W: usize, const R: usize>(buf: &mut Vec<f32>, writes: [Region; W], reads: [Region; R]) -> Result<([&mut [f32]; W], [&[f32]; R])> {
        split_slice(buf, writes, reads)
    }
    fn index_view(buf: &Vec<u32>, at: Region) -> Result<&[u32]> {
        region(buf, at)
    }
    fn index_mut(buf: &mut Vec<u32>, at: Region) -> Result<&mut [u32]> {
        let ([v], []) = split_slice(buf, [at], [])?;
        Ok(v)
    }
    fn index_whole_mut(buf: &mut Vec<u32>) -> &mut [u32] {
        buf
    }
}
