//! `tconv shape`: output sizes with the formulas filled in, and the parameter choices that
//! produce a wanted size. Pure arithmetic: no data needed.

use anyhow::{bail, Result};
use clap::Args;
use tconv::convention::{Call, Convention, FrameworkPadding};
use tconv::{AxisGeometry, ConvParams, Geometry, Op, OutputSize, Padding};

use crate::args::{parse_list, List};

/// Flags of `tconv shape`.
#[derive(Args, Debug)]
pub struct ShapeArgs {
    /// Input spatial extents (e.g. 4,4), or a full shape N,C,H,W.
    #[arg(long, value_parser = parse_list)]
    pub input: List,
    /// Kernel extents (e.g. 4,4), or one number for all axes.
    #[arg(long, value_parser = parse_list)]
    pub kernel: List,
    /// Stride.
    #[arg(long, value_parser = parse_list)]
    pub stride: Option<List>,
    /// Symmetric padding.
    #[arg(long, value_parser = parse_list, conflicts_with = "pads")]
    pub padding: Option<List>,
    /// ONNX pads (begins, then ends).
    #[arg(long, value_parser = parse_list)]
    pub pads: Option<List>,
    /// Dilation.
    #[arg(long, value_parser = parse_list)]
    pub dilation: Option<List>,
    /// Output padding (conv-transpose).
    #[arg(long, value_parser = parse_list)]
    pub output_padding: Option<List>,
    /// List the conv-transpose padding / output_padding choices giving this spatial size.
    #[arg(long, value_parser = parse_list)]
    pub want: Option<List>,
}

/// The general output-size formula of `op` with one axis's numbers filled in, e.g.
/// `(2-1)·2 - 1 - 1 + 1·(3-1) + 1 + 1 = 4` (shared by `shape`, `explain` and the pictures).
pub fn size_arithmetic(op: Op, a: &AxisGeometry) -> String {
    match op {
        Op::ConvTranspose => format!(
            "({}-1)·{} - {} - {} + {}·({}-1) + {} + 1 = {}",
            a.input,
            a.stride,
            a.pad_begin,
            a.pad_end,
            a.dilation,
            a.kernel,
            a.output_padding,
            a.output
        ),
        Op::Conv => format!(
            "floor(({} + {} + {} - {}·({}-1) - 1) / {}) + 1 = {}",
            a.input, a.pad_begin, a.pad_end, a.dilation, a.kernel, a.stride, a.output
        ),
    }
}

