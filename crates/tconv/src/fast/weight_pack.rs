//! Packing for the weight gradient's GEMM over positions ([`weight_gemm`](super::weight_gemm)):
//! a channel block of one side, `(N, channels, plane)` in memory, copied channels-last at
//! the positions of copy tables, `dst[t][(j · N + n) · width + w]`.
//!
//! Tables map each copy position to a plane offset (`usize::MAX`: outside the source, packed
//! as zero). Most runs of eight positions read the source at stride 1 or 2: those go up to
//! eight channels at a time through 8×8 transposes (`transpose_runs`: f32 on AVX2, f64 on
//! AVX-512), whole stretches of runs per call; the rest value by value. (f64 packed value
//! by value before: unet's f64 weight gradient 1.48x faster with the transposes, vnet3d's
//! 1.63x, dcgan3's 1.26x, paired at 1 thread.) Positions are taken in passes small
//! enough that the destination and the source lines they read stay in L2
//! (`PACK_BLOCK_BYTES`).
//!
//! Where the tables of a pass read their source span often enough between them (the keys
//! of one residue grid at several shifts: dcgan3's big side reads each position twice, at
//! stride 2), the pass is *staged* (`Stage`): the span is transposed once, at stride 1,
//! into channels-last rows, and each table position copies its row (dcgan3's weight
//! gradient 1.03x, f32 and f64, paired at 1 thread; it had spent 9 % of its time in the
//! stride-2 transposes, shuffle-bound).

use std::ops::Range;

use super::direct::{copy_short, run_chunks};
use super::scratch;
use crate::geometry::Geometry;
use crate::tensor::Element;

/// One side of the weight-gradient GEMM, `(N, channels, plane)` in memory, and the channel
/// block being packed from it.
pub(crate) struct Side<'a, T> {
    src: &'a [T],
    batch: usize,
    channels: usize,
    plane: usize,
    /// First channel of the block.
    first: usize,
    /// Channels of the block that exist (the rest of its lanes stay zero).
    live: usize,
}

impl<'a, T> Side<'a, T> {
    /// Block `blk` of `width` channels of group `group` of `src`, whose `(channels,
    /// per_group, plane)` are `dims`.
    pub(crate) fn block(
        src: &'a [T],
        batch: usize,
        (channels, per_group, plane): (usize, usize, usize),
        width: usize,
        group: usize,
        blk: usize,
    ) -> Side<'a, T> {
        let first = blk * width;
        Side {
            src,
            batch,
            channels,
            plane,
            first: group * per_group + first,
            live: width.min(per_group - first),
        }
    }
}

/// Copy-position tables of the weight-gradient packing (copy position → plane offset,
/// `usize::MAX` for zero), with the passes [`pack_positions`] takes through them.
pub(crate) struct Tables {
    tables: Vec<Vec<usize>>,
    /// Positions per pass.
    block: usize,
    /// `spans[t][pass]`: the lowest and highest plane offsets table `t` reads in that pass.
    spans: Vec<Vec<Option<(usize, usize)>>>,
    /// `runs[t][j]`: how the eight positions from `j` of table `t` read the source.
    runs: Vec<Vec<Run8>>,
    /// `staged[pass]`: the source span `(lo, hi)` all tables read in that pass, where they
    /// read it often enough between them to be staged ([`staged_span`]).
    staged: Vec<Option<(usize, usize)>>,
}

/// How a run of eight copy positions reads the source: at `start + i · stride` (`stride` 1
/// or 2; 0 where no such stride fits: copied value by value), the positions with bit `i`
/// of `outside` set lying outside the source (a tap's run that starts or ends past the edge
/// of a row: its eight values are read from the row's neighbours and those zeroed).
#[derive(Clone, Copy, Default)]
// (Read by the transposes only, which are x86-64 code.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Run8 {
    pub(crate) start: usize,
    pub(crate) stride: usize,
    pub(crate) outside: u8,
}

