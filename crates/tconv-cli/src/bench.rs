//! `tconv bench`: time layers of the standard suite (or one given on the command line)
//! through the planner, after warm-up, and report medians, minimums and GFLOP/s.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;
use tconv::{ConvParams, Element, Geometry, Op, Plan, PlanOptions};

use crate::args::{parse_list, List};

/// The suite shipped with tconv (a copy of shared/bench/suite.json).
const SUITE: &str = include_str!("../../../bench/suite.json");

/// Which layers: the suite (or one of its layers), or a single layer given by its shapes.
#[derive(Args, Debug)]
pub struct LayerArgs {
    /// A suite file (JSON with a "layers" list, as bench/suite.json).
    #[arg(long)]
    pub suite: Option<String>,
    /// Only this layer (by name); repeat or comma-separate for several.
    #[arg(long, value_delimiter = ',')]
    pub layer: Vec<String>,
    /// A single layer instead of the suite: input shape N,C,*spatial (with --c-out, --kernel…).
    #[arg(long, value_parser = parse_list)]
    pub input: Option<List>,
    /// Output channels of the single layer.
    #[arg(long)]
    pub c_out: Option<usize>,
    /// Kernel of the single layer.
    #[arg(long, value_parser = parse_list)]
    pub kernel: Option<List>,
    /// Stride of the single layer.
    #[arg(long, value_parser = parse_list)]
    pub stride: Option<List>,
    /// Padding of the single layer.
    #[arg(long, value_parser = parse_list)]
    pub padding: Option<List>,
    /// Output padding of the single layer.
    #[arg(long, value_parser = parse_list)]
    pub output_padding: Option<List>,
    /// Dilation of the single layer.
    #[arg(long, value_parser = parse_list)]
    pub dilation: Option<List>,
    /// Groups of the single layer.
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
}

/// Flags of `tconv bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub layers: LayerArgs,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Timed runs per layer (after warm-up).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Warm-up runs per layer (at least; see --warmup-ms).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Keep warming up until this many milliseconds have passed (after the --warmup runs):
    /// on the 2-core VM of 2026-12-07 a small layer at 2 threads (vnet3d) ran 1.0-1.4 ms
    /// after 3 warm-up runs and 0.57-0.76 after 200 runs (about 150 ms), the same plan.
    #[arg(long, default_value_t = 200.0)]
    pub warmup_ms: f64,
    /// One JSON object per line and layer.
    #[arg(long)]
    pub json: bool,
    /// Also time the ordinary conv each layer is the transpose of (rows named NAME:conv).
    #[arg(long)]
    pub with_conv: bool,
    /// Which passes: the forward pass, the backward pass (rows NAME:grad_input,
    /// NAME:grad_weight, and NAME:backward for both together), or both.
    #[arg(long, value_enum, default_value = "forward")]
    pub pass: Pass,
    /// Force an algorithm (reference, direct, col2im or winograd).
    #[arg(long)]
    pub algorithm: Option<String>,
    /// Force the direct kernels' family: packed (input panels) or inplace (masked loads).
    #[arg(long, value_parser = ["packed", "inplace"])]
    pub kernels: Option<String>,
    /// Force the direct kernels' tile: output channels and vectors, e.g. `6,2` (one of the
    /// shapes `tconv plan` lists for the ISA).
    #[arg(long, value_parser = parse_list)]
    pub tile: Option<List>,
    /// FMA peak per core in GFLOP/s for the "% of peak" column (default: measured on this
    /// machine at start, 40-50 ms, for the instruction set the plans use; for float64 half
    /// the float32 figure, a vector holding half as many lanes).
    #[arg(long)]
    pub peak_gflops: Option<f64>,
    /// Element type of the tensors.
    #[arg(long, value_enum, default_value = "float32")]
    pub dtype: Dtype,
    /// Tune the forward plans: measure the register tiles the planner would accept on this
    /// machine and keep the fastest (the plan_ms column then times one tuning plan).
    #[arg(long)]
    pub tune: bool,
}

/// Element types `tconv bench` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    /// f32, as the suite's reference timings.
    Float32,
    /// f64.
    Float64,
}

impl Dtype {
    /// NumPy's name, as the flag takes it.
    fn name(self) -> &'static str {
        match self {
            Dtype::Float32 => f32::DTYPE,
            Dtype::Float64 => f64::DTYPE,
        }
    }
}

/// Passes to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pass {
    /// y = conv_transpose(x, w).
    Forward,
    /// dL/dx and dL/dw, each timed on its own.
    Backward,
    /// Both.
    Both,
}

