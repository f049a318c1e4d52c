//! One group's phases of the Winograd weight gradient: per chunk of tiles, both sides'
//! transforms, one GEMM per transformed point, and after the last chunk the output
//! transform of each row block.

use std::ops::Range;

use super::transforms::{output_transform, transform, Block, Outputs};
use super::*;
use crate::fast::winograd::Source;

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
    let w = Phases::new(g, s, ps, (group, x, gy), covered);
    if w.fused {
        w.part_sums(0, Sink::Weights(dk), threads);
        return;
    }
    let m_len = ps.len() * w.rb * w.m_block;
    let mut sums: Vec<scratch::Scratch<T>> =
        (0..w.parts).map(|_| scratch::take::<T>(m_len)).collect();
    if w.parts > 1 && threads > 1 {
        let inner = (threads / w.parts).max(1);
        let items: Vec<(usize, &mut scratch::Scratch<T>)> = sums.iter_mut().enumerate().collect();
        run_each(threads.min(w.parts), items, |(part, m)| {
            w.part_sums(part, Sink::Sums(m), inner)
        });
    } else {
        for (part, m) in sums.iter_mut().enumerate() {
            w.part_sums(part, Sink::Sums(m), threads);
        }
    }
    w.finish(&mut sums, dk, threads);
}

/// The work of [`phase_gradient`]: its shapes, chunking and index offsets.
struct Phases<'a, T: Element> {
    g: &'a Geometry,
    s: &'a Setup<T>,
    ps: &'a [&'a Phase],
    group: usize,
    x: &'a [T],
    gy: &'a [T],
    dims: usize,
    cin_g: usize,
    cout_g: usize,
    /// Row blocks (of `mr` input channels) and lane blocks (of `tl` output channels).
    rb: usize,
    lb: usize,
    /// Per axis: a tile's gradient positions (`m` of F(r, m)) and its window (`α`).
    ms: Vec<usize>,
    alphas: Vec<usize>,
    /// Transformed points per tile (= positions of a window), positions of a tile.
    points: usize,
    tile_len: usize,
    /// Sources of the phases.
    srcs: usize,
    /// Tiles per axis of an image, and per image.
    grid: Vec<usize>,
    per_image: usize,
    /// Independent sums over consecutive images, and images per part.
    parts: usize,
    part_batch: usize,
    /// Tiles per chunk.
    kc: usize,
    /// Extents and pitches of the input's and the output's planes, and of the tile grid.
    inputs: Vec<usize>,
    in_plane: usize,
    out_plane: usize,
    in_pitch: Vec<usize>,
    out_pitch: Vec<usize>,
    tile_pitch: Vec<usize>,
    /// Blocks an image of each side holds (all groups').
    x_blocks: usize,
    g_blocks: usize,
    /// Transformed operands: X̂ `[row block][source][point][tile][mr]`, Ĝ `[lane
    /// block][point][tile][tl]`; results M `[row block][source][point][lane
    /// block][mr·tl]`.
    x_run: usize,
    g_run: usize,
    tile_elems: usize,
    m_block: usize,
    simd: bool,
    /// Kernel positions, and each phase's taps: (flat kernel index, source, tap of the
    /// source).
    ksize: usize,
    taps: Vec<Vec<(usize, usize, usize)>>,
    /// Offsets of a window's positions from its first (row-major over `alphas`) in the
    /// input's planes, and of a tile's gradient positions (over `ms`) in the output's.
    x_delta: Vec<usize>,
    g_delta: Vec<usize>,
    /// Where the whole reduction is one chunk of one part, each row block's sums over every
    /// point for one lane block at a time (a few KiB) go through the output transform as
    /// soon as the GEMMs have made them, instead of the whole `M` of the phase being
    /// written to memory and read back (4.7 MB a phase for dcgan1).
    fused: bool,
}

