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
//!   stride residue share one packed copy of `B` as shifted views. [`fast::weight`](crate::fast::weight)
//!   chooses among that GEMM and the other fast paths (Winograd tiles, row dot products,
//!   `B` read in place where the kernel equals the stride);
//!   [`reference::weight_gradient`](crate::reference::weight_gradient) is the oracle.
//! - `∂L/∂b[c] = Σ_n Σ_positions gy[n, c, ·]`.
//!
//! Only the requested gradients are computed. Every gradient element is produced by one task
//! in a fixed order, so results are bitwise identical for any thread count.

use std::sync::Arc;

use ndarray::{ArrayD, AsArray, Dimension, IxDyn};

use crate::error::{fail, ErrorKind, Result};
use crate::fast::direct::run_each;
use crate::fast::tap_rows::{self, TapRows};
use crate::fast::weight::Sizes;
use crate::fast::weight_outer;
use crate::geometry::Geometry;
use crate::params::{ConvParams, Op};
use crate::plan::{Algorithm, Plan, PlanOptions};
use crate::tensor::{contiguous, numel, Element};

pub use crate::fast::weight::{grad_weight as grad_weight_fast, method as weight_gradient_method};
pub use crate::reference::weight_gradient as grad_weight_reference;

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
    // The input gradient, by the kept plan where given, in an array starting on a cache
    // line (as the forward pass's outputs). Beside the weight gradient it is zeroed before
    // the kernels write it even where they need not (an im2col plan's): dcgan4's backward
    // pass at 2 threads ran 0.95x as fast without (medians and minima, 10 paired rounds;
    // 0.89-0.93x in shorter sittings; again in both orders, which cancels the second
    // binary's bias: unzeroed 0.93x / 0.97x with the zeroed binary first, zeroed 1.04x /
    // 1.04x with the unzeroed first, 8 rounds each), while alone its input gradient ran
    // 1.11-1.15x faster without at 1 thread and 1.17-1.18x at 2, its backward at 1 thread
    // 1.00-1.05x.
    let input_gradient = |g: &Geometry, w: &[T], gy: &[T], o: &PlanOptions, beside: bool| {
        if let Some(gx) = input_by_dots(g, w, gy, o) {
            return Ok(shaped(x.shape(), gx));
        }
        Ok::<_, crate::Error>(match plans {
            Some(plans) => plans(g, o)?.run_aligned(gy, None, x.shape(), beside),
            None => input_plan(g, w, o)?.run_aligned(gy, None, x.shape(), beside),
        })
    };
    let fused = (wanted.input && wanted.weight)
        .then(|| depthwise_taps_backward(&g, &ws, &xs, &gys, options))
        .flatten();
    let (input, weight) = match fused {
        Some((gx, gw)) => (Some(shaped(x.shape(), gx)), Some(gw)),
        None if wanted.input && wanted.weight && side_by_side::<T>(&g, options) => {
            let one = PlanOptions {
                threads: Some(1),
                ..options.clone()
            };
            if let Some((gx, gw)) = balanced(&g, (&ws, &xs, &gys), &one)? {
                let gx = gx
                    .into_shape_with_order(IxDyn(x.shape()))
                    .expect("the input gradient has the input's elements");
                (Some(gx), Some(gw))
            } else {
                let (gi, gw) = crate::fast::direct::run_both(
                    2,
                    || input_gradient(&g, &ws, &gys, &one, true),
                    || grad_weight_fast(&g, &xs, &gys, &one),
                );
                (Some(gi?), Some(gw))
            }
        }
        None => {
            let input = wanted
                .input
                .then(|| input_gradient(&g, &ws, &gys, options, false))
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

/// A backward pass's two gradients on two threads where they would run side by side and
/// the weight gradient is the GEMM over positions in parts ([`crate::fast::weight::part_jobs`]):
/// each thread sums one part of the weight gradient's reduction (consecutive images), then
/// computes the input gradient of half the batch, so that neither waits for the longer
/// gradient (dcgan3's weight gradient takes 1.4x its input gradient's time on one thread).
/// The same bits as one gradient after the other on one thread: the weight gradient's
/// tasks and order are [`grad_weight_fast`]'s, and each half of the input gradient is the
/// adjoint conv of its images on the algorithm the whole batch's plan takes (a conv's
/// images are independent, and every tile and thread count of a plan gives the same bits).
/// `None` where that does not apply.
fn balanced<T: Element>(
    g: &Geometry,
    (w, x, gy): (&[T], &[T], &[T]),
    one: &PlanOptions,
) -> Result<Option<(ArrayD<T>, Vec<T>)>> {
    if !balances::<T>(g, one) {
        return Ok(None);
    }
    let jobs = crate::fast::weight::part_jobs(g, x, gy, one);
    // The halves' plans on the whole batch's algorithm (its choice may weigh the batch; a
    // forced one is the caller's), built here (not taken from a `Layer`'s kept plans,
    // which may hold another choice).
    let once = PlanOptions {
        once: true,
        ..one.clone()
    };
    let algorithm = Plan::<T>::algorithm_for(&g.adjoint(), &once);
    let fixed = PlanOptions {
        algorithm: Some(algorithm),
        ..one.clone()
    };
    let first = g.batch.div_ceil(2);
    let half = |n: usize| Geometry {
        batch: n,
        ..g.clone()
    };
    let p1 = input_plan(&half(first), w, &fixed)?;
    let p2 = if g.batch - first == first {
        None
    } else {
        Some(input_plan(&half(g.batch - first), w, &fixed)?)
    };
    let in_image = numel(&g.input_shape()) / g.batch;
    let out_image = numel(&g.output_shape()) / g.batch;
    let mut gx = crate::tensor::aligned_zeros::<T>(&g.input_shape(), 1);
    let slice = gx.as_slice_mut().expect("a new array is contiguous");
    let (gx1, gx2) = slice.split_at_mut(first * in_image);
    let (gy1, gy2) = gy.split_at(first * out_image);
    let (parts1, parts2) = crate::fast::direct::run_both(
        2,
        || {
            let sums = jobs.sums(0);
            p1.run(gy1, None, gx1);
            sums
        },
        || {
            let sums = jobs.sums(1);
            p2.as_ref().unwrap_or(&p1).run(gy2, None, gx2);
            sums
        },
    );
    let z = crate::fast::weight::Sizes::of(g);
    let mut dw = vec![T::zero(); z.a_ch * z.b_pg * z.k_size];
    jobs.finish(vec![parts1, parts2], &mut dw);
    Ok(Some((gx, dw)))
}

/// Whether a backward pass of `g` that runs its gradients side by side takes [`balanced`].
fn balances<T: Element>(g: &Geometry, options: &PlanOptions) -> bool {
    g.batch >= 2 && crate::fast::weight::in_parts::<T>(g, options)
}

/// Whether a backward pass asking for both gradients of `g` runs them side by side, one
/// thread each: on two threads, where each gradient is small (at most
/// [`SIDE_BY_SIDE_FLOPS`]), where the input gradient's Winograd tiles would have fewer
/// columns on two threads than on one (`shrink` of [`crate::plan::input_tiles`]: its scratch
/// bound holds two tasks' smaller panels only; a 64-channel 32×32 upsampler's backward pass
/// 1.02-1.03x faster so), or where they take the scratch bound of streamed weights
/// (`streamed`) and a gradient has at most [`SIDE_BY_SIDE_STREAMED_FLOPS`] (dcgan2,
/// dcgan1). Side by side against one gradient after the other on two threads
/// (`bench/paired.sh L 2 4`, medians / minima, Intel Xeon): dcgan2 1.06x / 1.06x;
/// hifigan1d, whose input gradient streams its weights too but has 4.3 GFLOP, 1.01x /
/// 1.02x and with AVX2 0.95x / 0.96x; dcgan3 0.87-0.93x, s1k3 0.88-0.96x, dilated
/// 0.94-0.96x (their gradients' times differ, or two threads serve each well).
/// dcgan1, whose input gradient's bound is twice its input a thread for 18.9 MB of
/// streamed weights, ran 0.92x / 0.92x when that gradient took 1.7x its weight
/// gradient's time; on its 12×2 tiles (1.15-1.18x faster) 1.39x / 1.43x (5 rounds), 1.16x
/// / 1.17x with AVX2 (3 rounds; Intel Xeon, 2026-12-07). Forced on the same day (3
/// rounds): dcgan3 0.98x / 0.97x, s1k3 1.04x / 1.06x, dilated 1.01x / 1.00x; of the suite
/// this rule takes dcgan2 and dcgan1 only (AVX-512 and AVX2).
fn side_by_side<T: Element>(g: &Geometry, options: &PlanOptions) -> bool {
    if options.threads_for(g) != 2 {
        return false;
    }
    if input_dots_apply(g, options)
        && numel(&g.weight_shape()).saturating_mul(std::mem::size_of::<T>())
            >= crate::fast::direct::HUGE_BYTES
    {
        // Dot products and outer products over a weight of 32 MiB or more, both bound by
        // memory: each gradient on both threads, one after the other (pix2pix's 1024 -> 512
        // layer on 2×2 inputs, 3 rounds: 3.9-5.1 ms against 7.0-7.7 side by side; on 4×4
        // and 8×8 inputs ties; a batch of 32 on 1×1, a 4 MB weight, ran 1.5 ms so against
        // 1.0 side by side).
        return false;
    }
    if g.flops() <= SIDE_BY_SIDE_FLOPS {
        return true;
    }
    let tiles = crate::plan::input_tiles::<T>(g, options, 2);
    tiles.shrink || (tiles.streamed && g.flops() <= SIDE_BY_SIDE_STREAMED_FLOPS)
}

/// Multiply-adds (×2) of one gradient at or below which a backward pass on two threads
/// whose input gradient streams its weights runs its gradients side by side (see
/// [`side_by_side`]): dcgan2's and dcgan1's 1.07 GFLOP, not hifigan1d's 4.3.
const SIDE_BY_SIDE_STREAMED_FLOPS: u128 = 1 << 31;

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
    } else if !side_by_side::<f32>(g, options) {
        "input gradient, then weight gradient"
    } else if balances::<f32>(g, options) {
        "a thread each: one part of the weight gradient, then half the batch's input gradient"
    } else {
        "input and weight gradients side by side, a thread each"
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
    let isa = options.isa_for::<T>().loops_for::<T>();
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

/// `∂L/∂x`: the adjoint op on `gy` with the same weight, through the planner, or where
/// the reduction is short, by dot products of the weight's rows (see [`input_method`]).
pub fn grad_input<T: Element>(
    g: &Geometry,
    w: &[T],
    gy: &[T],
    options: &PlanOptions,
) -> Result<Vec<T>> {
    if let Some(gx) = input_by_dots(g, w, gy, options) {
        return Ok(gx);
    }
    Ok(input_plan(g, w, options)?.run_new(gy, None))
}

/// Whether `∂L/∂x` of `g` skips the planner for dot products of the weight's rows, read
/// where they lie, with the rows the weight gradient's outer products gather from `gy`
/// ([`crate::fast::weight_outer::input_dots`]): a transposed conv whose weight gradient
/// takes those outer products (a few terms of batch × input positions: pix2pix's decoder at
/// batch 1), with no algorithm, tile or in-place choice forced (those are a plan's). Its
/// conv's plan would pack the whole weight on every call: pix2pix's 1024 -> 512 layer on
/// 2×2 inputs spent 10-13 ms of its input gradient so at 1 thread.
fn input_dots_apply(g: &Geometry, options: &PlanOptions) -> bool {
    options.algorithm.or_else(Algorithm::from_env).is_none()
        && options.tile.is_none()
        && options.inplace.is_none()
        && weight_outer::input_applies(g)
}

/// `∂L/∂x` by dot products where [`input_dots_apply`].
fn input_by_dots<T: Element>(
    g: &Geometry,
    w: &[T],
    gy: &[T],
    options: &PlanOptions,
) -> Option<Vec<T>> {
    input_dots_apply(g, options).then(|| {
        let isa = options.isa_for::<T>().loops_for::<T>();
        weight_outer::input_dots(g, w, gy, options.threads_for(g), isa)
    })
}

/// How `∂L/∂x` of `g` is computed, in words (for reports): the input plan's op and label,
/// or the dot products.
pub fn input_method<T: Element>(g: &Geometry, w: &[T], options: &PlanOptions) -> Result<String> {
    if input_dots_apply(g, options) {
        return Ok("dot products of a short reduction".into());
    }
    let plan = input_plan(g, w, options)?;
    Ok(format!("{} {}", plan.geometry().op.name(), plan.label()))
}

/// `∂L/∂b`: the sum of `gy` over batch and positions, per output channel.
pub fn grad_bias<T: Element>(g: &Geometry, gy: &[T]) -> Vec<T> {
    channel_sums(gy, g.out_channels, numel(&g.output_shape()[2..]))
}

/// The sums of `y` (`(N, channels, *positions)`, `plane` positions an image's channel) over
/// batch and positions, per channel, plane by plane in order.
pub(crate) fn channel_sums<T: Element>(y: &[T], channels: usize, plane: usize) -> Vec<T> {
    let mut sums = vec![T::zero(); channels];
    for (i, chunk) in y.chunks(plane.max(1)).enumerate() {
        let c = i % channels;
        sums[c] = chunk.iter().fold(sums[c], |acc, &v| acc + v);
    }
    sums
}
