//! The in-place loops ([`in_place`]) on f32 vectors: 16 lanes with AVX-512F,
//! 8 with AVX2, each big row read where it lies through masked loads, eight kernel rows at a
//! time.

use super::*;

/// The f32 vectors the in-place loops run on: 16 lanes with AVX-512F, 8 with AVX2 (each
/// with its masks: a bit per lane, or a lane of all ones).
#[cfg(target_arch = "x86_64")]
trait Lanes {
    const W: usize;
    type V: Copy;
    type M: Copy;
    /// The lanes `l` with `lo <= l < hi`.
    fn mask(lo: isize, hi: isize) -> Self::M;
    fn and(a: Self::M, b: Self::M) -> Self::M;
    unsafe fn zero() -> Self::V;
    unsafe fn set1(x: f32) -> Self::V;
    /// The lanes of `m` from `at` (no other lane is read), zeros elsewhere.
    unsafe fn load(m: Self::M, at: *const f32) -> Self::V;
    /// `at[l] += v[l]` on the lanes of `m`.
    unsafe fn add_into(m: Self::M, at: *mut f32, v: Self::V);
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `W` vectors' lane sums in one vector (lane `i`: `acc[i]`'s), plus `b` in each.
    unsafe fn sums(acc: &[Self::V], b: f32) -> Self::V;
    unsafe fn store(at: *mut f32, v: Self::V);
}

/// 16 lanes, AVX-512F.
#[cfg(target_arch = "x86_64")]
struct Avx512Lanes;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512Lanes {
    const W: usize = 16;
    type V = std::arch::x86_64::__m512;
    type M = u16;
    fn mask(lo: isize, hi: isize) -> u16 {
        let (lo, hi) = (lo.clamp(0, 16), hi.clamp(0, 16));
        let below = |n: isize| ((1u32 << n) - 1) as u16;
        if hi <= lo {
            0
        } else {
            below(hi) & !below(lo)
        }
    }
    fn and(a: u16, b: u16) -> u16 {
        a & b
    }
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        std::arch::x86_64::_mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn set1(x: f32) -> Self::V {
        std::arch::x86_64::_mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(m: u16, at: *const f32) -> Self::V {
        std::arch::x86_64::_mm512_maskz_loadu_ps(m, at)
    }
    #[inline(always)]
    unsafe fn add_into(m: u16, at: *mut f32, v: Self::V) {
        use std::arch::x86_64::*;
        _mm512_mask_storeu_ps(at, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, at), v));
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::arch::x86_64::_mm512_fmadd_ps(a, b, c)
    }
    /// A fixed tree of pairwise additions: neighbouring lanes' pairs, then quadruples,
    /// then the four 128-bit quarters.
    #[inline(always)]
    unsafe fn sums(acc: &[Self::V], b: f32) -> Self::V {
        use std::arch::x86_64::*;
        // (Loops, not closures: a closure is not compiled for the caller's features, and its
        // intrinsics would not be inlined.)
        // Per 128-bit quarter of (x, y): [x0 + x2, y0 + y2, x1 + x3, y1 + y3].
        let mut pairs = [_mm512_setzero_ps(); 8];
        for (k, pair) in pairs.iter_mut().enumerate() {
            let (x, y) = (acc[2 * k], acc[2 * k + 1]);
            *pair = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
        }
        // Per quarter: the quarter's sums of positions 4k..4k + 4.
        let mut quads = [_mm512_setzero_ps(); 4];
        for (k, quad) in quads.iter_mut().enumerate() {
            let (x, y) = (
                _mm512_castps_pd(pairs[2 * k]),
                _mm512_castps_pd(pairs[2 * k + 1]),
            );
            *quad = _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
            );
        }
        // The four quarters of each: [q0 + q1, q2 + q3] of two vectors side by side, then
        // the two halves.
        let mut halves = [_mm512_setzero_ps(); 2];
        for (k, half) in halves.iter_mut().enumerate() {
            let (a, b) = (quads[2 * k], quads[2 * k + 1]);
            *half = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            );
        }
        let (a, c) = (halves[0], halves[1]);
        let all = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, c),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, c),
        );
        _mm512_add_ps(all, _mm512_set1_ps(b))
    }
    #[inline(always)]
    unsafe fn store(at: *mut f32, v: Self::V) {
        std::arch::x86_64::_mm512_storeu_ps(at, v)
    }
}

