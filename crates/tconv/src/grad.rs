//! Gradients of `conv` and `conv_transpose`, built from the forward machinery.
//!
//! With `y = op(x; w) + b` and an upstream gradient `gy = ∂L/∂y`:
//! - `∂L/∂x` is the adjoint op applied to `gy` with the same weight ([`Geometry::adjoint`]):
//!   a conv for conv_transpose, a conv_transpose for conv. It runs through the planner, so
//!   the fast kernels serve it.
//! - `∂L/∂w[a, b', k] = Σ_n Σ_i S[n, a, i] · B[n, b, i*s + k*d - p_begin]`, where for
//!   conv_transpose `(S, B) = (x, gy)` and for conv `(S, B) = (gy, x)` (the weight's first
//!   axis always indexes the "small" side). Per group and tap this is a GEMM over
//!   `(position, batch)`, run on the same packed-panel microkernels; taps that read the same
//!   stride residue share one packed copy of `B` as shifted views ([`grad_weight_fast`]).
//!   Where the kernel equals the stride, `B` is read in place instead
//!   ([`fast::weight_strided`](crate::fast::weight_strided)).
//! - `∂L/∂b[c] = Σ_n Σ_positions gy[n, c, ·]`.
//!
//! Only the requested gradients are computed. Every gradient element is produced by one task
//! in a fixed order, so results are bitwise identical for any thread count.

use std::ops::Range;
use std::sync::Arc;

use ndarray::{ArrayD, AsArray, Dimension, IxDyn};

use crate::error::{fail, ErrorKind, Result};
use crate::fast::direct::{run_chunks, run_each};
use crate::fast::kernels::{portable, tile_shapes, Rows};
use crate::fast::tap_rows::{self, TapRows};
use crate::fast::{scratch, weight_strided, winograd, winograd_weight, Isa, REDUCTION_PARTS};
use crate::geometry::Geometry;
use crate::params::{ConvParams, Op};
use crate::plan::{Algorithm, Plan, PlanOptions};
use crate::tensor::{contiguous, numel, positions, Element};

/// Which gradients to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// `∂L/∂x`.
    pub input: bool,
    /// `∂L/∂w`.
    pub weight: bool,
    /// `∂L/∂b`.
    pub bias: bool,
}

impl Wanted {
    /// All three.
    pub fn all() -> Self {
        Wanted {
            input: true,
            weight: true,
            bias: true,
        }
    }
}

/// The requested gradients, shaped like `x`, `w` and the bias `(C_out,)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients<T> {
    /// `∂L/∂x`, if requested.
    pub input: Option<ArrayD<T>>,
    /// `∂L/∂w`, if requested.
    pub weight: Option<ArrayD<T>>,
    /// `∂L/∂b`, if requested.
    pub bias: Option<ArrayD<T>>,
}

/// Gradients of `conv(x, w, b)` for the upstream gradient `grad_y` (shaped like the output).
///
/// # Errors
/// Invalid shapes or parameters, or `grad_y` not shaped like the output.
pub fn conv_backward<'x, 'w, 'g, T: Element, D1: Dimension, D2: Dimension, D3: Dimension>(
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    grad_y: impl AsArray<'g, T, D3>,
    params: &ConvParams,
    wanted: Wanted,
    options: &PlanOptions,
) -> Result<Gradients<T>> {
    backward(Op::Conv, x, w, grad_y, params, wanted, options, None)
}

/// Gradients of `conv_transpose(x, w, b)` for the upstream gradient `grad_y`.
///
/// # Errors
/// Invalid shapes or parameters, or `grad_y` not shaped like the output.
pub fn conv_transpose_backward<
    'x,
    'w,
    'g,
    T: Element,
    D1: Dimension,
    D2: Dimension,
    D3: Dimension,
>(
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    grad_y: impl AsArray<'g, T, D3>,
    params: &ConvParams,
    wanted: Wanted,
    options: &PlanOptions,
) -> Result<Gradients<T>> {
    backward(
        Op::ConvTranspose,
        x,
        w,
        grad_y,
        params,
        wanted,
        options,
        None,
    )
}

/// Where an input gradient's plan ([`input_plan`]) comes from, for a geometry and the
/// options it runs with: a [`crate::Layer`] keeps them (its weight is fixed between
/// updates); `None` builds one per call.
pub(crate) type InputPlans<'a, T> =
    Option<&'a (dyn Fn(&Geometry, &PlanOptions) -> Result<Arc<Plan<T>>> + Sync)>;

/// The gradients of `op` asked for, the input gradient's plan from `plans` where given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<'x, 'w, 'g, T: Element, D1: Dimension, D2: Dimension, D3: Dimension>(
    op: Op,
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    grad_y: impl AsArray<'g, T, D3>,
    params: &ConvParams,
    wanted: Wanted,
    options: &PlanOptions,
    plans: InputPlans<'_, T>,
) -> Result<Gradients<T>> {
    let (x, w, gy) = (
        x.into().into_dyn(),
        w.into().into_dyn(),
        grad_y.into().into_dyn(),
    );
    let g = Geometry::new(op, x.shape(), w.shape(), None, params)?;
    let expected = g.user_output_shape();
    if gy.shape() != expected.as_slice() {
        return fail(ErrorKind::ShapeMismatch {
            what: "grad_output",
            got: gy.shape().to_vec(),
            expected,
        });
    }
    let (xs, ws, gys) = (contiguous(&x), contiguous(&w), contiguous(&gy));
    let shaped = |shape: &[usize], v: Vec<T>| {
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("gradient buffer matches its shape")
    };
    // The input gradient, by the kept plan where given.
    let input_gradient = |g: &Geometry, w: &[T], gy: &[T], o: &PlanOptions| match plans {
        Some(plans) => {
            let plan = plans(g, o)?;
            let mut gx = vec![T::zero(); numel(&g.input_shape())];
            plan.run(gy, None, &mut gx);
            Ok(gx)
        }
        None => grad_input(g, w, gy, o),
    };
    let fused = (wanted.input && wanted.weight)
        .then(|| depthwise_taps_backward(&g, &ws, &xs, &gys, options))
        .flatten();
    let (input, weight) = match fused {
        Some((gx, gw)) => (Some(gx), Some(gw)),
        None if wanted.input && wanted.weight && side_by_side::<T>(&g, options) => {
            let one = PlanOptions {
                threads: Some(1),
                ..options.clone()
            };
            let (gi, gw) = crate::fast::direct::run_both(
                2,
                || input_gradient(&g, &ws, &gys, &one),
                || grad_weight_fast(&g, &xs, &gys, &one),
            );
            (Some(gi?), Some(gw))
        }
        None => {
            let input = wanted
                .input
                .then(|| input_gradient(&g, &ws, &gys, options))
                .transpose()?;
            let weight =
                wanted
                    .weight
                    .then(|| match options.algorithm.or_else(Algorithm::from_env) {
                        Some(Algorithm::Reference) => grad_weight_reference(&g, &xs, &gys),
                        _ => grad_weight_fast(&g, &xs, &gys, options),
                    });
            (input, weight)
        }
    };
    let input = input.map(|v| shaped(x.shape(), v));
    let weight = weight.map(|v| shaped(w.shape(), v));
    let bias = wanted
        .bias
        .then(|| shaped(&[g.out_channels], grad_bias(&g, &gys)));
    Ok(Gradients {
        input,
        weight,
        bias,
    })
}

/// Whether a backward pass asking for both gradients of `g` runs them side by side, one
/// thread each: on two threads, where the input gradient's Winograd tiles would have fewer
/// columns on two threads than on one (its scratch bound holds two tasks' smaller panels
/// only), or where each gradient is small (at most [`SIDE_BY_SIDE_FLOPS`]). dcgan2 then ran
/// 1.27x / 1.29x faster (3 rounds); where the tiles do not shrink the large layers lost
/// (dcgan1 0.90x, dcgan3 0.87-0.93x, s1k3 0.88-0.96x, dilated 0.94-0.96x, hifigan1d 0.91x:
/// their gradients' times differ, or two threads serve each well).
fn side_by_side<T: Element>(g: &Geometry, options: &PlanOptions) -> bool {
    options.threads_for(g) == 2
        && (g.flops() <= SIDE_BY_SIDE_FLOPS || crate::plan::input_tiles_shrink::<T>(g, options, 2))
}

/// Multiply-adds (×2) of one gradient at or below which a backward pass on two threads runs
/// its gradients side by side: small gradients gain little from a second thread (dcgan4's
/// 0.1 GFLOP input and weight gradients ran 1.65x and 1.24x faster on two threads than on
/// one, vnet3d's 0.13 GFLOP ones 1.12x and 1.45x), while two of them at once keep both cores
/// busy. Their backward passes side by side, median / min of alternating rounds: vnet3d
/// 1.20x / 1.17x and 1.18x / 1.16x (6 and 8 rounds), dcgan4 1.11x / 1.12x and 1.02x /
/// 1.03x (6 and 10 rounds; its times jump between 0.9 and 1.6 ms from call to call on this
/// machine); with AVX2, 1.10x / 1.12x and 1.04x / 1.04x. The suite's next smallest layer
/// has 0.6 GFLOP a gradient (s1k3: 0.96x / 1.06x, not taken).
const SIDE_BY_SIDE_FLOPS: u128 = 1 << 28;

