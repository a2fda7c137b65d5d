//! Checkpoints: bit-exact round trips with scalars and metadata, prefixes and skips, strict and lenient loads, plain
//! safetensors output, atomic writes, and a clear `Err` naming the file (and tensor) for every kind of bad file.
use moco::checkpoint::{self, Checkpoint, Dtype, LoadOptions, Part, PartMut};
use moco::nn::{Depth, Layout, ResNetConfig, ResNetLayout, Stem};
use moco::Error;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "moco_ck_{tag}_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn small_layout(classes: usize) -> Layout {
    let mut l = Layout::default();
    l.push("conv1.weight", &[4, 3, 3, 3]);
    l.push("bn1.weight", &[4]);
    l.push("bn1.bias", &[4]);
    l.push("fc.weight", &[classes, 4]);
    l.push("fc.bias", &[classes]);
    l
}

fn stats_layout() -> Layout {
    let mut l = Layout::default();
    l.push("bn1.running_mean", &[4]);
    l.push("bn1.running_var", &[4]);
    l
}

/// Values with awkward bit patterns: negative zero, subnormals, infinities, a NaN with payload, extremes.
fn values(n: usize, seed: u32) -> Vec<f32> {
    let special = [
        -0.0f32,
        f32::MIN_POSITIVE / 3.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7fc0_1234),
        f32::MAX,
        f32::MIN,
    ];
    (0..n)
        .map(|i| {
            if i < special.len() && seed == 0 {
                special[i]
            } else {
                ((i as u32).wrapping_mul(2654435761u32) ^ seed) as f32 * 1e-9 - 1.5
            }
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn bad_file_reason(r: moco::Result<impl std::fmt::Debug>, path: &Path) -> String {
    match r {
        Err(Error::BadFile { path: p, reason }) => {
            assert_eq!(p, path.display().to_string(), "error must name the file");
            reason
        }
        other => panic!("expected BadFile for {}, got {other:?}", path.display()),
    }
}

/// The reason of the `BadFile` error (naming the checkpoint's file) that restoring `parts` from `ck` gives.
fn restore_refusal(ck: &Checkpoint, parts: &mut [PartMut], scalars: &[String], opts: &LoadOptions) -> String {
    bad_file_reason(ck.restore(parts, scalars, opts), ck.path())
}

#[test]
fn round_trip_is_bit_exact_with_scalars_and_metadata() {
    let dir = TempDir::new("roundtrip");
    let path = dir.file("ck.safetensors");
    let (pl, bl) = (small_layout(10), stats_layout());
    let (params, stats) = (values(pl.len, 0), values(bl.len, 77));
    let scalars = vec![("bn1.num_batches_tracked".to_string(), 123_456_789_012i64), ("step".to_string(), -5)];
    let md = meta(&[
        ("config", "{\"arch\": \"resnet18\", \"quote\": \"a\\\"b\"}"),
        ("step", "42"),
        ("unicode", "é\n\t\u{1}"),
    ]);
    checkpoint::save(&path, &[Part::new(&pl, &params), Part::new(&bl, &stats)], &scalars, &md).unwrap();

    let ck = checkpoint::load(&path).unwrap();
    assert_eq!(ck.path(), path.as_path());
    assert_eq!(ck.metadata(), &md);
    assert_eq!(ck.meta("step"), Some("42"));
    assert_eq!(ck.meta("nope"), None);
    assert_eq!(checkpoint::read_metadata(&path).unwrap(), md);
    let (mut p2, mut s2) = (vec![9.0f32; pl.len], vec![9.0f32; bl.len]);
    let names = vec!["bn1.num_batches_tracked".to_string(), "step".to_string()];
    let r = ck
        .restore(&mut [PartMut::new(&pl, &mut p2), PartMut::new(&bl, &mut s2)], &names, &LoadOptions::strict())
        .unwrap();
    assert_eq!(bits(&p2), bits(&params));
    assert_eq!(bits(&s2), bits(&stats));
    assert_eq!(r.scalars["bn1.num_batches_tracked"], 123_456_789_012);
    assert_eq!(r.scalars["step"], -5);
    assert_eq!(r.loaded.len(), pl.tensors.len() + bl.tensors.len());
    assert!(r.skipped.is_empty() && r.unexpected.is_empty());
    assert_eq!(ck.i64_scalar("step").unwrap(), -5);
    let (shape, w) = ck.f32_tensor("fc.weight").unwrap();
    assert_eq!(shape, vec![10, 4]);
    assert_eq!(bits(&w), bits(&params[pl.get("fc.weight").unwrap().range()]));

    // no metadata, no scalars; an empty layout; a zero-sized tensor
    let mut z = small_layout(3);
    z.push("empty", &[0, 5]);
    let zp = values(z.len, 3);
    let path2 = dir.file("plain.safetensors");
    checkpoint::save(&path2, &[Part::new(&z, &zp), Part::new(&Layout::default(), &[])], &[], &BTreeMap::new()).unwrap();
    let mut back = vec![0.0; z.len];
    checkpoint::load_into(&path2, &z, &mut back, &LoadOptions::default()).unwrap();
    assert_eq!(bits(&back), bits(&zp));
    assert!(checkpoint::read_metadata(&path2).unwrap().is_empty());
}

#[test]
fn resnet18_with_torchvision_state_dict_names() {
    let dir = TempDir::new("resnet");
    let path = dir.file("r18.safetensors");
    let l = ResNetLayout::new(ResNetConfig {
        depth: Depth::R18,
        stem: Stem::Cifar,
        num_classes: Some(10),
        zero_init_residual: false,
        mlp_hidden: None,
        projector: None,
    })
    .unwrap();
    let (mut p, mut b) = (vec![0.0; l.params.len], vec![0.0; l.buffers.len]);
    l.init(&mut p, &mut b, 7).unwrap();
    let nbt = checkpoint::num_batches_tracked(&l.bn_layers, 391);
    assert_eq!(nbt.len(), 20);
    assert_eq!(nbt[0].0, "bn1.num_batches_tracked");
    checkpoint::save(&path, &[Part::new(&l.params, &p), Part::new(&l.buffers, &b)], &nbt, &meta(&[("epoch", "1")]))
        .unwrap();

    // torchvision's resnet18 state_dict has 62 params + 40 running stats + 20 num_batches_tracked = 122 entries
    let ck = checkpoint::load(&path).unwrap();
    assert_eq!(ck.names().len(), 122);
    let e = ck.entry("layer1.0.bn1.num_batches_tracked").unwrap();
    assert_eq!((e.dtype, e.shape.clone()), (Dtype::I64, vec![]));
    assert_eq!(ck.entry("layer4.1.conv2.weight").unwrap().shape, vec![512, 512, 3, 3]);

    // strict restore of everything; the scalars must be asked for, or they are unexpected
    let (mut p2, mut b2) = (vec![0.0; p.len()], vec![0.0; b.len()]);
    let names: Vec<String> = nbt.iter().map(|(n, _)| n.clone()).collect();
    let r = ck
        .restore(
            &mut [PartMut::new(&l.params, &mut p2), PartMut::new(&l.buffers, &mut b2)],
            &names,
            &LoadOptions::strict(),
        )
        .unwrap();
    assert_eq!(bits(&p2), bits(&p));
    assert_eq!(bits(&b2), bits(&b));
    assert!(r.scalars.values().all(|&v| v == 391));
    let msg = restore_refusal(
        &ck,
        &mut [PartMut::new(&l.params, &mut p2), PartMut::new(&l.buffers, &mut b2)],
        &[],
        &LoadOptions::strict(),
    );
    assert!(
        msg.contains("unexpected 20 tensor(s)") && msg.contains("num_batches_tracked") && msg.contains("and 12 more"),
        "{msg}"
    );

    // a backbone without fc loads with fc skipped; strict without the skip complains about fc.*
    let bb = ResNetLayout::new(ResNetConfig { num_classes: None, ..l.config }).unwrap();
    let mut pb = vec![0.0; bb.params.len];
    let opts = LoadOptions::lenient().skip("fc.");
    let r = ck.restore(&mut [PartMut::new(&bb.params, &mut pb)], &[], &opts).unwrap();
    assert_eq!(&pb[..], &p[..bb.params.len]);
    assert_eq!(r.skipped, vec!["fc.bias".to_string(), "fc.weight".to_string()]);
    assert_eq!(r.unexpected.len(), 40 + 20);
    let msg = restore_refusal(
        &ck,
        &mut [PartMut::new(&bb.params, &mut pb), PartMut::new(&bb.buffers, &mut b2)],
        &names,
        &LoadOptions::strict(),
    );
    assert!(
        msg.contains("unexpected 2 tensor(s)") && msg.contains("`fc.bias`") && msg.contains("`fc.weight`"),
        "{msg}"
    );
}

#[test]
fn skip_by_prefix_keeps_a_head_of_another_shape() {
    let dir = TempDir::new("skip");
    let path = dir.file("ck.safetensors");
    let l10 = small_layout(10);
    let p10 = values(l10.len, 1);
    checkpoint::save(&path, &[Part::new(&l10, &p10)], &[], &BTreeMap::new()).unwrap();

    let l100 = small_layout(100);
    let mut p100 = vec![0.25f32; l100.len];
    // without the skip: both fc tensors have the wrong shape, named with expected and given shapes
    let r = checkpoint::load_into(&path, &l100, &mut p100, &LoadOptions::default());
    let reason = bad_file_reason(r, &path);
    assert!(reason.contains("tensor `fc.weight`: expected shape [100, 4], file has [10, 4]"), "{reason}");
    assert!(reason.contains("tensor `fc.bias`: expected shape [100], file has [10]"), "{reason}");
    assert!(p100.iter().all(|&v| v == 0.25), "a failed restore must leave the buffer unchanged");

    let r = checkpoint::load_into(&path, &l100, &mut p100, &LoadOptions::default().skip("fc.")).unwrap();
    assert_eq!(r.skipped, vec!["fc.weight".to_string(), "fc.bias".to_string()]);
    let fc = l100.get("fc.weight").unwrap().offset;
    assert_eq!(bits(&p100[..fc]), bits(&p10[..fc]));
    assert!(p100[fc..].iter().all(|&v| v == 0.25), "skipped tensors keep their values");
}

#[test]
fn strict_and_lenient_and_prefixes() {
    let dir = TempDir::new("strict");
    let path = dir.file("moco.safetensors");
    let l = small_layout(8);
    let (q, k) = (values(l.len, 1), values(l.len, 2));
    // MoCo: query and key encoders share one layout, told apart by prefix
    checkpoint::save(
        &path,
        &[Part::new(&l, &q).with_prefix("encoder_q."), Part::new(&l, &k).with_prefix("encoder_k.")],
        &[],
        &BTreeMap::new(),
    )
    .unwrap();
    let ck = checkpoint::load(&path).unwrap();
    assert!(ck.names().iter().all(|n| n.starts_with("encoder_q.") || n.starts_with("encoder_k.")));

    let (mut q2, mut k2) = (vec![0.0; l.len], vec![0.0; l.len]);
    ck.restore(
        &mut [PartMut::new(&l, &mut q2).with_prefix("encoder_q."), PartMut::new(&l, &mut k2).with_prefix("encoder_k.")],
        &[],
        &LoadOptions::strict(),
    )
    .unwrap();
    assert_eq!((bits(&q2), bits(&k2)), (bits(&q), bits(&k)));

    // only the query encoder: strict refuses the key encoder's tensors, lenient reports them
    let mut q3 = vec![0.0; l.len];
    let reason =
        restore_refusal(&ck, &mut [PartMut::new(&l, &mut q3).with_prefix("encoder_q.")], &[], &LoadOptions::strict());
    assert!(reason.contains("unexpected 5 tensor(s)") && reason.contains("`encoder_k.conv1.weight`"), "{reason}");
    assert!(q3.iter().all(|&v| v == 0.0));
    let r =
        ck.restore(&mut [PartMut::new(&l, &mut q3).with_prefix("encoder_q.")], &[], &LoadOptions::lenient()).unwrap();
    assert_eq!(r.unexpected.len(), 5);
    assert_eq!(bits(&q3), bits(&q));
    // skipping the other prefix makes a strict load pass
    let r = ck
        .restore(
            &mut [PartMut::new(&l, &mut q3).with_prefix("encoder_q.")],
            &[],
            &LoadOptions::strict().skip("encoder_k."),
        )
        .unwrap();
    assert_eq!(r.skipped.len(), 5);

    // missing tensors are listed, strict or not; a missing scalar too
    let mut big = small_layout(8);
    big.push("layer1.0.conv1.weight", &[4, 4, 3, 3]);
    let mut pb = vec![0.0; big.len];
    let reason = restore_refusal(
        &ck,
        &mut [PartMut::new(&big, &mut pb).with_prefix("encoder_q.")],
        &["encoder_q.bn1.num_batches_tracked".to_string()],
        &LoadOptions::lenient(),
    );
    assert!(
        reason.contains("missing 2 tensor(s)")
            && reason.contains("`encoder_q.layer1.0.conv1.weight`")
            && reason.contains("`encoder_q.bn1.num_batches_tracked`"),
        "{reason}"
    );
}

#[test]
fn output_is_plain_safetensors() {
    let dir = TempDir::new("plain");
    let path = dir.file("ck.safetensors");
    let (pl, bl) = (small_layout(10), stats_layout());
    let (params, stats) = (values(pl.len, 5), values(bl.len, 6));
    checkpoint::save(
        &path,
        &[Part::new(&pl, &params), Part::new(&bl, &stats)],
        &[("bn1.num_batches_tracked".to_string(), 3)],
        &meta(&[("step", "9")]),
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "header padded to 8 bytes");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 8);
    for t in pl.tensors.iter().chain(&bl.tensors) {
        let v = st.tensor(&t.name).unwrap();
        assert_eq!(v.dtype(), safetensors::Dtype::F32, "{}", t.name);
        assert_eq!(v.shape(), &t.shape[..], "{}", t.name);
        assert_eq!(v.data().len(), t.len() * 4);
    }
    let w = st.tensor("fc.weight").unwrap();
    let got: Vec<u32> = w.data().chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(got, bits(&params[pl.get("fc.weight").unwrap().range()]));
    let nbt = st.tensor("bn1.num_batches_tracked").unwrap();
    assert_eq!((nbt.dtype(), nbt.shape()), (safetensors::Dtype::I64, &[][..]));
    assert_eq!(nbt.data(), &3i64.to_le_bytes());
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(md.metadata().as_ref().unwrap().get("step").map(String::as_str), Some("9"));
    // every tensor aligned to its element size within the file
    for (_, info) in md.tensors() {
        let align = if info.dtype == safetensors::Dtype::I64 { 8 } else { 4 };
        assert_eq!((8 + n + info.data_offsets.0) % align, 0);
    }

    // and a file written by the safetensors crate loads here
    let raw: Vec<u8> = params[pl.get("fc.bias").unwrap().range()].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![10], &raw).unwrap();
    let foreign = safetensors::serialize([("fc.bias", view)], None).unwrap();
    let ck = Checkpoint::from_bytes("foreign.safetensors", foreign).unwrap();
    assert_eq!(bits(&ck.f32_tensor("fc.bias").unwrap().1), bits(&params[pl.get("fc.bias").unwrap().range()]));
}

