//! `--convention` (the compute commands) and `tconv port`: another framework's call in
//! tconv's (PyTorch's) terms — the layouts' permutations, the parameters, and the PyTorch
//! call that computes the same, with the kernel converted on request.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use tconv::convention::{inverse, keras_output_size, Call, Convention, DataFormat, Framework};
use tconv::npy::{python_tuple, NpyArray};
use tconv::{Geometry, Op};

use crate::args::{parse_list, ConventionArgs, ConventionName, List, TransposeArgs};
use crate::data;

/// The per-axis flags a framework call shares with PyTorch's.
pub struct CallFlags<'a> {
    pub stride: Option<&'a List>,
    pub dilation: Option<&'a List>,
    pub groups: usize,
}

/// The convention and call that `--convention` and its flags describe, for arrays of
/// shapes `x_shape` and `w_shape` in that convention's layouts.
pub fn convention_call(
    c: &ConventionArgs,
    flags: &CallFlags<'_>,
    t: Option<&TransposeArgs>,
    x_shape: &[usize],
    w_shape: &[usize],
) -> Result<(Convention, Call)> {
    let Some(name) = c.convention else {
        bail!("--convention is needed: tf, jax or jax-transpose-kernel");
    };
    let framework = match name {
        ConventionName::Tf => Framework::TensorFlow,
        ConventionName::Jax | ConventionName::JaxTransposeKernel => Framework::Jax {
            transpose_kernel: name == ConventionName::JaxTransposeKernel,
            consistent_padding: c.consistent_padding,
        },
    };
    if c.consistent_padding && name == ConventionName::Tf {
        bail!("--consistent-padding is lax.conv_transpose's option; TensorFlow's explicit padding is always the forward conv's");
    }
    let mut convention = Convention {
        framework,
        data_format: DataFormat::ChannelsLast,
    };
    if c.channels_first {
        if name != ConventionName::Tf {
            bail!("--channels-first is TensorFlow's data_format NCHW; with --convention jax the data is channels-last");
        }
        convention = convention.channels_first();
    }
    let Some(padding) = c.framework_padding.clone() else {
        bail!("--framework-padding is needed with --convention: same, valid, same-lower or begin:end pairs");
    };
    let mut call = Call::new(padding.clone()).groups(flags.groups);
    if let Some(s) = flags.stride {
        call = call.strides(&s.0);
    }
    if let Some(d) = flags.dilation {
        call = call.dilations(&d.0);
    }
    match t.map(|t| (&t.output_size, &t.output_padding)) {
        Some((Some(_), Some(_))) => {
            bail!("give --output-size (TensorFlow's output_shape) or --output-padding (Keras'), not both")
        }
        Some((Some(size), None)) => call = call.output_size(&size.0),
        Some((None, Some(extra))) => {
            if name != ConventionName::Tf {
                bail!("--output-padding is Keras'; lax.conv_transpose takes none (pad the dilated input's end with --framework-padding)");
            }
            if x_shape.len() < 3 || w_shape.len() < 3 {
                bail!("with --convention the input and the weight need batch/channel axes and at least one spatial axis; got shapes {x_shape:?} and {w_shape:?}");
            }
            let spatial = match convention.data_format {
                DataFormat::ChannelsLast => &x_shape[1..x_shape.len() - 1],
                DataFormat::ChannelsFirst => &x_shape[2..],
            };
            let size = keras_output_size(
                spatial,
                &w_shape[..w_shape.len() - 2],
                &call.strides,
                &call.dilations,
                &padding,
                Some(&extra.0),
            )?;
            call = call.output_size(&size);
        }
        _ => {}
    }
    Ok((convention, call))
}

/// Which op `tconv port` translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PortOp {
    /// Ordinary convolution.
    Conv,
    /// Transposed convolution.
    ConvTranspose,
}

/// Flags of `tconv port`.
#[derive(Args, Debug)]
pub struct PortArgs {
    /// The op of the framework's call.
    #[arg(value_enum)]
    pub op: PortOp,
    #[command(flatten)]
    pub frameworks: ConventionArgs,
    /// The framework's input shape, e.g. 8,16,16,64 (batch, spatial..., channels where
    /// channels-last).
    #[arg(long, value_parser = parse_list)]
    pub input_shape: List,
    /// The framework's kernel as a .npy file (or inline JSON), to convert with --weight-out.
    #[arg(long, conflicts_with = "kernel_shape")]
    pub weight: Option<String>,
    /// The framework's kernel shape instead of its data, e.g. 4,4,64,32.
    #[arg(long, value_parser = parse_list)]
    pub kernel_shape: Option<List>,
    /// Write the kernel in tconv's (PyTorch's) layout to this .npy file.
    #[arg(long)]
    pub weight_out: Option<PathBuf>,
    /// Stride: one number for all axes or a comma list.
    #[arg(long, value_parser = parse_list)]
    pub stride: Option<List>,
    /// Dilation: one number or a comma list.
    #[arg(long, value_parser = parse_list)]
    pub dilation: Option<List>,
    /// Channel groups (JAX's feature_group_count; TensorFlow's are implied by the kernel).
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    #[command(flatten)]
    pub transpose: TransposeArgs,
}

