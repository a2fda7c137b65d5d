//! The public op surface under hostile input, as a framework would meet it: arbitrary sizes (0, 1, odd, past
//! u32), hyperparameters (0, negative, NaN, ±inf, subnormal, huge) and buffer lengths (one short, one long,
//! empty) thrown at every contrastive op of every device (the family traits `Infonce`, `KeyQueue`, `Ema` and
//! `Normalize` on the CPU, wgpu and CUDA, emulated without a GPU, stamped with `on_every_device!`; the CPU's
//! low-level functions on raw slices; wgpu's low-level functions on raw buffers).
//!
//! Each call must return `Err`, or `Ok` with a result equal to the f64 reference; never a panic (proptest fails
//! the case and shrinks it), and never an `Ok` with a non-finite loss from finite inputs. Shapes are only made by
//! their validating constructors: the fields are private, so a struct literal or `..shape` does not compile.
mod common;
use common::*;
use moco::device::{Device, Region};
use moco::ops::ema::{self, Ema};
use moco::ops::infonce::{self, Infonce};
use moco::ops::normalize::{self, Normalize, NormalizeShape};
use moco::ops::queue::{self, KeyQueue, QueueSlice, QueueSliceMut, QueueView, QueueViewMut};
use moco::{EmaShape, InfoNceShape, LogitsShape, QueueDType, QueueShape, SymmetricShape};
use proptest::prelude::*;

/// Sizes a framework could pass: 0, small, odd, and values past what the kernels index with u32.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![24 => 1usize..7, 12 => 7usize..40, 1 => Just(0usize), 1 => Just(1usize << 31), 1 => Just((1usize << 32) + 1), 1 => Just(usize::MAX)]
}

fn temperature() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => 0.02f32..2.0,
        1 => prop::sample::select(vec![0.0f32, -0.0, -0.2, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE, 1e-45, 1e-30, 9.9e-7, 1e-6, 1e-3, 1e6, 1.1e6, 1e30, f32::MAX]),
    ]
}

fn momentum() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => 0.0f64..=1.0,
        2 => prop::sample::select(vec![0.0f64, 1.0, 0.999, 0.9999, -1e-300, 1.0 + f64::EPSILON, -0.5, 1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300]),
    ]
}

/// How far a buffer's length is from what the problem needs: mostly exact, sometimes one off or empty.
#[derive(Clone, Copy, Debug)]
enum Len {
    Exact,
    Short,
    Long,
    Empty,
}

fn len_of() -> impl Strategy<Value = Len> {
    prop_oneof![40 => Just(Len::Exact), 1 => Just(Len::Short), 1 => Just(Len::Long), 1 => Just(Len::Empty)]
}

impl Len {
    fn apply(self, n: usize) -> usize {
        match self {
            Len::Exact => n,
            Len::Short => n.saturating_sub(1),
            Len::Long => n + 1,
            Len::Empty => 0,
        }
    }
    fn exact(self, n: usize) -> bool {
        self.apply(n) == n
    }
}

/// Input values: moderate (compared with the reference) or extreme but finite (only finiteness is asked).
#[derive(Clone, Copy, Debug)]
enum Values {
    Moderate,
    Zero,
    Tiny,
    Huge,
}

fn values() -> impl Strategy<Value = Values> {
    prop_oneof![6 => Just(Values::Moderate), 1 => Just(Values::Zero), 1 => Just(Values::Tiny), 1 => Just(Values::Huge)]
}

fn fill(seed: u64, len: usize, v: Values) -> Vec<f32> {
    let mut x = uniform(&mut rng(seed), len);
    let s = match v {
        Values::Moderate => 1.0,
        Values::Zero => 0.0,
        Values::Tiny => 1e-38,
        Values::Huge => 3e38,
    };
    x.iter_mut().for_each(|e| *e *= s);
    x
}

/// Buffers larger than this are not allocated: the problem is then only checked to be rejected or left alone.
const MAX_ELEMS: usize = 1 << 16;

