//! The planner's choice: which algorithm runs a geometry and why, and with which tile.

use super::{Algorithm, PlanOptions};
use crate::error::{fail, ErrorKind, Result};
use crate::fast::batch_gemm;
use crate::fast::col2im;
use crate::fast::direct::Kernel;
use crate::fast::im2col;
use crate::fast::kernels::{portable, tile_shapes_for, KernelFn, HALF_WIDTH_TILE_SHAPES};
use crate::fast::pack::PackCache;
use crate::fast::spec::residue_taps;
use crate::fast::winograd;
use crate::fast::Isa;
use crate::geometry::Geometry;
use crate::params::Op;
use crate::tensor::{numel, positions, Element};

/// Modelled time for a tile shape: the FMA work including padding waste (channels rounded
/// up to `mr`, positions to `v` vectors), divided by the shape's measured efficiency.
pub(super) fn tile_cost(
    cout_g: usize,
    flat: usize,
    lanes: usize,
    (mr, v, eff): (usize, usize, f32),
) -> f32 {
    let blocks = cout_g.div_ceil(mr);
    let tiles = flat.div_ceil(v * lanes).max(1);
    (blocks * tiles * mr * v) as f32 / eff
}

/// A register tile: `(output channels, vectors)`.
type Tile = (usize, usize);

/// The packed-panel kernel for a GEMM of `rows` rows over `positions` columns and a
/// reduction of `k` (col2im and im2col): the forced tile shape, else the one with the least
/// modelled time. On AVX-512 run on 256-bit units (`half`, [`half_width`]: AMD Zen 4) the tiles
/// are weighed by [`HALF_WIDTH_TILE_SHAPES`], and of equal costs the one of more vectors
/// where its panel is at most [`WIDE_PANEL_BYTES`] (each broadcast weight then serves more
/// of them), else of fewer, as the Winograd tiles' ties. On the Zen 4 of 2026-12-07 (`tconv
/// bench --algorithm col2im --tile`, 4 alternating rounds, medians of 30 runs, 1 thread):
/// dcgan4's input gradient (im2col, M = 64, K = 48) on 4×4 instead of 6×4 1.06-1.08x
/// faster (16×1 1.01-1.02x, 2×4 1.05-1.07x), a 256 -> 3 upsampler's col2im (M = 48, K =
/// 256) on 6×4 or 4×4 instead of 12×2 1.02-1.05x (16×1 0.94-0.98x, 24×1 0.97-0.98x).
pub(super) fn gemm_kernel<T: Element>(
    isa: Isa,
    options: &PlanOptions,
    (rows, positions, k): (usize, usize, usize),
    half: bool,
) -> Result<(KernelFn<T>, usize, usize)> {
    let lanes = isa.lanes();
    let shapes = tile_shapes_for::<T>(isa);
    let (mr, v) = options.tile.unwrap_or_else(|| {
        let cost = |t: &(usize, usize, f32)| tile_cost(rows, positions, lanes, *t);
        // Of equal costs: on full width the table's first, here by the panel.
        let tie = tie_rank(half.then_some(k * lanes * std::mem::size_of::<T>()));
        weights::<T>(isa, half)
            .iter()
            .min_by(|a, b| cost(a).total_cmp(&cost(b)).then(tie(a).cmp(&tie(b))))
            .map_or((1, 4), |t| (t.0, t.1))
    });
    match kernel_for::<T>(isa, false, mr, v) {
        Some(Kernel::Packed(f)) => Ok((f, mr, v)),
        _ => fail(ErrorKind::NoSuchKernel {
            tile: (mr, v),
            available: shapes.iter().map(|t| (t.0, t.1)).collect(),
        }),
    }
}

