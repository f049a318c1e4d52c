//! The fast engine against the references: every ISA path, both kernel families, forced
//! tile shapes and several thread counts, on generated problems (exact with small integers),
//! plus determinism across thread counts and "every output element is written".

mod common;

use common::gen::*;
use ndarray::ArrayD;
use proptest::prelude::*;
use tconv::fast::Isa;
use tconv::reference::{conv_gather, conv_transpose_scatter};
use tconv::{Algorithm, Element, Op, Plan, PlanOptions};

const ISAS: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

/// Engine options; `inplace: None` leaves the kernel family to the planner (which also
/// picks the depthwise row engine where it applies).
fn options(isa: Isa, inplace: Option<bool>, threads: usize) -> PlanOptions {
    PlanOptions {
        threads: Some(threads),
        algorithm: Some(Algorithm::Direct),
        isa: Some(isa),
        tile: None,
        inplace,
        once: false,
        tune: false,
    }
}

/// The reference result of `op` (the scatter for a transposed conv, the gather for a conv).
fn reference<T: Element>(
    op: Op,
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    b: Option<ndarray::ArrayView1<'_, T>>,
    p: &tconv::ConvParams,
) -> tconv::Result<ArrayD<T>> {
    match op {
        Op::ConvTranspose => conv_transpose_scatter(x, w, b, p),
        Op::Conv => conv_gather(x, w, b, p),
    }
}

/// A conv's input of `shape` (its channels set to `c`'s output channels) and bias, to read
/// case `c`'s weight as a conv weight: input channels = out_pg · groups.
fn conv_operands<T: Element>(
    c: &Case,
    mut shape: Vec<usize>,
) -> (ArrayD<T>, Option<ndarray::Array1<T>>) {
    shape[1] = c.c_out();
    let b = c.bias.then(|| {
        ints::<T>(&[c.c_in()], c.seed)
            .into_dimensionality()
            .unwrap()
    });
    (ints::<T>(&shape, c.seed ^ 77), b)
}

