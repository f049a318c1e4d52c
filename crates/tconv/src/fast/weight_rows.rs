//! The weight gradient by row dot products, where a group has too few `(a, b)` channel
//! pairs for a register tile (depthwise and the like): each `B` plane copied into
//! margin-padded polyphase component rows (`RowLayout`), so that every tap's products
//! with a row of `S` are one contiguous dot product. [`weight_thin`](super::weight_thin)
//! reads the same layout.

use super::direct::run_chunks;
use super::tap_rows::{self, TapRows};
use super::weight::{residues_and_shifts, Sizes};
use super::{scratch, Isa};
use crate::geometry::Geometry;
use crate::tensor::{numel, positions, Element};

/// Where the weight gradient's row dot products read the big side: each `B` plane copied
/// into margin-padded polyphase component rows (as the depthwise row engine does), and per
/// tap, where its run for each row of `S` starts. Per tap `k`, along each axis
/// `k·d - p = s·c + r`, so the big-side value a small position `p` meets is `B_r[p + c]` in
/// the polyphase component `r`: a contiguous run of a padded component row.
pub(crate) struct RowLayout {
    big: Vec<usize>,
    strides: Vec<usize>,
    comp_ext: Vec<usize>,
    margin: usize,
    padded_len: usize,
    /// Elements of one padded plane (all of its components).
    pub(crate) len: usize,
    /// Rows of `S` (all axes but the last) and their length.
    pub(crate) small_rows: usize,
    pub(crate) l_small: usize,
    /// Per tap: the start of its run for small row 0, and its outer shifts.
    pub(crate) tap_start: Vec<isize>,
    tap_shift: Vec<isize>,
    /// Per small row: its outer coordinates, and its offset in a padded component.
    row_coords: Vec<usize>,
    row_base: Vec<usize>,
    /// Per tap, its runs merged across rows: `(start in S', start in B, length)`. `S'`
    /// holds the rows of `S` at the padded pitch with zeros past each row's end
    /// ([`RowLayout::pad_small`]), so that the rows whose `B` runs lie one padded row apart
    /// make one long run, the values between rows meeting zeros.
    pub(crate) spans: Vec<Vec<(usize, usize, usize)>>,
    /// Taps by ascending start in `B`.
    pub(crate) tap_order: Vec<usize>,
}