/// 8 lanes, AVX2 and FMA (masks of all-ones lanes: `vmaskmovps`).
#[cfg(target_arch = "x86_64")]
struct Avx2Lanes;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2Lanes {
    const W: usize = 8;
    type V = std::arch::x86_64::__m256;
    type M = [i32; 8];
    fn mask(lo: isize, hi: isize) -> [i32; 8] {
        std::array::from_fn(|l| -i32::from((lo..hi).contains(&(l as isize))))
    }
    fn and(a: [i32; 8], b: [i32; 8]) -> [i32; 8] {
        std::array::from_fn(|l| a[l] & b[l])
    }
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        std::arch::x86_64::_mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn set1(x: f32) -> Self::V {
        std::arch::x86_64::_mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(m: [i32; 8], at: *const f32) -> Self::V {
        use std::arch::x86_64::*;
        _mm256_maskload_ps(at, _mm256_loadu_si256(m.as_ptr() as *const __m256i))
    }
    #[inline(always)]
    unsafe fn add_into(m: [i32; 8], at: *mut f32, v: Self::V) {
        use std::arch::x86_64::*;
        let m = _mm256_loadu_si256(m.as_ptr() as *const __m256i);
        _mm256_maskstore_ps(at, m, _mm256_add_ps(_mm256_maskload_ps(at, m), v));
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::arch::x86_64::_mm256_fmadd_ps(a, b, c)
    }
    /// As the 16-lane tree: pairs, quadruples, then the two 128-bit halves.
    #[inline(always)]
    unsafe fn sums(acc: &[Self::V], b: f32) -> Self::V {
        use std::arch::x86_64::*;
        let mut pairs = [_mm256_setzero_ps(); 4];
        for (k, pair) in pairs.iter_mut().enumerate() {
            let (x, y) = (acc[2 * k], acc[2 * k + 1]);
            *pair = _mm256_add_ps(_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y));
        }
        let mut quads = [_mm256_setzero_ps(); 2];
        for (k, quad) in quads.iter_mut().enumerate() {
            let (x, y) = (
                _mm256_castps_pd(pairs[2 * k]),
                _mm256_castps_pd(pairs[2 * k + 1]),
            );
            *quad = _mm256_add_ps(
                _mm256_castpd_ps(_mm256_unpacklo_pd(x, y)),
                _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)),
            );
        }
        let halves = _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(quads[0], quads[1]),
            _mm256_permute2f128_ps::<0x31>(quads[0], quads[1]),
        );
        _mm256_add_ps(halves, _mm256_set1_ps(b))
    }
    #[inline(always)]
    unsafe fn store(at: *mut f32, v: Self::V) {
        std::arch::x86_64::_mm256_storeu_ps(at, v)
    }
}

/// Where the in-place loops read a big row for each small position: per position `p` and
/// chunk `j` of `W` taps, the run's start and the lanes inside both the kernel and the
/// row. Positions are padded to whole blocks of `W` (no lanes past the row's last one).
#[cfg(target_arch = "x86_64")]
struct Runs<E: Lanes> {
    /// Chunks of `W` taps per kernel row.
    nj: usize,
    /// Per chunk: the lanes whose taps are in the kernel.
    kernel: Vec<E::M>,
    /// Per position: where its run starts in its big row (negative: before the row).
    start: Vec<isize>,
    /// Per position and chunk: the lanes inside the kernel and the row.
    lanes: Vec<E::M>,
}

#[cfg(target_arch = "x86_64")]
impl<E: Lanes> Runs<E> {
    fn new(taps: &TapRows) -> Self {
        let last = taps.split().1;
        let (ls, kw, lb, s) = (
            last.small(taps.op),
            last.kernel,
            last.big(taps.op) as isize,
            last.stride,
        );
        let nj = kw.div_ceil(E::W);
        let kernel: Vec<E::M> = (0..nj)
            .map(|j| E::mask(0, (kw - E::W * j) as isize))
            .collect();
        let padded = ls.div_ceil(E::W) * E::W;
        let mut start = vec![0isize; padded];
        let mut lanes = vec![E::mask(0, 0); padded * nj];
        for p in 0..ls {
            start[p] = (p * s + taps.c0) as isize - taps.margin as isize;
            for j in 0..nj {
                let o = start[p] + (E::W * j) as isize;
                lanes[p * nj + j] = E::and(kernel[j], E::mask(-o, lb - o));
            }
        }
        Runs {
            nj,
            kernel,
            start,
            lanes,
        }
    }
}