/// The Winograd GEMMs' tile: the forced one, else the one with the least modelled time
/// (as [`gemm_kernel`] models it, over an image's output positions, as tuned, or the tiles
/// of a phase over the batch where those are fewer: a 64-column panel for the 4 tiles of a
/// batch of one 4x4 image wasted 15 columns in 16; but no fewer than the columns of the
/// tasks of the table's first tile, where those hold several images: the input gradient
/// of dcgan1, 16 outputs an image, took 24×1 for tasks of 32 columns, on which 12×2 runs
/// 1.15-1.18x faster, and 1.14-1.25x at a batch of 128, see below) among those whose
/// scratch over all threads fits in the output (issue 4's memory bound: on AVX-512,
/// dcgan1's 64-tile panels held 2.3 MB at 1 thread for a 1 MB output), and among those,
/// where the transforms could run in registers, only tiles that keep them there: with the
/// portable transforms, dcgan1 at 2 threads ran 4.0-4.4 ms (12x2) and 3.3-3.5 (24x1)
/// against the direct engine's 2.9-3.2 on AVX-512, and 7.7-8.3 against 5.5-5.9 on AVX2
/// (three and two alternating rounds, medians of 30 runs).
///
/// Whether the tiles run at all, and with which transforms, is decided for
/// [`winograd::DECISION_THREADS`] threads whatever the plan runs on: those change the
/// results' rounding. The tile does not (each output's sums run in the same order on every
/// tile shape), so a plan that runs once ([`PlanOptions::once`]: the gradients) on another
/// thread count then takes the cheapest tile that fits its own threads' scratch with the
/// same transforms: dcgan2's input gradient, whose 1 MB output holds two tasks' 16-tile
/// panels, takes 32-tile panels at 1 thread (1.33x / 1.33x, 4 alternating rounds; forced,
/// 3.5-3.7 ms against 4.8-5.0). So does every plan, with the transforms in registers or
/// not and whether it runs once or many times: at 1 thread dcgan1's forward pass on 12×2
/// tiles (32 columns) instead of 24×1 ran 1.14x / 1.14x faster, hifigan1d's input gradient
/// (portable transforms) 1.16x / 1.17x (`bench/paired.sh`, 4 alternating rounds, Intel
/// Xeon, 2026-12-06; measured before later kernel and sizing changes: 0.90x and 0.87x).
/// Where `packs` (a [`crate::Layer`]'s) holds the packed weights of a tile that fits, that
/// tile: the cheapest changes with the input's extent (dcgan1's widths 4-12 at 1 thread:
/// six pairs of tile and transforms), and a layer planning each new extent packed an 8 MB
/// weight again for most (`tconv bench`'s `replan_ms`: 9.1 ms against 0.1).
/// Where no tile qualifies: the cheapest if the caller forced Winograd tiles, else `None`.
/// With the tile, the candidates a tuning plan measures ([`PlanOptions::tune`]): the tile
/// first, then, with `every` (a tuning plan, which shares no packing), the others that fit
/// the plan's threads with the same transforms (they give the same bits), cheapest first.
/// Only then is every tile's scratch sized: sizing them all for every plan took a `Layer`
/// 1.2-1.4x its time to plan a new extent (`replan_ms`, 4 alternating rounds: hifigan1d
/// 0.099-0.104 ms against 0.070-0.087, dcgan3 0.18-0.19 against 0.15).
///
/// On AVX-512 run on 256-bit units (`half`, [`half_width`]: AMD Zen 4), the plan's tile is
/// weighed by [`HALF_WIDTH_TILE_SHAPES`]'s efficiencies (every tile from 3×4 up at the
/// peak there), the transforms still decided in the full-width order: the same bits as on
/// any AVX-512 CPU. Paired against the full-width order on the Zen 4 of 2026-12-07
/// (`bench/paired.sh L T 4`, forward passes, medians / minima): hifigan1d on 16×1 tiles
/// instead of 12×2 1.10x / 1.10x at 1 thread and 1.12x / 1.11x at 2, dilated on 4×4
/// instead of 8×3 1.10x / 1.13x and 1.15x / 1.14x, dcgan2, dcgan3 and s1k3 (4×4 instead of
/// 6×4) 1.00-1.05x, the convs they are the transposes of (their input gradients)
/// 1.00-1.03x; dcgan1 at 2 threads, whose tasks hold a panel of one vector, on 16×1
/// instead of 24×1 0.94x / 0.95x (8 rounds; at 1 thread 1.01x / 1.01x against 12×2).
/// A tile there must give its tasks at least 3/4 of the columns the full-width order's
/// tile gives them: each task applies every transformed weight once, and a 512 -> 512
/// layer on 8×8 inputs at 2 threads ran 0.77x on 16×1 (16 columns a task) against 12×2
/// (32). Off the suite (12 other layers, `tconv bench --input`, 3 paired rounds) the
/// changed plans ran 0.91-1.08x at 1 thread (one of ten below 0.98: 16 images of 512
/// channels on 8×8, 4×4 instead of 6×4) and 0.89-1.07x at 2 (one of nine below 0.97: a
/// 1-D 512 -> 256 upsampler at stride 8, 16×1 instead of 8×3).
///
/// The columns of one task of the table's first tile (one more sizing, only where an image
/// has fewer outputs than the tiles) weigh the tiles where they exceed an image's output
/// positions: each task's GEMMs run its columns in panels of the tile's (the model pads
/// them to whole panels; the last panel runs on a tile of fewer vectors where one is
/// instantiated). dcgan1's input gradient (4×4 outputs an image, tasks of 32 tiles over 8
/// images) was weighed over 16 columns, so every tile of two vectors looked half wasted
/// and 24×1 was taken; its 24 broadcast weights and one loaded vector per step of the
/// reduction load more than the 12×2 tile's 12 and 2. On 12×2, dcgan1's input gradient
/// 1.15x / 1.16x faster at 1 thread and 1.17x / 1.18x at 2, its backward pass 1.07x /
/// 1.10x and 1.07x / 1.08x (`bench/paired.sh dcgan1 T 4`, medians / minima); at a batch
/// of 128 the input gradient 1.25x / 1.19x and 1.14x / 1.16x, the backward pass 1.08x and
/// 1.10x / 1.08x (3 rounds; Intel Xeon, 2026-12-07). No other plan of the suite, of the
/// short reductions or of `bench/layers_compare.py`'s layers changed, on AVX-512 or AVX2.
fn winograd_tile<T: Element>(
    g: &Geometry,
    isa: Isa,
    options: &PlanOptions,
    (forced, threads, every, half): (bool, usize, bool, bool),
    packs: Option<&PackCache>,
) -> Option<(Tile, Vec<Tile>)> {
    if let Some(t) = options.tile {
        return Some((t, vec![t]));
    }
    let lanes = isa.lanes();
    let tiles = winograd::tiles(g)?;
    let image = numel(&g.output_shape()[2..]);
    // The columns of the first tile's tasks, where they hold more than an image's outputs
    // (sized only where an image has fewer outputs than the tiles, else they cannot).
    let columns = if image < tiles {
        tile_shapes_for::<T>(isa)
            .first()
            .and_then(|&(mr, v, _)| {
                winograd::footprint::<T>(g, (mr, v, lanes, isa), winograd::DECISION_THREADS)
            })
            .map_or(0, |f| f.columns.min(tiles))
    } else {
        0
    };
    let positions = image.min(tiles).max(columns);
    let rows = g.out_per_group();
    // By modelled cost; of equal costs, the tile of more vectors where its panel of the
    // transformed input (the reduction by its columns) is at most `WIDE_PANEL_BYTES`, else
    // of fewer; or always of fewer (`narrow_ties`: a layer's own tile, whose smaller
    // scratch fits more of its input extents).
    let panel = winograd::reduction(g)? * lanes * std::mem::size_of::<T>();
    let by_cost = |narrow_ties: bool, table: &[(usize, usize, f32)]| {
        // A panel of `usize::MAX` bytes: always the fewer vectors.
        let tie = tie_rank(Some(if narrow_ties { usize::MAX } else { panel }));
        let mut shapes: Vec<(usize, usize, f32)> = table.to_vec();
        shapes.sort_by(|a, b| {
            tile_cost(rows, positions, lanes, *a)
                .total_cmp(&tile_cost(rows, positions, lanes, *b))
                .then(tie(a).cmp(&tie(b)))
        });
        shapes
    };
    // The transforms are decided in one order for plans and layers alike (they change the
    // bits).
    let shapes = by_cost(false, tile_shapes_for::<T>(isa));
    let fits = |&(mr, v, _): &(usize, usize, f32), on: usize| {
        winograd::footprint::<T>(g, (mr, v, lanes, isa), on).filter(|f| f.bytes <= f.bound)
    };
    // The tile for two threads and whether its transforms run in registers.
    let (decided, registers) = shapes
        .iter()
        .find_map(|t| {
            fits(t, winograd::DECISION_THREADS)
                .filter(|f| f.registers || !f.registers_wanted)
                .map(|f| (t, f.registers))
        })
        .or_else(|| {
            let t = shapes.first().filter(|_| forced)?;
            let at = winograd::DECISION_THREADS;
            let f = winograd::footprint::<T>(g, (t.0, t.1, lanes, isa), at)?;
            Some((t, f.registers))
        })?;
    // The cheapest that fits the plan's own threads with the same transforms, or the
    // cheapest such whose weights `packs` holds packed already (one pass, each tile's
    // scratch sized once, up to the tile taken).
    let own_order = by_cost(packs.is_some(), weights::<T>(isa, half));
    // Weighed by the half-width table, only tiles whose tasks hold at least 3/4 of the
    // columns of the full-width order's tile's: each task applies every transformed weight
    // once, so fewer columns stream the weights more often.
    let min_columns = if half {
        shapes
            .iter()
            .filter_map(|t| fits(t, threads).filter(|f| f.registers == registers))
            .map(|f| f.columns * 3 / 4)
            .next()
            .unwrap_or(0)
    } else {
        0
    };
    let mut own = own_order
        .iter()
        .filter(|t| {
            fits(t, threads).is_some_and(|f| f.registers == registers && f.columns >= min_columns)
        })
        .map(|t| (t.0, t.1));
    let cheapest = own.next();
    let packed = packs.and_then(|p| {
        cheapest
            .into_iter()
            .chain(own.by_ref())
            .find(|t| winograd::packed_in(g, t.0, isa, p))
    });
    let tile = packed.or(cheapest).unwrap_or((decided.0, decided.1));
    let mut candidates = vec![tile];
    if every {
        // Every tile with the same transforms, whatever its columns: a tuning measures.
        let same =
            |t: &&(usize, usize, f32)| fits(t, threads).is_some_and(|f| f.registers == registers);
        let others = own_order.iter().filter(same).map(|t| (t.0, t.1));
        candidates.extend(others.filter(|&t| t != tile));
    }
    Some((tile, candidates))
}

