//! The row gather: every device against the CPU kernel (a copy, so bit for bit), permutations and repeated indices,
//! rows of 1 to 300 values (across the 256-thread group), one row; an output NaN-poisoned first; wrong lengths and
//! an out-of-range index are errors on the CPU, and a zero row (never a read outside x) on the GPUs.
use crate::common::*;
use moco::ops::gather::{Gather, GatherShape};
use proptest::prelude::*;

fn gathers<D: Gather>(dev: &mut D, rows: usize, src_rows: usize, row: usize, picks: &[usize]) {
    let x = uniform(&mut rng((rows * 31 + row) as u64), src_rows * row);
    let idx: Vec<u32> = (0..rows).map(|r| (picks[r % picks.len()].wrapping_add(r * 7) % src_rows) as u32).collect();
    let want: Vec<f32> = idx.iter().flat_map(|&i| x[i as usize * row..(i as usize + 1) * row].to_vec()).collect();
    let (xb, mut out) = (upload(dev, &x), nans(dev, rows * row));
    let mut ib = dev.alloc_index(rows).unwrap();
    dev.write_index(&mut ib, moco::Region::new(0, rows), &idx).unwrap();
    let shape = GatherShape::new(rows, src_rows, row).unwrap();
    dev.gather_rows(D::whole_mut(&mut out), D::index_view(&ib, moco::Region::new(0, rows)).unwrap(), D::whole(&xb), &shape).unwrap();
    assert_eq!(bits(&host(dev, &out)), bits(&want), "{}: rows {rows} of {src_rows}, row {row}", dev.name());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]
    #[test]
    fn gather_copies_the_indexed_rows(rows in 1usize..40, src_rows in 1usize..40, row in prop_oneof![1usize..5, 250usize..300], picks in proptest::collection::vec(any::<usize>(), 1..8)) {
        on_every_device!("gather_copies_the_indexed_rows", gathers, rows, src_rows, row, &picks);
    }
}

fn idx2<D: Gather>(ib: &D::IndexBuf) -> D::IndexRef<'_> {
    D::index_view(ib, moco::Region::new(0, 2)).unwrap()
}

fn refuses<D: Gather>(dev: &mut D) {
    let x = upload(dev, &[1.0; 12]); // [3, 4]
    let shape = GatherShape::new(2, 3, 4).unwrap();
    let mut ib = dev.alloc_index(2).unwrap();
    dev.write_index(&mut ib, moco::Region::new(0, 2), &[2, 0]).unwrap();
    let mut short = nans(dev, 7);
    let err = dev.gather_rows(D::whole_mut(&mut short), idx2::<D>(&ib), D::whole(&x), &shape).unwrap_err().to_string();
    assert!(err.contains("out [rows, row]") && err.contains('8') && err.contains('7'), "{}: {err}", dev.name());
    let mut out = nans(dev, 8);
    let swapped = GatherShape { rows: 2, src_rows: 4, row: 3 };
    let err = dev.gather_rows(D::whole_mut(&mut out), idx2::<D>(&ib), D::whole(&x), &swapped).unwrap_err().to_string();
    assert!(err.contains("out [rows, row]") || err.contains("x [src_rows, row]"), "{}: {err}", dev.name());
    let zero = GatherShape { rows: 0, src_rows: 3, row: 4 };
    assert!(dev.gather_rows(D::whole_mut(&mut out), idx2::<D>(&ib), D::whole(&x), &zero).is_err(), "{}: rows 0", dev.name());
    // an index past the source: an error on the CPU, a zero row on the GPUs (never a read outside x)
    dev.write_index(&mut ib, moco::Region::new(0, 2), &[1, 3]).unwrap();
    match dev.gather_rows(D::whole_mut(&mut out), idx2::<D>(&ib), D::whole(&x), &shape) {
        Err(e) => assert!(is_cpu(dev) && e.to_string().contains("idx[1] = 3"), "{}: {e}", dev.name()),
        Ok(()) => assert_eq!(host(dev, &out), [[1.0; 4], [0.0; 4]].concat(), "{}: out-of-range index", dev.name()),
    }
}

#[test]
fn gather_refuses_wrong_lengths_and_indices() {
    on_every_device!("gather_refuses_wrong_lengths_and_indices", refuses);
    assert!(GatherShape::new(1, 0, 1).is_err() && GatherShape::new(1, 1, 0).is_err());
}
