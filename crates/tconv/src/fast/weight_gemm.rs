//! The weight gradient as GEMMs over `(position, batch)`:
//! `dW[a, b, k] = Σ_q S[a, q] · B_k[b, q]`, on the packed-panel microkernels.
//!
//! `S` is packed once; the big side once per key (taps sharing residues; see `TapKeys`),
//! all keys in one pass over it, and each copy serves all of its key's taps as offset
//! views ([`weight_pack`](super::weight_pack) packs both). Where a chunk of positions needs
//! few positions past its end (kernel == stride, 1-D), the packing is fused into the tasks:
//! each packs one chunk of both sides at a time into buffers that stay in L2, instead of
//! writing whole packed copies to memory and reading them back (unet's weight gradient
//! 19.9 -> 16.1 ms, vnet3d's 2.9 -> 2.2 ms, paired minima); elsewhere, where the batch has
//! more images than one reduction chunk needs, a few whole images at a time, so no halo is
//! packed twice (dcgan3 16.1 -> 13.9 ms, s1k3 9.2 -> 7.8 ms). Tasks own `(group, range of S
//! channel blocks)` (or, see `Split`, of big-side blocks): each element of `dW` is summed
//! by one task in a fixed order, so the result is bitwise identical for any thread count.

use std::ops::Range;

use super::direct::run_each;
use super::kernels::{portable, tile_shapes_for, KernelFn, Rows};
use super::scratch::{self, Scratch};
use super::weight::{residues_and_shifts, Sizes};
use super::weight_pack::{pack_positions, pack_side, transpose_runs, Run8, Side, Tables};
use super::{Isa, REDUCTION_PARTS};
use crate::geometry::Geometry;
use crate::tensor::{positions, Element};

/// Reduction positions per kernel call: the lane-side slice (`REDUCTION_CHUNK × 16`
/// values) stays in L1 while the row-side slices stream from L2.
const REDUCTION_CHUNK: usize = 256;
/// Tasks pack position chunks of one reduction chunk themselves (the packed operands then
/// stay in L2 instead of being written to memory and read back) when the positions a
/// chunk's taps read past its end are at most `1 / FUSED_MAX_HALO` of it.
const FUSED_MAX_HALO: usize = 4;

/// How the weight gradient's taps map onto shifted views of the big side.
///
/// Along each axis, tap `k` reads big position `o = p*s + m` with `m = k*d - p_begin`; with
/// `m = s*c + r` (`0 <= r < s`) that is `o = s*(p + c) + r`, i.e. position `p + c` of the
/// stride-1 residue grid `B_r[u] = B[s*u + r]`. Taps sharing the residues and the shifts
/// `c` of every axis but the first read one packed copy of `B_r` (a *key*), shifted on the
/// inner axes; their first-axis shifts `c_0` become plain offsets into that copy, whose first
/// axis is padded by `c0_max - c0_min` rows. With the reduction index `q = (p, n)` (batch
/// innermost), each tap's `B` operand is then one contiguous run of the copy, and the `S`
/// operand (packed once) is the same run for every tap: no per-tap packing.
struct TapKeys {
    /// Per key: residue per axis, then the shifts of axes `1..`.
    keys: Vec<(Vec<usize>, Vec<isize>)>,
    /// Per key: its taps as `(flat tap index, c_0 - c0_min)`.
    taps: Vec<Vec<(usize, usize)>>,
    /// Smallest first-axis shift.
    c0_min: isize,
    /// Padded first-axis extent of a copy: `L_small_0 + c0_max - c0_min`.
    e0: usize,
}

impl TapKeys {
    fn new(g: &Geometry) -> TapKeys {
        let dims = g.axes.len();
        let rc = residues_and_shifts(g);
        let c0_min = rc[0].iter().map(|x| x.1).min().unwrap_or(0);
        let c0_max = rc[0].iter().map(|x| x.1).max().unwrap_or(0);
        let mut t = TapKeys {
            keys: Vec::new(),
            taps: Vec::new(),
            c0_min,
            e0: g.axes[0].small(g.op) + (c0_max - c0_min) as usize,
        };
        for (flat, k) in positions(&g.kernel_shape()).enumerate() {
            let r: Vec<usize> = (0..dims).map(|a| rc[a][k[a]].0).collect();
            let c: Vec<isize> = (1..dims).map(|a| rc[a][k[a]].1).collect();
            let key = (r, c);
            let id = match t.keys.iter().position(|x| *x == key) {
                Some(id) => id,
                None => {
                    t.keys.push(key);
                    t.taps.push(Vec::new());
                    t.keys.len() - 1
                }
            };
            t.taps[id].push((flat, (rc[0][k[0]].1 - c0_min) as usize));
        }
        t
    }

