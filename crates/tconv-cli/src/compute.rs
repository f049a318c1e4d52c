//! `tconv conv` / `tconv conv-transpose`: load, compute, print or write.

use std::path::PathBuf;

use anyhow::{bail, Result};
use ndarray::{ArrayD, Ix1};
use tconv::npy::NpyArray;
use tconv::{ConvParams, Element, Op};

use crate::args::{ConventionArgs, Format, ProblemArgs, TransposeArgs};
use crate::data;
use crate::port::{convention_call, CallFlags};
use tconv::convention::{Call, Convention};

/// The arrays of a problem, in the input's dtype, with batch/channel axes in place.
pub struct Loaded {
    pub x: NpyArray,
    pub w: NpyArray,
    pub b: Option<NpyArray>,
    /// Bare spatial input and kernel were given: two leading axes were added to each.
    pub bare: bool,
}

/// Load the arrays named by the flags. A bare 1-D/2-D kernel (rank < 3) means one image with
/// one channel: the input must then be bare too.
pub fn load(args: &ProblemArgs) -> Result<Loaded> {
    let x = data::load(&args.input, "input")?;
    let w = data::load(&args.weight, "weight")?;
    let b = args
        .bias
        .as_ref()
        .map(|b| data::load(b, "bias"))
        .transpose()?;
    let w = data::same_dtype(&w, &x);
    let b = b.map(|b| data::same_dtype(&b, &x));
    let bare = w.shape().len() < 3;
    if bare {
        if w.shape().is_empty() || x.shape().len() != w.shape().len() {
            bail!(
                "a bare kernel of shape {:?} needs a bare input with the same number of axes, but the input has shape {:?} (or give full shapes: input (N, C, *spatial), weight (C, C', *k))",
                w.shape(),
                x.shape()
            );
        }
        return Ok(Loaded {
            x: data::expand(x, 2),
            w: data::expand(w, 2),
            b,
            bare,
        });
    }
    Ok(Loaded { x, w, b, bare })
}

/// The bias as the 1-D view the library takes.
fn bias_view<T: Element>(b: &ArrayD<T>) -> Result<ndarray::ArrayView1<'_, T>> {
    match b.view().into_dimensionality::<Ix1>() {
        Ok(v) => Ok(v),
        Err(_) => bail!("bias has shape {:?}; it must be 1-D, (C_out,)", b.shape()),
    }
}

fn run_typed<T: Element>(
    op: Op,
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    b: Option<&ArrayD<T>>,
    params: &ConvParams,
) -> Result<ArrayD<T>> {
    let b = b.map(bias_view).transpose()?;
    let y = match op {
        Op::Conv => tconv::conv(x, w, b, params),
        Op::ConvTranspose => tconv::conv_transpose(x, w, b, params),
    };
    Ok(y?)
}

/// Compute `op` on loaded data; the result has the input's dtype (and is bare if the input was).
pub fn compute(op: Op, l: &Loaded, params: &ConvParams) -> Result<NpyArray> {
    let y = match (&l.x, &l.w, &l.b) {
        (NpyArray::F32(x), NpyArray::F32(w), b) => {
            let b = b.as_ref().map(|b| b.to_f32());
            NpyArray::F32(run_typed(op, x, w, b.as_ref(), params)?)
        }
        (x, w, b) => {
            let b = b.as_ref().map(|b| b.to_f64());
            NpyArray::F64(run_typed(op, &x.to_f64(), &w.to_f64(), b.as_ref(), params)?)
        }
    };
    Ok(if l.bare { data::squeeze(y, 2) } else { y })
}

/// Flags of the compute commands.
#[derive(clap::Args, Debug)]
pub struct ComputeArgs {
    #[command(flatten)]
    pub problem: ProblemArgs,
    /// Write the result to this .npy file (dtype of the input) instead of printing it.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// How to print the result when no --output is given.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Upstream gradient dL/dy (.npy or inline JSON, shaped like the output): compute the
    /// gradients asked for with --grad-input / --grad-weight / --grad-bias.
    #[arg(long)]
    pub grad_output: Option<String>,
    /// Write dL/dx here (needs --grad-output).
    #[arg(long, requires = "grad_output")]
    pub grad_input: Option<PathBuf>,
    /// Write dL/dw here (needs --grad-output).
    #[arg(long, requires = "grad_output")]
    pub grad_weight: Option<PathBuf>,
    /// Write dL/db here (needs --grad-output).
    #[arg(long, requires = "grad_output")]
    pub grad_bias: Option<PathBuf>,
    #[command(flatten)]
    pub frameworks: ConventionArgs,
}

