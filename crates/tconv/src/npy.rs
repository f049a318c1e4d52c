//! NumPy `.npy` reading and writing for `f32` / `f64` arrays (format versions 1–3, C or
//! Fortran order, either endianness). Malformed files give an [`ErrorKind::Npy`] error that
//! says what is wrong; nothing is allocated beyond what the file actually contains.

use ndarray::{ArrayD, ArrayViewD, IxDyn, ShapeBuilder};

use crate::error::{fail, ErrorKind, Result};
use crate::geometry::MAX_ELEMENTS;

const MAGIC: &[u8] = b"\x93NUMPY";

/// An array read from a `.npy` file, in its stored dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyArray {
    /// `<f4` / `>f4`.
    F32(ArrayD<f32>),
    /// `<f8` / `>f8`.
    F64(ArrayD<f64>),
}

impl NpyArray {
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            NpyArray::F32(a) => a.shape(),
            NpyArray::F64(a) => a.shape(),
        }
    }
    /// `float32` or `float64`.
    pub fn dtype(&self) -> &'static str {
        match self {
            NpyArray::F32(_) => "float32",
            NpyArray::F64(_) => "float64",
        }
    }
    /// The values as `f64` (exact for both dtypes).
    pub fn to_f64(&self) -> ArrayD<f64> {
        match self {
            NpyArray::F32(a) => a.mapv(f64::from),
            NpyArray::F64(a) => a.clone(),
        }
    }
    /// The values as `f32` (rounded if stored as `f64`).
    pub fn to_f32(&self) -> ArrayD<f32> {
        match self {
            NpyArray::F32(a) => a.clone(),
            NpyArray::F64(a) => a.mapv(|v| v as f32),
        }
    }
}

fn bad<T>(message: impl Into<String>) -> Result<T> {
    fail(ErrorKind::Npy {
        message: message.into(),
    })
}

/// Read a `.npy` file.
///
/// # Errors
/// [`ErrorKind::Io`] if the file cannot be read, [`ErrorKind::Npy`] if it is malformed or
/// holds a dtype other than float32/float64.
pub fn read_npy(path: impl AsRef<std::path::Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| ErrorKind::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    parse_npy(&bytes).map_err(|e| match e.kind() {
        ErrorKind::Npy { message } => ErrorKind::Npy {
            message: format!("{}: {message}", path.display()),
        }
        .into(),
        _ => e,
    })
}

/// The parsed header of a `.npy` file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parse the bytes of a `.npy` file.
///
/// # Errors
/// As [`read_npy`].
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return bad("not a .npy file (missing the \\x93NUMPY magic string)");
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return bad(format!("unsupported .npy format version {v}")),
    };
    let end = start.checked_add(header_len).filter(|&e| e <= bytes.len());
    let Some(end) = end else {
        return bad(format!(
            "header claims {header_len} bytes but the file has only {} after the preamble",
            bytes.len().saturating_sub(start)
        ));
    };
    let text =
        std::str::from_utf8(&bytes[start..end]).or_else(|_| bad("header is not valid text"))?;
    let header = parse_header(text)?;
    let data = &bytes[end..];

    let (little, size) = match header.descr.as_str() {
        "<f4" | "=f4" => (true, 4),
        ">f4" => (false, 4),
        "<f8" | "=f8" => (true, 8),
        ">f8" => (false, 8),
        other => {
            return bad(format!(
            "unsupported dtype '{other}': tconv reads float32 ('<f4') and float64 ('<f8') arrays"
        ))
        }
    };
    let mut count: u128 = 1;
    for &d in &header.shape {
        count = count.saturating_mul(d as u128);
    }
    if count > MAX_ELEMENTS {
        return bad(format!(
            "shape {:?} has {count} elements, more than the limit",
            header.shape
        ));
    }
    let needed = count as usize * size;
    if data.len() != needed {
        return bad(format!(
            "shape {:?} of {} needs {needed} data bytes, but the file has {}",
            header.shape,
            header.descr,
            data.len()
        ));
    }
    let shape = IxDyn(&header.shape).set_f(header.fortran_order);
    Ok(if size == 4 {
        let v: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if little {
                    f32::from_le_bytes(b)
                } else {
                    f32::from_be_bytes(b)
                }
            })
            .collect();
        NpyArray::F32(shaped(shape, v)?.as_standard_layout().into_owned())
    } else {
        let v: Vec<f64> = data
            .chunks_exact(8)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                if little {
                    f64::from_le_bytes(b)
                } else {
                    f64::from_be_bytes(b)
                }
            })
            .collect();
        NpyArray::F64(shaped(shape, v)?.as_standard_layout().into_owned())
    })
}

