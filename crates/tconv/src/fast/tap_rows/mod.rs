//! Strided depthwise layers by kernel-row vectors (FCN's k16 s8 upsampler seen from its
//! gradients: the strided depthwise conv that is its input gradient, and its weight gradient).
//!
//! With a large last-axis stride `s` the big side (conv input, transposed-conv output) is
//! `s` times finer than the small side, and a small position `p` meets, per kernel row, one
//! contiguous run of big values: `B[p·s + k - pad]` for `k < kw`. Splitting the big plane
//! into its `s^D` polyphase components first (as the row engine does for other strided
//! depthwise layers) reshuffles the largest tensor element by element; here each row is
//! copied whole and its runs read as they lie in it, vectors running along the kernel's last
//! axis, 8 taps at a time (`kw` a multiple of 8, dilation 1 on that axis):
//! - conv (the small side from the big one): `S[p] = Σ_rows Σ_j w_row[8j..] · B_row[p·s + 8j..]`,
//!   the lane sums of 8 positions kept in registers and reduced across lanes at the end;
//! - weight gradient: `dW_row[8j..] += Σ_p S[p] · B_row[p·s + 8j..]`, four partial sums over
//!   `p`.
//!
//! Each big row is copied once into a zero-margined row buffer, a small cache of the rows
//! the current small row reads (consecutive small rows share most of them), so no border
//! test is left in the loops. For f32 on AVX-512 or AVX2 ([`in_place`]) the big rows are
//! read where they lie instead, a vector of taps (16 or 8) at a time with masked loads at
//! the rows' ends, eight kernel rows at a time, each front to back, the next small row's
//! new rows prefetched; a backward pass asking for both gradients feeds each loaded run to
//! both (the big side is read from memory once). fcn_dw's input gradient had spent half
//! its time in the row copies. Against them (paired, median / min of the calls), at 1
//! thread: on AVX-512 its input gradient ran 2.01x / 2.10x faster, its weight gradient
//! 2.12x / 2.29x and its backward pass 2.46x / 2.54x (10 rounds; at 2 threads 1.71x /
//! 1.66x, 1.45x / 1.65x and 2.34x / 2.77x); on AVX2 2.44x / 2.65x, 2.39x / 2.50x and 2.47x
//! / 2.43x (6 rounds). Reading several rows at a time matters: one row at a time, front to
//! back, its weight gradient ran at less than half the speed; without the prefetch, all
//! three at two thirds. Each plane is summed by one task in a fixed order: results are
//! bitwise identical for any thread count.

#[cfg(target_arch = "x86_64")]
mod lanes;

use super::{scratch, Isa};
use crate::geometry::{AxisGeometry, Geometry};
use crate::params::Op;
use crate::tensor::Element;

/// Vector width of the tap vectors (lanes of `T`).
const LANES: usize = 8;

/// Smallest last-axis stride from which a depthwise conv runs by tap vectors. Measured
/// (1 thread, 32 channels, minima of two rounds each): k8 s4 5.8-9.0 ms against 9.9-10.2
/// ms through the polyphase row engine, k16 s4 2.4-4.1 against 5.0-9.7; at stride 2 a tie
/// (k8: 3.56 against 3.55 over four rounds).
pub const CONV_MIN_STRIDE: usize = 4;
/// Smallest last-axis stride from which a depthwise weight gradient runs by tap vectors.
/// Measured as above: k8 s2 2.7-4.0 ms against 5.6 ms by row dot products over polyphase
/// copies; k16 s2 32-42 against 46-61.
pub const WEIGHT_MIN_STRIDE: usize = 2;

/// Whether `g` (either op) is a depthwise layer the tap-vector loops serve: one input and
/// one output channel per group, last axis with dilation 1, a kernel of whole vectors and a
/// stride of at least `min_stride`.
pub fn applies(g: &Geometry, min_stride: usize) -> bool {
    let Some(last) = g.axes.last() else {
        return false;
    };
    g.in_per_group() == 1
        && g.out_per_group() == 1
        && last.dilation == 1
        && last.kernel % LANES == 0
        && last.stride >= min_stride
}

/// The row mapping of a depthwise layer (see the module documentation).
#[derive(Clone, Debug)]
pub struct TapRows {
    op: Op,
    axes: Vec<AxisGeometry>,
    /// Zero margin before each buffered big row, and where small position 0's run starts
    /// in it (`margin - pad_last`).
    margin: usize,
    c0: usize,
    /// Length of a buffered row: every run of every small position fits.
    padded_len: usize,
}

