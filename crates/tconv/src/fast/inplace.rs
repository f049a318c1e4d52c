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
    const L: usize = 8;
    check(a, MR, V, L, out.len());
    let mut acc = [[[T::zero(); L]; V]; MR];
    let mut w = a.w.chunks_exact(MR);
    if a.row_stride != 0 {
        // Depthwise: row m reads its own channel.
        for t in a.taps {
            let wm = w.next().expect("checked length");
            for (m, row) in acc.iter_mut().enumerate().take(a.live_rows) {
                for (vi, rv) in row.iter_mut().enumerate() {
                    for (lane, slot) in rv.iter_mut().enumerate() {
                        if t.masks[vi] & (1 << lane) != 0 {
                            let i = t.base + (m * a.row_stride + vi * L + lane) as isize;
                            *slot = *slot + wm[m] * a.x[i as usize];
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
        return;
    }
    for t in a.taps {
        for ci in 0..a.channels {
            let mut xv = [[T::zero(); L]; V];
            for (vi, xvv) in xv.iter_mut().enumerate() {
                for (lane, slot) in xvv.iter_mut().enumerate() {
                    if t.masks[vi] & (1 << lane) != 0 {
                        *slot = a.x
                            [(t.base + (vi * L + lane + ci * a.channel_stride) as isize) as usize];
                    }
                }
            }
            let wm = w.next().expect("checked length");
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::InplaceArgs;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2+FMA available and `check` passed for `(a, MR, V, 8)`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_body<const MR: usize, const V: usize>(
        a: &InplaceArgs<'_, f32>,
        out: &mut [f32],
    ) {
        let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let mut acc = [[_mm256_setzero_ps(); V]; MR];
        let x = a.x.as_ptr();
        let mut wp = a.w.as_ptr();
        if a.row_stride != 0 {
            // Depthwise: row m reads its own channel, `row_stride` further on.
            for t in a.taps {
                let mut masks = [_mm256_setzero_si256(); V];
                for (vi, m) in masks.iter_mut().enumerate() {
                    let b = _mm256_set1_epi32(t.masks[vi] as i32);
                    *m = _mm256_cmpeq_epi32(_mm256_and_si256(b, bits), bits);
                }
                for (m, row) in acc.iter_mut().enumerate().take(a.live_rows) {
                    let p = x.wrapping_offset(t.base).wrapping_add(m * a.row_stride);
                    let wv = _mm256_broadcast_ss(&*wp.add(m));
                    for (vi, r) in row.iter_mut().enumerate() {
                        // Live lanes are inside `x` (checked); the others are not touched.
                        let xv = _mm256_maskload_ps(p.wrapping_add(vi * 8), masks[vi]);
                        *r = _mm256_fmadd_ps(wv, xv, *r);
                    }
                }
                wp = wp.add(MR);
            }
            for (m, row) in acc.iter().enumerate() {
                for (vi, v) in row.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add((m * V + vi) * 8), *v);
                }
            }
            return;
        }
        for t in a.taps {
            let mut masks = [_mm256_setzero_si256(); V];
            for (vi, m) in masks.iter_mut().enumerate() {
                let b = _mm256_set1_epi32(t.masks[vi] as i32);
                *m = _mm256_cmpeq_epi32(_mm256_and_si256(b, bits), bits);
            }
            let mut p = x.wrapping_offset(t.base);
            for _ in 0..a.channels {
                let mut xv = [_mm256_setzero_ps(); V];
                for (vi, slot) in xv.iter_mut().enumerate() {
                    // Live lanes are inside `x` (checked); VMASKMOVPS does not touch the others.
                    *slot = _mm256_maskload_ps(p.wrapping_add(vi * 8), masks[vi]);
                }
                for (m, row) in acc.iter_mut().enumerate() {
                    let wv = _mm256_broadcast_ss(&*wp.add(m));
                    for vi in 0..V {
                        row[vi] = _mm256_fmadd_ps(wv, xv[vi], row[vi]);
                    }
                }
                wp = wp.add(MR);
                p = p.wrapping_add(a.channel_stride);
            }
        }
        for (m, row) in acc.iter().enumerate() {
            for (vi, v) in row.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add((m * V + vi) * 8), *v);
            }
        }
    }

    pub fn avx2<const MR: usize, const V: usize>(a: &InplaceArgs<'_, f32>, out: &mut [f32]) {
        super::check(a, MR, V, 8, out.len());
        assert!(
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            "AVX2+FMA kernel on a CPU without it"
        );
        // Safety: operands checked above.
        unsafe { avx2_body::<MR, V>(a, out) }
    }

    /// # Safety
    /// AVX-512F available and `check` passed for `(a, MR, V, 16)`.
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_body<const MR: usize, const V: usize>(
        a: &InplaceArgs<'_, f32>,
        out: &mut [f32],
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        let x = a.x.as_ptr();
        let mut wp = a.w.as_ptr();
        if a.row_stride != 0 {
            // Depthwise: row m reads its own channel, `row_stride` further on.
            for t in a.taps {
                for (m, row) in acc.iter_mut().enumerate().take(a.live_rows) {
                    let p = x.wrapping_offset(t.base).wrapping_add(m * a.row_stride);
                    let wv = _mm512_set1_ps(*wp.add(m));
                    for (vi, r) in row.iter_mut().enumerate() {
                        // Live lanes are inside `x` (checked); masked-off lanes are not accessed.
                        let xv = _mm512_maskz_loadu_ps(
                            t.masks[vi] as __mmask16,
                            p.wrapping_add(vi * 16),
                        );
                        *r = _mm512_fmadd_ps(wv, xv, *r);
                    }
                }
                wp = wp.add(MR);
            }
            for (m, row) in acc.iter().enumerate() {
                for (vi, v) in row.iter().enumerate() {
                    _mm512_storeu_ps(out.as_mut_ptr().add((m * V + vi) * 16), *v);
                }
            }
            return;
        }
        for t in a.taps {
            let mut p = x.wrapping_offset(t.base);
            for _ in 0..a.channels {
                let mut xv = [_mm512_setzero_ps(); V];
                for (vi, slot) in xv.iter_mut().enumerate() {
                    // Live lanes are inside `x` (checked); masked-off lanes are not accessed.
                    *slot =
                        _mm512_maskz_loadu_ps(t.masks[vi] as __mmask16, p.wrapping_add(vi * 16));
                }
                for (m, row) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*wp.add(m));
                    for vi in 0..V {
                        row[vi] = _mm512_fmadd_ps(wv, xv[vi], row[vi]);
                    }
                }
                wp = wp.add(MR);
                p = p.wrapping_add(a.channel_stride);
            }
        }
        for (m, row) in acc.iter().enumerate() {
            for (vi, v) in row.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add((m * V + vi) * 16), *v);
            }
        }
    }

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
