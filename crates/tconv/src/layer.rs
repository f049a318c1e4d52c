//! A layer: one weight (and bias) with its parameters, run on inputs of any shape.
//!
//! A [`Plan`] is built for one input shape. Where input sizes change between calls (an
//! audio vocoder's clips, a decoder's variable image sizes), a [`Layer`] plans each new
//! shape as it comes and keeps the last [`Layer::KEEP_PLANS`] plans; and a plan for a new
//! shape whose packed weights would be the same as an earlier plan's shares them instead of
//! packing the weight again. The packing depends on the kernel, the channels, the phases
//! and the register tile, and for Winograd tiles on their transforms; the planner picks
//! the transforms for the input's extent, so they can change with it, and a layer's plan
//! for a new extent takes a Winograd tile whose packing the layer holds where one fits
//! (alone, the cheapest tile changes with the extent too: at 1 thread dcgan1's widths 4-12
//! take six pairs of tile and transforms, the layer three packings); the [`PackCache`]
//! keeps a few. dcgan1's plan packs and
//! transforms an 8 MB weight: `tconv bench` reports `plan_ms` (a fresh plan) beside
//! `replan_ms` (a layer's plan for a new input shape).

use std::sync::Arc;

use ndarray::{ArrayD, ArrayView1, ArrayViewD, AsArray, Dimension, IxDyn};

use crate::error::{fail, ErrorKind, Result};
use crate::fast::pack::PackCache;
use crate::geometry::Geometry;
use crate::grad::{self, Gradients, Wanted};
use crate::params::{ConvParams, Op};
use crate::plan::{Plan, PlanOptions};
use crate::recent::Recent;
use crate::tensor::{contiguous, Element};

/// One weight and bias with their parameters, planned per input shape.
///
/// ```
/// use tconv::{ConvParams, Layer, Op, PlanOptions};
/// use ndarray::{Array3, ArrayD, IxDyn};
///
/// // A 1-D upsampler: 2 -> 1 channels, kernel 4, stride 2, padding 1.
/// let w = ArrayD::from_shape_fn(IxDyn(&[2, 1, 4]), |i| (i[0] + i[2]) as f32);
/// let params = ConvParams::new().stride(&[2]).padding(&[1]);
/// let layer = Layer::new(Op::ConvTranspose, &w, None, &params, &PlanOptions::default())?;
/// for len in [5, 6, 7, 5] {
///     let x = Array3::<f32>::ones((1, 2, len));
///     let y = layer.forward(&x)?;
///     assert_eq!(y.shape(), &[1, 1, 2 * len]);
///     assert_eq!(y, tconv::conv_transpose(&x, &w, None, &params)?);
/// }
/// # Ok::<(), tconv::Error>(())
/// ```
pub struct Layer<T: Element> {
    op: Op,
    params: ConvParams,
    options: PlanOptions,
    weight_shape: Vec<usize>,
    weight: Vec<T>,
    bias: Option<Vec<T>>,
    /// Plans by input shape.
    plans: Recent<Arc<Plan<T>>>,
    packs: PackCache,
    /// The input gradient's plans, by input shape and threads, and their packings.
    adjoints: Recent<Arc<Plan<T>>>,
    adjoint_packs: PackCache,
}

impl<T: Element> Layer<T> {
    /// Plans kept (most recently used last); a plan holds no copy of the packed weights it
    /// shares.
    pub const KEEP_PLANS: usize = 8;