/// How a backward pass asking for both `∂L/∂x` and `∂L/∂w` of `g` runs, in words (for
/// reports).
pub fn backward_method(g: &Geometry, options: &PlanOptions) -> &'static str {
    if fuses_taps(g, options) {
        "one pass by depthwise tap vectors"
    } else if side_by_side::<f32>(g, options) {
        "input and weight gradients side by side, a thread each"
    } else {
        "input gradient, then weight gradient"
    }
}

/// Whether a backward pass of `g` asking for both gradients takes
/// [`depthwise_taps_backward`].
fn fuses_taps(g: &Geometry, options: &PlanOptions) -> bool {
    let min = tap_rows::CONV_MIN_STRIDE.max(tap_rows::WEIGHT_MIN_STRIDE);
    g.op == Op::ConvTranspose
        && tap_rows::applies(g, min)
        && options.algorithm.or_else(Algorithm::from_env).is_none()
        && options.inplace.is_none()
        && options.tile.is_none()
}

/// A channel's share of [`depthwise_taps_backward`]: the channel, its input-gradient planes
/// (one per image) and its kernel gradient.
type ChannelTask<'a, T> = (usize, Vec<&'a mut [T]>, &'a mut [T]);

/// Both `∂L/∂x` and `∂L/∂w` of a depthwise transposed conv whose input gradient (a strided
/// depthwise conv) and weight gradient both run by tap vectors ([`TapRows`]): one pass per
/// plane of `gy` computes both, so the largest tensor is read from memory once, not twice.
/// Each result is bitwise what the separate passes give. `None` where that does not apply
/// (another op or layer, or an algorithm forced by the caller).
fn depthwise_taps_backward<T: Element>(
    g: &Geometry,
    w: &[T],
    x: &[T],
    gy: &[T],
    options: &PlanOptions,
) -> Option<(Vec<T>, Vec<T>)> {
    if !fuses_taps(g, options) {
        return None;
    }
    let Sizes {
        small_size,
        big_size,
        k_size,
        a_ch,
        ..
    } = Sizes::of(g);
    // As the planner decides for the conv alone.
    let isa = options.isa_for::<T>();
    let threads = options.threads_for(g);
    let taps = TapRows::new(g);
    let mut gx = vec![T::zero(); g.batch * a_ch * small_size];
    let mut dw = vec![T::zero(); a_ch * k_size];
    // One task per channel: its kernel gradient and its input-gradient plane of every image.
    let mut tasks: Vec<ChannelTask<'_, T>> = dw
        .chunks_mut(k_size.max(1))
        .enumerate()
        .map(|(c, row)| (c, Vec::new(), row))
        .collect();
    for (i, plane) in gx.chunks_mut(small_size.max(1)).enumerate() {
        tasks[i % a_ch].1.push(plane);
    }
    run_each(threads, tasks, |(c, planes, dw_row)| {
        let wc = &w[c * k_size..(c + 1) * k_size];
        for (n, gx_plane) in planes.into_iter().enumerate() {
            let pass = tap_rows::Pass {
                conv: Some((wc, T::zero(), gx_plane)),
                weight: Some((
                    &x[(n * a_ch + c) * small_size..][..small_size],
                    &mut *dw_row,
                )),
            };
            taps.plane(isa, &gy[(n * a_ch + c) * big_size..][..big_size], pass);
        }
    });
    Some((gx, dw))
}

/// The plan of `∂L/∂x`: the adjoint op of `g` with the same weight, planned to run once
/// (its weight is packed on every call, as a training step does).
pub fn input_plan<T: Element>(g: &Geometry, w: &[T], options: &PlanOptions) -> Result<Plan<T>> {
    let once = PlanOptions {
        once: true,
        ..options.clone()
    };
    Plan::from_geometry(g.adjoint(), w, &once)
}

/// `∂L/∂x`: the adjoint op on `gy` with the same weight, through the planner.
pub fn grad_input<T: Element>(
    g: &Geometry,
    w: &[T],
    gy: &[T],
    options: &PlanOptions,
) -> Result<Vec<T>> {
    let plan = input_plan(g, w, options)?;
    let mut gx = vec![T::zero(); numel(&g.input_shape())];
    plan.run(gy, None, &mut gx);
    Ok(gx)
}

/// `∂L/∂b`: the sum of `gy` over batch and positions, per output channel.
pub fn grad_bias<T: Element>(g: &Geometry, gy: &[T]) -> Vec<T> {
    let plane = numel(&g.output_shape()[2..]);
    let mut gb = vec![T::zero(); g.out_channels];
    for (i, chunk) in gy.chunks(plane.max(1)).enumerate() {
        let c = i % g.out_channels;
        gb[c] = chunk.iter().fold(gb[c], |acc, &v| acc + v);
    }
    gb
}

/// The small-side tensor `S` and big-side tensor `B` of the weight-gradient correlation.
pub(crate) fn sides<'a, T>(g: &Geometry, x: &'a [T], gy: &'a [T]) -> (&'a [T], &'a [T]) {
    match g.op {
        Op::ConvTranspose => (x, gy),
        Op::Conv => (gy, x),
    }
}

/// Channels of the small side `S` and of the big side `B` (see [`sides`]).
pub(crate) fn side_channels(g: &Geometry) -> (usize, usize) {
    match g.op {
        Op::ConvTranspose => (g.in_channels, g.out_channels),
        Op::Conv => (g.out_channels, g.in_channels),
    }
}

/// `∂L/∂w` by its definition (the oracle for the fast version).
pub fn grad_weight_reference<T: Element>(g: &Geometry, x: &[T], gy: &[T]) -> Vec<T> {
    let (s, b) = sides(g, x, gy);
    let (small_sp, big_sp, k_sp) = (g.small_spatial(), g.big_spatial(), g.kernel_shape());
    let (small_size, big_size, k_size) = (numel(&small_sp), numel(&big_sp), numel(&k_sp));
    let (a_ch, b_ch) = side_channels(g);
    let (a_pg, b_pg) = (a_ch / g.groups, b_ch / g.groups);
    let mut dw = vec![T::zero(); a_ch * b_pg * k_size];
    for a in 0..a_ch {
        let group = a / a_pg;
        for bl in 0..b_pg {
            let bc = group * b_pg + bl;
            for (k_flat, k) in positions(&k_sp).enumerate() {
                let mut acc = T::zero();
                for n in 0..g.batch {
                    for (i_flat, i) in positions(&small_sp).enumerate() {
                        if let Some(o) = crate::reference::big_flat(g, &i, &k) {
                            acc = acc
                                + s[(n * a_ch + a) * small_size + i_flat]
                                    * b[(n * b_ch + bc) * big_size + o];
                        }
                    }
                }
                dw[(a * b_pg + bl) * k_size + k_flat] = acc;
            }
        }
    }
    dw
}

/// Whether [`grad_weight_fast`] takes Winograd tiles ([`winograd_weight`]): where forced
/// (and they apply), or, with no algorithm forced, where their cost model says they pay on
/// a CPU with SIMD kernels.
fn weight_by_winograd(g: &Geometry, options: &PlanOptions, isa: Isa) -> bool {
    match options.algorithm.or_else(Algorithm::from_env) {
        Some(a) => a == Algorithm::Winograd,
        None => isa != Isa::Scalar && winograd_weight::pays(g, isa),
    }
}

/// How [`grad_weight_fast`] computes the weight gradient of `g` (f32), in words (for
/// reports).
pub fn weight_gradient_method(g: &Geometry, options: &PlanOptions) -> String {
    if weight_by_winograd(g, options, options.isa_for::<f32>()) && winograd::applies(g) {
        return format!("Winograd {} tiles over positions", winograd_weight::name(g));
    }
    let method = if tap_rows::applies(g, tap_rows::WEIGHT_MIN_STRIDE) {
        "depthwise tap vectors"
    } else if few_channel_pairs(g) {
        "row dot products"
    } else if thin_big_side(g) {
        "row dot products, thin side"
    } else if weight_strided::applies::<f32>(g, options.isa_for::<f32>()) {
        "GEMM over positions, big side in place"
    } else {
        "GEMM over positions"
    };
    method.into()
}

/// Whether a group has too few `(a, b)` channel pairs for a register tile (fewer than
/// `SMALL_GEMM`): the weight gradient then takes row dot products.
fn few_channel_pairs(g: &Geometry) -> bool {
    let (a, b) = side_channels(g);
    (a / g.groups.max(1)) * (b / g.groups.max(1)) < SMALL_GEMM
}

/// Reduction positions per kernel call of the weight-gradient GEMM: the lane-side slice
/// (`REDUCTION_CHUNK × 16` values) stays in L1 while the row-side slices stream from L2.
const REDUCTION_CHUNK: usize = 256;
/// The weight gradient packs position chunks of one reduction chunk inside each task (the
/// packed operands then stay in L2 instead of being written to memory and read back) when
/// the positions a chunk's taps read past its end are at most `1 / FUSED_MAX_HALO` of it.
const FUSED_MAX_HALO: usize = 4;
/// Below this many (a, b) channel pairs per group the weight gradient uses direct dot
/// products: a 6×16 register tile would be mostly padding.
const SMALL_GEMM: usize = 32;

