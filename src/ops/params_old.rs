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
#[doc(hidden)]
pub struct KernelParams {
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
#[doc(hidden)]
pub struct QueueParams {
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
#[doc(hidden)]
pub struct ConvParams {
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
pub const CONV_TILE: usize = 64;

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
#[doc(hidden)]
pub fn conv_revalidate(s: &crate::backend::cpu::nn::Conv2dShape) -> crate::Result<crate::backend::cpu::nn::Conv2dShape> {
    let v = crate::backend::cpu::nn::Conv2dShape::new(s.n, s.c_in, s.h, s.w, s.c_out, s.kh, s.kw, s.stride, s.pad)?;
    let taps = v.c_out.checked_mul(v.kh * v.kw).filter(|&t| t <= i32::MAX as usize);
    if taps.is_none() || v.h + 2 * v.pad > i32::MAX as usize || v.w + 2 * v.pad > i32::MAX as usize {
        return Err(crate::Error::shape("conv2d", "C_out*KH*KW and H, W + 2*pad at most i32::MAX", format!("{v:?}")));
    }
    Ok(v)
}

/// The conv grid for a `gemm_m x gemm_n` output in [`CONV_TILE`] tiles: tiles over N split over x and z (each at
/// most 65535), tiles over M on y (`tile_n0()` in the kernels flattens x and z).
#[doc(hidden)]
pub fn conv_grid(op: &'static str, gemm_m: usize, gemm_n: usize) -> crate::Result<(u32, u32, u32)> {
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
#[doc(hidden)]
pub struct NormParams {
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
#[doc(hidden)]
pub struct PoolParams {
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

// ---- CUDA launch geometry ----------------------------------------------------------------------------------------
//
// The grids (and the parameter blocks the host builds inline) of every launch in src/backend/cuda, in one place, so
// that tests/cuda_emulated.rs, which runs kernels/*.cu on the CPU, checks the launches the GPU actually gets.
// Blocks are CUDA_BLOCK threads in x unless a launch says otherwise.

/// A CUDA grid `(x, y, z)` in blocks.
pub type Grid = (u32, u32, u32);

/// Threads per block of every CUDA launch except `gemm` (`BLOCK` of src/backend/cuda, `WG` of the kernels).
pub const CUDA_BLOCK: u32 = 256;

impl StreamPlan {
    /// The grid of `infonce_partial_*` for `n` rows: (row tiles, key splits, channel slices).
    pub fn partial_grid(&self, n: usize) -> Grid {
        (n.div_ceil(GPU_TN) as u32, self.splits as u32, self.slices as u32)
    }
}

/// `normalize_rows` and `infonce_combine`: one block per row.
pub fn row_grid(rows: usize) -> Grid {
    (rows as u32, 1, 1)
}

/// `positive_logits`: one thread per row.
pub fn positive_grid(n: usize) -> Grid {
    (n.div_ceil(CUDA_BLOCK as usize) as u32, 1, 1)
}

/// `negative_logits_*`: one 16-row x 64-key tile per block, (key tiles, row tiles).
pub fn negative_logits_grid(n: usize, k: usize) -> Grid {
    (k.div_ceil(64) as u32, n.div_ceil(16) as u32, 1)
}

/// `infonce_reduce`: one block.
pub const REDUCE_GRID: Grid = (1, 1, 1);

/// `struct EmaParams` of `kernels/ema.cu` / `shaders/ema.wgsl` (16 bytes).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EmaParams {
    pub len: u32,
    pub stride: u32,
    /// m, rounded from f64
    pub momentum: f32,
    /// 1 - m taken in f64, then rounded (as PyTorch's `1. - m` with a Python float m)
    pub one_minus_m: f32,
}

/// Blocks of the grid-stride `ema_update` launch at most.
pub const EMA_BLOCKS: u32 = 1024;

/// Elements one block of `ema_multi_tensor` updates (`EMA_CHUNK` in `kernels/ema.cu`).
pub const EMA_CHUNK: usize = 8192;

impl EmaParams {
    /// The grid-stride `ema_update` over `len` elements: its parameter block and grid (`min(ceil(len/256), 1024)`
    /// blocks).
    pub fn launch(shape: &crate::shape::EmaShape) -> (Self, Grid) {
        let len = shape.len();
        let (momentum, one_minus_m) = shape.weights();
        let blocks = (len as u32).div_ceil(CUDA_BLOCK).clamp(1, EMA_BLOCKS);
        (Self { len: len as u32, stride: blocks * CUDA_BLOCK, momentum, one_minus_m }, (blocks, 1, 1))
    }
}

/// The chunk map of `ema_multi_tensor` for tensors of `lens` elements: one word per block,
/// `tensor | chunk << 32`, tensor by tensor (the grid is its length).
pub fn ema_multi_chunk_map(lens: &[usize]) -> Vec<u64> {
    let mut map = Vec::new();
    for (t, &len) in lens.iter().enumerate() {
        for ch in 0..len.div_ceil(EMA_CHUNK) {
            map.push(t as u64 | ((ch as u64) << 32));
        }
    }
    map
}

impl QueueParams {
    /// The grid of `enqueue_f32` / `enqueue_packed16`: one thread per element (f32) or element pair (16-bit).
    pub fn grid(&self) -> Grid {
        (self.total.div_ceil(CUDA_BLOCK).max(1), 1, 1)
    }
}

impl ConvParams {
    /// `conv2d_forward`: M = C_out, N = N*OH*OW, K = C_in*KH*KW.
    pub fn forward(s: &crate::backend::cpu::nn::Conv2dShape) -> Self {
        Self::new(s, s.c_out, s.n * s.out_h() * s.out_w(), s.c_in * s.kh * s.kw)
    }
    /// `conv2d_backward_weight`: M = C_out, N = C_in*KH*KW, K = N*OH*OW.
    pub fn backward_weight(s: &crate::backend::cpu::nn::Conv2dShape) -> Self {
        Self::new(s, s.c_out, s.c_in * s.kh * s.kw, s.n * s.out_h() * s.out_w())
    }
    /// `conv2d_backward_data`: M = C_in, N = N*H*W, K = C_out*KH*KW.
    pub fn backward_data(s: &crate::backend::cpu::nn::Conv2dShape) -> Self {
        Self::new(s, s.c_in, s.n * s.h * s.w, s.c_out * s.kh * s.kw)
    }
    /// The grid of this GEMM ([`conv_grid`]).
    pub fn grid(&self, op: &'static str) -> crate::Result<Grid> {
        conv_grid(op, self.gemm_m as usize, self.gemm_n as usize)
    }
}

/// `FLAG_*` bits of `kernels/norm.cu` (`Params.flags`).
pub mod norm_flags {
    /// gamma given (else 1)
    pub const GAMMA: u32 = 1;
    /// beta given (else 0)
    pub const BETA: u32 = 2;
    /// ReLU epilogue (backward: dy masked by out > 0)
    pub const RELU: u32 = 4;
    /// + identity before the ReLU (backward: didentity += dy)
    pub const ADD: u32 = 8;
    /// apply: the mean/rstd bindings hold running_mean/running_var
    pub const EVAL: u32 = 16;
    /// dgamma given
    pub const DGAMMA: u32 = 32;
    /// dbeta given
    pub const DBETA: u32 = 64;
}

impl NormParams {
    /// The parameter block of every batch-norm kernel for `s` with `flags` ([`norm_flags`]).
    pub fn new(s: &crate::backend::cpu::nn::BatchNormShape, flags: u32) -> Self {
        Self { n: s.n as u32, c: s.c as u32, hw: s.hw as u32, groups: s.groups as u32, count: s.count() as u32, len: s.len() as u32, flags, _pad: 0, eps: s.eps, momentum: s.momentum, _pad2: [0.0; 2] }
    }
}

/// The 2-D grid of `blocks` blocks (x <= 65535; the kernels flatten `blockIdx.x + blockIdx.y * gridDim.x`).
pub fn grid_2d(blocks: usize) -> Grid {
    if blocks <= 65535 {
        (blocks.max(1) as u32, 1, 1)
    } else {
        (65535, blocks.div_ceil(65535) as u32, 1)
    }
}

/// One 256-thread block per 256 elements of `len` (the element-wise kernels of norm.cu and pool.cu).
pub fn elem_grid(len: usize) -> Grid {
    grid_2d(len.div_ceil(CUDA_BLOCK as usize))
}

/// `bn_stats` and `bn_backward_sums`: one block per (group, channel) statistic, or an error when there are too many.
pub fn bn_stat_grid(s: &crate::backend::cpu::nn::BatchNormShape) -> crate::Result<Grid> {
    let gcn = s.stats_len();
    // the grid limit, and the kernels' u32 indexing of the [G*C, 3] coefficients
    if gcn > 65535 * 65535 || gcn > u32::MAX as usize / 3 {
        return Err(crate::Error::shape("batchnorm (cuda)", "G*C <= (2^32 - 1)/3", format!("G*C = {gcn}")));
    }
    Ok(grid_2d(gcn))
}

/// `bn_running` and `bn_backward_coef`: one thread per channel.
pub fn bn_channel_grid(s: &crate::backend::cpu::nn::BatchNormShape) -> Grid {
    (s.c.div_ceil(CUDA_BLOCK as usize) as u32, 1, 1)
}

/// `FLAG_ACC` / `FLAG_BIAS` of `gemm` in `kernels/pool.cu`.
pub const GEMM_FLAG_ACC: u32 = 1;
/// See [`GEMM_FLAG_ACC`].
pub const GEMM_FLAG_BIAS: u32 = 2;
/// `gemm` runs (GEMM_TILE, GEMM_TILE) blocks, one output each.
pub const GEMM_TILE: usize = 16;

/// One launch of `gemm` (pool.cu): `C[m, nc] (+)= A.B (+ bias)` with A(r, k) at `r*a_rs + k*a_cs` and B(k, c) at
/// `k*b_rs + c*b_cs`.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct GemmLaunch {
    pub params: PoolParams,
    pub grid: Grid,
    pub block: Grid,
}

impl PoolParams {
    /// `maxpool_forward` / `maxpool_backward`.
    pub fn maxpool(s: &crate::backend::cpu::nn::MaxPool2dShape) -> Self {
        Self { planes: (s.n * s.c) as u32, h: s.h as u32, w: s.w as u32, oh: s.out_h() as u32, ow: s.out_w() as u32, k: s.k as u32, stride: s.stride as u32, pad: s.pad as u32, ..Default::default() }
    }
    /// `avgpool_forward` / `avgpool_backward` (re-validates the shape).
    pub fn avgpool(s: &crate::backend::cpu::nn::GlobalAvgPoolShape) -> crate::Result<Self> {
        let s = crate::backend::cpu::nn::GlobalAvgPoolShape::new(s.n, s.c, s.hw)?;
        Ok(Self { planes: (s.n * s.c) as u32, hw: s.hw as u32, inv_hw: 1.0 / s.hw as f32, ..Default::default() })
    }
    /// `relu_forward`, `relu_backward`, `add_forward` over `len` elements.
    pub fn eltwise(len: usize) -> Self {
        Self { len: len as u32, ..Default::default() }
    }
    /// `bias_backward` of a linear layer: one thread per output column.
    pub fn bias_backward(s: &crate::backend::cpu::nn::LinearShape) -> (Self, Grid) {
        (Self { m: s.n as u32, nc: s.out_f as u32, ..Default::default() }, elem_grid(s.out_f))
    }
}

impl GemmLaunch {
    /// A strided GEMM, or an error when its grid would exceed 65535 tiles on an axis.
    pub fn new((m, nc, kk): (usize, usize, usize), (a_rs, a_cs): (usize, usize), (b_rs, b_cs): (usize, usize), bias: bool, acc: bool) -> crate::Result<Self> {
        let (gx, gy) = (nc.div_ceil(GEMM_TILE), m.div_ceil(GEMM_TILE));
        if gx > 65535 || gy > 65535 {
            return Err(crate::Error::shape("linear (cuda)", "at most 65535*16 rows and output columns per GEMM", format!("{m} x {nc}")));
        }
        let flags = if acc { GEMM_FLAG_ACC } else { 0 } | if bias { GEMM_FLAG_BIAS } else { 0 };
        let params = PoolParams { m: m as u32, nc: nc as u32, kk: kk as u32, flags, a_rs: a_rs as u32, a_cs: a_cs as u32, b_rs: b_rs as u32, b_cs: b_cs as u32, ..Default::default() };
        Ok(Self { params, grid: (gx as u32, gy as u32, 1), block: (GEMM_TILE as u32, GEMM_TILE as u32, 1) })
    }
    /// Linear forward `out [N, OUT] = inp [N, IN] . weight [OUT, IN]^T (+ bias)`: A = inp, B(i, o) = weight[o*IN + i].
    pub fn linear_forward(s: &crate::backend::cpu::nn::LinearShape, bias: bool) -> crate::Result<Self> {
        Self::new((s.n, s.out_f, s.in_f), (s.in_f, 1), (1, s.in_f), bias, false)
    }
    /// Linear backward data `dinp [N, IN] += dout [N, OUT] . weight [OUT, IN]`.
    pub fn linear_backward_data(s: &crate::backend::cpu::nn::LinearShape) -> crate::Result<Self> {
        Self::new((s.n, s.in_f, s.out_f), (s.out_f, 1), (s.in_f, 1), false, true)
    }
    /// Linear backward weight `dweight [OUT, IN] += dout^T . inp`: A(o, r) = dout[r*OUT + o].
    pub fn linear_backward_weight(s: &crate::backend::cpu::nn::LinearShape) -> crate::Result<Self> {
        Self::new((s.out_f, s.in_f, s.n), (1, s.out_f), (s.in_f, 1), false, true)
    }
}

// ---- ViT kernels (`shaders/vit.wgsl`, `kernels/vit.cu`) ------------------------------------------------------------

/// Threads per workgroup / block of the layer-norm row kernels (`layernorm_forward`, `layernorm_backward_dx`).
pub const VIT_WG_LN: u32 = 128;
/// Threads per workgroup / block of every other ViT kernel.
pub const VIT_WG: u32 = 64;
/// Most workgroups of a grid-stride launch (`gelu_*`, `add_backward`).
pub const VIT_STRIDE_BLOCKS: usize = 4096;

/// The ViT kernels' parameter block (`struct Params` of `shaders/vit.wgsl` / `kernels/vit.cu`, 64 bytes); each
/// constructor fills the fields its kernels read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[doc(hidden)]
pub struct VitParams {
    pub len: u32,
    pub rows: u32,
    pub c: u32,
    pub b: u32,
    pub t: u32,
    pub heads: u32,
    pub head_dim: u32,
    pub img_c: u32,
    pub h: u32,
    pub w: u32,
    pub patch_size: u32,
    pub patches: u32,
    pub cols: u32,
    pub _pad: u32,
    pub eps: f32,
    pub scale: f32,
}
const _: () = assert!(std::mem::size_of::<VitParams>() == 64 && std::mem::offset_of!(VitParams, eps) == 56);

/// The ViT kernels index in u32 with sums of in-range offsets: every tensor of a call must hold at most
/// `i32::MAX` elements (checked by each constructor below before the kernels run).
fn vit_u32(op: &'static str, lens: &[usize]) -> crate::Result<()> {
    match lens.iter().find(|&&l| l > i32::MAX as usize) {
        Some(l) => Err(crate::Error::shape(op, "tensors of at most 2^31 - 1 elements", format!("{l} elements"))),
        None => Ok(()),
    }
}

impl VitParams {
    /// Layer norm over `[R, C]` (`layernorm_*`).
    pub fn layernorm(s: &crate::backend::cpu::nn::LayerNormShape) -> crate::Result<Self> {
        vit_u32("layernorm", &[s.len()])?;
        Ok(Self { rows: s.rows() as u32, c: s.c() as u32, len: s.len() as u32, eps: s.eps(), ..Default::default() })
    }
    /// An element-wise kernel over `len` elements (`gelu_*`, `add_backward`).
    pub fn eltwise(s: &crate::backend::cpu::nn::EltwiseShape) -> crate::Result<Self> {
        vit_u32("eltwise", &[s.len])?;
        Ok(Self { len: s.len as u32, ..Default::default() })
    }
    /// The attention core (`attention_*`).
    pub fn attention(s: &crate::backend::cpu::nn::AttentionShape) -> crate::Result<Self> {
        vit_u32("attention", &[s.qkv_len(), s.att_len()])?;
        let u = |v: usize| v as u32;
        Ok(Self { b: u(s.b()), t: u(s.t()), heads: u(s.heads()), head_dim: u(s.head_dim()), c: u(s.c()), len: u(s.out_len()), scale: s.scale(), ..Default::default() })
    }
    /// The patch im2col (`patch_im2col*`): `len` = B*C*H*W, the length of both images and cols.
    pub fn patch(s: &crate::backend::cpu::nn::PatchShape) -> crate::Result<Self> {
        vit_u32("patch_embed", &[s.len()])?;
        let u = |v: usize| v as u32;
        Ok(Self { b: u(s.b()), img_c: u(s.c()), h: u(s.h()), w: u(s.w()), patch_size: u(s.patch()), patches: u(s.patches()), cols: u(s.cols()), len: u(s.len()), ..Default::default() })
    }
    /// Token assembly and the cls feature (`tokens_*`, `cls_select_*`) with `len` elements of work (B*T*C for
    /// `tokens_forward`, B*P*C for `tokens_backward_patches`, B*C for `cls_select_*`).
    pub fn tokens(s: &crate::backend::cpu::nn::TokensShape, len: usize) -> crate::Result<Self> {
        vit_u32("tokens", &[s.len()])?;
        let u = |v: usize| v as u32;
        Ok(Self { b: u(s.b()), t: u(s.t()), c: u(s.c()), patches: u(s.patches()), len: u(len), ..Default::default() })
    }
}

/// One workgroup / block per row (`layernorm_forward`, `layernorm_backward_dx`) or per (b, h, token)
/// (`attention_*`): `rows` groups over x and y.
pub fn vit_row_grid(rows: usize) -> Grid {
    grid_2d(rows)
}

/// One thread per element of `len` (64 per group).
pub fn vit_elem_grid(len: usize) -> Grid {
    grid_2d(len.div_ceil(VIT_WG as usize))
}

/// A grid-stride launch over `len` elements: at most [`VIT_STRIDE_BLOCKS`] groups of 64.
pub fn vit_stride_grid(len: usize) -> Grid {
    (len.div_ceil(VIT_WG as usize).clamp(1, VIT_STRIDE_BLOCKS) as u32, 1, 1)
}
