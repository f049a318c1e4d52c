//! The direct engine's part of a plan: its tile, packed weights, tile table and tasks.

use super::choose::{kernel_for, tile_cost, INPLACE_BELOW};
use super::PlanOptions;
use crate::error::{fail, ErrorKind, Result};
use crate::fast::direct::{DirectKernel, TileTable};
use crate::fast::kernels::tile_shapes_for;
use crate::fast::pack::{pack_key, pack_weights, PackCache};
use crate::fast::spec::DirectSpec;
use crate::fast::Isa;
use crate::geometry::Geometry;
use crate::tensor::{numel, Element};

/// The direct engine's kernel for `g` with weight `w`: the phase decomposition, the forced
/// tile or the one with the least modelled time, the weights packed (or taken from
/// `packs`), the tile table, and the work split into about four tasks per thread.
///
/// # Errors
/// A forced tile shape that no kernel implements.
pub(super) fn kernel<T: Element>(
    g: &Geometry,
    w: &[T],
    options: &PlanOptions,
    packs: Option<&PackCache>,
    (isa, threads, pooled): (Isa, usize, bool),
) -> Result<DirectKernel<T>> {
    let spec = DirectSpec::new(g);
    let lanes = isa.lanes();
    let inplace = inplace(g, &spec, options, isa);
    // Depthwise layers run as one group of `groups` output channels, each kernel row
    // reading its own input channel: MR channels per kernel call instead of one.
    let depthwise = inplace && g.groups > 1 && g.in_per_group() == 1 && g.out_per_group() == 1;
    let rows_per_group = if depthwise {
        g.groups
    } else {
        g.out_per_group()
    };
    let shapes = if inplace {
        crate::fast::inplace::tile_shapes_for::<T>(isa)
    } else {
        tile_shapes_for::<T>(isa)
    };
    let group_size = group_size(&spec, inplace);
    let (mr, v) = match options.tile {
        Some(t) => t,
        None => cheapest_tile(&spec, shapes, (rows_per_group, lanes), group_size),
    };
    let Some(kernel) = kernel_for::<T>(isa, inplace, mr, v) else {
        return fail(ErrorKind::NoSuchKernel {
            tile: (mr, v),
            available: shapes.iter().map(|t| (t.0, t.1)).collect(),
        });
    };
    let exec = depthwise.then(|| Geometry {
        groups: 1,
        ..g.clone()
    });
    // The (G, 1, *k) weight of a depthwise layer is read as one group of G output
    // channels from 1 input.
    let view = depthwise.then(|| Geometry {
        groups: 1,
        in_channels: 1,
        out_channels: g.groups,
        ..g.clone()
    });
    let view = view.as_ref().unwrap_or(g);
    let packed = PackCache::get_or_pack(
        packs,
        || pack_key(view, &spec, mr),
        || pack_weights(view, &spec, w, mr, (threads, pooled)),
        |p| p.data.len() * std::mem::size_of::<T>(),
    );
    let groups = exec.as_ref().map_or(g.groups, |e| e.groups);
    let weight_bytes = packed.data.len() * std::mem::size_of::<T>();
    let strided_loads =
        crate::fast::strided_conv::applies(g, (&spec, &kernel, depthwise), (mr, v, lanes), isa);
    // The strided-conv path splits its work itself, and depthwise kernels' blocks each
    // read their own channels: neither splits output channels between tasks.
    let blocks = if strided_loads || depthwise {
        1
    } else {
        rows_per_group.div_ceil(mr)
    };
    let split = task_split(
        &spec,
        g.batch,
        groups,
        threads,
        (v * lanes, weight_bytes),
        blocks,
    );
    // The strided-conv path tiles its panels itself: its table has no tiles.
    let table = if strided_loads {
        TileTable::without_tiles(g, &spec, v * lanes, group_size)
    } else {
        TileTable::new(g, &spec, v * lanes, split.chunk_rows, group_size)
    };
    let mut direct = DirectKernel {
        spec,
        packed,
        kernel,
        mr,
        v,
        lanes,
        strided_loads,
        table,
        batch_chunk: split.batch_chunk,
        channel_parts: split.channel_parts,
        depthwise,
        exec,
        items_cap: usize::MAX,
        pair: None,
    };
    // Stride-2 pairs of phases that read one whole panel (kernel == stride) are written
    // from the registers where a pair kernel exists for the tile and the table has such
    // pairs (no accumulator tile, no store pass reading it back): on AVX-512 vnet3d
    // 1.12-1.20x and unet 1.08-1.20x faster at 1 and 2 threads, on AVX2 1.27-1.30x and
    // 1.12x (paired).
    if !inplace
        && !strided_loads
        && !direct.sliced(g.in_per_group())
        && T::fast_pair(isa, mr, v, false).is_some()
    {
        let (pairs, whole) = direct.table.mark_pairs(lanes);
        if pairs > 0 {
            direct.pair = T::fast_pair(isa, mr, v, !whole);
        }
    }
    // No more scratch than the output holds: fewer tiles per group where all
    // threads' panels would outgrow it (dcgan1 at 2 threads: 1.31 MB for 1.05 MB).
    let out_len = numel(&g.output_shape());
    direct.items_cap = (out_len / (threads * direct.item_len(g).max(1))).max(1);
    Ok(direct)
}

