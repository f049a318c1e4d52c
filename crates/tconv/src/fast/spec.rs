//! From a checked [`Geometry`] to the dense, stride-1 sub-problems the direct kernels run.
//!
//! **Transposed conv, phase (sub-pixel) decomposition.** Per axis write each output position
//! as `o = s*q + r` (`r` in `0..s`, the phase). Tap `k` reaches phase `r` from input
//! `i = q + c` exactly when `r + p_begin - k*d` is a multiple of `s`, with
//! `c = (r + p_begin - k*d) / s`. So every phase is a dense stride-1 correlation over its own
//! taps: no multiplications by inserted zeros, no col2im workspace, and every output element
//! is written once. Phases that no tap reaches (when `gcd(s, d) > 1`) receive the bias only.
//!
//! **Ordinary conv.** One "phase" (`o = q`). At stride 1 tap `k` reads `i = q + k*d - p`.
//! At stride `s > 1` the input is split into its `s` polyphase components
//! `x_ρ[u] = x[u*s + ρ]`, and tap `k` reads component `ρ = (k*d - p) mod s` at
//! `u = q + floor((k*d - p) / s)`: again dense and stride-1.
//!
//! The kernels vectorise over output positions of a phase, flattened row-major with the
//! *source's* pitches, so that a tap is a constant shift of the flat index and the borders
//! are lane masks. This needs the source's inner extents to cover the phase extents; where
//! they do not, the source is copied once into a zero-padded buffer with larger pitches.

use crate::geometry::{AxisGeometry, Geometry};
use crate::params::Op;
use crate::tensor::positions;

/// One kernel tap of a phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapSpec {
    /// Flat (row-major) kernel index.
    pub kernel_index: usize,
    /// Source coordinate = phase coordinate + `shift`, per axis.
    pub shift: Vec<isize>,
    /// Valid source extents per axis (reads outside are zero padding).
    pub valid: Vec<usize>,
    /// Offset (in elements) of this tap's source plane within a channel's block.
    pub component: usize,
}

/// One phase: a dense stride-1 correlation writing `o = stride*q + residue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseSpec {
    /// Output residue per axis.
    pub residue: Vec<usize>,
    /// Phase extents `Q` per axis (may be 0 on an axis: then the phase is empty).
    pub extents: Vec<usize>,
    /// Taps reaching this phase (empty: bias only).
    pub taps: Vec<TapSpec>,
}

/// How the kernels read the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceLayout {
    /// The caller's `(N, C_in, *in)` buffer as it is.
    Direct,
    /// A copy with inner extents padded to `extents` (zeros beyond the input).
    Padded { extents: Vec<usize> },
    /// Polyphase components `(N, C_in, s^D, *extents)` for a strided conv.
    Polyphase { extents: Vec<usize> },
}

/// Everything the direct driver needs, derived from the geometry alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectSpec {
    /// Output position = `out_stride * q + residue` per axis (stride for conv_transpose, 1 for conv).
    pub out_stride: Vec<usize>,
    /// Phases in row-major residue order.
    pub phases: Vec<PhaseSpec>,
    /// Source layout.
    pub source: SourceLayout,
    /// Source pitches per axis (elements between neighbours along that axis).
    pub pitches: Vec<usize>,
    /// Elements per channel in the source (between consecutive channels).
    pub channel_stride: usize,
}

impl DirectSpec {
    /// The decomposition for `g`.
    pub fn new(g: &Geometry) -> DirectSpec {
        match g.op {
            Op::ConvTranspose => transpose_spec(g),
            Op::Conv => conv_spec(g),
        }
    }

    /// Largest phase extent along axis 0 times the source pitch of axis 0: the flat range
    /// the tiles cover.
    pub fn flat_len(&self) -> usize {
        let q0 = self.phases.iter().map(|p| p.extents[0]).max().unwrap_or(0);
        q0 * self.pitches[0]
    }

    /// Total number of taps over all phases.
    pub fn total_taps(&self) -> usize {
        self.phases.iter().map(|p| p.taps.len()).sum()
    }
}

/// Row-major pitches of a grid of `extents` (the last axis 1).
pub(crate) fn pitches_of(extents: &[usize]) -> Vec<usize> {
    let mut p = vec![1; extents.len()];
    for a in (0..extents.len().saturating_sub(1)).rev() {
        p[a] = p[a + 1] * extents[a + 1];
    }
    p
}

/// For one residue of one axis: its extent and its taps `(k, shift)`.
pub(crate) type ResidueTaps = (usize, Vec<(usize, isize)>);

