//! im2col + GEMM for convolutions with few input channels per group (the mirror of
//! [`col2im`](super::col2im); e.g. the input gradient of a generator's RGB output layer).
//!
//! With three input channels a conv's reduction is only `3 · taps` long, so the direct
//! engine's register tiles do little work per call and their stores, one tile at a time
//! through the general phase-store path, weigh as much as the arithmetic. Here the input is
//! gathered once into columns, `cols[(ci, t)][p] = x[ci][p·s + t·d - pad]` (zero outside),
//! for a band of output positions sized to stay in L2, and one GEMM per band,
//! `y[co][p] = Σ_(ci,t) w[co][ci][t] · cols[(ci, t)][p]`, runs on the packed microkernels
//! reading the columns in place and writing each register tile straight into the output
//! planes (the kernels' output row pitch is the plane size). Tasks own whole channel
//! planes of an image (or a range of its channel blocks), every output element is one
//! kernel's sum in a fixed order: results are bitwise identical for any thread count.

use super::direct::run_each;
use super::kernels::{KernelFn, Out, Rows};
use super::scratch;
use crate::geometry::Geometry;
use crate::params::Op;
use crate::tensor::{numel, Element};
use std::mem::MaybeUninit;

/// Bytes of columns a band aims at: they stay in L2 while every channel block reads them.
const BAND_BYTES: usize = 256 * 1024;

/// A convolution as an im2col gather plus one GEMM over (input channel, tap) rows.
pub struct Im2col<T> {
    kernel: KernelFn<T>,
    /// Rows of the register tile (output channels).
    pub mr: usize,
    /// Vectors of the register tile.
    pub v: usize,
    /// Lanes per vector.
    pub lanes: usize,
    /// Reduction length: `C_in/g · taps`.
    pub kdim: usize,
    blocks: usize,
    /// Weights packed as `[group][block][k][mr]`, zero past the group's channels.
    packed: Vec<T>,
    /// Output positions (flat) per band.
    pub band: usize,
    /// Tasks per image and group: its channel blocks shared out in this many ranges.
    parts: usize,
}

/// Positions of the widest register tile any ISA uses (AVX-512 6×4).
const WIDEST_TILE: usize = 64;

/// Whether the im2col GEMM serves conv `g` (elements of `elem` bytes): the columns of the
/// widest tile of positions take at most a band.
pub fn fits(g: &Geometry, elem: usize) -> bool {
    g.in_per_group() * numel(&g.kernel_shape()) * WIDEST_TILE * elem <= BAND_BYTES
}

/// Column-matrix pitch for `n` positions of `elem` bytes: whole tiles, and not a multiple
/// of 4 KiB (rows a multiple of 4 KiB apart would share L1 sets as the kernels read down a
/// column).
pub(crate) fn pitch(n: usize, tl: usize, elem: usize) -> usize {
    let p = n.div_ceil(tl).max(1) * tl;
    if (p * elem).is_multiple_of(4096) {
        p + tl
    } else {
        p
    }
}

impl<T: Element> Im2col<T> {
    /// Plan `g` (a convolution) with weight `w` for `kernel`, an `mr × v` tile of
    /// `lanes`-wide vectors, with enough tasks for `threads` threads.
    pub fn new(
        g: &Geometry,
        w: &[T],
        kernel: KernelFn<T>,
        (mr, v, lanes): (usize, usize, usize),
        threads: usize,
    ) -> Im2col<T> {
        let ksize = numel(&g.kernel_shape());
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let kdim = cin_g * ksize;
        let blocks = cout_g.div_ceil(mr);
        let mut packed = vec![T::zero(); g.groups * blocks * kdim * mr];
        for (unit, run) in packed.chunks_mut((kdim * mr).max(1)).enumerate() {
            let (group, b) = (unit / blocks, unit % blocks);
            for m in 0..mr.min(cout_g - b * mr) {
                let co = group * cout_g + b * mr + m;
                for (k, dst) in run.chunks_mut(mr).enumerate() {
                    dst[m] = w[co * kdim + k];
                }
            }
        }
        let tl = v * lanes;
        let out_plane = numel(&g.output_shape()[2..]);
        let elem = std::mem::size_of::<T>();
        let band = (BAND_BYTES / (kdim * elem).max(1) / tl * tl)
            .max(tl)
            .min(out_plane.max(1));
        let units = (g.batch * g.groups).max(1);
        let parts = if threads <= 1 {
            1
        } else {
            (2 * threads).div_ceil(units).clamp(1, blocks.max(1))
        };
        Im2col {
            kernel,
            mr,
            v,
            lanes,
            kdim,
            blocks,
            packed,
            band,
            parts,
        }
    }

