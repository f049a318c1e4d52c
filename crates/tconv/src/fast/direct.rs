//! The direct driver: for each tile of a phase's flattened output grid, packs the input
//! panel once (all taps × input channels, zeros where a tap reads padding), runs the
//! microkernel for every output-channel block against it, and stores each output element
//! once with the bias added. Tiles are taken in groups that share each weight k-slice; where
//! whole panels are very long, the group packs one k-slice of every tile's panel at a time.
//! Input rows and output lines are prefetched a few tiles ahead.
//!
//! Work is split into tasks owning disjoint output rows — `(group, batch range, row chunk)`
//! — handed out as `&mut` slices, so threads never share an output element and no reduction
//! crosses threads: results are bitwise identical for any thread count.

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use super::inplace::{InplaceArgs, InplaceFn, TapRun};
use super::kernels::{KernelFn, Rows, MAX_V};
use super::pack::{pack_source, PackedWeights};
use super::spec::DirectSpec;
use super::{prefetch_read, prefetch_write, scratch};
use crate::geometry::Geometry;
use crate::tensor::{numel, Element};

/// A wide group of taps: `(first tap, taps, the first tap's source offset)` (see
/// `TileTable::wide_groups`).
type WideGroup = (usize, usize, isize);

/// Geometry-only bookkeeping of every tile, computed once per plan: which lanes each tap
/// reads, which lanes each phase writes, and where each lane lands in the output.
///
/// The flattened grid is cut into chunks of `chunk_rows` phase rows (axis 0); tiles restart
/// at each chunk, so a chunk writes a contiguous band of output rows and chunks can be given
/// to different threads.
pub struct TileTable {
    /// Lanes per tile (`v * lanes`, at most 64).
    pub tile_lanes: usize,
    /// Phase rows (axis 0) per chunk.
    pub chunk_rows: usize,
    /// Tiles of chunk `c`: `chunk_tiles[c]..chunk_tiles[c + 1]`.
    chunk_tiles: Vec<usize>,
    /// First flat index of each tile.
    tile_start: Vec<usize>,
    /// `out_base[tile * tile_lanes + l]`: output offset (within a plane) of lane `l`, before
    /// the phase residue.
    out_base: Vec<usize>,
    /// `live[tile * phases + phase]`: lanes that are output positions of the phase.
    live: Vec<u64>,
    /// `masks[tile * total_taps + tap]`: live lanes whose tap reads inside the source.
    masks: Vec<u64>,
    /// Store runs of `(tile, phase)`: `run_start[i]..run_start[i + 1]` index `runs`.
    run_start: Vec<usize>,
    /// `(first lane, lanes, output offset of the first lane)`; lane `first + j` lands at
    /// `offset + j * last_stride`.
    runs: Vec<(usize, usize, usize)>,
    /// Output stride along the last axis (distance between consecutive lanes of a run).
    pub last_stride: usize,
    /// Phases stored together: all residues of the last axis (1: phase by phase).
    pub group_size: usize,
    /// `interleave[tile * groups + group]`: the group's phases have identical runs, offset
    /// by their last-axis residue, so their results can be written interleaved, in order.
    interleave: Vec<bool>,
    /// Wide groups of each phase: `wide_groups[wide_start[p]..wide_start[p + 1]]`, each
    /// `(first tap, taps, its offset)`: consecutive taps whose source offsets rise by one
    /// lane each, so their panel rows are views of one wider row, each one lane further.
    wide_groups: Vec<WideGroup>,
    wide_start: Vec<usize>,
    /// Widest group of any phase, in taps.
    pub wide_taps: usize,
    /// `wide_masks[tile * n_wide + group]`: the lanes of the group's wide row that hold
    /// source values (the rest are zeros); `None` where the taps' masks disagree about a
    /// source element (one reads it, another must see zero), so the tile packs tap by tap.
    wide_masks: Vec<Option<u64>>,
    /// First tap of each phase in the flat tap numbering.
    tap_start: Vec<usize>,
    /// Source offset of each tap relative to the tile's first lane.
    tap_offset: Vec<isize>,
    /// Output offset of each phase's residue.
    phase_offset: Vec<usize>,
    /// Output rows (axis 0) a phase row spans: the output stride along axis 0.
    row_stride: usize,
    /// Elements per output row (axis 0).
    out_row: usize,
    /// Output extent along axis 0.
    out_rows: usize,
}

/// Lanes `from..to` of a tile (at most 64) as a mask.
fn lane_range(from: usize, to: usize) -> u64 {
    let width = |n: usize| if n >= 64 { !0 } else { (1u64 << n) - 1 };
    width(to) & !width(from)
}

impl TileTable {
    /// Build the table for `spec` on `g`, tiles of `tile_lanes` lanes, chunks of `chunk_rows`.
    pub fn new(
        g: &Geometry,
        spec: &DirectSpec,
        tile_lanes: usize,
        chunk_rows: usize,
        group_size: usize,
    ) -> TileTable {
        Self::build(g, spec, (tile_lanes, chunk_rows, group_size), true)
    }

    /// The table's taps and groups without its tiles, for a plan whose
    /// [`execute`] takes the [`strided_conv`](super::strided_conv) path (its own tiles;
    /// building these took 6.5 % of vnet3d's backward pass in perf, on every call).
    pub fn without_tiles(
        g: &Geometry,
        spec: &DirectSpec,
        tile_lanes: usize,
        group_size: usize,
    ) -> TileTable {
        Self::build(g, spec, (tile_lanes, 1, group_size), false)
    }

