//! The 1-D minimal filtering algorithms F(m, r) on the points 0, ±1 and ∞, and their
//! tensor products over the axes as nonzero terms.

use super::*;
use crate::tensor::for_each_index;

/// Finite interpolation points, in the order they are taken (∞ is always the last point).
const POINTS: [f64; 3] = [0.0, 1.0, -1.0];

/// A 1-D minimal filtering algorithm F(m, r): `m` outputs of an `r`-tap correlation from
/// `α = m + r − 1` inputs with `α` multiplications, `y = Aᵀ [(G g) ⊙ (Bᵀ d)]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    /// Outputs per tile.
    pub m: usize,
    /// Taps.
    pub r: usize,
    /// Inputs per tile and points: `m + r − 1`.
    pub alpha: usize,
    /// Input transform `Bᵀ` (`α × α`, row-major).
    pub bt: Vec<f64>,
    /// Weight transform `G` (`α × r`).
    pub g: Vec<f64>,
    /// Output transform `Aᵀ` (`m × α`).
    pub at: Vec<f64>,
}

impl Transform {
    /// The Toom-Cook algorithm F(m, r) on the points 0, 1, −1 (as many as needed) and ∞;
    /// for `r = 1` the identity (`α = m`). `None` past [`MAX_ALPHA`].
    ///
    /// With `V` the Vandermonde matrix of the points (∞: the leading coefficient), a linear
    /// convolution is `c = V⁻¹ [(E_r g) ⊙ (E_m h)]`; the correlation is its transpose in
    /// `h`: `Bᵀ = V⁻ᵀ`, `G = E_r`, `Aᵀ = E_mᵀ`. Each row of `Bᵀ` is then scaled to a largest
    /// magnitude of 1 and the row of `G` inversely.
    pub fn new(m: usize, r: usize) -> Option<Transform> {
        let alpha = m + r - 1;
        if m == 0 || r == 0 || alpha > MAX_ALPHA {
            return None;
        }
        let eye = |n: usize| -> Vec<f64> {
            (0..n * n)
                .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
                .collect()
        };
        if r == 1 {
            return Some(Transform {
                m,
                r,
                alpha,
                bt: eye(alpha),
                g: vec![1.0; alpha],
                at: eye(alpha),
            });
        }
        let pts = &POINTS[..alpha - 1];
        // Row `p` of an evaluation matrix with `n` columns: the powers of point `p`, or the
        // leading coefficient for ∞ (`p == pts.len()`).
        let eval = |p: usize, n: usize| -> Vec<f64> {
            (0..n)
                .map(|e| match pts.get(p) {
                    Some(&x) => x.powi(e as i32),
                    None => f64::from(u8::from(e == n - 1)),
                })
                .collect()
        };
        let v: Vec<f64> = (0..alpha).flat_map(|p| eval(p, alpha)).collect();
        let c = invert(&v, alpha);
        let mut bt = vec![0.0; alpha * alpha];
        for (x, row) in bt.chunks_exact_mut(alpha).enumerate() {
            for (l, b) in row.iter_mut().enumerate() {
                *b = c[l * alpha + x];
            }
        }
        let mut g: Vec<f64> = (0..alpha).flat_map(|p| eval(p, r)).collect();
        let mut at = vec![0.0; m * alpha];
        for p in 0..alpha {
            for (i, e) in eval(p, m).into_iter().enumerate() {
                at[i * alpha + p] = e;
            }
        }
        for (brow, grow) in bt.chunks_exact_mut(alpha).zip(g.chunks_exact_mut(r)) {
            let s = brow.iter().fold(0.0f64, |a, b| a.max(b.abs()));
            if s > 0.0 {
                brow.iter_mut().for_each(|b| *b = snap(*b / s));
                grow.iter_mut().for_each(|w| *w = snap(*w * s));
            }
        }
        Some(Transform {
            m,
            r,
            alpha,
            bt,
            g,
            at,
        })
    }
}

/// `x` rounded to a multiple of 2⁻²⁰ where it is within 1e-12 of one (the inversion's
/// round-off on coefficients that are dyadic rationals).
fn snap(x: f64) -> f64 {
    let s = 1048576.0;
    let r = (x * s).round() / s;
    if (x - r).abs() < 1e-12 {
        r
    } else {
        x
    }
}

