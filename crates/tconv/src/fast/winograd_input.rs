//! The Winograd tiles' transforms in registers (f32, AVX2): the input transform from a
//! channels-last copy of the input (or, on AVX-512, straight from the input), and the
//! output transform.
//!
//! The portable transforms ([`super::winograd`]) gather each tile's `α^D` inputs channel by
//! channel through an index table into rows, then form every point with passes over those
//! rows, and the outputs likewise from the GEMM results: scalar gathers and passes through
//! L2. With the tiles forced on dcgan3 (1 thread, perf), the transforms and the store took
//! 44 % of the time that way against 50 % in the GEMMs; in registers, 18 % (input) and
//! 12 % (output and store) against 59 %. Here a task first copies the input rows its
//! band reads into a channels-last slab (`[image][position][channel]`, by 8×8 transposes),
//! so one tile's input at one position is a vector of 8 channels. For 16 tiles at a time
//! the `α^D` inputs are loaded as such vectors, the points are formed in registers, and
//! each point's 8×8 blocks (tiles × channels) are transposed into the GEMM operand
//! `V[ξ][ci][tile]`. The outputs are formed in registers from 8 columns of every point's
//! GEMM results at a time.
//!
//! On AVX-512 the separable 2-D forms skip the slab and both transposes
//! (`transform_gathered`): the 16 tiles of a vector are its lanes from the start. For
//! each block of 16 tiles and input `i` a table holds the least index they read and each
//! tile's offset from it; per channel, the (at most) 64 values from there are loaded and
//! each tile's value picked by two-source permutes (gathers where the tiles spread wider,
//! zeros by mask where a tile reads padding), and each point is stored as 16 consecutive
//! columns of `V`. On the Intel machine of 2026-12-05 (perf, 1 thread) this took the input
//! transform of dcgan3's forward pass from 34 % (slab, offsets, transform and transposes)
//! to 24 %; gathers alone (`vgatherdps` for every input) took 28 %.
//!
//! The 2-D transforms the plans use (F(2, 2), F(3, 2), F(2, 3) on both axes) run as one
//! pass per axis with their matrices as constants (0 skipped, ±1 an add or subtract); any
//! other runs the Kronecker product's terms. Coefficients are 0, ±1 and ±1/2, so small
//! integers stay exact; the order of the additions differs from the portable transforms',
//! so the two agree to rounding. Each output element is computed by the same arithmetic
//! whatever the task, so results stay bitwise identical for any thread count.

use std::ops::Range;

use super::scratch;
use super::winograd::Transform;

/// A task's input rows in channels-last order, `[image][position][channel]` with the
/// channels padded to a multiple of 8 (zeros), and one position of zeros at the end that
/// padding reads.
pub(crate) struct Slab {
    data: scratch::Scratch<f32>,
    /// First input row (axis 0) held, and positions per row (the other axes' product).
    lo: usize,
    row_len: usize,
    /// Positions held per image.
    plane: usize,
    /// Channels per position, padded.
    cpad: usize,
    batch: Range<usize>,
    /// Positions per image and channels of the whole input.
    in_plane: usize,
    channels: usize,
    /// Offset of the zero position.
    zero: usize,
}

/// Where a slab's rows come from: the input's channels, its channels per group and the
/// group, positions per image, positions per axis-0 row, the rows and the images.
pub(crate) struct SlabSource {
    pub channels: usize,
    pub cin_g: usize,
    pub group: usize,
    pub in_plane: usize,
    pub row_len: usize,
    pub rows: Range<usize>,
    pub batch: Range<usize>,
}