    fn build(
        g: &Geometry,
        spec: &DirectSpec,
        (tile_lanes, chunk_rows, group_size): (usize, usize, usize),
        tiles: bool,
    ) -> TileTable {
        assert!(tile_lanes <= 64, "a tile mask is one u64");
        let dims = g.axes.len();
        let out_ext: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
        let mut out_pitch = vec![1usize; dims];
        for a in (0..dims.saturating_sub(1)).rev() {
            out_pitch[a] = out_pitch[a + 1] * out_ext[a + 1];
        }
        let src_ext: Vec<usize> = (0..dims)
            .map(|a| {
                if a == 0 {
                    usize::MAX
                } else {
                    spec.pitches[a - 1] / spec.pitches[a]
                }
            })
            .collect();
        let mut tap_start = Vec::new();
        let mut tap_offset = Vec::new();
        for p in &spec.phases {
            tap_start.push(tap_offset.len());
            for t in &p.taps {
                let mut off = t.component as isize;
                for a in 0..dims {
                    off += t.shift[a] * spec.pitches[a] as isize;
                }
                tap_offset.push(off);
            }
        }
        let total_taps = tap_offset.len();
        // Wide groups: runs of taps whose offsets rise by one lane each (the taps of a
        // kernel row, which the specs list by ascending shift), as long as the wide row
        // (tile lanes + taps - 1) fits a 64-bit mask.
        let mut wide_groups = Vec::new();
        let mut wide_start = vec![0];
        for (pi, p) in spec.phases.iter().enumerate() {
            let first = tap_start[pi];
            let mut j = 0;
            while j < p.taps.len() {
                let mut len = 1;
                while j + len < p.taps.len()
                    && tile_lanes + len <= 64
                    && tap_offset[first + j + len] == tap_offset[first + j + len - 1] + 1
                {
                    len += 1;
                }
                wide_groups.push((first + j, len, tap_offset[first + j]));
                j += len;
            }
            wide_start.push(wide_groups.len());
        }
        let wide_taps = wide_groups.iter().map(|g| g.1).max().unwrap_or(1);
        let phase_offset: Vec<usize> = spec
            .phases
            .iter()
            .map(|p| p.residue.iter().zip(&out_pitch).map(|(r, op)| r * op).sum())
            .collect();
        let q0 = spec.phases.iter().map(|p| p.extents[0]).max().unwrap_or(0);
        let chunk_rows = chunk_rows.clamp(1, q0.max(1));
        let chunks = if tiles { q0.div_ceil(chunk_rows) } else { 0 };
        let mut t = TileTable {
            tile_lanes,
            chunk_rows,
            chunk_tiles: vec![0],
            tile_start: Vec::new(),
            out_base: Vec::new(),
            live: Vec::new(),
            masks: Vec::new(),
            run_start: vec![0],
            runs: Vec::new(),
            last_stride: spec.out_stride[dims - 1],
            group_size,
            interleave: Vec::new(),
            wide_groups,
            wide_start,
            wide_taps,
            wide_masks: Vec::new(),
            tap_start,
            tap_offset,
            phase_offset,
            row_stride: spec.out_stride[0],
            out_row: out_pitch[0],
            out_rows: out_ext[0],
        };
        // Every per-tile vector sized once (growing them copied and page-faulted them
        // afresh: a third of vnet3d's plan time after the masks went by runs).
        let n_tiles: usize = (0..chunks)
            .map(|c| {
                let rows = ((c + 1) * chunk_rows).min(q0) - c * chunk_rows;
                (rows * spec.pitches[0]).div_ceil(tile_lanes)
            })
            .sum();
        let phases = spec.phases.len();
        t.tile_start.reserve_exact(n_tiles);
        t.out_base.reserve_exact(n_tiles * tile_lanes);
        t.live.reserve_exact(n_tiles * phases);
        t.masks.reserve_exact(n_tiles * total_taps);
        t.run_start.reserve_exact(n_tiles * phases + 1);
        t.runs.reserve(n_tiles * phases);
        t.interleave
            .reserve_exact(n_tiles * phases.div_ceil(group_size.max(1)));
        t.wide_masks.reserve_exact(n_tiles * t.wide_groups.len());
        t.chunk_tiles.reserve_exact(chunks + 1);
        let mut coords = vec![0usize; dims];
        for c in 0..chunks {
            let lo = c * chunk_rows * spec.pitches[0];
            let hi = ((c + 1) * chunk_rows).min(q0) * spec.pitches[0];
            for f0 in (lo..hi).step_by(tile_lanes) {
                let tile = t.tile_start.len();
                t.tile_start.push(f0);
                t.out_base.extend(std::iter::repeat_n(0, tile_lanes));
                t.live.extend(std::iter::repeat_n(0, spec.phases.len()));
                t.masks.extend(std::iter::repeat_n(0, total_taps));
                // The tile's lanes in runs along one source row (lane by lane, the divisions
                // and per-tap tests took 73 % of vnet3d's 0.31 ms plan): the outer
                // coordinates are fixed in a run, and each phase's live lanes and each tap's
                // inside lanes are one range of it.
                let last = dims - 1;
                for a in 0..dims {
                    coords[a] = (f0 / spec.pitches[a]) % src_ext[a];
                }
                let lanes = tile_lanes.min(hi - f0);
                let mut l = 0;
                while l < lanes {
                    let col = coords[last];
                    let seg = (src_ext[last] - col).min(lanes - l);
                    let outer: usize = (0..last)
                        .map(|a| coords[a] * spec.out_stride[a] * out_pitch[a])
                        .sum();
                    let step = spec.out_stride[last] * out_pitch[last];
                    for j in 0..seg {
                        t.out_base[tile * tile_lanes + l + j] = outer + (col + j) * step;
                    }
                    let mut tap = 0;
                    for (pi, p) in spec.phases.iter().enumerate() {
                        let outer_live = (0..last).all(|a| coords[a] < p.extents[a]);
                        // Lanes `l + j` with `col + j < extent`.
                        let live = if outer_live {
                            p.extents[last].saturating_sub(col).min(seg)
                        } else {
                            0
                        };
                        t.live[tile * phases + pi] |= lane_range(l, l + live);
                        for ts in &p.taps {
                            let outer_inside = (0..last).all(|a| {
                                let s = coords[a] as isize + ts.shift[a];
                                s >= 0 && (s as usize) < ts.valid[a]
                            });
                            // Live lanes with `0 <= col + j + shift < valid`.
                            let from = (-ts.shift[last] - col as isize).max(0);
                            let to = (ts.valid[last] as isize - ts.shift[last] - col as isize)
                                .min(live as isize);
                            if outer_inside && to > from {
                                t.masks[tile * total_taps + tap] |=
                                    lane_range(l + from as usize, l + to as usize);
                            }
                            tap += 1;
                        }
                    }
                    l += seg;
                    let mut a = last;
                    coords[a] += seg;
                    while a > 0 && coords[a] == src_ext[a] {
                        coords[a] = 0;
                        a -= 1;
                        coords[a] += 1;
                    }
                }
                // A phase's store runs: its live lanes, joined where the next lane's output
                // is one last-axis stride further (`follows`, the same for every phase).
                let base = &t.out_base[tile * tile_lanes..(tile + 1) * tile_lanes];
                let follows = (0..tile_lanes.saturating_sub(1))
                    .filter(|&l| base[l + 1] == base[l] + t.last_stride)
                    .fold(0u64, |m, l| m | 1 << l);
                for pi in 0..spec.phases.len() {
                    let live = t.live[tile * spec.phases.len() + pi];
                    let joined = live & (live >> 1) & follows;
                    let off = t.phase_offset[pi];
                    let mut left = live;
                    while left != 0 {
                        let first = left.trailing_zeros() as usize;
                        let len = (joined >> first).trailing_ones() as usize + 1;
                        t.runs.push((first, len, base[first] + off));
                        left &= !lane_range(first, first + len);
                    }
                    t.run_start.push(t.runs.len());
                }
                for first in (0..spec.phases.len()).step_by(group_size) {
                    let runs_of = |pi: usize| {
                        let i = tile * spec.phases.len() + pi;
                        &t.runs[t.run_start[i]..t.run_start[i + 1]]
                    };
                    let r0 = runs_of(first);
                    let ok = group_size > 1
                        && first + group_size <= spec.phases.len()
                        && !r0.is_empty()
                        && (1..group_size).all(|r| {
                            let rr = runs_of(first + r);
                            rr.len() == r0.len()
                                && rr
                                    .iter()
                                    .zip(r0)
                                    .all(|(a, b)| a.0 == b.0 && a.1 == b.1 && a.2 == b.2 + r)
                        });
                    t.interleave.push(ok);
                }
                // Each wide group's row: consistent when every source element its taps
                // read is either read by all of the taps that reach it or by none.
                let lanes = if tile_lanes >= 64 {
                    !0
                } else {
                    (1u64 << tile_lanes) - 1
                };
                for &(first, len, lo) in &t.wide_groups {
                    let masks = &t.masks[tile * total_taps..(tile + 1) * total_taps];
                    let shift = |tap: usize| (t.tap_offset[tap] - lo) as u32;
                    let wide =
                        (first..first + len).fold(0u64, |m, tap| m | masks[tap] << shift(tap));
                    let ok =
                        (first..first + len).all(|tap| (wide >> shift(tap)) & lanes == masks[tap]);
                    t.wide_masks.push(ok.then_some(wide));
                }
            }
            t.chunk_tiles.push(t.tile_start.len());
        }
        t
    }

    /// The wide groups of phase `pi` and, for `tile`, their row masks (see `wide_masks`).
    fn wide(&self, tile: usize, pi: usize) -> (&[WideGroup], &[Option<u64>]) {
        let r = self.wide_start[pi]..self.wide_start[pi + 1];
        let n = self.wide_groups.len();
        (
            &self.wide_groups[r.clone()],
            &self.wide_masks[tile * n + r.start..tile * n + r.end],
        )
    }

    /// Number of chunks.
    pub fn chunks(&self) -> usize {
        self.chunk_tiles.len() - 1
    }

    /// Output rows (axis 0) written by chunks `c`: a contiguous band.
    fn rows(&self, c: Range<usize>) -> Range<usize> {
        let lo = (c.start * self.chunk_rows * self.row_stride).min(self.out_rows);
        let hi = if c.end >= self.chunks() {
            self.out_rows
        } else {
            (c.end * self.chunk_rows * self.row_stride).min(self.out_rows)
        };
        lo..hi
    }

    /// Bytes held by the table.
    pub fn bytes(&self) -> usize {
        8 * (self.out_base.len()
            + self.live.len()
            + self.masks.len()
            + self.tile_start.len()
            + self.run_start.len())
            + 24 * self.runs.len()
            + 16 * self.tap_offset.len()
            + 24 * self.wide_groups.len()
            + 16 * self.wide_masks.len()
    }
}

/// The two kernel families.
#[derive(Clone, Copy)]
pub enum Kernel<T> {
    /// Packed input panels, GEMM microkernel (many output channels per group).
    Packed(KernelFn<T>),
    /// Input read in place through lane masks (few output channels per group).
    Inplace(InplaceFn<T>),
}

