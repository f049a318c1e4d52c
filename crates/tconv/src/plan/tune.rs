//! Tuning: the planner's tile measured rather than modelled ([`PlanOptions::tune`]).
//!
//! The planner models a register tile's time from the kernels' rates measured on one
//! machine (`tile_shapes`) and the padding a tile leaves; in a layer the tiles also differ
//! in how their panels, weight blocks and tasks use the caches, which the model does not
//! see and which changes with the machine. On a Zen 4 (AVX-512 on 256-bit units, 32 KiB
//! L1d) the modelled tiles of dilated and hifigan1d ran 1.1-1.2x slower than the fastest
//! (see BENCHMARKS.md; since then the model weighs the Winograd tiles alike there, and
//! takes those layers' fastest; dcgan1's at 2 threads it misses). A tuning plan builds the
//! plan for each tile the planner would accept for its algorithm (the Winograd tiles that
//! fit the scratch bound with the same transforms, or the direct engine's tiles), runs each
//! on a scratch input in interleaved passes ([`MIN_PASSES`]), and keeps the modelled tile
//! unless another ran at least 3 % faster ([`MARGIN`]). Every tile sums each output in the
//! same order, so the results do not depend on which one wins (tested below on every
//! candidate of each kind of plan).

use super::{Plan, PlanOptions};
use crate::error::Result;
use crate::geometry::Geometry;
use crate::tensor::{numel, Element};
use std::time::Instant;

/// Passes over the tiles: each builds the plan of every tile still measured (but the
/// modelled one's, built once) and times one run after a warm-up run, so that a burst of a
/// shared machine's noise hits one run of each tile rather than every run of one. A tile
/// keeps its fastest run. At least
/// [`MIN_PASSES`], and more up to [`MAX_PASSES`] while the tuning has taken less than
/// [`BUDGET_SECONDS`]: small layers, whose runs the noise moves most (dilated at 2
/// threads read 2.4-3.8 ms on one tile), get more.
const MIN_PASSES: usize = 4;

/// See [`MIN_PASSES`].
const MAX_PASSES: usize = 12;

/// See [`MIN_PASSES`].
const BUDGET_SECONDS: f64 = 1.0;

/// From the second pass on, tiles slower than this times the fastest so far are not
/// measured again (the modelled one always is).
const DROP: f64 = 1.5;

/// How much faster than the modelled tile another must have run to be taken: where the
/// tiles run alike, the noise of a shared machine would otherwise pick among them at
/// random, and plans built twice would differ for nothing.
const MARGIN: f64 = 0.97;

