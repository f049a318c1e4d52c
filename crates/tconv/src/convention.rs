//! Other frameworks' conventions — TensorFlow / Keras and JAX / Flax — mapped onto tconv's
//! (PyTorch's): where the channel axis is, how the kernel is laid out and whether it is
//! flipped, and what `"SAME"`, `"VALID"` and explicit padding mean for each op.
//!
//! | | tconv / PyTorch | TensorFlow, Keras | JAX `lax`, Flax |
//! |---|---|---|---|
//! | data | `(N, C, *spatial)` | `(N, *spatial, C)` (or `data_format` NC…) | `(N, *spatial, C)` (Flax; `lax.conv_transpose`'s default) |
//! | conv kernel | `(C_out, C_in/g, *k)` | `(*k, C_in/g, C_out)` | `(*k, C_in/g, C_out)` (`HWIO`) |
//! | transpose kernel | `(C_in, C_out, *k)` | `(*k, C_out, C_in)` | `(*k, C_in, C_out)`, **not flipped**: PyTorch's weight is its spatial flip; with `transpose_kernel=True` as TensorFlow's |
//! | transpose padding | cropping of the full output | the forward conv's padding, with `output_shape` | padding of the stride-dilated input (`SAME`/`VALID` as the forward conv's); beyond the kernel's reach, zeros around ([`Convention::lower`]) |
//!
//! TensorFlow's `conv_transpose` is the gradient of its conv, as PyTorch's is: the two agree
//! on the kernel once its axes are permuted. JAX's `lax.conv_transpose` convolves the
//! stride-dilated input with the kernel as given (a "fractionally strided" conv): the same
//! operation with the kernel flipped in space, unless `transpose_kernel=True`.
//!
//! ```
//! use ndarray::{ArrayD, IxDyn};
//! use tconv::convention::{Call, Convention, FrameworkPadding};
//! use tconv::Op;
//!
//! // jax.lax.conv_transpose(x, w, (2, 2), "SAME") on NHWC data with an HWIO kernel.
//! let x = ArrayD::from_shape_vec(IxDyn(&[1, 2, 2, 1]), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
//! let w = ArrayD::from_shape_vec(IxDyn(&[2, 2, 1, 1]), vec![1.0f32, 0.0, 0.0, -1.0]).unwrap();
//! let jax = Convention::jax();
//! let call = Call::new(FrameworkPadding::Same).strides(&[2, 2]);
//! let y = jax.run(Op::ConvTranspose, x.view(), w.view(), None, &call).unwrap();
//! assert_eq!(y.shape(), &[1, 4, 4, 1]); // in * stride, channels last
//! ```

use ndarray::{ArrayD, ArrayView1, ArrayViewD, Axis};

use crate::error::{fail, ErrorKind, Result};
use crate::grad::{Gradients, Wanted};
use crate::params::{ConvParams, Op, Padding};
use crate::plan::PlanOptions;
use crate::tensor::{numel, Element};

/// Which framework's conventions a call follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framework {
    /// `tf.nn.conv*d` / `tf.nn.convolution`, `tf.nn.conv*d_transpose` /
    /// `tf.nn.conv_transpose`, and Keras' `Conv*D` / `Conv*DTranspose` (whose kernels are
    /// TensorFlow's; for the transposed layers' output size see [`keras_output_size`]).
    TensorFlow,
    /// `jax.lax.conv_general_dilated` and `jax.lax.conv_transpose` (Flax's `nn.Conv` and
    /// `nn.ConvTranspose` call them), with dimension numbers `(N…C, …IO, N…C)`.
    Jax {
        /// `lax.conv_transpose(.., transpose_kernel=True)`: the kernel is flipped in space
        /// and its channel axes swapped before use, so it is laid out as TensorFlow's
        /// `(*k, C_out, C_in)`.
        transpose_kernel: bool,
        /// `lax.conv_transpose(.., use_consistent_padding=True)`: explicit pairs are the
        /// forward conv's padding (PyTorch's meaning), not the dilated input's.
        consistent_padding: bool,
    },
}

impl Framework {
    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Framework::TensorFlow => "tensorflow",
            Framework::Jax { .. } => "jax",
        }
    }
}

/// Where the channel axis of the data (input, output and their gradients) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFormat {
    /// `(N, C, *spatial)`: PyTorch's, TensorFlow's `NCHW`.
    ChannelsFirst,
    /// `(N, *spatial, C)`: TensorFlow's and Keras' default, Flax's.
    ChannelsLast,
}

/// A framework's `padding` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameworkPadding {
    /// `"SAME"`: conv output `ceil(in / s)`, an odd padding unit at the end; transposed,
    /// the gradient of that conv (TensorFlow, for its `output_shape`) or JAX's rule
    /// (output `in * s`).
    Same,
    /// JAX's `"SAME_LOWER"` (conv only): as `Same` with the odd unit at the beginning.
    SameLower,
    /// `"VALID"`: no padding.
    Valid,
    /// `(begin, end)` per spatial axis, as the framework reads explicit pairs: for a conv
    /// the input's padding; for TensorFlow's transposed conv (and JAX's with
    /// `consistent_padding`) the forward conv's padding; for JAX's transposed conv by default
    /// the padding of the stride-dilated input (negative values crop).
    Explicit(Vec<(i64, i64)>),
}