/// How the weight gradient's taps map onto shifted views of the big side.
///
/// Along each axis, tap `k` reads big position `o = p*s + m` with `m = k*d - p_begin`; with
/// `m = s*c + r` (`0 <= r < s`) that is `o = s*(p + c) + r`, i.e. position `p + c` of the
/// stride-1 residue grid `B_r[u] = B[s*u + r]`. Taps sharing the residues and the shifts
/// `c` of every axis but the first read one packed copy of `B_r` (a *key*), shifted on the
/// inner axes; their first-axis shifts `c_0` become plain offsets into that copy, whose first
/// axis is padded by `c0_max - c0_min` rows. With the reduction index `q = (p, n)` (batch
/// innermost), each tap's `B` operand is then one contiguous run of the copy, and the `S`
/// operand (packed once) is the same run for every tap: no per-tap packing.
struct TapKeys {
    /// Per key: residue per axis, then the shifts of axes `1..`.
    keys: Vec<(Vec<usize>, Vec<isize>)>,
    /// Per key: its taps as `(flat tap index, c_0 - c0_min)`.
    taps: Vec<Vec<(usize, usize)>>,
    /// Smallest first-axis shift.
    c0_min: isize,
    /// Padded first-axis extent of a copy: `L_small_0 + c0_max - c0_min`.
    e0: usize,
}

