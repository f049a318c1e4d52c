//! The phases of a layer as the transforms see them: each phase's output residue, extents
//! and sources (polyphase components of the input, read through their own taps).

use super::*;
use crate::fast::spec::residue_taps;
use crate::params::Op;
use crate::tensor::for_each_index;

/// One source of a phase: a polyphase component of the input (per axis `ρ`: input
/// positions `s_in·u + ρ`) read through its own taps. A transposed conv's phases read the
/// input itself (one source, `s_in = 1`); a strided conv's single phase sums the stride-1
/// correlations of its `s^D` components, so their channels line up along the GEMMs'
/// reduction (`K = sources · C_in/g`).
#[derive(Clone, Debug)]
pub(crate) struct Source {
    /// Component per axis.
    pub(crate) comp: Vec<usize>,
    /// Component offset of a tile's first input per axis: tile `t` reads from `m·t + base`.
    pub(crate) base: Vec<isize>,
    /// Kernel index of each tap per axis, in ascending source order.
    pub(crate) kidx: Vec<Vec<usize>>,
}

/// One phase as the transforms see it.
#[derive(Clone, Debug)]
pub(crate) struct Phase {
    /// Output residue per axis (`o = out_stride · q + residue`).
    pub(crate) residue: Vec<usize>,
    /// Extents `Q` per axis.
    pub(crate) extents: Vec<usize>,
    /// Its sources (none: bias only).
    pub(crate) sources: Vec<Source>,
}

impl Phase {
    pub(crate) fn live(&self) -> bool {
        !self.sources.is_empty()
    }
    /// Whether `other` reads the same inputs over the same tiles (its transformed input is
    /// this phase's).
    pub(crate) fn same_input(&self, other: &Phase) -> bool {
        self.extents == other.extents
            && self.sources.len() == other.sources.len()
            && self
                .sources
                .iter()
                .zip(&other.sources)
                .all(|(a, b)| a.comp == b.comp && a.base == b.base)
    }
    pub(crate) fn empty(&self) -> bool {
        self.extents.contains(&0)
    }
}

/// Per axis: each output residue's extent and sources `(component, taps (kernel index,
/// shift))`.
type AxisResidues = Vec<(usize, Vec<(usize, Vec<(usize, isize)>)>)>;

/// The residues of every axis, the output stride and the input stride (between a
/// component's positions); `None` where the op has no such form.
fn axis_residues(g: &Geometry) -> Option<(Vec<AxisResidues>, Vec<usize>, Vec<usize>)> {
    let ones = vec![1; g.axes.len()];
    match g.op {
        Op::ConvTranspose => Some((
            g.axes
                .iter()
                .map(|a| {
                    residue_taps(a)
                        .into_iter()
                        .map(|(q, taps)| {
                            let sources = if taps.is_empty() {
                                Vec::new()
                            } else {
                                vec![(0, taps)]
                            };
                            (q, sources)
                        })
                        .collect()
                })
                .collect(),
            g.axes.iter().map(|a| a.stride).collect(),
            ones,
        )),
        Op::Conv => {
            // Tap `k` reads `o·s + k·d − p`: component `(k·d − p) mod s` at `o + ⌊(k·d − p)/s⌋`.
            let res = g
                .axes
                .iter()
                .map(|a| {
                    let s = a.stride as i64;
                    let sources = (0..a.stride)
                        .filter_map(|rho| {
                            let taps: Vec<(usize, isize)> = (0..a.kernel)
                                .filter_map(|k| {
                                    let off = (k * a.dilation) as i64 - a.pad_begin;
                                    (off.rem_euclid(s) as usize == rho)
                                        .then_some((k, off.div_euclid(s) as isize))
                                })
                                .collect();
                            (!taps.is_empty()).then_some((rho, taps))
                        })
                        .collect();
                    vec![(a.output, sources)]
                })
                .collect();
            Some((res, ones, g.axes.iter().map(|a| a.stride).collect()))
        }
    }
}

/// The transform per axis and the phases, where every source of every phase has the same
/// number of taps (at most 3) per axis, reading consecutive positions of its component;
/// the tile size per axis is the one with the fewest multiplications over the axis's
/// residues.
#[allow(clippy::type_complexity)]
pub(crate) fn decompose(
    g: &Geometry,
) -> Option<(Vec<Transform>, Vec<Phase>, Vec<usize>, Vec<usize>)> {
    if g.axes.is_empty() || g.axes.len() > MAX_DIMS {
        return None;
    }
    let (per_axis, out_stride, in_stride) = axis_residues(g)?;
    let mut transforms = Vec::new();
    for res in &per_axis {
        let taps: Vec<&Vec<(usize, isize)>> = res
            .iter()
            .flat_map(|(_, srcs)| srcs.iter().map(|(_, t)| t))
            .collect();
        let r = taps.first().map_or(1, |t| t.len());
        let uniform = taps
            .iter()
            .all(|t| t.len() == r && t.windows(2).all(|w| w[1].1 == w[0].1 + 1));
        if !uniform || r > MAX_ALPHA - 1 {
            return None;
        }
        let cost = |m: usize| -> usize {
            res.iter()
                .filter(|(_, srcs)| !srcs.is_empty())
                .map(|(q, srcs)| q.div_ceil(m) * (m + r - 1) * srcs.len())
                .sum()
        };
        let m = if r == 1 {
            1
        } else {
            (2..=MAX_ALPHA + 1 - r).min_by_key(|&m| cost(m))?
        };
        transforms.push(Transform::new(m, r)?);
    }
    let dims = g.axes.len();
    let mut phases = Vec::new();
    let counts: Vec<usize> = per_axis.iter().map(Vec::len).collect();
    for_each_index(&counts, |residue| {
        let pick = |a: usize| &per_axis[a][residue[a]];
        let n_src: Vec<usize> = (0..dims).map(|a| pick(a).1.len()).collect();
        let mut sources = Vec::new();
        for_each_index(&n_src, |si| {
            let src = |a: usize| &pick(a).1[si[a]];
            sources.push(Source {
                comp: (0..dims).map(|a| src(a).0).collect(),
                base: (0..dims).map(|a| src(a).1[0].1).collect(),
                kidx: (0..dims)
                    .map(|a| src(a).1.iter().map(|t| t.0).collect())
                    .collect(),
            });
        });
        phases.push(Phase {
            residue: residue.to_vec(),
            extents: (0..dims).map(|a| pick(a).0).collect(),
            sources,
        });
    });
    Some((transforms, phases, out_stride, in_stride))
}