/// A direct plan's compute part: decomposition, packed weights, kernel and tile table.
pub struct DirectKernel<T: Element> {
    /// The phase decomposition.
    pub spec: DirectSpec,
    /// Weights packed for `kernel`'s tile.
    pub packed: std::sync::Arc<PackedWeights<T>>,
    /// The microkernel.
    pub kernel: Kernel<T>,
    /// Output channels per tile.
    pub mr: usize,
    /// Vectors per tile.
    pub v: usize,
    /// Lanes per vector.
    pub lanes: usize,
    /// Whether [`execute`] deals each tile's panel straight from the input
    /// ([`strided_conv`](super::strided_conv)) instead of a polyphase copy: decided by the
    /// planner once (`strided_conv::applies`).
    pub strided_loads: bool,
    /// Per-tile masks and offsets.
    pub table: TileTable,
    /// Batch items per task.
    pub batch_chunk: usize,
    /// Depthwise (one input and one output channel per group): the groups are run as one
    /// group of `groups` output channels whose kernel rows each read their own channel.
    pub depthwise: bool,
    /// For depthwise kernels, the geometry the driver runs (one group of all channels).
    pub exec: Option<Geometry>,
    /// Most tiles a group may hold (the planner's cap: all threads' scratch within the
    /// output's size).
    pub items_cap: usize,
}

impl<T: Element> DirectKernel<T> {
    /// Elements of the per-thread input panel: most taps of a phase × C_in/g × tile lanes
    /// (0 for in-place kernels).
    pub fn panel_len(&self, cin_g: usize) -> usize {
        if let Kernel::Inplace(_) = self.kernel {
            return 0;
        }
        let taps = self
            .spec
            .phases
            .iter()
            .map(|p| p.taps.len())
            .max()
            .unwrap_or(0);
        taps * cin_g * self.table.tile_lanes
    }
}

impl<T: Element> DirectKernel<T> {
    /// Elements of scratch one task allocates: panels, accumulators and the tile buffer.
    pub fn scratch_len(&self, g: &Geometry) -> usize {
        let tl = self.table.tile_lanes;
        match self.kernel {
            Kernel::Inplace(_) => self.table.group_size * self.packed.blocks * self.mr * tl,
            Kernel::Packed(_) => {
                let panel = self.held_panel_len(g.in_per_group()).max(1);
                self.items_per_group(g)
                    * (panel + self.table.group_size * self.packed.blocks * self.mr * tl)
            }
        }
    }
}

impl<T: Element> DirectKernel<T> {
    /// Reduction length of one k-slice: one tile's panel slice fits L1, and the weight
    /// slices of all output-channel blocks fit L2.
    pub fn slice_k(&self) -> usize {
        let size = std::mem::size_of::<T>();
        (L1_SLICE / (self.table.tile_lanes * size))
            .min(WEIGHT_SLICE / (self.packed.blocks * self.mr * size))
            .max(16)
    }

    /// Whether panels are packed slice by slice: when whole panels are so long (a long
    /// reduction, e.g. the input gradient of a k16 s8 layer) that fewer than
    /// `MIN_WHOLE_PANELS` fit the panel budget. A group then holds only the current
    /// k-slice of each tile's panel, and many more tiles share each weight slice.
    pub fn sliced(&self, cin_g: usize) -> bool {
        let size = std::mem::size_of::<T>();
        self.panel_len(cin_g) * size * MIN_WHOLE_PANELS > PANEL_BUDGET
    }

    /// Elements of one tile's panel as held by a group: the whole panel, or one k-slice.
    fn held_panel_len(&self, cin_g: usize) -> usize {
        if self.sliced(cin_g) {
            self.slice_k() * self.table.tile_lanes
        } else {
            self.panel_len(cin_g)
        }
    }

    /// Tiles whose panels are packed together so that each weight slice is reused across
    /// them: as many as fit the panel budget, and whose accumulators fit the same budget.
    pub fn items_per_group(&self, g: &Geometry) -> usize {
        let size = std::mem::size_of::<T>();
        let panel = self.held_panel_len(g.in_per_group()).max(1) * size;
        let acc =
            self.table.group_size * self.packed.blocks * self.mr * self.table.tile_lanes * size;
        (PANEL_BUDGET / panel)
            .min(PANEL_BUDGET / acc.max(1))
            .min(self.items_cap)
            .clamp(1, 16)
    }

    /// Elements of scratch one tile adds to a group (its panel and accumulators).
    pub fn item_len(&self, g: &Geometry) -> usize {
        match self.kernel {
            Kernel::Inplace(_) => 0,
            Kernel::Packed(_) => {
                self.held_panel_len(g.in_per_group()).max(1)
                    + self.table.group_size * self.packed.blocks * self.mr * self.table.tile_lanes
            }
        }
    }
}

/// Fewest whole panels a group must hold; below this, panels are packed slice by slice.
const MIN_WHOLE_PANELS: usize = 4;

/// The k-slices of a phase with `taps` taps over `cin` channels, each at most `kc` long and
/// aligned to taps: `(taps, channels)` ranges, in reduction order (`k = tap · cin + ci`).
fn k_slices(taps: usize, cin: usize, kc: usize) -> Vec<(Range<usize>, Range<usize>)> {
    let mut out = Vec::new();
    if cin >= kc {
        let chunk = cin.div_ceil(cin.div_ceil(kc));
        for t in 0..taps {
            for c0 in (0..cin).step_by(chunk) {
                out.push((t..t + 1, c0..(c0 + chunk).min(cin)));
            }
        }
    } else {
        let per = (kc / cin.max(1)).max(1);
        for t0 in (0..taps).step_by(per) {
            out.push((t0..(t0 + per).min(taps), 0..cin));
        }
    }
    out
}

/// Thread pools by thread count.
type Pools = Mutex<Vec<(usize, Arc<rayon::ThreadPool>)>>;

/// A thread pool per thread count, built once.
fn pool(threads: usize) -> Arc<rayon::ThreadPool> {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(Vec::new()));
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = pools.iter().find(|(n, _)| *n == threads) {
        return p.clone();
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("tconv-{i}"))
            .build()
            .expect("thread pool"),
    );
    pools.push((threads, p.clone()));
    p
}

/// Run `f` on each of `items`, on `threads` threads (in order, on this thread, for one).
pub(crate) fn run_each<I: Send>(threads: usize, items: Vec<I>, f: impl Fn(I) + Sync + Send) {
    if threads <= 1 {
        items.into_iter().for_each(f);
    } else {
        pool(threads).install(|| items.into_par_iter().for_each(f));
    }
}

/// Run `a` and `b` at once on a pool of two threads (one after the other for fewer), and
/// return both results.
pub(crate) fn run_both<RA: Send, RB: Send>(
    threads: usize,
    a: impl FnOnce() -> RA + Send,
    b: impl FnOnce() -> RB + Send,
) -> (RA, RB) {
    if threads <= 1 {
        (a(), b())
    } else {
        pool(2).join(a, b)
    }
}

/// Run `f(index, chunk)` on each `len`-long chunk of `data` (the last may be shorter), on
/// `threads` threads.
pub(crate) fn run_chunks<T: Send>(
    threads: usize,
    data: &mut [T],
    len: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let len = len.max(1);
    if threads <= 1 {
        data.chunks_mut(len).enumerate().for_each(|(u, d)| f(u, d));
    } else {
        pool(threads).install(|| {
            data.par_chunks_mut(len)
                .enumerate()
                .for_each(|(u, d)| f(u, d))
        });
    }
}

/// One unit of parallel work: a band of output rows of one group for some batch items.
pub(crate) struct Task<'y, T> {
    pub(crate) group: usize,
    pub(crate) batch: Range<usize>,
    /// The band, in the caller's units (the direct driver: chunks of its tile table;
    /// Winograd tiles: tile rows).
    pub(crate) band: Range<usize>,
    /// Row bands in `(n, co_local)` order.
    pub(crate) planes: Vec<&'y mut [T]>,
}

/// One task per (group, batch chunk of `batch_chunk` images, band), each band of every
/// output plane (`bands`: its range in the caller's units and its length in elements,
/// consecutive and covering the plane) handed to its task as a `&mut` slice.
pub(crate) fn band_tasks<'y, T>(
    g: &Geometry,
    y: &'y mut [T],
    batch_chunk: usize,
    bands: &[(Range<usize>, usize)],
) -> Vec<Task<'y, T>> {
    let out_plane = numel(&g.output_shape()[2..]);
    let cout_g = g.out_per_group();
    let n_chunks = g.batch.div_ceil(batch_chunk);
    let nb = bands.len();
    let mut tasks: Vec<Task<'y, T>> = (0..g.groups * n_chunks * nb)
        .map(|t| {
            let nc = t / nb % n_chunks;
            Task {
                group: t / (n_chunks * nb),
                batch: nc * batch_chunk..((nc + 1) * batch_chunk).min(g.batch),
                band: bands[t % nb].0.clone(),
                planes: Vec::new(),
            }
        })
        .collect();
    for (i, plane) in y.chunks_mut(out_plane.max(1)).enumerate() {
        let (n, co) = (i / g.out_channels, i % g.out_channels);
        let mut rest = plane;
        for (b, (_, len)) in bands.iter().enumerate() {
            let (band, tail) = rest.split_at_mut(*len);
            rest = tail;
            tasks[((co / cout_g) * n_chunks + n / batch_chunk) * nb + b]
                .planes
                .push(band);
        }
    }
    tasks
}

