//! The weight gradient as sums of outer products, where its reduction is short: a batch of
//! one image whose small side has a few positions (pix2pix's decoder at its 1×1 to 8×8
//! inputs), or a batch of a few images of one position (a generator's 1×1 projection).
//!
//! `dW[a, b', k] = Σ_(n, i) S[n, a, i] · B[n, b, i*s + k*d - p_begin]` sums `R = N ·
//! |small side|` terms. Where `R` is a handful, the GEMM over positions does a few products
//! per output and spends its time packing both sides and transposing its results into the
//! weight's layout (pix2pix's 1024 -> 512 upsampler on 2×2 inputs: `R = 4` for 33.5 MB of
//! weight gradient, 20 ms at 1 thread on Winograd tiles or the GEMM). Here the big side is
//! gathered once per reduction term into rows `G[r][b'][k]` (zero where a tap falls outside
//! it), so that each row of `dW` — the weight's own row `[b'][k]` of one small-side channel
//! — is `Σ_r S[n, a, i] · G[r]`: `R` broadcasts and vector FMAs per stored vector, written
//! once in place, nothing transposed. The terms are summed in order `r = 0, 1, …` from zero
//! (one fused multiply-add each on the vector paths), and tasks own whole rows: the result
//! is bitwise identical for any thread count, and the same on AVX-512 and AVX2.
//!
//! A transposed conv's input gradient reads the same rows: `∂L/∂x[n, a, i]` is the dot
//! product of the weight's row `a`, read where it lies, with `G_(n, i)` (`input_dots`),
//! where the conv's plan would first pack the whole weight on every call.

use super::direct::run_chunks;
use super::weight::Sizes;
use super::{scratch, Isa};
use crate::geometry::Geometry;
use crate::params::Op;
use crate::tensor::{positions, Element};

/// Most reduction terms (`batch × small-side positions`) the outer products take.
pub(crate) const OUTER_MAX: usize = 64;

/// Fewest small-side channels per group, per reduction term, for [`applies`].
const ROWS_PER_TERM: usize = 4;

/// Rows of `dW` summed together (each loaded vector of `G` serves this many rows).
const MR: usize = 4;

/// Weight rows the input gradient's dot products take together, against up to 4 terms:
/// 24 vector sums, 4 vectors of `G` and one of a weight row in AVX-512's 32 registers.
/// Each loaded vector of `G` then serves 6 rows instead of 4, and each weight row is still
/// read once per 4 terms (8 rows × 2 terms, tried before, read each twice as often and lost
/// on few terms). pix2pix's 1024 -> 512 layer, its input gradient against 4 rows
/// (`bench/paired.sh … 3` with `--suite bench/short-reductions.json`, medians / minima,
/// Intel Xeon, 2026-12-07): on 8×8 inputs (64 terms) 1.20x / 1.18x at 1 thread and 1.11x /
/// 1.13x at 2; on 4×4 1.11x / 1.11x and 1.03x / 1.03x; on 2×2 1.05x / 1.05x and 1.04x /
/// 1.04x; the rest ties. (Prefetching the next chunk's gathered rows gained nothing.)
const DOT_ROWS: usize = 6;

/// Bytes of `G` a pass over a strip of columns reads for every row block: the strip stays
/// in L2 while the task's rows run over it. (The unit tests take strips of one chunk, so
/// that their small rows span several.)
const STRIP_BYTES: usize = if cfg!(test) { 256 } else { 256 * 1024 };

/// Whether the weight gradient of `g` takes outer products: its reduction has at least one
/// and at most [`OUTER_MAX`] terms, and a group has at least [`ROWS_PER_TERM`] small-side
/// channels per term (the gathered rows `G`, `R × b × k` values, then cost a small part of
/// writing `dW`, `a × b' × k`: DCGAN's projection's, 64 terms for 100 channels, ran 2.1 ms
/// so against 1.7 on the GEMM over positions).
pub(crate) fn applies(g: &Geometry) -> bool {
    let sizes = Sizes::of(g);
    let terms = g.batch * sizes.small_size;
    (1..=OUTER_MAX).contains(&terms)
        && terms * ROWS_PER_TERM <= sizes.a_pg
        && sizes.b_pg * sizes.k_size > 0
}

/// Per small position `i` and tap `k` (row-major), the flat big-side position
/// `i*s + k*d - p_begin` it reads, or `None` where that falls outside the big side.
fn reach(g: &Geometry) -> Vec<Option<usize>> {
    let big = g.big_spatial();
    let kshape = g.kernel_shape();
    let mut out = Vec::new();
    for i in positions(&g.small_spatial()) {
        for k in positions(&kshape) {
            let mut at = 0usize;
            let mut inside = true;
            for (((a, &ia), &ka), &e) in g.axes.iter().zip(&i).zip(&k).zip(&big) {
                let o = (ia * a.stride + ka * a.dilation) as i64 - a.pad_begin;
                inside &= (0..e as i64).contains(&o);
                at = at * e + o.max(0) as usize;
            }
            out.push(inside.then_some(at));
        }
    }
    out
}

