//! The direct driver: tiles the flattened phase grids, runs a microkernel per
//! (tile, phase, output-channel block), and stores each output element once.
//!
//! Work is split into tasks that own disjoint output planes — `(group, channel block,
//! batch range)` — handed out as `&mut` slices, so threads never share an output element and
//! no reduction crosses threads: results are bitwise identical for any thread count.

use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use super::kernels::{KernelArgs, KernelFn, TapRun, MAX_V};
use super::pack::{pack_source, PackedWeights};
use super::spec::DirectSpec;
use crate::geometry::Geometry;
use crate::tensor::{numel, Element};

/// A direct plan's compute part: decomposition, packed weights and the chosen kernel.
pub struct DirectKernel<T> {
    /// The phase decomposition.
    pub spec: DirectSpec,
    /// Weights packed for `kernel`'s tile.
    pub packed: PackedWeights<T>,
    /// The microkernel.
    pub kernel: KernelFn<T>,
    /// Output channels per tile.
    pub mr: usize,
    /// Vectors per tile.
    pub v: usize,
    /// Lanes per vector.
    pub lanes: usize,
    /// Per-tile masks and offsets.
    pub table: TileTable,
}

/// Geometry-only bookkeeping of every tile, computed once per plan: which lanes each tap
/// reads, which lanes each phase writes, and where each lane lands in the output.
pub struct TileTable {
    /// Lanes per tile (`v * lanes`, at most 64).
    pub tile_lanes: usize,
    /// Number of tiles covering the flattened phase grid.
    pub tiles: usize,
    /// `out_base[tile * tile_lanes + l]`: output offset of lane `l` before the phase residue.
    out_base: Vec<usize>,
    /// `live[tile * phases + phase]`: lanes that are output positions of the phase.
    live: Vec<u64>,
    /// `masks[(tile * total_taps) + tap]`: live lanes whose tap reads inside the source.
    masks: Vec<u64>,
    /// First tap of each phase in the flat tap numbering.
    tap_start: Vec<usize>,
    /// Source offset of each tap relative to the tile's first lane.
    tap_offset: Vec<isize>,
    /// Output offset of each phase's residue.
    phase_offset: Vec<usize>,
}

impl TileTable {
    /// Build the table for `spec` on `g` with tiles of `tile_lanes` lanes.
    pub fn new(g: &Geometry, spec: &DirectSpec, tile_lanes: usize) -> TileTable {
        assert!(tile_lanes <= 64, "a tile mask is one u64");
        let dims = g.axes.len();
        let flat = spec.flat_len();
        let tiles = flat.div_ceil(tile_lanes);
        let out_ext: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
        let mut out_pitch = vec![1usize; dims];
        for a in (0..dims.saturating_sub(1)).rev() {
            out_pitch[a] = out_pitch[a + 1] * out_ext[a + 1];
        }
        let src_ext: Vec<usize> =
            (0..dims).map(|a| if a == 0 { usize::MAX } else { spec.pitches[a - 1] / spec.pitches[a] }).collect();
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
        let phase_offset: Vec<usize> =
            spec.phases.iter().map(|p| p.residue.iter().zip(&out_pitch).map(|(r, op)| r * op).sum()).collect();
        let mut out_base = vec![0usize; tiles * tile_lanes];
        let mut live = vec![0u64; tiles * spec.phases.len()];
        let mut masks = vec![0u64; tiles * total_taps];
        let mut coords = vec![0usize; dims];
        for tile in 0..tiles {
            for l in 0..tile_lanes {
                let f = tile * tile_lanes + l;
                if f >= flat {
                    continue;
                }
                let mut ob = 0;
                for a in 0..dims {
                    coords[a] = (f / spec.pitches[a]) % src_ext[a];
                    ob += coords[a] * spec.out_stride[a] * out_pitch[a];
                }
                out_base[tile * tile_lanes + l] = ob;
                let mut t = 0;
                for (pi, p) in spec.phases.iter().enumerate() {
                    let is_live = (0..dims).all(|a| coords[a] < p.extents[a]);
                    if is_live {
                        live[tile * spec.phases.len() + pi] |= 1 << l;
                    }
                    for tap in &p.taps {
                        let inside = (0..dims).all(|a| {
                            let s = coords[a] as isize + tap.shift[a];
                            s >= 0 && (s as usize) < tap.valid[a]
                        });
                        if is_live && inside {
                            masks[tile * total_taps + t] |= 1 << l;
                        }
                        t += 1;
                    }
                }
            }
        }
        TileTable { tile_lanes, tiles, out_base, live, masks, tap_start, tap_offset, phase_offset }
    }

    /// Bytes held by the table.
    pub fn bytes(&self) -> usize {
        self.out_base.len() * 8 + self.live.len() * 8 + self.masks.len() * 8 + self.tap_offset.len() * 16
    }
}