fn small(n: usize, c: usize, k: usize) -> bool {
    n.max(c).max(k) <= MAX_ELEMS && n.checked_mul(c).is_some_and(|e| e <= MAX_ELEMS) && k.checked_mul(c).is_some_and(|e| e <= MAX_ELEMS) && n.checked_mul(k).is_some_and(|e| e <= MAX_ELEMS)
}

/// What the loss of a valid problem must be: the f64 reference when the inputs and T are in f32's comfortable
/// range, else just finite.
fn check_loss(what: &str, loss: f32, want: Option<f64>) {
    assert!(loss.is_finite(), "{what}: Ok with a non-finite loss {loss} from finite inputs");
    if let Some(w) = want {
        assert!((loss as f64 - w).abs() <= 1e-4 * w.abs().max(1.0), "{what}: loss {loss} vs reference {w}");
    }
}

struct Problem {
    n: usize,
    c: usize,
    k: usize,
    t: f32,
    lens: [Len; 5],
    vals: Values,
    dtype: QueueDType,
    seed: u64,
}

impl Problem {
    /// Compare with the reference only where f32 is well conditioned: moderate values, T not tiny.
    fn comparable(&self) -> bool {
        matches!(self.vals, Values::Moderate) && self.t >= 0.02 && self.t <= 2.0
    }
}

// ---- device buffers of an exact length: a GPU allocation holds at least one element, so an empty buffer is a
// one-element allocation seen through a view of 0 elements ----

/// A device allocation holding `data` (at least one element), and `data.len()`.
fn up<D: Device>(dev: &mut D, data: &[f32]) -> (D::Buf, usize) {
    let buf = if data.is_empty() { upload(dev, &[0.0]) } else { upload(dev, data) };
    (buf, data.len())
}

/// An allocation of `len` NaNs (at least one element), and `len`.
fn out<D: Device>(dev: &mut D, len: usize) -> (D::Buf, usize) {
    (nans(dev, len.max(1)), len)
}

/// The first `b.1` elements of `b.0`, read-only.
fn rv<D: Device>(b: &(D::Buf, usize)) -> D::Ref<'_> {
    D::view(&b.0, Region::new(0, b.1)).unwrap()
}

/// The first `b.1` elements of `b.0`, written.
fn mv<D: Device>(b: &mut (D::Buf, usize)) -> D::Mut<'_> {
    let ([m], []) = D::split(&mut b.0, [Region::new(0, b.1)], []).unwrap();
    m
}

/// The first `b.1` elements of `b.0` on the host.
fn read<D: Device>(dev: &D, b: &(D::Buf, usize)) -> Vec<f32> {
    dev.read(&b.0, Region::new(0, b.1)).unwrap()
}

