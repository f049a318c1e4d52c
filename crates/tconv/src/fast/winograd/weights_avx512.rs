//! A block's weights transformed straight from the weight tensor, for f32 on AVX-512 where a
//! kernel has at most 16 taps: for each input channel, the block's kernels (one masked load
//! of `ksize` taps per output channel, 16 output channels at a time) are transposed in
//! registers to one vector per tap with the output channels in its lanes, and every
//! (phase, source, point) run of `U` takes its sum of them and is stored at once.
//!
//! The general path ([`super::weights`]) first rearranges the block into `[tap][ci][mr]`
//! (a copy of the block's region, the chunks' 8×8 transposes, 393 KB through L2 for each of
//! dcgan1's input-gradient blocks) and then reads that back once per term. Here each weight
//! is read once and each packed value written once. The sums are the general path's,
//! operation for operation (`s = 0`, then `s = s + c · x` per term in order, a product
//! rounded before its sum: [`super::combine`]), so both give the same bits.
//!
//! Plans built at 1 thread on the Intel Xeon of 2026-12-07 (medians of 25 builds, four
//! rounds each): dcgan1's input gradient 3.0-3.1 -> 2.9-3.0 ms, its forward pass 3.8-4.0 ->
//! 3.3-3.4, dcgan2's input gradient 0.85-0.89 -> 0.78-0.82, hifigan1d's 3.0-3.2 -> 2.6-2.7
//! and its forward pass 3.5-3.7 -> 2.9-3.0 (5-19 %); at 2 threads ties. What is left looks
//! bound by memory (the ties at 2 threads; perf puts most of the packing's samples on the
//! weights' loads and the packed values' stores): the packed values (19.5 MB for dcgan1,
//! 2.25 times its weights) are written once, the weights' rows read once. In the backward pass, where
//! the input gradient's plan is built every call: hifigan1d's input gradient 1.10x
//! faster at 1 thread, dcgan1's and dcgan2's ties (`bench/paired.sh
//! dcgan1,dcgan2,hifigan1d 1 4`).

use std::arch::x86_64::*;

use super::weights::PhaseTaps;
use crate::fast::pack::BlockKernels;

/// Every block's runs of `U`, as [`super::weights`] lays them out,
/// `dst[phase · per_phase + (point · kdim + source · cin + ci) · mr + m]`: each run's first
/// value (at `ci = 0`, `m = 0`) and its terms `(tap, coefficient)` of `G ⊗ … ⊗ G`, in the
/// general path's order. The same for every block of a packing: derived once.
pub(super) struct Runs {
    runs: Vec<(usize, Vec<(usize, f32)>)>,
    /// Input channels and rows of a tile the offsets are for.
    cin: usize,
    mr: usize,
    /// One past the last value the runs write.
    end: usize,
}

impl Runs {
    /// The runs of the live phases' sources' taps `kflat` and each point's terms `gterms`
    /// (f32), for kernels of `ksize` taps. Panics where a term's tap is past the kernel.
    pub(super) fn new(
        kflat: &[PhaseTaps],
        gterms: &[Vec<(usize, f32)>],
        (per_phase, kdim, cin, mr): (usize, usize, usize, usize),
        ksize: usize,
    ) -> Runs {
        let mut runs = Vec::new();
        for (pi, sources) in kflat.iter().enumerate() {
            for (si, kf) in sources.iter().enumerate() {
                for (xi, ts) in gterms.iter().enumerate() {
                    let at = pi * per_phase + (xi * kdim + si * cin) * mr;
                    assert!(
                        ts.iter().all(|&(j, _)| kf[j] < ksize),
                        "a tap past the kernel"
                    );
                    runs.push((at, ts.iter().map(|&(j, c)| (kf[j], c)).collect()));
                }
            }
        }
        let end = runs.iter().map(|r| r.0).max().map_or(0, |a| a + cin * mr);
        Runs { runs, cin, mr, end }
    }
}

/// Most taps a kernel may have here (one vector of them per output channel).
pub(super) const MAX_TAPS: usize = 16;

/// Whether [`pack_block`] runs for kernels of `ksize` taps on this CPU.
pub(super) fn applies(ksize: usize) -> bool {
    (1..=MAX_TAPS).contains(&ksize) && std::arch::is_x86_feature_detected!("avx512f")
}

/// Write every run of `runs` for block `b` (of f32 kernels) into `dst` (the block's unit).
/// Panics where the weights the block reads lie beyond `b.w`, or `dst` is shorter than the
/// runs, or the runs are for other sizes, or `applies` fails.
pub(super) fn pack_block(b: &BlockKernels<'_, f32>, runs: &Runs, dst: &mut [f32]) {
    assert!(
        applies(b.ksize),
        "AVX-512 weight packing on a CPU without it"
    );
    if b.live > 0 && b.cin > 0 {
        let last = b.base + (b.cin - 1) * b.ci_step + (b.live - 1) * b.co_step + b.ksize;
        assert!(last <= b.w.len(), "block weights beyond the tensor");
    }
    assert!(b.live <= b.mr, "more live rows than the tile has");
    assert!(
        (runs.cin, runs.mr) == (b.cin, b.mr),
        "runs for another block shape"
    );
    assert!(runs.end <= dst.len(), "packed runs beyond the block's unit");
    // Safety: AVX-512F checked by `applies`; every load lies within `w` (the last row's end
    // checked above; masked-off lanes are not read) and every store within `dst` (`end`).
    unsafe { block_avx512(b, &runs.runs, dst) }
}

