//! `tconv overlap`: the checkerboard diagnostic — how many kernel taps reach each output
//! position of a transposed convolution, as a text heat map and an SVG/PNG picture, with a
//! verdict and same-size alternatives. The numbers come from `tconv::explain::overlap_report`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use tconv::explain::{overlap_report, OverlapReport};
use tconv::{ConvParams, Geometry, Op};

use crate::args::{parse_list, List};
use crate::data;
use crate::render::{rc, svg};

/// Flags of `tconv overlap`.
#[derive(Args, Debug)]
pub struct OverlapArgs {
    /// Kernel extent(s).
    #[arg(long, value_parser = parse_list)]
    pub kernel: List,
    /// Stride(s).
    #[arg(long, value_parser = parse_list)]
    pub stride: List,
    /// Dilation(s).
    #[arg(long, value_parser = parse_list)]
    pub dilation: Option<List>,
    /// Padding(s).
    #[arg(long, value_parser = parse_list)]
    pub padding: Option<List>,
    /// Output padding(s).
    #[arg(long, value_parser = parse_list)]
    pub output_padding: Option<List>,
    /// Input extent(s) (default 5 per axis).
    #[arg(long, value_parser = parse_list)]
    pub size: Option<List>,
    /// Spatial axes, 1 or 2 (default: the longest list given, else 2).
    #[arg(long)]
    pub dims: Option<usize>,
    /// Write the heat map as SVG.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Write the heat map as PNG.
    #[arg(long)]
    pub png: Option<PathBuf>,
}

/// The verdict line: starts with `uniform` or `uneven`.
pub fn verdict(r: &OverlapReport, g: &Geometry) -> String {
    if r.uniform {
        return format!(
            "uniform overlap: every interior output position receives {} kernel tap(s), so overlap alone makes no checkerboard",
            r.interior_max
        );
    }
    let axes: Vec<String> = g
        .axes
        .iter()
        .enumerate()
        .filter(|(a, _)| r.taps_per_residue[*a].iter().min() != r.taps_per_residue[*a].iter().max())
        .map(|(a, ax)| {
            format!(
                "axis {a}: kernel {} (dilation {}) vs stride {}",
                ax.kernel, ax.dilation, ax.stride
            )
        })
        .collect();
    if r.interior_min == 0 {
        format!(
            "uneven overlap: some interior positions receive no kernel tap (only the bias) while others receive {} (ratio infinite); {} -> holes and checkerboard artifacts",
            r.interior_max,
            axes.join(", ")
        )
    } else {
        format!(
            "uneven overlap: interior positions receive {} to {} kernel taps (ratio {:.2}); kernel not divisible by stride on {} -> checkerboard artifacts",
            r.interior_min,
            r.interior_max,
            r.ratio(),
            axes.join(", ")
        )
    }
}

