//! The weight gradient by Winograd tiles: the forward pass's minimal filtering with the
//! roles of the weight and the upstream gradient exchanged.
//!
//! After the phase decomposition ([`winograd`](super::winograd)) a phase of the forward op is
//! `y[q] = Σ_s Σ_j x_s[q + base_s + j] · w[k_s(j)]` (`x_s` the input, or for a strided conv its
//! polyphase component `s`). So the weight gradient of tap `j` is
//! `∂L/∂w[k_s(j)] = Σ_n Σ_q gy[q] · x_s[q + base_s + j]`: split the positions `q` into the
//! forward's tiles of `m` per axis, and each tile's share is the correlation F(r, m) of the
//! `α = m + r − 1` inputs `x_s[m·t + base_s ..]` with the `m` upstream gradients of the tile,
//! giving the `r` taps: `Aᵀ [(G gy_t) ⊙ (Bᵀ d_t)]` with F(r, m)'s matrices. Summed over tiles
//! (and the batch), the elementwise products become one GEMM per transformed point, reducing
//! over the tiles: `M[ξ][ci][co] = Σ_t X̂[ξ][ci][t] · Ĝ[ξ][co][t]`, on the same packed
//! microkernels (input channels on the register tile's rows, output channels on its lanes),
//! then `∂L/∂w[k_s(j)] = Σ_ξ Aᵀ[j][ξ] · M[ξ]`. The multiplications fall as in the forward pass
//! ([`winograd::gain`](super::winograd::gain): 1.8x for DCGAN's k4 s2 layers).
//!
//! Both sides are first copied into blocks of the transforms' channels, channels-last.
//! Tiles are taken in chunks whose transformed operands fit 4 MiB, or 1 MiB where the sums
//! are small (`chunk_tiles`); both transforms gather
//! through per-chunk index tables (zeros past the borders; each position's channels of a
//! block one contiguous run; a window or tile wholly inside is its origin plus fixed
//! offsets) and combine whole rows of a few tiles at a time. Every `M` element
//! is one kernel call per chunk, the chunks in order; where each image has many tiles the
//! batch is cut into two parts whose sums are added in order. The chunk size and the parts
//! depend on the sizes only: results are bitwise identical for any thread count. They
//! differ from the direct sums by rounding only (the transforms' coefficients are 0, ±1,
//! ±1/2): exact on small integers. After the last chunk, each row block of input channels
//! adds its parts' `M` and runs its output transform into `[ci][k][co]` rows, which are
//! then transposed into the weight's layout.
//!
//! The planner's model is the forward pass's ([`pays`]): it takes the tiles for dcgan1,
//! dcgan2 and hifigan1d, whose weight gradients ran 1.15-1.36x, 1.02-1.25x (paired, 1 and 2
//! threads) and 1.03-1.35x (alternating, 1 thread) faster than the direct GEMMs, and on
//! AVX-512 for s1k3 (1.21x at 1 thread, 1.09x at 2); for dcgan3 the transforms (mostly the
//! gathers of each tile's window) cost about what the multiplications save. Consecutive
//! phases that read the same inputs share their transformed input, as in the forward pass.
//!
//! Here: the driver (chunks, parts, blocked copies) and the cost model; `phase` (one group's
//! phases: the transforms, the GEMMs and the output transform); `transforms` (the input and
//! output transforms' bodies and the final transposes).

mod phase;
mod transforms;

use phase::phase_gradient;
use std::mem::MaybeUninit;

use transforms::{transpose, transpose_uninit};

use super::direct::{copy_short, run_chunks, run_each};
use super::kernels::{portable, tile_shapes, KernelFn, Rows};
use super::scratch;
use super::spec::pitches_of;
use super::winograd::{combine, decompose, terms, tile_name, Phase, Transform};
use super::Isa;
use super::REDUCTION_PARTS;
use crate::geometry::Geometry;
use crate::params::Op;
use crate::tensor::{for_each_index, numel, Element};

