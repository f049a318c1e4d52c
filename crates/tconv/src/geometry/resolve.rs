//! From the user's parameters to a [`Geometry`]: ranks, channels and groups, the bias, the
//! per-axis parameters, then each axis's padding and output extent, in that order (the first
//! inconsistency found is the error returned).

use super::{AxisGeometry, Geometry, MAX_ELEMENTS};
use crate::error::{fail, ErrorKind, Result};
use crate::params::{ConvParams, Op, OutputSize, Padding};

impl Geometry {
    /// Resolve `params` against the shapes of `x` (`(N, C, *spatial)` or `(C, *spatial)`),
    /// the weight (PyTorch layout: conv `(C_out, C_in/g, *k)`, conv_transpose
    /// `(C_in, C_out/g, *k)`) and the bias (`(C_out,)`), without any data.
    ///
    /// # Errors
    /// Any inconsistency, with the numbers involved; sizes over [`MAX_ELEMENTS`].
    pub fn new(
        op: Op,
        input_shape: &[usize],
        weight_shape: &[usize],
        bias_shape: Option<&[usize]>,
        params: &ConvParams,
    ) -> Result<Geometry> {
        let (dims, batched) = ranks(input_shape, weight_shape)?;
        let (batch, x_channels, spatial) = if batched {
            (input_shape[0], input_shape[1], &input_shape[2..])
        } else {
            (1, input_shape[0], &input_shape[1..])
        };
        let groups = params.groups;
        if groups == 0 {
            return fail(ErrorKind::ZeroGroups);
        }
        let kernel = &weight_shape[2..];
        if let Some(ks) = &params.kernel_shape {
            if ks.as_slice() != kernel {
                return fail(ErrorKind::KernelShapeMismatch {
                    given: ks.clone(),
                    weight: kernel.to_vec(),
                });
            }
        }
        let (in_channels, out_channels) = channels(op, x_channels, weight_shape, groups)?;
        if let Some(b) = bias_shape {
            if b.len() != 1 || b[0] != out_channels {
                return fail(ErrorKind::BiasShape {
                    got: b.to_vec(),
                    expected: out_channels,
                });
            }
        }
        let per_axis = AxisParams::of(op, params, dims, batched)?;
        let axes = (0..dims)
            .map(|a| per_axis.axis(a, spatial[a], kernel[a]))
            .collect::<Result<Vec<_>>>()?;
        let geometry = Geometry {
            op,
            batch,
            batched,
            in_channels,
            out_channels,
            groups,
            axes,
        };
        geometry.check_size("output", &geometry.output_shape())?;
        geometry.check_size("input", input_shape)?;
        geometry.check_size("weight", weight_shape)?;
        Ok(geometry)
    }
}

/// Spatial axes, and whether the input has a batch axis: the weight has two axes before
/// its kernel's, the input one or two.
fn ranks(input_shape: &[usize], weight_shape: &[usize]) -> Result<(usize, bool)> {
    if weight_shape.len() < 3 {
        return fail(ErrorKind::WeightRank {
            rank: weight_shape.len(),
        });
    }
    let batched = match input_shape.len() {
        r if r == weight_shape.len() => true,
        r if r + 1 == weight_shape.len() => false,
        r => {
            return fail(ErrorKind::RankMismatch {
                input_rank: r,
                weight_rank: weight_shape.len(),
            })
        }
    };
    Ok((weight_shape.len() - 2, batched))
}

/// `(in_channels, out_channels)` from the weight's first two axes (conv `(C_out, C_in/g)`,
/// conv_transpose `(C_in, C_out/g)`: the first a full count, the second per group), checked
/// against `groups` and the input's `x_channels`.
fn channels(
    op: Op,
    x_channels: usize,
    weight_shape: &[usize],
    groups: usize,
) -> Result<(usize, usize)> {
    let (w0, w1) = (weight_shape[0], weight_shape[1]);
    let (full_name, per_group_name) = match op {
        Op::Conv => ("weight output channels", "weight input channels per group"),
        Op::ConvTranspose => ("weight input channels", "weight output channels per group"),
    };
    if w0 == 0 {
        return fail(ErrorKind::ZeroChannels { what: full_name });
    }
    if w1 == 0 {
        return fail(ErrorKind::ZeroChannels {
            what: per_group_name,
        });
    }
    if w0 % groups != 0 {
        return fail(ErrorKind::GroupsDoNotDivide {
            what: full_name,
            channels: w0,
            groups,
        });
    }
    let w1_full = to_usize("channel count", mul("channel count", w1, groups)?)?;
    let (in_channels, out_channels) = match op {
        Op::Conv => (w1_full, w0),
        Op::ConvTranspose => (w0, w1_full),
    };
    if x_channels != in_channels {
        let per_group = match op {
            Op::Conv => w1,
            Op::ConvTranspose => w0 / groups,
        };
        return fail(ErrorKind::ChannelMismatch {
            input_channels: x_channels,
            expected: in_channels,
            per_group,
            groups,
        });
    }
    Ok((in_channels, out_channels))
}