/// Run `k` on `x (N, C_in, *in)` into `y (N, C_out, *out)`, adding `bias`.
pub fn execute<T: Element>(
    g: &Geometry,
    k: &DirectKernel<T>,
    x: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
    threads: usize,
) {
    if k.strided_loads {
        super::strided_conv::execute(g, k, x, bias, y, threads);
        return;
    }
    let packed_source = pack_source(g, &k.spec, x, threads);
    let src: &[T] = packed_source.as_deref().unwrap_or(x);
    let out_plane = numel(&g.output_shape()[2..]);
    if out_plane == 0 || g.batch == 0 {
        return;
    }
    let table = &k.table;
    // One task per (group, batch range, row chunk).
    let bands: Vec<(Range<usize>, usize)> = (0..table.chunks())
        .map(|c| (c..c + 1, table.rows(c..c + 1).len() * table.out_row))
        .collect();
    let tasks = band_tasks(g, y, k.batch_chunk, &bands);
    let run = |task: Task<'_, T>| match k.kernel {
        Kernel::Packed(f) => run_task(g, k, f, src, bias, task),
        Kernel::Inplace(f) => run_task_inplace(g, k, f, src, bias, task),
    };
    run_each(threads, tasks, run);
}

/// Prefetch for writing the cache lines of `plane[at..at + len]` (those in bounds).
#[inline(always)]
fn prefetch_span<T>(plane: &mut [T], at: usize, len: usize) {
    let line = (64 / std::mem::size_of::<T>().max(1)).max(1);
    let mut i = at;
    while i < at + len {
        prefetch_write(plane, i);
        i += line;
    }
    prefetch_write(plane, at + len - 1);
}

/// `plane[at + j*stride] = row[j] + b` for each `j` (the output positions of a run).
#[inline(always)]
pub(crate) fn store_run<T: Element>(plane: &mut [T], at: usize, stride: usize, row: &[T], b: T) {
    if stride == 1 {
        for (d, v) in plane[at..at + row.len()].iter_mut().zip(row) {
            *d = *v + b;
        }
    } else {
        let dst = &mut plane[at..=at + (row.len() - 1) * stride];
        for (j, v) in row.iter().enumerate() {
            dst[j * stride] = *v + b;
        }
    }
}

/// `plane[at + j*stride] = b` for `j` in `0..len`.
#[inline(always)]
fn fill_run<T: Element>(plane: &mut [T], at: usize, stride: usize, len: usize, b: T) {
    let dst = &mut plane[at..=at + (len - 1) * stride];
    for j in 0..len {
        dst[j * stride] = b;
    }
}

/// Most phases stored together (the planner stores phase by phase beyond this).
pub const MAX_GROUP: usize = 16;

/// Write one tile's results for the phases `first..first + group_size` of a phase group.
/// `acc[r * per_phase + co * tile_lanes + lane]` holds phase `first + r` (when `reached[r]`;
/// otherwise the phase gets the bias only). Interleavable groups are written in output order.
#[allow(clippy::too_many_arguments)]
fn store_group<T: Element>(
    table: &TileTable,
    tile: usize,
    first: usize,
    phases: usize,
    planes: &mut [&mut [T]],
    acc: &[T],
    per_phase: usize,
    reached: &[bool],
    biases: &[T],
    row_off: usize,
) {
    let tl = table.tile_lanes;
    let gs = table.group_size.min(phases - first);
    let runs_of = |pi: usize| {
        let i = tile * phases + pi;
        &table.runs[table.run_start[i]..table.run_start[i + 1]]
    };
    let groups = phases.div_ceil(table.group_size);
    if table.interleave[tile * groups + first / table.group_size] {
        let s = table.last_stride;
        if gs == s
            && (gs == 2 || gs == 8)
            && store_interleaved(
                planes,
                acc,
                per_phase,
                tl,
                runs_of(first),
                &reached[..gs],
                biases,
                row_off,
            )
        {
            return;
        }
        let zeros = [T::zero(); 64];
        let mut srcs: [&[T]; MAX_GROUP] = [&[]; MAX_GROUP];
        for (co, plane) in planes.iter_mut().enumerate() {
            let b = biases[co];
            for &(lo, len, at) in runs_of(first) {
                for (r, src) in srcs.iter_mut().enumerate().take(gs) {
                    let from = r * per_phase + co * tl + lo;
                    *src = if reached[r] {
                        &acc[from..from + len]
                    } else {
                        &zeros[..len]
                    };
                }
                let at = at - row_off;
                let span = (len - 1) * s + gs;
                prefetch_span(plane, at + PREFETCH_TILES * span, span);
                // Residue by residue into one small output span (it stays in L1): element
                // j of residue r lands at j*s + r.
                let dst = &mut plane[at..at + span];
                for (r, src) in srcs[..gs].iter().enumerate() {
                    let lane = &mut dst[r..];
                    for (j, &v) in src.iter().enumerate() {
                        lane[j * s] = v + b;
                    }
                }
            }
        }
        return;
    }
    for r in 0..gs {
        for (co, plane) in planes.iter_mut().enumerate() {
            for &(lo, len, at) in runs_of(first + r) {
                let span = (len - 1) * table.last_stride + 1;
                prefetch_span(plane, at - row_off + PREFETCH_TILES * span, span);
                if reached[r] {
                    let row =
                        &acc[r * per_phase + co * tl + lo..r * per_phase + co * tl + lo + len];
                    store_run(plane, at - row_off, table.last_stride, row, biases[co]);
                } else {
                    fill_run(plane, at - row_off, table.last_stride, len, biases[co]);
                }
            }
        }
    }
}

/// The interleaved store of the `G` last-axis phases of a group (`G` 2 or 8, the last
/// stride) for every channel of a tile, in one AVX loop for f32: channel `co`'s run
/// `(lo, len, at)` writes `acc[r·per_phase + co·tl + lo + j]` plus the bias to
/// `plane[at - row_off + G·j + r]` (zeros plus the bias for a phase not `reached`).
/// Returns `false` (doing nothing) where that path does not apply.
#[allow(clippy::too_many_arguments)]
fn store_interleaved<T: Element>(
    planes: &mut [&mut [T]],
    acc: &[T],
    per_phase: usize,
    tl: usize,
    runs: &[(usize, usize, usize)],
    reached: &[bool],
    biases: &[T],
    row_off: usize,
) -> bool {
    let g = reached.len();
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && (g == 2 || g == 8)
        && tl <= 64
        && is_x86_feature_detected!("avx")
    {
        // Every read inside `acc` and every write inside its plane.
        assert!(
            acc.len() >= (g - 1) * per_phase + planes.len() * tl
                && biases.len() >= planes.len()
                && runs.iter().all(|&(lo, len, at)| {
                    lo + len <= tl
                        && at >= row_off
                        && planes.iter().all(|p| at - row_off + g * len <= p.len())
                }),
            "store_interleaved bounds"
        );
        // Safety: `T` is `f32` (same TypeId), so the slices are valid `[f32]`; the bounds
        // were checked above; AVX was detected.
        unsafe {
            let acc = std::slice::from_raw_parts(acc.as_ptr() as *const f32, acc.len());
            let biases = std::slice::from_raw_parts(biases.as_ptr() as *const f32, biases.len());
            let planes = std::slice::from_raw_parts_mut(
                planes.as_mut_ptr() as *mut &mut [f32],
                planes.len(),
            );
            let args = (planes, acc, per_phase, tl, runs, reached, biases, row_off);
            if g == 2 {
                store_interleaved_avx::<2>(args);
            } else {
                store_interleaved_avx::<8>(args);
            }
        }
        return true;
    }
    let _ = (
        planes, acc, per_phase, tl, runs, reached, biases, row_off, g,
    );
    false
}

/// The operands of [`store_interleaved_avx`], as [`store_interleaved`] takes them.
type InterleavedArgs<'a, 'p> = (
    &'a mut [&'p mut [f32]],
    &'a [f32],
    usize,
    usize,
    &'a [(usize, usize, usize)],
    &'a [bool],
    &'a [f32],
    usize,
);