/// Bytes of both sides' transformed operands one chunk of tiles holds at most (all
/// points); [`chunk_tiles`] takes a quarter of it where the sums are small.
const CHUNK_BYTES: usize = 4 << 20;

/// Tiles per chunk for `per_tile` bytes of transformed operands a tile, `m_bytes` of sums
/// and `most` tiles a part: what `chunk_bytes` holds, or, where the sums are small beside
/// the operands (at most half), what a quarter of it holds (an L2's worth: the transforms'
/// output is still in L2 when the GEMMs read it), but at least `MIN_CHUNK_TILES` (each
/// chunk loads and stores every sum once).
///
/// Of the suite, only s1k3 takes the smaller chunks (128 tiles of 8.5 KiB, sums 288 KiB,
/// against 481): its weight gradient ran 1.25x / 1.11x faster at 2 threads and 1.00x /
/// 1.01x at 1, the backward pass 1.14x / 1.15x and 1.05x / 1.03x (paired, median / min,
/// 8 and 6 rounds). hifigan1d's sums (8 MiB) keep whole parts: in 128-tile chunks its
/// weight gradient ran 0.84x-0.87x; dcgan1's and dcgan2's parts fit one chunk either way.
fn chunk_tiles(chunk_bytes: usize, per_tile: usize, m_bytes: usize, most: usize) -> usize {
    let per_tile = per_tile.max(1);
    let whole = chunk_bytes / per_tile;
    let in_l2 = (chunk_bytes / 4 / per_tile).max(MIN_CHUNK_TILES);
    let kc = if 2 * m_bytes <= in_l2 * per_tile {
        whole.min(in_l2)
    } else {
        whole
    };
    kc.clamp(8, most.max(8))
}

/// Fewest tiles in a chunk that [`chunk_tiles`] sizes for L2.
const MIN_CHUNK_TILES: usize = 128;

