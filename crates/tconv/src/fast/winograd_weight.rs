//! The weight gradient by Winograd tiles: the forward pass's minimal filtering with the
//! roles of the weight and the upstream gradient exchanged.
//!
//! After the phase decomposition ([`winograd`](super::winograd)) a phase of the forward op is
//! `y[q] = Σ_s Σ_j x_s[q + base_s + j] · w[k_s(j)]` (`x_s` the input, or for a strided conv its
//! polyphase component `s`). So the weight gradient of tap `j` is
//! `∂L/∂w[k_s(j)] = Σ_n Σ_q gy[q] · x_s[q + base_s + j]`: split the positions `q` into the
//! forward's tiles of `m` per axis, and each tile's share is the correlation F(r, m) of the
//! `α = m + r − 1` inputs `x_s[m·t + base_s ..]` with the `m` upstream gradients of the tile,
//! giving the `r` taps: `Aᵀ [(G gy_t) ⊙ (Bᵀ d_t)]` with F(r, m)'s matrices. Summed over tiles
//! (and the batch), the elementwise products become one GEMM per transformed point, reducing
//! over the tiles: `M[ξ][ci][co] = Σ_t X̂[ξ][ci][t] · Ĝ[ξ][co][t]`, on the same packed
//! microkernels (input channels on the register tile's rows, output channels on its lanes),
//! then `∂L/∂w[k_s(j)] = Σ_ξ Aᵀ[j][ξ] · M[ξ]`. The multiplications fall as in the forward pass
//! ([`winograd::gain`](super::winograd::gain): 1.8x for DCGAN's k4 s2 layers).
//!
//! Both sides are first copied into blocks of the transforms' channels, channels-last.
//! Tiles are taken in chunks whose transformed operands fit 4 MiB, or 1 MiB where the sums
//! are small (`chunk_tiles`); both transforms gather
//! through per-chunk index tables (zeros past the borders; each position's channels of a
//! block one contiguous run; a window or tile wholly inside is its origin plus fixed
//! offsets) and combine whole rows of a few tiles at a time. Every `M` element
//! is one kernel call per chunk, the chunks in order; where each image has many tiles the
//! batch is cut into two parts whose sums are added in order. The chunk size and the parts
//! depend on the sizes only: results are bitwise identical for any thread count. They
//! differ from the direct sums by rounding only (the transforms' coefficients are 0, ±1,
//! ±1/2): exact on small integers. After the last chunk, each row block of input channels
//! adds its parts' `M` and runs its output transform into `[ci][k][co]` rows, which are
//! then transposed into the weight's layout.
//!
//! The planner's model is the forward pass's ([`pays`]): it takes the tiles for dcgan1,
//! dcgan2 and hifigan1d, whose weight gradients ran 1.15-1.36x, 1.02-1.25x (paired, 1 and 2
//! threads) and 1.03-1.35x (alternating, 1 thread) faster than the direct GEMMs, and on
//! AVX-512 for s1k3 (1.21x at 1 thread, 1.09x at 2); for dcgan3 the transforms (mostly the
//! gathers of each tile's window) cost about what the multiplications save. Consecutive
//! phases that read the same inputs share their transformed input, as in the forward pass.

use super::direct::{copy_short, run_chunks, run_each};
use super::kernels::{portable, tile_shapes, KernelFn, Rows};
use super::scratch;
use super::spec::pitches_of;
use super::winograd::{combine, decompose, terms, tile_name, Phase, Transform};
use super::Isa;
use super::REDUCTION_PARTS;
use crate::geometry::Geometry;
use crate::params::Op;
use crate::tensor::{for_each_index, numel, Element};

/// Bytes of both sides' transformed operands one chunk of tiles holds at most (all
/// points); [`chunk_tiles`] takes a quarter of it where the sums are small.
const CHUNK_BYTES: usize = 4 << 20;

