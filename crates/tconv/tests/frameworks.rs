//! TensorFlow, Keras and JAX conventions ([`tconv::convention`]) against the frameworks'
//! own outputs and gradients (`tests/data/frameworks`, made by its `gen.py`), and the
//! mappings' invariants and errors.

mod common;

use common::*;
use ndarray::{ArrayD, Ix1, IxDyn};
use serde_json::Value;
use tconv::convention::{
    keras_output_size, Call, Convention, DataFormat, Framework, FrameworkPadding,
};
use tconv::npy::read_npy;
use tconv::{ErrorKind, Op, PlanOptions, Wanted};

fn load(dir: &std::path::Path, name: &str) -> Option<ArrayD<f32>> {
    let p = dir.join(format!("{name}.npy"));
    p.exists().then(|| read_npy(&p).expect("npy").to_f32())
}

fn padding(v: &Value) -> FrameworkPadding {
    match v {
        Value::String(s) => match s.as_str() {
            "same" => FrameworkPadding::Same,
            "same_lower" => FrameworkPadding::SameLower,
            "valid" => FrameworkPadding::Valid,
            other => panic!("padding {other}"),
        },
        Value::Array(pairs) => FrameworkPadding::Explicit(
            pairs
                .iter()
                .map(|p| (p[0].as_i64().unwrap(), p[1].as_i64().unwrap()))
                .collect(),
        ),
        other => panic!("padding {other}"),
    }
}

/// The convention and call a case's `case.json` describes (Keras: its output size rule).
fn describe(meta: &Value, x: &ArrayD<f32>, w: &ArrayD<f32>) -> (Convention, Op, Call) {
    let op = match meta["op"].as_str().unwrap() {
        "conv" => Op::Conv,
        _ => Op::ConvTranspose,
    };
    let mut conv = match meta["framework"].as_str().unwrap() {
        "jax" => Convention {
            framework: Framework::Jax {
                transpose_kernel: meta["transpose_kernel"].as_bool().unwrap_or(false),
                consistent_padding: meta["consistent_padding"].as_bool().unwrap_or(false),
            },
            data_format: DataFormat::ChannelsLast,
        },
        _ => Convention::tensorflow(),
    };
    if meta["data_format"] == "channels_first" {
        conv = conv.channels_first();
    }
    let strides = usizes(&meta["strides"]);
    let dilations = usizes(&meta["dilations"]);
    let pad = padding(&meta["padding"]);
    let mut call = Call::new(pad.clone())
        .strides(&strides)
        .dilations(&dilations)
        .groups(meta["groups"].as_u64().unwrap_or(1) as usize);
    match meta["framework"].as_str().unwrap() {
        "tensorflow" if op == Op::ConvTranspose => {
            call = call.output_size(&usizes(&meta["output_size"]));
        }
        "keras" => {
            let r = x.ndim();
            let output_padding = meta["output_padding"]
                .as_array()
                .map(|_| usizes(&meta["output_padding"]));
            let size = keras_output_size(
                &x.shape()[1..r - 1],
                &w.shape()[..r - 2],
                &strides,
                &dilations,
                &pad,
                output_padding.as_deref(),
            )
            .unwrap();
            // Keras' own layer produced this size: the rule is checked, not assumed.
            assert_eq!(size, usizes(&meta["output_size"]), "Keras' output size");
            call = call.output_size(&size);
        }
        _ => {}
    }
    (conv, op, call)
}

fn close(name: &str, what: &str, got: &ArrayD<f32>, want: &ArrayD<f32>) {
    assert_eq!(got.shape(), want.shape(), "{name}: {what} shape");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{name}: {what}[{i}] = {a}, the framework gave {b}"
        );
    }
}

