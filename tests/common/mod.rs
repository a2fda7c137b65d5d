//! Shared test helpers: random data, the devices under test (`on_every_device!` stamps a test on the CPU, wgpu and
//! CUDA), and approximate comparisons that name the index and both values.
#![allow(dead_code, unused_macros, unused_imports)]

use moco::device::{Device, DeviceKind, Region};
use moco::CpuDevice;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Uniform values in [-1, 1).
pub fn uniform(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `rows` random unit rows of length `c` (what a MoCo queue holds).
pub fn unit_rows(rng: &mut StdRng, rows: usize, c: usize) -> Vec<f32> {
    let mut v = uniform(rng, rows * c);
    for r in v.chunks_mut(c) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|x| *x /= n);
    }
    v
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Proptest case count: `MOCO_PROPTEST_CASES` or the given default (kept small so CI stays fast).
pub fn cases(default: u32) -> u32 {
    std::env::var("MOCO_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Without the `wgpu` feature there is no wgpu device.
#[cfg(not(feature = "wgpu"))]
pub fn wgpu_device() -> Option<CpuDevice> {
    eprintln!("skipping wgpu: built without the `wgpu` feature");
    None
}

/// The wgpu device on any adapter, lavapipe included (one per test process, cloned). With `MOCO_REQUIRE_WGPU=1` a
/// missing adapter fails the test instead of skipping it.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Option<moco::Wgpu> {
    use std::sync::OnceLock;
    static CTX: OnceLock<Option<moco::Wgpu>> = OnceLock::new();
    CTX.get_or_init(|| match moco::Wgpu::new(moco::Adapter::Any) {
        Ok(w) => {
            eprintln!("wgpu adapter: {}", w.adapter_name());
            Some(w)
        }
        Err(e) => {
            if std::env::var("MOCO_REQUIRE_WGPU").as_deref() == Ok("1") {
                panic!("MOCO_REQUIRE_WGPU=1 but no wgpu adapter: {e}");
            }
            eprintln!("skipping wgpu: {e}");
            None
        }
    })
    .clone()
}

/// `MOCO_TEST_DEVICES=cpu`: the device tests run on the CPU only (CI's forced-dispatch runs, `MOCO_CPU_ISA`, which
/// only change the CPU's kernels). Says so on stderr.
pub fn cpu_only(test: &str) -> bool {
    let only = std::env::var("MOCO_TEST_DEVICES").as_deref() == Ok("cpu");
    if only {
        eprintln!("{test}: wgpu and CUDA skipped: MOCO_TEST_DEVICES=cpu");
    }
    only
}

/// Runs `f(&mut device, args...)` on the CPU device, on wgpu when there is an adapter, and on CUDA when there is a
/// device (the real one on a GPU machine, the emulated driver's elsewhere); an absent device prints why it is
/// skipped, and fails where CI requires it (`MOCO_REQUIRE_WGPU`, `MOCO_REQUIRE_CUDA_COMPILE`,
/// `MOCO_REQUIRE_CUDA_DEVICE`). `MOCO_TEST_DEVICES=cpu` runs the CPU alone ([`cpu_only`]). `f` is generic over the
/// device: the test is written once.
macro_rules! on_every_device {
    ($test:expr, $f:expr $(, $arg:expr)* $(,)?) => {{
        $f(&mut moco::CpuDevice::new() $(, $arg)*);
        if $crate::common::cpu_only($test) {
        } else {
            if let Some(w) = $crate::common::wgpu_device() {
                $f(&mut w.clone() $(, $arg)*);
            }
            #[cfg(feature = "cuda")]
            if let Some(c) = $crate::common::cuda_device($test) {
                $f(&mut c.clone() $(, $arg)*);
            }
            #[cfg(not(feature = "cuda"))]
            eprintln!("{}: CUDA skipped: built without the `cuda` feature", $test);
        }
    }};
}
pub(crate) use on_every_device;

/// `#[test] fn $name()` running `$f(device, args...)` on every device ([`on_every_device!`]), as candle's
/// `test_device!` stamps a test per device; the test's name is typed once. Doc comments go first, inside the call.
macro_rules! device_test {
    ($(#[$meta:meta])* $name:ident, $f:expr $(, $arg:expr)* $(,)?) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::common::on_every_device!(stringify!($name), $f $(, $arg)*);
        }
    };
}
#[allow(unused_imports)]
pub(crate) use device_test;

/// Whether `dev` is the CPU (whose results the tests may require bit for bit).
pub fn is_cpu<D: Device>(dev: &D) -> bool {
    dev.kind() == DeviceKind::Cpu
}

/// A device allocation holding `data`.
pub fn upload<D: Device>(dev: &mut D, data: &[f32]) -> D::Buf {
    dev.upload(data).unwrap()
}

/// A device allocation of `len` NaNs (outputs are poisoned before a kernel runs, so an unwritten element shows).
pub fn nans<D: Device>(dev: &mut D, len: usize) -> D::Buf {
    dev.alloc_nan(len).unwrap()
}

/// The whole allocation on the host.
pub fn host<D: Device>(dev: &D, buf: &D::Buf) -> Vec<f32> {
    dev.read(buf, Region::new(0, D::buf_len(buf))).unwrap()
}

/// The whole u32 allocation on the host.
pub fn host_index<D: Device>(dev: &D, buf: &D::IndexBuf) -> Vec<u32> {
    dev.read_index(buf, Region::new(0, D::index_len(buf))).unwrap()
}

/// Bit patterns (for bit-identical comparisons).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Asserts `|got - want| <= atol + rtol * |want|` element-wise, naming the first bad index.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(g.is_finite() && err <= atol + rtol * w.abs(), "{what}[{i}]: got {g}, want {w} (|err| {err:.3e} > atol {atol:.1e} + rtol {rtol:.1e} * |want|)");
    }
}