/// Per axis, for each kernel index `k`: `(r, c)` with `k·d - p_begin = s·c + r`,
/// `0 <= r < s` — the big-side residue a tap reads and its shift in that residue's grid.
fn residues_and_shifts(g: &Geometry) -> Vec<Vec<(usize, isize)>> {
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

impl TapKeys {
    fn new(g: &Geometry) -> TapKeys {
        let dims = g.axes.len();
        let rc = residues_and_shifts(g);
        let c0_min = rc[0].iter().map(|x| x.1).min().unwrap_or(0);
        let c0_max = rc[0].iter().map(|x| x.1).max().unwrap_or(0);
        let mut t = TapKeys {
            keys: Vec::new(),
            taps: Vec::new(),
            c0_min,
            e0: g.axes[0].small(g.op) + (c0_max - c0_min) as usize,
        };
        for (flat, k) in positions(&g.kernel_shape()).enumerate() {
            let r: Vec<usize> = (0..dims).map(|a| rc[a][k[a]].0).collect();
            let c: Vec<isize> = (1..dims).map(|a| rc[a][k[a]].1).collect();
            let key = (r, c);
            let id = match t.keys.iter().position(|x| *x == key) {
                Some(id) => id,
                None => {
                    t.keys.push(key);
                    t.taps.push(Vec::new());
                    t.keys.len() - 1
                }
            };
            t.taps[id].push((flat, (rc[0][k[0]].1 - c0_min) as usize));
        }
        t
    }

    /// Big-side flat offset of each copy position `(p0', p_rest)` of key `key`, or
    /// `usize::MAX` where it falls outside the big side.
    fn source_offsets(&self, g: &Geometry, key: usize) -> Vec<usize> {
        let (r, c) = &self.keys[key];
        let small = g.small_spatial();
        let per_axis: Vec<Vec<usize>> = g
            .axes
            .iter()
            .enumerate()
            .map(|(a, axis)| {
                let (extent, shift) = if a == 0 {
                    (self.e0, self.c0_min)
                } else {
                    (small[a], c[a - 1])
                };
                (0..extent)
                    .map(|p| {
                        let o = axis.stride as i64 * (p as i64 + shift as i64) + r[a] as i64;
                        let inside = o >= 0 && (o as usize) < axis.big(g.op);
                        if inside {
                            o as usize
                        } else {
                            usize::MAX
                        }
                    })
                    .collect()
            })
            .collect();
        flat_offsets(&per_axis, &g.big_spatial())
    }
}

/// Row-major flat offsets into a grid of extents `big` for every combination of the
/// per-axis offsets (`usize::MAX`, on any axis, gives `usize::MAX`).
fn flat_offsets(per_axis: &[Vec<usize>], big: &[usize]) -> Vec<usize> {
    let mut flat = vec![0usize];
    for (offsets, &extent) in per_axis.iter().zip(big) {
        let mut next = Vec::with_capacity(flat.len() * offsets.len());
        for &f in &flat {
            next.extend(offsets.iter().map(|&o| {
                if f == usize::MAX || o == usize::MAX {
                    usize::MAX
                } else {
                    f * extent + o
                }
            }));
        }
        flat = next;
    }
    flat
}

/// The sizes every weight-gradient path starts from: positions of the small side, of the
/// big side and of the kernel; channels of each side ([`side_channels`]), all and per group.
struct Sizes {
    small_size: usize,
    big_size: usize,
    k_size: usize,
    a_ch: usize,
    b_ch: usize,
    a_pg: usize,
    b_pg: usize,
}

impl Sizes {
    fn of(g: &Geometry) -> Sizes {
        let (a_ch, b_ch) = side_channels(g);
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

/// Where the weight gradient's row dot products read the big side: each `B` plane copied
/// into margin-padded polyphase component rows (as the depthwise row engine does), and per
/// tap, where its run for each row of `S` starts. Per tap `k`, along each axis
/// `k·d - p = s·c + r`, so the big-side value a small position `p` meets is `B_r[p + c]` in
/// the polyphase component `r`: a contiguous run of a padded component row.
struct RowLayout {
    big: Vec<usize>,
    strides: Vec<usize>,
    comp_ext: Vec<usize>,
    margin: usize,
    padded_len: usize,
    /// Elements of one padded plane (all of its components).
    len: usize,
    /// Rows of `S` (all axes but the last) and their length.
    small_rows: usize,
    l_small: usize,
    /// Per tap: the start of its run for small row 0, and its outer shifts.
    tap_start: Vec<isize>,
    tap_shift: Vec<isize>,
    /// Per small row: its outer coordinates, and its offset in a padded component.
    row_coords: Vec<usize>,
    row_base: Vec<usize>,
    /// Per tap, its runs merged across rows: `(start in S', start in B, length)`. `S'`
    /// holds the rows of `S` at the padded pitch with zeros past each row's end
    /// ([`RowLayout::pad_small`]), so that the rows whose `B` runs lie one padded row apart
    /// make one long run, the values between rows meeting zeros.
    spans: Vec<Vec<(usize, usize, usize)>>,
    /// Taps by ascending start in `B`.
    tap_order: Vec<usize>,
}

impl RowLayout {
    fn new(g: &Geometry) -> RowLayout {
        let dims = g.axes.len();
        let last = dims - 1;
        let (small_sp, big_sp, k_sp) = (g.small_spatial(), g.big_spatial(), g.kernel_shape());
        let strides: Vec<usize> = g.axes.iter().map(|a| a.stride).collect();
        let comp_ext: Vec<usize> = big_sp
            .iter()
            .zip(&strides)
            .map(|(l, s)| l.div_ceil(*s))
            .collect();
        let rc = residues_and_shifts(g);
        let c_lo = rc[last].iter().map(|x| x.1).min().unwrap_or(0).min(0);
        let c_hi = rc[last].iter().map(|x| x.1).max().unwrap_or(0).max(0) as usize;
        let margin = c_lo.unsigned_abs();
        let l_small = small_sp[last];
        let padded_len = margin + comp_ext[last].max(l_small + c_hi);
        let comp_rows = numel(&comp_ext[..last]);
        let comps: usize = strides.iter().product();
        let pitch: Vec<usize> = (0..last)
            .map(|a| padded_len * comp_ext[a + 1..last].iter().product::<usize>())
            .collect();
        let mut tap_start = Vec::new();
        let mut tap_shift = Vec::new();
        for k in positions(&k_sp) {
            let comp = (0..dims).fold(0, |f, a| f * strides[a] + rc[a][k[a]].0);
            let mut at = (comp * comp_rows * padded_len + margin) as isize + rc[last][k[last]].1;
            for a in 0..last {
                at += rc[a][k[a]].1 * pitch[a] as isize;
                tap_shift.push(rc[a][k[a]].1);
            }
            tap_start.push(at);
        }
        let small_outer = &small_sp[..last];
        let small_rows = numel(small_outer);
        let mut row_coords = Vec::with_capacity(small_rows * last);
        let mut row_base = Vec::with_capacity(small_rows);
        for p in positions(small_outer) {
            row_base.push(p.iter().zip(&pitch).map(|(&pa, &pt)| pa * pt).sum());
            row_coords.extend_from_slice(&p);
        }
        let mut lay = RowLayout {
            big: big_sp,
            strides,
            comp_ext,
            margin,
            padded_len,
            len: comps * comp_rows * padded_len,
            small_rows,
            l_small,
            tap_start,
            tap_shift,
            row_coords,
            row_base,
            spans: Vec::new(),
            tap_order: Vec::new(),
        };
        lay.tap_order = (0..lay.tap_start.len()).collect();
        lay.tap_order.sort_by_key(|&k| lay.tap_start[k]);
        lay.spans = (0..lay.tap_start.len())
            .map(|k| {
                let mut spans: Vec<(usize, usize, usize)> = Vec::new();
                let mut prev: Option<(usize, usize)> = None;
                for r in 0..lay.small_rows {
                    let Some(at) = lay.run(k, r) else {
                        prev = None;
                        continue;
                    };
                    match (prev, spans.last_mut()) {
                        (Some((pr, pat)), Some(last)) if pr + 1 == r && pat + padded_len == at => {
                            last.2 += padded_len;
                        }
                        _ => spans.push((r * padded_len, at, l_small)),
                    }
                    prev = Some((r, at));
                }
                spans
            })
            .collect();
        lay
    }

    /// Elements of one plane of `S'` (see `spans`).
    fn small_plane(&self) -> usize {
        self.small_rows * self.padded_len
    }

    /// Copy the rows of one `S` plane into the row starts of `dst` (a plane of `S'`); the
    /// rest of each padded row is left as it is (zero: the caller's buffer starts zeroed
    /// and only row starts are ever written).
    fn pad_small<T: Element>(&self, plane: &[T], dst: &mut [T]) {
        for (d, s) in dst
            .chunks_exact_mut(self.padded_len)
            .zip(plane.chunks_exact(self.l_small.max(1)))
        {
            d[..self.l_small].copy_from_slice(s);
        }
    }

    /// Copy the big-side plane `bp` into `padded` (`self.len` long, any contents).
    fn fill<T: Element>(&self, bp: &[T], padded: &mut [T]) {
        padded.fill(T::zero());
        crate::fast::depthwise::fill_components(
            bp,
            &self.big,
            &self.strides,
            &self.comp_ext,
            self.margin,
            self.padded_len,
            padded,
        );
    }

    /// Where tap `k`'s run for small row `r` starts in a padded plane; `None` where its
    /// component row lies outside the component (zero rows inside are read as they are).
    #[inline(always)]
    fn run(&self, k: usize, r: usize) -> Option<usize> {
        let last = self.row_coords.len() / self.small_rows.max(1);
        let shifts = &self.tap_shift[k * last..(k + 1) * last];
        let p = &self.row_coords[r * last..(r + 1) * last];
        for ax in 0..last {
            let u = p[ax] as isize + shifts[ax];
            if u < 0 || u as usize >= self.comp_ext[ax] {
                return None;
            }
        }
        Some((self.row_base[r] as isize + self.tap_start[k]) as usize)
    }
}

/// `∂L/∂w` for groups with few channel pairs (depthwise and the like), where a register
/// tile would be mostly padding: each `B` plane is copied into its [`RowLayout`], and then
/// `dW[a, b, k]` is a sum of contiguous dot products, one per row of `S`, in 8 interleaved
/// partial sums. Rows of `dW` (one `a` channel each) are shared out to the threads; each is
/// summed in a fixed order.
fn grad_weight_small<T: Element>(
    g: &Geometry,
    s: &[T],
    b: &[T],
    threads: usize,
    isa: Isa,
    dw: &mut [T],
) {
    let Sizes {
        small_size,
        big_size,
        k_size,
        a_ch,
        b_ch,
        a_pg,
        b_pg,
    } = Sizes::of(g);
    let avx2 = cfg!(target_arch = "x86_64") && isa != Isa::Scalar;
    if tap_rows::applies(g, tap_rows::WEIGHT_MIN_STRIDE) {
        // Depthwise with a large last-axis stride: each big row copied once into a row
        // cache and read by tap vectors, instead of through a polyphase copy of its plane.
        let taps = TapRows::new(g);
        let run_channel = |a: usize, row: &mut [T]| {
            row.fill(T::zero());
            for n in 0..g.batch {
                let sp = &s[(n * a_ch + a) * small_size..][..small_size];
                let bp = &b[(n * b_ch + a) * big_size..][..big_size];
                taps.weight_plane(isa, sp, bp, row);
            }
        };
        run_chunks(threads, dw, k_size, run_channel);
        return;
    }
    let lay = RowLayout::new(g);
    let run_row = |a: usize, row: &mut [T]| {
        let group = a / a_pg;
        let mut padded = scratch::take::<T>(lay.len);
        let mut acc = vec![[T::zero(); 8]; k_size];
        let mut tail = vec![T::zero(); k_size];
        for bl in 0..b_pg {
            acc.iter_mut().for_each(|v| *v = [T::zero(); 8]);
            tail.iter_mut().for_each(|v| *v = T::zero());
            for n in 0..g.batch {
                let bp = &b[(n * b_ch + group * b_pg + bl) * big_size..][..big_size];
                let sp = &s[(n * a_ch + a) * small_size..][..small_size];
                lay.fill(bp, &mut padded);
                small_plane(avx2, &lay, sp, &padded, &mut acc, &mut tail);
            }
            for k in 0..k_size {
                row[bl * k_size + k] = acc[k].iter().fold(T::zero(), |t, &v| t + v) + tail[k];
            }
        }
    };
    run_chunks(threads, dw, b_pg * k_size, run_row);
}

/// Add one plane pair's dot products to `acc`/`tail` (compiled for AVX2 where allowed).
fn small_plane<T: Element>(
    avx2: bool,
    lay: &RowLayout,
    sp: &[T],
    padded: &[T],
    acc: &mut [[T; 8]],
    tail: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // Safety: the features were just detected.
        unsafe { small_plane_avx2(lay, sp, padded, acc, tail) };
        return;
    }
    let _ = avx2;
    small_plane_body(lay, sp, padded, acc, tail);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn small_plane_avx2<T: Element>(
    lay: &RowLayout,
    sp: &[T],
    padded: &[T],
    acc: &mut [[T; 8]],
    tail: &mut [T],
) {
    small_plane_body(lay, sp, padded, acc, tail);
}

#[inline(always)]
fn small_plane_body<T: Element>(
    lay: &RowLayout,
    sp: &[T],
    padded: &[T],
    acc: &mut [[T; 8]],
    tail: &mut [T],
) {
    let l = lay.l_small;
    for r in 0..lay.small_rows {
        let srow = &sp[r * l..(r + 1) * l];
        for (k, (v, t)) in acc.iter_mut().zip(tail.iter_mut()).enumerate() {
            let Some(at) = lay.run(k, r) else {
                continue;
            };
            let brow = &padded[at..at + l];
            let mut vk = *v;
            let (sc, bc) = (srow.chunks_exact(8), brow.chunks_exact(8));
            let (sr, br) = (sc.remainder(), bc.remainder());
            for (x, y) in sc.zip(bc) {
                for l in 0..8 {
                    vk[l] = vk[l] + x[l] * y[l];
                }
            }
            *v = vk;
            for (&x, &y) in sr.iter().zip(br) {
                *t = *t + x * y;
            }
        }
    }
}

/// Channels of `S` per task of the thin-side weight gradient.
const THIN_ROWS: usize = 4;
/// Most `B` channels per group for which the weight gradient takes the thin-side path.
const THIN_MAX: usize = 4;

/// Whether the big side has so few channels per group (at most `THIN_MAX`, e.g. the RGB
/// output of a generator's last layer) that the weight gradient runs as row dot products
/// of `THIN_ROWS` channels of `S` against every `B` channel at once ([`grad_weight_thin`]).
fn thin_big_side(g: &Geometry) -> bool {
    let (_, b) = side_channels(g);
    !few_channel_pairs(g) && b / g.groups.max(1) <= THIN_MAX
}

/// `∂L/∂w` when the big side is thin ([`thin_big_side`]): every `B` plane is copied once
/// into its [`RowLayout`]. A task owns `THIN_ROWS` channels of `S` — rows of `dW` — copies
/// them per batch item at the padded row pitch (`S'`, so that a tap's runs over consecutive
/// rows merge into one), and per tap sums the products of those rows with all `B`
/// channels' runs in `THIN_ROWS × b` register accumulators, in a fixed order (bitwise
/// identical for any thread count), the taps of one polyphase component together. No
/// operand is transposed, and each loaded vector serves several products. (Merged runs and
/// the component order: dcgan4's weight gradient 1.87 -> 1.74 ms, paired minima.)
fn grad_weight_thin<T: Element>(
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
    // Sums over 16 lanes on AVX-512 (dcgan4's weight gradient ran 1.11 ms at 8 lanes on
    // Zen 5, whose AVX-512 is full width).
    let wide = isa == Isa::Avx512
        && Isa::Avx512.available()
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
    let padded = &padded[..];
    let run = |(group, a0, part): (usize, usize, &mut [T])| {
        let tile = ThinTile {
            lay: &lay,
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
            (1, false) => thin_tile::<T, 1, 8>(avx2, &tile, part),
            (2, false) => thin_tile::<T, 2, 8>(avx2, &tile, part),
            (3, false) => thin_tile::<T, 3, 8>(avx2, &tile, part),
            (4, false) => thin_tile::<T, 4, 8>(avx2, &tile, part),
            (1, true) => thin_tile::<T, 1, 16>(avx2, &tile, part),
            (2, true) => thin_tile::<T, 2, 16>(avx2, &tile, part),
            (3, true) => thin_tile::<T, 3, 16>(avx2, &tile, part),
            (4, true) => thin_tile::<T, 4, 16>(avx2, &tile, part),
            _ => unreachable!("thin_big_side admits at most THIN_MAX channels"),
        }
    };
    run_each(threads, parts, run);
}

/// One task of [`grad_weight_thin`]: `live` (at most `THIN_ROWS`) channels of `S` from
/// `a_first`, against the `B` channels of their group from `b_first`.
struct ThinTile<'a, T> {
    lay: &'a RowLayout,
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
    avx2: bool,
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
        thin_plane(avx2, t.lay, &srows, &bplanes, &mut acc);
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

/// Add one batch item's products to `acc` (compiled for AVX2, or AVX-512 at 16 lanes,
/// where allowed).
fn thin_plane<T: Element, const TB: usize, const L: usize>(
    avx2: bool,
    lay: &RowLayout,
    srows: &[&[T]; THIN_ROWS],
    bplanes: &[&[T]; TB],
    acc: &mut [ThinAcc<T, TB, L>],
) {
    #[cfg(target_arch = "x86_64")]
    if L == 16
        && avx2
        && Isa::Avx512.available()
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
    {
        // Safety: `T` is f32 and `L` 16 (both checked), so the casts change no type;
        // AVX-512F was detected.
        unsafe {
            let srows = &*(srows as *const [&[T]; THIN_ROWS]).cast::<[&[f32]; THIN_ROWS]>();
            let bplanes = &*(bplanes as *const [&[T]; TB]).cast::<[&[f32]; TB]>();
            let acc = std::slice::from_raw_parts_mut(
                acc.as_mut_ptr().cast::<ThinAcc<f32, TB, 16>>(),
                acc.len(),
            );
            thin_plane_avx512(lay, srows, bplanes, acc);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2 && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // Safety: the features were just detected.
        unsafe { thin_plane_avx2(lay, srows, bplanes, acc) };
        return;
    }
    let _ = avx2;
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

/// [`thin_plane_body`] for f32 on 16-lane vectors (the last values of a run by masked,
/// zero-filling loads), in explicit intrinsics: the compiler's vectors of the generic
/// body at 16 lanes ran 20x slower.
///
/// # Safety
/// AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn thin_plane_avx512<const TB: usize>(
    lay: &RowLayout,
    srows: &[&[f32]; THIN_ROWS],
    bplanes: &[&[f32]; TB],
    acc: &mut [ThinAcc<f32, TB, 16>],
) {
    use std::arch::x86_64::*;
    for &k in &lay.tap_order {
        let acc_k = &mut acc[k];
        let mut v = [[_mm512_setzero_ps(); TB]; THIN_ROWS];
        for i in 0..THIN_ROWS {
            for j in 0..TB {
                v[i][j] = _mm512_loadu_ps(acc_k[i][j].as_ptr());
            }
        }
        for &(s0, at, l) in &lay.spans[k] {
            let mut bp = [std::ptr::null::<f32>(); TB];
            for j in 0..TB {
                bp[j] = bplanes[j][at..at + l].as_ptr();
            }
            let mut sp = [std::ptr::null::<f32>(); THIN_ROWS];
            for i in 0..THIN_ROWS {
                sp[i] = srows[i][s0..s0 + l].as_ptr();
            }
            let mut o = 0;
            while o < l {
                // Lanes inside the run (all but at its end); the loads read only those.
                let mask: __mmask16 = if l - o >= 16 {
                    0xffff
                } else {
                    ((1u32 << (l - o)) - 1) as __mmask16
                };
                let mut bv = [_mm512_setzero_ps(); TB];
                for j in 0..TB {
                    bv[j] = _mm512_maskz_loadu_ps(mask, bp[j].add(o));
                }
                for i in 0..THIN_ROWS {
                    let sv = _mm512_maskz_loadu_ps(mask, sp[i].add(o));
                    for j in 0..TB {
                        v[i][j] = _mm512_fmadd_ps(sv, bv[j], v[i][j]);
                    }
                }
                o += 16;
            }
        }
        for i in 0..THIN_ROWS {
            for j in 0..TB {
                _mm512_storeu_ps(acc_k[i][j].as_mut_ptr(), v[i][j]);
            }
        }
    }
}

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

/// One side of the weight-gradient GEMM, `(N, channels, plane)` in memory, and the channel
/// block being packed from it.
pub(crate) struct Side<'a, T> {
    src: &'a [T],
    batch: usize,
    channels: usize,
    plane: usize,
    /// First channel of the block.
    first: usize,
    /// Channels of the block that exist (the rest of its lanes stay zero).
    live: usize,
}

impl<'a, T> Side<'a, T> {
    /// Block `blk` of `width` channels of group `group` of `src`, whose `(channels,
    /// per_group, plane)` are `dims`.
    pub(crate) fn block(
        src: &'a [T],
        batch: usize,
        (channels, per_group, plane): (usize, usize, usize),
        width: usize,
        group: usize,
        blk: usize,
    ) -> Side<'a, T> {
        let first = blk * width;
        Side {
            src,
            batch,
            channels,
            plane,
            first: group * per_group + first,
            live: width.min(per_group - first),
        }
    }
}

/// Copy-position tables of the weight-gradient packing (copy position → plane offset,
/// `usize::MAX` for zero), with the passes [`pack_positions`] takes through them.
pub(crate) struct Tables {
    tables: Vec<Vec<usize>>,
    /// Positions per pass.
    block: usize,
    /// `spans[t][pass]`: the lowest and highest plane offsets table `t` reads in that pass.
    spans: Vec<Vec<Option<(usize, usize)>>>,
    /// `runs[t][j]`: how the eight positions from `j` of table `t` read the source.
    runs: Vec<Vec<Run8>>,
}

/// How a run of eight copy positions reads the source: at `start + i · stride` (`stride` 1
/// or 2; 0 where no such stride fits: copied value by value), the positions with bit `i`
/// of `outside` set lying outside the source (a tap's run that starts or ends past the edge
/// of a row: its eight values are read from the row's neighbours and those zeroed).
#[derive(Clone, Copy, Default)]
struct Run8 {
    start: usize,
    stride: usize,
    outside: u8,
}

impl Run8 {
    /// The run of the eight offsets of `run` (`usize::MAX`: outside the source).
    fn of(run: &[usize]) -> Run8 {
        let none = Run8::default();
        if run.len() != 8 {
            return none;
        }
        // Most runs: every position inside, at stride 1 or 2.
        let stride = run[1].wrapping_sub(run[0]);
        if run[0] != usize::MAX
            && (stride == 1 || stride == 2)
            && run.windows(2).all(|p| p[1].wrapping_sub(p[0]) == stride)
        {
            return Run8 {
                start: run[0],
                stride,
                outside: 0,
            };
        }
        let mut inside = run.iter().enumerate().filter(|p| *p.1 != usize::MAX);
        let (Some((i0, &o0)), Some((i1, &o1))) = (inside.next(), inside.next()) else {
            return none;
        };
        let stride = o1.saturating_sub(o0) / (i1 - i0);
        let Some(start) = o0.checked_sub(i0 * stride) else {
            return none;
        };
        let fits = |(i, &o): (usize, &usize)| o == usize::MAX || o == start + i * stride;
        if !(stride == 1 || stride == 2) || !run.iter().enumerate().all(fits) {
            return none;
        }
        let outside = (0..8)
            .filter(|&i| run[i] == usize::MAX)
            .fold(0, |m, i| m | 1 << i);
        Run8 {
            start,
            stride,
            outside,
        }
    }
}

impl Tables {
    /// `tables` (all of one length) packed `batch × width` values per position of each.
    pub(crate) fn new<T>(tables: Vec<Vec<usize>>, batch: usize, width: usize) -> Tables {
        let size = std::mem::size_of::<T>();
        // Whole runs of eight: a pass of 85 positions (dilated's big side) began its runs
        // mid-row, and every run crossing a row's end was copied value by value.
        let block =
            (PACK_BLOCK_BYTES / (tables.len() * batch * width * size).max(1)).max(8) / 8 * 8;
        let spans = tables
            .iter()
            .map(|t| {
                t.chunks(block)
                    .map(|c| {
                        let mut valid = c.iter().copied().filter(|&o| o != usize::MAX);
                        let lo = valid.next()?;
                        Some(valid.fold((lo, lo), |(a, b), o| (a.min(o), b.max(o))))
                    })
                    .collect()
            })
            .collect();
        let runs = tables
            .iter()
            .map(|t| {
                (0..t.len())
                    .map(|j| Run8::of(&t[j..(j + 8).min(t.len())]))
                    .collect()
            })
            .collect();
        Tables {
            tables,
            block,
            spans,
            runs,
        }
    }

    fn len(&self) -> usize {
        self.tables.first().map_or(0, |t| t.len())
    }
}

/// Pack one channel block of `side` at the copy positions `js` of every table of `tables`
/// into `dst[t][((j - js.start) * N + n) * width + w]`. Positions are taken in passes small
/// enough that the destination runs of all tables and the source lines they read stay in
/// L2; with `prefetch`, the next pass's source lines are prefetched where a pass reads many
/// rows at once (more streams than the hardware prefetchers follow). (Packing a chunk at a
/// time, the prefetches cost more than they save: unet's packing 8.3 -> 6.0 ms without.)
pub(crate) fn pack_positions<T: Element>(
    dst: &mut [T],
    width: usize,
    side: &Side<'_, T>,
    tables: &Tables,
    js: Range<usize>,
    prefetch: bool,
) {
    let (batch, plane, live) = (side.batch, side.plane, side.live);
    let per_table = js.len() * batch * width;
    // Lanes past the last channel are zero (`dst` may hold stale values).
    if live < width {
        for run in dst[..tables.tables.len() * per_table].chunks_exact_mut(width) {
            run[live..].fill(T::zero());
        }
    }
    if live == 0 || js.is_empty() {
        return;
    }
    let line = (64 / std::mem::size_of::<T>()).max(1);
    let prefetch = prefetch && batch * live >= 8;
    let fast = transposes_available::<T>();
    for j0 in js.clone().step_by(tables.block) {
        let j1 = (j0 + tables.block).min(js.end);
        let pass = j0 / tables.block;
        for n in 0..batch {
            let row_of =
                |w: usize| &side.src[((n * side.channels + side.first + w) * plane)..][..plane];
            let prefetch_next = |row: &[T]| {
                if prefetch {
                    for spans in &tables.spans {
                        if let Some(&Some((lo, hi))) = spans.get(pass + 1) {
                            for o in (lo..=hi).step_by(line) {
                                crate::fast::prefetch_read(row, o);
                            }
                        }
                    }
                }
            };
            // Up to eight channels at a time where the positions run at stride 1 or 2: a
            // vector load per channel, an 8×8 transpose, a store of the channels' lanes per
            // position.
            let mut w0 = 0;
            while fast && w0 < live {
                let cnt = (live - w0).min(8);
                let rows: [&[T]; 8] = std::array::from_fn(|i| row_of(w0 + i.min(cnt - 1)));
                rows[..cnt].iter().for_each(|r| prefetch_next(r));
                for (ti, t) in tables.tables.iter().enumerate() {
                    let out = &mut dst[ti * per_table..(ti + 1) * per_table];
                    let at = |j: usize| ((j - js.start) * batch + n) * width + w0;
                    let mut j = j0;
                    while j < j1 {
                        // A stretch of runs by vectors, then one by values.
                        let runs = &tables.runs[ti][j..j1];
                        j += transpose_runs(&rows, cnt, runs, &mut out[at(j)..], batch * width);
                        if j >= j1 {
                            break;
                        }
                        let run = &t[j..(j + 8).min(j1)];
                        let at = at(j);
                        j += 8;
                        for (i, &o) in run.iter().enumerate() {
                            let d = &mut out[at + i * batch * width..][..cnt];
                            for (c, slot) in d.iter_mut().enumerate() {
                                *slot = if o == usize::MAX {
                                    T::zero()
                                } else {
                                    rows[c][o]
                                };
                            }
                        }
                    }
                }
                w0 += cnt;
            }
            // Without the vector path (other element types, no AVX2): row by row.
            for w in w0..live {
                let row = row_of(w);
                prefetch_next(row);
                for (ti, t) in tables.tables.iter().enumerate() {
                    let out = &mut dst[ti * per_table..(ti + 1) * per_table];
                    let out = &mut out[((j0 - js.start) * batch + n) * width + w..];
                    for (j, &o) in t[j0..j1].iter().enumerate() {
                        out[j * batch * width] = if o == usize::MAX { T::zero() } else { row[o] };
                    }
                }
            }
        }
    }
}

/// Whether [`transpose_runs`] has a fast path for `T` on this CPU.
fn transposes_available<T: 'static>() -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        return is_x86_feature_detected!("avx2");
    }
    false
}

