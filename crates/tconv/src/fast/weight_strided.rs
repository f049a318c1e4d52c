//! The weight gradient of layers whose kernel equals their stride (U-Net's and V-Net's
//! up-convolutions), with the big side read where it lies.
//!
//! With kernel == stride, no padding and no dilation, tap `k` meets small position `p` at
//! big position `s·p + k` on every axis: each tap reads the big side at a constant stride
//! along the last axis, from a row start that depends on the small row only. So the GEMM
//! over positions `dW[a, b, k] = Σ_n Σ_p S[n, a, p] · B[n, b, s·p + k]` can take the big
//! side as the broadcast operand of the 6-row register tile straight from memory — its
//! six rows, each read at that stride — and only the small side is packed (positions
//! × 16 channels on AVX2, 32 on AVX-512: two vectors; by the GEMM over positions' own
//! packing, `pack_positions`: 8×8 transposes). The tile's six rows are pairs of a
//! big-side channel and a last-axis tap: the taps of one channel read neighbouring
//! values, so with two taps per axis (unet) a tile reads three planes' lines, not six (one
//! tap at a time, six channels' planes per tile, unet's weight gradient ran 0.84x / 0.91x
//! of the packed GEMM's, the kernel's share of the samples 1.2x the input gradient's for
//! as many multiplications). The GEMM over positions ([`weight_gemm`](super::weight_gemm)) packs both
//! sides; in unet's backward profile (perf, 1 thread) that packing, transposes included,
//! took 17 % of the samples, about a third of the weight gradient's time, two thirds of
//! the values the big side's. Paired against it (`tconv bench --pass backward`, median /
//! min): unet 1.18x / 1.19x at 1 thread (5 rounds), 1.34x / 1.32x at 2 (4 rounds; there
//! each task had packed the whole big side); vnet3d 1.00x / 1.17x and 1.40x / 1.24x. On
//! AVX-512 (Zen 5, full-width) the 6×32 tile ran unet's 1.69x / 1.72x faster than the
//! 6×16 one at 1 thread, 1.60x / 1.61x at 2; vnet3d's 1.85x / 1.85x and 1.55x / 1.47x (4
//! alternating rounds, medians of 15).
//!
//! Tasks own blocks of 16 (or 32) small-side channels (rows of `dW`); each reduces over the
//! images in order and the positions in chunks of rows, so the sums' order depends on the
//! sizes only: bitwise identical for any thread count, and for either width. f32 on AVX2
//! and FMA only (elsewhere the GEMM over positions runs).

use super::direct::run_each;
use super::weight_pack::{pack_positions, Side, Tables};
use super::{scratch, Isa};
use crate::geometry::Geometry;
use crate::tensor::{numel, positions, Element};

/// Rows ((big-side channel, last-axis tap) pairs) of the register tile; its lanes are
/// two vectors of small-side channels: 16 on AVX2, 32 on AVX-512 ([`lanes`]).
const MR: usize = 6;

/// The tile's lanes on `isa`: two vectors.
fn lanes(isa: Isa) -> usize {
    if isa == Isa::Avx512 && isa.available() {
        32
    } else {
        16
    }
}
/// Positions per chunk of the reduction (whole small rows; a longer row is cut): the
/// chunk's packed small side, 16 KiB per block of 16 channels (32 KiB of 32 on AVX-512),
/// stays in L1.
const CHUNK: usize = 256;

/// Whether the weight gradient of `g` (elements `T`, on `isa`) can read the big side in
/// place: f32 with AVX2 and FMA, and on every axis kernel == stride, dilation 1, no padding,
/// and the big extent `s ·` the small one (every tap of every position inside).
pub(crate) fn applies<T: Element>(g: &Geometry, isa: Isa) -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && isa != Isa::Scalar
        && super::winograd_input::avx2_fma()
        && g.batch > 0
        && g.axes.iter().all(|a| {
            a.kernel == a.stride
                && a.dilation == 1
                && a.pad_begin == 0
                && a.big(g.op) == a.stride * a.small(g.op)
        })
}

