//! One task's work: its tiles in groups that share each weight k-slice, panels packed,
//! the microkernel run for every output-channel block, and each output stored once.

use super::panel::{pack_panel, pack_wide, wide_packing};
use super::store::store_group;
use super::*;
use crate::fast::inplace::{InplaceArgs, TapRun};
use crate::fast::kernels::{Rows, MAX_V};
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
