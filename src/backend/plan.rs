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
    /// Keys per split, a multiple of [`GPU_TK`].
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
