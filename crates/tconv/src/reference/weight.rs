//! The weight gradient by its definition.

use crate::geometry::Geometry;
use crate::tensor::{numel, positions, Element};

/// `∂L/∂w` of `g` for the input `x` and the output's gradient `gy`, by its definition:
/// `∂L/∂w[a, b', k] = Σ_n Σ_i S[n, a, i] · B[n, b, i*s + k*d - p_begin]`, where for
/// conv_transpose `(S, B) = (x, gy)` and for conv `(S, B) = (gy, x)`, and `b` is channel
/// `b'` of `a`'s group. Shaped as the weight (the oracle for the fast versions).
pub fn weight_gradient<T: Element>(g: &Geometry, x: &[T], gy: &[T]) -> Vec<T> {
    let (s, b) = g.weight_sides(x, gy);
    let (small_sp, big_sp, k_sp) = (g.small_spatial(), g.big_spatial(), g.kernel_shape());
    let (small_size, big_size, k_size) = (numel(&small_sp), numel(&big_sp), numel(&k_sp));
    let (a_ch, b_ch) = g.side_channels();
    let (a_pg, b_pg) = (a_ch / g.groups, b_ch / g.groups);
    let mut dw = vec![T::zero(); a_ch * b_pg * k_size];
    for a in 0..a_ch {
        let group = a / a_pg;
        for bl in 0..b_pg {
            let bc = group * b_pg + bl;
            for (k_flat, k) in positions(&k_sp).enumerate() {
                let mut acc = T::zero();
                for n in 0..g.batch {
                    for (i_flat, i) in positions(&small_sp).enumerate() {
                        if let Some(o) = super::big_flat(g, &i, &k) {
                            acc = acc
                                + s[(n * a_ch + a) * small_size + i_flat]
                                    * b[(n * b_ch + bc) * big_size + o];
                        }
                    }
                }
                dw[(a * b_pg + bl) * k_size + k_flat] = acc;
            }
        }
    }
    dw
}