/// Whether the direct engine reads the input in place (few output channels per group)
/// rather than packing panels of it, unless the caller forced either.
///
/// Where AVX-512 runs on 256-bit units ([`super::choose::half_width`]: AMD Zen 4), a
/// transposed conv with exactly [`INPLACE_BELOW`] output channels per group too, unless its
/// phases are tiny (fewer than [`INPLACE_MIN_PHASE`] positions): each packed panel serves
/// only 8 rows there. On the Zen 4 of 2026-12-07 (1 thread, medians of 15 runs, packed
/// against in place): 8 -> 8 channels in 32 groups (k4 s2, 16×16, batch 8) 3.13 against
/// 1.85 ms; 16, 32 and 64 -> 8 a group 1.63x, 1.75x, 1.71x; 256 -> 8 2.14x; a k2 s2
/// upsampler 128 -> 8 (64×64, batch 4) 1.35x; a 3-D one 1.08x; stride 1 k3 on 32×32
/// 1.83x; 1-D k16 s8 1.31x; but stride 1 k3 on 4×4 maps 0.64x (0.028 against 0.044 ms).
/// With 16 to 256 output channels the sweep was mixed (in place 1.05-1.39x faster on 18
/// layers, but 0.97x on FCN-32s's k64 s32, 3.7x slower on a stride-1 layer of 4×4 maps,
/// 0.98x and 0.85x on unet's and vnet3d's pair kernels), so the threshold stays there.
fn inplace(g: &Geometry, spec: &DirectSpec, options: &PlanOptions, isa: Isa) -> bool {
    let cout_g = g.out_per_group();
    let large_phases = || {
        let most = spec.phases.iter().map(|p| numel(&p.extents)).max();
        most.unwrap_or(0) >= INPLACE_MIN_PHASE
    };
    options.inplace.unwrap_or_else(|| {
        cout_g < INPLACE_BELOW
            || (super::choose::half_width(isa)
                && g.op == crate::params::Op::ConvTranspose
                && cout_g == INPLACE_BELOW
                && large_phases())
    })
}

/// Fewest positions of a phase for which [`inplace`] reads the input of 8 output channels
/// a group in place on half-width AVX-512 (a 4×4 tile's).
const INPLACE_MIN_PHASE: usize = 64;

