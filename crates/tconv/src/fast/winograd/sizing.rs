//! How a plan's work is cut into tasks: images and tile rows per task, the GEMMs' column
//! pitch, and the scratch a task holds, within the workspace bound.

use super::*;
use crate::tensor::numel;

/// Bytes of one point's transformed input and GEMM results a task aims at: they stay in
/// L2 (1 MiB here) while every block of output channels runs over them, and the columns are
/// as many as this allows, so each packed weight block serves that many tiles, streamed
/// from memory once per task (dcgan1's GEMMs took 17.4-18.1 instead of 22-23 million
/// cycles with all 64 tiles of a phase in one task rather than 16; hifigan1d, whose 16 MiB
/// of transformed weights stream once per task, ran 39.8-42.0 ms at 768 KiB against
/// 43.7-45.8 at 256 and 43.7-44.4 at 2048, minima at 1 thread).
const POINT_BYTES: usize = 768 * 1024;

/// Bytes of all points' transformed input and GEMM results a task aims at where the
/// transformed weights fit in the core's L2 (CPUID's): a quarter of it, and at least two
/// register panels of columns; `None` (tasks by [`POINT_BYTES`]) where they do not fit or
/// the L2 is unknown. Such weights stay in the L2 from task to task, so a task needs no
/// more columns to repay streaming them, and a smaller task's transformed input, results
/// and outputs stay there with them. On a 2-core Emerald Rapids Xeon (2 MiB L2), at 1
/// thread: dcgan3 (1.2 MB of weights) 128 columns instead of 320, 1.11x; s1k3 128 instead
/// of 192, 1.05x; dilated 96 instead of 768, 1.05x (4 paired rounds); perf on dcgan3: the
/// GEMMs took 8 % less time, the input transform 17 % less and the output stores 16 %
/// less. hifigan1d, dcgan1 and dcgan2 (17, 19 and 4.9 MB) keep `POINT_BYTES`.
fn l2_task_bytes(weight_bytes: usize) -> Option<usize> {
    let l2 = crate::fast::isa::l2_cache_bytes()?;
    (weight_bytes <= l2).then_some(l2 / 4)
}

/// [`POINT_BYTES`] for a strided conv (several sources: an input gradient), whose weight
/// blocks are as many times longer. Of the suite only hifigan1d's input gradient (8
/// sources, K = 2048, 17 MB of transformed weights streamed once per task) is not held
/// smaller by the scratch bound; at 1 MiB its tasks take 96 columns (the bound's most)
/// instead of 32, so each weight block serves three register panels and the weights
/// stream a third as often: 1.10x / 1.11x faster at 1 thread and 1.10x / 1.11x at 2
/// (medians / minima, `bench/paired.sh hifigan1d T 4`), 64 columns (768 KiB) 1.04x /
/// 1.08x, on the AMD EPYC (Zen 4, 1 MiB L2, 32 MiB L3) of 2026-12-07. (256 KiB had
/// measured faster than 768 on 2026-11-28, under the tiles and scratch bounds of then,
/// changed since.)
const POINT_BYTES_SOURCES: usize = 1024 * 1024;

/// Packed weights beyond which a task's columns are widened at the cost of slicing its
/// results (see [`sizing_within`]): half the L3, so they stream from memory once per task.
const STREAMED_WEIGHTS: usize = 16 << 20;

/// Most bytes of transformed input and results of all points one task holds.
const TASK_BYTES: usize = 8 << 20;

/// How a plan's work is cut into tasks: images and tile rows per task, the GEMMs' column
/// pitch, whether the transforms run in registers, the slice of output channels, and the
/// scratch a task holds.
pub(super) struct Sizing {
    pub(super) batch_chunk: usize,
    pub(super) band_tiles: usize,
    /// Ranges of whole blocks a group's output channels are cut into between tasks.
    pub(super) channel_parts: usize,
    /// Tile columns of a task's GEMMs (its images × tiles of its band).
    pub(super) columns: usize,
    pub(super) pitch: usize,
    pub(super) registers: bool,
    /// Whether the transforms would run in registers but for the workspace bound.
    pub(super) registers_wanted: bool,
    /// Output channels whose GEMM results a task holds at a time (whole blocks).
    pub(super) slice: usize,
    /// Elements of scratch one task allocates (see [`Winograd::scratch_len`]).
    pub(super) task_len: usize,
    /// The most bytes of scratch all threads' tasks may hold ([`Bound::over`]).
    pub(super) bound: usize,
    /// Whether the bound is half the input per thread for streamed weights ([`Bound`]).
    pub(super) streamed: bool,
}

