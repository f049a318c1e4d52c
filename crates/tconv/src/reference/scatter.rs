//! Transposed convolution as the explainer computes it: every input element multiplies the
//! whole kernel, and the scaled kernel is added into the output at `i*s + k*d - p_begin`;
//! overlaps sum, and whatever lands in the cropped border is dropped.

use ndarray::{ArrayD, ArrayView1, AsArray, Dimension};

use super::big_flat;
use crate::error::Result;
use crate::geometry::Geometry;
use crate::params::{ConvParams, Op};
use crate::tensor::{numel, positions, Element, Problem};

/// Transposed convolution (PyTorch `conv_transpose*d`, ONNX `ConvTranspose`) by scattering.
///
/// `y[n, co, i*s + k*d - p_begin] += x[n, ci, i] · w[ci, co', k]`, starting from the bias.
///
/// # Errors
/// Any invalid shape or parameter (see [`Geometry::new`]).
pub fn conv_transpose_scatter<'x, 'w, T: Element, D1: Dimension, D2: Dimension>(
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    bias: Option<ArrayView1<'_, T>>,
    params: &ConvParams,
) -> Result<ArrayD<T>> {
    let (x, w) = (x.into().into_dyn(), w.into().into_dyn());
    let p = Problem::new(Op::ConvTranspose, &x, &w, bias.as_ref(), params)?;
    let y = scatter(&p.geometry, &p.x, &p.w, p.bias.as_deref());
    p.output_array(y)
}

/// The scatter loop on contiguous data: `x (N, C_in, *in)`, `w (C_in, C_out/g, *k)`.
pub(crate) fn scatter<T: Element>(g: &Geometry, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
    super::expect_op(g, Op::ConvTranspose);
    let (in_sp, out_sp) = (g.small_spatial(), g.big_spatial());
    let k_sp = g.kernel_shape();
    let (in_size, out_size, k_size) = (numel(&in_sp), numel(&out_sp), numel(&k_sp));
    let (in_pg, out_pg) = (g.in_per_group(), g.out_per_group());
    let mut y = vec![T::zero(); g.batch * g.out_channels * out_size];
    if let Some(b) = bias {
        for (plane, chunk) in y.chunks_mut(out_size.max(1)).enumerate() {
            chunk.fill(b[plane % g.out_channels]);
        }
    }
    for n in 0..g.batch {
        for ci in 0..g.in_channels {
            let group = ci / in_pg;
            for (i_flat, i) in positions(&in_sp).enumerate() {
                let xv = x[(n * g.in_channels + ci) * in_size + i_flat];
                for col in 0..out_pg {
                    let co = group * out_pg + col;
                    for (k_flat, k) in positions(&k_sp).enumerate() {
                        if let Some(o_flat) = big_flat(g, &i, &k) {
                            let wv = w[(ci * out_pg + col) * k_size + k_flat];
                            let o = (n * g.out_channels + co) * out_size + o_flat;
                            y[o] = y[o] + xv * wv;
                        }
                    }
                }
            }
        }
    }
    y
}
