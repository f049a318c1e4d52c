//! Depthwise convolution and transposed convolution (one input and one output channel per
//! group, e.g. FCN's 8× bilinear upsampling and its gradient) by output rows.
//!
//! Such a layer does a handful of multiply-adds per output element (4 for k16 s8 transposed),
//! so it is bound by moving data, not by arithmetic. Each task takes whole channel planes.
//! The plane is first copied into rows with zero margins, one set of rows per input
//! polyphase component (`x_ρ[u] = x[s·u + ρ]`, only for a strided conv), so that every tap
//! reads one contiguous run and no border test is left in the loop. For an output row (fixed
//! outer coordinates), every last-axis phase `r` is one dense row
//! `R_r[q] = Σ_taps w_t · x_t[q + shift_t]`, summed in registers, and the `s` phase rows are
//! interleaved into the output row (`y[s·q + r] = R_r[q] + b`) with vector shuffles where
//! the stride is 2 or 8 (a conv has one phase). At stride 8 (FCN's upsampler), rows whose
//! taps all read inside the input skip the phase rows: for each block of 8 positions the 8
//! phases are summed in registers, transposed there, and stored as 64 consecutive outputs.
//! Every output element is written exactly
//! once, by one task, in a fixed order: the result is bitwise identical for any thread count.

use super::direct::{interleave2, interleave8_to, run_chunks, store_fence};
use super::pack::deal_row;
use super::scratch;
use super::spec::DirectSpec;
use super::tap_rows::{self, TapRows};
use super::Isa;
use crate::geometry::Geometry;
use crate::params::Op;
use crate::tensor::{numel, Element};

/// Output bytes from which the row engine may write with non-temporal stores ([`streams`]).
const STREAM_BYTES: usize = 16 << 20;

/// Whether the row engine writes an output of `bytes` with non-temporal stores (no read for
/// ownership, the lines bypass the caches): from [`STREAM_BYTES`] on (fcn_dw ran 10 %
/// faster so on the project's first machine), but not where the output fits in half the
/// last-level cache, whose lines the next layer would read: on a 2-core Emerald Rapids Xeon
/// with 300 MiB of L3, fcn_dw's 22 MB took 1.08-1.11x less time at 1 thread and
/// 1.19-1.24x at 2 with ordinary stores (12 paired rounds). Where the cache is unknown,
/// from `STREAM_BYTES` on.
fn streams(bytes: usize) -> bool {
    bytes >= STREAM_BYTES && super::isa::last_level_cache_bytes().is_none_or(|llc| bytes > llc / 2)
}

/// A planned depthwise convolution or transposed convolution.
pub struct DepthwiseRows<T> {
    /// The phase decomposition (taps, shifts, phase extents).
    pub spec: DirectSpec,
    /// The weight (`(C, 1, *k)` either way): one contiguous kernel per channel.
    weight: Vec<T>,
    /// The plan's ISA: the row loops are compiled for AVX2+FMA unless it is the portable
    /// one, and the tap-vector loops read f32 rows in place on AVX-512 and AVX2.
    isa: Isa,
    /// Zero margin before each padded input row.
    margin: usize,
    /// Length of a padded input row.
    padded_len: usize,
    /// Taps of phase `p`: `tap_range[p]`, indexing `taps` and `tap_outer`.
    tap_range: Vec<std::ops::Range<usize>>,
    /// Per tap: kernel index, and its source start relative to the row base in the padded
    /// plane (`Σ shift_a · pitch_a + margin + shift_last`).
    taps: Vec<(usize, isize)>,
    /// Per tap, its shift on each outer axis, then its valid source extent on each
    /// (`2 · (dims - 1)` values).
    tap_outer: Vec<isize>,
    /// Padded-plane pitch of each outer axis.
    pitch: Vec<usize>,
    /// Input stride per axis (the polyphase split; all 1 for a transposed conv).
    in_stride: Vec<usize>,
    /// Extents of a polyphase component (the input itself when not strided).
    comp_ext: Vec<usize>,
    /// Per outer residue combination (a group of last-axis phases): its taps, where the
    /// fused stride-8 path takes them (see [`UniformTaps`]).
    uniform: Vec<Option<UniformTaps>>,
    /// A conv with a large last-axis stride: each input row copied once and read by tap
    /// vectors (see [`TapRows`]), instead of through a polyphase copy of the plane.
    by_taps: Option<TapRows>,
}