/// Pack the runs of eight positions `runs[0], runs[8], …` (the first `8 · m`, for the
/// largest `m` with all of them read by vectors: a stride and within the source) of the
/// first `cnt` (1 to 8) of `rows`: `dst[(8k + i) * step + c] = rows[c][start + i · stride]`
/// of run `8k`, zero at its outside positions, by 8×8 transposes (AVX2, f32). Returns the
/// positions packed, `8 · m` (0 where this path does not apply). `rows` hold the source's
/// planes (the runs' offsets are within them); the rows past `cnt` are not read.
fn transpose_runs<T: Element>(
    rows: &[&[T]; 8],
    cnt: usize,
    runs: &[Run8],
    dst: &mut [T],
    step: usize,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if transposes_available::<T>() && (1..=8).contains(&cnt) {
        // The stretch, checked: its runs' loads within every row, its stores within `dst`.
        let len = rows.iter().map(|r| r.len()).min().unwrap_or(0);
        let within = |r: &Run8| matches!(r.stride, 1 | 2) && r.start + 8 * r.stride <= len;
        let runs8 = runs.iter().step_by(8).take(runs.len() / 8);
        let m = runs8.take_while(|r| within(r)).count();
        let m = m.min((dst.len() + step).saturating_sub(cnt) / (8 * step));
        if m == 0 {
            return 0;
        }
        let ptrs: [*const f32; 8] = std::array::from_fn(|c| rows[c].as_ptr() as *const f32);
        let d = dst.as_mut_ptr() as *mut f32;
        // Safety: `T` is `f32` (same TypeId); every load, `8 · stride` values from a run's
        // start, stays inside its row and the last store, `(8m - 1) · step + cnt`, inside
        // `dst` (both checked); AVX2 was detected.
        unsafe {
            if cnt == 8 {
                transpose8_avx2::<true>(&ptrs, 8, &runs[..8 * m], d, step)
            } else {
                transpose8_avx2::<false>(&ptrs, cnt, &runs[..8 * m], d, step)
            }
        };
        return 8 * m;
    }
    let _ = (rows, cnt, runs, dst, step);
    0
}

