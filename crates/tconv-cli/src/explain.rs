//! `tconv explain`: the arithmetic of one small problem, step by step, as a teacher shows it.
//! The library supplies the steps (`tconv::explain`); this module only renders text.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use tconv::explain::{dot_steps, scatter_steps, ScatterStep};
use tconv::npy::NpyArray;
use tconv::reference::{convolution_matrix, zero_insertion_view};
use tconv::tensor::numel;
use tconv::{ConvParams, Element, Geometry, Op};

use crate::canvas::{Canvas, CellKind};
use crate::compute::Loaded;
use crate::data::grid;
use crate::shape::size_arithmetic;

/// Which parts of the explanation to print.
#[derive(Clone, Copy, Debug)]
pub struct Sections {
    pub size: bool,
    pub steps: bool,
    pub overlaps: bool,
    pub zero_insertion: bool,
    pub matrix: bool,
}

impl Sections {
    /// Everything that applies.
    pub fn all() -> Self {
        Sections {
            size: true,
            steps: true,
            overlaps: true,
            zero_insertion: true,
            matrix: true,
        }
    }
}

/// A number as a learner reads it (no negative zero).
pub fn n<T: Element>(v: T) -> String {
    if v == T::zero() {
        "0".into()
    } else {
        format!("{v}")
    }
}

/// A factor in a product: negatives in parentheses.
fn f<T: Element>(v: T) -> String {
    if v < T::zero() {
        format!("({})", n(v))
    } else {
        n(v)
    }
}