/// Columns of `G` (and of `dW`'s rows) per chunk: 256 bytes, four AVX-512 vectors.
fn chunk_width<T>() -> usize {
    256 / std::mem::size_of::<T>()
}

/// The big side `b` of `g` gathered per group and reduction term into rows `G[r][b'][k]`
/// (`r = (n, i)`; zero where a tap falls outside the big side), stored by chunks of
/// [`chunk_width`] columns: `[group][chunk][r][width]`, so that the rows a kernel call
/// reads are one contiguous run (against whole rows a weight row apart, pix2pix's 8×8
/// layer's weight gradient, 64 terms, measured a tie: 14.2-15.3 ms at 1 thread against
/// 13.9-14.2). Groups gathered on `threads` threads.
fn gather<T: Element>(g: &Geometry, b: &[T], threads: usize) -> scratch::Scratch<T> {
    let Sizes {
        small_size,
        big_size,
        k_size,
        b_ch,
        b_pg,
        ..
    } = Sizes::of(g);
    let terms = g.batch * small_size;
    let row = b_pg * k_size;
    let cw = chunk_width::<T>();
    let at = reach(g);
    let mut rows = scratch::take::<T>(g.groups * terms * row);
    run_chunks(threads, &mut rows, terms * row, |group, dst| {
        for c0 in (0..row).step_by(cw) {
            let width = cw.min(row - c0);
            let chunk = &mut dst[c0 * terms..][..width * terms];
            for (r, run) in chunk.chunks_exact_mut(width).enumerate() {
                let (n, i) = (r / small_size, r % small_size);
                let taps = &at[i * k_size..][..k_size];
                let base = (n * b_ch + group * b_pg) * big_size;
                let (mut c, mut k) = (c0 / k_size, c0 % k_size);
                for d in run.iter_mut() {
                    *d = taps[k].map_or(T::zero(), |p| b[base + c * big_size + p]);
                    k += 1;
                    if k == k_size {
                        (c, k) = (c + 1, 0);
                    }
                }
            }
        }
    });
    rows
}

/// The sizes both products run on: small-side positions, channels (all and per group),
/// reduction terms, the length of a weight row, the columns of a strip (its gathered rows
/// [`STRIP_BYTES`]) and the weight rows of a task (whole blocks of the product's rows, two
/// tasks a thread).
struct Shape {
    small_size: usize,
    a_ch: usize,
    a_pg: usize,
    terms: usize,
    row: usize,
    strip: usize,
    per_task: usize,
}

impl Shape {
    /// The sizes of `g` for products over row blocks of `block` rows on `threads` threads.
    fn of<T>(g: &Geometry, threads: usize, block: usize) -> Shape {
        let z = Sizes::of(g);
        let terms = g.batch * z.small_size;
        let row = z.b_pg * z.k_size;
        let cw = chunk_width::<T>();
        Shape {
            small_size: z.small_size,
            a_ch: z.a_ch,
            a_pg: z.a_pg,
            terms,
            row,
            strip: (STRIP_BYTES / (terms * std::mem::size_of::<T>()).max(1))
                .next_multiple_of(cw)
                .min(row.next_multiple_of(cw)),
            per_task: z.a_ch.div_ceil(block).div_ceil(2 * threads.max(1)).max(1) * block,
        }
    }
}

/// The runs of rows `(first, count)` of the row block of `live` rows from `a0` that share
/// a group (`a_pg` rows each): the whole block, or where it straddles groups (`a_pg` not a
/// multiple of the block's rows) row by row.
fn block_runs(a0: usize, live: usize, a_pg: usize) -> impl Iterator<Item = (usize, usize)> {
    let whole = live > 0 && a0 / a_pg == (a0 + live - 1) / a_pg;
    let rows = if whole { 0 } else { live };
    whole
        .then_some((0, live))
        .into_iter()
        .chain((0..rows).map(|i| (i, 1)))
}