/// [`transpose_runs`]' AVX2 body: each of the runs `runs[0], runs[8], …`, its outside
/// positions zeroed; `FULL` means `cnt == 8` (straight-line loads and stores; fewer channels
/// take a loop).
///
/// # Safety
/// AVX2 available; `1 <= cnt <= 8`; each `src[c]`, `c < cnt`, readable for `start + 8 ·
/// stride` values of every run (`stride` 1 or 2); `dst` writable at `(8k + i) * step .. +
/// cnt` for `i < 8` and every run `8k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose8_avx2<const FULL: bool>(
    src: &[*const f32; 8],
    cnt: usize,
    runs: &[Run8],
    mut dst: *mut f32,
    step: usize,
) {
    use std::arch::x86_64::*;
    let cnt = if FULL { 8 } else { cnt };
    let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    for r in runs.iter().step_by(8) {
        let mut x = [_mm256_setzero_ps(); 8];
        for (slot, &p) in x.iter_mut().zip(src).take(cnt) {
            let p = p.add(r.start);
            *slot = if r.stride == 1 {
                _mm256_loadu_ps(p)
            } else {
                crate::fast::direct::evens_odds16(p).0
            };
        }
        if r.outside != 0 {
            // Positions outside the source read a neighbour: zeroed, lane `i` by bit `i`.
            let out = _mm256_and_si256(_mm256_set1_epi32(r.outside as i32), bits);
            let keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(out, _mm256_setzero_si256()));
            for v in x.iter_mut().take(cnt) {
                *v = _mm256_and_ps(*v, keep);
            }
        }
        for (i, col) in crate::fast::direct::transpose8x8(x).iter().enumerate() {
            let d = dst.add(i * step);
            if FULL {
                _mm256_storeu_ps(d, *col);
                continue;
            }
            // The first `cnt` lanes: four, two and one at a time.
            let mut part = _mm256_castps256_ps128(*col);
            let mut at = 0;
            if cnt >= 4 {
                _mm_storeu_ps(d, part);
                part = _mm256_extractf128_ps(*col, 1);
                at = 4;
            }
            if cnt - at >= 2 {
                _mm_storel_pd(d.add(at) as *mut f64, _mm_castps_pd(part));
                part = _mm_movehl_ps(part, part);
                at += 2;
            }
            if cnt > at {
                _mm_store_ss(d.add(at), part);
            }
        }
        dst = dst.add(8 * step);
    }
}

/// Pack one side (`(N, channels, plane)`, `per_group` channels per group) for every group and
/// block of `width` channels, each block for every table: `[group][block][table][q][width]`,
/// blocks on `threads` threads.
#[allow(clippy::too_many_arguments)]
fn pack_side<T: Element>(
    g: &Geometry,
    src: &[T],
    channels: usize,
    plane: usize,
    per_group: usize,
    width: usize,
    tables: &Tables,
    threads: usize,
) -> scratch::Scratch<T> {
    let blocks = per_group.div_ceil(width);
    let unit = tables.tables.len() * tables.len() * g.batch * width;
    let mut buf = scratch::take::<T>(g.groups * blocks * unit);
    run_chunks(threads, &mut buf, unit, |u, dst| {
        let (group, blk) = (u / blocks, u % blocks);
        let side = Side::block(
            src,
            g.batch,
            (channels, per_group, plane),
            width,
            group,
            blk,
        );
        pack_positions(dst, width, &side, tables, 0..tables.len(), true);
    });
    buf
}

/// Bytes of packed destination filled per pass of [`pack_positions`]: a quarter of L2 (at
/// 16 KiB, an L1's worth, the passes were so short that their overhead showed: unet's big
/// side packed in 6.8-9.9 ms against 5.3-5.7 ms at 64 KiB).
const PACK_BLOCK_BYTES: usize = 64 * 1024;

