//! The weight gradient when the big side is thin: at most `THIN_MAX` channels per group
//! (e.g. the RGB output of a generator's last layer), where a GEMM's register tile would
//! be mostly padding on that side. Row dot products of `THIN_ROWS` channels of `S`
//! against every `B` channel at once, on the `RowLayout` of
//! [`weight_rows`](super::weight_rows).

use super::direct::{run_chunks, run_each};
use super::weight::{few_channel_pairs, Sizes};
use super::weight_rows::RowLayout;
use super::{scratch, Isa};
use crate::geometry::Geometry;
use crate::tensor::Element;

/// Channels of `S` per task of the thin-side weight gradient.
const THIN_ROWS: usize = 4;
/// Most `B` channels per group for which the weight gradient takes the thin-side path.
const THIN_MAX: usize = 4;

/// Whether the big side has so few channels per group (at most `THIN_MAX`, e.g. the RGB
/// output of a generator's last layer) that the weight gradient runs as row dot products
/// of `THIN_ROWS` channels of `S` against every `B` channel at once ([`grad_weight`]).
pub(crate) fn applies(g: &Geometry) -> bool {
    let (_, b) = g.side_channels();
    !few_channel_pairs(g) && b / g.groups.max(1) <= THIN_MAX
}

/// `∂L/∂w` when the big side is thin ([`applies`]): every `B` plane is copied once
/// into its [`RowLayout`]. A task owns `THIN_ROWS` channels of `S` — rows of `dW` — copies
/// them per batch item at the padded row pitch (`S'`, so that a tap's runs over consecutive
/// rows merge into one), and per tap sums the products of those rows with all `B`
/// channels' runs in `THIN_ROWS × b` register accumulators, in a fixed order (bitwise
/// identical for any thread count), the taps of one polyphase component together. No
/// operand is transposed, and each loaded vector serves several products. (Merged runs and
/// the component order: dcgan4's weight gradient 1.87 -> 1.74 ms, paired minima. On
/// AVX-512, two taps of a component summed in one pass ([`tap_pairs`]): 1.14x at 1 thread,
/// 1.11x at 2, medians over 5 paired rounds on a 2-core Emerald Rapids Xeon.)
pub(crate) fn grad_weight<T: Element>(
    g: &Geometry,
    s: &[T],
    b: &[T],
    threads: usize,
    isa: Isa,
    dw: &mut [T],
) {
    let lay = RowLayout::new(g);
    let Sizes {
        big_size,
        k_size,
        a_ch,
        b_ch,
        a_pg,
        b_pg,
        ..
    } = Sizes::of(g);
    // Every plane of B, padded once: `[n][channel][lay.len]`.
    let mut padded = scratch::take::<T>(g.batch * b_ch * lay.len);
    run_chunks(threads, &mut padded, lay.len, |u, dst| {
        lay.fill(&b[u * big_size..][..big_size], dst)
    });
    let row_len = b_pg * k_size;
    let mut parts: Vec<(usize, usize, &mut [T])> = Vec::new();
    let mut rest: &mut [T] = dw;
    for group in 0..g.groups {
        for a0 in (0..a_pg).step_by(THIN_ROWS) {
            let live = THIN_ROWS.min(a_pg - a0);
            let (part, tail) = std::mem::take(&mut rest).split_at_mut(live * row_len);
            rest = tail;
            parts.push((group, a0, part));
        }
    }
    let avx2 = cfg!(target_arch = "x86_64") && isa != Isa::Scalar;
    // f64 sums 8 lanes, one AVX-512 register, where its loops are AVX-512.
    let vectors = (avx2, isa == Isa::Avx512 && Isa::Avx512.available());
    // Sums over 16 lanes on AVX-512 (dcgan4's weight gradient ran 1.11 ms at 8 lanes on
    // Zen 5, whose AVX-512 is full width).
    let wide = isa == Isa::Avx512
        && Isa::Avx512.available()
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
    let padded = &padded[..];
    let pairs = tap_pairs(&lay, b_pg);
    let run = |(group, a0, part): (usize, usize, &mut [T])| {
        let tile = ThinTile {
            lay: &lay,
            pairs: &pairs,
            s,
            padded,
            a_first: group * a_pg + a0,
            live: part.len() / row_len,
            a_ch,
            b_first: group * b_pg,
            b_ch,
            batch: g.batch,
        };
        match (b_pg, wide) {
            (1, false) => thin_tile::<T, 1, 8>(vectors, &tile, part),
            (2, false) => thin_tile::<T, 2, 8>(vectors, &tile, part),
            (3, false) => thin_tile::<T, 3, 8>(vectors, &tile, part),
            (4, false) => thin_tile::<T, 4, 8>(vectors, &tile, part),
            (1, true) => thin_tile::<T, 1, 16>(vectors, &tile, part),
            (2, true) => thin_tile::<T, 2, 16>(vectors, &tile, part),
            (3, true) => thin_tile::<T, 3, 16>(vectors, &tile, part),
            (4, true) => thin_tile::<T, 4, 16>(vectors, &tile, part),
            _ => unreachable!("`applies` admits at most THIN_MAX channels"),
        }
    };
    run_each(threads, parts, run);
}

