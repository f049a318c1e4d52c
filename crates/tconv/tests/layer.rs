//! A [`Layer`] planned for one input shape after another gives what a fresh plan for each
//! shape gives, bit for bit (so the packed weights it shares between its plans are those a
//! fresh plan would pack), and does share them where only the input's extent changes.

mod common;

use common::gen::*;
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use tconv::fast::Isa;
use tconv::{Algorithm, ConvParams, Element, Layer, Op, Padding, Plan, PlanOptions, Wanted};

/// Values that round (so a wrong order of sums or a wrong tap shows in the bits).
fn rounding<T: Element>(shape: &[usize], seed: u64) -> ArrayD<T> {
    ints::<T>(shape, seed).mapv(|v| v * T::from(0.37).unwrap() + T::from(0.011).unwrap())
}

/// A layer of `w` without bias, planned with the default options.
fn default_layer(op: Op, w: &ArrayD<f32>, params: &ConvParams) -> Layer<f32> {
    Layer::new(op, w, None, params, &PlanOptions::default()).unwrap()
}

/// Run `layer` on inputs of each of `shapes` in turn and compare with a fresh plan.
fn layer_matches_fresh<T: Element>(
    op: Op,
    w: &ArrayD<T>,
    bias: Option<&ndarray::Array1<T>>,
    params: &ConvParams,
    options: &PlanOptions,
    shapes: &[Vec<usize>],
) -> Result<(), TestCaseError> {
    let layer = Layer::new(op, w, bias.map(|b| b.view()), params, options).unwrap();
    for (i, shape) in shapes.iter().enumerate() {
        let x = rounding::<T>(shape, i as u64 + 3);
        let fresh = Plan::new(op, shape, w, bias.map(|b| b.len()), params, options);
        let (Ok(fresh), got) = (fresh, layer.forward(&x)) else {
            // A shape the parameters reject: the layer rejects it too.
            let fresh = Plan::new(op, shape, w, bias.map(|b| b.len()), params, options);
            prop_assert!(fresh.is_err() && layer.forward(&x).is_err(), "{shape:?}");
            continue;
        };
        let want = fresh.execute(&x, bias.map(|b| b.view())).unwrap();
        let gy = rounding::<T>(want.shape(), i as u64 + 11);
        prop_assert_eq!(got.unwrap(), want, "{:?}: {}", shape, fresh);
        // The gradients through the layer's kept input-gradient plans: the functions'.
        let wanted = Wanted::all();
        let got = layer.backward(&x, &gy, wanted).unwrap();
        let want = match op {
            Op::Conv => tconv::conv_backward(&x, w, &gy, params, wanted, options),
            Op::ConvTranspose => {
                tconv::conv_transpose_backward(&x, w, &gy, params, wanted, options)
            }
        }
        .unwrap();
        prop_assert_eq!(got.input, want.input, "{:?}", shape);
        prop_assert_eq!(got.weight, want.weight, "{:?}", shape);
        prop_assert!(layer.packings() <= 2 * tconv::fast::pack::PackCache::KEEP);
    }
    Ok(())
}

/// The case's input shape with each spatial extent changed by the deltas (cycled), at
/// least 1.
fn variants(c: &Case, deltas: &[Vec<i64>]) -> Vec<Vec<usize>> {
    deltas
        .iter()
        .map(|d| {
            let mut s = c.x_shape();
            for (a, e) in s[2..].iter_mut().enumerate() {
                *e = (*e as i64 + d[a % d.len()]).max(1) as usize;
            }
            s
        })
        .collect()
}