/// Median and minimum milliseconds of `f` over `runs` after `warmup` runs and then, until
/// `warmup_ms` have passed since the first, more (at most [`MAX_WARMUP`] in all).
fn time_fn(
    mut f: impl FnMut() -> Result<()>,
    (warmup, warmup_ms): (usize, f64),
    runs: usize,
) -> Result<(f64, f64)> {
    let start = Instant::now();
    let mut done = 0;
    while done < warmup || (done < MAX_WARMUP && start.elapsed().as_secs_f64() * 1e3 < warmup_ms) {
        f()?;
        done += 1;
    }
    let mut ms = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok((ms[ms.len() / 2], ms[0]))
}

/// Most warm-up runs [`time_fn`] makes to fill its warm-up time.
const MAX_WARMUP: usize = 10_000;

/// Longest warm-up `--warmup-ms` may ask for, per row (a minute).
const MAX_WARMUP_MS: f64 = 60_000.0;

/// Flags of `tconv plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub layers: LayerArgs,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Plan the ordinary conv this layer is the transpose of.
    #[arg(long)]
    pub conv: bool,
    /// Force an algorithm (reference, direct, col2im or winograd).
    #[arg(long)]
    pub algorithm: Option<String>,
    /// Measure the register tiles the planner would accept on this machine and keep the
    /// fastest (the plan's "why" lists each tile's time).
    #[arg(long)]
    pub tune: bool,
}

/// One layer to time.
pub struct Layer {
    pub name: String,
    pub input: Vec<usize>,
    pub c_out: usize,
    pub kernel: Vec<usize>,
    pub params: ConvParams,
}

fn list(v: &Value, key: &str) -> Result<Vec<usize>> {
    v[key]
        .as_array()
        .with_context(|| format!("layer field '{key}' is not a list"))?
        .iter()
        .map(|x| {
            x.as_u64()
                .map(|u| u as usize)
                .with_context(|| format!("'{key}' holds a non-integer"))
        })
        .collect()
}

/// Layers of a suite JSON text.
pub fn parse_suite(text: &str) -> Result<Vec<Layer>> {
    let v: Value = serde_json::from_str(text).context("suite is not valid JSON")?;
    let layers = v["layers"]
        .as_array()
        .context("suite has no \"layers\" list")?;
    layers
        .iter()
        .map(|l| {
            let params = ConvParams::new()
                .stride(&list(l, "stride")?)
                .padding(&list(l, "padding")?)
                .output_padding(&list(l, "output_padding")?)
                .dilation(&list(l, "dilation")?)
                .groups(l["groups"].as_u64().unwrap_or(1) as usize);
            Ok(Layer {
                name: l["name"]
                    .as_str()
                    .context("layer without a name")?
                    .to_string(),
                input: list(l, "input")?,
                c_out: l["c_out"].as_u64().context("layer without c_out")? as usize,
                kernel: list(l, "kernel")?,
                params,
            })
        })
        .collect()
}

/// (Starting on a cache line, as PyTorch's tensors do.)
fn random<T: Element>(shape: &[usize], seed: u64) -> ArrayD<T> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut a = tconv::tensor::aligned_zeros(shape, 1);
    a.iter_mut().for_each(|e| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let v = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        *e = T::from(v).unwrap_or_else(T::zero);
    });
    a
}

/// One timed result.
pub struct Timing {
    pub name: String,
    pub threads: usize,
    pub gflop: f64,
    pub median_ms: f64,
    pub min_ms: f64,
    pub algorithm: String,
    pub workspace_bytes: usize,
    /// Median milliseconds to build the plan (geometry, decomposition, weight packing, tile
    /// table): what a caller that builds a `Plan` per input shape pays when input sizes
    /// change between calls. Forward rows only.
    pub plan_ms: Option<f64>,
    /// Median milliseconds for a [`tconv::Layer`] that has planned the layer's input to plan
    /// each of [`REPLAN_SHAPES`] new inputs (the last spatial extent 1, 2, ... longer):
    /// what a caller pays per new input size when the packed weights are shared. Forward
    /// rows only.
    pub replan_ms: Option<f64>,
}

/// New input shapes [`Timing::replan_ms`] plans.
pub const REPLAN_SHAPES: usize = 8;

