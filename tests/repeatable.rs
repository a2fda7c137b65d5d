//! Repeatable by default: the same command and seed on the same machine give bit-identical results in every new
//! process (the CPU convolutions' algorithm is a fixed rule per shape unless `--conv-benchmark` asks for timing),
//! and a shortened recipe's warmup follows `--epochs`. Each front door runs twice here, in two processes.
mod common;
use common::front_door::{front_door, front_door_env, out_dir};
use std::path::Path;

/// The metrics columns that hold wall-clock times (the only ones allowed to differ between two runs).
const TIME_COLUMNS: [&str; 3] = ["pairs_per_s", "train_pairs_per_s", "eval_s"];

/// metrics.csv with its time columns emptied, every other field as written (the floats in their shortest
/// round-trip form, so equal text is equal bits).
fn metrics_without_times(run: &Path) -> Vec<Vec<String>> {
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for c in TIME_COLUMNS {
        assert!(header.contains(&c), "no {c} column in {header:?}");
    }
    lines.map(|l| l.split(',').zip(&header).map(|(v, h)| if TIME_COLUMNS.contains(h) { String::new() } else { v.to_string() }).collect()).collect()
}

/// The lines a user compares between runs: every epoch line, the kNN summary and the health summary.
fn result_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("epoch ") || l.starts_with("kNN top-1") || l.starts_with("representation health")).collect()
}

/// Runs `name` with `args` twice, each in a new process, and checks that the printed results, the metrics (times
/// aside) and the checkpoint (weights, optimiser state, queue, metadata) are identical bit for bit.
fn twice_bit_identical(name: &str, args: &[&str]) {
    let (a, b) = (out_dir(&format!("{name}-a")), out_dir(&format!("{name}-b")));
    let (ok_a, text_a) = front_door(name, &a, args);
    let (ok_b, text_b) = front_door(name, &b, args);
    assert!(ok_a && ok_b, "{name} failed");
    assert!(text_a.contains("convolution algorithms (CPU): a fixed rule per shape"), "{name}: the settings block names the rule:\n{text_a}");
    let (lines_a, lines_b) = (result_lines(&text_a), result_lines(&text_b));
    assert!(lines_a.len() >= 3, "{name}: epoch and kNN lines:\n{text_a}");
    assert_eq!(lines_a, lines_b, "{name}: the two processes print different results");
    let (m_a, m_b) = (metrics_without_times(&a), metrics_without_times(&b));
    assert!(m_a.len() > 10);
    for (i, (ra, rb)) in m_a.iter().zip(&m_b).enumerate() {
        assert_eq!(ra, rb, "{name}: metrics.csv row {} differs", i + 1);
    }
    assert_eq!(m_a.len(), m_b.len(), "{name}: metrics.csv rows");
    let (ck_a, ck_b) = (std::fs::read(a.join("checkpoint.safetensors")).unwrap(), std::fs::read(b.join("checkpoint.safetensors")).unwrap());
    assert!(ck_a == ck_b, "{name}: the two checkpoints differ");
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn train_resnet18_default_gives_bit_identical_runs_in_two_processes() {
    // the README's default (8x8 digits, MoCo v2's queue, Winograd by rule on 64..512 channels), one epoch of 23 steps
    twice_bit_identical("train_resnet18", &["--epochs", "1"]);
}

#[test]
fn train_vit_default_gives_bit_identical_runs_in_two_processes() {
    twice_bit_identical("train_vit", &["--epochs", "1"]);
}

/// moco-v3's recipe is 300 epochs with 40 of warmup: `--epochs 10` alone scales the warmup to 1 and says so;
/// with `--warmup-epochs` given too, a warmup as long as the run is an error that names the flag and says
/// "settings".
#[test]
fn train_vit_with_a_short_epochs_flag_scales_the_warmup_and_prints_it() {
    let out = out_dir("vit-epochs10");
    let (ok, text) = front_door("train_vit", &out, &["--data", "digits", "--epochs", "10", "--batch", "16", "--max-steps", "2", "--health-every", "0"]);
    assert!(ok, "{text}");
    assert!(text.contains("warmup scaled with --epochs: 40 of 300 epochs -> 1 of 10 (--warmup-epochs sets it)"), "{text}");
    assert!(text.contains("adamw lr") && text.contains("(1 warmup epochs, then half-cosine"), "{text}");
    let (ok, text) = front_door("train_vit", &out, &["--data", "digits", "--epochs", "10", "--warmup-epochs", "10"]);
    assert!(!ok, "{text}");
    assert!(text.contains("invalid settings: warmup_epochs (--warmup-epochs): expected warmup epochs < epochs"), "{text}");
    assert!(!text.contains("invalid shape"), "{text}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `--conv-benchmark` is the opt-in to timing (as `cudnn.benchmark`), and the settings block says so.
#[test]
fn conv_benchmark_is_an_opt_in_the_settings_block_names() {
    let out = out_dir("conv-benchmark");
    let (ok, text) = front_door("train_resnet18", &out, &["--epochs", "1", "--max-steps", "2", "--health-every", "0", "--conv-benchmark"]);
    assert!(ok, "{text}");
    assert!(text.contains("convolution algorithms (CPU): timed per shape in this process (--conv-benchmark"), "{text}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `MOCO_CPU_ISA` caps the vector unit of the crate's own kernels (CI's forced-dispatch runs); the device line
/// names the one in use, and a value that is unknown or wider than the CPU is ignored with a warning, never a
/// crash.
#[test]
fn moco_cpu_isa_forces_a_narrower_dispatch_and_the_device_line_names_it() {
    let out = out_dir("cpu-isa");
    let short = ["--epochs", "1", "--max-steps", "1", "--health-every", "0"];
    let detected = moco::device::detected_cpu_isa().name();
    let (ok, text) = front_door_env("train_resnet18", &out, &short, &[("MOCO_CPU_ISA", "scalar")]);
    assert!(ok && text.contains("CPU engine (") && text.contains(" threads, scalar)"), "{text}");
    for bad in ["sse9", "", "AVX2 "] {
        let (ok, text) = front_door_env("train_resnet18", &out, &short, &[("MOCO_CPU_ISA", bad)]);
        assert!(ok && text.contains("ignored: expected scalar, avx2 or avx512") && text.contains(&format!(" threads, {detected})")), "{bad:?}: {text}");
    }
    if detected != "avx512" {
        let (ok, text) = front_door_env("train_resnet18", &out, &short, &[("MOCO_CPU_ISA", "avx512")]);
        assert!(ok && text.contains(&format!("ignored: this CPU has {detected}, not avx512")), "{text}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
