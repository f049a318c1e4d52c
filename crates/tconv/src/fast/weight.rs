//! The weight gradient's fast paths, and which one a layer takes.
//!
//! `∂L/∂w[a, b', k] = Σ_n Σ_i S[n, a, i] · B[n, b, i*s + k*d - p_begin]`, where for
//! conv_transpose `(S, B) = (x, gy)` and for conv `(S, B) = (gy, x)`
//! (`Geometry::weight_sides`; the weight's first axis always indexes the small side).
//! [`grad_weight`] picks, in this order:
//! - outer products where the reduction has a few terms, e.g. one image of 2×2 positions
//!   ([`weight_outer`]), unless Winograd tiles are forced;
//! - Winograd tiles over positions where their cost model says they pay
//!   ([`winograd_weight`]);
//! - depthwise tap vectors, or row dot products where a group has too few `(a, b)` channel
//!   pairs for a register tile ([`weight_rows`]);
//! - row dot products against a thin big side, e.g. a generator's RGB output
//!   ([`weight_thin`]);
//! - the GEMM over positions with the big side read in place where the kernel equals the
//!   stride ([`weight_strided`]);
//! - otherwise the GEMM over positions on packed copies of both sides ([`weight_gemm`],
//!   packed by [`weight_pack`](super::weight_pack)).
//!
//! Every element of `dW` is summed by one task in a fixed order, so the result is bitwise
//! identical for any thread count.

use super::{tap_rows, weight_gemm, weight_outer, weight_rows, weight_strided, weight_thin};
use super::{winograd_weight, Isa};
use crate::geometry::Geometry;
use crate::plan::{Algorithm, PlanOptions};
use crate::tensor::{numel, Element};

/// Below this many (a, b) channel pairs per group the weight gradient uses direct dot
/// products: a 6×16 register tile would be mostly padding.
const SMALL_GEMM: usize = 32;

/// The sizes every weight-gradient path starts from: positions of the small side, of the
/// big side and of the kernel; channels of each side ([`Geometry::side_channels`]), all
/// and per group.
pub(crate) struct Sizes {
    pub(crate) small_size: usize,
    pub(crate) big_size: usize,
    pub(crate) k_size: usize,
    pub(crate) a_ch: usize,
    pub(crate) b_ch: usize,
    pub(crate) a_pg: usize,
    pub(crate) b_pg: usize,
}

impl Sizes {
    pub(crate) fn of(g: &Geometry) -> Sizes {
        let (a_ch, b_ch) = g.side_channels();
        Sizes {
            small_size: numel(&g.small_spatial()),
            big_size: numel(&g.big_spatial()),
            k_size: numel(&g.kernel_shape()),
            a_ch,
            b_ch,
            a_pg: a_ch / g.groups.max(1),
            b_pg: b_ch / g.groups.max(1),
        }
    }
}

/// Per axis, for each kernel index `k`: `(r, c)` with `k·d - p_begin = s·c + r`,
/// `0 <= r < s` — the big-side residue a tap reads and its shift in that residue's grid.
pub(crate) fn residues_and_shifts(g: &Geometry) -> Vec<Vec<(usize, isize)>> {
    g.axes
        .iter()
        .map(|a| {
            let s = a.stride as i64;
            (0..a.kernel)
                .map(|k| {
                    let m = (k * a.dilation) as i64 - a.pad_begin;
                    (m.rem_euclid(s) as usize, m.div_euclid(s) as isize)
                })
                .collect()
        })
        .collect()
}

/// Whether a group has too few `(a, b)` channel pairs for a register tile (fewer than
/// `SMALL_GEMM`): the weight gradient then takes row dot products.
pub(crate) fn few_channel_pairs(g: &Geometry) -> bool {
    let (a, b) = g.side_channels();
    (a / g.groups.max(1)) * (b / g.groups.max(1)) < SMALL_GEMM
}

/// Whether [`grad_weight`] takes Winograd tiles ([`winograd_weight`]): where forced
/// (and they apply), or, with no algorithm forced, where their cost model says they pay on
/// `loops`, the instruction set the element type's loops run on ([`Isa::loops_for`]: the
/// plan's `isa`, or for f64, whose plans are `Scalar`, the CPU's), none where that is
/// scalar.
/// f64 takes them where f32 does, and more: on the Intel Xeon of 2026-12-06 its weight
/// gradients ran 1.3-1.4x faster so for dcgan1-2, 1.4-1.6x for s1k3, 1.2-1.3x for
/// hifigan1d, 1.31-1.33x for dilated (which f32 declines: see
/// [`winograd_weight::pays`]); dcgan3's, modelled 1.01 as for f32, stays on the GEMM
/// (forced, 1.05-1.12x faster).
fn by_winograd(g: &Geometry, options: &PlanOptions, (isa, loops): (Isa, Isa)) -> bool {
    match options.algorithm.or_else(Algorithm::from_env) {
        Some(a) => a == Algorithm::Winograd,
        None => loops != Isa::Scalar && winograd_weight::pays(g, loops, isa != loops),
    }
}