/// The median time for a layer that has planned `input` to plan each of
/// [`REPLAN_SHAPES`] longer inputs.
fn time_replan<T: Element>(
    w: &ArrayD<T>,
    input: &[usize],
    params: &tconv::ConvParams,
    opts: &PlanOptions,
) -> Result<f64> {
    let layer = tconv::Layer::new(Op::ConvTranspose, w, None, params, opts)?;
    layer.plan(input)?;
    let mut shape = input.to_vec();
    let timed = time_fn(
        || {
            *shape.last_mut().context("a spatial axis")? += 1;
            layer.plan(&shape)?;
            Ok(())
        },
        (0, 0.0),
        REPLAN_SHAPES,
    )?;
    Ok(timed.0)
}

/// The row `name`: `plan` timed on `x` (no planning times).
fn plan_row<T: Element>(
    name: String,
    plan: &Plan<T>,
    x: &ArrayD<T>,
    a: &BenchArgs,
) -> Result<Timing> {
    let xs = x.as_slice().context("contiguous input")?;
    // The output starts on a cache line, as PyTorch's and onnxruntime's do.
    let mut y = tconv::tensor::aligned_zeros::<T>(&plan.geometry().output_shape(), 1);
    let ys = y.as_slice_mut().context("contiguous output")?;
    let (median_ms, min_ms) = time_fn(
        || {
            plan.run(xs, None, ys);
            Ok(())
        },
        (a.warmup, a.warmup_ms),
        a.runs,
    )?;
    Ok(Timing {
        name,
        threads: plan.threads(),
        gflop: plan.geometry().flops() as f64 / 1e9,
        median_ms,
        min_ms,
        algorithm: plan.label(),
        workspace_bytes: plan.workspace_bytes(),
        plan_ms: None,
        replan_ms: None,
    })
}

/// Time one layer (and optionally its conv) with the given options, in `a.dtype`.
pub fn time_layer(l: &Layer, a: &BenchArgs, opts: &PlanOptions) -> Result<Vec<Timing>> {
    match a.dtype {
        Dtype::Float32 => time_layer_in::<f32>(l, a, opts),
        Dtype::Float64 => time_layer_in::<f64>(l, a, opts),
    }
}

fn time_layer_in<T: Element>(l: &Layer, a: &BenchArgs, opts: &PlanOptions) -> Result<Vec<Timing>> {
    let g = l.params.groups.max(1);
    let mut w_shape = vec![l.input[1], l.c_out / g];
    w_shape.extend(&l.kernel);
    // The shapes checked (sizes within the limit) before any tensor is allocated.
    Geometry::new(Op::ConvTranspose, &l.input, &w_shape, None, &l.params)?;
    let w = random::<T>(&w_shape, 2);
    let x = random::<T>(&l.input, 1);
    // For the forward rows only, and before the plan below is built: a Layer's packings
    // and that plan's are not held at once (dcgan1's are 19.5-26 MB each).
    let replan_ms = (a.pass != Pass::Backward)
        .then(|| time_replan(&w, &l.input, &l.params, opts))
        .transpose()?;
    // Before the plan timed below is built: a tuning plan runs every tile it measures, and
    // the plan timed should not run after another tuning's runs and allocations.
    let plan_ms = (a.pass != Pass::Backward)
        .then(|| time_plan(l, opts, &w))
        .transpose()?;
    let plan = Plan::new(Op::ConvTranspose, &l.input, &w, None, &l.params, opts)?;
    let mut out = Vec::new();
    if let Some(plan_ms) = plan_ms {
        out.push(Timing {
            plan_ms: Some(plan_ms),
            replan_ms,
            ..plan_row(l.name.clone(), &plan, &x, a)?
        });
    }
    if a.pass != Pass::Forward {
        out.extend(backward_rows(l, a, opts, (&plan, &x, &w))?);
    }
    if a.with_conv {
        out.push(conv_row(l, a, opts, (plan.geometry(), &w))?);
    }
    Ok(out)
}

/// The median time to build the layer's plan afresh (once where the plan tunes).
fn time_plan<T: Element>(l: &Layer, opts: &PlanOptions, w: &ArrayD<T>) -> Result<f64> {
    // A tuning plan runs the layer a few times per tile: timed once.
    let (warmup, runs) = if opts.tune { (0, 1) } else { (1, 5) };
    let timed = time_fn(
        || {
            Plan::new(Op::ConvTranspose, &l.input, w, None, &l.params, opts)?;
            Ok(())
        },
        (warmup, 0.0),
        runs,
    )?;
    Ok(timed.0)
}

