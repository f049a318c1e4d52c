//! Microkernels: a register tile of `MR` output channels × `V` vectors of output positions.
//!
//! For each tap and input channel the kernel loads `V` vectors of consecutive source values
//! (masked: dead lanes read as zero and are never touched in memory), broadcasts `MR`
//! packed weights, and accumulates `MR·V` fused multiply-adds; all taps of a phase are
//! summed in registers before a single store. The body is written once per ISA as a
//! const-generic function; a table instantiates the tile shapes the planner may choose.

use crate::tensor::Element;

/// Most vectors per tile.
pub const MAX_V: usize = 4;

/// One tap of one tile: the source index of lane 0 of vector 0 (for channel 0), and the live
/// lanes of each vector as a bit mask.
#[derive(Clone, Copy, Debug, Default)]
pub struct TapRun {
    /// Index into the source slice (may be negative or past the end where no lane is live).
    pub base: isize,
    /// Live lanes per vector.
    pub masks: [u32; MAX_V],
}

/// What a kernel reads.
pub struct KernelArgs<'a, T> {
    /// The whole source buffer.
    pub x: &'a [T],
    /// Elements between consecutive input channels.
    pub channel_stride: usize,
    /// Input channels to sum over.
    pub channels: usize,
    /// The taps of this phase for this tile.
    pub taps: &'a [TapRun],
    /// Packed weights `[tap][ci][MR]`.
    pub w: &'a [T],
}

