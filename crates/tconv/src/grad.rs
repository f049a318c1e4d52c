//! Gradients of `conv` and `conv_transpose`, built from the forward machinery.
//!
//! With `y = op(x; w) + b` and an upstream gradient `gy = ∂L/∂y`:
//! - `∂L/∂x` is the adjoint op applied to `gy` with the same weight ([`Geometry::adjoint`]):
//!   a conv for conv_transpose, a conv_transpose for conv. It runs through the planner, so
//!   the fast kernels serve it.
//! - `∂L/∂w[a, b', k] = Σ_n Σ_i S[n, a, i] · B[n, b, i*s + k*d - p_begin]`, where for
//!   conv_transpose `(S, B) = (x, gy)` and for conv `(S, B) = (gy, x)` (the weight's first
//!   axis always indexes the "small" side). Per group and tap this is a GEMM over positions,
//!   run on the same packed-panel microkernels.
//! - `∂L/∂b[c] = Σ_n Σ_positions gy[n, c, ·]`.
//!
//! Only the requested gradients are computed. Every gradient element is produced by one task
//! in a fixed order, so results are bitwise identical for any thread count.

use ndarray::{ArrayD, AsArray, Dimension, IxDyn};
use rayon::prelude::*;

use crate::error::{fail, ErrorKind, Result};
use crate::fast::kernels::{portable, tile_shapes};
use crate::fast::Isa;
use crate::geometry::Geometry;
use crate::params::{ConvParams, Op};
use crate::plan::{Algorithm, Plan, PlanOptions};
use crate::tensor::{contiguous, for_each_index, numel, positions, Element};

/// Which gradients to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// `∂L/∂x`.
    pub input: bool,
    /// `∂L/∂w`.
    pub weight: bool,
    /// `∂L/∂b`.
    pub bias: bool,
}

impl Wanted {
    /// All three.
    pub fn all() -> Self {
        Wanted {
            input: true,
            weight: true,
            bias: true,
        }
    }
}

/// The requested gradients, shaped like `x`, `w` and the bias `(C_out,)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients<T> {
    /// `∂L/∂x`, if requested.
    pub input: Option<ArrayD<T>>,
    /// `∂L/∂w`, if requested.
    pub weight: Option<ArrayD<T>>,
    /// `∂L/∂b`, if requested.
    pub bias: Option<ArrayD<T>>,
}

/// Gradients of `conv(x, w, b)` for the upstream gradient `grad_y` (shaped like the output).
///
/// # Errors
/// Invalid shapes or parameters, or `grad_y` not shaped like the output.
pub fn conv_backward<'x, 'w, 'g, T: Element, D1: Dimension, D2: Dimension, D3: Dimension>(
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    grad_y: impl AsArray<'g, T, D3>,
    params: &ConvParams,
    wanted: Wanted,
    options: &PlanOptions,
) -> Result<Gradients<T>> {
    backward(Op::Conv, x, w, grad_y, params, wanted, options)
}

/// Gradients of `conv_transpose(x, w, b)` for the upstream gradient `grad_y`.
///
/// # Errors
/// Invalid shapes or parameters, or `grad_y` not shaped like the output.
pub fn conv_transpose_backward<
    'x,
    'w,
    'g,
    T: Element,
    D1: Dimension,
    D2: Dimension,
    D3: Dimension,
>(
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    grad_y: impl AsArray<'g, T, D3>,
    params: &ConvParams,
    wanted: Wanted,
    options: &PlanOptions,
) -> Result<Gradients<T>> {
    backward(Op::ConvTranspose, x, w, grad_y, params, wanted, options)
}