/// The per-axis parameters, expanded to one value per axis and checked for the op, before
/// any axis is resolved.
struct AxisParams<'p> {
    op: Op,
    params: &'p ConvParams,
    stride: Vec<usize>,
    dilation: Vec<usize>,
    output_padding: Vec<usize>,
    /// Explicit pads `(begin, end)`; `None` for SAME (computed per axis).
    explicit: Option<(Vec<usize>, Vec<usize>)>,
    /// SAME_UPPER (the odd unit of a total padding at the end).
    upper: bool,
    /// The requested output extents, if any.
    requested: Option<Vec<usize>>,
}

impl<'p> AxisParams<'p> {
    fn of(op: Op, params: &'p ConvParams, dims: usize, batched: bool) -> Result<AxisParams<'p>> {
        let stride = per_axis("stride", &params.stride, dims, 1)?;
        let dilation = per_axis("dilation", &params.dilation, dims, 1)?;
        let output_padding = per_axis("output_padding", &params.output_padding, dims, 0)?;
        if op == Op::Conv {
            if output_padding.iter().any(|&v| v != 0) {
                return fail(ErrorKind::NotForConv {
                    name: "output_padding",
                });
            }
            if params.output_size.is_some() {
                return fail(ErrorKind::NotForConv {
                    name: "output_size",
                });
            }
        }
        let explicit = match &params.padding {
            Padding::Symmetric(p) => {
                let p = per_axis("padding", p, dims, 0)?;
                Some((p.clone(), p))
            }
            Padding::Explicit { begin, end } => Some((
                per_axis("pads (begin)", begin, dims, 0)?,
                per_axis("pads (end)", end, dims, 0)?,
            )),
            Padding::Valid => Some((vec![0; dims], vec![0; dims])),
            Padding::SameUpper | Padding::SameLower => None,
        };
        let requested = match &params.output_size {
            None => None,
            Some(OutputSize::Torch(v)) | Some(OutputSize::Onnx(v)) => {
                // Accept spatial extents, or a full shape whose trailing entries are spatial.
                let v = if v.len() == dims + 2 || (v.len() == dims + 1 && !batched) {
                    &v[v.len() - dims..]
                } else {
                    v.as_slice()
                };
                if v.len() != dims {
                    return fail(ErrorKind::ParamLength {
                        name: "output_size",
                        got: v.len(),
                        spatial_dims: dims,
                    });
                }
                Some(v.to_vec())
            }
        };
        Ok(AxisParams {
            op,
            params,
            stride,
            dilation,
            output_padding,
            explicit,
            upper: params.padding == Padding::SameUpper,
            requested,
        })
    }

    /// Axis `a`, of input extent `l` and kernel extent `k`.
    fn axis(&self, a: usize, l: usize, k: usize) -> Result<AxisGeometry> {
        let (s, d) = (self.stride[a], self.dilation[a]);
        check_axis_basics(a, l, k, s, d)?;
        let op_a = self.output_padding[a];
        if self.op == Op::ConvTranspose && op_a != 0 && op_a >= s && op_a >= d {
            return fail(ErrorKind::OutputPaddingTooLarge {
                axis: a,
                output_padding: op_a,
                stride: s,
                dilation: d,
            });
        }
        let (pb, pe, op_a) = match self.op {
            Op::Conv => {
                let (pb, pe) = self.conv_pads(a, l, k, s, d)?;
                (pb, pe, op_a)
            }
            Op::ConvTranspose => self.transpose_pads(a, l, k, s, d, op_a)?,
        };
        let (pad_begin, pad_end) = (to_i64("padding", pb)?, to_i64("padding", pe)?);
        let output = match self.op {
            Op::Conv => conv_output_len(a, l, k, s, d, pb as usize, pe as usize)?,
            Op::ConvTranspose => {
                conv_transpose_output_len(a, l, k, s, d, pad_begin, pad_end, op_a)?
            }
        };
        Ok(AxisGeometry {
            input: l,
            output,
            kernel: k,
            stride: s,
            dilation: d,
            pad_begin,
            pad_end,
            output_padding: op_a,
        })
    }

    /// A conv's pads on axis `a`: the explicit ones, or SAME's (an output of `⌈l / s⌉`).
    fn conv_pads(&self, a: usize, l: usize, k: usize, s: usize, d: usize) -> Result<(i128, i128)> {
        Ok(match &self.explicit {
            Some((b, e)) => (b[a] as i128, e[a] as i128),
            None => {
                let span = dilated_span(k, d)?;
                let out = (l as i128 + s as i128 - 1) / s as i128;
                // (out - 1)·s < l + s, within i128; with the span it may not be.
                let reach = add("dilated kernel extent", (out - 1) * s as i128, span)?;
                let total = (reach - l as i128).max(0);
                split_total_padding(total, self.upper)
            }
        })
    }

    /// A transposed conv's pads on axis `a` and its output padding: from an ONNX
    /// `output_shape` or SAME (an output of `l · s`), the crop of the full extent to that
    /// size; else the explicit pads, and with a PyTorch `output_size` the output padding that
    /// reaches it (within the sizes PyTorch accepts).
    fn transpose_pads(
        &self,
        a: usize,
        l: usize,
        k: usize,
        s: usize,
        d: usize,
        op_a: usize,
    ) -> Result<(i128, i128, usize)> {
        let full = full_transpose_len(l, k, s, d, op_a)?;
        match (&self.params.output_size, &self.explicit) {
            (Some(OutputSize::Onnx(_)), _) | (None, None) => {
                let target = match &self.requested {
                    Some(r) => r[a] as i128,
                    None => mul("conv_transpose output extent", l, s)?,
                };
                if target < 1 {
                    return fail(ErrorKind::OutputSizeOutOfRange {
                        axis: a,
                        requested: 0,
                        min: 1,
                        max: u64::MAX,
                    });
                }
                let (b, e) = split_total_padding(full - target, self.upper);
                Ok((b, e, op_a))
            }
            (Some(OutputSize::Torch(_)), _) | (None, Some(_)) => {
                let (b, e) = match &self.explicit {
                    Some((b, e)) => (b[a] as i128, e[a] as i128),
                    None => {
                        let same = mul("conv_transpose output extent", l, s)?;
                        split_total_padding(full - same, self.upper)
                    }
                };
                let Some(OutputSize::Torch(_)) = &self.params.output_size else {
                    return Ok((b, e, op_a));
                };
                let want = self.requested.as_ref().map_or(0, |r| r[a]);
                let (pb, pe) = (to_i64("padding", b)?, to_i64("padding", e)?);
                let (min, max) = conv_transpose_output_range(a, l, k, s, d, pb, pe)?;
                if want < min || want > max {
                    return fail(ErrorKind::OutputSizeOutOfRange {
                        axis: a,
                        requested: want as u64,
                        min: min as u64,
                        max: max as u64,
                    });
                }
                Ok((b, e, want - min))
            }
        }
    }
}

fn to_i64(what: &'static str, v: i128) -> Result<i64> {
    i64::try_from(v).or_else(|_| {
        fail(ErrorKind::TooLarge {
            what,
            elements: v.unsigned_abs(),
            limit: i64::MAX as u128,
        })
    })
}

fn to_usize(what: &'static str, v: i128) -> Result<usize> {
    usize::try_from(v).or_else(|_| {
        fail(ErrorKind::TooLarge {
            what,
            elements: v.unsigned_abs(),
            limit: MAX_ELEMENTS,
        })
    })
}

/// Conv output extent: `floor((in + pb + pe - d*(k-1) - 1) / s) + 1`.
///
/// # Errors
/// Zero stride/dilation/kernel/input, or a dilated kernel longer than the padded input.
pub fn conv_output_len(
    axis: usize,
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
) -> Result<usize> {
    check_axis_basics(axis, input, kernel, stride, dilation)?;
    let span = dilated_span(kernel, dilation)?;
    let padded = input as i128 + pad_begin as i128 + pad_end as i128;
    if padded < span {
        return fail(ErrorKind::KernelLargerThanInput {
            axis,
            span: span as u64,
            padded_input: padded as u64,
        });
    }
    to_usize("conv output extent", (padded - span) / stride as i128 + 1)
}

/// Conv_transpose output extent:
/// `(in-1)*s - pb - pe + d*(k-1) + output_padding + 1` (padding may be negative here).
///
/// # Errors
/// Zero stride/dilation/kernel/input, or padding that crops away the whole output.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose_output_len(
    axis: usize,
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: i64,
    pad_end: i64,
    output_padding: usize,
) -> Result<usize> {
    check_axis_basics(axis, input, kernel, stride, dilation)?;
    let full = full_transpose_len(input, kernel, stride, dilation, output_padding)?;
    let out = full - pad_begin as i128 - pad_end as i128;
    if out < 1 {
        return fail(ErrorKind::PaddingRemovesOutput {
            axis,
            pad_begin,
            pad_end,
            full: u64::try_from(full).unwrap_or(u64::MAX),
        });
    }
    to_usize("conv_transpose output extent", out)
}