/// Cut `g`'s work for an `mr × v` tile of `lanes`-wide vectors on `threads` threads, within
/// the scratch bound of [`Bound::of`].
pub(super) fn sizing<T: Element>(
    g: &Geometry,
    transforms: &[Transform],
    phases: &[Phase],
    in_stride: &[usize],
    (mr, v, lanes, isa): (usize, usize, usize, Isa),
    threads: usize,
) -> Sizing {
    let bound = Bound::of::<T>(g, transforms, phases, in_stride, (lanes, isa));
    let tile = (mr, v, lanes, isa);
    sizing_within::<T>(g, transforms, phases, in_stride, tile, threads, bound)
}

/// Most bytes of scratch a Winograd plan holds over all its threads.
///
/// The output's size (issue 4's bound, tested on the suite), except for a conv whose input
/// is the larger (a strided conv: the input gradients) where not even the least task of any
/// tile fits that bound with the transforms as they would run: there the input's size per
/// thread. The direct engine copies such an input's components whole, plus its panels per
/// thread: dcgan1's input gradient (0.5 MB output, 1 MB input) holds 1.5 MB on it at 2
/// threads; the Winograd tiles' least task there, one 16-tile panel with the transforms in
/// registers, holds 0.85 MB, so under the output's bound they did not run at all.
///
/// That per-thread bound is doubled where the transformed weights exceed
/// [`STREAMED_WEIGHTS`]: every task streams them once, so tasks of twice the columns halve
/// that stream. dcgan1's input gradient (18.9 MB of them, 0.87 MB more scratch a thread for
/// 32 tiles a task instead of 16): 1.06-1.11x at 1 thread and 1.02-1.06x at 2 alone, its
/// backward pass 1.05-1.13x and 0.99-1.05x (`bench/paired.sh dcgan1 T 8`, medians and
/// minima of 6-8 alternating rounds, three sittings); with AVX2 1.22x and 0.99x (6 rounds).
///
/// Where some tile does fit the output's size but the transformed weights do not fit in the
/// L2 (they stream from memory once per task, so wider tiles and tasks read them fewer
/// times), half the input's size per thread if that is no less: the input's size on two
/// threads. The tiles for two threads are then as wide as on one (12×2 where the output's
/// bound left 24×1): hifigan1d's input gradient (17 MB of transformed weights, 8.4 MB
/// input, 2.1 MB output) 1.23x / 1.24x faster at 2 threads, dcgan2's (4.9 MB, 2 MB, 1 MB)
/// 1.13x / 1.17x (`bench/paired.sh dcgan1,dcgan2,hifigan1d 2 4`, medians / minima, Intel
/// Xeon, 2026-12-06); at 1 thread, on 12×2 tiles either way, hifigan1d's tasks of more
/// columns 1.05x / 1.05x.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bound {
    bytes: usize,
    per_thread: bool,
    /// Whether the streamed weights set it (half the input per thread, or twice the input
    /// per thread, above).
    streamed: bool,
}

impl Bound {
    fn of<T: Element>(
        g: &Geometry,
        transforms: &[Transform],
        phases: &[Phase],
        in_stride: &[usize],
        (lanes, isa): (usize, Isa),
    ) -> Bound {
        let elem = std::mem::size_of::<T>();
        let output = Bound {
            bytes: numel(&g.output_shape()) * elem,
            per_thread: false,
            streamed: false,
        };
        let input = numel(&g.input_shape()) * elem;
        if input <= output.bytes {
            return output;
        }
        // Decided for DECISION_THREADS, as the transforms are: the same on any thread count.
        let fits = crate::fast::kernels::tile_shapes(isa)
            .iter()
            .any(|&(mr, v, _)| {
                let tile = (mr, v, lanes, isa);
                let s = sizing_within::<T>(
                    g,
                    transforms,
                    phases,
                    in_stride,
                    tile,
                    DECISION_THREADS,
                    output,
                );
                DECISION_THREADS * s.task_len * elem <= output.bytes
                    && (s.registers || !s.registers_wanted)
            });
        let weights = transformed_weight_bytes::<T>(g, transforms, phases, g.out_per_group());
        if fits {
            let half = input / DECISION_THREADS;
            let streamed = crate::fast::isa::l2_cache_bytes().is_none_or(|l2| weights > l2);
            return if streamed && half >= output.bytes {
                Bound {
                    bytes: half,
                    per_thread: true,
                    streamed: true,
                }
            } else {
                output
            };
        }
        let widen = if weights > STREAMED_WEIGHTS { 2 } else { 1 };
        Bound {
            bytes: widen * input,
            per_thread: true,
            streamed: widen > 1,
        }
    }