/// # Safety
/// AVX available; the bounds [`store_interleaved`] checks hold for `G` phases.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn store_interleaved_avx<const G: usize>(args: InterleavedArgs<'_, '_>) {
    use std::arch::x86_64::*;
    let (planes, acc, per_phase, tl, runs, reached, biases, row_off) = args;
    let zeros = [0f32; 64];
    for (co, plane) in planes.iter_mut().enumerate() {
        let bias = biases[co];
        let bv = _mm256_set1_ps(bias);
        for &(lo, len, at) in runs {
            let src: [*const f32; G] = std::array::from_fn(|r| {
                if reached[r] {
                    acc.as_ptr().add(r * per_phase + co * tl + lo)
                } else {
                    zeros.as_ptr()
                }
            });
            let at = at - row_off;
            prefetch_span(plane, at + PREFETCH_TILES * G * len, G * len);
            let d = plane.as_mut_ptr().add(at);
            let mut i = 0;
            while i + 8 <= len {
                if G == 2 {
                    let x = _mm256_add_ps(_mm256_loadu_ps(src[0].add(i)), bv);
                    let y = _mm256_add_ps(_mm256_loadu_ps(src[1].add(i)), bv);
                    let lo8 = _mm256_unpacklo_ps(x, y); // a0 c0 a1 c1 | a4 c4 a5 c5
                    let hi8 = _mm256_unpackhi_ps(x, y); // a2 c2 a3 c3 | a6 c6 a7 c7
                    _mm256_storeu_ps(d.add(2 * i), _mm256_permute2f128_ps(lo8, hi8, 0x20));
                    _mm256_storeu_ps(d.add(2 * i + 8), _mm256_permute2f128_ps(lo8, hi8, 0x31));
                } else {
                    let x: [__m256; 8] = std::array::from_fn(|r| {
                        _mm256_add_ps(_mm256_loadu_ps(src[r % G].add(i)), bv)
                    });
                    // Column c: the 8 residues of position i + c.
                    for (c, col) in transpose8x8(x).iter().enumerate() {
                        _mm256_storeu_ps(d.add(G * (i + c)), *col);
                    }
                }
                i += 8;
            }
            for j in i..len {
                for (r, sr) in src.iter().enumerate() {
                    *d.add(G * j + r) = *sr.add(j) + bias;
                }
            }
        }
    }
}

/// `dst = [a0+b, c0+b, a1+b, c1+b, …]` for `a`, `c` of equal length (`dst` twice as long),
/// with AVX unpack/permute for f32; returns `false` (doing nothing) where that path does
/// not apply, so the caller stores element by element. Without `bias` the values are
/// moved as they are (adding a zero would turn a -0 into +0).
pub(crate) fn interleave2<T: Element>(dst: &mut [T], a: &[T], c: &[T], bias: Option<T>) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && is_x86_feature_detected!("avx")
    {
        assert!(
            a.len() == c.len() && dst.len() == 2 * a.len(),
            "interleave2 lengths"
        );
        // Safety: `T` is `f32` (same TypeId), so each slice is a valid `[f32]` of its length.
        let (dst, a, c) = unsafe {
            (
                std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut f32, dst.len()),
                std::slice::from_raw_parts(a.as_ptr() as *const f32, a.len()),
                std::slice::from_raw_parts(c.as_ptr() as *const f32, c.len()),
            )
        };
        // Safety: AVX was detected and the lengths were checked above.
        match bias {
            Some(b) => unsafe { interleave2_avx::<true>(dst, a, c, b.to_f32().unwrap_or(0.0)) },
            None => unsafe { interleave2_avx::<false>(dst, a, c, 0.0) },
        }
        return true;
    }
    let _ = (dst, a, c, bias);
    false
}

/// # Safety
/// AVX available; `dst.len() == 2 * a.len()` and `c.len() == a.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn interleave2_avx<const ADD: bool>(dst: &mut [f32], a: &[f32], c: &[f32], bias: f32) {
    use std::arch::x86_64::*;
    let n = a.len();
    let bv = _mm256_set1_ps(bias);
    let add = |v: __m256| if ADD { _mm256_add_ps(v, bv) } else { v };
    let mut i = 0;
    while i + 8 <= n {
        let x = add(_mm256_loadu_ps(a.as_ptr().add(i)));
        let y = add(_mm256_loadu_ps(c.as_ptr().add(i)));
        let lo = _mm256_unpacklo_ps(x, y); // a0 c0 a1 c1 | a4 c4 a5 c5
        let hi = _mm256_unpackhi_ps(x, y); // a2 c2 a3 c3 | a6 c6 a7 c7
        _mm256_storeu_ps(
            dst.as_mut_ptr().add(2 * i),
            _mm256_permute2f128_ps(lo, hi, 0x20),
        );
        _mm256_storeu_ps(
            dst.as_mut_ptr().add(2 * i + 8),
            _mm256_permute2f128_ps(lo, hi, 0x31),
        );
        i += 8;
    }
    for j in i..n {
        (dst[2 * j], dst[2 * j + 1]) = if ADD {
            (a[j] + bias, c[j] + bias)
        } else {
            (a[j], c[j])
        };
    }
}

/// `dst[8j + r] = rows[r][j] + bias` (an 8×n → n×8 transpose) with AVX for f32; returns
/// `false` (doing nothing) where that path does not apply. With `stream`, whole vectors go
/// to memory with non-temporal stores (no read for ownership, the lines bypass the caches)
/// where `dst` is 16-byte aligned: for outputs far larger than the caches. The caller
/// issues [`store_fence`] before the data is handed to another thread.
pub(crate) fn interleave8_to<T: Element>(
    dst: &mut [T],
    rows: &[&[T]],
    bias: T,
    stream: bool,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && is_x86_feature_detected!("avx")
    {
        let n = rows[0].len();
        assert!(
            rows.len() == 8 && rows.iter().all(|r| r.len() == n) && dst.len() == 8 * n,
            "interleave8 lengths"
        );
        // Safety: `T` is `f32` (same TypeId), so each slice is a valid `[f32]` of its length.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut f32, dst.len()) };
        let mut r: [&[f32]; 8] = [&[]; 8];
        for (slot, row) in r.iter_mut().zip(rows) {
            // Safety: as above.
            *slot = unsafe { std::slice::from_raw_parts(row.as_ptr() as *const f32, row.len()) };
        }
        let stream = stream && (dst.as_ptr() as usize).is_multiple_of(16);
        // Safety: AVX was detected and the lengths were checked above; streaming stores
        // are only used on a 16-byte aligned `dst`.
        unsafe { interleave8_avx(dst, &r, bias.to_f32().unwrap_or(0.0), stream) };
        return true;
    }
    let _ = (dst, rows, bias, stream);
    false
}

/// Order earlier non-temporal stores before later stores (a no-op elsewhere).
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // Safety: SFENCE is part of the x86-64 baseline and has no operands.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// # Safety
/// AVX available; 8 rows of equal length `n` and `dst.len() == 8 * n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn interleave8_avx(dst: &mut [f32], r: &[&[f32]; 8], bias: f32, stream: bool) {
    use std::arch::x86_64::*;
    let n = r[0].len();
    let bv = _mm256_set1_ps(bias);
    let mut j = 0;
    while j + 8 <= n {
        let x: [__m256; 8] =
            std::array::from_fn(|i| _mm256_add_ps(_mm256_loadu_ps(r[i].as_ptr().add(j)), bv));
        // (With `stream`, `dst` is 16-byte aligned and offsets are multiples of 8 floats.)
        store_block(dst.as_mut_ptr().add(8 * j), x, stream);
        j += 8;
    }
    for jj in j..n {
        for (i, row) in r.iter().enumerate() {
            dst[8 * jj + i] = row[jj] + bias;
        }
    }
}

/// Transpose 8 vectors of 8 phases in registers (column `c` then holds the 8 residues of
/// position `c`) and store them as 64 consecutive values at `dst`, non-temporal with
/// `stream`.
///
/// # Safety
/// AVX available; `dst` writable for 64 values, 16-byte aligned with `stream`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
pub(crate) unsafe fn store_block(dst: *mut f32, x: [std::arch::x86_64::__m256; 8], stream: bool) {
    use std::arch::x86_64::*;
    for (c, col) in transpose8x8(x).iter().enumerate() {
        if stream {
            _mm_stream_ps(dst.add(8 * c), _mm256_castps256_ps128(*col));
            _mm_stream_ps(dst.add(8 * c + 4), _mm256_extractf128_ps(*col, 1));
        } else {
            _mm256_storeu_ps(dst.add(8 * c), *col);
        }
    }
}

