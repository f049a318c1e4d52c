//! GEMM + col2im for transposed convolutions with few output channels per group.
//!
//! The phase decomposition runs one GEMM per phase whose rows are the output channels. With
//! three of them (the RGB output of a generator) a register tile is mostly empty, and the
//! in-place kernels that serve such layers use each loaded input vector only three times.
//! Here the rows are every (output channel, tap) pair instead:
//! `cols[(co, t)][i] = Σ_ci w[ci][co][t] · x[ci][i]` is one dense GEMM of
//! `M = C_out/g · taps` rows over the input positions (`K = C_in/g`), run by the packed
//! microkernels on panels of the input. Then each output position sums the columns of the
//! taps that reach it (col2im) — phase by phase along the last axis, so that the sums are
//! contiguous vector adds — and the phases are interleaved into the output with the bias.
//!
//! The columns are held for a band of output rows (axis 0) at a time: the input rows the
//! band reads, `M` values each, sized to stay in L2 between the GEMM and the sums (the few
//! rows two bands share are computed by both). Tasks own disjoint bands, and every output
//! element is summed in a fixed order, so results are bitwise identical for any thread
//! count.

use super::direct::{band_tasks, channel_parts, copy_short, interleave2, run_each};
use super::kernels::{KernelFn, Rows};
use super::spec::{pitches_of, residue_taps, ResidueTaps};
use super::{prefetch_read, scratch};
use crate::geometry::Geometry;
use crate::tensor::{numel, Element};

/// Bytes of columns a band aims at: they stay in L2 between the GEMM and the sums.
const BAND_BYTES: usize = 256 * 1024;

/// Tiles ahead that the panel packing prefetches its input rows.
const PREFETCH_TILES: usize = 4;

/// A transposed convolution as a GEMM over (output channel, tap) rows plus a col2im sum.
pub struct Col2im<T> {
    kernel: KernelFn<T>,
    /// Rows of the register tile.
    pub mr: usize,
    /// Vectors of the register tile.
    pub v: usize,
    /// Lanes per vector.
    pub lanes: usize,
    /// Rows of the column matrix: `C_out/g · taps`.
    pub rows: usize,
    blocks: usize,
    /// Weights packed as `[group][block][ci][mr]`, zero past `rows`.
    packed: Vec<T>,
    /// Output rows (axis 0) per band; for 1-D the whole line is one band of one row.
    pub band: usize,
    /// Per leading axis (all but the last), per output coordinate: the `(tap, input)`
    /// pairs that reach it.
    lead: Vec<Vec<Vec<(usize, usize)>>>,
    /// Last axis, per residue `r` (output `s·q + r`): its extent and taps `(k, shift)`
    /// (input `q + shift`).
    last: Vec<ResidueTaps>,
    /// Row-major strides of the kernel's flat tap index.
    kstride: Vec<usize>,
}

/// Input positions along the inner axes of one input row (axis 0; the line for 1-D).
fn in_row(g: &Geometry) -> usize {
    if g.axes.len() >= 2 {
        g.axes[1..].iter().map(|a| a.input).product()
    } else {
        g.axes[0].input
    }
}

/// Rows along axis 0 that bands divide (the output's axis-0 extent; 1 for 1-D, whose
/// whole line is one row).
fn rows0(g: &Geometry) -> usize {
    if g.axes.len() >= 2 {
        g.axes[0].output
    } else {
        1
    }
}

/// Bytes of columns one input row (axis 0; the whole line in 1-D) needs: the least a band
/// holds.
pub fn row_bytes(g: &Geometry, elem: usize) -> usize {
    g.out_per_group() * numel(&g.kernel_shape()) * in_row(g) * elem
}

/// Whether a band of one input row keeps the columns within [`MAX_ROW_BYTES`] (a huge
/// kernel or a very long 1-D line would not: the direct engine takes those).
pub fn fits(g: &Geometry, elem: usize) -> bool {
    row_bytes(g, elem) <= MAX_ROW_BYTES
}

/// Most bytes of columns for one input row.
pub const MAX_ROW_BYTES: usize = 4 * BAND_BYTES;