/// Where [`phase_gradient`]'s GEMMs put their sums: into `M` (`[phase][row block]`), or
/// through the output transform into the rows of `dk`.
enum Sink<'a, T> {
    Sums(&'a mut [T]),
    Weights(&'a mut [T]),
}

/// A row block of `dk` in the output transform: its index, its `M` of each phase, its rows.
type RowBlock<'a, T> = (usize, Vec<&'a mut [T]>, &'a mut [T]);

/// Fewest tiles a part of the reduction must have.
const MIN_PART_TILES: usize = 128;

/// Index-table entry of a position outside the tensor (read as zero).
const OUTSIDE: usize = usize::MAX;

/// The tiles, transforms and kernel of one weight gradient.
struct Setup<T> {
    /// F(r, m) per axis (outputs: the taps; filter: a tile of the upstream gradient).
    tr: Vec<Transform>,
    phases: Vec<Phase>,
    out_stride: Vec<usize>,
    in_stride: Vec<usize>,
    /// Per point: `(window index, coefficient)` of `Bᵀ ⊗ …` and `(tile index, coefficient)`
    /// of `G ⊗ …`; per tap: `(point, coefficient)` of `Aᵀ ⊗ …`.
    x_terms: Vec<Vec<(usize, T)>>,
    g_terms: Vec<Vec<(usize, T)>>,
    o_terms: Vec<Vec<(usize, T)>>,
    kernel: KernelFn<T>,
    /// The instruction set the transforms are compiled for: the kernel's ISA's loops
    /// ([`Isa::loops_for`]; f64, whose kernels are `Scalar`'s, on this CPU's vectors).
    loops: Isa,
    /// Bytes of transformed operands a chunk of tiles holds ([`CHUNK_BYTES`]).
    chunk_bytes: usize,
    mr: usize,
    tl: usize,
}

/// Whether the weight gradient's Winograd tiles apply to `g` ([`grad_weight`] gives `Some`):
/// where the forward pass's do ([`winograd::applies`](super::winograd::applies)) and each
/// transform has its exchanged form.
pub fn applies(g: &Geometry) -> bool {
    gradient_transforms(g).is_some()
}

/// `∂L/∂w` of `g` by Winograd tiles, in the weight's PyTorch layout; `None` where the tiles
/// do not apply ([`applies`]).
pub fn grad_weight<T: Element>(
    g: &Geometry,
    x: &[T],
    gy: &[T],
    isa: Isa,
    threads: usize,
) -> Option<Vec<T>> {
    grad_weight_chunked(g, x, gy, isa, threads, CHUNK_BYTES)
}

/// [`grad_weight`] with chunks of tiles sized for `chunk_bytes` of transformed operands.
fn grad_weight_chunked<T: Element>(
    g: &Geometry,
    x: &[T],
    gy: &[T],
    isa: Isa,
    threads: usize,
    chunk_bytes: usize,
) -> Option<Vec<T>> {
    let s = setup::<T>(g, isa, chunk_bytes)?;
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    let ksize = numel(&g.kernel_shape());
    let per_group = cin_g * cout_g * ksize;
    if g.batch == 0 || per_group * g.groups == 0 {
        return Some(vec![T::zero(); g.groups * per_group]);
    }
    // Per group, first `[ci][k][co]` in scratch (each row block's rows written by one
    // task), then each row transposed into the result's `[ci][co][k]` (a transposed conv's
    // weight). The result is written once, by those transposes: for dcgan1's (8 MiB),
    // zeroing it first took 250 µs at 1 thread and 600 µs at 2 (of 4-6 ms), and the
    // transposes in place went through a copy of each row.
    let total = g.groups * per_group;
    let mut dk = scratch::take::<T>(total);
    let mut dw: Vec<T> = Vec::with_capacity(total);
    // Both sides in blocks of the transforms' channels, each block channels-last
    // (`[n][block][position][channel]`, zeros past a group's channels): a transform then
    // gathers each position's channels as one contiguous run, and a block's positions lie
    // together. From the planes, one scalar load per channel, the transforms took a third
    // of dcgan2's weight gradient (perf).
    let in_plane: usize = g.axes.iter().map(|a| a.input).product();
    let out_plane: usize = g.axes.iter().map(|a| a.output).product();
    let [xt, gt] = blocked(
        [
            (x, (g.batch, g.groups, cin_g, in_plane), s.mr),
            (gy, (g.batch, g.groups, cout_g, out_plane), s.tl),
        ],
        threads,
    );
    let (x, gy) = (&xt[..], &gt[..]);
    let groups = dk
        .chunks_mut(per_group)
        .zip(dw.spare_capacity_mut()[..total].chunks_mut(per_group));
    for (group, (dkg, dwg)) in groups.enumerate() {
        let mut covered = vec![false; ksize];
        // Consecutive phases that read the same inputs share their transformed input.
        let live: Vec<&Phase> = s
            .phases
            .iter()
            .filter(|p| p.live() && !p.extents.contains(&0))
            .collect();
        let mut first = 0;
        while first < live.len() {
            let mut end = first + 1;
            while end < live.len() && live[first].same_input(live[end]) {
                end += 1;
            }
            let ps = &live[first..end];
            phase_gradient(g, &s, ps, group, x, gy, dkg, &mut covered, threads);
            first = end;
        }
        to_weight_layout(dkg, &covered, cout_g, dwg, threads);
    }
    // Safety: the groups' chunks cover the first `total` values of the allocation, and
    // `to_weight_layout` writes each value of its chunk.
    unsafe { dw.set_len(total) };
    if g.op == Op::Conv {
        // `[group][ci][co][k]` → `[group][co][ci][k]` (a conv's weight).
        let mut out = vec![T::zero(); dw.len()];
        for grp in 0..g.groups {
            let base = grp * per_group;
            for ci in 0..cin_g {
                for co in 0..cout_g {
                    let from = base + (ci * cout_g + co) * ksize;
                    let to = base + (co * cin_g + ci) * ksize;
                    out[to..to + ksize].copy_from_slice(&dw[from..from + ksize]);
                }
            }
        }
        dw = out;
    }
    Some(dw)
}

/// A group's rows `[ci][k][co]` (`dk`; taps not in `covered` hold stale values) transposed
/// into `dw`'s `[ci][co][k]`, zeros for the taps not covered; every value of `dw` is
/// written.
fn to_weight_layout<T: Element>(
    dk: &mut [T],
    covered: &[bool],
    cout_g: usize,
    dw: &mut [MaybeUninit<T>],
    threads: usize,
) {
    let ksize = covered.len();
    let row_len = cout_g * ksize;
    assert!(
        row_len > 0 && dk.len() == dw.len() && dk.len().is_multiple_of(row_len),
        "whole rows"
    );
    let per_task = (dk.len() / row_len).div_ceil(threads.max(1)) * row_len;
    let items: Vec<_> = dk
        .chunks_mut(per_task)
        .zip(dw.chunks_mut(per_task))
        .collect();
    run_each(threads, items, |(from, to)| {
        for (src, dst) in from
            .chunks_exact_mut(row_len)
            .zip(to.chunks_exact_mut(row_len))
        {
            for (k, _) in covered.iter().enumerate().filter(|(_, &c)| !c) {
                src[k * cout_g..(k + 1) * cout_g].fill(T::zero());
            }
            transpose_uninit(src, ksize, cout_g, dst);
        }
    });
}

/// A side's tensor, its `(batch, groups, per_group, plane)` and its block width.
type Side<'a, T> = (&'a [T], (usize, usize, usize, usize), usize);

