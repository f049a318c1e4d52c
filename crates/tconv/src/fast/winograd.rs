//! Winograd (Toom-Cook) minimal filtering for phases with 2 or 3 taps per axis: the dense
//! layers' multiplications cut by 1.8-2.25x.
//!
//! After the phase decomposition ([`spec`](super::spec)) every phase of a transposed conv is
//! a dense stride-1 correlation `y[q] = Σ_j x[q + base + j] · w[k(j)]` over `r` consecutive
//! source positions per axis (DCGAN's k4 s2: 2×2 taps per phase; a stride-1 3×3 layer: one
//! phase of 3×3). A tile of `m` outputs per axis of such a correlation needs only
//! `α = m + r − 1` multiplications per axis instead of `m·r` (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016): with the matrices of [`Transform`],
//! `y = Aᵀ [(G g) ⊙ (Bᵀ d)]` for the `α` inputs `d` of a tile. In `D` dimensions the
//! transforms are applied per axis, so a tile has `α^D` transformed points, and over
//! channels the elementwise product becomes one GEMM per point:
//! `M[ξ][co][tile] = Σ_ci U[ξ][co][ci] · V[ξ][ci][tile]`, with `U = G g Gᵀ` computed and
//! packed once per plan (each packed run of `U` a combination of whole runs of the
//! transposed kernels) and `V = Bᵀ d B` per tile. The GEMMs run on the same packed
//! microkernels as the direct engine (`K = C_in/g`, times the input components of a strided
//! conv). In f32 on AVX2 the transforms run in registers from a channels-last copy of each
//! task's input rows ([`super::winograd_input`]); elsewhere each tile's `α^D` inputs are
//! gathered through a per-task index table, and the transforms run 8 channels at a time,
//! each term one loop over all of a task's columns. `Aᵀ M A` plus the bias is stored once
//! per output element through a scatter table.
//! Consecutive phases that read the same inputs over the same tiles (HiFi-GAN's k16 s8:
//! eight phases, two inputs) share one input transform.
//!
//! The results differ from the direct sums by rounding only (the transforms use the
//! points 0, ±1 and ∞, whose matrices hold 0, ±1 and ±1/2): exact on small integers, and
//! within 2e-5 relative of the reference on the tests' random f32 data (1e-12 in f64).
//! Tasks own disjoint bands of output rows
//! and each output element is computed by the same arithmetic whatever the band, so
//! results are bitwise identical for any thread count.

use std::ops::Range;

use super::direct::{band_tasks, run_each, Task};
use super::kernels::{KernelFn, Rows};
use super::pack::PackCache;
use super::scratch;
use super::spec::{pitches_of, residue_taps};
use super::winograd_input::{self, Slab, SlabSource};
use super::Isa;
use crate::geometry::Geometry;
use crate::params::Op;
use crate::tensor::{for_each_index, numel, Element};

/// Largest transform per axis: `α = m + r − 1 <= 4`, i.e. F(2,2), F(3,2) and F(2,3), whose
/// points 0, ±1, ∞ keep every transform coefficient a power of two.
pub const MAX_ALPHA: usize = 4;

/// Least modelled speed-up over the direct engine for the planner to take Winograd tiles
/// (see [`modeled_speedup`]). It was 1.12, set after hifigan1d's 1-D F(3,2), before its
/// phases shared their input transforms, was modelled 1.11 and measured 0.68-0.90x. With
/// the transforms in registers, dcgan3 (modelled 1.07) runs faster under the tiles: forced
/// against the direct engine at 1 thread, 1.16x / 1.20x and 1.21x / 1.19x (median / min, 5
/// and 6 alternating rounds); through the planner, paired against the binary that ran it
/// direct, 1.00x / 1.16x and 1.14x / 1.16x (5 and 6 rounds). At 2 threads the minima agree
/// (1.09-1.10x) but the medians do not (0.85-1.11x). In the suite only dcgan3 lies between
/// 1.05 and 1.12.
pub const MIN_SPEEDUP: f64 = 1.05;

/// The transforms' time relative to the GEMMs', per output channel (input transform) and
/// per channel of the reduction (output transform and store), for the transforms in
/// registers ([`super::winograd_input`], which f32 AVX2 plans of two axes take unless their
/// input copy would not fit the workspace bound): from the shares of a perf profile at 1
/// thread, input transform (slab, offsets, transform) / GEMM = 0.31 · 64 / (C_out/g) for
/// dcgan3, 0.27 · 64 for s1k3, 0.14 · 128 for dcgan2; output transform and store / GEMM = 0.21 · 128 / K (dcgan3), 0.23 · 64 (s1k3),
/// 0.12 · 256 (dcgan2). The portable transforms (rows gathered through a table, one pass
/// per group of terms) took 31-47 / (C_out/g) for the input, measured with section timers
/// on dcgan1-3 and s1k3: [`INPUT_COST_PORTABLE`] (the weight gradient's transforms are
/// still of that kind).
const INPUT_COST: f64 = 20.0;
const OUTPUT_COST: f64 = 25.0;
pub(crate) const INPUT_COST_PORTABLE: f64 = 40.0;

/// Transforming and packing the weights (once per plan), beyond what the direct engine's
/// packing costs, relative to one execution's GEMMs, times the tiles of a phase (over the
/// batch). Each transformed run is a combination of whole runs of the block's transposed
/// kernels, so this is mostly the larger packing's memory traffic: measured for the input
/// gradients (strided convs) at 1 thread, minima of 8-10: dcgan1 4.2-4.6 against 2.4-4.4 ms
/// (64 tiles a phase, GEMMs about 9 ms), dcgan2 0.7-1.4 against 0.55-1.05 ms (256 tiles,
/// 8 ms), hifigan1d 4.2-6.3 against 2.8-4.5 ms (344 tiles, about 50 ms): up to 27, 16 taken.
/// Counted where a plan runs once ([`crate::PlanOptions::once`]: the gradients, the
/// one-call functions).
const PACK_COST: f64 = 16.0;

/// The Winograd GEMMs' efficiency relative to the direct engine's (their reduction is
/// `C_in/g` long, the direct one `taps · C_in/g`): assumed, not measured apart; fitted with
/// the costs above to the layers measured (see [`modeled_speedup`]).
const GEMM_EFFICIENCY: f64 = 0.9;

/// Bytes of one point's transformed input and GEMM results a task aims at: they stay in
/// L2 (1 MiB here) while every block of output channels runs over them, and the columns are
/// as many as this allows, so each packed weight block serves that many tiles, streamed
/// from memory once per task (dcgan1's GEMMs took 17.4-18.1 instead of 22-23 million
/// cycles with all 64 tiles of a phase in one task rather than 16; hifigan1d, whose 16 MiB
/// of transformed weights stream once per task, ran 39.8-42.0 ms at 768 KiB against
/// 43.7-45.8 at 256 and 43.7-44.4 at 2048, minima at 1 thread).
const POINT_BYTES: usize = 768 * 1024;

/// [`POINT_BYTES`] for a strided conv (several sources: an input gradient), whose weight
/// blocks are as many times longer: hifigan1d's input gradient (8 sources, K = 2048) ran
/// 49.6-55.5 ms at 256 KiB against 62.7-69.3 at 768 (4 alternating rounds), dcgan1-3's
/// alike within noise.
const POINT_BYTES_SOURCES: usize = 256 * 1024;

/// Packed weights beyond which a task's columns are widened at the cost of slicing its
/// results (see [`sizing_within`]): half the L3, so they stream from memory once per task.
const STREAMED_WEIGHTS: usize = 16 << 20;

/// Most bytes of transformed input and results of all points one task holds.
const TASK_BYTES: usize = 8 << 20;

/// Channels the transforms take at a time: each of their loops then runs over
/// `CHUNK · pitch` values.
const CHUNK: usize = 8;

/// Finite interpolation points, in the order they are taken (∞ is always the last point).
const POINTS: [f64; 3] = [0.0, 1.0, -1.0];

/// A 1-D minimal filtering algorithm F(m, r): `m` outputs of an `r`-tap correlation from
/// `α = m + r − 1` inputs with `α` multiplications, `y = Aᵀ [(G g) ⊙ (Bᵀ d)]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    /// Outputs per tile.
    pub m: usize,
    /// Taps.
    pub r: usize,
    /// Inputs per tile and points: `m + r − 1`.
    pub alpha: usize,
    /// Input transform `Bᵀ` (`α × α`, row-major).
    pub bt: Vec<f64>,
    /// Weight transform `G` (`α × r`).
    pub g: Vec<f64>,
    /// Output transform `Aᵀ` (`m × α`).
    pub at: Vec<f64>,
}

impl Transform {
    /// The Toom-Cook algorithm F(m, r) on the points 0, 1, −1 (as many as needed) and ∞;
    /// for `r = 1` the identity (`α = m`). `None` past [`MAX_ALPHA`].
    ///
    /// With `V` the Vandermonde matrix of the points (∞: the leading coefficient), a linear
    /// convolution is `c = V⁻¹ [(E_r g) ⊙ (E_m h)]`; the correlation is its transpose in
    /// `h`: `Bᵀ = V⁻ᵀ`, `G = E_r`, `Aᵀ = E_mᵀ`. Each row of `Bᵀ` is then scaled to a largest
    /// magnitude of 1 and the row of `G` inversely.
    pub fn new(m: usize, r: usize) -> Option<Transform> {
        let alpha = m + r - 1;
        if m == 0 || r == 0 || alpha > MAX_ALPHA {
            return None;
        }
        let eye = |n: usize| -> Vec<f64> {
            (0..n * n)
                .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
                .collect()
        };
        if r == 1 {
            return Some(Transform {
                m,
                r,
                alpha,
                bt: eye(alpha),
                g: vec![1.0; alpha],
                at: eye(alpha),
            });
        }
        let pts = &POINTS[..alpha - 1];
        // Row `p` of an evaluation matrix with `n` columns: the powers of point `p`, or the
        // leading coefficient for ∞ (`p == pts.len()`).
        let eval = |p: usize, n: usize| -> Vec<f64> {
            (0..n)
                .map(|e| match pts.get(p) {
                    Some(&x) => x.powi(e as i32),
                    None => f64::from(u8::from(e == n - 1)),
                })
                .collect()
        };
        let v: Vec<f64> = (0..alpha).flat_map(|p| eval(p, alpha)).collect();
        let c = invert(&v, alpha);
        let mut bt = vec![0.0; alpha * alpha];
        for (x, row) in bt.chunks_exact_mut(alpha).enumerate() {
            for (l, b) in row.iter_mut().enumerate() {
                *b = c[l * alpha + x];
            }
        }
        let mut g: Vec<f64> = (0..alpha).flat_map(|p| eval(p, r)).collect();
        let mut at = vec![0.0; m * alpha];
        for p in 0..alpha {
            for (i, e) in eval(p, m).into_iter().enumerate() {
                at[i * alpha + p] = e;
            }
        }
        for (brow, grow) in bt.chunks_exact_mut(alpha).zip(g.chunks_exact_mut(r)) {
            let s = brow.iter().fold(0.0f64, |a, b| a.max(b.abs()));
            if s > 0.0 {
                brow.iter_mut().for_each(|b| *b = snap(*b / s));
                grow.iter_mut().for_each(|w| *w = snap(*w * s));
            }
        }
        Some(Transform {
            m,
            r,
            alpha,
            bt,
            g,
            at,
        })
    }
}