    /// Big-side flat offset of each copy position `(p0', p_rest)` of key `key`, or
    /// `usize::MAX` where it falls outside the big side.
    fn source_offsets(&self, g: &Geometry, key: usize) -> Vec<usize> {
        let (r, c) = &self.keys[key];
        let small = g.small_spatial();
        let per_axis: Vec<Vec<usize>> = g
            .axes
            .iter()
            .enumerate()
            .map(|(a, axis)| {
                let (extent, shift) = if a == 0 {
                    (self.e0, self.c0_min)
                } else {
                    (small[a], c[a - 1])
                };
                (0..extent)
                    .map(|p| {
                        let o = axis.stride as i64 * (p as i64 + shift as i64) + r[a] as i64;
                        let inside = o >= 0 && (o as usize) < axis.big(g.op);
                        if inside {
                            o as usize
                        } else {
                            usize::MAX
                        }
                    })
                    .collect()
            })
            .collect();
        flat_offsets(&per_axis, &g.big_spatial())
    }
}

/// Row-major flat offsets into a grid of extents `big` for every combination of the
/// per-axis offsets (`usize::MAX`, on any axis, gives `usize::MAX`).
fn flat_offsets(per_axis: &[Vec<usize>], big: &[usize]) -> Vec<usize> {
    let mut flat = vec![0usize];
    for (offsets, &extent) in per_axis.iter().zip(big) {
        let mut next = Vec::with_capacity(flat.len() * offsets.len());
        for &f in &flat {
            next.extend(offsets.iter().map(|&o| {
                if f == usize::MAX || o == usize::MAX {
                    usize::MAX
                } else {
                    f * extent + o
                }
            }));
        }
        flat = next;
    }
    flat
}

/// The register tile: `mr` rows by `tl` lanes, and which side its rows hold.
struct Tile<T> {
    kernel: KernelFn<T>,
    mr: usize,
    tl: usize,
    s_on_rows: bool,
}

impl<T: Element> Tile<T> {
    /// The tile shape and orientation with the least modelled time for `a_pg × b_pg`
    /// channel pairs: work padded to whole tiles over the shape's measured efficiency (e.g.
    /// the 3 output channels of an RGB layer go on the rows of a 3-row tile, not on 16
    /// lanes).
    fn choose(isa: Isa, a_pg: usize, b_pg: usize) -> Tile<T> {
        let lanes = isa.lanes();
        let cost = |m: usize, n: usize, (mr, v, eff): (usize, usize, f32)| {
            (m.div_ceil(mr) * mr * n.div_ceil(v * lanes) * v * lanes) as f32 / eff
        };
        let (mr, v, s_on_rows) = tile_shapes_for::<T>(isa)
            .iter()
            .flat_map(|&t| [(t, true), (t, false)])
            .filter(|&((mr, v, _), _)| T::fast_kernel(isa, mr, v).is_some() || isa == Isa::Scalar)
            .min_by(|&(t1, r1), &(t2, r2)| {
                let c = |t, r| {
                    if r {
                        cost(a_pg, b_pg, t)
                    } else {
                        cost(b_pg, a_pg, t)
                    }
                };
                c(t1, r1).total_cmp(&c(t2, r2))
            })
            .map(|((mr, v, _), r)| (mr, v, r))
            .expect("tile_shapes is not empty");
        let kernel = T::fast_kernel(isa, mr, v)
            .or_else(|| portable::<T>(mr, v))
            .expect("tile_shapes lists instantiated kernels");
        Tile {
            kernel,
            mr,
            tl: v * lanes,
            s_on_rows,
        }
    }

    /// Channels per block of `S` and of the big side.
    fn widths(&self) -> (usize, usize) {
        if self.s_on_rows {
            (self.mr, self.tl)
        } else {
            (self.tl, self.mr)
        }
    }
}

