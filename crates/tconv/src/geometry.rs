//! Checked geometry: parameters resolved against the shapes into per-axis numbers.
//!
//! All size arithmetic is done in `i128`, so no input can overflow, underflow or panic;
//! results are checked back into range. Every algorithm reads only a [`Geometry`].
//!
//! Index relation, the same for both ops along each spatial axis:
//! `big = small * stride + tap * dilation - pad_begin`, where for conv `small` is an output
//! position and `big` an input position, and for conv_transpose `small` is an input position
//! and `big` an output position.

use crate::error::{fail, ErrorKind, Result};
use crate::params::{ConvParams, Op, OutputSize, Padding};

/// Largest number of elements any tensor tconv allocates may have (2^31, i.e. 8 GiB of f32).
pub const MAX_ELEMENTS: u128 = 1 << 31;

/// One spatial axis, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AxisGeometry {
    /// Extent of the operation's input `x` along this axis.
    pub input: usize,
    /// Extent of the operation's output `y` along this axis.
    pub output: usize,
    /// Kernel extent.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Dilation.
    pub dilation: usize,
    /// Padding at the beginning (conv: zeros added; conv_transpose: output cropped).
    /// Negative only for conv_transpose with an ONNX `output_shape` larger than natural.
    pub pad_begin: i64,
    /// Padding at the end (same conventions as `pad_begin`).
    pub pad_end: i64,
    /// Extra output at the end (conv_transpose; 0 for conv).
    pub output_padding: usize,
}

