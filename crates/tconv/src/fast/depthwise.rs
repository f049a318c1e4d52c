//! Depthwise transposed convolution (one input and one output channel per group, e.g. FCN's
//! 8× bilinear upsampling) by output rows.
//!
//! Such a layer does a handful of multiply-adds per output element (4 for k16 s8), so it is
//! bound by how fast the output can be written, not by arithmetic. Each task takes whole
//! channel planes. For an output row (fixed outer coordinates), every last-axis phase `r`
//! is one dense row `R_r[q] = Σ_taps w_t · x_t[q + shift_t]` over a copy of the plane whose
//! rows carry zero margins (so no border tests in the loop), and the `s` phase rows are then
//! interleaved into the output row (`y[s·q + r] = R_r[q] + b`) with vector shuffles where
//! the stride is 2 or 8. Every output element is written exactly once, by one task, in a
//! fixed order: the result is bitwise identical for any thread count.

use rayon::prelude::*;

use super::direct::{interleave2, interleave8, pool};
use super::scratch;
use super::spec::DirectSpec;
use super::Isa;
use crate::geometry::Geometry;
use crate::tensor::{numel, Element};

/// A planned depthwise transposed convolution.
pub struct DepthwiseRows<T> {
    /// The phase decomposition (taps, shifts, phase extents).
    pub spec: DirectSpec,
    /// The weight `(C, 1, *k)`: one contiguous kernel per channel.
    weight: Vec<T>,
    /// Run the row loops compiled for AVX2+FMA.
    avx2: bool,
    /// Zero margin before each padded input row.
    margin: usize,
    /// Length of a padded input row.
    padded_len: usize,
    /// Taps of phase `p`: `tap_range[p]`, indexing `taps` and `tap_outer`.
    tap_range: Vec<std::ops::Range<usize>>,
    /// Per tap: kernel index, and its source start relative to the row base in the padded
    /// plane (`Σ shift_a · pitch_a + margin + shift_last`).
    taps: Vec<(usize, isize)>,
    /// Per tap, its shift on each outer axis (`dims - 1` values).
    tap_outer: Vec<isize>,
    /// Padded-plane pitch of each outer axis.
    pitch: Vec<usize>,
}

impl<T: Element> DepthwiseRows<T> {
    /// Plan `g` (a depthwise conv_transpose) with weight `w` for `isa`.
    pub fn new(g: &Geometry, w: &[T], isa: Isa) -> DepthwiseRows<T> {
        let spec = DirectSpec::new(g);
        let last = g.axes.len() - 1;
        let shifts = spec
            .phases
            .iter()
            .flat_map(|p| &p.taps)
            .map(|t| t.shift[last]);
        let lo = shifts.clone().min().unwrap_or(0).min(0);
        let hi = shifts.max().unwrap_or(0).max(0) as usize;
        let q_max = spec
            .phases
            .iter()
            .map(|p| p.extents[last])
            .max()
            .unwrap_or(0);
        let margin = lo.unsigned_abs();
        let padded_len = margin + g.axes[last].input.max(q_max + hi);
        let pitch: Vec<usize> = (0..last)
            .map(|a| {
                padded_len
                    * g.axes[a + 1..last]
                        .iter()
                        .map(|x| x.input)
                        .product::<usize>()
            })
            .collect();
        let (mut tap_range, mut taps, mut tap_outer) = (Vec::new(), Vec::new(), Vec::new());
        for p in &spec.phases {
            let first = taps.len();
            for t in &p.taps {
                let mut at = margin as isize + t.shift[last];
                for (&shift, &pa) in t.shift[..last].iter().zip(&pitch) {
                    at += shift * pa as isize;
                    tap_outer.push(shift);
                }
                taps.push((t.kernel_index, at));
            }
            tap_range.push(first..taps.len());
        }
        DepthwiseRows {
            spec,
            weight: w.to_vec(),
            avx2: cfg!(target_arch = "x86_64") && isa != Isa::Scalar,
            margin,
            padded_len,
            tap_range,
            taps,
            tap_outer,
            pitch,
        }
    }

    /// Bytes of scratch per thread: one padded input plane and the phase rows of one output
    /// row.
    pub fn scratch_len(&self, g: &Geometry) -> usize {
        let last = g.axes.len() - 1;
        let rows = numel(&g.axes[..last].iter().map(|a| a.input).collect::<Vec<_>>());
        let s = g.axes[last].stride;
        let q = g.axes[last].output.div_ceil(s);
        rows * self.padded_len + s * q
    }

    /// Run on `x (N, C, *in)` into `y (N, C, *out)` on `threads` threads.
    pub fn execute(&self, g: &Geometry, x: &[T], bias: Option<&[T]>, y: &mut [T], threads: usize) {
        let in_plane = numel(&g.input_shape()[2..]);
        let out_plane = numel(&g.output_shape()[2..]);
        if out_plane == 0 {
            return;
        }
        let run = |(p, plane): (usize, &mut [T])| {
            let c = p % g.out_channels;
            let b = bias.map_or(T::zero(), |b| b[c]);
            self.plane(g, &x[p * in_plane..(p + 1) * in_plane], c, b, plane);
        };
        if threads <= 1 {
            y.chunks_mut(out_plane).enumerate().for_each(run);
        } else {
            pool(threads).install(|| y.par_chunks_mut(out_plane).enumerate().for_each(run));
        }
    }