/// The uncropped transposed-conv extent `(in-1)*s + d*(k-1) + output_padding + 1` (`in`
/// and `k` at least 1), or a [`ErrorKind::TooLarge`] error where it leaves `i128`.
fn full_transpose_len(input: usize, kernel: usize, s: usize, d: usize, op: usize) -> Result<i128> {
    const WHAT: &str = "conv_transpose output extent";
    let strided = mul(WHAT, input - 1, s)?;
    let span = dilated_span(kernel, d)?;
    add(WHAT, add(WHAT, strided, span)?, op as i128)
}

/// A dilated kernel's extent `d·(k-1) + 1` (`k` at least 1), or a
/// [`ErrorKind::TooLarge`] error where it leaves `i128`.
fn dilated_span(kernel: usize, d: usize) -> Result<i128> {
    const WHAT: &str = "dilated kernel extent";
    add(WHAT, mul(WHAT, d, kernel - 1)?, 1)
}

/// `a · b` as `i128`, or a [`ErrorKind::TooLarge`] error naming `what` where the product
/// leaves `i128` (that of two `usize` values can; it is exact in `u128`).
fn mul(what: &'static str, a: usize, b: usize) -> Result<i128> {
    let p = a as u128 * b as u128;
    i128::try_from(p).or_else(|_| {
        fail(ErrorKind::TooLarge {
            what,
            elements: p,
            limit: MAX_ELEMENTS,
        })
    })
}

