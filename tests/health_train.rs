//! Representation health in the trainer: the collapse monitor and the options against hostile values, the queue's
//! age, the metrics round trip; and the two front doors run as a user runs them (the example binaries that
//! `cargo test` builds, on the CPU): a deliberately collapsing run (the ResNet-18 default at 100x its learning
//! rate) raises the alarm at step 10 and, with `--stop-on-collapse`, stops with the checkpoint of step 1; the
//! embedded-digits defaults of `train_resnet18` and `train_vit` never raise it, and their metrics and plots carry
//! the statistics.
use moco::ops::health::HealthStats;
use moco::report::{read_jsonl, Record};
use moco::train::health::{queue_age, HEALTH_COLUMNS};
use moco::train::{CollapseMonitor, HealthOptions, HealthSnapshot};
use std::path::Path;

mod common;
use common::front_door::{front_door, out_dir};

fn snapshot(rank: f64, std: f32) -> HealthSnapshot {
    let stats = HealthStats { alignment: 0.5, uniformity: -2.0, dim_std: std, pos_mean: 0.8, neg_mean: 0.1, neg_max: 0.9, neg_row_max_mean: 0.7, gap: 0.1 };
    HealthSnapshot { stats, effective_rank: rank, key_drift: 0.01, queue_age: Some(7) }
}

#[test]
fn queue_age_counts_steps_until_the_queue_is_full_then_stays_k_over_keys_per_step_minus_one() {
    // K 512, 64 keys per step: the random vectors are as old as the run until step 8 fills the queue
    assert_eq!((0..=7).map(|s| queue_age(s, 64, 512)).collect::<Vec<_>>(), (0..=7).collect::<Vec<_>>());
    assert!((8..100).all(|s| queue_age(s, 64, 512) == 7));
    // K not a multiple of the keys per step; the symmetric loss's 2N keys; N = K
    assert_eq!(queue_age(3, 64, 100), 1);
    assert_eq!(queue_age(1000, 128, 4096), 31);
    assert_eq!(queue_age(5, 16, 16), 0);
    // hostile values: no keys per step counts as one, huge step counts do not overflow
    assert_eq!(queue_age(4, 0, 2), 1);
    assert_eq!(queue_age(u64::MAX, u64::MAX, 1), 0);
}

#[test]
fn health_options_reject_hostile_values_and_say_what_they_expected() {
    assert!(HealthOptions::default().validate().is_ok());
    let d = HealthOptions::default();
    for (bad, says) in [
        (HealthOptions { rank_fraction: 0.0, ..d }, "--collapse-rank-fraction in (0, 1)"),
        (HealthOptions { rank_fraction: 1.0, ..d }, "--collapse-rank-fraction in (0, 1)"),
        (HealthOptions { std_fraction: f64::NAN, ..d }, "--collapse-std-fraction in (0, 1)"),
        (HealthOptions { std_fraction: -0.5, ..d }, "--collapse-std-fraction in (0, 1)"),
        (HealthOptions { early: 0, ..d }, "--collapse-early >= 1"),
        (HealthOptions { every: 0, stop_on_collapse: true, ..d }, "--health-every >= 1"),
    ] {
        let e = bad.validate().expect_err(says).to_string();
        assert!(e.contains(says), "{bad:?}: {e}");
    }
    // measuring is off with every = 0, else at step 1 and every `every` steps
    let off = HealthOptions { every: 0, ..d };
    assert!(!(1..100).any(|s| off.due(s)));
    let every = HealthOptions { every: 10, ..d };
    assert_eq!((1..=35).filter(|&s| every.due(s)).collect::<Vec<_>>(), vec![1, 10, 20, 30]);
}