#[test]
fn every_framework_case_matches_its_framework() {
    let dirs = cases("frameworks");
    assert!(dirs.len() >= 38, "found {} framework cases", dirs.len());
    let mut with_gradients = 0;
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let meta = json(&dir.join("case.json"));
        let (x, w) = (load(&dir, "x").unwrap(), load(&dir, "w").unwrap());
        let b = load(&dir, "b").map(|b| b.into_dimensionality::<Ix1>().unwrap());
        let (conv, op, call) = describe(&meta, &x, &w);
        let y = conv
            .run(op, x.view(), w.view(), b.as_ref().map(|b| b.view()), &call)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        close(&name, "y", &y, &load(&dir, "y").unwrap());
        if let Some(gy) = load(&dir, "gy") {
            with_gradients += 1;
            for threads in [1, 2] {
                let options = PlanOptions {
                    threads: Some(threads),
                    ..PlanOptions::default()
                };
                let g = conv
                    .backward(
                        op,
                        x.view(),
                        w.view(),
                        gy.view(),
                        &call,
                        Wanted::all(),
                        &options,
                    )
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                close(
                    &name,
                    "gx",
                    g.input.as_ref().unwrap(),
                    &load(&dir, "gx").unwrap(),
                );
                close(
                    &name,
                    "gw",
                    g.weight.as_ref().unwrap(),
                    &load(&dir, "gw").unwrap(),
                );
                // The bias gradient sums gy over all but the channel axis, wherever it is.
                let channel = match conv.data_format {
                    DataFormat::ChannelsLast => gy.ndim() - 1,
                    DataFormat::ChannelsFirst => 1,
                };
                let sums: Vec<f32> = gy
                    .axis_iter(ndarray::Axis(channel))
                    .map(|c| c.sum())
                    .collect();
                close(
                    &name,
                    "gb",
                    g.bias.as_ref().unwrap(),
                    &ArrayD::from_shape_vec(IxDyn(&[sums.len()]), sums).unwrap(),
                );
            }
        }
    }
    assert!(
        with_gradients >= 12,
        "{with_gradients} cases with gradients"
    );
}

#[test]
fn kernels_and_data_round_trip_through_torch_layouts() {
    let w =
        ArrayD::from_shape_vec(IxDyn(&[2, 3, 4, 5]), (0..120).map(|v| v as f32).collect()).unwrap();
    let x =
        ArrayD::from_shape_vec(IxDyn(&[2, 3, 4, 5]), (0..120).map(|v| v as f32).collect()).unwrap();
    for conv in [
        Convention::tensorflow(),
        Convention::tensorflow().channels_first(),
        Convention::jax(),
        Convention {
            framework: Framework::Jax {
                transpose_kernel: true,
                consistent_padding: false,
            },
            data_format: DataFormat::ChannelsLast,
        },
    ] {
        for op in [Op::Conv, Op::ConvTranspose] {
            let t = conv.weight_to_torch(op, w.view()).unwrap();
            assert_eq!(conv.weight_from_torch(op, t), w, "{conv:?} {op:?}");
        }
        let t = conv.data_to_torch(x.view(), "input").unwrap();
        assert_eq!(conv.data_from_torch(t), x, "{conv:?}");
    }
    // HWIO (2, 3, 4, 5): torch conv weight (O=5, I=4, 2, 3), element (o, i, a, b) = w[a, b, i, o].
    let t = Convention::tensorflow()
        .weight_to_torch(Op::Conv, w.view())
        .unwrap();
    assert_eq!(t.shape(), &[5, 4, 2, 3]);
    assert_eq!(t[[3, 1, 1, 2]], w[[1, 2, 1, 3]]);
    // JAX's transposed kernel (*k, I, O) is flipped: torch (I, O, a, b) = w[1 - a, 2 - b, i, o].
    let t = Convention::jax()
        .weight_to_torch(Op::ConvTranspose, w.view())
        .unwrap();
    assert_eq!(t.shape(), &[4, 5, 2, 3]);
    assert_eq!(t[[3, 1, 0, 2]], w[[1, 0, 3, 1]]);
    // NHWC (2, 3, 4, 5) -> NCHW (2, 5, 3, 4).
    let t = Convention::tensorflow()
        .data_to_torch(x.view(), "input")
        .unwrap();
    assert_eq!(t.shape(), &[2, 5, 3, 4]);
    assert_eq!(t[[1, 4, 2, 3]], x[[1, 2, 3, 4]]);
}