impl RowLayout {
    pub(crate) fn new(g: &Geometry) -> RowLayout {
        let dims = g.axes.len();
        let last = dims - 1;
        let (small_sp, big_sp, k_sp) = (g.small_spatial(), g.big_spatial(), g.kernel_shape());
        let strides: Vec<usize> = g.axes.iter().map(|a| a.stride).collect();
        let comp_ext: Vec<usize> = big_sp
            .iter()
            .zip(&strides)
            .map(|(l, s)| l.div_ceil(*s))
            .collect();
        let rc = residues_and_shifts(g);
        let c_lo = rc[last].iter().map(|x| x.1).min().unwrap_or(0).min(0);
        let c_hi = rc[last].iter().map(|x| x.1).max().unwrap_or(0).max(0) as usize;
        let margin = c_lo.unsigned_abs();
        let l_small = small_sp[last];
        let padded_len = margin + comp_ext[last].max(l_small + c_hi);
        let comp_rows = numel(&comp_ext[..last]);
        let comps: usize = strides.iter().product();
        let pitch: Vec<usize> = (0..last)
            .map(|a| padded_len * comp_ext[a + 1..last].iter().product::<usize>())
            .collect();
        let mut tap_start = Vec::new();
        let mut tap_shift = Vec::new();
        for k in positions(&k_sp) {
            let comp = (0..dims).fold(0, |f, a| f * strides[a] + rc[a][k[a]].0);
            let mut at = (comp * comp_rows * padded_len + margin) as isize + rc[last][k[last]].1;
            for a in 0..last {
                at += rc[a][k[a]].1 * pitch[a] as isize;
                tap_shift.push(rc[a][k[a]].1);
            }
            tap_start.push(at);
        }
        let small_outer = &small_sp[..last];
        let small_rows = numel(small_outer);
        let mut row_coords = Vec::with_capacity(small_rows * last);
        let mut row_base = Vec::with_capacity(small_rows);
        for p in positions(small_outer) {
            row_base.push(p.iter().zip(&pitch).map(|(&pa, &pt)| pa * pt).sum());
            row_coords.extend_from_slice(&p);
        }
        let mut lay = RowLayout {
            big: big_sp,
            strides,
            comp_ext,
            margin,
            padded_len,
            len: comps * comp_rows * padded_len,
            small_rows,
            l_small,
            tap_start,
            tap_shift,
            row_coords,
            row_base,
            spans: Vec::new(),
            tap_order: Vec::new(),
        };
        lay.tap_order = (0..lay.tap_start.len()).collect();
        lay.tap_order.sort_by_key(|&k| lay.tap_start[k]);
        lay.spans = (0..lay.tap_start.len())
            .map(|k| {
                let mut spans: Vec<(usize, usize, usize)> = Vec::new();
                let mut prev: Option<(usize, usize)> = None;
                for r in 0..lay.small_rows {
                    let Some(at) = lay.run(k, r) else {
                        prev = None;
                        continue;
                    };
                    match (prev, spans.last_mut()) {
                        (Some((pr, pat)), Some(last)) if pr + 1 == r && pat + padded_len == at => {
                            last.2 += padded_len;
                        }
                        _ => spans.push((r * padded_len, at, l_small)),
                    }
                    prev = Some((r, at));
                }
                spans
            })
            .collect();
        lay
    }

    /// Elements of one plane of `S'` (see `spans`).
    pub(crate) fn small_plane(&self) -> usize {
        self.small_rows * self.padded_len
    }

    /// Copy the rows of one `S` plane into the row starts of `dst` (a plane of `S'`); the
    /// rest of each padded row is left as it is (zero: the caller's buffer starts zeroed
    /// and only row starts are ever written).
    pub(crate) fn pad_small<T: Element>(&self, plane: &[T], dst: &mut [T]) {
        for (d, s) in dst
            .chunks_exact_mut(self.padded_len)
            .zip(plane.chunks_exact(self.l_small.max(1)))
        {
            d[..self.l_small].copy_from_slice(s);
        }
    }

    /// Copy the big-side plane `bp` into `padded` (`self.len` long, any contents).
    pub(crate) fn fill<T: Element>(&self, bp: &[T], padded: &mut [T]) {
        padded.fill(T::zero());
        super::depthwise::fill_components(
            bp,
            &self.big,
            &self.strides,
            &self.comp_ext,
            self.margin,
            self.padded_len,
            padded,
        );
    }

    /// Where tap `k`'s run for small row `r` starts in a padded plane; `None` where its
    /// component row lies outside the component (zero rows inside are read as they are).
    #[inline(always)]
    fn run(&self, k: usize, r: usize) -> Option<usize> {
        let last = self.row_coords.len() / self.small_rows.max(1);
        let shifts = &self.tap_shift[k * last..(k + 1) * last];
        let p = &self.row_coords[r * last..(r + 1) * last];
        for ax in 0..last {
            let u = p[ax] as isize + shifts[ax];
            if u < 0 || u as usize >= self.comp_ext[ax] {
                return None;
            }
        }
        Some((self.row_base[r] as isize + self.tap_start[k]) as usize)
    }
}