/// How the reduction over `q = (position, image)` is cut.
struct Chunking {
    /// Independent sums over consecutive images, added in order at the end.
    parts: usize,
    /// Images per part.
    part_batch: usize,
    /// Whether tasks pack their own chunks (else both sides are packed whole up front).
    fused: bool,
    /// Images per packed chunk (the batch innermost in `q`).
    nb: usize,
    /// Positions per chunk.
    step: usize,
}

impl Chunking {
    /// For `small_size` positions an image, whose taps read `halo` copy positions past a
    /// chunk's last one.
    fn new(g: &Geometry, small_size: usize, halo: usize) -> Chunking {
        // Copy positions past a chunk's last small position that its taps read (their
        // first-axis shifts) are packed with every chunk, so chunking pays only where few.
        // For a batch of `batch` images: chunks of positions of all of them, or ...
        let by_positions = |batch: usize| halo * FUSED_MAX_HALO <= (REDUCTION_CHUNK / batch).max(1);
        // ... otherwise a few images at a time, enough for a reduction of
        // `REDUCTION_CHUNK`: no halo is packed twice (each image has its own).
        let per_chunk = |batch: usize| REDUCTION_CHUNK.div_ceil(small_size.max(1)).min(batch);
        let fused_for = |batch: usize| by_positions(batch) || per_chunk(batch) < batch;
        // The fused reduction runs as `parts` independent sums over consecutive images,
        // added in order at the end: two where the batch allows, whatever the thread count
        // (the results' bits then do not depend on it), so that two threads each pack and
        // multiply half the images with the whole tiles of one thread, instead of splitting
        // the tiles and packing one side twice.
        let parts = if g.batch >= REDUCTION_PARTS && fused_for(g.batch.div_ceil(REDUCTION_PARTS)) {
            REDUCTION_PARTS
        } else {
            1
        };
        let part_batch = g.batch.div_ceil(parts);
        let by_images = !by_positions(part_batch) && per_chunk(part_batch) < part_batch;
        let (nb, step) = if by_images {
            (per_chunk(part_batch), small_size)
        } else if by_positions(part_batch) {
            (part_batch, (REDUCTION_CHUNK / part_batch).max(1))
        } else {
            (part_batch, small_size)
        };
        Chunking {
            parts,
            part_batch,
            fused: fused_for(part_batch),
            nb,
            step,
        }
    }
}

/// How tasks share out the channel blocks: task `(part, group, split)` is number
/// `(part · groups + group) · splits + split` and owns range `split` of `per_split` blocks
/// of one side (all blocks of the other).
struct Split {
    /// The ranges are of big-side blocks (else of `S` blocks).
    by_big: bool,
    /// Blocks of the side split.
    blocks: usize,
    splits: usize,
    per_split: usize,
}

impl Split {
    /// Enough tasks to keep every thread busy. Fused tasks each pack the whole big side's
    /// chunks, so there is one per thread; where the big side's packing is the larger (its
    /// keys' copies) and it has a block per thread, fused tasks own ranges of its blocks
    /// instead and each packs the whole small side (dcgan3's weight gradient: 147 K values
    /// of the big side and 34 K of the small one per image).
    fn new(
        g: &Geometry,
        threads: usize,
        chunks: &Chunking,
        (s_blocks, b_blocks): (usize, usize),
        big_is_larger: bool,
    ) -> Split {
        let units = g.groups * chunks.parts;
        let want = threads.div_ceil(units);
        let fused = chunks.fused;
        let by_big = fused && want > 1 && b_blocks >= want && big_is_larger;
        let (blocks, splits) = match (threads <= 1, fused, by_big) {
            (true, _, _) => (s_blocks, 1),
            (false, true, true) => (b_blocks, want.clamp(1, b_blocks)),
            (false, true, false) => (s_blocks, want.clamp(1, s_blocks)),
            (false, false, _) => (
                s_blocks,
                (4 * threads).div_ceil(g.groups).clamp(1, s_blocks),
            ),
        };
        Split {
            by_big,
            blocks,
            splits,
            per_split: blocks.div_ceil(splits),
        }
    }
}