impl Slab {
    /// Copy rows `src.rows` of every image of `src.batch` and every channel of the group
    /// (8×8 blocks by AVX transposes where it is available).
    pub(crate) fn new(x: &[f32], src: &SlabSource) -> Slab {
        let cpad = src.cin_g.div_ceil(8) * 8;
        let plane = src.rows.len() * src.row_len;
        let images = src.batch.len();
        let zero = images * plane * cpad;
        let mut data = scratch::take::<f32>(zero + cpad);
        let first = src.rows.start * src.row_len;
        assert!(
            src.rows.end * src.row_len <= src.in_plane
                && src.batch.end * src.channels * src.in_plane <= x.len()
                && (src.group + 1) * src.cin_g <= src.channels,
            "slab outside the input"
        );
        data[zero..zero + cpad].fill(0.0);
        for (b, n) in src.batch.clone().enumerate() {
            let chan0 = (n * src.channels + src.group * src.cin_g) * src.in_plane + first;
            let dst = &mut data[b * plane * cpad..(b + 1) * plane * cpad];
            for c0 in (0..cpad).step_by(8) {
                let cn = 8.min(src.cin_g.saturating_sub(c0));
                #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
                let mut p0 = 0;
                #[cfg(target_arch = "x86_64")]
                if cn == 8 && is_x86_feature_detected!("avx") {
                    while p0 + 8 <= plane {
                        let rows: [&[f32]; 8] = std::array::from_fn(|c| {
                            &x[chan0 + (c0 + c) * src.in_plane + p0..][..8]
                        });
                        let out = &mut dst[p0 * cpad..(p0 + 8) * cpad];
                        // Safety: AVX was detected; the rows hold 8 values each and `out`
                        // 8 positions of `cpad >= c0 + 8`.
                        unsafe { transpose_block(rows, out, cpad, c0) };
                        p0 += 8;
                    }
                }
                for p in p0..plane {
                    let at = &mut dst[p * cpad + c0..p * cpad + c0 + 8];
                    for (c, e) in at.iter_mut().enumerate() {
                        *e = if c < cn {
                            x[chan0 + (c0 + c) * src.in_plane + p]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
        Slab {
            data,
            lo: src.rows.start,
            row_len: src.row_len,
            plane,
            cpad,
            batch: src.batch.clone(),
            in_plane: src.in_plane,
            channels: src.channels,
            zero,
        }
    }

    /// A gather table ([`super::winograd`]'s: entry `i·n + col` the index into `x`, from
    /// `base`, of channel 0 of tile `col`'s input `i`, and the `zeros` at `i·pitch + col`)
    /// as slab offsets `[col][i]` for `n_pad` columns (columns past `n` read zeros); `None`
    /// where an entry lies outside the slab.
    pub(crate) fn offsets(
        &self,
        (table, zeros, base): (&[usize], &[usize], usize),
        (n, n_pad, pitch): (usize, usize, usize),
        points: usize,
    ) -> Option<Vec<u32>> {
        u32::try_from(self.zero).ok()?;
        let zero = self.zero as u32;
        if n == 0 {
            return Some(vec![zero; n_pad * points]);
        }
        // Padding first (its table entries are placeholders), marked by `u32::MAX`.
        let mut offs = vec![zero; n_pad * points];
        for &z in zeros {
            offs[(z % pitch) * points + z / pitch] = u32::MAX;
        }
        let held = self.lo * self.row_len..self.lo * self.row_len + self.plane;
        let table = &table[..points * n];
        // Column by column: a tile's inputs lie in one channel plane, whose start and image
        // are divided out once (two divisions per entry were 4-5 % of s1k3's forward pass).
        let mut plane_of: Option<(usize, usize)> = None; // (its first index, its image)
        for (col, o) in offs.chunks_exact_mut(points).take(n).enumerate() {
            for (i, o) in o.iter_mut().enumerate() {
                if *o == u32::MAX {
                    *o = zero;
                    continue;
                }
                let e = base + table[i * n + col];
                let (first, image) = match plane_of {
                    Some((first, image)) if (first..first + self.in_plane).contains(&e) => {
                        (first, image)
                    }
                    _ => {
                        let q = e / self.in_plane;
                        *plane_of.insert((q * self.in_plane, q / self.channels))
                    }
                };
                let pos = e - first;
                if !self.batch.contains(&image) || !held.contains(&pos) {
                    return None;
                }
                *o = (((image - self.batch.start) * self.plane + pos - held.start) * self.cpad)
                    as u32;
            }
        }
        Some(offs)
    }
}

/// `V[ξ][row0 + c][col]` (points `point_stride` apart, rows `pitch` apart) for the
/// slab's first `channels` channels and the tiles of `offs` ([`Slab::offsets`], `points`
/// per tile, a multiple of 8 tiles): each point the sum of its `terms` `(input,
/// coefficient)` in order. Each block of 16 tiles takes all channels in turn, so its
/// inputs are read from the slab once. Panics without AVX2 and FMA.
pub(crate) fn transform(
    slab: &Slab,
    offs: &[u32],
    (terms, form): (&[Vec<(usize, f32)>], Points),
    channels: usize,
    v: &mut [f32],
    (row0, pitch, point_stride): (usize, usize, usize),
) {
    let points = terms.len();
    let tiles = offs.len() / points.max(1);
    assert!(
        avx2_fma()
            && points <= MAX_POINTS
            && offs.len() == tiles * points
            && tiles.is_multiple_of(8)
            && tiles <= pitch
            && channels <= slab.cpad
            && offs
                .iter()
                .all(|&o| o as usize + slab.cpad <= slab.data.len())
            && terms.iter().flatten().all(|&(i, _)| i < points)
            && match form {
                Points::Separable { alpha, dims } => alpha.pow(dims as u32) == points,
                Points::Terms => true,
            }
            && (points == 0
                || channels == 0
                || v.len() >= (points - 1) * point_stride + (row0 + channels - 1) * pitch + tiles),
        "input transform operands"
    );
    #[cfg(target_arch = "x86_64")]
    // Safety: AVX2 and FMA are available (checked above); every load is at an offset
    // checked above to leave `cpad` values in the slab, every store inside `v`.
    unsafe {
        transform_avx2(
            slab,
            offs,
            (terms, form),
            channels,
            v,
            (row0, pitch, point_stride),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("checked above: AVX2 is x86-64 only");
}

/// Where [`transform_gathered`] reads a source's tiles: the gather table
/// ([`super::winograd`]'s: entry `i·n + col` the index into `x`, from a base given at run
/// time, of the group's channel 0 for tile `col`'s input `i`), the entries that read
/// padding (`i·pitch + col`), and the tiles `n`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Gathered<'a> {
    pub table: &'a [usize],
    pub zeros: &'a [usize],
    pub n: usize,
}

/// A [`Gathered`] source cut into blocks of 16 tiles. Per block and input `i` (entry
/// `b·points + i`): the least index the 16 tiles read, each tile's place in one of four
/// windows of 16 values from it (the permutes' index), which tiles to load (the others read
/// padding or lie past `n`), where the four windows start and which of their values the
/// tiles read (four 16-lane load masks; all zero where four windows cannot hold the
/// indices, which are then gathered). The windows are consecutive where the indices span
/// less than 64 values; where they spread wider but lie in up to four clusters (the 16
/// tiles span rows of a narrow image: dcgan3's input gradient, dcgan1's forward phases),
/// each window starts at a cluster's least index, and two-source permutes pick the tiles
/// as before instead of a gather (on Zen 4, perf put 73 % of this transform's samples in
/// dcgan3's backward pass, and 70 % in dcgan1's forward pass, right after the gathers).
#[cfg(target_arch = "x86_64")]
#[derive(PartialEq)]
struct GatherBlocks {
    /// Entry `b·points + i`: block `b`'s input `i`.
    entries: Vec<Entry>,
    /// Per block, where all its entries load windows of one kind ([`Kind::Two`] or
    /// [`Kind::Four`]), that kind and the greatest of their ends.
    uniform: Vec<Option<(Kind, usize)>>,
}

/// A block's 16 indices, one 512-bit load.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
#[derive(Clone, Copy, PartialEq)]
struct Lanes16([i32; 16]);

/// How [`gathered_avx512`] loads one input of a block of 16 tiles.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Every tile reads padding (or lies past `n`): zeros.
    None,
    /// Spread wider than four windows: a gather.
    Gather,
    /// Two windows: one permute.
    Two,
    /// Four windows: two permutes and a blend.
    Four,
}

/// One input of a block of 16 tiles, as [`GatherBlocks`] describes it (one entry holds
/// what the loads need, so that each is read from one place).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq)]
struct Entry {
    /// The permutes' (or the gather's) index per tile.
    idx: Lanes16,
    /// The least index the tiles read.
    base: usize,
    /// `base` plus the values the full loads of the windows span.
    end: usize,
    /// Where each window starts, from `base` (0 for an unused window).
    starts: [u32; 4],
    /// Each window's values the tiles read.
    loads: [u16; 4],
    /// The tiles loaded (the others read padding or lie past `n`).
    mask: u16,
    /// The tiles read from the third or fourth window.
    high: u16,
    kind: Kind,
}

#[cfg(target_arch = "x86_64")]
impl GatherBlocks {
    /// `None` where the indices of one block's input span more than `i32` reaches.
    fn new(g: &Gathered<'_>, points: usize, (n_pad, pitch): (usize, usize)) -> Option<Self> {
        let n_entries = n_pad / 16 * points;
        let mut masks = vec![0u16; n_entries];
        for (e, m) in masks.iter_mut().enumerate() {
            // The block's columns before `n`.
            let cols = g.n.saturating_sub(e / points * 16).min(16);
            *m = ((1u32 << cols) - 1) as u16;
        }
        for &z in g.zeros {
            let (i, col) = (z / pitch, z % pitch);
            if col < g.n {
                masks[(col / 16) * points + i] &= !(1 << (col % 16));
            }
        }
        let mut entries = Vec::with_capacity(n_entries);
        for (e, &m) in masks.iter().enumerate() {
            let (b, i) = (e / points, e % points);
            let mut entry = Entry {
                idx: Lanes16([0; 16]),
                base: 0,
                end: 0,
                starts: [0; 4],
                loads: [0; 4],
                mask: m,
                high: 0,
                kind: Kind::None,
            };
            // The block's columns before `n` (the others are masked off).
            let row = &g.table[i * g.n..(i + 1) * g.n][(b * 16).min(g.n)..(b * 16 + 16).min(g.n)];
            let (mut lo, mut hi) = (usize::MAX, 0);
            for (l, &at) in row.iter().enumerate() {
                if m & (1 << l) != 0 {
                    lo = lo.min(at);
                    hi = hi.max(at);
                }
            }
            if lo > hi {
                entries.push(entry); // nothing to load: base 0, no lanes
                continue;
            }
            entry.base = lo;
            let windows = four_windows(row, m, lo, hi);
            for (l, &at) in row.iter().enumerate() {
                if m & (1 << l) != 0 {
                    let o = at - lo;
                    match windows {
                        Some(w) => {
                            // The window holding `o`: a permute's index picks value
                            // `o - start` of the pair (j even: first source, odd: second).
                            let j = (0..4)
                                .find(|&j| (w[j]..w[j] + 16).contains(&o))
                                .expect("the windows hold every index");
                            let at_pair = o - w[j] + 16 * (j % 2);
                            entry.idx.0[l] = i32::try_from(at_pair).ok()?;
                            entry.loads[j] |= 1 << (o - w[j]);
                            if j >= 2 {
                                entry.high |= 1 << l;
                            }
                        }
                        None => entry.idx.0[l] = i32::try_from(o).ok()?,
                    }
                }
            }
            entry.kind = match windows {
                Some(w) => {
                    entry.starts = std::array::from_fn(|j| w[j] as u32);
                    let reach = u32::try_from(w.iter().max().copied().unwrap_or(0) + 16).ok()?;
                    entry.end = lo + reach as usize;
                    if entry.loads[2] | entry.loads[3] == 0 {
                        Kind::Two
                    } else {
                        Kind::Four
                    }
                }
                None => Kind::Gather,
            };
            entries.push(entry);
        }
        let uniform = entries
            .chunks_exact(points.max(1))
            .map(|block| {
                let kind = block.first()?.kind;
                let same = block.iter().all(|e| e.kind == kind);
                (same && matches!(kind, Kind::Two | Kind::Four))
                    .then(|| (kind, block.iter().map(|e| e.end).max().unwrap_or(0)))
            })
            .collect();
        Some(GatherBlocks { entries, uniform })
    }
}

/// Four windows of 16 values, from the least index `lo`, that hold the indices (relative
/// to `lo`) of the lanes set in `m`: consecutive where they span less than 64 values (the
/// same values the loads read before), else each starting at the least index not yet held
/// (the fewest windows that hold them all); `None` where four do not. An unused window
/// starts at 0 (its loads read nothing, or the first window's values).
#[cfg(target_arch = "x86_64")]
fn four_windows(row: &[usize], m: u16, lo: usize, hi: usize) -> Option<[usize; 4]> {
    if hi - lo < 64 {
        return Some([0, 16, 32, 48]);
    }
    let mut offs: Vec<usize> = (0..row.len())
        .filter(|&l| m & (1 << l) != 0)
        .map(|l| row[l] - lo)
        .collect();
    offs.sort_unstable();
    let mut w = [0usize; 4];
    let mut used = 0;
    for o in offs {
        if used > 0 && o < w[used - 1] + 16 {
            continue;
        }
        if used == 4 {
            return None;
        }
        w[used] = o;
        used += 1;
    }
    Some(w)
}

/// How [`transform_gathered`] reads one source of a task's phase, built once with the plan:
/// the blocks of 16 tiles with their indices relative to a base given at run time (the
/// task's first input and its band's origin), the largest entry of the table, and the
/// form.
#[derive(PartialEq)]
pub(crate) struct GatherPlan {
    #[cfg(target_arch = "x86_64")]
    blocks: GatherBlocks,
    alpha: usize,
    n_pad: usize,
    /// The largest entry of the gather table (relative, as the blocks' indices).
    max: usize,
}

impl GatherPlan {
    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            let b = &self.blocks;
            b.entries.len() * std::mem::size_of::<Entry>()
                + b.uniform.len() * std::mem::size_of::<Option<(Kind, usize)>>()
        }
        #[cfg(not(target_arch = "x86_64"))]
        0
    }

    /// The blocks for the gather table `g` (entries relative to a base given at run time) of
    /// `n_pad` columns (`pitch` apart in the zeros list), for the separable 2-D forms on
    /// AVX-512; `None` for other forms, without AVX-512F, where `n_pad` is not a multiple
    /// of 16, or where a block's indices span more than `i32` reaches.
    pub(crate) fn new(
        g: &Gathered<'_>,
        form: Points,
        (n_pad, pitch): (usize, usize),
    ) -> Option<GatherPlan> {
        #[cfg(target_arch = "x86_64")]
        {
            let alpha = match form {
                Points::Separable { alpha, dims: 2 } if alpha == 3 || alpha == 4 => alpha,
                _ => return None,
            };
            let points = alpha * alpha;
            if !is_x86_feature_detected!("avx512f")
                || !n_pad.is_multiple_of(16)
                || n_pad > pitch
                || g.table.len() < points * g.n
                || g.zeros.iter().any(|&z| z / pitch >= points)
            {
                return None;
            }
            let max = g.table[..points * g.n].iter().copied().max().unwrap_or(0);
            Some(GatherPlan {
                blocks: GatherBlocks::new(g, points, (n_pad, pitch))?,
                alpha,
                n_pad,
                max,
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (g, form, n_pad, pitch);
            None
        }
    }
}

/// [`transform`] without the channels-last copy, for the separable 2-D forms on AVX-512:
/// input `i` of 16 tiles of one channel loaded straight from `x` into a vector (the 64
/// values from the least index the tiles read, by two-source permutes, or a gather where
/// they spread wider; zeros where the table marks padding and for the columns `n..n_pad`),
/// the points formed as [`transform`] forms them (the same additions in the same order, so
/// the same values), and each point stored as 16 consecutive columns of its row of `V`. No
/// transposes: the tiles are the lanes on both sides. `plan`'s indices are relative to
/// `base` (in `x`).
pub(crate) fn transform_gathered(
    x: &[f32],
    plan: &GatherPlan,
    base: usize,
    (channels, in_plane): (usize, usize),
    v: &mut [f32],
    (row0, pitch, point_stride): (usize, usize, usize),
) {
    let (points, n_pad) = (plan.alpha * plan.alpha, plan.n_pad);
    assert!(
        n_pad <= pitch
            && (channels == 0
                || (base + plan.max + (channels - 1) * in_plane < x.len()
                    && v.len()
                        >= (points - 1) * point_stride + (row0 + channels - 1) * pitch + n_pad)),
        "gathered input transform operands"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let op = (
            x,
            &plan.blocks,
            base,
            (channels, in_plane),
            v,
            (row0, pitch, point_stride),
        );
        // Safety: AVX-512F is available (a plan is built only then); every lane loaded is
        // a table entry plus `base` and a channel's offset, checked above to lie inside `x`
        // (through the largest entry), or one of the 64 values from a block's least such
        // index where those lie inside `x` (checked where they are loaded; other lanes are
        // masked off and not read); every store lies inside `v` (checked above).
        unsafe {
            if plan.alpha == 3 {
                gathered_avx512::<SEP3_2D, 9>(op)
            } else {
                gathered_avx512::<SEP4_2D, 16>(op)
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, base, row0, point_stride);
        unreachable!("a gather plan is built on x86-64 only");
    }
}

/// [`gathered_avx512`]'s operands: `x`, the blocks, their base in `x`, the channels and
/// their distance in `x`, `V` and where its rows lie.
#[cfg(target_arch = "x86_64")]
type GatherArgs<'a> = (
    &'a [f32],
    &'a GatherBlocks,
    usize,
    (usize, usize),
    &'a mut [f32],
    (usize, usize, usize),
);

/// Channels [`gathered_avx512`] takes at a time, each block's indices and masks loaded once
/// for all of them: one channel at a time ran 0.93-0.97x on dcgan3's and s1k3's forward
/// pass at 2 threads (paired, two sittings of 5 rounds; 0.98-1.02x at 1 thread).
#[cfg(target_arch = "x86_64")]
const GATHER_CHANNELS: usize = 4;

/// The body of [`transform_gathered`] (`FORM`: [`SEP3_2D`] or [`SEP4_2D`], as in
/// [`each_tile`], with its `P` points).
///
/// Each input of a block reads one [`Entry`] (its kind decided with the plan) and the
/// points are a constant: the block's values and points are `P` vectors a channel, not
/// [`MAX_POINTS`]. It read seven tables an input, each index checked, and branched on the
/// loads' masks (perf: a third of its samples on scalar moves; the transform took 25 % of
/// dcgan3's and 26 % of s1k3's forward passes). Against that, forward passes paired
/// (`PASS=forward bench/paired.sh L T 4`, medians / minima; Intel Xeon, 2026-12-08): at 1
/// thread s1k3 1.18x / 1.19x faster, dilated 1.13x / 1.13x, dcgan3 1.08x / 1.07x, dcgan2
/// 1.05x / 1.04x, dcgan1 1.04x / 1.06x; at 2 threads 1.22x / 1.21x, 1.15x / 1.15x, 1.13x /
/// 1.14x, 1.07x / 1.09x and 1.07x / 1.07x; the input gradients at 1 thread (3 rounds)
/// 1.05-1.17x. The same loads, permutes and additions, so the same bits.
///
/// # Safety
/// As [`transform_gathered`] checks, and AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gathered_avx512<const FORM: u8, const P: usize>(
    (x, blocks, base, (channels, in_plane), v, (row0, pitch, point_stride)): GatherArgs<'_>,
) {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    let mut d = [[zero; P]; GATHER_CHANNELS];
    let mut y = [zero; P];
    let out = v.as_mut_ptr();
    // A few channels at a time, their blocks in order: each channel's rows are read front
    // to back, each of `V`'s rows written front to back, and each block's entries serve
    // all the channels.
    for c0 in (0..channels).step_by(GATHER_CHANNELS) {
        let cn = GATHER_CHANNELS.min(channels - c0);
        // An entry's windows lie inside `x` for every channel of the group where their
        // end (from `base` and channel `c0`) is at most this.
        let room = x.len().checked_sub(base + (c0 + cn - 1) * in_plane);
        let xc = x.as_ptr().wrapping_add(base + c0 * in_plane);
        for (b, entries) in blocks.entries.chunks_exact(P).enumerate() {
            match blocks.uniform[b] {
                // A whole group of channels of a block whose inputs all load windows of
                // one kind inside `x`: no branch per input.
                Some((kind, end)) if cn == GATHER_CHANNELS && room.is_some_and(|r| end <= r) => {
                    if kind == Kind::Two {
                        windows::<false, P>(entries, xc, in_plane, &mut d)
                    } else {
                        windows::<true, P>(entries, xc, in_plane, &mut d)
                    }
                }
                _ => gathered_inputs(entries, (xc, room), (cn, in_plane), &mut d),
            }
            let col = 16 * b;
            for (cc, dc) in d.iter().enumerate().take(cn) {
                match FORM {
                    SEP3_2D => rect2(&BT3, dc, (&mut y, 1, 0)),
                    _ => rect2(&BT4, dc, (&mut y, 1, 0)),
                }
                let row = (row0 + c0 + cc) * pitch + col;
                for (xi, yi) in y.iter().enumerate() {
                    _mm512_storeu_ps(out.add(xi * point_stride + row), *yi);
                }
            }
        }
    }
}

/// [`gathered_avx512`]'s loads for the first `cn` channels of a group (from `xc`, its
/// channel 0), input by input as each entry's kind says: zeros, a gather, or two or four
/// windows of 16 values (masked to the values the tiles read where the windows' end passes
/// `room`, the values from `xc`'s last channel to the end of `x`), each tile's picked by
/// two-source permutes.
///
/// # Safety
/// As [`gathered_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gathered_inputs<const P: usize>(
    entries: &[Entry],
    (xc, room): (*const f32, Option<usize>),
    (cn, in_plane): (usize, usize),
    d: &mut [[std::arch::x86_64::__m512; P]; GATHER_CHANNELS],
) {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    for (i, e) in entries.iter().enumerate() {
        let p = xc.wrapping_add(e.base);
        match e.kind {
            Kind::None => {
                for dc in d.iter_mut().take(cn) {
                    dc[i] = zero;
                }
            }
            Kind::Gather => {
                let idx = _mm512_load_si512(e.idx.0.as_ptr() as *const _);
                for (cc, dc) in d.iter_mut().enumerate().take(cn) {
                    let p = p.wrapping_add(cc * in_plane);
                    dc[i] = _mm512_mask_i32gather_ps::<4>(zero, e.mask, idx, p);
                }
            }
            kind => {
                // The windows of 16 values (masked to the ones read near the end
                // of `x`), then each tile's picked by a two-source permute.
                let idx = _mm512_load_si512(e.idx.0.as_ptr() as *const _);
                let whole = room.is_some_and(|r| e.end <= r);
                let (ld, st) = (e.loads, e.starts);
                for (cc, dc) in d.iter_mut().enumerate().take(cn) {
                    let p = p.wrapping_add(cc * in_plane);
                    let load = |j: usize| {
                        let at = p.wrapping_add(st[j] as usize);
                        if whole {
                            _mm512_loadu_ps(at)
                        } else {
                            _mm512_maskz_loadu_ps(ld[j], at)
                        }
                    };
                    let lo = _mm512_maskz_permutex2var_ps(e.mask, load(0), idx, load(1));
                    dc[i] = if kind == Kind::Two {
                        lo
                    } else {
                        let hi = _mm512_permutex2var_ps(load(2), idx, load(3));
                        _mm512_mask_mov_ps(lo, e.high, hi)
                    };
                }
            }
        }
    }
}

/// [`gathered_avx512`]'s loads for a whole group of channels of a block whose inputs all
/// load two windows (or four: `FOUR`) inside `x`: the same loads and permutes as there,
/// without a branch per input. Against a branch per input and channel (paired forward
/// passes, 3 rounds, medians / minima; Intel Xeon, 2026-12-08): s1k3 1.06x / 1.07x at 1
/// thread and 1.03x / 1.04x at 2, dilated 1.06x / 1.04x and 1.05x / 0.94x, dcgan2 and
/// dcgan3 1.00-1.05x / 1.00-1.03x.
///
/// # Safety
/// As [`gathered_avx512`], and every window of every channel of the group inside `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn windows<const FOUR: bool, const P: usize>(
    entries: &[Entry],
    xc: *const f32,
    in_plane: usize,
    d: &mut [[std::arch::x86_64::__m512; P]; GATHER_CHANNELS],
) {
    use std::arch::x86_64::*;
    for (i, e) in entries.iter().enumerate() {
        let idx = _mm512_load_si512(e.idx.0.as_ptr() as *const _);
        let p = xc.wrapping_add(e.base);
        let st = e.starts;
        for (cc, dc) in d.iter_mut().enumerate() {
            let p = p.wrapping_add(cc * in_plane);
            let load = |j: usize| _mm512_loadu_ps(p.wrapping_add(st[j] as usize));
            let lo = _mm512_maskz_permutex2var_ps(e.mask, load(0), idx, load(1));
            dc[i] = if FOUR {
                let hi = _mm512_permutex2var_ps(load(2), idx, load(3));
                _mm512_mask_mov_ps(lo, e.high, hi)
            } else {
                lo
            };
        }
    }
}

/// Whether this CPU has AVX2 and FMA (what the transforms in registers need).
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Most points of a tile (`α^D`, [`super::winograd::MAX_ALPHA`]³).
const MAX_POINTS: usize = 64;

/// # Safety
/// AVX available; `rows` hold 8 values, `out` 8 positions of `cpad >= c0 + 8` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_block(rows: [&[f32]; 8], out: &mut [f32], cpad: usize, c0: usize) {
    use std::arch::x86_64::*;
    let x: [__m256; 8] = std::array::from_fn(|c| _mm256_loadu_ps(rows[c].as_ptr()));
    let t = super::direct::transpose8x8(x);
    for (p, r) in t.iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(p * cpad + c0), *r);
    }
}

