//! `tconv conv` / `tconv conv-transpose`: load, compute, print or write.

use std::path::PathBuf;

use anyhow::{bail, Result};
use ndarray::{ArrayD, Ix1};
use tconv::npy::NpyArray;
use tconv::{ConvParams, Element, Op};

use crate::args::{Format, ProblemArgs, TransposeArgs};
use crate::data;

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

fn run_typed<T: Element>(
    op: Op,
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    b: Option<&ArrayD<T>>,
    params: &ConvParams,
) -> Result<ArrayD<T>> {
    let b = match b {
        Some(b) => match b.view().into_dimensionality::<Ix1>() {
            Ok(v) => Some(v),
            Err(_) => bail!("bias has shape {:?}; it must be 1-D, (C_out,)", b.shape()),
        },
        None => None,
    };
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
}

/// Run a compute command.
pub fn run(op: Op, args: &ComputeArgs, t: Option<&TransposeArgs>) -> Result<()> {
    let params = args.problem.params(t).map_err(anyhow::Error::msg)?;
    if let Some(out) = &args.output {
        let p = &args.problem;
        let inputs = data::file_inputs([&p.input, &p.weight].into_iter().chain(p.bias.as_ref()));
        data::check_output_path(out, &inputs)?;
    }
    let loaded = load(&args.problem)?;
    let y = compute(op, &loaded, &params)?;
    match (&args.output, args.format) {
        (Some(out), _) => {
            data::write_atomic(out, &data::npy_bytes(&y))?;
            eprintln!("wrote {} {:?} {}", out.display(), y.shape(), y.dtype());
        }
        (None, Format::Json) => {
            let (shape, values) = data::display_values(&y);
            println!("{}", data::nested(&shape, &values));
        }
        (None, Format::Text) => print!("{}", data::render_text(&y)),
    }
    Ok(())
}