/// The whole text report.
pub fn report_text(r: &OverlapReport, g: &Geometry) -> String {
    let list = |f: &dyn Fn(&tconv::AxisGeometry) -> String| {
        g.axes.iter().map(f).collect::<Vec<_>>().join(", ")
    };
    let mut s = format!(
        "transposed convolution: kernel [{}], stride [{}], dilation [{}], padding [{}], output_padding [{}]; input [{}] -> output [{}]\n",
        list(&|a| a.kernel.to_string()),
        list(&|a| a.stride.to_string()),
        list(&|a| a.dilation.to_string()),
        list(&|a| a.pad_begin.to_string()),
        list(&|a| a.output_padding.to_string()),
        list(&|a| a.input.to_string()),
        list(&|a| a.output.to_string()),
    );
    s.push_str("kernel taps reaching each output position:\n");
    let (rows, cols) = rc(&r.extents);
    let width = r.counts.iter().max().map_or(1, |m| m.to_string().len());
    for row in 0..rows {
        let cells: Vec<String> = (0..cols)
            .map(|c| format!("{:>width$}", r.counts[row * cols + c]))
            .collect();
        s.push_str(&format!("  {}\n", cells.join(" ")));
    }
    s.push_str(&verdict(r, g));
    s.push('\n');
    for (a, t) in r.taps_per_residue.iter().enumerate() {
        s.push_str(&format!(
            "  axis {a}: taps per output residue (o mod {}): {:?}\n",
            g.axes[a].stride, t
        ));
    }
    if !r.uniform {
        s.push_str(&format!(
            "alternatives that keep the output size [{}]:\n",
            list(&|a| a.output.to_string())
        ));
        for alt in &r.alternatives {
            s.push_str(&format!(
                "  axis {}: kernel {}, padding {}, output_padding {} (kernel divisible by stride {}: even overlap)\n",
                alt.axis, alt.kernel, alt.padding, alt.output_padding, g.axes[alt.axis].stride
            ));
        }
        let ups: Vec<String> = g
            .axes
            .iter()
            .map(|a| {
                let up = a.input * a.stride;
                let total = a.output as i64 - up as i64 + 2; // conv k3 stride 1: out = up + total - 2
                format!(
                    "axis {}: upsample x{} to {up}, pads {}+{}",
                    0,
                    a.stride,
                    total.div_euclid(2),
                    total - total.div_euclid(2)
                )
            })
            .enumerate()
            .map(|(i, s)| s.replacen("axis 0", &format!("axis {i}"), 1))
            .collect();
        s.push_str(&format!(
            "  or resize, then convolve: nearest/bilinear upsampling, then a stride-1 conv with kernel 3 ({}; negative pads crop)\n",
            ups.join("; ")
        ));
    }
    s
}

/// Render an SVG to PNG bytes (text uses the system's fonts).
pub fn png_bytes(svg_text: &str) -> Result<Vec<u8>> {
    let mut opt = resvg::usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let tree = resvg::usvg::Tree::from_str(svg_text, &opt).context("cannot parse our own SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("image too large")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().context("cannot encode PNG")
}

/// Run `tconv overlap`.
pub fn run(a: &OverlapArgs) -> Result<()> {
    let lists = [
        Some(&a.kernel),
        Some(&a.stride),
        a.dilation.as_ref(),
        a.padding.as_ref(),
        a.output_padding.as_ref(),
        a.size.as_ref(),
    ];
    let longest = lists.iter().flatten().map(|l| l.0.len()).max().unwrap_or(1);
    let dims = a.dims.unwrap_or(if longest > 1 { longest } else { 2 });
    if !(1..=2).contains(&dims) {
        bail!("overlap draws 1-D and 2-D layers; --dims {dims} is out of range");
    }
    let expand = |l: &List, name: &str| -> Result<Vec<usize>> {
        match l.0.len() {
            1 => Ok(vec![l.0[0]; dims]),
            n if n == dims => Ok(l.0.clone()),
            n => bail!("--{name} has {n} values; give 1 or {dims}"),
        }
    };
    let kernel = expand(&a.kernel, "kernel")?;
    let size = match &a.size {
        Some(l) => expand(l, "size")?,
        None => vec![5; dims],
    };
    let mut x = vec![1, 1];
    x.extend(&size);
    let mut w = vec![1, 1];
    w.extend(&kernel);
    let mut p = ConvParams::new().stride(&a.stride.0);
    if let Some(d) = &a.dilation {
        p = p.dilation(&d.0);
    }
    if let Some(pad) = &a.padding {
        p = p.padding(&pad.0);
    }
    if let Some(op) = &a.output_padding {
        p = p.output_padding(&op.0);
    }
    let g = Geometry::new(Op::ConvTranspose, &x, &w, None, &p)?;
    let cells: usize = g.big_spatial().iter().product();
    if cells > 40_000 {
        bail!("the output has {cells} positions; overlap maps are for small sizes (use --size)");
    }
    let r = overlap_report(&g);
    let mut files = Vec::new();
    if a.svg.is_some() || a.png.is_some() {
        let picture = svg::overlap_svg(&r, &verdict(&r, &g));
        if let Some(path) = &a.svg {
            files.push((path.clone(), picture.clone().into_bytes()));
        }
        if let Some(path) = &a.png {
            files.push((path.clone(), png_bytes(&picture)?));
        }
    }
    data::write_all_atomic(&files)?;
    print!("{}", report_text(&r, &g));
    Ok(())
}