/// Tiles per chunk for `per_tile` bytes of transformed operands a tile, `m_bytes` of sums
/// and `most` tiles a part: what `chunk_bytes` holds, or, where the sums are small beside
/// the operands (at most half), what a quarter of it holds (an L2's worth: the transforms'
/// output is still in L2 when the GEMMs read it), but at least `MIN_CHUNK_TILES` (each
/// chunk loads and stores every sum once).
///
/// Of the suite, only s1k3 takes the smaller chunks (128 tiles of 8.5 KiB, sums 288 KiB,
/// against 481): its weight gradient ran 1.25x / 1.11x faster at 2 threads and 1.00x /
/// 1.01x at 1, the backward pass 1.14x / 1.15x and 1.05x / 1.03x (paired, median / min,
/// 8 and 6 rounds). hifigan1d's sums (8 MiB) keep whole parts: in 128-tile chunks its
/// weight gradient ran 0.84x-0.87x; dcgan1's and dcgan2's parts fit one chunk either way.
fn chunk_tiles(chunk_bytes: usize, per_tile: usize, m_bytes: usize, most: usize) -> usize {
    let per_tile = per_tile.max(1);
    let whole = chunk_bytes / per_tile;
    let in_l2 = (chunk_bytes / 4 / per_tile).max(MIN_CHUNK_TILES);
    let kc = if 2 * m_bytes <= in_l2 * per_tile {
        whole.min(in_l2)
    } else {
        whole
    };
    kc.clamp(8, most.max(8))
}

/// Fewest tiles in a chunk that [`chunk_tiles`] sizes for L2.
const MIN_CHUNK_TILES: usize = 128;

/// Where [`phase_gradient`]'s GEMMs put their sums: into `M` (`[phase][row block]`), or
/// through the output transform into the rows of `dk`.
enum Sink<'a, T> {
    Sums(&'a mut [T]),
    Weights(&'a mut [T]),
}

/// A row block of `dk` in the output transform: its index, its `M` of each phase, its rows.
type RowBlock<'a, T> = (usize, Vec<&'a mut [T]>, &'a mut [T]);

/// Fewest tiles a part of the reduction must have.
const MIN_PART_TILES: usize = 128;

/// Index-table entry of a position outside the tensor (read as zero).
const OUTSIDE: usize = usize::MAX;

/// The tiles, transforms and kernel of one weight gradient.
struct Setup<T> {
    /// F(r, m) per axis (outputs: the taps; filter: a tile of the upstream gradient).
    tr: Vec<Transform>,
    phases: Vec<Phase>,
    out_stride: Vec<usize>,
    in_stride: Vec<usize>,
    /// Per point: `(window index, coefficient)` of `Bᵀ ⊗ …` and `(tile index, coefficient)`
    /// of `G ⊗ …`; per tap: `(point, coefficient)` of `Aᵀ ⊗ …`.
    x_terms: Vec<Vec<(usize, T)>>,
    g_terms: Vec<Vec<(usize, T)>>,
    o_terms: Vec<Vec<(usize, T)>>,
    kernel: KernelFn<T>,
    isa: Isa,
    /// Bytes of transformed operands a chunk of tiles holds ([`CHUNK_BYTES`]).
    chunk_bytes: usize,
    mr: usize,
    tl: usize,
}

/// `∂L/∂w` of `g` by Winograd tiles, in the weight's PyTorch layout; `None` where the tiles
/// do not apply (see [`winograd::applies`](super::winograd::applies)).
pub fn grad_weight<T: Element>(
    g: &Geometry,
    x: &[T],
    gy: &[T],
    isa: Isa,
    threads: usize,
) -> Option<Vec<T>> {
    grad_weight_chunked(g, x, gy, isa, threads, CHUNK_BYTES)
}

/// [`grad_weight`] with chunks of tiles sized for `chunk_bytes` of transformed operands.
fn grad_weight_chunked<T: Element>(
    g: &Geometry,
    x: &[T],
    gy: &[T],
    isa: Isa,
    threads: usize,
    chunk_bytes: usize,
) -> Option<Vec<T>> {
    let s = setup::<T>(g, isa, chunk_bytes)?;
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    let ksize = numel(&g.kernel_shape());
    let per_group = cin_g * cout_g * ksize;
    if g.batch == 0 || per_group * g.groups == 0 {
        return Some(vec![T::zero(); g.groups * per_group]);
    }
    // Per group, first `[ci][k][co]` (each row block's rows written by one task), then each
    // row transposed in place into `[ci][co][k]` (a transposed conv's weight).
    let mut dw = vec![T::zero(); g.groups * per_group];
    // Both sides in blocks of the transforms' channels, each block channels-last
    // (`[n][block][position][channel]`, zeros past a group's channels): a transform then
    // gathers each position's channels as one contiguous run, and a block's positions lie
    // together. From the planes, one scalar load per channel, the transforms took a third
    // of dcgan2's weight gradient (perf).
    let in_plane: usize = g.axes.iter().map(|a| a.input).product();
    let out_plane: usize = g.axes.iter().map(|a| a.output).product();
    let [xt, gt] = blocked(
        [
            (x, (g.batch, g.groups, cin_g, in_plane), s.mr),
            (gy, (g.batch, g.groups, cout_g, out_plane), s.tl),
        ],
        threads,
    );
    let (x, gy) = (&xt[..], &gt[..]);
    for (group, dwg) in dw.chunks_mut(per_group).enumerate() {
        let mut covered = vec![false; ksize];
        // Consecutive phases that read the same inputs share their transformed input.
        let live: Vec<&Phase> = s
            .phases
            .iter()
            .filter(|p| p.live() && !p.extents.contains(&0))
            .collect();
        let mut first = 0;
        while first < live.len() {
            let mut end = first + 1;
            while end < live.len() && live[first].same_input(live[end]) {
                end += 1;
            }
            let ps = &live[first..end];
            phase_gradient(g, &s, ps, group, x, gy, dwg, &mut covered, threads);
            first = end;
        }
        let covered = &covered[..];
        let row_len = cout_g * ksize;
        let per_task = cin_g.div_ceil(threads.max(1)) * row_len;
        run_chunks(threads, dwg, per_task, |_, rows| {
            let mut tmp = vec![T::zero(); row_len];
            for row in rows.chunks_exact_mut(row_len) {
                copy_short(&mut tmp, row);
                for (k, _) in covered.iter().enumerate().filter(|(_, &c)| !c) {
                    tmp[k * cout_g..(k + 1) * cout_g].fill(T::zero());
                }
                transpose(&tmp, ksize, cout_g, row);
            }
        });
    }
    if g.op == Op::Conv {
        // `[group][ci][co][k]` → `[group][co][ci][k]` (a conv's weight).
        let mut out = vec![T::zero(); dw.len()];
        for grp in 0..g.groups {
            let base = grp * per_group;
            for ci in 0..cin_g {
                for co in 0..cout_g {
                    let from = base + (ci * cout_g + co) * ksize;
                    let to = base + (co * cin_g + ci) * ksize;
                    out[to..to + ksize].copy_from_slice(&dw[from..from + ksize]);
                }
            }
        }
        dw = out;
    }
    Some(dw)
}

/// A side's tensor, its `(batch, groups, per_group, plane)` and its block width.
type Side<'a, T> = (&'a [T], (usize, usize, usize, usize), usize);