impl TapRows {
    /// The mapping of `g` (a layer [`applies`] accepts).
    pub fn new(g: &Geometry) -> TapRows {
        let last = &g.axes[g.axes.len() - 1];
        let margin = last.pad_begin.max(0) as usize;
        let c0 = (margin as i64 - last.pad_begin) as usize;
        let (ls, lb) = (last.small(g.op), last.big(g.op));
        let reach = if ls == 0 {
            0
        } else {
            (ls - 1) * last.stride + c0 + last.kernel
        };
        TapRows {
            op: g.op,
            axes: g.axes.clone(),
            margin,
            c0,
            padded_len: (margin + lb).max(reach),
        }
    }

    /// Outer axes (all but the last) and the last one.
    fn split(&self) -> (&[AxisGeometry], &AxisGeometry) {
        let (last, outer) = self.axes.split_last().expect("at least one axis");
        (outer, last)
    }

    /// Kernel rows (all kernel axes but the last): the row cache's slots.
    fn slots(&self) -> usize {
        self.split()
            .0
            .iter()
            .map(|a| a.kernel)
            .product::<usize>()
            .max(1)
    }

    /// Elements of scratch one plane takes (the row cache).
    pub fn scratch_len(&self) -> usize {
        self.slots() * self.padded_len
    }

