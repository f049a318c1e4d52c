//! Transposed convolution as a stride-1 correlation of a zero-inserted, padded input with
//! the kernel rotated 180° and its in/out channel roles swapped.
//!
//! Per axis: insert `s-1` zeros between input elements, pad `d(k-1) - p_begin` zeros before
//! and `d(k-1) - p_end + output_padding` after (a negative amount crops instead), then
//! correlate at stride 1 with dilation `d`.

use ndarray::{ArrayD, ArrayView1, AsArray, Dimension, IxDyn};

use super::gather::gather;
use crate::error::{ErrorKind, Result};
use crate::geometry::{check_elements, AxisGeometry, Geometry};
use crate::params::{ConvParams, Op};
use crate::tensor::{flat_index, numel, positions, Element, Problem};

/// The zero-insertion view of a transposed convolution, ready to be shown or correlated.
#[derive(Clone, Debug)]
pub struct ZeroInsertionView<T> {
    /// The zero-inserted, padded input `(N, C_in, *z)`, `z = out + d(k-1)` per axis.
    pub input: ArrayD<T>,
    /// Zeros before the first input element per axis, `d(k-1) - p_begin` (negative: cropped).
    pub pad_before: Vec<i64>,
    /// Zeros after the last input element per axis, `d(k-1) - p_end + output_padding`.
    pub pad_after: Vec<i64>,
    /// The kernel rotated 180° with channel roles swapped: a conv weight `(C_out, C_in/g, *k)`.
    pub kernel: ArrayD<T>,
    /// The stride-1 convolution that maps `input` to the transposed convolution's output.
    pub conv_geometry: Geometry,
}

/// Build the zero-insertion view for a checked conv_transpose geometry.
///
/// # Errors
/// If the zero-inserted input would exceed the size limit.
pub fn zero_insertion_view<T: Element>(
    g: &Geometry,
    x: &[T],
    w: &[T],
) -> Result<ZeroInsertionView<T>> {
    super::expect_op(g, Op::ConvTranspose);
    let reach = |a: &AxisGeometry| (a.dilation * (a.kernel - 1)) as i64;
    let pad_before: Vec<i64> = g.axes.iter().map(|a| reach(a) - a.pad_begin).collect();
    let pad_after: Vec<i64> = g
        .axes
        .iter()
        .map(|a| reach(a) - a.pad_end + a.output_padding as i64)
        .collect();
    let z_sp: Vec<usize> = g
        .axes
        .iter()
        .map(|a| a.output + a.dilation * (a.kernel - 1))
        .collect();
    let mut z_shape = vec![g.batch, g.in_channels];
    z_shape.extend(&z_sp);
    check_elements("zero-inserted input", &z_shape)?;

    let in_sp = g.small_spatial();
    let (in_size, z_size) = (numel(&in_sp), numel(&z_sp));
    let mut z = vec![T::zero(); numel(&z_shape)];
    for plane in 0..g.batch * g.in_channels {
        for (j_flat, j) in positions(&z_sp).enumerate() {
            // Which input element (if any) sits at zero-inserted position j.
            let mut src = Vec::with_capacity(j.len());
            for (a, axis) in g.axes.iter().enumerate() {
                let u = j[a] as i64 - pad_before[a];
                let s = axis.stride as i64;
                if u < 0 || u % s != 0 || (u / s) as usize >= axis.input {
                    break;
                }
                src.push((u / s) as usize);
            }
            if src.len() == j.len() {
                z[plane * z_size + j_flat] = x[plane * in_size + flat_index(&in_sp, &src)];
            }
        }
    }

    // Rotate 180° and swap channel roles: wr[co, ci', k] = w[ci, co', K-1-k].
    let k_sp = g.kernel_shape();
    let k_size = numel(&k_sp);
    let (in_pg, out_pg) = (g.in_per_group(), g.out_per_group());
    let mut wr = vec![T::zero(); g.out_channels * in_pg * k_size];
    for co in 0..g.out_channels {
        let (group, col) = (co / out_pg, co % out_pg);
        for cil in 0..in_pg {
            let ci = group * in_pg + cil;
            for (k_flat, k) in positions(&k_sp).enumerate() {
                let rot: Vec<usize> = k.iter().zip(&k_sp).map(|(&k, &n)| n - 1 - k).collect();
                wr[(co * in_pg + cil) * k_size + k_flat] =
                    w[(ci * out_pg + col) * k_size + flat_index(&k_sp, &rot)];
            }
        }
    }

    let conv_geometry = Geometry {
        op: Op::Conv,
        batch: g.batch,
        batched: g.batched,
        in_channels: g.in_channels,
        out_channels: g.out_channels,
        groups: g.groups,
        axes: g
            .axes
            .iter()
            .zip(&z_sp)
            .map(|(a, &z)| AxisGeometry {
                input: z,
                output: a.output,
                kernel: a.kernel,
                stride: 1,
                dilation: a.dilation,
                pad_begin: 0,
                pad_end: 0,
                output_padding: 0,
            })
            .collect(),
    };
    let mut wr_shape = vec![g.out_channels, in_pg];
    wr_shape.extend(&k_sp);
    let to_array = |shape: &[usize], data: Vec<T>| {
        let len = data.len();
        ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|_| {
            crate::Error::from(ErrorKind::ShapeMismatch {
                what: "zero-insertion buffer",
                got: vec![len],
                expected: shape.to_vec(),
            })
        })
    };
    Ok(ZeroInsertionView {
        input: to_array(&z_shape, z)?,
        pad_before,
        pad_after,
        kernel: to_array(&wr_shape, wr)?,
        conv_geometry,
    })
}

/// Transposed convolution computed through its zero-insertion view.
///
/// # Errors
/// Any invalid shape or parameter (see [`Geometry::new`]), or a view over the size limit.
pub fn conv_transpose_zero_insertion<'x, 'w, T: Element, D1: Dimension, D2: Dimension>(
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    bias: Option<ArrayView1<'_, T>>,
    params: &ConvParams,
) -> Result<ArrayD<T>> {
    let (x, w) = (x.into().into_dyn(), w.into().into_dyn());
    let p = Problem::new(Op::ConvTranspose, &x, &w, bias.as_ref(), params)?;
    let view = zero_insertion_view(&p.geometry, &p.x, &p.w)?;
    let z = view.input.as_standard_layout();
    let wr = view.kernel.as_standard_layout();
    let (z, wr) = (z.as_slice().unwrap_or(&[]), wr.as_slice().unwrap_or(&[]));
    let y = gather(&view.conv_geometry, z, wr, p.bias.as_deref());
    p.output_array(y)
}