/// `x` rounded to a multiple of 2⁻²⁰ where it is within 1e-12 of one (the inversion's
/// round-off on coefficients that are dyadic rationals).
fn snap(x: f64) -> f64 {
    let s = 1048576.0;
    let r = (x * s).round() / s;
    if (x - r).abs() < 1e-12 {
        r
    } else {
        x
    }
}

/// The inverse of the `n × n` row-major matrix `a` (Gauss-Jordan, partial pivoting); `a`
/// must be invertible (a Vandermonde matrix of distinct points is).
fn invert(a: &[f64], n: usize) -> Vec<f64> {
    let w = 2 * n;
    let mut m = vec![0.0; n * w];
    for i in 0..n {
        m[i * w..i * w + n].copy_from_slice(&a[i * n..(i + 1) * n]);
        m[i * w + n + i] = 1.0;
    }
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| m[i * w + col].abs().total_cmp(&m[j * w + col].abs()))
            .expect("rows left");
        for k in 0..w {
            m.swap(col * w + k, piv * w + k);
        }
        let p = m[col * w + col];
        for k in 0..w {
            m[col * w + k] /= p;
        }
        for i in (0..n).filter(|&i| i != col) {
            let f = m[i * w + col];
            if f != 0.0 {
                for k in 0..w {
                    m[i * w + k] -= f * m[col * w + k];
                }
            }
        }
    }
    (0..n * n).map(|i| m[(i / n) * w + n + i % n]).collect()
}

/// One source of a phase: a polyphase component of the input (per axis `ρ`: input
/// positions `s_in·u + ρ`) read through its own taps. A transposed conv's phases read the
/// input itself (one source, `s_in = 1`); a strided conv's single phase sums the stride-1
/// correlations of its `s^D` components, so their channels line up along the GEMMs'
/// reduction (`K = sources · C_in/g`).
#[derive(Clone, Debug)]
pub(crate) struct Source {
    /// Component per axis.
    pub(crate) comp: Vec<usize>,
    /// Component offset of a tile's first input per axis: tile `t` reads from `m·t + base`.
    pub(crate) base: Vec<isize>,
    /// Kernel index of each tap per axis, in ascending source order.
    pub(crate) kidx: Vec<Vec<usize>>,
}

/// One phase as the transforms see it.
#[derive(Clone, Debug)]
pub(crate) struct Phase {
    /// Output residue per axis (`o = out_stride · q + residue`).
    pub(crate) residue: Vec<usize>,
    /// Extents `Q` per axis.
    pub(crate) extents: Vec<usize>,
    /// Its sources (none: bias only).
    pub(crate) sources: Vec<Source>,
}

impl Phase {
    pub(crate) fn live(&self) -> bool {
        !self.sources.is_empty()
    }
    /// Whether `other` reads the same inputs over the same tiles (its transformed input is
    /// this phase's).
    pub(crate) fn same_input(&self, other: &Phase) -> bool {
        self.extents == other.extents
            && self.sources.len() == other.sources.len()
            && self
                .sources
                .iter()
                .zip(&other.sources)
                .all(|(a, b)| a.comp == b.comp && a.base == b.base)
    }
    fn empty(&self) -> bool {
        self.extents.contains(&0)
    }
}

/// Per axis: each output residue's extent and sources `(component, taps (kernel index,
/// shift))`.
type AxisResidues = Vec<(usize, Vec<(usize, Vec<(usize, isize)>)>)>;

/// The residues of every axis, the output stride and the input stride (between a
/// component's positions); `None` where the op has no such form.
fn axis_residues(g: &Geometry) -> Option<(Vec<AxisResidues>, Vec<usize>, Vec<usize>)> {
    let ones = vec![1; g.axes.len()];
    match g.op {
        Op::ConvTranspose => Some((
            g.axes
                .iter()
                .map(|a| {
                    residue_taps(a)
                        .into_iter()
                        .map(|(q, taps)| {
                            let sources = if taps.is_empty() {
                                Vec::new()
                            } else {
                                vec![(0, taps)]
                            };
                            (q, sources)
                        })
                        .collect()
                })
                .collect(),
            g.axes.iter().map(|a| a.stride).collect(),
            ones,
        )),
        Op::Conv => {
            // Tap `k` reads `o·s + k·d − p`: component `(k·d − p) mod s` at `o + ⌊(k·d − p)/s⌋`.
            let res = g
                .axes
                .iter()
                .map(|a| {
                    let s = a.stride as i64;
                    let sources = (0..a.stride)
                        .filter_map(|rho| {
                            let taps: Vec<(usize, isize)> = (0..a.kernel)
                                .filter_map(|k| {
                                    let off = (k * a.dilation) as i64 - a.pad_begin;
                                    (off.rem_euclid(s) as usize == rho)
                                        .then_some((k, off.div_euclid(s) as isize))
                                })
                                .collect();
                            (!taps.is_empty()).then_some((rho, taps))
                        })
                        .collect();
                    vec![(a.output, sources)]
                })
                .collect();
            Some((res, ones, g.axes.iter().map(|a| a.stride).collect()))
        }
    }
}

/// The transform per axis and the phases, where every source of every phase has the same
/// number of taps (at most 3) per axis, reading consecutive positions of its component;
/// the tile size per axis is the one with the fewest multiplications over the axis's
/// residues.
#[allow(clippy::type_complexity)]
pub(crate) fn decompose(
    g: &Geometry,
) -> Option<(Vec<Transform>, Vec<Phase>, Vec<usize>, Vec<usize>)> {
    if g.axes.is_empty() || g.axes.len() > MAX_DIMS {
        return None;
    }
    let (per_axis, out_stride, in_stride) = axis_residues(g)?;
    let mut transforms = Vec::new();
    for res in &per_axis {
        let taps: Vec<&Vec<(usize, isize)>> = res
            .iter()
            .flat_map(|(_, srcs)| srcs.iter().map(|(_, t)| t))
            .collect();
        let r = taps.first().map_or(1, |t| t.len());
        let uniform = taps
            .iter()
            .all(|t| t.len() == r && t.windows(2).all(|w| w[1].1 == w[0].1 + 1));
        if !uniform || r > MAX_ALPHA - 1 {
            return None;
        }
        let cost = |m: usize| -> usize {
            res.iter()
                .filter(|(_, srcs)| !srcs.is_empty())
                .map(|(q, srcs)| q.div_ceil(m) * (m + r - 1) * srcs.len())
                .sum()
        };
        let m = if r == 1 {
            1
        } else {
            (2..=MAX_ALPHA + 1 - r).min_by_key(|&m| cost(m))?
        };
        transforms.push(Transform::new(m, r)?);
    }
    let dims = g.axes.len();
    let mut phases = Vec::new();
    let counts: Vec<usize> = per_axis.iter().map(Vec::len).collect();
    for_each_index(&counts, |residue| {
        let pick = |a: usize| &per_axis[a][residue[a]];
        let n_src: Vec<usize> = (0..dims).map(|a| pick(a).1.len()).collect();
        let mut sources = Vec::new();
        for_each_index(&n_src, |si| {
            let src = |a: usize| &pick(a).1[si[a]];
            sources.push(Source {
                comp: (0..dims).map(|a| src(a).0).collect(),
                base: (0..dims).map(|a| src(a).1[0].1).collect(),
                kidx: (0..dims)
                    .map(|a| src(a).1.iter().map(|t| t.0).collect())
                    .collect(),
            });
        });
        phases.push(Phase {
            residue: residue.to_vec(),
            extents: (0..dims).map(|a| pick(a).0).collect(),
            sources,
        });
    });
    Some((transforms, phases, out_stride, in_stride))
}

/// The ratio of direct to Winograd multiplications over the live phases, where the tiles
/// apply.
pub fn gain(g: &Geometry) -> Option<f64> {
    let (tr, phases, _, _) = decompose(g)?;
    gain_of(&tr, &phases)
}

/// [`gain`] of a decomposition.
fn gain_of(tr: &[Transform], phases: &[Phase]) -> Option<f64> {
    let (mut direct, mut wino) = (0usize, 0usize);
    for p in phases.iter().filter(|p| p.live() && !p.empty()) {
        let n = p.sources.len();
        direct += n
            * (0..tr.len())
                .map(|a| p.extents[a] * tr[a].r)
                .product::<usize>();
        wino += n
            * (0..tr.len())
                .map(|a| p.extents[a].div_ceil(tr[a].m) * tr[a].alpha)
                .product::<usize>();
    }
    (wino > 0).then(|| direct as f64 / wino as f64)
}

/// The share of the live phases whose input is transformed: consecutive phases that read
/// the same inputs share one transform (HiFi-GAN's k16 s8: 2 of 8).
fn input_share(phases: &[Phase]) -> f64 {
    let live: Vec<&Phase> = phases.iter().filter(|p| p.live() && !p.empty()).collect();
    let transformed = live
        .iter()
        .enumerate()
        .filter(|&(i, p)| i == 0 || !live[i - 1].same_input(p))
        .count();
    transformed as f64 / live.len().max(1) as f64
}

/// Most sources of a phase: the GEMMs' reduction is this many times `C_in/g`.
fn most_sources(phases: &[Phase]) -> usize {
    phases.iter().map(|p| p.sources.len()).max().unwrap_or(0)
}