impl<T: Element> DepthwiseRows<T> {
    /// Plan `g` (a depthwise conv or conv_transpose) with weight `w` for `isa`.
    pub fn new(g: &Geometry, w: &[T], isa: Isa) -> DepthwiseRows<T> {
        let spec = DirectSpec::new(g);
        let last = g.axes.len() - 1;
        let in_stride: Vec<usize> = match g.op {
            Op::Conv => g.axes.iter().map(|a| a.stride).collect(),
            Op::ConvTranspose => vec![1; g.axes.len()],
        };
        let comp_ext: Vec<usize> = g
            .axes
            .iter()
            .zip(&in_stride)
            .map(|(a, &s)| a.input.div_ceil(s))
            .collect();
        let comp_rows = numel(&comp_ext[..last]);
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
        let padded_len = margin + comp_ext[last].max(q_max + hi);
        let pitch: Vec<usize> = (0..last)
            .map(|a| padded_len * comp_ext[a + 1..last].iter().product::<usize>())
            .collect();
        let comp_plane = numel(&comp_ext);
        let (mut tap_range, mut taps, mut tap_outer) = (Vec::new(), Vec::new(), Vec::new());
        for p in &spec.phases {
            let first = taps.len();
            for t in &p.taps {
                // `t.component` is the component's offset in a plane of the spec's layout.
                let comp = t.component / spec_comp_plane(&spec, comp_plane);
                let mut at = (comp * comp_rows * padded_len + margin) as isize + t.shift[last];
                for (&shift, &pa) in t.shift[..last].iter().zip(&pitch) {
                    at += shift * pa as isize;
                }
                tap_outer.extend(t.shift[..last].iter().copied());
                tap_outer.extend(t.valid[..last].iter().map(|&v| v as isize));
                taps.push((t.kernel_index, at));
            }
            tap_range.push(first..taps.len());
        }
        let mut rows = DepthwiseRows {
            spec,
            weight: w.to_vec(),
            isa: isa.loops_for::<T>(),
            margin,
            padded_len,
            tap_range,
            taps,
            tap_outer,
            pitch,
            in_stride,
            comp_ext,
            uniform: Vec::new(),
            by_taps: (g.op == Op::Conv && tap_rows::applies(g, tap_rows::CONV_MIN_STRIDE))
                .then(|| TapRows::new(g)),
        };
        let s = rows.spec.out_stride[last];
        rows.uniform = (0..rows.spec.phases.len() / s.max(1))
            .map(|gi| rows.uniform_taps(gi * s..(gi + 1) * s))
            .collect();
        rows
    }

    /// Elements of scratch per thread: one padded input plane (all components) and the
    /// phase rows of one output row.
    pub fn scratch_len(&self, g: &Geometry) -> usize {
        if let Some(t) = &self.by_taps {
            return t.scratch_len_on::<T>(self.isa);
        }
        let last = g.axes.len() - 1;
        let comps: usize = self.in_stride.iter().product();
        let rows = comps * numel(&self.comp_ext[..last]);
        let s = self.spec.out_stride[last];
        let q = g.axes[last].output.div_ceil(s);
        rows * self.padded_len + s * q
    }

    /// Run on `x (N, C, *in)` into `y (N, C, *out)` on `threads` threads.
    pub fn execute(&self, g: &Geometry, x: &[T], bias: Option<&[T]>, y: &mut [T], threads: usize) {
        // Outputs far larger than the caches are written with non-temporal stores (no
        // read for ownership): such layers are bound by memory traffic.
        let stream = streams(std::mem::size_of_val(y));
        self.execute_with(g, x, bias, y, threads, stream);
    }