/// The backward rows: `NAME:grad_input` and `NAME:grad_weight` each alone, and
/// `NAME:backward` both together, as a training step (and PyTorch's `y.backward(gy)`) asks.
fn backward_rows<T: Element>(
    l: &Layer,
    a: &BenchArgs,
    opts: &PlanOptions,
    (plan, x, w): (&Plan<T>, &ArrayD<T>, &ArrayD<T>),
) -> Result<Vec<Timing>> {
    let geometry: &Geometry = plan.geometry();
    let gflop = geometry.flops() as f64 / 1e9;
    let gy = random::<T>(&geometry.output_shape(), 4);
    let wanted = |input, weight| tconv::Wanted {
        input,
        weight,
        bias: false,
    };
    let mut out = Vec::new();
    for (suffix, wanted) in [
        ("grad_input", wanted(true, false)),
        ("grad_weight", wanted(false, true)),
        ("backward", wanted(true, true)),
    ] {
        let (median_ms, min_ms) = time_fn(
            || {
                tconv::conv_transpose_backward(x, w, &gy, &l.params, wanted, opts)?;
                Ok(())
            },
            (a.warmup, a.warmup_ms),
            a.runs,
        )?;
        out.push(Timing {
            name: format!("{}:{suffix}", l.name),
            threads: plan.threads(),
            gflop: if suffix == "backward" {
                2.0 * gflop
            } else {
                gflop
            },
            median_ms,
            min_ms,
            algorithm: match suffix {
                "grad_input" => {
                    let ws = w.as_slice().context("contiguous weight")?;
                    tconv::grad::input_method(geometry, ws, opts)?
                }
                "grad_weight" => tconv::grad::weight_gradient_method::<T>(geometry, opts),
                _ => tconv::grad::backward_method(geometry, opts).into(),
            },
            workspace_bytes: 0,
            plan_ms: None,
            replan_ms: None,
        });
    }
    Ok(out)
}

/// The row `NAME:conv`: the conv this layer is the transpose of (input = the layer's
/// output, the same weight).
fn conv_row<T: Element>(
    l: &Layer,
    a: &BenchArgs,
    opts: &PlanOptions,
    (geometry, w): (&Geometry, &ArrayD<T>),
) -> Result<Timing> {
    let mut p = l.params.clone();
    p.output_padding = vec![0; l.kernel.len()];
    let yshape = geometry.output_shape();
    let plan = Plan::new(Op::Conv, &yshape, w, None, &p, opts)?;
    let xc = random::<T>(&yshape, 3);
    plan_row(format!("{}:conv", l.name), &plan, &xc, a)
}

/// The layers the flags select.
pub fn layers(a: &LayerArgs) -> Result<Vec<Layer>> {
    let mut layers = if let Some(input) = &a.input {
        let (Some(c_out), Some(kernel)) = (a.c_out, &a.kernel) else {
            bail!("a single layer needs --input, --c-out and --kernel");
        };
        let mut p = ConvParams::new().groups(a.groups);
        for (flag, set) in [
            (
                &a.stride,
                ConvParams::stride as fn(ConvParams, &[usize]) -> ConvParams,
            ),
            (&a.padding, ConvParams::padding),
            (&a.output_padding, ConvParams::output_padding),
            (&a.dilation, ConvParams::dilation),
        ] {
            if let Some(v) = flag {
                p = set(p, &v.0);
            }
        }
        // One kernel extent stands for every spatial axis of the input.
        let dims = input.0.len().saturating_sub(2);
        let kernel = if kernel.0.len() == 1 {
            vec![kernel.0[0]; dims]
        } else {
            kernel.0.clone()
        };
        if input.0.len() < 3 || kernel.len() != dims {
            bail!(
                "--input needs N,C and at least one spatial extent, and --kernel one extent or one per spatial axis (got input {:?}, kernel {:?})",
                input.0,
                kernel
            );
        }
        vec![Layer {
            name: "custom".into(),
            input: input.0.clone(),
            c_out,
            kernel,
            params: p,
        }]
    } else {
        let text = match &a.suite {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read suite {path}"))?,
            None => SUITE.to_string(),
        };
        parse_suite(&text)?
    };
    if !a.layer.is_empty() {
        for want in &a.layer {
            if !layers.iter().any(|l| &l.name == want) {
                let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
                bail!(
                    "no layer named '{want}' in the suite (layers: {})",
                    names.join(", ")
                );
            }
        }
        layers.retain(|l| a.layer.contains(&l.name));
    }
    Ok(layers)
}

fn algorithm(name: &Option<String>) -> Result<Option<tconv::Algorithm>> {
    match name {
        Some(s) => Ok(Some(tconv::Algorithm::parse(s).with_context(|| {
            format!("unknown algorithm '{s}' (reference, direct, col2im or winograd)")
        })?)),
        None => Ok(None),
    }
}