/// One task of [`grad_weight`]: `live` (at most `THIN_ROWS`) channels of `S` from
/// `a_first`, against the `B` channels of their group from `b_first`.
struct ThinTile<'a, T> {
    lay: &'a RowLayout,
    /// The taps as [`thin_plane_avx512`] sums them ([`tap_pairs`]).
    pairs: &'a [(usize, Option<(usize, usize)>)],
    s: &'a [T],
    padded: &'a [T],
    a_first: usize,
    live: usize,
    a_ch: usize,
    b_first: usize,
    b_ch: usize,
    batch: usize,
}

/// Rows `a_first..a_first + live` of `dW` (`[a][b][k]`, `TB` channels of `B`) into `out`,
/// summing over `L` lanes (8, or 16 on AVX-512).
fn thin_tile<T: Element, const TB: usize, const L: usize>(
    vectors: (bool, bool),
    t: &ThinTile<'_, T>,
    out: &mut [T],
) {
    let k_size = t.lay.tap_start.len();
    let small_size = t.lay.small_rows * t.lay.l_small;
    let mut acc = vec![[[[T::zero(); L]; TB]; THIN_ROWS]; k_size];
    // This task's rows of `S` as planes of `S'` (zero planes past `live`).
    let plane = t.lay.small_plane();
    let mut padded_s = vec![T::zero(); THIN_ROWS * plane];
    for n in 0..t.batch {
        for (i, dst) in padded_s.chunks_exact_mut(plane).enumerate().take(t.live) {
            let src = &t.s[(n * t.a_ch + t.a_first + i) * small_size..][..small_size];
            t.lay.pad_small(src, dst);
        }
        let srows: [&[T]; THIN_ROWS] = std::array::from_fn(|i| &padded_s[i * plane..][..plane]);
        let bplanes: [&[T]; TB] = std::array::from_fn(|j| {
            &t.padded[(n * t.b_ch + t.b_first + j) * t.lay.len..][..t.lay.len]
        });
        thin_plane(vectors, t.lay, t.pairs, &srows, &bplanes, &mut acc);
    }
    for i in 0..t.live {
        for j in 0..TB {
            for k in 0..k_size {
                out[(i * TB + j) * k_size + k] = acc[k][i][j].iter().fold(T::zero(), |s, &v| s + v);
            }
        }
    }
}

/// Per-tap accumulators of [`thin_plane`]: `[S row][B channel]`, `L` partial sums each.
type ThinAcc<T, const TB: usize, const L: usize> = [[[T; L]; TB]; THIN_ROWS];

