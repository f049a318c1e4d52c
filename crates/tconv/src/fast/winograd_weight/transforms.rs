//! The Winograd weight gradient's transforms (gathered windows and tiles, combined rows of
//! a few tiles at a time), its output transform, and the transposes into the weight's
//! layout.

use std::mem::MaybeUninit;

use super::*;

/// `dst[c][r] = src[r][c]` for an `r × c` matrix `src` (for f32 with AVX: 8×8 blocks,
/// then 4×4 blocks of the rows and columns left, then element by element).
pub(super) fn transpose<T: Element>(src: &[T], r: usize, c: usize, dst: &mut [T]) {
    transpose_to(src, r, c, (dst.as_mut_ptr(), dst.len()));
}

/// [`transpose`] into memory not yet initialised (a result's allocation): each of the
/// `r·c` first values of `dst` is written.
pub(super) fn transpose_uninit<T: Element>(
    src: &[T],
    r: usize,
    c: usize,
    dst: &mut [MaybeUninit<T>],
) {
    transpose_to(src, r, c, (dst.as_mut_ptr().cast::<T>(), dst.len()));
}

/// [`transpose`] into `dst`, valid for writes of `dst.1` values (initialised or not).
fn transpose_to<T: Element>(src: &[T], r: usize, c: usize, (dst, dst_len): (*mut T, usize)) {
    assert!(src.len() >= r * c && dst_len >= r * c, "transpose bounds");
    #[cfg(target_arch = "x86_64")]
    if r >= 4 && c >= 4 && is_x86_feature_detected!("avx") {
        if let Some(s32) = crate::fast::as_f32(src) {
            // Safety: `T` is `f32` (`as_f32`); every load and store lies within the `r × c`
            // values checked above; AVX was detected.
            unsafe { transpose_avx(s32.as_ptr(), r, c, dst.cast::<f32>()) };
            return;
        }
    }
    // Safety: within the `r × c` values checked above.
    unsafe { transpose_range(src.as_ptr(), (0..r, 0..c), (r, c), dst) };
}

/// [`transpose`] element by element for rows `rows` and columns `cols` of the `r × c`
/// matrix.
///
/// # Safety
/// `src` valid for reads and `dst` for writes of `r·c` values.
unsafe fn transpose_range<T: Copy>(
    src: *const T,
    (rows, cols): (std::ops::Range<usize>, std::ops::Range<usize>),
    (r, c): (usize, usize),
    dst: *mut T,
) {
    for j in cols {
        for i in rows.clone() {
            dst.add(j * r + i).write(*src.add(i * c + j));
        }
    }
}

/// # Safety
/// AVX available; `src` and `dst` valid for `r·c` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_avx(src: *const f32, r: usize, c: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    let (r8, c8) = (r / 8 * 8, c / 8 * 8);
    for i0 in (0..r8).step_by(8) {
        for j0 in (0..c8).step_by(8) {
            let x: [__m256; 8] =
                std::array::from_fn(|i| _mm256_loadu_ps(src.add((i0 + i) * c + j0)));
            for (j, col) in crate::fast::direct::transpose8x8(x).iter().enumerate() {
                _mm256_storeu_ps(dst.add((j0 + j) * r + i0), *col);
            }
        }
    }
    // Four rows left (r = 12: a block of 12 channels): 4×4 blocks.
    let (r4, c4) = if r - r8 >= 4 {
        (r8 + 4, c / 4 * 4)
    } else {
        (r8, 0)
    };
    for j0 in (0..c4).step_by(4) {
        let x: [__m128; 4] = std::array::from_fn(|i| _mm_loadu_ps(src.add((r8 + i) * c + j0)));
        let t0 = _mm_unpacklo_ps(x[0], x[1]); // a0 b0 a1 b1
        let t1 = _mm_unpackhi_ps(x[0], x[1]); // a2 b2 a3 b3
        let t2 = _mm_unpacklo_ps(x[2], x[3]); // c0 d0 c1 d1
        let t3 = _mm_unpackhi_ps(x[2], x[3]); // c2 d2 c3 d3
        let cols = [
            _mm_movelh_ps(t0, t2),
            _mm_movehl_ps(t2, t0),
            _mm_movelh_ps(t1, t3),
            _mm_movehl_ps(t3, t1),
        ];
        for (j, col) in cols.iter().enumerate() {
            _mm_storeu_ps(dst.add((j0 + j) * r + r8), *col);
        }
    }
    // The rest element by element: columns past the 8×8 blocks, past the 4×4 ones, and
    // the rows past both.
    transpose_range(src, (0..r8, c8..c), (r, c), dst);
    transpose_range(src, (r8..r4, c4..c), (r, c), dst);
    transpose_range(src, (r4..r, 0..c), (r, c), dst);
}

/// A row block's output transform: its taps, `Aᵀ ⊗ …`, and the shapes of `M` and `dk`.
pub(super) struct Outputs<'a, T> {
    pub(super) taps: &'a [(usize, usize, usize)],
    pub(super) terms: &'a [Vec<(usize, T)>],
    pub(super) points: usize,
    /// Lane blocks `M` holds, the first of them lane block `first_lb` of `dk`.
    pub(super) lb: usize,
    pub(super) first_lb: usize,
    pub(super) tile_elems: usize,
    pub(super) tl: usize,
    pub(super) live_rows: usize,
    pub(super) cout_g: usize,
    pub(super) ksize: usize,
}

