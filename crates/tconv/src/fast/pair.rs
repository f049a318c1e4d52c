//! Pair kernels: the two last-axis phases of a stride-2 layer whose phases read the same
//! panel (kernel == stride: U-Net, V-Net), multiplied together and written straight from
//! the registers to the output, interleaved, with the bias added — no accumulator tile.
//!
//! A packed kernel of `MR` channels × `V` vectors runs as two halves of `MR/2` channels,
//! each holding both phases' sums (`MR/2 · 2 · V` accumulators, as many as the packed
//! kernel's). Each half of a vector (`LANES/2` lanes) goes to its own place: lane `j` of
//! half `h` of vector `v` lands at output `at[2v + h] + 2j` for phase 0 and one further for
//! phase 1, a full vector of interleaved values per half and channel. A run of positions
//! then need only be whole half vectors: rows of 8 positions on AVX-512 (4 on AVX2), each
//! vector's halves on two rows. Where every run is whole vectors (rows of 16 and more), the
//! plan takes kernels that store each vector's halves one after the other from one offset
//! (`HALVES` false), as before there were half-vector stores. Paired (6 rounds), against
//! the kernels of whole vectors only: with half-vector stores everywhere vnet3d and unet
//! read 0.81-0.96x; with this choice 0.93-0.94x in one order and 0.97-0.99x in the other,
//! where an identical binary in the second place reads 0.94-0.97x (no cost shown). Layers
//! with rows of 8 and 24 positions ran 1.10-1.18x faster than without pairs.
//! Each sum runs in the order the packed kernel runs it and the bias is added after, so the
//! results are bitwise those of the packed kernel and the interleaved store.

use super::kernels::MAX_V;
use super::Isa;

/// Half vectors a tile may hold.
pub const MAX_HALVES: usize = 2 * MAX_V;

/// Where a pair kernel writes: the output planes of the block's live channels (at most
/// `MR`), the half vectors stored and where each starts, and each live channel's bias.
pub struct PairOut<'a, 'p, T> {
    /// One plane per live channel of the block.
    pub planes: &'a mut [&'p mut [T]],
    /// Per half vector `2v + h` of the tile: where its `LANES` interleaved outputs start in
    /// a plane (read only for the half vectors in `stored`).
    pub at: [usize; MAX_HALVES],
    /// The half vectors stored: bit `2v + h` for half `h` of vector `v`.
    pub stored: u32,
    /// One bias per live channel.
    pub bias: &'a [T],
}

/// A pair kernel: `(w0, w1, panel, k, out)`: `w0`, `w1` the two phases' packed weight runs
/// (`[k][MR]` each), `panel` `k` rows of `V·LANES` values; writes, for half `h` of vector
/// `v` and its lanes `j < LANES/2`, `out.planes[c][at[2v + h] + 2j + r] =
/// Σ_i w_r[i][c] · panel[i][v·LANES + h·LANES/2 + j] + bias[c]`.
/// Panics where an operand is too short or a write would leave its plane.
pub type PairFn<T> = fn(&[T], &[T], &[T], usize, PairOut<'_, '_, T>);