/// Plan `g` with weight `w` as `options` ask, its tile the fastest measured of those the
/// planner would accept (see the module's documentation).
pub(super) fn tuned<T: Element>(g: Geometry, w: &[T], options: &PlanOptions) -> Result<Plan<T>> {
    let plain = PlanOptions {
        tune: false,
        ..options.clone()
    };
    let first = Plan::assemble(g.clone(), w, &plain, None, true)?;
    let tiles = first.candidates.clone();
    if tiles.len() < 2 {
        return Ok(first);
    }
    let build = |tile: (usize, usize)| {
        let forced = PlanOptions {
            tile: Some(tile),
            algorithm: Some(first.algorithm),
            ..plain.clone()
        };
        Plan::build(g.clone(), w, &forced, None)
    };
    // A fixed pattern of small values: no zeros or subnormals for any path to skip on.
    let x: Vec<T> = (0..numel(&g.input_shape()))
        .map(|i| T::from((i % 17) as f64 / 16.0 - 0.5).unwrap_or_else(T::zero))
        .collect();
    // On a cache line, as the outputs this crate makes (the pair kernels store faster so).
    let mut y = crate::tensor::aligned_zeros::<T>(&g.output_shape(), 1);
    let y = y.as_slice_mut().expect("a new array is contiguous");
    let mut ms = vec![f64::INFINITY; tiles.len()];
    let mut live: Vec<usize> = (0..tiles.len()).collect();
    let started = Instant::now();
    let mut passes = 0;
    while passes < MIN_PASSES
        || (passes < MAX_PASSES && started.elapsed().as_secs_f64() < BUDGET_SECONDS)
    {
        for k in 0..live.len() {
            // Alternate directions, so that no tile always runs first.
            let i = live[if passes % 2 == 0 {
                k
            } else {
                live.len() - 1 - k
            }];
            let built;
            let p = if i == 0 {
                &first
            } else {
                built = build(tiles[i])?;
                &built
            };
            p.run(&x, None, y);
            let start = Instant::now();
            p.run(&x, None, y);
            ms[i] = ms[i].min(start.elapsed().as_secs_f64() * 1e3);
        }
        passes += 1;
        if passes >= 2 {
            let best = ms.iter().copied().fold(f64::INFINITY, f64::min);
            live.retain(|&i| i == 0 || ms[i] <= DROP * best);
        }
    }
    let fastest = (0..tiles.len())
        .min_by(|&a, &b| ms[a].total_cmp(&ms[b]))
        .filter(|&i| ms[i] < MARGIN * ms[0])
        .unwrap_or(0);
    let list: Vec<String> = tiles
        .iter()
        .zip(&ms)
        .map(|((m, n), ms)| format!("{m}x{n} {ms:.4}"))
        .collect();
    let (mr, v) = tiles[fastest];
    let reason = format!(
        "{}; tuned: the {mr}x{v} tile of {} measured here (ms, the fastest of {passes} \
         runs, one a pass, fewer for tiles {DROP}x slower than the fastest: {}; the modelled \
         tile, listed first, unless another ran {:.0} % faster)",
        first.reason,
        tiles.len(),
        list.join(", "),
        (1.0 - MARGIN) * 100.0
    );
    let plan = if fastest == 0 {
        first
    } else {
        build(tiles[fastest])?
    };
    Ok(Plan {
        reason,
        candidates: tiles,
        ..plan
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{ConvParams, Op};
    use crate::plan::Algorithm;

    /// Values with many significant bits (small integers would sum exactly in any order).
    fn floats<T: Element>(n: usize, seed: u64) -> Vec<T> {
        crate::tensor::lcg(seed)
            .take(n)
            .map(|s| T::from((s >> 40) as f64 / (1u64 << 24) as f64 - 0.5).expect("a value"))
            .collect()
    }

    fn bits<T: Element>(v: &[T]) -> Vec<u64> {
        v.iter()
            .map(|x| x.to_f64().expect("a value").to_bits())
            .collect()
    }

    /// `(op, input, weight, params, algorithm)` of every kind of plan with a tile to
    /// choose: Winograd tiles (forced at these sizes: stride 1, a stride-2 layer's phases,
    /// dilation with bias-only phases, 1-D, a conv, a strided conv's sources), the direct
    /// engine (kernel == stride pairs in 2-D and 3-D, groups, an odd stride, in-place
    /// kernels for few output channels, kernel == stride convs: in f32 their panels dealt
    /// straight from the input).
    type Case = (Op, Vec<usize>, Vec<usize>, ConvParams, Option<Algorithm>);

    fn layers() -> Vec<Case> {
        let p = ConvParams::new;
        let (t, c, wino) = (Op::ConvTranspose, Op::Conv, Some(Algorithm::Winograd));
        let dilated = p()
            .stride(&[2, 2])
            .dilation(&[2, 2])
            .padding(&[2, 2])
            .output_padding(&[1, 1]);
        vec![
            (
                t,
                vec![4, 32, 17, 15],
                vec![32, 24, 3, 3],
                p().padding(&[1, 1]),
                wino,
            ),
            (
                t,
                vec![2, 48, 6, 5],
                vec![48, 32, 4, 4],
                p().stride(&[2, 2]).padding(&[1, 1]),
                wino,
            ),
            (t, vec![1, 32, 8, 8], vec![32, 32, 3, 3], dilated, wino),
            (
                t,
                vec![2, 64, 45],
                vec![64, 40, 16],
                p().stride(&[8]).padding(&[4]),
                wino,
            ),
            (
                c,
                vec![2, 32, 11, 10],
                vec![40, 32, 3, 3],
                p().padding(&[1, 1]),
                wino,
            ),
            (
                c,
                vec![1, 24, 12, 12],
                vec![32, 24, 4, 4],
                p().stride(&[2, 2]).padding(&[1, 1]),
                wino,
            ),
            (
                t,
                vec![2, 48, 6, 5],
                vec![48, 32, 4, 4],
                p().stride(&[2, 2]).padding(&[1, 1]),
                None,
            ),
            (
                t,
                vec![2, 16, 5, 9],
                vec![16, 20, 2, 2],
                p().stride(&[2, 2]),
                None,
            ),
            (
                t,
                vec![1, 8, 3, 4, 5],
                vec![8, 12, 2, 2, 2],
                p().stride(&[2, 2, 2]),
                None,
            ),
            (
                t,
                vec![1, 12, 7, 6],
                vec![12, 10, 3, 3],
                p().stride(&[3, 3]).groups(2),
                None,
            ),
            (
                t,
                vec![2, 16, 9, 8],
                vec![16, 3, 4, 4],
                p().stride(&[2, 2]).padding(&[1, 1]),
                None,
            ),
            (
                c,
                vec![2, 16, 10, 12],
                vec![20, 16, 2, 2],
                p().stride(&[2, 2]),
                None,
            ),
            (
                c,
                vec![1, 8, 6, 4, 8],
                vec![12, 8, 2, 2, 2],
                p().stride(&[2, 2, 2]),
                None,
            ),
        ]
    }

    /// Every tile a tuning plan may take gives the modelled plan's bits, on Winograd tiles
    /// and on the direct engine, on 1 and 2 threads, in f32 and f64: which tile wins a
    /// tuning changes nothing but the time.
    #[test]
    fn every_candidate_tile_gives_the_same_bits() {
        fn check<T: Element>() -> (usize, usize) {
            let (mut winograd, mut direct) = (0, 0);
            for (op, xs, ws, params, algorithm) in layers() {
                let x = floats::<T>(numel(&xs), 1);
                let w = floats::<T>(numel(&ws), 2);
                let bias = floats::<T>(
                    if op == Op::Conv {
                        ws[0]
                    } else {
                        ws[1] * params.groups
                    },
                    3,
                );
                let g = Geometry::new(op, &xs, &ws, Some(&[bias.len()]), &params).expect("valid");
                for threads in [1, 2] {
                    let o = PlanOptions {
                        threads: Some(threads),
                        algorithm,
                        ..PlanOptions::default()
                    };
                    // As a tuning starts: the modelled plan with every candidate.
                    let plan = Plan::assemble(g.clone(), &w, &o, None, true).expect("a plan");
                    let want = bits(&plan.run_new(&x, Some(&bias)));
                    assert_eq!(plan.candidates.first().copied(), plan.tile(), "{g:?}");
                    match plan.algorithm {
                        Algorithm::Winograd => winograd += plan.candidates.len() - 1,
                        _ => direct += plan.candidates.len().saturating_sub(1),
                    }
                    for &tile in &plan.candidates[1..] {
                        let forced = PlanOptions {
                            tile: Some(tile),
                            algorithm: Some(plan.algorithm),
                            ..o.clone()
                        };
                        let p = Plan::from_geometry(g.clone(), &w, &forced).expect("a plan");
                        assert_eq!(p.tile(), Some(tile));
                        let got = bits(&p.run_new(&x, Some(&bias)));
                        assert!(got == want, "{tile:?} on {threads} threads: {g:?}");
                    }
                }
            }
            (winograd, direct)
        }
        let (winograd, direct) = check::<f32>();
        assert!(winograd > 0 && direct > 0, "{winograd} {direct}");
        let (winograd, direct) = check::<f64>();
        assert!(winograd > 0 && direct > 0, "{winograd} {direct}");
    }

    /// A tuning plan runs one of its candidates, says which and what each measured, and
    /// gives the modelled plan's bits; plans that run once or force a tile are not tuned.
    #[test]
    fn a_tuned_plan_names_its_tile_and_gives_the_same_bits() {
        let (op, xs, ws, params, _) = layers().swap_remove(6);
        let g = Geometry::new(op, &xs, &ws, None, &params).expect("valid");
        let (x, w) = (floats::<f32>(numel(&xs), 1), floats::<f32>(numel(&ws), 2));
        let o = PlanOptions {
            threads: Some(1),
            ..PlanOptions::default()
        };
        let plain = Plan::assemble(g.clone(), &w, &o, None, true).expect("a plan");
        // A plan that does not tune sizes no other tile than its own.
        let own = Plan::from_geometry(g.clone(), &w, &o).expect("a plan");
        assert_eq!(own.candidates, own.tile().into_iter().collect::<Vec<_>>());
        let tuning = PlanOptions {
            tune: true,
            ..o.clone()
        };
        let tuned = Plan::from_geometry(g.clone(), &w, &tuning).expect("a plan");
        assert_eq!(tuned.candidates, plain.candidates);
        assert!(tuned.candidates.len() > 1, "{:?}", tuned.candidates);
        let (mr, v) = tuned.tile().expect("a tile");
        assert!(tuned.candidates.contains(&(mr, v)));
        assert_eq!(tuned.algorithm, plain.algorithm);
        assert!(tuned.reason.starts_with(&plain.reason), "{}", tuned.reason);
        assert!(
            tuned.reason.contains(&format!("tuned: the {mr}x{v} tile")),
            "{}",
            tuned.reason
        );
        for (m, n) in &tuned.candidates {
            assert!(
                tuned.reason.contains(&format!("{m}x{n} ")),
                "{}",
                tuned.reason
            );
        }
        assert!(bits(&tuned.run_new(&x, None)) == bits(&plain.run_new(&x, None)));
        for untuned in [
            PlanOptions {
                once: true,
                ..tuning.clone()
            },
            PlanOptions {
                tile: plain.tile(),
                algorithm: Some(plain.algorithm),
                ..tuning.clone()
            },
        ] {
            let p = Plan::from_geometry(g.clone(), &w, &untuned).expect("a plan");
            assert!(!p.reason.contains("tuned"), "{}", p.reason);
        }
    }
}
