//! Parameters in the user's words: PyTorch names with the ONNX extensions.
//!
//! These are not validated here; [`crate::Geometry::new`] checks them against the shapes
//! and resolves them into per-axis numbers that every algorithm reads.

/// Which operation: ordinary convolution (cross-correlation) or its transpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `torch.nn.functional.conv{1,2,3}d`, ONNX `Conv`.
    Conv,
    /// `torch.nn.functional.conv_transpose{1,2,3}d`, ONNX `ConvTranspose`.
    ConvTranspose,
}

impl Op {
    /// The name used in messages and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Op::Conv => "conv",
            Op::ConvTranspose => "conv_transpose",
        }
    }
}

/// How the input is padded (conv) or the output cropped (conv_transpose).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Padding {
    /// PyTorch `padding`: the same amount at both ends of each axis (1 value broadcasts).
    Symmetric(Vec<usize>),
    /// ONNX `pads`: per-axis amounts at the beginning and at the end.
    Explicit { begin: Vec<usize>, end: Vec<usize> },
    /// ONNX `auto_pad = SAME_UPPER`: output `in*s` (transpose) / `ceil(in/s)` (conv);
    /// an odd total padding puts the extra unit at the end.
    SameUpper,
    /// ONNX `auto_pad = SAME_LOWER`: as `SameUpper` with the extra unit at the beginning.
    SameLower,
    /// ONNX `auto_pad = VALID`: no padding.
    Valid,
}

impl Padding {
    /// ONNX `pads` layout: `[x1_begin, x2_begin, ..., x1_end, x2_end, ...]`.
    /// Returns `None` when the length is odd.
    pub fn from_onnx_pads(pads: &[usize]) -> Option<Padding> {
        if !pads.len().is_multiple_of(2) {
            return None;
        }
        let (begin, end) = pads.split_at(pads.len() / 2);
        Some(Padding::Explicit {
            begin: begin.to_vec(),
            end: end.to_vec(),
        })
    }
}

impl Default for Padding {
    fn default() -> Self {
        Padding::Symmetric(vec![0])
    }
}

/// A requested output size for conv_transpose (spatial extents only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSize {
    /// PyTorch `output_size`: padding as given; output_padding is derived
    /// (must lie in `0..stride`).
    Torch(Vec<usize>),
    /// ONNX `output_shape`: the padding is derived (pads ignored), as the ONNX spec says.
    Onnx(Vec<usize>),
}

/// Convolution parameters. Per-axis lists take either one value (for all axes) or one per
/// spatial axis; an empty list means the default.
///
/// ```
/// use tconv::{ConvParams, Padding};
/// let p = ConvParams::new().stride(&[2]).padding(&[1]).output_padding(&[1]);
/// assert_eq!(p.padding, Padding::Symmetric(vec![1]));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvParams {
    /// Step between kernel applications (default 1).
    pub stride: Vec<usize>,
    /// Spacing between kernel taps (default 1).
    pub dilation: Vec<usize>,
    /// Padding (conv) or cropping (conv_transpose).
    pub padding: Padding,
    /// Extra output at the end of each axis (conv_transpose only; default 0).
    pub output_padding: Vec<usize>,
    /// Number of channel groups (default 1).
    pub groups: usize,
    /// Requested output size (conv_transpose only).
    pub output_size: Option<OutputSize>,
    /// ONNX `kernel_shape`: if given, must equal the weight's kernel extents.
    pub kernel_shape: Option<Vec<usize>>,
}

impl Default for ConvParams {
    fn default() -> Self {
        ConvParams {
            stride: Vec::new(),
            dilation: Vec::new(),
            padding: Padding::default(),
            output_padding: Vec::new(),
            groups: 1,
            output_size: None,
            kernel_shape: None,
        }
    }
}

impl ConvParams {
    /// Stride 1, no padding, no dilation, one group.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set the stride (1 value or one per spatial axis).
    pub fn stride(mut self, s: &[usize]) -> Self {
        self.stride = s.to_vec();
        self
    }
    /// Set the dilation (1 value or one per spatial axis).
    pub fn dilation(mut self, d: &[usize]) -> Self {
        self.dilation = d.to_vec();
        self
    }
    /// Symmetric (PyTorch) padding.
    pub fn padding(mut self, p: &[usize]) -> Self {
        self.padding = Padding::Symmetric(p.to_vec());
        self
    }
    /// Explicit begin/end padding (ONNX `pads` split in halves).
    pub fn pads(mut self, begin: &[usize], end: &[usize]) -> Self {
        self.padding = Padding::Explicit {
            begin: begin.to_vec(),
            end: end.to_vec(),
        };
        self
    }
    /// Any padding specification.
    pub fn padding_spec(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }
    /// Output padding (conv_transpose).
    pub fn output_padding(mut self, op: &[usize]) -> Self {
        self.output_padding = op.to_vec();
        self
    }
    /// Channel groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    /// Requested output size (conv_transpose).
    pub fn output_size(mut self, size: OutputSize) -> Self {
        self.output_size = Some(size);
        self
    }
}