#[test]
fn what_tconv_cannot_express_is_refused_with_the_numbers() {
    let (x, w) = ([1usize, 4, 4, 1], [3usize, 3, 1, 1]);
    let jax = Convention::jax();
    let kind = |c: &Convention, op: Op, call: &Call| {
        c.params(op, &x, &w, call).unwrap_err().kind().clone()
    };
    // Padding the dilated input by 3 > k - 1 = 2 at the beginning.
    let call = Call::new(FrameworkPadding::Explicit(vec![(3, 0), (0, 0)])).strides(&[2]);
    match kind(&jax, Op::ConvTranspose, &call) {
        ErrorKind::FrameworkPadding {
            axis, begin, end, ..
        } => assert_eq!((axis, begin, end), (0, 3, 0)),
        other => panic!("{other:?}"),
    }
    // At the end by k - 1 + stride: output beyond output_padding's reach.
    let call = Call::new(FrameworkPadding::Explicit(vec![(0, 0), (0, 4)])).strides(&[2]);
    match kind(&jax, Op::ConvTranspose, &call) {
        ErrorKind::FrameworkPadding { axis, end, .. } => assert_eq!((axis, end), (1, 4)),
        other => panic!("{other:?}"),
    }
    // ... while k - 1 + stride - 1 is output padding 1.
    let call = Call::new(FrameworkPadding::Explicit(vec![(0, 0), (0, 3)])).strides(&[2]);
    let p = jax.params(Op::ConvTranspose, &x, &w, &call).unwrap();
    assert_eq!(p.output_padding, vec![0, 1]);
    // TensorFlow checks that the forward conv of output_shape gives the input back.
    let tf = Convention::tensorflow();
    let out_of_range = |padding: FrameworkPadding, size: &[usize], want: (usize, u64, u64, u64)| {
        let call = Call::new(padding).strides(&[2]).output_size(size);
        match kind(&tf, Op::ConvTranspose, &call) {
            ErrorKind::OutputSizeOutOfRange {
                axis,
                requested,
                min,
                max,
            } => assert_eq!((axis, requested, min, max), want),
            other => panic!("{other:?}"),
        }
    };
    out_of_range(FrameworkPadding::Same, &[9, 8], (0, 9, 7, 8));
    out_of_range(FrameworkPadding::Valid, &[8, 9], (0, 8, 9, 10));
    // Padding 4 + 0 around a one-long input's 3-tap kernel: the forward conv of even a
    // one-long output has 2 positions at stride 2, so no output_shape is valid (not "sizes
    // range from 1 to 0").
    let call = Call::new(FrameworkPadding::Explicit(vec![(4, 0), (0, 0)]))
        .strides(&[2])
        .output_size(&[1, 3]);
    match tf
        .params(Op::ConvTranspose, &[1, 1, 1, 1], &w, &call)
        .unwrap_err()
        .kind()
    {
        ErrorKind::FrameworkPadding {
            axis, begin, end, ..
        } => assert_eq!((*axis, *begin, *end), (0, 4, 0)),
        other => panic!("{other:?}"),
    }
    // Negative conv padding, SAME_LOWER in TensorFlow, output_shape for JAX, short lists.
    let call = Call::new(FrameworkPadding::Explicit(vec![(0, -1), (0, 0)]));
    assert!(matches!(
        kind(&jax, Op::Conv, &call),
        ErrorKind::FrameworkPadding { end: -1, .. }
    ));
    let call = Call::new(FrameworkPadding::SameLower);
    assert!(matches!(
        kind(&tf, Op::Conv, &call),
        ErrorKind::FrameworkOption { .. }
    ));
    let call = Call::new(FrameworkPadding::Same).output_size(&[8, 8]);
    assert!(matches!(
        kind(&jax, Op::ConvTranspose, &call),
        ErrorKind::FrameworkOption { .. }
    ));
    let call = Call::new(FrameworkPadding::Same).strides(&[2, 2, 2]);
    assert!(matches!(
        kind(&tf, Op::Conv, &call),
        ErrorKind::ParamLength { got: 3, .. }
    ));
    let call = Call::new(FrameworkPadding::Same).strides(&[0]);
    assert!(matches!(
        kind(&tf, Op::Conv, &call),
        ErrorKind::ZeroParam { .. }
    ));
    assert!(matches!(
        tf.params(Op::Conv, &[4, 4], &w, &Call::new(FrameworkPadding::Valid))
            .unwrap_err()
            .kind(),
        ErrorKind::FrameworkRank { rank: 2, .. }
    ));
}