/// `|v|` in f64: run through a reference, the sum of |a·b| that a [`moco::MatmulPrecision`] bound scales.
pub fn abs64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| x.abs() as f64).collect()
}

/// `|got − want| <= bound · abs + 2^-22 |want|` element-wise: a [`moco::MatmulPrecision`]'s bound on a sum of
/// products (`abs` is the same sum of |a·b|), plus one f32 rounding of an accumulation into a non-zero start.
#[track_caller]
pub fn assert_within_bound(what: &str, got: &[f32], want: &[f64], abs: &[f64], bound: f64) {
    assert_eq!((got.len(), abs.len()), (want.len(), want.len()), "{what}: lengths");
    for (i, ((&g, &w), &a)) in got.iter().zip(want).zip(abs).enumerate() {
        let (err, limit) = ((g as f64 - w).abs(), bound * a + 2f64.powi(-22) * w.abs());
        assert!(err <= limit, "{what}[{i}]: got {g}, want {w}: error {err:.3e} > bound {limit:.3e} ({bound:.3e} x sum |a b| {a:.3e})");
    }
}

/// Largest absolute value (for scale-relative tolerances).
pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |a, b| a.max(b.abs()))
}

/// The front doors run as processes (tests/health_train.rs, tests/repeatable.rs).
#[cfg(feature = "train")]
pub mod front_door;
/// Helpers of the training tests.
#[cfg(feature = "train")]
pub mod training;

/// The CUDA driver and kernels of tests/cuda_emu (the emulated driver lives in `cuda_emu::driver`).
#[cfg(feature = "cuda")]
#[path = "../cuda_emu/mod.rs"]
pub mod cuda_emu;

/// The emulated CUDA driver when this process runs CUDA on it (no real libcuda, or `MOCO_CUDA_EMU=1`), installed on
/// first use; `Ok(None)` on a machine with a real driver. Every CUDA test reaches the device through
/// [`cuda_device`], so the same tests run on the emulated driver in CI and on a GPU's driver elsewhere.
#[cfg(feature = "cuda")]
pub fn cuda_driver() -> Result<Option<&'static cuda_emu::driver::Driver>, String> {
    if !cuda_emu::driver::use_emulator() {
        return Ok(None);
    }
    cuda_emu::driver::install().map(Some)
}

/// The CUDA device for `test`, or `None` (with the reason printed) when there is none: on a GPU machine the real
/// device, elsewhere the emulated driver's. With `MOCO_REQUIRE_CUDA_DEVICE=1` (the device check) a missing device
/// fails the test instead, and so does a missing emulated driver or NVRTC with `MOCO_REQUIRE_CUDA_COMPILE=1` (CI).
#[cfg(feature = "cuda")]
pub fn cuda_device(test: &str) -> Option<moco::Cuda> {
    let flag = |v: &str| std::env::var(v).map(|v| v == "1").unwrap_or(false);
    let emulated = match cuda_driver() {
        Ok(d) => d.is_some(),
        Err(e) => {
            assert!(!flag("MOCO_REQUIRE_CUDA_DEVICE") && !flag("MOCO_REQUIRE_CUDA_COMPILE"), "{test}: the emulated CUDA driver cannot be built: {e}");
            eprintln!("{test}: skipped: no CUDA driver and the emulated one cannot be built: {e}");
            return None;
        }
    };
    match moco::Cuda::new(0) {
        Ok(mut c) => {
            eprintln!("{test}: running on {}", c.name());
            // the ops' reused scratch reads as NaN until a kernel writes it, as a new allocation does
            c.set_scratch_poison(true);
            Some(c)
        }
        Err(e) => {
            assert!(!flag("MOCO_REQUIRE_CUDA_DEVICE"), "MOCO_REQUIRE_CUDA_DEVICE=1 but no CUDA device: {e}");
            assert!(!(emulated && flag("MOCO_REQUIRE_CUDA_COMPILE")), "{test}: the emulated CUDA driver is installed but the device does not open: {e}");
            eprintln!("{test}: skipped: {e}");
            None
        }
    }
}