/// Each side `src` (`[n][group][channel][position]`, `per_group` channels a group, the same
/// batch) in blocks of `width` channels, `[n][group][block][position][channel]`, zeros past
/// each group's last channel; in pooled scratch. One parallel step for both sides, each
/// thread both sides of a range of consecutive images. (A step per side, each thread a
/// range of one side's images, cost a second wait for the threads: s1k3's weight gradient
/// ran 1.03-1.07x faster at 2 threads this way.)
fn blocked<T: Element>(sides: [Side<'_, T>; 2], threads: usize) -> [scratch::Scratch<T>; 2] {
    let image = |&(_, (_, groups, per_group, plane), width): &Side<'_, T>| {
        groups * per_group.div_ceil(width) * plane * width
    };
    let batch = sides[0].1 .0;
    let mut outs = sides.map(|side| scratch::take::<T>(batch * image(&side)));
    let total: usize = outs.iter().map(|o| o.len()).sum();
    let threads = if total > 1 << 17 { threads } else { 1 };
    let per_item = batch.div_ceil(threads.max(1)).max(1);
    let [xo, go] = &mut outs;
    let (mut xr, mut gr): (&mut [T], &mut [T]) = (xo, go);
    let mut items = Vec::with_capacity(threads);
    for n0 in (0..batch).step_by(per_item) {
        let k = per_item.min(batch - n0);
        let (xd, xrest) = std::mem::take(&mut xr).split_at_mut(k * image(&sides[0]));
        let (gd, grest) = std::mem::take(&mut gr).split_at_mut(k * image(&sides[1]));
        (xr, gr) = (xrest, grest);
        items.push((n0, xd, gd));
    }
    run_each(threads, items, |(n0, xd, gd)| {
        for (side, dst) in sides.iter().zip([xd, gd]) {
            let &(src, (_, groups, per_group, plane), width) = side;
            let blocks = per_group.div_ceil(width);
            for (i, dst) in dst.chunks_exact_mut(plane * width).enumerate() {
                let (n, gb) = (n0 + i / (groups * blocks), i % (groups * blocks));
                let (group, blk) = (gb / blocks, gb % blocks);
                let first = blk * width;
                let live = width.min(per_group - first);
                let rows =
                    &src[((n * groups + group) * per_group + first) * plane..][..live * plane];
                if live == width {
                    transpose(rows, width, plane, dst);
                    continue;
                }
                for (pos, d) in dst.chunks_exact_mut(width).enumerate() {
                    for (c, v) in d.iter_mut().enumerate() {
                        *v = if c < live {
                            rows[c * plane + pos]
                        } else {
                            T::zero()
                        };
                    }
                }
            }
        }
    });
    outs
}