fn algorithms() -> [(Option<Algorithm>, Option<bool>); 5] {
    [
        (None, None),
        (Some(Algorithm::Direct), Some(false)),
        (Some(Algorithm::Direct), Some(true)),
        (Some(Algorithm::Winograd), None),
        (Some(Algorithm::Col2im), None),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn layer_matches_fresh_plans(
        c in case_upto(9, 6, 2),
        deltas in prop::collection::vec(prop::collection::vec(-3i64..=3, 1..=3), 2..=5),
        same in 0usize..3,
        threads in 1usize..=2,
    ) {
        let shapes = variants(&c, &deltas);
        // A transposed conv as generated, or with SAME padding (whose split depends on the
        // input's extent, and with it the phases' taps).
        let mut p = c.params();
        p.output_padding.clear();
        if same > 0 {
            p = p.padding_spec(if same == 1 { Padding::SameUpper } else { Padding::SameLower });
        }
        let (_, w, b) = c.data::<f32>();
        // The same weight read as a conv's: input channels = out_pg * groups.
        let conv_shapes: Vec<Vec<usize>> = shapes
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s[1] = c.c_out();
                s
            })
            .collect();
        let conv_bias = b.as_ref().map(|_| rounding::<f32>(&[c.c_in()], 9).into_dimensionality().unwrap());
        for (algorithm, inplace) in algorithms() {
            let options = PlanOptions {
                threads: Some(threads),
                algorithm,
                inplace,
                ..PlanOptions::default()
            };
            let wr = rounding::<f32>(w.shape(), c.seed);
            let br = b.as_ref().map(|b| rounding::<f32>(&[b.len()], 5).into_dimensionality().unwrap());
            layer_matches_fresh(Op::ConvTranspose, &wr, br.as_ref(), &p, &options, &shapes)?;
            layer_matches_fresh(Op::Conv, &wr, conv_bias.as_ref(), &p, &options, &conv_shapes)?;
        }
        // f64 and the portable ISA: the planner's choice only.
        let options = PlanOptions { isa: Some(Isa::Scalar), ..PlanOptions::default() };
        let w64 = rounding::<f64>(w.shape(), c.seed);
        layer_matches_fresh(Op::ConvTranspose, &w64, None, &p, &options, &shapes)?;
    }
}

/// A layer planned for one thread takes, for a new input extent, a Winograd tile whose
/// weights it holds packed already where one fits its scratch, and of tiles of equal cost
/// the one of less scratch: the cheapest tile of each extent alone varies with it (DCGAN's
/// 512 -> 256 layer at widths 4-12: six pairs of tile and transforms on a full-width
/// AVX-512 core; its 256 -> 128 layer at widths 8-16: four), but the layer packs fewer times
/// than that (three each), and every output is the fresh plan's.
#[test]
fn new_input_extents_take_tiles_already_packed() {
    let options = PlanOptions {
        threads: Some(1),
        ..PlanOptions::default()
    };
    let params = ConvParams::new().stride(&[2, 2]).padding(&[1, 1]);
    let mut varied = 0;
    for (cin, cout, h) in [(512, 256, 4), (256, 128, 8)] {
        let w = rounding::<f32>(&[cin, cout, 4, 4], 3);
        let layer = Layer::new(Op::ConvTranspose, &w, None, &params, &options).unwrap();
        let (mut fresh_labels, mut transforms) = (Vec::new(), Vec::new());
        for wd in h..=h + 8 {
            let x = rounding::<f32>(&[16, cin, h, wd], wd as u64);
            let y = layer.forward(&x).unwrap();
            let fresh =
                Plan::new(Op::ConvTranspose, x.shape(), &w, None, &params, &options).unwrap();
            assert_eq!(y, fresh.execute(&x, None).unwrap(), "{cin}: width {wd}");
            let label = fresh.label();
            if label.starts_with("winograd") {
                let t = label.split('/').next().unwrap().to_string();
                if !transforms.contains(&t) {
                    transforms.push(t);
                }
            }
            if !fresh_labels.contains(&label) {
                fresh_labels.push(label);
            }
        }
        // Packed again only where no packing held fits; on AVX-512 fewer times than the
        // fresh plans take tiles wherever their tile varies with the extent beyond the
        // transforms.
        let made = layer.packings_made();
        assert!(made <= fresh_labels.len(), "{cin}: {made} {fresh_labels:?}");
        if Isa::detect() == Isa::Avx512 && fresh_labels.len() > transforms.len() {
            assert!(made < fresh_labels.len(), "{cin}: {made} {fresh_labels:?}");
            varied += 1;
        }
    }
    // On AVX-512 at least one layer's tile varies (on a full-width core both; where
    // AVX-512 runs on 256-bit units, whose planner weighs the tiles alike, the 256 -> 128
    // layer's).
    if Isa::detect() == Isa::Avx512 {
        assert!(varied > 0);
    }
}

