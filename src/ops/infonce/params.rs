//! How the GPU launchers split the streaming loss over workgroups / thread blocks, and the parameter block of
//! `kernels/infonce.cu` / `shaders/infonce.wgsl`. Shared by wgpu, CUDA and the CUDA emulation test, so all run the
//! same tiling.

use crate::ops::launch::{Grid, BLOCK};

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

/// Most channels of `infonce_partial_c128` (`RC` in the kernels): up to this many, the streaming pass holds a row's
/// q̂ in registers and reads each key tile from memory once.
pub const GPU_C_RESIDENT: usize = 128;

/// The streaming pass of the f32 kernels for `c` channels: `infonce_partial_c128` for C <= [`GPU_C_RESIDENT`] (one
/// channel slice), else `infonce_partial` (channel slices of [`GPU_C_SLICE`], the logits staged in chunks). Both
/// take [`StreamPlan::new`]'s plan and grid and write the same partials.
pub fn partial_kernel(c: usize) -> &'static str {
    if c <= GPU_C_RESIDENT {
        "infonce_partial_c128"
    } else {
        "infonce_partial"
    }
}

/// The parameter block of every kernel in `infonce.wgsl` / `infonce.cu` (`struct InfoNceParams`, 48 bytes).
/// WGSL binds it as a uniform; CUDA takes it by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[doc(hidden)]
pub struct InfoNceParams {
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

impl InfoNceParams {
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


impl StreamPlan {
    /// The grid of `infonce_partial_*` for `n` rows: (row tiles, key splits, channel slices).
    pub fn partial_grid(&self, n: usize) -> Grid {
        (n.div_ceil(GPU_TN) as u32, self.splits as u32, self.slices as u32)
    }
    /// The plan of `infonce_partial_mma_*` (tensor cores): rows and keys in tiles of [`MMA_TILE`], the whole C in
    /// one block (C <= [`MMA_C_MAX`]), the splits chosen as [`StreamPlan::new`] chooses them.
    pub fn mma(n: usize, m: usize, c: usize) -> Self {
        Self::mma_tiled(n, m, c, MMA_TILE)
    }
    /// The plan of `infonce_partial_mma_{tf32,tf32x3}` (f32 keys): as [`StreamPlan::mma`] with key tiles of
    /// [`MMA_F32_KEYS`].
    pub fn mma_f32(n: usize, m: usize, c: usize) -> Self {
        Self::mma_tiled(n, m, c, MMA_F32_KEYS)
    }
    fn mma_tiled(n: usize, m: usize, c: usize, key_tile: usize) -> Self {
        let row_tiles = n.div_ceil(MMA_TILE).max(1);
        let key_tiles = m.div_ceil(key_tile).max(1);
        let want = TARGET_WORKGROUPS.div_ceil(row_tiles).clamp(1, GPU_MAX_SPLITS).min(key_tiles);
        let keys_per_split = key_tiles.div_ceil(want) * key_tile;
        Self { splits: m.div_ceil(keys_per_split).max(1), keys_per_split, slices: 1, c_slice: c }
    }
    /// The grid of `infonce_partial_mma_*`: (row tiles of 64, key splits, 1).
    pub fn mma_partial_grid(&self, n: usize) -> Grid {
        (n.div_ceil(MMA_TILE) as u32, self.splits as u32, 1)
    }
}

/// `infonce_combine`: one block per row.
pub fn row_grid(rows: usize) -> Grid {
    (rows as u32, 1, 1)
}

/// `positive_logits`: one thread per row.
pub fn positive_grid(n: usize) -> Grid {
    (n.div_ceil(BLOCK as usize) as u32, 1, 1)
}

/// `negative_logits_*`: one 16-row x 64-key tile per block, (key tiles, row tiles).
pub fn negative_logits_grid(n: usize, k: usize) -> Grid {
    (k.div_ceil(64) as u32, n.div_ceil(16) as u32, 1)
}

/// `negative_logits_mma_{f16,bf16}` (tensor cores): blocks of 64 rows x 64 keys.
pub fn negative_logits_mma_grid(n: usize, k: usize) -> Grid {
    (k.div_ceil(MMA_TILE) as u32, n.div_ceil(MMA_TILE) as u32, 1)
}

/// `negative_logits_mma_{tf32,tf32x3}` (f32 keys): blocks of 64 rows x 32 keys.
pub fn negative_logits_mma_f32_grid(n: usize, k: usize) -> Grid {
    (k.div_ceil(MMA_F32_KEYS) as u32, n.div_ceil(MMA_TILE) as u32, 1)
}

/// Keys per tile of the TF32 tensor-core kernels (`F32_BN`: two stages of 32 f32 keys x 128 channels fit the 48 KB
/// of static shared memory).
pub const MMA_F32_KEYS: usize = 32;

/// Whether the TF32 tensor-core kernels (f32 keys) can run: `C % 4 == 0` (cp.async copies 16-byte pieces of each
/// row) and `C <= MMA_C_MAX` (the block holds the whole C).
pub fn mma_f32_apply(c: usize) -> bool {
    c.is_multiple_of(4) && c <= MMA_C_MAX
}

/// Rows and keys per block of the tensor-core logits (`MMA_BM`, `MMA_BN`).
pub const MMA_TILE: usize = 64;
/// Threads per block of the tensor-core kernels (`MMA_WARPS` warps).
pub const MMA_BLOCK: u32 = 128;

/// Most channels the tensor-core InfoNCE holds in one block (`MMA_CMAX`).
pub const MMA_C_MAX: usize = 128;

/// Whether the tensor-core InfoNCE can run: as [`mma_logits_apply`], and `C <= MMA_C_MAX`.
pub fn mma_infonce_apply(c: usize, dtype_code: u32) -> bool {
    mma_logits_apply(c, dtype_code) && c <= MMA_C_MAX
}

/// Whether the tensor-core logits can run: a 16-bit queue (`dtype_code` 1 f16, 2 bf16, the operands as stored) and
/// `C % 8 == 0` (cp.async copies 16-byte pieces of each row, which must start on 16-byte boundaries).
pub fn mma_logits_apply(c: usize, dtype_code: u32) -> bool {
    (dtype_code == 1 || dtype_code == 2) && c.is_multiple_of(8)
}

/// `infonce_reduce`: one block.
pub const REDUCE_GRID: Grid = (1, 1, 1);
