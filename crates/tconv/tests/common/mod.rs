//! Helpers shared by the integration tests: conformance case loading and comparison.
#![allow(dead_code)]

pub mod gen;

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use serde_json::Value;
use tconv::npy::{read_npy, NpyArray};
use tconv::{ConvParams, Op, OutputSize, Padding};

/// Folder of the versioned conformance data.
pub fn data_dir(suite: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(suite)
}

/// Case folders of a suite, sorted.
pub fn cases(suite: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir(suite))
        .expect("conformance data folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("case.json").exists())
        .collect();
    v.sort();
    v
}

pub fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read json")).expect("parse json")
}

pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_u64().expect("integer") as usize)
                .collect()
        })
        .unwrap_or_default()
}

pub fn npy(path: &Path) -> NpyArray {
    read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Element-wise `|got - want| <= atol + rtol*|want|`, with the worst offender on failure.
pub fn assert_close(name: &str, got: &ArrayD<f64>, want: &ArrayD<f64>, rtol: f64, atol: f64) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    let mut worst = (0.0f64, 0usize);
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst.0 || g.is_nan() {
            worst = (excess.max(f64::MIN_POSITIVE), i);
        }
    }
    assert!(
        worst.0 <= 0.0,
        "{name}: element {} off by more than tolerance ({})",
        worst.1,
        worst.0
    );
}

/// ONNX case attributes → (op, params).
pub fn onnx_params(case: &Value) -> (Op, ConvParams) {
    let op = match case["op"].as_str() {
        Some("Conv") => Op::Conv,
        Some("ConvTranspose") => Op::ConvTranspose,
        other => panic!("unknown op {other:?}"),
    };
    let a = &case["attributes"];
    let mut p = ConvParams::new()
        .stride(&usizes(&a["strides"]))
        .dilation(&usizes(&a["dilations"]));
    p.groups = a["group"].as_u64().unwrap_or(1) as usize;
    p.output_padding = usizes(&a["output_padding"]);
    if let Some(pads) = a.get("pads") {
        p.padding = Padding::from_onnx_pads(&usizes(pads)).expect("even pads");
    }
    match a["auto_pad"].as_str() {
        None | Some("NOTSET") => {}
        Some("SAME_UPPER") => p.padding = Padding::SameUpper,
        Some("SAME_LOWER") => p.padding = Padding::SameLower,
        Some("VALID") => p.padding = Padding::Valid,
        Some(other) => panic!("unknown auto_pad {other}"),
    }
    if let Some(ks) = a.get("kernel_shape") {
        p.kernel_shape = Some(usizes(ks));
    }
    if let Some(os) = a.get("output_shape") {
        p.output_size = Some(OutputSize::Onnx(usizes(os)));
    }
    (op, p)
}

/// PyTorch golden case → (op, params).
pub fn torch_params(case: &Value) -> (Op, ConvParams) {
    let op = match case["op"].as_str() {
        Some("conv") => Op::Conv,
        Some("conv_transpose") => Op::ConvTranspose,
        other => panic!("unknown op {other:?}"),
    };
    let mut p = ConvParams::new()
        .stride(&usizes(&case["stride"]))
        .dilation(&usizes(&case["dilation"]))
        .padding(&usizes(&case["padding"]))
        .groups(case["groups"].as_u64().unwrap_or(1) as usize);
    if op == Op::ConvTranspose {
        p.output_padding = usizes(&case["output_padding"]);
    }
    (op, p)
}