/// How a tile's points are formed from its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Points {
    /// One pass per axis (2 axes) of [`BT3`] (`α = 3`) or [`BT4`] (`α = 4`), unrolled with
    /// the coefficients as constants.
    Separable { alpha: usize, dims: usize },
    /// The Kronecker product's terms, point by point.
    Terms,
}

/// `Bᵀ` of F(2, 2) (and F(1, 3)), as [`super::winograd::Transform::new`] builds it.
pub(crate) const BT3: [[f32; 3]; 3] = [[1.0, -1.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 1.0]];
/// `Bᵀ` of F(3, 2) and F(2, 3).
pub(crate) const BT4: [[f32; 4]; 4] = [
    [1.0, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 0.0],
    [0.0, -1.0, 0.0, 1.0],
];

impl Points {
    /// The form for the per-axis transforms' `Bᵀ`.
    pub(crate) fn of(transforms: &[Transform]) -> Points {
        let dims = transforms.len();
        if dims != 2 {
            Points::Terms
        } else if transforms.iter().all(|t| same(&t.bt, &BT3)) {
            Points::Separable { alpha: 3, dims }
        } else if transforms.iter().all(|t| same(&t.bt, &BT4)) {
            Points::Separable { alpha: 4, dims }
        } else {
            Points::Terms
        }
    }
}