/// InfoNCE and logits through the family trait on device `b`.
fn infonce_on<D: Infonce>(b: &mut D, p: &Problem) {
    let name = b.name();
    let shape = InfoNceShape::new(p.n, p.c, p.k, p.t);
    let valid = p.n >= 1 && p.c >= 1 && p.k >= p.n && (1e-6..=1e6).contains(&p.t) && small(p.n, p.c, p.k);
    let Ok(shape) = shape else {
        return;
    };
    assert!(p.n >= 1 && p.c >= 1 && p.k >= p.n && (1e-6..=1e6).contains(&p.t), "accepted an invalid problem: N={} C={} K={} T={}", p.n, p.c, p.k, p.t);
    if !valid {
        return; // valid but too large to allocate here
    }
    let (n, c, k) = (p.n, p.c, p.k);
    let q = fill(p.seed, p.lens[0].apply(n * c), p.vals);
    let key = fill(p.seed ^ 1, p.lens[1].apply(n * c), p.vals);
    let queue_host = unit_rows(&mut rng(p.seed ^ 2), k, c);
    let queue = b.queue_from_f32(&queue_host, k, c, p.dtype).unwrap();
    let (mut dq, mut rl) = (out(b, p.lens[2].apply(n * c)), out(b, p.lens[3].apply(n)));
    let exact = p.lens[..4].iter().zip([n * c, n * c, n * c, n]).all(|(l, e)| l.exact(e));
    let (qb, kb) = (up(b, &q), up(b, &key));
    let r = b.infonce_now(mv::<D>(&mut dq), mv::<D>(&mut rl), rv::<D>(&qb), rv::<D>(&kb), &queue, &shape);
    match r {
        Err(e) => assert!(!exact, "{name}: infonce rejected a valid problem N={n} C={c} K={k} T={}: {e}", p.t),
        Ok(s) => {
            assert!(exact, "{name}: infonce accepted wrong buffer lengths {:?}", &p.lens[..4]);
            let stored = b.queue_to_f32(&queue).unwrap();
            let want = p.comparable().then(|| infonce::reference::infonce(&q, &key, &stored, n, c, k, p.t as f64).loss);
            check_loss(&format!("{name} infonce N={n} C={c} K={k} T={}", p.t), s.loss, want);
            assert!(s.top1 <= s.top5 && s.top5 as usize <= n, "{name}: acc counts {} {} of {n}", s.top1, s.top5);
        }
    }
    let lshape = LogitsShape::new(n, c, k).unwrap();
    let (mut lp, mut ln) = (out(b, p.lens[3].apply(n)), out(b, p.lens[4].apply(n * k)));
    let exact_l = p.lens[0].exact(n * c) && p.lens[1].exact(n * c) && p.lens[3].exact(n) && p.lens[4].exact(n * k);
    match b.logits(mv::<D>(&mut lp), mv::<D>(&mut ln), rv::<D>(&qb), rv::<D>(&kb), &queue, &lshape) {
        Err(e) => assert!(!exact_l, "{name}: logits rejected a valid problem: {e}"),
        Ok(()) => {
            assert!(exact_l, "{name}: logits accepted wrong buffer lengths");
            let (lp, ln) = (read(b, &lp), read(b, &ln));
            assert!(lp.iter().chain(&ln).all(|v| v.is_finite()), "{name}: non-finite logits from finite inputs");
            if matches!(p.vals, Values::Moderate) {
                let (wp, wn) = infonce::reference::logits(&q, &key, &b.queue_to_f32(&queue).unwrap(), n, c, k);
                assert_close(&format!("{name} l_pos"), &lp, &wp, 1e-5 + c as f64 * 2e-8, 1e-5);
                assert_close(&format!("{name} l_neg"), &ln, &wn, 1e-5 + c as f64 * 2e-8, 1e-5);
            }
        }
    }
}

/// MoCo v3's loss through the family trait.
fn v3_on<D: Infonce>(b: &mut D, p: &Problem) {
    let name = b.name();
    let Ok(shape) = SymmetricShape::new(p.n, p.c, p.t) else {
        return;
    };
    assert!(p.n >= 1 && p.c >= 1 && (1e-6..=1e6).contains(&p.t), "v3 accepted N={} C={} T={}", p.n, p.c, p.t);
    if !small(p.n, p.c, p.n) {
        return;
    }
    let (n, c) = (p.n, p.c);
    let bufs: Vec<Vec<f32>> = (0..4).map(|i| fill(p.seed ^ (10 + i), p.lens[i as usize].apply(n * c), p.vals)).collect();
    let (mut d1, mut d2) = (out(b, p.lens[4].apply(n * c)), out(b, n * c));
    let exact = p.lens.iter().all(|l| l.exact(n * c));
    let up: Vec<_> = bufs.iter().map(|v| up(b, v)).collect();
    match b.moco_v3_loss_now(mv::<D>(&mut d1), mv::<D>(&mut d2), rv::<D>(&up[0]), rv::<D>(&up[1]), rv::<D>(&up[2]), rv::<D>(&up[3]), &shape) {
        Err(e) => assert!(!exact, "{name}: v3 rejected a valid problem: {e}"),
        Ok(loss) => {
            assert!(exact, "{name}: v3 accepted wrong buffer lengths {:?}", p.lens);
            let want = p.comparable().then(|| infonce::reference::moco_v3_loss(&bufs[0], &bufs[1], &bufs[2], &bufs[3], n, c, p.t as f64).0);
            check_loss(&format!("{name} v3 N={n} C={c} T={}", p.t), loss, want);
        }
    }
}