/// The decomposition, the transforms of F(r, m) per axis and the kernel.
fn setup<T: Element>(g: &Geometry, isa: Isa, chunk_bytes: usize) -> Option<Setup<T>> {
    let (tr, phases, out_stride, in_stride) = gradient_transforms(g)?;
    // In F(r, m): `t.r` is the gradient tile's length m, `t.m` the taps r.
    let x_terms = terms(&tr, |t| (t.bt.as_slice(), t.alpha, t.alpha));
    let g_terms = terms(&tr, |t| (t.g.as_slice(), t.alpha, t.r));
    let o_terms = terms(&tr, |t| (t.at.as_slice(), t.m, t.alpha));
    // An ISA this CPU has (the transforms run AVX2 code for any but the portable one),
    // and the portable kernels where it has none for `T`.
    let isa = isa.or_below();
    let isa = if tile_shapes(isa)
        .iter()
        .any(|&(mr, v, _)| T::fast_kernel(isa, mr, v).is_some())
    {
        isa
    } else {
        Isa::Scalar
    };
    let &(mr, v, _) = tile_shapes(isa)
        .iter()
        .find(|&&(mr, v, _)| T::fast_kernel(isa, mr, v).is_some() || isa == Isa::Scalar)?;
    let kernel = T::fast_kernel(isa, mr, v).or_else(|| portable::<T>(mr, v))?;
    Some(Setup {
        tr,
        phases,
        out_stride,
        in_stride,
        x_terms,
        g_terms,
        o_terms,
        kernel,
        loops: isa.loops_for::<T>(),
        chunk_bytes,
        mr,
        tl: v * isa.lanes(),
    })
}

/// Tiles a transform gathers and combines at a time.
const SUB_TILES: usize = 32;

/// Whether the weight gradient of `g` takes Winograd tiles on `isa` when no algorithm is
/// forced: the forward pass's cost model
/// ([`winograd::modeled_speedup`](super::winograd::modeled_speedup)), whose two transform
/// costs reappear here (the inputs' windows per output channel, the upstream gradient's
/// tiles per input channel of the reduction), at least
/// [`winograd::MIN_SPEEDUP`](super::winograd::MIN_SPEEDUP). The input transform costs
/// `INPUT_COST_AVX512` (25; the forward pass's is 20) on AVX-512 where every phase is
/// live, else the portable transforms' cost.
/// As in the forward pass, consecutive phases that read the same inputs transform them
/// once (hifigan1d: 2 of 8; its weight gradient then ran 46-59 ms against 58-76 ms for the
/// direct GEMMs, alternating at 1 thread, minima of 6; before, 55-75 ms either way).
/// With `loops_only` (f64: no kernels of its own, its loops on `isa`'s vectors) the input
/// transform costs `INPUT_COST_AVX512` on AVX-512 even where some phases take the bias
/// only: against f64's portable GEMM kernels dilated's weight gradient (3 of 4 phases
/// bias-only) ran 1.31x faster on the tiles at 1 thread and 1.33x at 2 (Intel Xeon, one
/// call of 6 runs each), where f32's ran 0.92x and 0.83x.
pub fn pays(g: &Geometry, isa: Isa, loops_only: bool) -> bool {
    use super::winograd::{speedup_with, INPUT_COST_PORTABLE, MIN_CHANNEL_PAIRS, MIN_SPEEDUP};
    // As for the forward pass, groups with few channel pairs are not modelled: this model
    // too declined every one of 3190 geometries with fewer than 32 tried on AVX-512 and
    // AVX2 (1-128 channels, kernels 2-16, strides 1-8), and its decomposition took 28 µs of
    // each fcn_dw weight gradient.
    if g.in_per_group() * g.out_per_group() < MIN_CHANNEL_PAIRS {
        return false;
    }
    let all_live = decompose(g).is_some_and(|(_, phases, ..)| phases.iter().all(|p| p.live()));
    let avx512 = isa == Isa::Avx512 && isa.available();
    let cost = if avx512 && (all_live || loops_only) {
        INPUT_COST_AVX512
    } else {
        INPUT_COST_PORTABLE
    };
    // AVX-512 on 256-bit units: the GEMMs' products take twice as long, the transforms not.
    let cost = if avx512 && crate::fast::isa::avx512_half_width() {
        cost * HALF_WIDTH_COST
    } else {
        cost
    };
    g.batch > 0 && speedup_with(g, false, cost).is_some_and(|x| x >= MIN_SPEEDUP)
}

