//! Microkernels: a register tile of `MR` output channels × `V` vectors of output positions,
//! computing `out[MR × V·LANES] = Σ_k a[k][MR] ⊗ b[k][V·LANES]` — a GEMM microkernel whose
//! `k` runs over (tap, input channel), so all taps of a phase are summed in registers.
//!
//! `a` is the packed weight run (`[k][MR]`, broadcast one value at a time) and `b` the packed
//! input panel (`[k][V·LANES]`, zeros where a tap falls in the padding). Both are read
//! strictly sequentially. The body is written once per ISA as a const-generic function and a
//! table instantiates the tile shapes the planner may choose. Every entry point is a safe
//! function: it checks the slice lengths and the CPU feature before its `unsafe` body.

use super::Isa;
use crate::tensor::Element;
use std::mem::MaybeUninit;

/// Most vectors per tile.
pub const MAX_V: usize = 8;

/// Where the rows of a microkernel's panel operand `b` lie: `taps × k` rows, row `(t, i)`
/// at `t + i·pitch` (`t < taps`, `i < k`), in that order (`t` outer). A packed panel is
/// `taps = 1`, `pitch = V·LANES`; the taps of a wide group read one wider row per channel,
/// each shifted one lane further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    /// Rows per tap.
    pub k: usize,
    /// Distance between consecutive rows of a tap (at least `V·LANES`).
    pub pitch: usize,
    /// Taps, each one lane after the previous.
    pub taps: usize,
    /// Distance between consecutive rows of the output tile: 0 for a contiguous
    /// `MR × V·LANES` tile, else at least `V·LANES` (the tile written in place into a wider
    /// matrix).
    pub out_pitch: usize,
}

impl Rows {
    /// `k` consecutive rows of a packed panel of `width` lanes.
    pub fn packed(k: usize, width: usize) -> Rows {
        Rows {
            k,
            pitch: width,
            taps: 1,
            out_pitch: 0,
        }
    }

    /// The same rows, the output tile's rows `pitch` apart.
    pub fn out_pitch(self, pitch: usize) -> Rows {
        Rows {
            out_pitch: pitch,
            ..self
        }
    }

    /// The output row pitch for a tile `width` values wide, and whether `out` holds the
    /// tile's `mr` rows at it.
    fn out_fit(&self, out_len: usize, mr: usize, width: usize) -> (usize, bool) {
        let p = if self.out_pitch == 0 {
            width
        } else {
            self.out_pitch
        };
        (p, p >= width && out_len >= (mr - 1) * p + width)
    }

    /// Whether `b` holds every row of `width` values.
    fn fit(&self, b_len: usize, width: usize) -> bool {
        self.pitch >= width
            && (self.k == 0
                || self.taps == 0
                || b_len >= (self.taps - 1) + (self.k - 1) * self.pitch + width)
    }

    /// Rows in all.
    fn len(&self) -> usize {
        self.k * self.taps
    }
}

/// A microkernel: `(a, b, rows, out, accumulate)`; `a.len() >= rows.len()·MR`, `b` holds
/// the [`Rows`] of `V·LANES` values, `out` the `MR` rows of `V·LANES` values at the rows'
/// output pitch (panics otherwise). Computes `out (+)= Σ_rows a[row] ⊗ b[row]` into `out`
/// (row-major `MR × V·LANES`, rows `out_pitch` apart), adding to its contents when
/// `accumulate` (which an uninitialised `out` refuses: panics).
pub type KernelFn<T> = fn(&[T], &[T], Rows, Out<'_, T>, bool);

/// A microkernel's output: a slice of values (`From<&mut [T]>`), or of uninitialised
/// memory that the kernel only writes ([`Out::uninit`]), so that a new result needs no
/// zeroing before the kernels overwrite it.
pub struct Out<'a, T> {
    ptr: *mut T,
    len: usize,
    init: bool,
    _slice: std::marker::PhantomData<&'a mut [MaybeUninit<T>]>,
}

impl<'a, T> From<&'a mut [T]> for Out<'a, T> {
    fn from(s: &'a mut [T]) -> Self {
        Out {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            init: true,
            _slice: std::marker::PhantomData,
        }
    }
}

impl<'a, T> Out<'a, T> {
    /// Uninitialised memory, which a kernel may write (`accumulate == false`) but not read.
    pub fn uninit(s: &'a mut [MaybeUninit<T>]) -> Self {
        Out {
            ptr: s.as_mut_ptr().cast(),
            len: s.len(),
            init: false,
            _slice: std::marker::PhantomData,
        }
    }

