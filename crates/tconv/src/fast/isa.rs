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

    /// The instruction set the generic loops over `T` (row engines, dot products) are
    /// compiled for in a plan of `self`: `self`, except for f64 on `Scalar` (f64 plans are
    /// `Scalar`, the layout of the portable kernels, as it has no kernels of its own), whose
    /// loops take the best path on this CPU that `TCONV_ISA` allows.
    pub fn loops_for<T: 'static>(self) -> Isa {
        if self == Isa::Scalar && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f64>() {
            Isa::detect()
        } else {
            self
        }
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

/// Independent FMA chains the peak loops keep in flight: more than the two FMA pipes times
/// their 4-cycle latency, and no more than the registers hold (16 ymm without AVX-512).
const CHAINS: usize = 12;

/// The f32 FMA peak of one core on `isa`'s vectors, in GFLOP/s (2 per lane per FMA),
/// measured here: `CHAINS` independent chains of fused multiply-adds, the best of 5
/// rounds of 4-8 ms each (40-50 ms in all, ramp-up included; the best, because a shared
/// machine only ever slows a loop down). What `tconv bench` divides by for its "% peak"
/// column; on this project's Zen 5 machine it measured 243-262 GFLOP/s per core with
/// AVX-512 and 122-124 with AVX2.
pub fn fma_peak_gflops(isa: Isa) -> f64 {
    let isa = isa.or_below();
    let mut best: f64 = 0.0;
    let mut iters: u64 = 1 << 14;
    let mut rounds = 0;
    while rounds < 5 {
        let t = std::time::Instant::now();
        let lanes = fma_loop(isa, iters);
        let secs = t.elapsed().as_secs_f64();
        // Grow the loop until a round takes a few milliseconds, then count the rounds.
        if secs < 0.004 {
            iters *= 2;
            continue;
        }
        let flops = 2.0 * (CHAINS as f64) * (lanes as f64) * iters as f64;
        best = best.max(flops / secs / 1e9);
        rounds += 1;
    }
    best
}

