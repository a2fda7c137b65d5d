//! The emulated CUDA driver's own tests (tests/cuda_emu/driver): that it catches what a GPU shows only sometimes,
//! and that it stays complete as cudarc changes. Each check plants one host-side mistake through cudarc, on the
//! probe kernels of `tests/cuda_emu/driver_probe.cu`, and reads the driver's report:
//!
//! - a launch that reads past the end of its buffer, and one that reads a freed buffer: CUDA_ERROR_ILLEGAL_ADDRESS
//!   naming the allocation;
//! - a kernel on one stream reading what another stream writes with no event between them: a race (and with the
//!   event, none); a blocking stream and the legacy stream ordered implicitly;
//! - a copy into page-locked memory read before the stream is synchronised: NaN, the real value after;
//!   page-locked staging memory changed while its copy is queued: an error;
//! - an entry point the emulator lacks: an error naming it; every entry point cudarc can load exists;
//! - stream capture and graph replay; a NOT_READY answer before a query's work is run;
//! - the module's parameter layout, from the cubin and from PTX.
//!
//! These test the emulator itself, so on a machine with a real CUDA driver they skip. They share one device whose
//! errors are sticky, so they run one at a time and reset the emulator around each.
mod common;

use common::cuda_emu::driver::Driver;
use cudarc::driver::{result, sys, CudaContext, CudaModule, DriverError, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};
use std::sync::{Arc, Mutex, MutexGuard};

const PROBE: &str = include_str!("cuda_emu/driver_probe.cu");

/// The emulated driver, reset, with the lock that keeps the tests of this file apart; `None` (skip) on a machine
/// with a real driver.
fn emulator(test: &str) -> Option<(MutexGuard<'static, ()>, &'static Driver, Arc<CudaContext>)> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if !common::cuda_is_emulated() {
        eprintln!("{test}: skipped: these tests check the emulated CUDA driver, and this machine has a real one");
        return None;
    }
    let driver = match common::cuda_driver() {
        Ok(Some(d)) => d,
        Ok(None) => return None,
        Err(e) => {
            assert!(std::env::var("MOCO_REQUIRE_CUDA_COMPILE").as_deref() != Ok("1"), "{test}: the emulated driver cannot be built: {e}");
            eprintln!("{test}: skipped: {e}");
            return None;
        }
    };
    driver.reset();
    let ctx = CudaContext::new(0).expect("the emulated device");
    Some((guard, driver, ctx))
}

fn probe_module(ctx: &Arc<CudaContext>) -> Arc<CudaModule> {
    let ptx = compile_ptx_with_opts(PROBE, CompileOptions { arch: Some("sm_90"), ..Default::default() }).expect("NVRTC compiles the probe kernels");
    ctx.load_module(ptx).expect("the emulated driver loads the probe module")
}