/// A dense stride-2 upsampler on Winograd tiles and a 1-D one (hifigan's shape, smaller;
/// the planner's choice): a plan for a new input extent packs only where its packing differs
/// from every earlier plan's.
#[test]
fn new_input_extents_share_the_packed_weights() {
    let options = PlanOptions {
        threads: Some(2),
        algorithm: Some(Algorithm::Winograd),
        ..PlanOptions::default()
    };
    let params = ConvParams::new().stride(&[2, 2]).padding(&[1, 1]);
    let w = rounding::<f32>(&[64, 32, 4, 4], 1);
    let layer = Layer::new(Op::ConvTranspose, &w, None, &params, &options).unwrap();
    let mut labels = std::collections::BTreeSet::new();
    for (h, wd) in [(16, 16), (24, 24), (32, 32), (16, 16), (24, 24)] {
        let x = rounding::<f32>(&[1, 64, h, wd], h as u64);
        let y = layer.forward(&x).unwrap();
        let fresh = Plan::new(Op::ConvTranspose, x.shape(), &w, None, &params, &options).unwrap();
        assert_eq!(y, fresh.execute(&x, None).unwrap(), "{h}x{wd}");
        assert_eq!(fresh.algorithm(), Algorithm::Winograd);
        labels.insert(fresh.label());
    }
    // The transforms and the tile follow the extents (here F(2x2) and F(3x3): 2.25 and 4
    // times the weight's bytes, more with the tiles' padding; on two threads one tile each,
    // on one F(3x3)'s tile changes with the extent too): one packing per (transforms, tile)
    // seen, no more.
    assert_eq!(labels.len(), 2, "{labels:?}");
    assert_eq!(layer.packings(), labels.len(), "{labels:?}");
    let weight_bytes = w.len() * 4;
    assert!(
        layer.packed_bytes() >= weight_bytes * 25 / 4,
        "{}",
        layer.packed_bytes()
    );
    // More variants (F(2x3), F(3x2)): the packings kept stay within 8 weights' bytes.
    for (h, wd) in [(16, 20), (20, 16), (16, 16), (24, 24)] {
        let x = rounding::<f32>(&[1, 64, h, wd], h as u64);
        let fresh = Plan::new(Op::ConvTranspose, x.shape(), &w, None, &params, &options).unwrap();
        assert_eq!(layer.forward(&x).unwrap(), fresh.execute(&x, None).unwrap());
        assert!(
            layer.packed_bytes() <= 8 * weight_bytes,
            "{}",
            layer.packed_bytes()
        );
    }

    let options = PlanOptions {
        threads: Some(1),
        ..PlanOptions::default()
    };
    let params = ConvParams::new().stride(&[8]).padding(&[4]);
    let w = rounding::<f32>(&[64, 32, 16], 2);
    let layer = Layer::new(Op::ConvTranspose, &w, None, &params, &options).unwrap();
    let mut labels = std::collections::BTreeSet::new();
    for len in [50, 51, 97, 50, 64] {
        let x = rounding::<f32>(&[1, 64, len], len as u64);
        let y = layer.forward(&x).unwrap();
        let fresh = Plan::new(Op::ConvTranspose, x.shape(), &w, None, &params, &options).unwrap();
        assert_eq!(y, fresh.execute(&x, None).unwrap(), "{len}");
        labels.insert(fresh.label());
    }
    assert_eq!(layer.packings(), labels.len(), "{labels:?}");

    // SAME_UPPER (ONNX): the crop's split moves with the extent, and with it the phases'
    // taps; each plan is still the fresh plan's.
    let params = ConvParams::new()
        .stride(&[2])
        .padding_spec(Padding::SameUpper);
    let w = rounding::<f32>(&[16, 16, 3], 3);
    let layer = Layer::new(Op::ConvTranspose, &w, None, &params, &options).unwrap();
    for len in [20, 21, 22] {
        let x = rounding::<f32>(&[2, 16, len], len as u64);
        let fresh = Plan::new(Op::ConvTranspose, x.shape(), &w, None, &params, &options).unwrap();
        assert_eq!(layer.forward(&x).unwrap(), fresh.execute(&x, None).unwrap());
    }
    assert!((1..=3).contains(&layer.packings()), "{}", layer.packings());
}

/// Unbatched inputs `(C, *spatial)`, as the functions take them, beside batched ones.
#[test]
fn layer_takes_unbatched_inputs() {
    let w = rounding::<f32>(&[6, 4, 3], 1);
    let params = ConvParams::new().stride(&[2]).padding(&[1]);
    let layer = default_layer(Op::ConvTranspose, &w, &params);
    for len in [5, 9, 5] {
        let x = rounding::<f32>(&[6, len], len as u64);
        let y = layer.forward(&x).unwrap();
        assert_eq!(y.shape(), &[4, 2 * len - 1]);
        assert_eq!(y, tconv::conv_transpose(&x, &w, None, &params).unwrap());
        let xb = x.clone().insert_axis(ndarray::Axis(0));
        let yb = layer.forward(&xb).unwrap();
        assert_eq!(yb.index_axis(ndarray::Axis(0), 0), y.view());
    }
}

