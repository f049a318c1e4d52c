//! Packing one tile's input panel: every tap's live lanes for every input channel, zeros
//! where a tap reads padding.

use super::store::{copy_short, fill_zero};
use super::*;
use crate::fast::prefetch_read;

/// Copy the live lanes of each tap (zeros elsewhere) into `panel[tap][ci][lane]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_panel<T: Element>(
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
#[cfg(target_arch = "x86_64")]
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
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(clippy::extra_unused_type_parameters)
)]
pub(super) fn wide_packing<T: 'static>(tl: usize) -> bool {
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
pub(super) fn pack_wide<T: Element>(
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
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (src, start, channel_stride, mask);
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