/// A thread pool per thread count, built once.
fn pool(threads: usize) -> Arc<rayon::ThreadPool> {
    static POOLS: OnceLock<Mutex<Vec<(usize, Arc<rayon::ThreadPool>)>>> = OnceLock::new();
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

/// One unit of parallel work: some output planes of one group and channel block.
struct Task<'y, T> {
    group: usize,
    block: usize,
    batch: std::ops::Range<usize>,
    /// Planes in `(n, m)` order, `m` in `0..mr_actual`.
    planes: Vec<&'y mut [T]>,
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
    let packed_source = pack_source(g, &k.spec, x);
    let src: &[T] = packed_source.as_deref().unwrap_or(x);
    let out_plane = numel(&g.output_shape()[2..]);
    if out_plane == 0 || g.batch == 0 {
        return;
    }
    let (cout_g, blocks) = (g.out_per_group(), k.packed.blocks);
    let unit_tasks = g.groups * blocks;
    // Enough tasks to balance the threads, but batch items kept together (weights stay hot).
    let n_chunk = if threads <= 1 { g.batch } else { (g.batch * unit_tasks).div_ceil(4 * threads).div_ceil(unit_tasks).max(1) };
    let n_chunks = g.batch.div_ceil(n_chunk);
    let mut tasks: Vec<Task<'_, T>> = (0..unit_tasks * n_chunks)
        .map(|t| {
            let (unit, c) = (t / n_chunks, t % n_chunks);
            Task {
                group: unit / blocks,
                block: unit % blocks,
                batch: c * n_chunk..((c + 1) * n_chunk).min(g.batch),
                planes: Vec::new(),
            }
        })
        .collect();
    for (i, plane) in y.chunks_mut(out_plane).enumerate() {
        let (n, co) = (i / g.out_channels, i % g.out_channels);
        let (group, col) = (co / cout_g, co % cout_g);
        let unit = group * blocks + col / k.mr;
        tasks[unit * n_chunks + n / n_chunk].planes.push(plane);
    }
    let run = |task: Task<'_, T>| run_task(g, k, src, bias, task);
    if threads <= 1 {
        tasks.into_iter().for_each(run);
    } else {
        pool(threads).install(|| tasks.into_par_iter().for_each(run));
    }
}

fn run_task<T: Element>(g: &Geometry, k: &DirectKernel<T>, src: &[T], bias: Option<&[T]>, mut task: Task<'_, T>) {
    let (spec, table) = (&k.spec, &k.table);
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    let mr_actual = k.mr.min(cout_g - task.block * k.mr);
    let co0 = task.group * cout_g + task.block * k.mr;
    let tl = table.tile_lanes;
    let phases = spec.phases.len();
    let total_taps = table.tap_offset.len();
    let image = g.in_channels * spec.channel_stride;
    let mut stage = vec![T::zero(); k.mr * tl];
    let mut runs: Vec<TapRun> = Vec::with_capacity(total_taps);
    let biases: Vec<T> = (0..mr_actual).map(|m| bias.map_or(T::zero(), |b| b[co0 + m])).collect();
    let lane_mask = if k.lanes == 64 { u64::MAX } else { (1u64 << k.lanes) - 1 };

    for (ni, n) in task.batch.clone().enumerate() {
        let base = (n * image + task.group * cin_g * spec.channel_stride) as isize;
        let planes = &mut task.planes[ni * mr_actual..(ni + 1) * mr_actual];
        for tile in 0..table.tiles {
            let f0 = (tile * tl) as isize;
            let out_base = &table.out_base[tile * tl..(tile + 1) * tl];
            for (pi, phase) in spec.phases.iter().enumerate() {
                let live = table.live[tile * phases + pi];
                if live == 0 {
                    continue;
                }
                let off = table.phase_offset[pi];
                let mut any = false;
                if !phase.taps.is_empty() {
                    runs.clear();
                    let first = table.tap_start[pi];
                    for t in first..first + phase.taps.len() {
                        let mask = table.masks[tile * total_taps + t];
                        any |= mask != 0;
                        let mut masks = [0u32; MAX_V];
                        for (vi, m) in masks.iter_mut().enumerate().take(k.v) {
                            *m = ((mask >> (vi * k.lanes)) & lane_mask) as u32;
                        }
                        runs.push(TapRun { base: base + f0 + table.tap_offset[t], masks });
                    }
                }
                if any {
                    let args = KernelArgs {
                        x: src,
                        channel_stride: spec.channel_stride,
                        channels: cin_g,
                        taps: &runs,
                        w: k.packed.run(task.group, task.block, pi),
                    };
                    // Safety: the table's masks hold only lanes whose source coordinate is
                    // inside the valid extents on every axis, so each live lane indexes this
                    // image's channels of `src`; the packed run holds taps*cin_g*mr values;
                    // `stage` holds mr*v*lanes.
                    unsafe { (k.kernel)(&args, &mut stage) };
                    for (m, plane) in planes.iter_mut().enumerate() {
                        let row = &stage[m * tl..(m + 1) * tl];
                        let b = biases[m];
                        let mut bits = live;
                        while bits != 0 {
                            let l = bits.trailing_zeros() as usize;
                            bits &= bits - 1;
                            plane[out_base[l] + off] = row[l] + b;
                        }
                    }
                } else {
                    // No tap reaches these lanes: bias only.
                    for (m, plane) in planes.iter_mut().enumerate() {
                        let mut bits = live;
                        while bits != 0 {
                            let l = bits.trailing_zeros() as usize;
                            bits &= bits - 1;
                            plane[out_base[l] + off] = biases[m];
                        }
                    }
                }
            }
        }
    }
}