    fn tile_lanes(&self) -> usize {
        self.v * self.lanes
    }

    /// Elements of scratch one task allocates: one band's columns and a register tile.
    pub fn scratch_len(&self) -> usize {
        let tl = self.tile_lanes();
        self.kdim * pitch(self.band, tl, std::mem::size_of::<T>()) + self.mr * tl
    }

    /// Bytes of the packed weights.
    pub fn packed_bytes(&self) -> usize {
        self.packed.len() * std::mem::size_of::<T>()
    }

    /// Run on `x (N, C_in, *in)` into `y (N, C_out, *out)`, adding `bias`.
    pub fn execute(&self, g: &Geometry, x: &[T], bias: Option<&[T]>, y: &mut [T], threads: usize) {
        // Safety: `MaybeUninit<T>` has `T`'s layout, and the tasks write only values into
        // `y` (no uninitialised memory), so it holds values after as before.
        let y = unsafe { &mut *(y as *mut [T] as *mut [MaybeUninit<T>]) };
        self.execute_uninit(g, x, bias, y, threads);
    }

    /// [`Im2col::execute`] into memory that need not hold values yet: every element of `y`
    /// is written (the tasks cover it, each band's tiles cover the band's positions of
    /// every channel of its task) before anything reads it, so a new result needs no zeroing
    /// first (13-14 % of the perf samples of dcgan4's input gradient).
    pub fn execute_uninit(
        &self,
        g: &Geometry,
        x: &[T],
        bias: Option<&[T]>,
        y: &mut [MaybeUninit<T>],
        threads: usize,
    ) {
        let out_plane = numel(&g.output_shape()[2..]);
        let cout_g = g.out_per_group();
        if out_plane == 0 || cout_g == 0 || g.batch == 0 {
            return;
        }
        // Tasks: (image, group, first channel) with their channel planes, contiguous.
        let per_part = self.blocks.div_ceil(self.parts) * self.mr;
        let mut tasks = Vec::new();
        for (unit, planes) in y.chunks_mut(cout_g * out_plane).enumerate() {
            let (n, group) = (unit / g.groups, unit % g.groups);
            for (part, chunk) in planes.chunks_mut(per_part * out_plane).enumerate() {
                tasks.push((n, group, part * per_part, chunk));
            }
        }
        run_each(threads, tasks, |(n, group, c0, planes)| {
            self.run_task(g, x, bias, n, group, c0, planes);
        });
    }

    /// Channels `c0..` of group `group` of image `n` (`planes`: whole planes).
    #[allow(clippy::too_many_arguments)]
    fn run_task(
        &self,
        g: &Geometry,
        x: &[T],
        bias: Option<&[T]>,
        n: usize,
        group: usize,
        c0: usize,
        planes: &mut [MaybeUninit<T>],
    ) {
        let out_plane = numel(&g.output_shape()[2..]);
        let channels = planes.len() / out_plane;
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let tl = self.tile_lanes();
        let in_plane = numel(&g.input_shape()[2..]);
        let image = &x[(n * g.in_channels + group * cin_g) * in_plane..][..cin_g * in_plane];
        let cp = pitch(self.band, tl, std::mem::size_of::<T>());
        let mut cols = scratch::take::<T>(self.kdim * cp);
        let mut tile = scratch::take::<T>(self.mr * tl);
        let mut phases = Vec::new();
        let (b_lo, b_hi) = (c0 / self.mr, (c0 + channels).div_ceil(self.mr));
        // Each tile reads its columns in place and writes its rows a plane apart.
        let shape = Rows {
            k: self.kdim,
            pitch: cp,
            taps: 1,
            out_pitch: out_plane,
        };
        for start in (0..out_plane).step_by(self.band) {
            let len = self.band.min(out_plane - start);
            gather(g, image, start..start + len, &mut cols, cp, &mut phases);
            for p0 in (0..len).step_by(tl) {
                let live = tl.min(len - p0);
                for b in b_lo..b_hi {
                    let run = (group * self.blocks + b) * self.kdim * self.mr;
                    let w = &self.packed[run..run + self.kdim * self.mr];
                    let first = b * self.mr - c0;
                    let rows_live = self.mr.min(channels - first);
                    if live == tl && rows_live == self.mr {
                        let out = Out::uninit(&mut planes[first * out_plane + start + p0..]);
                        (self.kernel)(w, &cols[p0..], shape, out, false);
                    } else {
                        let out = (&mut tile[..]).into();
                        (self.kernel)(w, &cols[p0..], shape.out_pitch(0), out, false);
                        for m in 0..rows_live {
                            let at = (first + m) * out_plane + start + p0;
                            let row = &tile[m * tl..m * tl + live];
                            for (d, &v) in planes[at..at + live].iter_mut().zip(row) {
                                d.write(v);
                            }
                        }
                    }
                }
            }
            if let Some(bias) = bias {
                for (c, plane) in planes.chunks_exact_mut(out_plane).enumerate() {
                    let b = bias[group * cout_g + c0 + c];
                    let band = &mut plane[start..start + len];
                    // Safety: the band's tiles above wrote every position of it, in every
                    // channel of the task; `MaybeUninit<T>` has `T`'s layout.
                    let band = unsafe { &mut *(band as *mut [MaybeUninit<T>] as *mut [T]) };
                    for v in band {
                        *v = *v + b;
                    }
                }
            }
        }
    }
}