    /// A layer of `op` with weight `w` (PyTorch layout: conv `(C_out, C_in/g, *k)`,
    /// conv_transpose `(C_in, C_out/g, *k)`) and optional bias `(C_out,)`. Plans are built
    /// for `options` (whose `once` is ignored: a layer's plans run many times).
    ///
    /// # Errors
    /// A weight of fewer than 3 axes. The shapes are checked against each other and the
    /// parameters when an input's shape is first planned ([`Layer::plan`]).
    pub fn new<'w, D: Dimension>(
        op: Op,
        w: impl AsArray<'w, T, D>,
        bias: Option<ArrayView1<'_, T>>,
        params: &ConvParams,
        options: &PlanOptions,
    ) -> Result<Layer<T>> {
        let w = w.into().into_dyn();
        if w.ndim() < 3 {
            return fail(ErrorKind::WeightRank { rank: w.ndim() });
        }
        let bytes = w.len() * std::mem::size_of::<T>();
        Ok(Layer {
            op,
            params: params.clone(),
            options: PlanOptions {
                once: false,
                ..options.clone()
            },
            weight_shape: w.shape().to_vec(),
            weight: contiguous(&w).into_owned(),
            bias: bias.map(|b| b.to_vec()),
            plans: Recent::new(Self::KEEP_PLANS),
            packs: PackCache::new(bytes),
            adjoints: Recent::new(Self::KEEP_PLANS),
            adjoint_packs: PackCache::new(bytes),
        })
    }

    /// The operation.
    pub fn op(&self) -> Op {
        self.op
    }

    /// The parameters.
    pub fn params(&self) -> &ConvParams {
        &self.params
    }

    /// The weight's shape.
    pub fn weight_shape(&self) -> &[usize] {
        &self.weight_shape
    }

    /// The weight (PyTorch layout).
    pub fn weight(&self) -> ArrayViewD<'_, T> {
        ArrayViewD::from_shape(IxDyn(&self.weight_shape), &self.weight)
            .expect("the weight's values match its shape")
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<ArrayView1<'_, T>> {
        self.bias.as_deref().map(ArrayView1::from)
    }

    /// Replace the weight and bias (a training step's update) by values of the same shapes;
    /// the plans and packed weights kept for the old values are dropped.
    ///
    /// # Errors
    /// A weight of another shape, or a bias where there was none (or none where there was
    /// one, or of another length); the layer is then unchanged.
    pub fn set_parameters<'w, D: Dimension>(
        &mut self,
        w: impl AsArray<'w, T, D>,
        bias: Option<ArrayView1<'_, T>>,
    ) -> Result<()> {
        let w = w.into().into_dyn();
        if w.shape() != self.weight_shape.as_slice() {
            return fail(ErrorKind::ShapeMismatch {
                what: "new weight",
                got: w.shape().to_vec(),
                expected: self.weight_shape.clone(),
            });
        }
        let old_bias = self.bias.as_ref().map(|b| vec![b.len()]);
        let new_bias = bias.as_ref().map(|b| vec![b.len()]);
        if old_bias != new_bias {
            return fail(ErrorKind::ShapeMismatch {
                what: "new bias",
                got: new_bias.unwrap_or_default(),
                expected: old_bias.unwrap_or_default(),
            });
        }
        *self = Layer::new(self.op, &w, bias, &self.params, &self.options)?;
        Ok(())
    }

    /// The gradients of this layer's output for input `x` and upstream gradient `grad_y`,
    /// bit for bit those of [`crate::conv_backward`] / [`crate::conv_transpose_backward`]
    /// with this layer's weight, parameters and options; `wanted` says which.
    ///
    /// The input gradient's plan (the adjoint op with this weight, packed) is kept by input
    /// shape until [`Layer::set_parameters`], and its packings shared between shapes as the
    /// forward pass's are: where the weight stays fixed over many calls (gradients with
    /// respect to the input of a trained network: inversion, saliency, adversarial inputs)
    /// the weight is not packed again each call. In training, where each step updates the
    /// weight, each step packs it once, as the functions do.
    ///
    /// # Errors
    /// As those functions.
    pub fn backward<'x, 'g, D1: Dimension, D2: Dimension>(
        &self,
        x: impl AsArray<'x, T, D1>,
        grad_y: impl AsArray<'g, T, D2>,
        wanted: Wanted,
    ) -> Result<Gradients<T>> {
        let plans = |g: &Geometry, options: &PlanOptions| -> Result<Arc<Plan<T>>> {
            let mut key = g.input_shape();
            key.push(options.threads.map_or(0, |t| t + 1));
            kept_plan(&self.adjoints, &self.adjoint_packs, &key, |packs| {
                let once = PlanOptions {
                    once: true,
                    ..options.clone()
                };
                Plan::build(g.adjoint(), &self.weight, &once, Some(packs))
            })
        };
        grad::backward(
            self.op,
            x,
            self.weight(),
            grad_y,
            &self.params,
            wanted,
            &self.options,
            Some(&plans),
        )
    }

    /// The plan for inputs of `input_shape` (`(N, C, *spatial)` or `(C, *spatial)`): a
    /// kept one, else a new one sharing packed weights with earlier plans where it can.
    ///
    /// # Errors
    /// Any invalid shape or parameter for this input (see [`Geometry::new`]).
    pub fn plan(&self, input_shape: &[usize]) -> Result<Arc<Plan<T>>> {
        kept_plan(&self.plans, &self.packs, input_shape, |packs| {
            let bias_shape = self.bias.as_ref().map(|b| vec![b.len()]);
            let g = Geometry::new(
                self.op,
                input_shape,
                &self.weight_shape,
                bias_shape.as_deref(),
                &self.params,
            )?;
            Plan::build(g, &self.weight, &self.options, Some(packs))
        })
    }

    /// Run on `x` (any shape the parameters accept), planning its shape if it is new.
    ///
    /// # Errors
    /// As [`Layer::plan`].
    pub fn forward<'x, D: Dimension>(&self, x: impl AsArray<'x, T, D>) -> Result<ArrayD<T>> {
        let x = x.into().into_dyn();
        let plan = self.plan(x.shape())?;
        plan.execute(x, self.bias())
    }

    /// Packed weights held for this layer's plans now: the forward pass's and the input
    /// gradient's (at most [`PackCache::KEEP`] each).
    pub fn packings(&self) -> usize {
        self.packs.len() + self.adjoint_packs.len()
    }

    /// Times this layer's plans have packed its weight so far (the forward pass's and the
    /// input gradient's): a plan for a new input shape packs only where no packing held
    /// serves it.
    pub fn packings_made(&self) -> usize {
        self.packs.made() + self.adjoint_packs.made()
    }

    /// Bytes of the packed weights held: the forward pass's and the input gradient's, each
    /// at most [`PackCache::BUDGET`] times the weight's but always the last packing (a plan
    /// in use keeps its own packing alive beyond that).
    pub fn packed_bytes(&self) -> usize {
        self.packs.bytes() + self.adjoint_packs.bytes()
    }
}

/// The plan kept in `plans` under `key`, else `build(packs)`, kept there; plans whose
/// packing `packs` has let go are dropped (they would keep it alive past its budget).
fn kept_plan<T: Element>(
    plans: &Recent<Arc<Plan<T>>>,
    packs: &PackCache,
    key: &[usize],
    build: impl FnOnce(&PackCache) -> Result<Plan<T>>,
) -> Result<Arc<Plan<T>>> {
    if let Some(plan) = plans.get(key) {
        return Ok(plan);
    }
    let plan = Arc::new(build(packs)?);
    plans.insert(key.to_vec(), Arc::clone(&plan));
    plans.retain(|p| p.packing_id().is_none_or(|id| packs.holds(id)));
    Ok(plan)
}
