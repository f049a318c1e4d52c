//! End-to-end tests of the built `tconv` binary.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use tconv::npy::{read_npy, to_npy_bytes, NpyArray};

mod common;

use common::*;

#[test]
fn version() {
    let o = tconv(&["--version"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("tconv "));
}

#[test]
fn demo_matches_expected_file() {
    let o = tconv(&["demo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for must in [
        "(3-2)/1+1 = 2",
        "y(0,0) = 1·1 + 2·0 + 4·0 + 5·(-1) = -4",
        "(2-1)·1+2 = 3",
        "(1,1) receives -1 from x[0,0] and 4 from x[1,1]",
        "y = [[1, 2, 0], [3, 3, -2], [0, -3, -4]]",
        "(2-1)·2+2 = 4",
        "y = [[1, 0, 2, 0], [0, -1, 0, -2], [3, 0, 4, 0], [0, -3, 0, -4]]",
        "4×9 matrix C",
        "Cᵀ · [1, 2, 3, 4] = [1, 2, 0, 3, 3, -2, 0, -3, -4]",
    ] {
        assert!(out.contains(must), "demo lacks {must:?}");
    }
    expect_file("demo.txt", &out);
}

#[test]
fn explain_transcripts() {
    let o = tconv(&[
        "explain",
        "conv-transpose",
        "--input",
        "[[1,2],[3,4]]",
        "--weight",
        "[[1,2,3],[4,5,6],[7,8,9]]",
        "--stride",
        "2",
        "--padding",
        "1",
        "--output-padding",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    expect_file("explain_conv_transpose_s2_p1_op1.txt", &stdout(&o));
    let o = tconv(&[
        "explain",
        "conv",
        "--input",
        "[1,2,3,4,5]",
        "--weight",
        "[1,0,-1]",
        "--padding",
        "1",
        "--stride",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    expect_file("explain_conv_1d_s2_p1.txt", &stdout(&o));
    let o = tconv(&[
        "explain",
        "conv-transpose",
        "--input",
        "[1,2,3]",
        "--weight",
        "[1,1,1]",
        "--dilation",
        "2",
        "--stride",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("(3-1)·2 - 0 - 0 + 2·(3-1) + 0 + 1 = 9"));
}

#[test]
fn explain_refuses_large_problems_with_a_hint() {
    let big = format!("[{}]", ["[1,2,3,4,5,6,7,8,9,10]"; 10].join(","));
    let o = tconv(&[
        "explain",
        "conv-transpose",
        "--input",
        &big,
        "--weight",
        "[[1,0],[0,1]]",
    ]);
    expect_usage_error(&o, "100 steps to show, more than --max-steps 64");
    let o = tconv(&[
        "explain",
        "conv-transpose",
        "--input",
        &big,
        "--weight",
        "[[1,0],[0,1]]",
        "--max-steps",
        "100",
    ]);
    assert!(o.status.success());
}

#[test]
fn inline_compute_text_and_json() {
    let o = tconv(&[
        "conv-transpose",
        "--input",
        "[[1,2],[3,4]]",
        "--weight",
        "[[1,0],[0,-1]]",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "[[1, 2, 0], [3, 3, -2], [0, -3, -4]]");
    let o = tconv(&[
        "conv",
        "--input",
        "[[1,2,3],[4,5,6],[7,8,9]]",
        "--weight",
        "[[1,0],[0,-1]]",
    ]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("[ -4 -4 ]"));
}

fn write_npy(path: &Path, a: &ArrayD<f32>) {
    std::fs::write(path, to_npy_bytes(&a.view())).unwrap();
}

fn conformance(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tconv/tests/data/torch")
        .join(case)
}

fn case_list(v: &serde_json::Value, key: &str) -> String {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The case folders under `dir` whose number (the first four characters of the name) is a
/// multiple of `every`, with their names and `case.json`.
fn sampled_cases(dir: &Path, every: usize) -> Vec<(PathBuf, String, serde_json::Value)> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let case = entry.unwrap().path();
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let number: usize = name.get(..4).and_then(|n| n.parse().ok()).unwrap_or(1);
        if !number.is_multiple_of(every) {
            continue;
        }
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(case.join("case.json")).unwrap())
                .unwrap();
        cases.push((case, name, meta));
    }
    cases
}

/// The command and problem flags of a case: `conv` or `conv-transpose`, then stride,
/// padding, output padding (transposed only), dilation and groups.
fn problem_args(meta: &serde_json::Value) -> Vec<String> {
    let op = meta["op"].as_str().unwrap();
    let mut args: Vec<String> = vec![if op == "conv" {
        "conv"
    } else {
        "conv-transpose"
    }
    .into()];
    for (flag, key) in [
        ("--stride", "stride"),
        ("--padding", "padding"),
        ("--output-padding", "output_padding"),
        ("--dilation", "dilation"),
    ] {
        if key != "output_padding" || op != "conv" {
            args.extend([flag.to_string(), case_list(meta, key)]);
        }
    }
    args.extend(["--groups".to_string(), meta["groups"].to_string()]);
    args
}

/// `got` matches `want` in shape and within the tolerances of their dtype.
fn assert_close(
    got: &NpyArray,
    want: &NpyArray,
    what: &str,
    f32_tol: (f64, f64),
    f64_tol: (f64, f64),
) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (rtol, atol) = if want.dtype() == "float32" {
        f32_tol
    } else {
        f64_tol
    };
    for (g, w) in got.to_f64().iter().zip(want.to_f64().iter()) {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}: {g} vs {w}");
    }
}

#[test]
fn conformance_cases_end_to_end_through_npy_files() {
    let mut ran = 0;
    // Every 10th case keeps the test quick while covering 1-3-D, both ops, both dtypes.
    for (case, name, meta) in sampled_cases(&conformance(""), 10) {
        let dir = scratch(&format!("conf-{name}"));
        let out = dir.join("y.npy");
        let c = |f: &str| case.join(f).to_string_lossy().into_owned();
        let mut args = problem_args(&meta);
        args.extend([
            "--input".into(),
            c("input.npy"),
            "--weight".into(),
            c("weight.npy"),
        ]);
        if case.join("bias.npy").exists() {
            args.extend(["--bias".into(), c("bias.npy")]);
        }
        args.extend(["--output".into(), out.to_string_lossy().into_owned()]);
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = tconv(&refs);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let got = read_npy(&out).unwrap();
        let want = read_npy(case.join("expected.npy")).unwrap();
        assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
        assert_close(&got, &want, &name, (1e-4, 1e-5), (1e-10, 1e-10));
        ran += 1;
    }
    assert!(ran >= 10, "ran {ran} cases");
}

#[test]
fn the_exact_form_outside_checks_use() {
    let d = scratch("exact");
    let x = ArrayD::from_shape_fn(vec![1, 2, 3, 3], |i| {
        (i[1] * 9 + i[2] * 3 + i[3]) as f32 - 8.0
    });
    let w = ArrayD::from_shape_fn(vec![2, 3, 3, 3], |i| {
        (i[0] + i[1] + i[2] * i[3]) as f32 - 2.0
    });
    let b = ArrayD::from_shape_fn(vec![3], |i| i[0] as f32);
    write_npy(&d.join("x.npy"), &x);
    write_npy(&d.join("w.npy"), &w);
    write_npy(&d.join("b.npy"), &b);
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let o = tconv(&[
        "conv-transpose",
        "--input",
        &p("x.npy"),
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b.npy"),
        "--stride",
        "2,2",
        "--padding",
        "1,1",
        "--output-padding",
        "0,0",
        "--dilation",
        "1,1",
        "--groups",
        "1",
        "--output",
        &p("y.npy"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let y = read_npy(d.join("y.npy")).unwrap().to_f32();
    let want = tconv::reference::conv_transpose_scatter(
        &x,
        &w,
        Some(b.view().into_dimensionality().unwrap()),
        &tconv::ConvParams::new().stride(&[2]).padding(&[1]),
    )
    .unwrap();
    assert_eq!(y, want);
    // conv, same form without --output-padding; its weight (C_out=2, C_in=3) takes 3 channels.
    write_npy(
        &d.join("x3.npy"),
        &ArrayD::from_shape_fn(vec![1, 3, 5, 5], |i| (i[2] * i[3]) as f32),
    );
    write_npy(&d.join("b2.npy"), &ArrayD::from_elem(vec![2], 0.5f32));
    let o = tconv(&[
        "conv",
        "--input",
        &p("x3.npy"),
        "--weight",
        &p("w.npy"),
        "--bias",
        &p("b2.npy"),
        "--stride",
        "2,2",
        "--padding",
        "1,1",
        "--dilation",
        "1,1",
        "--groups",
        "1",
        "--output",
        &p("y2.npy"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_npy(d.join("y2.npy")).unwrap().shape(), &[1, 2, 3, 3]);
}

#[test]
fn bad_input_gives_one_line_exit_2_and_no_output_file() {
    let d = scratch("bad");
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    write_npy(&d.join("x.npy"), &ArrayD::zeros(vec![1, 6, 4, 4]));
    write_npy(&d.join("w.npy"), &ArrayD::zeros(vec![4, 2, 3, 3]));
    write_npy(&d.join("x3.npy"), &ArrayD::zeros(vec![4, 4, 4]));
    std::fs::write(d.join("junk.npy"), b"this is not numpy").unwrap();
    let mut int_npy = b"\x93NUMPY\x01\x00".to_vec();
    let h = "{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }          \n";
    int_npy.extend_from_slice(&(h.len() as u16).to_le_bytes());
    int_npy.extend_from_slice(h.as_bytes());
    int_npy.extend_from_slice(&[0; 4]);
    std::fs::write(d.join("int.npy"), int_npy).unwrap();

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--input".into(),
                p("junk.npy"),
                "--weight".into(),
                p("w.npy"),
            ],
            "not a .npy file",
        ),
        (
            vec![
                "--input".into(),
                p("missing.npy"),
                "--weight".into(),
                p("w.npy"),
            ],
            "missing.npy",
        ),
        (
            vec![
                "--input".into(),
                p("int.npy"),
                "--weight".into(),
                p("w.npy"),
            ],
            "unsupported dtype '<i4'",
        ),
        (
            vec!["--input".into(), p("x.npy"), "--weight".into(), p("w.npy")],
            "input has 6 channels, weight expects 4",
        ),
        (
            vec!["--input".into(), p("x.npy"), "--weight".into(), p("x3.npy")],
            "input has 4 dimensions",
        ),
        (
            vec![
                "--input".into(),
                p("x3.npy"),
                "--weight".into(),
                p("w.npy"),
                "--stride".into(),
                "0".into(),
            ],
            "stride is 0 on axis 0",
        ),
        (
            vec![
                "--input".into(),
                p("x3.npy"),
                "--weight".into(),
                p("w.npy"),
                "--stride".into(),
                "2".into(),
                "--output-padding".into(),
                "2".into(),
            ],
            "output_padding 2 on axis 0 must be smaller than the stride (2)",
        ),
        (
            vec![
                "--input".into(),
                p("x3.npy"),
                "--weight".into(),
                p("w.npy"),
                "--padding".into(),
                "3".into(),
            ],
            "padding 3+3 removes the whole output of length 6",
        ),
        (
            vec![
                "--input".into(),
                p("x3.npy"),
                "--weight".into(),
                p("w.npy"),
                "--stride".into(),
                "a".into(),
            ],
            "'a' is not a non-negative integer",
        ),
        (
            vec![
                "--input".into(),
                p("x3.npy"),
                "--weight".into(),
                p("w.npy"),
                "--bogus".into(),
            ],
            "unexpected argument '--bogus'",
        ),
        (
            vec![
                "--input".into(),
                p("x3.npy"),
                "--weight".into(),
                p("w.npy"),
                "--output-size".into(),
                "9,9".into(),
            ],
            "requested an output size of 9 on axis 0, but valid sizes range from 6 to 6",
        ),
        (
            // ONNX's output_shape has only a least size (its pads follow from it).
            vec![
                "--input".into(),
                p("x3.npy"),
                "--weight".into(),
                p("w.npy"),
                "--output-shape".into(),
                "0,3".into(),
            ],
            "requested an output size of 0 on axis 0, but an output size must be at least 1",
        ),
        (
            vec![
                "--input".into(),
                "[[1,2],[3]]".into(),
                "--weight".into(),
                "[[1]]".into(),
            ],
            "ragged nested list",
        ),
    ];
    for (i, (args, needle)) in cases.into_iter().enumerate() {
        let out = d.join(format!("out{i}.npy"));
        let mut full = vec!["conv-transpose".to_string()];
        full.extend(args);
        full.extend(["--output".into(), out.to_string_lossy().into_owned()]);
        let refs: Vec<&str> = full.iter().map(|s| s.as_str()).collect();
        expect_usage_error(&tconv(&refs), needle);
        assert!(!out.exists(), "case {i} created {}", out.display());
    }
    // A failing run leaves an existing output file untouched, and leaves no temporary file.
    std::fs::write(d.join("keep.npy"), b"precious").unwrap();
    let o = tconv(&[
        "conv-transpose",
        "--input",
        &p("x.npy"),
        "--weight",
        &p("w.npy"),
        "--output",
        &p("keep.npy"),
    ]);
    expect_usage_error(&o, "input has 6 channels");
    assert_eq!(std::fs::read(d.join("keep.npy")).unwrap(), b"precious");
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn refuses_to_overwrite_an_input() {
    let d = scratch("overwrite");
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let x = ArrayD::from_elem(vec![1, 1, 2, 2], 1.0f32);
    write_npy(&d.join("x.npy"), &x);
    write_npy(
        &d.join("w.npy"),
        &ArrayD::from_elem(vec![1, 1, 2, 2], 1.0f32),
    );
    let before = std::fs::read(d.join("x.npy")).unwrap();
    let o = tconv(&[
        "conv-transpose",
        "--input",
        &p("x.npy"),
        "--weight",
        &p("w.npy"),
        "--output",
        &p("x.npy"),
    ]);
    expect_usage_error(&o, "refusing to write the output over the input file");
    assert_eq!(std::fs::read(d.join("x.npy")).unwrap(), before);
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        vec!["demo"],
        vec!["conv"],
        vec!["conv-transpose"],
        vec!["explain", "conv"],
        vec!["explain", "conv-transpose"],
        vec!["shape"],
        vec!["bench"],
        vec!["plan"],
        vec!["overlap"],
        vec!["port"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let o = tconv(&args);
        assert!(o.status.success(), "{cmd:?}");
        assert!(
            stdout(&o).contains("Example"),
            "{cmd:?} help lacks an example"
        );
    }
}

#[test]
fn shape_calculator() {
    let o = tconv(&[
        "shape",
        "--input",
        "4,4",
        "--kernel",
        "4",
        "--stride",
        "2",
        "--padding",
        "1",
        "--want",
        "8,9",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("axis 0: (4-1)·2 - 1 - 1 + 1·(4-1) + 0 + 1 = 8"),
        "{s}"
    );
    assert!(
        s.contains("axis 0: floor((4 + 1 + 1 - 1·(4-1) - 1) / 2) + 1 = 2"),
        "{s}"
    );
    assert!(s.contains("axis 0: padding 1 with output_padding 0"), "{s}");
    assert!(s.contains("axis 1: padding 1 with output_padding 1"), "{s}");
    assert!(s.contains("SAME_UPPER conv [2, 2]"), "{s}");
    assert!(
        s.contains("conv_transpose [8, 8] (pads begin [1, 1], end [1, 1])"),
        "{s}"
    );
    // The frameworks' SAME / VALID in PyTorch's terms (their goldens check the mapping).
    assert!(
        s.contains("TF/Keras VALID [10, 10] (pads begin [0, 0], end [0, 0], output_padding [0, 0]"),
        "{s}"
    );
    assert!(
        s.contains("JAX SAME       [8, 8] (pads begin [1, 1], end [1, 1], output_padding [0, 0]; weight: the JAX kernel flipped)"),
        "{s}"
    );
}

#[test]
fn gradients_end_to_end_through_npy_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tconv/tests/data/torch-grad");
    let mut ran = 0;
    for (case, name, meta) in sampled_cases(&root, 8) {
        let d = scratch(&format!("grad-{name}"));
        let p = |f: &str| d.join(f).to_string_lossy().into_owned();
        let c = |f: &str| case.join(f).to_string_lossy().into_owned();
        let mut args = problem_args(&meta);
        for (flag, value) in [
            ("--input", c("input.npy")),
            ("--weight", c("weight.npy")),
            ("--grad-output", c("grad_output.npy")),
            ("--grad-input", p("gx.npy")),
            ("--grad-weight", p("gw.npy")),
            ("--grad-bias", p("gb.npy")),
        ] {
            args.extend([flag.into(), value]);
        }
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = tconv(&refs);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        for (got, want) in [
            ("gx.npy", "expected_grad_input.npy"),
            ("gw.npy", "expected_grad_weight.npy"),
        ] {
            let g = read_npy(d.join(got)).unwrap();
            let w = read_npy(case.join(want)).unwrap();
            assert_close(
                &g,
                &w,
                &format!("{name} {got}"),
                (1e-4, 1e-4),
                (1e-9, 1e-10),
            );
        }
        assert!(d.join("gb.npy").exists());
        ran += 1;
    }
    assert!(ran >= 8, "ran {ran}");
}

#[test]
fn gradient_errors_write_nothing() {
    let d = scratch("grad-bad");
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    write_npy(&d.join("x.npy"), &ArrayD::zeros(vec![1, 2, 3, 3]));
    write_npy(&d.join("w.npy"), &ArrayD::zeros(vec![2, 2, 2, 2]));
    write_npy(&d.join("gy_bad.npy"), &ArrayD::zeros(vec![1, 2, 5, 5]));
    let o = tconv(&[
        "conv-transpose",
        "--input",
        &p("x.npy"),
        "--weight",
        &p("w.npy"),
        "--grad-output",
        &p("gy_bad.npy"),
        "--grad-input",
        &p("gx.npy"),
        "--grad-weight",
        &p("gw.npy"),
    ]);
    expect_usage_error(
        &o,
        "grad_output has shape [1, 2, 5, 5], expected [1, 2, 4, 4]",
    );
    assert!(!d.join("gx.npy").exists() && !d.join("gw.npy").exists());
    let o = tconv(&[
        "conv-transpose",
        "--input",
        &p("x.npy"),
        "--weight",
        &p("w.npy"),
        "--grad-input",
        &p("gx.npy"),
    ]);
    expect_usage_error(&o, "--grad-output");
    let o = tconv(&[
        "conv-transpose",
        "--input",
        &p("x.npy"),
        "--weight",
        &p("w.npy"),
        "--grad-output",
        &p("gy_bad.npy"),
        "--grad-input",
        &p("x.npy"),
    ]);
    expect_usage_error(&o, "refusing to write the output over the input file");
}

#[test]
fn bench_and_plan_report_what_outside_checks_read() {
    let o = tconv(&[
        "bench",
        "--layer",
        "dcgan4",
        "--threads",
        "2",
        "--json",
        "--runs",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    for key in [
        "name",
        "threads",
        "gflop",
        "median_ms",
        "min_ms",
        "gflops_per_s",
        "algorithm",
    ] {
        assert!(line.get(key).is_some(), "missing {key}: {line}");
    }
    assert_eq!(line["name"], "dcgan4");
    assert_eq!(line["threads"], 2);
    // Planning a fresh plan and, for a Layer, a new input shape: positive times.
    for key in ["plan_ms", "replan_ms"] {
        assert!(line[key].as_f64().is_some_and(|t| t > 0.0), "{key}: {line}");
    }
    // "% peak" divides by the FMA peak measured on this machine (or given), per core.
    let peak = line["peak_gflops_per_core"].as_f64().unwrap();
    let share = line["percent_of_peak"].as_f64().unwrap();
    let rate = line["gflops_per_s"].as_f64().unwrap();
    assert!(
        peak > 0.0 && (share - 100.0 * rate / (2.0 * peak)).abs() < 1e-6 * share,
        "{line}"
    );
    let o = tconv(&[
        "bench",
        "--layer",
        "dcgan4",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--peak-gflops",
        "50",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("FMA peak: 50.0 GFLOP/s per core"),
        "{}",
        stdout(&o)
    );
    let o = tconv(&["bench", "--layer", "dcgan4", "--peak-gflops=-3"]);
    expect_usage_error(&o, "--peak-gflops must be a positive number");
    for bad in ["--warmup-ms=-1", "--warmup-ms=NaN", "--warmup-ms=1e9"] {
        let o = tconv(&["bench", "--layer", "dcgan4", bad]);
        expect_usage_error(
            &o,
            "--warmup-ms must be a number of milliseconds from 0 to 60000",
        );
    }
    // float64: the same layer in f64, both passes, its peak half the float32 one.
    let o = tconv(&[
        "bench",
        "--layer",
        "dcgan4",
        "--dtype",
        "float64",
        "--pass",
        "both",
        "--json",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--peak-gflops",
        "50",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "dcgan4",
            "dcgan4:grad_input",
            "dcgan4:grad_weight",
            "dcgan4:backward"
        ]
    );
    assert!(rows.iter().all(|r| r["dtype"] == "float64"), "{rows:?}");
    let o = tconv(&["bench", "--layer", "dcgan4", "--dtype", "float16"]);
    expect_usage_error(&o, "float16");
    let o = tconv(&[
        "bench",
        "--input",
        "1,8,4,4",
        "--c-out",
        "8",
        "--kernel",
        "4",
        "--stride",
        "2",
        "--padding",
        "1",
        "--pass",
        "both",
        "--kernels",
        "inplace",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = stdout(&o)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "custom",
            "custom:grad_input",
            "custom:grad_weight",
            "custom:backward"
        ]
    );
    let o = tconv(&["bench", "--layer", "nosuch"]);
    expect_usage_error(&o, "no layer named 'nosuch'");
    // Shapes whose tensors would pass the size limit are refused before anything is
    // allocated (these aborted on a failed 40 GB and 120 GB allocation).
    let o = tconv(&[
        "bench",
        "--input",
        "1,100000,1,1",
        "--c-out",
        "100000",
        "--kernel",
        "1",
        "--runs",
        "1",
    ]);
    expect_usage_error(
        &o,
        "weight would have 10000000000 elements, more than the limit",
    );
    let o = tconv(&[
        "bench",
        "--input",
        "1,3,100000,100000",
        "--c-out",
        "64",
        "--kernel",
        "3",
        "--runs",
        "1",
    ]);
    expect_usage_error(&o, "would have 640025600256 elements, more than the limit");
    let o = tconv(&["plan", "--layer", "dcgan2", "--threads", "2"]);
    assert!(o.status.success());
    let s = stdout(&o);
    assert!(s.contains("threads:     2"), "{s}");
    // The portable kernels (TCONV_ISA=scalar, or a CPU without AVX2) never take the tiles.
    if tconv::fast::Isa::detect() != tconv::fast::Isa::Scalar {
        assert!(
            s.contains("algorithm:   winograd") && s.contains("F(2x2,2x2) over 4 phases"),
            "{s}"
        );
    }
}

/// `--tune` on `tconv plan` and `tconv bench`: the plan says which tile it measured
/// fastest, lists every tile it measured with its time, and runs that tile; the bench row
/// runs one of those tiles.
#[test]
fn tuned_plans_say_what_they_measured() {
    let layer = [
        "--input", "2,16,5,9", "--c-out", "20", "--kernel", "2", "--stride", "2",
    ];
    let mut args = vec!["plan", "--threads", "1", "--tune"];
    args.extend(layer);
    let o = tconv(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let why = out
        .lines()
        .find(|l| l.starts_with("why:"))
        .unwrap_or_default();
    let tile = why
        .split("tuned: the ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .unwrap_or_else(|| panic!("{out}"));
    let (mr, v) = tile.split_once('x').unwrap_or_else(|| panic!("{why}"));
    let kernel = format!("tile of {mr} output channels x {v} vectors");
    assert!(out.contains(&kernel), "{out}");
    // Each tile measured, with its milliseconds: "6x4 0.123, 12x2 0.150, ..., 1x4 0.161;"
    // (the last before a semicolon: a tuning that took it failed this test before).
    let measured: Vec<&str> = why
        .split(&[' ', ',', ';'][..])
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0].contains('x') && w[1].parse::<f64>().is_ok_and(|ms| ms > 0.0))
        .map(|w| w[0])
        .collect();
    assert!(measured.len() > 1 && measured.contains(&tile), "{why}");
    let mut args = vec!["bench", "--threads", "1", "--tune", "--json", "--runs", "1"];
    args.extend(layer);
    let o = tconv(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let row: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    let label = row["algorithm"].as_str().unwrap_or_default();
    let ran = label.rsplit(' ').next().unwrap_or_default();
    assert!(measured.contains(&ran), "{label} not among {measured:?}");
}

/// Output to a closed pipe (`tconv … | head -c 10`) ends the command quietly, as for other
/// Unix tools: no panic message, killed by SIGPIPE.
#[cfg(unix)]
#[test]
fn closed_stdout_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    // About 3.5 MB of steps, far more than a pipe buffers.
    let x: Vec<String> = (0..20)
        .map(|i| {
            let row: Vec<String> = (0..20).map(|j| (i * 20 + j).to_string()).collect();
            format!("[{}]", row.join(","))
        })
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tconv"))
        .args(["explain", "conv-transpose", "--input"])
        .arg(format!("[{}]", x.join(",")))
        .args(["--weight", "[[1,0,1],[0,-1,0],[1,1,1]]", "--stride", "2"])
        .args(["--max-steps", "400"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    // Killed by SIGPIPE (13 on Linux and the BSDs).
    assert_eq!(o.status.signal(), Some(13), "{:?}: {err}", o.status);
}

/// Framework goldens (`tconv/tests/data/frameworks`) and the CLI flags of their calls.
const FRAMEWORK_CALLS: [(&str, &str); 10] = [
    ("tf_t2d_same_k3s2_even", "conv-transpose --convention tf --framework-padding same --stride 2 --output-size 8,10"),
    ("tf_t2d_nchw", "conv-transpose --convention tf --channels-first --framework-padding SAME --stride 2 --output-size 8,7"),
    ("keras_t2d_valid_op", "conv-transpose --convention tf --framework-padding valid --stride 2 --output-padding 1,0"),
    ("keras_t2d_same_op", "conv-transpose --convention tf --framework-padding same --stride 2 --output-padding 0,1"),
    ("jax_t2d_explicit_crop", "conv-transpose --convention jax --framework-padding=-1:1,0:-2 --stride 2"),
    ("jax_t2d_transpose_kernel", "conv-transpose --convention jax-transpose-kernel --framework-padding same --stride 2"),
    ("jax_t3d_same", "conv-transpose --convention jax --framework-padding same --stride 2,1,2"),
    // TensorFlow's grouped conv: the group count implied by the kernel, as TensorFlow does.
    ("tf_c2d_groups", "conv --convention tf --framework-padding same"),
    ("tf_c2d_explicit", "conv --convention tf --framework-padding 1:0,2:1 --stride 2"),
    ("jax_c2d_explicit_groups", "conv --convention jax --framework-padding 1:2,0:1 --stride 2,1 --groups 2"),
];

/// `--convention tf|jax|jax-transpose-kernel`: the frameworks' own outputs and gradients
/// (`tconv/tests/data/frameworks`) through .npy files in their layouts, and the flags that
/// do not go together refused with nothing written.
#[test]
fn framework_conventions_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tconv/tests/data/frameworks");
    let d = scratch("conventions");
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    for (name, call) in FRAMEWORK_CALLS {
        let case = root.join(name);
        let c = |f: &str| case.join(f).to_string_lossy().into_owned();
        let mut args: Vec<String> = call.split_whitespace().map(String::from).collect();
        args.extend(["--input".into(), c("x.npy"), "--weight".into(), c("w.npy")]);
        if case.join("b.npy").exists() {
            args.extend(["--bias".into(), c("b.npy")]);
        }
        args.extend(["--output".into(), p(&format!("{name}-y.npy"))]);
        let with_grads = case.join("gy.npy").exists();
        if with_grads {
            for (flag, file) in [
                ("--grad-output", c("gy.npy")),
                ("--grad-input", p(&format!("{name}-gx.npy"))),
                ("--grad-weight", p(&format!("{name}-gw.npy"))),
            ] {
                args.extend([flag.into(), file]);
            }
        }
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = tconv(&refs);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let mut compared = vec![("y", "y")];
        if with_grads {
            compared.extend([("gx", "gx"), ("gw", "gw")]);
        }
        for (got, want) in compared {
            let g = read_npy(d.join(format!("{name}-{got}.npy"))).unwrap();
            let w = read_npy(case.join(format!("{want}.npy"))).unwrap();
            assert_close(
                &g,
                &w,
                &format!("{name} {got}"),
                (1e-4, 1e-4),
                (1e-9, 1e-10),
            );
        }
    }
    let case = root.join("tf_t2d_same_k3s2_even");
    let c = |f: &str| case.join(f).to_string_lossy().into_owned();
    let (x, w, y) = (c("x.npy"), c("w.npy"), p("refused.npy"));
    let base = [
        "conv-transpose",
        "--input",
        &x,
        "--weight",
        &w,
        "--output",
        &y,
    ];
    for (extra, needle) in [
        (
            &[
                "--convention",
                "tf",
                "--framework-padding",
                "same",
                "--stride",
                "2",
                "--output-size",
                "9,10",
            ][..],
            "requested an output size of 9 on axis 0, but valid sizes range from 7 to 8",
        ),
        (
            &[
                "--convention",
                "tf",
                "--framework-padding",
                "same",
                "--padding",
                "1",
            ][..],
            "--padding is PyTorch's / ONNX's padding",
        ),
        (
            &[
                "--convention",
                "jax",
                "--framework-padding",
                "same",
                "--output-padding",
                "1",
            ][..],
            "--output-padding is Keras'",
        ),
        (
            &[
                "--convention",
                "jax",
                "--framework-padding",
                "5:-40,0:0",
                "--stride",
                "2",
            ][..],
            "jax padding (5, -40) on spatial axis 0: leaves the output no position",
        ),
        (
            &["--convention", "tf", "--framework-padding", "1:x"][..],
            "'x' is not an integer",
        ),
        (&["--convention", "tf"][..], "--framework-padding"),
        (&["--framework-padding", "same"][..], "--convention"),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let o = tconv(&args);
        expect_usage_error(&o, needle);
        assert!(
            !d.join("refused.npy").exists(),
            "{extra:?} wrote its output"
        );
    }
}

/// `tconv port`: for framework goldens, the kernel it converts and the tconv flags it prints,
/// run in PyTorch's layouts on the permuted input, give the framework's output; and its
/// refusals. (`bench/port_check.py` runs the printed PyTorch calls through torch.)
#[test]
fn port_prints_what_reproduces_the_framework() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tconv/tests/data/frameworks");
    let d = scratch("port");
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    for (name, call) in FRAMEWORK_CALLS {
        let flags: Vec<&str> = call.split_whitespace().collect();
        let channels_first = flags.contains(&"--channels-first");
        let case = root.join(name);
        let c = |f: &str| case.join(f).to_string_lossy().into_owned();
        let x = read_npy(case.join("x.npy")).unwrap().to_f32();
        let r = x.ndim();
        let shape = x
            .shape()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let (w_out, x_t, y_t) = (
            p(&format!("{name}-w.npy")),
            p(&format!("{name}-x.npy")),
            p(&format!("{name}-y.npy")),
        );
        let mut args = vec!["port"];
        args.extend_from_slice(&flags);
        let weight = c("w.npy");
        args.extend([
            "--input-shape",
            &shape,
            "--weight",
            &weight,
            "--weight-out",
            &w_out,
        ]);
        let o = tconv(&args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let text = stdout(&o);
        // The input in PyTorch's layout, as the first line says.
        let to_first: Vec<usize> = if channels_first {
            (0..r).collect()
        } else {
            [0, r - 1].into_iter().chain(1..r - 1).collect()
        };
        write_npy(
            &d.join(format!("{name}-x.npy")),
            &x.view()
                .permuted_axes(to_first)
                .as_standard_layout()
                .into_owned(),
        );
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("tconv:"))
            .unwrap_or_else(|| panic!("{name}: no tconv line in\n{text}"));
        let mut run: Vec<String> = line.split_whitespace().skip(1).map(String::from).collect();
        run.extend([
            "--input".into(),
            x_t.clone(),
            "--weight".into(),
            w_out.clone(),
            "--output".into(),
            y_t.clone(),
        ]);
        if case.join("b.npy").exists() {
            run.extend(["--bias".into(), c("b.npy")]);
        }
        let refs: Vec<&str> = run.iter().map(|s| s.as_str()).collect();
        let o = tconv(&refs);
        assert!(o.status.success(), "{name}: {line}: {}", stderr(&o));
        let y = read_npy(&y_t).unwrap().to_f32();
        let back: Vec<usize> = if channels_first {
            (0..r).collect()
        } else {
            [0].into_iter().chain(2..r).chain([1]).collect()
        };
        let y = NpyArray::F32(
            y.view()
                .permuted_axes(back)
                .as_standard_layout()
                .into_owned(),
        );
        let want = read_npy(case.join("y.npy")).unwrap();
        assert_close(
            &y,
            &want,
            &format!("{name} via `{line}`"),
            (1e-4, 1e-4),
            (1e-9, 1e-10),
        );
    }
    // The PyTorch call for two layers people port (their goldens check the mapping).
    let o = tconv(&[
        "port",
        "conv-transpose",
        "--convention",
        "jax",
        "--framework-padding",
        "same",
        "--stride",
        "2",
        "--input-shape",
        "8,16,16,64",
        "--kernel-shape",
        "4,4,64,32",
    ]);
    let text = stdout(&o);
    assert!(
        text.contains(
            "w.permute(2, 3, 0, 1).flip(2, 3): (64, 32, 4, 4) (JAX uses the kernel unflipped)"
        ),
        "{text}"
    );
    assert!(text.contains("PyTorch: F.conv_transpose2d(x, w, b, stride=(2, 2), dilation=(1, 1), groups=1, padding=(1, 1), output_padding=(0, 0))\n"), "{text}");
    let o = tconv(&[
        "port",
        "conv",
        "--convention",
        "tf",
        "--framework-padding",
        "same",
        "--stride",
        "2",
        "--input-shape",
        "1,224,224,3",
        "--kernel-shape",
        "7,7,3,64",
    ]);
    let text = stdout(&o);
    assert!(text.contains("PyTorch: F.conv2d(F.pad(x, (2, 3, 2, 3)), w, b, stride=(2, 2), dilation=(1, 1), groups=1)"), "{text}");
    assert!(
        text.contains("y.permute(0, 2, 3, 1): (1, 112, 112, 64)"),
        "{text}"
    );
    // Refusals: one line, exit 2, nothing written.
    let w = root
        .join("jax_t2d_same_k3s2/w.npy")
        .to_string_lossy()
        .into_owned();
    let base = [
        "port",
        "conv-transpose",
        "--convention",
        "jax",
        "--framework-padding",
        "same",
        "--input-shape",
        "2,4,5,3",
    ];
    for (extra, needle) in [
        (&[][..], "--weight FILE or its shape as --kernel-shape"),
        (
            &["--weight", &w, "--weight-out", &w][..],
            "refusing to write the output over the input file",
        ),
        (
            &["--kernel-shape", "3,3,3,2", "--weight-out", &p("never.npy")][..],
            "--weight",
        ),
        (
            &["--kernel-shape", "3,3,3,2", "--output-size", "8,10"][..],
            "jax has no output_shape",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        expect_usage_error(&tconv(&args), needle);
    }
    assert!(!d.join("never.npy").exists());
}

/// JAX's padding beyond PyTorch's parameters through the CLI: `--convention jax` computes
/// it (a transposed conv with zeros before and after its result, a conv cropping its input),
/// and `tconv port` prints the `F.pad` / slice and names the `--convention` call.
#[test]
fn jax_padding_beyond_pytorch_on_the_command_line() {
    let d = scratch("jax-beyond");
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let arr = |shape: &[usize], v: &[f32]| {
        ArrayD::from_shape_vec(ndarray::IxDyn(shape), v.to_vec()).unwrap()
    };
    write_npy(&d.join("x.npy"), &arr(&[1, 3, 1], &[1., 2., 3.]));
    write_npy(&d.join("w.npy"), &arr(&[2, 1, 1], &[1., 10.]));
    write_npy(&d.join("x5.npy"), &arr(&[1, 5, 1], &[1., 2., 3., 4., 5.]));
    // `tconv OP --convention jax --framework-padding=PADS --stride 2` on INPUT and w.npy,
    // into OUT.
    let jax = |op: &str, pads: &str, input: &str, out: &str| {
        let pads = format!("--framework-padding={pads}");
        let (input, w, out) = (p(input), p("w.npy"), p(out));
        let args = ["--convention", "jax", &pads, "--stride", "2"];
        let files = ["--input", &input, "--weight", &w, "--output", &out];
        tconv(&[&[op][..], &args, &files].concat())
    };
    // The same call through `tconv port`, for an input of shape `shape`.
    let port = |op: &str, pads: &str, shape: &str| {
        let pads = format!("--framework-padding={pads}");
        let args = ["port", op, "--convention", "jax", &pads, "--stride", "2"];
        let o = tconv(
            &[
                &args[..],
                &["--input-shape", shape, "--kernel-shape", "2,1,1"],
            ]
            .concat(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let result = |op: &str, pads: &str, input: &str| {
        let o = jax(op, pads, input, "y.npy");
        assert!(o.status.success(), "{}", stderr(&o));
        read_npy(d.join("y.npy")).unwrap().to_f32()
    };
    // [1, 0, 2, 0, 3] padded by (3, 4), correlated with [1, 10].
    let want = [0., 0., 10., 1., 20., 2., 30., 3., 0., 0., 0.];
    assert_eq!(
        result("conv-transpose", "3:4", "x.npy"),
        arr(&[1, 11, 1], &want)
    );
    // [1, 2, 3, 4, 5] padded by (-1, 1): [2, 3, 4, 5, 0] at stride 2.
    assert_eq!(
        result("conv", "-1:1", "x5.npy"),
        arr(&[1, 2, 1], &[32., 54.])
    );
    let text = port("conv-transpose", "3:4", "1,3,1");
    assert!(
        text.contains("PyTorch: F.pad(F.conv_transpose1d(x, w, b,"),
        "{text}"
    );
    assert!(text.contains("), (2, 3))\n"), "{text}");
    assert!(text.contains("tconv:   --convention jax"), "{text}");
    let text = port("conv", "-1:1", "1,5,1");
    assert!(
        text.contains("F.conv1d(F.pad(x[:, :, 1:5], (0, 1)), w, b,"),
        "{text}"
    );
    // Zeros padded far beyond the kernel: refused by their size, no file.
    let o = jax("conv-transpose", "1099511627776:0", "x.npy", "huge.npy");
    expect_usage_error(&o, "more than the limit");
    assert!(!d.join("huge.npy").exists());
}
