//! Compiles every CUDA kernel of `kernels/` without a GPU: NVRTC to PTX for sm_80 and sm_90 (each family's source as
//! the crate embeds it, `kernels/common.cuh` first), then `ptxas -v` on the PTX, failing on any compiler error and on
//! any register spill, and printing registers and spills per kernel. Then the machine code: each cubin disassembled
//! by nvdisasm (`MOCO_NVDISASM`, `PATH`, or the `nvidia-cuda-nvdisasm` wheel), failing unless no kernel touches
//! local memory (`LDL` / `STL`) and every tensor-core kernel (`*_mma_*`) has `HMMA`, `LDSM` and `LDGSTS`
//! (mma.sync, ldmatrix, cp.async as the hardware runs them).
//!
//! Needs libnvrtc on the loader path and a ptxas (`MOCO_PTXAS`, `PATH`, or the `nvidia-cuda-nvcc-cu12` wheel);
//! `eval "$(scripts/install_cuda_wheels.sh)"` provides both. Without them the test prints why and passes, unless
//! `MOCO_REQUIRE_CUDA_COMPILE=1`, when it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const ARCHS: &[&str] = &["sm_80", "sm_90"];

fn required() -> bool {
    std::env::var("MOCO_REQUIRE_CUDA_COMPILE").map(|v| v == "1").unwrap_or(false)
}

/// Skips (prints and returns true) or fails, depending on `MOCO_REQUIRE_CUDA_COMPILE`.
fn skip(reason: &str) -> bool {
    assert!(!required(), "MOCO_REQUIRE_CUDA_COMPILE=1 but {reason}");
    eprintln!("cuda_compile: skipped: {reason} (run `eval \"$(scripts/install_cuda_wheels.sh)\"` to provide it)");
    true
}

fn kernel_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("cu"))
        .collect();
    files.sort();
    files
}

fn is_executable(p: &Path) -> bool {
    p.is_file() && std::fs::metadata(p).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0).unwrap_or(false)
}

/// ptxas from `MOCO_PTXAS`, then `PATH`, then the pip wheel `nvidia-cuda-nvcc-cu12` (in the venv of
/// scripts/install_cuda_wheels.sh or the system python).
fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOCO_PTXAS").map(PathBuf::from) {
        return is_executable(&p).then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("ptxas");
            if is_executable(&p) {
                return Some(p);
            }
        }
    }
    let venv = std::env::var_os("MOCO_CUDA_VENV").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/moco-cuda-venv")));
    let mut pythons: Vec<PathBuf> = venv.map(|v| vec![v.join("bin/python")]).unwrap_or_default();
    pythons.push(PathBuf::from("python3"));
    for py in pythons {
        let out = Command::new(&py).args(["-c", "import nvidia.cuda_nvcc as m; print(list(m.__path__)[0])"]).output();
        if let Ok(out) = out {
            if out.status.success() {
                let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin/ptxas");
                if is_executable(&p) {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// nvdisasm from `MOCO_NVDISASM`, then `PATH`, then the venv of scripts/install_cuda_wheels.sh.
fn find_nvdisasm() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOCO_NVDISASM").map(PathBuf::from) {
        return is_executable(&p).then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path).map(|d| d.join("nvdisasm")).find(|p| is_executable(p)) {
            return Some(p);
        }
    }
    let venv = std::env::var_os("MOCO_CUDA_VENV").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/moco-cuda-venv")))?;
    let site = std::fs::read_dir(venv.join("lib")).ok()?.flatten().map(|e| e.path().join("site-packages/nvidia")).find(|p| p.is_dir())?;
    std::fs::read_dir(site).ok()?.flatten().map(|e| e.path().join("bin/nvdisasm")).find(|p| is_executable(p))
}

/// The SASS instructions of each kernel of a cubin, from nvdisasm's `.text.<kernel>` sections: kernel -> opcodes
/// (the mnemonic with its modifiers, `HMMA.16816.F32.BF16`).
fn sass_by_kernel(listing: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut current: Option<String> = None;
    for line in listing.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix(".section").filter(|r| r.starts_with(char::is_whitespace)) {
            current = rest.trim().split(',').next().and_then(|s| s.trim().strip_prefix(".text.")).map(|s| s.to_string());
            continue;
        }
        let Some(kernel) = current.as_ref() else { continue };
        // "/*0080*/   @!P0 HMMA.16816.F32.BF16 R4, R8, R12, R4 ;"
        let Some(code) = t.strip_prefix("/*").and_then(|r| r.split_once("*/")).map(|(_, c)| c.trim()) else { continue };
        let code = if code.starts_with('@') { code.split_once(' ').map_or("", |(_, c)| c.trim()) } else { code };
        if let Some(op) = code.split_whitespace().next() {
            out.entry(kernel.clone()).or_default().push(op.trim_end_matches(';').to_string());
        }
    }
    out
}