fn backward<'x, 'w, 'g, T: Element, D1: Dimension, D2: Dimension, D3: Dimension>(
    op: Op,
    x: impl AsArray<'x, T, D1>,
    w: impl AsArray<'w, T, D2>,
    grad_y: impl AsArray<'g, T, D3>,
    params: &ConvParams,
    wanted: Wanted,
    options: &PlanOptions,
) -> Result<Gradients<T>> {
    let (x, w, gy) = (
        x.into().into_dyn(),
        w.into().into_dyn(),
        grad_y.into().into_dyn(),
    );
    let g = Geometry::new(op, x.shape(), w.shape(), None, params)?;
    let expected = g.user_output_shape();
    if gy.shape() != expected.as_slice() {
        return fail(ErrorKind::ShapeMismatch {
            what: "grad_output",
            got: gy.shape().to_vec(),
            expected,
        });
    }
    let (xs, ws, gys) = (contiguous(&x), contiguous(&w), contiguous(&gy));
    let shaped = |shape: &[usize], v: Vec<T>| {
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("gradient buffer matches its shape")
    };
    let input = if wanted.input {
        let v = grad_input(&g, &ws, &gys, options)?;
        Some(shaped(x.shape(), v))
    } else {
        None
    };
    let weight = if wanted.weight {
        let v = match options.algorithm.or_else(env_algorithm) {
            Some(Algorithm::Reference) => grad_weight_reference(&g, &xs, &gys),
            _ => grad_weight_fast(&g, &xs, &gys, options),
        };
        Some(shaped(w.shape(), v))
    } else {
        None
    };
    let bias = wanted
        .bias
        .then(|| shaped(&[g.out_channels], grad_bias(&g, &gys)));
    Ok(Gradients {
        input,
        weight,
        bias,
    })
}

fn env_algorithm() -> Option<Algorithm> {
    std::env::var("TCONV_ALGORITHM")
        .ok()
        .and_then(|s| Algorithm::parse(&s))
}

/// `∂L/∂x`: the adjoint op on `gy` with the same weight, through the planner.
pub fn grad_input<T: Element>(
    g: &Geometry,
    w: &[T],
    gy: &[T],
    options: &PlanOptions,
) -> Result<Vec<T>> {
    let adjoint = g.adjoint();
    let plan = Plan::from_geometry(adjoint, w, options)?;
    let mut gx = vec![T::zero(); numel(&g.input_shape())];
    plan.run(gy, None, &mut gx);
    Ok(gx)
}

/// `∂L/∂b`: the sum of `gy` over batch and positions, per output channel.
pub fn grad_bias<T: Element>(g: &Geometry, gy: &[T]) -> Vec<T> {
    let plane = numel(&g.output_shape()[2..]);
    let mut gb = vec![T::zero(); g.out_channels];
    for (i, chunk) in gy.chunks(plane.max(1)).enumerate() {
        let c = i % g.out_channels;
        gb[c] = chunk.iter().fold(gb[c], |acc, &v| acc + v);
    }
    gb
}

/// The small-side tensor `S` and big-side tensor `B` of the weight-gradient correlation.
fn sides<'a, T>(g: &Geometry, x: &'a [T], gy: &'a [T]) -> (&'a [T], &'a [T]) {
    match g.op {
        Op::ConvTranspose => (x, gy),
        Op::Conv => (gy, x),
    }
}

/// `∂L/∂w` by its definition (the oracle for the fast version).
pub fn grad_weight_reference<T: Element>(g: &Geometry, x: &[T], gy: &[T]) -> Vec<T> {
    let (s, b) = sides(g, x, gy);
    let (small_sp, big_sp, k_sp) = (g.small_spatial(), g.big_spatial(), g.kernel_shape());
    let (small_size, big_size, k_size) = (numel(&small_sp), numel(&big_sp), numel(&k_sp));
    let (a_ch, b_ch) = match g.op {
        Op::ConvTranspose => (g.in_channels, g.out_channels),
        Op::Conv => (g.out_channels, g.in_channels),
    };
    let (a_pg, b_pg) = (a_ch / g.groups, b_ch / g.groups);
    let mut dw = vec![T::zero(); a_ch * b_pg * k_size];
    for a in 0..a_ch {
        let group = a / a_pg;
        for bl in 0..b_pg {
            let bc = group * b_pg + bl;
            for (k_flat, k) in positions(&k_sp).enumerate() {
                let mut acc = T::zero();
                for n in 0..g.batch {
                    for (i_flat, i) in positions(&small_sp).enumerate() {
                        if let Some(o) = crate::reference::big_flat(g, &i, &k) {
                            acc = acc
                                + s[(n * a_ch + a) * small_size + i_flat]
                                    * b[(n * b_ch + bc) * big_size + o];
                        }
                    }
                }
                dw[(a * b_pg + bl) * k_size + k_flat] = acc;
            }
        }
    }
    dw
}