/// One weight gradient's GEMM over positions: its operands, tile, chunks and tasks.
struct Gemm<'a, T: Element> {
    g: &'a Geometry,
    s: &'a [T],
    b: &'a [T],
    z: Sizes,
    tile: Tile<T>,
    /// Channels per block, and blocks per group, of `S` and of the big side.
    s_width: usize,
    b_width: usize,
    s_blocks: usize,
    b_blocks: usize,
    keys: TapKeys,
    /// Positions of a key's copy past its first axis.
    rest: usize,
    /// Copy positions a chunk's taps read past its end.
    halo: usize,
    chunks: Chunking,
    split: Split,
    /// Copy-position tables of both sides, their passes sized for `chunks.nb` images.
    identity: Tables,
    tables: Tables,
    /// Unfused: both sides packed whole up front, `S` `[group][block][q][s_width]` and the
    /// big side `[group][block][key][q'][b_width]` (every key from one pass).
    spack: Option<Scratch<T>>,
    bpack: Option<Scratch<T>>,
    /// `lane_runs[l]` reads lane `l` of a tile row (the gather's transposes).
    lane_runs: Vec<Run8>,
}

impl<'a, T: Element> Gemm<'a, T> {
    fn new(g: &'a Geometry, s: &'a [T], b: &'a [T], threads: usize, isa: Isa) -> Self {
        let z = Sizes::of(g);
        let tile = Tile::<T>::choose(isa, z.a_pg, z.b_pg);
        let (s_width, b_width) = tile.widths();
        let (s_blocks, b_blocks) = (z.a_pg.div_ceil(s_width), z.b_pg.div_ceil(b_width));
        let keys = TapKeys::new(g);
        let n_keys = keys.keys.len();
        let rest: usize = z.small_size / g.axes[0].small(g.op).max(1);
        let halo = keys.e0 * rest - z.small_size;
        let chunks = Chunking::new(g, z.small_size, halo);
        let identity = Tables::new::<T>(vec![(0..z.small_size).collect()], chunks.nb, s_width);
        let tables = Tables::new::<T>(
            (0..n_keys).map(|k| keys.source_offsets(g, k)).collect(),
            chunks.nb,
            b_width,
        );
        // Fused: each task packs one chunk (of positions, or one image) at a time into
        // reused buffers, which stay in L2 (or at least are not written to memory and read
        // back).
        let (spack, bpack) = if chunks.fused {
            (None, None)
        } else {
            (
                Some(pack_side(
                    g,
                    s,
                    z.a_ch,
                    z.small_size,
                    z.a_pg,
                    s_width,
                    &identity,
                    threads,
                )),
                Some(pack_side(
                    g, b, z.b_ch, z.big_size, z.b_pg, b_width, &tables, threads,
                )),
            )
        };
        let big_is_larger = z.b_pg * n_keys > z.a_pg;
        let split = Split::new(g, threads, &chunks, (s_blocks, b_blocks), big_is_larger);
        let lane_runs = (0..tile.tl)
            .map(|l| Run8 {
                start: l,
                stride: 1,
                outside: 0,
            })
            .collect();
        Gemm {
            g,
            s,
            b,
            z,
            tile,
            s_width,
            b_width,
            s_blocks,
            b_blocks,
            keys,
            rest,
            halo,
            chunks,
            split,
            identity,
            tables,
            spack,
            bpack,
            lane_runs,
        }
    }

    /// Tasks of the whole gradient.
    fn tasks(&self) -> usize {
        self.g.groups * self.chunks.parts * self.split.splits
    }

    /// Task `task`'s `S` blocks and big-side blocks.
    fn ranges(&self, task: usize) -> (Range<usize>, Range<usize>) {
        let Split {
            by_big,
            blocks,
            splits,
            per_split,
        } = self.split;
        let i = task % splits;
        let mine = (i * per_split).min(blocks)..((i + 1) * per_split).min(blocks);
        if by_big {
            (0..self.s_blocks, mine)
        } else {
            (mine, 0..self.b_blocks)
        }
    }

    /// Task `task`'s images.
    fn images(&self, task: usize) -> Range<usize> {
        let (batch, per) = (self.g.batch, self.chunks.part_batch);
        let part = task / (self.split.splits * self.g.groups);
        (part * per).min(batch)..((part + 1) * per).min(batch)
    }

    /// Elements of task `task`'s sums, `acc[sb][blk][tap][tile]` (the taps of one tile
    /// position together).
    fn acc_len(&self, task: usize) -> usize {
        let (sbs, blks) = self.ranges(task);
        sbs.len() * blks.len() * self.z.k_size * self.tile.mr * self.tile.tl
    }