impl Run8 {
    /// The run of the eight offsets of `run` (`usize::MAX`: outside the source).
    fn of(run: &[usize]) -> Run8 {
        let none = Run8::default();
        if run.len() != 8 {
            return none;
        }
        // Most runs: every position inside, at stride 1 or 2.
        let stride = run[1].wrapping_sub(run[0]);
        if run[0] != usize::MAX
            && (stride == 1 || stride == 2)
            && run.windows(2).all(|p| p[1].wrapping_sub(p[0]) == stride)
        {
            return Run8 {
                start: run[0],
                stride,
                outside: 0,
            };
        }
        let mut inside = run.iter().enumerate().filter(|p| *p.1 != usize::MAX);
        let (Some((i0, &o0)), Some((i1, &o1))) = (inside.next(), inside.next()) else {
            return none;
        };
        let stride = o1.saturating_sub(o0) / (i1 - i0);
        let Some(start) = o0.checked_sub(i0 * stride) else {
            return none;
        };
        let fits = |(i, &o): (usize, &usize)| o == usize::MAX || o == start + i * stride;
        if !(stride == 1 || stride == 2) || !run.iter().enumerate().all(fits) {
            return none;
        }
        let outside = (0..8)
            .filter(|&i| run[i] == usize::MAX)
            .fold(0, |m, i| m | 1 << i);
        Run8 {
            start,
            stride,
            outside,
        }
    }
}

impl Tables {
    /// `tables` (all of one length) packed `batch × width` values per position of each.
    pub(crate) fn new<T>(tables: Vec<Vec<usize>>, batch: usize, width: usize) -> Tables {
        let size = std::mem::size_of::<T>();
        // Whole runs of eight: a pass of 85 positions (dilated's big side) began its runs
        // mid-row, and every run crossing a row's end was copied value by value.
        let block =
            (PACK_BLOCK_BYTES / (tables.len() * batch * width * size).max(1)).max(8) / 8 * 8;
        let spans = tables
            .iter()
            .map(|t| {
                t.chunks(block)
                    .map(|c| {
                        let mut valid = c.iter().copied().filter(|&o| o != usize::MAX);
                        let lo = valid.next()?;
                        Some(valid.fold((lo, lo), |(a, b), o| (a.min(o), b.max(o))))
                    })
                    .collect()
            })
            .collect();
        let runs = tables
            .iter()
            .map(|t| {
                (0..t.len())
                    .map(|j| Run8::of(&t[j..(j + 8).min(t.len())]))
                    .collect()
            })
            .collect();
        let staged = (0..tables.first().map_or(0, |t| t.len().div_ceil(block)))
            .map(|pass| {
                let js = pass * block..((pass + 1) * block).min(tables[0].len());
                staged_span(&tables, js)
            })
            .collect();
        Tables {
            tables,
            block,
            spans,
            runs,
            staged,
        }
    }

    fn len(&self) -> usize {
        self.tables.first().map_or(0, |t| t.len())
    }

    /// The source span `(lo, hi)` that positions `js` read, where every pass they fall in
    /// is staged (`staged`).
    fn staged(&self, js: Range<usize>) -> Option<(usize, usize)> {
        (js.start / self.block..=(js.end - 1) / self.block)
            .map(|p| self.staged.get(p).copied().flatten())
            .try_fold((usize::MAX, 0), |(lo, hi), s| {
                s.map(|(l, h)| (lo.min(l), hi.max(h)))
            })
    }
}