    /// The bound for `threads` threads.
    fn over(self, threads: usize) -> usize {
        if self.per_thread {
            threads.max(1) * self.bytes
        } else {
            self.bytes
        }
    }
}

/// Bytes of the transformed weights of `g`'s live phases, `rows` output channels a group
/// (the group's, or its register blocks' padded to whole blocks).
fn transformed_weight_bytes<T: Element>(
    g: &Geometry,
    transforms: &[Transform],
    phases: &[Phase],
    rows: usize,
) -> usize {
    let live = phases.iter().filter(|p| p.live()).count();
    let points: usize = transforms.iter().map(|t| t.alpha).product();
    let kdim = most_sources(phases) * g.in_per_group();
    g.groups * live * points * kdim * rows * std::mem::size_of::<T>()
}

/// [`sizing()`] within `bound`.
fn sizing_within<T: Element>(
    g: &Geometry,
    transforms: &[Transform],
    phases: &[Phase],
    in_stride: &[usize],
    (mr, v, lanes, isa): (usize, usize, usize, Isa),
    threads: usize,
    bound: Bound,
) -> Sizing {
    let blocks = g.out_per_group().div_ceil(mr);
    let weight_bytes = transformed_weight_bytes::<T>(g, transforms, phases, blocks * mr);
    let mut cut = Cut::new::<T>(
        g,
        (transforms, phases, in_stride),
        v * lanes,
        (threads, bound),
    );
    // The transformed input of the whole plan: every live phase's tiles, every point.
    let live = phases.iter().filter(|p| p.live()).count();
    let input_bytes = g.groups * cut.batch * live * cut.t0 * cut.row_tiles * cut.points;
    let input_bytes = input_bytes * cut.kdim * cut.elem;
    let parts = channel_parts(g, threads, blocks, (weight_bytes, input_bytes));
    cut.parts = parts;
    // Task sizes: about POINT_BYTES per point of transformed input and results, whole
    // images where they are small, else bands of tile rows; then a task per thread.
    let per_col = (cut.kdim + blocks * mr) * cut.elem;
    let point_bytes = if most_sources(phases) > 1 {
        POINT_BYTES_SOURCES
    } else {
        POINT_BYTES
    };
    // No more scratch over all threads than the bound.
    let tl = cut.tl;
    let by_points = match l2_task_bytes(weight_bytes) {
        Some(task) if most_sources(phases) == 1 => {
            (task / (cut.points * per_col).max(1)).max(2 * tl)
        }
        _ => point_bytes / per_col.max(1),
    };
    let want = by_points
        .min(TASK_BYTES / (cut.points * per_col).max(1))
        .min(bound.over(threads) / (threads.max(1) * cut.points * per_col).max(1))
        / tl
        * tl;
    let (mut batch_chunk, mut band_tiles) = cut.first_cut(want.max(tl));
    // The transforms in registers copy each task's input rows channels-last
    // ([`crate::fast::winograd_input`]): at most the rows its band of tiles spans (the
    // sources' offsets apart), for each of its images.
    // Not for one axis: there the portable gathers read consecutive positions, and
    // hifigan1d (512 channels, two of eight phases transforming) ran 0.91-0.94x with
    // the copy (alternating, minima of 5 and 8 rounds at 1 and 2 threads).
    let mut registers = crate::fast::as_f32::<T>(&[]).is_some()
        && isa >= Isa::Avx2
        && tl.is_multiple_of(8)
        && g.axes.len() >= 2;
    let registers_wanted = registers;
    // The GEMM results of all output channels at once, or, where that would not fit on
    // the smallest tasks halving reaches, of the fewest whole blocks that are whole
    // chunks of the output transform (lcm(mr, CHUNK) channels, at most 24), each slice
    // running over the whole transformed input again (on such tasks a few hundred KB:
    // dcgan1's is 295 KB on 16-tile panels, within a 1 MB L2).
    let full = blocks * mr;
    let least = lcm(mr, CHUNK).min(full);
    let (mut fbc, mut fbt) = (cut.batch, cut.t0);
    while fbc * fbt * cut.row_tiles >= 2 * tl && halve(&mut fbc, &mut fbt) {}
    // Whether the transforms run in registers is decided for DECISION_THREADS threads,
    // whatever the plan runs on (the two transforms round differently), on the least
    // slice: the portable transforms (no copy of the input) where only they keep all
    // threads' scratch within the output.
    if cut.over_on(DECISION_THREADS, (fbc, fbt), registers, least)
        && !cut.over_on(DECISION_THREADS, (fbc, fbt), false, least)
    {
        registers = false;
    }
    // The most channels a task holds (all, unless they are cut between tasks), and the
    // least slice of them.
    let full = blocks.div_ceil(parts) * mr;
    let least = least.min(full);
    let mut slice = if cut.over_on(threads, (fbc, fbt), registers, full) {
        least
    } else {
        full
    };
    let wanted = (batch_chunk, band_tiles);
    (batch_chunk, band_tiles) = cut.halved(wanted, registers, slice);
    // Where that leaves a task one register panel of columns and the packed weights, which
    // every task streams once, are larger than `STREAMED_WEIGHTS`, the results of the
    // least slice of output channels at a time if the bound then holds two panels or more:
    // each packed weight block then serves as many kernel calls per task, the weights
    // stream half as often or less (the transformed input, re-read per slice, stays in
    // L2). dcgan1's forward pass at 1 thread (19.5 MB of packed weights): 32 columns
    // instead of 16, 1.06-1.42x faster on AVX-512 (median / min of alternating rounds, two
    // sittings of 6 and 8) with 1.2-1.4x fewer perf samples (3 rounds), 1.44-1.46x with
    // AVX2 (6 rounds). Where the weights are smaller it did not pay: dcgan2's input
    // gradient at 1 thread and its forward pass at 2, dcgan3's input gradient at 2 (4.9,
    // 4.9 and 1.2 MB) read 0.97-1.05x. Nor where the widened tasks' transformed input
    // outgrows the L2 (CPUID's; unknown: no limit), which the slices re-read: dcgan1's
    // input gradient (K = 1024) on 12×2 tiles, 64 columns a task (2.4 MB of transformed
    // input) instead of 32 (1.2 MB), ran 0.66x at a batch of 32 and 0.57-0.63x at 128
    // (medians, two rounds, 1 thread, 2 MiB L2); 24×1 tiles, whose two panels are 32
    // columns, keep them. (Alone this changed no plan here; the 12×2 tile now taken for
    // that gradient relies on it at those batches.)
    if slice == full
        && least < full
        && weight_bytes > STREAMED_WEIGHTS
        && batch_chunk * band_tiles * cut.row_tiles <= tl
    {
        let (bc, bt) = cut.halved(wanted, registers, least);
        let widened_input = cut.points * cut.kdim * bc * bt * cut.row_tiles * cut.elem;
        let in_l2 = crate::fast::isa::l2_cache_bytes().is_none_or(|l2| widened_input <= l2);
        if bc * bt * cut.row_tiles >= 2 * tl
            && in_l2
            && !cut.over_on(threads, (bc, bt), registers, least)
        {
            (slice, batch_chunk, band_tiles) = (least, bc, bt);
        }
    }
    // Where the threads have fewer than two tasks each, uneven bands leave one idle.
    if threads > 1 && cut.tasks((batch_chunk, band_tiles)) < 2 * threads {
        band_tiles = cut.even_bands(band_tiles);
    }
    let cols = batch_chunk * band_tiles * cut.row_tiles;
    Sizing {
        batch_chunk,
        band_tiles,
        channel_parts: parts,
        columns: cols,
        pitch: crate::fast::im2col::pitch(cols, tl, cut.elem),
        registers,
        registers_wanted,
        slice,
        task_len: cut.task_len((batch_chunk, band_tiles), registers, slice),
        bound: bound.over(threads),
        streamed: bound.streamed,
    }
}

