//! Fast algorithms: the phase (sub-pixel) decomposition run by SIMD direct kernels.
//!
//! - [`spec`]: geometry → dense stride-1 phases (transposed conv) or taps (conv).
//! - [`pack`]: weights packed once per plan; input repacked only when a layout needs it.
//! - [`kernels`]: register-tiled GEMM microkernels on packed panels (AVX-512, AVX2+FMA, portable).
//! - [`inplace`]: the same tile reading the input in place through lane masks (few output channels).
//! - [`direct`]: the driver, threads and stores.
//! - [`col2im`]: GEMM over (output channel, tap) rows + col2im sums (few output channels).
//! - [`batch_gemm`]: one GEMM over the batch where the small side has one position per image.
//! - [`im2col`]: im2col + one GEMM over (input channel, tap) rows (convs with few input channels).
//! - [`depthwise`]: depthwise transposed conv by output rows (memory-bound layers).
//! - [`tap_rows`]: strided depthwise conv and weight gradient by kernel-row vectors.
//! - [`winograd`]: Winograd minimal-filtering tiles over the phases (wide layers).
//! - [`winograd_input`]: their input transform in registers from a channels-last copy (f32, AVX2).
//! - [`winograd_weight`]: the same tiles for the weight gradient (roles exchanged).
//! - [`weight`]: the weight gradient's fast paths, and which one a layer takes:
//!   - [`weight_gemm`]: GEMMs over positions on packed copies of both sides ([`weight_pack`]);
//!   - [`weight_rows`], [`weight_thin`]: row dot products where a register tile would be mostly padding;
//!   - [`weight_strided`] and [`winograd_weight`] (below).
//! - [`strided_conv`]: kernel == stride convs (input gradients of up-convolutions), panels dealt from the input.
//! - [`weight_strided`]: the weight gradient of kernel == stride layers, the big side read in place.
//! - [`isa`]: run-time CPU detection, overridable with `TCONV_ISA`.
//! - [`scratch`]: per-thread scratch buffers reused across calls.

pub mod batch_gemm;
pub mod col2im;
pub mod depthwise;
pub mod direct;
pub mod im2col;
pub mod inplace;
pub mod isa;
pub mod kernels;
pub mod pack;
pub mod pair;
pub mod scratch;
pub mod spec;
pub mod strided_conv;
pub mod tap_rows;
pub mod weight;
pub mod weight_gemm;
pub mod weight_outer;
pub mod weight_pack;
pub mod weight_rows;
pub mod weight_strided;
pub mod weight_thin;
pub mod winograd;
pub mod winograd_input;
pub mod winograd_weight;

pub use isa::Isa;

/// Independent sums the weight gradients' reductions run over consecutive images (their
/// GEMM over positions, and the Winograd tiles where each image has many), added in order
/// at the end whatever the thread count: fixed, so that the bits do not depend on it.
pub(crate) const REDUCTION_PARTS: usize = 2;

/// Hint the CPU to bring the cache line holding `slice[at]` into L1 for reading (no effect
/// past the end of `slice`, or off x86-64). Used one tile ahead where the kernels walk many
/// channel planes at once, more streams than the hardware prefetchers follow.
#[inline(always)]
pub(crate) fn prefetch_read<T>(slice: &[T], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if at < slice.len() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // Safety: `at` is in bounds, so the pointer is valid; a prefetch never faults and
        // changes no memory (SSE is part of the x86-64 baseline).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(slice.as_ptr().add(at) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slice, at);
}

/// As [`prefetch_read`], for a line about to be written (fetched for ownership).
#[inline(always)]
pub(crate) fn prefetch_write<T>(slice: &mut [T], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if at < slice.len() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
        // Safety: as in `prefetch_read`; the line's contents are not changed.
        unsafe { _mm_prefetch::<_MM_HINT_ET0>(slice.as_ptr().add(at) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slice, at);
}

/// `s` as `f32` values, where `T` is `f32`.
pub(crate) fn as_f32<T: 'static>(s: &[T]) -> Option<&[f32]> {
    as_type(s)
}

/// [`as_f32`] for a mutable slice.
pub(crate) fn as_f32_mut<T: 'static>(s: &mut [T]) -> Option<&mut [f32]> {
    as_type_mut(s)
}

/// `s` as values of `U`, where `T` is `U`.
pub(crate) fn as_type<U: 'static, T: 'static>(s: &[T]) -> Option<&[U]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>())
        // Safety: `T` is `U` (same TypeId), so the slice is a valid `[U]` of its length.
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr() as *const U, s.len()) })
}

/// [`as_type`] for a mutable slice.
pub(crate) fn as_type_mut<U: 'static, T: 'static>(s: &mut [T]) -> Option<&mut [U]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>())
        // Safety: as in `as_type`; the borrow is handed on.
        .then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut U, s.len()) })
}