/// Pack one channel block of `side` at the copy positions `js` of every table of `tables`
/// into `dst[t][((j - js.start) * N + n) * width + w]`. Positions are taken in passes small
/// enough that the destination runs of all tables and the source lines they read stay in
/// L2; with `prefetch`, the next pass's source lines are prefetched where a pass reads many
/// rows at once (more streams than the hardware prefetchers follow). (Packing a chunk at a
/// time, the prefetches cost more than they save: unet's packing 8.3 -> 6.0 ms without.)
pub(crate) fn pack_positions<T: Element>(
    dst: &mut [T],
    width: usize,
    side: &Side<'_, T>,
    tables: &Tables,
    js: Range<usize>,
    prefetch: bool,
) {
    let (batch, plane, live) = (side.batch, side.plane, side.live);
    let per_table = js.len() * batch * width;
    // Lanes past the last channel are zero (`dst` may hold stale values).
    if live < width {
        for run in dst[..tables.tables.len() * per_table].chunks_exact_mut(width) {
            run[live..].fill(T::zero());
        }
    }
    if live == 0 || js.is_empty() {
        return;
    }
    let line = (64 / std::mem::size_of::<T>()).max(1);
    let prefetch = prefetch && batch * live >= 8;
    let fast = transposes_available::<T>();
    let mut stage = Stage::default();
    let mut j0 = js.start;
    while j0 < js.end {
        let j1 = (j0 + tables.block).min(js.end);
        if let Some(span) = tables
            .staged(j0..j1)
            .filter(|_| fast && width.is_multiple_of(8))
        {
            stage.pack(
                &mut dst[..tables.tables.len() * per_table],
                width,
                side,
                tables,
                (js.start, j0..j1),
                span,
            );
            j0 = j1;
            continue;
        }
        let pass = j0 / tables.block;
        for n in 0..batch {
            let row_of =
                |w: usize| &side.src[((n * side.channels + side.first + w) * plane)..][..plane];
            let prefetch_next = |row: &[T]| {
                if prefetch {
                    for spans in &tables.spans {
                        if let Some(&Some((lo, hi))) = spans.get(pass + 1) {
                            for o in (lo..=hi).step_by(line) {
                                crate::fast::prefetch_read(row, o);
                            }
                        }
                    }
                }
            };
            // Up to eight channels at a time where the positions run at stride 1 or 2: a
            // vector load per channel, an 8×8 transpose, a store of the channels' lanes per
            // position.
            let mut w0 = 0;
            while fast && w0 < live {
                let cnt = (live - w0).min(8);
                let rows: [&[T]; 8] = std::array::from_fn(|i| row_of(w0 + i.min(cnt - 1)));
                rows[..cnt].iter().for_each(|r| prefetch_next(r));
                for (ti, t) in tables.tables.iter().enumerate() {
                    let out = &mut dst[ti * per_table..(ti + 1) * per_table];
                    let at = |j: usize| ((j - js.start) * batch + n) * width + w0;
                    let mut j = j0;
                    while j < j1 {
                        // A stretch of runs by vectors, then one by values.
                        let runs = &tables.runs[ti][j..j1];
                        j += transpose_runs(&rows, cnt, runs, &mut out[at(j)..], batch * width);
                        if j >= j1 {
                            break;
                        }
                        let run = &t[j..(j + 8).min(j1)];
                        let at = at(j);
                        j += 8;
                        for (i, &o) in run.iter().enumerate() {
                            let d = &mut out[at + i * batch * width..][..cnt];
                            for (c, slot) in d.iter_mut().enumerate() {
                                *slot = if o == usize::MAX {
                                    T::zero()
                                } else {
                                    rows[c][o]
                                };
                            }
                        }
                    }
                }
                w0 += cnt;
            }
            // Without the vector path (other element types, no AVX2): row by row.
            for w in w0..live {
                let row = row_of(w);
                prefetch_next(row);
                for (ti, t) in tables.tables.iter().enumerate() {
                    let out = &mut dst[ti * per_table..(ti + 1) * per_table];
                    let out = &mut out[((j0 - js.start) * batch + n) * width + w..];
                    for (j, &o) in t[j0..j1].iter().enumerate() {
                        out[j * batch * width] = if o == usize::MAX { T::zero() } else { row[o] };
                    }
                }
            }
        }
        j0 = j1;
    }
}

/// A staged pass of [`pack_positions`]: its source span transposed into channels-last rows
/// (lanes past the block's live channels zero), then a row copied per table position.
#[derive(Default)]
struct Stage<T: Element> {
    rows: Option<scratch::Scratch<T>>,
    runs: Vec<Run8>,
    /// The copies by AVX-512 moves.
    wide: bool,
}

