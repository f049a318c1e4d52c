//! A plan in words: its one-line label and its full description (`tconv plan`).

use std::fmt;

use super::Plan;
use crate::fast::direct::Kernel;
use crate::tensor::{numel, Element};

impl<T: Element> Plan<T> {
    /// The instruction set as reported: the plan's, or for f64 (whose plans are `Scalar`,
    /// the portable kernels' layout of 8-lane vectors; [`crate::fast::Isa::loops_for`] is the only type
    /// it differs for) the one its loops are compiled for, e.g. `avx512-f64`.
    fn isa_shown(&self) -> String {
        let loops = self.isa.loops_for::<T>();
        if loops == self.isa {
            self.isa.to_string()
        } else {
            format!("{loops}-f64")
        }
    }

    /// A one-line name for the algorithm and kernel, e.g. `direct/avx512 16x1`.
    pub fn label(&self) -> String {
        match &self.direct {
            Some(d) => {
                let family = match d.kernel {
                    _ if d.strided_loads => "strided-loads",
                    Kernel::Packed(_) if d.pair.is_some() => "pairs",
                    Kernel::Packed(_) => "packed",
                    Kernel::Inplace(_) => "inplace",
                };
                format!(
                    "{}/{}/{} {}x{}",
                    self.algorithm.name(),
                    family,
                    self.isa_shown(),
                    d.mr,
                    d.v
                )
            }
            None if self.col2im.is_some() => {
                let c = self.col2im.as_ref().expect("checked");
                format!(
                    "{}/{} {}x{}",
                    self.algorithm.name(),
                    self.isa_shown(),
                    c.mr,
                    c.v
                )
            }
            None if self.im2col.is_some() => {
                let c = self.im2col.as_ref().expect("checked");
                format!("im2col/{} {}x{}", self.isa_shown(), c.mr, c.v)
            }
            None if self.batch.is_some() => {
                let c = self.batch.as_ref().expect("checked");
                if c.dots {
                    format!("batch-gemm/{} dots", self.isa_shown())
                } else {
                    format!("batch-gemm/{} {}x{}", self.isa_shown(), c.mr, c.v)
                }
            }
            None if self.winograd.is_some() => {
                let c = self.winograd.as_ref().expect("checked");
                format!(
                    "winograd {}/{} {}x{}",
                    c.name(),
                    self.isa_shown(),
                    c.mr,
                    c.v
                )
            }
            None if self.rows.is_some() => {
                let family = if self.rows.as_ref().is_some_and(|r| r.by_taps()) {
                    "depthwise-taps"
                } else {
                    "depthwise-rows"
                };
                format!("{}/{family}/{}", self.algorithm.name(), self.isa_shown())
            }
            None => self.algorithm.name().to_string(),
        }
    }

    /// Ranges of output channels each group's work is cut into between tasks (1 where every
    /// task holds all of them).
    pub fn channel_ranges(&self) -> usize {
        let cout_g = self.geometry.out_per_group();
        let (mr, parts) = match (&self.direct, &self.winograd) {
            (Some(d), _) => (d.mr, d.channel_parts),
            (_, Some(w)) => (w.mr, w.channel_parts()),
            _ => return 1,
        };
        crate::fast::direct::channel_parts(cout_g, mr, parts).len()
    }

    /// The `kernel:` line: the register tile of `mr` `rows` by `v` vectors of `lanes`
    /// `columns`.
    fn tile_line(
        &self,
        f: &mut fmt::Formatter<'_>,
        (mr, rows): (usize, &str),
        (v, lanes, columns): (usize, usize, &str),
    ) -> fmt::Result {
        let isa = self.isa_shown();
        writeln!(
            f,
            "kernel:      {isa} tile of {mr} {rows} x {v} vectors of {lanes} {columns}"
        )
    }
}