/// The modelled speed-up of Winograd tiles over the direct engine: the cut in
/// multiplications ([`gain`]) times the GEMMs' relative efficiency, over one plus the
/// transforms' relative time, which falls as the channels grow (`INPUT_COST · share /
/// (C_out/g) + OUTPUT_COST / K`, `K = sources · C_in/g` the GEMMs' reduction, `share` the
/// fraction of the live phases whose input is transformed; for one axis, which keeps the
/// portable transforms, their input cost). Against the layers measured (forced, against the
/// direct engine at 1 thread, 3-4 alternating rounds, median / min): dcgan1 1.42
/// (1.27-1.82x / 1.28-1.56x), dcgan2 1.28 (1.15-1.18x / 1.38-1.40x), dcgan3 1.07
/// (0.96-0.99x / 1.04-1.16x with the portable transforms; 1.16-1.21x / 1.19-1.20x with
/// those in registers, 5 and 6 rounds), s1k3 1.19 (1.15-1.24x / 1.03-1.37x), dilated 1.19 (0.90x /
/// 1.25x), hifigan1d 1.23 (1.15x / 1.11x; its eight phases read two inputs, so the input
/// transform counts a quarter).
///
/// With `once` (a plan executed once) the weights' transform counts too:
/// `PACK_COST / (tiles of a phase)` more.
pub fn modeled_speedup(g: &Geometry, once: bool) -> Option<f64> {
    // One axis keeps the portable transforms (see `Winograd::new`).
    let cost = if g.axes.len() >= 2 {
        INPUT_COST
    } else {
        INPUT_COST_PORTABLE
    };
    speedup_with(g, once, cost)
}

/// [`modeled_speedup`] with the input transform costing `input_cost`.
pub(crate) fn speedup_with(g: &Geometry, once: bool, input_cost: f64) -> Option<f64> {
    let (tr, phases, _, _) = decompose(g)?;
    let sources = most_sources(&phases);
    let (cin, cout) = (
        (sources * g.in_per_group()) as f64,
        g.out_per_group() as f64,
    );
    if cin == 0.0 || cout == 0.0 {
        return None;
    }
    let tiles = tiles_of(g, &tr, &phases) as f64;
    let pack = if once { PACK_COST / tiles } else { 0.0 };
    let transforms = input_cost * input_share(&phases) / cout + OUTPUT_COST / cin + pack;
    gain_of(&tr, &phases).map(|x| x * GEMM_EFFICIENCY / (1.0 + transforms))
}

/// Tiles of the largest live phase over the whole batch: the GEMMs' columns (at least 1).
fn tiles_of(g: &Geometry, tr: &[Transform], phases: &[Phase]) -> usize {
    phases
        .iter()
        .filter(|p| p.live())
        .map(|p| {
            g.batch
                * (0..tr.len())
                    .map(|a| p.extents[a].div_ceil(tr[a].m))
                    .product::<usize>()
        })
        .max()
        .unwrap_or(0)
        .max(1)
}

/// Tiles of the largest live phase of `g` over the whole batch (the GEMMs' columns), or
/// `None` where Winograd tiles do not apply.
pub fn tiles(g: &Geometry) -> Option<usize> {
    let (tr, phases, _, _) = decompose(g)?;
    Some(tiles_of(g, &tr, &phases))
}

/// Whether the planner takes Winograd tiles for `g` (executed once with `once`): a
/// modelled speed-up of at least [`MIN_SPEEDUP`].
pub fn pays(g: &Geometry, once: bool) -> bool {
    g.batch > 0
        && g.in_per_group() * g.out_per_group() >= MIN_CHANNEL_PAIRS
        && modeled_speedup(g, once).is_some_and(|x| x >= MIN_SPEEDUP)
}

/// Groups with fewer `(input, output)` channel pairs are not modelled: the transforms cost
/// more than the multiplications they save. The model declined every one of 1 483 650
/// such geometries swept (both ops, 1-3 axes, every pair of channels per group with a
/// product under 16, kernels 1-16 (1-6 in 3-D), strides 1-8, dilations 1-3, three
/// paddings, extents 5-200, batch 1 and 16, planned to run once or not; the fewest pairs
/// it took were 31, in 3-D); its decomposition took 40 % of a depthwise layer's plan
/// (fcn_dw: 64 phases). The weight gradient's model ([`super::winograd_weight::pays`])
/// skips them too.
pub(crate) const MIN_CHANNEL_PAIRS: usize = 16;

/// Whether Winograd tiles can run `g` at all (what a forced choice needs).
pub fn applies(g: &Geometry) -> bool {
    decompose(g).is_some()
}

/// A plan's Winograd part: transforms, phases, packed transformed weights and task sizes.
pub struct Winograd<T: Element> {
    kernel: KernelFn<T>,
    /// Instruction set the transforms are compiled for (AVX2 where the plan's ISA has it).
    isa: Isa,
    /// Rows of the register tile (output channels).
    pub mr: usize,
    /// Vectors of the register tile.
    pub v: usize,
    /// Lanes per vector.
    pub lanes: usize,
    /// The transform per axis.
    pub transforms: Vec<Transform>,
    phases: Vec<Phase>,
    out_stride: Vec<usize>,
    /// Transformed points per tile: `Π α`.
    points: usize,
    blocks: usize,
    /// `U` packed as `[group][block][live phase][point][(source, ci)][mr]`, zero past the
    /// channels.
    packed: std::sync::Arc<scratch::Scratch<T>>,
    /// Tiles along axis 0 per task and images per task.
    band_tiles: usize,
    batch_chunk: usize,
    /// GEMM columns (tiles) of one task's phase, rounded up to whole register tiles.
    pub pitch: usize,
    /// Whether the transforms run in registers (f32 on AVX2, where the input copy fits
    /// the workspace bound).
    registers: bool,
    /// Output channels whose GEMM results a task holds at a time: all (`blocks · mr`), or
    /// where that would outgrow the workspace bound, `lcm(mr, CHUNK)`.
    slice: usize,
    /// Elements of scratch one task allocates ([`Winograd::scratch_len`]).
    task_len: usize,
    /// Whether most phases take the bias only (a dilation sharing a factor with the
    /// stride: 3 of 4 phases): then each task fills its band with the bias first, one
    /// contiguous pass per plane, and the live phases overwrite their positions.
    fill_first: bool,
    /// `Bᵀ ⊗ … ⊗ Bᵀ` (per point: its inputs `(line·α + j)`) and `Aᵀ ⊗ … ⊗ Aᵀ` (per
    /// output offset `(line·m + aw)`: its points) as nonzero terms, in `T`.
    in_terms: Vec<Vec<(usize, T)>>,
    out_terms: Vec<Vec<(usize, T)>>,
    /// `in_terms` in f32, for the transform in registers ([`super::winograd_input`]).
    in_terms_f32: Vec<Vec<(usize, f32)>>,
    /// How [`super::winograd_input`] forms the points.
    in_form: winograd_input::Points,
    /// `out_terms` in f32, and how [`super::winograd_input`] forms the outputs.
    out_terms_f32: Vec<Vec<(usize, f32)>>,
    out_form: winograd_input::Outputs,
    /// Input positions between a component's neighbours per axis (a strided conv's
    /// stride, else 1).
    in_stride: Vec<usize>,
    /// The GEMMs' reduction length: most sources of a phase times `C_in/g`.
    pub kdim: usize,
    /// Input and output extents and row-major pitches per axis.
    in_shape: Vec<usize>,
    in_pitch: Vec<usize>,
    out_pitch: Vec<usize>,
    /// `α` and `m` of every axis but the last.
    outer_alpha: Vec<usize>,
    outer_m: Vec<usize>,
}

/// The thread count the memory-bound choices are made for, whatever a plan runs on: the
/// tile ([`crate::Plan`]'s planner) and whether the transforms run in registers. They change
/// the results' rounding, which must not depend on the thread count; the bound is a target
/// at 1 and 2 threads (this machine kind's cores), and a plan on more threads may hold more.
pub const DECISION_THREADS: usize = 2;

/// Most spatial axes Winograd tiles take (a run holds its outer tile index in a fixed
/// array).
pub const MAX_DIMS: usize = 3;

/// Per-axis transforms as printed, e.g. `F(2x2,3x3)` (outputs, then taps).
pub(crate) fn tile_name(transforms: &[Transform]) -> String {
    let ms: Vec<String> = transforms.iter().map(|t| t.m.to_string()).collect();
    let rs: Vec<String> = transforms.iter().map(|t| t.r.to_string()).collect();
    format!("F({},{})", ms.join("x"), rs.join("x"))
}

/// [`kron_terms`] of one matrix of each axis's transform (`pick`: the matrix, its rows and
/// columns), the coefficients in the element type.
pub(crate) fn terms<T: Element>(
    transforms: &[Transform],
    pick: fn(&Transform) -> (&[f64], usize, usize),
) -> Vec<Vec<(usize, T)>> {
    let mats: Vec<(&[f64], usize, usize)> = transforms.iter().map(pick).collect();
    kron_terms(&mats)
        .into_iter()
        .map(|ts| {
            ts.into_iter()
                .map(|(i, c)| (i, T::from(c).unwrap_or_else(T::zero)))
                .collect()
        })
        .collect()
}

/// Nonzero terms of a tensor product of per-axis matrices: for each output multi-index
/// (row-major over `rows`), the `(input flat index, coefficient)` pairs.
fn kron_terms(mats: &[(&[f64], usize, usize)]) -> Vec<Vec<(usize, f64)>> {
    let rows: Vec<usize> = mats.iter().map(|m| m.1).collect();
    let cols: Vec<usize> = mats.iter().map(|m| m.2).collect();
    let mut out = Vec::new();
    for_each_index(&rows, |ri| {
        let mut terms = Vec::new();
        for_each_index(&cols, |ci| {
            let mut c = 1.0;
            let mut flat = 0;
            for (a, (m, _, nc)) in mats.iter().enumerate() {
                c *= m[ri[a] * nc + ci[a]];
                flat = flat * nc + ci[a];
            }
            if c != 0.0 {
                terms.push((flat, c));
            }
        });
        out.push(terms);
    });
    out
}

/// How a plan's work is cut into tasks: images and tile rows per task, the GEMMs' column
/// pitch, whether the transforms run in registers, the slice of output channels, and the
/// scratch a task holds.
struct Sizing {
    batch_chunk: usize,
    band_tiles: usize,
    pitch: usize,
    registers: bool,
    /// Whether the transforms would run in registers but for the workspace bound.
    registers_wanted: bool,
    /// Output channels whose GEMM results a task holds at a time (whole blocks).
    slice: usize,
    /// Elements of scratch one task allocates (see [`Winograd::scratch_len`]).
    task_len: usize,
    /// The most bytes of scratch all threads' tasks may hold ([`Bound::over`]).
    bound: usize,
}

/// Cut `g`'s work for an `mr × v` tile of `lanes`-wide vectors on `threads` threads, within
/// the scratch bound of [`Bound::of`].
fn sizing<T: Element>(
    g: &Geometry,
    transforms: &[Transform],
    phases: &[Phase],
    in_stride: &[usize],
    (mr, v, lanes, isa): (usize, usize, usize, Isa),
    threads: usize,
) -> Sizing {
    let bound = Bound::of::<T>(g, transforms, phases, in_stride, (lanes, isa));
    let tile = (mr, v, lanes, isa);
    sizing_within::<T>(g, transforms, phases, in_stride, tile, threads, bound)
}