/// What `ptxas -v` says about one kernel.
#[derive(Default)]
struct Usage {
    name: String,
    regs: u32,
    /// Static shared memory per block, bytes.
    smem: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
}

/// Per kernel: registers, static shared memory, stack frame (local memory, e.g. an accumulator array that is not in registers) and
/// spills, parsed from `ptxas -v`.
fn parse_ptxas(log: &str) -> Vec<Usage> {
    let mut out: Vec<Usage> = Vec::new();
    let num_before = |line: &str, word: &str| -> Option<u32> {
        let idx = line.find(word)?;
        line[..idx].split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty())?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(Usage { name, ..Default::default() });
        } else if let Some(last) = out.last_mut() {
            if line.contains("bytes spill stores") {
                last.stack = num_before(line, "bytes stack frame").unwrap_or(0);
                last.spill_stores = num_before(line, "bytes spill stores").unwrap_or(0);
                last.spill_loads = num_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used ") && line.contains(" registers") {
                last.regs = num_before(line, " registers").unwrap_or(0);
                last.smem = num_before(line, " bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

/// The lines of a CUDA or WGSL text that are code (comments and blank lines left out; the preludes have no block
/// comments).
fn code_lines(src: &str) -> impl Iterator<Item = &str> {
    src.lines().map(|l| l.split("//").next().unwrap_or("").trim()).filter(|l| !l.is_empty())
}

#[test]
fn every_kernel_file_is_embedded() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let on_disk: BTreeSet<String> = kernel_files().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let embedded: BTreeSet<String> = moco::ops::KERNELS.iter().map(|f| f.cuda_file.to_string()).collect();
    assert_eq!(on_disk, embedded, "kernels/ and the families of moco::ops::KERNELS disagree");
    let (cuda_prelude, wgsl_prelude) = (read("kernels/common.cuh"), read("shaders/common.wgsl"));
    assert_eq!(cuda_prelude, moco::device::kernel_family::CUDA_PRELUDE, "kernels/common.cuh: embedded prelude differs from the file");
    assert_eq!(wgsl_prelude, moco::device::kernel_family::WGSL_PRELUDE, "shaders/common.wgsl: embedded prelude differs from the file");
    // NVRTC gets one string (no include paths: the crate may run where kernels/ is not), and the prelude comes before
    // the family's own macros: device functions only, with conditional compilation (the inline-PTX wrappers that
    // the CUDA emulation replaces, and their per-architecture forms) but no #include or #define
    let conditional = ["#pragma", "#if", "#ifdef", "#ifndef", "#else", "#endif"];
    for l in code_lines(&cuda_prelude) {
        let directive = l.split_whitespace().next().unwrap_or("");
        assert!(!l.starts_with('#') || conditional.contains(&directive), "kernels/common.cuh: `{l}`: no preprocessor directives but #pragma and #if/#ifdef/#ifndef/#else/#endif in the prelude");
        assert!(!l.contains("__global__"), "kernels/common.cuh: `{l}`: no kernels in the prelude (every family would list them)");
    }
    assert!(!code_lines(&wgsl_prelude).any(|l| l.starts_with('@')), "shaders/common.wgsl: no entry points or bindings in the prelude");
    for family in moco::ops::KERNELS {
        let file = family.cuda_file;
        assert_eq!(file, format!("{}.cu", family.name), "family {}: its CUDA file is named after it", family.name);
        let disk = read(&format!("kernels/{file}"));
        assert_eq!(family.cuda, format!("#line 1 \"common.cuh\"\n{cuda_prelude}\n#line 1 \"{file}\"\n{disk}"), "{file}: embedded source differs from the prelude and the file");
        assert!(!disk.lines().any(|l| l.trim_start().starts_with("#include")), "{file}: kernels must be header-free for NVRTC");
        assert_eq!(family.wgsl_file, format!("{}.wgsl", family.name), "family {}: its WGSL file is named after it", family.name);
        let disk = read(&format!("shaders/{}", family.wgsl_file));
        assert_eq!(family.wgsl, format!("{disk}\n{wgsl_prelude}"), "{}: embedded source differs from the file and the prelude", family.wgsl_file);
    }
}

#[test]
fn kernels_compile_with_nvrtc_and_ptxas() {
    // SAFETY: only tries to dlopen libnvrtc; no symbol is called when it is absent.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        skip("libnvrtc is not on the loader path");
        return;
    }
    let ptxas = find_ptxas();
    if ptxas.is_none() {
        skip("ptxas not found (MOCO_PTXAS, PATH, pip wheel nvidia-cuda-nvcc-cu12)");
    }
    let nvdisasm = find_nvdisasm();
    if nvdisasm.is_none() {
        skip("nvdisasm not found (MOCO_NVDISASM, PATH, pip wheel nvidia-cuda-nvdisasm)");
    }
    let mut sass_table = Vec::new();
    let tmp = std::env::temp_dir().join(format!("moco-cuda-compile-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // what the CUDA device loads from each family's module
    let entry_points: Vec<(&str, Vec<String>)> = moco::ops::KERNELS.iter().map(|f| (f.cuda_file, f.cuda_entry_points().into_iter().map(|k| k.to_string()).collect())).collect();
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for family in moco::ops::KERNELS {
        let file = family.cuda_file.to_string();
        let src = family.cuda;
        for &arch in ARCHS {
            let opts = cudarc::nvrtc::CompileOptions { arch: Some(arch), name: Some(file.clone()), ..Default::default() };
            let ptx = match cudarc::nvrtc::compile_ptx_with_opts(src, opts) {
                Ok(p) => p.to_src(),
                Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
                    failures.push(format!("NVRTC {file} {arch}:\n{}", log.to_string_lossy()));
                    continue;
                }
                Err(e) => {
                    failures.push(format!("NVRTC {file} {arch}: {e:?}"));
                    continue;
                }
            };
            if let Some((_, names)) = entry_points.iter().find(|(f, _)| *f == file) {
                for name in names.iter() {
                    if !ptx.contains(&format!(".entry {name}(")) {
                        failures.push(format!("{file} {arch}: the family lists the entry point `{name}` (KernelFamily::cuda_entry_points) but the PTX has no such entry"));
                    }
                }
                for entry in ptx.split(".entry ").skip(1).map(|r| r.split('(').next().unwrap_or("").trim()) {
                    if !names.iter().any(|k| k == entry) {
                        failures.push(format!("{file} {arch}: the PTX has the entry `{entry}` but the family does not list it (KernelFamily::cuda_entry_points)"));
                    }
                }
            }
            let Some(ptxas) = ptxas.as_ref() else { continue };
            let ptx_path = tmp.join(format!("{}.{arch}.ptx", file.trim_end_matches(".cu")));
            std::fs::write(&ptx_path, &ptx).unwrap();
            let cubin = tmp.join(format!("{file}.{arch}.cubin"));
            let out = Command::new(ptxas).arg("-v").arg("--gpu-name").arg(arch).arg(&ptx_path).arg("-o").arg(&cubin).output().expect("running ptxas");
            let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if !out.status.success() || log.contains("error") {
                failures.push(format!("ptxas {file} {arch} ({}):\n{log}", out.status));
                continue;
            }
            let usage = parse_ptxas(&log);
            if usage.is_empty() {
                failures.push(format!("ptxas {file} {arch}: no entry function in the -v output:\n{log}"));
            }
            for u in usage {
                if u.spill_stores > 0 || u.spill_loads > 0 || u.stack > 0 {
                    failures.push(format!("{file} {arch} {}: {} bytes stack frame, {} bytes spill stores, {} bytes spill loads (local memory)", u.name, u.stack, u.spill_stores, u.spill_loads));
                }
                table.push((arch, file.clone(), u));
            }
            let Some(nvdisasm) = nvdisasm.as_ref() else { continue };
            let out = Command::new(nvdisasm).arg("-c").arg(&cubin).output().expect("running nvdisasm");
            if !out.status.success() {
                failures.push(format!("nvdisasm {file} {arch}: {}", String::from_utf8_lossy(&out.stderr)));
                continue;
            }
            let sass = sass_by_kernel(&String::from_utf8_lossy(&out.stdout));
            if sass.is_empty() {
                failures.push(format!("nvdisasm {file} {arch}: no .text.<kernel> section in the listing"));
            }
            for (kernel, ops) in &sass {
                let count = |prefix: &str| ops.iter().filter(|o| o.split('.').next() == Some(prefix)).count();
                let (ldl, stl) = (count("LDL"), count("STL"));
                if ldl + stl > 0 {
                    failures.push(format!("{file} {arch} {kernel}: {ldl} LDL and {stl} STL instructions (local memory)"));
                }
                let (hmma, ldsm, ldgsts) = (count("HMMA"), count("LDSM"), count("LDGSTS"));
                if kernel.contains("_mma_") && (hmma == 0 || ldsm == 0 || ldgsts == 0) {
                    failures.push(format!("{file} {arch} {kernel}: a tensor-core kernel without HMMA ({hmma}), LDSM ({ldsm}) or LDGSTS ({ldgsts})"));
                }
                // the tensor-core kernels, and the convolutions (their gathers' integer divisions: a 32-bit division
                // by a run-time divisor is a sequence around one MUFU.RCP, the only MUFU in those kernels)
                if kernel.contains("_mma_") || hmma + ldsm + ldgsts > 0 || kernel.starts_with("conv2d_") {
                    sass_table.push(format!("{arch:<6} {file:<16} {kernel:<30} {:>6} {hmma:>5} {ldsm:>5} {ldgsts:>7} {ldl:>4} {stl:>4} {:>5}", ops.len(), count("MUFU")));
                }
            }
        }
    }
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&tmp);
    } else {
        eprintln!("cuda_compile: the PTX and cubins are kept in {} for inspection", tmp.display());
    }
    if !table.is_empty() {
        println!("{:<6} {:<16} {:<26} {:>5} {:>6} {:>6} {:>12} {:>11}", "arch", "file", "kernel", "regs", "smem", "stack", "spill stores", "spill loads");
        for (arch, file, u) in &table {
            println!("{arch:<6} {file:<16} {:<26} {:>5} {:>6} {:>6} {:>12} {:>11}", u.name, u.regs, u.smem, u.stack, u.spill_stores, u.spill_loads);
        }
    }
    if !sass_table.is_empty() {
        println!("\nmachine code of the tensor-core kernels and the convolutions (nvdisasm):");
        println!("{:<6} {:<16} {:<30} {:>6} {:>5} {:>5} {:>7} {:>4} {:>4} {:>5}", "arch", "file", "kernel", "instrs", "HMMA", "LDSM", "LDGSTS", "LDL", "STL", "MUFU");
        for row in &sass_table {
            println!("{row}");
        }
    }
    assert!(failures.is_empty(), "{} CUDA compile failure(s):\n{}", failures.len(), failures.join("\n"));
}
