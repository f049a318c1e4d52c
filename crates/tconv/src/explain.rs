//! The arithmetic of a computation as data, for teaching and debugging. The library never
//! prints: the CLI (or a picture renderer) turns these steps into text or images.
//!
//! - [`scatter_steps`]: for a transposed conv, each input element, the kernel it scales,
//!   where that lands, and every product it adds into the output (or drops in the cropped
//!   border).
//! - [`dot_steps`]: for a conv, each output element as its dot product.
//! - [`overlap_counts`]: how many kernel taps reach each output position of a transposed conv.

use crate::geometry::Geometry;
use crate::params::Op;
use crate::tensor::{flat_index, numel, positions, Element};

/// One product added by the scatter view of a transposed conv.
#[derive(Clone, Debug, PartialEq)]
pub struct Contribution<T> {
    /// Output channel.
    pub out_channel: usize,
    /// Kernel tap.
    pub tap: Vec<usize>,
    /// Weight value at that tap.
    pub weight: T,
    /// Uncropped output coordinate `i*s + k*d - p_begin` (may lie outside the output).
    pub position: Vec<i64>,
    /// Whether `position` lies inside the output (otherwise it is cropped by padding).
    pub inside: bool,
    /// `x · w`.
    pub product: T,
}

/// One input element of a transposed conv and everything it contributes.
#[derive(Clone, Debug, PartialEq)]
pub struct ScatterStep<T> {
    /// Batch index.
    pub batch: usize,
    /// Input channel.
    pub in_channel: usize,
    /// Input position.
    pub index: Vec<usize>,
    /// Input value.
    pub value: T,
    /// Where the scaled kernel's tap 0 lands: `i*s - p_begin` per axis.
    pub offset: Vec<i64>,
    /// Products added into the output, in tap order per output channel.
    pub contributions: Vec<Contribution<T>>,
}

/// The scatter steps of a transposed conv on contiguous data (`x (N, C_in, *in)`,
/// `w (C_in, C_out/g, *k)`), in input order.
pub fn scatter_steps<T: Element>(g: &Geometry, x: &[T], w: &[T]) -> Vec<ScatterStep<T>> {
    debug_assert_eq!(g.op, Op::ConvTranspose);
    let (in_sp, k_sp) = (g.small_spatial(), g.kernel_shape());
    let (in_size, k_size) = (numel(&in_sp), numel(&k_sp));
    let (in_pg, out_pg) = (g.in_per_group(), g.out_per_group());
    let mut steps = Vec::new();
    for n in 0..g.batch {
        for ci in 0..g.in_channels {
            let group = ci / in_pg;
            for (i_flat, i) in positions(&in_sp).enumerate() {
                let value = x[(n * g.in_channels + ci) * in_size + i_flat];
                let offset: Vec<i64> = g
                    .axes
                    .iter()
                    .zip(&i)
                    .map(|(a, &i)| (i * a.stride) as i64 - a.pad_begin)
                    .collect();
                let mut contributions = Vec::new();
                for col in 0..out_pg {
                    for (k_flat, k) in positions(&k_sp).enumerate() {
                        let weight = w[(ci * out_pg + col) * k_size + k_flat];
                        let position: Vec<i64> = g
                            .axes
                            .iter()
                            .zip(offset.iter().zip(&k))
                            .map(|(a, (&o, &k))| o + (k * a.dilation) as i64)
                            .collect();
                        let inside = position
                            .iter()
                            .zip(&g.axes)
                            .all(|(&p, a)| p >= 0 && (p as usize) < a.output);
                        contributions.push(Contribution {
                            out_channel: group * out_pg + col,
                            tap: k,
                            weight,
                            position,
                            inside,
                            product: value * weight,
                        });
                    }
                }
                steps.push(ScatterStep {
                    batch: n,
                    in_channel: ci,
                    index: i,
                    value,
                    offset,
                    contributions,
                });
            }
        }
    }
    steps
}

