//! `tconv demo`: the explainer's worked examples, computed by the library and shown step by
//! step. The output is deterministic and checked against `tests/expected/demo.txt`.

use anyhow::Result;
use ndarray::{array, ArrayD, ArrayView1};
use tconv::npy::NpyArray;
use tconv::reference::convolution_matrix;
use tconv::{ConvParams, Geometry, Op};

use crate::compute::Loaded;
use crate::data::grid;
use crate::explain::{explain, n, Sections};

fn loaded(x: ArrayD<f64>, w: ArrayD<f64>) -> Loaded {
    Loaded {
        x: NpyArray::F64(x),
        w: NpyArray::F64(w),
        b: None,
        bare: false,
    }
}

fn banner(title: &str) -> String {
    format!(
        "\n{}\n{title}\n{}\n",
        "=".repeat(title.chars().count()),
        "=".repeat(title.chars().count())
    )
}

/// The whole demo text.
pub fn demo_text() -> Result<String> {
    let kernel = array![[[[1.0, 0.0], [0.0, -1.0]]]].into_dyn();
    let x3 = array![[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]].into_dyn();
    let x2 = array![[[[1.0, 2.0], [3.0, 4.0]]]].into_dyn();
    let none = Sections {
        size: true,
        steps: false,
        overlaps: false,
        zero_insertion: false,
        matrix: false,
    };
    let mut s = String::from(
        "tconv demo: convolution and transposed convolution, step by step\n\
         (the worked examples of the explainer, computed by the tconv library)\n",
    );

    s.push_str(&banner(
        "Example 1. Ordinary convolution: the kernel slides over the input",
    ));
    s.push_str(&explain(
        Op::Conv,
        &loaded(x3.clone(), kernel.clone()),
        &ConvParams::new(),
        Sections {
            steps: true,
            ..none
        },
        usize::MAX,
    )?);

    s.push_str(&banner(
        "Example 2. Transposed convolution, stride 1: a small map made large",
    ));
    s.push_str(&explain(
        Op::ConvTranspose,
        &loaded(x2.clone(), kernel.clone()),
        &ConvParams::new(),
        Sections {
            steps: true,
            overlaps: true,
            ..none
        },
        usize::MAX,
    )?);

    s.push_str(&banner(
        "Example 3. The same at stride 2: s-1 zeros inserted between inputs",
    ));
    s.push_str(&explain(
        Op::ConvTranspose,
        &loaded(x2.clone(), kernel.clone()),
        &ConvParams::new().stride(&[2]),
        Sections {
            zero_insertion: true,
            overlaps: true,
            ..none
        },
        usize::MAX,
    )?);

    s.push_str(&banner(
        "Example 4. The matrix view: transposed convolution IS the transpose",
    ));
    s.push_str(&matrix_example(&kernel, &x3, &x2)?);
    Ok(s)
}

/// Example 4: the convolution of Example 1 as its matrix `C` (`kernel` over `x3`), and
/// `Cᵀ` applied to Example 2's input `x2`, equal to its transposed convolution.
fn matrix_example(
    kernel: &ndarray::ArrayD<f64>,
    x3: &ndarray::ArrayD<f64>,
    x2: &ndarray::ArrayD<f64>,
) -> Result<String> {
    let g = Geometry::new(
        Op::Conv,
        &[1, 1, 3, 3],
        &[1, 1, 2, 2],
        None,
        &ConvParams::new(),
    )?;
    let c = convolution_matrix(&g, kernel.as_slice().unwrap_or(&[]))?;
    let mut s = format!(
        "The convolution of Example 1 maps 9 input values to 4 outputs: it is a {}×{} matrix C\n\
         (row = output element, column = input element, entries = kernel weights):\n",
        c.nrows(),
        c.ncols()
    );
    let cells: Vec<String> = c.iter().map(|&v| n(v)).collect();
    s.push_str(&grid(c.nrows(), c.ncols(), &cells, "  "));
    let x1 = ArrayView1::from(x3.as_slice().unwrap_or(&[]));
    let cx: Vec<String> = c.dot(&x1).iter().map(|&v| n(v)).collect();
    s.push_str(&format!(
        "C · [1, 2, 3, 4, 5, 6, 7, 8, 9] = [{}], Example 1's output.\n\n",
        cx.join(", ")
    ));
    s.push_str("Its transpose Cᵀ is 9×4. Apply it to Example 2's input, flattened:\n");
    let ct = c.t();
    let cells: Vec<String> = ct.iter().map(|&v| n(v)).collect();
    s.push_str(&grid(ct.nrows(), ct.ncols(), &cells, "  "));
    let flat = ArrayView1::from(x2.as_slice().unwrap_or(&[]));
    let y = ct.dot(&flat);
    let yc: Vec<String> = y.iter().map(|&v| n(v)).collect();
    s.push_str(&format!("Cᵀ · [1, 2, 3, 4] = [{}]\n", yc.join(", ")));
    s.push_str("read as 3×3:\n");
    s.push_str(&grid(3, 3, &yc, "  "));
    let direct = tconv::conv_transpose(x2, kernel, None, &ConvParams::new())?;
    let same = direct.iter().zip(y.iter()).all(|(a, b)| a == b);
    s.push_str(&format!(
        "{} Example 2's output: transposed convolution is exactly the transpose of the convolution's matrix\n\
         (the adjoint: <conv(u), x> = <u, conv_transpose(x)> for every u and x), which is why it is also\n\
         the gradient of a convolution with respect to its input.\n",
        if same { "This equals" } else { "MISMATCH with" }
    ));
    Ok(s)
}

/// The demo's examples 1–3 as a steppable HTML page.
pub fn demo_html() -> Result<String> {
    let kernel = array![[[[1.0, 0.0], [0.0, -1.0]]]].into_dyn();
    let x3 = array![[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]].into_dyn();
    let x2 = array![[[[1.0, 2.0], [3.0, 4.0]]]].into_dyn();
    let examples = [
        (
            "Example 1. Ordinary convolution: the kernel slides over the input",
            Op::Conv,
            x3,
            ConvParams::new(),
        ),
        (
            "Example 2. Transposed convolution, stride 1",
            Op::ConvTranspose,
            x2.clone(),
            ConvParams::new(),
        ),
        (
            "Example 3. Transposed convolution, stride 2",
            Op::ConvTranspose,
            x2,
            ConvParams::new().stride(&[2]),
        ),
    ];
    let mut players = Vec::new();
    for (title, op, x, p) in examples {
        let problem = crate::render::Problem::new(op, &loaded(x, kernel.clone()), &p, 4096)?;
        players.push(crate::render::html::frames(&problem, title)?);
    }
    Ok(crate::render::html::page(
        "tconv demo: convolution and transposed convolution, step by step",
        &players,
    ))
}
