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
//! task's input rows ([`super::winograd_input`]; on AVX-512, 2-D tiles load their inputs
//! straight from the input, 16 tiles to a vector); elsewhere each tile's `α^D` inputs are
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
//!
//! Here: the cost model that decides where the tiles pay; `transform` (the matrices),
//! `phases` (the phases and their sources as the transforms see them), `sizing` (how a
//! plan's work is cut into tasks within the workspace bound), `weights` (building a plan:
//! the weights transformed and packed once), `run` (executing it).

mod phases;
mod run;
mod sizing;
mod transform;
mod weights;
#[cfg(target_arch = "x86_64")]
mod weights_avx512;

pub(crate) use phases::{decompose, Phase, Source};
pub use sizing::{footprint, Footprint};
use sizing::{sizing, Sizing};
pub use transform::Transform;
pub(crate) use transform::{terms, tile_name};
pub(crate) use weights::{combine, packed_in};

use super::kernels::KernelFn;
use super::scratch;
use super::winograd_input;
use super::Isa;
use crate::geometry::Geometry;
use crate::tensor::Element;

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

/// Channels the transforms take at a time: each of their loops then runs over
/// `CHUNK · pitch` values.
const CHUNK: usize = 8;

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

/// The GEMMs' reduction of `g` (the most sources of a phase times `C_in/g`), or `None`
/// where Winograd tiles do not apply.
pub fn reduction(g: &Geometry) -> Option<usize> {
    let (_, phases, _, _) = decompose(g)?;
    Some(most_sources(&phases) * g.in_per_group())
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
    /// Ranges of whole blocks a group's output channels are cut into between tasks (one
    /// where each task holds all of them).
    channel_parts: usize,
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
    /// Whether each task writes the phases' outputs contiguously and interleaves them at
    /// its end: `Some((stride, positions per phase))` ([`Winograd::staged_layout`]).
    staged: Option<(usize, usize)>,
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
    /// Each kind of task's gather and scatter tables, built once with the plan
    /// ([`Winograd::build_tables`]).
    tables: Vec<run::TaskTables>,
}

/// The thread count the memory-bound choices are made for, whatever a plan runs on: the
/// tile ([`crate::Plan`]'s planner) and whether the transforms run in registers. They change
/// the results' rounding, which must not depend on the thread count; the bound is a target
/// at 1 and 2 threads (this machine kind's cores), and a plan on more threads may hold more.
pub const DECISION_THREADS: usize = 2;

/// Most spatial axes Winograd tiles take (a run holds its outer tile index in a fixed
/// array).
pub const MAX_DIMS: usize = 3;

/// Elements of `elem` bytes between one point's rows of `V` and the next's in a task's
/// scratch: one cache line. A point's `kdim` rows of `pitch` (a whole number of 16-lane
/// vectors) span a multiple of 4 KiB wherever `kdim` is a multiple of 64, so the input
/// transform's stores to its 9 or 16 points (each channel's 16 tiles, one vector a point)
/// all fell on one L1 set, 4 KiB apart. A line apart, paired forward passes at 1 thread
/// (`PASS=forward bench/paired.sh L 1 R`, four sittings of 3-6 rounds, the first with the
/// gap a constant not yet counted in the sizing, medians; Intel Xeon, 2026-12-08): s1k3
/// 1.02-1.09x, dilated 0.99-1.14x, dcgan3 1.01-1.06x, dcgan1, dcgan2 and hifigan1d
/// 0.97-1.04x; at 2 threads (one sitting) 0.98-1.04x. Plans unchanged.
pub(super) fn point_gap(elem: usize) -> usize {
    64 / elem.max(1)
}