/// JAX's padding beyond what PyTorch's parameters express, computed by
/// `Convention::lower` (`run`, `backward`): exact small-integer results and gradients from
/// the definition (the stride-dilated input padded, correlated with the kernel as given).
#[test]
fn jax_padding_beyond_pytorch_is_computed() {
    let jax = Convention::jax();
    let arr =
        |shape: &[usize], v: &[f32]| ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap();
    let all = Wanted::all();
    let opts = PlanOptions::default();
    // conv_transpose of [1, 2, 3] (NHC) by the kernel [1, 10] at stride 2, the dilated
    // input [1, 0, 2, 0, 3] padded by 3 > k - 1 at the beginning (2 zeros before the
    // output) and 4 at the end (3 past the full output, beyond output_padding's reach):
    // [0, 0, 0, 1, 0, 2, 0, 3, 0, 0, 0, 0] correlated with [1, 10].
    let (x, w) = (arr(&[1, 3, 1], &[1., 2., 3.]), arr(&[2, 1, 1], &[1., 10.]));
    let call = Call::new(FrameworkPadding::Explicit(vec![(3, 4)])).strides(&[2]);
    assert!(jax
        .params(Op::ConvTranspose, x.shape(), w.shape(), &call)
        .is_err());
    let low = jax
        .lower(Op::ConvTranspose, x.shape(), w.shape(), &call)
        .unwrap();
    assert_eq!(
        (low.around.clone(), low.reached, low.exact()),
        (vec![(2, 3)], true, false)
    );
    let b = ndarray::arr1(&[0.5f32]);
    let y = jax
        .run(Op::ConvTranspose, x.view(), w.view(), Some(b.view()), &call)
        .unwrap();
    let want = [0., 0., 10., 1., 20., 2., 30., 3., 0., 0., 0.].map(|v: f32| v + 0.5);
    assert_eq!(y, arr(&[1, 11, 1], &want));
    // Gradients for gy = 1..=11: x_i reaches y at 2i + 2 (by 10) and 2i + 3 (by 1).
    let gy = arr(&[1, 11, 1], &(1..=11).map(|v| v as f32).collect::<Vec<_>>());
    let g = jax
        .backward(
            Op::ConvTranspose,
            x.view(),
            w.view(),
            gy.view(),
            &call,
            all,
            &opts,
        )
        .unwrap();
    assert_eq!(g.input.unwrap(), arr(&[1, 3, 1], &[34., 56., 78.]));
    assert_eq!(g.weight.unwrap(), arr(&[2, 1, 1], &[40., 34.]));
    assert_eq!(g.bias.unwrap(), arr(&[1], &[66.]));
    // A grad_output of the inner result's shape is refused, naming both.
    let short = arr(&[1, 6, 1], &[0.; 6]);
    let err = jax
        .backward(
            Op::ConvTranspose,
            x.view(),
            w.view(),
            short.view(),
            &call,
            all,
            &opts,
        )
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ShapeMismatch { expected, .. } if expected == &vec![1, 1, 11]),
        "{err}"
    );
    // Zeros far beyond the kernel: refused by their size, not allocated.
    for pads in [(1 << 40, 0), (0, 1 << 40), (1 << 40, -(1 << 39))] {
        let call = Call::new(FrameworkPadding::Explicit(vec![pads])).strides(&[2]);
        let err = jax
            .run(Op::ConvTranspose, x.view(), w.view(), None, &call)
            .unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::TooLarge { .. }),
            "{pads:?}: {err}"
        );
    }
    // No input reaches: [2] padded (3, -2), [0, 0, 0, 2] cropped to [0, 0]: one zero (the
    // bias); gradients zero but the bias's.
    let (x1, call) = (
        arr(&[1, 1, 1], &[2.]),
        Call::new(FrameworkPadding::Explicit(vec![(3, -2)])),
    );
    let low = jax
        .lower(Op::ConvTranspose, x1.shape(), w.shape(), &call)
        .unwrap();
    assert!(!low.reached);
    let y = jax
        .run(
            Op::ConvTranspose,
            x1.view(),
            w.view(),
            Some(b.view()),
            &call,
        )
        .unwrap();
    assert_eq!(y, arr(&[1, 1, 1], &[0.5]));
    let g = jax
        .backward(
            Op::ConvTranspose,
            x1.view(),
            w.view(),
            arr(&[1, 1, 1], &[3.]).view(),
            &call,
            all,
            &opts,
        )
        .unwrap();
    assert_eq!(g.input.unwrap(), arr(&[1, 1, 1], &[0.]));
    assert_eq!(g.weight.unwrap(), arr(&[2, 1, 1], &[0., 0.]));
    assert_eq!(g.bias.unwrap(), arr(&[1], &[3.]));
    // A conv's negative padding crops its input: [1, 2, 3, 4, 5] padded (-1, 1) is
    // [2, 3, 4, 5, 0]; by [1, 10] at stride 2: [32, 54].
    let x5 = arr(&[1, 5, 1], &[1., 2., 3., 4., 5.]);
    let call = Call::new(FrameworkPadding::Explicit(vec![(-1, 1)])).strides(&[2]);
    let low = jax.lower(Op::Conv, x5.shape(), w.shape(), &call).unwrap();
    assert_eq!(low.crop, vec![(1, 0)]);
    let y = jax.run(Op::Conv, x5.view(), w.view(), None, &call).unwrap();
    assert_eq!(y, arr(&[1, 2, 1], &[32., 54.]));
    let g = jax
        .backward(
            Op::Conv,
            x5.view(),
            w.view(),
            arr(&[1, 2, 1], &[1., 2.]).view(),
            &call,
            all,
            &opts,
        )
        .unwrap();
    assert_eq!(g.input.unwrap(), arr(&[1, 5, 1], &[0., 1., 10., 2., 20.]));
    assert_eq!(g.weight.unwrap(), arr(&[2, 1, 1], &[10., 13.]));
    // Cropped whole but padded: [7] padded (2, -1) is [0, 0], one output of zero.
    let call = Call::new(FrameworkPadding::Explicit(vec![(2, -1)]));
    let y = jax.run(Op::Conv, x1.view(), w.view(), None, &call).unwrap();
    assert_eq!(y, arr(&[1, 1, 1], &[0.]));
    // Cropped to nothing and no output: refused, naming the pair.
    let call = Call::new(FrameworkPadding::Explicit(vec![(0, -1)]));
    match jax
        .lower(Op::Conv, x1.shape(), w.shape(), &call)
        .unwrap_err()
        .kind()
    {
        ErrorKind::FrameworkPadding { begin, end, .. } => assert_eq!((*begin, *end), (0, -1)),
        other => panic!("{other:?}"),
    }
    // TensorFlow's negative padding stays refused.
    let call = Call::new(FrameworkPadding::Explicit(vec![(-1, 1)])).strides(&[2]);
    assert!(Convention::tensorflow()
        .lower(Op::Conv, x5.shape(), w.shape(), &call)
        .is_err());
}