/// Most bytes of scratch a Winograd plan holds over all its threads.
///
/// The output's size (issue 4's bound, tested on the suite), except for a conv whose input
/// is the larger (a strided conv: the input gradients) where not even the least task of any
/// tile fits that bound with the transforms as they would run: there the input's size per
/// thread. The direct engine copies such an input's components whole, plus its panels per
/// thread: dcgan1's input gradient (0.5 MB output, 1 MB input) holds 1.5 MB on it at 2
/// threads; the Winograd tiles' least task there, one 16-tile panel with the transforms in
/// registers, holds 0.85 MB, so under the output's bound they did not run at all.
///
/// That per-thread bound is doubled where the transformed weights exceed
/// [`STREAMED_WEIGHTS`]: every task streams them once, so tasks of twice the columns halve
/// that stream. dcgan1's input gradient (18.9 MB of them, 0.87 MB more scratch a thread for
/// 32 tiles a task instead of 16): 1.06-1.11x at 1 thread and 1.02-1.06x at 2 alone, its
/// backward pass 1.05-1.13x and 0.99-1.05x (`bench/paired.sh dcgan1 T 8`, medians and
/// minima of 6-8 alternating rounds, three sittings); with AVX2 1.22x and 0.99x (6 rounds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bound {
    bytes: usize,
    per_thread: bool,
}

impl Bound {
    fn of<T: Element>(
        g: &Geometry,
        transforms: &[Transform],
        phases: &[Phase],
        in_stride: &[usize],
        (lanes, isa): (usize, Isa),
    ) -> Bound {
        let elem = std::mem::size_of::<T>();
        let output = Bound {
            bytes: numel(&g.output_shape()) * elem,
            per_thread: false,
        };
        let input = numel(&g.input_shape()) * elem;
        if input <= output.bytes {
            return output;
        }
        // Decided for DECISION_THREADS, as the transforms are: the same on any thread count.
        let fits = super::kernels::tile_shapes(isa).iter().any(|&(mr, v, _)| {
            let tile = (mr, v, lanes, isa);
            let s = sizing_within::<T>(
                g,
                transforms,
                phases,
                in_stride,
                tile,
                DECISION_THREADS,
                output,
            );
            DECISION_THREADS * s.task_len * elem <= output.bytes
                && (s.registers || !s.registers_wanted)
        });
        if fits {
            return output;
        }
        let weights = transformed_weight_bytes::<T>(g, transforms, phases, g.out_per_group());
        let widen = if weights > STREAMED_WEIGHTS { 2 } else { 1 };
        Bound {
            bytes: widen * input,
            per_thread: true,
        }
    }

    /// The bound for `threads` threads.
    fn over(self, threads: usize) -> usize {
        if self.per_thread {
            threads.max(1) * self.bytes
        } else {
            self.bytes
        }
    }
}

/// Bytes of the transformed weights of `g`'s live phases, `rows` output channels a group
/// (the group's, or its register blocks' padded to whole blocks).
fn transformed_weight_bytes<T: Element>(
    g: &Geometry,
    transforms: &[Transform],
    phases: &[Phase],
    rows: usize,
) -> usize {
    let live = phases.iter().filter(|p| p.live()).count();
    let points: usize = transforms.iter().map(|t| t.alpha).product();
    let kdim = most_sources(phases) * g.in_per_group();
    g.groups * live * points * kdim * rows * std::mem::size_of::<T>()
}

/// [`sizing`] within `bound`.
fn sizing_within<T: Element>(
    g: &Geometry,
    transforms: &[Transform],
    phases: &[Phase],
    in_stride: &[usize],
    (mr, v, lanes, isa): (usize, usize, usize, Isa),
    threads: usize,
    bound: Bound,
) -> Sizing {
    let dims = g.axes.len();
    let cin_g = g.in_per_group();
    let kdim = most_sources(phases) * cin_g;
    let blocks = g.out_per_group().div_ceil(mr);
    let points: usize = transforms.iter().map(|t| t.alpha).product();
    let live: Vec<&Phase> = phases.iter().filter(|p| p.live()).collect();
    // Task sizes: about POINT_BYTES per point of transformed input and results, whole
    // images where they are small, else bands of tile rows; then a task per thread.
    let tl = v * lanes;
    let m0 = transforms[0].m;
    let q0 = phases.iter().map(|p| p.extents[0]).max().unwrap_or(0);
    let t0 = q0.div_ceil(m0).max(1);
    let row_tiles = live
        .iter()
        .map(|p| {
            (1..dims)
                .map(|a| p.extents[a].div_ceil(transforms[a].m))
                .product::<usize>()
        })
        .max()
        .unwrap_or(1)
        .max(1);
    let elem = std::mem::size_of::<T>();
    let per_col = (kdim + blocks * mr) * elem;
    let point_bytes = if most_sources(phases) > 1 {
        POINT_BYTES_SOURCES
    } else {
        POINT_BYTES
    };
    // No more scratch over all threads than the bound.
    let want = (point_bytes / per_col.max(1))
        .min(TASK_BYTES / (points * per_col).max(1))
        .min(bound.over(threads) / (threads.max(1) * points * per_col).max(1))
        / tl
        * tl;
    let want = want.max(tl);
    let per_image = t0 * row_tiles;
    let batch = g.batch.max(1);
    let (mut batch_chunk, mut band_tiles) = if per_image >= want {
        (1, (want / row_tiles).clamp(1, t0))
    } else {
        ((want / per_image).clamp(1, batch), t0)
    };
    let tasks = |bc: usize, bt: usize| g.groups * batch.div_ceil(bc) * t0.div_ceil(bt);
    // Halve the images per task, else the band; false where both are one.
    let halve = |bc: &mut usize, bt: &mut usize| {
        if *bc > 1 {
            *bc = bc.div_ceil(2);
        } else if *bt > 1 {
            *bt = bt.div_ceil(2);
        } else {
            return false;
        }
        true
    };
    while threads > 1
        && tasks(batch_chunk, band_tiles) < threads
        && halve(&mut batch_chunk, &mut band_tiles)
    {}
    let in_shape: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
    let outputs: usize = transforms.iter().map(|t| t.m).product();
    // The transforms in registers copy each task's input rows channels-last
    // ([`super::winograd_input`]): at most the rows its band of tiles spans (the
    // sources' offsets apart), for each of its images.
    // Not for one axis: there the portable gathers read consecutive positions, and
    // hifigan1d (512 channels, two of eight phases transforming) ran 0.91-0.94x with
    // the copy (alternating, minima of 5 and 8 rounds at 1 and 2 threads).
    let mut registers =
        super::as_f32::<T>(&[]).is_some() && isa >= Isa::Avx2 && tl.is_multiple_of(8) && dims >= 2;
    let registers_wanted = registers;
    let bases = live
        .iter()
        .flat_map(|p| p.sources.iter().map(|s| s.base[0]));
    let spread = (bases.clone().max().unwrap_or(0) - bases.min().unwrap_or(0)) as usize;
    let slab_len = |bc: usize, bt: usize, registers: bool| -> usize {
        let cpad = cin_g.div_ceil(8) * 8;
        let rows = ((m0 * (bt - 1) + transforms[0].alpha + spread) * in_stride[0] + in_stride[0])
            .min(in_shape[0]);
        if registers {
            bc * rows * numel(&in_shape[1..]) * cpad + cpad
        } else {
            0
        }
    };
    let rows_len = points.max(outputs) * CHUNK;
    let task_len = |bc: usize, bt: usize, registers: bool, slice: usize| -> usize {
        let pitch = super::im2col::pitch(bc * bt * row_tiles, tl, elem);
        points * (kdim + slice) * pitch + rows_len * pitch + slab_len(bc, bt, registers)
    };
    let over_on = |n: usize, bc: usize, bt: usize, registers: bool, slice: usize| {
        n.max(1) * task_len(bc, bt, registers, slice) * elem > bound.over(n)
    };
    // The GEMM results of all output channels at once, or, where that would not fit on
    // the smallest tasks halving reaches, of the fewest whole blocks that are whole
    // chunks of the output transform (lcm(mr, CHUNK) channels, at most 24), each slice
    // running over the whole transformed input again (on such tasks a few hundred KB:
    // dcgan1's is 295 KB on 16-tile panels, within a 1 MB L2).
    let full = blocks * mr;
    let least = lcm(mr, CHUNK).min(full);
    let (mut fbc, mut fbt) = (batch, t0);
    while fbc * fbt * row_tiles >= 2 * tl && halve(&mut fbc, &mut fbt) {}
    // Whether the transforms run in registers is decided for DECISION_THREADS threads,
    // whatever the plan runs on (the two transforms round differently), on the least
    // slice: the portable transforms (no copy of the input) where only they keep all
    // threads' scratch within the output.
    if over_on(DECISION_THREADS, fbc, fbt, registers, least)
        && !over_on(DECISION_THREADS, fbc, fbt, false, least)
    {
        registers = false;
    }
    let mut slice = if over_on(threads, fbc, fbt, registers, full) {
        least
    } else {
        full
    };
    // Halved while over the bound (as `want` above, now counting everything a task
    // holds), but not below a register panel's columns (dcgan1's input gradient,
    // whose output is half its input, ran 5x slower in tasks of one tile row).
    let halved = |mut bc: usize, mut bt: usize, slice: usize| {
        while over_on(threads, bc, bt, registers, slice)
            && bc * bt * row_tiles >= 2 * tl
            && halve(&mut bc, &mut bt)
        {}
        (bc, bt)
    };
    let wanted = (batch_chunk, band_tiles);
    let (mut batch_chunk, mut band_tiles) = halved(wanted.0, wanted.1, slice);
    // Where that leaves a task one register panel of columns and the packed weights, which
    // every task streams once, are larger than `STREAMED_WEIGHTS`, the results of the
    // least slice of output channels at a time if the bound then holds two panels or more:
    // each packed weight block then serves as many kernel calls per task, the weights
    // stream half as often or less (the transformed input, re-read per slice, stays in
    // L2). dcgan1's forward pass at 1 thread (19.5 MB of packed weights): 32 columns
    // instead of 16, 1.06-1.42x faster on AVX-512 (median / min of alternating rounds, two
    // sittings of 6 and 8) with 1.2-1.4x fewer perf samples (3 rounds), 1.44-1.46x with
    // AVX2 (6 rounds). Where the weights are smaller it did not pay: dcgan2's input
    // gradient at 1 thread and its forward pass at 2, dcgan3's input gradient at 2 (4.9,
    // 4.9 and 1.2 MB) read 0.97-1.05x.
    let weight_bytes = transformed_weight_bytes::<T>(g, transforms, phases, blocks * mr);
    if slice == full
        && least < full
        && weight_bytes > STREAMED_WEIGHTS
        && batch_chunk * band_tiles * row_tiles <= tl
    {
        let (bc, bt) = halved(wanted.0, wanted.1, least);
        if bc * bt * row_tiles >= 2 * tl && !over_on(threads, bc, bt, registers, least) {
            (slice, batch_chunk, band_tiles) = (least, bc, bt);
        }
    }
    let cols = batch_chunk * band_tiles * row_tiles;
    Sizing {
        batch_chunk,
        band_tiles,
        pitch: super::im2col::pitch(cols, tl, elem),
        registers,
        registers_wanted,
        slice,
        task_len: task_len(batch_chunk, band_tiles, registers, slice),
        bound: bound.over(threads),
    }
}