/// `[a, b]` as the CLI's comma list.
fn commas(v: impl IntoIterator<Item = usize>) -> String {
    v.into_iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Run `tconv port`: the text it prints (and the converted kernel written where asked).
pub fn run(a: &PortArgs) -> Result<String> {
    let op = match a.op {
        PortOp::Conv => Op::Conv,
        PortOp::ConvTranspose => Op::ConvTranspose,
    };
    let t = (op == Op::ConvTranspose).then_some(&a.transpose);
    if op == Op::Conv && (a.transpose.output_size.is_some() || a.transpose.output_padding.is_some())
    {
        bail!("--output-size and --output-padding are the transposed conv's");
    }
    if a.transpose.output_shape.is_some() {
        bail!("--output-shape is ONNX's; give TensorFlow's output_shape as --output-size");
    }
    let weight = a
        .weight
        .as_ref()
        .map(|spec| data::load(spec, "weight"))
        .transpose()?;
    let w_shape: Vec<usize> = match (&weight, &a.kernel_shape) {
        (Some(w), _) => w.shape().to_vec(),
        (None, Some(k)) => k.0.clone(),
        (None, None) => {
            bail!("give the framework's kernel as --weight FILE or its shape as --kernel-shape")
        }
    };
    if let Some(out) = &a.weight_out {
        if a.weight.is_none() {
            bail!("--weight-out converts the kernel given as --weight FILE; --kernel-shape has no values to convert");
        }
        let inputs = data::file_inputs(a.weight.iter());
        data::check_output_path(out, &inputs)?;
    }
    let x_shape = &a.input_shape.0;
    let flags = CallFlags {
        stride: a.stride.as_ref(),
        dilation: a.dilation.as_ref(),
        groups: a.groups,
    };
    let (convention, call) = convention_call(&a.frameworks, &flags, t, x_shape, &w_shape)?;
    let low = convention.lower(op, x_shape, &w_shape, &call)?;
    // tconv's shapes: the data's and the kernel's axes as tconv takes them.
    let data_axes = convention.data_axes(x_shape.len());
    let back_axes = inverse(&data_axes);
    let (w_axes, flip) = convention.weight_axes(op, w_shape.len());
    let xt: Vec<usize> = data_axes.iter().map(|&i| x_shape[i]).collect();
    let wt: Vec<usize> = w_axes.iter().map(|&i| w_shape[i]).collect();
    // The input the op reads: without what a JAX conv's negative padding crops.
    let mut xc = xt.clone();
    for (n, &(b, e)) in xc[2..].iter_mut().zip(&low.crop) {
        *n -= b + e;
    }
    let g = Geometry::new(op, &xc, &wt, None, &low.params)?;
    let mut yt = g.user_output_shape();
    yt.splice(2.., low.extents(&yt[2..]));
    let y: Vec<usize> = back_axes.iter().map(|&i| yt[i]).collect();
    let name = match convention.framework {
        Framework::TensorFlow => "TensorFlow",
        Framework::Jax { .. } => "JAX",
    };
    let permute = |axes: &[usize]| {
        if axes.iter().enumerate().all(|(i, &a)| i == a) {
            "as is".to_string()
        } else {
            format!("permute{}", python_tuple(axes))
        }
    };
    let flip_axes: Vec<usize> = (2..wt.len()).collect();
    let mut s = format!("{name} {} in tconv's (PyTorch's) terms:\n", op.name());
    s.push_str(&format!(
        "  input   x {} -> x.{}: {}\n",
        python_tuple(x_shape),
        permute(&data_axes),
        python_tuple(&xt)
    ));
    s.push_str(&format!(
        "  weight  w {} -> w.{}{}: {}{}\n",
        python_tuple(&w_shape),
        permute(&w_axes),
        if flip {
            format!(".flip{}", python_tuple(&flip_axes))
        } else {
            String::new()
        },
        python_tuple(&wt),
        if flip {
            format!(" ({name} uses the kernel unflipped)")
        } else {
            String::new()
        }
    ));
    s.push_str(&format!(
        "  output  y {} in PyTorch's layout -> y.{}: {}, {name}'s\n",
        python_tuple(&yt),
        permute(&back_axes),
        python_tuple(&y)
    ));
    let per =
        |f: fn(&tconv::AxisGeometry) -> usize| -> Vec<usize> { g.axes.iter().map(f).collect() };
    let (stride, dilation) = (per(|a| a.stride), per(|a| a.dilation));
    let extra = per(|a| a.output_padding);
    // The mapped pads are never negative (`Convention::params` gives `usize` ones).
    let pad = |f: fn(&tconv::AxisGeometry) -> i64| -> Vec<usize> {
        g.axes.iter().map(|a| f(a).max(0) as usize).collect()
    };
    let (begin, end) = (pad(|a| a.pad_begin), pad(|a| a.pad_end));
    s.push_str(&format!(
        "  per axis: stride {stride:?}, dilation {dilation:?}, pads begin {begin:?}, end {end:?}{}, groups {}\n",
        if op == Op::ConvTranspose {
            format!(", output_padding {extra:?}")
        } else {
            String::new()
        },
        g.groups
    ));
    let dims = g.axes.len();
    let common = format!(
        "stride={}, dilation={}, groups={}",
        python_tuple(&stride),
        python_tuple(&dilation),
        g.groups
    );
    let symmetric: Vec<usize> = begin.iter().zip(&end).map(|(b, e)| *b.min(e)).collect();
    // A JAX conv's negative padding: the op reads the input cropped.
    let cropped = low.crop.iter().any(|&c| c != (0, 0));
    let x_in = if !cropped {
        "x".to_string()
    } else {
        let slices: Vec<String> = low
            .crop
            .iter()
            .zip(&xt[2..])
            .map(|(&(b, e), &n)| format!("{b}:{}", n - e))
            .collect();
        format!("x[:, :, {}]", slices.join(", "))
    };
    let torch = match op {
        _ if !low.reached => format!(
            "x.new_zeros({})",
            python_tuple(&[&[xt[0], g.out_channels][..], &yt[2..]].concat())
        ),
        Op::ConvTranspose => {
            let mut call = format!(
                "F.conv_transpose{dims}d(x, w, b, {common}, padding={}, output_padding={})",
                python_tuple(&symmetric),
                python_tuple(&extra)
            );
            if begin != end {
                // PyTorch crops both ends alike: crop the rest of the larger side after.
                let slices: Vec<String> = (0..dims)
                    .map(|a| {
                        let from = begin[a] - symmetric[a];
                        format!("{from}:{}", from + g.axes[a].output)
                    })
                    .collect();
                call.push_str(&format!("[:, :, {}]", slices.join(", ")));
            }
            if low.around.iter().any(|&p| p != (0, 0)) {
                // JAX's padding beyond the kernel's reach: zeros around (F.pad takes the
                // last axis first).
                let pads: Vec<usize> = low.around.iter().rev().flat_map(|&(b, e)| [b, e]).collect();
                call = format!("F.pad({call}, {})", python_tuple(&pads));
            }
            call
        }
        Op::Conv if begin == end => format!(
            "F.conv{dims}d({x_in}, w, b, {common}, padding={})",
            python_tuple(&begin)
        ),
        Op::Conv => {
            // F.pad takes the last axis first.
            let pads: Vec<usize> = (0..dims).rev().flat_map(|a| [begin[a], end[a]]).collect();
            format!(
                "F.conv{dims}d(F.pad({x_in}, {}), w, b, {common})",
                python_tuple(&pads)
            )
        }
    };
    s.push_str(&format!("  PyTorch: {torch}\n"));
    // What tconv's (PyTorch's) parameters do not express: a note on the PyTorch call and
    // the reason the tconv line names the framework's call instead of flags.
    let beyond = match (low.exact(), low.reached, cropped) {
        (true, ..) => None,
        (false, false, _) => Some((
            Some("no input position reaches the output: all zeros (with a bias, the bias)"),
            "the padding leaves no input position reaching the output",
        )),
        (false, true, true) => Some((None, "a negative padding crops the input")),
        (false, true, false) => Some((
            Some("the zeros F.pad adds are positions no input reaches; with a bias, tconv puts it there too"),
            "padding beyond the kernel's reach adds outputs no input reaches",
        )),
    };
    if let Some((note, reason)) = beyond {
        if let Some(note) = note {
            s.push_str(&format!("  note:    {note}\n"));
        }
        s.push_str(&format!(
            "  tconv:   --convention {} with --framework-padding computes it as given ({reason}: PyTorch's parameters, and tconv's, do not express it)\n",
            convention.framework.name(),
        ));
    } else {
        s.push_str(&format!(
            "  tconv:   tconv {} --stride {} --dilation {} --pads {}{} --groups {}\n",
            crate::args::op_label(op),
            commas(stride.iter().copied()),
            commas(dilation.iter().copied()),
            commas(begin.iter().chain(&end).copied()),
            if op == Op::ConvTranspose {
                format!(" --output-padding {}", commas(extra.iter().copied()))
            } else {
                String::new()
            },
            g.groups
        ));
    }
    if let (Some(out), Some(w)) = (&a.weight_out, weight) {
        let converted = match w {
            NpyArray::F32(w) => NpyArray::F32(convention.weight_to_torch(op, w.view())?),
            NpyArray::F64(w) => NpyArray::F64(convention.weight_to_torch(op, w.view())?),
        };
        data::write_atomic(out, &data::npy_bytes(&converted))?;
        eprintln!(
            "wrote {} {:?} (the weight in tconv's layout)",
            out.display(),
            converted.shape()
        );
    }
    Ok(s)
}
