//! Parameter layouts: every tensor of a model as a name (torchvision's), a shape and an offset into one flat
//! buffer. Parameters live in one buffer (and their gradients in another of the same layout); BatchNorm running
//! statistics in a second buffer.

use crate::error::{Error, Result};

/// One tensor of a flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    /// torchvision name, e.g. `layer1.0.conv1.weight`.
    pub name: String,
    /// Shape, e.g. `[64, 64, 3, 3]`.
    pub shape: Vec<usize>,
    /// Offset of the first element in the flat buffer.
    pub offset: usize,
}

impl ParamInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// True for a tensor with no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The element range in the flat buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Elements between tensor starts in a model layout (256 bytes of f32): the storage-buffer offset alignment a wgpu
/// kernel needs to bind one tensor of the flat buffer, and a whole number of cache lines everywhere else.
pub const TENSOR_ALIGN: usize = 64;

/// An ordered list of tensors in one flat buffer, in registration order, each starting at a multiple of `align`
/// elements (1 packs them back to back). Gaps are zero and stay zero (no gradient reaches them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// The tensors, in registration order (torchvision's `named_parameters` order for models).
    pub tensors: Vec<ParamInfo>,
    /// Length of the flat buffer: the end of the last tensor.
    pub len: usize,
    /// Alignment of tensor offsets in elements (0 or 1: packed).
    pub align: usize,
}

impl Layout {
    /// An empty layout whose tensors start at multiples of `align` elements.
    pub fn aligned(align: usize) -> Self {
        Self { tensors: Vec::new(), len: 0, align }
    }
    /// Elements that belong to tensors (the parameter count; [`Layout::len`] also counts the gaps).
    pub fn num_elements(&self) -> usize {
        self.tensors.iter().map(|t| t.len()).sum()
    }
    /// Appends a tensor and returns its offset.
    pub fn push(&mut self, name: impl Into<String>, shape: &[usize]) -> usize {
        let offset = self.len.next_multiple_of(self.align.max(1));
        let info = ParamInfo { name: name.into(), shape: shape.to_vec(), offset };
        self.len = offset + info.len();
        self.tensors.push(info);
        offset
    }
    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Result<&ParamInfo> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| Error::shape("layout", format!("a tensor named {name}"), "no such tensor"))
    }
}

/// A counter-based generator (splitmix64): reproducible anywhere, so initialisations and fixtures can be
/// regenerated bit for bit (see `scripts/make_resnet_fixture.py`).
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// splitmix64 of `x` (one step, no state).
    pub fn mix(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let v = Self::mix(self.0);
        self.0 = self.0.wrapping_add(1);
        v
    }
    /// Uniform in [0, 1) with 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    /// FNV-1a 64 of a name: the per-tensor seed of [`name_uniform`].
    pub fn name_seed(name: &str) -> u64 {
        name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01B3))
    }
}

/// `n` values in [-1, 1) for tensor `name`: element i is `2 * u(splitmix64(seed + i)) - 1`, in f64, with
/// `seed = FNV-1a(name)`. The fixture scripts compute the same numbers in Python.
pub fn name_uniform(name: &str, n: usize) -> Vec<f64> {
    let seed = SplitMix64::name_seed(name);
    (0..n as u64).map(|i| ((SplitMix64::mix(seed.wrapping_add(i)) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)) * 2.0 - 1.0).collect()
}
