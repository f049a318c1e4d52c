//! A strided conv whose kernel equals its stride, each tile's panel dealt straight from the
//! input (the input gradient of U-Net's and V-Net's up-convolutions; a "patchify" conv).
//!
//! With kernel == stride, no padding and no dilation, output position `u` (all axes but the
//! last) and `v` (the last) reads input row `s·u + k_outer` at `2v + k_last` (last-axis
//! stride 2): every input value is read by exactly one tap of one output. The direct engine
//! first copies the whole input into its polyphase components (unet's input gradient: 16.8
//! MB written, then read back), then packs each tile's panel from that copy. Here each
//! tile's panel (the plan's tile of consecutive output positions, `K = taps × C_in/g` rows)
//! is packed straight from the input: per channel and outer tap, the even (`k_last = 0`)
//! and odd (`k_last = 1`) values of an input row go to the two taps' panel rows by the
//! direct engine's stride-2 dealing kernels (`pack::deinterleave2_avx2`, and on AVX-512
//! its 16-lane version). The plan's own microkernel and packed weights then run every block of
//! output channels over the panel, and each tile is stored once with the bias.
//!
//! f32 plans on AVX-512 and AVX2; elsewhere (the portable ISA, forced or not, and f64)
//! the direct engine's polyphase copy.
//! Each output's sum runs in the microkernel's order over `K` whatever the thread count:
//! bitwise identical for any thread count.

use super::direct::{run_each, store_run, DirectKernel, Kernel};
use super::kernels::Rows;
use super::spec::DirectSpec;
use super::{scratch, Isa};
use crate::geometry::Geometry;
use crate::params::Op;
use crate::tensor::{numel, Element};

/// Whether [`execute`] can run a direct plan of `g` with `spec`, `kernel` and an
/// `mr × v` tile of `lanes`-wide vectors on `isa` (the planner decides once, before it
/// builds the plan's tile table, in [`DirectKernel::strided_loads`]): f32, a conv whose
/// every axis has kernel == stride, dilation 1, no padding and input = stride × output,
/// stride 2 on the last axis, packed (not depthwise, nor in-place) weights, a plan on
/// AVX-512 (16 lanes) or AVX2 (8), and a task's panel within the direct engine's panel
/// budget.
pub(crate) fn applies<T: Element>(
    g: &Geometry,
    (spec, kernel, depthwise): (&DirectSpec, &Kernel<T>, bool),
    tile: (usize, usize, usize),
    isa: Isa,
) -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && g.op == Op::Conv
        && matches!(kernel, Kernel::Packed(_))
        && !depthwise
        && simd(isa, tile.2)
        && spec.phases.len() == 1
        && spec.phases[0].taps.len() == numel(&g.kernel_shape())
        && shape_applies(g)
        && scratch_len(g, spec, tile) * std::mem::size_of::<T>() <= super::direct::PANEL_BUDGET
}

/// Elements of scratch one task holds: its panel (`K × tile` lanes) and a tile of sums, for
/// an `mr × v` tile of `lanes`-wide vectors. (Where the panel would outgrow
/// [`PANEL_BUDGET`](super::direct::PANEL_BUDGET), the direct engine's polyphase copy runs,
/// whose panels are sliced along `K`.)
pub(crate) fn scratch_len(
    g: &Geometry,
    spec: &DirectSpec,
    (mr, v, lanes): (usize, usize, usize),
) -> usize {
    let taps = spec.phases.first().map_or(0, |p| p.taps.len());
    (taps * g.in_per_group() + mr) * v * lanes
}

/// The geometry part of [`applies`]: every axis kernel == stride, dilation 1, no padding,
/// input = stride × output, and stride 2 on the last.
pub(crate) fn shape_applies(g: &Geometry) -> bool {
    let last = g.axes.len().saturating_sub(1);
    !g.axes.is_empty()
        && g.axes.iter().enumerate().all(|(i, a)| {
            a.kernel == a.stride
                && a.dilation == 1
                && a.pad_begin == 0
                && a.input == a.stride * a.output
                && (i != last || a.stride == 2)
        })
}

/// Whether a plan on `isa` with `lanes`-wide vectors is a SIMD one: AVX-512 (16 lanes) or
/// AVX2 (8) on this CPU; not the portable ISA, forced or not, which runs no SIMD.
fn simd(isa: Isa, lanes: usize) -> bool {
    matches!((isa, lanes), (Isa::Avx512, 16) | (Isa::Avx2, 8)) && isa.available()
}