impl TapRows {
    /// [`TapRows::plane`] for f32 on AVX-512 ([`in_place`]): [`TapRows::plane_lanes`].
    ///
    /// # Safety
    /// AVX-512F available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn plane_avx512(
        &self,
        big: &[f32],
        conv: Option<(&[f32], f32, &mut [f32])>,
        weight: Option<(&[f32], &mut [f32])>,
    ) {
        self.plane_lanes::<Avx512Lanes>(big, conv, weight);
    }

    /// [`TapRows::plane`] for f32 on AVX2 ([`in_place`]): [`TapRows::plane_lanes`].
    ///
    /// # Safety
    /// AVX2 and FMA available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn plane_avx2_in_place(
        &self,
        big: &[f32],
        conv: Option<(&[f32], f32, &mut [f32])>,
        weight: Option<(&[f32], &mut [f32])>,
    ) {
        self.plane_lanes::<Avx2Lanes>(big, conv, weight);
    }

    /// The in-place loops on vectors `E` ([`in_place`]). Per small row, its big rows are
    /// read where they lie, eight at a time, each front to back ([`RowGroups`]), and each
    /// run a position meets there feeds both passes:
    /// - conv: the position's lane sums, kept per position (`acc`), gain the run times the
    ///   kernel row's taps; at the end of the small row each position's lanes are summed
    ///   (a fixed tree) and the bias added;
    /// - weight gradient: the kernel row's tap sums gain the run times the small value, one
    ///   sum over the positions in order, added to `dw` after the row.
    ///
    /// Each pass's sums run in the same order whether or not the other is asked for: the
    /// same bits either way.
    ///
    /// # Safety
    /// `E`'s instructions available (inlined into a function compiled for them).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn plane_lanes<E: Lanes>(
        &self,
        big: &[f32],
        mut conv: Option<(&[f32], f32, &mut [f32])>,
        mut weight: Option<(&[f32], &mut [f32])>,
    ) {
        let (outer, last) = self.split();
        let (ls, kw, lb) = (last.small(self.op), last.kernel, last.big(self.op));
        let small_rows: usize = outer.iter().map(|a| a.small(self.op)).product();
        let big_rows: usize = outer.iter().map(|a| a.big(self.op)).product();
        let k_size = self.slots() * kw;
        assert!(
            big.len() == big_rows * lb
                && conv.as_ref().is_none_or(|(w, _, out)| {
                    w.len() == k_size && out.len() == small_rows * ls
                })
                && weight
                    .as_ref()
                    .is_none_or(|(sp, dw)| { sp.len() == small_rows * ls && dw.len() == k_size }),
            "tap-vector operands of the wrong size"
        );
        if ls == 0 || lb == 0 {
            return;
        }
        let runs = Runs::<E>::new(self);
        let mut acc = vec![E::zero(); runs.start.len()];
        let (mut rows, mut next) = (Vec::new(), Vec::new());
        self.rows_for(0, &mut next);
        for r in 0..small_rows {
            // Every `(kernel row, big row)` is inside the kernel and the big plane
            // (`rows_for`), and every load is masked to the lanes inside its row.
            std::mem::swap(&mut rows, &mut next);
            // The next small row's big rows that this one does not read, fetched while it
            // runs.
            if r + 1 < small_rows {
                self.rows_for(r + 1, &mut next);
                let held = rows.iter().map(|x| x.1).max();
                for &(_, br) in next.iter().filter(|x| Some(x.1) > held) {
                    let row = &big[br * lb..(br + 1) * lb];
                    for at in (0..lb).step_by(16) {
                        crate::fast::prefetch_read(row, at);
                    }
                }
            }
            acc.fill(E::zero());
            RowGroups {
                big,
                lb,
                ls,
                kw,
                runs: &runs,
                conv: conv.as_ref().map(|(w, ..)| *w),
                acc: &mut acc,
                weight: weight
                    .as_mut()
                    .map(|(sp, dw)| (&sp[r * ls..][..ls], &mut **dw)),
            }
            .run(&rows);
            if let Some((_, bias, small)) = &mut conv {
                let out = &mut small[r * ls..][..ls];
                for (p0, lanes) in (0..ls).step_by(E::W).zip(acc.chunks_exact(E::W)) {
                    let sums = E::sums(lanes, *bias);
                    if p0 + E::W <= ls {
                        E::store(out.as_mut_ptr().add(p0), sums);
                    } else {
                        let mut tail = [0f32; 16];
                        E::store(tail.as_mut_ptr(), sums);
                        out[p0..].copy_from_slice(&tail[..ls - p0]);
                    }
                }
            }
        }
    }
}