    /// Elements of the slice.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slice is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first element, for writes of at most [`Out::len`] elements from it (and reads
    /// where it holds values: see [`Out::check`]).
    fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr
    }

    /// Panics unless a kernel asked to `accumulate` may read the values.
    fn check(&self, accumulate: bool) {
        assert!(
            self.init || !accumulate,
            "accumulating into uninitialised memory"
        );
    }
}

/// Portable kernel for any element type: 8 lanes per "vector".
fn portable_kernel<T: Element, const MR: usize, const V: usize>(
    a: &[T],
    b: &[T],
    rows: Rows,
    out: Out<'_, T>,
    accumulate: bool,
) {
    portable_body::<T, MR, V>(a, b, rows, out, accumulate)
}

/// The portable kernel's body.
#[inline(always)]
fn portable_body<T: Element, const MR: usize, const V: usize>(
    a: &[T],
    b: &[T],
    rows: Rows,
    mut out: Out<'_, T>,
    accumulate: bool,
) {
    const L: usize = 8;
    let (op, out_ok) = rows.out_fit(out.len(), MR, V * L);
    assert!(
        a.len() >= rows.len() * MR && rows.fit(b.len(), V * L) && out_ok,
        "kernel operand too short"
    );
    out.check(accumulate);
    let o = out.as_mut_ptr();
    let mut acc = [[[T::zero(); L]; V]; MR];
    if accumulate {
        for (m, acc_m) in acc.iter_mut().enumerate() {
            for (v, acc_v) in acc_m.iter_mut().enumerate() {
                // Safety: inside `out` (checked above), initialised (`check`).
                let row = unsafe { std::slice::from_raw_parts(o.add(m * op + v * L), L) };
                acc_v.copy_from_slice(row);
            }
        }
    }
    for (kk, am) in a.chunks_exact(MR).take(rows.len()).enumerate() {
        let at = kk / rows.k.max(1) + (kk % rows.k.max(1)) * rows.pitch;
        let bk = &b[at..at + V * L];
        for m in 0..MR {
            for v in 0..V {
                for l in 0..L {
                    acc[m][v][l] = acc[m][v][l] + am[m] * bk[v * L + l];
                }
            }
        }
    }
    for (m, acc_m) in acc.iter().enumerate() {
        for (v, acc_v) in acc_m.iter().enumerate() {
            // Safety: inside `out` (checked above); `acc` is a local array.
            unsafe { std::ptr::copy_nonoverlapping(acc_v.as_ptr(), o.add(m * op + v * L), L) };
        }
    }
}

/// A SIMD kernel of an element type (`$lanes` lanes a register, the target features
/// `$features`): its body `$body` over raw pointers and the safe entry point `$entry` that
/// checks the operands and the CPU (`$available`). One register accumulates each vector of
/// the tile; each row broadcasts `MR` weights against `V` loaded vectors, one fused
/// multiply-add per product.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernel {
    ($body:ident, $entry:ident, $features:literal, $available:expr,
     $t:ty, $lanes:literal, $vec:ty,
     $zero:ident, $load:ident, $set1:ident, $fmadd:ident, $store:ident) => {
        /// # Safety
        /// The target features available; `a` holds `rows.len()*MR` values, `b` the `rows`
        /// of `V*LANES` values, `out` `MR` rows of `V*LANES` values `op` apart.
        #[target_feature(enable = $features)]
        unsafe fn $body<const MR: usize, const V: usize>(
            a: *const $t,
            b: *const $t,
            rows: super::Rows,
            out: *mut $t,
            op: usize,
            accumulate: bool,
        ) {
            let mut acc: [[$vec; V]; MR] = [[$zero(); V]; MR];
            if accumulate {
                for (m, row) in acc.iter_mut().enumerate() {
                    for (v, r) in row.iter_mut().enumerate() {
                        *r = $load(out.add(m * op + v * $lanes));
                    }
                }
            }
            let mut a = a;
            for t in 0..rows.taps {
                let mut b = b.add(t);
                for _ in 0..rows.k {
                    let mut bv: [$vec; V] = [$zero(); V];
                    for (v, slot) in bv.iter_mut().enumerate() {
                        *slot = $load(b.add(v * $lanes));
                    }
                    for (m, row) in acc.iter_mut().enumerate() {
                        let av = $set1(*a.add(m));
                        for v in 0..V {
                            row[v] = $fmadd(av, bv[v], row[v]);
                        }
                    }
                    a = a.add(MR);
                    b = b.add(rows.pitch);
                }
            }
            for (m, row) in acc.iter().enumerate() {
                for (v, r) in row.iter().enumerate() {
                    $store(out.add(m * op + v * $lanes), *r);
                }
            }
        }

        /// The kernel (checks the operands and the CPU).
        pub fn $entry<const MR: usize, const V: usize>(
            a: &[$t],
            b: &[$t],
            rows: super::Rows,
            mut out: super::Out<'_, $t>,
            accumulate: bool,
        ) {
            let (op, out_ok) = rows.out_fit(out.len(), MR, V * $lanes);
            out.check(accumulate);
            assert!(
                a.len() >= rows.len() * MR && rows.fit(b.len(), V * $lanes) && out_ok,
                "kernel operand too short"
            );
            assert!($available, "{} kernel on a CPU without it", $features);
            // Safety: lengths and CPU features checked just above.
            unsafe {
                $body::<MR, V>(
                    a.as_ptr(),
                    b.as_ptr(),
                    rows,
                    out.as_mut_ptr(),
                    op,
                    accumulate,
                )
            }
        }
    };
}