/// `y = conv(x, w) + bias` for a plan that takes this path ([`applies`]; panics on a plan
/// this module cannot run), on
/// `threads` threads: tasks own (image, group, range of channel blocks), a contiguous run of
/// output planes.
pub(crate) fn execute<T: Element>(
    g: &Geometry,
    k: &DirectKernel<T>,
    x: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
    threads: usize,
) {
    assert!(
        k.strided_loads && shape_applies(g),
        "the strided conv's plan"
    );
    let Kernel::Packed(kernel) = k.kernel else {
        unreachable!("checked by `applies`")
    };
    let dims = g.axes.len();
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    let in_shape: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
    let out_shape: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
    let (in_plane, out_plane) = (numel(&in_shape), numel(&out_shape));
    let row = out_shape[dims - 1];
    assert!(
        x.len() == g.batch * g.in_channels * in_plane
            && y.len() == g.batch * g.out_channels * out_plane,
        "strided conv operands"
    );
    if y.is_empty() || row == 0 {
        return;
    }
    // Input offset of each output row's source row, per outer tap (row-major over the
    // outer axes, taps row-major over the kernel's outer axes).
    let in_pitch = super::spec::pitches_of(&in_shape);
    let outer_k: Vec<usize> = g.kernel_shape()[..dims - 1].to_vec();
    let outer_taps = numel(&outer_k);
    let mut starts = Vec::with_capacity(out_plane / row * outer_taps);
    for u in crate::tensor::positions(&out_shape[..dims - 1]) {
        for ko in crate::tensor::positions(&outer_k) {
            starts.push(
                (0..dims - 1)
                    .map(|a| (g.axes[a].stride * u[a] + ko[a]) * in_pitch[a])
                    .sum::<usize>(),
            );
        }
    }
    // Panel rows of each (outer tap, last tap): the tap's place among the phase's taps (the
    // packed reduction index is `tap · C_in/g + channel`).
    let taps = &k.spec.phases[0].taps;
    let tap_of = |flat: usize| {
        taps.iter()
            .position(|t| t.kernel_index == flat)
            .expect("every kernel index is a tap")
    };
    let pairs: Vec<[usize; 2]> = (0..outer_taps)
        .map(|ko| [tap_of(2 * ko), tap_of(2 * ko + 1)])
        .collect();
    let (mr, tl) = (k.mr, k.v * k.lanes);
    let kdim = taps.len() * cin_g;
    let blocks = k.packed.blocks;
    let groups = g.groups.max(1);
    let splits = threads.div_ceil(g.batch * groups).clamp(1, blocks.max(1));
    let per_split = blocks.div_ceil(splits);
    // Tasks: (image, group, first block) with their output planes.
    let mut tasks: Vec<(usize, usize, usize, &mut [T])> = Vec::new();
    let mut rest: &mut [T] = y;
    for n in 0..g.batch {
        for group in 0..groups {
            for b0 in (0..blocks).step_by(per_split) {
                let lo = b0 * mr;
                let hi = ((b0 + per_split) * mr).min(cout_g);
                let (mine, tail) = std::mem::take(&mut rest).split_at_mut((hi - lo) * out_plane);
                rest = tail;
                tasks.push((n, group, b0, mine));
            }
        }
    }
    let run = |(n, group, b0, out): (usize, usize, usize, &mut [T])| {
        let channels = out.len() / out_plane;
        let image = &x[(n * g.in_channels + group * cin_g) * in_plane..][..cin_g * in_plane];
        let mut panel = scratch::take::<T>(kdim * tl);
        let mut acc = scratch::take::<T>(mr * tl);
        for p0 in (0..out_plane).step_by(tl) {
            let live = tl.min(out_plane - p0);
            // The tile's positions row by row: segments of one output row each.
            let mut lo = 0;
            while lo < live {
                let (u, v) = ((p0 + lo) / row, (p0 + lo) % row);
                let len = (row - v).min(live - lo);
                let srcs = &starts[u * outer_taps..(u + 1) * outer_taps];
                for (&src, pair) in srcs.iter().zip(&pairs) {
                    let seg = Segment {
                        at: src + 2 * v,
                        len,
                        lane: lo,
                        rows: *pair,
                    };
                    deal_segment(image, in_plane, cin_g, (tl, k.lanes), &seg, &mut panel);
                }
                lo += len;
            }
            if live < tl {
                for r in panel.chunks_exact_mut(tl) {
                    r[live..].fill(T::zero());
                }
            }
            for blk in 0..channels.div_ceil(mr) {
                let w = k.packed.run(group, b0 + blk, 0);
                if live == tl && (blk + 1) * mr <= channels {
                    // A whole tile: the kernel writes its rows straight into the output
                    // planes (rows `out_plane` apart), and the bias is added there while
                    // they are in L1; `acc + b` rounds as through `acc`.
                    let at = blk * mr * out_plane + p0;
                    let rows = Rows::packed(kdim, tl).out_pitch(out_plane);
                    kernel(w, &panel, rows, (&mut out[at..]).into(), false);
                    if let Some(bias) = bias {
                        for r in 0..mr {
                            let b = bias[group * cout_g + (b0 + blk) * mr + r];
                            for v in &mut out[at + r * out_plane..][..tl] {
                                *v = *v + b;
                            }
                        }
                    }
                    continue;
                }
                kernel(
                    w,
                    &panel,
                    Rows::packed(kdim, tl),
                    (&mut acc[..]).into(),
                    false,
                );
                for r in 0..mr.min(channels - blk * mr) {
                    let c = blk * mr + r;
                    let b = bias.map_or(T::zero(), |b| b[group * cout_g + b0 * mr + c]);
                    let plane = &mut out[c * out_plane..][..out_plane];
                    store_run(plane, p0, 1, &acc[r * tl..r * tl + live], b);
                }
            }
        }
    };
    run_each(threads, tasks, run);
}