/// Whether CUDA runs on the emulated driver in this process (then a test may shrink what it would run on a GPU).
#[cfg(feature = "cuda")]
pub fn cuda_is_emulated() -> bool {
    cuda_emu::driver::use_emulator()
}

// ---- helpers of the layer tests (finite differences in f64, accumulation checks) ----

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `want + base` element-wise (a backward accumulates into `base`).
pub fn plus(want: &[f64], base: &[f32]) -> Vec<f64> {
    want.iter().zip(base).map(|(w, b)| w + *b as f64).collect()
}

/// Central finite differences of `loss` with respect to every element of `x`, step `h`.
pub fn fd(x: &[f64], h: f64, mut loss: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            x[i] = x0 + h;
            let lp = loss(&x);
            x[i] = x0 - h;
            let lm = loss(&x);
            x[i] = x0;
            (lp - lm) / (2.0 * h)
        })
        .collect()
}

/// f64 comparison: `|got - want| <= atol + rtol*|want|`, naming the first bad index.
#[track_caller]
pub fn assert_close64(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(err <= atol + rtol * w.abs(), "{what}[{i}]: got {g}, want {w} (|err| {err:.3e} > atol {atol:.1e} + rtol {rtol:.1e} * |want|)");
    }
}

pub fn is_shape_err<T>(r: moco::Result<T>) -> bool {
    matches!(r, Err(moco::Error::Shape { .. }))
}

/// Finite-difference step and tolerance: f64 central differences with h = 1e-5 have truncation error
/// O(h²·f''') ~ 1e-10 and rounding error ~ 1e-16·|L|/h ~ 1e-11·|L|; we accept 1e-6 of the gradient's scale.
pub const FD_H: f64 = 1e-5;
pub fn fd_tol(want: &[f64]) -> f64 {
    1e-6 * (1.0 + max_abs(want))
}

/// `n` values `u·scale + shift` from the fixture scripts' name-seeded generator (`moco::nn::layout::name_uniform`,
/// the `fill` of scripts/make_resnet_fixture.py), rounded to f32.
pub fn name_fill(name: &str, n: usize, scale: f64, shift: f64) -> Vec<f32> {
    moco::nn::layout::name_uniform(name, n).iter().map(|u| (u * scale + shift) as f32).collect()
}

/// The ViT fixture's weights (scripts/make_vit_fixture.py's rules) over `base`, a buffer in `layout` whose
/// `pos_embed` and BN running statistics are kept: linear / conv weights U(±1/sqrt(fan_in)), LN / BN weights
/// 1 ± 0.1, every bias ± 0.1, the cls token ± 0.02.
pub fn vit_fixture_fill(layout: &moco::nn::Layout, base: &[f32]) -> Vec<f32> {
    let mut out = base.to_vec();
    for t in &layout.tensors {
        let name = t.name.as_str();
        let v = if name == "pos_embed" || name.contains("running_") {
            continue;
        } else if name == "cls_token" {
            name_fill(name, t.len(), 0.02, 0.0)
        } else if t.shape.len() >= 2 {
            name_fill(name, t.len(), 1.0 / ((t.len() / t.shape[0]) as f64).sqrt(), 0.0)
        } else if name.ends_with(".weight") && !name.starts_with("patch_embed") {
            name_fill(name, t.len(), 0.1, 1.0)
        } else {
            name_fill(name, t.len(), 0.1, 0.0)
        };
        out[t.range()].copy_from_slice(&v);
    }
    out
}

// ---- helpers of the ViT-layer op tests (tests/ops/{eltwise,layernorm,attention,patch}.rs) ----

/// `v` in f64.
pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `v·k + shift` element-wise.
pub fn scaled(v: Vec<f32>, k: f32, shift: f32) -> Vec<f32> {
    v.into_iter().map(|x| x * k + shift).collect()
}