impl<T: Element> Stage<T> {
    /// [`pack_positions`] at positions `js` (of a call from `from`) through the span `(lo,
    /// hi)` they read.
    fn pack(
        &mut self,
        dst: &mut [T],
        width: usize,
        side: &Side<'_, T>,
        tables: &Tables,
        (from, js): (usize, Range<usize>),
        (lo, hi): (usize, usize),
    ) {
        let (batch, plane, live) = (side.batch, side.plane, side.live);
        let span = hi + 1 - lo;
        // (`dst` holds the tables' copies, of equal lengths.)
        let per_table = dst.len() / tables.tables.len().max(1);
        if self.rows.as_ref().is_none_or(|r| r.len() < span * width) {
            self.wide = super::Isa::detect() == super::Isa::Avx512;
            let mut b = scratch::take::<T>(span * width);
            if live < width {
                b.fill(T::zero());
            }
            self.rows = Some(b);
        }
        let cl = self.rows.as_mut().expect("taken above");
        self.runs.clear();
        self.runs.extend((0..span).map(|i| Run8 {
            start: lo + i,
            stride: 1,
            outside: 0,
        }));
        for n in 0..batch {
            let row_of =
                |w: usize| &side.src[((n * side.channels + side.first + w) * plane)..][..plane];
            let mut w0 = 0;
            while w0 < live {
                let cnt = (live - w0).min(8);
                let rows: [&[T]; 8] = std::array::from_fn(|i| row_of(w0 + i.min(cnt - 1)));
                let done = transpose_runs(&rows, cnt, &self.runs, &mut cl[w0..], width);
                for i in done..span {
                    for (c, row) in rows.iter().enumerate().take(cnt) {
                        cl[i * width + w0 + c] = row[lo + i];
                    }
                }
                w0 += cnt;
            }
            for (ti, t) in tables.tables.iter().enumerate() {
                let out = &mut dst[ti * per_table..(ti + 1) * per_table];
                let out = &mut out[((js.start - from) * batch + n) * width..];
                let rows = (&t[js.clone()], batch * width, &cl[..span * width], lo);
                copy_rows(self.wide, out, rows, width);
            }
        }
    }
}

/// Reads per source position of a pass's span, in tenths, from which the pass is staged
/// ([`staged_span`]). dcgan3's big side reads each position twice (its eight keys: two
/// residue rows at two shifts each) and its weight gradient ran 1.03-1.04x faster
/// staged; unet's and vnet3d's packed small side (`weight_strided`'s identity table) reads
/// each position once, and staging it ran 0.88x and 0.90x (its transposes are no fewer,
/// the copies come on top); at 1.5 neither stages (gwbench, medians of 40-100, 1 thread).
const STAGE_TENTHS: usize = 15;

/// The source span `(lo, hi)` that the tables read at positions `js`, where they read it
/// often enough between them (keys of one residue grid at several shifts) that transposing
/// it once into channels-last rows and copying a row per table position beats gathering
/// each table's positions (`None` otherwise).
fn staged_span(tables: &[Vec<usize>], js: Range<usize>) -> Option<(usize, usize)> {
    let (mut lo, mut hi, mut reads) = (usize::MAX, 0, 0usize);
    for t in tables {
        for &o in &t[js.clone()] {
            if o != usize::MAX {
                lo = lo.min(o);
                hi = hi.max(o);
                reads += 1;
            }
        }
    }
    let span = hi.checked_sub(lo)? + 1;
    (10 * reads >= STAGE_TENTHS * span).then_some((lo, hi))
}

/// `width` values per position `i` of `table` into `out[i · step ..]`: the channels-last
/// row of source position `table[i]` from `cl` (whose first row is position `lo`), zero for
/// `usize::MAX`; compiled for AVX-512 with `wide` (where `TCONV_ISA` allows it: a row of 16
/// f32 one register move; compiled for the x86-64 baseline the copies went through 16-byte
/// moves and the stack, and dcgan3's weight gradient ran slower staged than not).
fn copy_rows<T: Element>(
    wide: bool,
    out: &mut [T],
    rows: (&[usize], usize, &[T], usize),
    width: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if wide && is_x86_feature_detected!("avx512f") {
        // Safety: AVX-512F was detected.
        unsafe { copy_rows_avx512(out, rows, width) };
        return;
    }
    let _ = wide;
    copy_rows_body(out, rows, width)
}

/// [`copy_rows`] compiled for AVX-512.
///
/// # Safety
/// AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_rows_avx512<T: Element>(
    out: &mut [T],
    rows: (&[usize], usize, &[T], usize),
    width: usize,
) {
    copy_rows_body(out, rows, width)
}

#[inline(always)]
fn copy_rows_body<T: Element>(
    out: &mut [T],
    (table, step, cl, lo): (&[usize], usize, &[T], usize),
    width: usize,
) {
    for (i, &o) in table.iter().enumerate() {
        let d = &mut out[i * step..][..width];
        if o == usize::MAX {
            d.fill(T::zero());
        } else {
            copy_short(d, &cl[(o - lo) * width..][..width]);
        }
    }
}