/// `∂L/∂w` of `g` (one that [`applies`]) from its small side `s` and big side `b` into
/// `dw` (`[a][b'][k]`, every element written), on `threads` threads, in vectors of `isa`
/// ([`Isa::loops_for`] `T`).
pub(crate) fn grad_weight<T: Element>(
    g: &Geometry,
    s: &[T],
    b: &[T],
    threads: usize,
    isa: Isa,
    dw: &mut [T],
) {
    let Shape {
        small_size,
        a_ch,
        a_pg,
        terms,
        row,
        strip,
        per_task,
    } = Shape::of::<T>(g, threads, MR);
    let cw = chunk_width::<T>();
    let rows = gather(g, b, threads);
    let rows = &rows[..];
    run_chunks(threads, dw, per_task * row, |task, out| {
        let first = task * per_task;
        let mut coef = [T::zero(); MR * OUTER_MAX];
        for s0 in (0..row).step_by(strip) {
            for (blk, out) in out.chunks_mut(MR * row).enumerate() {
                let a0 = first + blk * MR;
                let live = out.len() / row;
                for (i0, n_rows) in block_runs(a0, live, a_pg) {
                    let a = a0 + i0;
                    for i in 0..n_rows {
                        for r in 0..terms {
                            let (n, p) = (r / small_size, r % small_size);
                            coef[i * terms + r] = s[(n * a_ch + a + i) * small_size + p];
                        }
                    }
                    let coef = &coef[..n_rows * terms];
                    let g_rows = &rows[(a / a_pg) * terms * row..][..terms * row];
                    let out = &mut out[i0 * row..][..n_rows * row];
                    for c0 in (s0..row.min(s0 + strip)).step_by(cw) {
                        let width = cw.min(row - c0);
                        let chunk = &g_rows[c0 * terms..][..width * terms];
                        sum_chunk(isa, coef, terms, chunk, (row, c0, width), out);
                    }
                }
            }
        }
    });
}

/// Whether `∂L/∂x` of `g` runs as dot products ([`input_dots`]): a transposed conv whose
/// weight gradient takes outer products ([`applies`]).
pub(crate) fn input_applies(g: &Geometry) -> bool {
    g.op == Op::ConvTranspose && applies(g)
}

/// `∂L/∂x` of a transposed conv `g` (one that [`input_applies`]) from its weight `w` and the
/// output's gradient `gy`, on `threads` threads in vectors of `isa`: `∂L/∂x[n, a, i] =
/// Σ_(b', k) w[a][b'][k] · G_r[b'][k]` for `r = (n, i)`, the gathered rows of the weight
/// gradient ([`gather`]). Each weight row is read where it lies, once per 4 terms, against
/// 4 gathered rows at a time, [`DOT_ROWS`] weight rows together (24 vector sums, added
/// across lanes at the end in a fixed order); tasks own whole rows, so the result is
/// bitwise identical for any thread count. The plan of the conv this is would pack the
/// whole weight first on every call (pix2pix's 1024 -> 512 layer on 2×2 inputs: 33.5 MB,
/// 10-13 ms of its input gradient at 1 thread).
pub(crate) fn input_dots<T: Element>(
    g: &Geometry,
    w: &[T],
    gy: &[T],
    threads: usize,
    isa: Isa,
) -> Vec<T> {
    let Shape {
        small_size,
        a_ch,
        a_pg,
        terms,
        row,
        strip,
        per_task,
    } = Shape::of::<T>(g, threads, DOT_ROWS);
    let rows = gather(g, gy, threads);
    let rows = &rows[..];
    // Sums as [a][r], then into x's layout [n][a][i].
    let mut sums = vec![T::zero(); a_ch * terms];
    run_chunks(threads, &mut sums, per_task * terms, |task, out| {
        // A row block's vector sums, `[row][term][SLOTS]`, kept between strips.
        let mut part = vec![T::zero(); DOT_ROWS * terms * SLOTS];
        for (blk, out) in out.chunks_mut(DOT_ROWS * terms).enumerate() {
            let a0 = task * per_task + blk * DOT_ROWS;
            let live = out.len() / terms;
            for (i0, n_rows) in block_runs(a0, live, a_pg) {
                let a = a0 + i0;
                let wrows = &w[a * row..][..n_rows * row];
                let g_rows = &rows[(a / a_pg) * terms * row..][..terms * row];
                let part = &mut part[..n_rows * terms * SLOTS];
                part.fill(T::zero());
                // Strip by strip (its gathered rows stay in L2, a row block's part of the
                // weight rows in L1), every term of the strip.
                for s0 in (0..row).step_by(strip) {
                    let cols = (s0, row.min(s0 + strip));
                    for r0 in (0..terms).step_by(4) {
                        let tb = 4.min(terms - r0);
                        dot_rows(isa, wrows, n_rows, g_rows, (terms, r0, tb, row), cols, part);
                    }
                }
                for (o, p) in out[i0 * terms..][..n_rows * terms]
                    .iter_mut()
                    .zip(part.chunks_exact(SLOTS))
                {
                    *o = p.iter().fold(T::zero(), |s, &v| s + v);
                }
            }
        }
    });
    let mut gx = vec![T::zero(); g.batch * a_ch * small_size];
    for (a, s) in sums.chunks_exact(terms.max(1)).enumerate() {
        for (r, &v) in s.iter().enumerate() {
            let (n, i) = (r / small_size, r % small_size);
            gx[(n * a_ch + a) * small_size + i] = v;
        }
    }
    gx
}