/// Enqueue and EMA through the family traits.
#[allow(clippy::too_many_arguments)]
fn queue_and_ema_on<D: KeyQueue + Ema>(b: &mut D, n: usize, c: usize, k: usize, ptr: usize, m: f64, lens: [Len; 2], seed: u64) {
    let name = b.name();
    if let Ok(shape) = QueueShape::new(n, c, k, ptr) {
        assert!(n >= 1 && c >= 1 && k >= n && ptr < k, "enqueue accepted N={n} C={c} K={k} ptr={ptr}");
        if small(n, c, k) {
            let mut queue = b.queue_from_f32(&vec![0.0; k * c], k, c, QueueDType::F32).unwrap();
            let keys = fill(seed, lens[0].apply(n * c), Values::Moderate);
            let kb = up(b, &keys);
            match b.enqueue(&mut queue, rv::<D>(&kb), &shape) {
                Err(e) => assert!(!lens[0].exact(n * c), "{name}: enqueue rejected a valid problem: {e}"),
                Ok(next) => {
                    assert!(lens[0].exact(n * c), "{name}: enqueue accepted {} keys for N*C = {}", keys.len(), n * c);
                    assert_eq!(next, (ptr + n) % k);
                    let (want, _) = queue::reference::enqueue(&vec![0.0; k * c], &keys, n, c, k, ptr);
                    assert_close(&format!("{name} enqueue"), &b.queue_to_f32(&queue).unwrap(), &want, 1e-6, 1e-6);
                }
            }
        }
    }
    // EMA: any length, any momentum; len 0 and m outside [0, 1] are errors
    let len = n.min(MAX_ELEMS);
    let (q, k0) = (fill(seed ^ 3, lens[1].apply(len), Values::Moderate), fill(seed ^ 4, len, Values::Moderate));
    let mut kb = up(b, &k0);
    let qb = up(b, &q);
    let ok_problem = len >= 1 && m.is_finite() && (0.0..=1.0).contains(&m) && lens[1].exact(len);
    match b.ema(mv::<D>(&mut kb), rv::<D>(&qb), m) {
        Err(e) => assert!(!ok_problem, "{name}: ema rejected len {len} m {m}: {e}"),
        Ok(()) => {
            assert!(ok_problem, "{name}: ema accepted len {len} (q {}) m {m}", q.len());
            assert_close(&format!("{name} ema m={m}"), &read(b, &kb), &ema::reference::ema(&k0, &q, m), 2e-7, 1e-6);
        }
    }
    // and with the shape made first: an invalid one never reaches the device
    let mut kb = up(b, &k0);
    match EmaShape::new(len, m) {
        Ok(s) => match b.ema_update(mv::<D>(&mut kb), rv::<D>(&qb), &s) {
            Err(e) => assert!(!ok_problem, "{name}: ema_update rejected len {len} m {m}: {e}"),
            Ok(()) => assert!(ok_problem, "{name}: ema_update accepted len {len} (q {}) m {m}", q.len()),
        },
        Err(_) => assert!(len == 0 || !(0.0..=1.0).contains(&m), "EmaShape rejected len {len} m {m}"),
    }
}