/// Fill `cols` (rows `(ci, tap)` of `pitch` values) with the input values each output
/// position of `band` (flat) meets: `x[ci][p·s + t·d - pad]`, zero outside the input. Each
/// input line is dealt once into its `s` polyphase components along the last axis
/// (`phases`, scratch), from which every tap of a kernel row copies one contiguous run.
fn gather<T: Element>(
    g: &Geometry,
    image: &[T],
    band: std::ops::Range<usize>,
    cols: &mut [T],
    pitch: usize,
    phases: &mut Vec<T>,
) {
    let dims = g.axes.len();
    let last = &g.axes[dims - 1];
    let (l_out, l_in, s) = (last.output, last.input, last.stride);
    let kshape = g.kernel_shape();
    let (ksize, kw) = (numel(&kshape), kshape[dims - 1]);
    let in_plane = numel(&g.input_shape()[2..]);
    let outs: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
    let plen = l_in.div_ceil(s);
    phases.resize(s * plen, T::zero());
    // Per tap of a kernel row: its component `r` and shift `c` (input `s·(q + c) + r`), and
    // the component's length.
    let taps: Vec<(usize, i64, i64)> = (0..kw)
        .map(|kx| {
            let off = (kx * last.dilation) as i64 - last.pad_begin;
            let r = off.rem_euclid(s as i64) as usize;
            let len = if r < l_in { (l_in - r).div_ceil(s) } else { 0 };
            (r, off.div_euclid(s as i64), len as i64)
        })
        .collect();
    let mut k = vec![0usize; dims];
    let mut o = vec![0usize; dims];
    for (row0, kernel_row) in cols.chunks_exact_mut(pitch * kw).enumerate() {
        let (ci, ko) = (row0 / (ksize / kw), row0 % (ksize / kw));
        let mut rem = ko;
        for a in (0..dims - 1).rev() {
            k[a] = rem % kshape[a];
            rem /= kshape[a];
        }
        let src = &image[ci * in_plane..(ci + 1) * in_plane];
        // Output lines (all axes but the last) the band touches, each a run of positions.
        let mut p = band.start;
        while p < band.end {
            let line = p / l_out;
            let q0 = p - line * l_out;
            let q1 = l_out.min(q0 + band.end - p);
            let at = p - band.start;
            p += q1 - q0;
            // The input line this output line reads through the kernel row, if inside.
            let mut rem = line;
            for a in (0..dims - 1).rev() {
                o[a] = rem % outs[a];
                rem /= outs[a];
            }
            let in_line = (0..dims - 1).try_fold(0usize, |flat, a| {
                let ax = &g.axes[a];
                ax.big_index(Op::Conv, o[a], k[a])
                    .map(|i| flat * ax.input + i)
            });
            let comps: &[T] = match in_line {
                None => &[],
                Some(i) if s == 1 => &src[i * l_in..(i + 1) * l_in],
                Some(i) => {
                    let xs = &src[i * l_in..(i + 1) * l_in];
                    super::pack::deal_row(xs, s, usize::MAX, phases, |r| r * plen);
                    phases
                }
            };
            for (&(r, c, len), dst_row) in taps.iter().zip(kernel_row.chunks_exact_mut(pitch)) {
                let dst = &mut dst_row[at..at + (q1 - q0)];
                // Positions whose input lies inside: `0 <= q + c < len`.
                let lo = (q0 as i64).max(-c).min(q1 as i64);
                let hi = (q1 as i64).min(len - c).max(lo);
                if in_line.is_none() || lo >= hi {
                    dst.fill(T::zero());
                    continue;
                }
                let (a, b) = ((lo - q0 as i64) as usize, (hi - q0 as i64) as usize);
                dst[..a].fill(T::zero());
                let from = r * plen + (lo + c) as usize;
                dst[a..b].copy_from_slice(&comps[from..from + (b - a)]);
                dst[b..].fill(T::zero());
            }
        }
    }
}
