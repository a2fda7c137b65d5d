//! The sliding-window geometry that the convolution and max pooling share: a window of `k` taps moved by `stride`
//! over one axis of `len` inputs zero-padded by `pad` on both sides.

/// Output positions along the axis: `(len + 2*pad - k) / stride + 1` (floor, as torch). The shapes' constructors
/// guarantee `len + 2*pad >= k` and `stride >= 1`.
pub(crate) fn out_len(len: usize, k: usize, stride: usize, pad: usize) -> usize {
    (len + 2 * pad - k) / stride + 1
}

/// The input position that output `o` reads through tap `t`, `o*stride + t - pad`, or `None` where that falls in
/// the padding (before 0 or at `len` and beyond).
pub(crate) fn tap(o: usize, t: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
    (o * stride + t).checked_sub(pad).filter(|&i| i < len)
}