/// Whether [`transpose_runs`] has a fast path for `T` on this CPU.
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(clippy::extra_unused_type_parameters)
)]
fn transposes_available<T: 'static>() -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        return is_x86_feature_detected!("avx2");
    } else if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f64>() {
        return f64_transposes();
    }
    false
}

/// Whether f64 runs take [`transpose8_f64_avx512`]: AVX-512F detected and allowed
/// (`TCONV_ISA`, as f64's loops: [`Isa::loops_for`](super::Isa::loops_for)).
#[cfg(target_arch = "x86_64")]
fn f64_transposes() -> bool {
    super::Isa::Scalar.loops_for::<f64>() == super::Isa::Avx512
}

/// Pack the runs of eight positions `runs[0], runs[8], …` (the first `8 · m`, for the
/// largest `m` with all of them read by vectors: a stride and within the source) of the
/// first `cnt` (1 to 8) of `rows`: `dst[(8k + i) * step + c] = rows[c][start + i · stride]`
/// of run `8k`, zero at its outside positions, by 8×8 transposes (f32 on AVX2, f64 on
/// AVX-512). Returns the
/// positions packed, `8 · m` (0 where this path does not apply). `rows` hold the source's
/// planes (the runs' offsets are within them); the rows past `cnt` are not read.
pub(crate) fn transpose_runs<T: Element>(
    rows: &[&[T]; 8],
    cnt: usize,
    runs: &[Run8],
    dst: &mut [T],
    step: usize,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if transposes_available::<T>() && (1..=8).contains(&cnt) {
        // The stretch, checked: its runs' loads within every row, its stores within `dst`.
        let len = rows.iter().map(|r| r.len()).min().unwrap_or(0);
        let within = |r: &Run8| matches!(r.stride, 1 | 2) && r.start + 8 * r.stride <= len;
        let runs8 = runs.iter().step_by(8).take(runs.len() / 8);
        let m = runs8.take_while(|r| within(r)).count();
        let m = m.min((dst.len() + step).saturating_sub(cnt) / (8 * step));
        if m == 0 {
            return 0;
        }
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f64>() {
            let ptrs: [*const f64; 8] = std::array::from_fn(|c| rows[c].as_ptr() as *const f64);
            // Safety: `T` is `f64` (same TypeId); loads and stores as below (checked);
            // AVX-512F was detected (`transposes_available`).
            unsafe {
                transpose8_f64_avx512(
                    &ptrs,
                    cnt,
                    &runs[..8 * m],
                    dst.as_mut_ptr() as *mut f64,
                    step,
                )
            };
            return 8 * m;
        }
        let ptrs: [*const f32; 8] = std::array::from_fn(|c| rows[c].as_ptr() as *const f32);
        let d = dst.as_mut_ptr() as *mut f32;
        // Safety: `T` is `f32` (same TypeId); every load, `8 · stride` values from a run's
        // start, stays inside its row and the last store, `(8m - 1) · step + cnt`, inside
        // `dst` (both checked); AVX2 was detected.
        unsafe {
            if cnt == 8 {
                transpose8_avx2::<true>(&ptrs, 8, &runs[..8 * m], d, step)
            } else {
                transpose8_avx2::<false>(&ptrs, cnt, &runs[..8 * m], d, step)
            }
        };
        return 8 * m;
    }
    let _ = (rows, cnt, runs, dst, step);
    0
}