/// Whether a plan on `isa` weighs its tiles by [`HALF_WIDTH_TILE_SHAPES`]: an AVX-512 plan
/// where AVX-512 runs on 256-bit units ([`crate::fast::isa::avx512_half_width`]).
pub(super) fn half_width(isa: Isa) -> bool {
    isa == Isa::Avx512 && crate::fast::isa::avx512_half_width()
}

/// The efficiencies a plan's own tile is weighed by: [`HALF_WIDTH_TILE_SHAPES`] on AVX-512
/// run on 256-bit units (`half`), else the ISA's table for `T`.
fn weights<T: 'static>(isa: Isa, half: bool) -> &'static [(usize, usize, f32)] {
    if half {
        HALF_WIDTH_TILE_SHAPES
    } else {
        tile_shapes_for::<T>(isa)
    }
}

/// The rank, lowest first, of tiles of equal modelled cost: with a panel of `panel` bytes
/// per vector, the tile of more vectors where its panel is at most [`WIDE_PANEL_BYTES`],
/// else of fewer; without one (`None`), all equal (the table's order stands).
fn tie_rank(panel: Option<usize>) -> impl Fn(&(usize, usize, f32)) -> isize {
    move |t| match panel {
        Some(p) if p.saturating_mul(t.1) <= WIDE_PANEL_BYTES => -(t.1 as isize),
        Some(_) => t.1 as isize,
        None => 0,
    }
}

