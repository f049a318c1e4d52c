//! One group's phases of the Winograd weight gradient: per chunk of tiles, both sides'
//! transforms, one GEMM per transformed point, and after the last chunk the output
//! transform of each row block.

use super::transforms::{output_transform, transform, Block, Outputs};
use super::*;

/// The taps of phases `ps` (consecutive phases reading the same inputs, whose transformed
/// input is computed once) of group `group` into `dk` (`[ci][k][co]`), marked in `covered`.
#[allow(clippy::too_many_arguments)]
pub(super) fn phase_gradient<T: Element>(
    g: &Geometry,
    s: &Setup<T>,
    ps: &[&Phase],
    group: usize,
    x: &[T],
    gy: &[T],
    dk: &mut [T],
    covered: &mut [bool],
    threads: usize,
) {
    let dims = g.axes.len();
    let p = ps[0];
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    let (mr, tl) = (s.mr, s.tl);
    let (rb, lb) = (cin_g.div_ceil(mr), cout_g.div_ceil(tl));
    let ms: Vec<usize> = s.tr.iter().map(|t| t.r).collect();
    let alphas: Vec<usize> = s.tr.iter().map(|t| t.alpha).collect();
    let points: usize = alphas.iter().product();
    let tile_len: usize = ms.iter().product();
    let window: usize = points;
    let srcs = p.sources.len();
    let grid: Vec<usize> = (0..dims).map(|a| p.extents[a].div_ceil(ms[a])).collect();
    let per_image: usize = grid.iter().product();
    // The reduction over tiles runs as `parts` independent sums over consecutive images
    // (each its own chunks, the chunk size from the sizes only), added in order before the
    // output transform, whatever the thread count: the bits do not depend on it. On two
    // threads each part is one thread's whole pipeline (transforms and GEMMs), instead of
    // twelve short parallel steps per call for dcgan2. Only where each part has at least
    // `MIN_PART_TILES` tiles: every part writes and adds a whole M (dcgan1's 4.7 MB per
    // phase for 32 tiles a part ran 0.83x at 1 thread and 0.90x at 2).
    let parts =
        if g.batch >= REDUCTION_PARTS && g.batch / REDUCTION_PARTS * per_image >= MIN_PART_TILES {
            REDUCTION_PARTS
        } else {
            1
        };
    let part_batch = g.batch.div_ceil(parts);
    let part_tiles = |part: usize| {
        (part * part_batch).min(g.batch) * per_image
            ..((part + 1) * part_batch).min(g.batch) * per_image
    };
    let elem = std::mem::size_of::<T>();
    let per_tile = (srcs * rb * mr + lb * tl) * points * elem;
    let most = part_batch * per_image;
    // The sums `M` of every phase here, loaded and stored once per chunk.
    let m_bytes = ps.len() * rb * srcs * points * lb * mr * tl * elem;
    let kc = chunk_tiles(s.chunk_bytes, per_tile, m_bytes, most);
    let inputs: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
    let outputs: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
    let (in_plane, out_plane) = (numel(&inputs), numel(&outputs));
    let (in_pitch, out_pitch) = (pitches_of(&inputs), pitches_of(&outputs));
    let tile_pitch = pitches_of(&grid);
    // Blocks an image of each side holds (all groups').
    let (x_blocks, g_blocks) = (g.groups * rb, g.groups * lb);

    // Transformed operands: X̂ `[row block][source][point][tile][mr]`, Ĝ
    // `[lane block][point][tile][tl]`; results M `[row block][source][point][lane block][mr·tl]`.
    let x_run = kc * mr;
    let g_run = kc * tl;
    let tile_elems = mr * tl;
    let m_block = srcs * points * lb * tile_elems;
    let simd = s.isa != Isa::Scalar;
    // The phase's taps: (flat kernel index, source, tap of the source).
    let ksize = covered.len();
    let kpitch = pitches_of(&g.kernel_shape());
    let rs: Vec<usize> = s.tr.iter().map(|t| t.m).collect();
    let taps: Vec<Vec<(usize, usize, usize)>> = ps
        .iter()
        .map(|p| {
            let mut taps = Vec::new();
            for (si, src) in p.sources.iter().enumerate() {
                let mut j = 0;
                for_each_index(&rs, |jj| {
                    let kf = (0..dims).map(|a| src.kidx[a][jj[a]] * kpitch[a]).sum();
                    covered[kf] = true;
                    taps.push((kf, si, j));
                    j += 1;
                });
            }
            taps
        })
        .collect();

    // Offsets of a window's positions from its first (row-major over `alphas`) in the
    // input's planes, and of a tile's gradient positions (over `ms`) in the output's; the
    // first position of a window that lies wholly inside the input.
    let offsets_of = |shape: &[usize], step: &dyn Fn(usize) -> usize| {
        let mut out = Vec::with_capacity(numel(shape));
        for_each_index(shape, |off| {
            out.push((0..dims).map(|a| off[a] * step(a)).sum())
        });
        out
    };
    let x_delta: Vec<usize> = offsets_of(&alphas, &|a| s.in_stride[a] * in_pitch[a]);
    let g_delta: Vec<usize> = offsets_of(&ms, &|a| s.out_stride[a] * out_pitch[a]);
    let x_origin = |src: &crate::fast::winograd::Source, tv: &[usize]| -> Option<usize> {
        let mut at = 0;
        for a in 0..dims {
            let u = (ms[a] * tv[a]) as isize + src.base[a];
            let last =
                (u + alphas[a] as isize - 1) * s.in_stride[a] as isize + src.comp[a] as isize;
            if u < 0 || last >= inputs[a] as isize {
                return None;
            }
            at += (u as usize * s.in_stride[a] + src.comp[a]) * in_pitch[a];
        }
        Some(at)
    };

    // The output transform of phase `pi`'s taps for row block `rbi`, from an `M` of every
    // lane block.
    let outputs = |pi: usize, rbi: usize| Outputs {
        taps: &taps[pi],
        terms: &s.o_terms,
        points,
        lb,
        first_lb: 0,
        tile_elems,
        tl,
        live_rows: mr.min(cin_g - rbi * mr),
        cout_g,
        ksize,
    };
    // Where the whole reduction is one chunk of one part, each row block's sums over every
    // point for one lane block at a time (a few KiB) go through the output transform as
    // soon as the GEMMs have made them, instead of the whole `M` of the phase being
    // written to memory and read back (4.7 MB a phase for dcgan1).
    let fused = parts == 1 && kc >= most;
    // One part's sums, chunk by chunk over its tiles, into the sums `M` (`[phase][row
    // block]`), or (fused) through the output transform into `dk`.
    let part_sums = |part: usize, mut sink: Sink<'_, T>, threads: usize| {
        let range = part_tiles(part);
        let mut xp = scratch::take::<T>(rb * srcs * points * x_run);
        let mut gp = scratch::take::<T>(lb * points * g_run);
        let mut gtab = vec![OUTSIDE; tile_len * kc];
        let mut xtab = vec![OUTSIDE; srcs * window * kc];
        for k0 in range.clone().step_by(kc) {
            let kn = kc.min(range.end - k0);
            // Index tables of the chunk: per tile, where each of its gradient positions and
            // each source's window inputs lie within an image's planes (plus the image's
            // offset). Each tile's image and position in the grid.
            let tiles_at: Vec<(usize, Vec<usize>)> = (k0..k0 + kn)
                .map(|k| {
                    let (n, t) = (k / per_image, k % per_image);
                    (n, (0..dims).map(|a| t / tile_pitch[a] % grid[a]).collect())
                })
                .collect();
            for (kk, (n, tv)) in tiles_at.iter().enumerate() {
                // Image `n` in the blocked layout (its blocks' offsets come with each block).
                let image = n * x_blocks * in_plane;
                for (si, src) in p.sources.iter().enumerate() {
                    // A window wholly inside: its origin plus each position's offset.
                    if let Some(origin) = x_origin(src, tv) {
                        for (l, &d) in x_delta.iter().enumerate() {
                            xtab[(si * window + l) * kc + kk] = (image + origin + d) * mr;
                        }
                        continue;
                    }
                    let mut l = 0;
                    for_each_index(&alphas, |off| {
                        let mut at = image;
                        for a in 0..dims {
                            let u = (ms[a] * tv[a] + off[a]) as isize + src.base[a];
                            let pos = u * s.in_stride[a] as isize + src.comp[a] as isize;
                            if u < 0 || pos >= inputs[a] as isize {
                                at = OUTSIDE;
                                break;
                            }
                            at += pos as usize * in_pitch[a];
                        }
                        xtab[(si * window + l) * kc + kk] =
                            if at == OUTSIDE { OUTSIDE } else { at * mr };
                        l += 1;
                    });
                }
            }
            // X̂: per row block, its input channels' windows of each source.
            run_chunks(threads, &mut xp, srcs * points * x_run, |rbi, dst| {
                let mut rows = scratch::take::<T>(window * SUB_TILES.min(kc) * mr);
                for (si, dst) in dst.chunks_mut(points * x_run).enumerate() {
                    let block = Block {
                        src: x,
                        first: (group * rb + rbi) * in_plane * mr,
                        width: mr,
                        tab: &xtab[si * window * kc..(si + 1) * window * kc],
                        kc,
                        kn,
                    };
                    transform(s.isa, &block, &s.x_terms, &mut rows, dst);
                }
            });
            for (pi, p) in ps.iter().enumerate() {
                // Where each of a tile's upstream-gradient positions lies (plus the image's
                // offset).
                for (kk, (n, tv)) in tiles_at.iter().enumerate() {
                    let image = n * g_blocks * out_plane;
                    // A tile wholly inside the phase: its origin plus each position's offset.
                    if (0..dims).all(|a| ms[a] * (tv[a] + 1) <= p.extents[a]) {
                        let origin: usize = (0..dims)
                            .map(|a| {
                                (s.out_stride[a] * ms[a] * tv[a] + p.residue[a]) * out_pitch[a]
                            })
                            .sum();
                        for (i, &d) in g_delta.iter().enumerate() {
                            gtab[i * kc + kk] = (image + origin + d) * tl;
                        }
                        continue;
                    }
                    let mut i = 0;
                    for_each_index(&ms, |off| {
                        let mut at = image;
                        for a in 0..dims {
                            let q = ms[a] * tv[a] + off[a];
                            if q >= p.extents[a] {
                                at = OUTSIDE;
                                break;
                            }
                            at += (s.out_stride[a] * q + p.residue[a]) * out_pitch[a];
                        }
                        gtab[i * kc + kk] = if at == OUTSIDE { OUTSIDE } else { at * tl };
                        i += 1;
                    });
                }
                // Ĝ: per lane block, its output channels' tiles gathered side by side, then
                // each point one combination of whole rows, straight into the packed layout.
                run_chunks(threads, &mut gp, points * g_run, |lbi, dst| {
                    let mut rows = scratch::take::<T>(tile_len * SUB_TILES.min(kc) * tl);
                    let block = Block {
                        src: gy,
                        first: (group * lb + lbi) * out_plane * tl,
                        width: tl,
                        tab: &gtab,
                        kc,
                        kn,
                    };
                    transform(s.isa, &block, &s.g_terms, &mut rows, dst);
                });
                let (xp, gp) = (&xp[..], &gp[..]);
                let mres = match &mut sink {
                    Sink::Sums(mres) => &mut mres[pi * rb * m_block..][..rb * m_block],
                    Sink::Weights(dk) => {
                        // Per row block and lane block: M[s][ξ] = X̂ · Ĝᵀ, then its taps.
                        let items: Vec<(usize, &mut [T])> =
                            dk.chunks_mut(mr * ksize * cout_g).enumerate().collect();
                        run_each(threads, items, |(rbi, rows)| {
                            let mut m = scratch::take::<T>(srcs * points * tile_elems);
                            for lbi in 0..lb {
                                for (sx, o) in m.chunks_exact_mut(tile_elems).enumerate() {
                                    let (si, xi) = (sx / points, sx % points);
                                    let a =
                                        &xp[((rbi * srcs + si) * points + xi) * x_run..][..kn * mr];
                                    let b = &gp[(lbi * points + xi) * g_run..][..kn * tl];
                                    (s.kernel)(a, b, Rows::packed(kn, tl), o, false);
                                }
                                let out = Outputs {
                                    lb: 1,
                                    first_lb: lbi,
                                    ..outputs(pi, rbi)
                                };
                                output_transform(simd, &out, &m, rows);
                            }
                        });
                        continue;
                    }
                };
                // Per row block: M[rb][s][ξ] (+)= X̂ · Ĝᵀ for every lane block.
                let items: Vec<(usize, &mut [T])> = mres.chunks_mut(m_block).enumerate().collect();
                run_each(threads, items, |(rbi, m)| {
                    for si in 0..srcs {
                        for xi in 0..points {
                            let a = &xp[((rbi * srcs + si) * points + xi) * x_run..][..kn * mr];
                            let out =
                                &mut m[(si * points + xi) * lb * tile_elems..][..lb * tile_elems];
                            for (lbi, o) in out.chunks_exact_mut(tile_elems).enumerate() {
                                let b = &gp[(lbi * points + xi) * g_run..][..kn * tl];
                                (s.kernel)(a, b, Rows::packed(kn, tl), o, k0 > range.start);
                            }
                        }
                    }
                });
            }
        }
    };
    if fused {
        part_sums(0, Sink::Weights(dk), threads);
        return;
    }
    let m_len = ps.len() * rb * m_block;
    let mut sums: Vec<scratch::Scratch<T>> =
        (0..parts).map(|_| scratch::take::<T>(m_len)).collect();
    if parts > 1 && threads > 1 {
        let inner = (threads / parts).max(1);
        let items: Vec<(usize, &mut scratch::Scratch<T>)> = sums.iter_mut().enumerate().collect();
        run_each(threads.min(parts), items, |(part, m)| {
            part_sums(part, Sink::Sums(m), inner)
        });
    } else {
        for (part, m) in sums.iter_mut().enumerate() {
            part_sums(part, Sink::Sums(m), threads);
        }
    }
    // Per row block: the parts' M added in order, then for each phase
    // ∂L/∂w[k_s(j)] = Σ_ξ Aᵀ[j][ξ] M[s][ξ] into the block's rows of `dk`.
    let (first, rest) = sums.split_at_mut(1);
    let mut blocks: Vec<RowBlock<'_, T>> = dk
        .chunks_mut(mr * ksize * cout_g)
        .enumerate()
        .map(|(rbi, rows)| (rbi, Vec::with_capacity(ps.len()), rows))
        .collect();
    for phase in first[0].chunks_mut(rb * m_block) {
        for (b, m) in blocks.iter_mut().zip(phase.chunks_mut(m_block)) {
            b.1.push(m);
        }
    }
    let rest = &*rest;
    run_each(threads, blocks, |(rbi, ms, rows)| {
        for (pi, m) in ms.into_iter().enumerate() {
            for other in rest {
                let o = &other[(pi * rb + rbi) * m_block..][..m_block];
                for (a, &b) in m.iter_mut().zip(o) {
                    *a = *a + b;
                }
            }
            output_transform(simd, &outputs(pi, rbi), m, rows);
        }
    });
}