/// Each side `src` (`[n][group][channel][position]`, `per_group` channels a group, the same
/// batch) in blocks of `width` channels, `[n][group][block][position][channel]`, zeros past
/// each group's last channel; in pooled scratch. One parallel step for both sides, each
/// thread both sides of a range of consecutive images. (A step per side, each thread a
/// range of one side's images, cost a second wait for the threads: s1k3's weight gradient
/// ran 1.03-1.07x faster at 2 threads this way.)
fn blocked<T: Element>(sides: [Side<'_, T>; 2], threads: usize) -> [scratch::Scratch<T>; 2] {
    let image = |&(_, (_, groups, per_group, plane), width): &Side<'_, T>| {
        groups * per_group.div_ceil(width) * plane * width
    };
    let batch = sides[0].1 .0;
    let mut outs = sides.map(|side| scratch::take::<T>(batch * image(&side)));
    let total: usize = outs.iter().map(|o| o.len()).sum();
    let threads = if total > 1 << 17 { threads } else { 1 };
    let per_item = batch.div_ceil(threads.max(1)).max(1);
    let [xo, go] = &mut outs;
    let (mut xr, mut gr): (&mut [T], &mut [T]) = (xo, go);
    let mut items = Vec::with_capacity(threads);
    for n0 in (0..batch).step_by(per_item) {
        let k = per_item.min(batch - n0);
        let (xd, xrest) = std::mem::take(&mut xr).split_at_mut(k * image(&sides[0]));
        let (gd, grest) = std::mem::take(&mut gr).split_at_mut(k * image(&sides[1]));
        (xr, gr) = (xrest, grest);
        items.push((n0, xd, gd));
    }
    run_each(threads, items, |(n0, xd, gd)| {
        for (side, dst) in sides.iter().zip([xd, gd]) {
            let &(src, (_, groups, per_group, plane), width) = side;
            let blocks = per_group.div_ceil(width);
            for (i, dst) in dst.chunks_exact_mut(plane * width).enumerate() {
                let (n, gb) = (n0 + i / (groups * blocks), i % (groups * blocks));
                let (group, blk) = (gb / blocks, gb % blocks);
                let first = blk * width;
                let live = width.min(per_group - first);
                let rows =
                    &src[((n * groups + group) * per_group + first) * plane..][..live * plane];
                if live == width {
                    transpose(rows, width, plane, dst);
                    continue;
                }
                for (pos, d) in dst.chunks_exact_mut(width).enumerate() {
                    for (c, v) in d.iter_mut().enumerate() {
                        *v = if c < live {
                            rows[c * plane + pos]
                        } else {
                            T::zero()
                        };
                    }
                }
            }
        }
    });
    outs
}

