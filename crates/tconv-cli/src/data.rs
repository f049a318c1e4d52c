//! Getting arrays in (.npy files or inline JSON) and results out (.npy written atomically,
//! matrices, JSON).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;
use tconv::npy::{read_npy, to_npy_bytes, NpyArray};

/// Whether a data argument is inline JSON rather than a path.
fn is_inline(spec: &str) -> bool {
    let t = spec.trim_start();
    t.starts_with('[') || t.parse::<f64>().is_ok()
}

/// Load `spec` (a .npy path or inline JSON) as the array named `what`.
pub fn load(spec: &str, what: &str) -> Result<NpyArray> {
    if is_inline(spec) {
        let v: Value = serde_json::from_str(spec)
            .map_err(|e| anyhow::anyhow!("{what}: not valid JSON ({e}): {spec}"))?;
        let mut shape = Vec::new();
        let mut probe = &v;
        while let Value::Array(items) = probe {
            shape.push(items.len());
            match items.first() {
                Some(first) => probe = first,
                None => break,
            }
        }
        let mut values = Vec::new();
        flatten(&v, &shape, 0, what, &mut values)?;
        let a = ArrayD::from_shape_vec(IxDyn(&shape), values)
            .with_context(|| format!("{what}: cannot shape inline data"))?;
        return Ok(NpyArray::F64(a));
    }
    read_npy(spec).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn flatten(v: &Value, shape: &[usize], depth: usize, what: &str, out: &mut Vec<f64>) -> Result<()> {
    match v {
        Value::Array(items) => {
            if depth >= shape.len() || items.len() != shape[depth] {
                bail!(
                    "{what}: ragged nested list: a list at depth {depth} has {} entries where {} were expected",
                    items.len(),
                    shape.get(depth).map_or("none".to_string(), |n| n.to_string())
                );
            }
            items
                .iter()
                .try_for_each(|it| flatten(it, shape, depth + 1, what, out))
        }
        Value::Number(n) if depth == shape.len() => {
            let f = n.as_f64().filter(|f| f.is_finite());
            out.push(f.with_context(|| format!("{what}: {n} is not a finite number"))?);
            Ok(())
        }
        other if depth == shape.len() => bail!("{what}: {other} is not a number"),
        _ => {
            bail!("{what}: ragged nested list: a number where a list was expected at depth {depth}")
        }
    }
}

/// Convert to the dtype of `like` (the input's dtype decides the computation's).
pub fn same_dtype(a: &NpyArray, like: &NpyArray) -> NpyArray {
    match like {
        NpyArray::F32(_) => NpyArray::F32(a.to_f32()),
        NpyArray::F64(_) => NpyArray::F64(a.to_f64()),
    }
}

/// Insert a leading axis of extent 1, `times` times.
pub fn expand(a: NpyArray, times: usize) -> NpyArray {
    let add = |shape: &[usize]| {
        let mut s = vec![1; times];
        s.extend_from_slice(shape);
        s
    };
    match a {
        NpyArray::F32(x) => {
            let s = add(x.shape());
            NpyArray::F32(
                x.into_shape_with_order(IxDyn(&s))
                    .expect("same element count"),
            )
        }
        NpyArray::F64(x) => {
            let s = add(x.shape());
            NpyArray::F64(
                x.into_shape_with_order(IxDyn(&s))
                    .expect("same element count"),
            )
        }
    }
}

/// Drop `times` leading axes of extent 1.
pub fn squeeze(a: NpyArray, times: usize) -> NpyArray {
    match a {
        NpyArray::F32(x) => {
            let s = x.shape()[times..].to_vec();
            NpyArray::F32(
                x.into_shape_with_order(IxDyn(&s))
                    .expect("leading axes of extent 1"),
            )
        }
        NpyArray::F64(x) => {
            let s = x.shape()[times..].to_vec();
            NpyArray::F64(
                x.into_shape_with_order(IxDyn(&s))
                    .expect("leading axes of extent 1"),
            )
        }
    }
}

/// The paths of inputs given as files (not inline), for the overwrite check.
pub fn file_inputs<'a>(specs: impl IntoIterator<Item = &'a String>) -> Vec<PathBuf> {
    specs
        .into_iter()
        .filter(|s| !is_inline(s))
        .map(PathBuf::from)
        .collect()
}

/// Refuse to write `out` over one of `inputs`.
pub fn check_output_path(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    for input in inputs {
        let same = match (canon(out), canon(input)) {
            (Some(a), Some(b)) => a == b,
            _ => out == input,
        };
        if same {
            bail!(
                "refusing to write the output over the input file {}",
                input.display()
            );
        }
    }
    Ok(())
}

