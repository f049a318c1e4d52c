//! Learn an unknown transposed-convolution kernel by gradient descent.
//!
//! A "teacher" 4×4, stride-2, padding-1 upsampling layer (the bilinear kernel plus a
//! sharpening twist, so it is not symmetric) maps random 8×8 images to 16×16 ones. A
//! "student" starts from zeros and follows the gradient of the mean squared error, computed
//! by `tconv::conv_transpose_backward`. Because the layer is linear in its kernel, plain
//! gradient descent recovers it; the run stops when every weight is within 1e-6.
//!
//! `cargo run --release --example learn_kernel`

use ndarray::{Array4, ArrayD};
use tconv::{conv_transpose, conv_transpose_backward, ConvParams, PlanOptions, Wanted};

/// The kernel to discover: bilinear upsampling weights, skewed to break symmetry.
pub fn teacher() -> ArrayD<f64> {
    let b = [0.25, 0.75, 0.75, 0.25];
    Array4::from_shape_fn((1, 1, 4, 4), |(_, _, i, j)| {
        b[i] * b[j] + 0.05 * (i as f64 - j as f64)
    })
    .into_dyn()
}

/// Deterministic inputs in [-1, 1).
fn images(batch: usize, seed: u64) -> ArrayD<f64> {
    let mut s = seed | 1;
    ArrayD::from_shape_fn(vec![batch, 1, 8, 8], |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    })
}

/// The outcome of a training run.
pub struct Trained {
    /// Steps taken.
    pub steps: usize,
    /// Mean squared error at the end.
    pub loss: f64,
    /// Largest |learned - true| weight difference.
    pub error: f64,
    /// The learned kernel.
    pub kernel: ArrayD<f64>,
}

/// Train for at most `steps` steps, stopping once every weight is within 1e-6 of the
/// teacher's. `report` is called with (step, loss) every 25 steps.
pub fn train(steps: usize, mut report: impl FnMut(usize, f64)) -> Trained {
    let params = ConvParams::new().stride(&[2]).padding(&[1]);
    let truth = teacher();
    let x = images(16, 7);
    let target = conv_transpose(&x, &truth, None, &params).expect("valid layer");
    let mut w = ArrayD::<f64>::zeros(truth.shape());
    let lr = 0.5;
    let n = target.len() as f64;
    let only_w = Wanted {
        input: false,
        weight: true,
        bias: false,
    };
    let mut loss = f64::INFINITY;
    for step in 0..steps {
        let y = conv_transpose(&x, &w, None, &params).expect("valid layer");
        let diff = &y - &target;
        loss = diff.iter().map(|d| d * d).sum::<f64>() / n;
        let err = w
            .iter()
            .zip(truth.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        if step % 25 == 0 {
            report(step, loss);
        }
        if err < 1e-6 {
            return Trained {
                steps: step,
                loss,
                error: err,
                kernel: w,
            };
        }
        let grad_y = diff.mapv(|d| 2.0 * d / n);
        let grads =
            conv_transpose_backward(&x, &w, &grad_y, &params, only_w, &PlanOptions::default())
                .expect("valid layer");
        let gw = grads.weight.expect("requested");
        w = &w - &(gw * lr);
    }
    let error = w
        .iter()
        .zip(truth.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    Trained {
        steps,
        loss,
        error,
        kernel: w,
    }
}

#[allow(dead_code)]
fn main() {
    println!("Learning a 4x4 stride-2 transposed-convolution kernel from 16 input/output pairs");
    let t = train(2000, |step, loss| {
        println!("step {step:4}  loss {loss:.3e}")
    });
    println!(
        "stopped after {} steps: loss {:.3e}, largest weight error {:.1e}\n",
        t.steps, t.loss, t.error
    );
    println!("{:<36}true kernel", "learned kernel");
    let truth = teacher();
    let fmt = |row: &[f64]| row.iter().map(|v| format!("{v:9.5}")).collect::<String>();
    for (l, r) in t
        .kernel
        .as_slice()
        .unwrap()
        .chunks(4)
        .zip(truth.as_slice().unwrap().chunks(4))
    {
        println!("{:<36}{}", fmt(l), fmt(r));
    }
    assert!(
        t.error < 1e-6,
        "did not converge: largest weight error {}",
        t.error
    );
}