/// The transposed conv's phases along one axis: for each residue `r` (outputs `s·q + r`),
/// the extent of `q` and the taps `(k, shift)` reaching it, tap `k` reading input
/// `q + shift`. Kernel index descending, so the shifts ascend: consecutive taps then read
/// consecutive source offsets (see the driver's wide groups).
pub(crate) fn residue_taps(a: &AxisGeometry) -> Vec<ResidueTaps> {
    let s = a.stride as i64;
    (0..a.stride)
        .map(|r| {
            let q = if r < a.output {
                (a.output - r).div_ceil(a.stride)
            } else {
                0
            };
            let taps = (0..a.kernel)
                .rev()
                .filter_map(|k| {
                    let num = r as i64 + a.pad_begin - (k * a.dilation) as i64;
                    (num.rem_euclid(s) == 0).then_some((k, num.div_euclid(s) as isize))
                })
                .collect();
            (q, taps)
        })
        .collect()
}

fn transpose_spec(g: &Geometry) -> DirectSpec {
    let dims = g.axes.len();
    // Per axis: for each residue, its extent and its taps (k, shift).
    let per_axis: Vec<Vec<ResidueTaps>> = g.axes.iter().map(residue_taps).collect();
    let strides: Vec<usize> = g.axes.iter().map(|a| a.stride).collect();
    let inputs: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
    let kernel: Vec<usize> = g.kernel_shape();
    // Inner axes must have source extent >= every phase extent.
    let mut extents = inputs.clone();
    for a in 1..dims {
        let qmax = per_axis[a].iter().map(|(q, _)| *q).max().unwrap_or(0);
        extents[a] = extents[a].max(qmax);
    }
    let source = if extents == inputs {
        SourceLayout::Direct
    } else {
        SourceLayout::Padded {
            extents: extents.clone(),
        }
    };
    let pitches = pitches_of(&extents);
    let channel_stride = extents.iter().product();
    let mut phases = Vec::new();
    for r in positions(&strides) {
        let extents_r: Vec<usize> = (0..dims).map(|a| per_axis[a][r[a]].0).collect();
        let axis_taps: Vec<&Vec<(usize, isize)>> =
            (0..dims).map(|a| &per_axis[a][r[a]].1).collect();
        let counts: Vec<usize> = axis_taps.iter().map(|t| t.len()).collect();
        let mut taps = Vec::new();
        for choice in positions(&counts) {
            let ks: Vec<usize> = (0..dims).map(|a| axis_taps[a][choice[a]].0).collect();
            taps.push(TapSpec {
                kernel_index: crate::tensor::flat_index(&kernel, &ks),
                shift: (0..dims).map(|a| axis_taps[a][choice[a]].1).collect(),
                valid: inputs.clone(),
                component: 0,
            });
        }
        phases.push(PhaseSpec {
            residue: r,
            extents: extents_r,
            taps,
        });
    }
    DirectSpec {
        out_stride: strides,
        phases,
        source,
        pitches,
        channel_stride,
    }
}

fn conv_spec(g: &Geometry) -> DirectSpec {
    let dims = g.axes.len();
    let outputs: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
    let inputs: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
    let strides: Vec<usize> = g.axes.iter().map(|a| a.stride).collect();
    let kernel = g.kernel_shape();
    let strided = strides.iter().any(|&s| s > 1);
    // Component extents: ceil(in / s), inner axes at least the output extent.
    let mut extents: Vec<usize> = g.axes.iter().map(|a| a.input.div_ceil(a.stride)).collect();
    for a in 1..dims {
        extents[a] = extents[a].max(outputs[a]);
    }
    let source = if !strided && extents == inputs {
        SourceLayout::Direct
    } else if !strided {
        SourceLayout::Padded {
            extents: extents.clone(),
        }
    } else {
        SourceLayout::Polyphase {
            extents: extents.clone(),
        }
    };
    let plane: usize = extents.iter().product();
    let comps: usize = if strided { strides.iter().product() } else { 1 };
    let mut taps = Vec::new();
    for k in positions(&kernel) {
        let mut shift = Vec::with_capacity(dims);
        let mut rho = Vec::with_capacity(dims);
        let mut valid = Vec::with_capacity(dims);
        for (a, ax) in g.axes.iter().enumerate() {
            let off = (k[a] * ax.dilation) as i64 - ax.pad_begin;
            let s = ax.stride as i64;
            let r = off.rem_euclid(s) as usize;
            shift.push(off.div_euclid(s) as isize);
            // Component r holds x[u*s + r] for u < ceil((in - r) / s).
            valid.push(if r < ax.input {
                (ax.input - r).div_ceil(ax.stride)
            } else {
                0
            });
            rho.push(r);
        }
        let component = if strided {
            crate::tensor::flat_index(&strides, &rho) * plane
        } else {
            0
        };
        taps.push(TapSpec {
            kernel_index: crate::tensor::flat_index(&kernel, &k),
            shift,
            valid,
            component,
        });
    }
    let phases = vec![PhaseSpec {
        residue: vec![0; dims],
        extents: outputs,
        taps,
    }];
    DirectSpec {
        out_stride: vec![1; dims],
        phases,
        source,
        pitches: pitches_of(&extents),
        channel_stride: plane * comps,
    }
}