/// Bytes of a Winograd GEMM's panel of the transformed input (its reduction by the tile's
/// columns) up to which, of two tiles of equal modelled cost, the one of more vectors is
/// taken: dcgan2's forward pass (K = 256: 64 KiB on 6×4 tiles) on 6×4 instead of 12×2 ran
/// 1.02x / 1.01x faster at 1 thread and 1.12x / 1.11x at 2 (4 paired rounds), a 128-channel
/// 16×16 upsampler's 1.00x and 1.09x / 1.03x, dcgan3's input gradient (K = 256) 1.00x; with
/// longer panels the narrower tile: dcgan2's input gradient (K = 512) ran 0.97x on 6×4,
/// hifigan1d's (K = 2048) 0.66x. Not in a [`crate::Layer`]: there the wider tile fitted
/// fewer of the extents that followed, so that dcgan2's layer packed its weight five times
/// for nine widths (8-16, 1 thread) against three, its `replan_ms` 1.7 ms against 0.1.
const WIDE_PANEL_BYTES: usize = 64 << 10;

/// Below this many output channels per group the input is read in place, not packed:
/// a packed panel is reused by every output channel, so it pays only when there are many.
pub(super) const INPLACE_BELOW: usize = 8;

pub(super) fn kernel_for<T: Element>(
    isa: Isa,
    inplace: bool,
    mr: usize,
    v: usize,
) -> Option<Kernel<T>> {
    if inplace {
        T::fast_inplace(isa, mr, v)
            .or_else(|| crate::fast::inplace::portable::<T>(mr, v))
            .map(Kernel::Inplace)
    } else {
        T::fast_kernel(isa, mr, v)
            .or_else(|| portable::<T>(mr, v))
            .map(Kernel::Packed)
    }
}

/// The planner's choice for `g`, before anything is packed: the algorithm and why, and for
/// Winograd tiles their tile.
pub(super) struct Choice {
    pub(super) algorithm: Algorithm,
    pub(super) reason: String,
    pub(super) forced: Option<Algorithm>,
    pub(super) winograd_tile: Option<(usize, usize)>,
    /// The Winograd tiles a tuning plan may measure ([`PlanOptions::tune`]): the chosen
    /// one first, then (where [`choose`] was asked for `every`) every other that fits the
    /// plan's threads with the same transforms.
    pub(super) winograd_candidates: Vec<Tile>,
}