/// A kernel: writes the tile `out[m][v*LANES + lane]` (`MR × V·LANES`, row-major).
///
/// # Safety
/// Every live lane of every tap must lie inside `x` for every channel
/// (`base + v*LANES + lane + ci*channel_stride` in bounds), and `w` must hold
/// `taps.len() * channels * MR` values. [`check_args`] verifies this in debug builds.
pub type KernelFn<T> = unsafe fn(&KernelArgs<'_, T>, &mut [T]);

/// Debug-build check of the kernel contract.
pub fn check_args<T>(a: &KernelArgs<'_, T>, mr: usize, v: usize, lanes: usize, out_len: usize) {
    debug_assert!(a.w.len() >= a.taps.len() * a.channels * mr, "packed weights too short");
    debug_assert!(out_len >= mr * v * lanes, "tile buffer too short");
    if cfg!(debug_assertions) && a.channels > 0 {
        for t in a.taps {
            for (vi, &mask) in t.masks.iter().enumerate().take(v) {
                for lane in 0..lanes {
                    if mask & (1 << lane) != 0 {
                        let first = t.base + (vi * lanes + lane) as isize;
                        let last = first + ((a.channels - 1) * a.channel_stride) as isize;
                        assert!(first >= 0 && (last as usize) < a.x.len(), "live lane out of bounds");
                    }
                }
            }
        }
    }
}

/// Portable kernel for any element type: 8 lanes per "vector", checked indexing.
pub fn scalar_kernel<T: Element, const MR: usize, const V: usize>(a: &KernelArgs<'_, T>, out: &mut [T]) {
    const L: usize = 8;
    let mut acc = [[[T::zero(); L]; V]; MR];
    let mut w = a.w.chunks_exact(MR);
    for t in a.taps {
        for ci in 0..a.channels {
            let mut xv = [[T::zero(); L]; V];
            for (vi, xvv) in xv.iter_mut().enumerate() {
                for (lane, slot) in xvv.iter_mut().enumerate() {
                    if t.masks[vi] & (1 << lane) != 0 {
                        let i = t.base + (vi * L + lane + ci * a.channel_stride) as isize;
                        *slot = a.x[i as usize];
                    }
                }
            }
            let wm = w.next().expect("packed weights cover every tap and channel");
            for m in 0..MR {
                for vi in 0..V {
                    for lane in 0..L {
                        acc[m][vi][lane] = acc[m][vi][lane] + wm[m] * xv[vi][lane];
                    }
                }
            }
        }
    }
    for m in 0..MR {
        for vi in 0..V {
            out[(m * V + vi) * L..(m * V + vi + 1) * L].copy_from_slice(&acc[m][vi]);
        }
    }
}

/// # Safety
/// See [`KernelFn`].
unsafe fn scalar_entry<T: Element, const MR: usize, const V: usize>(a: &KernelArgs<'_, T>, out: &mut [T]) {
    scalar_kernel::<T, MR, V>(a, out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::KernelArgs;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn body512<const MR: usize, const V: usize>(a: &KernelArgs<'_, f32>, out: &mut [f32]) {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        let x = a.x.as_ptr();
        let mut wp = a.w.as_ptr();
        for t in a.taps {
            let mut masks = [0 as __mmask16; V];
            for (vi, m) in masks.iter_mut().enumerate() {
                *m = t.masks[vi] as __mmask16;
            }
            let mut p = x.wrapping_offset(t.base);
            for _ in 0..a.channels {
                let mut xv = [_mm512_setzero_ps(); V];
                for vi in 0..V {
                    // Safety: live lanes are in bounds (KernelFn contract); dead lanes are
                    // masked off and not accessed.
                    xv[vi] = _mm512_maskz_loadu_ps(masks[vi], p.wrapping_add(vi * 16));
                }
                for (m, row) in acc.iter_mut().enumerate() {
                    // Safety: `w` holds taps*channels*MR values.
                    let wv = _mm512_set1_ps(*wp.add(m));
                    for vi in 0..V {
                        row[vi] = _mm512_fmadd_ps(wv, xv[vi], row[vi]);
                    }
                }
                wp = wp.add(MR);
                p = p.wrapping_add(a.channel_stride);
            }
        }
        let o = out.as_mut_ptr();
        for (m, row) in acc.iter().enumerate() {
            for (vi, v) in row.iter().enumerate() {
                // Safety: `out` holds MR*V*16 values (checked by the caller).
                _mm512_storeu_ps(o.add((m * V + vi) * 16), *v);
            }
        }
    }

    /// # Safety
    /// AVX-512F must be available; see `KernelFn`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512<const MR: usize, const V: usize>(a: &KernelArgs<'_, f32>, out: &mut [f32]) {
        super::check_args(a, MR, V, 16, out.len());
        body512::<MR, V>(a, out)
    }

    #[inline(always)]
    unsafe fn body256<const MR: usize, const V: usize>(a: &KernelArgs<'_, f32>, out: &mut [f32]) {
        let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let mut acc = [[_mm256_setzero_ps(); V]; MR];
        let x = a.x.as_ptr();
        let mut wp = a.w.as_ptr();
        for t in a.taps {
            let mut masks = [_mm256_setzero_si256(); V];
            for (vi, m) in masks.iter_mut().enumerate() {
                let b = _mm256_set1_epi32(t.masks[vi] as i32);
                *m = _mm256_cmpeq_epi32(_mm256_and_si256(b, bits), bits);
            }
            let mut p = x.wrapping_offset(t.base);
            for _ in 0..a.channels {
                let mut xv = [_mm256_setzero_ps(); V];
                for vi in 0..V {
                    // Safety: as in body512; VMASKMOVPS does not touch masked-off lanes.
                    xv[vi] = _mm256_maskload_ps(p.wrapping_add(vi * 8), masks[vi]);
                }
                for (m, row) in acc.iter_mut().enumerate() {
                    // Safety: `w` holds taps*channels*MR values.
                    let wv = _mm256_set1_ps(*wp.add(m));
                    for vi in 0..V {
                        row[vi] = _mm256_fmadd_ps(wv, xv[vi], row[vi]);
                    }
                }
                wp = wp.add(MR);
                p = p.wrapping_add(a.channel_stride);
            }
        }
        let o = out.as_mut_ptr();
        for (m, row) in acc.iter().enumerate() {
            for (vi, v) in row.iter().enumerate() {
                // Safety: `out` holds MR*V*8 values (checked by the caller).
                _mm256_storeu_ps(o.add((m * V + vi) * 8), *v);
            }
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available; see `KernelFn`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2<const MR: usize, const V: usize>(a: &KernelArgs<'_, f32>, out: &mut [f32]) {
        super::check_args(a, MR, V, 8, out.len());
        body256::<MR, V>(a, out)
    }
}

/// Tile shapes `(MR, V)` per ISA, best register use first. AVX-512 has 32 registers
/// (≤ 24 accumulators + loads); AVX2 and the portable path 16, so `MR·V + V + 1 ≤ 16`.
pub fn tile_shapes(isa: super::Isa) -> &'static [(usize, usize)] {
    match isa {
        super::Isa::Avx512 => {
            &[(24, 1), (12, 2), (8, 3), (6, 4), (4, 4), (3, 4), (2, 4), (1, 4), (16, 1), (8, 2)]
        }
        super::Isa::Avx2 | super::Isa::Scalar => &[(12, 1), (6, 2), (4, 3), (3, 3), (2, 4), (1, 4), (8, 1), (4, 2)],
    }
}

macro_rules! table {
    ($mr:expr, $v:expr, |$m:ident, $vv:ident| $make:expr, [$(($a:literal, $b:literal)),*]) => {
        match ($mr, $v) {
            $(($a, $b) => {
                const $m: usize = $a;
                const $vv: usize = $b;
                Some($make)
            })*
            _ => None,
        }
    };
}

/// The portable kernel for a tile shape (any element type).
pub fn portable<T: Element>(mr: usize, v: usize) -> Option<KernelFn<T>> {
    table!(mr, v, |M, W| scalar_entry::<T, M, W> as KernelFn<T>,
        [(12, 1), (6, 2), (4, 3), (3, 3), (2, 4), (1, 4), (8, 1), (4, 2)])
}

/// An f32 kernel for `isa` and a tile shape, if instantiated.
pub fn f32_kernel(isa: super::Isa, mr: usize, v: usize) -> Option<KernelFn<f32>> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx512 => table!(mr, v, |M, W| x86::avx512::<M, W> as KernelFn<f32>,
            [(24, 1), (12, 2), (8, 3), (6, 4), (4, 4), (3, 4), (2, 4), (1, 4), (16, 1), (8, 2)]),
        #[cfg(target_arch = "x86_64")]
        super::Isa::Avx2 => table!(mr, v, |M, W| x86::avx2::<M, W> as KernelFn<f32>,
            [(12, 1), (6, 2), (4, 3), (3, 3), (2, 4), (1, 4), (8, 1), (4, 2)]),
        _ => portable::<f32>(mr, v),
    }
}