/// One thread per element in blocks of 256 (the probe kernels' `__launch_bounds__`; cudarc's `for_num_elems` uses
/// 1024, which the emulated driver refuses as a GPU would).
fn grid256(n: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn code(e: DriverError) -> sys::CUresult {
    e.0
}

/// Ends a test that planted an error: the log holds `what`, and the device is reset for the next test.
#[track_caller]
fn expect_report(driver: &Driver, what: &[&str]) {
    let log = driver.log();
    for w in what {
        assert!(log.contains(w), "the emulated driver's report should mention {w:?}; it says:\n{log}");
    }
    eprintln!("reported as expected:\n{log}");
    driver.reset();
}

#[test]
fn out_of_bounds_read_is_an_illegal_address_naming_the_allocation() {
    let Some((_g, driver, ctx)) = emulator("out_of_bounds_read") else { return };
    let m = probe_module(&ctx);
    let f = m.load_function("probe_scale").unwrap();
    let s = ctx.default_stream();
    let src = s.clone_htod(&[1.0f32; 100]).unwrap();
    let mut dst = s.alloc_zeros::<f32>(101).unwrap();
    let (n, scale) = (101u32, 2.0f32); // one element more than `src` holds
    unsafe { s.launch_builder(&f).arg(&src).arg(&mut dst).arg(&n).arg(&scale).launch(grid256(n)) }.expect("queued: launches run later");
    let err = s.synchronize().expect_err("the launch reads past src");
    assert_eq!(code(err), sys::CUresult::CUDA_ERROR_ILLEGAL_ADDRESS);
    assert_eq!(code(s.synchronize().unwrap_err()), sys::CUresult::CUDA_ERROR_ILLEGAL_ADDRESS, "errors are sticky, as on a GPU");
    expect_report(driver, &["probe_scale", "reads 4 bytes", "bytes past the end of allocation", "(400 bytes"]);
}

#[test]
fn use_after_free_is_an_illegal_address() {
    let Some((_g, driver, ctx)) = emulator("use_after_free") else { return };
    let m = probe_module(&ctx);
    let f = m.load_function("probe_add_one").unwrap();
    let s = ctx.default_stream();
    let x = s.clone_htod(&[0.0f32; 64]).unwrap();
    let ptr = x.leak(); // the raw pointer, then the buffer freed in stream order
    unsafe { result::free_async(ptr, s.cu_stream()) }.unwrap();
    let n = 64u32;
    let mut args = [&ptr as *const _ as *mut std::ffi::c_void, &n as *const _ as *mut std::ffi::c_void];
    unsafe { result::launch_kernel(f.cu_function(), (1, 1, 1), (64, 1, 1), 0, s.cu_stream(), &mut args) }.unwrap();
    assert_eq!(code(s.synchronize().unwrap_err()), sys::CUresult::CUDA_ERROR_ILLEGAL_ADDRESS);
    expect_report(driver, &["probe_add_one", "freed by cuMemFreeAsync"]);
}

/// `probe_fill`'s parameter block (`ProbeParams` in driver_probe.cu).
#[repr(C)]
#[derive(Clone, Copy)]
struct ProbeParams {
    n: u32,
    value: f32,
    stride: u64,
}
// SAFETY: plain data laid out as the kernel's struct (the driver checks its 16 bytes against the module image)
unsafe impl cudarc::driver::DeviceRepr for ProbeParams {}

/// Two non-blocking streams; stream `a` writes `x`, stream `b` then scales `x` into `y`.
fn two_streams(ctx: &Arc<CudaContext>, with_event: bool) -> Result<Vec<f32>, DriverError> {
    // SAFETY: the test orders the streams itself (or plants the missing order on purpose)
    unsafe { ctx.disable_event_tracking() };
    let m = probe_module(ctx);
    let (fill, scale) = (m.load_function("probe_fill").unwrap(), m.load_function("probe_scale").unwrap());
    let (a, b) = (ctx.new_stream()?, ctx.new_stream()?);
    let n = 256usize;
    let mut x = a.alloc_zeros::<f32>(n)?;
    let mut y = b.alloc_zeros::<f32>(n)?;
    a.synchronize()?;
    b.synchronize()?;
    let p = ProbeParams { n: n as u32, value: 3.0, stride: 1 };
    unsafe { a.launch_builder(&fill).arg(&p).arg(&mut x).launch(LaunchConfig { grid_dim: (2, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 }) }?;
    if with_event {
        b.wait(&a.record_event(None)?)?;
    }
    let (nn, k) = (n as u32, 2.0f32);
    unsafe { b.launch_builder(&scale).arg(&x).arg(&mut y).arg(&nn).arg(&k).launch(grid256(nn)) }?;
    let out = b.clone_dtoh(&y)?;
    a.synchronize()?;
    Ok(out)
}

#[test]
fn a_read_of_another_streams_write_without_an_event_is_a_race() {
    let Some((_g, driver, ctx)) = emulator("race") else { return };
    let err = two_streams(&ctx, false).expect_err("stream b reads x with nothing ordering it after a's write");
    assert_eq!(code(err), sys::CUresult::CUDA_ERROR_ILLEGAL_STATE);
    expect_report(driver, &["race on allocation", "probe_scale", "probe_fill", "bytes [0, 1024)", "with nothing ordering the two"]);
}

#[test]
fn with_an_event_between_them_the_streams_agree() {
    let Some((_g, driver, ctx)) = emulator("event") else { return };
    let y = two_streams(&ctx, true).expect("ordered by the event");
    assert!(y.iter().all(|&v| v == 6.0), "y = 2 * 3 everywhere: {:?}", &y[..4]);
    assert_eq!(driver.log(), "", "nothing to report");
}

#[test]
fn a_blocking_stream_is_ordered_with_the_legacy_stream() {
    let Some((_g, driver, ctx)) = emulator("legacy") else { return };
    unsafe { ctx.disable_event_tracking() };
    let m = probe_module(&ctx);
    let f = m.load_function("probe_add_one").unwrap();
    let legacy = ctx.default_stream();
    let blocking = result::stream::create(result::stream::StreamKind::Default).unwrap();
    let mut x = legacy.clone_htod(&[1.0f32; 32]).unwrap();
    let n = 32u32;
    unsafe { legacy.launch_builder(&f).arg(&mut x).arg(&n).launch(grid256(n)) }.unwrap();
    // the same kernel on the blocking stream: implicitly after the legacy stream's work, no event needed
    let blocking_stream = unsafe { ctx.wrap_borrowed_stream(blocking) };
    unsafe { blocking_stream.launch_builder(&f).arg(&mut x).arg(&n).launch(grid256(n)) }.unwrap();
    let out = legacy.clone_dtoh(&x).unwrap();
    assert!(out.iter().all(|&v| v == 3.0), "{:?}", &out[..4]);
    assert_eq!(driver.log(), "");
    drop(blocking_stream);
    unsafe { result::stream::destroy(blocking) }.unwrap();
}

#[test]
fn page_locked_readback_holds_nothing_until_the_stream_is_synchronised() {
    let Some((_g, driver, ctx)) = emulator("pinned readback") else { return };
    let s = ctx.new_stream().unwrap();
    let dev = s.clone_htod(&[5.0f32; 16]).unwrap();
    let host = unsafe { result::malloc_host(16 * 4, 0) }.unwrap() as *mut f32;
    // SAFETY: `host` holds 16 f32; the copy is queued and the slice read back only as the test says
    let view = unsafe { std::slice::from_raw_parts_mut(host, 16) };
    let (src, _rec) = cudarc::driver::DevicePtr::device_ptr(&dev, &s);
    unsafe { result::memcpy_dtoh_async(view, src, s.cu_stream()) }.unwrap();
    // the planted bug: read before synchronising
    let early = unsafe { std::slice::from_raw_parts(host, 16) }.to_vec();
    assert!(early.iter().all(|v| v.is_nan()), "before the sync the page-locked destination holds NaN, not a value: {early:?}");
    s.synchronize().unwrap();
    let late = unsafe { std::slice::from_raw_parts(host, 16) }.to_vec();
    assert!(late.iter().all(|&v| v == 5.0), "{late:?}");
    unsafe { result::free_host(host as *mut _) }.unwrap();
    assert_eq!(driver.log(), "");
}

#[test]
fn page_locked_staging_changed_while_its_copy_is_queued_is_an_error() {
    let Some((_g, driver, ctx)) = emulator("pinned staging reuse") else { return };
    let s = ctx.new_stream().unwrap();
    let mut dev = s.alloc_zeros::<f32>(16).unwrap();
    let host = unsafe { result::malloc_host(16 * 4, 0) }.unwrap() as *mut f32;
    let staging = unsafe { std::slice::from_raw_parts_mut(host, 16) };
    staging.fill(1.0);
    let (dst, _rec) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut dev, &s);
    unsafe { result::memcpy_htod_async(dst, &staging[..], s.cu_stream()) }.unwrap();
    staging.fill(2.0); // the planted bug: the next step's data, written before the copy has run
    assert_eq!(code(s.synchronize().unwrap_err()), sys::CUresult::CUDA_ERROR_ILLEGAL_STATE);
    expect_report(driver, &["cuMemcpyHtoDAsync", "page-locked source was changed"]);
    unsafe { result::free_host(host as *mut _) }.ok();
}

#[test]
fn an_unimplemented_entry_point_fails_and_names_itself() {
    let Some((_g, driver, _ctx)) = emulator("unimplemented") else { return };
    let mut buf = [0 as std::ffi::c_char; 32];
    let r = unsafe { sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), 32, 0) };
    assert_eq!(r, sys::CUresult::CUDA_ERROR_NOT_SUPPORTED);
    expect_report(driver, &["cuDeviceGetPCIBusId"]);
}