/// `got` against both the CPU f32 kernel's result and the f64 reference, with the same tolerance.
#[track_caller]
pub fn close2(what: &str, got: &[f32], cpu: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_close(&format!("{what} (vs f64)"), got, want, atol, rtol);
    assert_close(&format!("{what} (vs cpu f32)"), got, &to_f64(cpu), atol, rtol);
}

/// Bit-identical to the CPU kernel (NaN never equals, so an unwritten poisoned element fails).
#[track_caller]
pub fn assert_same(what: &str, got: &[f32], cpu: &[f32]) {
    assert_eq!(got.len(), cpu.len(), "{what}: length");
    if let Some(i) = got.iter().zip(cpu).position(|(a, b)| a.to_bits() != b.to_bits()) {
        panic!("{what}[{i}]: device {} vs cpu {}", got[i], cpu[i]);
    }
}

/// Whether `dev` is CUDA on the emulated driver (where a test may keep to the shapes the old CUDA tests ran).
pub fn is_emulated_cuda<D: Device>(dev: &D) -> bool {
    #[cfg(feature = "cuda")]
    {
        dev.kind() == DeviceKind::Cuda && cuda_is_emulated()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = dev;
        false
    }
}

/// A `Vec` of exactly `N` elements as an array.
pub fn arr<T, const N: usize>(v: Vec<T>) -> [T; N] {
    let n = v.len();
    v.try_into().ok().unwrap_or_else(|| panic!("{n} values, not {N}"))
}

/// Calls `call(dev, written views, read views)` on fresh zeroed allocations, one per entry of `lens`, each viewed at
/// exactly that many elements (a view may hold 0); the first `writes` are written views. The views share one
/// lifetime, so an op whose arguments tie written and read views together (the batch-norm backward) fits too.
pub fn with_views<D: Device + 'static, R>(dev: &mut D, lens: &[usize], writes: usize, call: impl for<'a> FnOnce(&mut D, Vec<D::Mut<'a>>, Vec<D::Ref<'a>>) -> R) -> R {
    // one element more than the view: a wgpu binding is never empty, and the longer view must fit too
    let mut bufs: Vec<D::Buf> = lens.iter().map(|&n| dev.alloc(n + 1).unwrap()).collect();
    let (w, r) = bufs.split_at_mut(writes);
    let muts = w
        .iter_mut()
        .zip(lens)
        .map(|(b, &n)| {
            let ([m], []) = D::split(b, [Region::new(0, n)], []).unwrap();
            m
        })
        .collect();
    let refs = r.iter().zip(&lens[writes..]).map(|(b, &n)| D::view(b, Region::new(0, n)).unwrap()).collect();
    call(dev, muts, refs)
}

/// The public-API length check of one op: with every view at its length (`lens`, buffers named `names` in the
/// order of the op's arguments, the first `writes` written) the call succeeds; with any one view one element
/// shorter (when it has one) or longer it is an `Error::Shape` whose message names that buffer, its length and
/// the length given.
#[track_caller]
pub fn rejects_wrong_lengths<D: Device + 'static>(dev: &mut D, op: &str, names: &[&str], lens: &[usize], writes: usize, mut call: impl for<'a> FnMut(&mut D, Vec<D::Mut<'a>>, Vec<D::Ref<'a>>) -> moco::Result<()>) {
    assert_eq!(names.len(), lens.len(), "{op}: one name per buffer");
    let name = dev.name();
    with_views(dev, lens, writes, &mut call).unwrap_or_else(|e| panic!("{name}: {op} with the right lengths {lens:?}: {e}"));
    for (i, &want) in lens.iter().enumerate() {
        for got in [want.checked_sub(1), Some(want + 1)].into_iter().flatten() {
            let mut bad = lens.to_vec();
            bad[i] = got;
            let r = with_views(dev, &bad, writes, &mut call);
            let msg = match &r {
                Err(e @ moco::Error::Shape { .. }) => e.to_string(),
                other => panic!("{name}: {op} with {} of {got} elements instead of {want}: {other:?}, not a shape error", names[i]),
            };
            let (named, given) = (format!("{} of length {want}", names[i]), format!("length {got}"));
            assert!(msg.contains(&named) && msg.contains(&given), "{name}: {op} with {} of {got} elements: the message does not name it ({named:?}, {given:?}): {msg}", names[i]);
        }
    }
}