/// f64 kernels: the portable kernel's layout (8 lanes per "vector", the tiles of
/// [`tile_shapes_for`]`::<f64>`) in AVX-512F or AVX2 and FMA registers, each product one
/// fused multiply-add. 8 f64 lanes are one AVX-512 register (two AVX2 ones).
#[cfg(target_arch = "x86_64")]
mod f64x {
    use super::{Out, Rows};
    use std::arch::x86_64::*;

    // The AVX-512 kernel: one register per vector of 8 lanes, the portable body's sums
    // (one fused multiply-add per product, rows in order) without its per-row index
    // arithmetic (a division per row: hifigan1d's f64 GEMMs ran at about 65 % of the f64
    // peak so).
    simd_kernel!(
        avx512_body,
        avx512,
        "avx512f",
        is_x86_feature_detected!("avx512f"),
        f64,
        8,
        __m512d,
        _mm512_setzero_pd,
        _mm512_loadu_pd,
        _mm512_set1_pd,
        _mm512_fmadd_pd,
        _mm512_storeu_pd
    );

    /// The AVX2 body: the AVX-512 kernel's, each vector of 8 lanes two registers of 4.
    ///
    /// # Safety
    /// AVX2 and FMA available.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_body<const MR: usize, const V: usize>(
        a: &[f64],
        b: &[f64],
        rows: Rows,
        mut out: Out<'_, f64>,
        accumulate: bool,
    ) {
        let (op, out_ok) = rows.out_fit(out.len(), MR, V * 8);
        assert!(
            a.len() >= rows.len() * MR && rows.fit(b.len(), V * 8) && out_ok,
            "kernel operand too short"
        );
        out.check(accumulate);
        let o = out.as_mut_ptr();
        // Safety (every access below): `a` holds `rows.len()·MR` values, `b` every row of
        // `V·8` values and `out` the `MR` rows `op` apart (checked above); `out` is read
        // only when `accumulate` (initialised: `check`).
        let mut acc = [[[_mm256_setzero_pd(); 2]; V]; MR];
        if accumulate {
            for (m, row) in acc.iter_mut().enumerate() {
                for (v, r) in row.iter_mut().enumerate() {
                    for (h, x) in r.iter_mut().enumerate() {
                        *x = _mm256_loadu_pd(o.add(m * op + v * 8 + 4 * h));
                    }
                }
            }
        }
        let mut ap = a.as_ptr();
        for t in 0..rows.taps {
            let mut bp = b.as_ptr().add(t);
            for _ in 0..rows.k {
                let mut bv = [[_mm256_setzero_pd(); 2]; V];
                for (v, slot) in bv.iter_mut().enumerate() {
                    for (h, x) in slot.iter_mut().enumerate() {
                        *x = _mm256_loadu_pd(bp.add(v * 8 + 4 * h));
                    }
                }
                for (m, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_pd(*ap.add(m));
                    for v in 0..V {
                        for h in 0..2 {
                            row[v][h] = _mm256_fmadd_pd(av, bv[v][h], row[v][h]);
                        }
                    }
                }
                ap = ap.add(MR);
                bp = bp.add(rows.pitch);
            }
        }
        for (m, row) in acc.iter().enumerate() {
            for (v, r) in row.iter().enumerate() {
                for (h, x) in r.iter().enumerate() {
                    _mm256_storeu_pd(o.add(m * op + v * 8 + 4 * h), *x);
                }
            }
        }
    }

    /// The AVX2 f64 kernel (checks the CPU; the body checks the operands).
    pub fn avx2<const MR: usize, const V: usize>(
        a: &[f64],
        b: &[f64],
        rows: Rows,
        out: Out<'_, f64>,
        accumulate: bool,
    ) {
        assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
        // Safety: the features were just checked.
        unsafe { avx2_body::<MR, V>(a, b, rows, out, accumulate) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    simd_kernel!(
        avx2_body,
        avx2,
        "avx2,fma",
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        f32,
        8,
        __m256,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps
    );

    simd_kernel!(
        avx512_body,
        avx512,
        "avx512f",
        is_x86_feature_detected!("avx512f"),
        f32,
        16,
        __m512,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    );
}

/// Tile shapes `(MR, V)` per ISA with their efficiency as measured when the table was made
/// (fraction of FMA peak at large `k`, L1-resident operands; `cargo run --release --example
/// kbench`). The planner only compares them with each other; absolute figures move with the
/// machine (the 6×2 tile has since measured 0.9–1.0). AVX-512 has 32
/// registers, AVX2 (and the portable path, which mirrors it) 16; a tile needs `MR·V`
/// accumulators + `V` loads + 1 broadcast. (AVX2 4×3 uses all 16 and measured 0.37: left out.)
pub fn tile_shapes(isa: Isa) -> &'static [(usize, usize, f32)] {
    match isa {
        Isa::Avx512 => &[
            (12, 2, 0.8),
            (6, 4, 0.8),
            (8, 3, 0.8),
            (24, 1, 0.7),
            (16, 1, 0.65),
            (4, 4, 0.65),
            (3, 4, 0.6),
            (2, 4, 0.5),
            (1, 4, 0.35),
        ],
        Isa::Avx2 | Isa::Scalar => &[
            (6, 2, 0.77),
            (3, 3, 0.68),
            (12, 1, 0.68),
            (8, 1, 0.58),
            (2, 4, 0.6),
            (1, 4, 0.4),
        ],
    }
}