impl<'a, T: Element> Phases<'a, T> {
    fn new(
        g: &'a Geometry,
        s: &'a Setup<T>,
        ps: &'a [&'a Phase],
        (group, x, gy): (usize, &'a [T], &'a [T]),
        covered: &mut [bool],
    ) -> Self {
        let dims = g.axes.len();
        let p = ps[0];
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let (mr, tl) = (s.mr, s.tl);
        let (rb, lb) = (cin_g.div_ceil(mr), cout_g.div_ceil(tl));
        let ms: Vec<usize> = s.tr.iter().map(|t| t.r).collect();
        let alphas: Vec<usize> = s.tr.iter().map(|t| t.alpha).collect();
        let points: usize = alphas.iter().product();
        let tile_len: usize = ms.iter().product();
        let srcs = p.sources.len();
        let grid: Vec<usize> = (0..dims).map(|a| p.extents[a].div_ceil(ms[a])).collect();
        let per_image: usize = grid.iter().product();
        // The reduction over tiles runs as `parts` independent sums over consecutive images
        // (each its own chunks, the chunk size from the sizes only), added in order before
        // the output transform, whatever the thread count: the bits do not depend on it. On
        // two threads each part is one thread's whole pipeline (transforms and GEMMs),
        // instead of twelve short parallel steps per call for dcgan2. Only where each part
        // has at least `MIN_PART_TILES` tiles: every part writes and adds a whole M
        // (dcgan1's 4.7 MB per phase for 32 tiles a part ran 0.83x at 1 thread and 0.90x
        // at 2).
        let parts = if g.batch >= REDUCTION_PARTS
            && g.batch / REDUCTION_PARTS * per_image >= MIN_PART_TILES
        {
            REDUCTION_PARTS
        } else {
            1
        };
        let part_batch = g.batch.div_ceil(parts);
        let elem = std::mem::size_of::<T>();
        let per_tile = (srcs * rb * mr + lb * tl) * points * elem;
        let most = part_batch * per_image;
        // The sums `M` of every phase here, loaded and stored once per chunk.
        let m_bytes = ps.len() * rb * srcs * points * lb * mr * tl * elem;
        let kc = chunk_tiles(s.chunk_bytes, per_tile, m_bytes, most);
        let inputs: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
        let outputs: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
        let (in_pitch, out_pitch) = (pitches_of(&inputs), pitches_of(&outputs));
        let ksize = covered.len();
        let taps = Self::taps(g, s, ps, covered);
        let offsets_of = |shape: &[usize], step: &dyn Fn(usize) -> usize| {
            let mut out = Vec::with_capacity(numel(shape));
            for_each_index(shape, |off| {
                out.push((0..dims).map(|a| off[a] * step(a)).sum())
            });
            out
        };
        let x_delta = offsets_of(&alphas, &|a| s.in_stride[a] * in_pitch[a]);
        let g_delta = offsets_of(&ms, &|a| s.out_stride[a] * out_pitch[a]);
        let tile_elems = mr * tl;
        Phases {
            g,
            s,
            ps,
            group,
            x,
            gy,
            dims,
            cin_g,
            cout_g,
            rb,
            lb,
            points,
            tile_len,
            srcs,
            tile_pitch: pitches_of(&grid),
            grid,
            per_image,
            parts,
            part_batch,
            kc,
            in_plane: numel(&inputs),
            out_plane: numel(&outputs),
            inputs,
            in_pitch,
            out_pitch,
            x_blocks: g.groups * rb,
            g_blocks: g.groups * lb,
            x_run: kc * mr,
            g_run: kc * tl,
            tile_elems,
            m_block: srcs * points * lb * tile_elems,
            simd: s.loops != Isa::Scalar,
            ksize,
            taps,
            ms,
            alphas,
            x_delta,
            g_delta,
            fused: parts == 1 && kc >= most,
        }
    }

    /// Each phase's taps: (flat kernel index, source, tap of the source), each marked in
    /// `covered`.
    fn taps(
        g: &Geometry,
        s: &Setup<T>,
        ps: &[&Phase],
        covered: &mut [bool],
    ) -> Vec<Vec<(usize, usize, usize)>> {
        let kpitch = pitches_of(&g.kernel_shape());
        let rs: Vec<usize> = s.tr.iter().map(|t| t.m).collect();
        ps.iter()
            .map(|p| {
                let mut taps = Vec::new();
                for (si, src) in p.sources.iter().enumerate() {
                    let mut j = 0;
                    for_each_index(&rs, |jj| {
                        let kf = (0..g.axes.len())
                            .map(|a| src.kidx[a][jj[a]] * kpitch[a])
                            .sum();
                        covered[kf] = true;
                        taps.push((kf, si, j));
                        j += 1;
                    });
                }
                taps
            })
            .collect()
    }

    /// Part `part`'s tiles (over the batch).
    fn part_tiles(&self, part: usize) -> Range<usize> {
        let (batch, per) = (self.g.batch, self.part_batch);
        (part * per).min(batch) * self.per_image..((part + 1) * per).min(batch) * self.per_image
    }

    /// The first position of source `src`'s window of tile `tv` in the input's planes,
    /// where the window lies wholly inside the input.
    fn x_origin(&self, src: &Source, tv: &[usize]) -> Option<usize> {
        let s = self.s;
        let mut at = 0;
        for (a, &t) in tv.iter().enumerate().take(self.dims) {
            let u = (self.ms[a] * t) as isize + src.base[a];
            let last =
                (u + self.alphas[a] as isize - 1) * s.in_stride[a] as isize + src.comp[a] as isize;
            if u < 0 || last >= self.inputs[a] as isize {
                return None;
            }
            at += (u as usize * s.in_stride[a] + src.comp[a]) * self.in_pitch[a];
        }
        Some(at)
    }

    /// The output transform of phase `pi`'s taps for row block `rbi`, from an `M` of every
    /// lane block.
    fn outputs(&self, pi: usize, rbi: usize) -> Outputs<'_, T> {
        Outputs {
            taps: &self.taps[pi],
            terms: &self.s.o_terms,
            points: self.points,
            lb: self.lb,
            first_lb: 0,
            tile_elems: self.tile_elems,
            tl: self.s.tl,
            live_rows: self.s.mr.min(self.cin_g - rbi * self.s.mr),
            cout_g: self.cout_g,
            ksize: self.ksize,
        }
    }

    /// Tiles `k0..k0 + kn` (over the batch): each one's image and position in the grid.
    fn tiles_at(&self, k0: usize, kn: usize) -> Vec<(usize, Vec<usize>)> {
        (k0..k0 + kn)
            .map(|k| {
                let (n, t) = (k / self.per_image, k % self.per_image);
                let tv = (0..self.dims)
                    .map(|a| t / self.tile_pitch[a] % self.grid[a])
                    .collect();
                (n, tv)
            })
            .collect()
    }

    /// The chunk's input index table: per source, window position and tile, where the
    /// value lies in the blocked input (times `mr`), `OUTSIDE` past its borders.
    fn x_table(&self, tiles_at: &[(usize, Vec<usize>)], xtab: &mut [usize]) {
        let (s, kc, window) = (self.s, self.kc, self.points);
        for (kk, (n, tv)) in tiles_at.iter().enumerate() {
            // Image `n` in the blocked layout (its blocks' offsets come with each block).
            let image = n * self.x_blocks * self.in_plane;
            for (si, src) in self.ps[0].sources.iter().enumerate() {
                // A window wholly inside: its origin plus each position's offset.
                if let Some(origin) = self.x_origin(src, tv) {
                    for (l, &d) in self.x_delta.iter().enumerate() {
                        xtab[(si * window + l) * kc + kk] = (image + origin + d) * s.mr;
                    }
                    continue;
                }
                let mut l = 0;
                for_each_index(&self.alphas, |off| {
                    let mut at = image;
                    for a in 0..self.dims {
                        let u = (self.ms[a] * tv[a] + off[a]) as isize + src.base[a];
                        let pos = u * s.in_stride[a] as isize + src.comp[a] as isize;
                        if u < 0 || pos >= self.inputs[a] as isize {
                            at = OUTSIDE;
                            break;
                        }
                        at += pos as usize * self.in_pitch[a];
                    }
                    xtab[(si * window + l) * kc + kk] =
                        if at == OUTSIDE { OUTSIDE } else { at * s.mr };
                    l += 1;
                });
            }
        }
    }

    /// The chunk's upstream-gradient index table for phase `p`: per tile position and tile,
    /// where the value lies in the blocked gradient (times `tl`), `OUTSIDE` past the phase.
    fn g_table(&self, p: &Phase, tiles_at: &[(usize, Vec<usize>)], gtab: &mut [usize]) {
        let (s, kc, ms) = (self.s, self.kc, &self.ms);
        for (kk, (n, tv)) in tiles_at.iter().enumerate() {
            let image = n * self.g_blocks * self.out_plane;
            // A tile wholly inside the phase: its origin plus each position's offset.
            if (0..self.dims).all(|a| ms[a] * (tv[a] + 1) <= p.extents[a]) {
                let origin: usize = (0..self.dims)
                    .map(|a| (s.out_stride[a] * ms[a] * tv[a] + p.residue[a]) * self.out_pitch[a])
                    .sum();
                for (i, &d) in self.g_delta.iter().enumerate() {
                    gtab[i * kc + kk] = (image + origin + d) * s.tl;
                }
                continue;
            }
            let mut i = 0;
            for_each_index(ms, |off| {
                let mut at = image;
                for a in 0..self.dims {
                    let q = ms[a] * tv[a] + off[a];
                    if q >= p.extents[a] {
                        at = OUTSIDE;
                        break;
                    }
                    at += (s.out_stride[a] * q + p.residue[a]) * self.out_pitch[a];
                }
                gtab[i * kc + kk] = if at == OUTSIDE { OUTSIDE } else { at * s.tl };
                i += 1;
            });
        }
    }

    /// X̂ of a chunk of `kn` tiles: per row block, its input channels' windows of each
    /// source.
    fn transform_x(&self, xtab: &[usize], kn: usize, xp: &mut [T], threads: usize) {
        let (s, kc, window, mr) = (self.s, self.kc, self.points, self.s.mr);
        let per_block = self.srcs * self.points * self.x_run;
        run_chunks(threads, xp, per_block, |rbi, dst| {
            let mut rows = scratch::take::<T>(window * SUB_TILES.min(kc) * mr);
            for (si, dst) in dst.chunks_mut(self.points * self.x_run).enumerate() {
                let block = Block {
                    src: self.x,
                    first: (self.group * self.rb + rbi) * self.in_plane * mr,
                    width: mr,
                    tab: &xtab[si * window * kc..(si + 1) * window * kc],
                    kc,
                    kn,
                };
                transform(s.loops, &block, &s.x_terms, &mut rows, dst);
            }
        });
    }

    /// Ĝ of a chunk of `kn` tiles: per lane block, its output channels' tiles gathered side
    /// by side, then each point one combination of whole rows, straight into the packed
    /// layout.
    fn transform_g(&self, gtab: &[usize], kn: usize, gp: &mut [T], threads: usize) {
        let (s, kc, tl) = (self.s, self.kc, self.s.tl);
        run_chunks(threads, gp, self.points * self.g_run, |lbi, dst| {
            let mut rows = scratch::take::<T>(self.tile_len * SUB_TILES.min(kc) * tl);
            let block = Block {
                src: self.gy,
                first: (self.group * self.lb + lbi) * self.out_plane * tl,
                width: tl,
                tab: gtab,
                kc,
                kn,
            };
            transform(s.loops, &block, &s.g_terms, &mut rows, dst);
        });
    }

    /// Fused: per row block and lane block, `M[s][ξ] = X̂ · Ĝᵀ` of the chunk's `kn` tiles,
    /// then phase `pi`'s taps into `dk`.
    fn weights(&self, pi: usize, (xp, gp): (&[T], &[T]), kn: usize, dk: &mut [T], threads: usize) {
        let (s, mr, tl) = (self.s, self.s.mr, self.s.tl);
        let (srcs, points, tile_elems) = (self.srcs, self.points, self.tile_elems);
        let items: Vec<(usize, &mut [T])> = dk
            .chunks_mut(mr * self.ksize * self.cout_g)
            .enumerate()
            .collect();
        run_each(threads, items, |(rbi, rows)| {
            let mut m = scratch::take::<T>(srcs * points * tile_elems);
            for lbi in 0..self.lb {
                for (sx, o) in m.chunks_exact_mut(tile_elems).enumerate() {
                    let (si, xi) = (sx / points, sx % points);
                    let a = &xp[((rbi * srcs + si) * points + xi) * self.x_run..][..kn * mr];
                    let b = &gp[(lbi * points + xi) * self.g_run..][..kn * tl];
                    (s.kernel)(a, b, Rows::packed(kn, tl), o.into(), false);
                }
                let out = Outputs {
                    lb: 1,
                    first_lb: lbi,
                    ..self.outputs(pi, rbi)
                };
                output_transform(self.simd, &out, &m, rows);
            }
        });
    }

    /// Per row block: `M[rb][s][ξ] (+)= X̂ · Ĝᵀ` of the chunk's `kn` tiles for every lane
    /// block (adding to `mres` with `more`).
    fn sums(&self, (xp, gp): (&[T], &[T]), kn: usize, more: bool, mres: &mut [T], threads: usize) {
        let (s, mr, tl) = (self.s, self.s.mr, self.s.tl);
        let (srcs, points, tile_elems, lb) = (self.srcs, self.points, self.tile_elems, self.lb);
        let items: Vec<(usize, &mut [T])> = mres.chunks_mut(self.m_block).enumerate().collect();
        run_each(threads, items, |(rbi, m)| {
            for si in 0..srcs {
                for xi in 0..points {
                    let a = &xp[((rbi * srcs + si) * points + xi) * self.x_run..][..kn * mr];
                    let out = &mut m[(si * points + xi) * lb * tile_elems..][..lb * tile_elems];
                    for (lbi, o) in out.chunks_exact_mut(tile_elems).enumerate() {
                        let b = &gp[(lbi * points + xi) * self.g_run..][..kn * tl];
                        (s.kernel)(a, b, Rows::packed(kn, tl), o.into(), more);
                    }
                }
            }
        });
    }

    /// One part's sums, chunk by chunk over its tiles, into the sums `M` (`[phase][row
    /// block]`), or (fused) through the output transform into `dk`.
    fn part_sums(&self, part: usize, mut sink: Sink<'_, T>, threads: usize) {
        let range = self.part_tiles(part);
        let (rb, lb, points, kc) = (self.rb, self.lb, self.points, self.kc);
        let mut xp = scratch::take::<T>(rb * self.srcs * points * self.x_run);
        let mut gp = scratch::take::<T>(lb * points * self.g_run);
        let mut gtab = vec![OUTSIDE; self.tile_len * kc];
        let mut xtab = vec![OUTSIDE; self.srcs * points * kc];
        for k0 in range.clone().step_by(kc) {
            let kn = kc.min(range.end - k0);
            // Index tables of the chunk: per tile, where each of its gradient positions and
            // each source's window inputs lie within an image's planes (plus the image's
            // offset).
            let tiles_at = self.tiles_at(k0, kn);
            self.x_table(&tiles_at, &mut xtab);
            self.transform_x(&xtab, kn, &mut xp, threads);
            for (pi, p) in self.ps.iter().enumerate() {
                self.g_table(p, &tiles_at, &mut gtab);
                self.transform_g(&gtab, kn, &mut gp, threads);
                let ops = (&xp[..], &gp[..]);
                match &mut sink {
                    Sink::Sums(mres) => {
                        let mres = &mut mres[pi * rb * self.m_block..][..rb * self.m_block];
                        self.sums(ops, kn, k0 > range.start, mres, threads);
                    }
                    Sink::Weights(dk) => self.weights(pi, ops, kn, dk, threads),
                }
            }
        }
    }

    /// Per row block: the parts' `M` added in order, then for each phase
    /// `∂L/∂w[k_s(j)] = Σ_ξ Aᵀ[j][ξ] M[s][ξ]` into the block's rows of `dk`.
    fn finish(&self, sums: &mut [scratch::Scratch<T>], dk: &mut [T], threads: usize) {
        let (rb, m_block) = (self.rb, self.m_block);
        let (first, rest) = sums.split_at_mut(1);
        let mut blocks: Vec<RowBlock<'_, T>> = dk
            .chunks_mut(self.s.mr * self.ksize * self.cout_g)
            .enumerate()
            .map(|(rbi, rows)| (rbi, Vec::with_capacity(self.ps.len()), rows))
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
                output_transform(self.simd, &self.outputs(pi, rbi), m, rows);
            }
        });
    }
}