/// The tiles a tuning plan measures for the direct engine ([`PlanOptions::tune`]): `chosen`
/// first, then every other tile of the ISA's table that has a kernel for `T`.
pub(super) fn candidates<T: Element>(
    g: &Geometry,
    options: &PlanOptions,
    isa: Isa,
    chosen: (usize, usize),
) -> Vec<(usize, usize)> {
    let inplace = inplace(g, &DirectSpec::new(g), options, isa);
    let shapes = if inplace {
        crate::fast::inplace::tile_shapes_for::<T>(isa)
    } else {
        tile_shapes_for::<T>(isa)
    };
    let mut tiles = vec![chosen];
    tiles.extend(
        shapes
            .iter()
            .map(|t| (t.0, t.1))
            .filter(|&t| t != chosen && kernel_for::<T>(isa, inplace, t.0, t.1).is_some()),
    );
    tiles
}

/// Phases stored together: all last-axis residues of a tile, in output order, for in-place
/// kernels always (measured ~10% faster on fcn_dw), for packed kernels at stride 2 and 8,
/// where the residues interleave with vector shuffles (phase by phase, a stride-8 store is
/// one scalar per element: 8% of hifigan1d's time); else 1, phase by phase.
fn group_size(spec: &DirectSpec, inplace: bool) -> usize {
    let s_last = spec.out_stride[spec.out_stride.len() - 1];
    if (inplace || s_last == 2 || s_last == 8)
        && s_last > 1
        && s_last <= crate::fast::direct::MAX_GROUP
    {
        s_last
    } else {
        1
    }
}

/// The tile of `shapes` with the least modelled time for `rows` output channels per group
/// on `lanes`-wide vectors. Where the residues interleave (`group_size` > 1), a tile across
/// two rows packs and stores in two runs: the tiles are counted as if each row were tiled on
/// its own (where rows hold a tile). unet (rows of 64) then takes 6x4, one row a tile, over
/// 8x3: 5.93-5.99 ms against 6.23-6.38 (medians of 30, two rounds; 4x4: 5.85-5.98).
fn cheapest_tile(
    spec: &DirectSpec,
    shapes: &[(usize, usize, f32)],
    (rows, lanes): (usize, usize),
    group_size: usize,
) -> (usize, usize) {
    let per_image = spec.flat_len();
    let dims = spec.out_stride.len();
    let row = spec
        .phases
        .iter()
        .map(|p| p.extents[dims - 1])
        .max()
        .unwrap_or(1)
        .max(1);
    let cost = |t: &(usize, usize, f32)| {
        let tl = t.1 * lanes;
        let flat = if group_size > 1 && row >= tl {
            per_image / row * row.div_ceil(tl) * tl
        } else {
            per_image
        };
        tile_cost(rows, flat, lanes, *t)
    };
    shapes
        .iter()
        .min_by(|a, b| cost(a).total_cmp(&cost(b)))
        .map_or((1, 4), |t| (t.0, t.1))
}

/// How the direct engine's work is cut into tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Split {
    /// Images per task.
    batch_chunk: usize,
    /// Phase rows (axis 0) per band.
    chunk_rows: usize,
    /// Ranges of output-channel blocks a group's work is cut into.
    channel_parts: usize,
}