    /// The kernel rows small row `r` (flat over the outer axes) meets inside the big side:
    /// `(kernel row, big row)`, both flat over the outer axes.
    fn rows_for(&self, r: usize, out: &mut Vec<(usize, usize)>) {
        out.clear();
        let outer = self.split().0;
        'rows: for kr in 0..self.slots() {
            // Outer axes from the innermost: small row `r` and kernel row `kr` both
            // row-major, so each coordinate is peeled off as the loop goes.
            let (mut k_rem, mut p_rem, mut big_row, mut pitch) = (kr, r, 0usize, 1usize);
            for a in outer.iter().rev() {
                let (k, p) = (k_rem % a.kernel, p_rem % a.small(self.op));
                k_rem /= a.kernel;
                p_rem /= a.small(self.op);
                let Some(o) = a.big_index(self.op, p, k) else {
                    continue 'rows;
                };
                big_row += o * pitch;
                pitch *= a.big(self.op);
            }
            out.push((kr, big_row));
        }
    }

    /// Make the big rows of `rows` present in `cache` (`slots()` buffered rows; `tags` says
    /// which big row each holds), copying those that are not; `at[i]` is where row `i` lies.
    /// A big row goes to slot `row mod slots` (consecutive rows: distinct slots, so rows
    /// shared with the previous small row stay), else, where two of them would share one, to
    /// slot `i`.
    fn load<T: Element>(
        &self,
        big_plane: &[T],
        rows: &[(usize, usize)],
        cache: &mut [T],
        tags: &mut [usize],
        at: &mut Vec<usize>,
    ) {
        let n = tags.len();
        let lb = self.split().1.big(self.op);
        at.clear();
        at.extend(rows.iter().map(|&(_, b)| b % n));
        let mut seen = vec![false; n];
        let distinct = at
            .iter()
            .all(|&slot| !std::mem::replace(&mut seen[slot], true));
        if !distinct {
            at.clear();
            at.extend(0..rows.len());
        }
        for (&(_, b), &slot) in rows.iter().zip(at.iter()) {
            if tags[slot] != b {
                let dst = &mut cache[slot * self.padded_len + self.margin..][..lb];
                dst.copy_from_slice(&big_plane[b * lb..(b + 1) * lb]);
                tags[slot] = b;
            }
        }
    }

    /// A fresh row cache: zero rows (the margins stay zero), no row held.
    fn cache<T: Element>(&self) -> (scratch::Scratch<T>, Vec<usize>) {
        let mut cache = scratch::take::<T>(self.scratch_len());
        cache.fill(T::zero());
        (cache, vec![usize::MAX; self.slots()])
    }

    /// Depthwise conv of one channel: `small_plane[p] = Σ_k w[k]·big_plane[p·s + k·d - pad] +
    /// bias`, on `isa` (see [`TapRows::plane`]).
    pub fn conv_plane<T: Element>(
        &self,
        isa: Isa,
        big_plane: &[T],
        w: &[T],
        bias: T,
        small_plane: &mut [T],
    ) {
        let pass = Pass {
            conv: Some((w, bias, small_plane)),
            weight: None,
        };
        self.plane(isa, big_plane, pass);
    }

    /// One plane pair's part of a depthwise weight gradient: `dw[k] += Σ_p
    /// small_plane[p]·big_plane[p·s + k·d - pad]`, on `isa` (see [`TapRows::plane`]).
    pub fn weight_plane<T: Element>(
        &self,
        isa: Isa,
        small_plane: &[T],
        big_plane: &[T],
        dw: &mut [T],
    ) {
        let pass = Pass {
            conv: None,
            weight: Some((small_plane, dw)),
        };
        self.plane(isa, big_plane, pass);
    }

    /// Elements of scratch one plane takes on `isa`: the row cache, or where the rows are
    /// read in place ([`in_place`]) the conv's lane sums of a small row (a vector per
    /// position).
    pub fn scratch_len_on<T: 'static>(&self, isa: Isa) -> usize {
        if in_place::<T>(isa) {
            let lanes = isa.lanes();
            self.split().1.small(self.op).div_ceil(lanes) * lanes * lanes
        } else {
            self.scratch_len()
        }
    }

    /// One pass over `big_plane` computing what `pass` asks for, so that a conv and a
    /// weight gradient of the same plane read it from memory once (each gives the same
    /// result, bit for bit, as when computed alone). f32 reads the big rows in
    /// place ([`in_place`]) on AVX-512 or AVX2; elsewhere (f64, or the portable ISA) each
    /// big row is copied once into the row cache, and the loops are compiled for AVX2 and
    /// FMA unless `isa` is the portable one.
    pub fn plane<T: Element>(&self, isa: Isa, big_plane: &[T], pass: Pass<'_, T>) {
        #[cfg(target_arch = "x86_64")]
        if in_place::<T>(isa) {
            // `T` is f32 (`in_place`), so every view below exists.
            let f32_only = "`in_place` holds for f32 only";
            let big = super::as_f32(big_plane).expect(f32_only);
            let conv = pass.conv.map(|(w, b, out)| {
                let w = super::as_f32(w).expect(f32_only);
                (
                    w,
                    b.to_f32().expect(f32_only),
                    super::as_f32_mut(out).expect(f32_only),
                )
            });
            let weight = pass.weight.map(|(sp, dw)| {
                let sp = super::as_f32(sp).expect(f32_only);
                (sp, super::as_f32_mut(dw).expect(f32_only))
            });
            // Safety: `in_place` checked that the ISA is available.
            unsafe {
                if isa == Isa::Avx512 {
                    self.plane_avx512(big, conv, weight)
                } else {
                    self.plane_avx2_in_place(big, conv, weight)
                }
            };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        {
            // Safety: the features were just detected.
            unsafe { self.plane_avx2(big_plane, pass) };
            return;
        }
        let _ = isa;
        self.plane_body(big_plane, pass);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn plane_avx2<T: Element>(&self, big: &[T], pass: Pass<'_, T>) {
        self.plane_body(big, pass);
    }

    /// [`TapRows::plane_rows`] compiled once per combination of passes.
    #[inline(always)]
    fn plane_body<T: Element>(&self, big: &[T], pass: Pass<'_, T>) {
        match (pass.conv.is_some(), pass.weight.is_some()) {
            (true, true) => self.plane_rows::<T, true, true>(big, pass),
            (true, false) => self.plane_rows::<T, true, false>(big, pass),
            (false, true) => self.plane_rows::<T, false, true>(big, pass),
            (false, false) => {}
        }
    }

    #[inline(always)]
    fn plane_rows<T: Element, const CONV: bool, const WEIGHT: bool>(
        &self,
        big: &[T],
        mut pass: Pass<'_, T>,
    ) {
        let (outer, last) = self.split();
        let (ls, s, kw) = (last.small(self.op), last.stride, last.kernel);
        if ls == 0 {
            return;
        }
        let (mut cache, mut tags) = self.cache::<T>();
        let (mut rows, mut at) = (Vec::new(), Vec::new());
        let small_rows: usize = outer.iter().map(|a| a.small(self.op)).product();
        for r in 0..small_rows {
            self.rows_for(r, &mut rows);
            self.load(big, &rows, &mut cache, &mut tags, &mut at);
            let ctx = RowCtx {
                rows: &rows,
                at: &at,
                cache: &cache,
                padded_len: self.padded_len,
                s,
                c0: self.c0,
                kw,
            };
            if let (true, Some((w, bias, small))) = (CONV, &mut pass.conv) {
                let out = &mut small[r * ls..(r + 1) * ls];
                let mut p0 = 0;
                while p0 + LANES <= ls {
                    conv_block::<T, LANES>(&ctx, w, p0, *bias, out);
                    p0 += LANES;
                }
                while p0 < ls {
                    conv_block::<T, 1>(&ctx, w, p0, *bias, out);
                    p0 += 1;
                }
            }
            if let (true, Some((small, dw))) = (WEIGHT, &mut pass.weight) {
                weight_row(&ctx, &small[r * ls..(r + 1) * ls], dw);
            }
        }
    }
}

/// Whether elements `T` on `isa` take the in-place loops: f32 with AVX-512F, or AVX2 and
/// FMA. Each small row's big rows are then read where they lie, a vector of taps of a
/// kernel row at a time, with masked loads where a run crosses a row's ends or the
/// kernel's last tap, instead of each big row being copied into the zero-margined row
/// cache first (half of fcn_dw's input-gradient time went to that copy).
pub fn in_place<T: 'static>(isa: Isa) -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && isa != Isa::Scalar
        && isa.available()
}

