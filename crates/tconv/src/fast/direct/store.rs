//! Storing results with the bias added: runs, groups of phases interleaved, and the
//! vector shuffles (interleaves, 8×8 transposes, even/odd splits) other modules share.

use super::*;
use crate::fast::prefetch_write;

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
pub(super) fn store_group<T: Element>(
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
#[cfg(target_arch = "x86_64")]
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

/// Copy a short slice inline (a `memcpy` call costs more than the copy for tile rows):
/// below 256 bytes, pieces of 32, 16, 8, 4, 2 and 1 values by the bits of the length,
/// each a fixed-size copy, and no loop. (A loop of copies, even of eight values at a time,
/// may become a `memcpy` call, as the crate's code-generation units fall: in one build,
/// changed elsewhere, the Winograd weight gradient's output transform called it for its
/// runs of 32, and dcgan1's weight gradient ran 0.90x.)
#[inline(always)]
pub(crate) fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    let n = dst.len().min(src.len());
    if n * std::mem::size_of::<T>() >= 256 {
        dst[..n].copy_from_slice(&src[..n]);
        return;
    }
    let mut i = 0;
    copy_piece::<T, 32>(dst, src, n, &mut i);
    copy_piece::<T, 16>(dst, src, n, &mut i);
    copy_piece::<T, 8>(dst, src, n, &mut i);
    copy_piece::<T, 4>(dst, src, n, &mut i);
    copy_piece::<T, 2>(dst, src, n, &mut i);
    copy_piece::<T, 1>(dst, src, n, &mut i);
}

/// [`copy_short`]'s piece of `P` values at `i`, where bit `P` of `n` is set.
#[inline(always)]
fn copy_piece<T: Copy, const P: usize>(dst: &mut [T], src: &[T], n: usize, i: &mut usize) {
    if n & P != 0 {
        let s: &[T; P] = src[*i..*i + P].try_into().expect("P values");
        let d: &mut [T; P] = (&mut dst[*i..*i + P]).try_into().expect("P values");
        *d = *s;
        *i += P;
    }
}

/// Zero a short slice inline.
#[inline(always)]
pub(super) fn fill_zero<T: Element>(dst: &mut [T]) {
    for v in dst {
        *v = T::zero();
    }
}