/// Images per task, phase rows (axis 0) per band and ranges of output channels: the work
/// split into about 4 tasks per thread over `groups` groups, batch items first, then row
/// bands — but one task per thread where the packed weights (`weight_bytes`) outgrow the
/// L2, and never a band narrower than one register tile of `tile_lanes` positions per
/// phase: every task streams all the weights. pix2pix's 1024 -> 512 upsampler at batch 1
/// (8×8 -> 16×16, 34 MB of packed weights) ran in 8 bands of one phase row at 2 threads,
/// each streaming the weights for 8 positions of a 32-lane tile: 27-32 ms against
/// 11.5-13.1 at 1 thread.
///
/// Where such weights are streamed, the images and groups leave threads idle (a batch of
/// one) and the phase rows hold fewer tiles than those threads, the group's `blocks`
/// blocks of output channels are cut between the threads instead of its rows: each task
/// then streams only its channels' weights (and packs the same input panels as the
/// others) for whole tiles, where bands of part of a tile each streamed all the weights
/// for part of the positions. pix2pix's 1024 -> 512 upsampler on 2×2 inputs (one 16-lane
/// tile of 4 positions a phase) at 2 threads: 2.1-3.0 ms against 4.3-5.7 in two bands of
/// half a tile (7 alternating rounds in two sittings, medians of 20-30 runs). Where the
/// rows hold a tile a thread, cutting channels instead measured no faster: its 8×8 one (two
/// 32-lane tiles a phase) 7.2-8.3 ms against 7.3-11.1 (5 alternating rounds, medians of 30
/// runs: a tie), a stride-1 k3
/// layer of 512 channels on 8×8 0.97x, one of 256 on 16×16 and a k4 s2 one of 256 -> 128
/// on 8×8 no faster or slower.
fn task_split(
    spec: &DirectSpec,
    batch: usize,
    groups: usize,
    threads: usize,
    (tile_lanes, weight_bytes): (usize, usize),
    blocks: usize,
) -> Split {
    let q0 = spec
        .phases
        .iter()
        .map(|p| p.extents[0])
        .max()
        .unwrap_or(1)
        .max(1);
    let streamed = weight_bytes > crate::fast::isa::l2_cache_bytes().unwrap_or(1 << 20);
    let want = match threads {
        0 | 1 => 1,
        t if streamed => t,
        t => 4 * t,
    };
    let per_group = want.div_ceil(groups).max(1);
    let batch_tasks = per_group.min(batch.max(1));
    let batch_chunk = batch.max(1).div_ceil(batch_tasks);
    // Phase rows that hold one tile's positions (along the inner axes, `pitches[0]` a row).
    let tile_rows = tile_lanes.div_ceil(spec.pitches[0].max(1)).max(1);
    // Tasks each group and batch chunk needs for every thread to have one.
    let fill = threads.div_ceil(groups * batch_tasks);
    let channel_parts = if streamed && fill > 1 && q0.div_ceil(tile_rows) < fill {
        fill.min(blocks).max(1)
    } else {
        1
    };
    let fill = fill.div_ceil(channel_parts);
    // (But as many bands as threads where the batch, groups and channel parts leave some
    // idle: pix2pix's 2×2 -> 4×4 upsampler, 34 MB of weights for 4 positions a phase, ran
    // 1.13x faster on two bands of half a tile than on one: 4.54 against 5.13 ms, 3 rounds.)
    let row_tasks = per_group
        .div_ceil(batch_tasks * channel_parts)
        .min(q0.div_ceil(tile_rows).max(fill))
        .min(q0);
    Split {
        batch_chunk,
        chunk_rows: q0.div_ceil(row_tasks),
        channel_parts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{ConvParams, Op};

    /// On AVX-512 run on 256-bit units, a transposed conv with 8 output channels a group
    /// reads its input in place unless its phases are tiny; elsewhere, or forced, as asked.
    #[test]
    fn eight_output_channels_a_group_in_place_on_half_width_avx512() {
        let s2 = ConvParams::new()
            .stride(&[2, 2])
            .padding(&[1, 1])
            .groups(32);
        let grouped = Geometry::new(
            Op::ConvTranspose,
            &[8, 256, 16, 16],
            &[256, 8, 4, 4],
            None,
            &s2,
        )
        .unwrap();
        let s1 = ConvParams::new().padding(&[1, 1]);
        let tiny =
            Geometry::new(Op::ConvTranspose, &[8, 64, 4, 4], &[64, 8, 3, 3], None, &s1).unwrap();
        let sixteen = Geometry::new(
            Op::ConvTranspose,
            &[8, 256, 16, 16],
            &[256, 16, 4, 4],
            None,
            &s2,
        )
        .unwrap();
        let o = PlanOptions::default();
        let on = |g: &Geometry, o: &PlanOptions, isa| inplace(g, &DirectSpec::new(g), o, isa);
        let half = crate::fast::isa::avx512_half_width();
        assert_eq!(on(&grouped, &o, Isa::Avx512), half);
        assert!(!on(&grouped, &o, Isa::Avx2));
        assert!(!on(&tiny, &o, Isa::Avx512), "phases of 16 positions");
        assert!(!on(&sixteen, &o, Isa::Avx512));
        let packed = PlanOptions {
            inplace: Some(false),
            ..PlanOptions::default()
        };
        assert!(!on(&grouped, &packed, Isa::Avx512));
    }

    /// Bands never narrower than a tile's positions per phase, one task a thread where the
    /// weights stream from beyond the L2, images before bands, one task on one thread; where
    /// streamed weights, a batch of one and rows of fewer tiles leave threads idle, output
    /// channels cut between them (as many ranges as blocks allow) instead of rows.
    #[test]
    fn bands_hold_a_tile_and_streamed_weights_one_task_a_thread() {
        let p = ConvParams::new().stride(&[2, 2]).padding(&[1, 1]);
        let g = Geometry::new(
            Op::ConvTranspose,
            &[1, 1024, 8, 8],
            &[1024, 512, 4, 4],
            None,
            &p,
        )
        .unwrap();
        let spec = DirectSpec::new(&g);
        let cut = |spec: &DirectSpec, batch, groups, threads, tile, blocks| {
            let s = task_split(spec, batch, groups, threads, tile, blocks);
            (s.batch_chunk, s.chunk_rows, s.channel_parts)
        };
        assert_eq!(spec.pitches[0], 8, "phase rows of 8 positions");
        let (streamed, small) = (1 << 40, 1 << 10);
        // Tiles of 32 lanes: 4 phase rows each, so 2 bands of the 8 rows (was 8 of one).
        assert_eq!(cut(&spec, 1, 1, 2, (32, streamed), 1), (1, 4, 1));
        assert_eq!(cut(&spec, 1, 1, 2, (32, small), 1), (1, 4, 1));
        // Tiles of one row: as many bands as 4 tasks a thread ask, unless streamed.
        assert_eq!(cut(&spec, 1, 1, 2, (8, small), 1), (1, 1, 1));
        assert_eq!(cut(&spec, 1, 1, 2, (8, streamed), 1), (1, 4, 1));
        // Images first; one thread, one task.
        assert_eq!(cut(&spec, 16, 1, 2, (32, small), 1), (2, 8, 1));
        assert_eq!(cut(&spec, 1, 1, 1, (32, streamed), 1), (1, 8, 1));
        // Streamed weights, one image, rows of fewer tiles than threads: channels cut
        // between the threads, whole rows (2 tiles a phase: on 3 threads, not on 2).
        assert_eq!(cut(&spec, 1, 1, 2, (32, streamed), 43), (1, 4, 1));
        assert_eq!(cut(&spec, 1, 1, 3, (32, streamed), 43), (1, 8, 3));
        // As many ranges as blocks, the rest of the threads on bands.
        assert_eq!(cut(&spec, 1, 1, 4, (32, streamed), 2), (1, 4, 2));
        // Not where the weights fit the L2, nor where images or groups feed the threads.
        assert_eq!(cut(&spec, 1, 1, 3, (32, small), 43), (1, 3, 1));
        assert_eq!(cut(&spec, 3, 1, 3, (32, streamed), 43), (1, 8, 1));
        assert_eq!(cut(&spec, 1, 3, 3, (32, streamed), 43), (1, 8, 1));
        // Fewer rows than a tile: still a band a thread.
        let g = Geometry::new(
            Op::ConvTranspose,
            &[1, 1024, 2, 2],
            &[1024, 512, 4, 4],
            None,
            &p,
        )
        .unwrap();
        let spec = DirectSpec::new(&g);
        assert_eq!(cut(&spec, 1, 1, 2, (16, streamed), 1), (1, 1, 1));
        // Unless its channels can be cut instead (pix2pix's 2×2 -> 4×4 upsampler).
        assert_eq!(cut(&spec, 1, 1, 2, (16, streamed), 22), (1, 2, 2));
    }
}