#[test]
fn the_monitor_alarms_once_on_a_collapse_and_never_on_a_dip_above_the_threshold() {
    // the default ResNet run's measurements at the default interval (steps 1, 10, 20, ...), rounded: a dip to 13 %
    // of the early rank and 19 % of the early std while the queue fills, then a recovery
    let healthy = [(50.6, 0.066), (11.9, 0.0132), (7.6, 0.0131), (7.1, 0.016), (6.9, 0.021), (9.1, 0.053), (13.2, 0.072)];
    let mut m = CollapseMonitor::new(HealthOptions::default());
    for (i, &(r, s)) in healthy.iter().enumerate() {
        assert_eq!(m.observe(1 + 10 * i as u64, &snapshot(r, s)), None, "healthy measurement {i}");
    }
    assert!(!m.raised());
    // 100x the learning rate: rank 1.1 and std 0.0012 from step 2 on; the first check after step 1 fires
    let mut m = CollapseMonitor::new(HealthOptions::default());
    assert_eq!(m.observe(1, &snapshot(50.6, 0.066)), None);
    let a = m.observe(10, &snapshot(1.1, 0.0012)).expect("collapse alarm");
    assert_eq!((a.step, a.statistic), (10, "effective_rank"));
    assert!((a.early - 50.6).abs() < 1e-12 && a.value == 1.1 && a.fraction == HealthOptions::RANK_FRACTION);
    assert!(a.to_string().contains("collapse alarm at step 10: effective_rank"), "{a}");
    assert_eq!(m.observe(20, &snapshot(1.0, 0.001)), None, "the alarm is raised once");
    assert!(m.raised());
    // the std alone; non-finite values (a batch of one has no std) neither alarm nor set the early value
    let mut m = CollapseMonitor::new(HealthOptions::default());
    assert_eq!(m.observe(1, &snapshot(f64::NAN, f32::NAN)), None);
    assert_eq!(m.observe(2, &snapshot(20.0, 0.05)), None);
    assert_eq!(m.observe(3, &snapshot(f64::NAN, f32::NAN)), None);
    assert_eq!(m.observe(4, &snapshot(19.0, 0.001)).map(|a| a.statistic), Some("dim_std"));
    // with early = 1 the reference is step 1's alone: a later higher value does not raise it
    let mut m = CollapseMonitor::new(HealthOptions { early: 1, ..HealthOptions::default() });
    assert_eq!(m.observe(1, &snapshot(10.0, 0.05)), None);
    assert_eq!(m.observe(2, &snapshot(40.0, 0.05)), None);
    assert_eq!(m.observe(3, &snapshot(0.4, 0.05)).map(|a| a.early), Some(10.0));
}

#[test]
fn a_snapshot_round_trips_through_a_metrics_record() {
    let h = snapshot(12.5, 0.07);
    let rec = h.record(Record::new().with("global_step", 3.0));
    for c in HEALTH_COLUMNS {
        assert!(rec.get(c).is_some(), "{c} missing from {rec:?}");
    }
    let back = HealthSnapshot::from_record(&Record::from_json(&rec.to_json()).unwrap()).unwrap();
    assert_eq!(back.effective_rank, 12.5);
    assert_eq!(back.stats.to_words(), h.stats.to_words());
    assert_eq!((back.key_drift, back.queue_age), (h.key_drift, h.queue_age));
    // v3 (no queue) and a batch of one (no uniformity): those columns are left out, not written as NaN
    let v3 = HealthSnapshot { queue_age: None, stats: HealthStats { uniformity: f32::NAN, ..h.stats }, ..h };
    let rec = v3.record(Record::new());
    assert!(rec.get("queue_age").is_none() && rec.get("uniformity").is_none() && rec.get("dim_std").is_some());
    assert!(HealthSnapshot::from_record(&Record::new().with("loss", 1.0)).is_none());
}

/// The `global_step` scalar of a run's checkpoint.
fn checkpoint_step(path: &Path) -> u64 {
    let ck = moco::checkpoint::load(path).unwrap();
    let r = ck.restore(&mut [], &["global_step".to_string()], &moco::checkpoint::LoadOptions::lenient()).unwrap();
    r.scalars["global_step"] as u64
}