/// Whether the row-major matrix `m` is the constant `c`.
fn same<const C: usize>(m: &[f64], c: &[[f32; C]]) -> bool {
    m.len() == c.len() * C
        && m.iter()
            .zip(c.iter().flatten())
            .all(|(&a, &b)| a == f64::from(b))
}

/// # Safety
/// As [`transform`] checks, and AVX2 and FMA available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_avx2(
    slab: &Slab,
    offs: &[u32],
    (terms, form): (&[Vec<(usize, f32)>], Points),
    channels: usize,
    v: &mut [f32],
    rows: (usize, usize, usize),
) {
    let op = (slab, offs, terms, channels, v, rows);
    match form {
        Points::Separable { alpha: 3, dims: 2 } => each_tile::<SEP3_2D>(op),
        Points::Separable { alpha: 4, dims: 2 } => each_tile::<SEP4_2D>(op),
        _ => each_tile::<TERMS>(op),
    }
}

/// [`each_tile`]'s operands: slab, offsets, terms, channels, `V` and where its rows lie.
#[cfg(target_arch = "x86_64")]
type TileArgs<'a> = (
    &'a Slab,
    &'a [u32],
    &'a [Vec<(usize, f32)>],
    usize,
    &'a mut [f32],
    (usize, usize, usize),
);

