//! How the CPU convolutions split a batch over rayon tasks (im2col and Winograd alike).

/// How the batch is split: `per` images per task, `tasks` tasks, and whether the GEMM itself runs in parallel
/// (the im2col and the Winograd paths split it the same way).
pub(crate) fn batch_split(n: usize) -> (usize, usize, bool) {
    let t = rayon::current_num_threads().max(1);
    if n >= t {
        let per = n.div_ceil(t);
        (per, n.div_ceil(per), false)
    } else {
        (n, 1, t > 1)
    }
}