/// The decomposition, the transforms of F(r, m) per axis and the kernel.
fn setup<T: Element>(g: &Geometry, isa: Isa, chunk_bytes: usize) -> Option<Setup<T>> {
    let (tr, phases, out_stride, in_stride) = gradient_transforms(g)?;
    // In F(r, m): `t.r` is the gradient tile's length m, `t.m` the taps r.
    let x_terms = terms(&tr, |t| (t.bt.as_slice(), t.alpha, t.alpha));
    let g_terms = terms(&tr, |t| (t.g.as_slice(), t.alpha, t.r));
    let o_terms = terms(&tr, |t| (t.at.as_slice(), t.m, t.alpha));
    // An ISA this CPU has (the transforms run AVX2 code for any but the portable one),
    // and the portable kernels where it has none for `T`.
    let isa = isa.or_below();
    let isa = if tile_shapes(isa)
        .iter()
        .any(|&(mr, v, _)| T::fast_kernel(isa, mr, v).is_some())
    {
        isa
    } else {
        Isa::Scalar
    };
    let &(mr, v, _) = tile_shapes(isa)
        .iter()
        .find(|&&(mr, v, _)| T::fast_kernel(isa, mr, v).is_some() || isa == Isa::Scalar)?;
    let kernel = T::fast_kernel(isa, mr, v).or_else(|| portable::<T>(mr, v))?;
    Some(Setup {
        tr,
        phases,
        out_stride,
        in_stride,
        x_terms,
        g_terms,
        o_terms,
        kernel,
        isa,
        chunk_bytes,
        mr,
        tl: v * isa.lanes(),
    })
}