/// One term of a conv dot product.
#[derive(Clone, Debug, PartialEq)]
pub struct Term<T> {
    /// Input channel.
    pub in_channel: usize,
    /// Kernel tap.
    pub tap: Vec<usize>,
    /// Input coordinate `o*s + k*d - p_begin` (outside the input: padding).
    pub position: Vec<i64>,
    /// The input value, or `None` where the tap reads padding (zero).
    pub input: Option<T>,
    /// Weight value.
    pub weight: T,
}

/// One output element of a conv as a dot product.
#[derive(Clone, Debug, PartialEq)]
pub struct DotStep<T> {
    /// Batch index.
    pub batch: usize,
    /// Output channel.
    pub out_channel: usize,
    /// Output position.
    pub index: Vec<usize>,
    /// The terms, in channel then tap order.
    pub terms: Vec<Term<T>>,
    /// Bias added, if any.
    pub bias: Option<T>,
    /// The resulting output value.
    pub value: T,
}

/// The dot products of a conv on contiguous data (`x (N, C_in, *in)`, `w (C_out, C_in/g, *k)`).
pub fn dot_steps<T: Element>(
    g: &Geometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
) -> Vec<DotStep<T>> {
    debug_assert_eq!(g.op, Op::Conv);
    let (in_sp, out_sp, k_sp) = (g.big_spatial(), g.small_spatial(), g.kernel_shape());
    let (in_size, k_size) = (numel(&in_sp), numel(&k_sp));
    let (in_pg, out_pg) = (g.in_per_group(), g.out_per_group());
    let mut steps = Vec::new();
    for n in 0..g.batch {
        for co in 0..g.out_channels {
            let group = co / out_pg;
            for o in positions(&out_sp) {
                let mut terms = Vec::new();
                let b = bias.map(|b| b[co]);
                let mut value = b.unwrap_or_else(T::zero);
                for cil in 0..in_pg {
                    let ci = group * in_pg + cil;
                    for (k_flat, k) in positions(&k_sp).enumerate() {
                        let weight = w[(co * in_pg + cil) * k_size + k_flat];
                        let position: Vec<i64> = g
                            .axes
                            .iter()
                            .zip(o.iter().zip(&k))
                            .map(|(a, (&o, &k))| {
                                (o * a.stride + k * a.dilation) as i64 - a.pad_begin
                            })
                            .collect();
                        let inside = position
                            .iter()
                            .zip(&in_sp)
                            .all(|(&p, &n)| p >= 0 && (p as usize) < n);
                        let input = inside.then(|| {
                            let idx: Vec<usize> = position.iter().map(|&p| p as usize).collect();
                            x[(n * g.in_channels + ci) * in_size + flat_index(&in_sp, &idx)]
                        });
                        if let Some(v) = input {
                            value = value + v * weight;
                        }
                        terms.push(Term {
                            in_channel: ci,
                            tap: k,
                            position,
                            input,
                            weight,
                        });
                    }
                }
                steps.push(DotStep {
                    batch: n,
                    out_channel: co,
                    index: o,
                    terms,
                    bias: b,
                    value,
                });
            }
        }
    }
    steps
}

/// For a transposed conv, how many (input element, kernel tap) pairs reach each output
/// position of one channel pair, as a row-major grid of the output's spatial shape.
/// Uneven counts are the source of checkerboard artifacts.
pub fn overlap_counts(g: &Geometry) -> Vec<usize> {
    debug_assert_eq!(g.op, Op::ConvTranspose);
    let (in_sp, out_sp, k_sp) = (g.small_spatial(), g.big_spatial(), g.kernel_shape());
    let mut counts = vec![0; numel(&out_sp)];
    for i in positions(&in_sp) {
        for k in positions(&k_sp) {
            if let Some(o) = crate::reference::big_flat(g, &i, &k) {
                counts[o] += 1;
            }
        }
    }
    counts
}