/// Ranges of whole blocks a group's `blocks` blocks of output channels are cut into
/// between tasks: as many as the threads the images and groups leave idle where the
/// transformed weights (`weight_bytes`) outgrow the L2 and the transformed input
/// (`input_bytes`, of every group and image), which each range's task transforms again,
/// is smaller (each task streams the weights of its channels once, instead of all of
/// them), else one. MelGAN's first upsampler at batch 1 (512 -> 256 channels, k16 s8 on
/// 200 positions, 16.8 MB of transformed weights) ran at 2 threads in bands of 64 and 3
/// tiles, 6.2 ms (5.5-6.0 in another sitting), now two tasks of 128 channels over all 67:
/// 4.1-4.6 ms (3.8-4.4 in the other; 3 alternating rounds each, medians of 20-30 runs).
fn channel_parts(
    g: &Geometry,
    threads: usize,
    blocks: usize,
    (weight_bytes, input_bytes): (usize, usize),
) -> usize {
    let l2 = crate::fast::isa::l2_cache_bytes().unwrap_or(1 << 20);
    let feeds = g.groups * g.batch.max(1);
    if threads > 1 && weight_bytes > l2.max(input_bytes) && feeds < threads {
        threads.div_ceil(feeds).min(blocks).max(1)
    } else {
        1
    }
}

