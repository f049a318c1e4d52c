//! Geometry-only bookkeeping of every tile, computed once per plan.

use super::*;

/// A wide group of taps: `(first tap, taps, the first tap's source offset)` (see
/// `TileTable::wide_groups`).
type WideGroup = (usize, usize, isize);

/// Geometry-only bookkeeping of every tile, computed once per plan: which lanes each tap
/// reads, which lanes each phase writes, and where each lane lands in the output.
///
/// The flattened grid is cut into chunks of `chunk_rows` phase rows (axis 0); tiles restart
/// at each chunk, so a chunk writes a contiguous band of output rows and chunks can be given
/// to different threads.
pub struct TileTable {
    /// Lanes per tile (`v * lanes`, at most 64).
    pub tile_lanes: usize,
    /// Phase rows (axis 0) per chunk.
    pub chunk_rows: usize,
    /// Tiles of chunk `c`: `chunk_tiles[c]..chunk_tiles[c + 1]`.
    pub(crate) chunk_tiles: Vec<usize>,
    /// First flat index of each tile.
    pub(crate) tile_start: Vec<usize>,
    /// `out_base[tile * tile_lanes + l]`: output offset (within a plane) of lane `l`, before
    /// the phase residue.
    pub(crate) out_base: Vec<usize>,
    /// `live[tile * phases + phase]`: lanes that are output positions of the phase.
    pub(crate) live: Vec<u64>,
    /// `masks[tile * total_taps + tap]`: live lanes whose tap reads inside the source.
    pub(crate) masks: Vec<u64>,
    /// Store runs of `(tile, phase)`: `run_start[i]..run_start[i + 1]` index `runs`.
    pub(crate) run_start: Vec<usize>,
    /// `(first lane, lanes, output offset of the first lane)`; lane `first + j` lands at
    /// `offset + j * last_stride`.
    pub(crate) runs: Vec<(usize, usize, usize)>,
    /// Output stride along the last axis (distance between consecutive lanes of a run).
    pub last_stride: usize,
    /// Phases stored together: all residues of the last axis (1: phase by phase).
    pub group_size: usize,
    /// `interleave[tile * groups + group]`: the group's phases have identical runs, offset
    /// by their last-axis residue, so their results can be written interleaved, in order.
    pub(crate) interleave: Vec<bool>,
    /// `pairs[tile * groups + group]` (empty until [`TileTable::mark_pairs`]): the group is
    /// a stride-2 pair whose phases read one panel and store whole half vectors interleaved, so
    /// a [pair kernel](crate::fast::pair) can write it from its registers.
    pub(crate) pairs: Vec<bool>,
    /// Wide groups of each phase: `wide_groups[wide_start[p]..wide_start[p + 1]]`, each
    /// `(first tap, taps, its offset)`: consecutive taps whose source offsets rise by one
    /// lane each, so their panel rows are views of one wider row, each one lane further.
    pub(crate) wide_groups: Vec<WideGroup>,
    pub(crate) wide_start: Vec<usize>,
    /// Widest group of any phase, in taps.
    pub wide_taps: usize,
    /// `wide_masks[tile * n_wide + group]`: the lanes of the group's wide row that hold
    /// source values (the rest are zeros); `None` where the taps' masks disagree about a
    /// source element (one reads it, another must see zero), so the tile packs tap by tap.
    pub(crate) wide_masks: Vec<Option<u64>>,
    /// First tap of each phase in the flat tap numbering.
    pub(crate) tap_start: Vec<usize>,
    /// Source offset of each tap relative to the tile's first lane.
    pub(crate) tap_offset: Vec<isize>,
    /// Output offset of each phase's residue.
    pub(crate) phase_offset: Vec<usize>,
    /// Output rows (axis 0) a phase row spans: the output stride along axis 0.
    pub(crate) row_stride: usize,
    /// Elements per output row (axis 0).
    pub(crate) out_row: usize,
    /// Output extent along axis 0.
    pub(crate) out_rows: usize,
}

/// Lanes `from..to` of a tile (at most 64) as a mask.
fn lane_range(from: usize, to: usize) -> u64 {
    let width = |n: usize| if n >= 64 { !0 } else { (1u64 << n) - 1 };
    width(to) & !width(from)
}