/// The arguments of one framework call besides its arrays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// Strides: one value for every axis or one per spatial axis (default 1).
    pub strides: Vec<usize>,
    /// Kernel dilation (TensorFlow's `dilations`, Keras' `dilation_rate`, JAX's
    /// `rhs_dilation`): one value or one per spatial axis (default 1).
    pub dilations: Vec<usize>,
    /// The padding argument.
    pub padding: FrameworkPadding,
    /// TensorFlow's `output_shape` for a transposed conv (its spatial extents). `None`:
    /// Keras' default, [`keras_output_size`] without output padding. JAX takes none.
    pub output_size: Option<Vec<usize>>,
    /// Channel groups: JAX's `feature_group_count`. TensorFlow's conv infers them from the
    /// kernel's input channels, and so does [`Convention::params`] where this is 1.
    pub groups: usize,
}

impl Call {
    /// Stride 1, no dilation, one group, this padding.
    pub fn new(padding: FrameworkPadding) -> Self {
        Call {
            strides: Vec::new(),
            dilations: Vec::new(),
            padding,
            output_size: None,
            groups: 1,
        }
    }
    /// Set the strides.
    pub fn strides(mut self, s: &[usize]) -> Self {
        self.strides = s.to_vec();
        self
    }
    /// Set the dilations.
    pub fn dilations(mut self, d: &[usize]) -> Self {
        self.dilations = d.to_vec();
        self
    }
    /// Set TensorFlow's `output_shape` (spatial extents).
    pub fn output_size(mut self, size: &[usize]) -> Self {
        self.output_size = Some(size.to_vec());
        self
    }
    /// Set the channel groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

/// A framework and the data format its arrays come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Convention {
    /// Whose kernels and padding.
    pub framework: Framework,
    /// Where the data's channel axis is.
    pub data_format: DataFormat,
}

impl Convention {
    /// TensorFlow and Keras, channels last (`data_format="NHWC"` / `"channels_last"`).
    pub fn tensorflow() -> Self {
        Convention {
            framework: Framework::TensorFlow,
            data_format: DataFormat::ChannelsLast,
        }
    }
    /// JAX's `lax` with Flax's layouts: channels last, `HWIO` kernels, `conv_transpose`
    /// with `transpose_kernel=False` and `use_consistent_padding=False` (their defaults).
    pub fn jax() -> Self {
        Convention {
            framework: Framework::Jax {
                transpose_kernel: false,
                consistent_padding: false,
            },
            data_format: DataFormat::ChannelsLast,
        }
    }
    /// The same with the data's channel axis first (TensorFlow's `NCHW`).
    pub fn channels_first(mut self) -> Self {
        self.data_format = DataFormat::ChannelsFirst;
        self
    }