fn list<T: ToString>(v: impl IntoIterator<Item = T>) -> String {
    format!(
        "[{}]",
        v.into_iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Run `tconv shape`.
pub fn run(a: &ShapeArgs) -> Result<String> {
    let (spatial, kernel) = shapes(a)?;
    let dims = kernel.len();
    let mut x = vec![1, 1];
    x.extend(&spatial);
    let mut w = vec![1, 1];
    w.extend(&kernel);
    let (p, pt) = params(a)?;
    let shape = Shape { x, w, p, pt };
    let mut s = format!(
        "input spatial {}, kernel {}\n",
        list(&spatial),
        list(&kernel)
    );
    shape.conv(&mut s);
    let gt = shape.conv_transpose(&mut s)?;
    shape.auto_pad(&mut s);
    shape.frameworks(&mut s);
    if let Some(List(want)) = &a.want {
        if want.len() != dims {
            bail!(
                "--want has {} values; give {dims} (one per spatial axis)",
                want.len()
            );
        }
        shape.choices(&gt, want, &mut s);
    }
    Ok(s)
}

/// The input's spatial extents and the kernel's, one per axis (a single kernel extent
/// serves every axis).
fn shapes(a: &ShapeArgs) -> Result<(Vec<usize>, Vec<usize>)> {
    let (input, kernel_arg) = (&a.input.0, &a.kernel.0);
    let dims = if kernel_arg.len() > 1 {
        kernel_arg.len()
    } else {
        input.len().max(1)
    };
    let spatial: Vec<usize> = if input.len() == dims + 2 {
        input[2..].to_vec()
    } else if input.len() == dims {
        input.clone()
    } else {
        bail!(
            "--input has {} values; give {dims} spatial extents or a full shape of {} values",
            input.len(),
            dims + 2
        );
    };
    let kernel: Vec<usize> = if kernel_arg.len() == 1 {
        vec![kernel_arg[0]; dims]
    } else {
        kernel_arg.clone()
    };
    Ok((spatial, kernel))
}

/// The parameters for the conv, and for the transposed conv (the same plus output_padding).
fn params(a: &ShapeArgs) -> Result<(ConvParams, ConvParams)> {
    let mut p = ConvParams::new();
    if let Some(s) = &a.stride {
        p = p.stride(&s.0);
    }
    if let Some(d) = &a.dilation {
        p = p.dilation(&d.0);
    }
    if let Some(pad) = &a.padding {
        p = p.padding(&pad.0);
    }
    if let Some(pads) = &a.pads {
        p.padding = Padding::from_onnx_pads(&pads.0)
            .ok_or_else(|| anyhow::anyhow!("--pads needs an even count, got {}", pads.0.len()))?;
    }
    let mut pt = p.clone();
    if let Some(op) = &a.output_padding {
        pt = pt.output_padding(&op.0);
    }
    Ok((p, pt))
}

/// One channel's shapes (`x`, `w`) and the parameters of each op.
struct Shape {
    x: Vec<usize>,
    w: Vec<usize>,
    p: ConvParams,
    pt: ConvParams,
}

impl Shape {
    /// The conv's formula and sizes, or why it is impossible.
    fn conv(&self, s: &mut String) {
        s.push_str("\nconv: out = floor((in + p_begin + p_end - d·(k-1) - 1) / s) + 1\n");
        match Geometry::new(Op::Conv, &self.x, &self.w, None, &self.p) {
            Ok(g) => {
                for (i, ax) in g.axes.iter().enumerate() {
                    s.push_str(&format!("  axis {i}: {}\n", size_arithmetic(Op::Conv, ax)));
                }
                s.push_str(&format!(
                    "  output spatial {}\n",
                    list(g.axes.iter().map(|a| a.output))
                ));
            }
            Err(e) => s.push_str(&format!("  impossible: {e}\n")),
        }
    }

    /// The transposed conv's formula and sizes (an error where it is impossible).
    fn conv_transpose(&self, s: &mut String) -> Result<Geometry> {
        s.push_str(
            "\nconv_transpose: out = (in-1)·s - p_begin - p_end + d·(k-1) + output_padding + 1\n",
        );
        let gt = Geometry::new(Op::ConvTranspose, &self.x, &self.w, None, &self.pt)?;
        for (i, ax) in gt.axes.iter().enumerate() {
            s.push_str(&format!(
                "  axis {i}: {}\n",
                size_arithmetic(Op::ConvTranspose, ax)
            ));
        }
        s.push_str(&format!(
            "  output spatial {}\n",
            list(gt.axes.iter().map(|a| a.output))
        ));
        Ok(gt)
    }

    /// Both ops' sizes and pads under each ONNX `auto_pad`.
    fn auto_pad(&self, s: &mut String) {
        s.push_str("\nONNX auto_pad (padding flags ignored):\n");
        for (name, pad) in [
            ("SAME_UPPER", Padding::SameUpper),
            ("SAME_LOWER", Padding::SameLower),
            ("VALID", Padding::Valid),
        ] {
            let show = |op: Op, params: ConvParams| match Geometry::new(
                op, &self.x, &self.w, None, &params,
            ) {
                Ok(g) => format!(
                    "{} (pads begin {}, end {})",
                    list(g.axes.iter().map(|a| a.output)),
                    list(g.axes.iter().map(|a| a.pad_begin)),
                    list(g.axes.iter().map(|a| a.pad_end))
                ),
                Err(e) => format!("impossible: {e}"),
            };
            s.push_str(&format!(
                "  {name:<10} conv {}; conv_transpose {}\n",
                show(Op::Conv, self.p.clone().padding_spec(pad.clone())),
                show(Op::ConvTranspose, self.pt.clone().padding_spec(pad))
            ));
        }
    }

    /// The transposed conv of TensorFlow / Keras and of JAX under SAME and VALID (stride and
    /// dilation as given), in tconv's (PyTorch's) parameters: what a port must pass.
    fn frameworks(&self, s: &mut String) {
        s.push_str(
            "\nTensorFlow / Keras and JAX conv_transpose (padding flags ignored), as tconv's (PyTorch's) parameters:\n",
        );
        // One image and one channel, in the frameworks' layouts: (1, *spatial, 1), (*k, 1, 1).
        let x: Vec<usize> = [1]
            .into_iter()
            .chain(self.x[2..].iter().copied())
            .chain([1])
            .collect();
        let w: Vec<usize> = self.w[2..].iter().copied().chain([1, 1]).collect();
        let call = |padding| Call {
            strides: self.p.stride.clone(),
            dilations: self.p.dilation.clone(),
            padding,
            output_size: None,
            groups: 1,
        };
        for (name, convention, padding, note) in [
            (
                "TF/Keras SAME",
                Convention::tensorflow(),
                FrameworkPadding::Same,
                "Keras' size; tf.nn takes any output_shape whose SAME conv gives the input back",
            ),
            (
                "TF/Keras VALID",
                Convention::tensorflow(),
                FrameworkPadding::Valid,
                "Keras' size",
            ),
            (
                "JAX SAME",
                Convention::jax(),
                FrameworkPadding::Same,
                "weight: the JAX kernel flipped",
            ),
            (
                "JAX VALID",
                Convention::jax(),
                FrameworkPadding::Valid,
                "weight: the JAX kernel flipped",
            ),
        ] {
            let shown = convention
                .params(Op::ConvTranspose, &x, &w, &call(padding))
                .and_then(|p| {
                    let g = Geometry::new(Op::ConvTranspose, &self.x, &self.w, None, &p)?;
                    Ok(format!(
                        "{} (pads begin {}, end {}, output_padding {}; {note})",
                        list(g.axes.iter().map(|a| a.output)),
                        list(g.axes.iter().map(|a| a.pad_begin)),
                        list(g.axes.iter().map(|a| a.pad_end)),
                        list(g.axes.iter().map(|a| a.output_padding)),
                    ))
                })
                .unwrap_or_else(|e| format!("impossible: {e}"));
            s.push_str(&format!("  {name:<14} {shown}\n"));
        }
    }

    /// The symmetric padding and output_padding choices per axis giving the spatial size
    /// `want` (`gt`: the transposed conv as given), and what ONNX's `output_shape` derives.
    fn choices(&self, gt: &Geometry, want: &[usize], s: &mut String) {
        s.push_str(&format!(
            "\nconv_transpose choices giving output spatial {}:\n",
            list(want)
        ));
        for (i, ax) in gt.axes.iter().enumerate() {
            let reach = ax.dilation * (ax.kernel - 1);
            let natural = (ax.input - 1) * ax.stride + reach + 1;
            let mut choices = Vec::new();
            for op in 0..ax.stride.max(ax.dilation) {
                let total = (natural + op) as i64 - want[i] as i64;
                if total >= 0 && total % 2 == 0 {
                    choices.push(format!("padding {} with output_padding {op}", total / 2));
                }
            }
            if choices.is_empty() {
                s.push_str(&format!(
                    "  axis {i}: no symmetric padding gives {}",
                    want[i]
                ));
            } else {
                s.push_str(&format!("  axis {i}: {}", choices.join("; ")));
            }
            let total = natural as i64 - want[i] as i64;
            s.push_str(&format!(
                " (ONNX output_shape={} derives total padding {total}: begin {}, end {})\n",
                want[i],
                total - total.div_euclid(2),
                total.div_euclid(2)
            ));
        }
        let mut check = self.pt.clone();
        check.output_size = Some(OutputSize::Onnx(want.to_vec()));
        if let Err(e) = Geometry::new(Op::ConvTranspose, &self.x, &self.w, None, &check) {
            s.push_str(&format!("  (ONNX output_shape is impossible here: {e})\n"));
        }
    }
}