/// Halve the images per task, else the band of tile rows; `false` where both are one.
fn halve(bc: &mut usize, bt: &mut usize) -> bool {
    if *bc > 1 {
        *bc = bc.div_ceil(2);
    } else if *bt > 1 {
        *bt = bt.div_ceil(2);
    } else {
        return false;
    }
    true
}

/// What [`sizing_within`] decides a cut from: the plan's sizes for one tile of `tl`
/// columns on `threads` threads, and what a task of `(images, tile rows)` holds.
struct Cut<'a> {
    g: &'a Geometry,
    transforms: &'a [Transform],
    in_stride: &'a [usize],
    threads: usize,
    bound: Bound,
    /// Ranges the output channels are cut into ([`channel_parts`]).
    parts: usize,
    tl: usize,
    elem: usize,
    /// Transformed points per tile, and the GEMMs' reduction.
    points: usize,
    kdim: usize,
    /// Images (at least one); tile rows along axis 0; tiles of one tile row (the most of
    /// any live phase).
    batch: usize,
    t0: usize,
    row_tiles: usize,
    /// How far apart the live phases' sources start along axis 0.
    spread: usize,
    /// Scratch rows of the transforms, per column.
    rows_len: usize,
}

impl<'a> Cut<'a> {
    fn new<T: Element>(
        g: &'a Geometry,
        (transforms, phases, in_stride): (&'a [Transform], &[Phase], &'a [usize]),
        tl: usize,
        (threads, bound): (usize, Bound),
    ) -> Self {
        let dims = g.axes.len();
        let live: Vec<&Phase> = phases.iter().filter(|p| p.live()).collect();
        let q0 = phases.iter().map(|p| p.extents[0]).max().unwrap_or(0);
        let row_tiles = live
            .iter()
            .map(|p| {
                (1..dims)
                    .map(|a| p.extents[a].div_ceil(transforms[a].m))
                    .product::<usize>()
            })
            .max()
            .unwrap_or(1)
            .max(1);
        let bases = live
            .iter()
            .flat_map(|p| p.sources.iter().map(|s| s.base[0]));
        let spread = (bases.clone().max().unwrap_or(0) - bases.min().unwrap_or(0)) as usize;
        let points: usize = transforms.iter().map(|t| t.alpha).product();
        let outputs: usize = transforms.iter().map(|t| t.m).product();
        Cut {
            g,
            transforms,
            in_stride,
            threads,
            bound,
            parts: 1,
            tl,
            elem: std::mem::size_of::<T>(),
            points,
            kdim: most_sources(phases) * g.in_per_group(),
            batch: g.batch.max(1),
            t0: q0.div_ceil(transforms[0].m).max(1),
            row_tiles,
            spread,
            rows_len: points.max(outputs) * CHUNK,
        }
    }

