//! Reference algorithms: slow, obviously correct, and the oracles every fast path is
//! tested against. Three views of transposed convolution, all agreeing exactly on
//! small-integer data, plus the ordinary convolution they are the transpose of.
//!
//! - [`conv_gather`]: ordinary convolution, each output a dot product (the definition).
//! - [`conv_transpose_scatter`]: each input element scales the whole kernel, which is added
//!   into the output at `i*s + k*d - p_begin` (the explainer's view).
//! - [`conv_transpose_zero_insertion`]: insert `s-1` zeros between inputs, pad, correlate at
//!   stride 1 with the kernel rotated 180° and its channel roles swapped.
//! - [`conv_transpose_by_matrix`]: build the matrix `C` of the ordinary convolution and apply
//!   `Cᵀ` — transposed convolution *is* the transpose.
//! - [`weight_gradient`]: the gradient of either op with respect to its weight, by its
//!   definition.

pub(crate) mod gather;
mod matrix;
mod scatter;
mod weight;
mod zero_insertion;

pub use gather::conv_gather;
pub(crate) use gather::gather as gather_flat;
pub use matrix::{
    conv_by_matrix, conv_transpose_by_matrix, convolution_matrix, MAX_MATRIX_ELEMENTS,
};
pub use scatter::conv_transpose_scatter;
pub(crate) use scatter::scatter as scatter_flat;
pub use weight::weight_gradient;
pub use zero_insertion::{conv_transpose_zero_insertion, zero_insertion_view, ZeroInsertionView};

use crate::geometry::Geometry;
use crate::params::Op;

/// Row-major flat big-side offset reached from small-side position `small` by tap `tap`,
/// or `None` if it falls in the padding (conv) / the cropped border (conv_transpose).
pub fn big_flat(g: &Geometry, small: &[usize], tap: &[usize]) -> Option<usize> {
    let mut flat = 0;
    for (a, axis) in g.axes.iter().enumerate() {
        let pos = axis.big_index(g.op, small[a], tap[a])?;
        flat = flat * axis.big(g.op) + pos;
    }
    Some(flat)
}

/// Geometry sanity for functions that accept only one op.
pub(crate) fn expect_op(g: &Geometry, op: Op) {
    debug_assert_eq!(g.op, op, "reference called with the wrong op");
}