/// `iters` rounds of `CHAINS` FMAs on `isa`'s vectors; the lanes per vector.
fn fma_loop(isa: Isa, iters: u64) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 {
            // SAFETY: `or_below` returned AVX-512, so the CPU has AVX-512F.
            unsafe { peak_avx512(iters) };
            return 16;
        }
        if isa == Isa::Avx2 {
            // SAFETY: `or_below` returned AVX2, so the CPU has AVX2 and FMA.
            unsafe { peak_avx2(iters) };
            return 8;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    // The portable path: one lane, a multiply and an add (a fused `mul_add` is a library
    // call on CPUs the portable code is compiled for).
    let mut acc = [1.0f32; CHAINS];
    for _ in 0..iters {
        for a in &mut acc {
            *a = *a * std::hint::black_box(0.999_999_9) + 1e-9;
        }
    }
    std::hint::black_box(acc);
    1
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn peak_avx512(iters: u64) {
    use std::arch::x86_64::*;
    let (b, c) = (_mm512_set1_ps(0.999_999_9), _mm512_set1_ps(1e-9));
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        // An explicit loop (not a closure) so that it is compiled with the feature.
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, b, c);
        }
    }
    std::hint::black_box(acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn peak_avx2(iters: u64) {
    use std::arch::x86_64::*;
    let (b, c) = (_mm256_set1_ps(0.999_999_9), _mm256_set1_ps(1e-9));
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    std::hint::black_box(acc);
}

/// Bytes of the last-level data cache as CPUID describes it (its deterministic cache
/// parameters: leaf 4 on Intel, 0x8000_001D on AMD), read once; `None` on other CPUs and
/// architectures. Under a hypervisor this is the cache the guest is told of.
pub(crate) fn last_level_cache_bytes() -> Option<usize> {
    caches().iter().max_by_key(|c| c.0).map(|c| c.1)
}

/// Bytes of the level-2 data (or unified) cache one core has, as for
/// [`last_level_cache_bytes`].
pub(crate) fn l2_cache_bytes() -> Option<usize> {
    caches().iter().find(|c| c.0 == 2).map(|c| c.1)
}

/// Whether this CPU runs AVX-512 on 256-bit units (AMD's Zen 4, CPUID family 0x19 with
/// AVX-512F: each 512-bit multiply-add issues as two halves, so its FMA peak is that of
/// AVX2), read once. There the GEMMs take twice as long per product as on a full-width
/// core while the Winograd tiles' transforms (loads, stores, adds) do not, which the
/// weight gradient's cost model weighs ([`crate::fast::winograd_weight::pays`]); and every
/// register tile from 3×4 up keeps up with the FMAs, which the planner's tile choice weighs
/// (`plan::choose::half_width`).
pub(crate) fn avx512_half_width() -> bool {
    static HALF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HALF.get_or_init(|| Isa::Avx512.available() && amd_family() == Some(0x19))
}

/// The CPU family of an AMD processor (base plus extended family, CPUID leaf 1).
#[cfg(target_arch = "x86_64")]
fn amd_family() -> Option<u32> {
    let (vendor, highest) = vendor();
    if &vendor != b"AuthenticAMD" || highest < 1 {
        return None;
    }
    let eax = cpuid(1, 0).eax;
    let base = (eax >> 8) & 0xf;
    Some(if base == 0xf {
        base + ((eax >> 20) & 0xff)
    } else {
        base
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn amd_family() -> Option<u32> {
    None
}

/// The data and unified caches CPUID describes: `(level, bytes)`, read once.
fn caches() -> &'static [(u32, usize)] {
    static CACHES: std::sync::OnceLock<Vec<(u32, usize)>> = std::sync::OnceLock::new();
    CACHES.get_or_init(detect_caches)
}

/// CPUID leaf `leaf`, sub-leaf `sub`.
#[cfg(target_arch = "x86_64")]
fn cpuid(leaf: u32, sub: u32) -> std::arch::x86_64::CpuidResult {
    // CPUID is part of the x86-64 baseline. The intrinsic is an `unsafe fn` in older Rust
    // (this crate's minimum, 1.89, among them) and safe in newer (1.95, used here).
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::__cpuid_count(leaf, sub)
    }
}

/// The CPU's vendor string (CPUID leaf 0) and the highest standard leaf it has.
#[cfg(target_arch = "x86_64")]
fn vendor() -> ([u8; 12], u32) {
    let id = cpuid(0, 0);
    let mut vendor = [0; 12];
    for (chunk, r) in vendor.chunks_mut(4).zip([id.ebx, id.edx, id.ecx]) {
        chunk.copy_from_slice(&r.to_le_bytes());
    }
    (vendor, id.eax)
}

#[cfg(target_arch = "x86_64")]
fn detect_caches() -> Vec<(u32, usize)> {
    let (vendor, highest) = vendor();
    let leaf = match &vendor {
        b"GenuineIntel" if highest >= 4 => 4,
        b"AuthenticAMD" if cpuid(0x8000_0000, 0).eax >= 0x8000_001D => 0x8000_001D,
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for sub in 0..16 {
        let r = cpuid(leaf, sub);
        match r.eax & 0x1f {
            0 => break,
            2 => continue, // an instruction cache
            _ => {}
        }
        let field = |v: u32, shift: u32, bits: u32| ((v >> shift) & ((1 << bits) - 1)) as usize + 1;
        let bytes = field(r.ebx, 22, 10)
            * field(r.ebx, 12, 10)
            * field(r.ebx, 0, 12)
            * (r.ecx as usize + 1);
        out.push(((r.eax >> 5) & 7, bytes));
    }
    out
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_caches() -> Vec<(u32, usize)> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where CPUID describes the caches, the last level holds at least 256 KiB and less
    /// than 4 GiB, and the L2 (where described) at least 64 KiB and no more than it.
    #[test]
    fn cache_sizes_are_plausible() {
        if let Some(bytes) = last_level_cache_bytes() {
            assert!((256 << 10..4 << 30).contains(&bytes), "{bytes}");
            if let Some(l2) = l2_cache_bytes() {
                assert!((64 << 10..=bytes).contains(&l2), "{l2} of {bytes}");
            }
        }
    }

    /// The measured peak is a positive, finite rate, and vectors beat scalars where the
    /// CPU has them (by far: 8 or 16 lanes against 1).
    #[test]
    fn fma_peak_is_measured() {
        let scalar = fma_peak_gflops(Isa::Scalar);
        assert!(scalar.is_finite() && scalar > 0.0, "{scalar}");
        let best = Isa::Avx512.or_below();
        if best != Isa::Scalar {
            let v = fma_peak_gflops(best);
            assert!(v > 2.0 * scalar, "{best}: {v} against scalar {scalar}");
        }
    }
}
