//! The `tconv` command. `main → run → ExitCode`; every failure is one line on stderr and
//! exit code 2, and no output file is created or truncated on failure.

mod args;
mod bench;
mod canvas;
mod compute;
mod data;
mod demo;
mod explain;
mod overlap;
mod port;
mod render;
mod shape;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tconv::Op;

use args::TransposeArgs;
use compute::ComputeArgs;

/// Transposed convolution (and the convolution it is the transpose of): compute it, explain
/// it step by step, and plan shapes. PyTorch/ONNX semantics and layouts.
#[derive(Parser, Debug)]
#[command(name = "tconv", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The explainer's worked examples, computed and shown step by step.
    #[command(after_help = "Examples:\n  tconv demo\n  tconv demo --html demo.html")]
    Demo {
        /// Also write the examples as a self-contained, steppable HTML page.
        #[arg(long)]
        html: Option<std::path::PathBuf>,
    },
    /// Ordinary convolution (cross-correlation), as torch.nn.functional.conv2d / ONNX Conv.
    #[command(
        after_help = "Examples:\n  tconv conv --input '[[1,2,3],[4,5,6],[7,8,9]]' --weight '[[1,0],[0,-1]]'\n  tconv conv --input x.npy --weight w.npy --bias b.npy --stride 2,2 --padding 1,1 --dilation 1,1 --groups 1 --output y.npy\n  tconv conv --convention tf --framework-padding same --stride 2 --input x_nhwc.npy --weight w_hwio.npy --output y_nhwc.npy"
    )]
    Conv(ComputeArgs),
    /// Transposed convolution, as torch.nn.functional.conv_transpose2d / ONNX ConvTranspose.
    #[command(
        after_help = "Examples:\n  tconv conv-transpose --input '[[1,2],[3,4]]' --weight '[[1,0],[0,-1]]' --stride 2\n  tconv conv-transpose --input x.npy --weight w.npy --bias b.npy --stride 2,2 --padding 1,1 --output-padding 0,0 --dilation 1,1 --groups 1 --output y.npy\n  tconv conv-transpose --convention tf --framework-padding same --stride 2 --output-size 8,8 --input x_nhwc.npy --weight w_hwoi.npy --output y_nhwc.npy\n  tconv conv-transpose --convention jax --framework-padding same --stride 2 --input x_nhwc.npy --weight w_hwio.npy --output y_nhwc.npy"
    )]
    ConvTranspose {
        #[command(flatten)]
        args: ComputeArgs,
        #[command(flatten)]
        transpose: TransposeArgs,
    },
    /// Show the arithmetic of a small 1-D or 2-D problem step by step.
    #[command(subcommand)]
    Explain(ExplainCommand),
    /// Output sizes with the formulas filled in; parameter choices for a wanted size.
    #[command(
        after_help = "Examples:\n  tconv shape --input 4,4 --kernel 4 --stride 2 --padding 1\n  tconv shape --input 16,16 --kernel 3 --stride 2 --want 32,32"
    )]
    Shape(shape::ShapeArgs),
    /// Time the standard layer suite (or one layer) through the planner.
    #[command(
        after_help = "Examples:\n  tconv bench --threads 1\n  tconv bench --layer dcgan1 --threads 2 --json\n  tconv bench --input 16,512,4,4 --c-out 256 --kernel 4,4 --stride 2 --padding 1"
    )]
    Bench(bench::BenchArgs),
    /// Checkerboard diagnostic: kernel taps reaching each output position, with a verdict.
    #[command(
        after_help = "Examples:\n  tconv overlap --kernel 3 --stride 2\n  tconv overlap --kernel 4 --stride 2 --padding 1 --size 6 --svg overlap.svg --png overlap.png\n  tconv overlap --kernel 3 --stride 2 --dims 1 --size 8"
    )]
    Overlap(overlap::OverlapArgs),
    /// Show how a layer would be computed: algorithm, why, kernel, shapes, workspace, threads.
    #[command(
        after_help = "Examples:\n  tconv plan --layer dcgan1\n  tconv plan --input 1,64,32,32 --c-out 32 --kernel 3 --stride 2 --padding 1 --output-padding 1 --threads 2"
    )]
    Plan(bench::PlanArgs),
    /// Another framework's call (TensorFlow / Keras, JAX / Flax) in PyTorch's terms: layouts, parameters, the equivalent PyTorch call; converts the kernel.
    #[command(
        after_help = "Examples:\n  tconv port conv-transpose --convention jax --framework-padding same --stride 2 --input-shape 8,16,16,64 --kernel-shape 4,4,64,32\n  tconv port conv-transpose --convention tf --framework-padding same --stride 2 --output-size 32,32 --input-shape 8,16,16,64 --weight w_hwoi.npy --weight-out w_torch.npy\n  tconv port conv --convention tf --framework-padding same --stride 2 --input-shape 1,224,224,3 --kernel-shape 7,7,3,64"
    )]
    Port(port::PortArgs),
}