/// With `every`, the choice's Winograd candidates are every tile a tuning plan may take
/// (see [`winograd_tile`]).
pub(super) fn choose<T: Element>(
    g: &Geometry,
    options: &PlanOptions,
    packs: Option<&PackCache>,
    every: bool,
) -> Choice {
    let forced = options.algorithm.or_else(Algorithm::from_env);
    let single = batch_gemm::applies(g);
    let (mut algorithm, mut reason) = match forced {
        Some(a) => (a, "forced by the caller or TCONV_ALGORITHM".to_string()),
        None if single && options.inplace.is_none() && options.tile.is_none() => {
            (Algorithm::Col2im, batch_gemm_reason(g))
        }
        None if col2im_pays(g, std::mem::size_of::<T>(), wide_inplace::<T>(options))
            && options.inplace.is_none()
            && options.tile.is_none() =>
        {
            (Algorithm::Col2im, col2im_reason(g))
        }
        // Where the element type's loops have SIMD: f64's too (its plans are `Scalar`, its
        // loops the CPU's), whose forward passes then ran 1.25-1.46x faster on dcgan1-2,
        // s1k3, dilated and hifigan1d, 1.04-1.11x on dcgan3 (1 and 2 threads, Intel Xeon).
        None if winograd::pays(g, options.once)
            && options.isa_for::<T>().loops_for::<T>() != Isa::Scalar
            && options.inplace.is_none()
            && options.tile.is_none() =>
        {
            (Algorithm::Winograd, winograd_reason(g, options.once))
        }
        None if col2im_pays(g, std::mem::size_of::<T>(), false)
            && options.inplace.is_none()
            && options.tile.is_none() =>
        {
            let reason = format!(
                "{}; few output channels per group, but fewer than {} input channels for \
                 each ({} for {}): AVX-512 in-place kernels beat GEMM + col2im",
                direct_reason(g),
                inplace_cin_per_output(g, std::mem::size_of::<T>()),
                g.in_per_group(),
                g.out_per_group()
            );
            (Algorithm::Direct, reason)
        }
        None => (Algorithm::Direct, direct_reason(g)),
    };
    let elem = std::mem::size_of::<T>();
    if algorithm == Algorithm::Col2im && g.op == Op::Conv && !single && !im2col::fits(g, elem) {
        algorithm = Algorithm::Direct;
        reason = format!(
            "{reason}; but im2col's columns for one tile of positions would take more than \
             a band, so {}",
            direct_reason(g)
        );
    }
    if algorithm == Algorithm::Col2im
        && g.op == Op::ConvTranspose
        && !single
        && !col2im::fits(g, elem)
    {
        algorithm = Algorithm::Direct;
        reason = format!(
            "{reason}; but col2im's columns for one input row would take {} bytes (at most {}), so {}",
            col2im::row_bytes(g, elem),
            col2im::MAX_ROW_BYTES,
            direct_reason(g)
        );
    }
    if algorithm == Algorithm::Winograd && !winograd::applies(g) {
        algorithm = Algorithm::Direct;
        reason = format!(
            "{reason}; but Winograd tiles need every phase to have the same 1 to 3 taps per \
             axis on consecutive positions (a conv: stride and dilation 1), so {}",
            direct_reason(g)
        );
    }
    let isa = options.isa_for::<T>();
    let threads = options.threads_for(g);
    let (winograd_tile, winograd_candidates) = (algorithm == Algorithm::Winograd)
        .then(|| {
            let how = (forced.is_some(), threads, every, half_width(isa));
            winograd_tile::<T>(g, isa, options, how, packs)
        })
        .flatten()
        .map_or((None, Vec::new()), |(t, c)| (Some(t), c));
    if algorithm == Algorithm::Winograd && winograd_tile.is_none() {
        algorithm = Algorithm::Direct;
        reason = format!(
            "{reason}; but with every tile either the transformed input and results \
             would take more scratch than the output holds (for a strided conv that no \
             tile can run within it, the input per thread), or the transforms would \
             leave registers for that bound, so {}",
            direct_reason(g)
        );
    }
    Choice {
        algorithm,
        reason,
        forced,
        winograd_tile,
        winograd_candidates,
    }
}

/// How the input gradient of `g` (its adjoint, planned to run once) takes Winograd tiles
/// on `threads` threads, for [`crate::grad`]'s choice to run a backward pass's gradients
/// side by side.
pub(crate) struct InputTiles {
    /// With fewer columns than on one thread: its scratch bound holds two tasks' smaller
    /// panels only (a 64-channel 32×32 upsampler's: 6×4 at 1 thread, 12×2 at 2).
    pub(crate) shrink: bool,
    /// Within a scratch bound of streamed weights (half its input per thread, or twice it
    /// for more than 16 MiB of them, [`winograd::Footprint::streamed`]): dcgan2's,
    /// hifigan1d's and dcgan1's in the suite.
    pub(crate) streamed: bool,
}

