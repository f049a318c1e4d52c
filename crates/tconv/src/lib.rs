//! # tconv — exact, N-d convolution and transposed convolution
//!
//! PyTorch/ONNX-compatible `conv` (cross-correlation) and `conv_transpose` for any number of
//! spatial axes, in `f32` and `f64`, with every parameter: stride, dilation, symmetric or
//! asymmetric padding, ONNX `auto_pad`, output_padding, `output_size` / `output_shape`,
//! groups and bias.
//!
//! Layouts are PyTorch's: input `(N, C_in, *spatial)` or unbatched `(C_in, *spatial)`;
//! conv weight `(C_out, C_in/groups, *k)`; conv_transpose weight `(C_in, C_out/groups, *k)`;
//! bias `(C_out,)`.
//!
//! ```
//! use ndarray::array;
//! use tconv::{conv_transpose, ConvParams};
//!
//! // The explainer's example: each input element scales the kernel, overlaps sum.
//! let x = array![[[1.0f32, 2.0], [3.0, 4.0]]]; // (C=1, 2, 2), unbatched
//! let w = array![[[[1.0f32, 0.0], [0.0, -1.0]]]]; // (C_in=1, C_out=1, 2, 2)
//! let y = conv_transpose(&x, &w, None, &ConvParams::new()).unwrap();
//! assert_eq!(y, array![[[1.0, 2.0, 0.0], [3.0, 3.0, -2.0], [0.0, -3.0, -4.0]]].into_dyn());
//! ```
//!
//! Ported from TensorFlow, Keras or JAX? [`convention`] maps their layouts, kernels and
//! padding rules onto these, and runs their calls as they would.
//!
//! The crate is organised as the computation is: [`params`] (the user's words) →
//! [`geometry`] (checked, resolved numbers) → [`reference`](mod@reference) (the oracles).

pub mod convention;
pub mod error;
pub mod explain;
pub mod fast;
pub mod geometry;
pub mod grad;
pub mod layer;
pub mod npy;
pub mod params;
pub mod plan;
mod recent;
pub mod reference;
pub mod tensor;

pub use error::{Error, ErrorKind, Result};
pub use geometry::{AxisGeometry, Geometry};
pub use grad::{conv_backward, conv_transpose_backward, Gradients, Wanted};
pub use layer::Layer;
pub use params::{ConvParams, Op, OutputSize, Padding};
pub use plan::{Algorithm, Plan, PlanOptions};
pub use tensor::Element;

use ndarray::{ArrayD, ArrayView1, AsArray, Dimension};

/// Ordinary convolution (cross-correlation), as `torch.nn.functional.conv{1,2,3}d` and ONNX
/// `Conv`. `x`: `(N, C_in, *in)` or `(C_in, *in)`; `w`: `(C_out, C_in/groups, *k)`.
///
/// Output extent per axis: `floor((in + p_begin + p_end - d*(k-1) - 1) / s) + 1`.
///
/// # Errors
/// Any invalid shape or parameter, with the numbers involved (see [`ErrorKind`]).
pub fn conv<'x, 'w, T: Element, D1: Dimension, D2: Dimension>(
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    bias: Option<ArrayView1<'_, T>>,
    params: &ConvParams,
) -> Result<ArrayD<T>> {
    run(Op::Conv, x, w, bias, params)
}

/// Transposed convolution, as `torch.nn.functional.conv_transpose{1,2,3}d` and ONNX
/// `ConvTranspose`. `x`: `(N, C_in, *in)` or `(C_in, *in)`; `w`: `(C_in, C_out/groups, *k)`.
///
/// Output extent per axis: `(in-1)*s - p_begin - p_end + d*(k-1) + output_padding + 1`.
///
/// # Errors
/// Any invalid shape or parameter, with the numbers involved (see [`ErrorKind`]).
pub fn conv_transpose<'x, 'w, T: Element, D1: Dimension, D2: Dimension>(
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    bias: Option<ArrayView1<'_, T>>,
    params: &ConvParams,
) -> Result<ArrayD<T>> {
    run(Op::ConvTranspose, x, w, bias, params)
}

/// Plan with default options and execute once.
fn run<'x, 'w, T: Element, D1: Dimension, D2: Dimension>(
    op: Op,
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    bias: Option<ArrayView1<'_, T>>,
    params: &ConvParams,
) -> Result<ArrayD<T>> {
    let x = x.into().into_dyn();
    let plan = plan::Plan::new(
        op,
        x.shape(),
        w,
        bias.as_ref().map(|b| b.len()),
        params,
        &plan::PlanOptions {
            once: true,
            ..plan::PlanOptions::default()
        },
    )?;
    plan.execute(x, bias)
}

/// The README's Rust examples, compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
