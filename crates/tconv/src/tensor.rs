//! Small tensor helpers shared by the algorithms: the element trait, row-major multi-index
//! iteration, and turning user arrays into checked, contiguous, batched data.

use std::borrow::Cow;

use ndarray::{ArrayD, ArrayView1, ArrayViewD, IxDyn};

use crate::error::{ErrorKind, Result};
use crate::geometry::Geometry;
use crate::params::{ConvParams, Op};

/// Element types tconv computes with: `f32` and `f64`.
pub trait Element:
    num_traits::Float
    + std::iter::Sum
    + std::fmt::Debug
    + std::fmt::Display
    + Default
    + Send
    + Sync
    + 'static
{
    /// NumPy-style dtype name (`float32`, `float64`).
    const DTYPE: &'static str;

    /// A SIMD packed-panel microkernel for this element type, if one exists.
    #[doc(hidden)]
    fn fast_kernel(
        isa: crate::fast::Isa,
        mr: usize,
        v: usize,
    ) -> Option<crate::fast::kernels::KernelFn<Self>>;

    /// The kernel for a GEMM's last panel of `v` vectors on `mr`-row tiles of more
    /// vectors, if one exists: the same sums as the tile's kernel, column by column.
    #[doc(hidden)]
    fn tail_kernel(
        isa: crate::fast::Isa,
        mr: usize,
        v: usize,
    ) -> Option<crate::fast::kernels::KernelFn<Self>> {
        Self::fast_kernel(isa, mr, v)
    }

    /// A SIMD in-place microkernel for this element type, if one exists.
    #[doc(hidden)]
    fn fast_inplace(
        isa: crate::fast::Isa,
        mr: usize,
        v: usize,
    ) -> Option<crate::fast::inplace::InplaceFn<Self>>;

    /// A pair kernel (two stride-2 phases written interleaved from the registers) for a
    /// packed tile shape, storing half vectors each to its own place where `halves`, if
    /// one exists.
    #[doc(hidden)]
    fn fast_pair(
        _isa: crate::fast::Isa,
        _mr: usize,
        _v: usize,
        _halves: bool,
    ) -> Option<crate::fast::pair::PairFn<Self>> {
        None
    }
}

impl Element for f32 {
    const DTYPE: &'static str = "float32";
    fn fast_kernel(
        isa: crate::fast::Isa,
        mr: usize,
        v: usize,
    ) -> Option<crate::fast::kernels::KernelFn<f32>> {
        crate::fast::kernels::f32_kernel(isa, mr, v)
    }
    fn tail_kernel(
        isa: crate::fast::Isa,
        mr: usize,
        v: usize,
    ) -> Option<crate::fast::kernels::KernelFn<f32>> {
        crate::fast::kernels::f32_tail_kernel(isa, mr, v)
    }
    fn fast_inplace(
        isa: crate::fast::Isa,
        mr: usize,
        v: usize,
    ) -> Option<crate::fast::inplace::InplaceFn<f32>> {
        crate::fast::inplace::f32_kernel(isa, mr, v)
    }
    fn fast_pair(
        isa: crate::fast::Isa,
        mr: usize,
        v: usize,
        halves: bool,
    ) -> Option<crate::fast::pair::PairFn<f32>> {
        crate::fast::pair::f32_pair(isa, mr, v, halves)
    }
}

impl Element for f64 {
    const DTYPE: &'static str = "float64";
    fn fast_kernel(
        isa: crate::fast::Isa,
        mr: usize,
        v: usize,
    ) -> Option<crate::fast::kernels::KernelFn<f64>> {
        // f64 runs the portable kernels' layout (its plans are `Scalar`), compiled for the
        // CPU's vectors where it has them.
        if isa == crate::fast::Isa::Scalar {
            crate::fast::kernels::f64_kernel(mr, v)
        } else {
            None
        }
    }
    fn fast_inplace(
        isa: crate::fast::Isa,
        mr: usize,
        v: usize,
    ) -> Option<crate::fast::inplace::InplaceFn<f64>> {
        if isa == crate::fast::Isa::Scalar {
            crate::fast::inplace::f64_kernel(mr, v)
        } else {
            None
        }
    }
}

/// Product of a shape (the element count).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major iteration over every multi-index of `shape` (nothing if any extent is 0).
#[derive(Clone, Debug)]
pub struct Positions {
    shape: Vec<usize>,
    next: Option<Vec<usize>>,
}

/// All multi-indices of `shape` in row-major (C) order.
pub fn positions(shape: &[usize]) -> Positions {
    let empty = shape.contains(&0);
    Positions {
        shape: shape.to_vec(),
        next: (!empty).then(|| vec![0; shape.len()]),
    }
}

impl Iterator for Positions {
    type Item = Vec<usize>;
    fn next(&mut self) -> Option<Vec<usize>> {
        let current = self.next.take()?;
        let mut succ = current.clone();
        for axis in (0..succ.len()).rev() {
            succ[axis] += 1;
            if succ[axis] < self.shape[axis] {
                self.next = Some(succ);
                return Some(current);
            }
            succ[axis] = 0;
        }
        Some(current)
    }
}

/// Call `f` with every multi-index of `shape` in row-major order, reusing one buffer
/// (no allocation per index, unlike [`positions`]).
pub fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; shape.len()];
    loop {
        f(&idx);
        let mut axis = shape.len();
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            idx[axis] += 1;
            if idx[axis] < shape[axis] {
                break;
            }
            idx[axis] = 0;
        }
    }
}

/// Row-major flat offset of `idx` in `shape`.
pub fn flat_index(shape: &[usize], idx: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

/// The elements of `a` in logical row-major order, borrowed when already contiguous.
pub fn contiguous<'a, T: Clone>(a: &'a ArrayViewD<'_, T>) -> Cow<'a, [T]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().cloned().collect()),
    }
}