    fn name(&self) -> &'static str {
        self.framework.name()
    }

    /// How data (`x`, `y` or a gradient of them) of this convention and `rank` axes becomes
    /// tconv's `(N, C, *spatial)`: the axes tconv's axes take, in order (`x.permute(axes)`
    /// in PyTorch, `np.transpose(x, axes)` in NumPy; [`inverse`] of it goes back). Channels-
    /// first data, and data of fewer than 3 axes, are left as they are.
    pub fn data_axes(&self, rank: usize) -> Vec<usize> {
        match self.data_format {
            DataFormat::ChannelsLast if rank >= 3 => {
                [0, rank - 1].into_iter().chain(1..rank - 1).collect()
            }
            _ => (0..rank).collect(),
        }
    }

    /// Data `x`, `y` or a gradient of them in this convention, in tconv's layout
    /// `(N, C, *spatial)`.
    ///
    /// # Errors
    /// Arrays without batch, channel and at least one spatial axis.
    pub fn data_to_torch<T: Clone>(
        &self,
        a: ArrayViewD<'_, T>,
        what: &'static str,
    ) -> Result<ArrayD<T>> {
        let r = self.check_rank(a.ndim(), what)?;
        Ok(a.permuted_axes(self.data_axes(r))
            .as_standard_layout()
            .into_owned())
    }

    /// Data in tconv's layout `(N, C, *spatial)`, in this convention's.
    pub fn data_from_torch<T: Clone>(&self, a: ArrayD<T>) -> ArrayD<T> {
        let axes = self.data_axes(a.ndim());
        if axes.iter().enumerate().all(|(i, &x)| i == x) {
            return a;
        }
        a.permuted_axes(inverse(&axes))
            .as_standard_layout()
            .into_owned()
    }

    /// How a kernel of this convention and `rank` axes becomes tconv's (PyTorch's) for
    /// `op`: the kernel's axes that tconv's axes take, in order (`w.permute(axes)` in
    /// PyTorch, `np.transpose(w, axes)` in NumPy), and whether the spatial axes are then
    /// flipped (JAX's transposed kernels). Kernels of fewer than 3 axes (none of the
    /// frameworks') are left as they are.
    pub fn weight_axes(&self, op: Op, rank: usize) -> (Vec<usize>, bool) {
        if rank < 3 {
            return ((0..rank).collect(), false);
        }
        let (first, second, flip) = match (op, self.framework) {
            // (*k, C_in/g, C_out) -> (C_out, C_in/g, *k); for the transpose with
            // TensorFlow's layout (*k, C_out, C_in) -> (C_in, C_out, *k): the same axes.
            (Op::Conv, _)
            | (Op::ConvTranspose, Framework::TensorFlow)
            | (
                Op::ConvTranspose,
                Framework::Jax {
                    transpose_kernel: true,
                    ..
                },
            ) => (rank - 1, rank - 2, false),
            // JAX's kernel as the dilated input's correlation reads it:
            // (*k, C_in, C_out) -> (C_in, C_out, *k), flipped in space.
            (Op::ConvTranspose, Framework::Jax { .. }) => (rank - 2, rank - 1, true),
        };
        let perm = [first, second].into_iter().chain(0..rank - 2).collect();
        (perm, flip)
    }

    /// A kernel in this convention's layout for `op`, in tconv's (PyTorch's): conv
    /// `(C_out, C_in/g, *k)`, conv_transpose `(C_in, C_out, *k)`.
    ///
    /// # Errors
    /// A kernel without two channel axes and at least one spatial axis.
    pub fn weight_to_torch<T: Clone>(&self, op: Op, w: ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
        let r = self.check_rank(w.ndim(), "weight")?;
        let (perm, flip) = self.weight_axes(op, r);
        let mut t = w.permuted_axes(perm);
        if flip {
            for a in 2..r {
                t.invert_axis(Axis(a));
            }
        }
        Ok(t.as_standard_layout().into_owned())
    }

    /// A kernel (or its gradient) in tconv's layout, in this convention's: the inverse of
    /// [`Convention::weight_to_torch`].
    pub fn weight_from_torch<T: Clone>(&self, op: Op, w: ArrayD<T>) -> ArrayD<T> {
        let r = w.ndim();
        if r < 3 {
            return w;
        }
        let (perm, flip) = self.weight_axes(op, r);
        let mut t = w;
        if flip {
            for a in 2..r {
                t.invert_axis(Axis(a));
            }
        }
        t.permuted_axes(inverse(&perm))
            .as_standard_layout()
            .into_owned()
    }

    fn check_rank(&self, rank: usize, what: &'static str) -> Result<usize> {
        if rank < 3 {
            return fail(ErrorKind::FrameworkRank {
                framework: self.name(),
                what,
                rank,
            });
        }
        Ok(rank)
    }

    /// tconv's parameters for `op` on an input of shape `x_shape` and a kernel of shape
    /// `w_shape`, both in this convention's layouts.
    ///
    /// # Errors
    /// Shapes of the wrong rank, per-axis lists of the wrong length, zero strides or
    /// dilations, an output size the framework would refuse (TensorFlow's check that the
    /// forward conv of that size gives the input's), and padding that tconv's parameters
    /// cannot express (a JAX transposed conv padding the dilated input by more than the
    /// dilated kernel less one at the beginning, or beyond what `output_padding` adds at
    /// the end; a negative conv padding), each naming the numbers. [`Convention::lower`]
    /// maps those JAX calls too, as [`Convention::run`] computes them.
    pub fn params(
        &self,
        op: Op,
        x_shape: &[usize],
        w_shape: &[usize],
        call: &Call,
    ) -> Result<ConvParams> {
        Ok(self.lowering(op, x_shape, w_shape, call, false)?.params)
    }

    /// The call as tconv computes it: tconv's parameters, and for JAX's padding beyond
    /// what they express, the input cropped before (a conv's negative padding) or zeros
    /// placed around the result (a transposed conv padding the dilated input beyond the
    /// kernel's reach: outputs no input reaches, which `lax.conv_transpose` computes as
    /// zeros). For every other call, [`Convention::params`] and nothing around.
    ///
    /// # Errors
    /// As [`Convention::params`], but for those paddings; a JAX padding that crops a conv's
    /// whole input, or leaves a transposed conv no output (JAX returns an empty array,
    /// which tconv refuses as PyTorch does), names the pair.
    pub fn lower(
        &self,
        op: Op,
        x_shape: &[usize],
        w_shape: &[usize],
        call: &Call,
    ) -> Result<Lowering> {
        self.lowering(op, x_shape, w_shape, call, true)
    }

    /// [`Convention::lower`], refusing what tconv's parameters cannot express unless
    /// `beyond`.
    fn lowering(
        &self,
        op: Op,
        x_shape: &[usize],
        w_shape: &[usize],
        call: &Call,
        beyond: bool,
    ) -> Result<Lowering> {
        let r = self.check_rank(x_shape.len(), "input")?;
        self.check_rank(w_shape.len(), "weight")?;
        let input: Vec<usize> = match self.data_format {
            DataFormat::ChannelsFirst => x_shape[2..].to_vec(),
            DataFormat::ChannelsLast => x_shape[1..r - 1].to_vec(),
        };
        let kernel = &w_shape[..w_shape.len() - 2];
        let dims = input.len();
        if kernel.len() != dims {
            return fail(ErrorKind::RankMismatch {
                input_rank: x_shape.len(),
                weight_rank: w_shape.len(),
            });
        }
        if let FrameworkPadding::Explicit(pairs) = &call.padding {
            if pairs.len() != dims {
                return fail(ErrorKind::ParamLength {
                    name: "padding",
                    got: pairs.len(),
                    spatial_dims: dims,
                });
            }
        }
        if let Some(size) = call.output_size.as_ref().filter(|s| s.len() != dims) {
            return fail(ErrorKind::ParamLength {
                name: "output_shape",
                got: size.len(),
                spatial_dims: dims,
            });
        }
        let strides = per_axis("stride", &call.strides, dims)?;
        let dilations = per_axis("dilation", &call.dilations, dims)?;
        let sizes = x_shape
            .iter()
            .chain(w_shape)
            .chain(&strides)
            .chain(&dilations);
        capped(
            sizes.chain(call.output_size.iter().flatten()),
            "an extent, stride, dilation or output size",
        )?;
        // TensorFlow's conv takes no group count: its kernel's input channels imply one.
        let channels = match self.data_format {
            DataFormat::ChannelsFirst => x_shape[1],
            DataFormat::ChannelsLast => x_shape[r - 1],
        };
        let per_group = w_shape[w_shape.len() - 2];
        let groups = match (self.framework, op) {
            (Framework::TensorFlow, Op::Conv)
                if call.groups == 1
                    && per_group > 0
                    && channels > per_group
                    && channels % per_group == 0 =>
            {
                channels / per_group
            }
            _ => call.groups,
        };
        let base = ConvParams::new()
            .stride(&strides)
            .dilation(&dilations)
            .groups(groups);
        let exact = |params| Lowering {
            params,
            crop: vec![(0, 0); dims],
            around: vec![(0, 0); dims],
            reached: true,
        };
        match op {
            Op::Conv => {
                if call.output_size.is_some() {
                    return fail(ErrorKind::NotForConv {
                        name: "output_shape",
                    });
                }
                let spans: Vec<usize> = (0..dims)
                    .map(|a| dilations[a] * (kernel[a].max(1) - 1) + 1)
                    .collect();
                let axes = (&input[..], &spans[..], &strides[..]);
                let (padding, crop, unreached) = self.conv_padding(&call.padding, axes, beyond)?;
                let params = base.padding_spec(padding);
                Ok(match unreached {
                    // The crops leave no input on some axis: zeros throughout.
                    Some(extents) => Lowering {
                        around: extents.into_iter().map(|n| (n, 0)).collect(),
                        reached: false,
                        ..exact(params)
                    },
                    None => Lowering {
                        crop,
                        ..exact(params)
                    },
                })
            }
            Op::ConvTranspose => {
                let mut axes = Vec::with_capacity(dims);
                for axis in 0..dims {
                    let a = TransposeAxis {
                        axis,
                        input: input[axis] as i128,
                        span: dilations[axis] as i128 * (kernel[axis] as i128 - 1) + 1,
                        stride: strides[axis] as i128,
                        dilation: dilations[axis] as i128,
                    };
                    axes.push(match self.framework {
                        Framework::TensorFlow => self.tf_axis(&a, call)?,
                        Framework::Jax {
                            consistent_padding, ..
                        } => self.jax_axis(&a, call, consistent_padding, beyond)?,
                    });
                }
                if axes.iter().all(|m| m.total >= 1) && axes.iter().any(|m| m.inner < 1) {
                    // No input reaches the output: zeros throughout, the parameters
                    // (nothing cropped) only check the shapes.
                    let zeros = vec![0; dims];
                    return Ok(Lowering {
                        around: axes
                            .iter()
                            .map(|m| Ok((size(m.total)?, 0)))
                            .collect::<Result<_>>()?,
                        reached: false,
                        ..exact(base.pads(&zeros, &zeros))
                    });
                }
                let pick = |f: fn(&AxisMap) -> usize| axes.iter().map(f).collect::<Vec<_>>();
                let params = base
                    .pads(&pick(|m| m.begin), &pick(|m| m.end))
                    .output_padding(&pick(|m| m.extra));
                Ok(Lowering {
                    around: axes.iter().map(|m| m.around).collect(),
                    ..exact(params)
                })
            }
        }
    }

    /// A conv's padding (the framework's SAME is ONNX's SAME_UPPER) on an input of spatial
    /// extents `input` (dilated kernel extents `spans`, `strides`), and what is cropped from
    /// the input first: a JAX conv's negative padding, where `beyond` (refused otherwise, as
    /// TensorFlow's always). Where that crops a whole axis but padding leaves the conv
    /// outputs (zeros), no crop and the output's extents.
    #[allow(clippy::type_complexity)]
    fn conv_padding(
        &self,
        p: &FrameworkPadding,
        (input, spans, strides): (&[usize], &[usize], &[usize]),
        beyond: bool,
    ) -> Result<(Padding, Vec<(usize, usize)>, Option<Vec<usize>>)> {
        let mut crop = vec![(0, 0); input.len()];
        let padding = match p {
            FrameworkPadding::Same => Padding::SameUpper,
            FrameworkPadding::Valid => Padding::Valid,
            FrameworkPadding::SameLower => match self.framework {
                Framework::Jax { .. } => Padding::SameLower,
                Framework::TensorFlow => {
                    return fail(ErrorKind::FrameworkOption {
                        framework: self.name(),
                        option: "padding SAME_LOWER",
                    })
                }
            },
            FrameworkPadding::Explicit(pairs) => {
                let (mut begin, mut end) = (Vec::new(), Vec::new());
                let jax = matches!(self.framework, Framework::Jax { .. });
                let mut extents = Vec::new();
                let mut unreached = false;
                for (axis, &(b, e)) in pairs.iter().enumerate() {
                    let refuse = |reason| {
                        fail(ErrorKind::FrameworkPadding {
                            framework: self.name(),
                            axis,
                            begin: b,
                            end: e,
                            reason,
                        })
                    };
                    if (b < 0 || e < 0) && !(beyond && jax) {
                        return refuse(if jax {
                            "a conv's negative padding crops its input, which tconv's (PyTorch's) parameters cannot express (Convention::lower and --convention jax do)"
                        } else {
                            "a conv's padding must not be negative (tconv pads its input; it does not crop it)"
                        });
                    }
                    let (cb, ce) = (b.min(0).unsigned_abs(), e.min(0).unsigned_abs());
                    // The conv's output extent on the padded (and cropped) input.
                    let padded = input[axis] as i128 + b as i128 + e as i128;
                    let out = (padded - spans[axis] as i128).div_euclid(strides[axis] as i128) + 1;
                    if cb + ce > 0 && cb as u128 + ce as u128 >= input[axis] as u128 {
                        if out < 1 {
                            return refuse("leaves the conv no output position (JAX returns an empty array; tconv refuses empty outputs, as PyTorch does)");
                        }
                        unreached = true;
                    }
                    extents.push(out);
                    crop[axis] = (cb as usize, ce as usize);
                    begin.push(b.max(0) as usize);
                    end.push(e.max(0) as usize);
                }
                let padding = Padding::Explicit { begin, end };
                if unreached {
                    // Each extent is at least 1 where an axis is cropped whole (above); an
                    // empty one elsewhere is the conv's own refusal, given as a crop.
                    if extents.iter().all(|&n| n >= 1) {
                        let extents = extents.into_iter().map(size).collect::<Result<_>>()?;
                        return Ok((padding, vec![(0, 0); input.len()], Some(extents)));
                    }
                    let axis = extents.iter().position(|&n| n < 1).unwrap_or(0);
                    let (b, e) = pairs[axis];
                    return fail(ErrorKind::FrameworkPadding {
                        framework: self.name(),
                        axis,
                        begin: b,
                        end: e,
                        reason: "leaves the conv no output position (JAX returns an empty array; tconv refuses empty outputs, as PyTorch does)",
                    });
                }
                padding
            }
        };
        Ok((padding, crop, None))
    }

    /// TensorFlow's transposed conv on one axis: the gradient of the forward conv from
    /// `output_shape` (or Keras' default size) to the input, as `(pad_begin, pad_end,
    /// output_padding)`.
    fn tf_axis(&self, a: &TransposeAxis, call: &Call) -> Result<AxisMap> {
        let (i, k, s) = (a.input, a.span, a.stride);
        // The forward conv's begin padding for an input of `out`, and the outputs whose
        // forward conv gives back `i` positions (TensorFlow checks that).
        let (forward, min, max): (Box<dyn Fn(i128) -> i128>, i128, i128) = match &call.padding {
            FrameworkPadding::Same => (
                Box::new(move |out| ((i - 1) * s + k - out).max(0) / 2),
                (i - 1) * s + 1,
                i * s,
            ),
            FrameworkPadding::Valid => (Box::new(|_| 0), (i - 1) * s + k, (i - 1) * s + k + s - 1),
            FrameworkPadding::Explicit(pairs) => {
                let (b, e) = pairs[a.axis];
                if b < 0 || e < 0 {
                    return fail(ErrorKind::FrameworkPadding {
                        framework: self.name(),
                        axis: a.axis,
                        begin: b,
                        end: e,
                        reason: "TensorFlow's explicit padding must not be negative",
                    });
                }
                let min = (i - 1) * s + k - b as i128 - e as i128;
                if min + s - 1 < 1 {
                    // Even a one-long output, padded so, gives the forward conv more
                    // positions than the input has.
                    return fail(ErrorKind::FrameworkPadding {
                        framework: self.name(),
                        axis: a.axis,
                        begin: b,
                        end: e,
                        reason: "even a one-long output, padded so, gives the forward conv more positions than the input has: no output_shape is valid",
                    });
                }
                (Box::new(move |_| b as i128), min.max(1), min + s - 1)
            }
            FrameworkPadding::SameLower => {
                return fail(ErrorKind::FrameworkOption {
                    framework: self.name(),
                    option: "padding SAME_LOWER",
                })
            }
        };
        let out = match &call.output_size {
            Some(size) => size[a.axis] as i128,
            None => keras_axis(i, k, s, &call.padding, None)?,
        };
        if out < min || out > max {
            return fail(ErrorKind::OutputSizeOutOfRange {
                axis: a.axis,
                requested: out.max(0) as u64,
                min: min.max(0) as u64,
                max: max.max(0) as u64,
            });
        }
        let begin = forward(out);
        // What the forward conv leaves unread at the end is cropped; what the output has
        // past the full transposed output is output padding.
        let end = (i - 1) * s + k - begin - out;
        AxisMap::cropped(a, begin, end)
    }

    /// JAX's transposed conv on one axis: padding `(lo, hi)` of the stride-dilated input,
    /// correlated with the kernel as given; in tconv's terms crop `span - 1 - lo` at the
    /// beginning and `span - 1 - hi` at the end (output padding where that is negative and
    /// PyTorch's `output_padding` reaches; where `beyond`, zeros around beyond that).
    fn jax_axis(
        &self,
        a: &TransposeAxis,
        call: &Call,
        consistent: bool,
        beyond: bool,
    ) -> Result<AxisMap> {
        if call.output_size.is_some() {
            return fail(ErrorKind::FrameworkOption {
                framework: self.name(),
                option: "output_shape (lax.conv_transpose takes none)",
            });
        }
        let (k, s) = (a.span, a.stride);
        let (lo, hi) = match &call.padding {
            // jax._src.lax.convolution._conv_transpose_padding, on the dilated kernel.
            FrameworkPadding::Same => {
                let len = k + s - 2;
                let lo = if s > k - 1 { k - 1 } else { (len + 1) / 2 };
                (lo, len - lo)
            }
            FrameworkPadding::Valid => {
                let len = k + s - 2 + (k - s).max(0);
                (k - 1, len - (k - 1))
            }
            FrameworkPadding::Explicit(pairs) => {
                let (b, e) = pairs[a.axis];
                let (b, e) = (b as i128, e as i128);
                if consistent {
                    (k - 1 - b, k - 1 - e)
                } else {
                    (b, e)
                }
            }
            FrameworkPadding::SameLower => {
                return fail(ErrorKind::FrameworkOption {
                    framework: self.name(),
                    option: "padding SAME_LOWER for conv_transpose",
                })
            }
        };
        // The pair the caller gave, for messages (only explicit pairs can fail below).
        let given = match &call.padding {
            FrameworkPadding::Explicit(pairs) => pairs[a.axis],
            _ => (0, 0),
        };
        let refuse = |reason| {
            fail(ErrorKind::FrameworkPadding {
                framework: self.name(),
                axis: a.axis,
                begin: given.0,
                end: given.1,
                reason,
            })
        };
        let (begin, end) = (k - 1 - lo, k - 1 - hi);
        let beyond_end = end < 0 && -end >= s && -end >= a.dilation;
        if begin >= 0 && !beyond_end {
            return AxisMap::cropped(a, begin, end);
        }
        if !beyond {
            return refuse(if begin < 0 {
                "padding the dilated input by more than the dilated kernel's extent less one at the beginning puts zeros before the output, which tconv's (PyTorch's) parameters cannot express (Convention::lower and --convention jax do)"
            } else {
                "padding the dilated input at the end by the dilated kernel's extent plus the stride or more adds outputs no input reaches; PyTorch's output_padding stops below the stride or the dilation (Convention::lower and --convention jax add them)"
            });
        }
        let total = (a.input - 1) * s + k - begin - end;
        if total < 1 {
            return refuse("leaves the output no position (JAX returns an empty array; tconv refuses empty outputs, as PyTorch does)");
        }
        // Crop what lies inside the full output; the rest, beyond the kernel's reach,
        // becomes zeros around (at the end, output padding where PyTorch's reaches).
        let mut m = AxisMap::cropped(a, begin.max(0), if beyond_end { 0 } else { end })?;
        m.around = (
            size((-begin).max(0))?,
            if beyond_end { size(-end)? } else { 0 },
        );
        m.total = total;
        Ok(m)
    }

    /// `op` on arrays in this convention's layouts, the result in its data layout:
    /// the framework's call computed by tconv.
    ///
    /// # Errors
    /// As [`Convention::params`], then as [`crate::conv`] / [`crate::conv_transpose`].
    pub fn run<T: Element>(
        &self,
        op: Op,
        x: ArrayViewD<'_, T>,
        w: ArrayViewD<'_, T>,
        bias: Option<ArrayView1<'_, T>>,
        call: &Call,
    ) -> Result<ArrayD<T>> {
        let low = self.lower(op, x.shape(), w.shape(), call)?;
        let (xt, wt) = (
            self.data_to_torch(x, "input")?,
            self.weight_to_torch(op, w)?,
        );
        // The input the op reads: without what a JAX conv's negative padding crops.
        let xc = inner_view(&xt, &low.crop);
        if low.exact() {
            return Ok(self.data_from_torch(crate::run(op, xc, &wt, bias, &low.params)?));
        }
        // The zeros (the bias) around, checked in size before anything is computed.
        let g = low.geometry(op, xc.shape(), wt.shape(), bias.map(|b| b.len()))?;
        let inner = g.user_output_shape();
        let fill = bias_values(bias, g.out_channels);
        let mut y = filled(op, g.batch, &fill, &low.extents(&inner[2..]))?;
        if low.reached {
            inner_mut(&mut y, &low.around).assign(&crate::run(op, xc, &wt, bias, &low.params)?);
        }
        Ok(self.data_from_torch(y))
    }

    /// The gradients of `op` for the upstream gradient `grad_y`, all in this convention's
    /// layouts (the weight's gradient laid out, and flipped, as the kernel).
    ///
    /// # Errors
    /// As [`Convention::params`], then as [`crate::conv_backward`] /
    /// [`crate::conv_transpose_backward`].
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Element>(
        &self,
        op: Op,
        x: ArrayViewD<'_, T>,
        w: ArrayViewD<'_, T>,
        grad_y: ArrayViewD<'_, T>,
        call: &Call,
        wanted: Wanted,
        options: &PlanOptions,
    ) -> Result<Gradients<T>> {
        let low = self.lower(op, x.shape(), w.shape(), call)?;
        let (xt, wt) = (
            self.data_to_torch(x, "input")?,
            self.weight_to_torch(op, w)?,
        );
        let gyt = self.data_to_torch(grad_y, "grad_output")?;
        let g = if low.exact() {
            crate::grad::backward(op, &xt, &wt, &gyt, &low.params, wanted, options, None)?
        } else {
            low.backward(op, (xt, wt, gyt), wanted, options)?
        };
        Ok(Gradients {
            input: g.input.map(|a| self.data_from_torch(a)),
            weight: g.weight.map(|a| self.weight_from_torch(op, a)),
            bias: g.bias,
        })
    }
}