/// A band's outputs of one channel from its output transform's rows `y`: each segment
/// `(row offset in y, offset in the plane, n)` to `n` positions `step` apart. With step 2
/// (tiles 2 wide on an output of one phase: s1k3's, and the input gradients of the strided
/// layers), a tile's two columns are two segments one position apart, interleaved by vectors
/// (their element-by-element stores took about a seventh of s1k3's forward pass). With step
/// 4 (2-wide tiles of a stride-2 phase: dcgan1-3), the two columns are two positions apart,
/// and on AVX-512 (`avx512`) they go out four tiles at a time, interleaved in a register and
/// written with one masked store (element by element they took 10-18 % of dcgan2-3's forward
/// pass). Either way the same values to the same places as one by one.
fn scatter_outputs<T: Element>(
    plane: &mut [T],
    y: &[T],
    segments: &[(usize, usize, usize)],
    step: usize,
    avx512: bool,
) {
    let mut i = 0;
    while i < segments.len() {
        let (yi, off, n) = segments[i];
        // A tile's other column: the next segment, half a step further.
        let pair = segments
            .get(i + 1)
            .filter(|&&(_, next, m)| m == n && next == off + step / 2);
        if let Some(&(yj, ..)) = pair {
            let (a, c) = (&y[yi..yi + n], &y[yj..yj + n]);
            // (Runs shorter than a vector stay element by element.)
            let stored = match step {
                2 => n >= 8 && super::direct::interleave2(&mut plane[off..off + 2 * n], a, c, None),
                4 => avx512 && n >= 4 && store_pairs_2_apart(&mut plane[off..], a, c),
                _ => false,
            };
            if stored {
                i += 2;
                continue;
            }
        }
        for (d, &v) in plane[off..].iter_mut().step_by(step).zip(&y[yi..yi + n]) {
            *d = v;
        }
        i += 1;
    }
}

/// `dst[4k] = a[k]`, `dst[4k + 2] = c[k]` for every `k`, leaving the other positions as they
/// are, with AVX-512 for f32 (four `k` a masked store); `false` (nothing done) where that
/// path does not apply. `dst` must hold position `4·(len - 1) + 2`.
fn store_pairs_2_apart<T: Element>(dst: &mut [T], a: &[T], c: &[T]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (Some(d), Some(a), Some(c)) =
        (super::as_f32_mut(dst), super::as_f32(a), super::as_f32(c))
    {
        if is_x86_feature_detected!("avx512f") {
            let n = a.len();
            assert!(
                c.len() == n && (n == 0 || d.len() > 4 * (n - 1) + 2),
                "store_pairs_2_apart lengths"
            );
            // Safety: AVX-512F was detected; the lengths were checked above.
            unsafe { store_pairs_2_apart_avx512(d, a, c) };
            return true;
        }
    }
    let _ = (dst, a, c);
    false
}

/// # Safety
/// AVX-512F available; `c.len() == a.len()` and `dst` holds position `4·(a.len() − 1) + 2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_pairs_2_apart_avx512(dst: &mut [f32], a: &[f32], c: &[f32]) {
    use std::arch::x86_64::*;
    let n = a.len();
    // Lanes 4j and 4j + 2 take a[j] and c[j] (indices of c from 16); the odd lanes are
    // masked off.
    let idx = _mm512_setr_epi32(0, 0, 16, 0, 1, 0, 17, 0, 2, 0, 18, 0, 3, 0, 19, 0);
    let mask: __mmask16 = 0b0101_0101_0101_0101;
    let mut k = 0;
    // Whole vectors only where all 16 positions lie in `dst`.
    while k + 4 <= n && 4 * k + 16 <= dst.len() {
        let av = _mm512_castps128_ps512(_mm_loadu_ps(a.as_ptr().add(k)));
        let cv = _mm512_castps128_ps512(_mm_loadu_ps(c.as_ptr().add(k)));
        let v = _mm512_permutex2var_ps(av, idx, cv);
        _mm512_mask_storeu_ps(dst.as_mut_ptr().add(4 * k), mask, v);
        k += 4;
    }
    for j in k..n {
        dst[4 * j] = a[j];
        dst[4 * j + 2] = c[j];
    }
}

/// Least common multiple.
fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x.max(1) * b
}

/// What a plan of `g` with a given tile would hold and how it would transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes of scratch all threads' tasks hold at once (as
    /// [`crate::Plan::workspace_bytes`] reports).
    pub bytes: usize,
    /// Whether the transforms run in registers ([`super::winograd_input`]); decided for
    /// [`DECISION_THREADS`] threads.
    pub registers: bool,
    /// Whether they would but for the workspace bound (f32, AVX2 or better, 2 or 3 axes).
    pub registers_wanted: bool,
    /// The most bytes of scratch allowed: the output's size, or, for a strided conv that
    /// no tile could run within it, the input's size per thread (twice that where the
    /// transformed weights exceed 16 MiB).
    pub bound: usize,
}

/// The [`Footprint`] of a plan of `g` with an `mr × v` tile of `lanes`-wide vectors on
/// `threads` threads, or `None` where Winograd tiles do not apply. Cheap: nothing is packed.
pub fn footprint<T: Element>(
    g: &Geometry,
    (mr, v, lanes, isa): (usize, usize, usize, Isa),
    threads: usize,
) -> Option<Footprint> {
    let (transforms, phases, _, in_stride) = decompose(g)?;
    let tile = (mr, v, lanes, isa);
    let s = sizing::<T>(g, &transforms, &phases, &in_stride, tile, threads);
    Some(Footprint {
        bytes: threads.max(1) * s.task_len * std::mem::size_of::<T>(),
        registers: s.registers,
        registers_wanted: s.registers_wanted,
        bound: s.bound,
    })
}

impl<T: Element> Winograd<T> {
    /// Plan `g` (where [`applies`]) with weight `w` for `kernel`, an `mr × v` tile of
    /// `lanes`-wide vectors, with enough tasks for `threads` threads; the transformed
    /// weights packed into a pooled scratch buffer where `pooled` (see
    /// [`super::pack::pack_weights`]), and taken from or kept in `packs` where given.
    pub fn new(
        g: &Geometry,
        w: &[T],
        kernel: KernelFn<T>,
        (mr, v, lanes, isa): (usize, usize, usize, Isa),
        (threads, pooled): (usize, bool),
        packs: Option<&PackCache>,
    ) -> Option<Winograd<T>> {
        let (transforms, phases, out_stride, in_stride) = decompose(g)?;
        let dims = g.axes.len();
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        // The GEMMs' reduction: (source, input channel).
        let kdim = most_sources(&phases) * cin_g;
        let blocks = cout_g.div_ceil(mr);
        let points: usize = transforms.iter().map(|t| t.alpha).product();
        let taps: usize = transforms.iter().map(|t| t.r).product();
        // Per point, its `(tap, coefficient)` terms of `G ⊗ … ⊗ G`, in the element type.
        let gterms: Vec<Vec<(usize, T)>> = terms(&transforms, |t| (t.g.as_slice(), t.alpha, t.r));
        let kshape = g.kernel_shape();
        let kpitch = pitches_of(&kshape);
        let ksize = numel(&kshape);
        let live: Vec<&Phase> = phases.iter().filter(|p| p.live()).collect();
        // Packed as [group][block][live phase][point][(source, ci)][mr]: one contiguous
        // unit per (group, block), packed in parallel.
        let unit = live.len() * points * kdim * mr;
        let units = g.groups * blocks;
        let rs: Vec<usize> = transforms.iter().map(|t| t.r).collect();
        // Flat kernel index of each tap of each source of each live phase (row-major over
        // its taps).
        let kflat: Vec<Vec<Vec<usize>>> = live
            .iter()
            .map(|p| {
                p.sources
                    .iter()
                    .map(|src| {
                        let mut k = Vec::with_capacity(taps);
                        for_each_index(&rs, |j| {
                            k.push(
                                (0..dims)
                                    .map(|a| src.kidx[a][j[a]] * kpitch[a])
                                    .sum::<usize>(),
                            );
                        });
                        k
                    })
                    .collect()
            })
            .collect();
        // Weight index of (ci, co) for channel offsets within the group.
        let (ci_step, co_step) = match g.op {
            Op::ConvTranspose => (cout_g * ksize, ksize),
            Op::Conv => (ksize, cin_g * ksize),
        };
        let per_phase = points * kdim * mr;
        let identity: Vec<usize> = (0..ksize).collect();
        // One (source, point) run of U: `C_in/g × mr` values, contiguous in the packing.
        let run = cin_g * mr;
        // What the packing depends on besides `w`: the channel layout, the tile's rows, the
        // transforms (and the ISA computing them) and every live phase's sources' taps.
        let key = || {
            let mut key = vec![
                2, // this packing
                g.op as usize,
                g.groups,
                cin_g,
                cout_g,
                ksize,
                mr,
                isa as usize,
                kdim,
            ];
            key.extend(transforms.iter().flat_map(|t| [t.m, t.r]));
            for sources in &kflat {
                key.push(sources.len());
                for k in sources {
                    key.push(k.len());
                    key.extend(k);
                }
            }
            key
        };
        // A pooled buffer holds stale values (zero-filling and page-faulting 19.5 MB afresh
        // took 5-6 % of dcgan1's input gradient): every value is written below.
        let pack = || {
            let mut packed = if pooled {
                scratch::take::<T>(units * unit)
            } else {
                scratch::owned::<T>(units * unit)
            };
            super::direct::run_chunks(threads, &mut packed, unit, |k, dst| {
                let (group, b) = (k / blocks, k % blocks);
                let rows = mr.min(cout_g - b * mr);
                let first = match g.op {
                    Op::ConvTranspose => group * cin_g * cout_g * ksize,
                    Op::Conv => group * cout_g * cin_g * ksize,
                } + b * mr * co_step;
                // The block's kernels as `wk[tap position][ci][mm]` (zero past the last output
                // channel), each weight read once: every U run of a (phase, source, point) is
                // then a combination of whole runs of `wk`, one vectorised pass each.
                let mut wk = vec![T::zero(); ksize * run];
                let kernels = super::pack::BlockKernels {
                    w,
                    base: first,
                    ci_step,
                    co_step,
                    ksize,
                    live: rows,
                    cin: cin_g,
                    mr,
                };
                kernels.by_tap(&identity, &mut wk, run);
                let terms = KernelTerms {
                    kflat: &kflat,
                    gterms: &gterms,
                    wk: &wk,
                    run,
                    per_phase,
                    kdim,
                    cin: cin_g,
                    mr,
                };
                transform_kernels(isa, &terms, dst);
                // The sources a phase lacks (fewer than the most a phase has), if any: zeros.
                // (No such decomposition turned up in a sweep of 1-D geometries, kernels
                // 1-6, strides 1-4, dilations 1-3, pads 0-3 at each end, both ops; this
                // keeps a stale pooled buffer harmless should one exist.)
                for (pi, sources) in kflat.iter().enumerate() {
                    for xi in 0..points {
                        let at = pi * per_phase + xi * kdim * mr;
                        dst[at + sources.len() * run..at + kdim * mr].fill(T::zero());
                    }
                }
            });
            packed
        };
        let bytes = |p: &scratch::Scratch<T>| p.len() * std::mem::size_of::<T>();
        let packed = PackCache::get_or_pack(packs, key, pack, bytes);
        let Sizing {
            batch_chunk,
            band_tiles,
            pitch,
            registers,
            slice,
            task_len,
            ..
        } = sizing::<T>(
            g,
            &transforms,
            &phases,
            &in_stride,
            (mr, v, lanes, isa),
            threads,
        );
        let in_shape: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
        let in_terms = terms(&transforms, |t| (t.bt.as_slice(), t.alpha, t.alpha));
        let out_terms = terms(&transforms, |t| (t.at.as_slice(), t.m, t.alpha));
        let out_shape: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
        let bias_only = phases.iter().filter(|p| !p.live() && !p.empty()).count();
        let fill_first = 2 * bias_only >= phases.len();
        Some(Winograd {
            kernel,
            isa,
            mr,
            v,
            lanes,
            phases,
            out_stride,
            points,
            blocks,
            packed,
            band_tiles,
            batch_chunk,
            pitch,
            registers,
            slice,
            task_len,
            fill_first,
            in_terms_f32: terms(&transforms, |t| (t.bt.as_slice(), t.alpha, t.alpha)),
            in_form: winograd_input::Points::of(&transforms),
            out_terms_f32: terms(&transforms, |t| (t.at.as_slice(), t.m, t.alpha)),
            out_form: winograd_input::Outputs::of(&transforms),
            in_terms,
            out_terms,
            in_pitch: pitches_of(&in_shape),
            in_stride,
            kdim,
            in_shape,
            out_pitch: pitches_of(&out_shape),
            outer_alpha: transforms[..dims - 1].iter().map(|t| t.alpha).collect(),
            outer_m: transforms[..dims - 1].iter().map(|t| t.m).collect(),
            transforms,
        })
    }

