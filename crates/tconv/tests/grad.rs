//! Gradients: PyTorch autograd goldens, finite differences, the adjoint identity, and the
//! fast paths against their references (exact on small integers, bitwise across threads).

mod common;

use common::gen::*;
use common::*;
use ndarray::{ArrayD, Ix1};
use proptest::prelude::*;
use tconv::grad::{grad_weight_reference, Wanted};
use tconv::npy::NpyArray;
use tconv::{
    conv, conv_backward, conv_transpose, conv_transpose_backward, Algorithm, Element, Geometry, Op,
    PlanOptions,
};

fn backward<T: Element>(
    op: Op,
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    gy: &ArrayD<T>,
    p: &tconv::ConvParams,
    o: &PlanOptions,
) -> tconv::Gradients<T> {
    match op {
        Op::Conv => conv_backward(x, w, gy, p, Wanted::all(), o),
        Op::ConvTranspose => conv_transpose_backward(x, w, gy, p, Wanted::all(), o),
    }
    .unwrap()
}

#[test]
fn torch_autograd_goldens() {
    let cases = cases("torch-grad");
    assert_eq!(cases.len(), 80, "expected all 80 gradient cases");
    for dir in &cases {
        let case = json(&dir.join("case.json"));
        let (op, params) = torch_params(&case);
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let x = npy(&dir.join("input.npy"));
        let f32_case = matches!(x, NpyArray::F32(_));
        // Tolerances from the data README; atol scaled by the number of summed terms.
        let terms = |shape: &[usize]| shape.iter().product::<usize>() as f64;
        let (x64, w64, gy64) = (
            x.to_f64(),
            npy(&dir.join("weight.npy")).to_f64(),
            npy(&dir.join("grad_output.npy")).to_f64(),
        );
        for (label, o) in [
            ("planned", PlanOptions::default()),
            (
                "reference",
                PlanOptions {
                    algorithm: Some(Algorithm::Reference),
                    ..PlanOptions::default()
                },
            ),
        ] {
            let got: tconv::Gradients<f64> = if f32_case {
                let (x, w, gy) = (
                    x64.mapv(|v| v as f32),
                    w64.mapv(|v| v as f32),
                    gy64.mapv(|v| v as f32),
                );
                let gr = backward(op, &x, &w, &gy, &params, &o);
                tconv::Gradients {
                    input: gr.input.map(|a| a.mapv(f64::from)),
                    weight: gr.weight.map(|a| a.mapv(f64::from)),
                    bias: gr.bias.map(|a| a.mapv(f64::from)),
                }
            } else {
                backward(op, &x64, &w64, &gy64, &params, &o)
            };
            let (rtol, atol) = if f32_case {
                (1e-4, 1e-5)
            } else {
                (1e-9, 1e-10)
            };
            let scale = if f32_case {
                (terms(gy64.shape()) / 64.0).max(1.0)
            } else {
                1.0
            };
            let want_x = npy(&dir.join("expected_grad_input.npy")).to_f64();
            assert_close(
                &format!("{name} [{label}] grad_input"),
                got.input.as_ref().unwrap(),
                &want_x,
                rtol,
                atol * scale,
            );
            let want_w = npy(&dir.join("expected_grad_weight.npy")).to_f64();
            assert_close(
                &format!("{name} [{label}] grad_weight"),
                got.weight.as_ref().unwrap(),
                &want_w,
                rtol,
                atol * scale,
            );
            let gb = dir.join("expected_grad_bias.npy");
            if gb.exists() {
                assert_close(
                    &format!("{name} [{label}] grad_bias"),
                    got.bias.as_ref().unwrap(),
                    &npy(&gb).to_f64(),
                    rtol,
                    atol * scale,
                );
            }
        }
    }
}

/// x, w, bias and parameters of one generated problem.
type Arrays<T> = (
    ArrayD<T>,
    ArrayD<T>,
    Option<ndarray::Array1<T>>,
    tconv::ConvParams,
);