fn backward_typed<T: Element>(
    op: Op,
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    gy: &ArrayD<T>,
    params: &ConvParams,
    wanted: tconv::Wanted,
) -> Result<tconv::Gradients<T>> {
    let o = tconv::PlanOptions::default();
    Ok(match op {
        Op::Conv => tconv::conv_backward(x, w, gy, params, wanted, &o)?,
        Op::ConvTranspose => tconv::conv_transpose_backward(x, w, gy, params, wanted, &o)?,
    })
}

/// The requested gradients as arrays of the input's dtype: (dx, dw, db).
fn gradients(
    op: Op,
    l: &Loaded,
    gy: NpyArray,
    params: &ConvParams,
    wanted: tconv::Wanted,
) -> Result<[Option<NpyArray>; 3]> {
    let gy = data::same_dtype(&gy, &l.x);
    let gy = if l.bare { data::expand(gy, 2) } else { gy };
    let out = match (&l.x, &l.w, &gy) {
        (NpyArray::F32(x), NpyArray::F32(w), NpyArray::F32(gy)) => {
            let g = backward_typed(op, x, w, gy, params, wanted)?;
            [
                g.input.map(NpyArray::F32),
                g.weight.map(NpyArray::F32),
                g.bias.map(NpyArray::F32),
            ]
        }
        (x, w, gy) => {
            let g = backward_typed(op, &x.to_f64(), &w.to_f64(), &gy.to_f64(), params, wanted)?;
            [
                g.input.map(NpyArray::F64),
                g.weight.map(NpyArray::F64),
                g.bias.map(NpyArray::F64),
            ]
        }
    };
    // Bare problems give bare gradients.
    let [dx, dw, db] = out;
    Ok(if l.bare {
        [
            dx.map(|a| data::squeeze(a, 2)),
            dw.map(|a| data::squeeze(a, 2)),
            db,
        ]
    } else {
        [dx, dw, db]
    })
}

/// The result (where `y` is wanted) and the gradients asked for, all in the convention's
/// layouts.
type ConventionOutputs<T> = (Option<ArrayD<T>>, tconv::Gradients<T>);

#[allow(clippy::too_many_arguments)]
fn convention_typed<T: Element>(
    op: Op,
    (convention, call): &(Convention, Call),
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    b: Option<&ArrayD<T>>,
    gy: Option<&ArrayD<T>>,
    want_y: bool,
    wanted: tconv::Wanted,
) -> Result<ConventionOutputs<T>> {
    let b = b.map(bias_view).transpose()?;
    let y = want_y
        .then(|| convention.run(op, x.view(), w.view(), b, call))
        .transpose()?;
    let grads = match gy {
        Some(gy) => convention.backward(
            op,
            x.view(),
            w.view(),
            gy.view(),
            call,
            wanted,
            &tconv::PlanOptions::default(),
        )?,
        None => tconv::Gradients {
            input: None,
            weight: None,
            bias: None,
        },
    };
    Ok((y, grads))
}

/// The PyTorch / ONNX padding flag given, if any (they do not apply with `--convention`).
fn pytorch_padding_flag(p: &ProblemArgs, t: Option<&TransposeArgs>) -> Option<&'static str> {
    [
        (p.padding.is_some(), "--padding"),
        (p.pads.is_some(), "--pads"),
        (p.auto_pad.is_some(), "--auto-pad"),
        (
            t.is_some_and(|t| t.output_shape.is_some()),
            "--output-shape",
        ),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag))
}