#[test]
fn atomic_save_keeps_the_old_file_on_failure_and_leaves_no_temp() {
    let dir = TempDir::new("atomic");
    let path = dir.file("ck.safetensors");
    let l = small_layout(10);
    let old = values(l.len, 11);
    checkpoint::save(&path, &[Part::new(&l, &old)], &[], &meta(&[("v", "old")])).unwrap();
    let old_bytes = std::fs::read(&path).unwrap();

    // overwrite: the new file replaces the old, and nothing else is left in the directory
    let new = values(l.len, 12);
    checkpoint::save(&path, &[Part::new(&l, &new)], &[], &meta(&[("v", "new")])).unwrap();
    assert_eq!(checkpoint::read_metadata(&path).unwrap()["v"], "new");
    assert_eq!(dir.entries(), vec!["ck.safetensors".to_string()]);
    std::fs::write(&path, &old_bytes).unwrap();

    // failures before writing: buffer of the wrong length, overlapping tensors, out-of-range offset, duplicate
    // names (within a layout, across parts, scalar vs tensor), reserved name
    let mut overlap = small_layout(10);
    overlap.tensors[1].offset = 100; // bn1.weight [100, 104) inside conv1.weight [0, 108)
    let mut outside = small_layout(10);
    outside.tensors[4].offset = outside.len - 2;
    let mut dup = small_layout(10);
    dup.tensors[2].name = "bn1.weight".into();
    let mut reserved = small_layout(10);
    reserved.tensors[0].name = "__metadata__".into();
    let short = &new[..new.len() - 1];
    let nbt = vec![("fc.bias".to_string(), 1i64)];
    let failures: Vec<(&str, moco::Result<()>)> = vec![
        ("short buffer", checkpoint::save(&path, &[Part::new(&l, short)], &[], &BTreeMap::new())),
        ("overlap", checkpoint::save(&path, &[Part::new(&overlap, &new)], &[], &BTreeMap::new())),
        ("outside", checkpoint::save(&path, &[Part::new(&outside, &new)], &[], &BTreeMap::new())),
        ("duplicate", checkpoint::save(&path, &[Part::new(&dup, &new)], &[], &BTreeMap::new())),
        ("reserved", checkpoint::save(&path, &[Part::new(&reserved, &new)], &[], &BTreeMap::new())),
        ("two parts", checkpoint::save(&path, &[Part::new(&l, &new), Part::new(&l, &new)], &[], &BTreeMap::new())),
        ("scalar vs tensor", checkpoint::save(&path, &[Part::new(&l, &new)], &nbt, &BTreeMap::new())),
    ];
    for (what, r) in failures {
        let msg = r.expect_err(what).to_string();
        assert!(!msg.is_empty(), "{what}");
        assert_eq!(std::fs::read(&path).unwrap(), old_bytes, "{what}: the old file must survive");
        assert_eq!(dir.entries(), vec!["ck.safetensors".to_string()], "{what}: no temporary file left");
    }
    assert!(checkpoint::validate_layout(&overlap, overlap.len).unwrap_err().to_string().contains("overlaps"));
    assert!(checkpoint::validate_layout(&l, l.len).is_ok());

    // failure after the data is written: the target is a non-empty directory, so the rename fails
    let target = dir.file("occupied");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let err = checkpoint::save(&target, &[Part::new(&l, &new)], &[], &BTreeMap::new()).unwrap_err();
    assert!(matches!(&err, Error::Io { path, .. } if path.contains("occupied")), "{err:?}");
    assert_eq!(dir.entries(), vec!["ck.safetensors".to_string(), "occupied".to_string()]);
    assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"x");

    // a directory that does not exist
    let err = checkpoint::save(dir.file("no/such/dir/ck.safetensors"), &[Part::new(&l, &new)], &[], &BTreeMap::new())
        .unwrap_err();
    assert!(matches!(&err, Error::Io { path, .. } if path.contains("no/such/dir")), "{err:?}");
}