/// The even and the odd elements of the 16 values at `p`: `(p[0], p[2], …, p[14])` and
/// `(p[1], p[3], …, p[15])`.
///
/// # Safety
/// AVX2 available; `p` readable for 16 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn evens_odds16(
    p: *const f32,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
    // a0 a2 b0 b2 | a4 a6 b4 b6 and a1 a3 b1 b3 | a5 a7 b5 b7, then the 64-bit pairs
    // reordered: a0 a2 a4 a6 b0 b2 b4 b6 and a1 a3 a5 a7 b1 b3 b5 b7.
    let order = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
    (
        order(_mm256_shuffle_ps(a, b, 0x88)),
        order(_mm256_shuffle_ps(a, b, 0xDD)),
    )
}

/// The 8×8 transpose of `x` (rows → columns): element `c` of result `r` is `x[c][r]`.
///
/// # Safety
/// AVX available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
pub(crate) unsafe fn transpose8x8(
    x: [std::arch::x86_64::__m256; 8],
) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(x[0], x[1]);
    let t1 = _mm256_unpackhi_ps(x[0], x[1]);
    let t2 = _mm256_unpacklo_ps(x[2], x[3]);
    let t3 = _mm256_unpackhi_ps(x[2], x[3]);
    let t4 = _mm256_unpacklo_ps(x[4], x[5]);
    let t5 = _mm256_unpackhi_ps(x[4], x[5]);
    let t6 = _mm256_unpacklo_ps(x[6], x[7]);
    let t7 = _mm256_unpackhi_ps(x[6], x[7]);
    let u0 = _mm256_shuffle_ps(t0, t2, 0x44);
    let u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    let u2 = _mm256_shuffle_ps(t1, t3, 0x44);
    let u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    let u4 = _mm256_shuffle_ps(t4, t6, 0x44);
    let u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    let u6 = _mm256_shuffle_ps(t5, t7, 0x44);
    let u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    [
        _mm256_permute2f128_ps(u0, u4, 0x20),
        _mm256_permute2f128_ps(u1, u5, 0x20),
        _mm256_permute2f128_ps(u2, u6, 0x20),
        _mm256_permute2f128_ps(u3, u7, 0x20),
        _mm256_permute2f128_ps(u0, u4, 0x31),
        _mm256_permute2f128_ps(u1, u5, 0x31),
        _mm256_permute2f128_ps(u2, u6, 0x31),
        _mm256_permute2f128_ps(u3, u7, 0x31),
    ]
}

/// Copy a short slice inline (a `memcpy` call costs more than the copy for tile rows).
#[inline(always)]
pub(crate) fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d8, s8) in (&mut d).zip(&mut s) {
        let s8: &[T; 8] = s8.try_into().expect("chunk of 8");
        let d8: &mut [T; 8] = d8.try_into().expect("chunk of 8");
        *d8 = *s8;
    }
    // The rest: four, then up to three (the remainder as a loop became a `memcpy` call: 3 %
    // of a Winograd weight gradient's transform, which copies runs of 12).
    let (d, s) = (d.into_remainder(), s.remainder());
    let n = d.len().min(s.len());
    let mut i = 0;
    if n >= 4 {
        let s4: &[T; 4] = s[..4].try_into().expect("four");
        let d4: &mut [T; 4] = (&mut d[..4]).try_into().expect("four");
        *d4 = *s4;
        i = 4;
    }
    match n - i {
        0 => {}
        1 => d[i] = s[i],
        2 => {
            d[i] = s[i];
            d[i + 1] = s[i + 1];
        }
        _ => {
            d[i] = s[i];
            d[i + 1] = s[i + 1];
            d[i + 2] = s[i + 2];
        }
    }
}

/// Zero a short slice inline.
#[inline(always)]
fn fill_zero<T: Element>(dst: &mut [T]) {
    for v in dst {
        *v = T::zero();
    }
}

/// Copy the live lanes of each tap (zeros elsewhere) into `panel[tap][ci][lane]`.
#[allow(clippy::too_many_arguments)]
fn pack_panel<T: Element>(
    src: &[T],
    base: usize,
    channel_stride: usize,
    channels: usize,
    taps: Range<usize>,
    tile: usize,
    table: &TileTable,
    panel: &mut [T],
) -> bool {
    let tl = table.tile_lanes;
    let total_taps = table.tap_offset.len();
    let f0 = table.tile_start[tile];
    let mut any = false;
    for (ti, t) in taps.enumerate() {
        let mask = table.masks[tile * total_taps + t];
        any |= mask != 0;
        let start = base as isize + f0 as isize + table.tap_offset[t];
        let rows = &mut panel[ti * channels * tl..(ti + 1) * channels * tl];
        if mask == 0 {
            rows.fill(T::zero());
            continue;
        }
        if pack_tap_masked(src, start, channel_stride, mask, tl, rows) {
            continue;
        }
        // Runs of consecutive live lanes: (first lane, length).
        let mut runs = [(0usize, 0usize); 32];
        let mut n_runs = 0;
        let mut bits = mask;
        while bits != 0 && n_runs < runs.len() {
            let lo = bits.trailing_zeros() as usize;
            let len = (!(bits >> lo)).trailing_zeros() as usize;
            runs[n_runs] = (lo, len);
            n_runs += 1;
            bits &= if lo + len >= 64 {
                0
            } else {
                !0u64 << (lo + len)
            };
        }
        let full = bits == 0;
        for (ci, row) in rows.chunks_exact_mut(tl).enumerate() {
            let s = start + (ci * channel_stride) as isize;
            // The tiles that follow read on along the same rows: fetch them early.
            let ahead = (s + (PREFETCH_TILES * tl) as isize).max(0) as usize;
            prefetch_read(src, ahead);
            prefetch_read(src, ahead + tl - 1);
            if !full {
                // More runs than the fast path holds: lane by lane.
                for (l, slot) in row.iter_mut().enumerate() {
                    *slot = if mask & (1 << l) != 0 {
                        src[(s + l as isize) as usize]
                    } else {
                        T::zero()
                    };
                }
                continue;
            }
            let mut pos = 0;
            for &(lo, len) in &runs[..n_runs] {
                fill_zero(&mut row[pos..lo]);
                let from = (s + lo as isize) as usize;
                // Copy whole 8-lane chunks when both sides have room: the few lanes past the
                // run are overwritten by the next gap's zeros (or the final fill) below.
                let whole = len.div_ceil(8) * 8;
                if lo + whole <= row.len() && from + whole <= src.len() {
                    copy_short(&mut row[lo..lo + whole], &src[from..from + whole]);
                } else {
                    copy_short(&mut row[lo..lo + len], &src[from..from + len]);
                }
                pos = lo + len;
            }
            fill_zero(&mut row[pos..]);
        }
    }
    any
}

/// Panics unless every lane set in `mask` (lane `l` at `start + l`), for each of `channels`
/// channels `channel_stride` apart, lies inside a source of `len` values: the packing
/// paths load those lanes unchecked. (The table's masks only hold taps that read inside the
/// source, so the first and last channel's extremes are all there is to check.)
fn check_mask_bounds(len: usize, start: isize, channel_stride: usize, channels: usize, mask: u64) {
    if mask != 0 && channels > 0 {
        let lo = mask.trailing_zeros() as isize;
        let hi = 63 - mask.leading_zeros() as isize;
        let last = start + ((channels - 1) * channel_stride) as isize;
        assert!(
            start + lo >= 0 && last + hi < len as isize,
            "packed lanes lie inside the source"
        );
    }
}

/// Whether [`pack_wide`] runs for tiles of `tl` lanes and element type `T`: f32 with AVX,
/// tiles of whole vectors.
fn wide_packing<T: 'static>(tl: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        return tl.is_multiple_of(8) && tl <= 64 && is_x86_feature_detected!("avx");
    }
    let _ = tl;
    false
}

