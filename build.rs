//! Validates every WGSL shader with naga so a shader error fails `cargo build` with the shader's own message,
//! and reruns when anything in `shaders/` or `kernels/` changes. CUDA kernels are compiled at run time by NVRTC
//! (for the present device's arch, cached per context) and checked in CI by `tests/cuda_compile.rs`.

#[cfg(feature = "wgpu")]
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    // naga is a build-dependency of the `wgpu` feature only
    #[cfg(feature = "wgpu")]
    validate_all();
    for entry in std::fs::read_dir("kernels").expect("kernels/ exists").flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
}

#[cfg(feature = "wgpu")]
fn validate_all() {
    let mut failed = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir("shaders").expect("shaders/ exists").flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        if let Err(msg) = validate(&path) {
            failed.push(msg);
        }
    }
    if !failed.is_empty() {
        for f in &failed {
            eprintln!("{f}");
        }
        panic!("{} WGSL shader(s) failed validation:\n{}", failed.len(), failed.join("\n"));
    }
}

#[cfg(feature = "wgpu")]
fn validate(path: &Path) -> Result<(), String> {
    let src = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path.display().to_string();
    let module = naga::front::wgsl::parse_str(&src).map_err(|e| e.emit_to_string_with_path(&src, &name))?;
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    validator.validate(&module).map_err(|e| e.emit_to_string_with_path(&src, &name))?;
    Ok(())
}
