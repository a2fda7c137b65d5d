//! How the GPU backends split a streaming loss over workgroups / thread blocks. Shared by wgpu and CUDA so both
//! run the same tiling.

/// q rows per workgroup (`TN` in the kernels).
pub const GPU_TN: usize = 32;
/// Keys per tile (`TK`).
pub const GPU_TK: usize = 32;
/// Channels one accumulator slice covers (`ACC_GROUPS * ACC_MAX` = 8 * 32).
pub const GPU_C_SLICE: usize = 256;
/// Most key splits a row may have (`MAX_SPLITS`).
pub const GPU_MAX_SPLITS: usize = 256;
/// Workgroups to aim for, enough to fill a large GPU.
const TARGET_WORKGROUPS: usize = 512;

/// The grid of `infonce_partial`: (row tiles, key splits, channel slices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamPlan {
    /// Key splits (grid y).
    pub splits: usize,
    /// Keys per split, a multiple of the key tile (32).
    pub keys_per_split: usize,
    /// Channel slices (grid z); the logits are recomputed per slice when C > 256.
    pub slices: usize,
    /// Channels per slice.
    pub c_slice: usize,
}

impl StreamPlan {
    /// The plan for `n` rows, `m` keys, `c` channels.
    pub fn new(n: usize, m: usize, c: usize) -> Self {
        let row_tiles = n.div_ceil(GPU_TN).max(1);
        let key_tiles = m.div_ceil(GPU_TK).max(1);
        let want = TARGET_WORKGROUPS.div_ceil(row_tiles).clamp(1, GPU_MAX_SPLITS).min(key_tiles);
        let tiles_per_split = key_tiles.div_ceil(want);
        let keys_per_split = tiles_per_split * GPU_TK;
        let splits = m.div_ceil(keys_per_split).max(1);
        let c_slice = c.min(GPU_C_SLICE);
        Self { splits, keys_per_split, slices: c.div_ceil(c_slice), c_slice }
    }
}

/// The parameter block of every kernel in `contrastive.wgsl` / `contrastive.cu` (`struct Params`, 48 bytes).
/// WGSL binds it as a uniform; CUDA takes it by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct KernelParams {
    pub n: u32,
    pub c: u32,
    pub m: u32,
    pub splits: u32,
    pub keys_per_split: u32,
    pub skip_diagonal: u32,
    pub c_slice: u32,
    pub rows: u32,
    pub inv_t: f32,
    pub grad_scale: f32,
    pub loss_scale: f32,
    pub _pad: u32,
}

impl KernelParams {
    /// For `normalize_rows` over `rows` rows of `c`.
    pub fn normalize(rows: usize, c: usize) -> Self {
        Self { rows: rows as u32, c: c as u32, n: rows as u32, ..Default::default() }
    }
    /// For the materialising logits: unscaled cosines of `n` rows against `m` keys.
    pub fn logits(n: usize, c: usize, m: usize) -> Self {
        Self { n: n as u32, c: c as u32, m: m as u32, rows: n as u32, inv_t: 1.0, ..Default::default() }
    }
    /// For the streaming loss of `n` rows against `m` keys at temperature `t`, scaled by `loss_scale`
    /// (1 for InfoNCE, 2T for MoCo v3, which also skips the diagonal).
    pub fn stream(plan: &StreamPlan, n: usize, m: usize, c: usize, t: f32, loss_scale: f32, skip_diagonal: bool) -> Self {
        Self {
            n: n as u32,
            c: c as u32,
            m: m as u32,
            splits: plan.splits as u32,
            keys_per_split: plan.keys_per_split as u32,
            skip_diagonal: skip_diagonal as u32,
            c_slice: plan.c_slice as u32,
            rows: n as u32,
            inv_t: 1.0 / t,
            grad_scale: loss_scale / (t * n as f32),
            loss_scale,
            _pad: 0,
        }
    }
}

/// The parameter block of `queue.wgsl` / `queue.cu` (`struct QueueParams`, 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct QueueParams {
    pub n: u32,
    pub c: u32,
    pub k: u32,
    pub ptr: u32,
    pub dtype: u32,
    pub words_a: u32,
    pub total: u32,
    pub _pad: u32,
}

impl QueueParams {
    /// The enqueue of `shape` into a queue of dtype code `dtype` (0 f32, 1 f16, 2 bf16). `total` is the number of
    /// threads with work: elements for f32; for 16-bit storage, the u32 words of the two segments
    /// `[ptr*C, min(ptr+N, K)*C)` (first `words_a` threads) and `[0, max(ptr+N-K, 0)*C)`.
    pub fn new(shape: &crate::shape::QueueShape, dtype: u32) -> Self {
        let (n, c, k, ptr) = (shape.n as u32, shape.c as u32, shape.k as u32, shape.ptr as u32);
        let end_a = (ptr + n).min(k);
        let words_a = ((end_a * c - 1) / 2) - (ptr * c) / 2 + 1;
        let words_b = ((ptr + n).saturating_sub(k) * c).div_ceil(2);
        let total = if dtype == 0 { n * c } else { words_a + words_b };
        Self { n, c, k, ptr, dtype, words_a, total, _pad: 0 }
    }
}