/// The forms [`each_tile`] is compiled for.
#[cfg(target_arch = "x86_64")]
const TERMS: u8 = 0;
#[cfg(target_arch = "x86_64")]
const SEP3_2D: u8 = 1;
#[cfg(target_arch = "x86_64")]
const SEP4_2D: u8 = 2;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m256, __m512};

/// The driver of [`transform_avx2`]: per block of 8 tiles and group of 8 channels, each
/// tile's inputs loaded, its points formed (`FORM`: [`TERMS`] or a separable form), and
/// each point's 8×8 block transposed into `V`.
///
/// # Safety
/// As [`transform`] checks, and AVX2 and FMA available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn each_tile<const FORM: u8>(
    (slab, offs, terms, channels, v, (row0, pitch, point_stride)): TileArgs<'_>,
) {
    use std::arch::x86_64::*;
    let points = terms.len();
    let base = slab.data.as_ptr();
    let out = v.as_mut_ptr();
    let mut d = [_mm256_setzero_ps(); MAX_POINTS];
    let mut tmp = [_mm256_setzero_ps(); MAX_POINTS * 16];
    // Blocks of 16 tiles where they fit (each store then fills a whole 64-byte run of a
    // row of `V`), else of 8.
    let mut col = 0;
    let tiles = offs.len() / points.max(1);
    while col < tiles {
        let width = if col + 16 <= tiles { 16 } else { 8 };
        let offs = &offs[col * points..(col + width) * points];
        for c0 in (0..channels).step_by(8) {
            let cn = 8.min(channels - c0);
            for (t, o) in offs.chunks_exact(points).enumerate() {
                for (di, &oi) in d.iter_mut().zip(o) {
                    *di = _mm256_loadu_ps(base.add(oi as usize + c0));
                }
                match FORM {
                    SEP3_2D => rect2(&BT3, &d, (&mut tmp, 16, t)),
                    SEP4_2D => rect2(&BT4, &d, (&mut tmp, 16, t)),
                    _ => {
                        for (xi, ts) in terms.iter().enumerate() {
                            let mut acc = _mm256_setzero_ps();
                            for &(i, c) in ts {
                                acc = _mm256_fmadd_ps(_mm256_set1_ps(c), d[i], acc);
                            }
                            tmp[xi * 16 + t] = acc;
                        }
                    }
                }
            }
            for xi in 0..points {
                let dst = out.add(xi * point_stride + (row0 + c0) * pitch + col);
                let lo = super::direct::transpose8x8(std::array::from_fn(|t| tmp[xi * 16 + t]));
                if width == 16 {
                    let hi =
                        super::direct::transpose8x8(std::array::from_fn(|t| tmp[xi * 16 + 8 + t]));
                    for cc in 0..cn {
                        _mm256_storeu_ps(dst.add(cc * pitch), lo[cc]);
                        _mm256_storeu_ps(dst.add(cc * pitch + 8), hi[cc]);
                    }
                } else {
                    for (cc, r) in lo.iter().enumerate().take(cn) {
                        _mm256_storeu_ps(dst.add(cc * pitch), *r);
                    }
                }
            }
        }
        col += width;
    }
}