/// The input transform's cost in [`pays`] on AVX-512, whose transforms combine 16 lanes at
/// a time, a few tiles at a time. Paired against the direct GEMMs (`tconv bench --pass
/// backward`, 5-7 alternating rounds, median / min of the ratios):
/// - s1k3 (model 1.14 here): weight gradient 1.21x / 1.23x at 1 thread and 1.09x / 1.12x
///   at 2; the backward pass 1.06-1.10x / 1.07-1.11x at 1 thread, 0.97-0.98x / 1.00-1.02x
///   at 2.
/// - dcgan3 (model 1.01, not taken): weight gradient 1.07x / 1.09x at 1 thread and
///   0.99x / 1.02x at 2, but the backward pass 0.97-0.99x at 1 thread and 0.90-0.91x at 2.
/// - dilated (model 1.14, not taken: three phases of four receive bias only, so the
///   gradient's blocked copy and strided gathers are mostly waste): weight gradient 0.92x
///   at 1 thread and 0.83x at 2 (medians of 7, `gwbench`).
///
/// Those on an Intel Xeon. On AVX-512 run on 256-bit units see [`HALF_WIDTH_COST`].
const INPUT_COST_AVX512: f64 = 25.0;

/// The factor on the transforms' costs in [`pays`] where AVX-512 runs on 256-bit units (AMD
/// Zen 4, [`crate::fast::isa::avx512_half_width`]): the GEMMs' products take twice as long
/// there, the transforms' loads, stores and adds not; fitted to the layers measured. dcgan3
/// (model 1.12 so, 1.01 on full width) and dilated (1.15) take the tiles. Paired against the
/// GEMMs on the Zen 4 of 2026-12-07 (`bench/paired.sh L T 3-8`, medians / minima): dcgan3's
/// weight gradient 1.19x / 1.25x at 1 thread and 1.22x / 1.24x at 2, its backward pass
/// 1.11x / 1.11x and 1.03x / 1.05x (against its balanced two-thread schedule, which needs
/// the GEMM's parts), in float64 at 1 thread 1.14x / 1.10x (backward 1.02x / 1.04x);
/// dilated's weight gradient 1.25x / 1.28x and 1.03x / 1.12x, its backward pass 1.07x /
/// 1.07x and 1.04x / 1.05x; the same 128 → 64 channels on 8×8 inputs or 8 images
/// 1.25-1.29x (`tconv bench --input`). A 96 → 48 layer (model 1.05 at half the costs, 1.02
/// at this factor: declined) ran 0.88-0.90x on 16×16 inputs and 1.00x on 8×8. unet, vnet3d
/// and dcgan4 (models 0.2-0.7) ran 0.1-0.6x on the tiles.
const HALF_WIDTH_COST: f64 = 0.6;

/// The tiles as printed, e.g. `F(2x2,2x2)` (taps × tile of the upstream gradient).
pub fn name(g: &Geometry) -> String {
    gradient_transforms(g).map_or_else(String::new, |(tr, ..)| tile_name(&tr))
}