#[derive(clap::Args, Debug)]
struct ExplainArgs {
    #[command(flatten)]
    problem: args::ProblemArgs,
    /// Refuse problems with more steps than this (one step per input element for
    /// conv-transpose, per output element for conv).
    #[arg(long, default_value_t = 64)]
    max_steps: usize,
    /// Also draw the whole computation as one SVG picture.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// Also write a self-contained HTML page that steps through the computation.
    #[arg(long)]
    html: Option<std::path::PathBuf>,
    /// Also draw the picture as PNG.
    #[arg(long)]
    png: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ExplainCommand {
    /// Explain a convolution: each output element as a dot product.
    #[command(
        after_help = "Example:\n  tconv explain conv --input '[[1,2,3],[4,5,6],[7,8,9]]' --weight '[[1,0],[0,-1]]'"
    )]
    Conv(ExplainArgs),
    /// Explain a transposed convolution: scatter, overlaps, zero insertion, matrix.
    #[command(
        after_help = "Example:\n  tconv explain conv-transpose --input '[[1,2],[3,4]]' --weight '[[1,0],[0,-1]]' --stride 2 --padding 1 --output-padding 1"
    )]
    ConvTranspose {
        #[command(flatten)]
        args: ExplainArgs,
        #[command(flatten)]
        transpose: TransposeArgs,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { html } => {
            if let Some(path) = &html {
                data::write_atomic(path, demo::demo_html()?.as_bytes())?;
                eprintln!("wrote {}", path.display());
            }
            print!("{}", demo::demo_text()?)
        }
        Command::Overlap(a) => overlap::run(&a)?,
        Command::Conv(a) => compute::run(Op::Conv, &a, None)?,
        Command::ConvTranspose { args, transpose } => {
            compute::run(Op::ConvTranspose, &args, Some(&transpose))?
        }
        Command::Explain(e) => {
            let (op, a, t) = match &e {
                ExplainCommand::Conv(a) => (Op::Conv, a, None),
                ExplainCommand::ConvTranspose { args, transpose } => {
                    (Op::ConvTranspose, args, Some(transpose))
                }
            };
            let params = a.problem.params(t).map_err(anyhow::Error::msg)?;
            let loaded = compute::load(&a.problem)?;
            let text =
                explain::explain(op, &loaded, &params, explain::Sections::all(), a.max_steps)?;
            let mut files = Vec::new();
            if a.svg.is_some() || a.html.is_some() || a.png.is_some() {
                let problem = render::Problem::new(op, &loaded, &params, a.max_steps.max(64) * 16)?;
                let picture = render::svg::explain_svg(&problem)?;
                if let Some(path) = &a.png {
                    files.push((path.clone(), overlap::png_bytes(&picture)?));
                }
                if let Some(path) = &a.svg {
                    files.push((path.clone(), picture.into_bytes()));
                }
                if let Some(path) = &a.html {
                    let title = format!("tconv explain {}", args::op_label(op));
                    let frames = render::html::frames(&problem, &title)?;
                    files.push((
                        path.clone(),
                        render::html::page(&title, &[frames]).into_bytes(),
                    ));
                }
            }
            data::write_all_atomic(&files)?;
            for (path, _) in &files {
                eprintln!("wrote {}", path.display());
            }
            print!("{text}");
        }
        Command::Shape(a) => print!("{}", shape::run(&a)?),
        Command::Port(a) => print!("{}", port::run(&a)?),
        Command::Bench(a) => bench::run(&a)?,
        Command::Plan(a) => bench::plan(&a)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing to a closed pipe (`tconv bench | head -1`) would
    // panic; with the default action the process ends quietly, as `cat` or `ls` would.
    #[cfg(unix)]
    // SAFETY: called first, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One clear line: clap's first paragraph (the problem and the arguments it
            // names), without its "error: " prefix.
            let text = e.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = match first.join(" ") {
                l if l.is_empty() => "invalid arguments".to_string(),
                l => l,
            };
            eprintln!("tconv: {} (try --help)", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tconv: {e:#}");
            ExitCode::from(2)
        }
    }
}