/// The AVX-512 tile shapes of [`tile_shapes`] with their efficiency where AVX-512 runs on
/// 256-bit units (AMD Zen 4, CPUID family 0x19), as the Winograd tiles' planner weighs them
/// there. One 512-bit multiply-add issues a cycle, which leaves every tile from 3×4 up the
/// loads and broadcasts it needs: `kbench` on the Zen 4 of 2026-12-07 (peak 117.6
/// GFLOP/s) ran those at 114-118 GFLOP/s on L1-resident operands (0.97-1.0; k = 128-2048)
/// and at 107-115 as the Winograd GEMMs run (M = 256, K = 512), 2×4 at 105-109 and 87,
/// 1×4 at 55-61 and 45; a full-width core (the Intel Xeon of [`tile_shapes`]) ran 24×1
/// and 16×1 at 0.7 and 0.65 of its peak, 12×2 at 0.8.
pub const HALF_WIDTH_TILE_SHAPES: &[(usize, usize, f32)] = &[
    (12, 2, 1.0),
    (6, 4, 1.0),
    (8, 3, 1.0),
    (24, 1, 1.0),
    (16, 1, 1.0),
    (4, 4, 1.0),
    (3, 4, 1.0),
    (2, 4, 0.92),
    (1, 4, 0.5),
];

/// The tile shapes for element type `T` in a plan of `isa`: [`tile_shapes`], except for
/// f64 on `Scalar` where its kernels are compiled for vectors ([`f64_kernel`]): 8 f64 lanes
/// are one AVX-512 register but two AVX2 ones, so AVX2 takes tiles of one vector (the 6×2
/// tile's 24 accumulators spill there). Efficiencies measured as for [`tile_shapes`]
/// (`kbench`: GFLOP/s over the f64 FMA peak, k = 512-2048, with the hand-written kernels on
/// the Intel Xeon of 2026-12-06: AVX-512 123, AVX2 62). (8×3 ran as 6×2, 24×1 and 16×1
/// at 0.8 and 0.7 from k = 512: not instantiated.)
pub fn tile_shapes_for<T: 'static>(isa: Isa) -> &'static [(usize, usize, f32)] {
    // (`loops_for` differs from `isa` only for f64 on `Scalar`.)
    match (isa, isa.loops_for::<T>()) {
        (Isa::Scalar, Isa::Avx512) => &[
            (6, 4, 1.0),
            (12, 2, 0.99),
            (4, 4, 0.99),
            (6, 2, 0.95),
            (3, 3, 0.85),
            (12, 1, 0.69),
            (2, 4, 0.66),
            (8, 1, 0.65),
            (1, 4, 0.37),
        ],
        (Isa::Scalar, Isa::Avx2) => &[
            (6, 1, 1.0),
            (5, 1, 0.94),
            (4, 1, 0.83),
            (6, 2, 0.64),
            (2, 2, 0.63),
            (12, 1, 0.57),
            (8, 1, 0.5),
            (1, 4, 0.4),
        ],
        _ => tile_shapes(isa),
    }
}

