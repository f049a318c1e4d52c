//! The ONNX backend cases and the PyTorch goldens, through the public API and through every
//! reference view of transposed convolution.

mod common;

use common::*;
use ndarray::{ArrayD, ArrayView1};
use tconv::fast::Isa;
use tconv::npy::NpyArray;
use tconv::reference::*;
use tconv::{conv, conv_transpose, ConvParams, Element, Op, Plan, PlanOptions};

type Runner<T> =
    fn(&ArrayD<T>, &ArrayD<T>, Option<ArrayView1<'_, T>>, &ConvParams) -> tconv::Result<ArrayD<T>>;

/// Through the planner with forced choices.
fn planned<T: Element>(
    op: Op,
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    b: Option<ArrayView1<'_, T>>,
    p: &ConvParams,
    isa: Isa,
    inplace: bool,
) -> tconv::Result<ArrayD<T>> {
    let o = PlanOptions {
        threads: Some(2),
        isa: Some(isa),
        inplace: Some(inplace),
        ..PlanOptions::default()
    };
    Plan::new(op, x.shape(), w, b.as_ref().map(|b| b.len()), p, &o)?.execute(x, b)
}

/// Every implementation of `op`, named.
fn implementations<T: Element>(op: Op) -> Vec<(&'static str, Runner<T>)> {
    match op {
        Op::Conv => vec![
            ("conv", |x, w, b, p| conv(x, w, b, p)),
            ("gather", |x, w, b, p| conv_gather(x, w, b, p)),
            ("matrix", |x, w, b, p| conv_by_matrix(x, w, b, p)),
            ("direct/scalar", |x, w, b, p| {
                planned(Op::Conv, x, w, b, p, Isa::Scalar, false)
            }),
            ("direct/avx2/packed", |x, w, b, p| {
                planned(Op::Conv, x, w, b, p, Isa::Avx2, false)
            }),
            ("direct/avx512/inplace", |x, w, b, p| {
                planned(Op::Conv, x, w, b, p, Isa::Avx512, true)
            }),
        ],
        Op::ConvTranspose => vec![
            ("conv_transpose", |x, w, b, p| conv_transpose(x, w, b, p)),
            ("scatter", |x, w, b, p| conv_transpose_scatter(x, w, b, p)),
            ("zero_insertion", |x, w, b, p| {
                conv_transpose_zero_insertion(x, w, b, p)
            }),
            ("matrix", |x, w, b, p| conv_transpose_by_matrix(x, w, b, p)),
            ("direct/scalar", |x, w, b, p| {
                planned(Op::ConvTranspose, x, w, b, p, Isa::Scalar, true)
            }),
            ("direct/avx2/inplace", |x, w, b, p| {
                planned(Op::ConvTranspose, x, w, b, p, Isa::Avx2, true)
            }),
            ("direct/avx512/packed", |x, w, b, p| {
                planned(Op::ConvTranspose, x, w, b, p, Isa::Avx512, false)
            }),
        ],
    }
}

/// Run every implementation in the expected dtype and compare; returns how many ran.
#[allow(clippy::too_many_arguments)]
fn check_all(
    name: &str,
    op: Op,
    params: &ConvParams,
    x: &NpyArray,
    w: &NpyArray,
    b: Option<&NpyArray>,
    expected: &NpyArray,
    tol: (f64, f64),
) -> usize {
    let want = expected.to_f64();
    let mut ran = 0;
    macro_rules! run {
        ($t:ty, $conv:ident) => {{
            let (x, w) = (x.$conv(), w.$conv());
            let b = b.map(|b| {
                b.$conv()
                    .into_dimensionality::<ndarray::Ix1>()
                    .expect("1-D bias")
            });
            for (algo, f) in implementations::<$t>(op) {
                match f(&x, &w, b.as_ref().map(|b| b.view()), params) {
                    Ok(y) => {
                        let got = y.mapv(|v| v as f64);
                        assert_close(&format!("{name} [{algo}]"), &got, &want, tol.0, tol.1);
                        ran += 1;
                    }
                    // The matrix view is only for small problems.
                    Err(e)
                        if algo == "matrix"
                            && matches!(e.kind(), tconv::ErrorKind::TooLarge { .. }) => {}
                    Err(e) => panic!("{name} [{algo}]: {e}"),
                }
            }
        }};
    }
    match expected {
        NpyArray::F32(_) => run!(f32, to_f32),
        NpyArray::F64(_) => run!(f64, to_f64),
    }
    ran
}

#[test]
fn onnx_backend_cases() {
    let cases = cases("onnx");
    assert_eq!(cases.len(), 47, "expected all 47 ONNX cases");
    let (mut conv_n, mut tconv_n) = (0, 0);
    for dir in &cases {
        let case = json(&dir.join("case.json"));
        let (op, params) = onnx_params(&case);
        let b = dir.join("input_2.npy");
        let b = b.exists().then(|| npy(&b));
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let ran = check_all(
            &name,
            op,
            &params,
            &npy(&dir.join("input_0.npy")),
            &npy(&dir.join("input_1.npy")),
            b.as_ref(),
            &npy(&dir.join("output_0.npy")),
            (1e-4, 1e-5),
        );
        assert!(ran >= 5, "{name}: only {ran} implementations ran");
        match op {
            Op::Conv => conv_n += 1,
            Op::ConvTranspose => tconv_n += 1,
        }
    }
    // The data README says 30/17, but the folders hold 33 Conv and 14 ConvTranspose cases.
    assert_eq!((conv_n, tconv_n), (33, 14));
}

#[test]
fn torch_golden_cases() {
    let cases = cases("torch");
    assert_eq!(cases.len(), 120, "expected all 120 PyTorch cases");
    for dir in &cases {
        let case = json(&dir.join("case.json"));
        let (op, params) = torch_params(&case);
        let b = dir.join("bias.npy");
        let b = b.exists().then(|| npy(&b));
        let expected = npy(&dir.join("expected.npy"));
        let tol = match expected {
            NpyArray::F32(_) => (1e-4, 1e-5),
            NpyArray::F64(_) => (1e-10, 1e-10),
        };
        assert_eq!(expected.dtype(), case["dtype"].as_str().unwrap());
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let ran = check_all(
            &name,
            op,
            &params,
            &npy(&dir.join("input.npy")),
            &npy(&dir.join("weight.npy")),
            b.as_ref(),
            &expected,
            tol,
        );
        assert!(ran >= 5, "{name}: only {ran} implementations ran");
    }
}