/// One wide group's rows for a tile: row `ci` of `rows` (`pitch` apart) gets
/// `src[start + ci·channel_stride + j]` in the lanes `j` set in `mask` and zeros elsewhere,
/// up to `pitch` lanes (the vector stores run up to 7 lanes further, into the next row or
/// past the last; `rows` must hold them). Only where [`wide_packing`] holds.
fn pack_wide<T: Element>(
    src: &[T],
    start: isize,
    channel_stride: usize,
    channels: usize,
    mask: u64,
    pitch: usize,
    rows: &mut [T],
) {
    assert!(
        wide_packing::<T>(8)
            && pitch <= 64
            && (channels == 0 || rows.len() >= (channels - 1) * pitch + pitch.div_ceil(8) * 8),
        "pack_wide operands"
    );
    #[cfg(target_arch = "x86_64")]
    {
        check_mask_bounds(src.len(), start, channel_stride, channels, mask);
        // Safety: `T` is `f32` and AVX is available (`wide_packing`); loads are the mask's
        // lanes (checked in bounds), stores stay inside `rows` (checked above).
        unsafe {
            let src = std::slice::from_raw_parts(src.as_ptr() as *const f32, src.len());
            let rows = std::slice::from_raw_parts_mut(rows.as_mut_ptr() as *mut f32, rows.len());
            pack_wide_avx(src, start, channel_stride, channels, mask, pitch, rows);
        }
    }
}

/// # Safety
/// AVX available; `pitch <= 64`; `rows` holds `(channels - 1)·pitch + ⌈pitch/8⌉·8` values;
/// every lane set in `mask` reads inside `src` for every channel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn pack_wide_avx(
    src: &[f32],
    start: isize,
    channel_stride: usize,
    channels: usize,
    mask: u64,
    pitch: usize,
    rows: &mut [f32],
) {
    use std::arch::x86_64::*;
    let nv = pitch.div_ceil(8);
    let mut masks = [_mm256_setzero_si256(); 8];
    for (v, m) in masks.iter_mut().enumerate().take(nv) {
        let lanes: [i32; 8] = std::array::from_fn(|l| -(((mask >> (8 * v + l)) & 1) as i32));
        *m = _mm256_loadu_si256(lanes.as_ptr() as *const __m256i);
    }
    let p = src.as_ptr();
    let out = rows.as_mut_ptr();
    for ci in 0..channels {
        let s = start + (ci * channel_stride) as isize;
        let ahead = (s + (PREFETCH_TILES * pitch) as isize).max(0) as usize;
        prefetch_read(src, ahead);
        prefetch_read(src, ahead + pitch - 1);
        let from = p.wrapping_offset(s);
        for (v, m) in masks.iter().enumerate().take(nv) {
            let x = _mm256_maskload_ps(from.wrapping_add(8 * v), *m);
            _mm256_storeu_ps(out.add(ci * pitch + 8 * v), x);
        }
    }
}

/// One tap of [`pack_panel`] with AVX masked loads, for f32 tiles of whole vectors: row
/// `ci` of `rows` gets `src[start + ci·channel_stride + l]` in the lanes `l` set in `mask`
/// and zeros elsewhere, two instructions per vector whatever the mask. Returns `false`
/// (doing nothing) where that path does not apply.
fn pack_tap_masked<T: Element>(
    src: &[T],
    start: isize,
    channel_stride: usize,
    mask: u64,
    tl: usize,
    rows: &mut [T],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && tl.is_multiple_of(8)
        && tl <= 64
        && is_x86_feature_detected!("avx")
    {
        check_mask_bounds(src.len(), start, channel_stride, rows.len() / tl, mask);
        // Safety: `T` is `f32` (same TypeId); AVX was detected; the lanes loaded are the
        // mask's, in bounds as checked above (masked-off lanes are not accessed).
        unsafe {
            let src = std::slice::from_raw_parts(src.as_ptr() as *const f32, src.len());
            let rows = std::slice::from_raw_parts_mut(rows.as_mut_ptr() as *mut f32, rows.len());
            // One tap's rows are a wide group's rows of exactly the tile's width.
            pack_wide_avx(src, start, channel_stride, rows.len() / tl, mask, tl, rows);
        }
        return true;
    }
    let _ = (src, start, channel_stride, mask, tl, rows);
    false
}

/// Bytes of input panels kept hot together, so that each packed weight block is reused
/// across several tiles (half of a 1 MiB L2).
pub(crate) const PANEL_BUDGET: usize = 512 * 1024;
/// How many tiles ahead the packing and the stores prefetch along their rows.
const PREFETCH_TILES: usize = 2;
/// Bytes of one tile's panel slice that stays in L1 while every channel block uses it.
const L1_SLICE: usize = 16 * 1024;
/// Bytes of the weight slices of all blocks for one `k` range (kept in L2).
const WEIGHT_SLICE: usize = 256 * 1024;