/// A framework call as tconv computes it ([`Convention::lower`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lowering {
    /// tconv's parameters.
    pub params: ConvParams,
    /// Per spatial axis, the positions cropped from the input's beginning and end before
    /// the op (a JAX conv's negative padding).
    pub crop: Vec<(usize, usize)>,
    /// Per spatial axis, the zeros placed before and after the op's result (the bias,
    /// where one is added).
    pub around: Vec<(usize, usize)>,
    /// Whether any input reaches the output. Where not, the output is all zeros (the
    /// bias), `around[a].0` long on axis `a`, and `params` (nothing cropped) only check
    /// the shapes.
    pub reached: bool,
}

impl Lowering {
    /// Whether tconv's parameters alone express the call.
    pub fn exact(&self) -> bool {
        self.reached && self.crop.iter().chain(&self.around).all(|&p| p == (0, 0))
    }

    /// The output's spatial extents, from those of the op's result with `params`
    /// (`inner`; ignored where the output is not reached).
    pub fn extents(&self, inner: &[usize]) -> Vec<usize> {
        if !self.reached {
            return self.around.iter().map(|&(b, _)| b).collect();
        }
        self.around
            .iter()
            .zip(inner)
            .map(|(&(b, e), &n)| b.saturating_add(n).saturating_add(e))
            .collect()
    }