/// `(1,2)` for a position.
fn pos<I: std::fmt::Display>(p: &[I]) -> String {
    format!(
        "({})",
        p.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Rows and columns of a 1-D or 2-D spatial shape.
fn rc(spatial: &[usize]) -> (usize, usize) {
    match spatial {
        [c] => (1, *c),
        [r, c] => (*r, *c),
        _ => (1, numel(spatial)),
    }
}

struct Labels {
    batch: usize,
    channels_in: usize,
}

impl Labels {
    /// `x[0,1]`, or `x[n=1,c=0](0,1)` when there are several batch items or channels.
    fn x(&self, n: usize, c: usize, idx: &[usize]) -> String {
        let inner = idx
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",");
        if self.batch == 1 && self.channels_in == 1 {
            format!("x[{inner}]")
        } else {
            format!("x[n={n},c={c}]({inner})")
        }
    }
}

fn params_line(g: &Geometry) -> String {
    let list = |f: &dyn Fn(&tconv::AxisGeometry) -> String| {
        format!("[{}]", g.axes.iter().map(f).collect::<Vec<_>>().join(", "))
    };
    let mut s = format!(
        "stride {}, dilation {}, padding begin {} end {}",
        list(&|a| a.stride.to_string()),
        list(&|a| a.dilation.to_string()),
        list(&|a| a.pad_begin.to_string()),
        list(&|a| a.pad_end.to_string()),
    );
    if g.op == Op::ConvTranspose {
        s.push_str(&format!(
            ", output_padding {}",
            list(&|a| a.output_padding.to_string())
        ));
    }
    s.push_str(&format!(", groups {}", g.groups));
    s
}

/// Grids of each (batch, channel) plane of a flat `(N, C, *spatial)` buffer.
fn planes<T: Element>(title: &str, data: &[T], lead: (usize, usize), spatial: &[usize]) -> String {
    let (rows, cols) = rc(spatial);
    let plane = numel(spatial);
    let mut s = String::new();
    for p in 0..lead.0 * lead.1 {
        let label = if lead.0 * lead.1 > 1 {
            format!("{title} [n={},c={}]", p / lead.1, p % lead.1)
        } else {
            title.to_string()
        };
        s.push_str(&format!("  {label}:\n"));
        let cells: Vec<String> = data[p * plane..(p + 1) * plane]
            .iter()
            .map(|&v| n(v))
            .collect();
        s.push_str(&grid(rows, cols, &cells, "    "));
    }
    s
}

fn size_section(g: &Geometry) -> String {
    let mut s = String::new();
    let names = ["rows", "columns"];
    let axis_name = |a: usize| {
        if g.axes.len() == 2 {
            format!("axis {a} ({})", names[a])
        } else {
            format!("axis {a}")
        }
    };
    let plain = g
        .axes
        .iter()
        .all(|a| a.pad_begin == 0 && a.pad_end == 0 && a.dilation == 1 && a.output_padding == 0);
    match g.op {
        Op::ConvTranspose => {
            if plain {
                s.push_str("Output size, per axis: (in - 1)·s + k\n");
                for (i, a) in g.axes.iter().enumerate() {
                    s.push_str(&format!(
                        "  {}: ({}-1)·{}+{} = {}\n",
                        axis_name(i),
                        a.input,
                        a.stride,
                        a.kernel,
                        a.output
                    ));
                }
            } else {
                s.push_str("Output size, per axis: (in - 1)·s - p_begin - p_end + d·(k - 1) + output_padding + 1\n");
                for (i, a) in g.axes.iter().enumerate() {
                    s.push_str(&format!(
                        "  {}: {}\n",
                        axis_name(i),
                        size_arithmetic(g.op, a)
                    ));
                }
            }
        }
        Op::Conv => {
            if plain {
                s.push_str("Output size, per axis: (in - k)/s + 1 (rounded down)\n");
                for (i, a) in g.axes.iter().enumerate() {
                    s.push_str(&format!(
                        "  {}: ({}-{})/{}+1 = {}\n",
                        axis_name(i),
                        a.input,
                        a.kernel,
                        a.stride,
                        a.output
                    ));
                }
            } else {
                s.push_str("Output size, per axis: floor((in + p_begin + p_end - d·(k - 1) - 1) / s) + 1\n");
                for (i, a) in g.axes.iter().enumerate() {
                    s.push_str(&format!(
                        "  {}: {}\n",
                        axis_name(i),
                        size_arithmetic(g.op, a)
                    ));
                }
            }
        }
    }
    s
}

/// Render one output channel of canvas `values`: cropped cells in parentheses, extra
/// output_padding cells marked `*`.
fn render_canvas<T: Element>(canvas: &Canvas, values: &[T], indent: &str) -> String {
    let (rows, cols) = rc(&canvas.extents);
    let cells: Vec<String> = values
        .iter()
        .zip(&canvas.kinds)
        .map(|(&v, k)| match k {
            CellKind::Cropped => format!("({})", n(v)),
            CellKind::Extra => format!("{}*", n(v)),
            _ => n(v),
        })
        .collect();
    grid(rows, cols, &cells, indent)
}

fn scatter_section<T: Element>(
    g: &Geometry,
    steps: &[ScatterStep<T>],
    bias: Option<&[T]>,
    labels: &Labels,
) -> String {
    let canvas = Canvas::new(g);
    let k_sp = g.kernel_shape();
    let (kr, kc) = rc(&k_sp);
    let size = numel(&canvas.extents);
    let mut acc: Vec<Vec<T>> = vec![vec![T::zero(); size]; g.batch * g.out_channels];
    let mut s = String::from(
        "Scatter: each input element multiplies the whole kernel, and the scaled kernel is added into the output at i·s - p_begin (overlaps sum)\n",
    );
    if canvas.cropped() || g.axes.iter().any(|a| a.output_padding > 0) {
        s.push_str("  (cells in parentheses fall in the border cropped by padding; cells marked * are the extra output_padding row/column)\n");
    }
    for st in steps {
        s.push_str(&format!(
            "  {} = {} lands at {}:\n",
            labels.x(st.batch, st.in_channel, &st.index),
            n(st.value),
            pos(&st.offset)
        ));
        for chunk in st.contributions.chunks(numel(&k_sp).max(1)) {
            let co = chunk[0].out_channel;
            let ch = if g.out_channels > 1 {
                format!(" (output channel {co})")
            } else {
                String::new()
            };
            s.push_str(&format!("    {} × kernel{ch} =\n", n(st.value)));
            let cells: Vec<String> = chunk.iter().map(|c| n(c.product)).collect();
            s.push_str(&grid(kr, kc, &cells, "      "));
            let plane = &mut acc[st.batch * g.out_channels + co];
            for c in chunk {
                let i = canvas.index(&c.position);
                plane[i] = plane[i] + c.product;
            }
            let label = if g.batch * g.out_channels > 1 {
                format!("output [n={},c={co}] so far", st.batch)
            } else {
                "output so far".to_string()
            };
            s.push_str(&format!("    {label}:\n"));
            s.push_str(&render_canvas(&canvas, plane, "      "));
        }
    }
    if let Some(b) = bias {
        s.push_str(&format!(
            "  Finally the bias is added to every output element of its channel: {}\n",
            b.iter().map(|&v| n(v)).collect::<Vec<_>>().join(", ")
        ));
    }
    s
}

/// (batch, output channel, position) of one output element.
type OutputCell = (usize, usize, Vec<i64>);

fn overlap_section<T: Element>(
    g: &Geometry,
    steps: &[ScatterStep<T>],
    bias: Option<&[T]>,
    labels: &Labels,
) -> String {
    // Group the kept contributions by (batch, out channel, position).
    let mut by_pos: BTreeMap<OutputCell, Vec<(String, T)>> = Default::default();
    for st in steps {
        for c in st.contributions.iter().filter(|c| c.inside) {
            by_pos
                .entry((st.batch, c.out_channel, c.position.clone()))
                .or_default()
                .push((labels.x(st.batch, st.in_channel, &st.index), c.product));
        }
    }
    let mut s = String::from(
        "Overlaps: output positions that receive more than one nonzero product sum them\n",
    );
    let (mut shown, mut trivial) = (0, 0);
    for ((b, co, p), list) in &by_pos {
        let nonzero: Vec<&(String, T)> = list.iter().filter(|(_, v)| *v != T::zero()).collect();
        if list.len() < 2 {
            continue;
        }
        if nonzero.len() < 2 {
            trivial += 1;
            continue;
        }
        shown += 1;
        let total = list.iter().fold(T::zero(), |a, (_, v)| a + *v);
        let parts: Vec<String> = nonzero
            .iter()
            .map(|(from, v)| format!("{} from {from}", n(*v)))
            .collect();
        let zeros = list.len() - nonzero.len();
        let zero_note = match zeros {
            0 => String::new(),
            1 => " (and one zero product)".to_string(),
            z => format!(" (and {z} zero products)"),
        };
        let where_ = if g.batch * g.out_channels > 1 {
            format!(" [n={b},c={co}]")
        } else {
            String::new()
        };
        let bias_note = match bias {
            Some(bv) => format!(", plus bias {} = {}", n(bv[*co]), n(total + bv[*co])),
            None => String::new(),
        };
        s.push_str(&format!(
            "  {}{where_} receives {}{zero_note} → {}{bias_note}\n",
            pos(p),
            parts.join(" and "),
            n(total)
        ));
    }
    if trivial > 0 {
        s.push_str(&format!(
            "  {trivial} more position(s) are reached by several kernel taps, but all except one of the products are 0\n"
        ));
    }
    if shown + trivial == 0 {
        s.push_str("  none: every output position receives at most one product (the kernel copies do not overlap)\n");
    }
    s
}

fn zero_insertion_section<T: Element>(g: &Geometry, x: &[T], w: &[T]) -> Result<String> {
    let view = zero_insertion_view(g, x, w)?;
    let mut s =
        String::from("Zero-insertion view: the same result as an ordinary stride-1 convolution\n");
    for (i, a) in g.axes.iter().enumerate() {
        s.push_str(&format!(
            "  axis {i}: insert s-1 = {} zero(s) between input elements; pad d·(k-1) - p_begin = {}·({}-1) - {} = {} before and d·(k-1) - p_end + output_padding = {} after{}\n",
            a.stride - 1,
            a.dilation,
            a.kernel,
            a.pad_begin,
            view.pad_before[i],
            view.pad_after[i],
            if view.pad_before[i] < 0 || view.pad_after[i] < 0 { " (negative: that many are cropped)" } else { "" }
        ));
    }
    let z = view.input.as_standard_layout();
    let z_sp: Vec<usize> = view.input.shape()[2..].to_vec();
    s.push_str(&planes(
        "zero-inserted, padded input",
        z.as_slice().unwrap_or(&[]),
        (g.batch, g.in_channels),
        &z_sp,
    ));
    let k = view.kernel.as_standard_layout();
    let k_sp = g.kernel_shape();
    s.push_str(&planes(
        "kernel rotated 180° (channel roles swapped)",
        k.as_slice().unwrap_or(&[]),
        (g.out_channels, g.in_per_group()),
        &k_sp,
    ));
    s.push_str("  Sliding the rotated kernel over it at stride 1 (dilation d) gives exactly the output below.\n");
    Ok(s)
}

/// Matrix view section for tiny problems (`C` of at most 16×16 shown).
fn matrix_section<T: Element>(g: &Geometry, x: &[T], w: &[T]) -> Result<Option<String>> {
    let m = match convolution_matrix(g, w) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    if m.nrows() > 16 || m.ncols() > 16 || g.batch > 1 {
        return Ok(None);
    }
    let mut s = String::new();
    let cells: Vec<String> = m.iter().map(|&v| n(v)).collect();
    let flat_in: Vec<String> = x.iter().map(|&v| n(v)).collect();
    match g.op {
        Op::Conv => {
            s.push_str(&format!(
                "Matrix view: the convolution is a {}×{} matrix C acting on the flattened input; y = C·x\n",
                m.nrows(), m.ncols()
            ));
            s.push_str(&grid(m.nrows(), m.ncols(), &cells, "    "));
            s.push_str(&format!("  x flattened = [{}]\n", flat_in.join(", ")));
            let y: Vec<String> = m
                .dot(&ndarray::ArrayView1::from(x))
                .iter()
                .map(|&v| n(v))
                .collect();
            s.push_str(&format!("  C·x = [{}]\n", y.join(", ")));
        }
        Op::ConvTranspose => {
            s.push_str(&format!(
                "Matrix view: the ordinary convolution with this kernel (output {:?} → input {:?}) is a {}×{} matrix C; the transposed convolution is exactly Cᵀ\n",
                g.big_spatial(), g.small_spatial(), m.nrows(), m.ncols()
            ));
            s.push_str("  C =\n");
            s.push_str(&grid(m.nrows(), m.ncols(), &cells, "    "));
            s.push_str(&format!("  x flattened = [{}]\n", flat_in.join(", ")));
            let y: Vec<String> = m
                .t()
                .dot(&ndarray::ArrayView1::from(x))
                .iter()
                .map(|&v| n(v))
                .collect();
            s.push_str(&format!(
                "  Cᵀ·x = [{}] (before bias), the output read row by row\n",
                y.join(", ")
            ));
        }
    }
    Ok(Some(s))
}

fn dots_section<T: Element>(g: &Geometry, x: &[T], w: &[T], bias: Option<&[T]>) -> String {
    let mut s = String::from(
        "Each output element is the dot product of the kernel with the input window it covers\n",
    );
    let many = g.batch * g.out_channels > 1;
    for st in dot_steps(g, x, w, bias) {
        let terms: Vec<String> = st
            .terms
            .iter()
            .map(|t| match t.input {
                Some(v) => format!("{}·{}", f(v), f(t.weight)),
                None => format!("pad·{}", f(t.weight)),
            })
            .collect();
        let b = st.bias.map(|b| format!(" + {}", f(b))).unwrap_or_default();
        let label = if many {
            format!("y[n={},c={}]{}", st.batch, st.out_channel, pos(&st.index))
        } else {
            format!("y{}", pos(&st.index))
        };
        s.push_str(&format!(
            "  {label} = {}{b} = {}\n",
            terms.join(" + "),
            n(st.value)
        ));
    }
    if g.axes.iter().any(|a| a.pad_begin > 0 || a.pad_end > 0) {
        s.push_str("  (pad = a zero from the padding)\n");
    }
    s
}

fn explain_typed<T: Element>(
    op: Op,
    x: &ndarray::ArrayD<T>,
    w: &ndarray::ArrayD<T>,
    b: Option<&ndarray::ArrayD<T>>,
    params: &ConvParams,
    sections: Sections,
    max_steps: usize,
) -> Result<String> {
    let bshape = b.map(|b| b.shape().to_vec());
    let g = Geometry::new(op, x.shape(), w.shape(), bshape.as_deref(), params)?;
    check_size(&g, max_steps)?;
    let xs = x.as_standard_layout();
    let ws = w.as_standard_layout();
    let (xd, wd) = (xs.as_slice().unwrap_or(&[]), ws.as_slice().unwrap_or(&[]));
    let bd: Option<Vec<T>> = b.map(|b| b.iter().copied().collect());
    let mut out = format!(
        "{}: input {:?}, weight {:?}{}\n  {}\n",
        match op {
            Op::Conv => "Convolution",
            Op::ConvTranspose => "Transposed convolution",
        },
        x.shape(),
        w.shape(),
        b.map(|b| format!(", bias {:?}", b.shape()))
            .unwrap_or_default(),
        params_line(&g)
    );
    out.push_str(&planes(
        "input x",
        xd,
        (g.batch, g.in_channels),
        &g.axes.iter().map(|a| a.input).collect::<Vec<_>>(),
    ));
    let wl = (ws.shape()[0], ws.shape()[1]);
    out.push_str(&planes("kernel w", wd, wl, &g.kernel_shape()));
    for (step, title) in steps(&g, (xd, wd, bd.as_deref()), sections)?
        .into_iter()
        .enumerate()
    {
        out.push_str(&format!("\nStep {}. {title}", step + 1));
    }
    out.push_str(&result(&g, x, w, b, params)?);
    Ok(out)
}

/// An error unless `g` is 1-D or 2-D with at most `max_steps` steps to show.
fn check_size(g: &Geometry, max_steps: usize) -> Result<()> {
    if g.spatial_dims() > 2 {
        bail!(
            "explain shows 1-D and 2-D problems; this one has {} spatial axes",
            g.spatial_dims()
        );
    }
    let steps = match g.op {
        Op::ConvTranspose => g.batch * g.in_channels * numel(&g.small_spatial()),
        Op::Conv => g.batch * g.out_channels * numel(&g.small_spatial()),
    };
    if steps > max_steps {
        bail!(
            "this problem has {steps} steps to show, more than --max-steps {max_steps}; pass --max-steps {steps} to print them all, or try a smaller input"
        );
    }
    Ok(())
}

/// The sections asked for, in order: the size arithmetic, then the op's steps (a transposed
/// conv's scatter, overlaps and zero insertion; a conv's dot products), then the matrix.
fn steps<T: Element>(
    g: &Geometry,
    (xd, wd, bd): (&[T], &[T], Option<&[T]>),
    sections: Sections,
) -> Result<Vec<String>> {
    let labels = Labels {
        batch: g.batch,
        channels_in: g.in_channels,
    };
    let mut out = Vec::new();
    if sections.size {
        out.push(size_section(g));
    }
    match g.op {
        Op::ConvTranspose => {
            let st = scatter_steps(g, xd, wd);
            if sections.steps {
                out.push(scatter_section(g, &st, bd, &labels));
            }
            if sections.overlaps {
                out.push(overlap_section(g, &st, bd, &labels));
            }
            if sections.zero_insertion {
                out.push(zero_insertion_section(g, xd, wd)?);
            }
        }
        Op::Conv => {
            if sections.steps {
                out.push(dots_section(g, xd, wd, bd));
            }
        }
    }
    if sections.matrix {
        out.extend(matrix_section(g, xd, wd)?);
    }
    Ok(out)
}

/// The result through the library (as a user would compute it), planes and nested list.
fn result<T: Element>(
    g: &Geometry,
    x: &ndarray::ArrayD<T>,
    w: &ndarray::ArrayD<T>,
    b: Option<&ndarray::ArrayD<T>>,
    params: &ConvParams,
) -> Result<String> {
    let bv = match b {
        Some(b) => match b.view().into_dimensionality::<ndarray::Ix1>() {
            Ok(v) => Some(v),
            Err(_) => bail!("bias has shape {:?}; it must be 1-D, (C_out,)", b.shape()),
        },
        None => None,
    };
    let y = match g.op {
        Op::Conv => tconv::conv(x, w, bv, params)?,
        Op::ConvTranspose => tconv::conv_transpose(x, w, bv, params)?,
    };
    let ys = y.as_standard_layout();
    let mut out = String::from("\nResult:\n");
    out.push_str(&planes(
        "y",
        ys.as_slice().unwrap_or(&[]),
        (g.batch, g.out_channels),
        &g.output_shape()[2..],
    ));
    let cells: Vec<String> = ys.iter().map(|&v| n(v)).collect();
    let mut shape = g.output_shape();
    if g.batch == 1 && g.out_channels == 1 {
        shape.drain(..2);
    }
    out.push_str(&format!("  y = {}\n", crate::data::nested(&shape, &cells)));
    Ok(out)
}

/// Explain `op` on loaded data.
pub fn explain(
    op: Op,
    l: &Loaded,
    params: &ConvParams,
    sections: Sections,
    max_steps: usize,
) -> Result<String> {
    match (&l.x, &l.w) {
        (NpyArray::F32(x), NpyArray::F32(w)) => {
            let b = l.b.as_ref().map(|b| b.to_f32());
            explain_typed(op, x, w, b.as_ref(), params, sections, max_steps)
        }
        (x, w) => {
            let b = l.b.as_ref().map(|b| b.to_f64());
            explain_typed(
                op,
                &x.to_f64(),
                &w.to_f64(),
                b.as_ref(),
                params,
                sections,
                max_steps,
            )
        }
    }
}