/// How a tile's outputs are formed from its points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outputs {
    /// One pass per axis (2 axes, alike) of [`AT22`], [`AT32`] or [`AT23`], named by `at`
    /// as `10·m + r` (22, 32 or 23).
    Separable { at: usize, dims: usize },
    /// The Kronecker product's terms, output by output.
    Terms,
}

/// `Aᵀ` of F(2, 2), F(3, 2) and F(2, 3), as [`super::winograd::Transform::new`] builds them.
pub(crate) const AT22: [[f32; 3]; 2] = [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]];
pub(crate) const AT32: [[f32; 4]; 3] = [
    [1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 1.0],
];
pub(crate) const AT23: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, 1.0]];

impl Outputs {
    /// The form for the per-axis transforms' `Aᵀ`.
    pub(crate) fn of(transforms: &[Transform]) -> Outputs {
        let dims = transforms.len();
        if dims != 2 {
            Outputs::Terms
        } else if transforms.iter().all(|t| same(&t.at, &AT22)) {
            Outputs::Separable { at: 22, dims }
        } else if transforms.iter().all(|t| same(&t.at, &AT32)) {
            Outputs::Separable { at: 32, dims }
        } else if transforms.iter().all(|t| same(&t.at, &AT23)) {
            Outputs::Separable { at: 23, dims }
        } else {
            Outputs::Terms
        }
    }
}