/// The taps of phases `ps` (consecutive phases reading the same inputs, whose transformed
/// input is computed once) of group `group` into `dk` (`[ci][k][co]`), marked in `covered`.
#[allow(clippy::too_many_arguments)]
fn phase_gradient<T: Element>(
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
    let x_origin = |src: &super::winograd::Source, tv: &[usize]| -> Option<usize> {
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

/// `dst[c][r] = src[r][c]` for an `r × c` matrix `src` (for f32 with AVX: 8×8 blocks,
/// then 4×4 blocks of the rows and columns left, then element by element).
fn transpose<T: Element>(src: &[T], r: usize, c: usize, dst: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if r >= 4 && c >= 4 && is_x86_feature_detected!("avx") {
        if let (Some(s32), Some(d32)) = (super::as_f32(src), super::as_f32_mut(dst)) {
            assert!(s32.len() >= r * c && d32.len() >= r * c, "transpose bounds");
            // Safety: every load and store lies within the `r × c` values checked above;
            // AVX was detected.
            unsafe { transpose_avx(s32.as_ptr(), r, c, d32.as_mut_ptr()) };
            return;
        }
    }
    transpose_range(src, (0..r, 0..c), r, c, dst);
}

/// [`transpose`] element by element for rows `rows` and columns `cols` of the `r × c`
/// matrix.
fn transpose_range<T: Copy>(
    src: &[T],
    (rows, cols): (std::ops::Range<usize>, std::ops::Range<usize>),
    r: usize,
    c: usize,
    dst: &mut [T],
) {
    for j in cols {
        for i in rows.clone() {
            dst[j * r + i] = src[i * c + j];
        }
    }
}

/// # Safety
/// AVX available; `src` and `dst` valid for `r·c` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_avx(src: *const f32, r: usize, c: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    let (r8, c8) = (r / 8 * 8, c / 8 * 8);
    for i0 in (0..r8).step_by(8) {
        for j0 in (0..c8).step_by(8) {
            let x: [__m256; 8] =
                std::array::from_fn(|i| _mm256_loadu_ps(src.add((i0 + i) * c + j0)));
            for (j, col) in super::direct::transpose8x8(x).iter().enumerate() {
                _mm256_storeu_ps(dst.add((j0 + j) * r + i0), *col);
            }
        }
    }
    // Four rows left (r = 12: a block of 12 channels): 4×4 blocks.
    let (r4, c4) = if r - r8 >= 4 {
        (r8 + 4, c / 4 * 4)
    } else {
        (r8, 0)
    };
    for j0 in (0..c4).step_by(4) {
        let x: [__m128; 4] = std::array::from_fn(|i| _mm_loadu_ps(src.add((r8 + i) * c + j0)));
        let t0 = _mm_unpacklo_ps(x[0], x[1]); // a0 b0 a1 b1
        let t1 = _mm_unpackhi_ps(x[0], x[1]); // a2 b2 a3 b3
        let t2 = _mm_unpacklo_ps(x[2], x[3]); // c0 d0 c1 d1
        let t3 = _mm_unpackhi_ps(x[2], x[3]); // c2 d2 c3 d3
        let cols = [
            _mm_movelh_ps(t0, t2),
            _mm_movehl_ps(t2, t0),
            _mm_movelh_ps(t1, t3),
            _mm_movehl_ps(t3, t1),
        ];
        for (j, col) in cols.iter().enumerate() {
            _mm_storeu_ps(dst.add((j0 + j) * r + r8), *col);
        }
    }
    // The rest element by element: columns past the 8×8 blocks, past the 4×4 ones, and
    // the rows past both.
    let (s, d) = (
        std::slice::from_raw_parts(src, r * c),
        std::slice::from_raw_parts_mut(dst, r * c),
    );
    transpose_range(s, (0..r8, c8..c), r, c, d);
    transpose_range(s, (r8..r4, c4..c), r, c, d);
    transpose_range(s, (r4..r, 0..c), r, c, d);
}

/// A row block's output transform: its taps, `Aᵀ ⊗ …`, and the shapes of `M` and `dk`.
struct Outputs<'a, T> {
    taps: &'a [(usize, usize, usize)],
    terms: &'a [Vec<(usize, T)>],
    points: usize,
    /// Lane blocks `M` holds, the first of them lane block `first_lb` of `dk`.
    lb: usize,
    first_lb: usize,
    tile_elems: usize,
    tl: usize,
    live_rows: usize,
    cout_g: usize,
    ksize: usize,
}

/// `∂L/∂w[k_s(j)] = Σ_ξ Aᵀ[j][ξ] M[s][ξ]` for a row block's `M` (`[s][ξ][lane block][tile]`)
/// into its rows of `dk` (`[ci][k][co]`); compiled for AVX2 and FMA where `simd`.
fn output_transform<T: Element>(simd: bool, o: &Outputs<'_, T>, m: &[T], rows: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // Safety: as in [`transform`].
        unsafe { output_transform_avx2(o, m, rows) };
        return;
    }
    let _ = simd;
    output_body(o, m, rows);
}

/// # Safety
/// AVX2 and FMA available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_transform_avx2<T: Element>(o: &Outputs<'_, T>, m: &[T], rows: &mut [T]) {
    output_body(o, m, rows);
}

#[inline(always)]
fn output_body<T: Element>(o: &Outputs<'_, T>, m: &[T], rows: &mut [T]) {
    let mut tile = vec![T::zero(); o.tile_elems];
    let points_stride = o.lb * o.tile_elems;
    for &(kf, si, j) in o.taps {
        for lbi in 0..o.lb {
            let at = (si * o.points * o.lb + lbi) * o.tile_elems;
            combine(&mut tile, &m[at..], points_stride, &o.terms[j], false);
            let col0 = (o.first_lb + lbi) * o.tl;
            let cols = o.tl.min(o.cout_g - col0);
            for rr in 0..o.live_rows {
                let d = &mut rows[(rr * o.ksize + kf) * o.cout_g + col0..][..cols];
                copy_short(d, &tile[rr * o.tl..rr * o.tl + cols]);
            }
        }
    }
}