/// The forward's decomposition and, per axis, its F(m, r) turned into F(r, m).
#[allow(clippy::type_complexity)]
fn gradient_transforms(
    g: &Geometry,
) -> Option<(Vec<Transform>, Vec<Phase>, Vec<usize>, Vec<usize>)> {
    let (fwd, phases, out_stride, in_stride) = decompose(g)?;
    let tr = fwd
        .iter()
        .map(|t| Transform::new(t.r, t.m))
        .collect::<Option<Vec<_>>>()?;
    Some((tr, phases, out_stride, in_stride))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ConvParams;
    use crate::reference::weight_gradient as grad_weight_reference;

    fn ints(n: usize, seed: u64) -> Vec<f64> {
        crate::tensor::small_ints(n, seed)
    }

    /// Chunks sized for L2 only where the sums are small beside the operands, never fewer
    /// than `MIN_CHUNK_TILES` tiles there, never more than `chunk_bytes` holds, and at
    /// least 8 and at most a part.
    #[test]
    fn chunks_fit_l2_where_the_sums_are_small() {
        // s1k3: 8.5 KiB a tile, 288 KiB of sums, 1024 tiles a part.
        assert_eq!(chunk_tiles(CHUNK_BYTES, 8704, 294912, 1024), 128);
        // Fewer tiles per L2 than the least: the least.
        assert_eq!(
            chunk_tiles(CHUNK_BYTES, 16384, 294912, 1024),
            MIN_CHUNK_TILES
        );
        // Tiny tiles: what a quarter holds.
        assert_eq!(chunk_tiles(CHUNK_BYTES, 1024, 1024, 4096), 1024);
        // hifigan1d: 8 MiB of sums keep the whole part in one chunk.
        assert_eq!(chunk_tiles(CHUNK_BYTES, 12352, 8454144, 172), 172);
        assert_eq!(chunk_tiles(CHUNK_BYTES, 12352, 8454144, 1000), 339);
        assert_eq!(chunk_tiles(1, 12352, 0, 1000), 8);
        assert_eq!(chunk_tiles(CHUNK_BYTES, 8704, 294912, 100), 100);
    }

    /// Every shape's transpose (8×8 blocks, 4×4 blocks, the edges), f32 and f64.
    #[test]
    fn transposes_of_every_shape() {
        for (r, c) in [
            (12, 1024),
            (12, 37),
            (9, 64),
            (16, 16),
            (13, 13),
            (4, 4),
            (5, 7),
            (3, 9),
            (1, 5),
            (20, 6),
        ] {
            let src: Vec<f64> = (0..r * c).map(|v| v as f64).collect();
            let want: Vec<f64> = (0..r * c).map(|k| src[(k % r) * c + k / r]).collect();
            let mut got = vec![-1.0; r * c];
            transpose(&src, r, c, &mut got);
            assert_eq!(got, want, "f64 {r}x{c}");
            let src32: Vec<f32> = src.iter().map(|&v| v as f32).collect();
            let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            let mut got32 = vec![-1.0f32; r * c];
            transpose(&src32, r, c, &mut got32);
            assert_eq!(got32, want32, "f32 {r}x{c}");
        }
    }

    /// Every layer kind, in chunks of 8 tiles (several chunks, the last partial) and in one,
    /// on 1 and 3 threads, with every ISA this CPU has: exactly the reference.
    #[test]
    fn chunks_and_layer_kinds_match_reference() {
        let cases: Vec<(Op, Vec<usize>, Vec<usize>, ConvParams)> = vec![
            (
                Op::ConvTranspose,
                vec![2, 12, 7, 5],
                vec![12, 10, 4, 4],
                ConvParams::new().stride(&[2]).padding(&[1]).groups(2),
            ),
            (
                Op::ConvTranspose,
                vec![2, 8, 6, 7],
                vec![8, 9, 3, 3],
                ConvParams::new()
                    .stride(&[2])
                    .padding(&[2])
                    .dilation(&[2])
                    .output_padding(&[1]),
            ),
            (
                Op::ConvTranspose,
                vec![3, 8, 11],
                vec![8, 7, 16],
                ConvParams::new().stride(&[8]).padding(&[4]),
            ),
            (
                Op::ConvTranspose,
                vec![1, 5, 4, 3, 5],
                vec![5, 6, 3, 3, 3],
                ConvParams::new().padding(&[1]),
            ),
            (
                Op::Conv,
                vec![2, 9, 13, 10],
                vec![11, 9, 4, 4],
                ConvParams::new().stride(&[2]).padding(&[1]),
            ),
            // Several row and lane blocks (16 input channels, 40 output channels), their
            // sums through the output transform as they come (one chunk, one part).
            (
                Op::ConvTranspose,
                vec![2, 16, 5, 4],
                vec![16, 40, 4, 4],
                ConvParams::new().stride(&[2]).padding(&[1]),
            ),
            // At least `MIN_PART_TILES` tiles per image: the reduction in two parts (the
            // second of one image of three).
            (
                Op::ConvTranspose,
                vec![3, 4, 600],
                vec![4, 5, 4],
                ConvParams::new().stride(&[2]).padding(&[1]),
            ),
            (
                Op::ConvTranspose,
                vec![2, 3, 40, 40],
                vec![3, 4, 4, 4],
                ConvParams::new().stride(&[2]).padding(&[1]),
            ),
            // Two phases of three without an output position: their taps' gradients are
            // zeros (taps no phase covers; a mutant that leaves them as the scratch held
            // them fails here).
            (
                Op::ConvTranspose,
                vec![2, 4, 3, 1],
                vec![4, 5, 2, 3],
                ConvParams::new().stride(&[2, 3]).pads(&[0, 0], &[0, 2]),
            ),
        ];
        for (op, xs, ws, p) in cases {
            let g = Geometry::new(op, &xs, &ws, None, &p).unwrap();
            let x = ints(numel(&xs), 1);
            let gy = ints(numel(&g.output_shape()), 2);
            let want = grad_weight_reference(&g, &x, &gy);
            let (x32, gy32): (Vec<f32>, Vec<f32>) = (
                x.iter().map(|&v| v as f32).collect(),
                gy.iter().map(|&v| v as f32).collect(),
            );
            let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                if !isa.available() {
                    continue;
                }
                for (threads, chunk) in [(1, 1), (3, 1), (1, CHUNK_BYTES), (3, CHUNK_BYTES)] {
                    let what = format!("{op:?} {xs:?} {isa} {threads} threads, chunk {chunk}");
                    let got = grad_weight_chunked(&g, &x, &gy, isa, threads, chunk);
                    assert_eq!(got.as_ref(), Some(&want), "f64 {what}");
                    let got = grad_weight_chunked(&g, &x32, &gy32, isa, threads, chunk);
                    assert_eq!(got.as_ref(), Some(&want32), "f32 {what}");
                }
            }
        }
    }

    /// The cost model's choice on AVX-512: DCGAN's 128 → 64 layer and the suite's dilated
    /// layer take the tiles exactly where AVX-512 runs on 256-bit units (Zen 4: the GEMMs'
    /// products cost twice as much there); DCGAN's 256 → 128 layer everywhere; a 96 → 48
    /// layer (slower on the tiles on Zen 4) and the RGB layer (3 output channels) nowhere.
    #[test]
    fn half_width_avx512_takes_the_tiles_where_the_products_cost_more() {
        if !Isa::Avx512.available() {
            return;
        }
        let half = crate::fast::isa::avx512_half_width();
        let s2 = ConvParams::new().stride(&[2]).padding(&[1]);
        let dilated = ConvParams::new()
            .stride(&[2])
            .padding(&[2])
            .output_padding(&[1])
            .dilation(&[2]);
        for (x, w, p, want) in [
            (vec![16, 128, 16, 16], vec![128, 64, 4, 4], &s2, half),
            (vec![8, 64, 32, 32], vec![64, 64, 3, 3], &dilated, half),
            (vec![16, 256, 8, 8], vec![256, 128, 4, 4], &s2, true),
            (vec![16, 96, 16, 16], vec![96, 48, 4, 4], &s2, false),
            (vec![16, 64, 32, 32], vec![64, 3, 4, 4], &s2, false),
        ] {
            let g = Geometry::new(crate::params::Op::ConvTranspose, &x, &w, None, p).unwrap();
            assert_eq!(
                pays(&g, Isa::Avx512, false),
                want,
                "{x:?} {w:?}, half width {half}"
            );
        }
    }
}
