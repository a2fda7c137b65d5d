//! Validation helpers shared by the op families' shape types.

use crate::error::{Error, Result};

/// Largest element count of one tensor: indices (maxpool argmax included) fit an i32 / u32 on every device.
pub(crate) const MAX_ELEMS: usize = i32::MAX as usize;

pub(crate) fn positive(op: &'static str, what: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::shape(op, format!("{what} >= 1"), format!("{what} = 0")));
    }
    Ok(())
}

/// [`positive`] for every `(what, v)`, in order.
pub(crate) fn positives(op: &'static str, dims: &[(&str, usize)]) -> Result<()> {
    dims.iter().try_for_each(|&(what, v)| positive(op, what, v))
}

pub(crate) fn len(op: &'static str, what: &str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(Error::shape(op, format!("{what} of length {expected}"), format!("length {got}")));
    }
    Ok(())
}

/// [`len`] for every `(what, expected, got)`, in order (the first mismatch is the error). `got` is a length, or an
/// `Option` of one for a buffer that may be absent: `None` passes, as in [`opt_len`].
pub(crate) fn lens<G: Copy + Into<Option<usize>>>(op: &'static str, checks: &[(&str, usize, G)]) -> Result<()> {
    checks.iter().try_for_each(|&(what, expected, got)| opt_len(op, what, expected, got.into()))
}

/// `v` small enough for the GPU kernels' u32 index arithmetic (with a factor of two to spare).
pub(crate) fn fits_u32(op: &'static str, what: &str, v: usize) -> Result<()> {
    if v > u32::MAX as usize / 2 {
        return Err(Error::shape(op, format!("{what} <= {}", u32::MAX / 2), format!("{what} = {v}")));
    }
    Ok(())
}

/// The product of `dims`, or an error when it overflows or exceeds [`MAX_ELEMS`].
pub(crate) fn elems(op: &'static str, what: &str, dims: &[usize]) -> Result<usize> {
    let mut p = 1usize;
    for &d in dims {
        p = match p.checked_mul(d) {
            Some(v) if v <= MAX_ELEMS => v,
            _ => return Err(Error::shape(op, format!("{what} of at most {MAX_ELEMS} elements"), format!("dims {dims:?}"))),
        };
    }
    Ok(p)
}

pub(crate) fn opt_len(op: &'static str, what: &str, expected: usize, got: Option<usize>) -> Result<()> {
    match got {
        Some(g) => len(op, what, expected, g),
        None => Ok(()),
    }
}

/// The same error under another op's name.
pub(crate) fn rename(e: Error, op: &'static str) -> Error {
    match e {
        Error::Shape { expected, got, .. } => Error::Shape { op, expected, got },
        other => other,
    }
}

/// Read-only accessors: the fields are private so that every value of a shape type went through its validating
/// constructor (no struct literal or struct-update syntax can build an invalid one outside the crate).
macro_rules! getters {
    ($t:ty { $($(#[$doc:meta])* $f:ident: $ty:ty),* $(,)? }) => {
        impl $t {
            $($(#[$doc])* pub fn $f(&self) -> $ty { self.$f })*
        }
    };
}
pub(crate) use getters;