    /// The packed transformed weights' address (which a [`super::pack::PackCache`] may
    /// hold).
    pub(crate) fn packing_id(&self) -> *const () {
        std::sync::Arc::as_ptr(&self.packed) as *const ()
    }

    /// Bytes of the packed transformed weights.
    pub fn packed_bytes(&self) -> usize {
        self.packed.len() * std::mem::size_of::<T>()
    }

    /// Elements of scratch one task allocates: transformed input and GEMM results for a
    /// band, the row buffers of the transforms and the channels-last input copy.
    pub fn scratch_len(&self) -> usize {
        self.task_len
    }

    /// Elements of the transforms' buffers: the gathered inputs of every tile (`α^D` rows),
    /// or the output transform's results (`m^D` rows), for [`CHUNK`] channels.
    fn row_scratch(&self) -> usize {
        self.points.max(self.out_terms.len()) * CHUNK * self.pitch
    }

    /// The Winograd tile as printed, e.g. `F(2x2,3x3)`.
    pub fn name(&self) -> String {
        tile_name(&self.transforms)
    }

    /// Phases with taps.
    pub fn live_phases(&self) -> usize {
        self.phases.iter().filter(|p| p.live()).count()
    }

    /// Run on `x (N, C_in, *in)` into `y (N, C_out, *out)`, adding `bias`.
    pub fn execute(&self, g: &Geometry, x: &[T], bias: Option<&[T]>, y: &mut [T], threads: usize) {
        let out_shape = g.output_shape();
        let out_plane = numel(&out_shape[2..]);
        if out_plane == 0 || g.batch == 0 || g.out_channels == 0 {
            return;
        }
        let row_len = numel(&out_shape[3..]);
        let out0 = out_shape[2];
        let (s0, m0) = (self.out_stride[0], self.transforms[0].m);
        let q0 = self.phases.iter().map(|p| p.extents[0]).max().unwrap_or(0);
        let t0 = q0.div_ceil(m0).max(1);
        // One task per (group, batch chunk, band of tile rows along axis 0).
        let bands: Vec<(Range<usize>, usize)> = (0..t0.div_ceil(self.band_tiles))
            .map(|b| {
                let tiles = b * self.band_tiles..((b + 1) * self.band_tiles).min(t0);
                let rows = (s0 * m0 * tiles.start).min(out0)..(s0 * m0 * tiles.end).min(out0);
                (tiles, rows.len() * row_len)
            })
            .collect();
        let tasks = band_tasks(g, y, self.batch_chunk, &bands);
        let avx2 = cfg!(target_arch = "x86_64") && self.isa >= Isa::Avx2 && Isa::Avx2.available();
        run_each(threads, tasks, |task| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // Safety: AVX2 and FMA are available (checked just above).
                unsafe { self.run_task_avx2(g, x, bias, task) };
                return;
            }
            let _ = avx2;
            self.run_task(g, x, bias, task, false);
        });
    }

    /// [`Self::run_task`] compiled for AVX2 and FMA: the transforms' loops vectorised 8
    /// lanes wide.
    ///
    /// # Safety
    /// AVX2 and FMA available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_task_avx2(&self, g: &Geometry, x: &[T], bias: Option<&[T]>, task: Task<'_, T>) {
        self.run_task(g, x, bias, task, true);
    }

    /// One task; with `avx2` (AVX2 and FMA available), f32 inputs are transformed in
    /// registers from a channels-last copy of the band's input rows
    /// ([`super::winograd_input`]).
    #[inline(always)]
    fn run_task(
        &self,
        g: &Geometry,
        x: &[T],
        bias: Option<&[T]>,
        mut task: Task<'_, T>,
        avx2: bool,
    ) {
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let slice = self.slice;
        let pitch = self.pitch;
        // The plan's ISA, for the output stores (AVX-512's masked stores where it is).
        let avx512 = self.isa == Isa::Avx512;
        let kdim = self.kdim;
        let tl = self.v * self.lanes;
        // The transforms in registers (f32 only; `registers` implies it).
        let registers = avx2 && self.registers;
        let slab = match super::as_f32(x) {
            Some(x) if registers => self.slab(g, x, &task),
            _ => None,
        };
        let mut v = scratch::take::<T>(self.points * kdim * pitch);
        let mut mres = scratch::take::<T>(self.points * slice * pitch);
        let mut rows = scratch::take::<T>(self.row_scratch());
        let unit = self.live_phases() * self.points * kdim * self.mr;
        let mut live_index = 0;
        // The phase whose transformed input `v` holds: consecutive phases that read the
        // same inputs (HiFi-GAN's k16 s8: four phases per base) transform it once.
        let mut v_of: Option<&Phase> = None;
        if self.fill_first {
            let cout_g = g.out_per_group();
            for (k, plane) in task.planes.iter_mut().enumerate() {
                plane.fill(bias.map_or(T::zero(), |b| b[task.group * cout_g + k % cout_g]));
            }
        }
        for p in &self.phases {
            if p.empty() {
                if p.live() {
                    live_index += 1;
                }
                continue;
            }
            if !p.live() {
                if !self.fill_first {
                    self.fill_bias(g, p, bias, &mut task);
                }
                continue;
            }
            let runs = self.runs(g, p, &task);
            let n_cols: usize = runs.iter().map(|r| r.tiles.len()).sum();
            if n_cols == 0 {
                live_index += 1;
                continue;
            }
            let in_plane = numel(&self.in_shape);
            // V[ξ][(source, ci)]: each source's channels in turn (none where `v` holds it).
            let sources = if v_of.is_some_and(|q| q.same_input(p)) {
                &[][..]
            } else {
                self.clear_columns(n_cols, &mut rows);
                &p.sources[..]
            };
            v_of = Some(p);
            // Columns the GEMMs run over: whole register panels.
            let n_pad = n_cols.div_ceil(tl) * tl;
            for (si, src) in sources.iter().enumerate() {
                let (table, zeros) = self.gather_table(g, src, task.group, &runs, n_cols);
                let fast = slab.as_ref().and_then(|slab| {
                    let offs =
                        slab.offsets((&table, &zeros), (n_cols, n_pad, pitch), self.points)?;
                    Some((slab, offs, super::as_f32_mut(&mut v)?))
                });
                if let Some((slab, offs, v)) = fast {
                    let rows = (si * cin_g, pitch, kdim * pitch);
                    let form = (&self.in_terms_f32[..], self.in_form);
                    winograd_input::transform(slab, &offs, form, cin_g, v, rows);
                    continue;
                }
                for c0 in (0..cin_g).step_by(CHUNK) {
                    let cn = CHUNK.min(cin_g - c0);
                    let dst = &mut v[(si * cin_g + c0) * pitch..];
                    let gather = (&table[..], &zeros[..]);
                    let chans = (c0, cn, in_plane);
                    let v = (dst, kdim * pitch);
                    self.input_transform(x, chans, gather, n_cols, v, &mut rows);
                }
            }
            let k = p.sources.len() * cin_g;
            let shape = Rows {
                k,
                pitch,
                taps: 1,
                out_pitch: pitch,
            };
            let (scatter, spans) = self.scatter_table(g, p, &runs, task.band.start);
            let step = self.out_stride[g.axes.len() - 1] * self.transforms[g.axes.len() - 1].m;
            let per_slice = slice / self.mr;
            for b0 in (0..self.blocks).step_by(per_slice) {
                let blocks = b0..self.blocks.min(b0 + per_slice);
                for xi in 0..self.points {
                    let b_rows = &v[xi * kdim * pitch..];
                    for b in blocks.clone() {
                        let at = (task.group * self.blocks + b) * unit
                            + (live_index * self.points + xi) * kdim * self.mr;
                        let w = &self.packed[at..at + k * self.mr];
                        for p0 in (0..n_cols).step_by(tl) {
                            let out = &mut mres[(xi * slice + (b - b0) * self.mr) * pitch + p0..];
                            (self.kernel)(w, &b_rows[p0..], shape, out, false);
                        }
                    }
                }
                // The slice's channels, CHUNK at a time (`c0` from the slice's start).
                let first = b0 * self.mr;
                let mut b = [T::zero(); CHUNK];
                for c0 in (first..cout_g.min(first + slice)).step_by(CHUNK) {
                    let cn = CHUNK.min(cout_g - c0);
                    for (cc, b) in b[..cn].iter_mut().enumerate() {
                        *b = bias.map_or(T::zero(), |bias| bias[task.group * cout_g + c0 + cc]);
                    }
                    let m_at = (c0 - first) * pitch;
                    let y = match (super::as_f32(&mres), super::as_f32(&b[..cn])) {
                        (Some(m), Some(b)) if registers => {
                            let r32 = super::as_f32_mut(&mut rows).expect("f32 like the results");
                            let args = winograd_input::OutputArgs {
                                mres: &m[m_at..],
                                point_stride: slice * pitch,
                                pitch,
                                cols: n_pad,
                                bias: b,
                                block: CHUNK * pitch,
                            };
                            let form = (&self.out_terms_f32[..], self.out_form);
                            winograd_input::output(&args, form, self.points, r32);
                            &rows[..]
                        }
                        _ => self.output_transform(cn, &mres[m_at..], &b[..cn], &mut rows),
                    };
                    for cc in 0..cn {
                        let y = &y[cc * pitch..];
                        for (image, span) in &spans {
                            let plane = &mut *task.planes[image * cout_g + c0 + cc];
                            scatter_outputs(plane, y, &scatter[span.clone()], step, avx512);
                        }
                    }
                }
            }
            live_index += 1;
        }
    }

    /// The channels-last copy of the input rows (axis 0) a task reads, over every source of
    /// every live phase; `None` where it reads none.
    fn slab(&self, g: &Geometry, x: &[f32], task: &Task<'_, T>) -> Option<Slab> {
        let (m0, alpha0) = (self.transforms[0].m, self.transforms[0].alpha);
        let (s0, in0) = (self.in_stride[0], self.in_shape[0]);
        let mut rows: Option<Range<usize>> = None;
        for p in self.phases.iter().filter(|p| p.live() && !p.empty()) {
            let tiles0 = p.extents[0].div_ceil(m0);
            let band = task.band.start.min(tiles0)..task.band.end.min(tiles0);
            if band.is_empty() {
                continue;
            }
            for src in &p.sources {
                let u_lo = (m0 * band.start) as isize + src.base[0];
                let u_hi = (m0 * (band.end - 1) + alpha0 - 1) as isize + src.base[0];
                let pos = |u: isize| u * s0 as isize + src.comp[0] as isize;
                let lo = pos(u_lo).clamp(0, in0 as isize) as usize;
                let hi = (pos(u_hi) + 1).clamp(0, in0 as isize) as usize;
                if lo < hi {
                    rows = Some(rows.map_or(lo..hi, |r| r.start.min(lo)..r.end.max(hi)));
                }
            }
        }
        let source = SlabSource {
            channels: g.in_channels,
            cin_g: g.in_per_group(),
            group: task.group,
            in_plane: numel(&self.in_shape),
            row_len: numel(&self.in_shape[1..]),
            rows: rows?,
            batch: task.batch.clone(),
        };
        Some(Slab::new(x, &source))
    }

    /// The runs of tiles a task's phase `p` covers, in GEMM column order: per image and
    /// outer tile index, a range of tiles along the last axis.
    fn runs(&self, g: &Geometry, p: &Phase, task: &Task<'_, T>) -> Vec<Run> {
        let dims = g.axes.len();
        let tiles: Vec<usize> = (0..dims)
            .map(|a| p.extents[a].div_ceil(self.transforms[a].m))
            .collect();
        let band = task.band.start.min(tiles[0])..task.band.end.min(tiles[0]);
        let mut runs = Vec::new();
        let mut col = 0;
        for image in 0..task.batch.len() {
            if dims == 1 {
                runs.push(Run {
                    image,
                    n: task.batch.start + image,
                    outer: [0; MAX_DIMS],
                    tiles: band.clone(),
                    col,
                });
                col += band.len();
                continue;
            }
            let mut extent: Vec<usize> = tiles[..dims - 1].to_vec();
            extent[0] = band.len();
            for_each_index(&extent, |i| {
                let mut outer = [0; MAX_DIMS];
                outer[..dims - 1].copy_from_slice(i);
                outer[0] += band.start;
                runs.push(Run {
                    image,
                    n: task.batch.start + image,
                    outer,
                    tiles: 0..tiles[dims - 1],
                    col,
                });
                col += tiles[dims - 1];
            });
        }
        runs
    }

    /// Where each tile input of a task's phase comes from: for outer line `l`, tap `j`
    /// of the last axis and column `c`, entry `(l·α + j)·n + c` is the index into `x` for
    /// input channel 0 of `group` (add `ci · plane` for channel `ci`); padding reads the
    /// image's first element and is listed in the second vector (`(l·α + j)·pitch + c`),
    /// to be zeroed after the gather.
    #[inline(always)]
    fn gather_table(
        &self,
        g: &Geometry,
        src: &Source,
        group: usize,
        runs: &[Run],
        n: usize,
    ) -> (Vec<usize>, Vec<usize>) {
        let dims = g.axes.len();
        let last = &self.transforms[dims - 1];
        let (m, alpha) = (last.m, last.alpha);
        let in_plane = numel(&self.in_shape);
        let lines = self.points / alpha;
        let l_in = self.in_shape[dims - 1] as isize;
        let s_last = self.in_stride[dims - 1] as isize;
        let mut table = vec![0usize; lines * alpha * n];
        let mut zeros = Vec::new();
        for run in runs {
            let chan = (run.n * g.in_channels + group * g.in_per_group()) * in_plane;
            let mut li = 0;
            for_each_index(&self.outer_alpha, |io| {
                let line = li;
                li += 1;
                let mut off = Some(chan as isize);
                for (a, &i) in io.iter().enumerate() {
                    let u =
                        (self.transforms[a].m * run.outer[a]) as isize + src.base[a] + i as isize;
                    let c = u * self.in_stride[a] as isize + src.comp[a] as isize;
                    off = off
                        .filter(|_| u >= 0 && c < self.in_shape[a] as isize)
                        .map(|o| o + c * self.in_pitch[a] as isize);
                }
                for j in 0..alpha {
                    let row = (line * alpha + j) * n + run.col;
                    for (k, t) in run.tiles.clone().enumerate() {
                        let u = (m * t) as isize + src.base[dims - 1] + j as isize;
                        let pos = u * s_last + src.comp[dims - 1] as isize;
                        match off {
                            Some(o) if u >= 0 && pos < l_in => table[row + k] = (o + pos) as usize,
                            _ => {
                                table[row + k] = chan;
                                zeros.push((line * alpha + j) * self.pitch + run.col + k);
                            }
                        }
                    }
                }
            });
        }
        (table, zeros)
    }

    /// `V[ξ][c0..c0 + cn][..]` (`v` starts at `V[0][c0]`; points `point_stride` apart)
    /// for input channels `c0..c0 + cn` (at most [`CHUNK`]) of one source over a task's
    /// phase: each tile's `α^D` inputs gathered through `table` ([`Self::gather_table`])
    /// into rows `(line, j)` of `cn · pitch` values (channel-major), then each point
    /// `(Bᵀ ⊗ … ⊗ Bᵀ) d` one loop over all `cn · pitch` values per four terms. Columns past
    /// `n` of `rows` must hold zeros (see [`Self::clear_columns`]).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn input_transform(
        &self,
        x: &[T],
        (c0, cn, plane): (usize, usize, usize),
        (table, zeros): (&[usize], &[usize]),
        n: usize,
        (v, point_stride): (&mut [T], usize),
        rows: &mut [T],
    ) {
        let alpha = self.transforms.last().expect("one axis at least").alpha;
        let lines = self.points / alpha;
        let pitch = self.pitch;
        let block = CHUNK * pitch;
        let len = cn * pitch;
        // d[line][j][cc][col]: the `α^D` inputs of each tile.
        let (d, _) = rows.split_at_mut(lines * alpha * block);
        for cc in 0..cn {
            let x = &x[(c0 + cc) * plane..];
            let rows = d.chunks_exact_mut(block).zip(table.chunks_exact(n));
            for (drow, trow) in rows {
                for (e, &i) in drow[cc * pitch..][..n].iter_mut().zip(trow) {
                    *e = x[i];
                }
            }
            for &z in zeros {
                d[(z / pitch) * block + cc * pitch + z % pitch] = T::zero();
            }
        }
        // V[ξ] = Σ (Bᵀ ⊗ … ⊗ Bᵀ)[ξ][(line, j)] · d[line][j].
        for (xi, terms) in self.in_terms.iter().enumerate() {
            let dst = &mut v[xi * point_stride..][..len];
            combine(dst, d, block, terms, false);
        }
    }

    /// Zero the columns `n..pitch` of every channel of every gathered row `(line, j)` of
    /// `rows` (the gather writes only the first `n`; the transforms run over whole rows).
    fn clear_columns(&self, n: usize, rows: &mut [T]) {
        let alpha = self.transforms.last().expect("one axis at least").alpha;
        let lines = self.points / alpha;
        for row in rows[..lines * alpha * CHUNK * self.pitch].chunks_exact_mut(self.pitch) {
            row[n..].fill(T::zero());
        }
    }

    /// Where the outputs of a task's phase go: segments `(index into the output
    /// transform's results, index into the image's plane band, count)`, each a run of
    /// tiles' outputs at one offset within the tile (consecutive results, stored
    /// `out_stride · m` apart along the last axis), and per run its image and range of
    /// segments. `band_start` is the band's first tile along axis 0.
    #[allow(clippy::type_complexity)]
    fn scatter_table(
        &self,
        g: &Geometry,
        p: &Phase,
        runs: &[Run],
        band_start: usize,
    ) -> (Vec<(usize, usize, usize)>, Vec<(usize, Range<usize>)>) {
        let dims = g.axes.len();
        let m = self.transforms[dims - 1].m;
        let pitch = self.pitch;
        let out_pitch = &self.out_pitch;
        // The plane slices start at output row s0·m0·band_start of axis 0.
        let origin = self.out_stride[0] * self.transforms[0].m * band_start * out_pitch[0];
        let (sl, rl, ql) = (
            self.out_stride[dims - 1],
            p.residue[dims - 1],
            p.extents[dims - 1],
        );
        let mut segments = Vec::new();
        let mut spans = Vec::new();
        for run in runs {
            let start = segments.len();
            let mut ao_flat = 0;
            for_each_index(&self.outer_m, |ao| {
                let line = ao_flat;
                ao_flat += 1;
                let mut base = 0usize;
                for a in 0..dims - 1 {
                    let q = self.transforms[a].m * run.outer[a] + ao[a];
                    if q >= p.extents[a] {
                        return;
                    }
                    base += (self.out_stride[a] * q + p.residue[a]) * out_pitch[a];
                }
                for aw in 0..m {
                    // The run's tiles whose output at `aw` lies inside the phase: a prefix.
                    let n = run.tiles.clone().filter(|&t| m * t + aw < ql).count();
                    if n > 0 {
                        let q = m * run.tiles.start + aw;
                        // At or after the band's start (axis 0's term is in `base`, or is
                        // the last axis's own).
                        let at = base + sl * q + rl - origin;
                        segments.push(((line * m + aw) * CHUNK * pitch + run.col, at, n));
                    }
                }
            });
            spans.push((run.image, start..segments.len()));
        }
        (segments, spans)
    }

    /// `y = Aᵀ M A + bias` for output channels `c0..c0 + cn` (at most [`CHUNK`]; `mres`
    /// starts at `M[0][c0]`, points `slice · pitch` apart), in `rows`:
    /// `y[(ao·m + aw)·CHUNK·pitch + cc·pitch + col]`, each step one loop over `cn · pitch`
    /// values.
    #[inline(always)]
    fn output_transform<'r>(
        &self,
        cn: usize,
        mres: &[T],
        bias: &[T],
        rows: &'r mut [T],
    ) -> &'r [T] {
        let pitch = self.pitch;
        let block = CHUNK * pitch;
        let len = cn * pitch;
        let stride = self.slice * pitch;
        // y[o] = bias + Σ (Aᵀ ⊗ … ⊗ Aᵀ)[o][ξ] · M[ξ].
        for (o, terms) in self.out_terms.iter().enumerate() {
            let dst = &mut rows[o * block..][..len];
            for (seg, &b) in dst.chunks_exact_mut(pitch).zip(bias) {
                seg.fill(b);
            }
            combine(dst, mres, stride, terms, true);
        }
        rows
    }

    /// The bias (or zeros) at every position of a phase no tap reaches, in the task's band.
    #[inline(always)]
    fn fill_bias(&self, g: &Geometry, p: &Phase, bias: Option<&[T]>, task: &mut Task<'_, T>) {
        let dims = g.axes.len();
        let out_pitch = &self.out_pitch;
        let m0 = self.transforms[0].m;
        let origin = self.out_stride[0] * m0 * task.band.start * out_pitch[0];
        let q_band =
            (m0 * task.band.start).min(p.extents[0])..(m0 * task.band.end).min(p.extents[0]);
        // Outer positions (axis 0 within the band), then a strided run along the last axis.
        let mut outer = p.extents[..dims - 1].to_vec();
        let last = if dims == 1 {
            q_band.clone()
        } else {
            outer[0] = q_band.len();
            0..p.extents[dims - 1]
        };
        if last.is_empty() || outer.contains(&0) {
            return; // none of the phase's positions in this band
        }
        let (sl, rl) = (self.out_stride[dims - 1], p.residue[dims - 1]);
        let cout_g = g.out_per_group();
        let group = task.group;
        for (k, plane) in task.planes.iter_mut().enumerate() {
            let b = bias.map_or(T::zero(), |b| b[group * cout_g + k % cout_g]);
            for_each_index(&outer, |q| {
                let mut at = rl;
                for a in 0..dims - 1 {
                    let qa = if a == 0 { q[0] + q_band.start } else { q[a] };
                    at += (self.out_stride[a] * qa + p.residue[a]) * out_pitch[a];
                }
                // At or after the band's start (axis 0's term is in `at` or in the run).
                let first = at + sl * last.start - origin;
                for v in plane[first..].iter_mut().step_by(sl).take(last.len()) {
                    *v = b;
                }
            });
        }
    }
}