/// Prepare the case's arrays for `op` (for conv the weight is read as a conv weight).
fn arrays<T: Element>(c: &Case, op: Op) -> Option<Arrays<T>> {
    let (x, w, b) = c.data::<T>();
    let mut p = c.params();
    match op {
        Op::ConvTranspose => Some((x, w, b, p)),
        Op::Conv => {
            p.output_padding.clear();
            let mut s = c.x_shape();
            s[1] = c.c_out();
            let x = ints::<T>(&s, c.seed ^ 5);
            let b = c.bias.then(|| {
                ints::<T>(&[c.c_in()], c.seed)
                    .into_dimensionality::<Ix1>()
                    .unwrap()
            });
            Geometry::new(Op::Conv, x.shape(), w.shape(), None, &p).ok()?;
            Some((x, w, b, p))
        }
    }
}

fn forward<T: Element>(
    op: Op,
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    b: Option<&ndarray::Array1<T>>,
    p: &tconv::ConvParams,
) -> ArrayD<T> {
    let bv = b.map(|b| b.view());
    match op {
        Op::Conv => conv(x, w, bv, p),
        Op::ConvTranspose => conv_transpose(x, w, bv, p),
    }
    .unwrap()
}

fn dot(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
}

/// Central finite differences of `L = <op(x, w, b), r>` at a few entries of x, w and b.
fn finite_differences(c: &Case, op: Op) -> Result<(), TestCaseError> {
    let Some((x, w, b, p)) = arrays::<f64>(c, op) else {
        return Ok(());
    };
    // Non-integer values so nothing is accidentally exact.
    let (x, w) = (x.mapv(|v| v * 0.37 + 0.11), w.mapv(|v| v * 0.29 - 0.07));
    let b = b.map(|b| b.mapv(|v| v * 0.5));
    let y = forward(op, &x, &w, b.as_ref(), &p);
    let r = ints::<f64>(y.shape(), c.seed ^ 0x77).mapv(|v| v * 0.41);
    let grads = backward(op, &x, &w, &r, &p, &PlanOptions::default());
    let loss = |x: &ArrayD<f64>, w: &ArrayD<f64>, b: Option<&ndarray::Array1<f64>>| {
        dot(&forward(op, x, w, b, &p), &r)
    };
    let eps = 1e-3; // L is linear in each argument, so central differences are exact up to rounding
    let check = |what: &str, analytic: f64, numeric: f64| -> Result<(), TestCaseError> {
        prop_assert!(
            (analytic - numeric).abs() <= 1e-7 * (1.0 + numeric.abs()),
            "{what}: analytic {analytic} vs numeric {numeric}"
        );
        Ok(())
    };
    for i in (0..x.len()).step_by((x.len() / 5).max(1)) {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp.as_slice_mut().unwrap()[i] += eps;
        xm.as_slice_mut().unwrap()[i] -= eps;
        let num = (loss(&xp, &w, b.as_ref()) - loss(&xm, &w, b.as_ref())) / (2.0 * eps);
        check(
            "grad_input",
            grads.input.as_ref().unwrap().as_slice().unwrap()[i],
            num,
        )?;
    }
    for i in (0..w.len()).step_by((w.len() / 5).max(1)) {
        let (mut wp, mut wm) = (w.clone(), w.clone());
        wp.as_slice_mut().unwrap()[i] += eps;
        wm.as_slice_mut().unwrap()[i] -= eps;
        let num = (loss(&x, &wp, b.as_ref()) - loss(&x, &wm, b.as_ref())) / (2.0 * eps);
        check(
            "grad_weight",
            grads.weight.as_ref().unwrap().as_slice().unwrap()[i],
            num,
        )?;
    }
    if let Some(b) = &b {
        for i in 0..b.len() {
            let (mut bp, mut bm) = (b.clone(), b.clone());
            bp[i] += eps;
            bm[i] -= eps;
            let num = (loss(&x, &w, Some(&bp)) - loss(&x, &w, Some(&bm))) / (2.0 * eps);
            check("grad_bias", grads.bias.as_ref().unwrap()[i], num)?;
        }
    }
    Ok(())
}