/// `a + b` for non-negative `a` and `b`, or a [`ErrorKind::TooLarge`] error naming `what`
/// where the sum leaves `i128`.
fn add(what: &'static str, a: i128, b: i128) -> Result<i128> {
    a.checked_add(b).map_or_else(
        || {
            fail(ErrorKind::TooLarge {
                what,
                elements: a.unsigned_abs().saturating_add(b.unsigned_abs()),
                limit: MAX_ELEMENTS,
            })
        },
        Ok,
    )
}

fn check_axis_basics(axis: usize, input: usize, kernel: usize, s: usize, d: usize) -> Result<()> {
    if s == 0 {
        return fail(ErrorKind::ZeroParam {
            name: "stride",
            axis,
        });
    }
    if d == 0 {
        return fail(ErrorKind::ZeroParam {
            name: "dilation",
            axis,
        });
    }
    if kernel == 0 {
        return fail(ErrorKind::ZeroKernel { axis });
    }
    if input == 0 {
        return fail(ErrorKind::ZeroExtent { axis });
    }
    Ok(())
}

/// Sizes PyTorch accepts as `output_size` for conv_transpose on one axis: from the natural
/// size (output_padding 0) to that plus `stride - 1`.
pub fn conv_transpose_output_range(
    axis: usize,
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: i64,
    pad_end: i64,
) -> Result<(usize, usize)> {
    let min =
        conv_transpose_output_len(axis, input, kernel, stride, dilation, pad_begin, pad_end, 0)?;
    let max = to_usize(
        "conv_transpose output extent",
        min as i128 + stride as i128 - 1,
    )?;
    Ok((min, max))
}

/// Split a total padding ONNX's way. `upper`: SAME_UPPER puts the odd unit at the end.
/// Floor division, so a negative total (output larger than natural) extends the output.
pub fn split_total_padding(total: i128, upper: bool) -> (i128, i128) {
    let half = total.div_euclid(2);
    if upper {
        (half, total - half)
    } else {
        (total - half, half)
    }
}

/// Expand a per-axis list: empty → default, 1 value → broadcast, else one per axis.
fn per_axis(name: &'static str, v: &[usize], dims: usize, default: usize) -> Result<Vec<usize>> {
    match v.len() {
        0 => Ok(vec![default; dims]),
        1 => Ok(vec![v[0]; dims]),
        n if n == dims => Ok(v.to_vec()),
        got => fail(ErrorKind::ParamLength {
            name,
            got,
            spatial_dims: dims,
        }),
    }
}
