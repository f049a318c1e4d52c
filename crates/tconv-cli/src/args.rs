//! Command-line arguments, in the user's words ("low" args). `params()` turns them into the
//! library's [`ConvParams`]; validation happens in the library, which names the numbers.

use clap::{Args, ValueEnum};
use tconv::{ConvParams, Op, OutputSize, Padding};

/// A comma list of non-negative integers, as one argument value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct List(pub Vec<usize>);

/// Parse `2` or `2,2` (one value for all axes, or one per spatial axis).
pub fn parse_list(s: &str) -> Result<List, String> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{v}' is not a non-negative integer (in '{s}')"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(List)
}

/// ONNX `auto_pad`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AutoPad {
    /// Output `in*s` (transpose) or `ceil(in/s)` (conv); odd padding unit at the end.
    SameUpper,
    /// As same-upper, odd unit at the beginning.
    SameLower,
    /// No padding.
    Valid,
}

/// Another framework's conventions for the compute commands' arrays and padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConventionName {
    /// TensorFlow / Keras: data (N, *spatial, C); kernels (*k, C_in, C_out) for conv and
    /// (*k, C_out, C_in) for conv-transpose; --framework-padding is the forward conv's, with
    /// --output-size as tf.nn.conv_transpose's output_shape or --output-padding as Keras'.
    Tf,
    /// JAX lax / Flax: data (N, *spatial, C); kernels (*k, C_in, C_out), conv-transpose's not
    /// flipped (lax.conv_transpose's default); --framework-padding pads the stride-dilated input.
    Jax,
    /// As jax, with lax.conv_transpose(.., transpose_kernel=True): kernels as TensorFlow's.
    JaxTransposeKernel,
}

/// Parse a framework padding: `same`, `same-lower`, `valid`, or `begin:end` pairs per
/// spatial axis, comma-separated (negative values allowed: `1:2,0:-1`).
pub fn parse_framework_padding(s: &str) -> Result<tconv::convention::FrameworkPadding, String> {
    use tconv::convention::FrameworkPadding as F;
    match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "same" => return Ok(F::Same),
        "same-lower" => return Ok(F::SameLower),
        "valid" => return Ok(F::Valid),
        _ => {}
    }
    s.split(',')
        .map(|pair| {
            let (b, e) = pair.split_once(':').ok_or_else(|| {
                format!("'{pair}' is not begin:end (in '{s}'; or give same, same-lower, valid)")
            })?;
            let num = |v: &str| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("'{v}' is not an integer (in '{s}')"))
            };
            Ok((num(b)?, num(e)?))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(F::Explicit)
}

/// The flags that describe another framework's call (`--convention` and its options).
#[derive(Args, Clone, Debug, Default)]
pub struct ConventionArgs {
    /// Read and write the arrays, and read the padding, as another framework does
    /// (default: PyTorch / ONNX). Needs --framework-padding; --padding, --pads, --auto-pad
    /// and --output-shape are PyTorch's / ONNX's and do not apply.
    #[arg(long, value_enum, requires = "framework_padding")]
    pub convention: Option<ConventionName>,
    /// The framework's padding argument: same, valid, same-lower (JAX conv), or begin:end per
    /// spatial axis (e.g. 1:2,0:1; JAX's transposed conv allows negative values).
    #[arg(long, value_parser = parse_framework_padding, requires = "convention", allow_hyphen_values = true)]
    pub framework_padding: Option<tconv::convention::FrameworkPadding>,
    /// With --convention tf: the data's channel axis comes first (data_format NCHW).
    #[arg(long, requires = "convention")]
    pub channels_first: bool,
    /// With --convention jax: explicit pairs are the forward conv's padding
    /// (lax.conv_transpose(.., use_consistent_padding=True)).
    #[arg(long, requires = "convention")]
    pub consistent_padding: bool,
}

/// Printed result format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A matrix for small results, a shape summary otherwise.
    Text,
    /// Nested JSON lists.
    Json,
}

