//! The planner: chooses how to compute a problem, and is the only thing that dispatches.
//!
//! A [`Plan`] is a value: it names the algorithm and why, the tile and ISA, the work shapes,
//! the workspace and the thread count, and it holds the packed weights, so it can be built
//! once and executed many times. `TCONV_ALGORITHM=reference|direct|col2im|winograd` and
//! `TCONV_ISA=…` force a choice (for tests), as do the fields of [`PlanOptions`].

//!
//! Here: the options, the plan and its execution; `choose` (which algorithm and tile, and
//! why), `direct` (building the direct engine's part), `report` (a plan in words).

mod choose;
mod direct;
mod report;
mod tune;

pub(crate) use choose::input_tiles;
use choose::{choose, gemm_kernel, Choice};

use ndarray::{ArrayD, ArrayView1, AsArray, Dimension};

use crate::error::{fail, ErrorKind, Result};
use crate::fast::batch_gemm::{self, BatchGemm};
use crate::fast::col2im::Col2im;
use crate::fast::depthwise::DepthwiseRows;
use crate::fast::direct::{execute, zeros, DirectKernel};
use crate::fast::im2col::Im2col;
use crate::fast::pack::PackCache;
use crate::fast::spec::SourceLayout;
use crate::fast::winograd::Winograd;
use crate::fast::Isa;
use crate::geometry::Geometry;
use crate::params::{ConvParams, Op};
use crate::tensor::{aligned_written, aligned_zeros, contiguous, numel, Element};

/// The algorithms a plan can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// The reference loops (scatter for conv_transpose, gather for conv).
    Reference,
    /// Phase decomposition into dense stride-1 sub-problems run by SIMD direct kernels.
    Direct,
    /// Transposed conv as one GEMM over (output channel, tap) rows plus a col2im sum, for
    /// few output channels per group; for a conv with few input channels per group its
    /// mirror, an im2col gather plus one GEMM over (input channel, tap). Where the small
    /// side (a conv's output, a transposed conv's input) has one position per image, one
    /// GEMM over the batch instead (label `batch-gemm`: a GAN generator's 1×1 projection,
    /// a discriminator's last conv). Forced where its columns would not fit, the plan runs
    /// `Direct` and says why.
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
    /// Measure instead of only modelling (as FFTW's `FFTW_MEASURE`): time every register
    /// tile the planner would accept for the chosen algorithm on this machine, running the
    /// layer on a scratch input, and keep the fastest. Planning then takes a few runs of
    /// the layer per tile (and holds one input and one output while it does); the results
    /// are bitwise the same on every tile. For plans built once and run many times: it is
    /// ignored where `once` is set, a tile is forced, or the plan shares packed weights (a
    /// [`crate::Layer`]), and measures nothing where the algorithm has no tile to choose.
    pub tune: bool,
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
    /// One GEMM over the batch (`Col2im` where the small side has one position).
    batch: Option<BatchGemm<T>>,
    /// Winograd tiles over the phases.
    winograd: Option<Winograd<T>>,
    /// Reference path keeps the weight.
    weight: Vec<T>,
    /// The register tiles a tuning plan measures: the chosen one first, the others only in
    /// the plan a tuning starts from ([`Plan::assemble`]'s `every`); none where the
    /// algorithm has no tile to choose.
    candidates: Vec<(usize, usize)>,
}

impl<T: Element> Plan<T> {
    /// Plan `g` with weight `w` (PyTorch layout, row-major).
    ///
    /// # Errors
    /// A forced tile shape that no kernel implements, or a weight of the wrong length.
    pub fn from_geometry(g: Geometry, w: &[T], options: &PlanOptions) -> Result<Plan<T>> {
        Plan::build(g, w, options, None)
    }

    /// The algorithm [`Plan::from_geometry`] would take for `g` with `options` (without
    /// building the plan).
    pub(crate) fn algorithm_for(g: &Geometry, options: &PlanOptions) -> Algorithm {
        choose::<T>(g, options, None, false).algorithm
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
        if options.tune && !options.once && options.tile.is_none() && packs.is_none() {
            return tune::tuned(g, w, options);
        }
        Plan::assemble(g, w, options, packs, false)
    }