macro_rules! table {
    ($mr:expr, $v:expr, |$m:ident, $vv:ident| $make:expr, [$(($a:literal, $b:literal)),*]) => {
        match ($mr, $v) {
            $(($a, $b) => {
                const $m: usize = $a;
                const $vv: usize = $b;
                Some($make)
            })*
            _ => None,
        }
    };
}

/// The portable kernel for a tile shape (any element type).
pub fn portable<T: Element>(mr: usize, v: usize) -> Option<KernelFn<T>> {
    table!(
        mr,
        v,
        |M, W| portable_kernel::<T, M, W> as KernelFn<T>,
        [(6, 2), (3, 3), (12, 1), (8, 1), (2, 4), (1, 4)]
    )
}

/// An f64 kernel for a tile shape of the portable layout: compiled for the best of AVX-512F
/// and AVX2 with FMA that this CPU has and `TCONV_ISA` allows (fused multiply-adds), else the
/// portable one. The shapes: those of [`tile_shapes`]`(Isa::Scalar)` (Winograd tiles, forced
/// on f64, choose among them) and of [`tile_shapes_for`]`::<f64>` on either ISA.
pub fn f64_kernel(mr: usize, v: usize) -> Option<KernelFn<f64>> {
    #[cfg(target_arch = "x86_64")]
    {
        let isa = Isa::Scalar.loops_for::<f64>();
        if isa != Isa::Scalar {
            let avx512 = isa == Isa::Avx512;
            return table!(
                mr,
                v,
                |M, W| if avx512 {
                    f64x::avx512::<M, W> as KernelFn<f64>
                } else {
                    f64x::avx2::<M, W> as KernelFn<f64>
                },
                [
                    (6, 2),
                    (3, 3),
                    (12, 1),
                    (8, 1),
                    (2, 4),
                    (1, 4),
                    (12, 2),
                    (6, 4),
                    (4, 4),
                    (6, 1),
                    (5, 1),
                    (4, 1),
                    (2, 2)
                ]
            );
        }
    }
    portable::<f64>(mr, v)
}

/// The f32 kernel for the last panel of a GEMM on `mr`-row tiles whose columns fill only
/// `v` vectors, fewer than the tile's: `mr` rows by `v` vectors, the same sums column by
/// column (one fused multiply-add per product, rows in order), so the same bits as the
/// tile's own kernel. Instantiated for the tiles of [`tile_shapes`] of three rows or more
/// and several vectors (12×2, 8×3, 6×4, 4×4, 3×4 on AVX-512; 6×2, 3×3 on AVX2); these are
/// not tiles a plan may be given ([`f32_kernel`] lists those).
pub fn f32_tail_kernel(isa: Isa, mr: usize, v: usize) -> Option<KernelFn<f32>> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => table!(
            mr,
            v,
            |M, W| x86::avx512::<M, W> as KernelFn<f32>,
            [
                (12, 1),
                (8, 1),
                (8, 2),
                (6, 1),
                (6, 2),
                (6, 3),
                (4, 1),
                (4, 2),
                (4, 3),
                (3, 1),
                (3, 2),
                (3, 3)
            ]
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => table!(
            mr,
            v,
            |M, W| x86::avx2::<M, W> as KernelFn<f32>,
            [(6, 1), (3, 1), (3, 2)]
        ),
        _ => f32_kernel(isa, mr, v),
    }
}

/// An f32 kernel for `isa` and a tile shape, if instantiated.
pub fn f32_kernel(isa: Isa, mr: usize, v: usize) -> Option<KernelFn<f32>> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => table!(
            mr,
            v,
            |M, W| x86::avx512::<M, W> as KernelFn<f32>,
            [
                (12, 2),
                (6, 4),
                (8, 3),
                (24, 1),
                (16, 1),
                (4, 4),
                (3, 4),
                (2, 4),
                (1, 4)
            ]
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => table!(
            mr,
            v,
            |M, W| x86::avx2::<M, W> as KernelFn<f32>,
            [(6, 2), (3, 3), (12, 1), (8, 1), (2, 4), (1, 4)]
        ),
        _ => portable::<f32>(mr, v),
    }
}