#[test]
fn a_query_answers_not_ready_before_the_work_runs() {
    let Some((_g, driver, ctx)) = emulator("query") else { return };
    let s = ctx.new_stream().unwrap();
    let _x = s.alloc_zeros::<f32>(8).unwrap();
    let ev = s.record_event(None).unwrap();
    assert!(!ev.try_is_complete().unwrap(), "the first query of queued work says not ready");
    assert!(ev.try_is_complete().unwrap(), "and a later one runs it");
    assert_eq!(driver.log(), "");
}

#[test]
fn a_captured_stream_replays_as_a_graph() {
    let Some((_g, driver, ctx)) = emulator("graph") else { return };
    unsafe { ctx.disable_event_tracking() };
    let m = probe_module(&ctx);
    let f = m.load_function("probe_add_one").unwrap();
    let s = ctx.new_stream().unwrap();
    let mut x = s.clone_htod(&[0.0f32; 300]).unwrap();
    s.synchronize().unwrap();
    let n = 300u32;
    s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    for _ in 0..2 {
        unsafe { s.launch_builder(&f).arg(&mut x).arg(&n).launch(grid256(n)) }.unwrap();
    }
    let graph = s.end_capture(sys::CUgraphInstantiate_flags(0)).unwrap().expect("a graph");
    assert_eq!(s.clone_dtoh(&x).unwrap()[0], 0.0, "capturing runs nothing");
    for _ in 0..3 {
        graph.launch().unwrap();
    }
    let out = s.clone_dtoh(&x).unwrap();
    assert!(out.iter().all(|&v| v == 6.0), "3 replays of 2 increments: {:?}", &out[..4]);
    assert_eq!(driver.log(), "");
}