/// A compute command with `--convention`: arrays read and written in that framework's
/// layouts, its padding rules. `outputs` are checked; files are written all or none.
fn run_convention(op: Op, args: &ComputeArgs, t: Option<&TransposeArgs>) -> Result<()> {
    let p = &args.problem;
    let x = data::load(&p.input, "input")?;
    let w = data::same_dtype(&data::load(&p.weight, "weight")?, &x);
    let b = p
        .bias
        .as_ref()
        .map(|b| data::load(b, "bias").map(|b| data::same_dtype(&b, &x)))
        .transpose()?;
    let gy = args
        .grad_output
        .as_ref()
        .map(|g| data::load(g, "grad-output").map(|g| data::same_dtype(&g, &x)))
        .transpose()?;
    if let Some(flag) = pytorch_padding_flag(p, t) {
        bail!("{flag} is PyTorch's / ONNX's padding; with --convention give the framework's as --framework-padding");
    }
    let flags = CallFlags {
        stride: p.stride.as_ref(),
        dilation: p.dilation.as_ref(),
        groups: p.groups,
    };
    let setup = convention_call(&args.frameworks, &flags, t, x.shape(), w.shape())?;
    let wanted = tconv::Wanted {
        input: args.grad_input.is_some(),
        weight: args.grad_weight.is_some(),
        bias: args.grad_bias.is_some(),
    };
    if gy.is_some() && !(wanted.input || wanted.weight || wanted.bias) {
        bail!("--grad-output given, but no gradient asked for: add --grad-input, --grad-weight and/or --grad-bias");
    }
    let want_y = gy.is_none() || args.output.is_some();
    // The same call in the input's dtype (`$variant` of `NpyArray`, converted by `$to`).
    macro_rules! typed {
        ($xa:expr, $variant:ident, $to:ident) => {{
            let (y, g) = convention_typed(
                op,
                &setup,
                $xa,
                &w.$to(),
                b.map(|b| b.$to()).as_ref(),
                gy.map(|g| g.$to()).as_ref(),
                want_y,
                wanted,
            )?;
            (
                y.map(NpyArray::$variant),
                [g.input, g.weight, g.bias].map(|a| a.map(NpyArray::$variant)),
            )
        }};
    }
    let (y, [dx, dw, db]) = match &x {
        NpyArray::F32(xa) => typed!(xa, F32, to_f32),
        NpyArray::F64(xa) => typed!(xa, F64, to_f64),
    };
    if args.grad_output.is_none() {
        return emit(args, &y.expect("computed without --grad-output"));
    }
    write_results(args, [y, dx, dw, db])
}

/// Write the result and the gradients to the files named for them (`--output`,
/// `--grad-input`, `--grad-weight`, `--grad-bias`): all of them or, on failure, none.
fn write_results(args: &ComputeArgs, arrays: [Option<NpyArray>; 4]) -> Result<()> {
    let paths = [
        &args.output,
        &args.grad_input,
        &args.grad_weight,
        &args.grad_bias,
    ];
    let files: Vec<(PathBuf, Vec<u8>)> = paths
        .into_iter()
        .zip(arrays)
        .filter_map(|(path, a)| Some((path.clone()?, data::npy_bytes(&a?))))
        .collect();
    data::write_all_atomic(&files)?;
    for (path, _) in &files {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Write `y` to `--output`, or print it as `--format` says.
fn emit(args: &ComputeArgs, y: &NpyArray) -> Result<()> {
    match (&args.output, args.format) {
        (Some(out), _) => {
            data::write_atomic(out, &data::npy_bytes(y))?;
            eprintln!("wrote {} {:?} {}", out.display(), y.shape(), y.dtype());
        }
        (None, Format::Json) => {
            let (shape, values) = data::display_values(y);
            println!("{}", data::nested(&shape, &values));
        }
        (None, Format::Text) => print!("{}", data::render_text(y)),
    }
    Ok(())
}

/// Run a compute command.
pub fn run(op: Op, args: &ComputeArgs, t: Option<&TransposeArgs>) -> Result<()> {
    let p = &args.problem;
    let inputs = data::file_inputs(
        [&p.input, &p.weight]
            .into_iter()
            .chain(p.bias.as_ref())
            .chain(args.grad_output.as_ref()),
    );
    let outputs: Vec<&PathBuf> = [
        &args.output,
        &args.grad_input,
        &args.grad_weight,
        &args.grad_bias,
    ]
    .into_iter()
    .flatten()
    .collect();
    for (i, out) in outputs.iter().enumerate() {
        data::check_output_path(out, &inputs)?;
        if outputs[..i].contains(out) {
            bail!("{} is named as two different outputs", out.display());
        }
    }
    if args.frameworks.convention.is_some() {
        return run_convention(op, args, t);
    }
    let params = args.problem.params(t).map_err(anyhow::Error::msg)?;
    let loaded = load(&args.problem)?;
    if let Some(gy) = &args.grad_output {
        let wanted = tconv::Wanted {
            input: args.grad_input.is_some(),
            weight: args.grad_weight.is_some(),
            bias: args.grad_bias.is_some(),
        };
        if !(wanted.input || wanted.weight || wanted.bias) {
            bail!("--grad-output given, but no gradient asked for: add --grad-input, --grad-weight and/or --grad-bias");
        }
        let gy = data::load(gy, "grad-output")?;
        let [dx, dw, db] = gradients(op, &loaded, gy, &params, wanted)?;
        let y = args
            .output
            .as_ref()
            .map(|_| compute(op, &loaded, &params))
            .transpose()?;
        return write_results(args, [y, dx, dw, db]);
    }
    emit(args, &compute(op, &loaded, &params)?)
}