/// Where [`output`] reads and writes: the GEMM results `M[ξ][c][col]` (points
/// `point_stride` apart, rows `pitch` apart, starting at the first channel), the columns
/// (a multiple of 8), and the rows `y[o][c][col]` (outputs `block` apart).
pub(crate) struct OutputArgs<'a> {
    pub mres: &'a [f32],
    pub point_stride: usize,
    pub pitch: usize,
    pub cols: usize,
    pub bias: &'a [f32],
    pub block: usize,
}

/// `y[o][c][col] = bias[c] + Σ_ξ (Aᵀ ⊗ … ⊗ Aᵀ)[o][ξ] · M[ξ][c][col]` for the channels of
/// `bias` (at most 8) into `rows`, 8 columns at a time in registers (16 with `wide`, on
/// AVX-512, where the columns are a multiple of 16: the same arithmetic lane by lane, so
/// the same values). Panics without AVX2 and FMA.
pub(crate) fn output(
    a: &OutputArgs<'_>,
    (terms, form): (&[Vec<(usize, f32)>], Outputs),
    (points, wide): (usize, bool),
    rows: &mut [f32],
) {
    let outs = terms.len();
    let cn = a.bias.len();
    assert!(
        avx2_fma()
            && points <= MAX_POINTS
            && outs <= MAX_POINTS
            && cn <= 8
            && a.cols.is_multiple_of(8)
            && a.cols <= a.pitch
            && cn * a.pitch <= a.block
            && terms.iter().flatten().all(|&(i, _)| i < points)
            && match form {
                Outputs::Separable { at, dims } => {
                    let (m, alpha) = (at / 10, at / 10 + at % 10 - 1);
                    m.pow(dims as u32) == outs && alpha.pow(dims as u32) == points
                }
                Outputs::Terms => true,
            }
            && (points == 0
                || cn == 0
                || a.mres.len() >= (points - 1) * a.point_stride + (cn - 1) * a.pitch + a.cols)
            && (outs == 0
                || cn == 0
                || rows.len() >= (outs - 1) * a.block + (cn - 1) * a.pitch + a.cols),
        "output transform operands"
    );
    #[cfg(target_arch = "x86_64")]
    // Safety: AVX2 and FMA are available (checked above), AVX-512F where it is taken, for
    // columns a multiple of 16; every load and store lies inside the slices checked above.
    unsafe {
        if wide && a.cols.is_multiple_of(16) && is_x86_feature_detected!("avx512f") {
            output_avx512(a, (terms, form), points, rows)
        } else {
            output_avx2(a, (terms, form), points, rows)
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = wide;
        unreachable!("checked above: AVX2 is x86-64 only");
    }
}

/// The forms [`output_tiles`] is compiled for.
#[cfg(target_arch = "x86_64")]
const OUT_TERMS: u8 = 0;
#[cfg(target_arch = "x86_64")]
const OUT22_2D: u8 = 1;
#[cfg(target_arch = "x86_64")]
const OUT32_2D: u8 = 2;
#[cfg(target_arch = "x86_64")]
const OUT23_2D: u8 = 3;

/// # Safety
/// As [`output`] checks, and AVX2 and FMA available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_avx2(
    a: &OutputArgs<'_>,
    (terms, form): (&[Vec<(usize, f32)>], Outputs),
    points: usize,
    rows: &mut [f32],
) {
    output_form::<__m256>(a, (terms, form), points, rows)
}

/// [`output_avx2`] 16 columns at a time.
///
/// # Safety
/// As [`output`] checks, `a.cols` a multiple of 16, and AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn output_avx512(
    a: &OutputArgs<'_>,
    (terms, form): (&[Vec<(usize, f32)>], Outputs),
    points: usize,
    rows: &mut [f32],
) {
    output_form::<__m512>(a, (terms, form), points, rows)
}

/// [`output_tiles`] for `form`, `L::WIDTH` columns at a time.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn output_form<L: Lanes>(
    a: &OutputArgs<'_>,
    (terms, form): (&[Vec<(usize, f32)>], Outputs),
    points: usize,
    rows: &mut [f32],
) {
    match form {
        Outputs::Separable { at: 22, dims: 2 } => {
            output_tiles::<L, OUT22_2D>(a, terms, points, rows)
        }
        Outputs::Separable { at: 32, dims: 2 } => {
            output_tiles::<L, OUT32_2D>(a, terms, points, rows)
        }
        Outputs::Separable { at: 23, dims: 2 } => {
            output_tiles::<L, OUT23_2D>(a, terms, points, rows)
        }
        _ => output_tiles::<L, OUT_TERMS>(a, terms, points, rows),
    }
}

/// The vector operations [`rect`] and [`rect2`] take, for AVX2's 8 lanes and AVX-512's 16.
/// Every method is `unsafe`: the caller has the vector's features enabled.
#[cfg(target_arch = "x86_64")]
trait Lanes: Copy {
    const WIDTH: usize;
    unsafe fn zero() -> Self;
    unsafe fn set1(c: f32) -> Self;
    unsafe fn loadu(p: *const f32) -> Self;
    unsafe fn storeu(p: *mut f32, v: Self);
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn sub(a: Self, b: Self) -> Self;
    /// `c · x + acc`.
    unsafe fn fmadd(c: f32, x: Self, acc: Self) -> Self;
}

