//! A counter-based random number generator: every stream is a pure function of a key built from
//! `(seed, epoch, index, view)` and a position counter, so a draw never depends on which thread ran first
//! or on how many threads there are. This is what makes an augmented view, and hence a resumed training
//! run, bit-identical.

/// SplitMix64's finaliser: a bijective 64-bit mixer with good avalanche.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A counter-based generator: output `n` is `mix(key + n * golden)`, with the key derived from four integers.
///
/// ```
/// use moco::data::CounterRng;
/// let mut a = CounterRng::new(7, 0, 42, 1);
/// let mut b = CounterRng::new(7, 0, 42, 1);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert_ne!(CounterRng::new(7, 0, 42, 0).next_u64(), CounterRng::new(7, 0, 42, 1).next_u64());
/// ```
#[derive(Clone, Debug)]
pub struct CounterRng {
    key: u64,
    counter: u64,
}

impl CounterRng {
    /// The stream of draws for one `(seed, epoch, index, view)`; `index` is the sample's index in its dataset,
    /// `view` tells the two views of a pair (0 = query, 1 = key) and any other stream apart.
    pub fn new(seed: u64, epoch: u64, index: u64, view: u64) -> Self {
        let mut k = mix64(seed ^ 0x6d6f_636f_6461_7461); // "mocodata"
        k = mix64(k ^ mix64(epoch.wrapping_add(GOLDEN)));
        k = mix64(k ^ mix64(index.wrapping_add(2u64.wrapping_mul(GOLDEN))));
        k = mix64(k ^ mix64(view.wrapping_add(3u64.wrapping_mul(GOLDEN))));
        CounterRng { key: k, counter: 0 }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let out = mix64(self.key.wrapping_add(self.counter.wrapping_mul(GOLDEN)));
        self.counter = self.counter.wrapping_add(1);
        out
    }

    /// A uniform double in `[0, 1)` (53 random bits).
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform double in `[lo, hi)`; `lo` when the range is empty.
    #[inline]
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// A uniform integer in `[0, n)` without modulo bias (Lemire's method); 0 when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// `true` with probability `p` (always false for `p <= 0`, always true for `p >= 1`).
    #[inline]
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// A standard normal draw (Box-Muller, one value per call).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fisher-Yates shuffle of `items` in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}