/// Whether an array's first element starts a 64-byte cache line.
fn on_a_line<T>(a: &ArrayD<T>) -> bool {
    (a.as_ptr() as usize).is_multiple_of(tconv::tensor::ALIGN_BYTES)
}

/// Every new result starts on a cache line (forward outputs of the functions, plans and
/// layers, batched or not, f32 and f64, and input gradients), and holds the reference's
/// values: the data sits inside a larger allocation, which the arrays' offsets account for.
#[test]
fn results_start_on_a_cache_line() {
    fn check<T: Element>() {
        let w = ints::<T>(&[4, 3, 2, 2, 2], 5);
        let params = ConvParams::new().stride(&[2, 2, 2]);
        let reference = PlanOptions {
            algorithm: Some(Algorithm::Reference),
            ..PlanOptions::default()
        };
        for (shape, seed) in [(vec![2, 4, 3, 3, 5], 7), (vec![4, 5, 2, 3], 8)] {
            let x = ints::<T>(&shape, seed);
            let y = tconv::conv_transpose(&x, &w, None, &params).unwrap();
            let want = Plan::new(Op::ConvTranspose, &shape, &w, None, &params, &reference)
                .unwrap()
                .execute(&x, None)
                .unwrap();
            assert!(on_a_line(&y) && y == want, "{shape:?}");
            let layer = Layer::new(
                Op::ConvTranspose,
                &w,
                None,
                &params,
                &PlanOptions::default(),
            );
            let got = layer.unwrap().forward(&x).unwrap();
            assert!(on_a_line(&got) && got == want, "{shape:?}");
            let (offset, len) = (got.clone().into_raw_vec_and_offset(), got.len());
            assert!(offset.1.unwrap_or(0) + len <= offset.0.len());
            let gy = ints::<T>(want.shape(), seed + 1);
            let wanted = Wanted {
                input: true,
                weight: false,
                bias: false,
            };
            for options in [PlanOptions::default(), reference.clone()] {
                let g = tconv::conv_transpose_backward(&x, &w, &gy, &params, wanted, &options);
                let gx = g.unwrap().input.unwrap();
                assert!(on_a_line(&gx), "{shape:?}");
                assert_eq!(
                    gx,
                    tconv::conv(&gy, &w, None, &params).unwrap(),
                    "{shape:?}"
                );
            }
        }
        for shape in [vec![0], vec![], vec![5, 7], vec![3, 0, 2]] {
            let z = tconv::tensor::aligned_zeros::<T>(&shape, 2);
            assert_eq!(z.shape(), shape.as_slice());
            assert!(z.iter().all(|v| *v == T::zero()) && z.is_standard_layout());
            assert!(z.is_empty() || on_a_line(&z), "{shape:?}");
        }
    }
    check::<f32>();
    check::<f64>();
}

