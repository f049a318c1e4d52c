//! SVG drawings: one picture of a whole computation, and the overlap heat map.

use std::fmt::Write;

use anyhow::Result;
use tconv::explain::{scatter_steps, OverlapReport};
use tconv::Op;

use super::{num, rc, CellKind, Problem};
use crate::canvas::{padded_input, Canvas};
use crate::shape::size_arithmetic;

/// Side of one grid cell in pixels.
pub const CELL: usize = 34;

/// Fill colour of each cell kind.
pub fn fill(kind: CellKind) -> &'static str {
    match kind {
        CellKind::Value => "#ffffff",
        CellKind::Inserted => "#e3e3e3",
        CellKind::Padding => "#fff2b3",
        CellKind::Cropped => "#f6c9c4",
        CellKind::Extra => "#c9e8c9",
    }
}

/// Overlap colours: 0 taps white, then darker blues; counts past the end share the last.
pub const PALETTE: [&str; 7] = [
    "#ffffff", "#deebf7", "#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b",
];

/// Fills dark enough to need light text.
const DARK: [&str; 3] = ["#3182bd", "#08519c", "#08306b"];

/// Fill colour for an overlap count (0 = white, darker = more taps).
pub fn count_fill(count: usize) -> &'static str {
    PALETTE[count.min(PALETTE.len() - 1)]
}

/// A tiny SVG writer.
pub struct Svg {
    body: String,
    width: usize,
    height: usize,
}

impl Svg {
    pub fn new() -> Self {
        Svg {
            body: String::new(),
            width: 0,
            height: 0,
        }
    }
    fn grow(&mut self, x: usize, y: usize) {
        self.width = self.width.max(x);
        self.height = self.height.max(y);
    }
    pub fn text(&mut self, x: usize, y: usize, size: usize, s: &str, class: &str) {
        let esc = s
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let _ = writeln!(
            self.body,
            r#"<text x="{x}" y="{y}" font-size="{size}" class="{class}">{esc}</text>"#
        );
        self.grow(x + size * s.chars().count() * 6 / 10, y + 4);
    }
    /// A grid of cells with a title above; returns its bottom edge.
    pub fn grid(
        &mut self,
        x0: usize,
        y0: usize,
        title: &str,
        rows: usize,
        cols: usize,
        cells: &[(String, &str, &str)],
    ) -> usize {
        self.text(x0, y0 + 14, 14, title, "title");
        let top = y0 + 22;
        let _ = writeln!(
            self.body,
            r#"<g class="grid" data-title="{}" data-rows="{rows}" data-cols="{cols}">"#,
            title.replace('"', "'")
        );
        for r in 0..rows {
            for c in 0..cols {
                let (label, fill, class) = &cells[r * cols + c];
                let (x, y) = (x0 + c * CELL, top + r * CELL);
                let dash = if *class == "cropped" {
                    r#" stroke-dasharray="4 3""#
                } else {
                    ""
                };
                let _ = writeln!(
                    self.body,
                    r##"<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="{fill}" stroke="#555" stroke-width="1"{dash} class="cell {class}"/>"##
                );
                let size = if label.chars().count() > 4 { 9 } else { 12 };
                let ink = if DARK.contains(fill) {
                    "#ffffff"
                } else {
                    "#111111"
                };
                let _ = writeln!(
                    self.body,
                    r#"<text x="{}" y="{}" font-size="{size}" text-anchor="middle" fill="{ink}" class="v">{label}</text>"#,
                    x + CELL / 2,
                    y + CELL / 2 + 4
                );
            }
        }
        let _ = writeln!(self.body, "</g>");
        self.grow(x0 + cols * CELL + 1, top + rows * CELL + 1);
        top + rows * CELL
    }
    pub fn finish(self, title: &str) -> String {
        let (w, h) = (self.width + 16, self.height + 16);
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"DejaVu Sans, Arial, sans-serif\">\n<title>{title}</title>\n<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#fafafa\"/>\n<style>.title{{font-weight:bold}} .note{{fill:#333}}</style>\n{}</svg>\n",
            self.body
        )
    }
}

impl Default for Svg {
    fn default() -> Self {
        Self::new()
    }
}

fn plain(values: &[f64]) -> Vec<(String, &'static str, &'static str)> {
    values
        .iter()
        .map(|&v| (num(v), fill(CellKind::Value), "value"))
        .collect()
}

/// Legend entries `(kind, label)` drawn as small swatches.
fn legend(svg: &mut Svg, x: usize, mut y: usize, entries: &[(CellKind, &str)]) -> usize {
    for (kind, label) in entries {
        let _ = writeln!(
            svg.body,
            r##"<rect x="{x}" y="{y}" width="14" height="14" fill="{}" stroke="#555"/>"##,
            fill(*kind)
        );
        svg.text(x + 20, y + 12, 12, label, "note");
        y += 20;
    }
    y
}