/// A same-size alternative for one axis whose kernel is divisible by the stride.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alternative {
    /// Spatial axis.
    pub axis: usize,
    /// Kernel extent (a multiple of the stride).
    pub kernel: usize,
    /// Symmetric padding.
    pub padding: usize,
    /// Output padding.
    pub output_padding: usize,
}

/// How evenly a transposed convolution's kernel copies overlap: the data behind the
/// checkerboard diagnostic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlapReport {
    /// Output spatial extents.
    pub extents: Vec<usize>,
    /// Taps reaching each output position (row-major over `extents`).
    pub counts: Vec<usize>,
    /// Per axis, taps reaching each output residue `o mod s` (away from the borders).
    pub taps_per_residue: Vec<Vec<usize>>,
    /// Fewest taps any interior position receives (0: some positions get only the bias).
    pub interior_min: usize,
    /// Most taps any interior position receives.
    pub interior_max: usize,
    /// Whether every interior position receives the same number of taps.
    pub uniform: bool,
    /// For each uneven axis, kernel/padding choices with a kernel divisible by the stride
    /// that keep the output size (dilation 1 only).
    pub alternatives: Vec<Alternative>,
}

impl OverlapReport {
    /// `interior_max / interior_min` (infinite when some positions get no tap).
    pub fn ratio(&self) -> f64 {
        if self.interior_min == 0 {
            f64::INFINITY
        } else {
            self.interior_max as f64 / self.interior_min as f64
        }
    }
}

/// The overlap pattern of a transposed convolution (channels do not matter).
pub fn overlap_report(g: &Geometry) -> OverlapReport {
    debug_assert_eq!(g.op, Op::ConvTranspose);
    let counts = overlap_counts(g);
    let taps_per_residue: Vec<Vec<usize>> = g
        .axes
        .iter()
        .map(|a| {
            (0..a.stride)
                .map(|r| {
                    (0..a.kernel)
                        .filter(|&k| {
                            (r as i64 + a.pad_begin - (k * a.dilation) as i64)
                                .rem_euclid(a.stride as i64)
                                == 0
                        })
                        .count()
                })
                .collect()
        })
        .collect();
    let interior_min = taps_per_residue
        .iter()
        .map(|t| t.iter().copied().min().unwrap_or(0))
        .product();
    let interior_max = taps_per_residue
        .iter()
        .map(|t| t.iter().copied().max().unwrap_or(0))
        .product();
    let mut alternatives = Vec::new();
    for (axis, a) in g.axes.iter().enumerate() {
        let uneven = taps_per_residue[axis].iter().min() != taps_per_residue[axis].iter().max();
        if !uneven || a.dilation != 1 || a.pad_begin < 0 || a.pad_end < 0 {
            continue;
        }
        // out = (L-1)s - p_b - p_e + k + op; keep `out` with k' a multiple of s and
        // symmetric padding p' and output_padding op' < s: 2p' - op' = k' - k + p_b + p_e - op.
        let s = a.stride;
        let base = (a.pad_begin + a.pad_end) - a.output_padding as i64;
        let mut ks = vec![s * a.kernel.div_ceil(s)];
        if a.kernel / s >= 1 && s * (a.kernel / s) != ks[0] {
            ks.push(s * (a.kernel / s));
        }
        for k2 in ks {
            let need = k2 as i64 - a.kernel as i64 + base;
            if let Some(op2) = (0..s as i64).find(|op2| (need + op2) >= 0 && (need + op2) % 2 == 0)
            {
                alternatives.push(Alternative {
                    axis,
                    kernel: k2,
                    padding: ((need + op2) / 2) as usize,
                    output_padding: op2 as usize,
                });
            }
        }
    }
    OverlapReport {
        extents: g.big_spatial(),
        counts,
        taps_per_residue,
        interior_min,
        interior_max,
        uniform: interior_min == interior_max,
        alternatives,
    }
}