    /// [`Self::execute`], with non-temporal stores or without (`stream`).
    fn execute_with(
        &self,
        g: &Geometry,
        x: &[T],
        bias: Option<&[T]>,
        y: &mut [T],
        threads: usize,
        stream: bool,
    ) {
        let in_plane = numel(&g.input_shape()[2..]);
        let out_plane = numel(&g.output_shape()[2..]);
        if out_plane == 0 {
            return;
        }
        let k_size = numel(&g.kernel_shape());
        let run = |p: usize, plane: &mut [T]| {
            let c = p % g.out_channels;
            let b = bias.map_or(T::zero(), |b| b[c]);
            if let Some(t) = &self.by_taps {
                let w = &self.weight[c * k_size..(c + 1) * k_size];
                t.conv_plane(self.isa, &x[p * in_plane..(p + 1) * in_plane], w, b, plane);
                return;
            }
            self.plane(g, &x[p * in_plane..(p + 1) * in_plane], c, b, plane, stream);
            if stream {
                store_fence();
            }
        };
        run_chunks(threads, y, out_plane, run);
    }

    /// Whether the conv runs by tap vectors ([`TapRows`]).
    pub fn by_taps(&self) -> bool {
        self.by_taps.is_some()
    }

    /// The taps of phases `phases` (one outer residue combination, every last-axis
    /// residue), if there are 8 phases with 1 to 4 taps each and the same number in every
    /// one (as in a k16 s8 upsampler): see [`UniformTaps`].
    fn uniform_taps(&self, phases: std::ops::Range<usize>) -> Option<UniformTaps> {
        let n = self.tap_range[phases.start].len();
        if phases.len() != 8 || !(1..=4).contains(&n) {
            return None;
        }
        let last = self.pitch.len();
        let mut u = UniformTaps {
            n,
            lo: vec![isize::MAX; last],
            hi: vec![isize::MIN; last],
            valid: vec![isize::MAX; last],
            k: [0; 32],
            offs: [0; 32],
            off_lo: isize::MAX,
            off_hi: isize::MIN,
            srcs: Vec::new(),
            src_of: [0; 32],
            halves: [0; 8],
        };
        let mut i = 0;
        for pi in phases {
            if self.tap_range[pi].len() != n {
                return None;
            }
            for ti in self.tap_range[pi].clone() {
                let outer = &self.tap_outer[2 * ti * last..2 * (ti + 1) * last];
                let (shifts, valid) = outer.split_at(last);
                for a in 0..last {
                    u.lo[a] = u.lo[a].min(shifts[a]);
                    u.hi[a] = u.hi[a].max(shifts[a]);
                    u.valid[a] = u.valid[a].min(valid[a]);
                }
                let (k, at) = self.taps[ti];
                u.k[i] = k;
                u.offs[i] = at;
                u.off_lo = u.off_lo.min(at);
                u.off_hi = u.off_hi.max(at);
                i += 1;
            }
        }
        let mut srcs = u.offs[..8 * n].to_vec();
        srcs.sort_unstable();
        srcs.dedup();
        for i in 0..8 * n {
            let d = srcs.binary_search(&u.offs[i]).expect("listed");
            u.src_of[i] = d;
            if d < 8 {
                u.halves[d] |= 1 << (i / n / 4);
            }
        }
        u.srcs = srcs;
        Some(u)
    }

    /// One channel plane, compiled for AVX2+FMA where the plan allows it.
    fn plane(&self, g: &Geometry, x: &[T], c: usize, bias: T, y: &mut [T], stream: bool) {
        #[cfg(target_arch = "x86_64")]
        if self.isa != Isa::Scalar
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            // Safety: the features were just detected.
            unsafe { self.plane_avx2(g, x, c, bias, y, stream) };
            return;
        }
        self.plane_body(g, x, c, bias, y, stream);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn plane_avx2(&self, g: &Geometry, x: &[T], c: usize, bias: T, y: &mut [T], s: bool) {
        self.plane_body(g, x, c, bias, y, s);
    }