/// Run `op` of case `c` through every engine configuration and compare with the reference.
fn engine_matches_reference<T: Element>(c: &Case, op: Op) -> Result<(), TestCaseError> {
    let (x, w, b) = c.data::<T>();
    let mut p = c.params();
    let (x, b) = match op {
        Op::ConvTranspose => (x, b),
        Op::Conv => {
            p.output_padding.clear();
            conv_operands(c, c.x_shape())
        }
    };
    let bv = b.as_ref().map(|b| b.view());
    let want = reference(op, &x, &w, bv, &p);
    let Ok(want) = want else {
        return Ok(()); // an invalid conv reading of the case (kernel longer than the input)
    };
    for isa in ISAS {
        for inplace in [Some(false), Some(true), None] {
            for threads in [1, 3] {
                let plan = Plan::<T>::new(
                    op,
                    x.shape(),
                    &w,
                    b.as_ref().map(|b| b.len()),
                    &p,
                    &options(isa, inplace, threads),
                )
                .unwrap();
                let label = plan.label();
                if isa.available() && T::DTYPE == "float32" {
                    prop_assert!(
                        label.contains(isa.name()),
                        "{} does not run {}",
                        label,
                        isa.name()
                    );
                }
                let got = plan.execute(&x, bv).unwrap();
                prop_assert_eq!(&got, &want, "{} threads {}", label, threads);
            }
        }
        // GEMM + col2im forced (a conv: im2col + GEMM).
        for threads in [1, 3] {
            let o = PlanOptions {
                algorithm: Some(Algorithm::Col2im),
                ..options(isa, None, threads)
            };
            let plan =
                Plan::<T>::new(op, x.shape(), &w, b.as_ref().map(|b| b.len()), &p, &o).unwrap();
            prop_assert_eq!(plan.algorithm(), Algorithm::Col2im);
            // One position per image on the small side: one GEMM over the batch.
            if tconv::fast::batch_gemm::applies(plan.geometry()) {
                prop_assert!(plan.label().starts_with("batch-gemm"), "{}", plan.label());
            } else if op == Op::Conv {
                prop_assert!(plan.label().starts_with("im2col"), "{}", plan.label());
            }
            let got = plan.execute(&x, bv).unwrap();
            prop_assert_eq!(&got, &want, "{} threads {}", plan.label(), threads);
        }
        // Winograd tiles forced: exact on small integers (the transforms' coefficients are
        // 0, ±1 and ±1/2); where the phases do not suit them, the direct engine.
        for threads in [1, 3] {
            let o = PlanOptions {
                algorithm: Some(Algorithm::Winograd),
                ..options(isa, None, threads)
            };
            let plan =
                Plan::<T>::new(op, x.shape(), &w, b.as_ref().map(|b| b.len()), &p, &o).unwrap();
            let applies = tconv::fast::winograd::applies(plan.geometry());
            prop_assert_eq!(plan.algorithm() == Algorithm::Winograd, applies, "{}", plan);
            let got = plan.execute(&x, bv).unwrap();
            prop_assert_eq!(&got, &want, "{} threads {}", plan.label(), threads);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn transpose_engine_matches_reference(c in case_upto(11, 10, 2)) {
        engine_matches_reference::<f32>(&c, Op::ConvTranspose)?;
        engine_matches_reference::<f64>(&c, Op::ConvTranspose)?;
    }

    #[test]
    fn conv_engine_matches_reference(c in case_upto(11, 10, 2)) {
        engine_matches_reference::<f32>(&c, Op::Conv)?;
        engine_matches_reference::<f64>(&c, Op::Conv)?;
    }

    #[test]
    fn every_tile_shape_matches(c in case_upto(9, 14, 1), pick in 0usize..16) {
        let (x, w, b) = c.data::<f32>();
        let p = c.params();
        let bv = b.as_ref().map(|b| b.view());
        let want = conv_transpose_scatter(&x, &w, bv, &p).unwrap();
        let isa = Isa::detect();
        for (inplace, shapes) in [(false, tconv::fast::kernels::tile_shapes(isa)), (true, tconv::fast::inplace::tile_shapes(isa))] {
            let (mr, v, _) = shapes[pick % shapes.len()];
            let mut o = options(isa, Some(inplace), 2);
            o.tile = Some((mr, v));
            let plan = Plan::new(tconv::Op::ConvTranspose, x.shape(), &w, b.as_ref().map(|b| b.len()), &p, &o).unwrap();
            prop_assert_eq!(plan.execute(&x, bv).unwrap(), want.clone(), "{}", plan.label());
            if !inplace {
                // The same tile shapes run the GEMM of col2im.
                o.algorithm = Some(Algorithm::Col2im);
                o.inplace = None;
                let plan = Plan::new(tconv::Op::ConvTranspose, x.shape(), &w, b.as_ref().map(|b| b.len()), &p, &o).unwrap();
                prop_assert_eq!(plan.execute(&x, bv).unwrap(), want.clone(), "{}", plan.label());
            }
        }
        // f64's own tiles (its kernels compiled for this CPU's vectors), direct and col2im.
        let (x, w, b) = c.data::<f64>();
        let bv = b.as_ref().map(|b| b.view());
        let want = conv_transpose_scatter(&x, &w, bv, &p).unwrap();
        let shapes = tconv::fast::kernels::tile_shapes_for::<f64>(Isa::Scalar);
        let (mr, v, _) = shapes[pick % shapes.len()];
        for algorithm in [Algorithm::Direct, Algorithm::Col2im] {
            let mut o = options(isa, Some(false), 2);
            o.tile = Some((mr, v));
            o.algorithm = Some(algorithm);
            if algorithm == Algorithm::Col2im {
                o.inplace = None;
            }
            let plan = Plan::new(tconv::Op::ConvTranspose, x.shape(), &w, b.as_ref().map(|b| b.len()), &p, &o).unwrap();
            prop_assert_eq!(plan.execute(&x, bv).unwrap(), want.clone(), "{}", plan.label());
        }
        // And its in-place tiles (AVX-512 kernels where this CPU has them).
        let shapes = tconv::fast::inplace::tile_shapes_for::<f64>(Isa::Scalar);
        let (mr, v, _) = shapes[pick % shapes.len()];
        let mut o = options(isa, Some(true), 2);
        o.tile = Some((mr, v));
        let plan = Plan::new(tconv::Op::ConvTranspose, x.shape(), &w, b.as_ref().map(|b| b.len()), &p, &o).unwrap();
        prop_assert_eq!(plan.execute(&x, bv).unwrap(), want, "{}", plan.label());
    }
}

/// A problem whose small side has one position per image ([`single_position_axis`]: a
/// transposed conv of a 1×…×1 input; read as a conv, its adjoint, to a 1×…×1 output)
/// through the planner's own choice (one GEMM over the batch) on
/// every ISA and 1 and 3 threads, f32 and f64, both ops: exactly the reference's results.
fn single_position_matches<T: Element>(c: &Case) -> Result<(), TestCaseError> {
    let (x, w, b) = c.data::<T>();
    let mut p = c.params();
    for op in [Op::ConvTranspose, Op::Conv] {
        let (x, b) = match op {
            Op::ConvTranspose => (x.clone(), b.clone()),
            Op::Conv => {
                p.output_padding.clear();
                conv_operands(c, c.y_shape())
            }
        };
        let bv = b.as_ref().map(|b| b.view());
        let want = reference(op, &x, &w, bv, &p).unwrap();
        for isa in ISAS {
            for threads in [1, 3] {
                let o = PlanOptions {
                    threads: Some(threads),
                    isa: Some(isa),
                    ..PlanOptions::default()
                };
                let plan =
                    Plan::<T>::new(op, x.shape(), &w, b.as_ref().map(|b| b.len()), &p, &o).unwrap();
                prop_assert!(
                    tconv::fast::batch_gemm::applies(plan.geometry()),
                    "{}",
                    plan
                );
                prop_assert!(plan.label().starts_with("batch-gemm"), "{}", plan.label());
                let got = plan.execute(&x, bv).unwrap();
                prop_assert_eq!(&got, &want, "{} threads {}", plan.label(), threads);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn single_position_layers_match_reference(c in case_of(|_| single_position_axis(), 12, 30)) {
        single_position_matches::<f32>(&c)?;
        single_position_matches::<f64>(&c)?;
    }
}

/// The batch GEMM's reductions in blocks (300 input channels of a projection; 300 · 4 taps
/// of its adjoint conv), several tasks and row blocks, a crop and output_padding, every
/// output written: exact on small integers, the same bits on 1 and 2 threads.
#[test]
fn batch_gemm_blocks_its_reduction() {
    use tconv::ConvParams;
    let cases = [
        (vec![37, 300, 1, 1], vec![300, 5, 2, 2], ConvParams::new()),
        (
            vec![9, 300, 1],
            vec![300, 3, 4],
            ConvParams::new()
                .stride(&[3])
                .pads(&[1], &[0])
                .output_padding(&[2]),
        ),
        (
            vec![5, 6, 1, 1, 1],
            vec![6, 2, 3, 2, 2],
            ConvParams::new().dilation(&[2, 1, 3]).groups(2),
        ),
    ];
    for (xs, ws, p) in cases {
        let x = ints::<f32>(&xs, 11);
        let w = ints::<f32>(&ws, 12);
        let b = ints::<f32>(&[ws[1] * p.groups], 13)
            .into_dimensionality::<ndarray::Ix1>()
            .unwrap();
        let want = conv_transpose_scatter(&x, &w, Some(b.view()), &p).unwrap();
        let mut outs = Vec::new();
        for threads in [1, 2] {
            let o = PlanOptions {
                threads: Some(threads),
                ..PlanOptions::default()
            };
            let plan = Plan::new(Op::ConvTranspose, &xs, &w, Some(b.len()), &p, &o).unwrap();
            assert!(plan.label().starts_with("batch-gemm"), "{}", plan.label());
            let mut y = vec![f32::NAN; want.len()];
            plan.run(x.as_slice().unwrap(), b.as_slice(), &mut y);
            assert_eq!(y, want.as_slice().unwrap(), "{}", plan.label());
            outs.push(y);
            // Its adjoint: a conv of the output's shape to one position, K = C_in/g · taps.
            let mut p_conv = p.clone();
            p_conv.output_padding.clear();
            let gy = ints::<f32>(want.shape(), 14);
            let want_gx = conv_gather(&gy, &w, None, &p_conv).unwrap();
            let conv = Plan::new(Op::Conv, want.shape(), &w, None, &p_conv, &o).unwrap();
            assert!(conv.label().starts_with("batch-gemm"), "{}", conv.label());
            assert_eq!(
                conv.execute(&gy, None).unwrap(),
                want_gx,
                "{}",
                conv.label()
            );
        }
        assert_eq!(outs[0], outs[1]);
    }
}

/// Random floats in [-1, 1).
fn floats(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut s = seed | 1;
    ArrayD::from_shape_fn(shape, |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

#[test]
fn bitwise_identical_for_any_thread_count() {
    use tconv::ConvParams;
    let cases = [
        (
            vec![3, 16, 9, 7],
            vec![16, 12, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
            Op::ConvTranspose,
        ),
        (
            vec![2, 6, 20],
            vec![6, 4, 16],
            ConvParams::new().stride(&[8]).padding(&[4]).groups(2),
            Op::ConvTranspose,
        ),
        (
            // Depthwise 8x upsampling (FCN): the row engine.
            vec![2, 5, 9, 7],
            vec![5, 1, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]).groups(5),
            Op::ConvTranspose,
        ),
        (
            vec![2, 8, 5, 6, 4],
            vec![8, 8, 2, 2, 2],
            ConvParams::new().stride(&[2]),
            Op::ConvTranspose,
        ),
        (
            vec![2, 12, 13, 11],
            vec![20, 12, 3, 3],
            ConvParams::new().stride(&[2]).padding(&[1]).dilation(&[2]),
            Op::Conv,
        ),
        // Few output channels (an RGB generator output, 1-D and 3-D kin): GEMM + col2im
        // from 32 input channels per output channel (else the AVX-512 in-place kernels), cut
        // into more output-row bands as the threads grow (shared rows computed twice).
        (
            vec![3, 96, 9, 7],
            vec![96, 3, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
            Op::ConvTranspose,
        ),
        (
            vec![3, 32, 9, 7],
            vec![32, 3, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
            Op::ConvTranspose,
        ),
        (
            vec![1, 32, 5, 4, 6],
            vec![32, 2, 3, 3, 3],
            ConvParams::new().stride(&[2]).padding(&[1]),
            Op::ConvTranspose,
        ),
        (
            vec![2, 40, 30],
            vec![40, 1, 7],
            ConvParams::new().stride(&[3]).padding(&[2]),
            Op::ConvTranspose,
        ),
        // A conv with 3 input channels (an RGB layer's input gradient): im2col + GEMM,
        // its channel blocks shared out as the threads grow.
        (
            vec![3, 3, 20, 18],
            vec![16, 3, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
            Op::Conv,
        ),
        // A strided depthwise conv (FCN's input gradient): by tap vectors, a plane per task.
        (
            vec![2, 5, 37, 45],
            vec![5, 1, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]).groups(5),
            Op::Conv,
        ),
    ];
    let streamed = streamed_batch_one_layers()
        .into_iter()
        .map(|(xs, ws, p)| (xs, ws, p, Op::ConvTranspose));
    for (xs, ws, p, op) in cases.into_iter().chain(streamed) {
        let (x, w) = (floats(&xs, 1), floats(&ws, 2));
        // A bias on every output channel (a transposed conv's weight is (C_in, C_out/g, ..)).
        let c_out = match op {
            Op::ConvTranspose => ws[1] * p.groups.max(1),
            Op::Conv => ws[0],
        };
        let b = floats(&[c_out], 5)
            .into_dimensionality::<ndarray::Ix1>()
            .unwrap();
        let mut outs = Vec::new();
        for threads in [1, 2, 3, 5] {
            let o = PlanOptions {
                threads: Some(threads),
                ..PlanOptions::default()
            };
            let plan = Plan::new(op, &xs, &w, Some(c_out), &p, &o).unwrap();
            if xs[1] >= 32 * ws[1] && ws[1] < 8 && op == Op::ConvTranspose {
                assert_eq!(plan.algorithm(), Algorithm::Col2im, "{xs:?}");
            }
            if op == Op::Conv && p.groups <= 1 && xs[1] < 8 && ws[0] >= 4 {
                assert!(plan.label().starts_with("im2col"), "{}", plan.label());
            }
            outs.push(plan.execute(&x, Some(b.view())).unwrap());
        }
        for o in &outs[1..] {
            let same = o
                .iter()
                .zip(outs[0].iter())
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{op:?} {xs:?}: result depends on the thread count");
        }
        // And close to the reference (random floats: summation order differs).
        let want = reference(op, &x, &w, Some(b.view()), &p).unwrap();
        for (a, r) in outs[0].iter().zip(want.iter()) {
            assert!((a - r).abs() <= 1e-4 * (1.0 + r.abs()), "{a} vs {r}");
        }
    }
}

/// Batch-1 layers whose weights stream from beyond the L2 (8 MiB: pix2pix's 2×2 -> 4×4
/// upsampler on the direct engine, MelGAN's first upsampler on Winograd tiles, halved).
fn streamed_batch_one_layers() -> [(Vec<usize>, Vec<usize>, tconv::ConvParams); 2] {
    use tconv::ConvParams;
    [
        (
            vec![1, 512, 2, 2],
            vec![512, 256, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
        ),
        (
            vec![1, 512, 12],
            vec![512, 256, 16],
            ConvParams::new().stride(&[8]).padding(&[4]),
        ),
    ]
}

/// [`streamed_batch_one_layers`] cut their output channels into as many ranges as threads
/// (their bits on every thread count and their results are checked by
/// `bitwise_identical_for_any_thread_count`).
#[test]
fn streamed_weights_of_one_image_cut_channels_between_threads() {
    for (xs, ws, p) in streamed_batch_one_layers() {
        let w = floats(&ws, 4);
        for threads in [1, 2, 3] {
            let o = PlanOptions {
                threads: Some(threads),
                ..PlanOptions::default()
            };
            let plan = Plan::new(Op::ConvTranspose, &xs, &w, None, &p, &o).unwrap();
            let ranges = plan.channel_ranges();
            assert_eq!(ranges, threads, "{xs:?} on {threads}: {}", plan.label());
        }
    }
}

#[test]
fn every_output_element_is_written() {
    use tconv::ConvParams;
    // Gaps (stride > kernel), bias-only phases (gcd(stride, dilation) > 1) and cropping.
    let cases = [
        (
            vec![2, 9, 5, 4],
            vec![9, 10, 2, 3],
            ConvParams::new().stride(&[3, 4]).padding(&[1]),
        ),
        (
            vec![1, 4, 6, 6],
            vec![4, 12, 3, 3],
            ConvParams::new()
                .stride(&[2])
                .dilation(&[2])
                .padding(&[2])
                .output_padding(&[1]),
        ),
        (
            vec![1, 3, 7],
            vec![3, 2, 5],
            ConvParams::new().stride(&[2]).pads(&[6], &[0]),
        ),
    ];
    for (xs, ws, p) in cases {
        let (x, w) = (floats(&xs, 3), floats(&ws, 4));
        let b = floats(&[ws[1] * p.groups], 5)
            .into_dimensionality::<ndarray::Ix1>()
            .unwrap();
        for (inplace, algorithm) in [
            (Some(false), None),
            (Some(true), None),
            (None, Some(Algorithm::Col2im)),
        ] {
            let o = PlanOptions {
                inplace,
                algorithm,
                threads: Some(2),
                ..PlanOptions::default()
            };
            let plan = Plan::new(Op::ConvTranspose, &xs, &w, Some(b.len()), &p, &o).unwrap();
            let mut y = vec![f32::NAN; plan.geometry().output_shape().iter().product()];
            plan.run(x.as_slice().unwrap(), b.as_slice(), &mut y);
            assert!(
                y.iter().all(|v| !v.is_nan()),
                "{}: an output element was not written",
                plan.label()
            );
        }
    }
}

#[test]
fn isa_names_and_fallback() {
    for isa in ISAS {
        assert_eq!(Isa::parse(isa.name()), Some(isa));
        assert!(isa.or_below() <= isa && isa.or_below().available());
    }
    assert_eq!(Isa::parse("sse9"), None);
}

/// The kernels for a GEMM's last, narrower panel (`Element::tail_kernel`: the rows of a
/// wide tile over fewer vectors) give that tile's kernel's bits on the columns they cover,
/// fresh and accumulating, and write nothing past them: f32 on every ISA this CPU runs, f64
/// on its own tiles. The Winograd GEMMs run them on a last panel of columns that fills
/// fewer vectors than the tile's (HiFi-GAN's 172-column tasks: 5 panels of 32 and one of
/// 12, on 12×1 instead of 12×2).
#[test]
fn tail_kernels_give_their_tiles_bits() {
    use tconv::fast::kernels::{tile_shapes, tile_shapes_for, Rows};
    /// Tail kernels checked against their tiles' for element type `T` on `isa`.
    fn check<T: Element>(isa: Isa, lanes: usize, shapes: &[(usize, usize, f32)]) -> usize {
        let vals = |n: usize, seed| {
            floats(&[n], seed)
                .mapv(|x| T::from(x).unwrap())
                .into_raw_vec_and_offset()
                .0
        };
        let mut checked = 0;
        for &(mr, v, _) in shapes {
            let Some(whole) = T::fast_kernel(isa, mr, v) else {
                continue;
            };
            for tv in 1..v {
                let Some(tail) = T::tail_kernel(isa, mr, tv) else {
                    continue;
                };
                let (k, pitch) = (37, v * lanes + 5);
                let (a, b, start) = (vals(k * mr, 21), vals(k * pitch, 22), vals(mr * pitch, 23));
                let rows = Rows {
                    k,
                    pitch,
                    taps: 1,
                    out_pitch: pitch,
                };
                for accumulate in [false, true] {
                    let (mut want, mut got) = (start.clone(), start.clone());
                    whole(&a, &b, rows, (&mut want[..]).into(), accumulate);
                    tail(&a, &b, rows, (&mut got[..]).into(), accumulate);
                    for r in 0..mr {
                        let (w, g) = (&want[r * pitch..], &got[r * pitch..]);
                        for c in 0..tv * lanes {
                            assert!(
                                w[c] == g[c] && w[c].is_sign_negative() == g[c].is_sign_negative(),
                                "{isa:?} {mr}x{v} against {mr}x{tv}: row {r}, column {c}: {} {}",
                                w[c],
                                g[c]
                            );
                        }
                        // Nothing past the tail's columns written.
                        assert_eq!(
                            &g[tv * lanes..v * lanes],
                            &start[r * pitch + tv * lanes..][..(v - tv) * lanes]
                        );
                    }
                }
                checked += 1;
            }
        }
        checked
    }
    let mut checked = 0;
    for isa in ISAS.into_iter().filter(|i| i.available()) {
        checked += check::<f32>(isa, isa.lanes(), tile_shapes(isa));
    }
    // f64 plans are `Scalar`: 8 lanes a vector, kernels compiled for this CPU's registers.
    checked += check::<f64>(Isa::Scalar, 8, tile_shapes_for::<f64>(Isa::Scalar));
    // (The portable kernels have few narrower shapes; the SIMD ones have them all.)
    if Isa::Avx2.available() {
        assert!(checked > 0, "no tail kernel checked");
    }
}

/// Where the phases' outputs interleave, the planner counts tiles row by row: on AVX-512,
/// unet's rows of 64 take the 6x4 tile (one row each) over 8x3 (48 positions, half the
/// tiles across two rows); vnet3d's rows of 16 hold no tile and keep the flat count.
#[test]
fn interleaved_tiles_cover_whole_rows() {
    use tconv::ConvParams;
    if !Isa::Avx512.available() {
        return;
    }
    let o = PlanOptions {
        isa: Some(Isa::Avx512),
        threads: Some(1),
        ..PlanOptions::default()
    };
    let p = ConvParams::new().stride(&[2]);
    let w = ArrayD::<f32>::zeros(ndarray::IxDyn(&[128, 64, 2, 2]));
    let plan = Plan::new(Op::ConvTranspose, &[4, 128, 64, 64], &w, None, &p, &o).unwrap();
    assert!(plan.label().ends_with("6x4"), "{}", plan.label());
    let w = ArrayD::<f32>::zeros(ndarray::IxDyn(&[64, 32, 2, 2, 2]));
    let plan = Plan::new(Op::ConvTranspose, &[1, 64, 16, 16, 16], &w, None, &p, &o).unwrap();
    assert!(plan.label().ends_with("8x3"), "{}", plan.label());
}

#[test]
fn stride_2_pairs_match_reference() {
    use tconv::ConvParams;
    // Stride-2 layers whose last-axis phase pairs read one panel (kernel == stride, and a
    // 4x2 kernel whose pairs share two taps): on AVX-512 the pair kernels write them from
    // their registers, interleaved, in whole half vectors. Rows of 8 to 80 lanes (tiles
    // across rows, a short last tile), channel blocks with few or no live rows in a half, groups
    // of tiles and of channels, and layers where some or all tiles fall back (cropped or
    // padded last axis).
    let cases = [
        (
            vec![2, 9, 3, 4, 32],
            vec![9, 13, 2, 2, 2],
            ConvParams::new().stride(&[2]),
        ),
        (
            vec![1, 16, 5, 48],
            vec![16, 13, 2, 2],
            ConvParams::new().stride(&[2]),
        ),
        (
            vec![1, 7, 3, 80],
            vec![7, 25, 2, 2],
            ConvParams::new().stride(&[2]),
        ),
        (
            vec![2, 5, 3, 16],
            vec![5, 9, 2, 2],
            ConvParams::new().stride(&[2]),
        ),
        // Rows of 8, 24 and 12 positions: each vector's halves on two rows (AVX-512 takes
        // rows of 8 and 24, AVX2 all three), or a fallback (12 on AVX-512).
        (
            vec![1, 16, 3, 8],
            vec![16, 13, 2, 2],
            ConvParams::new().stride(&[2]),
        ),
        (
            vec![2, 9, 2, 3, 24],
            vec![9, 11, 2, 2, 2],
            ConvParams::new().stride(&[2]),
        ),
        (
            vec![1, 12, 5, 12],
            vec![12, 10, 2, 2],
            ConvParams::new().stride(&[2]),
        ),
        // 655 KB of weights: tiles in groups that share each block's weights (where the L2
        // holds less than four times that), the pair kernels taking the group's tiles
        // block by block.
        (
            vec![1, 256, 4, 48],
            vec![256, 160, 2, 2],
            ConvParams::new().stride(&[2]),
        ),
        (
            vec![2, 12, 4, 32],
            vec![12, 20, 4, 2],
            ConvParams::new().stride(&[2]).padding(&[1, 0]),
        ),
        (
            vec![1, 16, 3, 32],
            vec![16, 8, 2, 2],
            ConvParams::new().stride(&[2]).groups(2),
        ),
        (
            vec![1, 8, 4, 32],
            vec![8, 9, 2, 2],
            ConvParams::new().stride(&[2]).padding(&[0, 1]),
        ),
        (
            vec![1, 8, 4, 32],
            vec![8, 9, 2, 2],
            ConvParams::new().stride(&[2]).output_padding(&[1, 1]),
        ),
    ];
    let mut pairs = 0;
    for (xs, ws, p) in cases {
        let x = ints::<f32>(&xs, 21);
        let w = ints::<f32>(&ws, 22);
        let c_out = ws[1] * p.groups;
        let b = ints::<f32>(&[c_out], 23)
            .into_dimensionality::<ndarray::Ix1>()
            .unwrap();
        let want = conv_transpose_scatter(&x, &w, Some(b.view()), &p).unwrap();
        for isa in ISAS.into_iter().filter(|i| i.available()) {
            // The tiles that have pair kernels (the planner's pick first).
            let tiles = match isa {
                Isa::Avx512 => [None, Some((8, 3)), Some((6, 4)), Some((12, 2))],
                Isa::Avx2 => [None, Some((6, 2)), Some((12, 1)), Some((8, 1))],
                Isa::Scalar => [None; 4],
            };
            for tile in tiles {
                for threads in [1, 2, 3] {
                    // Packed panels (the pair kernels' family): 8 output channels a group
                    // run in place on half-width AVX-512 unless told.
                    let o = PlanOptions {
                        tile,
                        ..options(isa, Some(false), threads)
                    };
                    let plan = Plan::new(Op::ConvTranspose, &xs, &w, Some(c_out), &p, &o).unwrap();
                    pairs += usize::from(plan.label().contains("/pairs/"));
                    assert_eq!(
                        plan.execute(&x, Some(b.view())).unwrap(),
                        want,
                        "{xs:?} {ws:?} {p:?} {}",
                        plan.label()
                    );
                }
            }
        }
    }
    // Nine layers of pairs, each under the three forced tiles at three thread counts, per
    // ISA that has pair kernels.
    let isas = [Isa::Avx512, Isa::Avx2]
        .iter()
        .filter(|i| i.available())
        .count();
    assert!(
        pairs >= isas * 9 * 3 * 3,
        "only {pairs} plans took the pair kernels"
    );
}

#[test]
fn stride_8_upsamplers_match_reference() {
    use tconv::ConvParams;
    // FCN-style depthwise 16x16 stride 8 and a vocoder-style 1-D k16 s8: the layers whose
    // stores interleave 8 residues (and whose depthwise channels batch per kernel call).
    let cases = [
        (
            vec![2, 3, 5, 6],
            vec![3, 1, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]).groups(3),
        ),
        (
            vec![1, 5, 3, 11],
            vec![5, 1, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]).groups(5),
        ),
        (
            vec![1, 2, 2, 20],
            vec![2, 1, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]).groups(2),
        ),
        (
            vec![2, 4, 9],
            vec![4, 2, 16],
            ConvParams::new().stride(&[8]).padding(&[4]),
        ),
        (
            vec![1, 2, 7],
            vec![2, 3, 12],
            ConvParams::new()
                .stride(&[8])
                .padding(&[1])
                .output_padding(&[3]),
        ),
    ];
    for (xs, ws, p) in cases {
        let x = ints::<f32>(&xs, 11);
        let w = ints::<f32>(&ws, 12);
        let c_out = ws[1] * p.groups;
        let b = ints::<f32>(&[c_out], 13)
            .into_dimensionality::<ndarray::Ix1>()
            .unwrap();
        let want = conv_transpose_scatter(&x, &w, Some(b.view()), &p).unwrap();
        for inplace in [true, false] {
            for threads in [1, 2] {
                let o = PlanOptions {
                    inplace: Some(inplace),
                    threads: Some(threads),
                    ..PlanOptions::default()
                };
                let plan = Plan::new(Op::ConvTranspose, &xs, &w, Some(c_out), &p, &o).unwrap();
                assert_eq!(
                    plan.execute(&x, Some(b.view())).unwrap(),
                    want,
                    "{xs:?} {}",
                    plan.label()
                );
            }
        }
    }
}

/// A depthwise conv_transpose (`groups` = channels) on small integers runs on the row engine
/// and matches the reference exactly, with bias, at 1 and 2 threads; returns the output
/// shape.
fn depthwise_rows_match(
    xs: &[usize],
    ws: &[usize],
    p: &tconv::ConvParams,
    seed: u64,
) -> Vec<usize> {
    let p = p.clone().groups(xs[1]);
    let x = ints::<f32>(xs, seed);
    let w = ints::<f32>(ws, seed + 1);
    let b = ints::<f32>(&[xs[1]], seed + 2)
        .into_dimensionality()
        .unwrap();
    let want = conv_transpose_scatter(&x, &w, Some(b.view()), &p).unwrap();
    for threads in [1, 2] {
        let o = PlanOptions {
            threads: Some(threads),
            ..PlanOptions::default()
        };
        let plan = Plan::new(Op::ConvTranspose, xs, &w, Some(xs[1]), &p, &o).unwrap();
        assert!(plan.label().contains("depthwise-rows"), "{}", plan.label());
        assert_eq!(
            plan.execute(&x, Some(b.view())).unwrap(),
            want,
            "{xs:?} {ws:?} threads {threads}"
        );
    }
    want.shape().to_vec()
}

/// A depthwise output beyond the row engine's streaming threshold (16 MiB; written with
/// non-temporal stores where it also exceeds half the last-level cache, as on a 32 MiB L3,
/// and with ordinary stores on a larger one: the library's own test
/// `streamed_rows_are_the_cached_rows` forces both): exact against the reference, at 1 and
/// 2 threads.
#[test]
fn streamed_depthwise_output_matches_reference() {
    use tconv::ConvParams;
    // Width 129: rows of 1032 outputs, not whole 64-output blocks (the phase-row path).
    let p = ConvParams::new().stride(&[8]).padding(&[4]);
    let shape = depthwise_rows_match(&[1, 4, 128, 129], &[4, 1, 16, 16], &p, 21);
    let len: usize = shape.iter().product();
    assert!(len * 4 >= 16 << 20, "large enough to stream");
}

/// Stride-8 depthwise rows of whole 64-output blocks whose taps all read inside the input
/// are summed and interleaved in registers: exact on small integers against the reference
/// (border rows take the general path), with and without non-temporal stores (where the
/// last-level cache is small enough for 16 MiB to stream), 1-3-D
/// shapes, 1 and 2 threads.
#[test]
fn stride_8_depthwise_blocks_match_reference() {
    use tconv::ConvParams;
    let cases = [
        (
            vec![2, 3, 9, 16],
            vec![3, 1, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]),
        ),
        (
            vec![1, 2, 5, 8],
            vec![2, 1, 8, 8],
            ConvParams::new().stride(&[8]),
        ),
        (
            vec![1, 2, 24],
            vec![2, 1, 24],
            ConvParams::new().stride(&[8]).padding(&[8]),
        ),
        (
            vec![1, 2, 3, 4, 8],
            vec![2, 1, 3, 16, 16],
            ConvParams::new().stride(&[1, 8, 8]).padding(&[1, 4, 4]),
        ),
        // Dilated: the taps read more distinct runs than the by-source blocks take, so the
        // blocks sum slot by slot.
        (
            vec![1, 2, 6, 8],
            vec![2, 1, 8, 8],
            ConvParams::new().stride(&[8]).dilation(&[3]).padding(&[7]),
        ),
        // 16 MiB of output: streamed where it exceeds half the last-level cache.
        (
            vec![1, 4, 128, 128],
            vec![4, 1, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]),
        ),
    ];
    for (xs, ws, p) in cases {
        let shape = depthwise_rows_match(&xs, &ws, &p, 31);
        assert_eq!(shape[shape.len() - 1] % 64, 0, "whole blocks");
    }
}

/// Very long reductions (whole panels over a quarter of the panel budget) are packed slice
/// by slice, aligned to taps (several whole taps per slice, or a tap's channels in chunks):
/// exact on small integers against the reference, for both ops, every ISA, 1 or 3 threads.
#[test]
fn sliced_reductions_match_reference() {
    use tconv::ConvParams;
    let cases = [
        // C_in/g >= one slice: each tap's channels in chunks.
        (
            vec![1, 300, 4, 5],
            vec![300, 8, 3, 3],
            ConvParams::new().padding(&[1]),
            Op::ConvTranspose,
        ),
        // Fewer channels than a slice: several whole taps per slice.
        (
            vec![2, 100, 6, 7],
            vec![100, 9, 5, 5],
            ConvParams::new().padding(&[2]),
            Op::ConvTranspose,
        ),
        (
            vec![2, 160, 11, 9],
            vec![14, 160, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
            Op::Conv,
        ),
        (
            vec![1, 96, 64],
            vec![20, 96, 32],
            ConvParams::new().stride(&[8]).padding(&[4]),
            Op::Conv,
        ),
        (
            vec![1, 2 * 300, 6, 6],
            vec![16, 300, 3, 3],
            ConvParams::new().padding(&[1]).groups(2),
            Op::Conv,
        ),
        // Weights (1.2 MB) beyond a quarter of the L2: tiles in groups sharing each
        // weight slice (smaller weights take one tile a group where the L2 is known).
        (
            vec![2, 256, 16, 16],
            vec![256, 300, 2, 2],
            ConvParams::new().stride(&[2]),
            Op::ConvTranspose,
        ),
    ];
    for (xs, ws, p, op) in cases {
        let x = ints::<f32>(&xs, 11);
        let w = ints::<f32>(&ws, 12);
        let want = reference(op, &x, &w, None, &p).unwrap();
        for isa in ISAS {
            for threads in [1, 3] {
                let o = options(isa, Some(false), threads);
                let plan = Plan::new(op, &xs, &w, None, &p, &o).unwrap();
                assert_eq!(
                    plan.execute(&x, None).unwrap(),
                    want,
                    "{op:?} {xs:?} {}",
                    plan.label()
                );
            }
        }
        let (x64, w64) = (ints::<f64>(&xs, 11), ints::<f64>(&ws, 12));
        let plan = Plan::new(op, &xs, &w64, None, &p, &PlanOptions::default()).unwrap();
        let got = plan.execute(&x64, None).unwrap();
        assert!(
            got.iter().zip(want.iter()).all(|(a, b)| *a == *b as f64),
            "{op:?} {xs:?} f64"
        );
    }
}

#[test]
fn col2im_gives_way_where_its_columns_would_not_fit() {
    use tconv::ConvParams;
    // Few output channels, but a 64x64 kernel: one input row's columns alone would take
    // 3 MiB, so even a forced col2im plans the direct engine, and says why.
    let w = ndarray::Array4::<f32>::zeros((32, 3, 64, 64));
    let p = ConvParams::new().stride(&[2]);
    for algorithm in [None, Some(Algorithm::Col2im)] {
        let o = PlanOptions {
            algorithm,
            threads: Some(1),
            ..PlanOptions::default()
        };
        let plan = Plan::new(Op::ConvTranspose, &[1, 32, 64, 64], &w, None, &p, &o).unwrap();
        assert_eq!(plan.algorithm(), Algorithm::Direct);
        if algorithm.is_some() {
            assert!(plan.to_string().contains("3145728 bytes"), "{plan}");
        }
    }
}

#[test]
fn few_output_channels_take_col2im_by_the_kernels_at_hand() {
    use tconv::ConvParams;
    // A transposed conv with few output channels takes GEMM + col2im from 32 input channels
    // per group up, but against the AVX-512 in-place kernels (float32 on an AVX-512 plan)
    // only from 32 input channels per output channel up (float64 where its loops are
    // AVX-512: 64, or 32 for a single output channel): dcgan4's 64 for 3 runs in place.
    let p = ConvParams::new().stride(&[2]).padding(&[1]);
    let plan_of = |isa: Isa, c_in: usize, c_out: usize, f64: bool| {
        let o = PlanOptions {
            isa: Some(isa),
            threads: Some(2),
            ..PlanOptions::default()
        };
        let xs = [2, c_in, 6, 5];
        let ws = [c_in, c_out, 4, 4];
        if f64 {
            let (x, w) = (ints::<f64>(&xs, 3), ints::<f64>(&ws, 4));
            let plan = Plan::new(Op::ConvTranspose, &xs, &w, None, &p, &o).unwrap();
            let want = conv_transpose_scatter(&x, &w, None, &p).unwrap();
            assert_eq!(plan.execute(&x, None).unwrap(), want, "{}", plan.label());
            (plan.algorithm(), plan.label(), plan.to_string())
        } else {
            let (x, w) = (ints::<f32>(&xs, 3), ints::<f32>(&ws, 4));
            let plan = Plan::new(Op::ConvTranspose, &xs, &w, None, &p, &o).unwrap();
            let want = conv_transpose_scatter(&x, &w, None, &p).unwrap();
            assert_eq!(plan.execute(&x, None).unwrap(), want, "{}", plan.label());
            (plan.algorithm(), plan.label(), plan.to_string())
        }
    };
    for isa in ISAS.into_iter().filter(|i| i.available()) {
        let wide = isa == Isa::Avx512;
        for (c_in, c_out) in [
            (64, 3),
            (32, 2),
            (96, 6),
            (96, 3),
            (32, 1),
            (256, 7),
            (16, 1),
            (192, 3),
            (128, 2),
        ] {
            let col2im = c_in >= 32 && (!wide || c_in >= 32 * c_out);
            let (algorithm, label, text) = plan_of(isa, c_in, c_out, false);
            let want = if col2im {
                Algorithm::Col2im
            } else {
                Algorithm::Direct
            };
            assert_eq!(algorithm, want, "{c_in} -> {c_out} on {isa}: {label}");
            if !col2im {
                assert!(label.contains("inplace"), "{label}");
            }
            if !col2im && c_in >= 32 {
                assert!(
                    text.contains(&format!("({c_in} for {c_out})")),
                    "the plan says why it is not col2im: {text}"
                );
            }
            // float64's in-place kernels are AVX-512 ones where its loops are.
            let wide = Isa::Scalar.loops_for::<f64>() == Isa::Avx512;
            let (algorithm, label, _) = plan_of(isa, c_in, c_out, true);
            let per_out = if c_out > 1 { 64 } else { 32 };
            let want = if c_in >= 32 && (!wide || c_in >= per_out * c_out) {
                Algorithm::Col2im
            } else {
                Algorithm::Direct
            };
            assert_eq!(algorithm, want, "f64 {c_in} -> {c_out} on {isa}: {label}");
        }
    }
}

#[test]
fn suite_workspaces_stay_within_the_output() {
    use tconv::ConvParams;
    // Issue 4's memory target, for every layer of the standard suite at 1 and 2 threads.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/suite.json");
    let suite: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dims = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect()
    };
    for l in suite["layers"].as_array().unwrap() {
        let input = dims(&l["input"]);
        let groups = l["groups"].as_u64().unwrap() as usize;
        let mut w_shape = vec![input[1], l["c_out"].as_u64().unwrap() as usize / groups];
        w_shape.extend(dims(&l["kernel"]));
        let w = ndarray::ArrayD::<f32>::zeros(w_shape);
        let p = ConvParams::new()
            .stride(&dims(&l["stride"]))
            .padding(&dims(&l["padding"]))
            .output_padding(&dims(&l["output_padding"]))
            .dilation(&dims(&l["dilation"]))
            .groups(groups);
        for threads in [1, 2] {
            let o = PlanOptions {
                threads: Some(threads),
                ..PlanOptions::default()
            };
            let plan = Plan::new(Op::ConvTranspose, &input, &w, None, &p, &o).unwrap();
            let out_bytes = plan.geometry().output_shape().iter().product::<usize>() * 4;
            assert!(
                plan.workspace_bytes() <= out_bytes,
                "{} at {threads} threads: {} bytes of workspace for a {out_bytes}-byte output",
                l["name"],
                plan.workspace_bytes()
            );
        }
    }
}

/// Depthwise convs with a large last-axis stride and a kernel of whole vectors read their
/// input rows in place by tap vectors: exact on small integers against the reference, with
/// bias, for 1-3-D shapes, asymmetric and wide padding (rows and positions that read only
/// zeros), dilated outer axes, rows shorter than and not a multiple of 8 positions, f32 and
/// f64, the scalar, AVX2 and AVX-512 paths (f32 on AVX2 and AVX-512 without the row cache,
/// kernels of 8 and 24 taps a row with masked tails), 1 and 3 threads.
#[test]
fn depthwise_tap_vectors_match_reference() {
    use tconv::ConvParams;
    let cases = [
        // FCN's upsampler seen as the conv of its input gradient.
        (
            vec![2, 3, 37, 45],
            vec![3, 1, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]),
        ),
        (
            vec![1, 2, 23, 83],
            vec![2, 1, 3, 8],
            ConvParams::new()
                .stride(&[2, 4])
                .dilation(&[2, 1])
                .pads(&[3, 9], &[1, 2]),
        ),
        (
            vec![3, 4, 150],
            vec![4, 1, 24],
            ConvParams::new().stride(&[5]).pads(&[30], &[7]),
        ),
        (
            vec![1, 2, 5, 6, 40],
            vec![2, 1, 2, 3, 8],
            ConvParams::new().stride(&[1, 2, 4]).padding(&[1, 1, 2]),
        ),
        // Fewer than 8 positions per row.
        (
            vec![2, 2, 9, 30],
            vec![2, 1, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[8]),
        ),
        // Four spatial axes.
        (
            vec![1, 2, 3, 4, 3, 40],
            vec![2, 1, 2, 2, 2, 8],
            ConvParams::new()
                .stride(&[1, 2, 1, 4])
                .padding(&[1, 0, 1, 2]),
        ),
    ];
    for (xs, ws, p) in cases {
        let p = p.groups(xs[1]);
        for threads in [1, 3] {
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                tap_vectors_match::<f32>(&xs, &ws, &p, isa, threads);
                tap_vectors_match::<f64>(&xs, &ws, &p, isa, threads);
            }
        }
    }
}

fn tap_vectors_match<T: Element>(
    xs: &[usize],
    ws: &[usize],
    p: &tconv::ConvParams,
    isa: Isa,
    threads: usize,
) {
    let x = ints::<T>(xs, 41);
    let w = ints::<T>(ws, 42);
    let b = ints::<T>(&[xs[1]], 43).into_dimensionality().unwrap();
    let want = conv_gather(&x, &w, Some(b.view()), p).unwrap();
    let o = PlanOptions {
        threads: Some(threads),
        isa: Some(isa),
        ..PlanOptions::default()
    };
    let plan = Plan::new(Op::Conv, xs, &w, Some(xs[1]), p, &o).unwrap();
    assert!(plan.label().contains("depthwise-taps"), "{}", plan.label());
    assert_eq!(
        plan.execute(&x, Some(b.view())).unwrap(),
        want,
        "{xs:?} {ws:?} {isa} threads {threads}"
    );
}

/// A non-finite input value reaches only the outputs whose windows hold it: the tap
/// vectors' loads past a kernel row's last tap (24 taps: on AVX-512 a second vector of 8
/// lanes) or past a row's ends read nothing (a zero tap times an infinity would be NaN), on
/// every path.
#[test]
fn depthwise_tap_vectors_keep_infinities_to_their_windows() {
    use tconv::ConvParams;
    let (xs, ws) = ([1, 2, 3, 61], [2, 1, 2, 24]);
    let p = ConvParams::new()
        .stride(&[1, 5])
        .pads(&[0, 3], &[1, 2])
        .groups(2);
    let mut x = ints::<f32>(&xs, 44);
    x[[0, 0, 1, 33]] = f32::INFINITY;
    x[[0, 1, 2, 0]] = f32::NEG_INFINITY;
    x[[0, 1, 0, 60]] = f32::INFINITY;
    let w = ints::<f32>(&ws, 45).mapv(|v| if v == 0.0 { 1.0 } else { v });
    let want = conv_gather(&x, &w, None, &p).unwrap();
    assert!(want.iter().any(|v| v.is_finite()) && want.iter().any(|v| !v.is_finite()));
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
        let o = PlanOptions {
            isa: Some(isa),
            ..PlanOptions::default()
        };
        let plan = Plan::new(Op::Conv, &xs, &w, None, &p, &o).unwrap();
        assert!(plan.label().contains("depthwise-taps"), "{}", plan.label());
        let got = plan.execute(&x, None).unwrap();
        for (g, e) in got.iter().zip(&want) {
            assert!(
                g == e || (g.is_nan() && e.is_nan()),
                "{isa}: {g} against {e}"
            );
        }
    }
}

/// Winograd tiles on the layer kinds they serve (DCGAN's k4 s2 phases, stride-1 3×3,
/// dilated with bias-only phases, 1-D, 3-D, stride-1 and strided convs, groups, asymmetric
/// padding): bitwise identical for any thread count, and within float rounding of the reference on
/// random floats, in f32 and f64. And the planner takes them for the wide DCGAN layers
/// only (its cost model: the transforms weigh less as the channels grow).
#[test]
fn winograd_tiles_match_reference() {
    use tconv::ConvParams;
    let cases = [
        (
            vec![3, 32, 6, 5],
            vec![32, 24, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
            Op::ConvTranspose,
            "F(3x3,2x2)",
        ),
        (
            vec![2, 24, 11, 13],
            vec![24, 20, 3, 3],
            ConvParams::new().padding(&[1]),
            Op::ConvTranspose,
            "F(2x2,3x3)",
        ),
        // Stride 2, rows of 5 tiles a phase: a tile's two columns two positions apart, four
        // tiles a masked store on AVX-512 and one left over.
        (
            vec![2, 32, 4, 10],
            vec![32, 24, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
            Op::ConvTranspose,
            "F(2x2,2x2)",
        ),
        // Rows of 10 tiles: each tile column's outputs a run of a vector or more, the two
        // interleaved when stored.
        (
            vec![2, 24, 7, 20],
            vec![24, 20, 3, 3],
            ConvParams::new().padding(&[1]),
            Op::ConvTranspose,
            "F(2x2,3x3)",
        ),
        (
            vec![2, 20, 9, 8],
            vec![20, 16, 3, 3],
            ConvParams::new()
                .stride(&[2])
                .padding(&[2])
                .dilation(&[2])
                .output_padding(&[1]),
            Op::ConvTranspose,
            "F(2x2,3x3)",
        ),
        (
            vec![2, 32, 30],
            vec![32, 16, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
            Op::ConvTranspose,
            "F(3,2)",
        ),
        // HiFi-GAN's k16 s8: eight phases of two taps reading two inputs, each input
        // transformed once for four phases.
        (
            vec![2, 16, 23],
            vec![16, 24, 16],
            ConvParams::new().stride(&[8]).padding(&[4]),
            Op::ConvTranspose,
            "F(3,2)",
        ),
        // Longer rows, each phase staged contiguously and its tiles' three columns
        // interleaved by vectors (AVX-512), the last tile holding one output (50 positions a
        // phase: 17, 17, 16 per column) or two (49: 17, 16, 16).
        (
            vec![2, 8, 50],
            vec![8, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]),
            Op::ConvTranspose,
            "F(3,2)",
        ),
        (
            vec![1, 8, 49],
            vec![8, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]),
            Op::ConvTranspose,
            "F(3,2)",
        ),
        (
            vec![1, 16, 5, 4, 6],
            vec![16, 16, 3, 3, 3],
            ConvParams::new().padding(&[1]),
            Op::ConvTranspose,
            "F(2x2x2,3x3x3)",
        ),
        (
            vec![2, 20, 12, 10],
            vec![24, 20, 3, 3],
            ConvParams::new().padding(&[1]),
            Op::Conv,
            "F(2x2,3x3)",
        ),
        // A strided conv (DCGAN's input gradient): its four polyphase components' 2×2
        // correlations summed along the GEMMs' reduction; and a 1-D k16 s8 one (HiFi-GAN's).
        (
            vec![2, 24, 12, 10],
            vec![20, 24, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
            Op::Conv,
            "F(3x3,2x2)",
        ),
        (
            vec![2, 16, 75],
            vec![24, 16, 16],
            ConvParams::new().stride(&[8]).padding(&[4]),
            Op::Conv,
            "F(3,2)",
        ),
        (
            vec![2, 64, 7, 6],
            vec![64, 16, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]).groups(2),
            Op::ConvTranspose,
            "F(2x3,2x2)",
        ),
        (
            vec![2, 32, 7, 9],
            vec![32, 16, 4, 4],
            ConvParams::new()
                .stride(&[2])
                .pads(&[2, 0], &[1, 3])
                .output_padding(&[1, 0]),
            Op::ConvTranspose,
            "F(2x3,2x2)",
        ),
    ];
    for (xs, ws, p, op, tile) in cases {
        let (x, w) = (floats(&xs, 11), floats(&ws, 12));
        let c_out = match op {
            Op::ConvTranspose => ws[1] * p.groups,
            Op::Conv => ws[0],
        };
        let b = floats(&[c_out], 13).into_dimensionality().unwrap();
        let mut outs = Vec::new();
        for threads in [1, 2, 3, 5] {
            let o = PlanOptions {
                threads: Some(threads),
                algorithm: Some(Algorithm::Winograd),
                ..PlanOptions::default()
            };
            let plan = Plan::new(op, &xs, &w, Some(c_out), &p, &o).unwrap();
            assert_eq!(plan.algorithm(), Algorithm::Winograd, "{plan}");
            assert!(plan.label().contains(tile), "{} for {xs:?}", plan.label());
            outs.push(plan.execute(&x, Some(b.view())).unwrap());
        }
        for o in &outs[1..] {
            let same = o
                .iter()
                .zip(outs[0].iter())
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{op:?} {xs:?}: result depends on the thread count");
        }
        let want = reference(op, &x, &w, Some(b.view()), &p).unwrap();
        assert_eq!(outs[0].shape(), want.shape());
        for (a, b) in outs[0].iter().zip(want.iter()) {
            assert!(
                (a - b).abs() <= 2e-5 * (1.0 + b.abs()),
                "{tile} {xs:?}: {a} vs {b}"
            );
        }
        // f64: the same tiles, far tighter.
        let (x64, w64, b64) = (x.mapv(f64::from), w.mapv(f64::from), b.mapv(f64::from));
        let o = PlanOptions {
            algorithm: Some(Algorithm::Winograd),
            ..PlanOptions::default()
        };
        let plan = Plan::new(op, &xs, &w64, Some(c_out), &p, &o).unwrap();
        assert_eq!(plan.algorithm(), Algorithm::Winograd, "{plan}");
        let got = plan.execute(&x64, Some(b64.view())).unwrap();
        let want = match op {
            Op::ConvTranspose => conv_transpose_scatter(&x64, &w64, Some(b64.view()), &p).unwrap(),
            Op::Conv => conv_gather(&x64, &w64, Some(b64.view()), &p).unwrap(),
        };
        for (a, b) in got.iter().zip(want.iter()) {
            assert!(
                (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                "{tile} f64 {xs:?}: {a} vs {b}"
            );
        }
    }
}

/// The planner's choice by the Winograd cost model, on the DCGAN generator's widths (where
/// the CPU has AVX2 or AVX-512; the portable kernels never take the tiles): the forward
/// pass of a plan built once takes the tiles for the wide layers (512 → 256, 256 → 128,
/// 128 → 64) and not for 64 → 32, whose 32 output channels share each input transform too
/// little, nor for a batch of one, whose output (128 KB) cannot hold a task's transformed
/// input with the transforms in registers. The input gradient (a strided conv planned to
/// run once, its weights transformed on every call, 64 output channels for the last) takes
/// them for all four, not for a small batch, whose few tiles do not repay the weights'
/// transform. Their scratch stays within the output, except for 512 → 256, whose output
/// (half its input: 512 KB) cannot hold two tasks' transformed input with the transforms in
/// registers: there within twice its input per thread (its 18.9 MB of transformed weights
/// stream once per task: see `winograd_tasks_widen_where_the_weights_stream`; the
/// direct engine, which copies the input's components whole, holds 1.55 MB at 1 thread).
/// HiFi-GAN's 1-D layer takes them both ways.
#[test]
fn planner_takes_winograd_where_the_model_pays() {
    use tconv::{ConvParams, Geometry};
    if Isa::detect() == Isa::Scalar {
        return;
    }
    let p = ConvParams::new().stride(&[2]).padding(&[1]);
    let o = PlanOptions {
        threads: Some(1),
        ..PlanOptions::default()
    };
    let cases = [
        (16, 512, 256, 4, Algorithm::Winograd, Algorithm::Winograd),
        (16, 256, 128, 8, Algorithm::Winograd, Algorithm::Winograd),
        (16, 128, 64, 16, Algorithm::Winograd, Algorithm::Winograd),
        (16, 64, 32, 32, Algorithm::Direct, Algorithm::Winograd),
        (1, 256, 128, 8, Algorithm::Direct, Algorithm::Direct),
    ];
    for (n, cin, cout, side, forward, gradient) in cases {
        let xs = [n, cin, side, side];
        let w = ndarray::Array4::<f32>::zeros((cin, cout, 4, 4));
        let plan = Plan::new(Op::ConvTranspose, &xs, &w, None, &p, &o).unwrap();
        assert_eq!(plan.algorithm(), forward, "forward {xs:?}: {plan}");
        let g = Geometry::new(Op::ConvTranspose, &xs, w.shape(), None, &p).unwrap();
        let w = w.as_slice().unwrap();
        let plan = tconv::grad::input_plan(&g, w, &o).unwrap();
        assert_eq!(plan.algorithm(), gradient, "input gradient {xs:?}: {plan}");
        // The gradient's output is the layer's input; its input, the layer's output.
        let out_bytes = 4 * xs.iter().product::<usize>();
        let in_bytes = 4 * g.output_shape().iter().product::<usize>();
        let bound = if side == 4 { 2 * in_bytes } else { out_bytes };
        if gradient == Algorithm::Winograd {
            assert!(plan.workspace_bytes() <= bound, "{xs:?}: {plan}");
        }
        if side == 4 {
            assert!(plan.workspace_bytes() > out_bytes, "{plan}");
        }
    }
    // HiFi-GAN's k16 s8 upsampler: its eight phases read two inputs, so the input transform
    // counts a quarter and the tiles pay, forward and for the input gradient.
    let p = ConvParams::new().stride(&[8]).padding(&[4]);
    let xs = [4, 512, 256];
    let w = ndarray::Array3::<f32>::zeros((512, 256, 16));
    let plan = Plan::new(Op::ConvTranspose, &xs, &w, None, &p, &o).unwrap();
    assert_eq!(plan.algorithm(), Algorithm::Winograd, "{plan}");
    let g = Geometry::new(Op::ConvTranspose, &xs, w.shape(), None, &p).unwrap();
    let plan = tconv::grad::input_plan(&g, w.as_slice().unwrap(), &o).unwrap();
    assert_eq!(plan.algorithm(), Algorithm::Winograd, "{plan}");
}

/// Winograd tasks whose packed weights are too large to stay in cache (DCGAN's 512 → 256
/// layer: 19.5 MB) take the least slice of output channels at a time where the full one
/// would leave them one register panel of columns: 32 tiles a task at 1 thread, not 16,
/// within the output's size, with the same bits on 1, 2 and 3 threads. Smaller weights
/// keep the full slice (DCGAN's 256 → 128 layer at 2 threads: 32 tiles or more).
///
/// A strided conv whose Winograd tiles fit no task within the output (an input gradient)
/// has a bound of its input's size per thread, doubled where its transformed weights exceed
/// 16 MiB (each task streams them once): DCGAN's 512 → 256 layer's input gradient (18.9 MB
/// of them) then takes 32 tiles a task, not 16, on 1 and 2 threads (AVX-512 and AVX2), one
/// register panel on 3, within twice its input a thread, on small integers exactly the
/// direct engine's on 1, 2 and 3 threads; with half its channels (4.7 MB) 16 tiles within
/// its input a thread.
#[test]
fn winograd_tasks_widen_where_the_weights_stream() {
    use tconv::{ConvParams, Geometry};
    if Isa::detect() == Isa::Scalar {
        return;
    }
    let p = ConvParams::new().stride(&[2]).padding(&[1]);
    let opts = |threads| PlanOptions {
        threads: Some(threads),
        ..PlanOptions::default()
    };
    let xs = [16, 512, 4, 4];
    let w = ints::<f32>(&[512, 256, 4, 4], 3);
    let plan = Plan::new(Op::ConvTranspose, &xs, &w, None, &p, &opts(1)).unwrap();
    let text = plan.to_string();
    assert_eq!(plan.algorithm(), Algorithm::Winograd, "{text}");
    assert!(text.contains("N<=32 tiles per task"), "{text}");
    assert!(plan.workspace_bytes() <= 4 * 16 * 256 * 8 * 8, "{text}");
    let x = ints::<f32>(&xs, 4);
    let one = plan.execute(&x, None).unwrap();
    for threads in [2, 3] {
        let plan = Plan::new(Op::ConvTranspose, &xs, &w, None, &p, &opts(threads)).unwrap();
        assert_eq!(
            plan.execute(&x, None).unwrap(),
            one,
            "{threads} threads: {plan}"
        );
    }
    let w = ndarray::Array4::<f32>::zeros((256, 128, 4, 4));
    let plan = Plan::new(Op::ConvTranspose, &[16, 256, 8, 8], &w, None, &p, &opts(2)).unwrap();
    let text = plan.to_string();
    let tiles = text.split("N<=").nth(1).and_then(|r| r.split(' ').next());
    let tiles: usize = tiles.and_then(|n| n.parse().ok()).expect("tiles per task");
    assert!(tiles >= 32, "{text}");
    // The input gradient of the 512 → 256 layer.
    winograd_input_gradients_are_the_direct_ones(
        (&xs, &[512, 256, 4, 4], &p),
        31,
        |threads, plan, in_bytes| {
            let text = plan.to_string();
            // (On 3 threads, tasks of one register panel: four of 16 tiles on 24×1 or
            // 16×1 tiles, two of 32 on 12×2.)
            let panel = text
                .split(" output channels x ")
                .nth(1)
                .and_then(|r| {
                    let words: Vec<&str> = r.split(' ').collect();
                    Some(words[0].parse::<usize>().ok()? * words[3].parse::<usize>().ok()?)
                })
                .expect("the register tile");
            let tiles = if threads < 3 { 32 } else { panel.max(16) };
            assert!(
                text.contains(&format!("N<={tiles} tiles per task")),
                "{text}"
            );
            assert!(
                plan.workspace_bytes() > in_bytes * threads
                    && plan.workspace_bytes() <= 2 * in_bytes * threads,
                "{text}"
            );
        },
    );
    // Half the channels: 4.7 MB of transformed weights, 16 tiles a task.
    let w = floats(&[256, 128, 4, 4], 33);
    let g = Geometry::new(Op::ConvTranspose, &[16, 256, 4, 4], w.shape(), None, &p).unwrap();
    let plan = tconv::grad::input_plan(&g, w.as_slice().unwrap(), &opts(2)).unwrap();
    let in_bytes = 4 * g.output_shape().iter().product::<usize>();
    assert_eq!(plan.algorithm(), Algorithm::Winograd, "{plan}");
    assert!(plan.to_string().contains("N<=16 tiles per task"), "{plan}");
    assert!(
        plan.workspace_bytes() > in_bytes && plan.workspace_bytes() <= 2 * in_bytes,
        "{plan}"
    );
}

/// The input gradient of the suite's HiFi-GAN-style 1-D upsampler (512 → 256 channels,
/// k16 s8: a strided conv of 8 sources, K = 2048, 17 MB of transformed weights) takes tasks
/// of 96 tiles, as many as its scratch bound (half its input a thread) holds, on 1 and 2
/// threads, so that every packed weight block serves three register panels; on small
/// integers its sums are exactly the direct engine's on 1, 2 and 3 threads.
#[test]
fn winograd_input_gradient_of_many_sources_takes_wide_tasks() {
    use tconv::ConvParams;
    if Isa::detect() == Isa::Scalar {
        return;
    }
    let p = ConvParams::new().stride(&[8]).padding(&[4]);
    winograd_input_gradients_are_the_direct_ones(
        (&[4, 512, 256], &[512, 256, 16], &p),
        41,
        |threads, plan, in_bytes| {
            let text = plan.to_string();
            assert!(text.contains("K=2048"), "{text}");
            if threads < 3 {
                assert!(text.contains("N<=96 tiles per task"), "{text}");
            }
            assert!(
                plan.workspace_bytes() <= in_bytes / 2 * threads,
                "{threads} threads: {text}"
            );
        },
    );
}

/// The input gradient of the transposed conv of input shape `xs`, weight shape `ws` and
/// parameters `p` (small integers from `seed` for the weight, `seed + 1` for the upstream
/// gradient), planned on 1, 2 and 3 threads, takes Winograd tiles (each plan also passed to
/// `check` with its thread count and the bytes of the gradient it reads) and gives exactly
/// the direct engine's sums.
fn winograd_input_gradients_are_the_direct_ones(
    (xs, ws, p): (&[usize], &[usize], &tconv::ConvParams),
    seed: u64,
    check: impl Fn(usize, &Plan<f32>, usize),
) {
    let w = ints::<f32>(ws, seed);
    let g = tconv::Geometry::new(Op::ConvTranspose, xs, ws, None, p).unwrap();
    let gy = ints::<f32>(&g.output_shape(), seed + 1);
    let (g, w, gy) = (&g, w.as_slice().unwrap(), &gy);
    let on = |threads, algorithm| PlanOptions {
        threads: Some(threads),
        algorithm,
        ..PlanOptions::default()
    };
    let want = tconv::grad::input_plan(g, w, &on(2, Some(Algorithm::Direct)))
        .unwrap()
        .execute(gy, None)
        .unwrap();
    for threads in [1, 2, 3] {
        let plan = tconv::grad::input_plan(g, w, &on(threads, None)).unwrap();
        assert_eq!(plan.algorithm(), Algorithm::Winograd, "{plan}");
        check(threads, &plan, 4 * gy.len());
        let got = plan.execute(gy, None).unwrap();
        assert!(
            got == want,
            "{threads} threads: not the direct engine's sums"
        );
    }
}

/// A plan may take another Winograd tile on another thread count than the two its
/// algorithm and transforms are chosen for (DCGAN's 512 → 256 layer on AVX-512: 12×2 tiles
/// at 1 thread, 24×1 at 2, whose scratch bound holds only narrower panels for two tasks;
/// where AVX-512 runs on 256-bit units 16×1 at 1 and 2 threads, 24×1 at 3), as may its
/// input gradient, planned to run once: the bits are the same on 1, 2 and 3 threads.
#[test]
fn tiles_chosen_per_thread_count_keep_the_bits() {
    use tconv::{ConvParams, Geometry};
    let p = ConvParams::new().stride(&[2, 2]).padding(&[1, 1]);
    let layers = [
        ([16, 512, 4, 4], [512, 256, 4, 4]),
        ([16, 256, 8, 8], [256, 128, 4, 4]),
    ];
    for (xs, ws) in layers {
        let w = floats(&ws, 21);
        let g = Geometry::new(Op::ConvTranspose, &xs, w.shape(), None, &p).unwrap();
        let x = floats(&xs, 23);
        let gy = floats(&g.output_shape(), 22);
        let (mut runs, mut labels) = (Vec::new(), Vec::new());
        for threads in [1, 2, 3] {
            let o = PlanOptions {
                threads: Some(threads),
                ..PlanOptions::default()
            };
            let plan = Plan::new(Op::ConvTranspose, &xs, &w, None, &p, &o).unwrap();
            let grad = tconv::grad::input_plan(&g, w.as_slice().unwrap(), &o).unwrap();
            labels.push(format!("{} / {}", plan.label(), grad.label()));
            runs.push([
                plan.execute(&x, None).unwrap(),
                grad.execute(&gy, None).unwrap(),
            ]);
        }
        if Isa::detect() == Isa::Avx512 && xs[1] == 512 {
            let fwd = |l: &String| l.split(" / ").next().unwrap().to_string();
            assert!(
                labels.iter().any(|l| fwd(l) != fwd(&labels[0])),
                "{labels:?}"
            );
        }
        for (run, l) in runs[1..].iter().zip(&labels[1..]) {
            for (a, b) in run.iter().zip(&runs[0]) {
                let same = a
                    .iter()
                    .zip(b.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{l} against {}: the bits differ", labels[0]);
            }
        }
    }
}

/// Weight packing by 8×8 transposes: register blocks of 8, 16 and 24 rows over kernels of
/// 8 and 16 taps (every block's rows at several offsets, a last block partly live), in a
/// plan kept and in a run-once plan (pooled scratch), conv and transposed conv, for the
/// direct engine and Winograd tiles (whose weight transform starts from the same
/// packing), exactly the reference.
#[test]
fn wide_weight_blocks_pack_exactly() {
    use tconv::ConvParams;
    let cases = [
        (
            vec![2, 5, 6, 5],
            vec![5, 40, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
            Op::ConvTranspose,
        ),
        (
            vec![2, 6, 9, 8],
            vec![48, 6, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
            Op::Conv,
        ),
        (
            vec![1, 3, 4, 4, 4],
            vec![3, 40, 2, 2, 2],
            ConvParams::new().stride(&[2]),
            Op::ConvTranspose,
        ),
    ];
    for (xs, ws, p, op) in cases {
        let x = ints::<f32>(&xs, 3);
        let w = ints::<f32>(&ws, 5);
        let want = reference(op, &x, &w, None, &p).unwrap();
        for isa in ISAS.into_iter().filter(|i| i.available()) {
            for (mr, v, _) in tconv::fast::kernels::tile_shapes(isa) {
                if !mr.is_multiple_of(8) {
                    continue;
                }
                for (once, algorithm) in [
                    (false, Algorithm::Direct),
                    (true, Algorithm::Direct),
                    (true, Algorithm::Winograd),
                ] {
                    let o = PlanOptions {
                        tile: Some((*mr, *v)),
                        once,
                        algorithm: Some(algorithm),
                        ..options(isa, Some(false), 2)
                    };
                    let plan = Plan::new(op, x.shape(), &w, None, &p, &o).unwrap();
                    let got = plan.execute(&x, None).unwrap();
                    assert_eq!(got, want, "{op:?} {xs:?} {} once {once}", plan.label());
                }
            }
        }
    }
}

/// Convs whose kernel equals their stride with stride 2 on the last axis (the input
/// gradients of U-Net's and V-Net's up-convolutions) read their input in place on AVX-512
/// and AVX2 (`fast::strided_conv`; few output channels take the in-place kernels): exact on small integers against the reference for 1-3-D
/// shapes, tiles that span several output rows and rows shorter than, equal to and longer
/// than a tile, rows not a multiple of 16 positions, a last block of output channels partly
/// live, groups, bias, 1 and 3 threads (the same bits), through plans kept and run once.
#[test]
fn kernel_stride_convs_read_in_place() {
    use tconv::ConvParams;
    let cases = [
        (vec![2, 6, 10, 70], vec![13, 6, 2, 2], vec![2, 2], 1),
        (vec![1, 5, 4, 128], vec![8, 5, 2, 2], vec![2, 2], 1),
        (vec![3, 5, 66], vec![9, 5, 2], vec![2], 1),
        (vec![1, 4, 4, 6, 40], vec![9, 4, 2, 2, 2], vec![2, 2, 2], 1),
        (vec![2, 8, 6, 34], vec![18, 4, 3, 2], vec![3, 2], 2),
        (vec![1, 3, 2, 2], vec![30, 3, 2, 2], vec![2, 2], 1),
    ];
    for (xs, ws, stride, groups) in cases {
        let x = ints::<f32>(&xs, 5);
        let w = ints::<f32>(&ws, 6);
        let b = ints::<f32>(&[ws[0]], 7);
        let p = ConvParams::new().stride(&stride).groups(groups);
        let bv = b.view().into_dimensionality::<ndarray::Ix1>().unwrap();
        let want = reference(Op::Conv, &x, &w, Some(bv), &p).unwrap();
        let mut bits = None;
        for (threads, once) in [(1, false), (3, false), (1, true)] {
            // (Few channels would take im2col: the direct engine is what reads in place.)
            let o = PlanOptions {
                threads: Some(threads),
                once,
                algorithm: Some(Algorithm::Direct),
                ..PlanOptions::default()
            };
            let plan = Plan::new(Op::Conv, &xs, &w, Some(ws[0]), &p, &o).unwrap();
            // Not on the portable ISA (forced or not): it runs no SIMD.
            let simd = Isa::detect() != Isa::Scalar;
            assert_eq!(plan.label().contains("strided-loads"), simd, "{plan}");
            if simd {
                // A panel and a tile per thread (the panel budget), no copy of the input.
                assert!(plan.workspace_bytes() <= threads * 512 * 1024, "{plan}");
                assert!(!plan.to_string().contains("Polyphase"), "{plan}");
            }
            let got = plan.execute(&x, Some(bv)).unwrap();
            assert_eq!(got, want, "{xs:?} {ws:?} {threads} threads: {plan}");
            let b: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert!(bits.get_or_insert(b.clone()) == &b, "{xs:?}: bits differ");
        }
    }
}

/// The Winograd input transform's two register paths give the same bits: on AVX-512 the
/// separable 2-D forms load each tile's inputs straight from the input (two-source
/// permutes over 64 values, gathers where 16 tiles spread wider, masked loads at the
/// input's end), on AVX2 they transform a channels-last copy. Random (not integer) data,
/// so any difference in what is loaded or in the order of the additions shows; the shapes
/// put a block's 16 tiles within 64 values (permutes), in up to four clusters further apart
/// (four windows, permutes), in more (gathers) — each of the three in several blocks — and
/// end at the last channel's last values.
#[test]
fn winograd_gathered_inputs_match_the_channels_last_path() {
    use tconv::ConvParams;
    if !Isa::Avx512.available() {
        return;
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = |shape: &[usize]| {
        ArrayD::from_shape_fn(ndarray::IxDyn(shape), |_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
    };
    // (input, C_out, kernel, stride, padding): F(2,2) phases of k4 s2, F(2,3) of k3 s1.
    let layers: [(&[usize], usize, usize, usize, usize); 8] = [
        (&[2, 9, 3, 40], 5, 4, 2, 1),
        (&[1, 6, 8, 8], 5, 4, 2, 1),
        (&[2, 3, 16, 16], 4, 4, 2, 1),
        (&[1, 5, 4, 4], 3, 4, 2, 1),
        (&[1, 12, 5, 7], 8, 4, 2, 1),
        (&[3, 4, 9, 9], 3, 4, 2, 2),
        (&[2, 7, 6, 33], 6, 3, 1, 1),
        (&[1, 5, 7, 5], 4, 3, 1, 0),
    ];
    for (shape, c_out, k, s, p) in layers {
        let x = random(shape);
        let w = random(&[shape[1], c_out, k, k]);
        let b = random(&[c_out]).into_dimensionality().unwrap();
        let params = ConvParams::new().stride(&[s, s]).padding(&[p, p]);
        for op in [Op::ConvTranspose, Op::Conv] {
            let x = match op {
                Op::ConvTranspose => x.clone(),
                // The conv reads the weight with C_out input channels.
                Op::Conv => random(&[shape[0], c_out, shape[2] * s, shape[3] * s]),
            };
            let bias = (op == Op::ConvTranspose).then_some(b.view());
            let run = |isa: Isa, threads: usize| {
                let o = PlanOptions {
                    algorithm: Some(Algorithm::Winograd),
                    ..options(isa, None, threads)
                };
                let blen = bias.map(|b| b.len());
                let plan = Plan::<f32>::new(op, x.shape(), &w, blen, &params, &o).unwrap();
                assert_eq!(plan.algorithm(), Algorithm::Winograd, "{plan}");
                plan.execute(&x, bias).unwrap()
            };
            let want = run(Isa::Avx2, 1);
            for threads in [1, 2] {
                let got = run(Isa::Avx512, threads);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{op:?} {shape:?} k{k} s{s} p{p}, {threads} threads"
                );
            }
        }
    }
}

/// f64 plans take Winograd tiles where f32 plans do (their loops run on the CPU's vectors,
/// though their plans are `Scalar`; f64's smaller share of registers and scratch may let
/// them take the tiles where f32's do not), both ops, and none where the loops are scalar
/// (`TCONV_ISA=scalar`); their weight gradients match the reference's, whichever way they
/// are taken.
#[test]
fn f64_plans_take_winograd_where_f32_plans_do() {
    use tconv::{ConvParams, Wanted};
    let loops = Isa::Scalar.loops_for::<f64>();
    let simd = loops != Isa::Scalar;
    let cases = [
        // dcgan2-like (k4 s2, wide), s1k3-like (k3 s1), HiFi-GAN-like 1-D, and a narrow
        // layer neither takes them for.
        (
            vec![8, 256, 8, 8],
            vec![256, 128, 4, 4],
            ConvParams::new().stride(&[2]).padding(&[1]),
        ),
        (
            vec![4, 64, 16, 16],
            vec![64, 64, 3, 3],
            ConvParams::new().padding(&[1]),
        ),
        (
            vec![1, 256, 64],
            vec![256, 128, 16],
            ConvParams::new().stride(&[8]).padding(&[4]),
        ),
        (
            vec![2, 4, 9, 9],
            vec![4, 3, 3, 3],
            ConvParams::new().padding(&[1]),
        ),
        // dilated-like: three of four phases bias-only (its f64 weight gradient takes the
        // tiles where f32's does not).
        (
            vec![2, 64, 16, 16],
            vec![64, 64, 3, 3],
            ConvParams::new()
                .stride(&[2])
                .padding(&[2])
                .dilation(&[2])
                .output_padding(&[1]),
        ),
    ];
    let mut took = 0;
    for (xs, ws, p) in cases {
        let o = PlanOptions::default();
        let g = tconv::Geometry::new(Op::ConvTranspose, &xs, &ws, None, &p).unwrap();
        // The conv this layer is the transpose of (without the output padding it lacks).
        let pc = p.clone().output_padding(&vec![0; xs.len() - 2]);
        for (op, input, p) in [
            (Op::ConvTranspose, xs.clone(), &p),
            (Op::Conv, g.user_output_shape(), &pc),
        ] {
            let w32 = floats(&ws, 1);
            let w64 = w32.mapv(f64::from);
            let a32 = Plan::new(op, &input, &w32, None, p, &o)
                .unwrap()
                .algorithm();
            let a64 = Plan::new(op, &input, &w64, None, p, &o)
                .unwrap()
                .algorithm();
            if !simd {
                assert_ne!(a64, Algorithm::Winograd, "{op:?} {input:?}");
            } else if a32 == Algorithm::Winograd {
                assert_eq!(a64, a32, "{op:?} {input:?}");
            }
            took += usize::from(a64 == Algorithm::Winograd);
        }
        // The weight gradient takes the tiles in f64 where it does in f32, and on AVX-512
        // for the dilated-like layer (bias-only phases) in f64 only.
        let (m32, m64) = (
            tconv::grad::weight_gradient_method::<f32>(&g, &o),
            tconv::grad::weight_gradient_method::<f64>(&g, &o),
        );
        // (Its model costs AVX-512's transforms there, AVX2's as portable ones.)
        let dilated = p.dilation.iter().any(|&d| d > 1) && loops == Isa::Avx512;
        if !simd {
            assert!(!m64.contains("Winograd"), "{xs:?}: {m64}");
        } else if m32.contains("Winograd") || dilated {
            assert!(m64.contains("Winograd"), "{xs:?}: {m64} ({m32} in f32)");
        }
        // The weight gradient in f64, whichever way it is taken, against the reference's.
        let (x, w) = (
            floats(&xs, 2).mapv(f64::from),
            floats(&ws, 3).mapv(f64::from),
        );
        let gy = floats(&g.user_output_shape(), 4).mapv(f64::from);
        let wanted = Wanted {
            input: false,
            weight: true,
            bias: false,
        };
        let got = tconv::conv_transpose_backward(&x, &w, &gy, &p, wanted, &o).unwrap();
        let (xv, gyv) = (x.as_slice().unwrap(), gy.as_slice().unwrap());
        let want = tconv::reference::weight_gradient(&g, xv, gyv);
        for (a, b) in got.weight.unwrap().iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-10 * (1.0 + b.abs()),
                "{xs:?}: {a} vs {b}"
            );
        }
    }
    assert!(
        !simd || took >= 6,
        "f64 plans took Winograd tiles {took} times"
    );
}