/// `∂L/∂w` for groups with few channel pairs (depthwise and the like), where a register
/// tile would be mostly padding: each `B` plane is copied into its [`RowLayout`], and then
/// `dW[a, b, k]` is a sum of contiguous dot products, one per row of `S`, in 8 interleaved
/// partial sums. Rows of `dW` (one `a` channel each) are shared out to the threads; each is
/// summed in a fixed order.
pub(crate) fn grad_weight<T: Element>(
    g: &Geometry,
    s: &[T],
    b: &[T],
    threads: usize,
    isa: Isa,
    dw: &mut [T],
) {
    let Sizes {
        small_size,
        big_size,
        k_size,
        a_ch,
        b_ch,
        a_pg,
        b_pg,
    } = Sizes::of(g);
    let avx2 = cfg!(target_arch = "x86_64") && isa != Isa::Scalar;
    if tap_rows::applies(g, tap_rows::WEIGHT_MIN_STRIDE) {
        // Depthwise with a large last-axis stride: each big row copied once into a row
        // cache and read by tap vectors, instead of through a polyphase copy of its plane.
        let taps = TapRows::new(g);
        let run_channel = |a: usize, row: &mut [T]| {
            row.fill(T::zero());
            for n in 0..g.batch {
                let sp = &s[(n * a_ch + a) * small_size..][..small_size];
                let bp = &b[(n * b_ch + a) * big_size..][..big_size];
                taps.weight_plane(isa, sp, bp, row);
            }
        };
        run_chunks(threads, dw, k_size, run_channel);
        return;
    }
    let lay = RowLayout::new(g);
    let run_row = |a: usize, row: &mut [T]| {
        let group = a / a_pg;
        let mut padded = scratch::take::<T>(lay.len);
        let mut acc = vec![[T::zero(); 8]; k_size];
        let mut tail = vec![T::zero(); k_size];
        for bl in 0..b_pg {
            acc.iter_mut().for_each(|v| *v = [T::zero(); 8]);
            tail.iter_mut().for_each(|v| *v = T::zero());
            for n in 0..g.batch {
                let bp = &b[(n * b_ch + group * b_pg + bl) * big_size..][..big_size];
                let sp = &s[(n * a_ch + a) * small_size..][..small_size];
                lay.fill(bp, &mut padded);
                small_plane(avx2, &lay, sp, &padded, &mut acc, &mut tail);
            }
            for k in 0..k_size {
                row[bl * k_size + k] = acc[k].iter().fold(T::zero(), |t, &v| t + v) + tail[k];
            }
        }
    };
    run_chunks(threads, dw, b_pg * k_size, run_row);
}

/// Add one plane pair's dot products to `acc`/`tail` (compiled for AVX2 where allowed).
fn small_plane<T: Element>(
    avx2: bool,
    lay: &RowLayout,
    sp: &[T],
    padded: &[T],
    acc: &mut [[T; 8]],
    tail: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // Safety: the features were just detected.
        unsafe { small_plane_avx2(lay, sp, padded, acc, tail) };
        return;
    }
    let _ = avx2;
    small_plane_body(lay, sp, padded, acc, tail);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn small_plane_avx2<T: Element>(
    lay: &RowLayout,
    sp: &[T],
    padded: &[T],
    acc: &mut [[T; 8]],
    tail: &mut [T],
) {
    small_plane_body(lay, sp, padded, acc, tail);
}

#[inline(always)]
fn small_plane_body<T: Element>(
    lay: &RowLayout,
    sp: &[T],
    padded: &[T],
    acc: &mut [[T; 8]],
    tail: &mut [T],
) {
    let l = lay.l_small;
    for r in 0..lay.small_rows {
        let srow = &sp[r * l..(r + 1) * l];
        for (k, (v, t)) in acc.iter_mut().zip(tail.iter_mut()).enumerate() {
            let Some(at) = lay.run(k, r) else {
                continue;
            };
            let brow = &padded[at..at + l];
            let mut vk = *v;
            let (sc, bc) = (srow.chunks_exact(8), brow.chunks_exact(8));
            let (sr, br) = (sc.remainder(), bc.remainder());
            for (x, y) in sc.zip(bc) {
                for l in 0..8 {
                    vk[l] = vk[l] + x[l] * y[l];
                }
            }
            *v = vk;
            for (&x, &y) in sr.iter().zip(br) {
                *t = *t + x * y;
            }
        }
    }
}
