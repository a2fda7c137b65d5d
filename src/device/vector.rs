//! Loop nests compiled for the widest x86 vector unit the CPU reports, chosen at run time, and the switch that
//! forces a narrower one.
//!
//! The crate is built for the baseline target (SSE2 on x86-64), so its plain loops vectorise 4 lanes wide.
//! [`vectorized`] runs a closure inside a function compiled for AVX-512 (x86-64-v4) or AVX2 + FMA (x86-64-v3)
//! when the CPU has it, through `pulp`'s dispatch (the GEMM crate's own), so the same loops vectorise 16 or 8
//! lanes wide there. Rust never contracts `a * b + c` into an FMA and never reorders a float sum, so every
//! variant of such a loop computes bit-identical results: only the speed depends on the CPU. (The kernels that
//! call FMA explicitly, InfoNCE's exp for one, round differently on the scalar path, within their tests'
//! tolerances.)
//!
//! `MOCO_CPU_ISA=scalar|avx2|avx512` caps the instruction set the crate's own kernels dispatch to (read once per
//! process), so that CI runs every test on each path of a wide machine. The `gemm` crate picks its own
//! micro-kernel (AVX-512 where present) and is not affected.

use std::sync::OnceLock;

/// The instruction sets the crate's own CPU kernels are compiled for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuIsa {
    /// The baseline target (SSE2 on x86-64, whatever the target is elsewhere): no run-time dispatch.
    Scalar,
    /// AVX2 + FMA (x86-64-v3).
    Avx2,
    /// AVX-512 F, BW, CD, DQ and VL (x86-64-v4).
    Avx512,
}

impl CpuIsa {
    /// The name `MOCO_CPU_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            CpuIsa::Scalar => "scalar",
            CpuIsa::Avx2 => "avx2",
            CpuIsa::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [CpuIsa::Scalar, CpuIsa::Avx2, CpuIsa::Avx512].into_iter().find(|i| i.name() == s)
    }
}

/// The widest instruction set this CPU has (detected once).
pub fn detected_cpu_isa() -> CpuIsa {
    static D: OnceLock<CpuIsa> = OnceLock::new();
    *D.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if pulp::x86::V4::try_new().is_some() {
                return CpuIsa::Avx512;
            }
            if pulp::x86::V3::try_new().is_some() {
                return CpuIsa::Avx2;
            }
        }
        CpuIsa::Scalar
    })
}

/// The instruction set the crate's own kernels run on: [`detected_cpu_isa`], or `MOCO_CPU_ISA` where it names a
/// narrower one. A value that is unknown, or wider than the CPU, is ignored with a warning on stderr.
pub fn cpu_isa() -> CpuIsa {
    static I: OnceLock<CpuIsa> = OnceLock::new();
    *I.get_or_init(|| {
        let detected = detected_cpu_isa();
        match std::env::var("MOCO_CPU_ISA") {
            Err(_) => detected,
            Ok(v) => match CpuIsa::parse(&v) {
                Some(isa) if isa <= detected => isa,
                Some(isa) => {
                    eprintln!("moco: MOCO_CPU_ISA={v} ignored: this CPU has {}, not {}", detected.name(), isa.name());
                    detected
                }
                None => {
                    eprintln!("moco: MOCO_CPU_ISA={v:?} ignored: expected scalar, avx2 or avx512");
                    detected
                }
            },
        }
    })
}

/// `pulp`'s dispatcher for [`cpu_isa`].
fn arch() -> pulp::Arch {
    static A: OnceLock<pulp::Arch> = OnceLock::new();
    *A.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let arch = match cpu_isa() {
                CpuIsa::Avx512 => pulp::x86::V4::try_new().map(pulp::Arch::V4),
                CpuIsa::Avx2 => pulp::x86::V3::try_new().map(pulp::Arch::V3),
                CpuIsa::Scalar => None,
            };
            if let Some(a) = arch {
                return a;
            }
        }
        pulp::Arch::Scalar
    })
}

/// Runs `f` compiled for [`cpu_isa`] (a cached load per call).
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    arch().dispatch(f)
}