/// A layer rejects what a plan rejects, with the same error, and keeps working after.
#[test]
fn layer_errors_name_the_numbers() {
    let w = ArrayD::<f32>::zeros(IxDyn(&[4, 2, 3, 3]));
    let layer = default_layer(Op::Conv, &w, &ConvParams::new());
    let bad = ArrayD::<f32>::zeros(IxDyn(&[1, 3, 5, 5]));
    let err = layer.forward(&bad).unwrap_err().to_string();
    let plan_err = Plan::new(
        Op::Conv,
        &[1, 3, 5, 5],
        &w,
        None,
        &ConvParams::new(),
        &PlanOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert_eq!(err, plan_err);
    assert!(err.contains('3') && err.contains('2'), "{err}");
    let small = ArrayD::<f32>::zeros(IxDyn(&[1, 2, 2, 2]));
    assert!(layer.forward(&small).is_err());
    let ok = ArrayD::<f32>::zeros(IxDyn(&[1, 2, 5, 5]));
    assert_eq!(layer.forward(&ok).unwrap().shape(), &[1, 4, 3, 3]);
    let flat = ArrayD::<f32>::zeros(IxDyn(&[4, 2]));
    assert!(Layer::new(
        Op::Conv,
        &flat,
        None,
        &ConvParams::new(),
        &PlanOptions::default()
    )
    .is_err());
}

/// A layer can be shared between threads (its plans and packings behind locks).
#[test]
fn layer_is_shared_between_threads() {
    fn shared<L: Send + Sync>(_: &L) {}
    let w = rounding::<f32>(&[8, 4, 3], 1);
    let params = ConvParams::new().stride(&[2]);
    let layer = default_layer(Op::ConvTranspose, &w, &params);
    shared(&layer);
    let results: Vec<ArrayD<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let layer = &layer;
                s.spawn(move || {
                    layer
                        .forward(&rounding::<f32>(&[1, 8, 5 + i % 2], 7))
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, y) in results.iter().enumerate() {
        let x = rounding::<f32>(&[1, 8, 5 + i % 2], 7);
        assert_eq!(y, &tconv::conv_transpose(&x, &w, None, &params).unwrap());
    }
}

/// A training step through a layer: its gradients are the functions', and after the update
/// its forward pass runs the new weight and bias (no plan or packing of the old ones).
#[test]
fn layer_trains_through_its_own_gradients() {
    let params = ConvParams::new().stride(&[2, 2]).padding(&[1, 1]);
    let options = PlanOptions {
        threads: Some(1),
        algorithm: Some(Algorithm::Winograd),
        ..PlanOptions::default()
    };
    let w0 = rounding::<f32>(&[64, 32, 4, 4], 1);
    let b0: ndarray::Array1<f32> = rounding::<f32>(&[32], 2).into_dimensionality().unwrap();
    let mut layer = Layer::new(Op::ConvTranspose, &w0, Some(b0.view()), &params, &options).unwrap();
    let x = rounding::<f32>(&[2, 64, 16, 16], 3);
    let y0 = layer.forward(&x).unwrap();
    assert_eq!(layer.packings(), 1);
    let gy = rounding::<f32>(y0.shape(), 4);
    let got = layer.backward(&x, &gy, Wanted::all()).unwrap();
    let want =
        tconv::conv_transpose_backward(&x, &w0, &gy, &params, Wanted::all(), &options).unwrap();
    assert_eq!(got.input, want.input);
    assert_eq!(got.weight, want.weight);
    assert_eq!(got.bias, want.bias);
    // The input gradient's plan packed the weight once; another batch size shares that
    // packing where its plan packs alike (the same algorithm and tile, or a tile whose
    // packing the layer holds and that fits), else packs once more.
    assert_eq!(layer.packings(), 2);
    assert_eq!(layer.packings_made(), 2);
    let x3 = rounding::<f32>(&[3, 64, 16, 16], 6);
    let gy3 = rounding::<f32>(&[3, 32, 32, 32], 7);
    for _ in 0..2 {
        let got3 = layer.backward(&x3, &gy3, Wanted::all()).unwrap();
        let want3 =
            tconv::conv_transpose_backward(&x3, &w0, &gy3, &params, Wanted::all(), &options)
                .unwrap();
        assert_eq!(got3.input, want3.input);
        assert_eq!(got3.weight, want3.weight);
    }
    let made = layer.packings_made();
    assert!(made <= 3 && layer.packings() == made, "{made}");
    // The kept plans: the first shape again packs nothing more.
    let again = layer.backward(&x, &gy, Wanted::all()).unwrap();
    assert_eq!(again.input, want.input);
    assert_eq!(layer.packings_made(), made);

    let w1 = &w0 - &(got.weight.unwrap() * 1e-3);
    let gb: ndarray::Array1<f32> = got.bias.unwrap().into_dimensionality().unwrap();
    let b1 = &b0 - &(gb * 1e-3);
    layer.set_parameters(&w1, Some(b1.view())).unwrap();
    assert_eq!(layer.packings(), 0);
    let y1 = layer.forward(&x).unwrap();
    let fresh = Plan::new(
        Op::ConvTranspose,
        x.shape(),
        &w1,
        Some(32),
        &params,
        &options,
    )
    .unwrap();
    assert_eq!(y1, fresh.execute(&x, Some(b1.view())).unwrap());
    assert_ne!(y1, y0);
    assert_eq!(layer.weight(), w1.view());
    assert_eq!(layer.bias(), Some(b1.view()));

    // Shapes other than the layer's are refused, and the layer keeps its values.
    let other = rounding::<f32>(&[64, 32, 3, 3], 5);
    let err = layer.set_parameters(&other, Some(b1.view())).unwrap_err();
    assert!(err.to_string().contains("[64, 32, 3, 3]"), "{err}");
    assert!(layer.set_parameters(&w1, None).is_err());
    let short: ndarray::Array1<f32> = ndarray::Array1::zeros(31);
    assert!(layer.set_parameters(&w1, Some(short.view())).is_err());
    assert_eq!(layer.forward(&x).unwrap(), y1);
}