    /// Tile rows a band of as many bands as `bt` cuts the plan's rows into, but as even
    /// as whole register panels allow (a panel's columns in whole tile rows where a tile
    /// row divides them): never more. A vocoder's 1-D upsampler at batch 1 (256 -> 128
    /// channels, k16 s8 on 1000 positions, 334 tiles a phase) ran at 2 threads in bands
    /// of 288 and 46 tiles, 7.6-7.8 ms against 8.6 at 1 thread; in bands of 192 and 142,
    /// 4.9-5.1 (3 alternating rounds, medians of 20 runs).
    fn even_bands(&self, bt: usize) -> usize {
        let bands = self.t0.div_ceil(bt.max(1));
        let even = self.t0.div_ceil(bands);
        let rows = if self.tl.is_multiple_of(self.row_tiles) {
            self.tl / self.row_tiles
        } else {
            1
        };
        (even.div_ceil(rows) * rows).min(bt)
    }

    /// Tasks of `(bc, bt)` (images, tile rows) over the whole plan.
    fn tasks(&self, (bc, bt): (usize, usize)) -> usize {
        self.g.groups * self.parts * self.batch.div_ceil(bc) * self.t0.div_ceil(bt)
    }

    /// The cut aiming at `want` columns a task (whole images where they are small, else
    /// bands of tile rows), halved until every thread has a task.
    fn first_cut(&self, want: usize) -> (usize, usize) {
        let per_image = self.t0 * self.row_tiles;
        let (mut bc, mut bt) = if per_image >= want {
            (1, (want / self.row_tiles).clamp(1, self.t0))
        } else {
            ((want / per_image).clamp(1, self.batch), self.t0)
        };
        while self.threads > 1 && self.tasks((bc, bt)) < self.threads && halve(&mut bc, &mut bt) {}
        (bc, bt)
    }

    /// Elements of the channels-last input copy a task of `(bc, bt)` holds where the
    /// transforms run in `registers` (0 otherwise).
    fn slab_len(&self, (bc, bt): (usize, usize), registers: bool) -> usize {
        let in_shape: Vec<usize> = self.g.axes.iter().map(|a| a.input).collect();
        let cpad = self.g.in_per_group().div_ceil(8) * 8;
        let m0 = self.transforms[0].m;
        let s0 = self.in_stride[0];
        let rows =
            ((m0 * (bt - 1) + self.transforms[0].alpha + self.spread) * s0 + s0).min(in_shape[0]);
        if registers {
            bc * rows * numel(&in_shape[1..]) * cpad + cpad
        } else {
            0
        }
    }

    /// Elements of scratch a task of `(bc, bt)` allocates, its results `slice` channels at
    /// a time.
    fn task_len(&self, (bc, bt): (usize, usize), registers: bool, slice: usize) -> usize {
        let pitch = crate::fast::im2col::pitch(bc * bt * self.row_tiles, self.tl, self.elem);
        self.points * ((self.kdim + slice) * pitch + super::point_gap(self.elem))
            + self.rows_len * pitch
            + self.slab_len((bc, bt), registers)
    }

    /// Whether `n` threads' tasks of `(bc, bt)` would hold more than the bound.
    fn over_on(&self, n: usize, cut: (usize, usize), registers: bool, slice: usize) -> bool {
        n.max(1) * self.task_len(cut, registers, slice) * self.elem > self.bound.over(n)
    }

    /// `cut` halved while over the bound on the plan's threads (counting everything a task
    /// holds), but not below a register panel's columns (dcgan1's input gradient, whose
    /// output is half its input, ran 5x slower in tasks of one tile row).
    fn halved(
        &self,
        (mut bc, mut bt): (usize, usize),
        registers: bool,
        slice: usize,
    ) -> (usize, usize) {
        while self.over_on(self.threads, (bc, bt), registers, slice)
            && bc * bt * self.row_tiles >= 2 * self.tl
            && halve(&mut bc, &mut bt)
        {}
        (bc, bt)
    }
}

/// Least common multiple.
fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x.max(1) * b
}

/// What a plan of `g` with a given tile would hold and how it would transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes of scratch all threads' tasks hold at once (as
    /// [`crate::Plan::workspace_bytes`] reports).
    pub bytes: usize,
    /// Whether the transforms run in registers ([`crate::fast::winograd_input`]); decided for
    /// [`DECISION_THREADS`] threads.
    pub registers: bool,
    /// Whether they would but for the workspace bound (f32, AVX2 or better, 2 or 3 axes).
    pub registers_wanted: bool,
    /// The most bytes of scratch allowed: the output's size, or, for a strided conv that
    /// no tile could run within it, the input's size per thread (twice that where the
    /// transformed weights exceed 16 MiB), or where they would fit it but the transformed
    /// weights do not fit in the L2, half the input's size per thread.
    pub bound: usize,
    /// Whether `bound` is that last or the doubled one (the weights stream from memory
    /// once per task).
    pub streamed: bool,
    /// Tile columns of a task's GEMMs (at most: a band's last task may hold fewer); each
    /// task applies every transformed weight to its columns once.
    pub columns: usize,
}

