//! In-place microkernels: like [`super::kernels`], but reading the source directly through
//! per-tap lane masks instead of a packed panel. Packing costs one copy per input value per
//! tile, repaid only when many output channels reuse it; for layers with few output
//! channels per group (depthwise, RGB outputs) reading in place is faster.

use super::kernels::MAX_V;
use super::Isa;
use crate::tensor::Element;

/// One tap of one tile: the source index of lane 0 of vector 0 (channel 0), and the live
/// lanes of each vector as a bit mask.
#[derive(Clone, Copy, Debug, Default)]
pub struct TapRun {
    /// Index into the source (may be out of range where no lane is live).
    pub base: isize,
    /// Live lanes per vector.
    pub masks: [u32; MAX_V],
}

/// What an in-place kernel reads.
pub struct InplaceArgs<'a, T> {
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
    /// Depthwise mode when nonzero: row `m` reads its own input channel, `row_stride`
    /// elements after row `m - 1`'s (and `channels` is 1). Zero: all rows share the input.
    pub row_stride: usize,
    /// Rows that exist (depthwise mode reads nothing for rows at or past this).
    pub live_rows: usize,
}

/// An in-place kernel: writes the tile `out[m][v*LANES + lane]` (`MR × V·LANES`).
/// Panics if a live lane of any tap and channel would fall outside `x`, or `w`/`out` are short.
pub type InplaceFn<T> = fn(&InplaceArgs<'_, T>, &mut [T]);

/// Input channels summed over every tap before the next block of them. A tile's source
/// lines for so many channels stay in L1 while each tap reads them again; all channels at
/// once would evict each other (channel planes a multiple of 4 KiB apart share L1 sets):
/// dcgan4 (3 output channels, 64 input) 1.15x faster, a single output channel from 64
/// input channels 1.2-1.3x.
pub const CHANNEL_BLOCK: usize = 8;

/// Check that every live lane lies inside `x` for every channel: per tap only the lowest
/// and highest live lane matter, so this costs O(taps · V). (Mask bits past a vector's lanes
/// only widen the checked range.)
#[inline]
fn check<T>(a: &InplaceArgs<'_, T>, mr: usize, v: usize, lanes: usize, out_len: usize) {
    assert!(a.w.len() >= a.taps.len() * a.channels * mr && out_len >= mr * v * lanes && v <= MAX_V);
    assert!(
        a.row_stride == 0 || a.channels == 1,
        "depthwise rows read one channel each"
    );
    let rows = if a.row_stride == 0 {
        1
    } else {
        a.live_rows.min(mr)
    };
    let span = (a.channels.max(1) - 1) * a.channel_stride + (rows.max(1) - 1) * a.row_stride;
    let len = a.x.len() as isize;
    for t in a.taps {
        let masks = &t.masks[..v];
        let Some(first) = masks.iter().position(|&m| m != 0) else {
            continue;
        };
        let last = masks.iter().rposition(|&m| m != 0).unwrap_or(first);
        let lo = (first * lanes) as isize + masks[first].trailing_zeros() as isize;
        let hi = (last * lanes) as isize + 31 - masks[last].leading_zeros() as isize;
        assert!(
            t.base + lo >= 0 && t.base + hi + (span as isize) < len,
            "live lane outside the source"
        );
    }
}

fn portable_kernel<T: Element, const MR: usize, const V: usize>(
    a: &InplaceArgs<'_, T>,
    out: &mut [T],
) {
    portable_body::<T, MR, V, false>(a, out)
}

/// The portable kernel's body; with `FUSED`, each product added by one fused multiply-add.
/// A vector whose lanes are all live is copied whole (a vector load once compiled for a
/// CPU's vectors, as f64's kernels are), the others lane by lane.
#[inline(always)]
fn portable_body<T: Element, const MR: usize, const V: usize, const FUSED: bool>(
    a: &InplaceArgs<'_, T>,
    out: &mut [T],
) {
    const L: usize = 8;
    const FULL: u32 = (1 << L) - 1;
    check(a, MR, V, L, out.len());
    let mut acc = [[[T::zero(); L]; V]; MR];
    // One row of accumulators plus `w` times the loaded vectors.
    let madd = |row: &mut [[T; L]; V], w: T, xv: &[[T; L]; V]| {
        for vi in 0..V {
            for lane in 0..L {
                row[vi][lane] = if FUSED {
                    w.mul_add(xv[vi][lane], row[vi][lane])
                } else {
                    row[vi][lane] + w * xv[vi][lane]
                };
            }
        }
    };
    // The live lanes of vector `vi` of a tap from `start` (an index into `x` when all are
    // live: checked).
    let load = |xv: &mut [T; L], mask: u32, start: isize| {
        if mask & FULL == FULL {
            xv.copy_from_slice(&a.x[start as usize..start as usize + L]);
        } else {
            for (lane, slot) in xv.iter_mut().enumerate() {
                *slot = if mask & (1 << lane) != 0 {
                    a.x[(start + lane as isize) as usize]
                } else {
                    T::zero()
                };
            }
        }
    };
    if a.row_stride != 0 {
        // Depthwise: row m reads its own channel.
        for (t, wm) in a.taps.iter().zip(a.w.chunks_exact(MR)) {
            for m in 0..a.live_rows.min(MR) {
                let mut xv = [[T::zero(); L]; V];
                for (vi, xvv) in xv.iter_mut().enumerate() {
                    load(
                        xvv,
                        t.masks[vi],
                        t.base + (m * a.row_stride + vi * L) as isize,
                    );
                }
                madd(&mut acc[m], wm[m], &xv);
            }
        }
    } else {
        for c0 in (0..a.channels).step_by(CHANNEL_BLOCK) {
            let c1 = (c0 + CHANNEL_BLOCK).min(a.channels);
            for (ti, t) in a.taps.iter().enumerate() {
                for ci in c0..c1 {
                    let mut xv = [[T::zero(); L]; V];
                    for (vi, xvv) in xv.iter_mut().enumerate() {
                        load(
                            xvv,
                            t.masks[vi],
                            t.base + (vi * L + ci * a.channel_stride) as isize,
                        );
                    }
                    let wm = &a.w[(ti * a.channels + ci) * MR..][..MR];
                    for (row, &w) in acc.iter_mut().zip(wm) {
                        madd(row, w, &xv);
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

/// A SIMD in-place kernel's body, `$name::<MR, V>` compiled for `$features`, for one
/// element type `$t` in registers of `$lanes` lanes through its intrinsics (zero,
/// broadcast, whole load, fused multiply-add, store); a tap's lane bits (`t.masks[vi]`, bit
/// `i`: lane `i` of vector `vi` is live) become a mask by `$mask`, through which
/// `$masked` loads: f32 on AVX2 (`VMASKMOVPS` masks, 8 lanes) and AVX-512 (`_ps`, 16), f64
/// on AVX-512 (`_pd`, 8).
///
/// The body's `# Safety`: the features available and `check` passed for
/// `(a, MR, V, $lanes)`.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_body {
    ($name:ident, $features:literal, $t:ty, $lanes:expr,
     [$zero:ident, $set1:ident, $loadu:ident, $fma:ident, $store:ident],
     |$bits:ident| $mask:expr, |$q:ident, $mq:ident| $masked:expr) => {
        /// # Safety
        /// The target features available and `check` passed for `(a, MR, V, lanes)`.
        #[target_feature(enable = $features)]
        unsafe fn $name<const MR: usize, const V: usize>(a: &InplaceArgs<'_, $t>, out: &mut [$t]) {
            let mut acc = [[$zero(); V]; MR];
            let x = a.x.as_ptr();
            let wp = a.w.as_ptr();
            // Vector `vi`'s mask of tap `t` (lane `i` live where bit `i` of its bits is set).
            macro_rules! mask {
                ($tap:expr, $vi:expr) => {{
                    let $bits = $tap.masks[$vi];
                    $mask
                }};
            }
            if a.row_stride != 0 {
                // Depthwise: row m reads its own channel, `row_stride` further on.
                for (ti, t) in a.taps.iter().enumerate() {
                    for (m, row) in acc.iter_mut().enumerate().take(a.live_rows) {
                        let p = x.wrapping_offset(t.base).wrapping_add(m * a.row_stride);
                        let wv = $set1(*wp.add(ti * MR + m));
                        for (vi, r) in row.iter_mut().enumerate() {
                            // Live lanes are inside `x` (checked); masked-off lanes are not
                            // accessed.
                            let ($q, $mq) = (p.wrapping_add(vi * $lanes), mask!(t, vi));
                            *r = $fma(wv, $masked, *r);
                        }
                    }
                }
            } else {
                for c0 in (0..a.channels).step_by(super::CHANNEL_BLOCK) {
                    let c1 = (c0 + super::CHANNEL_BLOCK).min(a.channels);
                    for (ti, t) in a.taps.iter().enumerate() {
                        let mut p = x
                            .wrapping_offset(t.base)
                            .wrapping_add(c0 * a.channel_stride);
                        let mut w = wp.add((ti * a.channels + c0) * MR);
                        // The tap's channels, each vector loaded through `$ld`.
                        macro_rules! channels {
                            (|$vi:ident, $qq:ident| $ld:expr) => {
                                for _ in c0..c1 {
                                    let mut xv = [$zero(); V];
                                    for ($vi, slot) in xv.iter_mut().enumerate() {
                                        let $qq = p.wrapping_add($vi * $lanes);
                                        *slot = $ld;
                                    }
                                    for (m, row) in acc.iter_mut().enumerate() {
                                        let wv = $set1(*w.add(m));
                                        for vi in 0..V {
                                            row[vi] = $fma(wv, xv[vi], row[vi]);
                                        }
                                    }
                                    w = w.add(MR);
                                    p = p.wrapping_add(a.channel_stride);
                                }
                            };
                        }
                        // Live lanes are inside `x` (checked): a tap whose lanes are all
                        // live loads whole vectors (masked loads slowed each channel step);
                        // otherwise masked-off lanes are not accessed.
                        let all = (1u32 << $lanes) - 1;
                        if t.masks[..V].iter().all(|&m| m & all == all) {
                            channels!(|vi, q| $loadu(q));
                        } else {
                            channels!(|vi, q| {
                                let ($q, $mq) = (q, mask!(t, vi));
                                $masked
                            });
                        }
                    }
                }
            }
            for (m, row) in acc.iter().enumerate() {
                for (vi, v) in row.iter().enumerate() {
                    $store(out.as_mut_ptr().add((m * V + vi) * $lanes), *v);
                }
            }
        }
    };
}

/// f64 in-place kernels in the portable kernels' layout (8 lanes a vector): AVX-512 ones (a
/// register a vector, masked loads), or the portable kernel compiled for AVX2 and FMA; each
/// product one fused multiply-add (as f64's packed kernels, [`super::kernels::f64_kernel`]).
#[cfg(target_arch = "x86_64")]
mod f64x {
    use super::{portable_body, InplaceArgs};
    use std::arch::x86_64::{
        __mmask8, _mm512_fmadd_pd, _mm512_loadu_pd, _mm512_maskz_loadu_pd, _mm512_set1_pd,
        _mm512_setzero_pd, _mm512_storeu_pd,
    };

    simd_body!(
        avx512_body,
        "avx512f",
        f64,
        8,
        [
            _mm512_setzero_pd,
            _mm512_set1_pd,
            _mm512_loadu_pd,
            _mm512_fmadd_pd,
            _mm512_storeu_pd
        ],
        |bits| bits as __mmask8,
        |q, m| _mm512_maskz_loadu_pd(m, q)
    );

    /// # Safety
    /// AVX2 and FMA available.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_body<const MR: usize, const V: usize>(
        a: &InplaceArgs<'_, f64>,
        out: &mut [f64],
    ) {
        portable_body::<f64, MR, V, true>(a, out)
    }

    /// The AVX-512 f64 in-place kernel (checks the CPU and the operands).
    pub fn avx512<const MR: usize, const V: usize>(a: &InplaceArgs<'_, f64>, out: &mut [f64]) {
        super::check(a, MR, V, 8, out.len());
        assert!(is_x86_feature_detected!("avx512f"));
        // Safety: the features and operands were just checked.
        unsafe { avx512_body::<MR, V>(a, out) }
    }

    /// The AVX2 f64 in-place kernel (checks the CPU; the body checks the operands).
    pub fn avx2<const MR: usize, const V: usize>(a: &InplaceArgs<'_, f64>, out: &mut [f64]) {
        assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
        // Safety: the features were just checked.
        unsafe { avx2_body::<MR, V>(a, out) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::InplaceArgs;
    use std::arch::x86_64::*;

    simd_body!(
        avx2_body,
        "avx2,fma",
        f32,
        8,
        [
            _mm256_setzero_ps,
            _mm256_set1_ps,
            _mm256_loadu_ps,
            _mm256_fmadd_ps,
            _mm256_storeu_ps
        ],
        |bits| {
            // Lane i live where bit i is set.
            let lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
            let b = _mm256_set1_epi32(bits as i32);
            _mm256_cmpeq_epi32(_mm256_and_si256(b, lane), lane)
        },
        |q, m| _mm256_maskload_ps(q, m)
    );

    pub fn avx2<const MR: usize, const V: usize>(a: &InplaceArgs<'_, f32>, out: &mut [f32]) {
        super::check(a, MR, V, 8, out.len());
        assert!(
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            "AVX2+FMA kernel on a CPU without it"
        );
        // Safety: operands checked above.
        unsafe { avx2_body::<MR, V>(a, out) }
    }

    simd_body!(
        avx512_body,
        "avx512f",
        f32,
        16,
        [
            _mm512_setzero_ps,
            _mm512_set1_ps,
            _mm512_loadu_ps,
            _mm512_fmadd_ps,
            _mm512_storeu_ps
        ],
        |bits| bits as __mmask16,
        |q, m| _mm512_maskz_loadu_ps(m, q)
    );

    pub fn avx512<const MR: usize, const V: usize>(a: &InplaceArgs<'_, f32>, out: &mut [f32]) {
        super::check(a, MR, V, 16, out.len());
        assert!(
            is_x86_feature_detected!("avx512f"),
            "AVX-512 kernel on a CPU without it"
        );
        // Safety: operands checked above.
        unsafe { avx512_body::<MR, V>(a, out) }
    }
}

/// Tile shapes for in-place kernels (few output channels, more positions per load).
pub fn tile_shapes(isa: Isa) -> &'static [(usize, usize, f32)] {
    match isa {
        Isa::Avx512 => &[
            (6, 4, 0.7),
            (4, 4, 0.6),
            (3, 4, 0.55),
            (2, 4, 0.45),
            (1, 4, 0.3),
        ],
        Isa::Avx2 | Isa::Scalar => &[
            (6, 2, 0.6),
            (3, 3, 0.55),
            (2, 4, 0.45),
            (1, 8, 0.32),
            (1, 4, 0.3),
        ],
    }
}

/// Tile shapes for `T`'s in-place kernels in a plan of `isa`: [`tile_shapes`], but for f64
/// where its kernels are AVX-512 ones ([`f64_kernel`]), which take AVX-512's shapes (four
/// vectors of 8 lanes; the same efficiencies).
pub fn tile_shapes_for<T: 'static>(isa: Isa) -> &'static [(usize, usize, f32)] {
    // (`loops_for` differs from `isa` only for f64 on `Scalar`.)
    match (isa, isa.loops_for::<T>()) {
        (Isa::Scalar, Isa::Avx512) => tile_shapes(Isa::Avx512),
        _ => tile_shapes(isa),
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

/// The portable in-place kernel for a tile shape.
pub fn portable<T: Element>(mr: usize, v: usize) -> Option<InplaceFn<T>> {
    table!(
        mr,
        v,
        |M, W| portable_kernel::<T, M, W> as InplaceFn<T>,
        [(6, 2), (3, 3), (2, 4), (1, 8), (1, 4)]
    )
}

/// The f64 in-place kernel for a tile shape (those of [`tile_shapes_for`]`::<f64>`): an
/// AVX-512 one, or the portable one compiled for AVX2 with FMA, as this CPU has them and
/// `TCONV_ISA` allows, else the portable one.
pub fn f64_kernel(mr: usize, v: usize) -> Option<InplaceFn<f64>> {
    #[cfg(target_arch = "x86_64")]
    {
        let isa = Isa::Scalar.loops_for::<f64>();
        if isa != Isa::Scalar {
            return if isa == Isa::Avx512 {
                table!(
                    mr,
                    v,
                    |M, W| f64x::avx512::<M, W> as InplaceFn<f64>,
                    [(6, 4), (4, 4), (3, 4), (2, 4), (1, 4)]
                )
            } else {
                table!(
                    mr,
                    v,
                    |M, W| f64x::avx2::<M, W> as InplaceFn<f64>,
                    [(6, 2), (3, 3), (2, 4), (1, 8), (1, 4)]
                )
            };
        }
    }
    portable::<f64>(mr, v)
}

/// An f32 in-place kernel for `isa` and a tile shape.
pub fn f32_kernel(isa: Isa, mr: usize, v: usize) -> Option<InplaceFn<f32>> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => table!(
            mr,
            v,
            |M, W| x86::avx512::<M, W> as InplaceFn<f32>,
            [(6, 4), (4, 4), (3, 4), (2, 4), (1, 4)]
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => table!(
            mr,
            v,
            |M, W| x86::avx2::<M, W> as InplaceFn<f32>,
            [(6, 2), (3, 3), (2, 4), (1, 8), (1, 4)]
        ),
        _ => portable::<f32>(mr, v),
    }
}