/// What `call` did when it was not the shape error it should have been: its result or its panic (`None` when it was
/// a shape error).
pub fn not_a_shape_error(call: impl FnOnce() -> moco::Result<()>) -> Option<String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(Err(moco::Error::Shape { .. })) => None,
        Ok(other) => Some(format!("returned {other:?}")),
        Err(p) => Some(format!("panicked: {}", p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default())),
    }
}

/// The calls with a forged shape (a struct literal that skips the validating constructor) that were not shape
/// errors, collected so that one assertion names them all.
#[derive(Default)]
pub struct ForgedShapeFailures(Vec<String>);

impl ForgedShapeFailures {
    /// Records `what` (the op and the shape) when `call` is not a shape error: a result, or a panic.
    pub fn check(&mut self, what: impl std::fmt::Display, call: impl FnOnce() -> moco::Result<()>) {
        if let Some(f) = not_a_shape_error(call) {
            self.0.push(format!("{what}: {f}"));
        }
    }

    /// [`Self::check`] of `call` on fresh views of `lens` elements (through [`with_views`]).
    pub fn check_views<D: Device + 'static>(&mut self, dev: &mut D, what: impl std::fmt::Display, lens: &[usize], writes: usize, call: impl for<'a> FnOnce(&mut D, Vec<D::Mut<'a>>, Vec<D::Ref<'a>>) -> moco::Result<()>) {
        self.check(what, || with_views(dev, lens, writes, call));
    }

    /// Fails naming every recorded call, on the device named `device`.
    #[track_caller]
    pub fn assert_none(self, device: &str) {
        assert!(self.0.is_empty(), "{device}: struct-literal shapes that are not shape errors:\n{}", self.0.join("\n"));
    }
}

/// The reference gradient `grad` of `loss` at `x` matches central finite differences (step [`FD_H`], tolerance
/// [`fd_tol`] of the differences' scale).
#[track_caller]
pub fn assert_matches_fd(what: &str, grad: &[f64], x: &[f64], loss: impl FnMut(&[f64]) -> f64) {
    let want = fd(x, FD_H, loss);
    assert_close64(what, grad, &want, fd_tol(&want), 0.0);
}

/// The InfoNCE inputs on a device: `q` and `k` (`[N, C]`) and the queue (`[K, C]`, stored in a given dtype).
pub struct InfoNceInputs<D: moco::ops::infonce::Infonce> {
    pub q: D::Buf,
    pub k: D::Buf,
    pub queue: D::Queue,
}

impl<D: moco::ops::infonce::Infonce> InfoNceInputs<D> {
    /// `q`, `k` and `queue` (the `[K, C]` of `shape`, converted to `dtype`) on `dev`.
    pub fn upload(dev: &mut D, q: &[f32], k: &[f32], queue: &[f32], shape: &moco::InfoNceShape, dtype: moco::QueueDType) -> Self {
        let queue = dev.queue_from_f32(queue, shape.k(), shape.c(), dtype).unwrap();
        InfoNceInputs { q: upload(dev, q), k: upload(dev, k), queue }
    }

    /// The fused InfoNCE into NaN-poisoned outputs: its stats, and `dq` and the row losses on the host.
    pub fn infonce(&self, dev: &mut D, shape: &moco::InfoNceShape) -> (moco::InfoNceStats, Vec<f32>, Vec<f32>) {
        let (mut dq, mut rl) = (nans(dev, shape.n() * shape.c()), nans(dev, shape.n()));
        let stats = dev.infonce_now(D::whole_mut(&mut dq), D::whole_mut(&mut rl), D::whole(&self.q), D::whole(&self.k), &self.queue, shape).unwrap();
        (stats, host(dev, &dq), host(dev, &rl))
    }
}

/// Checks an enqueue into a `[K, C]` ring at `ptr` of `N` keys: the `N` rows from `ptr` (wrapping) hold `want` (the
/// f64 reference) within `rtol` (the queue's storage type rounds the keys), every other element keeps its bits from
/// `before`.
#[allow(dead_code, clippy::too_many_arguments)]
pub fn assert_enqueued(what: &str, got: &[f32], before: &[f32], want: &[f64], (n, c, k, ptr): (usize, usize, usize, usize), rtol: f64) {
    for row in 0..k {
        let written = (row + k - ptr) % k < n;
        for ch in 0..c {
            let i = row * c + ch;
            if written {
                let err = (got[i] as f64 - want[i]).abs();
                assert!(err <= 1e-6 + rtol * want[i].abs(), "{what}: element {i}: got {}, want {}", got[i], want[i]);
            } else {
                assert_eq!(got[i].to_bits(), before[i].to_bits(), "{what}: untouched element {i} changed");
            }
        }
    }
}