/// One picture of the whole computation.
pub fn explain_svg(p: &Problem) -> Result<String> {
    let g = &p.geometry;
    let mut svg = Svg::new();
    let in_sp: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
    let k_sp = g.kernel_shape();
    let (ir, ic) = rc(&in_sp);
    let (kr, kc) = rc(&k_sp);
    let gap = 30;
    let mut x = 10;
    match g.op {
        Op::ConvTranspose => {
            svg.text(10, 20, 16, "Transposed convolution", "title");
            let b1 = svg.grid(x, 30, "input x", ir, ic, &plain(&p.x));
            x += ic * CELL + gap;
            svg.grid(x, 30, "kernel w", kr, kc, &plain(&p.w));
            let _ = b1;
            // Zero-inserted, padded input and rotated kernel.
            let (z_sp, z, kinds, wr) = p.zero_insertion()?;
            let (zr, zc) = rc(&z_sp);
            let cells: Vec<(String, &str, &str)> = z
                .iter()
                .zip(&kinds)
                .map(|(&v, &k)| (num(v), fill(k), k.class()))
                .collect();
            let y2 = 30 + (ir.max(kr)) * CELL + 50;
            let bz = svg.grid(10, y2, "zero-inserted, padded input", zr, zc, &cells);
            let xr = 10 + zc * CELL + gap;
            svg.grid(xr, y2, "kernel rotated 180°", kr, kc, &plain(&wr));
            // The uncropped output canvas.
            let canvas = Canvas::new(g);
            let ext = canvas.extents.clone();
            let mut values = vec![p.bias.unwrap_or(0.0); ext.iter().product()];
            for st in scatter_steps(g, &p.x, &p.w) {
                for c in &st.contributions {
                    values[canvas.index(&c.position)] += c.product;
                }
            }
            let cells: Vec<(String, &str, &str)> = values
                .iter()
                .zip(&canvas.kinds)
                .map(|(&v, &k)| (num(v), fill(k), k.class()))
                .collect();
            let (orr, oc) = rc(&ext);
            let y3 = bz.max(y2 + 22 + kr * CELL) + 30;
            let bo = svg.grid(10, y3, "output y (uncropped canvas)", orr, oc, &cells);
            let lx = 10 + oc * CELL + gap;
            legend(
                &mut svg,
                lx,
                y3 + 22,
                &[
                    (
                        CellKind::Inserted,
                        "zero inserted between inputs (stride - 1)",
                    ),
                    (CellKind::Padding, "zero padding d(k-1) - p"),
                    (CellKind::Cropped, "computed, cropped by padding"),
                    (CellKind::Extra, "extra row/column from output_padding"),
                ],
            );
            let sizes: Vec<String> = g.axes.iter().map(|a| size_arithmetic(g.op, a)).collect();
            svg.text(
                10,
                bo + 24,
                13,
                &format!("output size per axis: {}", sizes.join(";  ")),
                "note",
            );
        }
        Op::Conv => {
            svg.text(10, 20, 16, "Convolution", "title");
            // The input with its padding border.
            let (padded, sources) = padded_input(g);
            let cells: Vec<(String, &str, &str)> = sources
                .iter()
                .map(|src| match src {
                    Some(i) => (num(p.x[*i]), fill(CellKind::Value), "value"),
                    None => ("0".to_string(), fill(CellKind::Padding), "padding"),
                })
                .collect();
            let (pr, pc) = rc(&padded);
            let b = svg.grid(x, 30, "padded input x", pr, pc, &cells);
            x += pc * CELL + gap;
            svg.grid(x, 30, "kernel w", kr, kc, &plain(&p.w));
            x += kc * CELL + gap;
            let out_sp: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
            let (orr, oc) = rc(&out_sp);
            svg.grid(x, 30, "output y", orr, oc, &plain(&p.output()));
            let ly = legend(&mut svg, 10, b + 16, &[(CellKind::Padding, "zero padding")]);
            let sizes: Vec<String> = g.axes.iter().map(|a| size_arithmetic(g.op, a)).collect();
            svg.text(
                10,
                ly + 16,
                13,
                &format!("output size per axis: {}", sizes.join(";  ")),
                "note",
            );
        }
    }
    Ok(svg.finish(match g.op {
        Op::Conv => "tconv: convolution",
        Op::ConvTranspose => "tconv: transposed convolution",
    }))
}

/// The overlap heat map: taps reaching each output position, with the verdict.
pub fn overlap_svg(r: &OverlapReport, verdict: &str) -> String {
    let mut svg = Svg::new();
    let (rows, cols) = rc(&r.extents);
    svg.text(
        10,
        20,
        16,
        "Kernel overlap: taps reaching each output position",
        "title",
    );
    let cells: Vec<(String, &str, &str)> = r
        .counts
        .iter()
        .map(|&c| (c.to_string(), count_fill(c), "count"))
        .collect();
    let bottom = svg.grid(
        10,
        30,
        &format!(
            "output {}",
            r.extents
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("×")
        ),
        rows,
        cols,
        &cells,
    );
    let mut y = bottom + 24;
    for part in verdict.split("; ") {
        svg.text(10, y, 13, part, "note");
        y += 18;
    }
    svg.finish("tconv: overlap")
}
