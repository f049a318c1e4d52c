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
        let v = match options.algorithm.or_else(Algorithm::from_env) {
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

/// Pack `width`-wide position-major runs: `out[(blk * POSITION_CHUNK + j) * width + c % width]`
/// holds `value(c, j)` for channel `c` (zero past `channels`) and pair `j < pc`.
#[inline]
fn pack_runs<T: Element>(
    out: &mut [T],
    width: usize,
    channels: usize,
    pc: usize,
    value: impl Fn(usize, usize) -> T,
) {
    for c in 0..channels.div_ceil(width) * width {
        let (blk, j0) = (c / width, c % width);
        let run = &mut out[blk * POSITION_CHUNK * width..(blk * POSITION_CHUNK + pc) * width];
        if c < channels {
            for (j, slot) in run.iter_mut().skip(j0).step_by(width).enumerate() {
                *slot = value(c, j);
            }
        } else {
            for slot in run.iter_mut().skip(j0).step_by(width) {
                *slot = T::zero();
            }
        }
    }
}

/// `∂L/∂w` as GEMMs over positions: `dW[a, b, k] = Σ_p S[a, p] · B[b, big(p, k)]`, on the
/// packed-panel microkernel with `(n, p)` as the reduction axis. Each task owns one group and
/// a range of taps; it packs the `S` side of a chunk of positions once and reuses it for all
/// of its taps, re-packing only the (shifted, zero-padded) `B` side per tap.
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
    let s_on_rows = waste(a_pg, b_pg) <= waste(b_pg, a_pg);
    let (rows_pg, cols_pg) = if s_on_rows {
        (a_pg, b_pg)
    } else {
        (b_pg, a_pg)
    };
    let (mblocks, nblocks) = (rows_pg.div_ceil(mr), cols_pg.div_ceil(tl));
    let tile = mr * tl;
    let small = a_pg * b_pg < SMALL_GEMM;
    let per_tap = if small {
        a_pg * b_pg
    } else {
        mblocks * nblocks * tile
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = options
        .threads
        .unwrap_or(if g.flops() < 4_000_000 { 1 } else { cores })
        .max(1);

    // big(p, k) for every small position p and tap k, or usize::MAX where the tap falls
    // outside the big side.
    let mut big_of = vec![usize::MAX; k_size * small_size];
    for (k_flat, k) in positions(&k_sp).enumerate() {
        let row = &mut big_of[k_flat * small_size..(k_flat + 1) * small_size];
        let mut p = 0;
        for_each_index(&small_sp, |i| {
            if let Some(o) = crate::reference::big_flat(g, i, &k) {
                row[p] = o;
            }
            p += 1;
        });
    }
    // Tasks: (group, range of taps), enough to keep the threads busy.
    let tap_chunks = if threads <= 1 {
        1
    } else {
        (2 * threads).div_ceil(g.groups).clamp(1, k_size)
    };
    let taps_per = k_size.div_ceil(tap_chunks);
    let run = |task: usize| -> Vec<T> {
        let (group, c) = (task / tap_chunks, task % tap_chunks);
        let taps = c * taps_per..((c + 1) * taps_per).min(k_size);
        let mut acc = vec![T::zero(); taps.len() * per_tap];
        if small {
            // Few channel pairs (depthwise and the like): direct dot products.
            for (ti, k) in taps.clone().enumerate() {
                let map = &big_of[k * small_size..(k + 1) * small_size];
                for a in 0..a_pg {
                    for bl in 0..b_pg {
                        let mut sum = T::zero();
                        for n in 0..g.batch {
                            let sr = &s[(n * a_ch + group * a_pg + a) * small_size..][..small_size];
                            let br = &b[(n * b_ch + group * b_pg + bl) * big_size..][..big_size];
                            for (&sv, &o) in sr.iter().zip(map) {
                                if o != usize::MAX {
                                    sum = sum + sv * br[o];
                                }
                            }
                        }
                        acc[ti * per_tap + a * b_pg + bl] = sum;
                    }
                }
            }
            return acc;
        }
        let s_width = if s_on_rows { mr } else { tl };
        let b_width = if s_on_rows { tl } else { mr };
        let mut spack = vec![T::zero(); POSITION_CHUNK * a_pg.div_ceil(s_width) * s_width];
        let mut bpack = vec![T::zero(); POSITION_CHUNK * b_pg.div_ceil(b_width) * b_width];
        let mut started = vec![false; taps.len()];
        // Per chunk of (batch, position) pairs: where each pair's S row starts, its batch
        // item's B base and its position (one division per pair, not per element).
        let total = g.batch * small_size;
        let mut s_off = vec![0usize; POSITION_CHUNK];
        let mut b_off = vec![0usize; POSITION_CHUNK];
        let mut pos = vec![0usize; POSITION_CHUNK];
        for q0 in (0..total).step_by(POSITION_CHUNK) {
            let pc = POSITION_CHUNK.min(total - q0);
            for j in 0..pc {
                let (n, p) = ((q0 + j) / small_size, (q0 + j) % small_size);
                s_off[j] = (n * a_ch + group * a_pg) * small_size + p;
                b_off[j] = (n * b_ch + group * b_pg) * big_size;
                pos[j] = p;
            }
            pack_runs(&mut spack, s_width, a_pg, pc, |a, j| {
                s[s_off[j] + a * small_size]
            });
            for (ti, k) in taps.clone().enumerate() {
                let map = &big_of[k * small_size..(k + 1) * small_size];
                if pos[..pc].iter().all(|&p| map[p] == usize::MAX) {
                    continue;
                }
                pack_runs(&mut bpack, b_width, b_pg, pc, |bl, j| match map[pos[j]] {
                    usize::MAX => T::zero(),
                    o => b[b_off[j] + bl * big_size + o],
                });
                let (rows, cols) = if s_on_rows {
                    (&spack, &bpack)
                } else {
                    (&bpack, &spack)
                };
                // The wide lane-side run stays in L1 while the narrow row-side runs stream.
                for nb in 0..nblocks {
                    let b_run = &cols[nb * POSITION_CHUNK * tl..(nb * POSITION_CHUNK + pc) * tl];
                    for mb in 0..mblocks {
                        let a_run =
                            &rows[mb * POSITION_CHUNK * mr..(mb * POSITION_CHUNK + pc) * mr];
                        let at = ti * per_tap + (mb * nblocks + nb) * tile;
                        kernel(a_run, b_run, pc, &mut acc[at..at + tile], started[ti]);
                    }
                }
                started[ti] = true;
            }
        }
        acc
    };
    let tasks = g.groups * tap_chunks;
    let results: Vec<Vec<T>> = if threads <= 1 {
        (0..tasks).map(run).collect()
    } else {
        crate::fast::direct::pool(threads).install(|| (0..tasks).into_par_iter().map(run).collect())
    };
    let mut dw = vec![T::zero(); a_ch * b_pg * k_size];
    for (task, acc) in results.iter().enumerate() {
        let (group, c) = (task / tap_chunks, task % tap_chunks);
        for (ti, k) in (c * taps_per..((c + 1) * taps_per).min(k_size)).enumerate() {
            let tap = &acc[ti * per_tap..(ti + 1) * per_tap];
            let mut put =
                |a: usize, bl: usize, v: T| dw[((group * a_pg + a) * b_pg + bl) * k_size + k] = v;
            if small {
                for (i, &v) in tap.iter().enumerate() {
                    put(i / b_pg, i % b_pg, v);
                }
                continue;
            }
            // Walk the register tiles in order: no division per element.
            for (t, block) in tap.chunks_exact(tile).enumerate() {
                let (mb, nb) = (t / nblocks, t % nblocks);
                for (mi, row) in block.chunks_exact(tl).enumerate() {
                    let r = mb * mr + mi;
                    if r >= rows_pg {
                        break;
                    }
                    for (ni, &v) in row.iter().enumerate().take(cols_pg.saturating_sub(nb * tl)) {
                        let c = nb * tl + ni;
                        if s_on_rows {
                            put(r, c, v);
                        } else {
                            put(c, r, v);
                        }
                    }
                }
            }
        }
    }
    dw
}