/// Partial sums kept per (weight row, term) between strips: a vector's lanes (16 f32 on
/// AVX-512; fewer on the other paths, the rest staying zero), added in order at the end.
const SLOTS: usize = 16;

/// Add to `part[i][r0 + t][..]` (`[row][term][SLOTS]`) the products of weight row `i` of
/// `wrows` (rows of `row` values; `n_rows` of them) with `G_(r0 + t)`, lane by lane, over
/// the columns `cols` (whole chunks but at the row's end), for the `tb` (at most 4) terms
/// from `r0`; `G` in [`gather`]'s chunks (`terms` rows each).
fn dot_rows<T: Element>(
    isa: Isa,
    wrows: &[T],
    n_rows: usize,
    g: &[T],
    (terms, r0, tb, row): (usize, usize, usize, usize),
    cols: (usize, usize),
    part: &mut [T],
) {
    let cw = chunk_width::<T>();
    assert!(
        n_rows <= DOT_ROWS
            && (1..=4).contains(&tb)
            && r0 + tb <= terms
            && wrows.len() >= n_rows * row
            && g.len() >= terms * row
            && part.len() >= n_rows * terms * SLOTS
            && cols.0.is_multiple_of(cw)
            && cols.0 <= cols.1
            && cols.1 <= row
    );
    let shape = (terms, r0, tb, row);
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 && Isa::Avx512.available() {
            if let (Some(wr), Some(gr), Some(p)) = (
                super::as_f32(wrows),
                super::as_f32(g),
                super::as_f32_mut(&mut *part),
            ) {
                // Safety: AVX-512F detected; the bounds were checked above.
                unsafe { dots_avx512_f32(wr, n_rows, gr, shape, cols, p) };
                return;
            }
            if let (Some(wr), Some(gr), Some(p)) = (
                super::as_type::<f64, _>(wrows),
                super::as_type::<f64, _>(g),
                super::as_type_mut::<f64, _>(part),
            ) {
                // Safety: as above.
                unsafe { dots_avx512_f64(wr, n_rows, gr, shape, cols, p) };
                return;
            }
        }
        if isa != Isa::Scalar && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        {
            // Safety: the features were just detected.
            unsafe { dots_avx2(wrows, n_rows, g, shape, cols, part) };
            return;
        }
    }
    let _ = isa;
    dots_body::<T, false>(wrows, n_rows, g, shape, cols, part);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2<T: Element>(
    wrows: &[T],
    n_rows: usize,
    g: &[T],
    shape: (usize, usize, usize, usize),
    cols: (usize, usize),
    part: &mut [T],
) {
    dots_body::<T, true>(wrows, n_rows, g, shape, cols, part);
}

