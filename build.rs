//! Checks the kernel sources against the op families and validates every WGSL shader with naga, so a shader error
//! fails `cargo build` with the shader's own message. The families are the `families!(...)` list of
//! `src/ops/mod.rs`: each must have `kernels/<family>.cu` and `shaders/<family>.wgsl`, and no other `.cu` or
//! `.wgsl` file may sit there unlisted. CUDA kernels are compiled at run time by NVRTC (for the present device's
//! arch, cached per context) and checked in CI by `tests/cuda_compile.rs`.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src/ops/mod.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let families = families();
    check_files(&families, "kernels", "cu");
    check_files(&families, "shaders", "wgsl");
    // naga is a build-dependency of the `wgpu` feature only
    #[cfg(feature = "wgpu")]
    validate_all(&families);
}

/// The family names of `families!(a, b, ...)` in src/ops/mod.rs.
fn families() -> Vec<String> {
    let src = std::fs::read_to_string("src/ops/mod.rs").expect("src/ops/mod.rs exists");
    let start = src.rfind("\nfamilies!(").expect("src/ops/mod.rs has a `families!(...)` list") + "\nfamilies!(".len();
    let end = start + src[start..].find(')').expect("the families! list is closed");
    src[start..end].split(',').map(|f| f.trim().to_string()).filter(|f| !f.is_empty()).collect()
}

/// Every family has `<dir>/<family>.<ext>`, and every `.<ext>` file of `<dir>` belongs to a family.
fn check_files(families: &[String], dir: &str, ext: &str) {
    let mut problems = Vec::new();
    for f in families {
        let path = format!("{dir}/{f}.{ext}");
        println!("cargo:rerun-if-changed={path}");
        if !Path::new(&path).exists() {
            problems.push(format!("family `{f}` (src/ops/mod.rs) has no {path}"));
        }
    }
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}/: {e}")).flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(ext) {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if !families.iter().any(|f| f == stem) {
            problems.push(format!("{} belongs to no op family: add `{stem}` to `families!` in src/ops/mod.rs (with its folder), or remove it", path.display()));
        }
    }
    if !problems.is_empty() {
        panic!("kernel sources and op families disagree:\n{}", problems.join("\n"));
    }
}

#[cfg(feature = "wgpu")]
fn validate_all(families: &[String]) {
    let failed: Vec<String> = families.iter().filter_map(|f| validate(Path::new(&format!("shaders/{f}.wgsl"))).err()).collect();
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