/// A block's transformed weights: for each live phase, source and point, `dst`'s run
/// `[(source, ci)][mr]` is `Σ c · wk[tap]` over the point's terms of `G ⊗ … ⊗ G` (`wk`: the
/// block's kernels `[tap][ci][mr]`, `run` values a tap).
struct KernelTerms<'a, T> {
    kflat: &'a [Vec<Vec<usize>>],
    gterms: &'a [Vec<(usize, T)>],
    wk: &'a [T],
    run: usize,
    per_phase: usize,
    kdim: usize,
    cin: usize,
    mr: usize,
}

/// [`KernelTerms`] into `dst`, compiled for `isa` (AVX-512, or AVX2 and FMA; portable
/// otherwise) so that [`combine`]'s loops use its widest vectors; the same operations in
/// the same order on every path.
fn transform_kernels<T: Element>(isa: Isa, k: &KernelTerms<'_, T>, dst: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// AVX-512F available.
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<T: Element>(k: &KernelTerms<'_, T>, dst: &mut [T]) {
            kernel_terms_body(k, dst)
        }
        /// # Safety
        /// AVX2 and FMA available.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<T: Element>(k: &KernelTerms<'_, T>, dst: &mut [T]) {
            kernel_terms_body(k, dst)
        }
        if isa == Isa::Avx512 && Isa::Avx512.available() {
            // Safety: AVX-512F was detected.
            return unsafe { avx512(k, dst) };
        }
        if isa == Isa::Avx2 && Isa::Avx2.available() {
            // Safety: AVX2 and FMA were detected.
            return unsafe { avx2(k, dst) };
        }
    }
    let _ = isa;
    kernel_terms_body(k, dst)
}