    /// [`Plan::build`] of a checked weight, without tuning; with `every`, the plan's
    /// `candidates` are every tile a tuning plan may take, else its own tile only.
    fn assemble(
        g: Geometry,
        w: &[T],
        options: &PlanOptions,
        packs: Option<&PackCache>,
        every: bool,
    ) -> Result<Plan<T>> {
        let Choice {
            algorithm,
            mut reason,
            forced,
            winograd_tile,
            winograd_candidates,
        } = choose::<T>(&g, options, packs, every);
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
        if let Some(r) = &rows {
            reason = choose::depthwise_reason::<T>(&g, isa, r.by_taps(), forced, reason);
        }
        let direct = (algorithm == Algorithm::Direct && rows.is_none())
            .then(|| direct::kernel(&g, w, options, packs, (isa, threads, pooled)))
            .transpose()?;
        let half = choose::half_width(isa);
        let gemm = |shape| gemm_kernel::<T>(isa, options, shape, half);
        let single = algorithm == Algorithm::Col2im && batch_gemm::applies(&g);
        let batch = single
            .then(|| {
                let (kdim, cols) = batch_gemm::shape(&g);
                gemm((g.batch, cols, kdim))
                    .map(|(f, mr, v)| BatchGemm::new(&g, w, f, (mr, v, isa.lanes()), threads))
            })
            .transpose()?;
        let col2im = (algorithm == Algorithm::Col2im && g.op == Op::ConvTranspose && !single)
            .then(|| {
                let rows = g.out_per_group() * numel(&g.kernel_shape());
                gemm((rows, numel(&g.input_shape()[2..]), g.in_per_group()))
                    .map(|(f, mr, v)| Col2im::new(&g, w, f, (mr, v, isa.lanes()), threads))
            })
            .transpose()?;
        let im2col = (algorithm == Algorithm::Col2im && g.op == Op::Conv && !single)
            .then(|| {
                let k = g.in_per_group() * numel(&g.kernel_shape());
                gemm((g.out_per_group(), numel(&g.output_shape()[2..]), k))
                    .map(|(f, mr, v)| Im2col::new(&g, w, f, (mr, v, isa.lanes()), threads))
            })
            .transpose()?;
        let winograd = winograd_tile
            .map(|tile| {
                let options = PlanOptions {
                    tile: Some(tile),
                    ..options.clone()
                };
                gemm_kernel::<T>(isa, &options, (0, 0, 0), half).map(|(f, mr, v)| {
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
        // (Not for the batch GEMM's dot products: they take no register tile.)
        let tiled_batch = batch.as_ref().is_some_and(|b| !b.dots);
        if half
            && options.tile.is_none()
            && (col2im.is_some() || im2col.is_some() || tiled_batch || winograd.is_some())
        {
            reason.push_str(
                "; the register tile weighed for AVX-512 on 256-bit units (every tile from \
                 3x4 up at the FMA peak here)",
            );
        }
        let weight = if algorithm == Algorithm::Reference {
            w.to_vec()
        } else {
            Vec::new()
        };
        let candidates = match (&direct, &winograd) {
            (Some(d), _) if every => direct::candidates::<T>(&g, options, isa, (d.mr, d.v)),
            (Some(d), _) => vec![(d.mr, d.v)],
            (_, Some(_)) => winograd_candidates,
            _ => Vec::new(),
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
            batch,
            winograd,
            weight,
            candidates,
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

    /// The plan's Winograd part, where it has one (for the engine's own tests).
    #[cfg(test)]
    pub(crate) fn winograd_part(&self) -> Option<&Winograd<T>> {
        self.winograd.as_ref()
    }

    /// The register tile `(output channels, vectors)` of the direct engine's or Winograd
    /// tiles' kernel, where the plan runs one it chose.
    pub fn tile(&self) -> Option<(usize, usize)> {
        match (&self.direct, &self.winograd) {
            (Some(d), _) => Some((d.mr, d.v)),
            (_, Some(w)) => Some((w.mr, w.v)),
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
        if let Some(c) = &self.batch {
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
        if let Some(c) = &self.batch {
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
        Ok(self.run_aligned(&xc, bc.as_deref(), &g.user_output_shape(), false))
    }

    /// [`Plan::run`] into a new array of `shape` (the output's elements, batched or not),
    /// starting on a cache line: see [`aligned_zeros`]. An im2col plan writes it without
    /// zeroing it first, unless `zero_first`.
    pub(crate) fn run_aligned(
        &self,
        x: &[T],
        bias: Option<&[T]>,
        shape: &[usize],
        zero_first: bool,
    ) -> ArrayD<T> {
        assert_eq!(
            numel(shape),
            numel(&self.geometry.output_shape()),
            "output shape"
        );
        if let (Some(c), false) = (&self.im2col, zero_first) {
            let (g, threads) = (&self.geometry, self.threads);
            // Safety: `execute_uninit` writes every element of its output.
            return unsafe { aligned_written(shape, |y| c.execute_uninit(g, x, bias, y, threads)) };
        }
        let mut y = aligned_zeros(shape, self.threads);
        self.run(
            x,
            bias,
            y.as_slice_mut().expect("a new array is contiguous"),
        );
        y
    }

    /// [`Plan::run`] into a new output buffer (zeroed on the plan's threads where large:
    /// see [`zeros`]; not zeroed for an im2col plan, which writes every element).
    pub(crate) fn run_new(&self, x: &[T], bias: Option<&[T]>) -> Vec<T> {
        let len = numel(&self.geometry.output_shape());
        if let Some(c) = &self.im2col {
            let mut y = Vec::with_capacity(len);
            let slots = &mut y.spare_capacity_mut()[..len];
            c.execute_uninit(&self.geometry, x, bias, slots, self.threads);
            // Safety: `execute_uninit` wrote all `len` elements.
            unsafe { y.set_len(len) };
            return y;
        }
        let mut y = zeros(len, self.threads);
        self.run(x, bias, &mut y);
        y
    }

    /// Run on contiguous data: `x (N, C_in, *in)`, `y (N, C_out, *out)` (overwritten).
    /// A `y` starting on a 64-byte cache line, as [`aligned_zeros`] makes (and the arrays
    /// this crate returns start), is written faster by layers whose outputs interleave
    /// phases along the last axis (vnet3d 1.06-1.07x, unet 1.03-1.04x, fcn_dw 1.14x).
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
        if let Some(c) = &self.batch {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan whose GEMM tile was weighed for AVX-512 on 256-bit units says so in its
    /// reason (hifigan1d's Winograd tiles, dcgan4's input gradient's im2col), exactly on
    /// such CPUs and never where the caller forced the tile or the ISA is not AVX-512.
    #[test]
    fn half_width_tiles_are_named_in_the_reason() {
        let says = |op, x: &[usize], w: &[usize], p: &ConvParams, options: &PlanOptions| {
            let wv = ndarray::ArrayD::<f32>::zeros(w);
            let plan = Plan::new(op, x, &wv, None, p, options).unwrap();
            plan.reason.contains("256-bit units")
        };
        let hifigan = ConvParams::new().stride(&[8]).padding(&[4]);
        let s2 = ConvParams::new().stride(&[2, 2]).padding(&[1, 1]);
        let (x1, w1) = ([4, 512, 256], [512, 256, 16]);
        let (x2, w2) = ([16, 3, 64, 64], [64, 3, 4, 4]);
        let default = PlanOptions::default();
        let want = choose::half_width(default.isa_for::<f32>()); // TCONV_ISA may force
        assert_eq!(says(Op::ConvTranspose, &x1, &w1, &hifigan, &default), want);
        assert_eq!(says(Op::Conv, &x2, &w2, &s2, &default), want);
        let avx2 = PlanOptions {
            isa: Some(Isa::Avx2),
            ..PlanOptions::default()
        };
        assert!(!says(Op::ConvTranspose, &x1, &w1, &hifigan, &avx2));
        let forced = PlanOptions {
            algorithm: Some(Algorithm::Col2im),
            tile: Some((2, 4)), // on every ISA's list
            ..PlanOptions::default()
        };
        assert!(!says(Op::Conv, &x2, &w2, &s2, &forced));
    }

    /// Output channels cut into ranges between tasks (as the direct engine and the Winograd
    /// tiles do where a batch of one streams weights that outgrow the L2) give the same
    /// bits as one range, and the reference's results, on small problems: 1-3 axes,
    /// strides, pads, dilation, output_padding, groups, a bias, 1 and 2 images, packed
    /// panels, in-place kernels, pair kernels, Winograd tiles, 1 and 3 threads, 2 to 5
    /// ranges.
    #[test]
    fn channel_ranges_between_tasks_give_the_same_bits() {
        // (op, input shape, weight shape, [stride, padding, dilation, output_padding, groups])
        type Case = (Op, &'static [usize], &'static [usize], [usize; 5]);
        let ct = Op::ConvTranspose;
        let cases: [Case; 10] = [
            (ct, &[1, 8, 5, 6], &[8, 40, 4, 4], [2, 1, 1, 0, 1]),
            (ct, &[2, 8, 3, 4], &[8, 20, 4, 4], [2, 1, 1, 1, 2]),
            (ct, &[1, 6, 9], &[6, 33, 16], [8, 4, 1, 0, 1]),
            (ct, &[1, 12, 7], &[12, 35, 3], [2, 0, 2, 1, 1]),
            (ct, &[1, 10, 6], &[10, 30, 2], [3, 0, 1, 0, 1]),
            (ct, &[2, 4, 3, 3, 2], &[4, 20, 2, 2, 2], [2, 0, 1, 0, 1]),
            (ct, &[1, 16, 6, 6], &[16, 48, 3, 3], [1, 1, 1, 0, 1]),
            (ct, &[1, 8, 6, 5], &[8, 7, 3, 3], [2, 1, 1, 0, 1]),
            (Op::Conv, &[1, 6, 7, 8], &[37, 6, 3, 3], [1, 1, 1, 0, 1]),
            (Op::Conv, &[2, 10, 9], &[44, 5, 4], [1, 2, 2, 0, 2]),
        ];
        let value = |i: usize, salt: usize| {
            let h = (i ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            (h % 2001) as f32 / 1000.0 - 1.0
        };
        for (op, x_shape, w_shape, [s, p, d, op_pad, groups]) in cases {
            let axes = x_shape.len() - 2;
            let mut params = ConvParams::new()
                .stride(&vec![s; axes])
                .padding(&vec![p; axes])
                .dilation(&vec![d; axes])
                .groups(groups);
            if op_pad > 0 {
                params = params.output_padding(&vec![op_pad; axes]);
            }
            let c_out = if op == Op::Conv {
                w_shape[0]
            } else {
                w_shape[1] * groups
            };
            let g = Geometry::new(op, x_shape, w_shape, Some(&[c_out]), &params).unwrap();
            let x: Vec<f32> = (0..numel(x_shape)).map(|i| value(i, 1)).collect();
            let w: Vec<f32> = (0..numel(w_shape)).map(|i| value(i, 2)).collect();
            let b: Vec<f32> = (0..c_out).map(|i| value(i, 3)).collect();
            let reference = match op {
                Op::Conv => crate::reference::gather_flat(&g, &x, &w, Some(&b)),
                Op::ConvTranspose => crate::reference::scatter_flat(&g, &x, &w, Some(&b)),
            };
            let mut cut_plans = 0;
            let forced = [
                (Algorithm::Direct, None),
                (Algorithm::Direct, Some(true)),
                (Algorithm::Winograd, None),
            ];
            for (algorithm, inplace) in forced {
                for threads in [1, 3] {
                    let options = PlanOptions {
                        algorithm: Some(algorithm),
                        inplace,
                        threads: Some(threads),
                        ..PlanOptions::default()
                    };
                    let mut plan = Plan::from_geometry(g.clone(), &w, &options).unwrap();
                    let case = format!("{op:?} {x_shape:?} {w_shape:?} {options:?}");
                    if plan.direct.is_none() && plan.winograd.is_none() {
                        continue; // depthwise rows, or no such plan: nothing cut
                    }
                    let one = plan.run_new(&x, Some(&b));
                    let near = one
                        .iter()
                        .zip(&reference)
                        .all(|(a, r)| (a - r).abs() < 1e-4);
                    assert!(near, "{case}: not the reference's");
                    cut_plans += 1;
                    for parts in [2, 3, 5] {
                        if let Some(d) = plan.direct.as_mut() {
                            d.channel_parts = parts;
                        }
                        if let Some(wg) = plan.winograd.as_mut() {
                            wg.set_channel_parts(parts);
                        }
                        let cut = plan.run_new(&x, Some(&b));
                        let same = one
                            .iter()
                            .zip(&cut)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{case}: {parts} ranges");
                    }
                }
            }
            assert!(cut_plans >= 2, "{op:?} {x_shape:?}: {cut_plans} plans cut");
        }
    }

    /// The direct engine groups tiles to share weight slices only where the weights
    /// outgrow a quarter of the L2: unet's (135 KiB packed) take one tile a group where the
    /// L2 holds 1 MiB or more, a layer with 1.2 MB of weights several (where the CPU
    /// reports no L2: always several).
    #[test]
    fn tiles_grouped_only_where_the_weights_outgrow_the_l2() {
        let direct = PlanOptions {
            algorithm: Some(Algorithm::Direct),
            threads: Some(1),
            ..PlanOptions::default()
        };
        let per_group = |x: &[usize], w: &[usize]| {
            let wv = ndarray::ArrayD::<f32>::zeros(w);
            let p = ConvParams::new().stride(&[2]);
            let plan = Plan::new(Op::ConvTranspose, x, &wv, None, &p, &direct).unwrap();
            let d = plan.direct.as_ref().expect("a direct plan");
            d.items_per_group(&plan.geometry)
        };
        let small = per_group(&[4, 128, 64, 64], &[128, 64, 2, 2]);
        let large = per_group(&[4, 256, 64, 64], &[256, 300, 2, 2]);
        let l2 = crate::fast::isa::l2_cache_bytes();
        assert!(large > 1, "{large}");
        match l2 {
            Some(l2) if l2 >= 1 << 20 => assert_eq!(small, 1, "L2 {l2}"),
            Some(_) => {}
            _ => assert!(small > 1, "{small}"),
        }
    }
}