#[test]
fn parameter_layouts_come_from_the_module_image() {
    let Some((_g, driver, ctx)) = emulator("parameter layouts") else { return };
    // the PTX route (probe_module) and the cubin route (the crate's path) run the same struct-parameter kernel
    let ptx = probe_module(&ctx);
    let cubin = {
        use cudarc::nvrtc::result as nv;
        let src = std::ffi::CString::new(PROBE).unwrap();
        let prog = nv::create_program(&src, None).unwrap();
        unsafe { nv::compile_program(prog, &["--gpu-architecture=sm_90".to_string()]) }.unwrap();
        let mut size = 0usize;
        unsafe { cudarc::nvrtc::sys::nvrtcGetCUBINSize(prog, &mut size) }.result().unwrap();
        let mut bin = vec![0u8; size];
        unsafe { cudarc::nvrtc::sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr().cast()) }.result().unwrap();
        unsafe { nv::destroy_program(prog) }.unwrap();
        assert!(bin.starts_with(b"\x7fELF"));
        ctx.load_module(Ptx::from_binary(bin)).unwrap()
    };
    for (route, m) in [("PTX", ptx), ("cubin", cubin)] {
        let f = m.load_function("probe_fill").unwrap();
        assert_eq!(f.max_threads_per_block().unwrap(), 128, "{route}: __launch_bounds__(128)");
        let s = ctx.default_stream();
        let mut x = s.alloc_zeros::<f32>(10).unwrap();
        let p = ProbeParams { n: 5, value: 7.0, stride: 2 };
        unsafe { s.launch_builder(&f).arg(&p).arg(&mut x).launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 }) }.unwrap();
        let out = s.clone_dtoh(&x).unwrap();
        assert_eq!(out, [7.0, 0.0, 7.0, 0.0, 7.0, 0.0, 7.0, 0.0, 7.0, 0.0], "{route}: the 16-byte struct reached the kernel whole");
        // more threads than __launch_bounds__ is refused when launched
        let r = unsafe { s.launch_builder(&f).arg(&p).arg(&mut x).launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) };
        assert!(r.is_err(), "{route}: 256 threads for __launch_bounds__(128)");
    }
    expect_report(driver, &["exceed the kernel's __launch_bounds__(128)"]);
}