#[inline(always)]
fn kernel_terms_body<T: Element>(k: &KernelTerms<'_, T>, dst: &mut [T]) {
    let mut terms: Vec<(usize, T)> = Vec::new();
    for (pi, sources) in k.kflat.iter().enumerate() {
        for (si, kf) in sources.iter().enumerate() {
            for (xi, ts) in k.gterms.iter().enumerate() {
                terms.clear();
                terms.extend(ts.iter().map(|&(j, c)| (kf[j], c)));
                let at = pi * k.per_phase + (xi * k.kdim + si * k.cin) * k.mr;
                combine(&mut dst[at..at + k.run], k.wk, k.run, &terms, false);
            }
        }
    }
}

/// `dst (+)= Σ c · src[i·stride..][..dst.len()]` over `terms` (`(i, c)`), adding to
/// `dst` with `accumulate`, else overwriting it (zeros for no terms): each group of up to
/// four terms one pass over `dst`.
#[inline(always)]
pub(crate) fn combine<T: Element>(
    dst: &mut [T],
    src: &[T],
    stride: usize,
    terms: &[(usize, T)],
    accumulate: bool,
) {
    let n = dst.len();
    let row = |i: usize| &src[i * stride..i * stride + n];
    if terms.is_empty() && !accumulate {
        dst.fill(T::zero());
    }
    for (k, group) in terms.chunks(4).enumerate() {
        let acc = accumulate || k > 0;
        match *group {
            [(a, ca)] => fused(dst, [row(a)], [ca], acc),
            [(a, ca), (b, cb)] => fused(dst, [row(a), row(b)], [ca, cb], acc),
            [(a, ca), (b, cb), (c, cc)] => fused(dst, [row(a), row(b), row(c)], [ca, cb, cc], acc),
            [(a, ca), (b, cb), (c, cc), (d, cd)] => {
                fused(dst, [row(a), row(b), row(c), row(d)], [ca, cb, cc, cd], acc)
            }
            _ => unreachable!("groups of one to four"),
        }
    }
}

/// `dst[i] (+)= Σ_k c[k] · src[k][i]` in one pass (vectorised by the compiler).
#[inline(always)]
fn fused<T: Element, const N: usize>(dst: &mut [T], src: [&[T]; N], c: [T; N], accumulate: bool) {
    let n = dst.len();
    assert!(src.iter().all(|s| s.len() == n), "rows of equal length");
    for (i, d) in dst.iter_mut().enumerate() {
        let mut s = if accumulate { *d } else { T::zero() };
        for k in 0..N {
            s = s + c[k] * src[k][i];
        }
        *d = s;
    }
}

/// A run of tiles along the last axis: GEMM columns `col..col + tiles.len()`.
struct Run {
    /// Image within the task, and in the batch.
    image: usize,
    n: usize,
    /// Tile index on every axis but the last.
    outer: [usize; MAX_DIMS],
    /// Tiles along the last axis.
    tiles: Range<usize>,
    col: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every transform computes the correlation it stands for.
    #[test]
    fn transforms_correlate() {
        for r in 1..=3 {
            for m in 1..=4 {
                let Some(t) = Transform::new(m, r) else {
                    assert!(m + r - 1 > MAX_ALPHA);
                    continue;
                };
                let d: Vec<f64> = (0..t.alpha).map(|i| (i as f64 * 1.7 - 2.3).sin()).collect();
                let w: Vec<f64> = (0..r).map(|j| (j as f64 * 0.9 + 0.4).cos()).collect();
                let bd: Vec<f64> = (0..t.alpha)
                    .map(|x| (0..t.alpha).map(|l| t.bt[x * t.alpha + l] * d[l]).sum())
                    .collect();
                let gw: Vec<f64> = (0..t.alpha)
                    .map(|x| (0..r).map(|j| t.g[x * r + j] * w[j]).sum())
                    .collect();
                for i in 0..m {
                    let y: f64 = (0..t.alpha)
                        .map(|x| t.at[i * t.alpha + x] * gw[x] * bd[x])
                        .sum();
                    let want: f64 = (0..r).map(|j| d[i + j] * w[j]).sum();
                    assert!(
                        (y - want).abs() < 1e-12,
                        "F({m},{r}) output {i}: {y} vs {want}"
                    );
                }
                // The points 0, ±1, ∞: every coefficient a signed power of two or zero.
                for c in t.bt.iter().chain(&t.g).chain(&t.at) {
                    assert!(
                        *c == 0.0 || c.abs().log2().fract() == 0.0,
                        "F({m},{r}): {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn lavin_f23() {
        let t = Transform::new(2, 3).expect("F(2,3)");
        let bt = [
            1., 0., -1., 0., 0., 1., 1., 0., 0., -1., 1., 0., 0., 1., 0., -1.,
        ];
        // Rows may differ in sign from Lavin's; the product is what matters, so compare
        // magnitudes.
        for (a, b) in t.bt.iter().zip(bt) {
            assert_eq!(a.abs(), f64::abs(b));
        }
    }
}