/// One block of `width` channels to transform, each position's channels one contiguous
/// run from `first` plus its entry in the chunk's index table `tab` (rows of `kc`, `kn`
/// used).
struct Block<'a, T> {
    /// A side in blocks ([`blocked`]) and where the block starts in an image.
    src: &'a [T],
    first: usize,
    width: usize,
    tab: &'a [usize],
    kc: usize,
    kn: usize,
}

/// Transform a block, [`SUB_TILES`] tiles at a time: their channels' values gathered side
/// by side (`rows[l][tile][channel]`, zeros outside the tensor; the blocked copy holds
/// zeros past the last channel), then each point `dst[point][tile][channel]` one
/// combination of whole rows (compiled for AVX-512, or AVX2 and FMA, as the ISA has them:
/// the same sums in the same order on every path).
fn transform<T: Element>(
    isa: Isa,
    b: &Block<'_, T>,
    terms: &[Vec<(usize, T)>],
    rows: &mut [T],
    dst: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // Safety: the plan's ISA is only AVX-512 where it was detected on this CPU.
        unsafe { transform_avx512(b, terms, rows, dst) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // Safety: a SIMD ISA (AVX2 or AVX-512, both with FMA) is only planned where it was
        // detected on this CPU.
        unsafe { transform_avx2(b, terms, rows, dst) };
        return;
    }
    let _ = isa;
    transform_body(b, terms, rows, dst);
}

/// # Safety
/// AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_avx512<T: Element>(
    b: &Block<'_, T>,
    terms: &[Vec<(usize, T)>],
    rows: &mut [T],
    dst: &mut [T],
) {
    transform_body(b, terms, rows, dst);
}

/// # Safety
/// AVX2 and FMA available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_avx2<T: Element>(
    b: &Block<'_, T>,
    terms: &[Vec<(usize, T)>],
    rows: &mut [T],
    dst: &mut [T],
) {
    transform_body(b, terms, rows, dst);
}

#[inline(always)]
fn transform_body<T: Element>(
    b: &Block<'_, T>,
    terms: &[Vec<(usize, T)>],
    rows: &mut [T],
    dst: &mut [T],
) {
    let (w, run) = (b.width, b.kc * b.width);
    // `SUB_TILES` tiles at a time: their gathered rows stay in L1 for the combinations.
    let sub = SUB_TILES.min(b.kc).max(1);
    let pitch = sub * w;
    for t0 in (0..b.kn).step_by(sub) {
        let tn = sub.min(b.kn - t0);
        for (row, tab) in rows.chunks_exact_mut(pitch).zip(b.tab.chunks_exact(b.kc)) {
            for (d, &at) in row[..tn * w].chunks_exact_mut(w).zip(&tab[t0..t0 + tn]) {
                if at == OUTSIDE {
                    d.fill(T::zero());
                    continue;
                }
                copy_short(d, &b.src[b.first + at..][..w]);
            }
        }
        for (xi, ts) in terms.iter().enumerate() {
            combine(
                &mut dst[xi * run + t0 * w..][..tn * w],
                rows,
                pitch,
                ts,
                false,
            );
        }
    }
}

/// Tiles a transform gathers and combines at a time.
const SUB_TILES: usize = 32;

/// Whether the weight gradient of `g` takes Winograd tiles on `isa` when no algorithm is
/// forced: the forward pass's cost model
/// ([`winograd::modeled_speedup`](super::winograd::modeled_speedup)), whose two transform
/// costs reappear here (the inputs' windows per output channel, the upstream gradient's
/// tiles per input channel of the reduction), at least
/// [`winograd::MIN_SPEEDUP`](super::winograd::MIN_SPEEDUP). The input transform costs
/// `INPUT_COST_AVX512` (25; the forward pass's is 20) on AVX-512 where every phase is
/// live, else the portable transforms' cost.
/// As in the forward pass, consecutive phases that read the same inputs transform them
/// once (hifigan1d: 2 of 8; its weight gradient then ran 46-59 ms against 58-76 ms for the
/// direct GEMMs, alternating at 1 thread, minima of 6; before, 55-75 ms either way).
pub fn pays(g: &Geometry, isa: Isa) -> bool {
    use super::winograd::{speedup_with, INPUT_COST_PORTABLE, MIN_CHANNEL_PAIRS, MIN_SPEEDUP};
    // As for the forward pass, groups with few channel pairs are not modelled: this model
    // too declined every one of 3190 geometries with fewer than 32 tried on AVX-512 and
    // AVX2 (1-128 channels, kernels 2-16, strides 1-8), and its decomposition took 28 µs of
    // each fcn_dw weight gradient.
    if g.in_per_group() * g.out_per_group() < MIN_CHANNEL_PAIRS {
        return false;
    }
    let all_live = decompose(g).is_some_and(|(_, phases, ..)| phases.iter().all(|p| p.live()));
    let cost = if isa == Isa::Avx512 && isa.available() && all_live {
        INPUT_COST_AVX512
    } else {
        INPUT_COST_PORTABLE
    };
    g.batch > 0 && speedup_with(g, false, cost).is_some_and(|x| x >= MIN_SPEEDUP)
}