fn fast_matches_reference<T: Element>(c: &Case, op: Op) -> Result<(), TestCaseError> {
    let Some((x, w, _, p)) = arrays::<T>(c, op) else {
        return Ok(());
    };
    let y_shape = Geometry::new(op, x.shape(), w.shape(), None, &p)
        .unwrap()
        .user_output_shape();
    let gy = ints::<T>(&y_shape, c.seed ^ 0x99);
    let reference = backward(
        op,
        &x,
        &w,
        &gy,
        &p,
        &PlanOptions {
            algorithm: Some(Algorithm::Reference),
            ..PlanOptions::default()
        },
    );
    // The planner's choice, and the input gradient through Winograd tiles wherever they
    // apply (exact on small integers: the transforms' coefficients are powers of two).
    for (threads, algorithm) in [(1, None), (3, None), (2, Some(Algorithm::Winograd))] {
        let fast = backward(
            op,
            &x,
            &w,
            &gy,
            &p,
            &PlanOptions {
                threads: Some(threads),
                algorithm,
                ..PlanOptions::default()
            },
        );
        prop_assert_eq!(&fast, &reference, "threads {} {:?}", threads, algorithm);
    }
    // The adjoint identity ties forward and backward: <op(x), gy> == <x, grad_x>.
    let y = forward(op, &x, &w, None, &p);
    let lhs: f64 = y
        .iter()
        .zip(gy.iter())
        .map(|(a, b)| (*a * *b).to_f64().unwrap())
        .sum();
    let rhs: f64 = x
        .iter()
        .zip(reference.input.as_ref().unwrap().iter())
        .map(|(a, b)| (*a * *b).to_f64().unwrap())
        .sum();
    prop_assert_eq!(lhs, rhs);
    // And <op(x), gy> == <w, grad_w> (bilinear in x and w).
    let rhs_w: f64 = w
        .iter()
        .zip(reference.weight.as_ref().unwrap().iter())
        .map(|(a, b)| (*a * *b).to_f64().unwrap())
        .sum();
    prop_assert_eq!(lhs, rhs_w);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn finite_differences_f64(c in case_upto(5, 3, 2)) {
        finite_differences(&c, Op::ConvTranspose)?;
        finite_differences(&c, Op::Conv)?;
    }

    #[test]
    fn fast_gradients_match_reference(c in case_upto(9, 9, 2)) {
        fast_matches_reference::<f32>(&c, Op::ConvTranspose)?;
        fast_matches_reference::<f64>(&c, Op::ConvTranspose)?;
        fast_matches_reference::<f32>(&c, Op::Conv)?;
    }
}

#[test]
fn only_requested_gradients_are_computed() {
    let x = ArrayD::from_elem(vec![1, 2, 3, 3], 1.0f32);
    let w = ArrayD::from_elem(vec![2, 2, 2, 2], 1.0f32);
    let gy = ArrayD::from_elem(vec![1, 2, 4, 4], 1.0f32);
    let p = tconv::ConvParams::new();
    let only_w = Wanted {
        input: false,
        weight: true,
        bias: false,
    };
    let g = conv_transpose_backward(&x, &w, &gy, &p, only_w, &PlanOptions::default()).unwrap();
    assert!(g.input.is_none() && g.bias.is_none());
    assert_eq!(g.weight.unwrap().shape(), &[2, 2, 2, 2]);
    let bad = ArrayD::from_elem(vec![1, 2, 5, 4], 1.0f32);
    let e = conv_transpose_backward(&x, &w, &bad, &p, only_w, &PlanOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("grad_output has shape [1, 2, 5, 4], expected [1, 2, 4, 4]"),
        "{e}"
    );
    // grad_weight reference is exposed for callers who test their own fast paths.
    let g = Geometry::new(Op::ConvTranspose, &[1, 2, 3, 3], &[2, 2, 2, 2], None, &p).unwrap();
    assert_eq!(
        grad_weight_reference(&g, x.as_slice().unwrap(), gy.as_slice().unwrap()).len(),
        16
    );
}