/// Output pitches per axis, and the source grid's extent per axis (unbounded on axis 0).
struct Grid {
    out_pitch: Vec<usize>,
    src_ext: Vec<usize>,
}

impl Grid {
    fn new(spec: &DirectSpec, out_ext: &[usize]) -> Grid {
        let dims = out_ext.len();
        let mut out_pitch = vec![1usize; dims];
        for a in (0..dims.saturating_sub(1)).rev() {
            out_pitch[a] = out_pitch[a + 1] * out_ext[a + 1];
        }
        let src_ext = (0..dims)
            .map(|a| {
                if a == 0 {
                    usize::MAX
                } else {
                    spec.pitches[a - 1] / spec.pitches[a]
                }
            })
            .collect();
        Grid { out_pitch, src_ext }
    }
}

/// The first tap of each phase in the flat tap numbering, and each tap's source offset
/// relative to a tile's first lane.
fn taps_of(spec: &DirectSpec) -> (Vec<usize>, Vec<isize>) {
    let mut tap_start = Vec::new();
    let mut tap_offset = Vec::new();
    for p in &spec.phases {
        tap_start.push(tap_offset.len());
        for t in &p.taps {
            let mut off = t.component as isize;
            for (a, &shift) in t.shift.iter().enumerate() {
                off += shift * spec.pitches[a] as isize;
            }
            tap_offset.push(off);
        }
    }
    (tap_start, tap_offset)
}

/// Wide groups of each phase (with their starts per phase): runs of taps whose offsets
/// rise by one lane each (the taps of a kernel row, which the specs list by ascending
/// shift), as long as the wide row (tile lanes + taps - 1) fits a 64-bit mask.
fn wide_groups_of(
    spec: &DirectSpec,
    tap_start: &[usize],
    tap_offset: &[isize],
    tile_lanes: usize,
) -> (Vec<WideGroup>, Vec<usize>) {
    let mut wide_groups = Vec::new();
    let mut wide_start = vec![0];
    for (pi, p) in spec.phases.iter().enumerate() {
        let first = tap_start[pi];
        let mut j = 0;
        while j < p.taps.len() {
            let mut len = 1;
            while j + len < p.taps.len()
                && tile_lanes + len <= 64
                && tap_offset[first + j + len] == tap_offset[first + j + len - 1] + 1
            {
                len += 1;
            }
            wide_groups.push((first + j, len, tap_offset[first + j]));
            j += len;
        }
        wide_start.push(wide_groups.len());
    }
    (wide_groups, wide_start)
}

impl TileTable {
    /// Build the table for `spec` on `g`, tiles of `tile_lanes` lanes, chunks of `chunk_rows`.
    pub fn new(
        g: &Geometry,
        spec: &DirectSpec,
        tile_lanes: usize,
        chunk_rows: usize,
        group_size: usize,
    ) -> TileTable {
        Self::build(g, spec, (tile_lanes, chunk_rows, group_size), true)
    }

    /// The table's taps and groups without its tiles, for a plan whose
    /// [`execute`] takes the [`strided_conv`](crate::fast::strided_conv) path (its own tiles;
    /// building these took 6.5 % of vnet3d's backward pass in perf, on every call).
    pub fn without_tiles(
        g: &Geometry,
        spec: &DirectSpec,
        tile_lanes: usize,
        group_size: usize,
    ) -> TileTable {
        Self::build(g, spec, (tile_lanes, 1, group_size), false)
    }