#[cfg(target_arch = "x86_64")]
impl Lanes for __m256 {
    const WIDTH: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        std::arch::x86_64::_mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn set1(c: f32) -> Self {
        std::arch::x86_64::_mm256_set1_ps(c)
    }
    #[inline(always)]
    unsafe fn loadu(p: *const f32) -> Self {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn storeu(p: *mut f32, v: Self) {
        std::arch::x86_64::_mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        std::arch::x86_64::_mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        std::arch::x86_64::_mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(c: f32, x: Self, acc: Self) -> Self {
        use std::arch::x86_64::*;
        _mm256_fmadd_ps(_mm256_set1_ps(c), x, acc)
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for __m512 {
    const WIDTH: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        std::arch::x86_64::_mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn set1(c: f32) -> Self {
        std::arch::x86_64::_mm512_set1_ps(c)
    }
    #[inline(always)]
    unsafe fn loadu(p: *const f32) -> Self {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn storeu(p: *mut f32, v: Self) {
        std::arch::x86_64::_mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        std::arch::x86_64::_mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        std::arch::x86_64::_mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(c: f32, x: Self, acc: Self) -> Self {
        use std::arch::x86_64::*;
        _mm512_fmadd_ps(_mm512_set1_ps(c), x, acc)
    }
}

/// One axis's transform by a constant `R × C` matrix: `Σ_k at[j][k] · x[k]` for every `j`,
/// the coefficients folded (0 skipped, ±1 an add or subtract).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rect<L: Lanes, const R: usize, const C: usize>(at: &[[f32; C]; R], x: [L; C]) -> [L; R] {
    let mut out = [L::zero(); R];
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = L::zero();
        for (k, &c) in at[j].iter().enumerate() {
            acc = if c == 0.0 {
                acc
            } else if c == 1.0 {
                L::add(acc, x[k])
            } else if c == -1.0 {
                L::sub(acc, x[k])
            } else {
                L::fmadd(c, x[k], acc)
            };
        }
        *o = acc;
    }
    out
}

/// A 2-D tile's `R × R` results `y[(a·R + b)·stride + t]` from its `C × C` values
/// `m[i·C + j]` (axis 0 outer; the points from the inputs by `Bᵀ`, the outputs from the
/// points by `Aᵀ`): the last axis's transform of every line, then axis 0's of every column.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rect2<L: Lanes, const R: usize, const C: usize>(
    at: &[[f32; C]; R],
    m: &[L],
    (y, stride, t): (&mut [L], usize, usize),
) {
    let mut h = [[L::zero(); R]; C];
    for (i, hi) in h.iter_mut().enumerate() {
        let mut line = [L::zero(); C];
        line.copy_from_slice(&m[i * C..(i + 1) * C]);
        *hi = rect(at, line);
    }
    for b in 0..R {
        let mut col = [L::zero(); C];
        for (i, c) in col.iter_mut().enumerate() {
            *c = h[i][b];
        }
        for (a, v) in rect(at, col).into_iter().enumerate() {
            y[(a * R + b) * stride + t] = v;
        }
    }
}

/// The driver of [`output_avx2`]: per channel and 8 columns, the points loaded, the
/// outputs formed (`FORM`) and stored with the bias.
///
/// # Safety
/// As [`output`] checks, and AVX2 and FMA available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_tiles<L: Lanes, const FORM: u8>(
    a: &OutputArgs<'_>,
    terms: &[Vec<(usize, f32)>],
    points: usize,
    rows: &mut [f32],
) {
    let outs = terms.len();
    let src = a.mres.as_ptr();
    let dst = rows.as_mut_ptr();
    let mut m = [L::zero(); MAX_POINTS];
    let mut y = [L::zero(); MAX_POINTS];
    for (cc, &b) in a.bias.iter().enumerate() {
        let bv = L::set1(b);
        for col in (0..a.cols).step_by(L::WIDTH) {
            for (xi, mx) in m.iter_mut().enumerate().take(points) {
                *mx = L::loadu(src.add(xi * a.point_stride + cc * a.pitch + col));
            }
            match FORM {
                OUT22_2D => rect2(&AT22, &m, (&mut y, 1, 0)),
                OUT32_2D => rect2(&AT32, &m, (&mut y, 1, 0)),
                OUT23_2D => rect2(&AT23, &m, (&mut y, 1, 0)),
                _ => {
                    for (o, ts) in terms.iter().enumerate() {
                        let mut acc = L::zero();
                        for &(i, c) in ts {
                            acc = L::fmadd(c, m[i], acc);
                        }
                        y[o] = acc;
                    }
                }
            }
            for (o, &yo) in y.iter().enumerate().take(outs) {
                L::storeu(dst.add(o * a.block + cc * a.pitch + col), L::add(bv, yo));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constant matrices are the ones the plans build, so the planner's 2-D layers take
    /// the unrolled passes; other axis counts and mixed transforms take the terms.
    #[test]
    fn constant_transforms_are_the_plans() {
        for ((m, r), at) in [((2, 2), 22), ((3, 2), 32), ((2, 3), 23)] {
            let t = Transform::new(m, r).unwrap();
            let (alpha, dims) = (t.alpha, 2);
            let two = [t.clone(), t.clone()];
            assert_eq!(Points::of(&two), Points::Separable { alpha, dims });
            assert_eq!(Outputs::of(&two), Outputs::Separable { at, dims });
            for dims in [1, 3] {
                let ts = vec![t.clone(); dims];
                assert_eq!(Points::of(&ts), Points::Terms);
                assert_eq!(Outputs::of(&ts), Outputs::Terms);
            }
        }
        let mixed = [Transform::new(2, 2).unwrap(), Transform::new(2, 3).unwrap()];
        assert_eq!(Points::of(&mixed), Points::Terms);
        assert_eq!(Outputs::of(&mixed), Outputs::Terms);
    }
}