/// [`transpose_runs`]' AVX2 body: each of the runs `runs[0], runs[8], …`, its outside
/// positions zeroed; `FULL` means `cnt == 8` (straight-line loads and stores; fewer channels
/// take a loop).
///
/// # Safety
/// AVX2 available; `1 <= cnt <= 8`; each `src[c]`, `c < cnt`, readable for `start + 8 ·
/// stride` values of every run (`stride` 1 or 2); `dst` writable at `(8k + i) * step .. +
/// cnt` for `i < 8` and every run `8k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose8_avx2<const FULL: bool>(
    src: &[*const f32; 8],
    cnt: usize,
    runs: &[Run8],
    mut dst: *mut f32,
    step: usize,
) {
    use std::arch::x86_64::*;
    let cnt = if FULL { 8 } else { cnt };
    let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    for r in runs.iter().step_by(8) {
        let mut x = [_mm256_setzero_ps(); 8];
        for (slot, &p) in x.iter_mut().zip(src).take(cnt) {
            let p = p.add(r.start);
            *slot = if r.stride == 1 {
                _mm256_loadu_ps(p)
            } else {
                crate::fast::direct::evens_odds16(p).0
            };
        }
        if r.outside != 0 {
            // Positions outside the source read a neighbour: zeroed, lane `i` by bit `i`.
            let out = _mm256_and_si256(_mm256_set1_epi32(r.outside as i32), bits);
            let keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(out, _mm256_setzero_si256()));
            for v in x.iter_mut().take(cnt) {
                *v = _mm256_and_ps(*v, keep);
            }
        }
        for (i, col) in crate::fast::direct::transpose8x8(x).iter().enumerate() {
            let d = dst.add(i * step);
            if FULL {
                _mm256_storeu_ps(d, *col);
                continue;
            }
            // The first `cnt` lanes: four, two and one at a time.
            let mut part = _mm256_castps256_ps128(*col);
            let mut at = 0;
            if cnt >= 4 {
                _mm_storeu_ps(d, part);
                part = _mm256_extractf128_ps(*col, 1);
                at = 4;
            }
            if cnt - at >= 2 {
                _mm_storel_pd(d.add(at) as *mut f64, _mm_castps_pd(part));
                part = _mm_movehl_ps(part, part);
                at += 2;
            }
            if cnt > at {
                _mm_store_ss(d.add(at), part);
            }
        }
        dst = dst.add(8 * step);
    }
}

/// [`transpose_runs`]' f64 body on AVX-512: a run's eight positions of a channel are one
/// register (stride 2: the even values of two, by one two-source permute), the 8×8 block
/// transposed by unpacks and two rounds of two-source permutes, each position's `cnt`
/// channels stored by one masked store.
///
/// # Safety
/// AVX-512F available; `1 <= cnt <= 8`; each `src[c]`, `c < cnt`, readable for `start + 8 ·
/// stride` values of every run (`stride` 1 or 2); `dst` writable at `(8k + i) * step .. +
/// cnt` for `i < 8` and every run `8k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose8_f64_avx512(
    src: &[*const f64; 8],
    cnt: usize,
    runs: &[Run8],
    mut dst: *mut f64,
    step: usize,
) {
    use std::arch::x86_64::*;
    let lanes = ((1u32 << cnt) - 1) as __mmask8;
    let evens = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    // Stage 2: pairs of rows' 128-bit lanes 0 and 2 (lo) or 1 and 3 (hi) side by side;
    // stage 3: the halves of two such.
    let (lo2, hi2) = (
        _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13),
        _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15),
    );
    let (lo3, hi3) = (
        _mm512_setr_epi64(0, 1, 2, 3, 8, 9, 10, 11),
        _mm512_setr_epi64(4, 5, 6, 7, 12, 13, 14, 15),
    );
    for r in runs.iter().step_by(8) {
        let keep = !r.outside;
        let x: [__m512d; 8] = std::array::from_fn(|c| {
            if c >= cnt {
                return _mm512_setzero_pd();
            }
            let p = src[c].add(r.start);
            let v = if r.stride == 1 {
                _mm512_loadu_pd(p)
            } else {
                _mm512_permutex2var_pd(_mm512_loadu_pd(p), evens, _mm512_loadu_pd(p.add(8)))
            };
            // Positions outside the source read a neighbour: zeroed.
            _mm512_maskz_mov_pd(keep, v)
        });
        // x[c][i] (channel c, position i) -> col[i][c].
        let s: [__m512d; 8] = std::array::from_fn(|k| {
            let (a, b) = (x[2 * (k / 2)], x[2 * (k / 2) + 1]);
            if k % 2 == 0 {
                _mm512_unpacklo_pd(a, b) // a0 b0 a2 b2 a4 b4 a6 b6
            } else {
                _mm512_unpackhi_pd(a, b) // a1 b1 a3 b3 a5 b5 a7 b7
            }
        });
        // u[q]: rows 4q'.. of positions {0, 4}, {2, 6}, {1, 5}, {3, 7}.
        let u: [__m512d; 8] = std::array::from_fn(|k| {
            let (half, which) = (k / 4, k % 4);
            let (a, b) = (s[4 * half + which % 2], s[4 * half + 2 + which % 2]);
            if which < 2 {
                _mm512_permutex2var_pd(a, lo2, b)
            } else {
                _mm512_permutex2var_pd(a, hi2, b)
            }
        });
        // u[0..4]: channels 0-3 at positions {0,4}, {1,5}, {2,6}, {3,7}; u[4..8]: 4-7.
        for q in 0..4 {
            let (a, b) = (u[q], u[4 + q]);
            let low = _mm512_permutex2var_pd(a, lo3, b);
            let high = _mm512_permutex2var_pd(a, hi3, b);
            _mm512_mask_storeu_pd(dst.add(q * step), lanes, low);
            _mm512_mask_storeu_pd(dst.add((q + 4) * step), lanes, high);
        }
        dst = dst.add(8 * step);
    }
}