    #[inline(always)]
    fn plane_body(&self, g: &Geometry, x: &[T], c: usize, bias: T, y: &mut [T], stream: bool) {
        let dims = g.axes.len();
        let last = dims - 1;
        let k_size = numel(&g.kernel_shape());
        let w = &self.weight[c * k_size..(c + 1) * k_size];
        let out_outer: Vec<usize> = g.axes[..last].iter().map(|a| a.output).collect();
        let l_out = g.axes[last].output;
        let s = self.spec.out_stride[last];
        let q_len = l_out.div_ceil(s);
        // The input plane as margin-padded rows, component by component.
        let mut buf = scratch::take::<T>(self.scratch_len(g));
        let comps: usize = self.in_stride.iter().product();
        let comp_rows = numel(&self.comp_ext[..last]);
        let rows = comps * comp_rows;
        let (padded, phase_rows) = buf.split_at_mut(rows * self.padded_len);
        padded.fill(T::zero());
        let inputs: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
        fill_components(
            x,
            &inputs,
            &self.in_stride,
            &self.comp_ext,
            self.margin,
            self.padded_len,
            padded,
        );
        let strides = &self.spec.out_stride;
        // This channel's weights of each group's uniform taps.
        let uniform_w: Vec<[f32; 32]> = self
            .uniform
            .iter()
            .map(|u| {
                let k = u.as_ref().map_or([0; 32], |u| u.k);
                std::array::from_fn(|i| w[k[i]].to_f32().unwrap_or(0.0))
            })
            .collect();
        // The same weights by (source, phase): zero where the phase does not read it.
        let uniform_w2: Vec<[f32; 64]> = self
            .uniform
            .iter()
            .zip(&uniform_w)
            .map(|(u, w1)| {
                let mut w2 = [0.0f32; 64];
                if let Some(u) = u {
                    if u.by_source() {
                        for i in 0..8 * u.n {
                            w2[u.src_of[i] * 8 + i / u.n] = w1[i];
                        }
                    }
                }
                w2
            })
            .collect();
        let mut taps: Vec<(T, usize)> = Vec::new();
        let mut ends: Vec<usize> = Vec::new();
        let mut o = vec![0usize; last];
        // The outer coordinates of the row over the strides (the input rows it reads).
        let mut oq = vec![0isize; last];
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
                oq[a] = (o[a] / strides[a]) as isize;
                base += (o[a] / strides[a]) * self.pitch[a];
            }
            let out = &mut y[o_row * l_out..(o_row + 1) * l_out];
            // A row whose taps all read inside the input: the group's taps as they are.
            let gi = first_phase / s.max(1);
            if let Some(u) = &self.uniform[gi] {
                let interior =
                    (0..last).all(|a| oq[a] + u.lo[a] >= 0 && oq[a] + u.hi[a] < u.valid[a]);
                if interior
                    && fused_uniform(
                        out,
                        padded,
                        base,
                        u,
                        (&uniform_w[gi], &uniform_w2[gi]),
                        bias,
                        stream,
                    )
                {
                    continue;
                }
            }
            // The taps of every last-axis phase of this row that read inside the input on
            // the outer axes: (weight, start of the padded source run), phase by phase.
            taps.clear();
            ends.clear();
            ends.push(0);
            for r in 0..s {
                let pi = first_phase + r;
                for ti in self.tap_range[pi].clone() {
                    let outer = &self.tap_outer[2 * ti * last..2 * (ti + 1) * last];
                    let (shifts, valid) = outer.split_at(last);
                    let inside = (0..last).all(|a| {
                        let i = oq[a] + shifts[a];
                        i >= 0 && i < valid[a]
                    });
                    if inside {
                        let (k, at) = self.taps[ti];
                        taps.push((w[k], (base as isize + at) as usize));
                    }
                }
                ends.push(taps.len());
            }
            for r in 0..s {
                let pi = first_phase + r;
                let row = &mut phase_rows[r * q_len..(r + 1) * q_len];
                let q = self.spec.phases[pi].extents[last].min(q_len);
                row[q..].fill(T::zero());
                let row = &mut row[..q];
                let taps = &taps[ends[r]..ends[r + 1]];
                // Blocks of positions, every tap summed in registers, then the tail.
                let mut q0 = phase_row::<T, 32>(row, 0, padded, taps);
                q0 = phase_row::<T, 8>(row, q0, padded, taps);
                for (j, out) in row[q0..].iter_mut().enumerate() {
                    *out = taps
                        .iter()
                        .fold(T::zero(), |a, &(wt, start)| a + wt * padded[start + q0 + j]);
                }
            }
            store_row(out, phase_rows, q_len, s, bias, stream);
        }
    }
}