/// The ResNet-18 default with 100x its learning rate (0.06 -> 6) collapses at once: the step-10 measurement has
/// an effective rank of about 1.1 against 50.6 at step 1, the alarm names it, and --stop-on-collapse stops there
/// with step 1's checkpoint.
#[test]
fn lr_times_100_raises_the_alarm_at_step_10_and_stops_with_the_step_1_checkpoint() {
    let out = out_dir("lr100");
    let (ok, text) = front_door("train_resnet18", &out, &["--lr", "6", "--epochs", "1", "--stop-on-collapse"]);
    assert!(ok, "the run fails:\n{text}");
    assert!(text.contains("warning: collapse alarm at step 10: effective_rank"), "no alarm line:\n{text}");
    assert!(text.contains("stopped on collapse at step 10"), "{text}");
    assert_eq!(checkpoint_step(&out.join("checkpoint.safetensors")), 1, "the checkpoint is the last healthy measurement's");
    let recs = read_jsonl(out.join("metrics.jsonl")).unwrap();
    let alarm: Vec<&Record> = recs.iter().filter(|r| r.get_str("kind") == Some("alarm")).collect();
    assert_eq!(alarm.len(), 1);
    assert_eq!((alarm[0].get("global_step"), alarm[0].get_str("alarm_statistic")), (Some(10.0), Some("effective_rank")));
    assert!(alarm[0].get("alarm_value").unwrap() < 0.05 * alarm[0].get("alarm_early").unwrap());
    let _ = std::fs::remove_dir_all(&out);
}

/// A front door's embedded default, as README's command runs it (on the CPU): no alarm; the statistics in
/// metrics.jsonl and metrics.csv at steps 1, 10, 20, ...; a three-panel curves.png.
fn default_run_is_healthy(name: &str, total_steps: u64, has_queue: bool) {
    let out = out_dir(name);
    let (ok, text) = front_door(name, &out, &[]);
    assert!(ok, "{name} fails:\n{text}");
    assert!(!text.contains("collapse alarm at"), "{name}'s default raised the collapse alarm:\n{text}");
    assert!(text.contains("no collapse alarm"), "{text}");
    let recs = read_jsonl(out.join("metrics.jsonl")).unwrap();
    let measured: Vec<u64> = recs.iter().filter(|r| r.get("effective_rank").is_some()).map(|r| r.get("global_step").unwrap() as u64).collect();
    let want: Vec<u64> = std::iter::once(1).chain((10..=total_steps).step_by(10)).collect();
    assert_eq!(measured, want, "{name}: measured steps");
    for r in recs.iter().filter(|r| r.get("effective_rank").is_some()) {
        let h = HealthSnapshot::from_record(r).unwrap();
        assert!(h.effective_rank >= 1.0 && h.stats.dim_std > 0.0 && (0.0..=4.0).contains(&h.stats.alignment) && h.stats.uniformity <= 0.0, "{name}: {r:?}");
        assert!(h.stats.pos_mean.is_finite() && h.stats.neg_max.is_finite() && h.key_drift.is_finite(), "{name}: {r:?}");
        assert_eq!(h.queue_age.is_some(), has_queue, "{name}: queue_age");
    }
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |c: &str| header.iter().position(|h| *h == c).unwrap_or_else(|| panic!("{name}: no {c} column in {header:?}"));
    let (rank, loss) = (col("effective_rank"), col("loss"));
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.iter().filter(|r| !r[rank].is_empty()).count(), want.len(), "{name}: CSV rows with a rank");
    assert!(rows.iter().filter(|r| r[0] == "step").all(|r| !r[loss].is_empty()), "{name}: every step row has its loss");
    let png = image::image_dimensions(out.join("curves.png")).unwrap();
    assert_eq!(png, (1000, 1200), "{name}: curves.png with the health panel");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn train_resnet18_default_never_raises_the_alarm() {
    // 10 epochs of 23 steps
    default_run_is_healthy("train_resnet18", 230, true);
}

#[test]
fn train_vit_default_never_raises_the_alarm() {
    // 6 epochs of 23 steps
    default_run_is_healthy("train_vit", 138, false);
}