/// Data and parameter flags shared by the compute and explain commands.
#[derive(Args, Clone, Debug)]
pub struct ProblemArgs {
    /// Input x: a .npy file (N, C_in, *spatial) or (C_in, *spatial), or inline JSON lists.
    /// A bare 1-D/2-D input with a bare kernel means one image with one channel.
    #[arg(long, short = 'x')]
    pub input: String,
    /// Weight: .npy or inline JSON, PyTorch layout (conv: C_out, C_in/g, *k;
    /// conv-transpose: C_in, C_out/g, *k).
    #[arg(long, short = 'w')]
    pub weight: String,
    /// Bias (C_out,): .npy or inline JSON.
    #[arg(long, short = 'b')]
    pub bias: Option<String>,
    /// Stride: one number for all axes or a comma list.
    #[arg(long, value_parser = parse_list)]
    pub stride: Option<List>,
    /// Symmetric (PyTorch) padding: one number or a comma list.
    #[arg(long, value_parser = parse_list, conflicts_with_all = ["pads", "auto_pad"])]
    pub padding: Option<List>,
    /// ONNX pads: begin for each axis, then end for each axis (e.g. 1,2,1,2).
    #[arg(long, value_parser = parse_list, conflicts_with = "auto_pad")]
    pub pads: Option<List>,
    /// ONNX auto_pad.
    #[arg(long, value_enum)]
    pub auto_pad: Option<AutoPad>,
    /// Dilation: one number or a comma list.
    #[arg(long, value_parser = parse_list)]
    pub dilation: Option<List>,
    /// Channel groups.
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
}

/// Flags only conv-transpose has.
#[derive(Args, Clone, Debug, Default)]
pub struct TransposeArgs {
    /// Extra output at the end of each axis (must be < stride or < dilation).
    #[arg(long, value_parser = parse_list)]
    pub output_padding: Option<List>,
    /// Requested spatial output size, PyTorch style (output_padding is derived).
    #[arg(long, value_parser = parse_list, conflicts_with = "output_shape")]
    pub output_size: Option<List>,
    /// Requested spatial output size, ONNX `output_shape` style (padding is derived).
    #[arg(long, value_parser = parse_list)]
    pub output_shape: Option<List>,
}

impl ProblemArgs {
    /// The library parameters these flags describe.
    pub fn params(&self, transpose: Option<&TransposeArgs>) -> Result<ConvParams, String> {
        let mut p = ConvParams::new().groups(self.groups);
        if let Some(s) = &self.stride {
            p = p.stride(&s.0);
        }
        if let Some(d) = &self.dilation {
            p = p.dilation(&d.0);
        }
        if let Some(pad) = &self.padding {
            p = p.padding(&pad.0);
        }
        if let Some(pads) = &self.pads {
            p.padding = Padding::from_onnx_pads(&pads.0).ok_or_else(|| {
                format!(
                    "--pads needs an even count (begins then ends), got {}",
                    pads.0.len()
                )
            })?;
        }
        p.padding = match self.auto_pad {
            Some(AutoPad::SameUpper) => Padding::SameUpper,
            Some(AutoPad::SameLower) => Padding::SameLower,
            Some(AutoPad::Valid) => Padding::Valid,
            None => p.padding,
        };
        if let Some(t) = transpose {
            if let Some(op) = &t.output_padding {
                p = p.output_padding(&op.0);
            }
            if let Some(s) = &t.output_size {
                p = p.output_size(OutputSize::Torch(s.0.clone()));
            }
            if let Some(s) = &t.output_shape {
                p = p.output_size(OutputSize::Onnx(s.0.clone()));
            }
        }
        Ok(p)
    }
}

/// The command-line name of an op.
pub fn op_label(op: Op) -> &'static str {
    match op {
        Op::Conv => "conv",
        Op::ConvTranspose => "conv-transpose",
    }
}
