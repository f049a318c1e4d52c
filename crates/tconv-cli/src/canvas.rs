//! Geometry of what the explanations draw, shared by the text, SVG and HTML views: the
//! uncropped output canvas of a transposed convolution and the padded input of a conv.

use tconv::tensor::{flat_index, positions};
use tconv::Geometry;

/// What a drawn cell is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellKind {
    /// A value of the problem.
    Value,
    /// A zero inserted between input elements (stride > 1).
    Inserted,
    /// A zero from padding.
    Padding,
    /// Computed, then cropped away by padding.
    Cropped,
    /// An extra row/column from output_padding.
    Extra,
}

impl CellKind {
    /// CSS/SVG class name.
    pub fn class(self) -> &'static str {
        match self {
            CellKind::Value => "value",
            CellKind::Inserted => "inserted",
            CellKind::Padding => "padding",
            CellKind::Cropped => "cropped",
            CellKind::Extra => "extra",
        }
    }
}

/// The transposed convolution's output before cropping: every position a kernel copy
/// reaches, the kept output (`0..output` per axis), the cropped border and the extra
/// output_padding rows/columns.
pub struct Canvas {
    /// Canvas coordinate of the first cell per axis (negative where padding crops).
    pub lo: Vec<i64>,
    /// Canvas extents.
    pub extents: Vec<usize>,
    /// Kind of each cell, row-major.
    pub kinds: Vec<CellKind>,
}

impl Canvas {
    /// The canvas of a transposed-conv geometry.
    pub fn new(g: &Geometry) -> Canvas {
        let (mut lo, mut extents, mut natural_end) = (Vec::new(), Vec::new(), Vec::new());
        for a in &g.axes {
            let natural = ((a.input - 1) * a.stride + a.dilation * (a.kernel - 1) + 1) as i64;
            let full = natural + a.output_padding as i64;
            let l = (-a.pad_begin).min(0);
            lo.push(l);
            extents.push(((full - a.pad_begin).max(a.output as i64) - l) as usize);
            // Without output_padding the output would end here; beyond it are extra cells.
            natural_end.push(natural - a.pad_begin - a.pad_end);
        }
        let kinds = positions(&extents)
            .map(|i| {
                let coord: Vec<i64> = i.iter().zip(&lo).map(|(&i, &l)| i as i64 + l).collect();
                let kept = coord
                    .iter()
                    .zip(&g.axes)
                    .all(|(&c, a)| c >= 0 && c < a.output as i64);
                let extra = coord.iter().zip(&natural_end).any(|(&c, &e)| c >= e);
                match (kept, extra) {
                    (false, _) => CellKind::Cropped,
                    (true, true) => CellKind::Extra,
                    (true, false) => CellKind::Value,
                }
            })
            .collect();
        Canvas { lo, extents, kinds }
    }

    /// Flat canvas index of an (uncropped) output coordinate.
    pub fn index(&self, position: &[i64]) -> usize {
        let idx: Vec<usize> = position
            .iter()
            .zip(&self.lo)
            .map(|(&p, &l)| (p - l) as usize)
            .collect();
        flat_index(&self.extents, &idx)
    }

    /// Whether padding crops anything.
    pub fn cropped(&self) -> bool {
        self.kinds.contains(&CellKind::Cropped)
    }
}

/// A conv's input with its padding border: extents, and for each cell the flat input
/// index it shows (`None`: a padding zero).
pub fn padded_input(g: &Geometry) -> (Vec<usize>, Vec<Option<usize>>) {
    let inputs: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
    let padded: Vec<usize> = g
        .axes
        .iter()
        .map(|a| (a.input as i64 + a.pad_begin + a.pad_end) as usize)
        .collect();
    let cells = positions(&padded)
        .map(|j| {
            let src: Option<Vec<usize>> = j
                .iter()
                .zip(&g.axes)
                .map(|(&j, a)| {
                    let i = j as i64 - a.pad_begin;
                    (i >= 0 && (i as usize) < a.input).then_some(i as usize)
                })
                .collect();
            src.map(|i| flat_index(&inputs, &i))
        })
        .collect();
    (padded, cells)
}
