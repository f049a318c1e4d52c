//! The library's typed error. Every variant carries the numbers involved so that the
//! message alone tells a user what to change.

use std::fmt;

/// Result alias used throughout tconv.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from tconv: a [`ErrorKind`] saying what was wrong, with the numbers involved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
}

impl Error {
    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error { kind }
    }
}

/// The kinds of error. Non-exhaustive: new kinds may be added in minor releases.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The weight must have at least 3 dimensions `(C, C', k1, ...)`.
    WeightRank { rank: usize },
    /// The input's rank fits neither `(N, C, *spatial)` nor `(C, *spatial)` for this weight.
    RankMismatch {
        input_rank: usize,
        weight_rank: usize,
    },
    /// A per-axis parameter has neither 1 value nor one per spatial axis.
    ParamLength {
        name: &'static str,
        got: usize,
        spatial_dims: usize,
    },
    /// The input's channel count does not match what the weight expects.
    ChannelMismatch {
        input_channels: usize,
        expected: usize,
        per_group: usize,
        groups: usize,
    },
    /// `groups` must be at least 1.
    ZeroGroups,
    /// A channel count is not divisible by `groups`.
    GroupsDoNotDivide {
        what: &'static str,
        channels: usize,
        groups: usize,
    },
    /// A channel count is zero.
    ZeroChannels { what: &'static str },
    /// Stride or dilation of zero.
    ZeroParam { name: &'static str, axis: usize },
    /// A kernel extent of zero.
    ZeroKernel { axis: usize },
    /// A spatial input extent of zero.
    ZeroExtent { axis: usize },
    /// PyTorch's rule: output_padding must be smaller than the stride or the dilation.
    OutputPaddingTooLarge {
        axis: usize,
        output_padding: usize,
        stride: usize,
        dilation: usize,
    },
    /// `output_padding` or `output_size` given to an ordinary convolution.
    NotForConv { name: &'static str },
    /// Transposed conv: the padding crops away the whole output along an axis.
    PaddingRemovesOutput {
        axis: usize,
        pad_begin: i64,
        pad_end: i64,
        full: u64,
    },
    /// Conv: the dilated kernel is longer than the padded input along an axis.
    KernelLargerThanInput {
        axis: usize,
        span: u64,
        padded_input: u64,
    },
    /// A requested output size cannot be produced (PyTorch `output_size`, ONNX `output_shape`).
    /// `max` is `u64::MAX` where only a least size applies (ONNX's `output_shape`, whose
    /// pads follow from it).
    OutputSizeOutOfRange {
        axis: usize,
        requested: u64,
        min: u64,
        max: u64,
    },
    /// The kernel shape given as a parameter disagrees with the weight's.
    KernelShapeMismatch {
        given: Vec<usize>,
        weight: Vec<usize>,
    },
    /// The bias must have shape `(C_out,)`.
    BiasShape { got: Vec<usize>, expected: usize },
    /// A size too large to compute or allocate sanely.
    TooLarge {
        what: &'static str,
        elements: u128,
        limit: u128,
    },
    /// An array's shape is not what the operation requires (gradients, explicit outputs).
    ShapeMismatch {
        what: &'static str,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    /// A forced tile shape `(output channels, vectors)` has no kernel.
    NoSuchKernel {
        tile: (usize, usize),
        available: Vec<(usize, usize)>,
    },
    /// Another framework's arrays need batch and channel axes and at least one spatial axis
    /// ([`crate::convention`]).
    FrameworkRank {
        framework: &'static str,
        what: &'static str,
        rank: usize,
    },
    /// An option or padding mode the framework does not define for this call.
    FrameworkOption {
        framework: &'static str,
        option: &'static str,
    },
    /// A framework's padding on an axis that tconv's (PyTorch's) parameters cannot express.
    FrameworkPadding {
        framework: &'static str,
        axis: usize,
        begin: i64,
        end: i64,
        reason: &'static str,
    },
    /// Reading or writing a file failed.
    Io { path: String, message: String },
    /// A `.npy` file is malformed or unsupported.
    Npy { message: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ErrorKind::*;
        match &self.kind {
            WeightRank { rank } => write!(
                f,
                "weight has {rank} dimensions; it needs at least 3 (out/in channels then one kernel extent per spatial axis)"
            ),
            RankMismatch { input_rank, weight_rank } => write!(
                f,
                "input has {input_rank} dimensions, but a weight of rank {weight_rank} needs an input of rank {} (N, C, *spatial) or {} (C, *spatial)",
                weight_rank,
                weight_rank - 1
            ),
            ParamLength { name, got, spatial_dims } => write!(
                f,
                "{name} has {got} values; give 1 (for all axes) or {spatial_dims} (one per spatial axis)"
            ),
            ChannelMismatch { input_channels, expected, per_group, groups } => write!(
                f,
                "input has {input_channels} channels, weight expects {expected} ({per_group} per group x {groups} groups)"
            ),
            ZeroGroups => write!(f, "groups must be at least 1, got 0"),
            GroupsDoNotDivide { what, channels, groups } => write!(
                f,
                "{what} {channels} is not divisible by groups {groups}"
            ),
            ZeroChannels { what } => write!(f, "{what} is 0; channel counts must be at least 1"),
            ZeroParam { name, axis } => write!(f, "{name} is 0 on axis {axis}; it must be at least 1"),
            ZeroKernel { axis } => write!(f, "kernel extent is 0 on axis {axis}; it must be at least 1"),
            ZeroExtent { axis } => write!(f, "input extent is 0 on spatial axis {axis}; it must be at least 1"),
            OutputPaddingTooLarge { axis, output_padding, stride, dilation } => write!(
                f,
                "output_padding {output_padding} on axis {axis} must be smaller than the stride ({stride}) or the dilation ({dilation})"
            ),
            NotForConv { name } => write!(f, "{name} applies only to conv_transpose, not to conv"),
            PaddingRemovesOutput { axis, pad_begin, pad_end, full } => write!(
                f,
                "padding {pad_begin}+{pad_end} removes the whole output of length {full} on axis {axis}"
            ),
            KernelLargerThanInput { axis, span, padded_input } => write!(
                f,
                "dilated kernel extent {span} is larger than the padded input extent {padded_input} on axis {axis}, so the output would be empty"
            ),
            OutputSizeOutOfRange { axis, requested, min, max: u64::MAX } => write!(
                f,
                "requested an output size of {requested} on axis {axis}, but an output size must be at least {min}"
            ),
            OutputSizeOutOfRange { axis, requested, min, max } => write!(
                f,
                "requested an output size of {requested} on axis {axis}, but valid sizes range from {min} to {max}"
            ),
            KernelShapeMismatch { given, weight } => write!(
                f,
                "kernel_shape {given:?} does not match the weight's kernel extents {weight:?}"
            ),
            BiasShape { got, expected } => write!(
                f,
                "bias has shape {got:?}, expected ({expected},) (one value per output channel)"
            ),
            TooLarge { what, elements, limit } => write!(
                f,
                "{what} would have {elements} elements, more than the limit of {limit}"
            ),
            ShapeMismatch { what, got, expected } => write!(
                f,
                "{what} has shape {got:?}, expected {expected:?}"
            ),
            NoSuchKernel { tile, available } => write!(
                f,
                "no kernel for tile {tile:?} (output channels, vectors); available: {available:?}"
            ),
            FrameworkRank { framework, what, rank } => write!(
                f,
                "{framework}: {what} has {rank} axes; it needs {} and at least one spatial axis",
                if *what == "weight" { "two channel axes" } else { "a batch axis, a channel axis" }
            ),
            FrameworkOption { framework, option } => write!(f, "{framework} has no {option}"),
            FrameworkPadding { framework, axis, begin, end, reason } => write!(
                f,
                "{framework} padding ({begin}, {end}) on spatial axis {axis}: {reason}"
            ),
            Io { path, message } => write!(f, "{path}: {message}"),
            Npy { message } => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for building an `Err` from a kind.
pub(crate) fn fail<T>(kind: ErrorKind) -> Result<T> {
    Err(Error::from(kind))
}