/// Pack one side (`(N, channels, plane)`, `per_group` channels per group) for every group and
/// block of `width` channels, each block for every table: `[group][block][table][q][width]`,
/// blocks on `threads` threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_side<T: Element>(
    g: &Geometry,
    src: &[T],
    channels: usize,
    plane: usize,
    per_group: usize,
    width: usize,
    tables: &Tables,
    threads: usize,
) -> scratch::Scratch<T> {
    let blocks = per_group.div_ceil(width);
    let unit = tables.tables.len() * tables.len() * g.batch * width;
    let mut buf = scratch::take::<T>(g.groups * blocks * unit);
    run_chunks(threads, &mut buf, unit, |u, dst| {
        let (group, blk) = (u / blocks, u % blocks);
        let side = Side::block(
            src,
            g.batch,
            (channels, per_group, plane),
            width,
            group,
            blk,
        );
        pack_positions(dst, width, &side, tables, 0..tables.len(), true);
    });
    buf
}

/// Bytes of packed destination filled per pass of [`pack_positions`]: a quarter of L2 (at
/// 16 KiB, an L1's worth, the passes were so short that their overhead showed: unet's big
/// side packed in 6.8-9.9 ms against 5.3-5.7 ms at 64 KiB).
const PACK_BLOCK_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::{pack_positions, Run8, Side, Tables};
    use crate::tensor::Element;

    /// `pack_positions` of both channel blocks (e.g. 8 and 3 live channels) of a source
    /// against its definition, for tables whose runs of eight read at stride 1 and 2 (some
    /// with positions outside at either end) and some that fit no stride: the transposes
    /// (f32 on AVX2, f64 on AVX-512, as the CPU and `TCONV_ISA` allow) and the values
    /// copied one by one alike; and for keys of two residue grids at two shifts each, which
    /// read their span often enough to be staged (channels-last rows copied per position).
    fn packs_as_defined<T: Element>() {
        let strided: Vec<usize> = (0..96)
            .map(|j: usize| (2 * (j % 24) + 50 * (j / 24)).checked_sub(1).unwrap_or(OUT))
            .collect();
        let unit: Vec<usize> = (0..96)
            .map(|j| {
                if j % 40 >= 37 {
                    OUT
                } else {
                    3 + j + j / 40 * 7
                }
            })
            .collect();
        let odd: Vec<usize> = (0..96).map(|j| (j * 3) % 190).collect();
        // Rows of 24 at stride 2 from rows of 48, residue `r`, shifted by `c` (outside at
        // a row's ends).
        let key = |r: usize, c: isize| -> Vec<usize> {
            (0..96)
                .map(|j: usize| {
                    let u = (j % 24) as isize + c;
                    if (0..24).contains(&u) {
                        48 * (j / 24) + 2 * u as usize + r
                    } else {
                        OUT
                    }
                })
                .collect()
        };
        let keys = vec![key(0, 0), key(0, 1), key(1, -1), key(1, 0)];
        for (sets, width) in [(vec![strided, unit, odd], 8), (keys.clone(), 8), (keys, 16)] {
            let tables = Tables::new::<T>(sets, 2, width);
            if tables.tables.len() == 4 {
                assert!(tables.staged.iter().all(Option::is_some), "keys staged");
            }
            packs_tables_as_defined::<T>(&tables, width);
        }
    }

    fn packs_tables_as_defined<T: Element>(tables: &Tables, width: usize) {
        let (batch, channels, plane): (usize, usize, usize) = (2, 11, 200);
        let src: Vec<T> = (0..batch * channels * plane)
            .map(|i| T::from(i % 977).expect("small") - T::from(400).expect("small"))
            .collect();
        for blk in 0..channels.div_ceil(width) {
            let side = Side::block(&src, batch, (channels, channels, plane), width, 0, blk);
            for js in [0..96, 8..72, 5..61] {
                let per_table = js.len() * batch * width;
                let mut dst = vec![T::from(7).expect("small"); tables.tables.len() * per_table];
                pack_positions(&mut dst, width, &side, tables, js.clone(), false);
                for (t, table) in tables.tables.iter().enumerate() {
                    for j in js.clone() {
                        for n in 0..batch {
                            for w in 0..width {
                                let c = blk * width + w;
                                let want = if c >= channels || table[j] == OUT {
                                    T::zero()
                                } else {
                                    src[(n * channels + c) * plane + table[j]]
                                };
                                let at = t * per_table + ((j - js.start) * batch + n) * width + w;
                                assert!(
                                    dst[at] == want,
                                    "table {t}, position {j}, image {n}, channel {c}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn packing_matches_its_definition() {
        packs_as_defined::<f32>();
        packs_as_defined::<f64>();
    }

    const OUT: usize = usize::MAX;

    fn of(run: &[usize]) -> (usize, usize, u8) {
        let r = Run8::of(run);
        (r.start, r.stride, r.outside)
    }

    #[test]
    fn runs_of_eight_read_at_a_stride_with_the_outside_positions_marked() {
        assert_eq!(of(&[5, 6, 7, 8, 9, 10, 11, 12]), (5, 1, 0));
        assert_eq!(of(&[3, 5, 7, 9, 11, 13, 15, 17]), (3, 2, 0));
        // A tap's run past the start or the end of a row: the neighbours, marked.
        assert_eq!(of(&[OUT, 33, 35, 37, 39, 41, 43, 45]), (31, 2, 0b1));
        assert_eq!(of(&[OUT, OUT, 4, 5, 6, 7, 8, 9]), (2, 1, 0b11));
        assert_eq!(of(&[17, 19, 21, 23, 25, 27, 29, OUT]), (17, 2, 0b1000_0000));
        assert_eq!(
            of(&[17, OUT, 21, OUT, 25, 27, 29, OUT]),
            (17, 2, 0b1000_1010)
        );
        // Not such a run: copied value by value.
        let none = (0, 0, 0);
        assert_eq!(of(&[OUT, 1, 3, 5, 7, 9, 11, 13]), none); // would start before 0
        assert_eq!(of(&[OUT, 0, 1, 2, 3, 4, 5, 6]), none);
        assert_eq!(of(&[OUT; 8]), none);
        assert_eq!(of(&[OUT, OUT, OUT, OUT, OUT, OUT, OUT, 9]), none);
        assert_eq!(of(&[0, 3, 6, 9, 12, 15, 18, 21]), none); // stride 3
        assert_eq!(of(&[0, 1, 2, 3, 5, 6, 7, 8]), none); // a row's end
        assert_eq!(of(&[0, 2, 4, 6, 8, 10, 12]), none); // short
        assert_eq!(of(&[1, OUT, 4, 5, 6, 7, 8, 9]), none); // 4 - 1 not a multiple of 2
    }

    #[test]
    fn packing_passes_hold_whole_runs_of_eight() {
        // A key's copy positions: rows of 32, each read at a stride of 2 from a row of 128
        // (a run of eight crossing a row's end has no one stride: copied value by value).
        let key: Vec<usize> = (0..4096).map(|j| j / 32 * 128 + 2 * (j % 32)).collect();
        // dilated's big side first: three keys of 64 channels, 85 positions a pass unrounded.
        for (tables, batch, width) in [(3, 1, 64), (1, 1, 48), (8, 1, 32), (1, 3, 6), (40, 4, 64)] {
            let t = Tables::new::<f32>(vec![key.clone(); tables], batch, width);
            assert!(
                t.block >= 8 && t.block.is_multiple_of(8),
                "{tables} tables: {}",
                t.block
            );
            // Every run of eight a pass takes (from the pass's start) reads at the stride.
            let passes = (0..key.len()).step_by(t.block);
            let mut runs = passes.flat_map(|p| (p..(p + t.block).min(key.len())).step_by(8));
            assert!(runs.all(|j| t.runs[0][j].stride == 2), "{tables} tables");
        }
    }
}
