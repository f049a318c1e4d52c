//! Instruction-set selection: detected once at run time, overridable for tests.
//!
//! `TCONV_ISA=avx512|avx2|scalar` (or [`crate::plan::PlanOptions::isa`]) forces a path;
//! asking for one the CPU lacks falls back to the best available one below it.

use std::fmt;

/// A SIMD instruction set the fast kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, any CPU, any element type.
    Scalar,
    /// AVX2 + FMA, 8 f32 lanes.
    Avx2,
    /// AVX-512F, 16 f32 lanes, masked loads.
    Avx512,
}

impl Isa {
    /// Name as used by `TCONV_ISA` and in plans.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parse a `TCONV_ISA` value.
    pub fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "portable" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx512f" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// f32 lanes per vector.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Scalar | Isa::Avx2 => 8,
            Isa::Avx512 => 16,
        }
    }

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best available path no better than `self`.
    pub fn or_below(self) -> Isa {
        [Isa::Avx512, Isa::Avx2, Isa::Scalar]
            .into_iter()
            .find(|isa| *isa <= self && isa.available())
            .unwrap_or(Isa::Scalar)
    }

    /// The best path on this CPU, or the one `TCONV_ISA` asks for.
    pub fn detect() -> Isa {
        match std::env::var("TCONV_ISA")
            .ok()
            .as_deref()
            .and_then(Isa::parse)
        {
            Some(forced) => forced.or_below(),
            None => Isa::Avx512.or_below(),
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