/// What one pass of [`TapRows::plane`] over a big plane computes.
pub struct Pass<'a, T> {
    /// A conv: this channel's kernel, the bias, and the small plane it writes.
    pub conv: Option<(&'a [T], T, &'a mut [T])>,
    /// A weight gradient: the small plane it reads, and the channel's kernel gradient it
    /// adds to.
    pub weight: Option<(&'a [T], &'a mut [T])>,
}

/// One small row's part of the weight gradient: per kernel row and vector `j`,
/// `dw[8j..] += Σ_p srow[p]·B_row[p·s + c0 + 8j..]` in four partial sums over `p`.
#[inline(always)]
fn weight_row<T: Element>(ctx: &RowCtx<'_, T>, srow: &[T], dw: &mut [T]) {
    let (s, kw) = (ctx.s, ctx.kw);
    for (kr, brow) in ctx.kernel_rows() {
        for (j, dv) in dw[kr * kw..(kr + 1) * kw]
            .chunks_exact_mut(LANES)
            .enumerate()
        {
            let off = ctx.c0 + LANES * j;
            let mut acc = [[T::zero(); LANES]; 4];
            let mut quads = srow.chunks_exact(4);
            let mut p = 0;
            for sq in &mut quads {
                for (u, (a, &sv)) in acc.iter_mut().zip(sq).enumerate() {
                    // Safety: `brow` is `padded_len` long, which holds every run
                    // (`(ls - 1)·s + c0 + kw`, see `TapRows::new`).
                    let v = unsafe { vec_at(brow, (p + u) * s + off) };
                    for l in 0..LANES {
                        a[l] = a[l] + sv * v[l];
                    }
                }
                p += 4;
            }
            for (u, &sv) in quads.remainder().iter().enumerate() {
                // Safety: as above.
                let v = unsafe { vec_at(brow, (p + u) * s + off) };
                for l in 0..LANES {
                    acc[0][l] = acc[0][l] + sv * v[l];
                }
            }
            for l in 0..LANES {
                dv[l] = dv[l] + ((acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]));
            }
        }
    }
}

/// What the passes over one small row read: its kernel rows and where their big rows lie
/// in the row cache.
struct RowCtx<'a, T> {
    rows: &'a [(usize, usize)],
    at: &'a [usize],
    cache: &'a [T],
    padded_len: usize,
    s: usize,
    c0: usize,
    kw: usize,
}

impl<'a, T> RowCtx<'a, T> {
    /// Each kernel row the small row meets, with its buffered big row.
    fn kernel_rows(&self) -> impl Iterator<Item = (usize, &'a [T])> + '_ {
        self.rows.iter().zip(self.at).map(|(&(kr, _), &slot)| {
            (
                kr,
                &self.cache[slot * self.padded_len..(slot + 1) * self.padded_len],
            )
        })
    }
}

/// `LANES` values of `row` from `at`.
///
/// # Safety
/// `at + LANES <= row.len()`.
#[inline(always)]
unsafe fn vec_at<T: Element>(row: &[T], at: usize) -> &[T; LANES] {
    debug_assert!(at + LANES <= row.len());
    &*(row.as_ptr().add(at) as *const [T; LANES])
}

/// Small positions `p0..p0 + B` of one row: per position the tap vectors' products summed
/// lane by lane over every kernel row and vector, then across the lanes.
#[inline(always)]
fn conv_block<T: Element, const B: usize>(
    ctx: &RowCtx<'_, T>,
    w: &[T],
    p0: usize,
    bias: T,
    out: &mut [T],
) {
    let mut acc = [[T::zero(); LANES]; B];
    for (kr, brow) in ctx.kernel_rows() {
        for (j, wv) in w[kr * ctx.kw..(kr + 1) * ctx.kw]
            .chunks_exact(LANES)
            .enumerate()
        {
            let off = ctx.c0 + LANES * j;
            for (i, a) in acc.iter_mut().enumerate() {
                // Safety: `brow` is `padded_len` long, which holds every run of the row's
                // positions (`(ls - 1)·s + c0 + kw`, see `TapRows::new`), and `p0 + i < ls`.
                let v = unsafe { vec_at(brow, (p0 + i) * ctx.s + off) };
                for l in 0..LANES {
                    a[l] = a[l] + wv[l] * v[l];
                }
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        let sum = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
        out[p0 + i] = sum + bias;
    }
}
