//! One task's work: its tiles in groups that share each weight k-slice, panels packed,
//! the microkernel run for every output-channel block, and each output stored once.

use super::panel::{pack_panel, pack_wide, wide_packing};
use super::store::store_group;
use super::*;
use crate::fast::inplace::{InplaceArgs, TapRun};
use crate::fast::kernels::{Rows, MAX_V};
use crate::fast::pair::{PairOut, MAX_HALVES};
use crate::fast::scratch;

/// Run one task of the packed-panel `kernel`: its tiles, group by group.
pub(super) fn run_task<T: Element>(
    g: &Geometry,
    k: &DirectKernel<T>,
    kernel: KernelFn<T>,
    src: &[T],
    bias: Option<&[T]>,
    mut task: Task<'_, T>,
) {
    let t = PackedTask::new(g, k, kernel, src, bias, &task);
    let (phases, gs) = (k.spec.phases.len(), k.table.group_size);
    // Stale scratch: `pack_panel` writes every panel it returns `true` for, and the kernels
    // write each accumulator tile (`accumulate == false` first) before the stores read it.
    let mut b = Buffers {
        panels: scratch::take::<T>(t.group * t.panel_len),
        reached: vec![false; t.group * gs],
        acc: scratch::take::<T>(t.group * t.per_slot),
    };
    for chunk in t.items.chunks(t.group) {
        // Which phase each slot's panel currently holds.
        let mut holds: Vec<Option<usize>> = vec![None; chunk.len()];
        for first_phase in (0..phases).step_by(gs) {
            if t.pair_group(chunk, first_phase, &mut holds, &mut b, &mut task.planes) {
                continue;
            }
            for pi in first_phase..(first_phase + gs).min(phases) {
                let r = pi - first_phase;
                if t.sliced {
                    t.sliced_phase(chunk, (pi, r), &mut b);
                } else if t.wide_rows(chunk, pi) {
                    t.wide_phase(chunk, (pi, r), &mut holds, &mut b);
                } else {
                    t.whole_phase(chunk, (pi, r), &mut holds, &mut b);
                }
            }
            for (slot, &(ni, tile)) in chunk.iter().enumerate() {
                store_group(
                    &k.table,
                    tile,
                    first_phase,
                    phases,
                    &mut task.planes[ni * t.channels..(ni + 1) * t.channels],
                    &b.acc[slot * t.per_slot..(slot + 1) * t.per_slot],
                    t.per_phase,
                    &b.reached[slot * gs..(slot + 1) * gs],
                    &t.biases,
                    t.row_off,
                );
            }
        }
    }
}

/// A group of work items' scratch: their panels (`panel_len` each), whether each slot's
/// phase `r` of the current group of phases has any input (`reached[slot · gs + r]`), and
/// their accumulator tiles (`per_slot` each: `[r][block][mr · tl]`).
struct Buffers<T: Element> {
    panels: scratch::Scratch<T>,
    reached: Vec<bool>,
    acc: scratch::Scratch<T>,
}

/// One task of [`run_task`]: its kernel, sizes and work items.
struct PackedTask<'a, T: Element> {
    k: &'a DirectKernel<T>,
    kernel: KernelFn<T>,
    src: &'a [T],
    /// The task's group and first image.
    group_index: usize,
    batch_start: usize,
    cin_g: usize,
    /// The task's output channels (within the group) and their blocks of `mr`.
    channels: usize,
    blocks: Range<usize>,
    /// Values of an input image, and the task's first output offset in a plane.
    image: usize,
    row_off: usize,
    biases: Vec<T>,
    /// Work items (batch index within the task, tile), processed in groups of `group`
    /// that share weights.
    items: Vec<(usize, usize)>,
    group: usize,
    panel_len: usize,
    /// Reduction rows per k-slice, and whether panels are packed slice by slice.
    kc: usize,
    sliced: bool,
    per_phase: usize,
    per_slot: usize,
}