/// `∂L/∂w` (`[a][b_pg][k]`, the small side's channels first) from the small
/// side `s` and the big side `b` into `dw`, where [`applies`] holds (panics elsewhere).
pub(crate) fn grad_weight<T: Element>(
    g: &Geometry,
    s: &[T],
    b: &[T],
    (threads, isa): (usize, Isa),
    dw: &mut [T],
) {
    let f32s = (super::as_f32(s), super::as_f32(b), super::as_f32_mut(dw));
    let (Some(s), Some(b), Some(dw)) = f32s else {
        panic!("the in-place weight gradient is f32 only (see `applies`)");
    };
    let w = InPlace::new(g, s, b, lanes(isa));
    assert!(
        s.len() == g.batch * w.a_ch * w.small_size
            && b.len() == g.batch * w.b_ch * w.big_size
            && dw.len() == w.a_ch * w.b_pg * w.k_size,
        "weight gradient operands of the wrong size"
    );
    if dw.is_empty() {
        return;
    }
    // Tasks: (group, range of `a` blocks), one per thread.
    let (groups, tl, row_w) = (g.groups.max(1), w.tl, w.row_w);
    let a_blocks = w.a_pg.div_ceil(tl);
    let splits = threads.div_ceil(groups).clamp(1, a_blocks.max(1));
    let per_split = a_blocks.div_ceil(splits);
    let mut parts: Vec<(usize, usize, &mut [f32])> = Vec::new();
    let mut rest: &mut [f32] = dw;
    for group in 0..groups {
        for blk0 in (0..a_blocks).step_by(per_split) {
            let lo = blk0 * tl;
            let hi = ((blk0 + per_split) * tl).min(w.a_pg);
            let (part, tail) = std::mem::take(&mut rest).split_at_mut((hi - lo) * row_w);
            rest = tail;
            parts.push((group, blk0, part));
        }
    }
    run_each(threads, parts, |(group, blk0, part)| {
        let nab = (part.len() / row_w).div_ceil(tl);
        // acc[a block][b block][tap][tile], then gathered into `dW`.
        let mut acc = scratch::take::<f32>(nab * w.b_blocks * w.outer_taps * w.tile);
        w.sums((group, blk0, nab), &mut acc);
        w.gather(nab, &acc, part);
    });
}

/// One weight gradient of [`grad_weight`]: its sizes, the chunks of its reduction and where
/// each tap's runs start.
struct InPlace<'a> {
    g: &'a Geometry,
    s: &'a [f32],
    b: &'a [f32],
    /// Channels of each side, all and per group; positions of each side's planes and of the
    /// kernel.
    a_ch: usize,
    b_ch: usize,
    a_pg: usize,
    b_pg: usize,
    small_size: usize,
    big_size: usize,
    k_size: usize,
    /// Lanes of the tile (small-side channels).
    tl: usize,
    /// The small side's last-axis extent, the big side's last-axis stride (the distance
    /// between a run's values).
    row_len: usize,
    step: usize,
    /// Chunks of the reduction within an image: `rows_per` whole rows, or pieces of `seg`
    /// of one long row, as `(first row, end row, first position)`.
    rows_per: usize,
    seg: usize,
    chunks: Vec<(usize, usize, usize)>,
    /// Per small row (all axes but the last) and outer tap: where the tap's run starts in a
    /// big plane.
    run_start: Vec<usize>,
    outer_taps: usize,
    /// Last-axis taps, and the tile's rows: (big-side channel, last-axis tap) pairs.
    k_last: usize,
    pairs: usize,
    b_blocks: usize,
    tile: usize,
    /// Values of a row of `dW` (one small-side channel).
    row_w: usize,
    /// The small side is packed at its own positions, `[q][tl]` per block of channels.
    identity: Tables,
}

