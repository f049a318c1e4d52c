//! Ordinary convolution by its definition: every output element is a dot product of the
//! kernel with the (padded, dilated) input window it covers.

use ndarray::{ArrayD, ArrayView1, AsArray, Dimension};

use super::big_flat;
use crate::error::Result;
use crate::geometry::Geometry;
use crate::params::{ConvParams, Op};
use crate::tensor::{numel, positions, Element, Problem};

/// Ordinary convolution (cross-correlation, as PyTorch and ONNX `Conv`) by gathering.
///
/// `y[n, co, o] = b[co] + Σ_{ci in group(co)} Σ_k x[n, ci, o*s + k*d - p_begin] · w[co, ci', k]`
///
/// # Errors
/// Any invalid shape or parameter (see [`Geometry::new`]).
pub fn conv_gather<'x, 'w, T: Element, D1: Dimension, D2: Dimension>(
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    bias: Option<ArrayView1<'_, T>>,
    params: &ConvParams,
) -> Result<ArrayD<T>> {
    let (x, w) = (x.into().into_dyn(), w.into().into_dyn());
    let p = Problem::new(Op::Conv, &x, &w, bias.as_ref(), params)?;
    let y = gather(&p.geometry, &p.x, &p.w, p.bias.as_deref());
    p.output_array(y)
}

/// The gather loop on contiguous data: `x (N, C_in, *in)`, `w (C_out, C_in/g, *k)`.
pub(crate) fn gather<T: Element>(g: &Geometry, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
    super::expect_op(g, Op::Conv);
    let (in_sp, out_sp) = (g.big_spatial(), g.small_spatial());
    let k_sp = g.kernel_shape();
    let (in_size, out_size, k_size) = (numel(&in_sp), numel(&out_sp), numel(&k_sp));
    let (in_pg, out_pg) = (g.in_per_group(), g.out_per_group());
    let mut y = vec![T::zero(); g.batch * g.out_channels * out_size];
    for n in 0..g.batch {
        for co in 0..g.out_channels {
            let group = co / out_pg;
            for (o_flat, o) in positions(&out_sp).enumerate() {
                let mut acc = bias.map_or(T::zero(), |b| b[co]);
                for cil in 0..in_pg {
                    let ci = group * in_pg + cil;
                    for (k_flat, k) in positions(&k_sp).enumerate() {
                        if let Some(i_flat) = big_flat(g, &o, &k) {
                            acc = acc
                                + x[(n * g.in_channels + ci) * in_size + i_flat]
                                    * w[(co * in_pg + cil) * k_size + k_flat];
                        }
                    }
                }
                y[(n * g.out_channels + co) * out_size + o_flat] = acc;
            }
        }
    }
    y
}
