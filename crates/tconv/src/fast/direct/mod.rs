//! The direct driver: for each tile of a phase's flattened output grid, packs the input
//! panel once (all taps × input channels, zeros where a tap reads padding), runs the
//! microkernel for every output-channel block against it, and stores each output element
//! once with the bias added. Tiles are taken in groups that share each weight k-slice; where
//! whole panels are very long, the group packs one k-slice of every tile's panel at a time.
//! Input rows and output lines are prefetched a few tiles ahead. Stride-2 pairs of phases
//! that read one panel (kernel == stride) go to a [pair kernel](crate::fast::pair) where
//! the plan has one: both phases at once, written interleaved from the registers.
//!
//! Work is split into tasks owning disjoint output rows — `(group, batch range, row chunk)`
//! — handed out as `&mut` slices, so threads never share an output element and no reduction
//! crosses threads: results are bitwise identical for any thread count.
//!
//! Here: the kernel a plan holds and the entry point; `tiles` (the per-tile masks and
//! offsets, computed once per plan), `threads` (thread pools and tasks over output bands),
//! `panel` (packing a tile's input panel), `task` (one task's loop over its tiles), `store`
//! (the stores with the bias, and the vector shuffles other modules share).

mod panel;
mod store;
mod task;
mod threads;
mod tiles;

pub use store::MAX_GROUP;
pub(crate) use store::{copy_short, interleave2, interleave8_to, store_fence, store_run};
#[cfg(target_arch = "x86_64")]
pub(crate) use store::{evens_odds16, store_block, transpose8x8};
use task::{run_task, run_task_inplace};
pub(crate) use threads::{
    band_tasks, channel_parts, run_both, run_chunks, run_each, zeros, Task, HUGE_BYTES,
};
pub use tiles::TileTable;

use std::ops::Range;

use super::inplace::InplaceFn;
use super::kernels::KernelFn;
use super::pack::{pack_source, PackedWeights};
use super::spec::DirectSpec;
use crate::geometry::Geometry;
use crate::tensor::{numel, Element};

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
    /// Ranges of whole blocks of output channels a group's work is split into between
    /// tasks (one where every task holds all of them; see `plan::direct::task_split`).
    pub channel_parts: usize,
    /// Depthwise (one input and one output channel per group): the groups are run as one
    /// group of `groups` output channels whose kernel rows each read their own channel.
    pub depthwise: bool,
    /// For depthwise kernels, the geometry the driver runs (one group of all channels).
    pub exec: Option<Geometry>,
    /// The pair kernel of `kernel`'s tile where the plan writes stride-2 pairs of phases
    /// from the registers (the tile table marked some pairs, panels are whole).
    pub pair: Option<crate::fast::pair::PairFn<T>>,
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
    /// One where a group's packed weights fit in a quarter of the L2 (CPUID's; unknown
    /// elsewhere: as before): they then stay in it from tile to tile, a kernel call reads
    /// its few KiB of them from there, and a lone tile's accumulators are still in L1 when
    /// its stores read them. unet (135 KiB of weights; a tile's accumulators 33 KiB, 15
    /// tiles a group before) 1.06x / 1.07x at 1 thread (8 paired rounds), 1.04x / 1.05x at
    /// 2, its output stores 0.85 → 0.63 ms; vnet3d (64 KiB) 1.04x / 1.03x at 1, a tie at 2.
    pub fn items_per_group(&self, g: &Geometry) -> usize {
        let size = std::mem::size_of::<T>();
        let weights = self.packed.data.len() / g.groups.max(1) * size;
        if crate::fast::isa::l2_cache_bytes().is_some_and(|l2| weights <= l2 / 4) {
            return 1;
        }
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
    let parts = channel_parts(g.out_per_group(), k.mr, k.channel_parts);
    let tasks = band_tasks(g, y, k.batch_chunk, &parts, &bands);
    let run = |task: Task<'_, T>| match k.kernel {
        Kernel::Packed(f) => run_task(g, k, f, src, bias, task),
        Kernel::Inplace(f) => run_task_inplace(g, k, f, src, bias, task),
    };
    run_each(threads, tasks, run);
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
