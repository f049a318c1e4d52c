//! Fast algorithms: the phase (sub-pixel) decomposition run by SIMD direct kernels.
//!
//! - [`spec`]: geometry → dense stride-1 phases (transposed conv) or taps (conv).
//! - [`pack`]: weights packed once per plan; input repacked only when a layout needs it.
//! - [`kernels`]: register-tiled GEMM microkernels on packed panels (AVX-512, AVX2+FMA, portable).
//! - [`inplace`]: the same tile reading the input in place through lane masks (few output channels).
//! - [`direct`]: the driver, threads and stores.
//! - [`isa`]: run-time CPU detection, overridable with `TCONV_ISA`.

pub mod direct;
pub mod inplace;
pub mod isa;
pub mod kernels;
pub mod pack;
pub mod spec;

pub use isa::Isa;