/// Row normalisation through the family trait: `x: [N, C]` (lens[0]), `x_hat` (lens[2]), `inv_norm: [N]`
/// (lens[3]); an `Ok` is the f64 reference for moderate values and finite for any finite input.
fn normalize_on<D: Normalize>(b: &mut D, p: &Problem) {
    let name = b.name();
    let (n, c) = (p.n, p.c);
    let Ok(shape) = NormalizeShape::new(n, c) else {
        // rejected: empty, or past what the kernels index (a problem small enough to allocate here is accepted)
        assert!(n == 0 || c == 0 || !small(n, c, 1), "{name}: NormalizeShape rejected rows {n} C {c}");
        return;
    };
    if !small(n, c, 1) {
        return;
    }
    let x = fill(p.seed ^ 5, p.lens[0].apply(n * c), p.vals);
    let xb = up(b, &x);
    let (mut x_hat, mut inv) = (out(b, p.lens[2].apply(n * c)), out(b, p.lens[3].apply(n)));
    let exact = p.lens[0].exact(n * c) && p.lens[2].exact(n * c) && p.lens[3].exact(n);
    match b.normalize_rows(mv::<D>(&mut x_hat), mv::<D>(&mut inv), rv::<D>(&xb), &shape) {
        Err(e) => assert!(!exact, "{name}: normalize_rows rejected rows {n} C {c}: {e}"),
        Ok(()) => {
            assert!(exact, "{name}: normalize_rows accepted wrong lengths {:?}", p.lens);
            let (got, got_inv) = (read(b, &x_hat), read(b, &inv));
            assert!(got.iter().chain(&got_inv).all(|v| v.is_finite()), "{name}: normalize_rows: non-finite output from finite input ({:?})", p.vals);
            if matches!(p.vals, Values::Moderate) {
                // the tolerances of the normalize kernel's own tests (tests/cuda_emulated.rs)
                let (want, norms) = normalize::reference::normalize(&x, c);
                assert_close(&format!("{name} normalize_rows x_hat"), &got, &want, 1e-6, 1e-5);
                assert_close(&format!("{name} normalize_rows inv_norm"), &got_inv, &norms.iter().map(|v| 1.0 / v).collect::<Vec<_>>(), 0.0, 1e-5);
            }
        }
    }
}

/// Every contrastive op of one device, through the family traits.
fn device_ops<D: Infonce + Ema>(b: &mut D, p: &Problem, ptr: usize, m: f64) {
    infonce_on(b, p);
    v3_on(b, p);
    queue_and_ema_on(b, p.n, p.c, p.k, ptr, m, [p.lens[0], p.lens[1]], p.seed);
    normalize_on(b, p);
}