    /// One channel plane, compiled for AVX2+FMA where the plan allows it.
    fn plane(&self, g: &Geometry, x: &[T], c: usize, bias: T, y: &mut [T]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // Safety: the features were just detected.
            unsafe { self.plane_avx2(g, x, c, bias, y) };
            return;
        }
        self.plane_body(g, x, c, bias, y);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn plane_avx2(&self, g: &Geometry, x: &[T], c: usize, bias: T, y: &mut [T]) {
        self.plane_body(g, x, c, bias, y);
    }

    #[inline(always)]
    fn plane_body(&self, g: &Geometry, x: &[T], c: usize, bias: T, y: &mut [T]) {
        let dims = g.axes.len();
        let last = dims - 1;
        let k_size = numel(&g.kernel_shape());
        let w = &self.weight[c * k_size..(c + 1) * k_size];
        let in_outer: Vec<usize> = g.axes[..last].iter().map(|a| a.input).collect();
        let out_outer: Vec<usize> = g.axes[..last].iter().map(|a| a.output).collect();
        let (l_in, l_out, s) = (g.axes[last].input, g.axes[last].output, g.axes[last].stride);
        let q_len = l_out.div_ceil(s);
        // The input plane with a zero margin around every row.
        let rows = numel(&in_outer);
        let mut buf = scratch::take::<T>(rows * self.padded_len + s * q_len);
        let (padded, phase_rows) = buf.split_at_mut(rows * self.padded_len);
        for (r, prow) in padded.chunks_exact_mut(self.padded_len).enumerate() {
            prow.fill(T::zero());
            prow[self.margin..self.margin + l_in].copy_from_slice(&x[r * l_in..(r + 1) * l_in]);
        }
        let strides: Vec<usize> = g.axes.iter().map(|a| a.stride).collect();
        let mut taps: Vec<(T, usize)> = Vec::new();
        let mut o = vec![0usize; last];
        for o_row in 0..numel(&out_outer) {
            // Outer output coordinates of this row (no closure: the loop body must be
            // compiled inside this function, with its target features).
            let mut rem = o_row;
            for a in (0..last).rev() {
                o[a] = rem % out_outer[a];
                rem /= out_outer[a];
            }
            // Phases of this output row: outer residues fixed, every last-axis residue.
            let mut first_phase = 0;
            for a in 0..last {
                first_phase = first_phase * strides[a] + o[a] % strides[a];
            }
            first_phase *= s;
            let mut base = 0usize;
            for a in 0..last {
                base += (o[a] / strides[a]) * self.pitch[a];
            }
            for r in 0..s {
                let pi = first_phase + r;
                let row = &mut phase_rows[r * q_len..(r + 1) * q_len];
                let q = self.spec.phases[pi].extents[last].min(q_len);
                row[q..].fill(T::zero());
                let row = &mut row[..q];
                // The taps that read inside the input on the outer axes: (weight, start of
                // the padded source run).
                taps.clear();
                for ti in self.tap_range[pi].clone() {
                    let shifts = &self.tap_outer[ti * last..(ti + 1) * last];
                    let inside = (0..last).all(|a| {
                        let i = (o[a] / strides[a]) as isize + shifts[a];
                        i >= 0 && (i as usize) < in_outer[a]
                    });
                    if inside {
                        let (k, at) = self.taps[ti];
                        taps.push((w[k], (base as isize + at) as usize));
                    }
                }
                // Blocks of positions, every tap summed in registers, then the tail.
                let mut q0 = phase_row::<T, 32>(row, 0, padded, &taps);
                q0 = phase_row::<T, 8>(row, q0, padded, &taps);
                for (j, out) in row[q0..].iter_mut().enumerate() {
                    *out = taps
                        .iter()
                        .fold(T::zero(), |a, &(wt, start)| a + wt * padded[start + q0 + j]);
                }
            }
            let out = &mut y[o_row * l_out..(o_row + 1) * l_out];
            store_row(out, phase_rows, q_len, s, bias);
        }
    }
}

/// `y[s·q + r] = rows[r][q] + bias` for the whole output row `out` (`rows` holds `s` rows of
/// `q_len`; row `r` covers the positions `≡ r (mod s)`).
fn store_row<T: Element>(out: &mut [T], rows: &[T], q_len: usize, s: usize, bias: T) {
    let full = out.len() / s; // positions q where every residue lands inside the row
    let row = |r: usize| &rows[r * q_len..r * q_len + full];
    let done = match s {
        1 => {
            let n = out.len();
            for (d, v) in out.iter_mut().zip(&rows[..n]) {
                *d = *v + bias;
            }
            out.len()
        }
        2 if interleave2(&mut out[..2 * full], row(0), row(1), bias) => 2 * full,
        8 => {
            let rs: Vec<&[T]> = (0..8).map(row).collect();
            if interleave8(&mut out[..8 * full], &rs, bias) {
                8 * full
            } else {
                0
            }
        }
        _ => 0,
    };
    for (i, d) in out.iter_mut().enumerate().skip(done) {
        *d = rows[(i % s) * q_len + i / s] + bias;
    }
}

/// `row[q] = Σ_taps w · padded[start + q]` for `q` from `from` in whole blocks of `W`;
/// returns where the blocks end.
#[inline(always)]
fn phase_row<T: Element, const W: usize>(
    row: &mut [T],
    from: usize,
    padded: &[T],
    taps: &[(T, usize)],
) -> usize {
    let mut q0 = from;
    while q0 + W <= row.len() {
        let mut acc = [T::zero(); W];
        for &(wt, start) in taps {
            let src: &[T; W] = padded[start + q0..start + q0 + W]
                .try_into()
                .expect("W values");
            for l in 0..W {
                acc[l] = acc[l] + wt * src[l];
            }
        }
        row[q0..q0 + W].copy_from_slice(&acc);
        q0 += W;
    }
    q0
}