/// A checked problem: the geometry and the data as contiguous row-major slices
/// (`x` always with a batch axis).
pub struct Problem<'a, T: Clone> {
    /// The resolved geometry.
    pub geometry: Geometry,
    /// `x` as `(N, C_in, *in)`.
    pub x: Cow<'a, [T]>,
    /// Weight in PyTorch layout.
    pub w: Cow<'a, [T]>,
    /// Bias `(C_out,)`.
    pub bias: Option<Cow<'a, [T]>>,
}

impl<'a, T: Element> Problem<'a, T> {
    /// Check shapes and parameters and gather the data.
    pub fn new(
        op: Op,
        x: &'a ArrayViewD<'_, T>,
        w: &'a ArrayViewD<'_, T>,
        bias: Option<&'a ArrayView1<'_, T>>,
        params: &ConvParams,
    ) -> Result<Self> {
        let bias_shape = bias.map(|b| b.shape().to_vec());
        let geometry = Geometry::new(op, x.shape(), w.shape(), bias_shape.as_deref(), params)?;
        Ok(Problem {
            geometry,
            x: contiguous(x),
            w: contiguous(w),
            bias: bias.map(|b| match b.as_slice() {
                Some(s) => Cow::Borrowed(s),
                None => Cow::Owned(b.to_vec()),
            }),
        })
    }

    /// Wrap a flat `(N, C_out, *out)` result in an array of the user's output shape.
    pub fn output_array(&self, y: Vec<T>) -> Result<ArrayD<T>> {
        let shape = self.geometry.user_output_shape();
        let len = y.len();
        ArrayD::from_shape_vec(IxDyn(&shape), y).map_err(|_| {
            ErrorKind::ShapeMismatch {
                what: "output buffer",
                got: vec![len],
                expected: shape,
            }
            .into()
        })
    }
}

/// Bytes to which [`aligned_zeros`] aligns an array's first element: a cache line, and
/// what PyTorch's CPU allocator gives its tensors.
pub const ALIGN_BYTES: usize = 64;

/// A zeroed array of `shape` whose first element starts a 64-byte cache line, zeroed on
/// `threads` threads where large. The array's data sits at an offset of at most 15
/// elements inside its allocation (`into_raw_vec_and_offset` gives both). Outputs written
/// in interleaved runs gain from it: with a `Vec`'s usual 16-byte offset, their runs split
/// lines that other runs complete (forward, paired: vnet3d 1.06-1.07x, unet 1.03-1.04x,
/// fcn_dw 1.14x).
pub fn aligned_zeros<T: Element>(shape: &[usize], threads: usize) -> ArrayD<T> {
    let len = numel(shape);
    let v: Vec<T> = crate::fast::direct::zeros(len + aligned_pad::<T>(), threads);
    let at = aligned_start(&v);
    aligned_view(v, at, shape)
}

/// An array of `shape` starting on a cache line, as [`aligned_zeros`] makes, whose
/// elements `write` sets (only the padding around them is zeroed).
///
/// # Safety
/// `write` must write every element of the slice it is given.
pub(crate) unsafe fn aligned_written<T: Element>(
    shape: &[usize],
    write: impl FnOnce(&mut [std::mem::MaybeUninit<T>]),
) -> ArrayD<T> {
    let (len, pad) = (numel(shape), aligned_pad::<T>());
    let mut v: Vec<T> = Vec::with_capacity(len + pad);
    let at = aligned_start(&v);
    let (head, rest) = v.spare_capacity_mut()[..len + pad].split_at_mut(at);
    let (body, tail) = rest.split_at_mut(len);
    for s in head.iter_mut().chain(tail) {
        s.write(T::zero());
    }
    write(body);
    // Safety: the padding was zeroed above and `write` wrote the rest (the contract).
    unsafe { v.set_len(len + pad) };
    aligned_view(v, at, shape)
}

/// Elements an aligned array's allocation holds beyond its own: enough to start on any
/// element of a line.
fn aligned_pad<T>() -> usize {
    (ALIGN_BYTES / std::mem::size_of::<T>().max(1)).max(1) - 1
}

/// Where in `v`'s allocation the first element on a line is (at most [`aligned_pad`]).
fn aligned_start<T>(v: &[T]) -> usize {
    v.as_ptr().align_offset(ALIGN_BYTES).min(aligned_pad::<T>())
}

/// `v`'s elements from `at` on, as an array of `shape`.
fn aligned_view<T>(v: Vec<T>, at: usize, shape: &[usize]) -> ArrayD<T> {
    ndarray::Array1::from_vec(v)
        .slice_move(ndarray::s![at..at + numel(shape)])
        .into_shape_with_order(IxDyn(shape))
        .expect("a contiguous run of the shape's length")
}

/// A fixed pseudo-random sequence per `seed` (a 64-bit LCG's states) for the tests' data.
#[cfg(test)]
pub(crate) fn lcg(seed: u64) -> impl Iterator<Item = u64> {
    std::iter::successors(Some(seed), |s| {
        Some(
            s.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    })
    .skip(1)
}

/// Small integers in `-3..=3` (a fixed pseudo-random sequence per `seed`): sums of their
/// products are exact in any order, so fast paths must equal the reference bit for bit.
#[cfg(test)]
pub(crate) fn small_ints<T: Element>(n: usize, seed: u64) -> Vec<T> {
    lcg(seed)
        .take(n)
        .map(|s| T::from((s >> 33) % 7).expect("a small integer") - T::from(3).expect("3"))
        .collect()
}