/// `y[s·q + r] = rows[r][q] + bias` for the whole output row `out` (`rows` holds `s` rows of
/// `q_len`; row `r` covers the positions `≡ r (mod s)`).
fn store_row<T: Element>(out: &mut [T], rows: &[T], q_len: usize, s: usize, bias: T, stream: bool) {
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
        2 if interleave2(&mut out[..2 * full], row(0), row(1), Some(bias)) => 2 * full,
        8 => {
            let rs: [&[T]; 8] = std::array::from_fn(row);
            if interleave8_to(&mut out[..8 * full], &rs, bias, stream) {
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

/// The taps of the 8 last-axis phases of a stride-8 output row, `n` per phase. A row reads
/// inside the input with all of them when its outer coordinates `o` (over the strides)
/// satisfy `0 <= o + lo` and `o + hi < valid` on every outer axis.
struct UniformTaps {
    n: usize,
    lo: Vec<isize>,
    hi: Vec<isize>,
    valid: Vec<isize>,
    /// Tap `j` of phase `r` is slot `r·n + j`: its kernel index and its source offset from
    /// the row's base.
    k: [usize; 32],
    offs: [isize; 32],
    /// The lowest and highest offset.
    off_lo: isize,
    off_hi: isize,
    /// The distinct offsets, ascending, and the one each slot reads.
    srcs: Vec<isize>,
    src_of: [usize; 32],
    /// Per source, the halves of the phases that read it: bit 0 for phases 0-3, bit 1
    /// for 4-7 (in a k16 s8 layer the sources one lane before and after serve one half).
    halves: [u8; 8],
}

impl UniformTaps {
    /// Whether the fused path runs by source: at most 8 distinct sources (8 vectors of
    /// phase weights each), and at most twice the FMAs of running slot by slot.
    fn by_source(&self) -> bool {
        self.srcs.len() <= 8 && self.srcs.len() <= 2 * self.n
    }
}

/// A stride-8 output row `out` whose 8 phases all have `u.n` taps, all reading inside the
/// input at `base + offset` in `padded`, with weights `w` (slot by slot, as `u.k`) and
/// `w2` (the same by source and phase, see [`UniformTaps::by_source`]): output `8q + r` is
/// the sum over phase `r`'s taps of `w · padded[base + offset + q]`, plus `bias`. For
/// blocks of 8 positions `q`, every tap of every phase is summed in registers,
/// the 8 phase vectors are transposed there and stored as 64 consecutive outputs
/// (non-temporal with `stream`, where `out` is 16-byte aligned).
/// Returns whether it ran (f32 with AVX2+FMA, rows of whole blocks); then it wrote the row.
fn fused_uniform<T: Element>(
    out: &mut [T],
    padded: &[T],
    base: usize,
    u: &UniformTaps,
    (w, w2): (&[f32; 32], &[f32; 64]),
    bias: T,
    stream: bool,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && out.len().is_multiple_of(64)
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
    {
        let q = out.len() / 8;
        // Every run must hold the row's positions.
        let (lo, hi) = (base as isize + u.off_lo, base as isize + u.off_hi);
        if lo < 0 || hi as usize + q > padded.len() {
            return false;
        }
        // Safety: `T` is `f32` (same TypeId), so the slices are valid `[f32]`; every load
        // `padded[base + offs[i] + j]`, `j < q`, is in bounds (checked), and every store
        // `out[i]`, `i < 8q = out.len()`; AVX2+FMA were detected; streaming stores are only
        // used on a 16-byte aligned `out`.
        unsafe {
            let outf = std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut f32, out.len());
            let pf = std::slice::from_raw_parts(padded.as_ptr() as *const f32, padded.len());
            let stream = stream && (outf.as_ptr() as usize).is_multiple_of(16);
            let b = bias.to_f32().unwrap_or(0.0);
            let src = pf.as_ptr().add(base);
            // Few distinct sources (a k16 s8 layer's taps read 6 runs in 2-D, 3 in 1-D):
            // one load per source, against every phase's weight for it (zero where the
            // phase does not read it), skipping the half of the phases it does not serve.
            // fcn_dw 2.1 -> 1.5 ms at one thread. Otherwise (e.g. dilated): slot by slot.
            if u.by_source() {
                match u.srcs.len() {
                    1 => fused_sources_avx2::<1>(outf, src, w2, u, q, b, stream),
                    2 => fused_sources_avx2::<2>(outf, src, w2, u, q, b, stream),
                    3 => fused_sources_avx2::<3>(outf, src, w2, u, q, b, stream),
                    4 => fused_sources_avx2::<4>(outf, src, w2, u, q, b, stream),
                    5 => fused_sources_avx2::<5>(outf, src, w2, u, q, b, stream),
                    6 => fused_sources_avx2::<6>(outf, src, w2, u, q, b, stream),
                    7 => fused_sources_avx2::<7>(outf, src, w2, u, q, b, stream),
                    _ => fused_sources_avx2::<8>(outf, src, w2, u, q, b, stream),
                }
                return true;
            }
            match u.n {
                1 => fused_uniform_avx2::<1>(outf, src, w, &u.offs, q, b, stream),
                2 => fused_uniform_avx2::<2>(outf, src, w, &u.offs, q, b, stream),
                3 => fused_uniform_avx2::<3>(outf, src, w, &u.offs, q, b, stream),
                _ => fused_uniform_avx2::<4>(outf, src, w, &u.offs, q, b, stream),
            }
        }
        return true;
    }
    let _ = (out, padded, base, u, w, w2, bias, stream);
    false
}

/// # Safety
/// As [`fused_uniform_avx2`], reading `src.offset(u.srcs[d])` for `d < ND`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fused_sources_avx2<const ND: usize>(
    out: &mut [f32],
    src: *const f32,
    w2: &[f32; 64],
    u: &UniformTaps,
    q: usize,
    bias: f32,
    stream: bool,
) {
    use std::arch::x86_64::*;
    let bv = _mm256_set1_ps(bias);
    let o = out.as_mut_ptr();
    let ptrs: [*const f32; ND] = std::array::from_fn(|i| src.wrapping_offset(u.srcs[i]));
    let halves = &u.halves;
    for q0 in (0..q).step_by(8) {
        let mut acc = [bv; 8];
        for (d, p) in ptrs.iter().enumerate() {
            let x = _mm256_loadu_ps(p.add(q0));
            // Only the halves of the phases that read this source (the branches go the
            // same way for every block of the row).
            for (h, part) in acc.chunks_exact_mut(4).enumerate() {
                if halves[d] & (1 << h) != 0 {
                    for (r, a) in part.iter_mut().enumerate() {
                        let wv = _mm256_broadcast_ss(&w2[d * 8 + h * 4 + r]);
                        *a = _mm256_fmadd_ps(wv, x, *a);
                    }
                }
            }
        }
        super::direct::store_block(o.add(8 * q0), acc, stream);
    }
}

/// # Safety
/// AVX2+FMA available; `src.offset(offs[i])` readable for `q` values for `i < 8N`;
/// `8 · q <= out.len()`, `q` a multiple of 8; `stream` only where `out` is 16-byte aligned.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fused_uniform_avx2<const N: usize>(
    out: &mut [f32],
    src: *const f32,
    w: &[f32; 32],
    offs: &[isize; 32],
    q: usize,
    bias: f32,
    stream: bool,
) {
    use std::arch::x86_64::*;
    let bv = _mm256_set1_ps(bias);
    let o = out.as_mut_ptr();
    let ptrs: [*const f32; 32] = std::array::from_fn(|i| src.wrapping_offset(offs[i]));
    for q0 in (0..q).step_by(8) {
        let mut acc = [_mm256_setzero_ps(); 8];
        for j in 0..N {
            for (r, a) in acc.iter_mut().enumerate() {
                let i = r * N + j;
                let x = _mm256_loadu_ps(ptrs[i].add(q0));
                *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&w[i]), x, *a);
            }
        }
        for a in acc.iter_mut() {
            *a = _mm256_add_ps(*a, bv);
        }
        super::direct::store_block(o.add(8 * q0), acc, stream);
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

