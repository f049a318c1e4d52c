//! Microkernel throughput on L1-resident operands, for each tile shape of this CPU's ISA,
//! then the preferred shape as the driver runs it (weights of many blocks streaming from L2),
//! then each f64 tile shape. `cargo run --release --example kbench` — the efficiencies in
//! `tile_shapes` and `tile_shapes_for` come from here.

use std::time::Instant;

use tconv::fast::kernels::{f32_kernel, f64_kernel, tile_shapes, tile_shapes_for, KernelFn, Rows};
use tconv::fast::Isa;
use tconv::Element;

fn main() {
    let isa = Isa::detect();
    let lanes = isa.lanes();
    println!("ISA {isa}, {lanes} lanes");
    l1_rates(
        tile_shapes(isa),
        |mr, v| f32_kernel(isa, mr, v),
        lanes,
        200_000_000,
    );
    // As the driver runs it: one panel slice of `k` rows stays in L1 while the weights of
    // `blocks` output-channel blocks (43 × 254 × 6 floats ≈ 262 KiB) stream from L2, each
    // block accumulating into its own tile.
    let &(mr, v, _) = &tile_shapes(isa)[0];
    if let Some(f) = f32_kernel(isa, mr, v) {
        let (blocks, k, tile) = (43usize, 254usize, mr * v * lanes);
        let a = vec![1.0f32; blocks * k * mr];
        let b = vec![1.0f32; k * v * lanes];
        let mut out = vec![0.0f32; blocks * tile];
        let reps = 400_000_000 / (k * tile * blocks);
        let t = Instant::now();
        for _ in 0..reps {
            for bl in 0..blocks {
                let w = &a[bl * k * mr..(bl + 1) * k * mr];
                let rows = Rows::packed(k, v * lanes);
                f(
                    w,
                    &b,
                    rows,
                    (&mut out[bl * tile..(bl + 1) * tile]).into(),
                    true,
                );
            }
        }
        let s = t.elapsed().as_secs_f64();
        let gflops = (reps * blocks * k * tile * 2) as f64 / s / 1e9;
        println!("mr={mr:2} v={v} k={k:4}, {blocks} blocks' weights from L2: {gflops:6.1} GFLOP/s");
    }
    // As the Winograd tiles' GEMMs run (one per transformed point): M = 256 output
    // channels in blocks of `mr` (the last padded), K = 512, over a panel of `n` columns,
    // each block's weights applied to the panel `v` vectors at a time; GFLOP/s of the 256
    // rows (padding waste included). At n = 16 a task's panel is one vector (dcgan1 at
    // 2 threads), at 192 many (hifigan1d).
    for n in [16usize, 192] {
        let (m, k) = (256usize, 512usize);
        for &(mr, v, _) in tile_shapes(isa) {
            let (Some(f), true) = (f32_kernel(isa, mr, v), n % (v * lanes) == 0) else {
                continue;
            };
            let blocks = m.div_ceil(mr);
            let a = vec![1.0f32; blocks * k * mr];
            let b = vec![1.0f32; k * n];
            let mut out = vec![0.0f32; blocks * mr * n];
            let reps = (1_000_000_000 / (m * k * n)).max(1);
            let rows = Rows {
                k,
                pitch: n,
                taps: 1,
                out_pitch: n,
            };
            let t = Instant::now();
            for _ in 0..reps {
                for bl in 0..blocks {
                    let w = &a[bl * k * mr..(bl + 1) * k * mr];
                    for p0 in (0..n).step_by(v * lanes) {
                        let o = &mut out[bl * mr * n + p0..];
                        f(w, &b[p0..], rows, o.into(), false);
                    }
                }
                std::hint::black_box(&mut out);
            }
            let s = t.elapsed().as_secs_f64();
            let gflops = (reps * m * k * n * 2) as f64 / s / 1e9;
            println!(
                "mr={mr:2} v={v} M={m} K={k} N={n:3} as the Winograd GEMMs: {gflops:6.1} GFLOP/s"
            );
        }
    }
    // f64: its plans are `Scalar` (the portable layout, 8 lanes a vector), its kernels
    // in this CPU's registers.
    println!("f64, 8 lanes");
    l1_rates(
        tile_shapes_for::<f64>(Isa::Scalar),
        f64_kernel,
        8,
        100_000_000,
    );
}

/// GFLOP/s of each tile shape's kernel (`kernel(mr, v)`, `lanes` a vector) on L1-resident
/// operands at k = 128, 512 and 2048, about `budget` products a shape and k.
fn l1_rates<T: Element>(
    shapes: &[(usize, usize, f32)],
    kernel: impl Fn(usize, usize) -> Option<KernelFn<T>>,
    lanes: usize,
    budget: usize,
) {
    for &(mr, v, _) in shapes {
        let Some(f) = kernel(mr, v) else {
            continue;
        };
        for k in [128usize, 512, 2048] {
            let a = vec![T::one(); k * mr];
            let b = vec![T::one(); k * v * lanes];
            let mut out = vec![T::zero(); mr * v * lanes];
            let reps = budget / (k * mr * v * lanes);
            let t = Instant::now();
            for _ in 0..reps {
                f(
                    &a,
                    &b,
                    Rows::packed(k, v * lanes),
                    (&mut out[..]).into(),
                    false,
                );
                std::hint::black_box(&mut out);
            }
            let s = t.elapsed().as_secs_f64();
            let gflops = (reps * k * mr * v * lanes * 2) as f64 / s / 1e9;
            println!("mr={mr:2} v={v} k={k:4}: {gflops:6.1} GFLOP/s");
        }
    }
}