fn shaped<T>(shape: ndarray::Shape<IxDyn>, v: Vec<T>) -> Result<ArrayD<T>> {
    ArrayD::from_shape_vec(shape, v).or_else(|e| bad(format!("cannot shape data: {e}")))
}

/// Parse the Python-literal header dict `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(text: &str) -> Result<Header> {
    let t = text.trim();
    let inner = t
        .strip_prefix('{')
        .and_then(|s| s.trim_end().strip_suffix('}'))
        .ok_or_else(|| {
            crate::Error::from(ErrorKind::Npy {
                message: format!("header is not a dict: {t:?}"),
            })
        })?;
    let value_of = |key: &str| -> Result<&str> {
        let pat = format!("'{key}'");
        let pos = inner.find(&pat).ok_or_else(|| {
            crate::Error::from(ErrorKind::Npy {
                message: format!("header has no '{key}' entry"),
            })
        })?;
        let rest = inner[pos + pat.len()..].trim_start();
        match rest.strip_prefix(':') {
            Some(v) => Ok(v.trim_start()),
            None => bad(format!("header entry '{key}' has no value")),
        }
    };
    let descr = {
        let v = value_of("descr")?;
        let q = v.chars().next().filter(|c| *c == '\'' || *c == '"');
        let Some(q) = q else {
            return bad("header 'descr' is not a string");
        };
        let body = &v[1..];
        match body.find(q) {
            Some(e) => body[..e].to_string(),
            None => return bad("header 'descr' string is not closed"),
        }
    };
    let fortran_order = {
        let v = value_of("fortran_order")?;
        if v.starts_with("True") {
            true
        } else if v.starts_with("False") {
            false
        } else {
            return bad("header 'fortran_order' is neither True nor False");
        }
    };
    let shape = {
        let v = value_of("shape")?;
        let Some(body) = v.strip_prefix('(') else {
            return bad("header 'shape' is not a tuple");
        };
        let Some(close) = body.find(')') else {
            return bad("header 'shape' tuple is not closed");
        };
        let mut dims = Vec::new();
        for part in body[..close].split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            match part.trim_end_matches('L').parse::<usize>() {
                Ok(d) => dims.push(d),
                Err(_) => return bad(format!("header 'shape' has a bad extent '{part}'")),
            }
        }
        dims
    };
    Ok(Header {
        descr,
        fortran_order,
        shape,
    })
}

/// Element types that can be written to `.npy`.
pub trait NpyElement: Copy {
    /// The little-endian descr (`<f4`, `<f8`).
    const DESCR: &'static str;
    /// Append the little-endian bytes of `self`.
    fn put_le(self, out: &mut Vec<u8>);
}

impl NpyElement for f32 {
    const DESCR: &'static str = "<f4";
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl NpyElement for f64 {
    const DESCR: &'static str = "<f8";
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// A shape as Python writes a tuple of integers: `()`, `(3,)`, `(2, 3)` (as `.npy` headers
/// and `numpy` print it).
pub fn python_tuple(dims: &[usize]) -> String {
    match dims {
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Serialise an array as a version-1.0, little-endian, C-order `.npy` file.
pub fn to_npy_bytes<T: NpyElement>(a: &ArrayViewD<'_, T>) -> Vec<u8> {
    let shape = python_tuple(a.shape());
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        T::DESCR
    );
    // Pad with spaces so that the data starts on a 64-byte boundary, ending in '\n'.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.len() * std::mem::size_of::<T>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &v in a.iter() {
        v.put_le(&mut out);
    }
    out
}