/// The input transform's cost in [`pays`] on AVX-512, whose transforms combine 16 lanes at
/// a time, a few tiles at a time. Paired against the direct GEMMs (`tconv bench --pass
/// backward`, 5-7 alternating rounds, median / min of the ratios):
/// - s1k3 (model 1.14 here): weight gradient 1.21x / 1.23x at 1 thread and 1.09x / 1.12x
///   at 2; the backward pass 1.06-1.10x / 1.07-1.11x at 1 thread, 0.97-0.98x / 1.00-1.02x
///   at 2.
/// - dcgan3 (model 1.01, not taken): weight gradient 1.07x / 1.09x at 1 thread and
///   0.99x / 1.02x at 2, but the backward pass 0.97-0.99x at 1 thread and 0.90-0.91x at 2.
/// - dilated (model 1.14, not taken: three phases of four receive bias only, so the
///   gradient's blocked copy and strided gathers are mostly waste): weight gradient 0.92x
///   at 1 thread and 0.83x at 2 (medians of 7, `gwbench`).
const INPUT_COST_AVX512: f64 = 25.0;

/// The tiles as printed, e.g. `F(2x2,2x2)` (taps × tile of the upstream gradient).
pub fn name(g: &Geometry) -> String {
    gradient_transforms(g).map_or_else(String::new, |(tr, ..)| tile_name(&tr))
}

