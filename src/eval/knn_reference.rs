//! The former kNN prediction path, [`KnnBank::predict_reference`]: bank streamed in slabs through a min-heap
//! per query. [`KnnBank::predict`] (one GEMM per query block against the whole bank, buffered selection) gives
//! the same neighbours and vote; this one stays for the benchmark and as a cross-check in tests.

use rayon::prelude::*;

use super::knn::{l2_normalise_into, vote, KnnBank, KnnConfig, BANK_SLAB};
use crate::ops::linear::{cpu::linear_forward, LinearShape};
use crate::error::Result;

/// Min-heap of the best `k` `(sim, bank index)` pairs seen so far. "Worse" means lower similarity, or equal
/// similarity and a larger bank index, so the kept set is the top k under a total order.
struct TopK {
    items: Vec<(f32, u32)>,
    k: usize,
}

#[inline]
fn worse(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 > b.1)
}

impl TopK {
    fn new(k: usize) -> Self {
        Self { items: Vec::with_capacity(k), k }
    }

    fn clear(&mut self) {
        self.items.clear();
    }

    #[inline]
    fn push(&mut self, cand: (f32, u32)) {
        if self.items.len() < self.k {
            self.items.push(cand);
            // sift up
            let mut i = self.items.len() - 1;
            while i > 0 {
                let p = (i - 1) / 2;
                if worse(self.items[i], self.items[p]) {
                    self.items.swap(i, p);
                    i = p;
                } else {
                    break;
                }
            }
        } else if worse(self.items[0], cand) {
            self.items[0] = cand;
            self.sift_down();
        }
    }

    fn sift_down(&mut self) {
        let n = self.items.len();
        let mut i = 0;
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut m = i;
            if l < n && worse(self.items[l], self.items[m]) {
                m = l;
            }
            if r < n && worse(self.items[r], self.items[m]) {
                m = r;
            }
            if m == i {
                break;
            }
            self.items.swap(i, m);
            i = m;
        }
    }
}

impl KnnBank {
    /// [`KnnBank::predict`] as it was before one GEMM against the whole bank: query blocks of `cfg.block` rows
    /// (0: from Q and the pool size, 8..=128) in parallel, each streaming the bank in slabs of [`BANK_SLAB`] rows
    /// (one GEMM per slab) into a size-k min-heap per query. Memory `O(block * (slab + k))` per task. Kept to
    /// compare against (benches/data_eval.rs) and as a second implementation in tests.
    pub fn predict_reference(&self, queries: &[f32], cfg: &KnnConfig) -> Result<Vec<u32>> {
        let q = self.query_rows(queries, cfg)?;
        let mut preds = vec![0u32; q];
        if q == 0 {
            return Ok(preds);
        }
        let block = if cfg.block > 0 {
            cfg.block
        } else {
            q.div_ceil(4 * rayon::current_num_threads().max(1)).clamp(8, 128)
        };
        let d = self.d;
        let m = self.len();
        let k = cfg.k.min(m);
        let slab = m.min(BANK_SLAB);
        // Checked once here so the per-block GEMM shapes below cannot fail.
        LinearShape::new(block.min(q), d, slab)?;
        let inv_t = 1.0 / cfg.t as f64;
        preds.par_chunks_mut(block).zip(queries.par_chunks(block * d)).try_for_each(|(pred, qraw)| -> Result<()> {
            let b = pred.len();
            let mut qn = vec![0.0f32; b * d]; // [b, D] normalised queries
            l2_normalise_into(&mut qn, qraw, d);
            let mut sim = vec![0.0f32; b * slab]; // [b, slab]
            let mut heaps: Vec<TopK> = (0..b).map(|_| TopK::new(k)).collect();
            for s0 in (0..m).step_by(slab) {
                let s = slab.min(m - s0);
                let shape = LinearShape::new(b, d, s)?;
                // sim [b, s] = q̂ [b, D] · bank[s0..s0+s] [s, D]ᵀ
                linear_forward(&mut sim[..b * s], &qn, &self.feats[s0 * d..(s0 + s) * d], None, &shape)?;
                for (r, heap) in heaps.iter_mut().enumerate() {
                    for (j, &v) in sim[r * s..(r + 1) * s].iter().enumerate() {
                        heap.push((v, (s0 + j) as u32));
                    }
                }
            }
            let mut scores = vec![0u128; self.num_classes];
            for (p, heap) in pred.iter_mut().zip(heaps.iter_mut()) {
                *p = vote(&heap.items, &self.labels, &mut scores, inv_t);
                heap.clear();
            }
            Ok(())
        })?;
        Ok(preds)
    }
}