/// `∂L/∂w[k_s(j)] = Σ_ξ Aᵀ[j][ξ] M[s][ξ]` for a row block's `M` (`[s][ξ][lane block][tile]`)
/// into its rows of `dk` (`[ci][k][co]`); compiled for AVX2 and FMA where `simd`.
pub(super) fn output_transform<T: Element>(
    simd: bool,
    o: &Outputs<'_, T>,
    m: &[T],
    rows: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // Safety: as in [`transform`].
        unsafe { output_transform_avx2(o, m, rows) };
        return;
    }
    let _ = simd;
    output_body(o, m, rows);
}

/// # Safety
/// AVX2 and FMA available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_transform_avx2<T: Element>(o: &Outputs<'_, T>, m: &[T], rows: &mut [T]) {
    output_body(o, m, rows);
}

#[inline(always)]
fn output_body<T: Element>(o: &Outputs<'_, T>, m: &[T], rows: &mut [T]) {
    let mut tile = vec![T::zero(); o.tile_elems];
    let points_stride = o.lb * o.tile_elems;
    for &(kf, si, j) in o.taps {
        for lbi in 0..o.lb {
            let at = (si * o.points * o.lb + lbi) * o.tile_elems;
            combine(&mut tile, &m[at..], points_stride, &o.terms[j], false);
            let col0 = (o.first_lb + lbi) * o.tl;
            let cols = o.tl.min(o.cout_g - col0);
            for rr in 0..o.live_rows {
                let d = &mut rows[(rr * o.ksize + kf) * o.cout_g + col0..][..cols];
                copy_short(d, &tile[rr * o.tl..rr * o.tl + cols]);
            }
        }
    }
}

/// One block of `width` channels to transform, each position's channels one contiguous
/// run from `first` plus its entry in the chunk's index table `tab` (rows of `kc`, `kn`
/// used).
pub(super) struct Block<'a, T> {
    /// A side in blocks ([`blocked`]) and where the block starts in an image.
    pub(super) src: &'a [T],
    pub(super) first: usize,
    pub(super) width: usize,
    pub(super) tab: &'a [usize],
    pub(super) kc: usize,
    pub(super) kn: usize,
}

/// Transform a block, [`SUB_TILES`] tiles at a time: their channels' values gathered side
/// by side (`rows[l][tile][channel]`, zeros outside the tensor; the blocked copy holds
/// zeros past the last channel), then each point `dst[point][tile][channel]` one
/// combination of whole rows (compiled for AVX-512, or AVX2 and FMA, as the ISA has them:
/// the same sums in the same order on every path).
pub(super) fn transform<T: Element>(
    isa: Isa,
    b: &Block<'_, T>,
    terms: &[Vec<(usize, T)>],
    rows: &mut [T],
    dst: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // Safety: a plan's ISA, and its loops' ([`Isa::loops_for`]), are only AVX-512
        // where it was detected on this CPU.
        unsafe { transform_avx512(b, terms, rows, dst) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // Safety: a SIMD ISA (AVX2 or AVX-512, both with FMA) is only planned, or taken
        // for the loops, where it was detected on this CPU.
        unsafe { transform_avx2(b, terms, rows, dst) };
        return;
    }
    let _ = isa;
    transform_body(b, terms, rows, dst);
}

/// # Safety
/// AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_avx512<T: Element>(
    b: &Block<'_, T>,
    terms: &[Vec<(usize, T)>],
    rows: &mut [T],
    dst: &mut [T],
) {
    transform_body(b, terms, rows, dst);
}

/// # Safety
/// AVX2 and FMA available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_avx2<T: Element>(
    b: &Block<'_, T>,
    terms: &[Vec<(usize, T)>],
    rows: &mut [T],
    dst: &mut [T],
) {
    transform_body(b, terms, rows, dst);
}

#[inline(always)]
fn transform_body<T: Element>(
    b: &Block<'_, T>,
    terms: &[Vec<(usize, T)>],
    rows: &mut [T],
    dst: &mut [T],
) {
    let (w, run) = (b.width, b.kc * b.width);
    // `SUB_TILES` tiles at a time: their gathered rows stay in L1 for the combinations.
    let sub = SUB_TILES.min(b.kc).max(1);
    let pitch = sub * w;
    for t0 in (0..b.kn).step_by(sub) {
        let tn = sub.min(b.kn - t0);
        for (row, tab) in rows.chunks_exact_mut(pitch).zip(b.tab.chunks_exact(b.kc)) {
            for (d, &at) in row[..tn * w].chunks_exact_mut(w).zip(&tab[t0..t0 + tn]) {
                if at == OUTSIDE {
                    d.fill(T::zero());
                    continue;
                }
                copy_short(d, &b.src[b.first + at..][..w]);
            }
        }
        for (xi, ts) in terms.iter().enumerate() {
            combine(
                &mut dst[xi * run + t0 * w..][..tn * w],
                rows,
                pitch,
                ts,
                false,
            );
        }
    }
}