impl<'a, T: Element> PackedTask<'a, T> {
    fn new(
        g: &Geometry,
        k: &'a DirectKernel<T>,
        kernel: KernelFn<T>,
        src: &'a [T],
        bias: Option<&[T]>,
        task: &Task<'_, T>,
    ) -> Self {
        let (spec, table) = (&k.spec, &k.table);
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let tiles = table.chunk_tiles[task.band.start]..table.chunk_tiles[task.band.end];
        let items: Vec<(usize, usize)> = (0..task.batch.len())
            .flat_map(|ni| tiles.clone().map(move |t| (ni, t)))
            .collect();
        let blocks = task.blocks(k.mr);
        let per_phase = blocks.len() * k.mr * table.tile_lanes;
        PackedTask {
            k,
            kernel,
            src,
            group_index: task.group,
            batch_start: task.batch.start,
            cin_g,
            channels: task.channels.len(),
            blocks,
            image: g.in_channels * spec.channel_stride,
            row_off: table.rows(task.band.clone()).start * table.out_row,
            biases: task
                .channels
                .clone()
                .map(|c| bias.map_or(T::zero(), |b| b[task.group * cout_g + c]))
                .collect(),
            group: k.items_per_group(g).min(items.len().max(1)),
            items,
            panel_len: k.held_panel_len(cin_g).max(1),
            kc: k.slice_k(),
            sliced: k.sliced(cin_g),
            per_phase,
            per_slot: table.group_size * per_phase,
        }
    }

    /// Where block `block`'s accumulator tile of phase `r` of the group starts in slot
    /// `slot`'s (`[r][block][mr · tl]` over the task's blocks).
    fn acc_at(&self, slot: usize, r: usize, block: usize) -> usize {
        let tile = self.k.mr * self.k.table.tile_lanes;
        slot * self.per_slot + r * self.per_phase + (block - self.blocks.start) * tile
    }

    /// Where image `ni` of the task (within its group) starts in the source.
    fn base(&self, ni: usize) -> usize {
        let spec = &self.k.spec;
        (self.batch_start + ni) * self.image + self.group_index * self.cin_g * spec.channel_stride
    }

    /// `acc[slot][r][block] (+)= weights[block][k0..k0 + kn]` · rows `at..` of each reached
    /// slot's panel, for phase `pi`.
    fn multiply(
        &self,
        slots: usize,
        (pi, r): (usize, usize),
        (at, k0, kn): (usize, usize, usize),
        b: &mut Buffers<T>,
    ) {
        let (k, tl, gs) = (self.k, self.k.table.tile_lanes, self.k.table.group_size);
        for slot in (0..slots).filter(|&s| b.reached[s * gs + r]) {
            let from = slot * self.panel_len + at;
            let panel = &b.panels[from..from + kn * tl];
            for block in self.blocks.clone() {
                let run = k.packed.run(self.group_index, block, pi);
                let w = &run[k0 * k.mr..(k0 + kn) * k.mr];
                let out = self.acc_at(slot, r, block);
                (self.kernel)(
                    w,
                    panel,
                    Rows::packed(kn, tl),
                    (&mut b.acc[out..out + k.mr * tl]).into(),
                    k0 > 0,
                );
            }
        }
    }

    /// Phase `pi` slice by slice: pack the slice of every tile's panel, then run every
    /// block over all of them (each weight slice serves the whole group).
    fn sliced_phase(&self, chunk: &[(usize, usize)], (pi, r): (usize, usize), b: &mut Buffers<T>) {
        let (spec, table) = (&self.k.spec, &self.k.table);
        let (tl, gs, phases) = (table.tile_lanes, table.group_size, spec.phases.len());
        let total_taps = table.tap_offset.len();
        let phase = &spec.phases[pi];
        let first = table.tap_start[pi];
        let taps = first..first + phase.taps.len();
        for (slot, &(_, tile)) in chunk.iter().enumerate() {
            let live = table.live[tile * phases + pi];
            b.reached[slot * gs + r] = live != 0
                && taps
                    .clone()
                    .any(|t| table.masks[tile * total_taps + t] != 0);
        }
        let mut k0 = 0;
        for (ts, cs) in k_slices(phase.taps.len(), self.cin_g, self.kc) {
            let kn = ts.len() * cs.len();
            for (slot, &(ni, tile)) in chunk.iter().enumerate() {
                if !b.reached[slot * gs + r] {
                    continue;
                }
                let base = self.base(ni) + cs.start * spec.channel_stride;
                pack_panel(
                    self.src,
                    base,
                    spec.channel_stride,
                    cs.len(),
                    first + ts.start..first + ts.end,
                    tile,
                    table,
                    &mut b.panels[slot * self.panel_len..slot * self.panel_len + kn * tl],
                );
            }
            // The slice's weights are rows k0..k0 + kn of the phase's reduction
            // (`k = tap · cin + ci` with the slice's taps and channels).
            self.multiply(chunk.len(), (pi, r), (0, k0, kn), b);
            k0 += kn;
        }
    }