/// Per output coordinate of one axis, the `(tap, input)` pairs that reach it
/// (`o = i·s - p + k·d`): the taps of its residue ([`residue_taps`]) whose input lies inside.
fn reaching(a: &crate::geometry::AxisGeometry) -> Vec<Vec<(usize, usize)>> {
    let residues = residue_taps(a);
    (0..a.output)
        .map(|o| {
            let q = (o / a.stride) as isize;
            residues[o % a.stride]
                .1
                .iter()
                .filter_map(|&(k, shift)| {
                    let i = q + shift;
                    (i >= 0 && (i as usize) < a.input).then_some((k, i as usize))
                })
                .collect()
        })
        .collect()
}

impl<T: Element> Col2im<T> {
    /// Plan `g` (a transposed convolution) with weight `w` for `kernel`, an `mr × v` tile of
    /// `lanes`-wide vectors, and bands that give `threads` threads work.
    pub fn new(
        g: &Geometry,
        w: &[T],
        kernel: KernelFn<T>,
        (mr, v, lanes): (usize, usize, usize),
        threads: usize,
    ) -> Col2im<T> {
        let dims = g.axes.len();
        let kshape = g.kernel_shape();
        let ksize = numel(&kshape);
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let rows = cout_g * ksize;
        let blocks = rows.div_ceil(mr);
        let mut packed = vec![T::zero(); g.groups * blocks * cin_g * mr];
        for (unit, run) in packed.chunks_mut(cin_g * mr).enumerate() {
            let (group, b) = (unit / blocks, unit % blocks);
            let live = mr.min(rows - b * mr);
            for (ci, dst) in run.chunks_mut(mr).enumerate() {
                let src = (group * cin_g + ci) * rows + b * mr;
                dst[..live].copy_from_slice(&w[src..src + live]);
            }
        }
        let lead = g.axes[..dims - 1].iter().map(reaching).collect();
        let last = residue_taps(&g.axes[dims - 1]);
        let kstride = pitches_of(&kshape);
        let mut c = Col2im {
            kernel,
            mr,
            v,
            lanes,
            rows,
            blocks,
            packed,
            band: 1,
            lead,
            last,
            kstride,
        };
        c.band = c.choose_band(g, threads);
        c
    }

    /// Band height: columns within [`BAND_BYTES`], and enough bands for about four tasks
    /// per thread where the batch and groups do not already give them.
    fn choose_band(&self, g: &Geometry, threads: usize) -> usize {
        let rows0 = rows0(g);
        if g.axes.len() < 2 {
            return 1;
        }
        let a0 = &g.axes[0];
        let per_in_row = (self.rows * in_row(g) * std::mem::size_of::<T>()).max(1);
        let in_rows = (BAND_BYTES / per_in_row).max(1);
        let halo = (a0.span() - 1).div_ceil(a0.stride);
        let by_budget = (in_rows.saturating_sub(halo) * a0.stride).max(a0.stride);
        let want = if threads <= 1 { 1 } else { 4 * threads };
        let units = (g.batch * g.groups).max(1);
        let bands = want.div_ceil(units).max(1);
        by_budget.min(rows0.div_ceil(bands)).clamp(1, rows0.max(1))
    }

    /// The input rows (axis 0) that output rows `band` read: `start..end` (empty if none).
    fn input_rows(&self, g: &Geometry, band: std::ops::Range<usize>) -> std::ops::Range<usize> {
        if g.axes.len() < 2 {
            return 0..1;
        }
        let mut lo = usize::MAX;
        let mut hi = 0;
        for o in band {
            for &(_, i) in &self.lead[0][o] {
                lo = lo.min(i);
                hi = hi.max(i + 1);
            }
        }
        if lo >= hi {
            0..0
        } else {
            lo..hi
        }
    }

    /// Tile width in positions.
    fn tile_lanes(&self) -> usize {
        self.v * self.lanes
    }

    /// Column-matrix pitch for a band reading `in_rows` input rows.
    fn pitch(&self, g: &Geometry, in_rows: usize) -> usize {
        let tl = self.tile_lanes();
        (in_rows * in_row(g)).div_ceil(tl) * tl
    }

    /// Elements of scratch one task allocates: the band's columns (whole blocks of rows),
    /// the input panel and the phase lines.
    pub fn scratch_len(&self, g: &Geometry) -> usize {
        let rows0 = rows0(g);
        let widest = (0..rows0.div_ceil(self.band))
            .map(|b| {
                let r = self.input_rows(g, b * self.band..((b + 1) * self.band).min(rows0));
                self.pitch(g, r.len())
            })
            .max()
            .unwrap_or(0);
        let tl = self.tile_lanes();
        let line: usize = self.last.iter().map(|(q, _)| q).sum();
        self.blocks * self.mr * widest + g.in_per_group() * tl + line
    }