#[test]
fn keras_sizes_follow_its_rule() {
    let same = FrameworkPadding::Same;
    let valid = FrameworkPadding::Valid;
    assert_eq!(
        keras_output_size(&[4], &[3], &[2], &[1], &same, None).unwrap(),
        [8]
    );
    assert_eq!(
        keras_output_size(&[4], &[3], &[2], &[1], &valid, None).unwrap(),
        [9]
    );
    assert_eq!(
        keras_output_size(&[3], &[2], &[3], &[1], &valid, None).unwrap(),
        [9]
    );
    assert_eq!(
        keras_output_size(&[4], &[3], &[2], &[2], &valid, None).unwrap(),
        [11]
    );
    assert_eq!(
        keras_output_size(&[4], &[3], &[2], &[1], &same, Some(&[0])).unwrap(),
        [7]
    );
    assert_eq!(
        keras_output_size(&[4], &[4], &[2], &[1], &valid, Some(&[1])).unwrap(),
        [11]
    );
    // "same" with output_padding pads k / 2 at both ends (PyTorch's padding): a one-long
    // input's 2-tap kernel leaves nothing (Keras returns an empty array).
    match keras_output_size(&[1], &[2], &[1], &[1], &same, Some(&[0]))
        .unwrap_err()
        .kind()
    {
        tconv::ErrorKind::PaddingRemovesOutput {
            axis,
            pad_begin,
            pad_end,
            full,
        } => assert_eq!((*axis, *pad_begin, *pad_end, *full), (0, 1, 1, 2)),
        other => panic!("{other:?}"),
    }
}

