//! The planner: chooses how to compute a problem, and is the only thing that dispatches.
//!
//! A [`Plan`] is a value: it names the algorithm and why, the tile and ISA, the work shapes,
//! the workspace and the thread count, and it holds the packed weights, so it can be built
//! once and executed many times. `TCONV_ALGORITHM=reference|direct|col2im|winograd` and
//! `TCONV_ISA=…` force a choice (for tests), as do the fields of [`PlanOptions`].

use std::fmt;

use ndarray::{ArrayD, ArrayView1, AsArray, Dimension, IxDyn};

use crate::error::{fail, ErrorKind, Result};
use crate::fast::col2im::{self, Col2im};
use crate::fast::depthwise::DepthwiseRows;
use crate::fast::direct::{execute, DirectKernel, Kernel, TileTable};
use crate::fast::im2col::{self, Im2col};
use crate::fast::kernels::{portable, tile_shapes, KernelFn};
use crate::fast::pack::{pack_key, pack_weights, PackCache};
use crate::fast::spec::{residue_taps, DirectSpec, SourceLayout};
use crate::fast::winograd::{self, Winograd};
use crate::fast::Isa;
use crate::geometry::Geometry;
use crate::params::{ConvParams, Op};
use crate::tensor::{contiguous, numel, positions, Element};

/// The algorithms a plan can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// The reference loops (scatter for conv_transpose, gather for conv).
    Reference,
    /// Phase decomposition into dense stride-1 sub-problems run by SIMD direct kernels.
    Direct,
    /// Transposed conv as one GEMM over (output channel, tap) rows plus a col2im sum, for
    /// few output channels per group; for a conv with few input channels per group its
    /// mirror, an im2col gather plus one GEMM over (input channel, tap). Forced where its
    /// columns would not fit, the plan runs `Direct` and says why.
    Col2im,
    /// The phase decomposition with Winograd minimal-filtering tiles (F(2,2), F(3,2),
    /// F(2,3) per axis): one GEMM per transformed point, 1.8-2.25x fewer multiplications
    /// for phases of 2 or 3 taps per axis. Rounds differently from the direct sums (exact
    /// on small integers; within 2e-5 relative on the tests' random f32 data). Forced
    /// where the phases do not suit it, the plan runs `Direct` and says why.
    Winograd,
}

impl Algorithm {
    /// Name as printed and as accepted by `TCONV_ALGORITHM`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Reference => "reference",
            Algorithm::Direct => "direct",
            Algorithm::Col2im => "col2im",
            Algorithm::Winograd => "winograd",
        }
    }
    /// The algorithm `TCONV_ALGORITHM` forces, if any.
    pub fn from_env() -> Option<Algorithm> {
        std::env::var("TCONV_ALGORITHM")
            .ok()
            .and_then(|s| Algorithm::parse(&s))
    }
    /// Parse a name.
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reference" | "naive" => Some(Algorithm::Reference),
            "direct" | "phase" | "fast" => Some(Algorithm::Direct),
            "col2im" | "gemm" | "gemm-col2im" => Some(Algorithm::Col2im),
            "winograd" => Some(Algorithm::Winograd),
            _ => None,
        }
    }
}

/// Choices a caller may force; `None` means let the planner decide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Worker threads (default: all cores; tiny problems run on one).
    pub threads: Option<usize>,
    /// Force an algorithm.
    pub algorithm: Option<Algorithm>,
    /// Force an instruction set (falls back to the best available one below it).
    pub isa: Option<Isa>,
    /// Force a tile shape `(output channels, vectors)`.
    pub tile: Option<(usize, usize)>,
    /// Force in-place (`true`) or packed-panel (`false`) kernels.
    pub inplace: Option<bool>,
    /// The plan runs once (the gradients, the one-call functions): weigh the cost of
    /// transforming and packing the weights in the choice of algorithm.
    pub once: bool,
}

/// Below this many FLOPs a problem runs on one thread (thread wake-up costs more).
const SMALL_FLOPS: u128 = 4_000_000;

impl PlanOptions {
    /// The instruction set element type `T` runs on: the forced one (or the best available
    /// below it), else the detected one; the portable loops where `T` has no SIMD kernels
    /// (f64). Plans and gradients decide it alike.
    pub fn isa_for<T: Element>(&self) -> Isa {
        let isa = self.isa.map_or_else(Isa::detect, |i| i.or_below());
        if T::fast_kernel(isa, 1, 4).is_some() {
            isa
        } else {
            Isa::Scalar
        }
    }

