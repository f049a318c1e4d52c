//! The explainer's worked examples, exactly (small integers: every view is bit-exact).

use ndarray::{array, Array2, ArrayD};
use tconv::reference::*;
use tconv::{conv, conv_transpose, ConvParams, Geometry, Op};

fn kernel() -> ArrayD<f64> {
    array![[[[1.0, 0.0], [0.0, -1.0]]]].into_dyn()
}

#[test]
fn conv_slides_the_kernel() {
    let x = array![[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]];
    let want = array![[[[-4.0, -4.0], [-4.0, -4.0]]]].into_dyn();
    let p = ConvParams::new();
    assert_eq!(conv(&x, &kernel(), None, &p).unwrap(), want);
    assert_eq!(conv_by_matrix(&x, &kernel(), None, &p).unwrap(), want);
    // Output size (in - k)/s + 1 = (3 - 2)/1 + 1 = 2.
    let g = Geometry::new(Op::Conv, &[1, 1, 3, 3], &[1, 1, 2, 2], None, &p).unwrap();
    assert_eq!(g.output_shape(), vec![1, 1, 2, 2]);
}

#[test]
fn conv_transpose_stride_1_all_views() {
    let x = array![[[[1.0, 2.0], [3.0, 4.0]]]];
    let want = array![[[[1.0, 2.0, 0.0], [3.0, 3.0, -2.0], [0.0, -3.0, -4.0]]]].into_dyn();
    let p = ConvParams::new();
    assert_eq!(conv_transpose(&x, &kernel(), None, &p).unwrap(), want);
    assert_eq!(
        conv_transpose_scatter(&x, &kernel(), None, &p).unwrap(),
        want
    );
    assert_eq!(
        conv_transpose_zero_insertion(&x, &kernel(), None, &p).unwrap(),
        want
    );
    assert_eq!(
        conv_transpose_by_matrix(&x, &kernel(), None, &p).unwrap(),
        want
    );
}

#[test]
fn conv_transpose_stride_2_by_hand() {
    // Zero insertion by hand: [[1,0,2],[0,0,0],[3,0,4]] padded by d(k-1)=1 on every side,
    // correlated with the rotated kernel [[-1,0],[0,1]]: each input lands on its own 2x2 block.
    let x = array![[[[1.0, 2.0], [3.0, 4.0]]]];
    let want = array![[[
        [1.0, 0.0, 2.0, 0.0],
        [0.0, -1.0, 0.0, -2.0],
        [3.0, 0.0, 4.0, 0.0],
        [0.0, -3.0, 0.0, -4.0]
    ]]]
    .into_dyn();
    let p = ConvParams::new().stride(&[2]);
    assert_eq!(conv_transpose(&x, &kernel(), None, &p).unwrap(), want);
    assert_eq!(
        conv_transpose_scatter(&x, &kernel(), None, &p).unwrap(),
        want
    );
    assert_eq!(
        conv_transpose_zero_insertion(&x, &kernel(), None, &p).unwrap(),
        want
    );
    assert_eq!(
        conv_transpose_by_matrix(&x, &kernel(), None, &p).unwrap(),
        want
    );

    let g = Geometry::new(Op::ConvTranspose, &[1, 1, 2, 2], &[1, 1, 2, 2], None, &p).unwrap();
    let view =
        zero_insertion_view(&g, x.as_slice().unwrap(), kernel().as_slice().unwrap()).unwrap();
    let z = array![[[
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 2.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 3.0, 0.0, 4.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0]
    ]]]
    .into_dyn();
    assert_eq!(view.input, z);
    assert_eq!(view.kernel, array![[[[-1.0, 0.0], [0.0, 1.0]]]].into_dyn());
    assert_eq!((view.pad_before, view.pad_after), (vec![1, 1], vec![1, 1]));
}

#[test]
fn transposed_conv_is_the_transpose_of_the_conv_matrix() {
    // The 4x9 matrix C of the 3x3 -> 2x2 conv; Cᵀ applied to [1,2,3,4] is the 3x3 result.
    let p = ConvParams::new();
    let g = Geometry::new(Op::Conv, &[1, 1, 3, 3], &[1, 1, 2, 2], None, &p).unwrap();
    let c = convolution_matrix(&g, kernel().as_slice().unwrap()).unwrap();
    let want: Array2<f64> = array![
        [1., 0., 0., 0., -1., 0., 0., 0., 0.],
        [0., 1., 0., 0., 0., -1., 0., 0., 0.],
        [0., 0., 0., 1., 0., 0., 0., -1., 0.],
        [0., 0., 0., 0., 1., 0., 0., 0., -1.]
    ];
    assert_eq!(c, want);
    let y = c.t().dot(&array![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(y, array![1.0, 2.0, 0.0, 3.0, 3.0, -2.0, 0.0, -3.0, -4.0]);
    // The transposed conv's own matrix is the very same C.
    let gt = Geometry::new(Op::ConvTranspose, &[1, 1, 2, 2], &[1, 1, 2, 2], None, &p).unwrap();
    assert_eq!(
        convolution_matrix(&gt, kernel().as_slice().unwrap()).unwrap(),
        want
    );
}

#[test]
fn unbatched_and_one_dimensional() {
    let x = array![[1.0f32, 2.0, 3.0]]; // (C=1, L=3)
    let w = array![[[1.0f32, 10.0]]]; // (C_in=1, C_out=1, k=2)
    let y = conv_transpose(&x, &w, None, &ConvParams::new().stride(&[2])).unwrap();
    assert_eq!(y, array![[1.0f32, 10.0, 2.0, 20.0, 3.0, 30.0]].into_dyn());
}