    /// Task `task`'s sums into `acc` ([`Gemm::acc_len`]), over its images and positions.
    fn sums(&self, task: usize, acc: &mut [T]) {
        let (g, s, b) = (self.g, self.s, self.b);
        let Sizes {
            small_size,
            big_size,
            k_size,
            a_ch,
            b_ch,
            a_pg,
            b_pg,
        } = self.z;
        let Chunking {
            fused, nb, step, ..
        } = self.chunks;
        let (s_width, b_width, halo, rest) = (self.s_width, self.b_width, self.halo, self.rest);
        let Tile {
            kernel,
            mr,
            tl,
            s_on_rows,
        } = self.tile;
        let tile = mr * tl;
        let n_keys = self.keys.keys.len();
        let group = (task / self.split.splits) % g.groups;
        let (sbs, blks) = self.ranges(task);
        let mine = self.images(task);
        let (nsb, nbb) = (sbs.len(), blks.len());
        if nsb == 0 || nbb == 0 {
            return;
        }
        let s_run = g.batch * small_size * s_width;
        let b_run = self.keys.e0 * rest * g.batch * b_width;
        // One pass over `q` per step: the whole range (unfused), or chunk by chunk.
        let (s_chunk, b_key) = ((step * nb) * s_width, (step + halo) * nb * b_width);
        let mut sbuf = scratch::take::<T>(if fused { nsb * s_chunk } else { 0 });
        let mut bbuf = scratch::take::<T>(if fused { nbb * n_keys * b_key } else { 0 });
        for (n0, j0) in mine
            .clone()
            .step_by(nb)
            .flat_map(|n0| (0..small_size).step_by(step).map(move |j0| (n0, j0)))
        {
            let j1 = (j0 + step).min(small_size);
            // Images in this chunk (the last may hold fewer).
            let nb = nb.min(mine.end - n0);
            if fused {
                let s_img = &s[n0 * a_ch * small_size..];
                let s_dims = (a_ch, a_pg, small_size);
                for (sbl, dst) in sbuf.chunks_mut(s_chunk).enumerate() {
                    let side = Side::block(s_img, nb, s_dims, s_width, group, sbs.start + sbl);
                    pack_positions(dst, s_width, &side, &self.identity, j0..j1, false);
                }
                let b_img = &b[n0 * b_ch * big_size..];
                let b_dims = (b_ch, b_pg, big_size);
                for (bbl, dst) in bbuf.chunks_mut(n_keys * b_key).enumerate() {
                    let side = Side::block(b_img, nb, b_dims, b_width, group, blks.start + bbl);
                    pack_positions(dst, b_width, &side, &self.tables, j0..j1 + halo, false);
                }
            }
            // Where a tap's operands start, for reduction index `q` (at or after `j0`).
            let s_at = |sbl: usize, q: usize| match &self.spack {
                Some(p) => (
                    &p[..],
                    (group * self.s_blocks + sbs.start + sbl) * s_run + q * s_width,
                ),
                None => (&sbuf[..], sbl * s_chunk + (q - j0 * nb) * s_width),
            };
            let b_at = |bbl: usize, key: usize, c0: usize, q: usize| match &self.bpack {
                Some(p) => (
                    &p[..],
                    ((group * self.b_blocks + blks.start + bbl) * n_keys + key) * b_run
                        + (c0 * rest * g.batch + q) * b_width,
                ),
                // (A short last chunk packs its keys closer together.)
                None => (
                    &bbuf[..],
                    bbl * n_keys * b_key
                        + key * (j1 - j0 + halo) * nb * b_width
                        + (c0 * rest * nb + q - j0 * nb) * b_width,
                ),
            };
            for q0 in (j0 * nb..j1 * nb).step_by(REDUCTION_CHUNK) {
                let q1 = (q0 + REDUCTION_CHUNK).min(j1 * nb);
                let kq = q1 - q0;
                // Add to the tile from the second pass over `q` on (a later image or chunk).
                let more = q0 > 0 || n0 > mine.start;
                for (key, taps) in self.keys.taps.iter().enumerate() {
                    for &(k, c0) in taps {
                        // The lane-side slice stays in L1 while the row-side slices stream.
                        let (outer, inner) = if s_on_rows { (nbb, nsb) } else { (nsb, nbb) };
                        for o in 0..outer {
                            for i in 0..inner {
                                let (sbl, bbl) = if s_on_rows { (i, o) } else { (o, i) };
                                let (sp, sa) = s_at(sbl, q0);
                                let (bp, ba) = b_at(bbl, key, c0, q0);
                                let sv = &sp[sa..][..kq * s_width];
                                let bv = &bp[ba..][..kq * b_width];
                                let at = ((sbl * nbb + bbl) * k_size + k) * tile;
                                let out = &mut acc[at..at + tile];
                                if s_on_rows {
                                    kernel(sv, bv, Rows::packed(kq, b_width), out.into(), more);
                                } else {
                                    kernel(bv, sv, Rows::packed(kq, s_width), out.into(), more);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Task `task`'s sums into its rows of `dW[a][b][k]` (`rows` from its first S block's
    /// first channel): for each tile row, its lanes' taps transposed eight taps by eight
    /// lanes into the lanes' rows (`transpose_runs`), element by element where that path
    /// does not apply.
    fn gather(&self, task: usize, acc: &[T], rows: &mut [T]) {
        let Sizes {
            k_size, a_pg, b_pg, ..
        } = self.z;
        let (s_width, b_width) = (self.s_width, self.b_width);
        let Tile {
            mr, tl, s_on_rows, ..
        } = self.tile;
        let tile = mr * tl;
        let (sbs, blks) = self.ranges(task);
        let nbb = blks.len();
        let row0 = sbs.start * s_width;
        for sbl in 0..sbs.len() {
            for bbl in 0..nbb {
                let t0 = (sbl * nbb + bbl) * k_size * tile;
                let blk = blks.start + bbl;
                for rr in 0..mr {
                    // The tile row's first (a, b) channels, its live lanes, and the step
                    // between its lanes' rows of dW.
                    let (sc, bc, live, step) = if s_on_rows {
                        let (sc, bc) = ((sbs.start + sbl) * s_width + rr, blk * b_width);
                        let live = if sc < a_pg { b_pg - bc } else { 0 };
                        (sc, bc, live.min(tl), k_size)
                    } else {
                        let (sc, bc) = ((sbs.start + sbl) * s_width, blk * b_width + rr);
                        let live = if bc < b_pg { a_pg - sc } else { 0 };
                        (sc, bc, live.min(tl), b_pg * k_size)
                    };
                    if live == 0 {
                        continue;
                    }
                    let base = ((sc - row0) * b_pg + bc) * k_size;
                    for k0 in (0..k_size).step_by(8) {
                        let cnt = (k_size - k0).min(8);
                        let src: [&[T]; 8] = std::array::from_fn(|c| {
                            &acc[t0 + (k0 + c.min(cnt - 1)) * tile + rr * tl..][..tl]
                        });
                        let dst = &mut rows[base + k0..];
                        let done = transpose_runs(&src, cnt, &self.lane_runs[..live], dst, step);
                        for l in done..live {
                            for (c, row) in src.iter().enumerate().take(cnt) {
                                dst[l * step + c] = row[l];
                            }
                        }
                    }
                }
            }
        }
    }
}

impl<T: Element> Gemm<'_, T> {
    /// `dw` from every task's sums where tasks share its rows: the later parts' sums added
    /// to the first part's, in order (each task of a part has the same tiles as the first
    /// part's task of its group and split), then gathered into the weight's layout.
    fn combine(&self, mut accs: Vec<Scratch<T>>, dw: &mut [T]) {
        let Sizes {
            a_pg, b_pg, k_size, ..
        } = self.z;
        let splits = self.split.splits;
        let (row_len, groups) = (b_pg * k_size, self.g.groups);
        let group_len = a_pg * row_len;
        let (first, later) = accs.split_at_mut(groups * splits);
        for (t, acc) in later.iter().enumerate() {
            let to = &mut first[t % (groups * splits)];
            for (a, &b) in to.iter_mut().zip(acc.iter()) {
                *a = *a + b;
            }
        }
        for (t, acc) in first.iter().enumerate() {
            let group = t / splits;
            // From the task's first row (tasks over big-side blocks start at row 0).
            let first = (self.ranges(t).0.start * self.s_width).min(a_pg) * row_len;
            let rows = &mut dw[group * group_len + first..(group + 1) * group_len];
            self.gather(t, acc, rows);
        }
    }
}

/// Whether `g`'s GEMM over positions sums its reduction in [`REDUCTION_PARTS`] parts (then
/// it packs nothing up front): the chunking [`Gemm::new`] takes, without building it.
pub(crate) fn in_parts(g: &Geometry) -> bool {
    let z = Sizes::of(g);
    let keys = TapKeys::new(g);
    let rest = z.small_size / g.axes[0].small(g.op).max(1);
    let halo = keys.e0 * rest - z.small_size;
    Chunking::new(g, z.small_size, halo).parts == REDUCTION_PARTS
}

/// The weight gradient's GEMM over positions as jobs a caller schedules itself: one per
/// part of the reduction (consecutive images), each the sums of that part's tasks, then
/// [`PartJobs::finish`]. The same tasks, sums and order as [`grad_weight`] on one thread,
/// so the same bits (a backward pass on two threads runs each part beside half of the
/// input gradient: see `grad::backward`).
pub(crate) struct PartJobs<'a, T: Element> {
    m: Gemm<'a, T>,
}

impl<'a, T: Element> PartJobs<'a, T> {
    /// The jobs of `g`'s weight gradient, whose reduction runs in parts ([`in_parts`],
    /// which the caller checks: then nothing is packed up front, and one thread's plan has
    /// one task per part and group).
    pub(crate) fn new(g: &'a Geometry, s: &'a [T], b: &'a [T], isa: Isa) -> Self {
        let m = Gemm::new(g, s, b, 1, isa);
        debug_assert!(m.chunks.parts == REDUCTION_PARTS && m.split.splits == 1);
        PartJobs { m }
    }

    /// Part `part`'s sums: one buffer per task of the part.
    pub(crate) fn sums(&self, part: usize) -> Vec<Scratch<T>> {
        let per_part = self.m.g.groups * self.m.split.splits;
        (part * per_part..(part + 1) * per_part)
            .map(|t| {
                let mut acc = scratch::take::<T>(self.m.acc_len(t));
                self.m.sums(t, &mut acc);
                acc
            })
            .collect()
    }

    /// `∂L/∂w` (`[a][b'][k]`, zeroed) from every part's sums, in part order.
    pub(crate) fn finish(&self, parts: Vec<Vec<Scratch<T>>>, dw: &mut [T]) {
        self.m.combine(parts.into_iter().flatten().collect(), dw);
    }
}

/// `∂L/∂w` of the small side `s` and the big side `b` into `dw` (`[a][b'][k]`, zeroed) as
/// GEMMs over positions (see the module's doc), on `threads` threads.
pub(crate) fn grad_weight<T: Element>(
    g: &Geometry,
    s: &[T],
    b: &[T],
    threads: usize,
    isa: Isa,
    dw: &mut [T],
) {
    let m = Gemm::new(g, s, b, threads, isa);
    let Sizes {
        a_pg, b_pg, k_size, ..
    } = m.z;
    let splits = m.split.splits;
    let row_len = b_pg * k_size;
    if m.split.by_big || m.chunks.parts > 1 {
        // Tasks share dW's rows: each keeps its sums, and they are gathered in order (the
        // later parts added).
        let mut accs: Vec<Scratch<T>> = (0..m.tasks())
            .map(|t| scratch::take::<T>(m.acc_len(t)))
            .collect();
        let items: Vec<(usize, &mut Scratch<T>)> = accs.iter_mut().enumerate().collect();
        run_each(threads, items, |(t, acc)| m.sums(t, acc));
        m.combine(accs, dw);
        return;
    }
    // Each task's rows of dW: `(group, S blocks)` → a contiguous run of `a` channels.
    let per_split = m.split.per_split;
    let mut task_rows: Vec<(usize, &mut [T])> = Vec::with_capacity(g.groups * splits);
    let mut rest_dw: &mut [T] = dw;
    for task in 0..g.groups * splits {
        let split = task % splits;
        let lo = (split * per_split * m.s_width).min(a_pg);
        let hi = ((split + 1) * per_split * m.s_width).min(a_pg);
        let (rows, tail) = std::mem::take(&mut rest_dw).split_at_mut((hi - lo) * row_len);
        rest_dw = tail;
        task_rows.push((task, rows));
    }
    run_each(threads, task_rows, |(t, d)| {
        let mut acc = scratch::take::<T>(m.acc_len(t));
        m.sums(t, &mut acc);
        m.gather(t, &acc, d);
    });
}
