//! The device trait itself, on every device: `split` hands out disjoint written views and overlapping read views
//! of one allocation and refuses anything else with an error; reads, writes and index buffers round-trip;
//! out-of-range regions are errors, never panics.
mod common;

use common::*;
use moco::device::{Device, Region};
use moco::Error;

fn split_checks_regions<D: Device>(dev: &mut D) {
    let data: Vec<f32> = (0..512).map(|i| i as f32).collect();
    let mut buf = upload(dev, &data);
    let sevens = upload(dev, &[7.0; 64]);
    // disjoint written regions (256-byte aligned, as the plans lay them out), overlapping reads: fine
    {
        let ([a, b], [c, d]) = D::split(&mut buf, [Region::new(0, 64), Region::new(384, 64)], [Region::new(64, 64), Region::new(64, 128)]).unwrap();
        dev.copy(a, c).unwrap();
        dev.copy(b, D::whole(&sevens)).unwrap();
        let _ = d;
    }
    let got = host(dev, &buf);
    assert_eq!((got[0], got[63], got[384], got[511]), (64.0, 127.0, 7.0, 511.0), "{}", dev.name());
    // a written region overlapping a read, or another write, or outside the allocation: an error, not a panic
    assert!(matches!(D::split(&mut buf, [Region::new(0, 64)], [Region::new(32, 64)]), Err(Error::Shape { .. })), "{}", dev.name());
    assert!(D::split(&mut buf, [Region::new(0, 128), Region::new(64, 64)], []).is_err());
    assert!(D::split(&mut buf, [Region::new(448, 128)], []).is_err());
    assert!(D::view(&buf, Region::new(usize::MAX, 2)).is_err());
    assert!(dev.read(&buf, Region::new(500, 13)).is_err());
    assert!(dev.write(&mut buf, Region::new(0, 4), &[1.0; 3]).is_err());
}

fn index_buffers_round_trip<D: Device>(dev: &mut D) {
    let mut ib = dev.alloc_index(8).unwrap();
    assert_eq!(host_index(dev, &ib), vec![0; 8], "{}: alloc_index is zeroed", dev.name());
    dev.write_index(&mut ib, Region::new(2, 3), &[5, 6, u32::MAX]).unwrap();
    assert_eq!(host_index(dev, &ib), vec![0, 0, 5, 6, u32::MAX, 0, 0, 0], "{}", dev.name());
    assert!(dev.write_index(&mut ib, Region::new(6, 3), &[1, 2, 3]).is_err());
    assert!(dev.write_index(&mut ib, Region::new(0, 2), &[1]).is_err());
    assert!(dev.read_index(&ib, Region::new(7, 2)).is_err());
}

device_test!(device_split_checks_regions, split_checks_regions);

device_test!(device_index_buffers_round_trip, index_buffers_round_trip);

/// The step-capture methods out of order, twice, or where the device cannot capture: errors, never panics, and the
/// device works afterwards. Only a CUDA device from `for_capture` captures (the CPU and wgpu return a clone that
/// cannot).
fn capture_misuse_is_an_error<D: Device>(dev: &mut D) {
    let name = dev.name();
    let stats = dev.alloc_index(4).unwrap();
    let count = || D::index_view(&stats, Region::new(0, 1)).unwrap();
    assert!(!dev.can_capture(), "{name}: a plain device captures nothing");
    assert!(dev.begin_capture(count()).is_err() && dev.end_capture(true).is_err() && dev.end_replay(true).is_err(), "{name}");
    assert!(!dev.begin_replay().unwrap(), "{name}: nothing to replay");
    let mut cap = dev.for_capture().unwrap();
    if cap.can_capture() {
        let stats = cap.alloc_index(4).unwrap();
        let count = || D::index_view(&stats, Region::new(0, 1)).unwrap();
        assert!(cap.end_capture(true).is_err() && cap.end_replay(true).is_err(), "{name}: ending what never began");
        assert!(!cap.begin_replay().unwrap(), "{name}: nothing captured yet");
        cap.begin_capture(count()).unwrap();
        assert!(cap.begin_capture(count()).is_err(), "{name}: a second capture inside the first");
        assert!(cap.begin_replay().is_err(), "{name}: a replay inside a capture");
        cap.end_capture(false).unwrap();
        assert!(!cap.begin_replay().unwrap(), "{name}: a discarded capture replays nothing");
    }
    cap.drop_capture();
    let mut buf = upload(&mut cap, &[1.0, 2.0, 3.0, 4.0]);
    cap.write(&mut buf, Region::new(1, 2), &[5.0, 6.0]).unwrap();
    assert_eq!(host(&cap, &buf), vec![1.0, 5.0, 6.0, 4.0], "{name}: the capture handle after the misuse");
}