    /// Whether phase `pi` takes wide rows for this chunk: it has groups of taps whose panel
    /// rows are shifted views of one wider row, and every tile's rows are consistent.
    fn wide_rows(&self, chunk: &[(usize, usize)], pi: usize) -> bool {
        let table = &self.k.table;
        let tl = table.tile_lanes;
        let (groups_w, _) = table.wide(chunk[0].1, pi);
        let pitch = tl + table.wide_taps - 1;
        wide_packing::<T>(tl)
            && groups_w.iter().any(|g| g.1 > 1)
            && groups_w.len() * self.cin_g * pitch + 8 <= self.panel_len
            && chunk
                .iter()
                .all(|&(_, tile)| table.wide(tile, pi).1.iter().all(|m| m.is_some()))
    }

    /// Phase `pi` by wide rows: each group's row packed once, each tap multiplying a
    /// strided view of it.
    fn wide_phase(
        &self,
        chunk: &[(usize, usize)],
        (pi, r): (usize, usize),
        holds: &mut [Option<usize>],
        b: &mut Buffers<T>,
    ) {
        let (k, spec, table) = (self.k, &self.k.spec, &self.k.table);
        let (tl, gs, phases, cin_g) = (
            table.tile_lanes,
            table.group_size,
            spec.phases.len(),
            self.cin_g,
        );
        let first = table.tap_start[pi];
        let pitch = tl + table.wide_taps - 1;
        for (slot, &(ni, tile)) in chunk.iter().enumerate() {
            let base = self.base(ni);
            let live = table.live[tile * phases + pi];
            let (groups_w, masks) = table.wide(tile, pi);
            let panel = &mut b.panels[slot * self.panel_len..(slot + 1) * self.panel_len];
            let mut any = false;
            for (gi, (&(_, _, lo), m)) in groups_w.iter().zip(masks).enumerate() {
                let m = m.unwrap_or(0);
                any |= m != 0;
                let start = (base + table.tile_start[tile]) as isize + lo;
                let rows = &mut panel[gi * cin_g * pitch..];
                pack_wide(self.src, start, spec.channel_stride, cin_g, m, pitch, rows);
            }
            holds[slot] = None;
            b.reached[slot * gs + r] = live != 0 && any;
        }
        let (groups_w, _) = table.wide(chunk[0].1, pi);
        for slot in 0..chunk.len() {
            if !b.reached[slot * gs + r] {
                continue;
            }
            let panel = &b.panels[slot * self.panel_len..(slot + 1) * self.panel_len];
            for block in self.blocks.clone() {
                let run = k.packed.run(self.group_index, block, pi);
                let out = self.acc_at(slot, r, block);
                let out = &mut b.acc[out..out + k.mr * tl];
                // One call per group: its taps are views of the group's row, one lane apart.
                for (gi, &(tap0, len, _)) in groups_w.iter().enumerate() {
                    let rows = &panel[gi * cin_g * pitch..];
                    let w = &run[(tap0 - first) * cin_g * k.mr..];
                    let shape = Rows {
                        k: cin_g,
                        pitch,
                        taps: len,
                        out_pitch: 0,
                    };
                    (self.kernel)(w, rows, shape, out.into(), gi > 0);
                }
            }
        }
    }

    /// Phase `pi` by whole panels (reused where the slot's panel holds a phase whose taps
    /// read the same shifted inputs, e.g. kernel == stride), multiplied one k-slice at a
    /// time.
    fn whole_phase(
        &self,
        chunk: &[(usize, usize)],
        (pi, r): (usize, usize),
        holds: &mut [Option<usize>],
        b: &mut Buffers<T>,
    ) {
        self.pack_whole(chunk, (pi, r), holds, b);
        let tl = self.k.table.tile_lanes;
        let kdim = self.k.spec.phases[pi].taps.len() * self.cin_g;
        for k0 in (0..kdim).step_by(self.kc) {
            let kn = self.kc.min(kdim - k0);
            self.multiply(chunk.len(), (pi, r), (k0 * tl, k0, kn), b);
        }
    }