impl<'a> InPlace<'a> {
    fn new(g: &'a Geometry, s: &'a [f32], b: &'a [f32], tl: usize) -> InPlace<'a> {
        let (a_ch, b_ch) = g.side_channels();
        let groups = g.groups.max(1);
        let (a_pg, b_pg) = (a_ch / groups, b_ch / groups);
        let dims = g.axes.len();
        let small: Vec<usize> = g.axes.iter().map(|a| a.small(g.op)).collect();
        let big: Vec<usize> = g.axes.iter().map(|a| a.big(g.op)).collect();
        let strides: Vec<usize> = g.axes.iter().map(|a| a.stride).collect();
        let k_shape = g.kernel_shape();
        let k_size = numel(&k_shape);
        let (small_size, big_size) = (numel(&small), numel(&big));
        let row_len = small[dims - 1];
        let small_rows = small_size / row_len.max(1);
        let big_pitch: Vec<usize> = (0..dims).map(|a| big[a + 1..].iter().product()).collect();
        // Along a run, values `s_last` apart.
        let step = strides[dims - 1];
        let taps: Vec<Vec<usize>> = positions(&k_shape[..dims - 1]).collect();
        let run_start: Vec<usize> = positions(&small[..dims - 1])
            .flat_map(|p| {
                let big_pitch = &big_pitch;
                let strides = &strides;
                taps.iter().map(move |k| {
                    (0..dims - 1)
                        .map(|a| (strides[a] * p[a] + k[a]) * big_pitch[a])
                        .sum::<usize>()
                })
            })
            .collect();
        let (rows_per, seg) = if row_len <= CHUNK {
            ((CHUNK / row_len).max(1), row_len)
        } else {
            (1, CHUNK)
        };
        let chunks: Vec<(usize, usize, usize)> = (0..small_rows)
            .step_by(rows_per)
            .flat_map(|r0| (0..row_len).step_by(seg).map(move |j0| (r0, j0)))
            .map(|(r0, j0)| (r0, (r0 + rows_per).min(small_rows), j0))
            .collect();
        // The tile's rows are (big-side channel, last-axis tap) pairs: the taps of one
        // channel read neighbouring values (with two taps, six rows touch three planes'
        // lines).
        let k_last = step;
        let pairs = b_pg * k_last;
        InPlace {
            g,
            s,
            b,
            a_ch,
            b_ch,
            a_pg,
            b_pg,
            small_size,
            big_size,
            k_size,
            tl,
            row_len,
            step,
            rows_per,
            seg,
            chunks,
            run_start,
            outer_taps: taps.len(),
            k_last,
            pairs,
            b_blocks: pairs.div_ceil(MR),
            tile: MR * tl,
            row_w: b_pg * k_size,
            identity: Tables::new::<f32>(vec![(0..small_size).collect()], 1, tl),
        }
    }

    /// The sums of the task owning `nab` blocks of small-side channels from block `blk0` of
    /// group `group`, into `acc` (`[a block][b block][tap][tile]`), over every image and
    /// chunk in order.
    fn sums(&self, (group, blk0, nab): (usize, usize, usize), acc: &mut [f32]) {
        let (tl, rows_per, seg, outer_taps) = (self.tl, self.rows_per, self.seg, self.outer_taps);
        let mut sbuf = scratch::take::<f32>(nab * rows_per * seg * tl);
        let mut offs = vec![0usize; rows_per * outer_taps];
        let mut first = true;
        for n in 0..self.g.batch {
            for &(r0, r1, j0) in &self.chunks {
                let len = seg.min(self.row_len - j0);
                let q = (r1 - r0) * len;
                // The small side of this chunk, `[a block][q][tl]`: its positions are
                // consecutive (whole rows, or a piece of one).
                let js = r0 * self.row_len + j0..r0 * self.row_len + j0 + q;
                let image = &self.s[n * self.a_ch * self.small_size..];
                for (abl, dst) in sbuf.chunks_mut(rows_per * seg * tl).take(nab).enumerate() {
                    let dims = (self.a_ch, self.a_pg, self.small_size);
                    let side = Side::block(image, 1, dims, tl, group, blk0 + abl);
                    pack_positions(dst, tl, &side, &self.identity, js.clone(), false);
                }
                // Per outer tap, where each row of the chunk starts.
                for (ti, offs) in offs.chunks_exact_mut(rows_per).enumerate() {
                    for (oi, o) in offs.iter_mut().enumerate().take(r1 - r0) {
                        *o = self.run_start[(r0 + oi) * outer_taps + ti] + j0 * self.step;
                    }
                }
                // Per outer tap and block of tile rows, over every block of small-side
                // channels: the tile's six strided rows stay in L1 across the blocks.
                for ti in 0..outer_taps {
                    let offs = &offs[ti * rows_per..ti * rows_per + r1 - r0];
                    for bbl in 0..self.b_blocks {
                        // The tile's rows: (channel, last-axis tap) pairs (the last pair
                        // repeated past the group's channels; those rows are not kept).
                        let live = MR.min(self.pairs - bbl * MR);
                        let planes: [usize; MR] = std::array::from_fn(|m| {
                            let r = bbl * MR + m.min(live - 1);
                            let channel = n * self.b_ch + group * self.b_pg + r / self.k_last;
                            channel * self.big_size + r % self.k_last
                        });
                        let a = StridedRows {
                            planes: &planes,
                            offs,
                            len,
                            step: self.step,
                        };
                        for abl in 0..nab {
                            let bv = &sbuf[abl * rows_per * seg * tl..][..q * tl];
                            let at = ((abl * self.b_blocks + bbl) * outer_taps + ti) * self.tile;
                            let out = &mut acc[at..at + self.tile];
                            strided_tile(self.b, &a, bv, out, !first);
                        }
                    }
                }
                first = false;
            }
        }
    }

    /// A task's sums into its rows of `dW[a][b][k]` (`part`): tile row `m` is the pair
    /// `bbl·6 + m` (big-side channel, last-axis tap), lane `l` small-side channel
    /// `abl·tl + l` of the task.
    fn gather(&self, nab: usize, acc: &[f32], part: &mut [f32]) {
        let (tl, k_size, k_last, tile) = (self.tl, self.k_size, self.k_last, self.tile);
        let a_rows = part.len() / self.row_w;
        for abl in 0..nab {
            for bbl in 0..self.b_blocks {
                for m in 0..MR {
                    let r = bbl * MR + m;
                    if r >= self.pairs {
                        break;
                    }
                    let (bc, kl) = (r / k_last, r % k_last);
                    for l in 0..tl {
                        let al = abl * tl + l;
                        if al >= a_rows {
                            break;
                        }
                        let dst = &mut part[(al * self.b_pg + bc) * k_size..][..k_size];
                        let t0 = (abl * self.b_blocks + bbl) * self.outer_taps * tile + m * tl + l;
                        for ti in 0..self.outer_taps {
                            dst[ti * k_last + kl] = acc[t0 + ti * tile];
                        }
                    }
                }
            }
        }
    }
}

/// Where [`strided_tile`]'s broadcast operand lies in the big side: tile row `m` reads
/// `planes[m] + offs[r] + j·step` for each row `r` of the chunk and `j < len`, the rows in
/// order (the reduction index `q = r·len + j`).
struct StridedRows<'a> {
    planes: &'a [usize; MR],
    offs: &'a [usize],
    len: usize,
    step: usize,
}