    fn build(
        g: &Geometry,
        spec: &DirectSpec,
        (tile_lanes, chunk_rows, group_size): (usize, usize, usize),
        tiles: bool,
    ) -> TileTable {
        assert!(tile_lanes <= 64, "a tile mask is one u64");
        let dims = g.axes.len();
        let out_ext: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
        let grid = Grid::new(spec, &out_ext);
        let (tap_start, tap_offset) = taps_of(spec);
        let (wide_groups, wide_start) = wide_groups_of(spec, &tap_start, &tap_offset, tile_lanes);
        let wide_taps = wide_groups.iter().map(|g| g.1).max().unwrap_or(1);
        let phase_offset: Vec<usize> = spec
            .phases
            .iter()
            .map(|p| {
                p.residue
                    .iter()
                    .zip(&grid.out_pitch)
                    .map(|(r, op)| r * op)
                    .sum()
            })
            .collect();
        let q0 = spec.phases.iter().map(|p| p.extents[0]).max().unwrap_or(0);
        let chunk_rows = chunk_rows.clamp(1, q0.max(1));
        let chunks = if tiles { q0.div_ceil(chunk_rows) } else { 0 };
        let mut t = TileTable {
            tile_lanes,
            chunk_rows,
            chunk_tiles: vec![0],
            tile_start: Vec::new(),
            out_base: Vec::new(),
            live: Vec::new(),
            masks: Vec::new(),
            run_start: vec![0],
            runs: Vec::new(),
            last_stride: spec.out_stride[dims - 1],
            group_size,
            interleave: Vec::new(),
            pairs: Vec::new(),
            wide_groups,
            wide_start,
            wide_taps,
            wide_masks: Vec::new(),
            tap_start,
            tap_offset,
            phase_offset,
            row_stride: spec.out_stride[0],
            out_row: grid.out_pitch[0],
            out_rows: out_ext[0],
        };
        // Every per-tile vector sized once (growing them copied and page-faulted them
        // afresh: a third of vnet3d's plan time after the masks went by runs).
        let n_tiles: usize = (0..chunks)
            .map(|c| {
                let rows = ((c + 1) * chunk_rows).min(q0) - c * chunk_rows;
                (rows * spec.pitches[0]).div_ceil(tile_lanes)
            })
            .sum();
        t.reserve(n_tiles, spec.phases.len(), chunks);
        let mut coords = vec![0usize; dims];
        for c in 0..chunks {
            let lo = c * chunk_rows * spec.pitches[0];
            let hi = ((c + 1) * chunk_rows).min(q0) * spec.pitches[0];
            for f0 in (lo..hi).step_by(tile_lanes) {
                let tile = t.tile_start.len();
                t.tile_start.push(f0);
                let phases = spec.phases.len();
                t.out_base.extend(std::iter::repeat_n(0, tile_lanes));
                t.live.extend(std::iter::repeat_n(0, phases));
                t.masks.extend(std::iter::repeat_n(0, t.tap_offset.len()));
                t.tile_lanes_of(spec, &grid, (tile, tile_lanes.min(hi - f0)), &mut coords);
                t.store_runs(tile, phases);
                t.interleaves(tile, phases);
                t.wide_rows(tile);
            }
            t.chunk_tiles.push(t.tile_start.len());
        }
        t
    }

    /// Every per-tile vector reserved for `n_tiles` tiles of `phases` phases in `chunks`
    /// chunks.
    fn reserve(&mut self, n_tiles: usize, phases: usize, chunks: usize) {
        self.tile_start.reserve_exact(n_tiles);
        self.out_base.reserve_exact(n_tiles * self.tile_lanes);
        self.live.reserve_exact(n_tiles * phases);
        self.masks.reserve_exact(n_tiles * self.tap_offset.len());
        self.run_start.reserve_exact(n_tiles * phases + 1);
        self.runs.reserve(n_tiles * phases);
        self.interleave
            .reserve_exact(n_tiles * phases.div_ceil(self.group_size.max(1)));
        self.wide_masks
            .reserve_exact(n_tiles * self.wide_groups.len());
        self.chunk_tiles.reserve_exact(chunks + 1);
    }

