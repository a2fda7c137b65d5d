//! Loop nests compiled for the widest x86 vector unit the CPU reports, chosen at run time.
//!
//! The crate is built for the baseline target (SSE2 on x86-64), so its plain loops vectorise 4 lanes wide.
//! [`vectorized`] runs a closure inside a function compiled for AVX2 (and up) when the CPU has it, through
//! `pulp`'s dispatch (the GEMM crate's own), so the same loops vectorise 8 lanes wide there. Rust never
//! contracts `a * b + c` into an FMA and never reorders a float sum, so every variant computes bit-identical
//! results: only the speed depends on the CPU.

/// Runs `f` compiled for the best vector unit present (detected per call: a cached atomic load).
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}