/// [`InputTiles`] of `g`'s input gradient on `threads` threads.
pub(crate) fn input_tiles<T: Element>(
    g: &Geometry,
    options: &PlanOptions,
    threads: usize,
) -> InputTiles {
    let adjoint = g.adjoint();
    let on = |t: usize| {
        let o = PlanOptions {
            threads: Some(t),
            once: true,
            ..options.clone()
        };
        let isa = o.isa_for::<T>();
        let tile = choose::<T>(&adjoint, &o, None, false).winograd_tile;
        let footprint = tile
            .and_then(|(mr, v)| winograd::footprint::<T>(&adjoint, (mr, v, isa.lanes(), isa), t));
        (tile.map(|(_, v)| v), footprint.is_some_and(|f| f.streamed))
    };
    let ((one, _), (many, streamed)) = (on(1), on(threads));
    InputTiles {
        shrink: matches!((one, many), (Some(one), Some(many)) if many < one),
        streamed,
    }
}

/// Why a layer whose small side has one position per image runs as one GEMM over the batch
/// ([`batch_gemm`]).
fn batch_gemm_reason(g: &Geometry) -> String {
    let side = batch_gemm::small_side(g);
    let (k, n) = batch_gemm::shape(g);
    let what = match g.op {
        Op::ConvTranspose => "K = C_in/g, N = C_out/g x taps reaching the output",
        Op::Conv => "K = C_in/g x taps reaching the input, N = C_out/g",
    };
    format!(
        "one position per image on the {side} side: one GEMM over the batch (M={} images, \
         K={k}, N={n}: {what}), no multiplications by padding, each output its column's sum \
         (a dot product where the columns are fewer than a vector's lanes) plus the bias",
        g.batch
    )
}

/// Whether GEMM + col2im beats the phase decomposition: a transposed conv with few output
/// channels per group (the phase GEMMs would have fewer rows than a register tile) but a
/// real reduction over input channels, and overlapping taps (otherwise the phases already
/// are the columns). Measured against the in-place kernels at 1 thread (BENCHMARKS.md):
/// 1.3-2x faster from 32 input channels up, a tie at 16, 1.8x slower at 8. Against the
/// AVX-512 in-place kernels (16 lanes, channels summed in L1-sized blocks) only from 32
/// input channels per output channel up: with 3 output channels and 64 input channels
/// (dcgan4) they ran 1.11-1.13x faster than col2im at 1 thread and 1.09-1.12x at 2, with
/// 4 and 6 output channels 1.1-1.3x at 64 input channels, and lost from 32 per output
/// channel up (1 output channel: 0.79x at 32 input channels; 2: 0.88x at 64; 3 and 4:
/// 0.78-0.92x at 256); f64's AVX-512 in-place kernels (on AVX-512's tiles) from 64 per
/// output channel up ([`inplace_cin_per_output`]; dcgan4 1.24-1.27x faster than col2im).
/// AVX2 keeps the old boundary (its 8-lane in-place kernels: 0.93-0.97x at 3 × 64
/// channels).
///
/// For a conv, its mirror (im2col + GEMM) where a group has few input channels (fewer than
/// 8) and at least [`IM2COL_MIN_COUT`] output channels: its reduction is short, so the
/// direct engine's tile stores weigh as much as its arithmetic. Measured against the direct
/// engine at 1 thread (BENCHMARKS.md): 1.1-1.7x faster with 3 to 6 input channels, a tie
/// at 8, 0.95x at 16.
fn col2im_pays(g: &Geometry, elem: usize, wide_inplace: bool) -> bool {
    match g.op {
        Op::ConvTranspose => {
            let min_cin = if wide_inplace {
                inplace_cin_per_output(g, elem) * g.out_per_group()
            } else {
                COL2IM_MIN_CIN
            };
            g.out_per_group() < INPLACE_BELOW
                && g.in_per_group() >= min_cin
                && g.axes.iter().any(|a| a.kernel > a.stride)
                && col2im::fits(g, elem)
        }
        Op::Conv => {
            g.in_per_group() < INPLACE_BELOW
                && g.out_per_group() >= IM2COL_MIN_COUT
                && im2col::fits(g, elem)
        }
    }
}

/// Fewest output channels per group for which a conv takes im2col + GEMM (below it the
/// layer is depthwise-like: the row engines serve it).
const IM2COL_MIN_COUT: usize = 4;

/// Whether the plan's in-place kernels for `T` are AVX-512 ones (see [`col2im_pays`]):
/// f32's on an AVX-512 plan, f64's where its loops are AVX-512
/// ([`crate::fast::inplace::f64_kernel`]).
fn wide_inplace<T: Element>(options: &PlanOptions) -> bool {
    options.isa_for::<T>().loops_for::<T>() == Isa::Avx512
}

/// Input channels per output channel from which GEMM + col2im beats the AVX-512 in-place
/// kernels ([`col2im_pays`]): 32, but 64 for f64 with more than one output channel (its
/// GEMM's tiles are half as wide: at 1 thread, 3 from 128 and 4 from 128-256 in place
/// 1.08-1.31x faster than col2im, 6 from 256 1.25-1.38x, 3 from 512 0.76-0.77x; with one
/// output channel col2im from 32 on, 1.45-1.54x faster with a 4-tap kernel).
fn inplace_cin_per_output(g: &Geometry, elem: usize) -> usize {
    if elem == 8 && g.out_per_group() > 1 {
        2 * COL2IM_MIN_CIN
    } else {
        COL2IM_MIN_CIN
    }
}