    /// The geometry of the op on an input (cropped) and a weight of these shapes in
    /// tconv's layouts with `params`, which checks them.
    fn geometry(
        &self,
        op: Op,
        x_shape: &[usize],
        w_shape: &[usize],
        bias: Option<usize>,
    ) -> Result<crate::Geometry> {
        let bias = bias.map(|b| vec![b]);
        crate::Geometry::new(op, x_shape, w_shape, bias.as_deref(), &self.params)
    }

    /// The gradients where the call is not exact: those of the op on the cropped input for
    /// the upstream gradient inside the zeros around (none where no input reaches the
    /// output), the input's zero-padded back to its extents; the bias's over all of it.
    fn backward<T: Element>(
        &self,
        op: Op,
        (xt, wt, gyt): (ArrayD<T>, ArrayD<T>, ArrayD<T>),
        wanted: Wanted,
        options: &PlanOptions,
    ) -> Result<Gradients<T>> {
        let xc = inner_view(&xt, &self.crop);
        let g = self.geometry(op, xc.shape(), wt.shape(), None)?;
        let inner = g.user_output_shape();
        let mut expected = inner.clone();
        expected.splice(2.., self.extents(&inner[2..]));
        if gyt.shape() != expected.as_slice() {
            return fail(ErrorKind::ShapeMismatch {
                what: "grad_output",
                got: gyt.shape().to_vec(),
                expected,
            });
        }
        let (input, weight) = if self.reached {
            let gy = inner_view(&gyt, &self.around);
            let only = Wanted {
                bias: false,
                ..wanted
            };
            let g = crate::grad::backward(op, xc, &wt, gy, &self.params, only, options, None)?;
            let input = g.input.map(|gx| {
                let mut full = ArrayD::zeros(xt.shape());
                inner_mut(&mut full, &self.crop).assign(&gx);
                full
            });
            (input, g.weight)
        } else {
            let input = wanted.input.then(|| ArrayD::zeros(xt.shape()));
            (input, wanted.weight.then(|| ArrayD::zeros(wt.shape())))
        };
        let bias = wanted.bias.then(|| {
            let (view, channels) = (gyt.view(), gyt.shape()[1]);
            let gy = crate::tensor::contiguous(&view);
            let sums = crate::grad::channel_sums(&gy, channels, numel(&gyt.shape()[2..]));
            ArrayD::from_shape_vec(ndarray::IxDyn(&[channels]), sums).expect("one sum a channel")
        });
        Ok(Gradients {
            input,
            weight,
            bias,
        })
    }
}