    /// Each slot's whole panel of phase `pi`, packed or kept (where the panel it holds is
    /// the same), and whether the phase reaches the input there (`reached`).
    fn pack_whole(
        &self,
        chunk: &[(usize, usize)],
        (pi, r): (usize, usize),
        holds: &mut [Option<usize>],
        b: &mut Buffers<T>,
    ) {
        let (spec, table) = (&self.k.spec, &self.k.table);
        let (gs, phases) = (table.group_size, spec.phases.len());
        let phase = &spec.phases[pi];
        let first = table.tap_start[pi];
        let taps = first..first + phase.taps.len();
        for (slot, &(ni, tile)) in chunk.iter().enumerate() {
            let live = table.live[tile * phases + pi];
            // `holds` names a phase only while the slot's panel holds its packed input.
            let reuse =
                live != 0 && holds[slot].is_some_and(|prev| table.same_panel(tile, pi, prev));
            let ok = if reuse {
                true
            } else {
                live != 0
                    && !phase.taps.is_empty()
                    && pack_panel(
                        self.src,
                        self.base(ni),
                        spec.channel_stride,
                        self.cin_g,
                        taps.clone(),
                        tile,
                        table,
                        &mut b.panels[slot * self.panel_len..(slot + 1) * self.panel_len],
                    )
            };
            holds[slot] = if ok { Some(pi) } else { None };
            b.reached[slot * gs + r] = ok;
        }
    }

    /// The stride-2 group of phases `first` and `first + 1` by the plan's pair kernel (set
    /// only for whole panels), written straight from its registers into `planes`, where
    /// every tile of `chunk` is a pair (`TileTable::pairs`, marked only for groups of two
    /// phases) packed whole (not by wide rows) and reaching the input.
    /// Returns `false` where not, having at most packed the panels (which the caller's path
    /// then keeps).
    fn pair_group(
        &self,
        chunk: &[(usize, usize)],
        first: usize,
        holds: &mut [Option<usize>],
        b: &mut Buffers<T>,
        planes: &mut [&mut [T]],
    ) -> bool {
        let (k, table) = (self.k, &self.k.table);
        let Some(pair) = k.pair else {
            return false;
        };
        let (tl, gs, lanes) = (table.tile_lanes, table.group_size, k.lanes);
        let phases = k.spec.phases.len();
        let groups = phases.div_ceil(gs);
        if !chunk.iter().all(|&(_, tile)| {
            table
                .pairs
                .get(tile * groups + first / gs)
                .is_some_and(|&p| p)
        }) || self.wide_rows(chunk, first)
        {
            return false;
        }
        self.pack_whole(chunk, (first, 0), holds, b);
        if (0..chunk.len()).any(|slot| !b.reached[slot * gs]) {
            return false;
        }
        let kdim = k.spec.phases[first].taps.len() * self.cin_g;
        // Each run is whole half vectors: half vector `lo/half + j` of the first phase
        // starts at `off + 2·half·j`, the second phase one element after.
        let half = lanes / 2;
        let ats: Vec<([usize; MAX_HALVES], u32)> = chunk
            .iter()
            .map(|&(_, tile)| {
                let (mut at, mut stored) = ([0; MAX_HALVES], 0u32);
                let i = tile * phases + first;
                for &(lo, len, off) in &table.runs[table.run_start[i]..table.run_start[i + 1]] {
                    for j in 0..len / half {
                        at[lo / half + j] = off - self.row_off + 2 * half * j;
                        stored |= 1 << (lo / half + j);
                    }
                }
                (at, stored)
            })
            .collect();
        // Block by block, each block's weights serving every tile of the group in turn.
        for block in self.blocks.clone() {
            // The block's channels, counted from the task's first.
            let c0 = (block - self.blocks.start) * k.mr;
            let c1 = (c0 + k.mr).min(self.channels);
            let w0 = k.packed.run(self.group_index, block, first);
            let w1 = k.packed.run(self.group_index, block, first + 1);
            for (slot, (&(ni, _), &(at, stored))) in chunk.iter().zip(&ats).enumerate() {
                let panel = &b.panels[slot * self.panel_len..][..kdim * tl];
                let out = PairOut {
                    planes: &mut planes[ni * self.channels + c0..ni * self.channels + c1],
                    at,
                    stored,
                    bias: &self.biases[c0..c1],
                };
                pair(w0, w1, panel, kdim, out);
            }
        }
        true
    }
}

/// Run one task of the in-place `kernel` (input read through lane masks, no panel).
pub(super) fn run_task_inplace<T: Element>(
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
    let biases: Vec<T> = task
        .channels
        .clone()
        .map(|c| bias.map_or(T::zero(), |b| b[task.group * cout_g + c]))
        .collect();
    let tiles = table.chunk_tiles[task.band.start]..table.chunk_tiles[task.band.end];
    let blocks = task.blocks(k.mr);
    let channels = task.channels.len();
    let per_phase = blocks.len() * k.mr * tl;
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
                    for block in blocks.clone() {
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
                        let at = r * per_phase + (block - blocks.start) * k.mr * tl;
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
                    &mut task.planes[ni * channels..(ni + 1) * channels],
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