/// Run `tconv plan`: print the plan of each selected layer.
pub fn plan(a: &PlanArgs) -> Result<()> {
    let opts = PlanOptions {
        threads: a.threads,
        algorithm: algorithm(&a.algorithm)?,
        tune: a.tune,
        ..PlanOptions::default()
    };
    for l in layers(&a.layers)? {
        let g = l.params.groups.max(1);
        let mut w_shape = vec![l.input[1], l.c_out / g];
        w_shape.extend(&l.kernel);
        let w = ArrayD::<f32>::zeros(IxDyn(&w_shape));
        let plan = if a.conv {
            let t = Plan::new(Op::ConvTranspose, &l.input, &w, None, &l.params, &opts)?;
            let mut p = l.params.clone();
            p.output_padding.clear();
            Plan::new(Op::Conv, &t.geometry().output_shape(), &w, None, &p, &opts)?
        } else {
            Plan::new(Op::ConvTranspose, &l.input, &w, None, &l.params, &opts)?
        };
        println!("== {}{}", l.name, if a.conv { " (conv)" } else { "" });
        println!("{plan}");
    }
    Ok(())
}

/// Run `tconv bench`.
pub fn run(a: &BenchArgs) -> Result<()> {
    let layers = layers(&a.layers)?;
    let opts = PlanOptions {
        threads: Some(a.threads.max(1)),
        algorithm: algorithm(&a.algorithm)?,
        inplace: a.kernels.as_deref().map(|k| k == "inplace"),
        tile: match a.tile.as_ref().map(|t| t.0.as_slice()) {
            None => None,
            Some(&[mr, v]) => Some((mr, v)),
            Some(t) => bail!("--tile takes two numbers, output channels and vectors (got {t:?})"),
        },
        tune: a.tune,
        ..PlanOptions::default()
    };
    if !(a.warmup_ms.is_finite() && (0.0..=MAX_WARMUP_MS).contains(&a.warmup_ms)) {
        bail!(
            "--warmup-ms must be a number of milliseconds from 0 to {MAX_WARMUP_MS} (got {})",
            a.warmup_ms
        );
    }
    let isa = tconv::fast::Isa::detect();
    let peak_per_core = match a.peak_gflops {
        Some(p) if p.is_finite() && p > 0.0 => p,
        Some(p) => bail!("--peak-gflops must be a positive number of GFLOP/s (got {p})"),
        None if a.dtype == Dtype::Float64 => tconv::fast::isa::fma_peak_gflops(isa) / 2.0,
        None => tconv::fast::isa::fma_peak_gflops(isa),
    };
    if !a.json {
        let how = if a.peak_gflops.is_some() {
            "as given"
        } else {
            "measured"
        };
        let dtype = a.dtype.name();
        println!("FMA peak: {peak_per_core:.1} GFLOP/s per core ({isa}, {dtype}, {how})");
        println!(
            "{:<18} {:>7} {:>8} {:>10} {:>10} {:>9} {:>7} {:>8} {:>9}  algorithm",
            "layer",
            "threads",
            "GFLOP",
            "median ms",
            "min ms",
            "GFLOP/s",
            "% peak",
            "plan ms",
            "replan ms"
        );
    }
    for l in &layers {
        for t in time_layer(l, a, &opts)? {
            let gflops = t.gflop / (t.median_ms / 1e3);
            let peak = 100.0 * gflops / (peak_per_core * t.threads as f64);
            if a.json {
                let obj = serde_json::json!({
                    "name": t.name, "threads": t.threads, "gflop": t.gflop,
                    "median_ms": t.median_ms, "min_ms": t.min_ms, "gflops_per_s": gflops,
                    "percent_of_peak": peak, "peak_gflops_per_core": peak_per_core,
                    "algorithm": t.algorithm,
                    "workspace_bytes": t.workspace_bytes, "runs": a.runs,
                    "plan_ms": t.plan_ms, "replan_ms": t.replan_ms,
                    "dtype": a.dtype.name(),
                });
                println!("{obj}");
            } else {
                let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
                println!(
                    "{:<18} {:>7} {:>8.3} {:>10.3} {:>10.3} {:>9.1} {:>6.1}% {:>8} {:>9}  {}",
                    t.name,
                    t.threads,
                    t.gflop,
                    t.median_ms,
                    t.min_ms,
                    gflops,
                    peak,
                    ms(t.plan_ms),
                    ms(t.replan_ms),
                    t.algorithm
                );
            }
        }
    }
    Ok(())
}
