//! The front doors (`train_resnet18`, `train_vit`) run as a user runs them: the example binaries that
//! `cargo test` builds next to the test binaries, on the CPU, each in a fresh process.
use std::path::{Path, PathBuf};
use std::process::Command;

/// The example binary `name` that `cargo test` built next to this test's binary (target/<profile>/examples).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(path.is_file(), "{} is missing: `cargo test` builds the examples before it runs the tests", path.display());
    path
}

/// An empty run folder under the temp dir, unique to this process and `tag`.
pub fn out_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moco-front-door-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Runs the front door `name` on the CPU with `args`, writing to `out`; returns (status, stdout + stderr).
pub fn front_door(name: &str, out: &Path, args: &[&str]) -> (bool, String) {
    front_door_env(name, out, args, &[])
}

/// [`front_door`] with environment variables set for the process.
pub fn front_door_env(name: &str, out: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let o = Command::new(example(name)).args(["--backend", "cpu", "--no-progress", "--out"]).arg(out).args(args).envs(env.iter().copied()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("{name} {args:?}:\n{text}");
    (o.status.success(), text)
}