/// `driver_api.inc` lists every entry point of the cudarc that cargo resolved, so each one exists in the emulated
/// library (implemented, or a stub that fails with its name) and an upgrade that adds some fails here.
#[test]
fn every_entry_point_cudarc_can_load_exists() {
    // cudarc's source, from the version Cargo.lock pins and cargo's registry (no `cargo metadata`: offline it
    // needs every platform's packages, which a fresh machine's registry does not hold)
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).expect("Cargo.lock");
    let at = lock.find("name = \"cudarc\"\nversion = \"").expect("cudarc in Cargo.lock") + "name = \"cudarc\"\nversion = \"".len();
    let version = &lock[at..at + lock[at..].find('"').unwrap()];
    let cargo_home = std::env::var_os("CARGO_HOME").map(std::path::PathBuf::from).unwrap_or_else(|| std::path::Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    let registries = std::fs::read_dir(cargo_home.join("registry/src")).unwrap_or_else(|e| panic!("{}: {e}", cargo_home.join("registry/src").display()));
    let crate_dir = registries.filter_map(|r| Some(r.ok()?.path().join(format!("cudarc-{version}")))).find(|p| p.is_dir()).unwrap_or_else(|| panic!("cudarc-{version} in {}/registry/src", cargo_home.display()));
    let sys = crate_dir.join("src/driver/sys/mod.rs");
    let text = std::fs::read_to_string(&sys).unwrap_or_else(|e| panic!("{}: {e}", sys.display()));
    let mut cudarc: Vec<&str> = text.split("load::<_F>(\"").skip(1).map(|r| &r[..r.find('"').unwrap()]).collect();
    cudarc.sort();
    cudarc.dedup();
    let listed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cuda_emu/driver/driver_api.inc")).unwrap();
    let mut ours: Vec<&str> = listed.lines().filter_map(|l| l.strip_prefix("X(")?.strip_suffix(')')).collect();
    ours.sort();
    assert_eq!(ours, cudarc, "tests/cuda_emu/driver/driver_api.inc must list exactly the entry points of {}", sys.display());
}

/// tests/cuda_emu/README.md lists exactly the entry points the emulated library implements (its strong symbols;
/// the unimplemented ones are weak stubs).
#[test]
fn the_implemented_entry_points_are_the_documented_ones() {
    let (path, _) = match common::cuda_emu::driver::build_all() {
        Ok(p) => p,
        Err(e) => {
            assert!(std::env::var("MOCO_REQUIRE_CUDA_COMPILE").as_deref() != Ok("1"), "{e}");
            eprintln!("skipped: {e}");
            return;
        }
    };
    let nm = std::process::Command::new("nm").args(["-D", "--defined-only"]).arg(&path).output().expect("nm (binutils)");
    let mut strong: Vec<String> = String::from_utf8_lossy(&nm.stdout).lines().filter_map(|l| {
        let mut it = l.split_whitespace();
        let (_, kind, name) = (it.next()?, it.next()?, it.next()?);
        (kind == "T" && name.starts_with("cu")).then(|| name.to_string())
    }).collect();
    strong.sort();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cuda_emu/README.md")).unwrap();
    let section = readme.split("<!-- implemented:begin -->").nth(1).and_then(|r| r.split("<!-- implemented:end -->").next()).expect("the implemented list in README.md");
    let mut documented: Vec<String> = section.split('`').skip(1).step_by(2).map(|s| s.to_string()).collect();
    documented.sort();
    assert_eq!(documented, strong, "tests/cuda_emu/README.md's implemented list against the library's symbols");
}