/// [`pack_block`]'s loops.
///
/// # Safety
/// AVX-512F available; the rows `b` names lie within `b.w`, the runs within `dst`.
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(
    b: &BlockKernels<'_, f32>,
    runs: &[(usize, Vec<(usize, f32)>)],
    dst: &mut [f32],
) {
    let taps: __mmask16 = ((1u32 << b.ksize) - 1) as __mmask16;
    let (w, out) = (b.w.as_ptr(), dst.as_mut_ptr());
    for ci in 0..b.cin {
        // Each row's line a few channels ahead (the rows lie a channel's stride apart, as
        // many streams as the block has output channels).
        if ci + PREFETCH < b.cin {
            for m in 0..b.live {
                let at = b.base + (ci + PREFETCH) * b.ci_step + m * b.co_step;
                _mm_prefetch::<_MM_HINT_T0>(w.add(at) as *const i8);
            }
        }
        // All of the channel's runs for 16 output channels at a time, so that each run's
        // `mr` values are written together.
        for g0 in (0..b.mr).step_by(16) {
            let width = (b.mr - g0).min(16);
            let lanes: __mmask16 = ((1u32 << width) - 1) as __mmask16;
            let rows = b.live.saturating_sub(g0).min(width);
            let mut r = [_mm512_setzero_ps(); 16];
            for (m, reg) in r.iter_mut().enumerate().take(rows) {
                let at = b.base + ci * b.ci_step + (g0 + m) * b.co_step;
                *reg = _mm512_maskz_loadu_ps(taps, w.add(at));
            }
            let t = transpose16(&r);
            for (at, terms) in runs {
                let mut s = _mm512_setzero_ps();
                for &(k, c) in terms {
                    s = _mm512_add_ps(s, _mm512_mul_ps(_mm512_set1_ps(c), t[k]));
                }
                _mm512_mask_storeu_ps(out.add(at + ci * b.mr + g0), lanes, s);
            }
        }
    }
}

/// Input channels ahead whose rows [`block_avx512`] prefetches: dcgan1's forward plan
/// built in 3.6-3.7 ms against 3.9-4.2 without (3 rounds of 25 builds at 1 thread), the
/// input gradients' plans (a conv's rows a whole channel apart) ties.
const PREFETCH: usize = 4;

/// `out[j]`'s lane `i` = `r[i]`'s lane `j`: a 16×16 transpose in four rounds of shuffles.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: &[__m512; 16]) -> [__m512; 16] {
    // Pairs of rows interleaved within each 128-bit lane.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4i + q]'s 128-bit lane L: column 4L + q of rows 4i..4i + 4.
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        u[4 * i] = _mm512_shuffle_ps::<0x44>(a, c);
        u[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(a, c);
        u[4 * i + 2] = _mm512_shuffle_ps::<0x44>(b, d);
        u[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(b, d);
    }
    // Gather each column's four row groups across the 128-bit lanes.
    let mut out = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        let even_lo = _mm512_shuffle_f32x4::<0x88>(u[q], u[4 + q]);
        let odd_lo = _mm512_shuffle_f32x4::<0xDD>(u[q], u[4 + q]);
        let even_hi = _mm512_shuffle_f32x4::<0x88>(u[8 + q], u[12 + q]);
        let odd_hi = _mm512_shuffle_f32x4::<0xDD>(u[8 + q], u[12 + q]);
        out[q] = _mm512_shuffle_f32x4::<0x88>(even_lo, even_hi);
        out[8 + q] = _mm512_shuffle_f32x4::<0xDD>(even_lo, even_hi);
        out[4 + q] = _mm512_shuffle_f32x4::<0x88>(odd_lo, odd_hi);
        out[12 + q] = _mm512_shuffle_f32x4::<0xDD>(odd_lo, odd_hi);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_swaps_rows_and_lanes() {
        if !applies(16) {
            return;
        }
        let vals: Vec<f32> = (0..256).map(|v| v as f32).collect();
        // Safety: AVX-512F detected; every load and store within 256 values.
        unsafe {
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, reg) in r.iter_mut().enumerate() {
                *reg = _mm512_loadu_ps(vals.as_ptr().add(16 * i));
            }
            let t = transpose16(&r);
            let mut got = vec![0.0f32; 256];
            for (j, reg) in t.iter().enumerate() {
                _mm512_storeu_ps(got.as_mut_ptr().add(16 * j), *reg);
            }
            for i in 0..16 {
                for j in 0..16 {
                    assert_eq!(got[16 * j + i], vals[16 * i + j], "lane {i} of column {j}");
                }
            }
        }
    }
}