mod generated {
    use proptest::prelude::*;
    use tconv::convention::{Call, Convention, DataFormat, Framework, FrameworkPadding};
    use tconv::{Geometry, Op, PlanOptions, Wanted};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Any call maps to tconv's parameters or is refused with an error (never a panic),
        /// and a mapped transposed conv has the size its framework gives: TensorFlow's
        /// `output_shape`; JAX's `(in-1)·s + 1 + lo + hi - k' + 1` for the dilated input's
        /// padding `(lo, hi)` (SAME: `in·s`; VALID: `in·s + max(k' - s, 0)`).
        #[test]
        fn calls_map_with_their_frameworks_sizes(
            dims in 1usize..4,
            input in prop::collection::vec(0usize..10, 3),
            kernel in prop::collection::vec(0usize..6, 3),
            stride in prop::collection::vec(0usize..5, 3),
            dilation in prop::collection::vec(0usize..4, 3),
            pads in prop::collection::vec((-6i64..9, -6i64..9), 3),
            out in prop::collection::vec(0usize..45, 3),
            mode in 0u8..4,
            framework in 0u8..4,
            give_out in any::<bool>(),
            transpose in any::<bool>(),
        ) {
            let (input, kernel) = (&input[..dims], &kernel[..dims]);
            let padding = match mode {
                0 => FrameworkPadding::Same,
                1 => FrameworkPadding::Valid,
                2 => FrameworkPadding::SameLower,
                _ => FrameworkPadding::Explicit(pads[..dims].to_vec()),
            };
            let convention = Convention {
                framework: match framework {
                    0 => Framework::TensorFlow,
                    f => Framework::Jax { transpose_kernel: f == 1, consistent_padding: f == 3 },
                },
                data_format: DataFormat::ChannelsLast,
            };
            let mut call = Call::new(padding.clone()).strides(&stride[..dims]).dilations(&dilation[..dims]);
            if give_out {
                call = call.output_size(&out[..dims]);
            }
            let op = if transpose { Op::ConvTranspose } else { Op::Conv };
            let x: Vec<usize> = [1].into_iter().chain(input.iter().copied()).chain([1]).collect();
            let w: Vec<usize> = kernel.iter().copied().chain([1, 1]).collect();
            let xt: Vec<usize> = [1, 1].into_iter().chain(input.iter().copied()).collect();
            let wt: Vec<usize> = [1, 1].into_iter().chain(kernel.iter().copied()).collect();
            let mapped = convention
                .params(op, &x, &w, &call)
                .and_then(|p| Geometry::new(op, &xt, &wt, None, &p));
            let positive = [input, kernel, &stride[..dims], &dilation[..dims]]
                .iter()
                .all(|v| v.iter().all(|&n| n > 0));
            if op == Op::Conv || !positive {
                return Ok(());
            }
            // Per axis: the framework's output size, the begin padding tconv must crop where
            // the caller's pair fixes it, and whether the framework defines the call (and
            // tconv's parameters can express it), each from the frameworks' definitions.
            let mut expressible = true;
            let mut want = Vec::new();
            for a in 0..dims {
                let (i, s, d) = (input[a] as i64, stride[a] as i64, dilation[a] as i64);
                let k = d * (kernel[a] as i64 - 1) + 1;
                let (size, begin, ok) = match (convention.framework, &padding) {
                    (_, FrameworkPadding::SameLower) => (0, None, false),
                    // The gradient of the forward conv from `size`, which must give `i` back.
                    (Framework::TensorFlow, p) => {
                        let (lowest, begin, pads_ok) = match p {
                            FrameworkPadding::Same => ((i - 1) * s + 1, None, true),
                            FrameworkPadding::Valid => ((i - 1) * s + k, Some(0), true),
                            FrameworkPadding::Explicit(v) => {
                                let (b, e) = v[a];
                                ((i - 1) * s + k - b - e, Some(b), b >= 0 && e >= 0)
                            }
                            FrameworkPadding::SameLower => unreachable!(),
                        };
                        let explicit = matches!(p, FrameworkPadding::Explicit(_));
                        let size = match p {
                            _ if give_out => out[a] as i64,
                            FrameworkPadding::Same => i * s,
                            _ => i * s + (k - s).max(0),
                        };
                        let in_range = size >= lowest.max(1) && size < lowest + s;
                        (size, begin, pads_ok && in_range && (give_out || !explicit))
                    }
                    // The stride-dilated input padded by (lo, hi), correlated with the kernel.
                    (Framework::Jax { consistent_padding, .. }, p) => {
                        let (lo, hi) = match p {
                            FrameworkPadding::Same if s > k - 1 => (k - 1, s - 1),
                            FrameworkPadding::Same => ((k + s - 1) / 2, (k + s - 2) / 2),
                            FrameworkPadding::Valid => (k - 1, s - 1 + (k - s).max(0)),
                            FrameworkPadding::Explicit(v) if consistent_padding => {
                                (k - 1 - v[a].0, k - 1 - v[a].1)
                            }
                            FrameworkPadding::Explicit(v) => v[a],
                            FrameworkPadding::SameLower => unreachable!(),
                        };
                        let size = (i - 1) * s + 1 + lo + hi - k + 1;
                        let extra = hi - (k - 1);
                        let ok = !give_out && lo < k && (extra < s || extra < d) && size >= 1;
                        (size, Some(k - 1 - lo), ok)
                    }
                };
                expressible &= ok;
                want.push(size);
                if let (Ok(g), Some(b)) = (&mapped, begin) {
                    prop_assert_eq!(g.axes[a].pad_begin, b, "axis {} of {:?} {:?}", a, convention, call);
                }
            }
            match &mapped {
                Ok(g) => {
                    let got: Vec<i64> = g.axes.iter().map(|a| a.output as i64).collect();
                    prop_assert!(expressible, "{:?} {:?} mapped, but it should be refused", convention, call);
                    prop_assert_eq!(got, want, "{:?} {:?}", convention, call);
                }
                Err(e) => {
                    prop_assert!(!expressible, "{:?} {:?} refused: {}", convention, call, e);
                    // A range named in a refusal holds at least one size.
                    if let tconv::ErrorKind::OutputSizeOutOfRange { min, max, .. } = e.kind() {
                        prop_assert!(min <= max, "{:?} {:?}: {}", convention, call, e);
                    }
                }
            }
        }
    }

    /// Small integers in -3..=3 from `seed`, as f64.
    fn small(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % 7) as f64 - 3.0
            })
            .collect()
    }

    /// JAX's 2-D conv or transposed conv from its definition on `x` `(N, H, W, C_in)` and
    /// `w` `(kh, kw, C_in, C_out)` (HWIO, as given): the transposed conv correlates the
    /// stride-dilated input padded by `(lo, hi)` with the kernel, the conv its input padded
    /// so, negative amounts cropping. `None` where an output extent is below 1.
    #[allow(clippy::too_many_arguments)]
    fn jax_definition(
        transpose: bool,
        x: &ndarray::ArrayD<f64>,
        w: &ndarray::ArrayD<f64>,
        s: &[usize],
        d: &[usize],
        pads: &[(i64, i64)],
    ) -> Option<ndarray::ArrayD<f64>> {
        let (n, cin, cout) = (x.shape()[0], x.shape()[3], w.shape()[3]);
        let mut out = Vec::new();
        for a in 0..2 {
            let (i, k) = (x.shape()[1 + a] as i64, w.shape()[a] as i64);
            let span = d[a] as i64 * (k - 1) + 1;
            let (lo, hi) = pads[a];
            let len = if transpose {
                (i - 1) * s[a] as i64 + 1 + lo + hi - span + 1
            } else {
                (i + lo + hi - span).div_euclid(s[a] as i64) + 1
            };
            if len < 1 {
                return None;
            }
            out.push(len as usize);
        }
        // The input position output `o` reads through tap `t` on axis `a`, if any.
        let read = |a: usize, o: usize, t: usize| -> Option<usize> {
            let (i, lo) = (x.shape()[1 + a] as i64, pads[a].0);
            let (s, d) = (s[a] as i64, d[a] as i64);
            if transpose {
                let p = o as i64 - lo + t as i64 * d;
                (p >= 0 && p % s == 0 && p / s < i).then(|| (p / s) as usize)
            } else {
                let q = o as i64 * s + t as i64 * d - lo;
                (q >= 0 && q < i).then_some(q as usize)
            }
        };
        let mut y = ndarray::ArrayD::zeros(ndarray::IxDyn(&[n, out[0], out[1], cout]));
        for ((b, o0, o1, co), v) in y
            .view_mut()
            .into_dimensionality::<ndarray::Ix4>()
            .unwrap()
            .indexed_iter_mut()
        {
            for t0 in 0..w.shape()[0] {
                for t1 in 0..w.shape()[1] {
                    if let (Some(i0), Some(i1)) = (read(0, o0, t0), read(1, o1, t1)) {
                        for ci in 0..cin {
                            *v += x[[b, i0, i1, ci]] * w[[t0, t1, ci, co]];
                        }
                    }
                }
            }
        }
        Some(y)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        /// JAX's 2-D transposed conv and conv with every explicit padding from -3 to 4 per
        /// end, within PyTorch's parameters or beyond them (`Convention::lower`): exactly
        /// their definitions on small integers ([`jax_definition`]), refused where that
        /// leaves no output; the gradients by the adjoint identities `<y, gy> = <x, gx> =
        /// <w, gw>` and the bias's as the sum of `gy`, exactly.
        #[test]
        fn jax_calls_compute_their_definition(
            input in prop::collection::vec(1usize..5, 2),
            kernel in prop::collection::vec(1usize..4, 2),
            stride in prop::collection::vec(1usize..4, 2),
            dilation in prop::collection::vec(1usize..3, 2),
            pads in prop::collection::vec((-3i64..5, -3i64..5), 2),
            channels in (1usize..3, 1usize..3, 1usize..3),
            transpose in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let (batch, cin, cout) = channels;
            let shape = |v: &[usize]| ndarray::IxDyn(v);
            let xs = [batch, input[0], input[1], cin];
            let ws = [kernel[0], kernel[1], cin, cout];
            let x = ndarray::ArrayD::from_shape_vec(shape(&xs), small(xs.iter().product(), seed)).unwrap();
            let w = ndarray::ArrayD::from_shape_vec(shape(&ws), small(ws.iter().product(), seed ^ 1)).unwrap();
            let op = if transpose { Op::ConvTranspose } else { Op::Conv };
            let call = Call::new(FrameworkPadding::Explicit(pads.clone()))
                .strides(&stride)
                .dilations(&dilation);
            let jax = Convention::jax();
            let got = jax.run(op, x.view(), w.view(), None, &call);
            let Some(want) = jax_definition(transpose, &x, &w, &stride, &dilation, &pads) else {
                prop_assert!(got.is_err(), "{:?} {:?}: no output, yet computed", op, call);
                return Ok(());
            };
            let y = got.map_err(|e| TestCaseError::fail(format!("{op:?} {call:?}: {e}")))?;
            prop_assert_eq!(&y, &want, "{:?} {:?}", op, call);
            let gy = ndarray::ArrayD::from_shape_vec(shape(y.shape()), small(y.len(), seed ^ 2)).unwrap();
            let g = jax
                .backward(op, x.view(), w.view(), gy.view(), &call, Wanted::all(), &PlanOptions::default())
                .map_err(|e| TestCaseError::fail(format!("{op:?} {call:?}: {e}")))?;
            let dot = |a: &ndarray::ArrayD<f64>, b: &ndarray::ArrayD<f64>| -> f64 {
                a.iter().zip(b.iter()).map(|(p, q)| p * q).sum()
            };
            let (gx, gw, gb) = (g.input.unwrap(), g.weight.unwrap(), g.bias.unwrap());
            prop_assert_eq!(gx.shape(), x.shape());
            prop_assert_eq!(gw.shape(), w.shape());
            let yy = dot(&y, &gy);
            prop_assert_eq!(dot(&x, &gx), yy, "{:?} {:?}: <x, gx>", op, call);
            prop_assert_eq!(dot(&w, &gw), yy, "{:?} {:?}: <w, gw>", op, call);
            for co in 0..cout {
                let sum: f64 = gy.index_axis(ndarray::Axis(3), co).sum();
                prop_assert_eq!(gb[co], sum, "{:?} {:?}: bias gradient", op, call);
            }
        }
    }

    #[test]
    fn absurd_sizes_are_refused_not_overflowed() {
        let huge = usize::MAX;
        for convention in [Convention::tensorflow(), Convention::jax()] {
            for (x, w, stride) in [
                (vec![1, huge, 1], vec![3, 1, 1], 2),
                (vec![1, 4, 1], vec![huge, 1, 1], 2),
                (vec![1, 4, 1], vec![3, 1, 1], huge),
                (vec![1, 1 << 40, 1], vec![1 << 40, 1, 1], 1 << 40),
            ] {
                for padding in [
                    FrameworkPadding::Same,
                    FrameworkPadding::Valid,
                    FrameworkPadding::Explicit(vec![(i64::MIN, i64::MAX)]),
                ] {
                    let call = Call::new(padding).strides(&[stride]).dilations(&[huge / 2]);
                    for op in [Op::Conv, Op::ConvTranspose] {
                        // The lowering beyond PyTorch's parameters too: a value or an
                        // error, never a panic or an overflow.
                        if let Ok(low) = convention.lower(op, &x, &w, &call) {
                            let xt = [1, 1, x[1] - low.crop[0].0 - low.crop[0].1];
                            let wt = [1, 1, w[0]];
                            let g = Geometry::new(op, &xt, &wt, None, &low.params);
                            assert!(g.is_err() || !low.reached, "{low:?}");
                        }
                        if let Ok(p) = convention.params(op, &x, &w, &call) {
                            let xt = [1, 1, x[1]];
                            let wt = [1, 1, w[0]];
                            assert!(Geometry::new(op, &xt, &wt, None, &p).is_err(), "{p:?}");
                        }
                    }
                }
            }
        }
    }
}