#[test]
fn concurrent_saves_leave_one_complete_file() {
    let dir = TempDir::new("concurrent");
    let path = dir.file("ck.safetensors");
    let l = small_layout(10);
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let (l, path) = (&l, &path);
            s.spawn(move || {
                let v = values(l.len, 100 + t);
                for _ in 0..5 {
                    checkpoint::save(path, &[Part::new(l, &v)], &[], &meta(&[("writer", &t.to_string())])).unwrap();
                }
            });
        }
    });
    let ck = checkpoint::load(&path).unwrap();
    let t: u32 = ck.meta("writer").unwrap().parse().unwrap();
    assert_eq!(bits(&ck.f32_tensor("conv1.weight").unwrap().1), bits(&values(l.len, 100 + t)[..108]));
    assert_eq!(dir.entries(), vec!["ck.safetensors".to_string()]);
}

#[test]
fn truncated_and_corrupt_files_are_bad_file_errors() {
    let dir = TempDir::new("corrupt");
    let good = dir.file("good.safetensors");
    let l = small_layout(10);
    let p = values(l.len, 21);
    checkpoint::save(
        &good,
        &[Part::new(&l, &p)],
        &[("bn1.num_batches_tracked".to_string(), 1)],
        &meta(&[("step", "1")]),
    )
    .unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let total = bytes.len();

    let mut cases: Vec<(String, Vec<u8>, &str)> = Vec::new();
    for cut in [0, 1, 4, 7] {
        cases.push((format!("cut at {cut}"), bytes[..cut].to_vec(), "too short"));
    }
    for cut in [8, 9, 8 + n / 2, 8 + n - 1] {
        cases.push((format!("cut at {cut} (header)"), bytes[..cut].to_vec(), "truncated"));
    }
    for cut in [8 + n, 8 + n + 1, 8 + n + (total - 8 - n) / 2, total - 1] {
        cases.push((format!("cut at {cut} (data)"), bytes[..cut].to_vec(), "data section"));
    }
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(&[0; 4]);
    cases.push(("trailing bytes".into(), trailing, "data section"));
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("header length u64::MAX".into(), huge, "exceeds"));
    let mut longer = bytes.clone();
    longer[..8].copy_from_slice(&((n + 8) as u64).to_le_bytes());
    cases.push(("header length off by 8".into(), longer, "invalid safetensors header"));
    let mut json = bytes.clone();
    json[8] = b'[';
    cases.push(("not a JSON object".into(), json, "invalid safetensors header"));
    let mut utf8 = bytes.clone();
    utf8[9] = 0xff;
    cases.push(("invalid UTF-8".into(), utf8, "invalid safetensors header"));
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let tamper = |from: &str, to: &str| {
        assert!(header.contains(from), "{from}");
        let h = header.replacen(from, to, 1);
        assert_eq!(h.len(), header.len(), "same-length edit keeps the file consistent but for the edit");
        let mut b = bytes.clone();
        b[8..8 + n].copy_from_slice(h.as_bytes());
        b
    };
    cases.push((
        "shape inconsistent with offsets".into(),
        tamper("\"shape\":[10,4]", "\"shape\":[11,4]"),
        "invalid safetensors header",
    ));
    cases.push((
        "unknown dtype".into(),
        tamper("\"dtype\":\"F32\"", "\"dtype\":\"X32\""),
        "invalid safetensors header",
    ));
    cases.push((
        "offsets out of order".into(),
        tamper("\"data_offsets\":[0,8]", "\"data_offsets\":[8,0]"),
        "invalid safetensors header",
    ));
    cases.push((
        "metadata not strings".into(),
        tamper("{\"step\":\"1\"}", "{\"step\":1  }"),
        "invalid safetensors header",
    ));
    // offsets whose sum would overflow usize: eight tensors of 2^61 - 8 bytes each
    let e = (1usize << 61) - 8;
    let overflow: String = (0..8)
        .map(|i| format!("\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[{e}],\"data_offsets\":[{},{}]}}", i * e, (i + 1) * e))
        .collect::<Vec<_>>()
        .join(",");
    let mut h = format!("{{{overflow}}}");
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(&[0; 16]);
    cases.push(("offsets overflowing usize".into(), b, ""));
    let mut garbage: Vec<u8> = 64u64.to_le_bytes().to_vec();
    garbage.extend((0..200u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    cases.push(("plausible length, garbage header".into(), garbage, "invalid safetensors header"));
    cases.push(("random bytes".into(), (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(), ""));

    for (i, (what, data, needle)) in cases.iter().enumerate() {
        let path = dir.file(&format!("bad_{i}.safetensors"));
        std::fs::write(&path, data).unwrap();
        let reason = bad_file_reason(checkpoint::load(&path), &path);
        assert!(reason.contains(needle), "{what}: {reason}");
        let full = checkpoint::load(&path).unwrap_err().to_string();
        assert!(full.contains(&format!("bad_{i}.safetensors")), "{what}: {full}");
        let mut buf = vec![0.0; l.len];
        assert!(
            matches!(checkpoint::load_into(&path, &l, &mut buf, &LoadOptions::lenient()), Err(Error::BadFile { .. })),
            "{what}"
        );
        assert!(matches!(checkpoint::read_metadata(&path), Err(Error::BadFile { .. })), "{what}");
    }
    // every single-byte cut of the good file fails cleanly, never panics
    for cut in 0..total {
        assert!(Checkpoint::from_bytes("cut.safetensors", bytes[..cut].to_vec()).is_err(), "cut {cut}");
    }
    // every single byte of the header flipped: an error or (e.g. a changed name) a valid file, never a panic
    for i in 0..8 + n {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        let _ = Checkpoint::from_bytes("flip.safetensors", b);
    }
}

#[test]
fn missing_file_and_wrong_tensors_name_file_and_tensor() {
    let dir = TempDir::new("wrong");
    let missing = dir.file("does_not_exist.safetensors");
    match checkpoint::load(&missing) {
        Err(Error::Io { path, source }) => {
            assert_eq!(path, missing.display().to_string());
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    let mut buf = vec![0.0; 8];
    let mut tiny = Layout::default();
    tiny.push("x", &[8]);
    assert!(matches!(checkpoint::load_into(&missing, &tiny, &mut buf, &LoadOptions::default()), Err(Error::Io { .. })));

    // a file with f16 / i32 / f32 tensors written by the safetensors crate
    let path = dir.file("typed.safetensors");
    let f16 = vec![0u8; 2 * 40];
    let i32b = vec![0u8; 4 * 4];
    let f32b: Vec<u8> = (0..4).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let i64b = 7i64.to_le_bytes().to_vec();
    let i64v = 9i64.to_le_bytes().repeat(2);
    let views = [
        ("fc.weight", safetensors::tensor::TensorView::new(Dtype::F16, vec![10, 4], &f16).unwrap()),
        ("bn1.running_mean", safetensors::tensor::TensorView::new(Dtype::I32, vec![4], &i32b).unwrap()),
        ("bn1.weight", safetensors::tensor::TensorView::new(Dtype::F32, vec![4], &f32b).unwrap()),
        ("bn1.num_batches_tracked", safetensors::tensor::TensorView::new(Dtype::I64, vec![], &i64b).unwrap()),
        ("two", safetensors::tensor::TensorView::new(Dtype::I64, vec![2], &i64v).unwrap()),
    ];
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let ck = checkpoint::load(&path).unwrap();

    let cases: Vec<(&str, moco::Result<()>, &str)> = vec![
        ("f16 as f32", ck.f32_tensor("fc.weight").map(|_| ()), "tensor `fc.weight`: expected dtype F32, file has F16"),
        (
            "i32 as f32",
            ck.f32_tensor("bn1.running_mean").map(|_| ()),
            "tensor `bn1.running_mean`: expected dtype F32, file has I32",
        ),
        (
            "f32 as i64",
            ck.i64_scalar("bn1.weight").map(|_| ()),
            "tensor `bn1.weight`: expected dtype I64, file has F32",
        ),
        ("vector as scalar", ck.i64_scalar("two").map(|_| ()), "tensor `two`: expected a scalar"),
        ("missing", ck.f32_tensor("conv1.weight").map(|_| ()), "missing tensor `conv1.weight`"),
        (
            "missing scalar",
            ck.i64_scalar("bn2.num_batches_tracked").map(|_| ()),
            "missing tensor `bn2.num_batches_tracked`",
        ),
    ];
    for (what, r, needle) in cases {
        let reason = bad_file_reason(r, &path);
        assert!(reason.contains(needle), "{what}: {reason}");
    }
    assert_eq!(ck.i64_scalar("bn1.num_batches_tracked").unwrap(), 7);

    // restore collects every problem into one error naming file and tensors
    let mut l = Layout::default();
    l.push("bn1.weight", &[2, 2]);
    l.push("bn1.running_mean", &[4]);
    l.push("fc.weight", &[10, 4]);
    l.push("conv1.weight", &[4, 3, 3, 3]);
    let mut buf = vec![0.5; l.len];
    let reason = restore_refusal(
        &ck,
        &mut [PartMut::new(&l, &mut buf)],
        &["two".to_string(), "bn1.weight2".to_string()],
        &LoadOptions::strict(),
    );
    for needle in [
        "missing 2 tensor(s): `conv1.weight`, `bn1.weight2`",
        "tensor `bn1.weight`: expected shape [2, 2], file has [4]",
        "tensor `bn1.running_mean`: expected dtype F32, file has I32",
        "tensor `fc.weight`: expected dtype F32, file has F16",
        "tensor `two`: expected shape [], file has [2]",
        "unexpected 1 tensor(s) (strict load): `bn1.num_batches_tracked`",
    ] {
        assert!(reason.contains(needle), "{needle} not in: {reason}");
    }
    assert!(buf.iter().all(|&v| v == 0.5));
    let full = Error::BadFile { path: path.display().to_string(), reason }.to_string();
    assert!(full.contains("typed.safetensors"));

    // a layout that does not fit its buffer is a shape error before anything is read
    let mut short = vec![0.0; l.len - 1];
    assert!(matches!(
        ck.restore(&mut [PartMut::new(&l, &mut short)], &[], &LoadOptions::lenient()),
        Err(Error::Shape { .. })
    ));
}
