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
