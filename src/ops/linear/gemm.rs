//! Row-major f32 GEMM on the `gemm` crate (runtime-dispatched AVX2/AVX-512 micro-kernels), single-threaded:
//! the callers parallelise over their own tiles with rayon.

/// `dst[m, n] = (accumulate ? dst : 0) + alpha * a[m, k] · b[n, k]ᵀ`, all row-major.
/// `a_rs`, `b_rs`, `dst_rs` are row strides in elements. [`gemm_strided`] with `b` read transposed.
#[allow(clippy::too_many_arguments)]
pub fn gemm_nt(dst: &mut [f32], dst_rs: usize, a: &[f32], a_rs: usize, b: &[f32], b_rs: usize, m: usize, n: usize, k: usize, alpha: f32, accumulate: bool) {
    gemm_strided(dst, dst_rs, 1, a, a_rs, 1, b, 1, b_rs, m, n, k, alpha, accumulate, false);
}

/// `dst[m, n] = (accumulate ? dst : 0) + alpha * a[m, k] · b[k, n]`, all row-major ([`gemm_strided`] with unit
/// column strides).
#[allow(clippy::too_many_arguments)]
pub fn gemm_nn(dst: &mut [f32], dst_rs: usize, a: &[f32], a_rs: usize, b: &[f32], b_rs: usize, m: usize, n: usize, k: usize, alpha: f32, accumulate: bool) {
    gemm_strided(dst, dst_rs, 1, a, a_rs, 1, b, b_rs, 1, m, n, k, alpha, accumulate, false);
}

/// `dst[m, n] += aᵀ · b` with `a: [k, m]` and `b: [k, n]` row-major (a read transposed; [`gemm_strided`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm_tn(dst: &mut [f32], dst_rs: usize, a: &[f32], a_rs: usize, b: &[f32], b_rs: usize, m: usize, n: usize, k: usize) {
    gemm_strided(dst, dst_rs, 1, a, 1, a_rs, b, b_rs, 1, m, n, k, 1.0, true, false);
}

/// General strided GEMM: `dst[i, j] = (accumulate ? dst[i, j] : 0) + alpha * Σ_p a[i, p] · b[p, j]` for
/// `i < m, j < n, p < k`, where element `(i, p)` of `a` sits at `a[i * a_rs + p * a_cs]`, `(p, j)` of `b` at
/// `b[p * b_rs + j * b_cs]` and `(i, j)` of `dst` at `dst[i * dst_rs + j * dst_cs]`. Transposes are strides.
/// `parallel` lets the `gemm` crate split the product over the rayon pool (for callers that do not parallelise
/// over their own tiles).
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    dst: &mut [f32], dst_rs: usize, dst_cs: usize,
    a: &[f32], a_rs: usize, a_cs: usize,
    b: &[f32], b_rs: usize, b_cs: usize,
    m: usize, n: usize, k: usize, alpha: f32, accumulate: bool, parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() > (m - 1) * dst_rs + (n - 1) * dst_cs);
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs && b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    let par = if parallel && rayon::current_num_threads() > 1 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above keep every index the kernel touches inside the three slices; `dst` is borrowed
    // mutably, so it does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m, n, k,
            dst.as_mut_ptr(), dst_cs as isize, dst_rs as isize, accumulate,
            a.as_ptr(), a_cs as isize, a_rs as isize,
            b.as_ptr(), b_cs as isize, b_rs as isize,
            1.0, alpha, false, false, false, par,
        );
    }
}