    /// Threads for a problem of geometry `g`: as asked, else all cores, but one below
    /// `SMALL_FLOPS` (4 MFLOP).
    pub fn threads_for(&self, g: &Geometry) -> usize {
        match self.threads {
            Some(t) => t.max(1),
            None if g.flops() < SMALL_FLOPS => 1,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// A ready-to-run computation.
pub struct Plan<T: Element> {
    geometry: Geometry,
    algorithm: Algorithm,
    reason: String,
    threads: usize,
    isa: Isa,
    direct: Option<DirectKernel<T>>,
    /// Depthwise conv or conv_transpose by output rows.
    rows: Option<DepthwiseRows<T>>,
    /// GEMM over (output channel, tap) rows plus col2im.
    col2im: Option<Col2im<T>>,
    /// im2col plus a GEMM over (input channel, tap) rows (a conv).
    im2col: Option<Im2col<T>>,
    /// Winograd tiles over the phases.
    winograd: Option<Winograd<T>>,
    /// Reference path keeps the weight.
    weight: Vec<T>,
}

/// Modelled time for a tile shape: the FMA work including padding waste (channels rounded
/// up to `mr`, positions to `v` vectors), divided by the shape's measured efficiency.
fn tile_cost(cout_g: usize, flat: usize, lanes: usize, (mr, v, eff): (usize, usize, f32)) -> f32 {
    let blocks = cout_g.div_ceil(mr);
    let tiles = flat.div_ceil(v * lanes).max(1);
    (blocks * tiles * mr * v) as f32 / eff
}

/// The packed-panel kernel for a GEMM of `rows` rows over `positions` columns (col2im and
/// im2col): the forced tile shape, else the one with the least modelled time.
fn gemm_kernel<T: Element>(
    isa: Isa,
    options: &PlanOptions,
    rows: usize,
    positions: usize,
) -> Result<(KernelFn<T>, usize, usize)> {
    let lanes = isa.lanes();
    let shapes = tile_shapes(isa);
    let (mr, v) = options.tile.unwrap_or_else(|| {
        shapes
            .iter()
            .min_by(|a, b| {
                let cost = |t: &(usize, usize, f32)| tile_cost(rows, positions, lanes, *t);
                cost(a).total_cmp(&cost(b))
            })
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
/// batch of one 4x4 image wasted 15 columns in 16) among those whose scratch over all
/// threads fits in the output (issue 4's memory bound: on AVX-512, dcgan1's 64-tile panels
/// held 2.3 MB at 1 thread for a 1 MB output), and among those, where the transforms could
/// run in registers, only tiles that keep them there: with the portable transforms, dcgan1
/// at 2 threads ran 4.0-4.4 ms (12x2) and 3.3-3.5 (24x1) against the direct engine's
/// 2.9-3.2 on AVX-512, and 7.7-8.3 against 5.5-5.9 on AVX2 (three and two alternating
/// rounds, medians of 30 runs).
///
/// Whether the tiles run at all, and with which transforms, is decided for
/// [`winograd::DECISION_THREADS`] threads whatever the plan runs on: those change the
/// results' rounding. The tile does not (each output's sums run in the same order on every
/// tile shape), so a plan that runs once ([`PlanOptions::once`]: the gradients) on another
/// thread count then takes the cheapest tile that fits its own threads' scratch with the
/// same transforms: dcgan2's input gradient, whose 1 MB output holds two tasks' 16-tile
/// panels, takes 32-tile panels at 1 thread (1.33x / 1.33x, 4 alternating rounds; forced,
/// 3.5-3.7 ms against 4.8-5.0). Only with the transforms in registers: with the portable
/// ones (1-D), hifigan1d's input gradient ran 0.87x / 0.87x on 32-tile panels at 1 thread.
/// Plans built to run many times keep the tile chosen for two threads: dcgan1's forward
/// pass ran 0.90x / 0.92x on the 32-tile panels at 1 thread.
/// Where no tile qualifies: the cheapest if the caller forced Winograd tiles, else `None`.
fn winograd_tile<T: Element>(
    g: &Geometry,
    isa: Isa,
    options: &PlanOptions,
    forced: bool,
    threads: usize,
) -> Option<(usize, usize)> {
    if let Some(t) = options.tile {
        return Some(t);
    }
    let lanes = isa.lanes();
    let positions = numel(&g.output_shape()[2..]).min(winograd::tiles(g)?);
    let rows = g.out_per_group();
    let mut shapes: Vec<(usize, usize, f32)> = tile_shapes(isa).to_vec();
    shapes.sort_by(|a, b| {
        tile_cost(rows, positions, lanes, *a).total_cmp(&tile_cost(rows, positions, lanes, *b))
    });
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
    let own = shapes
        .iter()
        .find(|t| fits(t, threads).is_some_and(|f| f.registers == registers));
    let &(mr, v, _) = match own {
        Some(t) if options.once && registers && threads != winograd::DECISION_THREADS => t,
        _ => decided,
    };
    Some((mr, v))
}

/// Below this many output channels per group the input is read in place, not packed:
/// a packed panel is reused by every output channel, so it pays only when there are many.
const INPLACE_BELOW: usize = 8;

fn kernel_for<T: Element>(isa: Isa, inplace: bool, mr: usize, v: usize) -> Option<Kernel<T>> {
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
struct Choice {
    algorithm: Algorithm,
    reason: String,
    forced: Option<Algorithm>,
    winograd_tile: Option<(usize, usize)>,
}

fn choose<T: Element>(g: &Geometry, options: &PlanOptions) -> Choice {
    let forced = options.algorithm.or_else(Algorithm::from_env);
    let (mut algorithm, mut reason) = match forced {
        Some(a) => (a, "forced by the caller or TCONV_ALGORITHM".to_string()),
        None if col2im_pays(g, std::mem::size_of::<T>())
            && options.inplace.is_none()
            && options.tile.is_none() =>
        {
            (Algorithm::Col2im, col2im_reason(g))
        }
        None if winograd::pays(g, options.once)
            && options.isa_for::<T>() != Isa::Scalar
            && options.inplace.is_none()
            && options.tile.is_none() =>
        {
            (Algorithm::Winograd, winograd_reason(g, options.once))
        }
        None => (Algorithm::Direct, direct_reason(g)),
    };
    let elem = std::mem::size_of::<T>();
    if algorithm == Algorithm::Col2im && g.op == Op::Conv && !im2col::fits(g, elem) {
        algorithm = Algorithm::Direct;
        reason = format!(
            "{reason}; but im2col's columns for one tile of positions would take more than \
             a band, so {}",
            direct_reason(g)
        );
    }
    if algorithm == Algorithm::Col2im && g.op == Op::ConvTranspose && !col2im::fits(g, elem) {
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
    let winograd_tile = (algorithm == Algorithm::Winograd)
        .then(|| winograd_tile::<T>(g, isa, options, forced.is_some(), threads))
        .flatten();
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
    }
}

/// Whether the input gradient of `g` (its adjoint, planned to run once) takes Winograd tiles
/// with fewer columns on `threads` threads than on one: its scratch bound then holds two
/// tasks' smaller panels only (dcgan2's input gradient: 16-tile panels at 2 threads, 32 at
/// 1).
pub(crate) fn input_tiles_shrink<T: Element>(
    g: &Geometry,
    options: &PlanOptions,
    threads: usize,
) -> bool {
    let adjoint = g.adjoint();
    let on = |t: usize| {
        let o = PlanOptions {
            threads: Some(t),
            once: true,
            ..options.clone()
        };
        choose::<T>(&adjoint, &o).winograd_tile.map(|(_, v)| v)
    };
    matches!((on(1), on(threads)), (Some(one), Some(many)) if many < one)
}

impl<T: Element> Plan<T> {
    /// Plan `g` with weight `w` (PyTorch layout, row-major).
    ///
    /// # Errors
    /// A forced tile shape that no kernel implements, or a weight of the wrong length.
    pub fn from_geometry(g: Geometry, w: &[T], options: &PlanOptions) -> Result<Plan<T>> {
        Plan::build(g, w, options, None)
    }

    /// [`Plan::from_geometry`], taking the packed weights from `packs` where it holds them
    /// for this plan's packing (and keeping them there otherwise): `w` must be the weight
    /// `packs` was filled from.
    pub(crate) fn build(
        g: Geometry,
        w: &[T],
        options: &PlanOptions,
        packs: Option<&PackCache>,
    ) -> Result<Plan<T>> {
        if w.len() != numel(&g.weight_shape()) {
            return fail(ErrorKind::ShapeMismatch {
                what: "weight data",
                got: vec![w.len()],
                expected: g.weight_shape(),
            });
        }
        let Choice {
            algorithm,
            mut reason,
            forced,
            winograd_tile,
        } = choose::<T>(&g, options);
        let isa = options.isa_for::<T>();
        let threads = options.threads_for(&g);
        // Packed weights go into a thread's scratch pool only where they live as long as
        // one call: a plan that runs once and keeps its packing in no cache (a pooled
        // buffer may be larger than asked, and the pool would lose it to the cache).
        let pooled = options.once && packs.is_none();
        // Depthwise layers are bound by moving data: whole rows at a time (unless a test
        // forces the tile kernels).
        let rows = (algorithm == Algorithm::Direct
            && g.in_per_group() == 1
            && g.out_per_group() == 1
            && options.inplace.is_none()
            && options.tile.is_none())
        .then(|| DepthwiseRows::new(&g, w, isa));
        if rows.as_ref().is_some_and(|r| r.by_taps()) {
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
            reason = match forced {
                None => taps,
                Some(_) => format!("{reason}; {taps}"),
            };
        } else if rows.is_some() {
            reason = format!(
                "{reason}; depthwise (one input and one output channel per group), so by output \
                 rows: each phase row summed in registers over a zero-margined copy of the \
                 plane, the phase rows interleaved into the output (at stride 8, blocks of \
                 8 positions of all 8 phases summed and interleaved in registers)"
            );
        }
        let direct = if algorithm == Algorithm::Direct && rows.is_none() {
            let spec = DirectSpec::new(&g);
            let lanes = isa.lanes();
            let per_image = spec.flat_len();
            let inplace = match options.inplace {
                Some(b) => b,
                None => g.out_per_group() < INPLACE_BELOW,
            };
            // Depthwise layers run as one group of `groups` output channels, each kernel row
            // reading its own input channel: MR channels per kernel call instead of one.
            let depthwise =
                inplace && g.groups > 1 && g.in_per_group() == 1 && g.out_per_group() == 1;
            let rows_per_group = if depthwise {
                g.groups
            } else {
                g.out_per_group()
            };
            let shapes = if inplace {
                crate::fast::inplace::tile_shapes(isa)
            } else {
                tile_shapes(isa)
            };
            // Store all last-axis residues of a tile together, in output order: in-place
            // kernels always (measured ~10% faster on fcn_dw), packed kernels at stride 2
            // and 8, where the residues interleave with vector shuffles (phase by phase,
            // a stride-8 store is one scalar per element: 8% of hifigan1d's time).
            let s_last = spec.out_stride[g.axes.len() - 1];
            let group_size = if (inplace || s_last == 2 || s_last == 8)
                && s_last > 1
                && s_last <= crate::fast::direct::MAX_GROUP
            {
                s_last
            } else {
                1
            };
            // Where the residues interleave, a tile across two rows packs and stores in two
            // runs: the tiles are counted as if each row were tiled on its own (where rows
            // hold a tile). unet (rows of 64) then takes 6x4, one row a tile, over 8x3:
            // 5.93-5.99 ms against 6.23-6.38 (medians of 30, two rounds; 4x4: 5.85-5.98).
            let row = spec
                .phases
                .iter()
                .map(|p| p.extents[g.axes.len() - 1])
                .max()
                .unwrap_or(1)
                .max(1);
            let cost = |t: &(usize, usize, f32)| {
                let tl = t.1 * lanes;
                let flat = if group_size > 1 && row >= tl {
                    per_image / row * row.div_ceil(tl) * tl
                } else {
                    per_image
                };
                tile_cost(rows_per_group, flat, lanes, *t)
            };
            let (mr, v) = match options.tile {
                Some(t) => t,
                None => shapes
                    .iter()
                    .min_by(|a, b| cost(a).total_cmp(&cost(b)))
                    .map_or((1, 4), |t| (t.0, t.1)),
            };
            let Some(kernel) = kernel_for::<T>(isa, inplace, mr, v) else {
                return fail(ErrorKind::NoSuchKernel {
                    tile: (mr, v),
                    available: shapes.iter().map(|t| (t.0, t.1)).collect(),
                });
            };
            let exec = depthwise.then(|| Geometry {
                groups: 1,
                ..g.clone()
            });
            // The (G, 1, *k) weight of a depthwise layer is read as one group of G output
            // channels from 1 input.
            let view = depthwise.then(|| Geometry {
                groups: 1,
                in_channels: 1,
                out_channels: g.groups,
                ..g.clone()
            });
            let view = view.as_ref().unwrap_or(&g);
            let packed = PackCache::get_or_pack(
                packs,
                || pack_key(view, &spec, mr),
                || pack_weights(view, &spec, w, mr, (threads, pooled)),
                |p| p.data.len() * std::mem::size_of::<T>(),
            );
            // Split the work into about 4 tasks per thread: batch items first, then row bands.
            let q0 = spec
                .phases
                .iter()
                .map(|p| p.extents[0])
                .max()
                .unwrap_or(1)
                .max(1);
            let want = if threads <= 1 { 1 } else { 4 * threads };
            let per_group = want
                .div_ceil(exec.as_ref().map_or(g.groups, |e| e.groups))
                .max(1);
            let batch_tasks = per_group.min(g.batch.max(1));
            let batch_chunk = g.batch.max(1).div_ceil(batch_tasks);
            let row_tasks = per_group.div_ceil(batch_tasks).min(q0);
            let chunk_rows = q0.div_ceil(row_tasks);
            let strided_loads = crate::fast::strided_conv::applies(
                &g,
                (&spec, &kernel, depthwise),
                (mr, v, lanes),
                isa,
            );
            // The strided-conv path tiles its panels itself: its table has no tiles.
            let table = if strided_loads {
                TileTable::without_tiles(&g, &spec, v * lanes, group_size)
            } else {
                TileTable::new(&g, &spec, v * lanes, chunk_rows, group_size)
            };
            let mut direct = DirectKernel {
                spec,
                packed,
                kernel,
                mr,
                v,
                lanes,
                strided_loads,
                table,
                batch_chunk,
                depthwise,
                exec,
                items_cap: usize::MAX,
            };
            // No more scratch than the output holds: fewer tiles per group where all
            // threads' panels would outgrow it (dcgan1 at 2 threads: 1.31 MB for 1.05 MB).
            let out_len = numel(&g.output_shape());
            direct.items_cap = (out_len / (threads * direct.item_len(&g).max(1))).max(1);
            Some(direct)
        } else {
            None
        };
        let gemm = |rows: usize, positions: usize| gemm_kernel::<T>(isa, options, rows, positions);
        let col2im = (algorithm == Algorithm::Col2im && g.op == Op::ConvTranspose)
            .then(|| {
                let rows = g.out_per_group() * numel(&g.kernel_shape());
                gemm(rows, numel(&g.input_shape()[2..]))
                    .map(|(f, mr, v)| Col2im::new(&g, w, f, (mr, v, isa.lanes()), threads))
            })
            .transpose()?;
        let im2col = (algorithm == Algorithm::Col2im && g.op == Op::Conv)
            .then(|| {
                gemm(g.out_per_group(), numel(&g.output_shape()[2..]))
                    .map(|(f, mr, v)| Im2col::new(&g, w, f, (mr, v, isa.lanes()), threads))
            })
            .transpose()?;
        let winograd = winograd_tile
            .map(|tile| {
                let options = PlanOptions {
                    tile: Some(tile),
                    ..options.clone()
                };
                gemm_kernel::<T>(isa, &options, 0, 0).map(|(f, mr, v)| {
                    Winograd::new(
                        &g,
                        w,
                        f,
                        (mr, v, isa.lanes(), isa),
                        (threads, pooled),
                        packs,
                    )
                    .expect("the planner checked that Winograd tiles apply")
                })
            })
            .transpose()?;
        let weight = if algorithm == Algorithm::Reference {
            w.to_vec()
        } else {
            Vec::new()
        };
        Ok(Plan {
            geometry: g,
            algorithm,
            reason,
            threads,
            isa,
            direct,
            rows,
            col2im,
            im2col,
            winograd,
            weight,
        })
    }

    /// Plan `op` for arrays of these shapes, packing `w` once.
    ///
    /// # Errors
    /// Any invalid shape or parameter (see [`Geometry::new`]).
    pub fn new<'w, D: Dimension>(
        op: Op,
        input_shape: &[usize],
        w: impl AsArray<'w, T, D>,
        bias_len: Option<usize>,
        params: &ConvParams,
        options: &PlanOptions,
    ) -> Result<Plan<T>> {
        let w = w.into().into_dyn();
        let bias_shape = bias_len.map(|b| vec![b]);
        let g = Geometry::new(op, input_shape, w.shape(), bias_shape.as_deref(), params)?;
        let wc = contiguous(&w);
        Plan::from_geometry(g, &wc, options)
    }

    /// The address of the packed weights this plan shares through a
    /// [`PackCache`], if it has any.
    pub(crate) fn packing_id(&self) -> Option<*const ()> {
        match (&self.direct, &self.winograd) {
            (Some(d), _) => Some(std::sync::Arc::as_ptr(&d.packed) as *const ()),
            (_, Some(w)) => Some(w.packing_id()),
            _ => None,
        }
    }

    /// The resolved geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }
    /// The chosen algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// Threads the plan runs on.
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// Bytes the plan holds for its lifetime: the packed weights (about the weight's own
    /// size) and the tile table.
    pub fn packed_bytes(&self) -> usize {
        if let Some(c) = &self.col2im {
            return c.packed_bytes();
        }
        if let Some(c) = &self.im2col {
            return c.packed_bytes();
        }
        if let Some(c) = &self.winograd {
            return c.packed_bytes();
        }
        match (&self.direct, &self.rows) {
            (Some(d), _) => d.packed.data.len() * std::mem::size_of::<T>() + d.table.bytes(),
            (None, Some(_)) => numel(&self.geometry.weight_shape()) * std::mem::size_of::<T>(),
            (None, None) => self.weight.len() * std::mem::size_of::<T>(),
        }
    }

    /// Bytes of scratch memory one execution allocates beyond input and output: any
    /// repacked input, plus per thread its input panels and tile accumulators (bounded by
    /// the L2 budget, independent of the batch).
    pub fn workspace_bytes(&self) -> usize {
        let size = std::mem::size_of::<T>();
        if let Some(r) = &self.rows {
            return self.threads * r.scratch_len(&self.geometry) * size;
        }
        if let Some(c) = &self.col2im {
            return self.threads * c.scratch_len(&self.geometry) * size;
        }
        if let Some(c) = &self.im2col {
            return self.threads * c.scratch_len() * size;
        }
        if let Some(c) = &self.winograd {
            return self.threads * c.scratch_len() * size;
        }
        match &self.direct {
            None => 0,
            // No copy of the input: a panel and a tile per thread.
            Some(d) if d.strided_loads => {
                let tile = (d.mr, d.v, d.lanes);
                self.threads
                    * crate::fast::strided_conv::scratch_len(&self.geometry, &d.spec, tile)
                    * size
            }
            Some(d) => {
                let g = &self.geometry;
                let source = match &d.spec.source {
                    SourceLayout::Direct => 0,
                    _ => g.batch * g.in_channels * d.spec.channel_stride,
                };
                (source + self.threads * d.scratch_len(g)) * size
            }
        }
    }

    /// A one-line name for the algorithm and kernel, e.g. `direct/avx512 16x1`.
    pub fn label(&self) -> String {
        match &self.direct {
            Some(d) => {
                let family = match d.kernel {
                    _ if d.strided_loads => "strided-loads",
                    Kernel::Packed(_) => "packed",
                    Kernel::Inplace(_) => "inplace",
                };
                format!(
                    "{}/{}/{} {}x{}",
                    self.algorithm.name(),
                    family,
                    self.isa,
                    d.mr,
                    d.v
                )
            }
            None if self.col2im.is_some() => {
                let c = self.col2im.as_ref().expect("checked");
                format!("{}/{} {}x{}", self.algorithm.name(), self.isa, c.mr, c.v)
            }
            None if self.im2col.is_some() => {
                let c = self.im2col.as_ref().expect("checked");
                format!("im2col/{} {}x{}", self.isa, c.mr, c.v)
            }
            None if self.winograd.is_some() => {
                let c = self.winograd.as_ref().expect("checked");
                format!("winograd {}/{} {}x{}", c.name(), self.isa, c.mr, c.v)
            }
            None if self.rows.is_some() => {
                let family = if self.rows.as_ref().is_some_and(|r| r.by_taps()) {
                    "depthwise-taps"
                } else {
                    "depthwise-rows"
                };
                format!("{}/{family}/{}", self.algorithm.name(), self.isa)
            }
            None => self.algorithm.name().to_string(),
        }
    }

    /// Run on `x` (the planned input shape) with an optional bias.
    ///
    /// # Errors
    /// `x` or the bias not of the planned shapes.
    pub fn execute<'x, D: Dimension>(
        &self,
        x: impl AsArray<'x, T, D>,
        bias: Option<ArrayView1<'_, T>>,
    ) -> Result<ArrayD<T>> {
        let x = x.into().into_dyn();
        let g = &self.geometry;
        let expected = if g.batched {
            g.input_shape()
        } else {
            g.input_shape()[1..].to_vec()
        };
        if x.shape() != expected.as_slice() {
            return fail(ErrorKind::ShapeMismatch {
                what: "input",
                got: x.shape().to_vec(),
                expected,
            });
        }
        if let Some(b) = &bias {
            if b.len() != g.out_channels {
                return fail(ErrorKind::BiasShape {
                    got: b.shape().to_vec(),
                    expected: g.out_channels,
                });
            }
        }
        let xc = contiguous(&x);
        let bc = bias.map(|b| b.to_vec());
        let mut y = vec![T::zero(); numel(&g.output_shape())];
        self.run(&xc, bc.as_deref(), &mut y);
        let shape = g.user_output_shape();
        Ok(ArrayD::from_shape_vec(IxDyn(&shape), y).expect("output buffer matches the geometry"))
    }

    /// Run on contiguous data: `x (N, C_in, *in)`, `y (N, C_out, *out)` (overwritten).
    pub fn run(&self, x: &[T], bias: Option<&[T]>, y: &mut [T]) {
        let g = &self.geometry;
        if let Some(r) = &self.rows {
            r.execute(g, x, bias, y, self.threads);
            return;
        }
        if let Some(c) = &self.col2im {
            c.execute(g, x, bias, y, self.threads);
            return;
        }
        if let Some(c) = &self.im2col {
            c.execute(g, x, bias, y, self.threads);
            return;
        }
        if let Some(c) = &self.winograd {
            c.execute(g, x, bias, y, self.threads);
            return;
        }
        match &self.direct {
            Some(d) => execute(d.exec.as_ref().unwrap_or(g), d, x, bias, y, self.threads),
            None => {
                let r = match g.op {
                    Op::ConvTranspose => crate::reference::scatter_flat(g, x, &self.weight, bias),
                    Op::Conv => crate::reference::gather_flat(g, x, &self.weight, bias),
                };
                y.copy_from_slice(&r);
            }
        }
    }
}

/// Whether GEMM + col2im beats the phase decomposition: a transposed conv with few output
/// channels per group (the phase GEMMs would have fewer rows than a register tile) but a
/// real reduction over input channels, and overlapping taps (otherwise the phases already
/// are the columns). Measured against the in-place kernels at 1 thread (BENCHMARKS.md):
/// 1.3-2x faster from 32 input channels up, a tie at 16, 1.8x slower at 8.
///
/// For a conv, its mirror (im2col + GEMM) where a group has few input channels (fewer than
/// 8) and at least [`IM2COL_MIN_COUT`] output channels: its reduction is short, so the
/// direct engine's tile stores weigh as much as its arithmetic. Measured against the direct
/// engine at 1 thread (BENCHMARKS.md): 1.1-1.7x faster with 3 to 6 input channels, a tie
/// at 8, 0.95x at 16.
fn col2im_pays(g: &Geometry, elem: usize) -> bool {
    match g.op {
        Op::ConvTranspose => {
            g.out_per_group() < INPLACE_BELOW
                && g.in_per_group() >= COL2IM_MIN_CIN
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

/// Fewest input channels per group for [`col2im_pays`].
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

impl<T: Element> fmt::Display for Plan<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.geometry;
        writeln!(
            f,
            "op:          {} input {:?} -> output {:?}",
            g.op.name(),
            g.input_shape(),
            g.output_shape()
        )?;
        if self.im2col.is_some() {
            writeln!(
                f,
                "algorithm:   {} (a conv: its mirror, im2col + GEMM)",
                self.algorithm.name()
            )?;
        } else {
            writeln!(f, "algorithm:   {}", self.algorithm.name())?;
        }
        writeln!(f, "why:         {}", self.reason)?;
        if let Some(d) = &self.direct {
            writeln!(
                f,
                "kernel:      {} tile of {} output channels x {} vectors of {} positions",
                self.isa, d.mr, d.v, d.lanes
            )?;
            for (i, p) in d.spec.phases.iter().enumerate().take(8) {
                writeln!(
                    f,
                    "phase {i}:     residue {:?}, extents {:?}, {} taps -> per image M={} (C_out/g), K={} (C_in/g x taps), N={} positions",
                    p.residue,
                    p.extents,
                    p.taps.len(),
                    g.out_per_group(),
                    g.in_per_group() * p.taps.len(),
                    numel(&p.extents)
                )?;
            }
            if d.spec.phases.len() > 8 {
                writeln!(f, "             ... {} phases in all", d.spec.phases.len())?;
            }
            if d.strided_loads {
                writeln!(
                    f,
                    "source:      the input itself: each tile's panel dealt from it by \
                     stride-2 vector loads (no polyphase copy)"
                )?;
            } else {
                writeln!(f, "source:      {:?}", d.spec.source)?;
            }
        }
        if let Some(c) = &self.col2im {
            writeln!(
                f,
                "kernel:      {} tile of {} rows x {} vectors of {} positions",
                self.isa, c.mr, c.v, c.lanes
            )?;
            writeln!(
                f,
                "gemm:        per image and group M={} (C_out/g x taps), K={} (C_in/g), N={} input positions; col2im sums {} taps per output at most",
                c.rows,
                g.in_per_group(),
                numel(&g.input_shape()[2..]),
                g.axes.iter().map(|a| a.kernel.div_ceil(a.stride)).product::<usize>()
            )?;
            writeln!(f, "bands:       {} output rows (axis 0) per band", c.band)?;
        }
        if let Some(c) = &self.im2col {
            writeln!(
                f,
                "kernel:      {} tile of {} output channels x {} vectors of {} positions",
                self.isa, c.mr, c.v, c.lanes
            )?;
            writeln!(
                f,
                "gemm:        per image and group M={} (C_out/g), K={} (C_in/g x taps), N={} output positions, over im2col columns",
                g.out_per_group(),
                c.kdim,
                numel(&g.output_shape()[2..]),
            )?;
            writeln!(f, "bands:       {} output positions per band", c.band)?;
        }
        if let Some(c) = &self.winograd {
            writeln!(
                f,
                "kernel:      {} tile of {} output channels x {} vectors of {} tiles",
                self.isa, c.mr, c.v, c.lanes
            )?;
            let points: usize = c.transforms.iter().map(|t| t.alpha).product();
            writeln!(
                f,
                "winograd:    {} over {} phases with taps: {} points per tile, per phase and point M={} (C_out/g), K={} (input components x C_in/g), N<={} tiles per task",
                c.name(),
                c.live_phases(),
                points,
                g.out_per_group(),
                c.kdim,
                c.pitch
            )?;
        }
        if let Some(r) = &self.rows {
            if r.by_taps() {
                writeln!(
                    f,
                    "kernel:      {} depthwise tap vectors, {} channel planes",
                    self.isa,
                    g.batch * g.out_channels
                )?;
            } else {
                writeln!(
                    f,
                    "kernel:      {} depthwise rows, {} phases, {} channel planes",
                    self.isa,
                    r.spec.phases.len(),
                    g.batch * g.out_channels
                )?;
            }
        }
        writeln!(
            f,
            "packed:      {} bytes (weights packed once, tile table)",
            self.packed_bytes()
        )?;
        writeln!(
            f,
            "workspace:   {} bytes per execution",
            self.workspace_bytes()
        )?;
        writeln!(f, "threads:     {}", self.threads)?;
        write!(f, "flops:       {}", g.flops())
    }
}
