//! Pictures of the arithmetic: SVG drawings and a self-contained HTML player. The data all
//! comes from the library (`tconv::explain`, the zero-insertion view, overlap reports);
//! these modules only draw it.

pub mod html;
pub mod svg;

use anyhow::{bail, Result};
use tconv::explain::{dot_steps, scatter_steps};
use tconv::reference::zero_insertion_view;
use tconv::{ConvParams, Geometry, Op};

pub use crate::canvas::CellKind;
use crate::compute::Loaded;

/// A small 1-D or 2-D single-channel problem, in f64, ready to draw.
pub struct Problem {
    pub geometry: Geometry,
    pub x: Vec<f64>,
    pub w: Vec<f64>,
    pub bias: Option<f64>,
}

/// Rows and columns of a 1-D or 2-D extent list.
pub fn rc(spatial: &[usize]) -> (usize, usize) {
    match spatial {
        [c] => (1, *c),
        [r, c] => (*r, *c),
        _ => (1, spatial.iter().product()),
    }
}

/// A number as a learner reads it.
pub fn num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

impl Problem {
    /// Check that `l` is small and single-channel enough to draw.
    pub fn new(op: Op, l: &Loaded, params: &ConvParams, max_cells: usize) -> Result<Problem> {
        let (x, w) = (l.x.to_f64(), l.w.to_f64());
        let g = Geometry::new(
            op,
            x.shape(),
            w.shape(),
            l.b.as_ref().map(|b| b.shape().to_vec()).as_deref(),
            params,
        )?;
        if g.spatial_dims() > 2 {
            bail!(
                "pictures show 1-D and 2-D problems; this one has {} spatial axes",
                g.spatial_dims()
            );
        }
        if g.batch != 1 || g.in_channels != 1 || g.out_channels != 1 {
            bail!(
                "pictures show one image with one input and one output channel; this problem has batch {}, {} input and {} output channels",
                g.batch,
                g.in_channels,
                g.out_channels
            );
        }
        let cells: usize = g.big_spatial().iter().map(|e| e + 8).product();
        if cells > max_cells {
            bail!("this problem has about {cells} cells to draw, more than --max-steps {max_cells} allows; pass a larger --max-steps or use a smaller input");
        }
        Ok(Problem {
            geometry: g,
            x: x.iter().copied().collect(),
            w: w.iter().copied().collect(),
            bias: l
                .b
                .as_ref()
                .map(|b| b.to_f64().iter().copied().next().unwrap_or(0.0)),
        })
    }

    /// The final output values (with bias), row-major.
    pub fn output(&self) -> Vec<f64> {
        let g = &self.geometry;
        let b = self.bias.unwrap_or(0.0);
        let out_size: usize = g.axes.iter().map(|a| a.output).product();
        let mut y = vec![b; out_size];
        match g.op {
            Op::ConvTranspose => {
                for st in scatter_steps(g, &self.x, &self.w) {
                    for c in st.contributions.iter().filter(|c| c.inside) {
                        let idx: Vec<usize> = c.position.iter().map(|&p| p as usize).collect();
                        let ext: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
                        y[tconv::tensor::flat_index(&ext, &idx)] += c.product;
                    }
                }
            }
            Op::Conv => {
                let bias = self.bias.map(|b| vec![b]);
                for (i, st) in dot_steps(g, &self.x, &self.w, bias.as_deref())
                    .iter()
                    .enumerate()
                {
                    y[i] = st.value;
                }
            }
        }
        y
    }

    /// The zero-insertion view of a transposed conv: its extents, values and, per cell,
    /// what it is; and the rotated kernel.
    pub fn zero_insertion(&self) -> Result<ZeroInsertion> {
        let g = &self.geometry;
        let view = zero_insertion_view(g, &self.x, &self.w)?;
        let z_sp: Vec<usize> = view.input.shape()[2..].to_vec();
        let kinds: Vec<CellKind> = tconv::tensor::positions(&z_sp)
            .map(|j| {
                let mut kind = CellKind::Value;
                for (a, axis) in g.axes.iter().enumerate() {
                    let u = j[a] as i64 - view.pad_before[a];
                    let span = ((axis.input - 1) * axis.stride) as i64;
                    if u < 0 || u > span {
                        return CellKind::Padding;
                    }
                    if u % axis.stride as i64 != 0 {
                        kind = CellKind::Inserted;
                    }
                }
                kind
            })
            .collect();
        Ok((
            z_sp,
            view.input.iter().copied().collect(),
            kinds,
            view.kernel.iter().copied().collect(),
        ))
    }
}

/// `(extents, values, cell kinds, rotated kernel)` of a zero-insertion view.
pub type ZeroInsertion = (Vec<usize>, Vec<f64>, Vec<CellKind>, Vec<f64>);