impl AxisGeometry {
    /// The dilated kernel extent `d*(k-1)+1`.
    pub fn span(&self) -> usize {
        self.dilation * (self.kernel - 1) + 1
    }
    /// Extent of the "small" side of the index relation (conv output, transpose input).
    pub fn small(&self, op: Op) -> usize {
        match op {
            Op::Conv => self.output,
            Op::ConvTranspose => self.input,
        }
    }
    /// Extent of the "big" side (conv input, transpose output).
    pub fn big(&self, op: Op) -> usize {
        match op {
            Op::Conv => self.input,
            Op::ConvTranspose => self.output,
        }
    }
    /// The big-side position reached by `small` through `tap`, if inside `0..big`.
    #[inline]
    pub fn big_index(&self, op: Op, small: usize, tap: usize) -> Option<usize> {
        let pos = (small * self.stride + tap * self.dilation) as i64 - self.pad_begin;
        (pos >= 0 && (pos as usize) < self.big(op)).then_some(pos as usize)
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
    let span = dilation as i128 * (kernel as i128 - 1) + 1;
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
    let full = full_transpose_len(input, kernel, stride, dilation, output_padding);
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

/// The uncropped transposed-conv extent `(in-1)*s + d*(k-1) + output_padding + 1`.
fn full_transpose_len(input: usize, kernel: usize, s: usize, d: usize, op: usize) -> i128 {
    (input as i128 - 1) * s as i128 + d as i128 * (kernel as i128 - 1) + op as i128 + 1
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

/// The whole problem, resolved and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Which operation.
    pub op: Op,
    /// Batch size `N` (1 for an unbatched input).
    pub batch: usize,
    /// Whether the input had a batch axis (the output then has one too).
    pub batched: bool,
    /// Channels of `x`.
    pub in_channels: usize,
    /// Channels of `y`.
    pub out_channels: usize,
    /// Channel groups.
    pub groups: usize,
    /// Per spatial axis.
    pub axes: Vec<AxisGeometry>,
}

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
        if weight_shape.len() < 3 {
            return fail(ErrorKind::WeightRank {
                rank: weight_shape.len(),
            });
        }
        let dims = weight_shape.len() - 2;
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
        let (batch, x_channels, spatial) = if batched {
            (input_shape[0], input_shape[1], &input_shape[2..])
        } else {
            (1, input_shape[0], &input_shape[1..])
        };
        let groups = params.groups;
        if groups == 0 {
            return fail(ErrorKind::ZeroGroups);
        }
        let (w0, w1) = (weight_shape[0], weight_shape[1]);
        let kernel = &weight_shape[2..];
        if let Some(ks) = &params.kernel_shape {
            if ks.as_slice() != kernel {
                return fail(ErrorKind::KernelShapeMismatch {
                    given: ks.clone(),
                    weight: kernel.to_vec(),
                });
            }
        }
        // conv: (C_out, C_in/g); transpose: (C_in, C_out/g). w0 is a full count, w1 per group.
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
        let w1_full = to_usize("channel count", w1 as i128 * groups as i128)?;
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
        if let Some(b) = bias_shape {
            if b.len() != 1 || b[0] != out_channels {
                return fail(ErrorKind::BiasShape {
                    got: b.to_vec(),
                    expected: out_channels,
                });
            }
        }
        let stride = per_axis("stride", &params.stride, dims, 1)?;
        let dilation = per_axis("dilation", &params.dilation, dims, 1)?;
        let out_pad = per_axis("output_padding", &params.output_padding, dims, 0)?;
        if op == Op::Conv {
            if out_pad.iter().any(|&v| v != 0) {
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
        let upper = params.padding == Padding::SameUpper;
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

        let mut axes = Vec::with_capacity(dims);
        for a in 0..dims {
            let (l, k, s, d) = (spatial[a], kernel[a], stride[a], dilation[a]);
            check_axis_basics(a, l, k, s, d)?;
            let mut op_a = out_pad[a];
            if op == Op::ConvTranspose && op_a != 0 && op_a >= s && op_a >= d {
                return fail(ErrorKind::OutputPaddingTooLarge {
                    axis: a,
                    output_padding: op_a,
                    stride: s,
                    dilation: d,
                });
            }
            let span = d as i128 * (k as i128 - 1) + 1;
            let (pb, pe): (i128, i128) = match op {
                Op::Conv => match &explicit {
                    Some((b, e)) => (b[a] as i128, e[a] as i128),
                    None => {
                        let out = (l as i128 + s as i128 - 1) / s as i128;
                        let total = ((out - 1) * s as i128 + span - l as i128).max(0);
                        split_total_padding(total, upper)
                    }
                },
                Op::ConvTranspose => {
                    let full = full_transpose_len(l, k, s, d, op_a);
                    match (&params.output_size, &explicit) {
                        (Some(OutputSize::Onnx(_)), _) | (None, None) => {
                            let target = match &requested {
                                Some(r) => r[a] as i128,
                                None => l as i128 * s as i128,
                            };
                            if target < 1 {
                                return fail(ErrorKind::OutputSizeOutOfRange {
                                    axis: a,
                                    requested: 0,
                                    min: 1,
                                    max: u64::MAX,
                                });
                            }
                            split_total_padding(full - target, upper)
                        }
                        (Some(OutputSize::Torch(_)), _) | (None, Some(_)) => {
                            let (b, e) = match &explicit {
                                Some((b, e)) => (b[a] as i128, e[a] as i128),
                                None => split_total_padding(full - l as i128 * s as i128, upper),
                            };
                            if let Some(OutputSize::Torch(_)) = &params.output_size {
                                let want = requested.as_ref().map_or(0, |r| r[a]);
                                let (min, max) = conv_transpose_output_range(
                                    a,
                                    l,
                                    k,
                                    s,
                                    d,
                                    to_i64("padding", b)?,
                                    to_i64("padding", e)?,
                                )?;
                                if want < min || want > max {
                                    return fail(ErrorKind::OutputSizeOutOfRange {
                                        axis: a,
                                        requested: want as u64,
                                        min: min as u64,
                                        max: max as u64,
                                    });
                                }
                                op_a = want - min;
                            }
                            (b, e)
                        }
                    }
                }
            };
            let (pad_begin, pad_end) = (to_i64("padding", pb)?, to_i64("padding", pe)?);
            let output = match op {
                Op::Conv => conv_output_len(a, l, k, s, d, pb as usize, pe as usize)?,
                Op::ConvTranspose => {
                    conv_transpose_output_len(a, l, k, s, d, pad_begin, pad_end, op_a)?
                }
            };
            axes.push(AxisGeometry {
                input: l,
                output,
                kernel: k,
                stride: s,
                dilation: d,
                pad_begin,
                pad_end,
                output_padding: op_a,
            });
        }
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

    /// Number of spatial axes.
    pub fn spatial_dims(&self) -> usize {
        self.axes.len()
    }
    /// Input channels per group.
    pub fn in_per_group(&self) -> usize {
        self.in_channels / self.groups
    }
    /// Output channels per group.
    pub fn out_per_group(&self) -> usize {
        self.out_channels / self.groups
    }
    /// Input shape with batch axis `(N, C_in, *in)`.
    pub fn input_shape(&self) -> Vec<usize> {
        let mut s = vec![self.batch, self.in_channels];
        s.extend(self.axes.iter().map(|a| a.input));
        s
    }
    /// Output shape with batch axis `(N, C_out, *out)`.
    pub fn output_shape(&self) -> Vec<usize> {
        let mut s = vec![self.batch, self.out_channels];
        s.extend(self.axes.iter().map(|a| a.output));
        s
    }
    /// Output shape as the user sees it (no batch axis if the input had none).
    pub fn user_output_shape(&self) -> Vec<usize> {
        let s = self.output_shape();
        if self.batched {
            s
        } else {
            s[1..].to_vec()
        }
    }
    /// Weight shape in PyTorch layout.
    pub fn weight_shape(&self) -> Vec<usize> {
        let mut s = match self.op {
            Op::Conv => vec![self.out_channels, self.in_per_group()],
            Op::ConvTranspose => vec![self.in_channels, self.out_per_group()],
        };
        s.extend(self.kernel_shape());
        s
    }
    /// Kernel extents.
    pub fn kernel_shape(&self) -> Vec<usize> {
        self.axes.iter().map(|a| a.kernel).collect()
    }
    /// Spatial extents of the small side (conv output / transpose input).
    pub fn small_spatial(&self) -> Vec<usize> {
        self.axes.iter().map(|a| a.small(self.op)).collect()
    }
    /// Spatial extents of the big side (conv input / transpose output).
    pub fn big_spatial(&self) -> Vec<usize> {
        self.axes.iter().map(|a| a.big(self.op)).collect()
    }
    /// Channels of the small side and of the big side: `(C_in, C_out)` for conv_transpose,
    /// `(C_out, C_in)` for conv. The weight's first axis indexes the small side's channels.
    pub fn side_channels(&self) -> (usize, usize) {
        match self.op {
            Op::ConvTranspose => (self.in_channels, self.out_channels),
            Op::Conv => (self.out_channels, self.in_channels),
        }
    }
    /// The weight gradient's small-side tensor `S` and big-side tensor `B` of `x` and the
    /// output's gradient `gy`: `(x, gy)` for conv_transpose, `(gy, x)` for conv.
    pub(crate) fn weight_sides<'a, T>(&self, x: &'a [T], gy: &'a [T]) -> (&'a [T], &'a [T]) {
        match self.op {
            Op::ConvTranspose => (x, gy),
            Op::Conv => (gy, x),
        }
    }
    /// Useful multiply-adds x 2: `2·N·C_small·(C_big/g)·∏small·∏k`, where for conv_transpose
    /// this is `2·N·C_in·(C_out/g)·∏in·∏k` and for conv `2·N·C_out·(C_in/g)·∏out·∏k`.
    pub fn flops(&self) -> u128 {
        let (c_small, c_big_g) = match self.op {
            Op::Conv => (self.out_channels, self.in_per_group()),
            Op::ConvTranspose => (self.in_channels, self.out_per_group()),
        };
        let mut f = 2 * self.batch as u128 * c_small as u128 * c_big_g as u128;
        for a in &self.axes {
            f = f.saturating_mul(a.small(self.op) as u128 * a.kernel as u128);
        }
        f
    }

    /// The adjoint problem: the other op with input and output roles swapped, same weight,
    /// stride, dilation, padding and groups. Its output has the shape of this problem's
    /// input, and it maps this problem's output gradient to the input gradient: the
    /// gradient of a conv_transpose w.r.t. its input is a conv, and vice versa.
    pub fn adjoint(&self) -> Geometry {
        Geometry {
            op: match self.op {
                Op::Conv => Op::ConvTranspose,
                Op::ConvTranspose => Op::Conv,
            },
            batch: self.batch,
            batched: self.batched,
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            groups: self.groups,
            axes: self
                .axes
                .iter()
                .map(|a| AxisGeometry {
                    input: a.output,
                    output: a.input,
                    output_padding: 0,
                    ..a.clone()
                })
                .collect(),
        }
    }

    /// Error unless a tensor of `shape` is within [`MAX_ELEMENTS`].
    pub fn check_size(&self, what: &'static str, shape: &[usize]) -> Result<()> {
        check_elements(what, shape)
    }
}

/// Error unless the product of `shape` is within [`MAX_ELEMENTS`].
pub fn check_elements(what: &'static str, shape: &[usize]) -> Result<()> {
    let mut n: u128 = 1;
    for &d in shape {
        n = n.saturating_mul(d as u128);
    }
    if n > MAX_ELEMENTS {
        return fail(ErrorKind::TooLarge {
            what,
            elements: n,
            limit: MAX_ELEMENTS,
        });
    }
    Ok(())
}