/// Positions processed per packed slice of the weight-gradient GEMM.
const POSITION_CHUNK: usize = 256;
/// Below this many (a, b) channel pairs per group the weight gradient uses direct dot
/// products: a 6×16 register tile would be mostly padding.
const SMALL_GEMM: usize = 32;

/// `∂L/∂w` as one GEMM per (group, tap) over the positions where the tap is valid:
/// `dW[a, b] = Σ_p S[a, p] · B[b, p]`, on the packed-panel microkernel with `p` as `k`.
pub fn grad_weight_fast<T: Element>(
    g: &Geometry,
    x: &[T],
    gy: &[T],
    options: &PlanOptions,
) -> Vec<T> {
    let (s, b) = sides(g, x, gy);
    let (small_sp, big_sp, k_sp) = (g.small_spatial(), g.big_spatial(), g.kernel_shape());
    let (small_size, big_size, k_size) = (numel(&small_sp), numel(&big_sp), numel(&k_sp));
    let (a_ch, b_ch) = match g.op {
        Op::ConvTranspose => (g.in_channels, g.out_channels),
        Op::Conv => (g.out_channels, g.in_channels),
    };
    let (a_pg, b_pg) = (a_ch / g.groups, b_ch / g.groups);
    let isa = options.isa.map_or_else(Isa::detect, |i| i.or_below());
    let isa = if T::fast_kernel(isa, 6, 2).is_some() {
        isa
    } else {
        Isa::Scalar
    };
    let (mr, v, _) = tile_shapes(isa)[0];
    let kernel = T::fast_kernel(isa, mr, v)
        .or_else(|| portable::<T>(mr, v))
        .expect("tile_shapes lists instantiated kernels");
    let tl = v * isa.lanes();
    // The register tile's rows (MR) take whichever side wastes less padding (e.g. the 3
    // output channels of an RGB layer go on the rows, not on 16 lanes).
    let waste = |m: usize, n: usize| m.div_ceil(mr) * mr * n.div_ceil(tl) * tl;
    let swap = waste(b_pg, a_pg) < waste(a_pg, b_pg);
    let (m_src, m_ch, m_pg, m_size, n_src, n_ch, n_pg, n_size) = if swap {
        (b, b_ch, b_pg, big_size, s, a_ch, a_pg, small_size)
    } else {
        (s, a_ch, a_pg, small_size, b, b_ch, b_pg, big_size)
    };
    let (mblocks, nblocks) = (m_pg.div_ceil(mr), n_pg.div_ceil(tl));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = options
        .threads
        .unwrap_or(if g.flops() < 4_000_000 { 1 } else { cores })
        .max(1);

    // One task per (group, tap): the result block dW[group][:, :, tap].
    let run = |task: usize| -> Vec<T> {
        let (group, k_flat) = (task / k_size, task % k_size);
        let k = positions(&k_sp)
            .nth(k_flat)
            .expect("tap index within the kernel");
        // Per axis, the small positions whose tap lands inside the big side.
        let ranges: Vec<(usize, usize)> = g
            .axes
            .iter()
            .enumerate()
            .map(|(ax, a)| {
                let off = (k[ax] * a.dilation) as i64 - a.pad_begin;
                let s = a.stride as i64;
                let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
                let hi = (a.big(g.op) as i64 - 1 - off).div_euclid(s) + 1;
                (
                    lo.max(0) as usize,
                    hi.clamp(0, a.small(g.op) as i64) as usize,
                )
            })
            .collect();
        let extents: Vec<usize> = ranges
            .iter()
            .map(|&(lo, hi)| hi.saturating_sub(lo))
            .collect();
        let mut pairs: Vec<(usize, usize)> = Vec::with_capacity(numel(&extents));
        for_each_index(&extents, |rel| {
            let (mut si, mut bi) = (0usize, 0usize);
            for (ax, a) in g.axes.iter().enumerate() {
                let small = rel[ax] + ranges[ax].0;
                let big = ((small * a.stride + k[ax] * a.dilation) as i64 - a.pad_begin) as usize;
                si = si * a.small(g.op) + small;
                bi = bi * a.big(g.op) + big;
            }
            pairs.push((si, bi));
        });
        if a_pg * b_pg < SMALL_GEMM {
            // Few channel pairs (depthwise and the like): direct dot products.
            let mut out = vec![T::zero(); a_pg * b_pg];
            for (a, row) in out.chunks_mut(b_pg).enumerate() {
                for (bl, slot) in row.iter_mut().enumerate() {
                    let mut acc = T::zero();
                    for n in 0..g.batch {
                        let sr = &s[(n * a_ch + group * a_pg + a) * small_size..][..small_size];
                        let br = &b[(n * b_ch + group * b_pg + bl) * big_size..][..big_size];
                        for &(si, bi) in &pairs {
                            acc = acc + sr[si] * br[bi];
                        }
                    }
                    *slot = acc;
                }
            }
            return out;
        }
        let mut acc = vec![T::zero(); mblocks * nblocks * mr * tl];
        let mut apack = vec![T::zero(); mblocks * POSITION_CHUNK * mr];
        let mut bpack = vec![T::zero(); nblocks * POSITION_CHUNK * tl];
        let mut first = true;
        for n in 0..g.batch {
            for chunk in pairs.chunks(POSITION_CHUNK) {
                let pc = chunk.len();
                for m in 0..mblocks * mr {
                    let (mb, mi) = (m / mr, m % mr);
                    let row = (m < m_pg).then(|| (n * m_ch + group * m_pg + m) * m_size);
                    for (p, &(si, bi)) in chunk.iter().enumerate() {
                        let at = if swap { bi } else { si };
                        apack[(mb * POSITION_CHUNK + p) * mr + mi] =
                            row.map_or(T::zero(), |r| m_src[r + at]);
                    }
                }
                for c in 0..nblocks * tl {
                    let (nb, ni) = (c / tl, c % tl);
                    let row = (c < n_pg).then(|| (n * n_ch + group * n_pg + c) * n_size);
                    for (p, &(si, bi)) in chunk.iter().enumerate() {
                        let at = if swap { si } else { bi };
                        bpack[(nb * POSITION_CHUNK + p) * tl + ni] =
                            row.map_or(T::zero(), |r| n_src[r + at]);
                    }
                }
                for mb in 0..mblocks {
                    let a_run = &apack[mb * POSITION_CHUNK * mr..(mb * POSITION_CHUNK + pc) * mr];
                    for nb in 0..nblocks {
                        let b_run =
                            &bpack[nb * POSITION_CHUNK * tl..(nb * POSITION_CHUNK + pc) * tl];
                        let at = (mb * nblocks + nb) * mr * tl;
                        kernel(a_run, b_run, pc, &mut acc[at..at + mr * tl], !first);
                    }
                }
                first = false;
            }
        }
        if first {
            acc.fill(T::zero()); // no valid position: the gradient is zero
        }
        acc
    };
    let tasks = g.groups * k_size;
    let blocks: Vec<Vec<T>> = if threads <= 1 {
        (0..tasks).map(run).collect()
    } else {
        crate::fast::direct::pool(threads).install(|| (0..tasks).into_par_iter().map(run).collect())
    };
    let mut dw = vec![T::zero(); a_ch * b_pg * k_size];
    for (task, acc) in blocks.iter().enumerate() {
        let (group, k_flat) = (task / k_size, task % k_size);
        if a_pg * b_pg < SMALL_GEMM {
            for a in 0..a_pg {
                for bl in 0..b_pg {
                    dw[((group * a_pg + a) * b_pg + bl) * k_size + k_flat] = acc[a * b_pg + bl];
                }
            }
            continue;
        }
        for a in 0..a_pg {
            for bl in 0..b_pg {
                let (m, c) = if swap { (bl, a) } else { (a, bl) };
                let ((mb, mi), (nb, ni)) = ((m / mr, m % mr), (c / tl, c % tl));
                dw[((group * a_pg + a) * b_pg + bl) * k_size + k_flat] =
                    acc[((mb * nblocks + nb) * mr + mi) * tl + ni];
            }
        }
    }
    dw
}