/// The conv kernels' parameter block (`struct Params` of `kernels/conv.cu`, the uniform block of
/// `shaders/conv.wgsl`): the convolution and the GEMM it is computed as.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ConvParams {
    pub n: u32,
    pub c_in: u32,
    pub h: u32,
    pub w: u32,
    pub c_out: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    pub pad: u32,
    pub oh: u32,
    pub ow: u32,
    pub gemm_m: u32,
    pub gemm_n: u32,
    pub gemm_k: u32,
    pub pad0: u32,
    pub pad1: u32,
}
const _: () = assert!(std::mem::size_of::<ConvParams>() == 64 && std::mem::offset_of!(ConvParams, gemm_k) == 52);

/// Output tile of the conv kernels (64x64, 16-deep K chunks, 256 threads with 4x4 micro-tiles).
pub(crate) const CONV_TILE: usize = 64;

impl ConvParams {
    pub fn new(s: &crate::backend::cpu::nn::Conv2dShape, gemm_m: usize, gemm_n: usize, gemm_k: usize) -> Self {
        let u = |v: usize| v as u32; // every size is <= i32::MAX (conv_revalidate checks)
        Self {
            n: u(s.n),
            c_in: u(s.c_in),
            h: u(s.h),
            w: u(s.w),
            c_out: u(s.c_out),
            kh: u(s.kh),
            kw: u(s.kw),
            stride: u(s.stride),
            pad: u(s.pad),
            oh: u(s.out_h()),
            ow: u(s.out_w()),
            gemm_m: u(gemm_m),
            gemm_n: u(gemm_n),
            gemm_k: u(gemm_k),
            pad0: 0,
            pad1: 0,
        }
    }
}

/// Re-validates a conv shape for the GPU kernels (its fields are public, so it may not come from
/// `Conv2dShape::new`), which index in u32 with a few products of sizes (e.g. `(oy*stride + ki)`, `C_out*KH*KW`).
pub(crate) fn conv_revalidate(s: &crate::backend::cpu::nn::Conv2dShape) -> crate::Result<crate::backend::cpu::nn::Conv2dShape> {
    let v = crate::backend::cpu::nn::Conv2dShape::new(s.n, s.c_in, s.h, s.w, s.c_out, s.kh, s.kw, s.stride, s.pad)?;
    let taps = v.c_out.checked_mul(v.kh * v.kw).filter(|&t| t <= i32::MAX as usize);
    if taps.is_none() || v.h + 2 * v.pad > i32::MAX as usize || v.w + 2 * v.pad > i32::MAX as usize {
        return Err(crate::Error::shape("conv2d", "C_out*KH*KW and H, W + 2*pad at most i32::MAX", format!("{v:?}")));
    }
    Ok(v)
}

/// The conv grid for a `gemm_m x gemm_n` output in [`CONV_TILE`] tiles: tiles over N split over x and z (each at
/// most 65535), tiles over M on y (`tile_n0()` in the kernels flattens x and z).
pub(crate) fn conv_grid(op: &'static str, gemm_m: usize, gemm_n: usize) -> crate::Result<(u32, u32, u32)> {
    const MAX: usize = 65535;
    let (tm, tn) = (gemm_m.div_ceil(CONV_TILE), gemm_n.div_ceil(CONV_TILE));
    let (x, z) = if tn <= MAX { (tn, 1) } else { (MAX, tn.div_ceil(MAX)) };
    if tm > MAX || z > MAX {
        return Err(crate::Error::shape(op, format!("at most {} rows and {} columns in the GEMM", MAX * CONV_TILE, MAX * MAX * CONV_TILE), format!("{gemm_m} x {gemm_n}")));
    }
    Ok((x as u32, tm as u32, z as u32))
}

/// The batch-norm kernels' parameter block (`struct Params` of `kernels/norm.cu`, the uniform block of
/// `shaders/norm.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct NormParams {
    pub n: u32,
    pub c: u32,
    pub hw: u32,
    pub groups: u32,
    pub count: u32,
    pub len: u32,
    pub flags: u32,
    pub _pad: u32,
    pub eps: f32,
    pub momentum: f32,
    pub _pad2: [f32; 2],
}
const _: () = assert!(std::mem::size_of::<NormParams>() == 48 && std::mem::offset_of!(NormParams, eps) == 32);

/// The pooling / linear / element-wise kernels' parameter block (`struct Params` of `kernels/pool.cu`, the uniform
/// block of `shaders/pool.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct PoolParams {
    pub planes: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
    pub k: u32,
    pub stride: u32,
    pub pad: u32,
    pub m: u32,
    pub nc: u32,
    pub kk: u32,
    pub flags: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub len: u32,
    pub hw: u32,
    pub inv_hw: f32,
    pub _pad: u32,
}
const _: () = assert!(std::mem::size_of::<PoolParams>() == 80);