/// The bias's values for `channels` output channels (zeros without one).
fn bias_values<T: Element>(bias: Option<ArrayView1<'_, T>>, channels: usize) -> Vec<T> {
    match bias {
        Some(b) => b.to_vec(),
        None => vec![T::zero(); channels],
    }
}

/// An `(N, C, *extents)` array holding channel `c`'s `fill[c]` throughout; an error where
/// it would exceed [`crate::geometry::MAX_ELEMENTS`] (zeros padded far beyond the kernel),
/// named as `op`'s output.
fn filled<T: Element>(op: Op, batch: usize, fill: &[T], extents: &[usize]) -> Result<ArrayD<T>> {
    let shape: Vec<usize> = [batch, fill.len()].iter().chain(extents).copied().collect();
    let what = match op {
        Op::Conv => "conv output",
        Op::ConvTranspose => "conv_transpose output",
    };
    crate::geometry::check_elements(what, &shape)?;
    let mut out = ArrayD::zeros(ndarray::IxDyn(&shape));
    for mut image in out.outer_iter_mut() {
        for (mut plane, &v) in image.outer_iter_mut().zip(fill) {
            plane.fill(v);
        }
    }
    Ok(out)
}

/// The part of `a` (tconv's layout) inside `around`'s positions at each spatial axis's ends.
fn inner_view<'a, T>(a: &'a ArrayD<T>, around: &[(usize, usize)]) -> ndarray::ArrayViewD<'a, T> {
    a.slice_each_axis(|d| inner_slice(d, around))
}