/// The f32 pair kernel for `isa` and a packed tile shape `(MR, V)`, if instantiated:
/// storing half vectors each to its own place where `halves`, else whole vectors (each
/// vector's two halves one after the other: `at[2v + 1]` is not read).
pub fn f32_pair(isa: Isa, mr: usize, v: usize, halves: bool) -> Option<PairFn<f32>> {
    #[cfg(target_arch = "x86_64")]
    macro_rules! pick {
        ($f:ident, $h:literal, $v:literal) => {
            if halves {
                Some(x86::$f::<$h, $v, true> as PairFn<f32>)
            } else {
                Some(x86::$f::<$h, $v, false> as PairFn<f32>)
            }
        };
    }
    match (isa, mr, v) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, 8, 3) => pick!(avx512, 4, 3),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, 6, 4) => pick!(avx512, 3, 4),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, 12, 2) => pick!(avx512, 6, 2),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, 6, 2) => pick!(avx2, 3, 2),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, 12, 1) => pick!(avx2, 6, 1),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, 8, 1) => pick!(avx2, 4, 1),
        _ => {
            let _ = halves;
            None
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PairOut, MAX_HALVES};
    use std::arch::x86_64::*;

    /// The AVX-512 pair kernel (see [`both`]).
    pub fn avx512<const H: usize, const V: usize, const HALVES: bool>(
        w0: &[f32],
        w1: &[f32],
        panel: &[f32],
        k: usize,
        out: PairOut<'_, '_, f32>,
    ) {
        both::<H, V, true, HALVES>((w0, w1, panel, k), out)
    }

    /// The AVX2 pair kernel (see [`both`]).
    pub fn avx2<const H: usize, const V: usize, const HALVES: bool>(
        w0: &[f32],
        w1: &[f32],
        panel: &[f32],
        k: usize,
        out: PairOut<'_, '_, f32>,
    ) {
        both::<H, V, false, HALVES>((w0, w1, panel, k), out)
    }

    /// A pair kernel of `2·H` channels × `V` vectors (16 lanes `WIDE`, else 8): checks the
    /// operands (panics where one is too short or a write would leave its plane) and the
    /// CPU, then runs both halves of `H` channels.
    fn both<const H: usize, const V: usize, const WIDE: bool, const HALVES: bool>(
        (w0, w1, panel, k): (&[f32], &[f32], &[f32], usize),
        out: PairOut<'_, '_, f32>,
    ) {
        let (mr, lanes) = (2 * H, if WIDE { 16 } else { 8 });
        let live = out.planes.len();
        assert!(
            w0.len() >= k * mr
                && w1.len() >= k * mr
                && panel.len() >= k * V * lanes
                && live <= mr
                && out.bias.len() >= live
                && out.stored >> (2 * V) == 0
                && out.planes.iter().all(|p| (0..2 * V)
                    .filter(|&i| out.stored >> i & 1 == 1 && (HALVES || i % 2 == 0))
                    // A half vector's `LANES` values; whole, a vector's `2·LANES`.
                    .all(|i| {
                        let n = if HALVES { lanes } else { 2 * lanes };
                        out.at[i].checked_add(n).is_some_and(|e| e <= p.len())
                    })),
            "pair kernel operand too short"
        );
        let cpu = if WIDE {
            is_x86_feature_detected!("avx512f")
        } else {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        };
        assert!(cpu, "pair kernel on a CPU without its instructions");
        let (at, stored) = (out.at, out.stored);
        for c0 in [0, H].into_iter().filter(|&c0| c0 < live) {
            // The half's planes (null past the live channels) and biases.
            let mut dst = [std::ptr::null_mut::<f32>(); H];
            let mut bias = [0f32; H];
            for c in 0..H.min(live - c0) {
                dst[c] = out.planes[c0 + c].as_mut_ptr();
                bias[c] = out.bias[c0 + c];
            }
            let (w0, w1) = (w0.as_ptr().wrapping_add(c0), w1.as_ptr().wrapping_add(c0));
            let stores = (&dst, &bias, &at, stored);
            // Safety: the weights, panel and every write were bounds-checked above (null
            // planes are not written); the CPU features were detected.
            unsafe {
                if WIDE {
                    half512::<H, V, HALVES>(w0, w1, mr, panel.as_ptr(), k, stores)
                } else {
                    half256::<H, V, HALVES>(w0, w1, mr, panel.as_ptr(), k, stores)
                }
            }
        }
    }

    /// One AVX-512 half: `H` channels of both phases over `V` vectors, then the
    /// interleaved stores.
    ///
    /// # Safety
    /// AVX-512F available; `w0`, `w1` hold `k` rows of `mr` values (from the half's first
    /// channel), `b` `k` rows of `V·16`; each non-null `dst[c]` is writable at
    /// `at[i]..at[i] + 16` for each half vector `i` in `stored` (`!HALVES`: at
    /// `at[2v]..at[2v] + 32` for each vector `v` whose bit `2v` is in `stored`).
    #[target_feature(enable = "avx512f")]
    unsafe fn half512<const H: usize, const V: usize, const HALVES: bool>(
        w0: *const f32,
        w1: *const f32,
        mr: usize,
        b: *const f32,
        k: usize,
        (dst, bias, at, stored): (&[*mut f32; H], &[f32; H], &[usize; MAX_HALVES], u32),
    ) {
        let mut acc = [[[_mm512_setzero_ps(); V]; 2]; H];
        let (mut w0, mut w1, mut b) = (w0, w1, b);
        for _ in 0..k {
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, slot) in bv.iter_mut().enumerate() {
                *slot = _mm512_loadu_ps(b.add(v * 16));
            }
            for (c, pair) in acc.iter_mut().enumerate() {
                for (r, w) in [w0, w1].into_iter().enumerate() {
                    let av = _mm512_set1_ps(*w.add(c));
                    for v in 0..V {
                        pair[r][v] = _mm512_fmadd_ps(av, bv[v], pair[r][v]);
                    }
                }
            }
            w0 = w0.add(mr);
            w1 = w1.add(mr);
            b = b.add(V * 16);
        }
        let lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        let hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
        for (c, pair) in acc.iter().enumerate() {
            if dst[c].is_null() {
                continue;
            }
            let bv = _mm512_set1_ps(bias[c]);
            for v in 0..V {
                if stored >> (2 * v) & if HALVES { 3 } else { 1 } == 0 {
                    continue;
                }
                let x = _mm512_add_ps(pair[0][v], bv);
                let y = _mm512_add_ps(pair[1][v], bv);
                if !HALVES {
                    let d = dst[c].add(at[2 * v]);
                    _mm512_storeu_ps(d, _mm512_permutex2var_ps(x, lo, y));
                    _mm512_storeu_ps(d.add(16), _mm512_permutex2var_ps(x, hi, y));
                    continue;
                }
                if stored >> (2 * v) & 1 != 0 {
                    _mm512_storeu_ps(dst[c].add(at[2 * v]), _mm512_permutex2var_ps(x, lo, y));
                }
                if stored >> (2 * v + 1) & 1 != 0 {
                    let d = dst[c].add(at[2 * v + 1]);
                    _mm512_storeu_ps(d, _mm512_permutex2var_ps(x, hi, y));
                }
            }
        }
    }

    /// One AVX2 half: as [`half512`] on 8-lane vectors.
    ///
    /// # Safety
    /// AVX2 and FMA available; as [`half512`] with rows of `V·8` and writes of 8 values
    /// (`!HALVES`: 16).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn half256<const H: usize, const V: usize, const HALVES: bool>(
        w0: *const f32,
        w1: *const f32,
        mr: usize,
        b: *const f32,
        k: usize,
        (dst, bias, at, stored): (&[*mut f32; H], &[f32; H], &[usize; MAX_HALVES], u32),
    ) {
        let mut acc = [[[_mm256_setzero_ps(); V]; 2]; H];
        let (mut w0, mut w1, mut b) = (w0, w1, b);
        for _ in 0..k {
            let mut bv = [_mm256_setzero_ps(); V];
            for (v, slot) in bv.iter_mut().enumerate() {
                *slot = _mm256_loadu_ps(b.add(v * 8));
            }
            for (c, pair) in acc.iter_mut().enumerate() {
                for (r, w) in [w0, w1].into_iter().enumerate() {
                    let av = _mm256_broadcast_ss(&*w.add(c));
                    for v in 0..V {
                        pair[r][v] = _mm256_fmadd_ps(av, bv[v], pair[r][v]);
                    }
                }
            }
            w0 = w0.add(mr);
            w1 = w1.add(mr);
            b = b.add(V * 8);
        }
        for (c, pair) in acc.iter().enumerate() {
            if dst[c].is_null() {
                continue;
            }
            let bv = _mm256_set1_ps(bias[c]);
            for v in 0..V {
                if stored >> (2 * v) & if HALVES { 3 } else { 1 } == 0 {
                    continue;
                }
                let x = _mm256_add_ps(pair[0][v], bv);
                let y = _mm256_add_ps(pair[1][v], bv);
                let lo = _mm256_unpacklo_ps(x, y); // x0 y0 x1 y1 | x4 y4 x5 y5
                let hi = _mm256_unpackhi_ps(x, y); // x2 y2 x3 y3 | x6 y6 x7 y7
                if !HALVES {
                    let d = dst[c].add(at[2 * v]);
                    _mm256_storeu_ps(d, _mm256_permute2f128_ps(lo, hi, 0x20));
                    _mm256_storeu_ps(d.add(8), _mm256_permute2f128_ps(lo, hi, 0x31));
                    continue;
                }
                if stored >> (2 * v) & 1 != 0 {
                    let d = dst[c].add(at[2 * v]);
                    _mm256_storeu_ps(d, _mm256_permute2f128_ps(lo, hi, 0x20));
                }
                if stored >> (2 * v + 1) & 1 != 0 {
                    let d = dst[c].add(at[2 * v + 1]);
                    _mm256_storeu_ps(d, _mm256_permute2f128_ps(lo, hi, 0x31));
                }
            }
        }
    }
}