/// The CPU's low-level functions on raw slices.
fn cpu_low_level(p: &Problem, ptr: usize, m: f64) {
    let (n, c, k) = (p.n, p.c, p.k);
    if !small(n, c, k) {
        return;
    }
    let q = fill(p.seed, p.lens[0].apply(n * c), p.vals);
    let key = fill(p.seed ^ 1, p.lens[1].apply(n * c), p.vals);
    let mut queue = if c > 0 { unit_rows(&mut rng(p.seed ^ 2), k, c) } else { Vec::new() };
    queue.resize(p.lens[4].apply(k * c), 0.5);
    let queue = &queue[..];
    let (mut dq, mut rl) = (vec![f32::NAN; p.lens[2].apply(n * c)], vec![f32::NAN; p.lens[3].apply(n)]);
    if let Ok(shape) = InfoNceShape::new(n, c, k, p.t) {
        let exact = p.lens.iter().zip([n * c, n * c, n * c, n, k * c]).all(|(l, e)| l.exact(e));
        // a queue view of the wrong length is refused where it is made (it carries its K and C)
        for (what, r) in [
            ("cpu::infonce", QueueView::new(QueueSlice::F32(queue), k, c).and_then(|view| infonce::cpu::infonce(&mut dq, &mut rl, &q, &key, view, &shape))),
            ("cpu::unfused::infonce", infonce::unfused::infonce(&mut dq, &mut rl, &q, &key, queue, &shape)),
        ] {
            match r {
                Ok(s) => {
                    assert!(exact, "{what} accepted wrong lengths {:?}", p.lens);
                    check_loss(what, s.loss, p.comparable().then(|| infonce::reference::infonce(&q, &key, queue, n, c, k, p.t as f64).loss));
                }
                Err(e) => assert!(!exact, "{what} rejected a valid problem: {e}"),
            }
        }
    }
    if let Ok(shape) = SymmetricShape::new(n, c, p.t) {
        let mut d2 = vec![0.0; n * c];
        let exact = p.lens[0].exact(n * c) && p.lens[1].exact(n * c) && p.lens[2].exact(n * c);
        for (what, r) in [
            ("cpu::moco_v3_loss", infonce::cpu::moco_v3_loss(&mut dq, &mut d2, &q, &key, &key, &q, &shape)),
            ("cpu::unfused::moco_v3_loss", infonce::unfused::moco_v3_loss(&mut dq, &mut d2, &q, &key, &key, &q, &shape)),
        ] {
            match r {
                Ok(l) => {
                    assert!(exact, "{what} accepted wrong lengths");
                    check_loss(what, l, p.comparable().then(|| infonce::reference::moco_v3_loss(&q, &key, &key, &q, n, c, p.t as f64).0));
                }
                Err(e) => assert!(!exact, "{what} rejected a valid problem: {e}"),
            }
        }
    }
    // normalize_rows infers rows from inv_norm
    let mut out = vec![0.0; p.lens[2].apply(n * c)];
    let mut inv = vec![0.0; p.lens[3].apply(n)];
    let r = normalize::cpu::normalize_rows(&mut out, &mut inv, &q, c);
    let exact = c >= 1 && n >= 1 && p.lens[0].exact(n * c) && p.lens[2].exact(n * c) && p.lens[3].exact(n);
    assert_eq!(r.is_ok(), exact, "cpu::normalize_rows with lens {:?}, C={c}: {r:?}", p.lens);
    // the raw enqueue, all three storage types
    if let Ok(shape) = QueueShape::new(n, c, k, ptr) {
        let mut storage = vec![0.0f32; p.lens[4].apply(k * c)];
        let mut half16 = vec![half::f16::ZERO; p.lens[4].apply(k * c)];
        let exact = p.lens[0].exact(n * c) && p.lens[4].exact(k * c);
        let mut bf16 = vec![half::bf16::ZERO; p.lens[4].apply(k * c)];
        for r in [
            QueueViewMut::new(QueueSliceMut::F32(&mut storage), k, c).and_then(|mut v| queue::cpu::enqueue(&mut v, &q, &shape)),
            QueueViewMut::new(QueueSliceMut::F16(&mut half16), k, c).and_then(|mut v| queue::cpu::enqueue(&mut v, &q, &shape)),
            QueueViewMut::new(QueueSliceMut::BF16(&mut bf16), k, c).and_then(|mut v| queue::cpu::enqueue(&mut v, &q, &shape)),
        ] {
            assert_eq!(r.is_ok(), exact, "cpu::enqueue with lens {:?}: {r:?}", p.lens);
        }
    }
    // the raw EMA and its multi-tensor form
    let len = n.min(MAX_ELEMS);
    let mut kk = vec![0.5f32; len];
    let qq = vec![0.25f32; p.lens[1].apply(len)];
    let ok = len >= 1 && p.lens[1].exact(len) && (0.0..=1.0).contains(&m);
    match EmaShape::new(len, m) {
        Ok(s) => assert_eq!(ema::cpu::ema_update(&mut kk, &qq, &s).is_ok(), ok, "cpu::ema_update len {len} m {m}"),
        Err(_) => assert!(len == 0 || !(0.0..=1.0).contains(&m), "EmaShape rejected len {len} m {m}"),
    }
    let mut k2 = vec![0.5f32; 3];
    assert_eq!(ema::cpu::ema_update_multi(&mut [(&mut kk, &qq), (&mut k2, &[0.0; 3])], m).is_ok(), ok, "cpu::ema_update_multi len {len} m {m}");
    // the [C, K] conversions
    let ck = vec![0.0; p.lens[4].apply(k * c)];
    assert_eq!(queue::queue_from_ck(&ck, k, c).is_ok(), c >= 1 && k >= 1 && p.lens[4].exact(k * c));
    assert_eq!(queue::queue_to_ck(&ck, k, c).is_ok(), c >= 1 && k >= 1 && p.lens[4].exact(k * c));
}