impl<T: Element> fmt::Display for Plan<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.geometry;
        writeln!(
            f,
            "op:          {} input {:?} -> output {:?}",
            g.op.name(),
            g.input_shape(),
            g.output_shape()
        )?;
        if self.im2col.is_some() {
            writeln!(
                f,
                "algorithm:   {} (a conv: its mirror, im2col + GEMM)",
                self.algorithm.name()
            )?;
        } else {
            writeln!(f, "algorithm:   {}", self.algorithm.name())?;
        }
        writeln!(f, "why:         {}", self.reason)?;
        if let Some(d) = &self.direct {
            self.tile_line(f, (d.mr, "output channels"), (d.v, d.lanes, "positions"))?;
            for (i, p) in d.spec.phases.iter().enumerate().take(8) {
                writeln!(
                    f,
                    "phase {i}:     residue {:?}, extents {:?}, {} taps -> per image M={} (C_out/g), K={} (C_in/g x taps), N={} positions",
                    p.residue,
                    p.extents,
                    p.taps.len(),
                    g.out_per_group(),
                    g.in_per_group() * p.taps.len(),
                    numel(&p.extents)
                )?;
            }
            if d.spec.phases.len() > 8 {
                writeln!(f, "             ... {} phases in all", d.spec.phases.len())?;
            }
            if d.strided_loads {
                writeln!(
                    f,
                    "source:      the input itself: each tile's panel dealt from it by \
                     stride-2 vector loads (no polyphase copy)"
                )?;
            } else {
                writeln!(f, "source:      {:?}", d.spec.source)?;
            }
            if d.pair.is_some() {
                let pairs = d.table.pairs.iter().filter(|&&p| p).count();
                writeln!(
                    f,
                    "stores:      {pairs} of {} tile groups are stride-2 pairs of phases reading \
                     one panel: both multiplied at once and written interleaved from the \
                     registers",
                    d.table.pairs.len()
                )?;
            }
        }
        if let Some(c) = &self.col2im {
            self.tile_line(f, (c.mr, "rows"), (c.v, c.lanes, "positions"))?;
            writeln!(
                f,
                "gemm:        per image and group M={} (C_out/g x taps), K={} (C_in/g), N={} input positions; col2im sums {} taps per output at most",
                c.rows,
                g.in_per_group(),
                numel(&g.input_shape()[2..]),
                g.axes.iter().map(|a| a.kernel.div_ceil(a.stride)).product::<usize>()
            )?;
            writeln!(f, "bands:       {} output rows (axis 0) per band", c.band)?;
        }
        if let Some(c) = &self.im2col {
            self.tile_line(f, (c.mr, "output channels"), (c.v, c.lanes, "positions"))?;
            writeln!(
                f,
                "gemm:        per image and group M={} (C_out/g), K={} (C_in/g x taps), N={} output positions, over im2col columns",
                g.out_per_group(),
                c.kdim,
                numel(&g.output_shape()[2..]),
            )?;
            writeln!(f, "bands:       {} output positions per band", c.band)?;
        }
        if let Some(c) = &self.batch {
            if c.dots {
                writeln!(
                    f,
                    "kernel:      dot products: each image's inputs, read in place, against \
                     each column's weights (16 partial sums)"
                )?;
            } else {
                self.tile_line(f, (c.mr, "images"), (c.v, c.lanes, "columns"))?;
            }
            writeln!(
                f,
                "gemm:        per group M={} (images), K={}, N={} columns, one position per image on the {} side",
                g.batch,
                c.kdim,
                c.cols,
                crate::fast::batch_gemm::small_side(g)
            )?;
        }
        if let Some(c) = &self.winograd {
            self.tile_line(f, (c.mr, "output channels"), (c.v, c.lanes, "tiles"))?;
            let points: usize = c.transforms.iter().map(|t| t.alpha).product();
            writeln!(
                f,
                "winograd:    {} over {} phases with taps: {} points per tile, per phase and point M={} (C_out/g), K={} (input components x C_in/g), N<={} tiles per task",
                c.name(),
                c.live_phases(),
                points,
                g.out_per_group(),
                c.kdim,
                c.pitch
            )?;
        }
        if let Some(r) = &self.rows {
            if r.by_taps() {
                writeln!(
                    f,
                    "kernel:      {} depthwise tap vectors, {} channel planes",
                    self.isa_shown(),
                    g.batch * g.out_channels
                )?;
            } else {
                writeln!(
                    f,
                    "kernel:      {} depthwise rows, {} phases, {} channel planes",
                    self.isa_shown(),
                    r.spec.phases.len(),
                    g.batch * g.out_channels
                )?;
            }
        }
        writeln!(
            f,
            "packed:      {} bytes (weights packed once, tile table)",
            self.packed_bytes()
        )?;
        writeln!(
            f,
            "workspace:   {} bytes per execution",
            self.workspace_bytes()
        )?;
        writeln!(f, "threads:     {}", self.threads)?;
        let ranges = self.channel_ranges();
        if ranges > 1 {
            writeln!(
                f,
                "tasks:       each group's output channels cut into {ranges} ranges of whole \
                 tiles between the threads (the weights stream from beyond the L2 and the \
                 images and groups leave threads idle: each task streams only its \
                 channels' weights)"
            )?;
        }
        write!(f, "flops:       {}", g.flops())
    }
}