/// The paths of [`grad_weight`], as [`path`] chooses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Outer,
    Winograd,
    Rows,
    Thin,
    Strided,
    Gemm,
}

/// The path [`grad_weight`] takes for `g` in `T`: the one decision that computing,
/// reporting ([`method`]) and scheduling ([`in_parts`]) the weight gradient share.
fn path<T: Element>(g: &Geometry, options: &PlanOptions) -> Path {
    let isa = options.isa_for::<T>();
    let forced = options.algorithm.or_else(Algorithm::from_env);
    if forced != Some(Algorithm::Winograd) && weight_outer::applies(g) {
        Path::Outer
    } else if by_winograd(g, options, (isa, isa.loops_for::<T>())) && winograd_weight::applies(g) {
        Path::Winograd
    } else if few_channel_pairs(g) {
        Path::Rows
    } else if weight_thin::applies(g) {
        Path::Thin
    } else if weight_strided::applies::<T>(g, isa) {
        Path::Strided
    } else {
        Path::Gemm
    }
}

/// How [`grad_weight`] computes the weight gradient of `g` in `T`, in words (for reports).
pub fn method<T: Element>(g: &Geometry, options: &PlanOptions) -> String {
    match path::<T>(g, options) {
        Path::Outer => "outer products of a short reduction".into(),
        Path::Winograd => format!("Winograd {} tiles over positions", winograd_weight::name(g)),
        Path::Rows if tap_rows::applies(g, tap_rows::WEIGHT_MIN_STRIDE) => {
            "depthwise tap vectors".into()
        }
        Path::Rows => "row dot products".into(),
        Path::Thin => "row dot products, thin side".into(),
        Path::Strided => "GEMM over positions, big side in place".into(),
        Path::Gemm => "GEMM over positions".into(),
    }
}

/// Where [`in_parts`]: the GEMM over positions' parts as jobs for a caller to schedule
/// ([`weight_gemm::PartJobs`]; the same bits as [`grad_weight`] on one thread).
pub(crate) fn part_jobs<'a, T: Element>(
    g: &'a Geometry,
    x: &'a [T],
    gy: &'a [T],
    options: &PlanOptions,
) -> weight_gemm::PartJobs<'a, T> {
    let (s, b) = g.weight_sides(x, gy);
    weight_gemm::PartJobs::new(g, s, b, options.isa_for::<T>())
}

/// Whether [`grad_weight`] takes the GEMM over positions and sums its reduction in parts
/// ([`weight_gemm::in_parts`]).
pub(crate) fn in_parts<T: Element>(g: &Geometry, options: &PlanOptions) -> bool {
    path::<T>(g, options) == Path::Gemm
        && g.batch * numel(&g.small_spatial()) > 0
        && weight_gemm::in_parts(g)
}

/// `∂L/∂w` of `g` (shaped `[a][b'][k]`, as the weight) from `x` and the output's gradient
/// `gy`, by the path [`method`] names.
pub fn grad_weight<T: Element>(g: &Geometry, x: &[T], gy: &[T], options: &PlanOptions) -> Vec<T> {
    let (s, b) = g.weight_sides(x, gy);
    let Sizes {
        small_size,
        k_size,
        a_ch,
        b_pg,
        ..
    } = Sizes::of(g);
    let isa = options.isa_for::<T>();
    let threads = options.threads_for(g);
    let path = path::<T>(g, options);
    if path == Path::Winograd {
        if let Some(dw) = winograd_weight::grad_weight(g, x, gy, isa, threads) {
            return dw;
        }
    }
    let mut dw = super::direct::zeros(a_ch * b_pg * k_size, threads);
    if g.batch * small_size == 0 || dw.is_empty() {
        return dw;
    }
    match path {
        Path::Outer => weight_outer::grad_weight(g, s, b, threads, isa.loops_for::<T>(), &mut dw),
        Path::Rows => weight_rows::grad_weight(g, s, b, threads, isa.loops_for::<T>(), &mut dw),
        Path::Thin => weight_thin::grad_weight(g, s, b, threads, isa.loops_for::<T>(), &mut dw),
        Path::Strided => weight_strided::grad_weight(g, s, b, (threads, isa), &mut dw),
        // Winograd here only where its tiles found no kernel for `T` (they always do).
        Path::Gemm | Path::Winograd => weight_gemm::grad_weight(g, s, b, threads, isa, &mut dw),
    }
    dw
}