/// The inverse of the `n × n` row-major matrix `a` (Gauss-Jordan, partial pivoting); `a`
/// must be invertible (a Vandermonde matrix of distinct points is).
fn invert(a: &[f64], n: usize) -> Vec<f64> {
    let w = 2 * n;
    let mut m = vec![0.0; n * w];
    for i in 0..n {
        m[i * w..i * w + n].copy_from_slice(&a[i * n..(i + 1) * n]);
        m[i * w + n + i] = 1.0;
    }
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| m[i * w + col].abs().total_cmp(&m[j * w + col].abs()))
            .expect("rows left");
        for k in 0..w {
            m.swap(col * w + k, piv * w + k);
        }
        let p = m[col * w + col];
        for k in 0..w {
            m[col * w + k] /= p;
        }
        for i in (0..n).filter(|&i| i != col) {
            let f = m[i * w + col];
            if f != 0.0 {
                for k in 0..w {
                    m[i * w + k] -= f * m[col * w + k];
                }
            }
        }
    }
    (0..n * n).map(|i| m[(i / n) * w + n + i % n]).collect()
}

/// Per-axis transforms as printed, e.g. `F(2x2,3x3)` (outputs, then taps).
pub(crate) fn tile_name(transforms: &[Transform]) -> String {
    let ms: Vec<String> = transforms.iter().map(|t| t.m.to_string()).collect();
    let rs: Vec<String> = transforms.iter().map(|t| t.r.to_string()).collect();
    format!("F({},{})", ms.join("x"), rs.join("x"))
}

/// [`kron_terms`] of one matrix of each axis's transform (`pick`: the matrix, its rows and
/// columns), the coefficients in the element type.
pub(crate) fn terms<T: Element>(
    transforms: &[Transform],
    pick: fn(&Transform) -> (&[f64], usize, usize),
) -> Vec<Vec<(usize, T)>> {
    let mats: Vec<(&[f64], usize, usize)> = transforms.iter().map(pick).collect();
    kron_terms(&mats)
        .into_iter()
        .map(|ts| {
            ts.into_iter()
                .map(|(i, c)| (i, T::from(c).unwrap_or_else(T::zero)))
                .collect()
        })
        .collect()
}

/// Nonzero terms of a tensor product of per-axis matrices: for each output multi-index
/// (row-major over `rows`), the `(input flat index, coefficient)` pairs.
fn kron_terms(mats: &[(&[f64], usize, usize)]) -> Vec<Vec<(usize, f64)>> {
    let rows: Vec<usize> = mats.iter().map(|m| m.1).collect();
    let cols: Vec<usize> = mats.iter().map(|m| m.2).collect();
    let mut out = Vec::new();
    for_each_index(&rows, |ri| {
        let mut terms = Vec::new();
        for_each_index(&cols, |ci| {
            let mut c = 1.0;
            let mut flat = 0;
            for (a, (m, _, nc)) in mats.iter().enumerate() {
                c *= m[ri[a] * nc + ci[a]];
                flat = flat * nc + ci[a];
            }
            if c != 0.0 {
                terms.push((flat, c));
            }
        });
        out.push(terms);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every transform computes the correlation it stands for.
    #[test]
    fn transforms_correlate() {
        for r in 1..=3 {
            for m in 1..=4 {
                let Some(t) = Transform::new(m, r) else {
                    assert!(m + r - 1 > MAX_ALPHA);
                    continue;
                };
                let d: Vec<f64> = (0..t.alpha).map(|i| (i as f64 * 1.7 - 2.3).sin()).collect();
                let w: Vec<f64> = (0..r).map(|j| (j as f64 * 0.9 + 0.4).cos()).collect();
                let bd: Vec<f64> = (0..t.alpha)
                    .map(|x| (0..t.alpha).map(|l| t.bt[x * t.alpha + l] * d[l]).sum())
                    .collect();
                let gw: Vec<f64> = (0..t.alpha)
                    .map(|x| (0..r).map(|j| t.g[x * r + j] * w[j]).sum())
                    .collect();
                for i in 0..m {
                    let y: f64 = (0..t.alpha)
                        .map(|x| t.at[i * t.alpha + x] * gw[x] * bd[x])
                        .sum();
                    let want: f64 = (0..r).map(|j| d[i + j] * w[j]).sum();
                    assert!(
                        (y - want).abs() < 1e-12,
                        "F({m},{r}) output {i}: {y} vs {want}"
                    );
                }
                // The points 0, ±1, ∞: every coefficient a signed power of two or zero.
                for c in t.bt.iter().chain(&t.g).chain(&t.at) {
                    assert!(
                        *c == 0.0 || c.abs().log2().fract() == 0.0,
                        "F({m},{r}): {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn lavin_f23() {
        let t = Transform::new(2, 3).expect("F(2,3)");
        let bt = [
            1., 0., -1., 0., 0., 1., 1., 0., 0., -1., 1., 0., 0., 1., 0., -1.,
        ];
        // Rows may differ in sign from Lavin's; the product is what matters, so compare
        // magnitudes.
        for (a, b) in t.bt.iter().zip(bt) {
            assert_eq!(a.abs(), f64::abs(b));
        }
    }
}
