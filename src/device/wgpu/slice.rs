//! Views of wgpu storage buffers: [`GpuSlice`], a byte range a kernel binds.

use crate::error::{Error, Result};

/// Alignment of a [`GpuSlice`] offset: WebGPU's default `min_storage_buffer_offset_alignment` (256 bytes).
pub const SLICE_ALIGN_BYTES: u64 = 256;

/// A byte range of a storage buffer that a kernel binds: a whole buffer, or one region of a bigger allocation
/// (a model's flat parameters, or its one activation allocation).
///
/// WebGPU forbids binding read-only and writable views of one buffer in the same dispatch, so the layer shaders
/// (conv, norm, pool) declare every storage binding `read_write`; two disjoint slices of one buffer can then be
/// input and output of one kernel.
#[derive(Clone, Copy, Debug)]
pub struct GpuSlice<'a> {
    buffer: &'a wgpu::Buffer,
    offset: u64,
    // bytes bound: at least 4 (WebGPU binds no empty range)
    size: u64,
    // elements the view holds (may be 0)
    len: usize,
}

impl<'a> GpuSlice<'a> {
    /// The whole buffer.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self { buffer, offset: 0, size: buffer.size(), len: (buffer.size() / 4) as usize }
    }
    /// `len` f32 (or u32) elements starting at element `offset`. The byte offset must be a multiple of
    /// [`SLICE_ALIGN_BYTES`] (64 elements) and the range must lie inside the buffer.
    pub fn elems(buffer: &'a wgpu::Buffer, offset: usize, len: usize) -> Result<Self> {
        let (off, size) = (offset as u64 * 4, (len.max(1) as u64) * 4);
        if off % SLICE_ALIGN_BYTES != 0 || off + size > buffer.size() {
            return Err(Error::shape(
                "gpu slice",
                format!("an offset that is a multiple of {} elements and a range inside the {}-byte buffer", SLICE_ALIGN_BYTES / 4, buffer.size()),
                format!("elements {offset}..{}", offset + len),
            ));
        }
        Ok(Self { buffer, offset: off, size, len })
    }
    /// Length in 4-byte elements (f32 or u32): `len` of [`GpuSlice::elems`], or the whole buffer's.
    pub fn len(&self) -> usize {
        self.len
    }
    /// No elements (the binding still covers one, as WebGPU binds no empty range).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Size in bytes of the bound range.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Offset in bytes into [`GpuSlice::buffer`].
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// The underlying buffer.
    pub fn buffer(&self) -> &'a wgpu::Buffer {
        self.buffer
    }
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: self.buffer, offset: self.offset, size: std::num::NonZeroU64::new(self.size) })
    }
}

impl<'a> From<&'a wgpu::Buffer> for GpuSlice<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Self::whole(buffer)
    }
}

/// What a layer kernel accepts as a buffer argument: a whole `wgpu::Buffer` or a [`GpuSlice`] of one.
pub trait AsGpuSlice {
    /// The bound range.
    fn as_gpu_slice(&self) -> GpuSlice<'_>;
}

impl AsGpuSlice for wgpu::Buffer {
    fn as_gpu_slice(&self) -> GpuSlice<'_> {
        GpuSlice::whole(self)
    }
}

impl AsGpuSlice for GpuSlice<'_> {
    fn as_gpu_slice(&self) -> GpuSlice<'_> {
        *self
    }
}

