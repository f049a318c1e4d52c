//! Checked geometry: parameters resolved against the shapes into per-axis numbers.
//!
//! All size arithmetic is done in `i128`, so no input can overflow, underflow or panic;
//! results are checked back into range. Every algorithm reads only a [`Geometry`].
//!
//! Index relation, the same for both ops along each spatial axis:
//! `big = small * stride + tap * dilation - pad_begin`, where for conv `small` is an output
//! position and `big` an input position, and for conv_transpose `small` is an input position
//! and `big` an output position.
//!
//! Here: the resolved numbers and what they imply; `resolve` (how [`Geometry::new`] gets them
//! from the user's parameters, step by step, and the size formulas).

mod resolve;

pub use resolve::{
    conv_output_len, conv_transpose_output_len, conv_transpose_output_range, split_total_padding,
};

use crate::error::{fail, ErrorKind, Result};
use crate::params::Op;

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