/// wgpu's low-level functions on raw `wgpu::Buffer`s of the wrong size must be errors, not validation panics (every
/// view exactly its length: a buffer one element long or short is refused).
#[cfg(feature = "wgpu")]
fn wgpu_low_level(w: &moco::Wgpu, p: &Problem) {
    use moco::device::wgpu::GpuSlice;
    use moco::ops::infonce::{wgpu as low, STATS_WORDS};
    use moco::ops::queue::wgpu::WgpuQueue;
    let (n, c, k) = (p.n, p.c, p.k);
    let Ok(shape) = InfoNceShape::new(n, c, k, p.t) else { return };
    if !small(n, c, k) {
        return;
    }
    let q = w.upload_pod("q", &fill(p.seed, p.lens[0].apply(n * c).max(1), p.vals));
    let key = w.upload_pod("k", &fill(p.seed ^ 1, p.lens[1].apply(n * c).max(1), p.vals));
    let queue = WgpuQueue::from_f32(w, &unit_rows(&mut rng(p.seed ^ 2), k, c), k, c, p.dtype).unwrap();
    let dq = w.storage_buffer("dq", (p.lens[2].apply(n * c).max(1) * 4) as u64);
    let row_loss = w.storage_buffer("rl", (p.lens[3].apply(n).max(1) * 4) as u64);
    let stats = w.storage_buffer("stats", (STATS_WORDS * 4) as u64);
    let exact = p.lens[..4].iter().zip([n * c, n * c, n * c, n]).all(|(l, e)| l.apply(e).max(1) == e);
    let r = low::infonce(w, GpuSlice::whole(&dq), GpuSlice::whole(&row_loss), GpuSlice::whole(&stats), GpuSlice::whole(&q), GpuSlice::whole(&key), &queue, &shape);
    match r.and_then(|()| low::read_stats(w, &stats)) {
        Ok(s) => {
            assert!(exact, "wgpu::infonce accepted buffers of the wrong length {:?}", &p.lens[..4]);
            assert!(s.loss.is_finite(), "wgpu::infonce: non-finite loss");
        }
        Err(e) => assert!(!exact, "wgpu::infonce rejected a valid problem: {e}"),
    }
    let small_k = w.storage_buffer("k small", 4);
    if n * c > 1 {
        let Ok(es) = EmaShape::new(n * c, 0.5) else { unreachable!() };
        assert!(ema::wgpu::ema_update(w, GpuSlice::whole(&small_k), GpuSlice::whole(&q), &es).is_err(), "wgpu::ema_update on a 1-element k for len {}", n * c);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24) * 10, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_input_is_an_error_or_the_reference_answer(
        n in size(), c in size(), k in size(), ptr in size(), t in temperature(), m in momentum(),
        lens in prop::array::uniform5(len_of()), vals in values(),
        dtype in prop::sample::select(vec![QueueDType::F32, QueueDType::F16, QueueDType::BF16]), seed in any::<u64>(),
    ) {
        // keep K >= N likely so that valid problems are common
        let k = if k < n && seed % 2 == 0 { n.saturating_add(k) } else { k };
        let ptr = if seed % 3 == 0 { ptr } else { ptr % k.max(1) };
        let p = Problem { n, c, k, t, lens, vals, dtype, seed };
        on_every_device!("hostile_input_is_an_error_or_the_reference_answer", device_ops, &p, ptr, m);
        cpu_low_level(&p, ptr, m);
        #[cfg(feature = "wgpu")]
        if let Some(w) = wgpu_device() {
            wgpu_low_level(&w, &p);
        }
    }
}

/// The bypasses of the old public fields no longer compile; what is left is to check that the constructors and
/// getters agree.
#[test]
fn shapes_are_valid_by_construction() {
    let s = InfoNceShape::new(4, 8, 16, 0.2).unwrap();
    assert_eq!((s.n(), s.c(), s.k(), s.temperature()), (4, 8, 16, 0.2));
    let e = EmaShape::new(10, 0.999).unwrap();
    assert_eq!(e.weights(), (0.999f32, (1.0f64 - 0.999) as f32));
    assert_ne!(e.weights().1, 1.0f32 - 0.999f32, "1 - m must be taken in f64, not from the rounded m");
    // `InfoNceShape { n: 0, ..s }` and `InfoNceShape { n: 0, c: 8, k: 16, temperature: 0.2 }` are compile errors
    // now (private fields); tests/ui would need trybuild, so the doc test on `shape` shows it instead.
}