/// [`inner_view`], mutable.
fn inner_mut<'a, T>(
    a: &'a mut ArrayD<T>,
    around: &[(usize, usize)],
) -> ndarray::ArrayViewMutD<'a, T> {
    a.slice_each_axis_mut(|d| inner_slice(d, around))
}

fn inner_slice(d: ndarray::AxisDescription, around: &[(usize, usize)]) -> ndarray::Slice {
    match d.axis.index().checked_sub(2).and_then(|a| around.get(a)) {
        Some(&(b, e)) => ndarray::Slice::from(b as isize..(d.len - e) as isize),
        None => ndarray::Slice::from(..),
    }
}

/// One spatial axis of a transposed conv as tconv computes it.
struct AxisMap {
    /// Crop of the full output at the beginning and the end, and output padding.
    begin: usize,
    end: usize,
    extra: usize,
    /// Zeros placed before and after the result.
    around: (usize, usize),
    /// Extent of the result (below 1 where no input reaches the output), and with the
    /// zeros around.
    inner: i128,
    total: i128,
}

impl AxisMap {
    /// Crop `begin` and `end` of the full output of `a` (`end` negative: output padding).
    fn cropped(a: &TransposeAxis, begin: i128, end: i128) -> Result<AxisMap> {
        let inner = (a.input - 1) * a.stride + a.span - begin - end;
        Ok(AxisMap {
            begin: size(begin)?,
            end: size(end.max(0))?,
            extra: size((-end).max(0))?,
            around: (0, 0),
            inner,
            total: inner,
        })
    }
}

