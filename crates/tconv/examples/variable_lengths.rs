//! A vocoder-style upsampler run on clips of changing length: a fresh `Plan` per call
//! against one `Layer`, which plans each new length without packing its weight again.
//!
//! `cargo run --release --example variable_lengths [calls]`

use std::time::Instant;

use ndarray::{Array3, ArrayD, IxDyn};
use tconv::{ConvParams, Layer, Op, Plan, PlanOptions};

fn main() -> tconv::Result<()> {
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(24);
    // HiFi-GAN's first upsampler: 512 -> 256 channels, kernel 16, stride 8.
    let (c_in, c_out, k, s) = (512, 256, 16, 8);
    let w = ArrayD::from_shape_fn(IxDyn(&[c_in, c_out, k]), |i| {
        ((i[0] * 7 + i[1] * 3 + i[2]) % 17) as f32 / 17.0 - 0.5
    });
    let params = ConvParams::new().stride(&[s]).padding(&[(k - s) / 2]);
    let options = PlanOptions::default();
    let layer = Layer::new(Op::ConvTranspose, &w, None, &params, &options)?;

    // Clip lengths (input frames) that keep changing, some seen before.
    let lengths: Vec<usize> = (0..calls).map(|i| 64 + (i * 37) % 97).collect();
    let (mut fresh_ms, mut layer_ms) = (0.0, 0.0);
    for (i, &len) in lengths.iter().enumerate() {
        let x = Array3::from_shape_fn((1, c_in, len), |(_, c, t)| {
            ((c * 5 + t * 11 + i) % 13) as f32 / 13.0 - 0.5
        });
        let start = Instant::now();
        let plan = Plan::new(Op::ConvTranspose, x.shape(), &w, None, &params, &options)?;
        let want = plan.execute(&x, None)?;
        fresh_ms += start.elapsed().as_secs_f64() * 1e3;

        let start = Instant::now();
        let got = layer.forward(&x)?;
        layer_ms += start.elapsed().as_secs_f64() * 1e3;
        assert_eq!(got, want, "the layer gives the fresh plan's bits");
        assert_eq!(got.shape(), &[1, c_out, len * s]);
    }
    println!(
        "{calls} clips of {}-{} frames through a {c_in}->{c_out} kernel-{k} stride-{s} upsampler",
        lengths.iter().min().unwrap_or(&0),
        lengths.iter().max().unwrap_or(&0)
    );
    println!(
        "  a fresh plan per call: {fresh_ms:8.1} ms ({:.2} ms a call)",
        fresh_ms / calls.max(1) as f64
    );
    println!(
        "  one Layer:             {layer_ms:8.1} ms ({:.2} ms a call; {} packing(s) of its weight held, {:.1} MB)",
        layer_ms / calls.max(1) as f64,
        layer.packings(),
        layer.packed_bytes() as f64 / 1e6
    );
    Ok(())
}
