//! A short run of the `learn_kernel` example: gradient descent through
//! `conv_transpose_backward` must recover the teacher's kernel.

#[path = "../examples/learn_kernel.rs"]
mod learn_kernel;

#[test]
fn gradient_descent_recovers_the_kernel() {
    let mut losses = Vec::new();
    let t = learn_kernel::train(400, |_, loss| losses.push(loss));
    assert!(
        t.error < 1e-6,
        "largest weight error {} after {} steps",
        t.error,
        t.steps
    );
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]),
        "loss must fall: {losses:?}"
    );
    assert!(t.loss < 1e-10);
}