/// The forward's decomposition and, per axis, its F(m, r) turned into F(r, m).
#[allow(clippy::type_complexity)]
fn gradient_transforms(
    g: &Geometry,
) -> Option<(Vec<Transform>, Vec<Phase>, Vec<usize>, Vec<usize>)> {
    let (fwd, phases, out_stride, in_stride) = decompose(g)?;
    let tr = fwd
        .iter()
        .map(|t| Transform::new(t.r, t.m))
        .collect::<Option<Vec<_>>>()?;
    Some((tr, phases, out_stride, in_stride))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ConvParams;
    use crate::reference::weight_gradient as grad_weight_reference;

    fn ints(n: usize, seed: u64) -> Vec<f64> {
        crate::tensor::small_ints(n, seed)
    }

    /// Chunks sized for L2 only where the sums are small beside the operands, never fewer
    /// than `MIN_CHUNK_TILES` tiles there, never more than `chunk_bytes` holds, and at
    /// least 8 and at most a part.
    #[test]
    fn chunks_fit_l2_where_the_sums_are_small() {
        // s1k3: 8.5 KiB a tile, 288 KiB of sums, 1024 tiles a part.
        assert_eq!(chunk_tiles(CHUNK_BYTES, 8704, 294912, 1024), 128);
        // Fewer tiles per L2 than the least: the least.
        assert_eq!(
            chunk_tiles(CHUNK_BYTES, 16384, 294912, 1024),
            MIN_CHUNK_TILES
        );
        // Tiny tiles: what a quarter holds.
        assert_eq!(chunk_tiles(CHUNK_BYTES, 1024, 1024, 4096), 1024);
        // hifigan1d: 8 MiB of sums keep the whole part in one chunk.
        assert_eq!(chunk_tiles(CHUNK_BYTES, 12352, 8454144, 172), 172);
        assert_eq!(chunk_tiles(CHUNK_BYTES, 12352, 8454144, 1000), 339);
        assert_eq!(chunk_tiles(1, 12352, 0, 1000), 8);
        assert_eq!(chunk_tiles(CHUNK_BYTES, 8704, 294912, 100), 100);
    }

    /// Every shape's transpose (8×8 blocks, 4×4 blocks, the edges), f32 and f64.
    #[test]
    fn transposes_of_every_shape() {
        for (r, c) in [
            (12, 1024),
            (12, 37),
            (9, 64),
            (16, 16),
            (13, 13),
            (4, 4),
            (5, 7),
            (3, 9),
            (1, 5),
            (20, 6),
        ] {
            let src: Vec<f64> = (0..r * c).map(|v| v as f64).collect();
            let want: Vec<f64> = (0..r * c).map(|k| src[(k % r) * c + k / r]).collect();
            let mut got = vec![-1.0; r * c];
            transpose(&src, r, c, &mut got);
            assert_eq!(got, want, "f64 {r}x{c}");
            let src32: Vec<f32> = src.iter().map(|&v| v as f32).collect();
            let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            let mut got32 = vec![-1.0f32; r * c];
            transpose(&src32, r, c, &mut got32);
            assert_eq!(got32, want32, "f32 {r}x{c}");
        }
    }

    /// Every layer kind, in chunks of 8 tiles (several chunks, the last partial) and in one,
    /// on 1 and 3 threads, with every ISA this CPU has: exactly the reference.
    #[test]
    fn chunks_and_layer_kinds_match_reference() {
        let cases: Vec<(Op, Vec<usize>, Vec<usize>, ConvParams)> = vec![
            (
                Op::ConvTranspose,
                vec![2, 12, 7, 5],
                vec![12, 10, 4, 4],
                ConvParams::new().stride(&[2]).padding(&[1]).groups(2),
            ),
            (
                Op::ConvTranspose,
                vec![2, 8, 6, 7],
                vec![8, 9, 3, 3],
                ConvParams::new()
                    .stride(&[2])
                    .padding(&[2])
                    .dilation(&[2])
                    .output_padding(&[1]),
            ),
            (
                Op::ConvTranspose,
                vec![3, 8, 11],
                vec![8, 7, 16],
                ConvParams::new().stride(&[8]).padding(&[4]),
            ),
            (
                Op::ConvTranspose,
                vec![1, 5, 4, 3, 5],
                vec![5, 6, 3, 3, 3],
                ConvParams::new().padding(&[1]),
            ),
            (
                Op::Conv,
                vec![2, 9, 13, 10],
                vec![11, 9, 4, 4],
                ConvParams::new().stride(&[2]).padding(&[1]),
            ),
            // Several row and lane blocks (16 input channels, 40 output channels), their
            // sums through the output transform as they come (one chunk, one part).
            (
                Op::ConvTranspose,
                vec![2, 16, 5, 4],
                vec![16, 40, 4, 4],
                ConvParams::new().stride(&[2]).padding(&[1]),
            ),
            // At least `MIN_PART_TILES` tiles per image: the reduction in two parts (the
            // second of one image of three).
            (
                Op::ConvTranspose,
                vec![3, 4, 600],
                vec![4, 5, 4],
                ConvParams::new().stride(&[2]).padding(&[1]),
            ),
            (
                Op::ConvTranspose,
                vec![2, 3, 40, 40],
                vec![3, 4, 4, 4],
                ConvParams::new().stride(&[2]).padding(&[1]),
            ),
        ];
        for (op, xs, ws, p) in cases {
            let g = Geometry::new(op, &xs, &ws, None, &p).unwrap();
            let x = ints(numel(&xs), 1);
            let gy = ints(numel(&g.output_shape()), 2);
            let want = grad_weight_reference(&g, &x, &gy);
            let (x32, gy32): (Vec<f32>, Vec<f32>) = (
                x.iter().map(|&v| v as f32).collect(),
                gy.iter().map(|&v| v as f32).collect(),
            );
            let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                if !isa.available() {
                    continue;
                }
                for (threads, chunk) in [(1, 1), (3, 1), (1, CHUNK_BYTES), (3, CHUNK_BYTES)] {
                    let what = format!("{op:?} {xs:?} {isa} {threads} threads, chunk {chunk}");
                    let got = grad_weight_chunked(&g, &x, &gy, isa, threads, chunk);
                    assert_eq!(got.as_ref(), Some(&want), "f64 {what}");
                    let got = grad_weight_chunked(&g, &x32, &gy32, isa, threads, chunk);
                    assert_eq!(got.as_ref(), Some(&want32), "f32 {what}");
                }
            }
        }
    }
}