/// One output row's run of a tile: `len` positions from input offset `at` (within each
/// channel's plane, two values per position), into panel lanes `lane..lane + len` of the
/// rows `rows[0] · C_in/g + c` (even values) and `rows[1] · C_in/g + c` (odd values).
struct Segment {
    at: usize,
    len: usize,
    lane: usize,
    rows: [usize; 2],
}

/// Deal a segment of every channel into the panel (`tl` lanes a row) by the direct
/// engine's stride-2 dealing kernels (`pack::deinterleave2_avx512` on AVX-512 plans, whose
/// vectors have 16 lanes, for the blocks of 16 positions; `pack::deinterleave2_avx2` for
/// those of 8), the rest value by value. One channel loop for the whole segment: per
/// channel, only the kernels' calls.
fn deal_segment<T: Element>(
    image: &[T],
    in_plane: usize,
    channels: usize,
    (tl, lanes): (usize, usize),
    s: &Segment,
    panel: &mut [T],
) {
    let [r0, r1] = s.rows;
    assert!(
        (channels == 0 || (channels - 1) * in_plane + s.at + 2 * s.len <= image.len())
            && s.lane + s.len <= tl
            && r0 != r1
            && (r0.max(r1) + 1) * channels * tl <= panel.len(),
        "strided conv segment"
    );
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if let (Some(src), Some(dst)) = (super::as_f32(image), super::as_f32_mut(panel)) {
        // A plan of this path is AVX-512 with 16 lanes or AVX2 with 8 (`applies`).
        let wide = if lanes == 16 { s.len / 16 * 16 } else { 0 };
        let vec = s.len / 8 * 8;
        let dst = dst.as_mut_ptr();
        for c in 0..channels {
            let from = c * in_plane + s.at;
            // The values two tiles further on, which the next tiles deal.
            super::prefetch_read(src, from + 4 * tl);
            let (even, odd) = (
                (r0 * channels + c) * tl + s.lane,
                (r1 * channels + c) * tl + s.lane,
            );
            // Safety: the plan's ISA (AVX-512F for 16 lanes, else AVX2) was detected; the
            // loads are the channel's `2 · vec` values and the stores `vec` values of two
            // distinct panel rows, all in bounds (checked above).
            unsafe {
                let (p, e, o) = (src.as_ptr().add(from), dst.add(even), dst.add(odd));
                if wide > 0 {
                    super::pack::deinterleave2_avx512(p, wide, e, o);
                }
                if vec > wide {
                    let (p, e, o) = (p.add(2 * wide), e.add(wide), o.add(wide));
                    super::pack::deinterleave2_avx2(p, vec - wide, e, o);
                }
            }
        }
        done = vec;
    }
    let _ = lanes;
    for c in 0..channels {
        let from = &image[c * in_plane + s.at..][..2 * s.len];
        for (kl, &r) in s.rows.iter().enumerate() {
            let to = &mut panel[(r * channels + c) * tl + s.lane..][..s.len];
            for j in done..s.len {
                to[j] = from[2 * j + kl];
            }
        }
    }
}
