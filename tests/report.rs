//! Metrics files (JSONL / CSV round trip, non-finite numbers, escaping, header order, resume) and the PNG plot.

use moco::report::{plot_training, read_jsonl, register_embedded_font, series, MetricsWriter, PlotOptions, Record, Value};
use moco::Error;
use std::path::PathBuf;

/// A fresh folder under the target directory's tmp (removed first if a previous run left it).
fn tmp_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("moco-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn metrics_round_trip_and_csv_header_order() {
    let dir = tmp_dir("roundtrip");
    let mut w = MetricsWriter::create(&dir, "train").unwrap();
    let vals = [0.1f64, 1e-7, 1.5e20, -3.0, 123456789.0, std::f64::consts::PI, -0.0, 5e-324];
    for (i, &v) in vals.iter().enumerate() {
        let r = Record::new().with("step", i as f64).with("loss", v).with("lr", 0.03 / (i + 1) as f64).with_str("phase", "train");
        w.write(&r).unwrap();
    }
    drop(w);
    let back = read_jsonl(dir.join("train.jsonl")).unwrap();
    assert_eq!(back.len(), vals.len());
    for (i, (r, &v)) in back.iter().zip(&vals).enumerate() {
        assert_eq!(r.get("step"), Some(i as f64));
        assert_eq!(r.get("loss").unwrap().to_bits(), v.to_bits(), "bit-exact round trip of {v:e}");
        assert_eq!(r.get("lr"), Some(0.03 / (i + 1) as f64));
        assert_eq!(r.get_str("phase"), Some("train"));
        assert_eq!(r.keys().collect::<Vec<_>>(), ["step", "loss", "lr", "phase"]);
    }
    let csv = std::fs::read_to_string(dir.join("train.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "step,loss,lr,phase");
    assert_eq!(lines[1], "0,0.1,0.03,train");
    assert_eq!(lines.len(), vals.len() + 1);
    for (line, &v) in lines[1..].iter().zip(&vals) {
        let cell: f64 = line.split(',').nth(1).unwrap().parse().unwrap();
        assert_eq!(cell.to_bits(), v.to_bits());
    }
    assert_eq!(series(&back, "step", "loss").len(), vals.len());
}

#[test]
fn non_finite_numbers_and_escaping() {
    let dir = tmp_dir("nonfinite");
    let mut w = MetricsWriter::create(&dir, "m").unwrap();
    let nasty = "a,b \"quoted\"\nline\\tab\t\u{1}é";
    w.write(&Record::new().with("epoch", 1.0).with("knn_top1", f64::NAN).with("loss", f64::INFINITY).with_str("note", nasty)).unwrap();
    // a later record with a missing key, an extra key and a different order
    w.write(&Record::new().with("extra", 9.0).with("loss", f64::NEG_INFINITY).with("epoch", 2.0)).unwrap();
    assert_eq!(w.columns().unwrap(), ["epoch", "knn_top1", "loss", "note"]);
    drop(w);
    let jsonl = std::fs::read_to_string(dir.join("m.jsonl")).unwrap();
    let first = jsonl.lines().next().unwrap();
    assert!(first.contains("\"knn_top1\":null") && first.contains("\"loss\":null"), "{first}");
    assert!(!first.contains("NaN") && !first.contains("inf"), "{first}");
    assert_eq!(jsonl.lines().count(), 2, "the newline in the string is escaped");
    let back = read_jsonl(dir.join("m.jsonl")).unwrap();
    assert!(back[0].get("knn_top1").unwrap().is_nan());
    assert!(back[0].get("loss").unwrap().is_nan(), "JSON null reads back as NaN");
    assert_eq!(back[0].get_str("note"), Some(nasty));
    assert_eq!(back[1].get("extra"), Some(9.0));
    let csv = std::fs::read_to_string(dir.join("m.csv")).unwrap();
    let expect = "epoch,knn_top1,loss,note\n1,NaN,inf,\"a,b \"\"quoted\"\"\nline\\tab\t\u{1}é\"\n2,,-inf,\n";
    assert_eq!(csv, expect);
}

#[test]
fn reader_accepts_python_json_and_skips_a_torn_last_line() {
    let dir = tmp_dir("reader");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("py.jsonl");
    std::fs::write(&p, "{\"step\": 1, \"loss\": NaN, \"x\": -Infinity, \"ok\": true, \"s\": \"\\u00e9\\ud83d\\ude00\"}\n\n{\"step\": 2, \"lo").unwrap();
    let r = read_jsonl(&p).unwrap();
    assert_eq!(r.len(), 1);
    assert!(r[0].get("loss").unwrap().is_nan());
    assert_eq!(r[0].get("x"), Some(f64::NEG_INFINITY));
    assert_eq!(r[0].get("ok"), Some(1.0));
    assert_eq!(r[0].get_str("s"), Some("é😀"));
    assert_eq!(r[0].value("step"), Some(&Value::Num(1.0)));
    // a bad line in the middle is an error naming the line
    std::fs::write(&p, "{\"step\": 1}\n{\"step\": [1]}\n{\"step\": 3}\n").unwrap();
    match read_jsonl(&p) {
        Err(Error::BadFile { reason, .. }) => assert!(reason.contains("line 2"), "{reason}"),
        other => panic!("expected BadFile, got {other:?}"),
    }
    assert!(matches!(read_jsonl(dir.join("missing.jsonl")), Err(Error::Io { .. })));
    assert!(matches!(MetricsWriter::create(&dir, "a/b"), Err(Error::Shape { .. })));
}

#[test]
fn append_and_resume_keep_the_header() {
    let dir = tmp_dir("resume");
    let mut w = MetricsWriter::create(&dir, "train").unwrap();
    for s in 0..10 {
        w.write(&Record::new().with("step", s as f64).with("loss", 1.0 / (s + 1) as f64)).unwrap();
    }
    drop(w);
    // killed after step 9, checkpoint at step 5: steps 6.. are redone
    let mut w = MetricsWriter::resume(&dir, "train", "step", 5.0).unwrap();
    assert_eq!(w.columns().unwrap(), ["step", "loss"]);
    // a record with the keys in another order still lands in the right columns
    w.write(&Record::new().with("loss", 0.5).with("step", 6.0)).unwrap();
    drop(w);
    let back = read_jsonl(dir.join("train.jsonl")).unwrap();
    assert_eq!(back.iter().map(|r| r.get("step").unwrap()).collect::<Vec<_>>(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let csv = std::fs::read_to_string(dir.join("train.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 8);
    assert_eq!(lines[0], "step,loss");
    assert_eq!(lines[7], "6,0.5");
    let mut w = MetricsWriter::append(&dir, "train").unwrap();
    w.write(&Record::new().with("step", 7.0).with("loss", 0.25)).unwrap();
    drop(w);
    assert_eq!(std::fs::read_to_string(dir.join("train.csv")).unwrap().lines().filter(|l| l.starts_with("step")).count(), 1);
    assert!(!dir.join("train.resume-tmp.jsonl").exists());
}

#[test]
fn plot_writes_a_png_of_the_right_size() {
    register_embedded_font().unwrap();
    register_embedded_font().unwrap(); // idempotent
    let dir = tmp_dir("plot");
    let loss: Vec<(f64, f64)> = (0..500).map(|s| (s as f64, 9.0 * (-(s as f64) / 200.0).exp() + 0.3 * ((s * 7919 % 101) as f64 / 101.0))).collect();
    let knn: Vec<(f64, f64)> = (0..=20).map(|e| (e as f64, 0.1 + 0.7 * (1.0 - (-(e as f64) / 6.0).exp()))).chain([(21.0, f64::NAN)]).collect();
    let path = dir.join("sub/curves.png");
    let opts = PlotOptions { title: "MoCo v2 / ResNet-18 / CIFAR-10".into(), width: 900, height: 700, smooth: 0, queue_full_step: Some(8.0), batch_size: Some(64) };
    plot_training(&path, &loss, &knn, &opts).unwrap();
    let img = image::open(&path).unwrap();
    assert_eq!((img.width(), img.height()), (900, 700));
    assert_eq!(image::ImageFormat::from_path(&path).unwrap(), image::ImageFormat::Png);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // text was drawn: the title band (top 40 rows) holds dark pixels
    let rgb = img.to_rgb8();
    let dark = (0..40).flat_map(|y| (0..900).map(move |x| (x, y))).filter(|&(x, y)| rgb.get_pixel(x, y).0.iter().all(|&c| c < 100)).count();
    assert!(dark > 100, "title text missing ({dark} dark pixels)");
    // the queue-full line (orange) and the random-init cross (red) are drawn
    let count = |c: [u8; 3]| rgb.pixels().filter(|p| p.0.iter().zip(c).all(|(&a, b)| a.abs_diff(b) < 8)).count();
    assert!(count([220, 110, 20]) > 100, "queue-full marker missing");
    assert!(count([200, 30, 30]) > 20, "random-init marker missing");
    // empty series, constant series
    plot_training(dir.join("empty.png"), &[], &[], &PlotOptions::default()).unwrap();
    plot_training(dir.join("flat.png"), &[(0.0, 1.0)], &[(1.0, 0.5)], &PlotOptions::default()).unwrap();
    assert_eq!(image::open(dir.join("empty.png")).unwrap().width(), 1000);
    // bad size is an error, not a panic
    assert!(matches!(plot_training(dir.join("x.png"), &loss, &knn, &PlotOptions { width: 10, ..opts }), Err(Error::Shape { .. })));
    if std::env::var("MOCO_KEEP_PLOT").is_ok() {
        eprintln!("plot kept at {}", path.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