/// Kernel rows read together by the in-place loops: as many streams from memory at once.
/// All sixteen of fcn_dw's at a time ran its weight gradient at about half the speed (0.54x,
/// 4 rounds); its conv by blocks of 16 positions over all sixteen rows ran as fast as eight
/// whole rows at a time (0.96x / 1.05x, 10 rounds), which also lets one pass feed both
/// gradients.
const GROUP: usize = 8;

/// One small row's passes over groups of its kernel rows (see [`TapRows::plane_lanes`]).
#[cfg(target_arch = "x86_64")]
struct RowGroups<'a, E: Lanes> {
    big: &'a [f32],
    /// The big rows' length, the small row's, and the kernel rows' (taps).
    lb: usize,
    ls: usize,
    kw: usize,
    runs: &'a Runs<E>,
    /// The conv's kernel, if asked for.
    conv: Option<&'a [f32]>,
    /// The conv's lane sums per (padded) position.
    acc: &'a mut [E::V],
    /// The weight gradient's small row and kernel gradient, if asked for.
    weight: Option<(&'a [f32], &'a mut [f32])>,
}

#[cfg(target_arch = "x86_64")]
impl<E: Lanes> RowGroups<'_, E> {
    /// The passes asked for over the small row's kernel rows `rows`, [`GROUP`] at a time
    /// (then 4, then 1), each group size compiled on its own.
    #[inline(always)]
    unsafe fn run(&mut self, rows: &[(usize, usize)]) {
        let mut at = 0;
        while at < rows.len() {
            let rows = &rows[at..];
            at += match (rows.len(), self.conv.is_some(), self.weight.is_some()) {
                (GROUP.., true, true) => self.rows::<GROUP, true, true>(rows),
                (GROUP.., true, false) => self.rows::<GROUP, true, false>(rows),
                (GROUP.., false, _) => self.rows::<GROUP, false, true>(rows),
                (4.., true, true) => self.rows::<4, true, true>(rows),
                (4.., true, false) => self.rows::<4, true, false>(rows),
                (4.., false, _) => self.rows::<4, false, true>(rows),
                (_, true, true) => self.rows::<1, true, true>(rows),
                (_, true, false) => self.rows::<1, true, false>(rows),
                (_, false, _) => self.rows::<1, false, true>(rows),
            };
        }
    }

    /// The first `R` of `rows`, per chunk `j` of taps and position `p` in order: with
    /// `CONV`, `acc[p] += Σ_t w_t · run_t(p)` (the rows in order); with `WEIGHT`, per row
    /// `g_t += srow[p] · run_t(p)`, then `dw_t += g_t`. Returns `R`.
    #[inline(always)]
    unsafe fn rows<const R: usize, const CONV: bool, const WEIGHT: bool>(
        &mut self,
        rows: &[(usize, usize)],
    ) -> usize {
        let runs = self.runs;
        let nj = runs.nj;
        let ptrs: [*const f32; R] =
            std::array::from_fn(|t| self.big.as_ptr().add(rows[t].1 * self.lb));
        let kw = self.kw;
        let (srow, dw) = match &mut self.weight {
            Some((srow, dw)) => (*srow, &mut **dw),
            None => (&[][..], &mut [][..]),
        };
        let w = self.conv.unwrap_or(&[]);
        for j in 0..nj {
            let km = runs.kernel[j];
            let mut wv = [E::zero(); R];
            if CONV {
                for (wt, &(kr, _)) in wv.iter_mut().zip(rows) {
                    *wt = E::load(km, w.as_ptr().add(kr * kw + E::W * j));
                }
            }
            let mut g = [E::zero(); R];
            for p in 0..self.ls {
                let mask = *runs.lanes.get_unchecked(p * nj + j);
                let o = *runs.start.get_unchecked(p) + (E::W * j) as isize;
                let sv = if WEIGHT {
                    E::set1(*srow.get_unchecked(p))
                } else {
                    E::zero()
                };
                let mut sum = if CONV {
                    *self.acc.get_unchecked(p)
                } else {
                    E::zero()
                };
                for t in 0..R {
                    // Masked: no lane outside the row (or past the kernel) is read.
                    let v = E::load(mask, ptrs[t].wrapping_offset(o));
                    if CONV {
                        sum = E::fmadd(wv[t], v, sum);
                    }
                    if WEIGHT {
                        g[t] = E::fmadd(sv, v, g[t]);
                    }
                }
                if CONV {
                    *self.acc.get_unchecked_mut(p) = sum;
                }
            }
            if WEIGHT {
                for (gt, &(kr, _)) in g.iter().zip(rows) {
                    E::add_into(km, dw.as_mut_ptr().add(kr * kw + E::W * j), *gt);
                }
            }
        }
        R
    }
}