/// Write `.npy` bytes atomically: a temporary file in the same folder, then a rename, so
/// that the destination is never left truncated or half-written.
pub fn write_atomic(out: &Path, bytes: &[u8]) -> Result<()> {
    write_all_atomic(&[(out.to_path_buf(), bytes.to_vec())])
}

/// Write several files so that either all appear or none: every temporary file is written
/// first, then each is renamed into place.
pub fn write_all_atomic(files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    let mut temps: Vec<PathBuf> = Vec::new();
    let cleanup = |temps: &[PathBuf]| {
        for t in temps {
            let _ = std::fs::remove_file(t);
        }
    };
    for (out, bytes) in files {
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = match out.file_name() {
            Some(n) => n.to_string_lossy().into_owned(),
            None => {
                cleanup(&temps);
                bail!("{}: not a file name", out.display());
            }
        };
        if !dir.is_dir() {
            cleanup(&temps);
            bail!(
                "{}: the folder {} does not exist",
                out.display(),
                dir.display()
            );
        }
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let written = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        temps.push(tmp);
        if let Err(e) = written {
            cleanup(&temps);
            bail!("{}: cannot write: {e}", out.display());
        }
    }
    for ((out, _), tmp) in files.iter().zip(&temps) {
        if let Err(e) = std::fs::rename(tmp, out) {
            cleanup(&temps);
            bail!("{}: cannot write: {e}", out.display());
        }
    }
    Ok(())
}

/// Serialise an array in its dtype.
pub fn npy_bytes(a: &NpyArray) -> Vec<u8> {
    match a {
        NpyArray::F32(x) => to_npy_bytes(&x.view()),
        NpyArray::F64(x) => to_npy_bytes(&x.view()),
    }
}

/// A number as a learner reads it: no trailing `.0`, no negative zero.
pub fn num(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else {
        format!("{v}")
    }
}

/// Values as f64 for display (f32 values print via their own shortest form).
pub fn display_values(a: &NpyArray) -> (Vec<usize>, Vec<String>) {
    match a {
        NpyArray::F32(x) => (
            x.shape().to_vec(),
            x.iter()
                .map(|&v| if v == 0.0 { "0".into() } else { format!("{v}") })
                .collect(),
        ),
        NpyArray::F64(x) => (x.shape().to_vec(), x.iter().map(|&v| num(v)).collect()),
    }
}

/// Nested-list text of `values` with `shape`: `[[1, 2], [3, 4]]`.
pub fn nested(shape: &[usize], values: &[String]) -> String {
    fn rec(shape: &[usize], values: &[String], out: &mut String) {
        match shape {
            [] => out.push_str(values.first().map_or("", |s| s.as_str())),
            [n, rest @ ..] => {
                let stride = rest.iter().product::<usize>();
                out.push('[');
                for i in 0..*n {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    rec(rest, &values[i * stride..(i + 1) * stride], out);
                }
                out.push(']');
            }
        }
    }
    let mut s = String::new();
    rec(shape, values, &mut s);
    s
}

/// A right-aligned grid of cells, one text row per grid row, each row in `[ ]`.
pub fn grid(rows: usize, cols: usize, cells: &[String], indent: &str) -> String {
    let width = cells.iter().map(|c| c.chars().count()).max().unwrap_or(1);
    let mut s = String::new();
    for r in 0..rows {
        s.push_str(indent);
        s.push('[');
        for c in 0..cols {
            s.push_str(&format!(" {:>width$}", cells[r * cols + c]));
        }
        s.push_str(" ]\n");
    }
    s
}

/// The result as text: the grid(s) for small arrays, else a shape summary.
pub fn render_text(a: &NpyArray) -> String {
    let (shape, values) = display_values(a);
    let n = values.len();
    if n <= 400 {
        let mut s = format!("shape {shape:?}, {}\n", a.dtype());
        let (rows, cols) = match shape.as_slice() {
            [] => (1, 1),
            [c] => (1, *c),
            [.., r, c] => (*r, *c),
        };
        let plane = (rows * cols).max(1);
        let lead = &shape[..shape.len().saturating_sub(2)];
        for (p, chunk) in values.chunks(plane).enumerate() {
            if !lead.is_empty() && n > plane {
                let idx = tconv::tensor::positions(lead).nth(p).unwrap_or_default();
                let label: Vec<String> = idx.iter().map(|i| i.to_string()).collect();
                s.push_str(&format!("[{}, :, :]\n", label.join(", ")));
            }
            s.push_str(&grid(rows, cols, chunk, ""));
        }
        s
    } else {
        let f = a.to_f64();
        let (min, max) = f
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let mean = f.iter().sum::<f64>() / n as f64;
        format!(
            "shape {shape:?}, {}, {n} values: min {}, max {}, mean {} (use --output y.npy or --format json for the values)\n",
            a.dtype(),
            num(min),
            num(max),
            num(mean)
        )
    }
}