/// One spatial axis of a transposed conv, in the numbers the frameworks' rules use.
struct TransposeAxis {
    axis: usize,
    input: i128,
    /// The dilated kernel's extent `d (k - 1) + 1`.
    span: i128,
    stride: i128,
    dilation: i128,
}

/// Largest extent, stride, dilation or output size [`Convention::params`] takes (far beyond
/// what [`crate::Geometry`] accepts; it keeps the arithmetic below exact in `i128`).
const MAX_SIZE: u128 = 1 << 62;

/// The permutation that undoes `axes` (a permutation of `0..axes.len()`, as
/// [`Convention::data_axes`] and [`Convention::weight_axes`] give).
pub fn inverse(axes: &[usize]) -> Vec<usize> {
    let mut back = vec![0; axes.len()];
    for (i, &a) in axes.iter().enumerate() {
        back[a] = i;
    }
    back
}

/// [`ErrorKind::TooLarge`] for the first of `values` over [`MAX_SIZE`] (`what` names them).
fn capped<'v>(values: impl IntoIterator<Item = &'v usize>, what: &'static str) -> Result<()> {
    match values.into_iter().find(|&&v| v as u128 > MAX_SIZE) {
        Some(&big) => fail(ErrorKind::TooLarge {
            what,
            elements: big as u128,
            limit: MAX_SIZE,
        }),
        None => Ok(()),
    }
}

/// A non-negative amount as a `usize`, or [`ErrorKind::TooLarge`].
fn size(v: i128) -> Result<usize> {
    usize::try_from(v).or_else(|_| {
        fail(ErrorKind::TooLarge {
            what: "a padding",
            elements: v.unsigned_abs(),
            limit: usize::MAX as u128,
        })
    })
}

/// A per-axis list broadcast to `dims` axes: empty means 1, one value means that value on
/// every axis.
fn per_axis(name: &'static str, v: &[usize], dims: usize) -> Result<Vec<usize>> {
    let out = match v.len() {
        0 => vec![1; dims],
        1 => vec![v[0]; dims],
        n if n == dims => v.to_vec(),
        got => {
            return fail(ErrorKind::ParamLength {
                name,
                got,
                spatial_dims: dims,
            })
        }
    };
    if let Some(axis) = out.iter().position(|&x| x == 0) {
        return fail(ErrorKind::ZeroParam { name, axis });
    }
    Ok(out)
}

/// Keras' output length of a transposed conv axis (`keras.src.ops.operation_utils` /
/// `deconv_output_length`), for the dilated kernel extent `span`.
fn keras_axis(
    input: i128,
    span: i128,
    stride: i128,
    padding: &FrameworkPadding,
    output_padding: Option<i128>,
) -> Result<i128> {
    let same = match padding {
        FrameworkPadding::Same => true,
        FrameworkPadding::Valid => false,
        // Keras' layers take only "same" and "valid"; an explicit TensorFlow padding needs
        // its output_shape.
        _ => {
            return fail(ErrorKind::FrameworkOption {
                framework: "tensorflow",
                option: "explicit padding without output_shape",
            })
        }
    };
    Ok(match output_padding {
        None if same => input * stride,
        None => input * stride + (span - stride).max(0),
        Some(op) => {
            let pad = if same { span / 2 } else { 0 };
            (input - 1) * stride + span - 2 * pad + op
        }
    })
}

/// The spatial output size of Keras' `Conv*DTranspose(filters, kernel_size, strides,
/// padding, output_padding, dilation_rate)` on an input of spatial extents `input`: the
/// `output_shape` it hands to TensorFlow's transposed conv ([`Call::output_size`]).
///
/// # Errors
/// Lists of the wrong length, zero strides or dilations, or padding other than
/// `Same` / `Valid` (Keras' layers take only those).
pub fn keras_output_size(
    input: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
    padding: &FrameworkPadding,
    output_padding: Option<&[usize]>,
) -> Result<Vec<usize>> {
    let dims = input.len();
    let kernel = per_axis("kernel_size", kernel, dims)?;
    let strides = per_axis("stride", strides, dims)?;
    let dilations = per_axis("dilation", dilations, dims)?;
    let sizes = input
        .iter()
        .chain(&kernel)
        .chain(&strides)
        .chain(&dilations);
    capped(
        sizes.chain(output_padding.into_iter().flatten()),
        "an extent, stride, dilation or output padding",
    )?;
    let extra = output_padding
        .map(|o| match o.len() {
            1 => Ok(vec![o[0]; dims]),
            n if n == dims => Ok(o.to_vec()),
            got => fail(ErrorKind::ParamLength {
                name: "output_padding",
                got,
                spatial_dims: dims,
            }),
        })
        .transpose()?;
    (0..dims)
        .map(|a| {
            let span = dilations[a] as i128 * (kernel[a] as i128 - 1) + 1;
            let op = extra.as_ref().map(|e| e[a] as i128);
            let (i, s) = (input[a] as i128, strides[a] as i128);
            let n = keras_axis(i, span, s, padding, op)?;
            if n < 1 {
                // Only "same" with output_padding: PyTorch's padding span / 2 at both ends
                // of the full output (Keras' own layer returns an empty array).
                let pad = (span / 2) as i64;
                return fail(ErrorKind::PaddingRemovesOutput {
                    axis: a,
                    pad_begin: pad,
                    pad_end: pad,
                    full: size((i - 1) * s + span + op.unwrap_or(0))? as u64,
                });
            }
            size(n)
        })
        .collect()
}