/// Fewest input channels per group for [`col2im_pays`] (per output channel against the
/// AVX-512 in-place kernels, in f32).
const COL2IM_MIN_CIN: usize = 32;

fn col2im_reason(g: &Geometry) -> String {
    if g.op == Op::Conv {
        return format!(
            "few input channels per group ({}) for {} output channels: im2col gathers the input once into (input channel, tap) rows, then one GEMM writes each register tile straight into the output planes",
            g.in_per_group(),
            g.out_per_group()
        );
    }
    format!(
        "few output channels per group ({}) against {} input channels: one GEMM with a row per (output channel, tap) fills the register tile, then col2im sums the taps per output",
        g.out_per_group(),
        g.in_per_group()
    )
}

fn winograd_reason(g: &Geometry, once: bool) -> String {
    format!(
        "phases of 2 or 3 taps per axis with {} input and {} output channels per group: Winograd tiles do {:.2}x fewer multiplications than the direct sums (one GEMM per transformed point, K = C_in/g); with the transforms, {:.2}x faster by the model",
        g.in_per_group(),
        g.out_per_group(),
        winograd::gain(g).unwrap_or(1.0),
        winograd::modeled_speedup(g, once).unwrap_or(1.0)
    )
}

fn direct_reason(g: &Geometry) -> String {
    let strided = g.axes.iter().any(|a| a.stride > 1);
    match (g.op, strided) {
        (Op::ConvTranspose, true) => {
            // Each phase's taps, counted per axis (the phases' tap lists are not needed:
            // building them for the text took a fifth of fcn_dw's plan).
            let per_axis: Vec<Vec<usize>> = g
                .axes
                .iter()
                .map(|a| residue_taps(a).iter().map(|(_, t)| t.len()).collect())
                .collect();
            let strides: Vec<usize> = g.axes.iter().map(|a| a.stride).collect();
            let mut counts: Vec<usize> = positions(&strides)
                .map(|r| r.iter().zip(&per_axis).map(|(&r, c)| c[r]).product())
                .collect();
            let phases = counts.len();
            let live = counts.iter().filter(|&&c| c > 0).count();
            counts.sort_unstable();
            counts.dedup();
            let taps: Vec<String> = counts.iter().map(|c| c.to_string()).collect();
            let kernel_eq_stride = g.axes.iter().all(|a| a.kernel == a.stride && a.dilation == 1);
            if kernel_eq_stride {
                format!("kernel == stride: {phases} phases of one tap each, no overlap (one GEMM-like pass + depth-to-space store)")
            } else {
                format!(
                    "stride > 1: phase decomposition into {} dense stride-1 phases ({} with taps; taps per phase: {}), no zero multiplies, no col2im workspace",
                    phases,
                    live,
                    taps.join(" or ")
                )
            }
        }
        (Op::ConvTranspose, false) => {
            "stride 1: the equivalent ordinary correlation (flipped kernel, swapped channel roles), one phase".into()
        }
        (Op::Conv, true) => {
            if crate::fast::strided_conv::shape_applies(g) {
                "strided conv, kernel == stride: each tile's panel dealt from the input by \
                 stride-2 vector loads on SIMD ISAs (else a polyphase split), dense taps"
                    .into()
            } else {
                "strided conv: polyphase split of the input, dense stride-1 taps".into()
            }
        }
        (Op::Conv, false) => "stride-1 conv: dense taps as shifted, masked vectors".into(),
    }
}