device_test!(device_capture_misuse_is_an_error, capture_misuse_is_an_error);

/// `MOCO_CPU_ISA` (CI's forced-dispatch runs): the kernels run on the named instruction set when the CPU has it,
/// and never on one wider than the CPU's.
#[test]
fn cpu_isa_is_the_forced_one_and_never_wider_than_the_cpu() {
    use moco::device::{cpu_isa, detected_cpu_isa};
    assert!(cpu_isa() <= detected_cpu_isa());
    match std::env::var("MOCO_CPU_ISA").as_deref() {
        Ok(v @ ("scalar" | "avx2" | "avx512")) => {
            let forced = [moco::device::CpuIsa::Scalar, moco::device::CpuIsa::Avx2, moco::device::CpuIsa::Avx512].into_iter().find(|i| i.name() == v).unwrap();
            assert_eq!(cpu_isa(), forced.min(detected_cpu_isa()), "MOCO_CPU_ISA={v}");
            eprintln!("MOCO_CPU_ISA={v}: the kernels run on {}", cpu_isa().name());
        }
        _ => assert_eq!(cpu_isa(), detected_cpu_isa()),
    }
}

/// The wgpu recorder (one command encoder for a device and its clones): work recorded by a handle that defers
/// its submissions goes out, in call order, with the next op of an immediate clone or at a read; a host write
/// after recorded work lands after it (staged through the arena, which grows mid-submission when a write is
/// larger than it); and a deferred op submits nothing.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_deferred_work_keeps_call_order_across_clones_writes_and_reads() {
    use moco::device::wgpu::GpuSlice;
    use moco::ops::ema::{Ema, EmaShape};
    let Some(base) = wgpu_device() else { return };
    let mut deferred = base.clone();
    deferred.defer_submissions(true);
    let mut immediate = base.clone();
    assert!(deferred.is_deferred() && !immediate.is_deferred() && deferred.clone().is_deferred());
    let n = 1000;
    let mut k = deferred.upload(&vec![1.0; n]).unwrap();
    let q = deferred.upload(&vec![3.0; n]).unwrap();
    let shape = EmaShape::new(n, 0.5).unwrap();
    let before = base.counters();
    // k = 0.5 k + 0.5 q = 2 everywhere: recorded, not submitted
    deferred.ema_update(GpuSlice::whole(&k), GpuSlice::whole(&q), &shape).unwrap();
    assert_eq!(base.counters().submissions, before.submissions, "a deferred op submits nothing");
    // a host write after it lands after it: k[0..64] = 9
    deferred.write(&mut k, Region::new(0, 64), &[9.0; 64]).unwrap();
    assert_eq!(base.counters().submissions, before.submissions, "a deferred write submits nothing");
    // an immediate clone's op goes after both, and submits all three at once
    immediate.ema_update(GpuSlice::whole(&k), GpuSlice::whole(&q), &shape).unwrap();
    assert_eq!(base.counters().submissions, before.submissions + 1, "one submission for the three");
    let got = immediate.read(&k, Region::new(0, n)).unwrap();
    assert!(got[..64].iter().all(|&v| v == 6.0) && got[64..].iter().all(|&v| v == 2.5), "call order: {:?} .. {:?}", &got[..2], &got[n - 2..]);
    // a write larger than the arena while work is pending: submitted in two, still in order
    let big: Vec<f32> = (0..(1usize << 20)).map(|i| i as f32).collect();
    let mut b = deferred.alloc(big.len()).unwrap();
    deferred.ema_update(GpuSlice::whole(&k), GpuSlice::whole(&q), &shape).unwrap();
    deferred.write(&mut b, Region::new(0, big.len()), &big).unwrap();
    deferred.ema_update(GpuSlice::whole(&k), GpuSlice::whole(&q), &shape).unwrap();
    assert_eq!(deferred.read(&b, Region::new(0, big.len())).unwrap(), big);
    let got = deferred.read(&k, Region::new(0, n)).unwrap();
    assert!(got[..64].iter().all(|&v| v == 0.25 * 6.0 + 0.75 * 3.0) && got[64..].iter().all(|&v| v == 0.25 * 2.5 + 0.75 * 3.0), "{:?}", &got[..2]);
    // reads of any 4-byte aligned region
    assert_eq!(deferred.read(&b, Region::new(7, 3)).unwrap(), vec![7.0, 8.0, 9.0]);
}