/// `∂L/∂w` as GEMMs over `(position, batch)`: `dW[a, b, k] = Σ_q S[a, q] · B_k[b, q]`, on the
/// packed-panel microkernel (row dot products, `grad_weight_small`, when a group has few channel pairs).
///
/// `S` is packed once; the big side once per key (taps sharing residues; see `TapKeys`), all keys in one pass
/// over it, and each copy serves all of its key's taps as offset views. Where a chunk of
/// positions needs few positions past its end (kernel == stride, 1-D), the packing is fused
/// into the tasks: each packs one chunk of both sides at a time into buffers that stay in
/// L2, instead of writing whole packed copies to memory and reading them back (unet's
/// weight gradient 19.9 -> 16.1 ms, vnet3d's 2.9 -> 2.2 ms, paired minima); elsewhere, where
/// the batch has more images than one reduction chunk needs, a few whole images at a time,
/// so no halo is packed twice (dcgan3 16.1 -> 13.9 ms, s1k3 9.2 -> 7.8 ms). Tasks own
/// `(group, range of S channel blocks)`: disjoint rows of `dW`, each element summed by one
/// task in a fixed order, so the result is bitwise identical for any thread count.
pub fn grad_weight_fast<T: Element>(
    g: &Geometry,
    x: &[T],
    gy: &[T],
    options: &PlanOptions,
) -> Vec<T> {
    let (s, b) = sides(g, x, gy);
    let Sizes {
        small_size,
        big_size,
        k_size,
        a_ch,
        b_ch,
        a_pg,
        b_pg,
    } = Sizes::of(g);
    let isa = options.isa_for::<T>();
    let threads = options.threads_for(g);
    if weight_by_winograd(g, options, isa) {
        if let Some(dw) = winograd_weight::grad_weight(g, x, gy, isa, threads) {
            return dw;
        }
    }
    let mut dw = vec![T::zero(); a_ch * b_pg * k_size];
    let q_len = g.batch * small_size;
    if q_len == 0 || dw.is_empty() {
        return dw;
    }
    if few_channel_pairs(g) {
        grad_weight_small(g, s, b, threads, isa, &mut dw);
        return dw;
    }
    if thin_big_side(g) {
        grad_weight_thin(g, s, b, threads, isa, &mut dw);
        return dw;
    }
    if weight_strided::applies::<T>(g, isa) {
        weight_strided::grad_weight(g, s, b, (threads, isa), &mut dw);
        return dw;
    }
    // The tile shape and orientation with the least modelled time: work padded to whole
    // tiles over the shape's measured efficiency (e.g. the 3 output channels of an RGB
    // layer go on the rows of a 3-row tile, not on 16 lanes).
    let lanes = isa.lanes();
    let cost = |m: usize, n: usize, (mr, v, eff): (usize, usize, f32)| {
        (m.div_ceil(mr) * mr * n.div_ceil(v * lanes) * v * lanes) as f32 / eff
    };
    let (mr, v, s_on_rows) = tile_shapes(isa)
        .iter()
        .flat_map(|&t| [(t, true), (t, false)])
        .filter(|&((mr, v, _), _)| T::fast_kernel(isa, mr, v).is_some() || isa == Isa::Scalar)
        .min_by(|&(t1, r1), &(t2, r2)| {
            let c = |t, r| {
                if r {
                    cost(a_pg, b_pg, t)
                } else {
                    cost(b_pg, a_pg, t)
                }
            };
            c(t1, r1).total_cmp(&c(t2, r2))
        })
        .map(|((mr, v, _), r)| (mr, v, r))
        .expect("tile_shapes is not empty");
    let kernel = T::fast_kernel(isa, mr, v)
        .or_else(|| portable::<T>(mr, v))
        .expect("tile_shapes lists instantiated kernels");
    let tl = v * lanes;
    let (s_width, b_width) = if s_on_rows { (mr, tl) } else { (tl, mr) };
    let (s_blocks, b_blocks) = (a_pg.div_ceil(s_width), b_pg.div_ceil(b_width));
    let tile = mr * tl;
    let keys = TapKeys::new(g);
    let n_keys = keys.keys.len();
    let rest: usize = small_size / g.axes[0].small(g.op).max(1);
    let copy_len = keys.e0 * rest;

    // Copy positions past a chunk's last small position that its taps read (their
    // first-axis shifts): packed with every chunk, so chunking pays only where few.
    let halo = copy_len - small_size;
    // For a batch of `batch` images: chunks of positions of all of them, or ...
    let by_positions = |batch: usize| halo * FUSED_MAX_HALO <= (REDUCTION_CHUNK / batch).max(1);
    // ... otherwise a few images at a time, enough for a reduction of `REDUCTION_CHUNK`: no
    // halo is packed twice (each image has its own).
    let per_chunk = |batch: usize| REDUCTION_CHUNK.div_ceil(small_size.max(1)).min(batch);
    let fused_for = |batch: usize| by_positions(batch) || per_chunk(batch) < batch;
    // The fused reduction runs as `parts` independent sums over consecutive images, added
    // in order at the end: two where the batch allows, whatever the thread count (the
    // results' bits then do not depend on it), so that two threads each pack and multiply
    // half the images with the whole tiles of one thread, instead of splitting the tiles
    // and packing one side twice.
    let parts = if g.batch >= REDUCTION_PARTS && fused_for(g.batch.div_ceil(REDUCTION_PARTS)) {
        REDUCTION_PARTS
    } else {
        1
    };
    let part_batch = g.batch.div_ceil(parts);
    let by_images = !by_positions(part_batch) && per_chunk(part_batch) < part_batch;
    let fused = fused_for(part_batch);
    // Images per packed chunk (the batch innermost in `q`), and positions per chunk.
    let (nb, step) = if by_images {
        (per_chunk(part_batch), small_size)
    } else if by_positions(part_batch) {
        (part_batch, (REDUCTION_CHUNK / part_batch).max(1))
    } else {
        (part_batch, small_size)
    };
    // Copy-position tables of both sides, their passes sized for `nb` images.
    let identity = Tables::new::<T>(vec![(0..small_size).collect()], nb, s_width);
    let tables = Tables::new::<T>(
        (0..n_keys).map(|k| keys.source_offsets(g, k)).collect(),
        nb,
        b_width,
    );
    // Unfused: both sides packed whole up front, S `[group][block][q][s_width]` and the big
    // side `[group][block][key][q'][b_width]` (every key from one pass). Fused: each task
    // packs one chunk (of positions, or one image) at a time into reused buffers, which
    // stay in L2 (or at least are not written to memory and read back).
    let (spack, bpack) = if fused {
        (None, None)
    } else {
        (
            Some(pack_side(
                g, s, a_ch, small_size, a_pg, s_width, &identity, threads,
            )),
            Some(pack_side(
                g, b, b_ch, big_size, b_pg, b_width, &tables, threads,
            )),
        )
    };
    let s_run = q_len * s_width;
    let b_run = copy_len * g.batch * b_width;

    // Tasks: (group, range of S blocks), enough to keep every thread busy. Fused tasks
    // each pack the whole big side's chunks, so there is one per thread; where the big
    // side's packing is the larger (its keys' copies) and it has a block per thread, fused
    // tasks own ranges of its blocks instead and each packs the whole small side (dcgan3's
    // weight gradient: 147 K values of the big side and 34 K of the small one per image).
    let units = g.groups * parts;
    let want = threads.div_ceil(units);
    let by_big = fused && want > 1 && b_blocks >= want && b_pg * n_keys > a_pg;
    let (split_blocks, splits) = match (threads <= 1, fused, by_big) {
        (true, _, _) => (s_blocks, 1),
        (false, true, true) => (b_blocks, want.clamp(1, b_blocks)),
        (false, true, false) => (s_blocks, want.clamp(1, s_blocks)),
        (false, false, _) => (
            s_blocks,
            (4 * threads).div_ceil(g.groups).clamp(1, s_blocks),
        ),
    };
    let per_split = split_blocks.div_ceil(splits);
    // A task's S blocks and big-side blocks; `acc[sb][blk][tap][tile]` (the taps of one tile
    // position together) holds its sums, gathered into dW's `[a][b][k]` order at the end.
    let ranges = |task: usize| {
        let split = task % splits;
        let mine =
            (split * per_split).min(split_blocks)..((split + 1) * per_split).min(split_blocks);
        if by_big {
            (0..s_blocks, mine)
        } else {
            (mine, 0..b_blocks)
        }
    };
    // Task `(part, group, split)`: `(part · groups + group) · splits + split`.
    let images = |task: usize| {
        let part = task / (splits * g.groups);
        (part * part_batch).min(g.batch)..((part + 1) * part_batch).min(g.batch)
    };
    let sums = |task: usize, acc: &mut [T]| {
        let group = (task / splits) % g.groups;
        let (sbs, blks) = ranges(task);
        let mine = images(task);
        let (nsb, nbb) = (sbs.len(), blks.len());
        if nsb == 0 || nbb == 0 {
            return;
        }
        // One pass over `q` per step: the whole range (unfused), or chunk by chunk.
        let (s_chunk, b_key) = ((step * nb) * s_width, (step + halo) * nb * b_width);
        let mut sbuf = scratch::take::<T>(if fused { nsb * s_chunk } else { 0 });
        let mut bbuf = scratch::take::<T>(if fused { nbb * n_keys * b_key } else { 0 });
        for (n0, j0) in mine
            .clone()
            .step_by(nb)
            .flat_map(|n0| (0..small_size).step_by(step).map(move |j0| (n0, j0)))
        {
            let j1 = (j0 + step).min(small_size);
            // Images in this chunk (the last may hold fewer).
            let nb = nb.min(mine.end - n0);
            if fused {
                let s_img = &s[n0 * a_ch * small_size..];
                let s_dims = (a_ch, a_pg, small_size);
                for (sbl, dst) in sbuf.chunks_mut(s_chunk).enumerate() {
                    let side = Side::block(s_img, nb, s_dims, s_width, group, sbs.start + sbl);
                    pack_positions(dst, s_width, &side, &identity, j0..j1, false);
                }
                let b_img = &b[n0 * b_ch * big_size..];
                let b_dims = (b_ch, b_pg, big_size);
                for (bbl, dst) in bbuf.chunks_mut(n_keys * b_key).enumerate() {
                    let side = Side::block(b_img, nb, b_dims, b_width, group, blks.start + bbl);
                    pack_positions(dst, b_width, &side, &tables, j0..j1 + halo, false);
                }
            }
            // Where a tap's operands start, for reduction index `q` (at or after `j0`).
            let s_at = |sbl: usize, q: usize| match &spack {
                Some(p) => (
                    &p[..],
                    (group * s_blocks + sbs.start + sbl) * s_run + q * s_width,
                ),
                None => (&sbuf[..], sbl * s_chunk + (q - j0 * nb) * s_width),
            };
            let b_at = |bbl: usize, key: usize, c0: usize, q: usize| match &bpack {
                Some(p) => (
                    &p[..],
                    ((group * b_blocks + blks.start + bbl) * n_keys + key) * b_run
                        + (c0 * rest * g.batch + q) * b_width,
                ),
                // (A short last chunk packs its keys closer together.)
                None => (
                    &bbuf[..],
                    bbl * n_keys * b_key
                        + key * (j1 - j0 + halo) * nb * b_width
                        + (c0 * rest * nb + q - j0 * nb) * b_width,
                ),
            };
            for q0 in (j0 * nb..j1 * nb).step_by(REDUCTION_CHUNK) {
                let q1 = (q0 + REDUCTION_CHUNK).min(j1 * nb);
                let kq = q1 - q0;
                // Add to the tile from the second pass over `q` on (a later image or chunk).
                let more = q0 > 0 || n0 > mine.start;
                for (key, taps) in keys.taps.iter().enumerate() {
                    for &(k, c0) in taps {
                        // The lane-side slice stays in L1 while the row-side slices stream.
                        let (outer, inner) = if s_on_rows { (nbb, nsb) } else { (nsb, nbb) };
                        for o in 0..outer {
                            for i in 0..inner {
                                let (sbl, bbl) = if s_on_rows { (i, o) } else { (o, i) };
                                let (sp, sa) = s_at(sbl, q0);
                                let (bp, ba) = b_at(bbl, key, c0, q0);
                                let sv = &sp[sa..][..kq * s_width];
                                let bv = &bp[ba..][..kq * b_width];
                                let at = ((sbl * nbb + bbl) * k_size + k) * tile;
                                let out = &mut acc[at..at + tile];
                                if s_on_rows {
                                    kernel(sv, bv, Rows::packed(kq, b_width), out, more);
                                } else {
                                    kernel(bv, sv, Rows::packed(kq, s_width), out, more);
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    // A task's sums into its rows of `dW[a][b][k]` (`rows` from its first S block's first
    // channel): for each tile row, its lanes' taps transposed eight taps by eight lanes
    // into the lanes' rows (`transpose_runs`), element by element where that path does not
    // apply.
    let lane_runs: Vec<Run8> = (0..tl)
        .map(|l| Run8 {
            start: l,
            stride: 1,
            outside: 0,
        })
        .collect();
    let gather = |task: usize, acc: &[T], rows: &mut [T]| {
        let (sbs, blks) = ranges(task);
        let nbb = blks.len();
        let row0 = sbs.start * s_width;
        for sbl in 0..sbs.len() {
            for bbl in 0..nbb {
                let t0 = (sbl * nbb + bbl) * k_size * tile;
                let blk = blks.start + bbl;
                for rr in 0..mr {
                    // The tile row's first (a, b) channels, its live lanes, and the step
                    // between its lanes' rows of dW.
                    let (sc, bc, live, step) = if s_on_rows {
                        let (sc, bc) = ((sbs.start + sbl) * s_width + rr, blk * b_width);
                        let live = if sc < a_pg { b_pg - bc } else { 0 };
                        (sc, bc, live.min(tl), k_size)
                    } else {
                        let (sc, bc) = ((sbs.start + sbl) * s_width, blk * b_width + rr);
                        let live = if bc < b_pg { a_pg - sc } else { 0 };
                        (sc, bc, live.min(tl), b_pg * k_size)
                    };
                    if live == 0 {
                        continue;
                    }
                    let base = ((sc - row0) * b_pg + bc) * k_size;
                    for k0 in (0..k_size).step_by(8) {
                        let cnt = (k_size - k0).min(8);
                        let src: [&[T]; 8] = std::array::from_fn(|c| {
                            &acc[t0 + (k0 + c.min(cnt - 1)) * tile + rr * tl..][..tl]
                        });
                        let dst = &mut rows[base + k0..];
                        let done = transpose_runs(&src, cnt, &lane_runs[..live], dst, step);
                        for l in done..live {
                            for (c, row) in src.iter().enumerate().take(cnt) {
                                dst[l * step + c] = row[l];
                            }
                        }
                    }
                }
            }
        }
    };
    let acc_len = |task: usize| {
        let (sbs, blks) = ranges(task);
        sbs.len() * blks.len() * k_size * tile
    };
    let row_len = b_pg * k_size;
    let group_len = a_pg * row_len;
    if by_big || parts > 1 {
        // Tasks share dW's rows: each keeps its sums, and they are gathered in order (the
        // later parts added).
        let mut accs: Vec<scratch::Scratch<T>> = (0..units * splits)
            .map(|t| scratch::take::<T>(acc_len(t)))
            .collect();
        let items: Vec<(usize, &mut scratch::Scratch<T>)> = accs.iter_mut().enumerate().collect();
        run_each(threads, items, |(t, acc)| sums(t, acc));
        // The later parts' sums added to the first part's, in order (each task of a part
        // has the same tiles as the first part's task of its group and split).
        let (first, later) = accs.split_at_mut(g.groups * splits);
        for (t, acc) in later.iter().enumerate() {
            let to = &mut first[t % (g.groups * splits)];
            for (a, &b) in to.iter_mut().zip(acc.iter()) {
                *a = *a + b;
            }
        }
        for (t, acc) in first.iter().enumerate() {
            let group = t / splits;
            // From the task's first row (tasks over big-side blocks start at row 0).
            let first = (ranges(t).0.start * s_width).min(a_pg) * row_len;
            let rows = &mut dw[group * group_len + first..(group + 1) * group_len];
            gather(t, acc, rows);
        }
        return dw;
    }
    // Each task's rows of dW: `(group, S blocks)` → a contiguous run of `a` channels.
    let mut task_rows: Vec<(usize, &mut [T])> = Vec::with_capacity(g.groups * splits);
    let mut rest_dw: &mut [T] = &mut dw;
    for task in 0..g.groups * splits {
        let split = task % splits;
        let lo = (split * per_split * s_width).min(a_pg);
        let hi = ((split + 1) * per_split * s_width).min(a_pg);
        let (rows, tail) = std::mem::take(&mut rest_dw).split_at_mut((hi - lo) * row_len);
        rest_dw = tail;
        task_rows.push((task, rows));
    }
    run_each(threads, task_rows, |(t, d)| {
        let mut acc = scratch::take::<T>(acc_len(t));
        sums(t, &mut acc);
        gather(t, &acc, d);
    });
    dw
}

#[cfg(test)]
mod tests {
    use super::{Run8, Tables};

    const OUT: usize = usize::MAX;

    fn of(run: &[usize]) -> (usize, usize, u8) {
        let r = Run8::of(run);
        (r.start, r.stride, r.outside)
    }

    #[test]
    fn runs_of_eight_read_at_a_stride_with_the_outside_positions_marked() {
        assert_eq!(of(&[5, 6, 7, 8, 9, 10, 11, 12]), (5, 1, 0));
        assert_eq!(of(&[3, 5, 7, 9, 11, 13, 15, 17]), (3, 2, 0));
        // A tap's run past the start or the end of a row: the neighbours, marked.
        assert_eq!(of(&[OUT, 33, 35, 37, 39, 41, 43, 45]), (31, 2, 0b1));
        assert_eq!(of(&[OUT, OUT, 4, 5, 6, 7, 8, 9]), (2, 1, 0b11));
        assert_eq!(of(&[17, 19, 21, 23, 25, 27, 29, OUT]), (17, 2, 0b1000_0000));
        assert_eq!(
            of(&[17, OUT, 21, OUT, 25, 27, 29, OUT]),
            (17, 2, 0b1000_1010)
        );
        // Not such a run: copied value by value.
        let none = (0, 0, 0);
        assert_eq!(of(&[OUT, 1, 3, 5, 7, 9, 11, 13]), none); // would start before 0
        assert_eq!(of(&[OUT, 0, 1, 2, 3, 4, 5, 6]), none);
        assert_eq!(of(&[OUT; 8]), none);
        assert_eq!(of(&[OUT, OUT, OUT, OUT, OUT, OUT, OUT, 9]), none);
        assert_eq!(of(&[0, 3, 6, 9, 12, 15, 18, 21]), none); // stride 3
        assert_eq!(of(&[0, 1, 2, 3, 5, 6, 7, 8]), none); // a row's end
        assert_eq!(of(&[0, 2, 4, 6, 8, 10, 12]), none); // short
        assert_eq!(of(&[1, OUT, 4, 5, 6, 7, 8, 9]), none); // 4 - 1 not a multiple of 2
    }

    #[test]
    fn packing_passes_hold_whole_runs_of_eight() {
        // A key's copy positions: rows of 32, each read at a stride of 2 from a row of 128
        // (a run of eight crossing a row's end has no one stride: copied value by value).
        let key: Vec<usize> = (0..4096).map(|j| j / 32 * 128 + 2 * (j % 32)).collect();
        // dilated's big side first: three keys of 64 channels, 85 positions a pass unrounded.
        for (tables, batch, width) in [(3, 1, 64), (1, 1, 48), (8, 1, 32), (1, 3, 6), (40, 4, 64)] {
            let t = Tables::new::<f32>(vec![key.clone(); tables], batch, width);
            assert!(
                t.block >= 8 && t.block.is_multiple_of(8),
                "{tables} tables: {}",
                t.block
            );
            // Every run of eight a pass takes (from the pass's start) reads at the stride.
            let passes = (0..key.len()).step_by(t.block);
            let mut runs = passes.flat_map(|p| (p..(p + t.block).min(key.len())).step_by(8));
            assert!(runs.all(|j| t.runs[0][j].stride == 2), "{tables} tables");
        }
    }
}
