//! The parameter block of every kernel of `kernels/health.cu` / `shaders/health.wgsl` and the launch plan both GPUs
//! run (the CUDA emulation too): the launches, their grids and the scratch they share.
//!
//! [`Health::health`](super::Health::health) is four or five launches, in this order:
//!
//! 1. `health_gram` over the pairs of rows of q̂ (grid `ceil(N/16)²`, a 16 × 16 tile of pairs per 256-thread
//!    block): each block writes the sum of `exp(−2‖q̂_i − q̂_j‖²)` over its pairs with `i < j` to `pair_part`, and,
//!    when `N <= d`, its tile of the Gram matrix `q̂ q̂ᵀ`;
//! 2. when `d < N`, `health_gram` again over the columns of q̂ (grid `ceil(d/16)²`): the tile of `q̂ᵀ q̂`;
//! 3. `health_dims`, one thread per dimension c: the std of column c over the batch, `Σ_i (q̂_ic − k̂_ic)²` and
//!    `Σ_i q̂_ic k̂_ic` into `dim_part: [d, 3]`;
//! 4. `health_logits` (grid `(ceil(N/16), splits)`): a 16-row × 16-key tile of cosines per step over the block's
//!    keys, each row's sum and max over them into `logit_part: [splits, N, 2]`;
//! 5. `health_finish`, one block: every partial summed in a fixed order, the statistics written.
//!
//! [`Health::param_drift`](super::Health::param_drift): `drift_partial` (a grid-stride pass, one `(Σ(θk−θq)², Σθq²)`
//! pair per block), then `drift_finish` (one block). Every sum has a fixed order: the results are deterministic.

use super::{DriftShape, HealthShape};
use crate::ops::launch::{grid_2d, Grid, BLOCK};

/// Rows (and keys, and reduced elements per staged chunk) of a tile (`T` in the kernels).
pub const TILE: usize = 16;
/// Blocks to aim for in `health_logits`.
const TARGET_BLOCKS: usize = 512;
/// Most blocks of `drift_partial`.
pub const DRIFT_MAX_BLOCKS: usize = 1024;

/// `health_gram` writes its tile of the Gram matrix.
pub const MODE_GRAM: u32 = 1;
/// `health_gram` writes its block's sum of `exp(−2‖x_i − x_j‖²)` over `i < j`.
pub const MODE_PAIRS: u32 = 2;

/// `struct HealthParams` of the kernels (64 bytes): WGSL binds it as a uniform, CUDA takes it by value.
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct HealthParams {
    /// Pairs N.
    pub n: u32,
    /// Dimension d.
    pub d: u32,
    /// Queue length K.
    pub k: u32,
    /// `health_gram`: rows of the matrix whose Gram it forms (N for q̂, d for q̂ᵀ).
    pub rows: u32,
    /// `health_gram`: length of the reduced dimension (d for q̂, N for q̂ᵀ).
    pub red: u32,
    /// `health_gram`: element `(r, t)` is `x[r * row_stride + t * red_stride]`.
    pub row_stride: u32,
    pub red_stride: u32,
    /// `health_gram`: [`MODE_GRAM`] | [`MODE_PAIRS`].
    pub mode: u32,
    /// `health_logits`: key splits (grid y).
    pub splits: u32,
    /// `health_logits`: keys per split, a multiple of [`TILE`].
    pub keys_per_split: u32,
    /// `health_finish`: entries of `pair_part`, `ceil(N/16)²`.
    pub pair_blocks: u32,
    /// Drift: parameters per buffer.
    pub len: u32,
    /// Drift: blocks of `drift_partial` (entries of `drift_part` / 2).
    pub drift_blocks: u32,
    /// `health_logits` / `health_finish`: 1 when the keys are `k̂` itself (MoCo v3's in-batch negatives), key `i`
    /// of row `i` skipped.
    pub skip_diagonal: u32,
    pub _pad: [u32; 2],
}

const _: () = assert!(std::mem::size_of::<HealthParams>() == 64);

/// One launch of the plan: entry point, parameter block, grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthLaunch {
    /// Entry point (the same name in the `.cu` and the `.wgsl`).
    pub entry: &'static str,
    /// Its parameter block.
    pub params: HealthParams,
    /// Its grid of 256-thread blocks.
    pub grid: Grid,
}

/// The launches of one health computation and the sizes of its scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthPlan {
    /// The launches, in order (see the module documentation).
    pub launches: Vec<HealthLaunch>,
    /// Elements of `dim_part`, `3d`.
    pub dim_part: usize,
    /// Elements of `pair_part`, `ceil(N/16)²`.
    pub pair_part: usize,
    /// Elements of `logit_part`, `splits * N * 2`.
    pub logit_part: usize,
}

fn tiles(v: usize) -> usize {
    v.div_ceil(TILE)
}

impl HealthPlan {
    /// The plan of `shape`.
    pub fn new(shape: &HealthShape) -> Self {
        let (n, d, k) = (shape.n(), shape.d(), shape.k());
        let row_tiles = tiles(n);
        let key_tiles = tiles(k);
        let want = TARGET_BLOCKS.div_ceil(row_tiles).clamp(1, key_tiles);
        let keys_per_split = key_tiles.div_ceil(want) * TILE;
        let splits = k.div_ceil(keys_per_split);
        let pair_blocks = row_tiles * row_tiles;
        let base = HealthParams { n: n as u32, d: d as u32, k: k as u32, splits: splits as u32, keys_per_split: keys_per_split as u32, pair_blocks: pair_blocks as u32, skip_diagonal: shape.is_in_batch() as u32, ..Default::default() };
        // pairs of rows of q̂ [N, d]: element (r, t) at r*d + t
        let rows_mode = if n <= d { MODE_PAIRS | MODE_GRAM } else { MODE_PAIRS };
        let mut launches = vec![HealthLaunch { entry: "health_gram", params: HealthParams { rows: n as u32, red: d as u32, row_stride: d as u32, red_stride: 1, mode: rows_mode, ..base }, grid: (row_tiles as u32, row_tiles as u32, 1) }];
        if d < n {
            // pairs of columns of q̂ (rows of q̂ᵀ): element (c, i) at i*d + c
            launches.push(HealthLaunch { entry: "health_gram", params: HealthParams { rows: d as u32, red: n as u32, row_stride: 1, red_stride: d as u32, mode: MODE_GRAM, ..base }, grid: (tiles(d) as u32, tiles(d) as u32, 1) });
        }
        launches.push(HealthLaunch { entry: "health_dims", params: base, grid: grid_2d(d.div_ceil(BLOCK as usize)) });
        launches.push(HealthLaunch { entry: "health_logits", params: base, grid: (row_tiles as u32, splits as u32, 1) });
        launches.push(HealthLaunch { entry: "health_finish", params: base, grid: (1, 1, 1) });
        Self { launches, dim_part: 3 * d, pair_part: pair_blocks, logit_part: splits * n * 2 }
    }
}

/// The drift's two launches (`drift_partial`, `drift_finish`) and the elements of its scratch `drift_part`.
pub fn drift_plan(shape: &DriftShape) -> ([HealthLaunch; 2], usize) {
    let blocks = shape.len().div_ceil(BLOCK as usize).clamp(1, DRIFT_MAX_BLOCKS);
    let p = HealthParams { len: shape.len() as u32, drift_blocks: blocks as u32, ..Default::default() };
    ([HealthLaunch { entry: "drift_partial", params: p, grid: (blocks as u32, 1, 1) }, HealthLaunch { entry: "drift_finish", params: p, grid: (1, 1, 1) }], 2 * blocks)
}