/// A view of 0 elements where an op needs one (N = C = K = 1) is refused on every device, by every op of the
/// families. wgpu binds at least 4 bytes for an empty view (`GpuSlice::size`), and its launchers must count the
/// view's elements (`GpuSlice::len`), not the bound bytes.
fn empty_views_are_refused<D: Infonce + Ema>(b: &mut D) -> Vec<String> {
    let name = b.name();
    let mut accepted = Vec::new();
    let one = up(b, &[0.5]);
    let empty = up(b, &[]);
    let queue = b.queue_from_f32(&[1.0], 1, 1, QueueDType::F32).unwrap();
    let shape = InfoNceShape::new(1, 1, 1, 0.2).unwrap();
    let mut note = |what: &str, r: bool| {
        if r {
            accepted.push(format!("{name}: {what}"));
        }
    };
    for which in 0..4 {
        let (mut dq, mut rl) = (out(b, if which == 0 { 0 } else { 1 }), out(b, if which == 1 { 0 } else { 1 }));
        let (q, k) = (if which == 2 { &empty } else { &one }, if which == 3 { &empty } else { &one });
        let r = b.infonce_now(mv::<D>(&mut dq), mv::<D>(&mut rl), rv::<D>(q), rv::<D>(k), &queue, &shape);
        note(&format!("infonce with an empty {}", ["dq", "row_loss", "q", "k"][which]), r.is_ok());
        let (mut lp, mut ln) = (out(b, if which == 0 { 0 } else { 1 }), out(b, if which == 1 { 0 } else { 1 }));
        let r = b.logits(mv::<D>(&mut lp), mv::<D>(&mut ln), rv::<D>(q), rv::<D>(k), &queue, &shape.logits());
        note(&format!("logits with an empty {}", ["l_pos", "l_neg", "q", "k"][which]), r.is_ok());
    }
    let s3 = SymmetricShape::new(1, 1, 0.2).unwrap();
    let (mut d1, mut d2) = (out(b, 0), out(b, 1));
    note("moco_v3_loss with an empty dq1", b.moco_v3_loss_now(mv::<D>(&mut d1), mv::<D>(&mut d2), rv::<D>(&one), rv::<D>(&one), rv::<D>(&one), rv::<D>(&one), &s3).is_ok());
    let (mut d1, mut d2) = (out(b, 1), out(b, 1));
    note("moco_v3_loss with an empty k2", b.moco_v3_loss_now(mv::<D>(&mut d1), mv::<D>(&mut d2), rv::<D>(&one), rv::<D>(&one), rv::<D>(&one), rv::<D>(&empty), &s3).is_ok());
    let mut qu = b.queue_from_f32(&[1.0], 1, 1, QueueDType::F32).unwrap();
    note("enqueue of empty keys", b.enqueue(&mut qu, rv::<D>(&empty), &QueueShape::new(1, 1, 1, 0).unwrap()).is_ok());
    let es = EmaShape::new(1, 0.5).unwrap();
    let mut k = up(b, &[0.5]);
    note("ema_update with an empty q", b.ema_update(mv::<D>(&mut k), rv::<D>(&empty), &es).is_ok());
    let mut k0 = out(b, 0);
    note("ema_update with an empty k", b.ema_update(mv::<D>(&mut k0), rv::<D>(&one), &es).is_ok());
    let ns = NormalizeShape::new(1, 1).unwrap();
    let (mut xh, mut inv) = (out(b, 1), out(b, 1));
    note("normalize_rows with an empty x", b.normalize_rows(mv::<D>(&mut xh), mv::<D>(&mut inv), rv::<D>(&empty), &ns).is_ok());
    let (mut xh, mut inv) = (out(b, 1), out(b, 0));
    note("normalize_rows with an empty inv_norm", b.normalize_rows(mv::<D>(&mut xh), mv::<D>(&mut inv), rv::<D>(&one), &ns).is_ok());
    accepted
}

#[test]
fn empty_views_are_refused_on_every_device() {
    let mut accepted = Vec::new();
    on_every_device!("empty_views_are_refused_on_every_device", |b| accepted.extend(empty_views_are_refused(b)));
    assert!(accepted.is_empty(), "empty views accepted where one element is needed:\n{}", accepted.join("\n"));
}