/// `out[m][l] (+)= Σ_q A[q][m] · bv[q][l]` (`+=` with `accumulate`) for the 6-row tile of
/// `out.len() / 6` lanes (16, or 32 on AVX-512), `A` read in place from `b` as `a` says.
/// Each lane's sum runs in the same order at either width: the same bits.
fn strided_tile(b: &[f32], a: &StridedRows<'_>, bv: &[f32], out: &mut [f32], accumulate: bool) {
    let q = a.offs.len() * a.len;
    let tl = out.len() / MR;
    assert!(
        super::winograd_input::avx2_fma()
            && out.len() == MR * tl
            && (tl == 16 || (tl == 32 && Isa::Avx512.available()))
            && bv.len() >= q * tl
            && (a.len == 0
                || a.planes.iter().all(|&p| {
                    a.offs
                        .iter()
                        .all(|&o| p + o + (a.len - 1) * a.step < b.len())
                })),
        "strided tile operands"
    );
    #[cfg(target_arch = "x86_64")]
    // Safety: AVX2 and FMA (and AVX-512F for 32 lanes) are available and every read lies
    // inside `b` or `bv` (checked above); `out` holds the tile.
    unsafe {
        let o = out.as_mut_ptr();
        if tl == 32 {
            strided_tile_avx512(b.as_ptr(), a, bv.as_ptr(), o, accumulate)
        } else {
            strided_tile_avx2(b.as_ptr(), a, bv.as_ptr(), o, accumulate)
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = accumulate;
        unreachable!("checked above: AVX2 is x86-64 only");
    }
}

/// The 6-row tile kernel on two vectors of `$w` lanes (`$ty`, with its load, store,
/// broadcast, FMA and zero), compiled for `$feat`: the same loop at either width.
macro_rules! strided_tile_kernel {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $w:literal, $ty:ident,
     $load:ident, $store:ident, $set1:ident, $fmadd:ident, $zero:ident) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $name(
            b: *const f32,
            a: &StridedRows<'_>,
            bv: *const f32,
            o: *mut f32,
            accumulate: bool,
        ) {
            use std::arch::x86_64::*;
            const TL: usize = 2 * $w;
            let mut acc: [[$ty; 2]; MR] = [[$zero(); 2]; MR];
            if accumulate {
                for (m, row) in acc.iter_mut().enumerate() {
                    row[0] = $load(o.add(m * TL));
                    row[1] = $load(o.add(m * TL + $w));
                }
            }
            let mut bp = bv;
            for &off in a.offs {
                let mut p = [b; MR];
                for (m, pm) in p.iter_mut().enumerate() {
                    *pm = b.add(a.planes[m] + off);
                }
                for _ in 0..a.len {
                    let b0 = $load(bp);
                    let b1 = $load(bp.add($w));
                    for m in 0..MR {
                        let av = $set1(*p[m]);
                        acc[m][0] = $fmadd(av, b0, acc[m][0]);
                        acc[m][1] = $fmadd(av, b1, acc[m][1]);
                        p[m] = p[m].add(a.step);
                    }
                    bp = bp.add(TL);
                }
            }
            for (m, row) in acc.iter().enumerate() {
                $store(o.add(m * TL), row[0]);
                $store(o.add(m * TL + $w), row[1]);
            }
        }
    };
}