    /// Tile `tile`'s first `lanes` lanes (`coords`: scratch of one per axis): each one's output offset, each phase's live lanes
    /// and each tap's lanes that read inside the source. The lanes go in runs along one
    /// source row (lane by lane, the divisions and per-tap tests took 73 % of vnet3d's
    /// 0.31 ms plan): the outer coordinates are fixed in a run, and each phase's live lanes
    /// and each tap's inside lanes are one range of it.
    fn tile_lanes_of(
        &mut self,
        spec: &DirectSpec,
        grid: &Grid,
        (tile, lanes): (usize, usize),
        coords: &mut [usize],
    ) {
        let (tile_lanes, total_taps, phases) =
            (self.tile_lanes, self.tap_offset.len(), spec.phases.len());
        let f0 = self.tile_start[tile];
        let dims = grid.src_ext.len();
        let last = dims - 1;
        for (a, c) in coords.iter_mut().enumerate() {
            *c = (f0 / spec.pitches[a]) % grid.src_ext[a];
        }
        let mut l = 0;
        while l < lanes {
            let col = coords[last];
            let seg = (grid.src_ext[last] - col).min(lanes - l);
            let outer: usize = (0..last)
                .map(|a| coords[a] * spec.out_stride[a] * grid.out_pitch[a])
                .sum();
            let step = spec.out_stride[last] * grid.out_pitch[last];
            for j in 0..seg {
                self.out_base[tile * tile_lanes + l + j] = outer + (col + j) * step;
            }
            let mut tap = 0;
            for (pi, p) in spec.phases.iter().enumerate() {
                let outer_live = (0..last).all(|a| coords[a] < p.extents[a]);
                // Lanes `l + j` with `col + j < extent`.
                let live = if outer_live {
                    p.extents[last].saturating_sub(col).min(seg)
                } else {
                    0
                };
                self.live[tile * phases + pi] |= lane_range(l, l + live);
                for ts in &p.taps {
                    let outer_inside = (0..last).all(|a| {
                        let s = coords[a] as isize + ts.shift[a];
                        s >= 0 && (s as usize) < ts.valid[a]
                    });
                    // Live lanes with `0 <= col + j + shift < valid`.
                    let from = (-ts.shift[last] - col as isize).max(0);
                    let to = (ts.valid[last] as isize - ts.shift[last] - col as isize)
                        .min(live as isize);
                    if outer_inside && to > from {
                        self.masks[tile * total_taps + tap] |=
                            lane_range(l + from as usize, l + to as usize);
                    }
                    tap += 1;
                }
            }
            l += seg;
            let mut a = last;
            coords[a] += seg;
            while a > 0 && coords[a] == grid.src_ext[a] {
                coords[a] = 0;
                a -= 1;
                coords[a] += 1;
            }
        }
    }

    /// Tile `tile`'s store runs of each phase: its live lanes, joined where the next lane's
    /// output is one last-axis stride further (`follows`, the same for every phase).
    fn store_runs(&mut self, tile: usize, phases: usize) {
        let tile_lanes = self.tile_lanes;
        let base = &self.out_base[tile * tile_lanes..(tile + 1) * tile_lanes];
        let follows = (0..tile_lanes.saturating_sub(1))
            .filter(|&l| base[l + 1] == base[l] + self.last_stride)
            .fold(0u64, |m, l| m | 1 << l);
        for pi in 0..phases {
            let live = self.live[tile * phases + pi];
            let joined = live & (live >> 1) & follows;
            let off = self.phase_offset[pi];
            let mut left = live;
            while left != 0 {
                let first = left.trailing_zeros() as usize;
                let len = (joined >> first).trailing_ones() as usize + 1;
                self.runs.push((first, len, base[first] + off));
                left &= !lane_range(first, first + len);
            }
            self.run_start.push(self.runs.len());
        }
    }

    /// Whether each group of tile `tile`'s phases can be stored interleaved: identical runs,
    /// offset by their last-axis residue.
    fn interleaves(&mut self, tile: usize, phases: usize) {
        let group_size = self.group_size;
        for first in (0..phases).step_by(group_size) {
            let runs_of = |pi: usize| {
                let i = tile * phases + pi;
                &self.runs[self.run_start[i]..self.run_start[i + 1]]
            };
            let r0 = runs_of(first);
            let ok = group_size > 1
                && first + group_size <= phases
                && !r0.is_empty()
                && (1..group_size).all(|r| {
                    let rr = runs_of(first + r);
                    rr.len() == r0.len()
                        && rr
                            .iter()
                            .zip(r0)
                            .all(|(a, b)| a.0 == b.0 && a.1 == b.1 && a.2 == b.2 + r)
                });
            self.interleave.push(ok);
        }
    }