    /// Bytes of the packed weights.
    pub fn packed_bytes(&self) -> usize {
        self.packed.len() * std::mem::size_of::<T>()
    }

    /// Run on `x (N, C_in, *in)` into `y (N, C_out, *out)`, adding `bias`.
    pub fn execute(&self, g: &Geometry, x: &[T], bias: Option<&[T]>, y: &mut [T], threads: usize) {
        let out_plane = numel(&g.output_shape()[2..]);
        if out_plane == 0 || g.batch == 0 {
            return;
        }
        let rows0 = rows0(g);
        let out_row = out_plane / rows0;
        // One task per (group, image, band), each holding its band of every channel's plane.
        let bands: Vec<(std::ops::Range<usize>, usize)> = (0..rows0.div_ceil(self.band))
            .map(|b| {
                let rows = (b * self.band..((b + 1) * self.band).min(rows0)).len();
                (b..b + 1, rows * out_row)
            })
            .collect();
        let whole = channel_parts(g.out_per_group(), 1, 1);
        let tasks = band_tasks(g, y, 1, &whole, &bands);
        run_each(threads, tasks, |t| {
            self.run_task(g, x, bias, t.batch.start, t.group, t.band.start, t.planes);
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn run_task(
        &self,
        g: &Geometry,
        x: &[T],
        bias: Option<&[T]>,
        n: usize,
        group: usize,
        band: usize,
        mut planes: Vec<&mut [T]>,
    ) {
        let dims = g.axes.len();
        let rows0 = rows0(g);
        let out_rows = band * self.band..((band + 1) * self.band).min(rows0);
        let in_rows = self.input_rows(g, out_rows.clone());
        let in_row = in_row(g);
        let npos = in_rows.len() * in_row;
        let pitch = self.pitch(g, in_rows.len());
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let tl = self.tile_lanes();
        let in_plane = numel(&g.input_shape()[2..]);
        // Whole blocks of rows: the kernels write their tiles in place, `mr` rows each.
        let mut cols = scratch::take::<T>(self.blocks * self.mr * pitch);
        let mut panel = scratch::take::<T>(cin_g * tl);
        // The GEMM: columns of every (output channel, tap) row over the band's input rows.
        let first = (n * g.in_channels + group * cin_g) * in_plane + in_rows.start * in_row;
        for p0 in (0..npos).step_by(tl) {
            let len = tl.min(npos - p0);
            // The panel: one row per channel, contiguous. (Reading the rows in place, a
            // plane apart, measured 50% slower: planes of 4 KiB alias in L1.)
            for (ci, dst) in panel.chunks_mut(tl).enumerate() {
                let src = first + ci * in_plane + p0;
                // One stream per channel: more than the hardware prefetchers follow.
                prefetch_read(x, src + PREFETCH_TILES * tl);
                copy_short(&mut dst[..len], &x[src..src + len]);
                dst[len..].fill(T::zero());
            }
            for b in 0..self.blocks {
                let run = (group * self.blocks + b) * cin_g * self.mr;
                (self.kernel)(
                    &self.packed[run..run + cin_g * self.mr],
                    &panel,
                    Rows::packed(cin_g, tl).out_pitch(pitch),
                    (&mut cols[b * self.mr * pitch + p0..]).into(),
                    false,
                );
            }
        }
        drop(panel);
        // col2im: each output line sums the columns of the taps that reach it.
        let ksize = self.rows / cout_g;
        let last = &g.axes[dims - 1];
        let line_len = last.output;
        let mut lines = scratch::take::<T>(self.last.iter().map(|(q, _)| q).sum());
        let lead_axes = dims - 1;
        // Input pitch of each leading axis within the band's columns.
        let inputs: Vec<usize> = g.axes.iter().map(|ax| ax.input).collect();
        let in_pitch = pitches_of(&inputs);
        // Output lines per band: axis-0 rows of the band times the middle axes' extents.
        let middle: Vec<usize> = g.axes[1.min(lead_axes)..lead_axes]
            .iter()
            .map(|a| a.output)
            .collect();
        let per_row = numel(&middle);
        let n_lines = if dims >= 2 {
            out_rows.len() * per_row
        } else {
            1
        };
        let mut combos: Vec<(usize, usize)> = Vec::new();
        let mut next: Vec<(usize, usize)> = Vec::new();
        let mut coord = vec![0; lead_axes];
        for line in 0..n_lines {
            // Leading coordinates of this line, then the (tap, column) pairs reaching it:
            // the same for every output channel.
            if dims >= 2 {
                coord[0] = out_rows.start + line / per_row.max(1);
                let mut rest = line % per_row.max(1);
                for a in (1..lead_axes).rev() {
                    coord[a] = rest % g.axes[a].output;
                    rest /= g.axes[a].output;
                }
            }
            combos.clear();
            combos.push((0, 0));
            for a in 0..lead_axes {
                next.clear();
                for &(kp, off) in &combos {
                    for &(k, i) in &self.lead[a][coord[a]] {
                        let i = if a == 0 { i - in_rows.start } else { i };
                        next.push((kp + k * self.kstride[a], off + i * in_pitch[a]));
                    }
                }
                std::mem::swap(&mut combos, &mut next);
            }
            for (co, plane) in planes.iter_mut().enumerate() {
                let row_base = co * ksize;
                let mut at = 0;
                for (q, taps) in &self.last {
                    let acc = &mut lines[at..at + q];
                    at += q;
                    acc.fill(T::zero());
                    for &(kp, off) in &combos {
                        for &(k, shift) in taps {
                            let q0 = (-shift).max(0) as usize;
                            let q1 = (*q as isize).min(last.input as isize - shift).max(0) as usize;
                            if q0 >= q1 {
                                continue;
                            }
                            let at = (row_base + kp + k) * pitch + off;
                            let src =
                                &cols[(at as isize + q0 as isize + shift) as usize..][..q1 - q0];
                            add_into(&mut acc[q0..q1], src);
                        }
                    }
                }
                let bias = bias.map_or(T::zero(), |b| b[group * cout_g + co]);
                let dst = &mut plane[line * line_len..(line + 1) * line_len];
                store_line(dst, &lines, self.last.len(), bias);
            }
        }
    }
}

/// `acc += src` element by element (AVX for f32 where available).
fn add_into<T: Element>(acc: &mut [T], src: &[T]) {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && is_x86_feature_detected!("avx")
    {
        let n = acc.len().min(src.len());
        // Safety: `T` is `f32` (same TypeId), so each slice is a valid `[f32]` of its length.
        let (acc, src) = unsafe {
            (
                std::slice::from_raw_parts_mut(acc.as_mut_ptr() as *mut f32, n),
                std::slice::from_raw_parts(src.as_ptr() as *const f32, n),
            )
        };
        // Safety: AVX was detected; both slices are `n` long.
        unsafe { add_into_avx(acc, src) };
        return;
    }
    for (a, &s) in acc.iter_mut().zip(src) {
        *a = *a + s;
    }
}

/// # Safety
/// AVX available; `src.len() >= acc.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn add_into_avx(acc: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    let n = acc.len();
    let (a, s) = (acc.as_mut_ptr(), src.as_ptr());
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_add_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(s.add(i)));
        _mm256_storeu_ps(a.add(i), v);
        i += 8;
    }
    while i < n {
        *a.add(i) += *s.add(i);
        i += 1;
    }
}

/// `dst[s·q + r] = phase_r[q] + bias`, where `lines` holds the `s` phase lines of `dst`
/// one after another (phase `r` is `ceil((len - r) / s)` long).
fn store_line<T: Element>(dst: &mut [T], lines: &[T], s: usize, bias: T) {
    let len = dst.len();
    if s == 1 {
        for (d, &a) in dst.iter_mut().zip(lines) {
            *d = a + bias;
        }
    } else if s == 2 {
        let (na, nc) = (len.div_ceil(2), len / 2);
        let (a, c) = (&lines[..na], &lines[na..na + nc]);
        if !interleave2(&mut dst[..2 * nc], &a[..nc], c, Some(bias)) {
            for q in 0..nc {
                dst[2 * q] = a[q] + bias;
                dst[2 * q + 1] = c[q] + bias;
            }
        }
        if na > nc {
            dst[2 * nc] = a[nc] + bias;
        }
    } else {
        let mut at = 0;
        for r in 0..s.min(len) {
            let q = (len - r).div_ceil(s);
            for (j, &v) in lines[at..at + q].iter().enumerate() {
                dst[s * j + r] = v + bias;
            }
            at += q;
        }
    }
}