/// Add one batch item's products to `acc` (compiled for AVX2, or in AVX-512 registers: f32
/// at 16 lanes, f64 at 8, where allowed: `(avx2, avx512)`).
fn thin_plane<T: Element, const TB: usize, const L: usize>(
    (avx2, avx512): (bool, bool),
    lay: &RowLayout,
    pairs: &[(usize, Option<(usize, usize)>)],
    srows: &[&[T]; THIN_ROWS],
    bplanes: &[&[T]; TB],
    acc: &mut [ThinAcc<T, TB, L>],
) {
    // On AVX-512 registers where this call's element type and lanes are those of `$kernel`.
    macro_rules! on_avx512 {
        ($u:ty, $lanes:literal, $kernel:ident) => {
            #[cfg(target_arch = "x86_64")]
            if L == $lanes
                && avx512
                && Isa::Avx512.available()
                && std::any::TypeId::of::<T>() == std::any::TypeId::of::<$u>()
            {
                // Safety: `T` is `$u` and `L` `$lanes` (both checked), so the casts change no
                // type; AVX-512F was detected.
                unsafe {
                    let srows = &*(srows as *const [&[T]; THIN_ROWS]).cast::<[&[$u]; THIN_ROWS]>();
                    let bplanes = &*(bplanes as *const [&[T]; TB]).cast::<[&[$u]; TB]>();
                    let acc = std::slice::from_raw_parts_mut(
                        acc.as_mut_ptr().cast::<ThinAcc<$u, TB, $lanes>>(),
                        acc.len(),
                    );
                    $kernel(lay, pairs, srows, bplanes, acc);
                }
                return;
            }
        };
    }
    on_avx512!(f32, 16, thin_plane_avx512);
    on_avx512!(f64, 8, thin_plane_avx512_f64);
    #[cfg(target_arch = "x86_64")]
    if avx2 && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // Safety: the features were just detected.
        unsafe { thin_plane_avx2(lay, srows, bplanes, acc) };
        return;
    }
    let _ = (avx2, avx512, pairs);
    thin_plane_body::<T, TB, L, false>(lay, srows, bplanes, acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn thin_plane_avx2<T: Element, const TB: usize, const L: usize>(
    lay: &RowLayout,
    srows: &[&[T]; THIN_ROWS],
    bplanes: &[&[T]; TB],
    acc: &mut [ThinAcc<T, TB, L>],
) {
    thin_plane_body::<T, TB, L, true>(lay, srows, bplanes, acc);
}

/// Taps of [`thin_plane_avx512`] in the order of `lay.tap_order`, each with the tap that
/// follows it where the two share one run structure: the same runs of `S'` (starts and
/// lengths), and `B` runs a fixed distance apart (a step along the last axis, as a
/// component's taps at consecutive shifts). Such a pair is summed in one pass, each loaded
/// `S` vector serving both taps (7 loads for 12 products per vector step become 10 for 24).
/// Only where the accumulators of two taps fit the registers beside their operands
/// (`2 · THIN_ROWS · TB <= 24`).
fn tap_pairs(lay: &RowLayout, tb: usize) -> Vec<(usize, Option<(usize, usize)>)> {
    let pairs_fit = 2 * THIN_ROWS * tb <= 24;
    let mut out = Vec::with_capacity(lay.tap_order.len());
    let mut rest = lay.tap_order.iter().copied().peekable();
    while let Some(k) = rest.next() {
        let partner = rest.peek().copied().filter(|&k2| {
            let (a, b) = (&lay.spans[k], &lay.spans[k2]);
            pairs_fit
                && !a.is_empty()
                && a.len() == b.len()
                && b[0].1 > a[0].1
                && a.iter().zip(b).all(|(x, y)| {
                    x.0 == y.0 && x.2 == y.2 && y.1.checked_sub(x.1) == Some(b[0].1 - a[0].1)
                })
        });
        match partner {
            Some(k2) => {
                rest.next();
                out.push((k, Some((k2, lay.spans[k2][0].1 - lay.spans[k][0].1))));
            }
            None => out.push((k, None)),
        }
    }
    out
}

/// [`thin_plane_body`] on whole AVX-512 registers (the last values of a run by masked,
/// zero-filling loads), in explicit intrinsics: `$name` for `$t` in `$lanes` lanes (f32:
/// `_ps`, 16; f64: `_pd`, 8), with its helper `$taps`. The compiler's vectors of the
/// generic body at 16 f32 lanes ran 20x slower; f64's at 8 lanes, compiled for AVX2, ran
/// dcgan4's weight gradient at 20 % of the FMA peak. Taps paired by [`tap_pairs`] are
/// summed together; each tap's sums are the same as alone (same products, same order).
#[cfg(target_arch = "x86_64")]
macro_rules! thin_avx512 {
    ($name:ident, $taps:ident, $t:ty, $lanes:literal, $mask:ty,
     [$zero:ident, $load:ident, $maskz_load:ident, $fma:ident, $store:ident]) => {
        /// # Safety
        /// AVX-512F available; `pairs` from [`tap_pairs`] on `lay`.
        #[target_feature(enable = "avx512f")]
        unsafe fn $name<const TB: usize>(
            lay: &RowLayout,
            pairs: &[(usize, Option<(usize, usize)>)],
            srows: &[&[$t]; THIN_ROWS],
            bplanes: &[&[$t]; TB],
            acc: &mut [ThinAcc<$t, TB, $lanes>],
        ) {
            for &(k, partner) in pairs {
                match partner {
                    None => $taps::<TB, 1>(lay, [k], [0], srows, bplanes, acc),
                    Some((k2, delta)) => {
                        $taps::<TB, 2>(lay, [k, k2], [0, delta], srows, bplanes, acc)
                    }
                }
            }
        }

        /// The sums of `TAPS` taps with the runs of `taps[0]`, tap `t` reading `B`
        /// `deltas[t]` further on (see [`tap_pairs`]).
        ///
        /// # Safety
        /// AVX-512F available; each tap's runs are those of `taps[0]` moved by its delta.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn $taps<const TB: usize, const TAPS: usize>(
            lay: &RowLayout,
            taps: [usize; TAPS],
            deltas: [usize; TAPS],
            srows: &[&[$t]; THIN_ROWS],
            bplanes: &[&[$t]; TB],
            acc: &mut [ThinAcc<$t, TB, $lanes>],
        ) {
            use std::arch::x86_64::*;
            let mut v = [[[$zero(); TB]; THIN_ROWS]; TAPS];
            for t in 0..TAPS {
                for i in 0..THIN_ROWS {
                    for j in 0..TB {
                        v[t][i][j] = $load(acc[taps[t]][i][j].as_ptr());
                    }
                }
            }
            for &(s0, at, l) in &lay.spans[taps[0]] {
                let mut bp = [[std::ptr::null::<$t>(); TB]; TAPS];
                for t in 0..TAPS {
                    for j in 0..TB {
                        bp[t][j] = bplanes[j][at + deltas[t]..at + deltas[t] + l].as_ptr();
                    }
                }
                let mut sp = [std::ptr::null::<$t>(); THIN_ROWS];
                for i in 0..THIN_ROWS {
                    sp[i] = srows[i][s0..s0 + l].as_ptr();
                }
                // One vector step at `o`, loading through `$ld` (whole vectors, or the
                // lanes inside the run at its end).
                macro_rules! step {
                    ($o:expr, |$p:ident| $ld:expr) => {{
                        let mut bv = [[$zero(); TB]; TAPS];
                        for t in 0..TAPS {
                            for j in 0..TB {
                                let $p = bp[t][j].add($o);
                                bv[t][j] = $ld;
                            }
                        }
                        for i in 0..THIN_ROWS {
                            let $p = sp[i].add($o);
                            let sv = $ld;
                            for t in 0..TAPS {
                                for j in 0..TB {
                                    v[t][i][j] = $fma(sv, bv[t][j], v[t][i][j]);
                                }
                            }
                        }
                    }};
                }
                let mut o = 0;
                while o + $lanes <= l {
                    step!(o, |p| $load(p));
                    o += $lanes;
                }
                if o < l {
                    // The loads read only the lanes inside the run.
                    let mask = ((1u32 << (l - o)) - 1) as $mask;
                    step!(o, |p| $maskz_load(mask, p));
                }
            }
            for t in 0..TAPS {
                for i in 0..THIN_ROWS {
                    for j in 0..TB {
                        $store(acc[taps[t]][i][j].as_mut_ptr(), v[t][i][j]);
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
thin_avx512!(
    thin_plane_avx512,
    thin_taps_avx512,
    f32,
    16,
    __mmask16,
    [
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_maskz_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    ]
);

#[cfg(target_arch = "x86_64")]
thin_avx512!(
    thin_plane_avx512_f64,
    thin_taps_avx512_f64,
    f64,
    8,
    __mmask8,
    [
        _mm512_setzero_pd,
        _mm512_loadu_pd,
        _mm512_maskz_loadu_pd,
        _mm512_fmadd_pd,
        _mm512_storeu_pd
    ]
);

/// With `FUSED`, each product is added with one fused multiply-add (one rounding; an
/// instruction where FMA is enabled, a library call elsewhere).
#[inline(always)]
fn thin_plane_body<T: Element, const TB: usize, const L: usize, const FUSED: bool>(
    lay: &RowLayout,
    srows: &[&[T]; THIN_ROWS],
    bplanes: &[&[T]; TB],
    acc: &mut [ThinAcc<T, TB, L>],
) {
    // Taps in the order of their runs in `B` (component by component), so that the taps
    // reading one component run while it is in L1.
    for &k in &lay.tap_order {
        let acc_k = &mut acc[k];
        // The tap's sums stay in registers over all of its runs.
        let mut v = *acc_k;
        for &(s0, at, l) in &lay.spans[k] {
            let brows: [&[T]; TB] = std::array::from_fn(|j| &bplanes[j][at..at + l]);
            let srow: [&[T]; THIN_ROWS] = std::array::from_fn(|i| &srows[i][s0..s0 + l]);
            let whole = l / L * L;
            for o in (0..whole).step_by(L) {
                let bv: [[T; L]; TB] =
                    std::array::from_fn(|j| brows[j][o..o + L].try_into().expect("L lanes"));
                let sv: [&[T; L]; THIN_ROWS] =
                    std::array::from_fn(|i| srow[i][o..o + L].try_into().expect("L lanes"));
                thin_block::<T, TB, L, FUSED>(&mut v, &bv, &sv);
            }
            if whole < l {
                // The last values, zero-padded to a vector.
                let pad = |r: &[T]| {
                    let mut a = [T::zero(); L];
                    a[..l - whole].copy_from_slice(&r[whole..]);
                    a
                };
                let bv: [[T; L]; TB] = std::array::from_fn(|j| pad(brows[j]));
                let st: [[T; L]; THIN_ROWS] = std::array::from_fn(|i| pad(srow[i]));
                thin_block::<T, TB, L, FUSED>(&mut v, &bv, &std::array::from_fn(|i| &st[i]));
            }
        }
        *acc_k = v;
    }
}

/// `v[i][j] += s[i] · b[j]` lane by lane for `L` positions (see [`thin_plane_body`]).
#[inline(always)]
fn thin_block<T: Element, const TB: usize, const L: usize, const FUSED: bool>(
    v: &mut ThinAcc<T, TB, L>,
    bv: &[[T; L]; TB],
    sv: &[&[T; L]; THIN_ROWS],
) {
    for (vi, si) in v.iter_mut().zip(sv) {
        for (vij, bj) in vi.iter_mut().zip(bv) {
            for q in 0..L {
                vij[q] = if FUSED {
                    si[q].mul_add(bj[q], vij[q])
                } else {
                    vij[q] + si[q] * bj[q]
                };
            }
        }
    }
}