/// `reason` extended with how depthwise rows run `g` (by tap vectors where `by_taps`, else
/// by output rows); by tap vectors, unless the caller forced the algorithm, that replaces it.
pub(super) fn depthwise_reason<T: Element>(
    g: &Geometry,
    isa: Isa,
    by_taps: bool,
    forced: Option<Algorithm>,
    reason: String,
) -> String {
    if by_taps {
        let rows_read = if crate::fast::tap_rows::in_place::<T>(isa) {
            format!(
                "each input row read where it lies, eight rows at a time (masked loads \
                 at its ends), {0} taps of a kernel row per vector, the sums of {0} \
                 outputs reduced across lanes at the end",
                isa.lanes()
            )
        } else {
            "each input row copied once into a zero-margined row cache, 8 taps of a \
             kernel row per vector, the sums of 8 outputs reduced across lanes at the end"
                .to_string()
        };
        let taps = format!(
            "depthwise (one input and one output channel per group) with a last-axis \
             stride of {} and a kernel of whole vectors, so by tap vectors (no polyphase \
             split): {rows_read}",
            g.axes.last().map_or(1, |a| a.stride)
        );
        match forced {
            None => taps,
            Some(_) => format!("{reason}; {taps}"),
        }
    } else {
        format!(
            "{reason}; depthwise (one input and one output channel per group), so by output \
             rows: each phase row summed in registers over a zero-margined copy of the \
             plane, the phase rows interleaved into the output (at stride 8, blocks of \
             8 positions of all 8 phases summed and interleaved in registers)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ConvParams;

    /// Where AVX-512 runs on 256-bit units every tile from 3×4 up multiplies at the peak, so
    /// the Winograd tiles' planner weighs them alike there: hifigan1d (256 output channels,
    /// K = 512) takes 16×1, whose panel of one vector stays in a 32 KiB L1, instead of
    /// 12×2, and the suite's dilated layer (64 output channels, 16×16 tiles an image) 4×4
    /// instead of 8×3, whose 48-tile panels leave a third of the last one empty; but not
    /// where the tile's tasks would hold fewer columns: a 512 -> 512 layer on 8×8 inputs
    /// takes 16×1 at 1 thread (32 columns a task, as on 12×2), 12×2 at 2 (16×1 tasks would
    /// hold 16 columns, not 32). Either order takes the same transforms: the half-width
    /// tile is among the full-width plan's candidates, which give the same bits, and a
    /// tuning measures the same tiles in either.
    #[test]
    fn half_width_avx512_weighs_the_winograd_tiles_alike() {
        let options = PlanOptions::default();
        let hifigan = ConvParams::new().stride(&[8]).padding(&[4]);
        let s2 = ConvParams::new().stride(&[2, 2]).padding(&[1, 1]);
        let dilated = ConvParams::new()
            .stride(&[2, 2])
            .padding(&[2, 2])
            .output_padding(&[1, 1])
            .dilation(&[2, 2]);
        let (x1, w1) = (vec![4, 512, 256], vec![512, 256, 16]);
        let (x2, w2) = (vec![8, 64, 32, 32], vec![64, 64, 3, 3]);
        let (x3, w3) = (vec![4, 512, 8, 8], vec![512, 512, 4, 4]);
        for (x, w, p, threads, full, half) in [
            (&x1, &w1, &hifigan, 1, (12, 2), (16, 1)),
            (&x1, &w1, &hifigan, 2, (12, 2), (16, 1)),
            (&x2, &w2, &dilated, 1, (8, 3), (4, 4)),
            (&x2, &w2, &dilated, 2, (8, 3), (4, 4)),
            (&x3, &w3, &s2, 1, (12, 2), (16, 1)),
            (&x3, &w3, &s2, 2, (12, 2), (12, 2)),
        ] {
            let g = Geometry::new(Op::ConvTranspose, x, w, None, p).unwrap();
            let tile = |half: bool, every: bool| {
                let how = (false, threads, every, half);
                winograd_tile::<f32>(&g, Isa::Avx512, &options, how, None).unwrap()
            };
            let (f, candidates) = tile(false, true);
            let (h, _) = tile(true, false);
            assert_eq!((f, h), (full, half), "{x:?} {w:?} on {threads} threads");
            assert!(candidates.contains(&h), "{h:?} not in {candidates:?}");
            // A tuning measures the same tiles in either order, those of fewer columns too.
            let (_, tuned) = tile(true, true);
            let mut sorted = [candidates.clone(), tuned.clone()];
            sorted.iter_mut().for_each(|c| c.sort_unstable());
            assert_eq!(sorted[0], sorted[1], "{candidates:?} {tuned:?}");
        }
    }

    /// The GEMMs of im2col and col2im where AVX-512 runs on 256-bit units: dcgan4's input
    /// gradient (64 output channels, K = 48) on 4×4 tiles, whose rows divide 64, instead
    /// of 6×4; a 256 -> 3 upsampler's col2im (48 rows, K = 256) on 6×4 (of the tiles that
    /// divide 48, the first of most vectors: a short panel) instead of 12×2.
    #[test]
    fn half_width_avx512_gemms_take_the_tiles_of_least_padding() {
        let options = PlanOptions::default();
        let gemm = |shape, half| {
            gemm_kernel::<f32>(Isa::Avx512, &options, shape, half).map(|(_, mr, v)| (mr, v))
        };
        if !Isa::Avx512.available() {
            return;
        }
        for (shape, full, half) in [
            ((64, 1024, 48), (6, 4), (4, 4)),
            ((48, 256, 256), (12, 2), (6, 4)),
        ] {
            assert_eq!(gemm(shape, false).unwrap(), full, "{shape:?}");
            assert_eq!(gemm(shape, true).unwrap(), half, "{shape:?}");
        }
    }
}