/// The portable sums of [`dot_rows`], in `L` lanes (compiled for AVX2 with fused
/// multiply-adds where `FUSED`).
#[inline(always)]
fn dots_body<T: Element, const FUSED: bool>(
    wrows: &[T],
    n_rows: usize,
    g: &[T],
    (terms, r0, tb, row): (usize, usize, usize, usize),
    (c_begin, c_end): (usize, usize),
    part: &mut [T],
) {
    let cw = chunk_width::<T>();
    let mut acc = [[[T::zero(); L]; 4]; DOT_ROWS];
    for (i, acc) in acc.iter_mut().enumerate().take(n_rows) {
        for (t, a) in acc.iter_mut().enumerate().take(tb) {
            a.copy_from_slice(&part[(i * terms + r0 + t) * SLOTS..][..L]);
        }
    }
    for c0 in (c_begin..c_end).step_by(cw) {
        let width = cw.min(row - c0);
        let chunk = &g[c0 * terms..][..width * terms];
        for j0 in (0..width).step_by(L) {
            let w = L.min(width - j0);
            let load = |s: &[T]| {
                let mut v = [T::zero(); L];
                v[..w].copy_from_slice(&s[..w]);
                v
            };
            let gv: [[T; L]; 4] =
                std::array::from_fn(|t| load(&chunk[((r0 + t.min(tb - 1)) * width + j0)..]));
            for (i, acc) in acc.iter_mut().enumerate().take(n_rows) {
                let wv = load(&wrows[i * row + c0 + j0..]);
                for (a, gv) in acc.iter_mut().zip(&gv).take(tb) {
                    for ((a, &x), &y) in a.iter_mut().zip(&wv).zip(gv) {
                        *a = if FUSED { x.mul_add(y, *a) } else { *a + x * y };
                    }
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate().take(n_rows) {
        for (t, a) in acc.iter().enumerate().take(tb) {
            part[(i * terms + r0 + t) * SLOTS..][..L].copy_from_slice(a);
        }
    }
}

/// `$f::<A, B>(args)` for the `A` of `$a` and the `B` of `$b`, each 1 to 4 (below 2 as 1):
/// the AVX-512 kernels' row and vector (or term) counts as const generics.
#[cfg(target_arch = "x86_64")]
macro_rules! by_four {
    ($a:expr, $b:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match ($a, $b) {
            (4, 4) => $f::<4, 4>($($arg),*),
            (4, 3) => $f::<4, 3>($($arg),*),
            (4, 2) => $f::<4, 2>($($arg),*),
            (4, _) => $f::<4, 1>($($arg),*),
            (3, 4) => $f::<3, 4>($($arg),*),
            (3, 3) => $f::<3, 3>($($arg),*),
            (3, 2) => $f::<3, 2>($($arg),*),
            (3, _) => $f::<3, 1>($($arg),*),
            (2, 4) => $f::<2, 4>($($arg),*),
            (2, 3) => $f::<2, 3>($($arg),*),
            (2, 2) => $f::<2, 2>($($arg),*),
            (2, _) => $f::<2, 1>($($arg),*),
            (_, 4) => $f::<1, 4>($($arg),*),
            (_, 3) => $f::<1, 3>($($arg),*),
            (_, 2) => $f::<1, 2>($($arg),*),
            (_, _) => $f::<1, 1>($($arg),*),
        }
    };
}

/// [`dot_rows`] on AVX-512 registers: `$name` for `$t` in `$lanes` lanes. `ROWS × TB`
/// vector sums (at most 24), loaded from and stored back to `part`; each loaded vector of
/// a weight row serves `TB` terms and of `G` `ROWS` rows, the last vector of a chunk by
/// masked loads.
#[cfg(target_arch = "x86_64")]
macro_rules! dots_avx512 {
    ($name:ident, $block:ident, $t:ty, $lanes:literal, $mask:ty,
     [$maskz_load:ident, $load:ident, $store:ident, $fma:ident]) => {
        /// # Safety
        /// AVX-512F available; the bounds [`dot_rows`] checks.
        #[target_feature(enable = "avx512f")]
        unsafe fn $name(
            wrows: &[$t],
            n_rows: usize,
            g: &[$t],
            (terms, r0, tb, row): (usize, usize, usize, usize),
            cols: (usize, usize),
            part: &mut [$t],
        ) {
            let args = (terms, r0, row);
            match (n_rows, tb) {
                (6, 4) => $block::<6, 4>(wrows, g, args, cols, part),
                (6, 3) => $block::<6, 3>(wrows, g, args, cols, part),
                (6, 2) => $block::<6, 2>(wrows, g, args, cols, part),
                (6, _) => $block::<6, 1>(wrows, g, args, cols, part),
                (5, 4) => $block::<5, 4>(wrows, g, args, cols, part),
                (5, 3) => $block::<5, 3>(wrows, g, args, cols, part),
                (5, 2) => $block::<5, 2>(wrows, g, args, cols, part),
                (5, _) => $block::<5, 1>(wrows, g, args, cols, part),
                _ => by_four!(n_rows, tb, $block(wrows, g, args, cols, part)),
            }
        }

        /// # Safety
        /// AVX-512F available; the bounds [`dot_rows`] checks, for `ROWS` rows and `TB`
        /// terms.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn $block<const ROWS: usize, const TB: usize>(
            wrows: &[$t],
            g: &[$t],
            (terms, r0, row): (usize, usize, usize),
            (c_begin, c_end): (usize, usize),
            part: &mut [$t],
        ) {
            use std::arch::x86_64::*;
            let cw = chunk_width::<$t>();
            let (wp, gp, pp) = (wrows.as_ptr(), g.as_ptr(), part.as_mut_ptr());
            let at = |i: usize, t: usize| (i * terms + r0 + t) * SLOTS;
            let mut acc: [[_; TB]; ROWS] =
                std::array::from_fn(|i| std::array::from_fn(|t| $load(pp.add(at(i, t)))));
            for c0 in (c_begin..c_end).step_by(cw) {
                let width = cw.min(row - c0);
                let chunk = gp.add(c0 * terms + r0 * width);
                for j0 in (0..width).step_by($lanes) {
                    let left = width - j0;
                    let m: $mask = if left >= $lanes { !0 } else { (1 << left) - 1 };
                    let gv: [_; TB] =
                        std::array::from_fn(|t| $maskz_load(m, chunk.add(t * width + j0)));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let wv = $maskz_load(m, wp.add(i * row + c0 + j0));
                        for (a, &x) in acc.iter_mut().zip(&gv) {
                            *a = $fma(wv, x, *a);
                        }
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                for (t, &a) in acc.iter().enumerate() {
                    $store(pp.add(at(i, t)), a);
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
dots_avx512!(
    dots_avx512_f32,
    dots_block_f32,
    f32,
    16,
    u16,
    [
        _mm512_maskz_loadu_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps
    ]
);

#[cfg(target_arch = "x86_64")]
dots_avx512!(
    dots_avx512_f64,
    dots_block_f64,
    f64,
    8,
    u8,
    [
        _mm512_maskz_loadu_pd,
        _mm512_loadu_pd,
        _mm512_storeu_pd,
        _mm512_fmadd_pd
    ]
);

/// `out[i][c0..c0 + width] = Σ_r coef[i·terms + r] · chunk[r][..width]` for each of the
/// `coef.len() / terms` rows of `out` (rows `row` apart; `chunk` holds `terms` rows of
/// `width`), summed in order of `r` from zero.
fn sum_chunk<T: Element>(
    isa: Isa,
    coef: &[T],
    terms: usize,
    chunk: &[T],
    (row, c0, width): (usize, usize, usize),
    out: &mut [T],
) {
    let n_rows = coef.len() / terms;
    assert!(
        width <= chunk_width::<T>()
            && chunk.len() >= terms * width
            && c0 + width <= row
            && out.len() >= (n_rows.max(1) - 1) * row + c0 + width
    );
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 && Isa::Avx512.available() {
            if let (Some(c), Some(g), Some(o)) = (
                super::as_f32(coef),
                super::as_f32(chunk),
                super::as_f32_mut(&mut *out),
            ) {
                // Safety: AVX-512F detected; the bounds were checked above.
                unsafe { outer_avx512_f32(c, terms, g, (row, c0, width), o) };
                return;
            }
            if let (Some(c), Some(g), Some(o)) = (
                super::as_type::<f64, _>(coef),
                super::as_type::<f64, _>(chunk),
                super::as_type_mut::<f64, _>(out),
            ) {
                // Safety: as above.
                unsafe { outer_avx512_f64(c, terms, g, (row, c0, width), o) };
                return;
            }
        }
        if isa != Isa::Scalar && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        {
            // Safety: the features were just detected.
            unsafe { outer_avx2(coef, terms, chunk, (row, c0, width), out) };
            return;
        }
    }
    let _ = isa;
    outer_body::<T, false>(coef, terms, chunk, (row, c0, width), out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn outer_avx2<T: Element>(
    coef: &[T],
    terms: usize,
    chunk: &[T],
    cols: (usize, usize, usize),
    out: &mut [T],
) {
    outer_body::<T, true>(coef, terms, chunk, cols, out);
}

/// Lanes of the portable body's blocks.
const L: usize = 8;

/// The portable sums of [`sum_chunk`], in blocks of `L` columns (compiled for AVX2 with
/// fused multiply-adds where `FUSED`).
#[inline(always)]
fn outer_body<T: Element, const FUSED: bool>(
    coef: &[T],
    terms: usize,
    chunk: &[T],
    (row, c0, width): (usize, usize, usize),
    out: &mut [T],
) {
    let n_rows = coef.len() / terms;
    for j0 in (0..width).step_by(L) {
        let w = L.min(width - j0);
        let mut acc = [[T::zero(); L]; MR];
        for r in 0..terms {
            let mut gv = [T::zero(); L];
            gv[..w].copy_from_slice(&chunk[r * width + j0..][..w]);
            for (i, acc) in acc.iter_mut().enumerate().take(n_rows) {
                let k = coef[i * terms + r];
                for (a, &x) in acc.iter_mut().zip(&gv) {
                    *a = if FUSED { k.mul_add(x, *a) } else { *a + k * x };
                }
            }
        }
        for (i, acc) in acc.iter().enumerate().take(n_rows) {
            out[i * row + c0 + j0..][..w].copy_from_slice(&acc[..w]);
        }
    }
}

/// [`sum_chunk`] on AVX-512 registers, in explicit intrinsics: `$name` for `$t` in `$lanes`
/// lanes (f32: `_ps`, 16; f64: `_pd`, 8). Up to [`MR`] rows by the chunk's (up to 4)
/// vectors (16 accumulators; each loaded vector of `G` serves every row), the last vector
/// by masked loads and stores.
#[cfg(target_arch = "x86_64")]
macro_rules! outer_avx512 {
    ($name:ident, $block:ident, $t:ty, $lanes:literal, $mask:ty,
     [$zero:ident, $maskz_load:ident, $set1:ident, $fma:ident, $mask_store:ident]) => {
        /// # Safety
        /// AVX-512F available; the bounds [`sum_chunk`] checks.
        #[target_feature(enable = "avx512f")]
        unsafe fn $name(
            coef: &[$t],
            terms: usize,
            chunk: &[$t],
            (row, c0, width): (usize, usize, usize),
            out: &mut [$t],
        ) {
            let n_rows = coef.len() / terms;
            let v = width.div_ceil($lanes).clamp(1, 4);
            let last = width - (v - 1) * $lanes;
            let mask: $mask = if last >= $lanes { !0 } else { (1 << last) - 1 };
            let (gp, op) = (chunk.as_ptr(), out.as_mut_ptr().add(c0));
            by_four!(n_rows, v, $block(coef, terms, gp, width, op, row, mask));
        }

        /// `ROWS` rows by `V` vectors: `G`'s rows from `gp`, `gstride` apart; the output
        /// rows from `op`, `row` apart; the last vector under `mask`.
        ///
        /// # Safety
        /// AVX-512F available; every unmasked lane is inside `G` and the output.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn $block<const ROWS: usize, const V: usize>(
            coef: &[$t],
            terms: usize,
            gp: *const $t,
            gstride: usize,
            op: *mut $t,
            row: usize,
            mask: $mask,
        ) {
            use std::arch::x86_64::*;
            let m = |j: usize| if j + 1 == V { mask } else { !0 };
            let mut acc = [[$zero(); V]; ROWS];
            for r in 0..terms {
                let gr = gp.add(r * gstride);
                let gv: [_; V] = std::array::from_fn(|j| $maskz_load(m(j), gr.add(j * $lanes)));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let k = $set1(*coef.get_unchecked(i * terms + r));
                    for (a, &x) in acc.iter_mut().zip(&gv) {
                        *a = $fma(k, x, *a);
                    }
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                for (j, &a) in acc.iter().enumerate() {
                    $mask_store(op.add(i * row + j * $lanes), m(j), a);
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
outer_avx512!(
    outer_avx512_f32,
    block_f32,
    f32,
    16,
    u16,
    [
        _mm512_setzero_ps,
        _mm512_maskz_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_mask_storeu_ps
    ]
);

#[cfg(target_arch = "x86_64")]
outer_avx512!(
    outer_avx512_f64,
    block_f64,
    f64,
    8,
    u8,
    [
        _mm512_setzero_pd,
        _mm512_maskz_loadu_pd,
        _mm512_set1_pd,
        _mm512_fmadd_pd,
        _mm512_mask_storeu_pd
    ]
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{ConvParams, Op};
    use crate::reference::weight_gradient as grad_weight_reference;
    use crate::tensor::{numel, small_ints};

    /// Every instruction set this CPU runs.
    fn isas() -> Vec<Isa> {
        let mut isas = vec![Isa::Scalar];
        isas.extend(
            [Isa::Avx2, Isa::Avx512]
                .into_iter()
                .filter(|i| i.available()),
        );
        isas
    }

    /// Transposed convs of 1 to 20 terms (one to three images), 1-3 axes, groups whose
    /// channels are not a multiple of the row block, a cropped border (padding), dilation,
    /// output padding, rows that end in a partial chunk.
    fn transposed_cases() -> Vec<(Vec<usize>, Vec<usize>, ConvParams)> {
        let s2p1 = ConvParams::new().stride(&[2]).padding(&[1]);
        vec![
            (vec![1, 16, 2, 2], vec![16, 8, 4, 4], s2p1.clone()),
            (vec![3, 13, 1, 1], vec![13, 5, 4, 4], s2p1.clone()),
            (
                vec![2, 98, 2, 3],
                vec![98, 3, 3, 3],
                ConvParams::new()
                    .stride(&[2])
                    .padding(&[1, 2])
                    .output_padding(&[1])
                    .groups(2),
            ),
            (
                vec![1, 21, 5],
                vec![21, 11, 7],
                ConvParams::new().stride(&[3]).dilation(&[2]).padding(&[4]),
            ),
            (vec![1, 18, 2, 1, 2], vec![18, 6, 2, 3, 3], s2p1),
        ]
    }

    /// [`transposed_cases`] and two convs (groups, dilation and padding on one): exactly
    /// the reference on small integers, f32 and f64, on every instruction set this CPU
    /// runs, and the same bits on 1, 2 and 3 threads.
    #[test]
    fn outer_products_match_the_reference() {
        let mut cases: Vec<(Op, Vec<usize>, Vec<usize>, ConvParams)> = transposed_cases()
            .into_iter()
            .map(|(xs, ws, p)| (Op::ConvTranspose, xs, ws, p))
            .collect();
        cases.push((
            Op::Conv,
            vec![1, 6, 5, 5],
            vec![18, 6, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
        ));
        cases.push((
            Op::Conv,
            vec![2, 4, 3, 3],
            vec![98, 2, 2, 2],
            ConvParams::new()
                .groups(2)
                .dilation(&[1, 2])
                .padding(&[0, 1]),
        ));
        for (op, xs, ws, p) in cases {
            let g = Geometry::new(op, &xs, &ws, None, &p).unwrap();
            assert!(applies(&g), "{op:?} {xs:?} {ws:?}");
            let x = small_ints::<f64>(numel(&xs), 7);
            let gy = small_ints::<f64>(numel(&g.output_shape()), 8);
            let want = grad_weight_reference(&g, &x, &gy);
            let (s, b) = g.weight_sides(&x, &gy);
            let (x32, gy32) = (to_f32(&x), to_f32(&gy));
            let (s32, b32) = g.weight_sides(&x32, &gy32);
            let want32 = to_f32(&want);
            for isa in isas() {
                for threads in [1, 2, 3] {
                    let mut got = vec![f64::NAN; want.len()];
                    grad_weight(&g, s, b, threads, isa, &mut got);
                    assert_eq!(got, want, "{op:?} {xs:?} {ws:?} {isa} {threads}");
                    let mut got = vec![f32::NAN; want.len()];
                    grad_weight(&g, s32, b32, threads, isa, &mut got);
                    assert_eq!(got, want32, "{op:?} {xs:?} {ws:?} {isa} {threads} f32");
                }
            }
        }
    }

    fn to_f32(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    /// The input gradient of [`transposed_cases`] (and of a 1-D layer of 3 images whose
    /// rows end mid-vector) by dot products: exactly the reference conv of `gy` on small
    /// integers, f32 and f64, on every instruction set this CPU runs, the same bits on 1, 2
    /// and 3 threads; and only transposed convs take it.
    #[test]
    fn input_dots_match_the_reference() {
        let mut cases = transposed_cases();
        cases.push((vec![3, 23, 1], vec![23, 7, 5], ConvParams::new()));
        for (xs, ws, p) in cases {
            let g = Geometry::new(Op::ConvTranspose, &xs, &ws, None, &p).unwrap();
            assert!(input_applies(&g), "{xs:?} {ws:?}");
            let w = small_ints::<f64>(numel(&ws), 5);
            let gy = small_ints::<f64>(numel(&g.output_shape()), 6);
            let want = crate::reference::gather::gather(&g.adjoint(), &gy, &w, None);
            let (w32, gy32, want32) = (to_f32(&w), to_f32(&gy), to_f32(&want));
            for isa in isas() {
                for threads in [1, 2, 3] {
                    let got = input_dots(&g, &w, &gy, threads, isa);
                    assert_eq!(got, want, "{xs:?} {ws:?} {isa} {threads}");
                    let got = input_dots(&g, &w32, &gy32, threads, isa);
                    assert_eq!(got, want32, "{xs:?} {ws:?} {isa} {threads} f32");
                }
            }
        }
        let conv = ConvParams::new().stride(&[2]).padding(&[1]);
        let g = Geometry::new(Op::Conv, &[1, 6, 5, 5], &[18, 6, 4, 4], None, &conv).unwrap();
        assert!(applies(&g) && !input_applies(&g));
    }

    /// More terms than [`OUTER_MAX`], or than a group's small-side channels allow (the
    /// gathered rows would cost too much beside the gradient), or none: other paths.
    #[test]
    fn declines_long_or_empty_reductions() {
        let g = |xs: &[usize], ws: &[usize]| {
            let p = ConvParams::new().stride(&[2]).padding(&[1]);
            Geometry::new(Op::ConvTranspose, xs, ws, None, &p).unwrap()
        };
        assert!(applies(&g(&[1, 256, 8, 8], &[256, 4, 4, 4])));
        assert!(!applies(&g(&[1, 256, 9, 8], &[256, 4, 4, 4])));
        assert!(!applies(&g(&[1, 63, 4, 4], &[63, 4, 4, 4])));
        assert!(applies(&g(&[1, 64, 4, 4], &[64, 4, 4, 4])));
        assert!(!applies(&g(&[0, 8, 1, 1], &[8, 4, 4, 4])));
    }
}