/// Wide layers (many channels per group, long rows) take the weight gradient's vector
/// transpose packing, at stride 1 and 2 for both ops; the depthwise path and the thin-side
/// path (1-3-D) too: exact on small integers against the reference, for 1 and 2 threads.
#[test]
fn wide_weight_gradients_match_reference() {
    use tconv::ConvParams;
    let cases = [
        (
            vec![2, 24, 9, 21],
            vec![24, 17, 3, 3],
            ConvParams::new().padding(&[1]),
        ),
        (
            vec![3, 16, 6, 19],
            vec![16, 32, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
        ),
        (
            vec![1, 16, 5, 33],
            vec![16, 8, 3],
            ConvParams::new().stride(&[2]).dilation(&[2]).groups(2),
        ),
        (
            vec![2, 6, 7, 12],
            vec![6, 1, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]).groups(6),
        ),
        // A thin big side (3 and 4 channels per group): row dot products of four S rows.
        (
            vec![2, 13, 9, 11],
            vec![13, 3, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
        ),
        (
            vec![1, 20, 37],
            vec![20, 4, 5],
            ConvParams::new()
                .stride(&[3])
                .dilation(&[2])
                .padding(&[2])
                .groups(2),
        ),
        (
            vec![2, 9, 3, 4, 5],
            vec![9, 4, 2, 3, 3],
            ConvParams::new().stride(&[2]).padding(&[1]),
        ),
        // A halo too wide for chunks of positions: packed two images at a time, the last
        // chunk holding one.
        (
            vec![5, 8, 12, 20],
            vec![8, 6, 3, 3],
            ConvParams::new().padding(&[1]),
        ),
    ];
    for (xs, ws, p) in cases {
        let (x, w) = (ints::<f32>(&xs, 3), ints::<f32>(&ws, 4));
        for op in [Op::ConvTranspose, Op::Conv] {
            let w = if op == Op::Conv && ws.len() == 3 {
                continue; // the 1-D case is read as a transposed conv only
            } else {
                w.clone()
            };
            let x = if op == Op::Conv {
                // As a conv: the same weight reads x with C_out/g·g input channels.
                let mut s = xs.clone();
                s[1] = ws[1] * p.groups.max(1);
                ints::<f32>(&s, 5)
            } else {
                x.clone()
            };
            let Ok(g) = Geometry::new(op, x.shape(), w.shape(), None, &p) else {
                continue;
            };
            let gy = ints::<f32>(&g.user_output_shape(), 6);
            let reference =
                grad_weight_reference(&g, x.as_slice().unwrap(), gy.as_slice().unwrap());
            for threads in [1, 2] {
                let o = PlanOptions {
                    threads: Some(threads),
                    ..PlanOptions::default()
                };
                let got = backward(op, &x, &w, &gy, &p, &o).weight.unwrap();
                assert_eq!(
                    got.as_slice().unwrap(),
                    reference.as_slice(),
                    "{op:?} {xs:?} {ws:?} threads {threads}"
                );
            }
        }
    }
}

/// Depthwise layers with a large last-axis stride (FCN's k16 s8 upsampler and the like):
/// the weight gradient reads the big side's rows by tap vectors, and so does the input
/// gradient of a transposed conv (a strided depthwise conv), both in one pass when both are
/// asked for. Exact on small integers
/// against the reference gradients, for both ops, 1-3-D, asymmetric and wide pads, dilated
/// outer axes, a requested output size (negative padding), f32 and f64, scalar, AVX2 and
/// AVX-512 (f32 reads the rows in place on both, the one pass bitwise what each gradient
/// gives alone), 1 and 3 threads.
#[test]
fn depthwise_tap_vector_gradients_match_reference() {
    use tconv::fast::Isa;
    use tconv::{ConvParams, OutputSize};
    // As transposed convs (input, weight, params); the conv reading of each takes the
    // transposed conv's output shape as its input.
    let cases = [
        (
            vec![2, 3, 5, 6],
            vec![3, 1, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]),
        ),
        (
            vec![1, 2, 4, 7],
            vec![2, 1, 3, 8],
            ConvParams::new()
                .stride(&[2, 4])
                .dilation(&[2, 1])
                .pads(&[3, 5], &[1, 2]),
        ),
        (
            vec![3, 2, 13],
            vec![2, 1, 24],
            ConvParams::new().stride(&[5]).pads(&[6], &[9]),
        ),
        (
            vec![1, 2, 3, 2, 9],
            vec![2, 1, 2, 3, 8],
            ConvParams::new().stride(&[1, 2, 4]).padding(&[1, 1, 2]),
        ),
        (
            vec![1, 2, 3, 5],
            vec![2, 1, 8, 16],
            ConvParams::new()
                .stride(&[4, 8])
                .output_size(OutputSize::Onnx(vec![19, 53])),
        ),
        // Stride 2: the weight gradient by tap vectors, the conv by polyphase rows.
        (
            vec![2, 2, 6, 9],
            vec![2, 1, 3, 8],
            ConvParams::new().stride(&[1, 2]).pads(&[1, 3], &[0, 2]),
        ),
    ];
    for (xs, ws, p) in cases {
        let p = p.groups(xs[1]);
        for op in [Op::ConvTranspose, Op::Conv] {
            let x = match op {
                Op::ConvTranspose => ints::<f64>(&xs, 51),
                Op::Conv => {
                    let mut p = p.clone();
                    p.output_size = None;
                    let g = Geometry::new(Op::ConvTranspose, &xs, &ws, None, &p).unwrap();
                    ints::<f64>(&g.user_output_shape(), 52)
                }
            };
            let p = if op == Op::Conv {
                let mut p = p.clone();
                p.output_size = None;
                p
            } else {
                p.clone()
            };
            let w = ints::<f64>(&ws, 53);
            let g = Geometry::new(op, x.shape(), &ws, None, &p).unwrap();
            assert_eq!(
                tconv::grad::weight_gradient_method::<f64>(&g, &PlanOptions::default()),
                "depthwise tap vectors"
            );
            let gy = ints::<f64>(&g.user_output_shape(), 54);
            let reference = PlanOptions {
                algorithm: Some(Algorithm::Reference),
                ..PlanOptions::default()
            };
            let want = backward(op, &x, &w, &gy, &p, &reference);
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                for threads in [1, 3] {
                    let o = PlanOptions {
                        threads: Some(threads),
                        isa: Some(isa),
                        ..PlanOptions::default()
                    };
                    let got = backward(op, &x, &w, &gy, &p, &o);
                    assert_eq!(got, want, "{op:?} {xs:?} {ws:?} {isa} threads {threads}");
                    // Both gradients of a transposed conv in one pass over `gy`: bitwise
                    // what each gives when asked for alone.
                    let alone = |input: bool| {
                        let wanted = Wanted {
                            input,
                            weight: !input,
                            bias: false,
                        };
                        match op {
                            Op::Conv => conv_backward(&x, &w, &gy, &p, wanted, &o),
                            Op::ConvTranspose => {
                                conv_transpose_backward(&x, &w, &gy, &p, wanted, &o)
                            }
                        }
                        .unwrap()
                    };
                    assert_eq!(alone(true).input, got.input);
                    assert_eq!(alone(false).weight, got.weight);
                    let f = |a: &ArrayD<f64>| a.mapv(|v| v as f32);
                    let got32 = backward(op, &f(&x), &f(&w), &f(&gy), &p, &o);
                    assert_eq!(
                        got32.weight.unwrap(),
                        f(want.weight.as_ref().unwrap()),
                        "f32 {op:?} {xs:?} {isa}"
                    );
                    assert_eq!(got32.input.unwrap(), f(want.input.as_ref().unwrap()));
                    // And in f32 (which AVX2 and AVX-512 read in place) on values that round (so
                    // the order of the sums shows): the one pass's gradients bitwise what
                    // each gives alone.
                    let r = |a: &ArrayD<f64>| a.mapv(|v| (v * 0.3 + 0.01) as f32);
                    let (x32, w32, gy32) = (r(&x), r(&w), r(&gy));
                    let both = backward(op, &x32, &w32, &gy32, &p, &o);
                    for input in [true, false] {
                        let wanted = Wanted {
                            input,
                            weight: !input,
                            bias: false,
                        };
                        let alone = match op {
                            Op::Conv => conv_backward(&x32, &w32, &gy32, &p, wanted, &o),
                            Op::ConvTranspose => {
                                conv_transpose_backward(&x32, &w32, &gy32, &p, wanted, &o)
                            }
                        }
                        .unwrap();
                        if input {
                            assert_eq!(alone.input, both.input);
                        } else {
                            assert_eq!(alone.weight, both.weight);
                        }
                    }
                }
            }
        }
    }
}