fn run_task<T: Element>(
    g: &Geometry,
    k: &DirectKernel<T>,
    kernel: KernelFn<T>,
    src: &[T],
    bias: Option<&[T]>,
    mut task: Task<'_, T>,
) {
    let (spec, table) = (&k.spec, &k.table);
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    let tl = table.tile_lanes;
    let phases = spec.phases.len();
    let gs = table.group_size;
    let image = g.in_channels * spec.channel_stride;
    let row_off = table.rows(task.band.clone()).start * table.out_row;
    let blocks = k.packed.blocks;
    let biases: Vec<T> = (0..cout_g)
        .map(|c| bias.map_or(T::zero(), |b| b[task.group * cout_g + c]))
        .collect();
    let tiles = table.chunk_tiles[task.band.start]..table.chunk_tiles[task.band.end];
    // Work items (batch index within the task, tile), processed in groups that share weights.
    let items: Vec<(usize, usize)> = (0..task.batch.len())
        .flat_map(|ni| tiles.clone().map(move |t| (ni, t)))
        .collect();
    let panel_len = k.held_panel_len(cin_g).max(1);
    let group = k.items_per_group(g).min(items.len().max(1));
    let kc = k.slice_k();
    let sliced = k.sliced(cin_g);
    let per_phase = blocks * k.mr * tl;
    let per_slot = gs * per_phase;
    // Stale scratch: `pack_panel` writes every panel it returns `true` for, and the kernels
    // write each accumulator tile (`accumulate == false` first) before the stores read it.
    let mut panels = scratch::take::<T>(group * panel_len);
    let mut reached = vec![false; group * gs];
    let mut acc = scratch::take::<T>(group * per_slot);
    let total_taps = table.tap_offset.len();

    for chunk in items.chunks(group) {
        // Which phase each slot's panel currently holds.
        let mut holds: Vec<Option<usize>> = vec![None; chunk.len()];
        for first_phase in (0..phases).step_by(gs) {
            for pi in first_phase..(first_phase + gs).min(phases) {
                let r = pi - first_phase;
                let phase = &spec.phases[pi];
                let first = table.tap_start[pi];
                let taps = first..first + phase.taps.len();
                // acc[slot][r][block] (+)= weights[block][k0..k0 + kn] · rows `at..` of each
                // reached slot's panel.
                let multiply = |panels: &[T], acc: &mut [T], reached: &[bool], at, k0, kn| {
                    for slot in (0..chunk.len()).filter(|&s| reached[s * gs + r]) {
                        let panel = &panels[slot * panel_len + at..slot * panel_len + at + kn * tl];
                        for block in 0..blocks {
                            let run = k.packed.run(task.group, block, pi);
                            let w = &run[k0 * k.mr..(k0 + kn) * k.mr];
                            let out = slot * per_slot + r * per_phase + block * k.mr * tl;
                            kernel(
                                w,
                                panel,
                                Rows::packed(kn, tl),
                                &mut acc[out..out + k.mr * tl],
                                k0 > 0,
                            );
                        }
                    }
                };
                // Phases whose taps read the same shifted inputs (e.g. kernel == stride) share a panel.
                let same_panel = |tile: usize, prev: usize| {
                    let pf = table.tap_start[prev];
                    spec.phases[prev].taps.len() == phase.taps.len()
                        && (0..phase.taps.len()).all(|j| {
                            table.tap_offset[pf + j] == table.tap_offset[first + j]
                                && table.masks[tile * total_taps + pf + j]
                                    == table.masks[tile * total_taps + first + j]
                        })
                };
                if sliced {
                    // Slice by slice: pack the slice of every tile's panel, then run every
                    // block over all of them (each weight slice serves the whole group).
                    for (slot, &(_, tile)) in chunk.iter().enumerate() {
                        let live = table.live[tile * phases + pi];
                        reached[slot * gs + r] = live != 0
                            && taps
                                .clone()
                                .any(|t| table.masks[tile * total_taps + t] != 0);
                    }
                    let mut k0 = 0;
                    for (ts, cs) in k_slices(phase.taps.len(), cin_g, kc) {
                        let kn = ts.len() * cs.len();
                        for (slot, &(ni, tile)) in chunk.iter().enumerate() {
                            if !reached[slot * gs + r] {
                                continue;
                            }
                            let n = task.batch.start + ni;
                            let base =
                                n * image + (task.group * cin_g + cs.start) * spec.channel_stride;
                            pack_panel(
                                src,
                                base,
                                spec.channel_stride,
                                cs.len(),
                                first + ts.start..first + ts.end,
                                tile,
                                table,
                                &mut panels[slot * panel_len..slot * panel_len + kn * tl],
                            );
                        }
                        // The slice's weights are rows k0..k0 + kn of the phase's reduction
                        // (`k = tap · cin + ci` with the slice's taps and channels).
                        multiply(&panels, &mut acc, &reached, 0, k0, kn);
                        k0 += kn;
                    }
                    continue;
                }
                // Wide rows: where the phase has groups of taps whose panel rows are shifted
                // views of one wider row, and every tile's rows are consistent, each group's
                // row is packed once and each tap multiplies a strided view of it.
                let (groups_w, _) = table.wide(chunk[0].1, pi);
                let pitch = tl + table.wide_taps - 1;
                let wide = wide_packing::<T>(tl)
                    && groups_w.iter().any(|g| g.1 > 1)
                    && groups_w.len() * cin_g * pitch + 8 <= panel_len
                    && chunk
                        .iter()
                        .all(|&(_, tile)| table.wide(tile, pi).1.iter().all(|m| m.is_some()));
                if wide {
                    for (slot, &(ni, tile)) in chunk.iter().enumerate() {
                        let n = task.batch.start + ni;
                        let base = n * image + task.group * cin_g * spec.channel_stride;
                        let live = table.live[tile * phases + pi];
                        let (groups_w, masks) = table.wide(tile, pi);
                        let panel = &mut panels[slot * panel_len..(slot + 1) * panel_len];
                        let mut any = false;
                        for (gi, (&(_, _, lo), m)) in groups_w.iter().zip(masks).enumerate() {
                            let m = m.unwrap_or(0);
                            any |= m != 0;
                            let start = (base + table.tile_start[tile]) as isize + lo;
                            let rows = &mut panel[gi * cin_g * pitch..];
                            pack_wide(src, start, spec.channel_stride, cin_g, m, pitch, rows);
                        }
                        holds[slot] = None;
                        reached[slot * gs + r] = live != 0 && any;
                    }
                    for (slot, _) in chunk.iter().enumerate() {
                        if !reached[slot * gs + r] {
                            continue;
                        }
                        let panel = &panels[slot * panel_len..(slot + 1) * panel_len];
                        for block in 0..blocks {
                            let run = k.packed.run(task.group, block, pi);
                            let out = slot * per_slot + r * per_phase + block * k.mr * tl;
                            let out = &mut acc[out..out + k.mr * tl];
                            // One call per group: its taps are views of the group's row,
                            // one lane apart.
                            for (gi, &(tap0, len, _)) in groups_w.iter().enumerate() {
                                let rows = &panel[gi * cin_g * pitch..];
                                let w = &run[(tap0 - first) * cin_g * k.mr..];
                                let shape = Rows {
                                    k: cin_g,
                                    pitch,
                                    taps: len,
                                    out_pitch: 0,
                                };
                                kernel(w, rows, shape, out, gi > 0);
                            }
                        }
                    }
                    continue;
                }
                for (slot, &(ni, tile)) in chunk.iter().enumerate() {
                    let n = task.batch.start + ni;
                    let base = n * image + task.group * cin_g * spec.channel_stride;
                    let live = table.live[tile * phases + pi];
                    // `holds` names a phase only while the slot's panel holds its packed input.
                    let reuse = live != 0 && holds[slot].is_some_and(|prev| same_panel(tile, prev));
                    let ok = if reuse {
                        true
                    } else {
                        live != 0
                            && !phase.taps.is_empty()
                            && pack_panel(
                                src,
                                base,
                                spec.channel_stride,
                                cin_g,
                                taps.clone(),
                                tile,
                                table,
                                &mut panels[slot * panel_len..(slot + 1) * panel_len],
                            )
                    };
                    holds[slot] = if ok { Some(pi) } else { None };
                    reached[slot * gs + r] = ok;
                }
                // Whole panels, multiplied one k-slice at a time.
                let kdim = phase.taps.len() * cin_g;
                for k0 in (0..kdim).step_by(kc) {
                    let kn = kc.min(kdim - k0);
                    multiply(&panels, &mut acc, &reached, k0 * tl, k0, kn);
                }
            }
            for (slot, &(ni, tile)) in chunk.iter().enumerate() {
                store_group(
                    table,
                    tile,
                    first_phase,
                    phases,
                    &mut task.planes[ni * cout_g..(ni + 1) * cout_g],
                    &acc[slot * per_slot..(slot + 1) * per_slot],
                    per_phase,
                    &reached[slot * gs..(slot + 1) * gs],
                    &biases,
                    row_off,
                );
            }
        }
    }
}

fn run_task_inplace<T: Element>(
    g: &Geometry,
    k: &DirectKernel<T>,
    kernel: InplaceFn<T>,
    src: &[T],
    bias: Option<&[T]>,
    mut task: Task<'_, T>,
) {
    let (spec, table) = (&k.spec, &k.table);
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    let tl = table.tile_lanes;
    let phases = spec.phases.len();
    let gs = table.group_size;
    let total_taps = table.tap_offset.len();
    let image = g.in_channels * spec.channel_stride;
    let row_off = table.rows(task.band.clone()).start * table.out_row;
    let lane_mask = (1u64 << k.lanes) - 1;
    let biases: Vec<T> = (0..cout_g)
        .map(|c| bias.map_or(T::zero(), |b| b[task.group * cout_g + c]))
        .collect();
    let tiles = table.chunk_tiles[task.band.start]..table.chunk_tiles[task.band.end];
    let per_phase = k.packed.blocks * k.mr * tl;
    let mut acc = vec![T::zero(); gs * per_phase];
    let mut reached = vec![false; gs];
    let mut runs_buf: Vec<TapRun> = Vec::new();
    for ni in 0..task.batch.len() {
        let n = task.batch.start + ni;
        let base = (n * image + task.group * cin_g * spec.channel_stride) as isize;
        for tile in tiles.clone() {
            let f0 = table.tile_start[tile] as isize;
            for first_phase in (0..phases).step_by(gs) {
                for pi in first_phase..(first_phase + gs).min(phases) {
                    let r = pi - first_phase;
                    reached[r] = false;
                    if table.live[tile * phases + pi] == 0 {
                        continue;
                    }
                    let first = table.tap_start[pi];
                    runs_buf.clear();
                    for t in first..first + spec.phases[pi].taps.len() {
                        let mask = table.masks[tile * total_taps + t];
                        reached[r] |= mask != 0;
                        let mut masks = [0u32; MAX_V];
                        for (vi, m) in masks.iter_mut().enumerate().take(k.v) {
                            *m = ((mask >> (vi * k.lanes)) & lane_mask) as u32;
                        }
                        runs_buf.push(TapRun {
                            base: base + f0 + table.tap_offset[t],
                            masks,
                        });
                    }
                    if !reached[r] {
                        continue;
                    }
                    for block in 0..k.packed.blocks {
                        let co0 = block * k.mr;
                        let live_rows = k.mr.min(cout_g - co0);
                        // Depthwise rows start at their own channel: shift the taps there.
                        let shift = if k.depthwise {
                            (co0 * spec.channel_stride) as isize
                        } else {
                            0
                        };
                        if shift != 0 {
                            runs_buf.iter_mut().for_each(|t| t.base += shift);
                        }
                        let args = InplaceArgs {
                            x: src,
                            channel_stride: spec.channel_stride,
                            channels: if k.depthwise { 1 } else { cin_g },
                            taps: &runs_buf,
                            w: k.packed.run(task.group, block, pi),
                            row_stride: if k.depthwise { spec.channel_stride } else { 0 },
                            live_rows,
                        };
                        let at = r * per_phase + block * k.mr * tl;
                        kernel(&args, &mut acc[at..at + k.mr * tl]);
                        if shift != 0 {
                            runs_buf.iter_mut().for_each(|t| t.base -= shift);
                        }
                    }
                }
                store_group(
                    table,
                    tile,
                    first_phase,
                    phases,
                    &mut task.planes[ni * cout_g..(ni + 1) * cout_g],
                    &acc,
                    per_phase,
                    &reached,
                    &biases,
                    row_off,
                );
            }
        }
    }
}