    /// Each wide group's row for tile `tile`: consistent when every source element its taps
    /// read is either read by all of the taps that reach it or by none.
    fn wide_rows(&mut self, tile: usize) {
        let total_taps = self.tap_offset.len();
        let lanes = lane_range(0, self.tile_lanes);
        for &(first, len, lo) in &self.wide_groups {
            let masks = &self.masks[tile * total_taps..(tile + 1) * total_taps];
            let shift = |tap: usize| (self.tap_offset[tap] - lo) as u32;
            let wide = (first..first + len).fold(0u64, |m, tap| m | masks[tap] << shift(tap));
            let ok = (first..first + len).all(|tap| (wide >> shift(tap)) & lanes == masks[tap]);
            self.wide_masks.push(ok.then_some(wide));
        }
    }

    /// The flat tap numbers of phase `pi`.
    fn taps(&self, pi: usize) -> Range<usize> {
        let end = self
            .tap_start
            .get(pi + 1)
            .copied()
            .unwrap_or(self.tap_offset.len());
        self.tap_start[pi]..end
    }

    /// Whether phase `pi` of `tile` reads the same panel as phase `prev`: as many taps, at
    /// the same offsets, through the same masks.
    pub(crate) fn same_panel(&self, tile: usize, pi: usize, prev: usize) -> bool {
        let (a, b) = (self.taps(pi), self.taps(prev));
        let total = self.tap_offset.len();
        a.len() == b.len()
            && a.zip(b).all(|(ta, tb)| {
                self.tap_offset[ta] == self.tap_offset[tb]
                    && self.masks[tile * total + ta] == self.masks[tile * total + tb]
            })
    }

    /// Mark the groups a pair kernel of `lanes`-wide vectors can write (see `pairs`):
    /// stride-2 groups stored interleaved whose second phase reads the first's panel and
    /// whose runs are whole half vectors. Returns how many, and whether all of those runs
    /// are whole vectors (a pair kernel of whole vectors then serves them).
    pub(crate) fn mark_pairs(&mut self, lanes: usize) -> (usize, bool) {
        let phases = self.tap_start.len();
        let groups = phases.div_ceil(self.group_size.max(1));
        let tiles = self.tile_start.len();
        let mut pairs = vec![false; tiles * groups];
        let half = lanes / 2;
        let mut whole = true;
        if self.group_size == 2 && self.last_stride == 2 && half > 0 {
            for tile in 0..tiles {
                for group in 0..phases / 2 {
                    let first = 2 * group;
                    let i = tile * phases + first;
                    let runs = &self.runs[self.run_start[i]..self.run_start[i + 1]];
                    let pair = self.interleave[tile * groups + group]
                        && self.same_panel(tile, first + 1, first)
                        && runs
                            .iter()
                            .all(|&(lo, len, _)| lo % half == 0 && len % half == 0);
                    whole &= !pair
                        || runs
                            .iter()
                            .all(|&(lo, len, _)| lo % lanes == 0 && len % lanes == 0);
                    pairs[tile * groups + group] = pair;
                }
            }
        }
        self.pairs = pairs;
        (self.pairs.iter().filter(|&&p| p).count(), whole)
    }

    /// The wide groups of phase `pi` and, for `tile`, their row masks (see `wide_masks`).
    pub(crate) fn wide(&self, tile: usize, pi: usize) -> (&[WideGroup], &[Option<u64>]) {
        let r = self.wide_start[pi]..self.wide_start[pi + 1];
        let n = self.wide_groups.len();
        (
            &self.wide_groups[r.clone()],
            &self.wide_masks[tile * n + r.start..tile * n + r.end],
        )
    }

    /// Number of chunks.
    pub fn chunks(&self) -> usize {
        self.chunk_tiles.len() - 1
    }

    /// Output rows (axis 0) written by chunks `c`: a contiguous band.
    pub(crate) fn rows(&self, c: Range<usize>) -> Range<usize> {
        let lo = (c.start * self.chunk_rows * self.row_stride).min(self.out_rows);
        let hi = if c.end >= self.chunks() {
            self.out_rows
        } else {
            (c.end * self.chunk_rows * self.row_stride).min(self.out_rows)
        };
        lo..hi
    }

    /// Bytes held by the table.
    pub fn bytes(&self) -> usize {
        8 * (self.out_base.len()
            + self.live.len()
            + self.masks.len()
            + self.tile_start.len()
            + self.run_start.len())
            + 24 * self.runs.len()
            + 16 * self.tap_offset.len()
            + 24 * self.wide_groups.len()
            + 16 * self.wide_masks.len()
            + self.pairs.len()
    }
}
