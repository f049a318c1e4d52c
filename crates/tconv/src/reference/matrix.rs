//! The matrix view: an ordinary convolution is a (sparse) matrix `C` acting on the
//! flattened input; the transposed convolution is `Cᵀ`, exactly.

use ndarray::{Array2, ArrayD, ArrayView1, AsArray, Dimension};

use super::big_flat;
use crate::error::{fail, ErrorKind, Result};
use crate::geometry::Geometry;
use crate::params::{ConvParams, Op};
use crate::tensor::{numel, positions, Element, Problem};

/// Largest matrix the matrix view builds (2^24 entries).
pub const MAX_MATRIX_ELEMENTS: u128 = 1 << 24;

/// The matrix `C` of the ordinary convolution underlying `g`, for one batch element.
///
/// Rows index the "small" side `(channel, position)` flattened row-major — the conv's output
/// or the transposed conv's input — and columns the "big" side (conv input / transposed
/// output). Entry `C[(a, o), (b, i)] = w[a, b', k]` summed over taps with
/// `i = o*s + k*d - p_begin`. So `conv(x) = C·x` and `conv_transpose(x) = Cᵀ·x` (plus bias).
///
/// # Errors
/// If the matrix would have more than [`MAX_MATRIX_ELEMENTS`] entries.
pub fn convolution_matrix<T: Element>(g: &Geometry, w: &[T]) -> Result<Array2<T>> {
    // The weight's first axis is the small-side channel count in both layouts.
    let (c_small, c_big) = match g.op {
        Op::Conv => (g.out_channels, g.in_channels),
        Op::ConvTranspose => (g.in_channels, g.out_channels),
    };
    let (small_sp, big_sp, k_sp) = (g.small_spatial(), g.big_spatial(), g.kernel_shape());
    let (small_size, big_size, k_size) = (numel(&small_sp), numel(&big_sp), numel(&k_sp));
    let (rows, cols) = (c_small * small_size, c_big * big_size);
    let entries = rows as u128 * cols as u128;
    if entries > MAX_MATRIX_ELEMENTS {
        return fail(ErrorKind::TooLarge {
            what: "convolution matrix",
            elements: entries,
            limit: MAX_MATRIX_ELEMENTS,
        });
    }
    let (small_pg, big_pg) = (c_small / g.groups, c_big / g.groups);
    let mut m = Array2::<T>::zeros((rows, cols));
    for a in 0..c_small {
        let group = a / small_pg;
        for (o_flat, o) in positions(&small_sp).enumerate() {
            for bl in 0..big_pg {
                let b = group * big_pg + bl;
                for (k_flat, k) in positions(&k_sp).enumerate() {
                    if let Some(i_flat) = big_flat(g, &o, &k) {
                        let entry = &mut m[[a * small_size + o_flat, b * big_size + i_flat]];
                        *entry = *entry + w[(a * big_pg + bl) * k_size + k_flat];
                    }
                }
            }
        }
    }
    Ok(m)
}

/// Apply `C` (conv) or `Cᵀ` (conv_transpose) to each batch element and add the bias.
fn apply<T: Element>(p: &Problem<'_, T>) -> Result<Vec<T>> {
    let g = &p.geometry;
    let m = convolution_matrix(g, &p.w)?;
    let m = match g.op {
        Op::Conv => m.view(),
        Op::ConvTranspose => m.t(),
    };
    let (in_len, out_len) = (m.ncols(), m.nrows());
    let out_size = out_len / g.out_channels;
    let mut y = Vec::with_capacity(g.batch * out_len);
    for n in 0..g.batch {
        let xn = ArrayView1::from(&p.x[n * in_len..(n + 1) * in_len]);
        let yn = m.dot(&xn);
        for (idx, v) in yn.iter().enumerate() {
            let b = p.bias.as_ref().map_or(T::zero(), |b| b[idx / out_size]);
            y.push(*v + b);
        }
    }
    Ok(y)
}

/// Ordinary convolution computed as `C·x`.
///
/// # Errors
/// Any invalid shape or parameter, or a matrix over [`MAX_MATRIX_ELEMENTS`].
pub fn conv_by_matrix<'x, 'w, T: Element, D1: Dimension, D2: Dimension>(
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    bias: Option<ArrayView1<'_, T>>,
    params: &ConvParams,
) -> Result<ArrayD<T>> {
    let (x, w) = (x.into().into_dyn(), w.into().into_dyn());
    let p = Problem::new(Op::Conv, &x, &w, bias.as_ref(), params)?;
    let y = apply(&p)?;
    p.output_array(y)
}

/// Transposed convolution computed as `Cᵀ·x`: the proof that it is the transpose.
///
/// # Errors
/// Any invalid shape or parameter, or a matrix over [`MAX_MATRIX_ELEMENTS`].
pub fn conv_transpose_by_matrix<'x, 'w, T: Element, D1: Dimension, D2: Dimension>(
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    bias: Option<ArrayView1<'_, T>>,
    params: &ConvParams,
) -> Result<ArrayD<T>> {
    let (x, w) = (x.into().into_dyn(), w.into().into_dyn());
    let p = Problem::new(Op::ConvTranspose, &x, &w, bias.as_ref(), params)?;
    let y = apply(&p)?;
    p.output_array(y)
}