/// The [`Footprint`] of a plan of `g` with an `mr × v` tile of `lanes`-wide vectors on
/// `threads` threads, or `None` where Winograd tiles do not apply. Cheap: nothing is packed.
pub fn footprint<T: Element>(
    g: &Geometry,
    (mr, v, lanes, isa): (usize, usize, usize, Isa),
    threads: usize,
) -> Option<Footprint> {
    let (transforms, phases, _, in_stride) = decompose(g)?;
    let tile = (mr, v, lanes, isa);
    let s = sizing::<T>(g, &transforms, &phases, &in_stride, tile, threads);
    Some(Footprint {
        bytes: threads.max(1) * s.task_len * std::mem::size_of::<T>(),
        registers: s.registers,
        registers_wanted: s.registers_wanted,
        bound: s.bound,
        streamed: s.streamed,
        columns: s.columns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{ConvParams, Op};

    /// Output channels cut between the threads only for a batch that leaves threads idle,
    /// whose transformed weights outgrow the L2 and its transformed input: MelGAN's first
    /// upsampler at batch 1 (16.8 MB of weights, 4.4 MB of input), not at batch 2 nor on
    /// one thread, nor pix2pix's 64×64 layer (4.2 MB of weights, 67 MB of input).
    #[test]
    fn channels_cut_where_the_weights_outgrow_the_input() {
        let parts = |x: &[usize], w: &[usize], p: &ConvParams, threads| {
            let g = Geometry::new(Op::ConvTranspose, x, w, None, p).unwrap();
            let (transforms, phases, _, in_stride) = decompose(&g).expect("Winograd tiles");
            let tile = (16, 1, 16, Isa::Avx512);
            sizing::<f32>(&g, &transforms, &phases, &in_stride, tile, threads).channel_parts
        };
        let melgan = ConvParams::new().stride(&[8]).padding(&[4]);
        let w1 = [512, 256, 16];
        assert_eq!(parts(&[1, 512, 200], &w1, &melgan, 2), 2);
        assert_eq!(parts(&[1, 512, 200], &w1, &melgan, 3), 3);
        assert_eq!(parts(&[1, 512, 200], &w1, &melgan, 1), 1);
        assert_eq!(parts(&[2, 512, 200], &w1, &melgan, 2), 1);
        assert_eq!(parts(&[2, 512, 200], &w1, &melgan, 4), 2);
        let s2 = ConvParams::new().stride(&[2, 2]).padding(&[1, 1]);
        assert_eq!(parts(&[1, 256, 64, 64], &[256, 64, 4, 4], &s2, 2), 1);
    }

    /// Where the threads have fewer than two tasks each, the bands are as even as whole
    /// register panels allow: a vocoder's 1-D upsampler at batch 1 (334 tiles a phase) in
    /// two bands of 192 and 142 tiles on 48-column panels at 2 threads, not 288 and 46;
    /// at 1 thread its bands are left as the sizing cut them.
    #[test]
    fn few_tasks_take_even_bands() {
        let p = ConvParams::new().stride(&[8]).padding(&[4]);
        let g = Geometry::new(
            Op::ConvTranspose,
            &[1, 256, 1000],
            &[256, 128, 16],
            None,
            &p,
        )
        .unwrap();
        let (transforms, phases, _, in_stride) = decompose(&g).expect("Winograd tiles");
        let on = |threads| {
            let tile = (8, 3, 16, Isa::Avx512);
            sizing::<f32>(&g, &transforms, &phases, &in_stride, tile, threads)
        };
        let t0 = 1000_usize.div_ceil(3);
        let two = on(2);
        assert_eq!(t0.div_ceil(two.band_tiles), 2, "{}", two.band_tiles);
        assert_eq!(
            two.band_tiles, 192,
            "whole 48-column panels, as even as they allow"
        );
        let one = on(1);
        assert!(one.band_tiles >= two.band_tiles, "{}", one.band_tiles);
    }
}