/// Random floats in `[-1, 1)` (summation order shows in the last bits, unlike integers).
fn floats(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    ArrayD::from_shape_fn(ndarray::IxDyn(shape), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    })
}

/// Every gradient path sums in a fixed order whatever the thread count: on random floats,
/// the input, weight and bias gradients at 2, 3 and 5 threads are bitwise those at 1 (GEMM
/// over positions by images and by position chunks, the thin side, depthwise tap vectors
/// in one pass, row dot products).
#[test]
fn gradients_bitwise_identical_for_any_thread_count() {
    use tconv::ConvParams;
    let cases = [
        (
            vec![3, 16, 9, 7],
            vec![16, 12, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
        ),
        (
            vec![2, 16, 12, 12],
            vec![16, 8, 2, 2],
            ConvParams::new().stride(&[2]),
        ),
        (
            vec![2, 24, 8, 8],
            vec![24, 3, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
        ),
        (
            vec![2, 5, 9, 7],
            vec![5, 1, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]).groups(5),
        ),
        (
            vec![2, 6, 11, 9],
            vec![6, 1, 3, 3],
            ConvParams::new().stride(&[2]).padding(&[1]).groups(6),
        ),
    ];
    for (xs, ws, p) in cases {
        let (x, w) = (floats(&xs, 1), floats(&ws, 2));
        let g = Geometry::new(Op::ConvTranspose, &xs, &ws, None, &p).unwrap();
        let gy = floats(&g.user_output_shape(), 3);
        // The planner's choice, and Winograd tiles forced (where they apply).
        for algorithm in [None, Some(Algorithm::Winograd)] {
            let run = |threads| {
                let o = PlanOptions {
                    threads: Some(threads),
                    algorithm,
                    ..PlanOptions::default()
                };
                backward(Op::ConvTranspose, &x, &w, &gy, &p, &o)
            };
            identical_across_threads(&xs, run);
        }
    }
}

/// `run(threads)` gives bitwise the same gradients for 2, 3 and 5 threads as for 1.
fn identical_across_threads(xs: &[usize], run: impl Fn(usize) -> tconv::Gradients<f32>) {
    let one = run(1);
    let bits = |a: &Option<ArrayD<f32>>| -> Vec<u32> {
        a.as_ref().unwrap().iter().map(|v| v.to_bits()).collect()
    };
    for threads in [2, 3, 5] {
        let t = run(threads);
        assert_eq!(
            bits(&t.input),
            bits(&one.input),
            "{xs:?} input, {threads} threads"
        );
        assert_eq!(
            bits(&t.weight),
            bits(&one.weight),
            "{xs:?} weight, {threads} threads"
        );
        assert_eq!(
            bits(&t.bias),
            bits(&one.bias),
            "{xs:?} bias, {threads} threads"
        );
    }
}

/// Gradients that run side by side on two threads, one thread each: dcgan2's, whose input
/// gradient's Winograd tiles stream their weights (asserted on AVX-512), and small layers'
/// (at most 2^28 FLOPs a gradient: a generator's RGB layer, a 3-D up-convolution) on any
/// ISA.
/// Bitwise the same as on one thread and as on three (which run one after the other), and
/// the same as the input and weight gradients asked for alone; likewise the balanced
/// schedule of a GEMM-over-positions weight gradient in parts.
#[test]
fn side_by_side_gradients_keep_the_bits() {
    let cases = [
        (
            vec![16, 256, 8, 8],
            vec![256, 128, 4, 4],
            vec![2],
            vec![1],
            true,
        ),
        (
            vec![4, 16, 8, 8],
            vec![16, 3, 4, 4],
            vec![2],
            vec![1],
            false,
        ),
        (
            vec![1, 8, 4, 4, 4],
            vec![8, 12, 2, 2, 2],
            vec![2],
            vec![0],
            false,
        ),
        // Balanced (`grad::balanced`): a GEMM-over-positions weight gradient in two parts,
        // each thread one part and then half the batch's input gradient (an even and an
        // odd batch).
        (
            vec![4, 32, 8, 8],
            vec![32, 24, 4, 4],
            vec![2],
            vec![1],
            false,
        ),
        (
            vec![5, 32, 8, 8],
            vec![32, 24, 4, 4],
            vec![2],
            vec![1],
            false,
        ),
    ];
    for (xs, ws, stride, padding, avx512_only) in cases {
        let p = tconv::ConvParams::new().stride(&stride).padding(&padding);
        let (x, w) = (floats(&xs, 41), floats(&ws, 42));
        let g = Geometry::new(Op::ConvTranspose, &xs, &ws, None, &p).unwrap();
        let gy = floats(&g.user_output_shape(), 43);
        let two = PlanOptions {
            threads: Some(2),
            ..PlanOptions::default()
        };
        let method = tconv::grad::backward_method(&g, &two);
        if !avx512_only || two.isa_for::<f32>() == tconv::fast::Isa::Avx512 {
            let expected = if xs[1] == 32 {
                "half the batch's input gradient"
            } else {
                "side by side"
            };
            assert!(method.contains(expected), "{xs:?}: {method}");
        }
        let run = |threads| {
            let o = PlanOptions {
                threads: Some(threads),
                ..PlanOptions::default()
            };
            backward(Op::ConvTranspose, &x, &w, &gy, &p, &o)
        };
        identical_across_threads(&xs, run);
        let both = backward(Op::ConvTranspose, &x, &w, &gy, &p, &two);
        let alone = |wanted| conv_transpose_backward(&x, &w, &gy, &p, wanted, &two).unwrap();
        let input = alone(Wanted {
            input: true,
            weight: false,
            bias: false,
        });
        let weight = alone(Wanted {
            input: false,
            weight: true,
            bias: false,
        });
        assert!(both.input == input.input, "{xs:?}: input gradient alone");
        assert!(
            both.weight == weight.weight,
            "{xs:?}: weight gradient alone"
        );
    }
}

/// Two batched, heavily padded 3-D problems where PyTorch 2.15's CPU autograd
/// gets the weight gradient wrong (found by `bench/torch_fuzz.py`): on all-ones data each
/// tap's gradient counts the (input, output) pairs it joins, over the batch.
/// `conv3d(ones(2,1,5,1,1), ones(1,1,5,1,1), stride (2,1,1), padding (3,0,0))`: PyTorch
/// gives `[4, 6, 5, 6, 5]`; `conv_transpose3d(ones(2,1,4,1,1), ones(1,1,5,1,1), stride
/// (3,1,1), padding (4,0,0))`: PyTorch gives `[4, 5, 4, 4, 5]` or garbage.
#[test]
fn batched_padded_3d_weight_gradients_count_pairs() {
    let params = tconv::ConvParams::new;
    for (op, input, stride, pad, want) in [
        (
            Op::Conv,
            5usize,
            2usize,
            3usize,
            [4.0f32, 6.0, 4.0, 6.0, 4.0],
        ),
        (Op::ConvTranspose, 4, 3, 4, [4.0, 4.0, 4.0, 4.0, 4.0]),
    ] {
        let p = params().stride(&[stride, 1, 1]).padding(&[pad, 0, 0]);
        let x = ArrayD::<f32>::ones(vec![2, 1, input, 1, 1]);
        let w = ArrayD::<f32>::ones(vec![1, 1, 5, 1, 1]);
        let y = forward(op, &x, &w, None, &p);
        let gy = ArrayD::<f32>::ones(y.shape());
        // The count by its definition: tap j joins input i and output o = i·s + j - p
        // (conv: output o reads input o·s + j - p).
        let outputs = y.shape()[2];
        let pairs = |j: usize| {
            let n = (0..input)
                .filter(|&i| match op {
                    Op::ConvTranspose => (i * stride + j)
                        .checked_sub(pad)
                        .is_some_and(|o| o < outputs),
                    Op::Conv => (0..outputs).any(|o| o * stride + j == i + pad),
                })
                .count();
            2.0 * n as f32
        };
        let counted: Vec<f32> = (0..5).map(pairs).collect();
        assert_eq!(counted, want, "{op:?}");
        for threads in [1, 2] {
            let o = PlanOptions {
                threads: Some(threads),
                ..PlanOptions::default()
            };
            let g = backward(op, &x, &w, &gy, &p, &o);
            let gw: Vec<f32> = g.weight.unwrap().iter().copied().collect();
            assert_eq!(gw, want, "{op:?} on {threads} threads");
        }
    }
}