strided_tile_kernel!(
    /// # Safety
    /// AVX2 and FMA available; the reads [`strided_tile`] checks lie inside their slices,
    /// and `o` points at the 6×16 tile.
    strided_tile_avx2, "avx2,fma", 8, __m256,
    _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_setzero_ps
);

strided_tile_kernel!(
    /// # Safety
    /// AVX-512F available; the reads [`strided_tile`] checks lie inside their slices, and
    /// `o` points at the 6×32 tile.
    strided_tile_avx512, "avx512f", 16, __m512,
    _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_setzero_ps
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{ConvParams, Op};
    use crate::reference::weight_gradient as grad_weight_reference;

    fn ints(n: usize, seed: u64) -> Vec<f32> {
        crate::tensor::small_ints(n, seed)
    }

    /// Channel counts that fill no tile (on either side), groups, 1-D rows longer than a
    /// chunk, 3-D, a 1×1 kernel, strides differing by axis and a conv: exactly the reference,
    /// and the same bits on 1 and 3 threads.
    #[test]
    fn matches_reference_exactly() {
        if !super::super::winograd_input::avx2_fma() {
            return;
        }
        let s2 = ConvParams::new().stride(&[2]);
        let cases: Vec<(Op, Vec<usize>, Vec<usize>, ConvParams)> = vec![
            (
                Op::ConvTranspose,
                vec![3, 19, 5, 6],
                vec![19, 7, 2, 2],
                s2.clone(),
            ),
            (
                Op::ConvTranspose,
                vec![2, 10, 4, 3],
                vec![10, 5, 2, 2],
                s2.clone().groups(2),
            ),
            (
                Op::ConvTranspose,
                vec![2, 5, 3, 2, 4],
                vec![5, 4, 2, 2, 2],
                s2.clone(),
            ),
            (
                Op::ConvTranspose,
                vec![2, 6, 300],
                vec![6, 3, 4],
                ConvParams::new().stride(&[4]),
            ),
            (
                Op::ConvTranspose,
                vec![2, 17, 4, 5],
                vec![17, 8, 1, 1],
                ConvParams::new(),
            ),
            (
                Op::ConvTranspose,
                vec![1, 9, 3, 4],
                vec![9, 4, 2, 3],
                ConvParams::new().stride(&[2, 3]),
            ),
            (Op::Conv, vec![2, 7, 8, 6], vec![5, 7, 2, 2], s2),
        ];
        for (op, xs, ws, p) in cases {
            let g = Geometry::new(op, &xs, &ws, None, &p).unwrap();
            assert!(applies::<f32>(&g, Isa::Avx2), "{op:?} {xs:?} {ws:?}");
            let x = ints(numel(&xs), 7);
            let gy = ints(numel(&g.output_shape()), 8);
            let want = grad_weight_reference(&g, &x, &gy);
            let (s, b) = g.weight_sides(&x, &gy);
            for isa in [Isa::Avx2, Isa::Avx512] {
                for threads in [1, 3] {
                    let mut got = vec![0.0; want.len()];
                    grad_weight(&g, s, b, (threads, isa), &mut got);
                    assert_eq!(got, want, "{op:?} {xs:?} {ws:?} {threads} {isa}");
                }
            }
        }
    }

    /// Padding, dilation, output padding, a kernel other than the stride, f64 or the
    /// portable ISA: the GEMM over positions keeps those.
    #[test]
    fn declines_other_layers() {
        let g = |ws: &[usize], p: ConvParams| {
            Geometry::new(Op::ConvTranspose, &[1, 4, 5, 5], ws, None, &p).unwrap()
        };
        let k2 = [4, 3, 2, 2];
        let s2 = ConvParams::new().stride(&[2]);
        assert!(
            applies::<f32>(&g(&k2, s2.clone()), Isa::Avx2)
                || !super::super::winograd_input::avx2_fma()
        );
        assert!(!applies::<f32>(
            &g(&k2, s2.clone().padding(&[1])),
            Isa::Avx2
        ));
        assert!(!applies::<f32>(
            &g(&k2, s2.clone().output_padding(&[1])),
            Isa::Avx2
        ));
        assert!(!applies::<f32>(&g(&[4, 3, 3, 3], s2.clone()), Isa::Avx2));
        assert!(!applies::<f32>(
            &g(&[4, 3, 2, 2], ConvParams::new().stride(&[2]).dilation(&[2])),
            Isa::Avx2
        ));
        assert!(!applies::<f64>(&g(&k2, s2.clone()), Isa::Avx2));
        assert!(!applies::<f32>(&g(&k2, s2), Isa::Scalar));
    }
}