/// Elements of one polyphase component in the spec's own source layout (whose inner extents
/// may be padded): the unit of [`TapSpec::component`](super::spec::TapSpec).
fn spec_comp_plane(spec: &DirectSpec, fallback: usize) -> usize {
    match &spec.source {
        super::spec::SourceLayout::Polyphase { extents } => numel(extents).max(1),
        _ => fallback.max(1),
    }
}

/// Copy one input plane (extents `inputs`) into margin-padded rows, split into its polyphase
/// components (`x_ρ[u] = x[s·u + ρ]` per axis, component extents `comp_ext`): component `ρ`
/// (row-major over `strides`), row `u` (row-major over the outer `comp_ext`), starts at
/// `(ρ · rows + u) · padded_len + margin`. `padded` must be zero: positions no input lands
/// on (margins, short components) are left as they are.
#[inline(always)]
pub(crate) fn fill_components<T: Element>(
    x: &[T],
    inputs: &[usize],
    strides: &[usize],
    comp_ext: &[usize],
    margin: usize,
    padded_len: usize,
    padded: &mut [T],
) {
    let last = inputs.len() - 1;
    let (l_in, s_in) = (inputs[last], strides[last]);
    let comp_rows = numel(&comp_ext[..last]);
    // Input row by input row (outer coordinates `i`): element `j` goes to component
    // `(i mod s, j mod s)`, row `i / s`, position `j / s`.
    let in_rows = numel(&inputs[..last]);
    let mut i = vec![0usize; last];
    for r in 0..in_rows {
        let mut rem = r;
        for a in (0..last).rev() {
            i[a] = rem % inputs[a];
            rem /= inputs[a];
        }
        let (mut comp_outer, mut u_row) = (0usize, 0usize);
        for ((&ia, &sa), &ea) in i.iter().zip(strides).zip(comp_ext) {
            comp_outer = comp_outer * sa + ia % sa;
            u_row = u_row * ea + ia / sa;
        }
        let row = &x[r * l_in..(r + 1) * l_in];
        let first_comp = comp_outer * s_in;
        deal_row(row, s_in, usize::MAX, padded, |rho| {
            ((first_comp + rho) * comp_rows + u_row) * padded_len + margin
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ConvParams;

    /// Non-temporal stores change where the lines go, not the values: the row engine's
    /// output with them is the one without, bit for bit, and the reference's, on the
    /// stride-8 block path and the phase-row path (a width of 13: rows of 104 outputs, not
    /// whole 64-output blocks), at 1 and 2 threads, on every ISA the CPU has.
    #[test]
    fn streamed_rows_are_the_cached_rows() {
        for (xs, ws, p) in [
            (
                [2, 3, 9, 16],
                [3, 1, 16, 16],
                ConvParams::new().stride(&[8]).padding(&[4]).groups(3),
            ),
            (
                [1, 2, 7, 13],
                [2, 1, 16, 16],
                ConvParams::new().stride(&[8]).padding(&[4]).groups(2),
            ),
        ] {
            let g = Geometry::new(Op::ConvTranspose, &xs, &ws, None, &p).unwrap();
            let x: Vec<f32> = (0..numel(&xs))
                .map(|i| ((i * 37) % 23) as f32 - 11.0)
                .collect();
            let w: Vec<f32> = (0..numel(&ws))
                .map(|i| ((i * 11) % 7) as f32 - 3.0)
                .collect();
            let b = [0.5f32, -2.0, 1.0];
            let want = crate::reference::scatter_flat(&g, &x, &w, Some(&b[..xs[1]]));
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                let rows = DepthwiseRows::new(&g, &w, isa.or_below());
                for threads in [1, 2] {
                    for stream in [false, true] {
                        let mut y = vec![f32::NAN; want.len()];
                        rows.execute_with(&g, &x, Some(&b[..xs[1]]), &mut y, threads, stream);
                        assert!(
                            y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{xs:?} {isa:?} threads {threads} stream {stream}"
                        );
                    }
                }
            }
        }
    }
}
