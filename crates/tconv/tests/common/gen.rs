//! The generated-problem type shared by the property and engine tests.
#![allow(dead_code)]

use ndarray::{Array1, ArrayD, IxDyn};
use proptest::prelude::*;
use tconv::{ConvParams, Element};

/// One spatial axis of a generated problem.
#[derive(Clone, Debug)]
pub struct Axis {
    pub input: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_begin: usize,
    pub pad_end: usize,
    pub output_padding: usize,
}

impl Axis {
    pub fn reach(&self) -> usize {
        self.dilation * (self.kernel - 1)
    }
    /// The output extent with output_padding 0 (may be non-positive).
    pub fn natural(&self) -> i64 {
        self.transpose_out() as i64 - self.output_padding as i64
    }
    /// The axis of these sizes with pads drawn from `pb` and `pe`: each at most the
    /// kernel's reach, and leaving at least one output.
    fn drawn(
        (input, kernel, stride, dilation): (usize, usize, usize, usize),
        output_padding: usize,
        (pb, pe): (usize, usize),
    ) -> Axis {
        let mut a = Axis {
            input,
            kernel,
            stride,
            dilation,
            pad_begin: 0,
            pad_end: 0,
            output_padding,
        };
        a.pad_begin = pb % (a.reach() + 1);
        a.pad_end = pe % (a.reach() + 1);
        let full = (input - 1) * stride + a.reach() + output_padding + 1;
        if a.pad_begin + a.pad_end >= full {
            a.pad_end = full - 1 - a.pad_begin;
        }
        a
    }
    /// PyTorch's output extent, written independently of the library.
    pub fn transpose_out(&self) -> usize {
        (self.input - 1) * self.stride + self.reach() + self.output_padding + 1
            - self.pad_begin
            - self.pad_end
    }
}

/// A valid conv_transpose problem.
#[derive(Clone, Debug)]
pub struct Case {
    pub batch: usize,
    pub groups: usize,
    pub in_pg: usize,
    pub out_pg: usize,
    pub axes: Vec<Axis>,
    pub bias: bool,
    pub seed: u64,
}

pub fn axis() -> impl Strategy<Value = Axis> {
    axis_upto(4)
}

/// An axis with input extent up to `max_in`.
pub fn axis_upto(max_in: usize) -> impl Strategy<Value = Axis> {
    (
        1usize..=max_in,
        1usize..=3,
        1usize..=3,
        1usize..=2,
        0usize..8,
        0usize..8,
        0usize..3,
    )
        .prop_map(|(input, kernel, stride, dilation, pb, pe, op)| {
            let op = op % stride.max(dilation);
            Axis::drawn((input, kernel, stride, dilation), op, (pb, pe))
        })
}

pub fn case() -> impl Strategy<Value = Case> {
    case_upto(4, 2, 2)
}

/// Problems with input extents up to `max_in`, channels per group up to `max_pg`, batch up
/// to `max_batch`.
pub fn case_upto(max_in: usize, max_pg: usize, max_batch: usize) -> impl Strategy<Value = Case> {
    case_of(
        move |dims| axis_upto(if dims == 3 { max_in.min(6) } else { max_in }),
        max_pg,
        max_batch,
    )
}

/// Problems of 1 to 3 axes drawn by `axis(dims)`, channels per group up to `max_pg`, batch
/// up to `max_batch`.
pub fn case_of<S: Strategy<Value = Axis> + 'static>(
    axis: impl Fn(usize) -> S + Clone + 'static,
    max_pg: usize,
    max_batch: usize,
) -> impl Strategy<Value = Case> {
    (1usize..=3).prop_flat_map(move |dims| {
        (
            1usize..=max_batch,
            1usize..=3,
            1usize..=max_pg,
            1usize..=max_pg,
            prop::collection::vec(axis(dims), dims),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(|(batch, groups, in_pg, out_pg, axes, bias, seed)| Case {
                batch,
                groups,
                in_pg,
                out_pg,
                axes,
                bias,
                seed,
            })
    })
}

/// An axis whose input has one position (so a transposed conv's input, and its adjoint
/// conv's output, has one position per image): kernels 1-5, strides 1-3, dilations 1-2,
/// pads, output_padding below the stride.
pub fn single_position_axis() -> impl Strategy<Value = Axis> {
    (
        1usize..=5,
        1usize..=3,
        1usize..=2,
        0usize..8,
        0usize..8,
        0usize..3,
    )
        .prop_map(|(kernel, stride, dilation, pb, pe, op)| {
            Axis::drawn((1, kernel, stride, dilation), op % stride, (pb, pe))
        })
}

/// Small integers in -3..=3 from a seed (xorshift), so every sum is exact.
pub fn ints<T: Element>(shape: &[usize], seed: u64) -> ArrayD<T> {
    let mut s = seed | 1;
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        T::from((s % 7) as i64 - 3).unwrap()
    })
}

impl Case {
    pub fn params(&self) -> ConvParams {
        let f = |g: fn(&Axis) -> usize| self.axes.iter().map(g).collect::<Vec<_>>();
        ConvParams::new()
            .stride(&f(|a| a.stride))
            .dilation(&f(|a| a.dilation))
            .pads(&f(|a| a.pad_begin), &f(|a| a.pad_end))
            .output_padding(&f(|a| a.output_padding))
            .groups(self.groups)
    }
    pub fn c_in(&self) -> usize {
        self.groups * self.in_pg
    }
    pub fn c_out(&self) -> usize {
        self.groups * self.out_pg
    }
    pub fn x_shape(&self) -> Vec<usize> {
        let mut s = vec![self.batch, self.c_in()];
        s.extend(self.axes.iter().map(|a| a.input));
        s
    }
    pub fn w_shape(&self) -> Vec<usize> {
        let mut s = vec![self.c_in(), self.out_pg];
        s.extend(self.axes.iter().map(|a| a.kernel));
        s
    }
    pub fn y_shape(&self) -> Vec<usize> {
        let mut s = vec![self.batch, self.c_out()];
        s.extend(self.axes.iter().map(Axis::transpose_out));
        s
    }
    pub fn data<T: Element>(&self) -> (ArrayD<T>, ArrayD<T>, Option<Array1<T>>) {
        let x = ints(&self.x_shape(), self.seed);
        let w = ints(&self.w_shape(), self.seed.wrapping_mul(31).wrapping_add(7));
        let b = self.bias.then(|| {
            ints::<T>(&[self.c_out()], self.seed ^ 0x5555)
                .into_dimensionality()
                .unwrap()
        });
        (x, w, b)
    }
}
