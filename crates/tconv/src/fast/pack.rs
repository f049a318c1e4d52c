//! Packing: weights once per plan into the order the kernels stream them, and (only where
//! the decomposition needs it) the input into a padded or polyphase buffer.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::direct::run_chunks;
use super::scratch::{self, Scratch};
use super::spec::{DirectSpec, SourceLayout};
use crate::geometry::Geometry;
use crate::params::Op;
use crate::recent::Recent;
use crate::tensor::{for_each_index, numel, Element};

/// Weights packed as `[group][co_block][phase][tap][ci][MR]`, zero-filled past `C_out/g`.
pub struct PackedWeights<T: Element> {
    /// The packed values.
    pub data: Scratch<T>,
    /// Output channels per block (the kernel's register rows).
    pub mr: usize,
    /// Blocks per group.
    pub blocks: usize,
    /// Start of each `(group, block, phase)` run.
    offsets: Vec<usize>,
    phases: usize,
}

impl<T: Element> PackedWeights<T> {
    /// The packed run for one group, block and phase: `taps * C_in/g * mr` values.
    pub fn run(&self, group: usize, block: usize, phase: usize) -> &[T] {
        let i = (group * self.blocks + block) * self.phases + phase;
        &self.data[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// Packed weights kept between the plans of one weight (see [`crate::Layer`]), by what
/// their contents depend on: a plan for a new input shape whose packing has the same key
/// shares the packed values instead of packing `w` again (dcgan1's Winograd weight
/// transform and hifigan1d's are most of their planning time). The last [`PackCache::KEEP`]
/// packings are kept, together at most [`PackCache::BUDGET`] times the weight's bytes (a
/// Winograd packing takes 2.25x its weight with F(2x2) tiles, 4x with F(3x3), and dcgan1's
/// input extents alternate between them), but always the last one.
pub struct PackCache {
    held: Recent<Arc<dyn Any + Send + Sync>>,
    /// Packings made so far ([`PackCache::made`]).
    made: AtomicUsize,
}

impl PackCache {
    /// Packings kept (most recently used last).
    pub const KEEP: usize = 4;
    /// Bytes kept, in weights.
    pub const BUDGET: usize = 8;

    /// A cache for the packings of a weight of `weight_bytes`.
    pub fn new(weight_bytes: usize) -> PackCache {
        PackCache {
            held: Recent::with_budget(Self::KEEP, weight_bytes.saturating_mul(Self::BUDGET)),
            made: AtomicUsize::new(0),
        }
    }

    /// The packing under `key` from `cache`, else `pack()` (kept in `cache` if any), of
    /// `bytes(packing)` bytes. `key` must name everything `pack`'s result depends on
    /// besides the cache's weight.
    pub(crate) fn get_or_pack<P: Any + Send + Sync>(
        cache: Option<&PackCache>,
        key: impl FnOnce() -> Vec<usize>,
        pack: impl FnOnce() -> P,
        bytes: impl FnOnce(&P) -> usize,
    ) -> Arc<P> {
        let Some(cache) = cache else {
            return Arc::new(pack());
        };
        let key = key();
        if let Some(found) = cache.held.get(&key).and_then(|p| p.downcast::<P>().ok()) {
            return found;
        }
        // Packed without the lock: another plan of the same weight may pack meanwhile.
        let packed = Arc::new(pack());
        cache.made.fetch_add(1, Ordering::Relaxed);
        let size = bytes(&packed);
        let shared = Arc::clone(&packed) as Arc<dyn Any + Send + Sync>;
        cache.held.insert_sized(key, shared, size);
        packed
    }

    /// Packings made for this cache so far (each a weight packed).
    pub fn made(&self) -> usize {
        self.made.load(Ordering::Relaxed)
    }

    /// Packings held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the packings held now.
    pub fn bytes(&self) -> usize {
        self.held.bytes()
    }

    /// Whether a packing is held under `key`.
    pub(crate) fn contains(&self, key: &[usize]) -> bool {
        self.held.contains(key)
    }

    /// Whether the packing at `id` (its `Arc`'s address) is held.
    pub(crate) fn holds(&self, id: *const ()) -> bool {
        self.held.any(|p| Arc::as_ptr(p) as *const () == id)
    }
}

/// What [`pack_weights`]' result depends on besides `w`: the channel layout, the tile's
/// rows and every phase's taps in order.
pub(crate) fn pack_key(g: &Geometry, spec: &DirectSpec, mr: usize) -> Vec<usize> {
    let mut key = vec![
        1, // this packing
        g.op as usize,
        g.groups,
        g.in_per_group(),
        g.out_per_group(),
        numel(&g.kernel_shape()),
        mr,
        spec.phases.len(),
    ];
    for p in &spec.phases {
        key.push(p.taps.len());
        key.extend(p.taps.iter().map(|t| t.kernel_index));
    }
    key
}

/// Pack `w` (PyTorch layout for `g.op`) for the phases of `spec`, on `threads` threads;
/// into a pooled scratch buffer where `pooled` (a plan that runs once and keeps its packing
/// nowhere: a gradient's 8.6 MB of packed weights, zeroed and page-faulted afresh, took 6 %
/// of dcgan1's backward pass), else into memory of its own.
pub fn pack_weights<T: Element>(
    g: &Geometry,
    spec: &DirectSpec,
    w: &[T],
    mr: usize,
    (threads, pooled): (usize, bool),
) -> PackedWeights<T> {
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    let ksize = numel(&g.kernel_shape());
    let blocks = cout_g.div_ceil(mr);
    // Distance in `w` between consecutive output channels and input channels of a group.
    let (co_step, ci_step) = match g.op {
        Op::ConvTranspose => (ksize, cout_g * ksize), // (C_in, C_out/g, *k)
        Op::Conv => (cin_g * ksize, ksize),           // (C_out, C_in/g, *k)
    };
    let group_base = |group: usize| match g.op {
        Op::ConvTranspose => group * cin_g * cout_g * ksize,
        Op::Conv => group * cout_g * cin_g * ksize,
    };
    let run_len = spec.total_taps() * cin_g * mr;
    let len = g.groups * blocks * run_len;
    let mut data = if pooled {
        scratch::take::<T>(len)
    } else {
        scratch::owned::<T>(len)
    };
    let mut offsets = Vec::with_capacity(g.groups * blocks * spec.phases.len() + 1);
    for unit in 0..g.groups * blocks {
        let mut at = unit * run_len;
        for phase in &spec.phases {
            offsets.push(at);
            at += phase.taps.len() * cin_g * mr;
        }
    }
    offsets.push(data.len());
    // Every tap of every phase in run order: its kernel index (the taps of one
    // (output, input) channel pair are contiguous in `w`).
    let kernel_index: Vec<usize> = spec
        .phases
        .iter()
        .flat_map(|p| &p.taps)
        .map(|t| t.kernel_index)
        .collect();
    let tap_len = cin_g * mr;
    // Each (group, block) fills its own contiguous run: in parallel when asked.
    let fill = |unit: usize, run: &mut [T]| {
        let (group, block) = (unit / blocks, unit % blocks);
        // Rows past the last output channel are zero (a pooled buffer is stale).
        let live = mr.min(cout_g - block * mr);
        if live < mr {
            run.fill(T::zero());
        }
        let base = group_base(group) + block * mr * co_step;
        let kernels = BlockKernels {
            w,
            base,
            ci_step,
            co_step,
            ksize,
            live,
            cin: cin_g,
            mr,
        };
        kernels.by_tap(&kernel_index, run, tap_len);
    };
    // Small weights are packed on this thread (a thread wake-up costs more).
    let threads = if data.len() > 1 << 16 { threads } else { 1 };
    run_chunks(threads, &mut data, run_len, fill);
    PackedWeights {
        data,
        mr,
        blocks,
        offsets,
        phases: spec.phases.len(),
    }
}

/// Largest block of a conv's kernels [`BlockKernels::by_tap`] copies whole before
/// transposing it (L2 holds it). dcgan1's input gradient packs its 8 MB weight every call
/// (its plan runs once); with the copy, perf put 0.19 of the microkernel's samples in the
/// gather and copy instead of 0.25, and 0.12 in the transposes instead of 0.19 (1 thread);
/// the input gradient ran 1.04x / 1.07x faster, its backward pass 1.06x / 1.07x (paired,
/// 5 rounds; at 2 threads within noise, 0.93x–1.03x, the packing's share of the samples
/// 0.86–0.88 of the microkernel's against 0.95–1.04).
const REGION_BYTES: usize = 512 << 10;

/// One block of `live` output channels' kernels in a weight: kernel `(ci, m)` is the
/// `ksize` values at `base + ci·ci_step + m·co_step` (the taps of one channel pair are
/// contiguous in PyTorch's layouts).
pub(crate) struct BlockKernels<'a, T> {
    pub(crate) w: &'a [T],
    pub(crate) base: usize,
    pub(crate) ci_step: usize,
    pub(crate) co_step: usize,
    pub(crate) ksize: usize,
    pub(crate) live: usize,
    /// Input channels.
    pub(crate) cin: usize,
    /// Row pitch of the destination runs (at least `live`).
    pub(crate) mr: usize,
}

impl<'a, T: 'static> BlockKernels<'a, T> {
    /// The same block with its weights as f32, where `T` is f32 (for the AVX-512
    /// Winograd packing).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn as_f32(&self) -> Option<BlockKernels<'a, f32>> {
        super::as_f32(self.w).map(|w| BlockKernels {
            w,
            base: self.base,
            ci_step: self.ci_step,
            co_step: self.co_step,
            ksize: self.ksize,
            live: self.live,
            cin: self.cin,
            mr: self.mr,
        })
    }
}

impl<T: Element> BlockKernels<'_, T> {
    /// `out[t·tap_len + ci·mr + m] = kernel (ci, m)[kernel_index[t]]` for every tap `t`
    /// (rows `m >= live` untouched).
    ///
    /// A few input channels at a time: their kernels (a few KiB of `w`) stay in L1 while
    /// every tap's rows are written in order. (Tap by tap over all channels re-read every
    /// line of `w` once per tap; all taps per channel wrote to as many streams a multiple
    /// of 4 KiB apart, which share one L1 set.) The chunk's kernels are first copied, one
    /// `ksize` run per (input, output) channel pair, into a buffer ordered `[ci][m][tap]`:
    /// read in place, a conv's weight (C_out outermost) put the chunk's rows one output
    /// channel's `4 · C_in/g · ksize` bytes apart, all in one L1 set at 16 KiB, and every
    /// tap missed L1 again (packing dcgan1's input gradient took 17 % of its backward
    /// pass's perf samples). From the buffer, 8×8 transposes where they apply
    /// ([`transpose_chunk`]).
    pub(crate) fn by_tap(&self, kernel_index: &[usize], out: &mut [T], tap_len: usize) {
        // A conv's block of output channels is one contiguous region of `w`: copied whole
        // first (one sequential stream), the chunks below read it from L2 instead of as
        // rows a channel's stride apart.
        let region = self.live * self.co_step;
        if self.co_step == self.cin * self.ksize
            && self.co_step > self.ci_step
            && self.live > 1
            && region * std::mem::size_of::<T>() <= REGION_BYTES
            && self.base + region <= self.w.len()
        {
            let mut copy = scratch::take::<T>(region);
            copy.copy_from_slice(&self.w[self.base..self.base + region]);
            let local = BlockKernels {
                w: &copy,
                base: 0,
                ..*self
            };
            local.by_tap_chunks(kernel_index, out, tap_len);
            return;
        }
        self.by_tap_chunks(kernel_index, out, tap_len);
    }

    /// [`BlockKernels::by_tap`] from `w` as it lies.
    fn by_tap_chunks(&self, kernel_index: &[usize], out: &mut [T], tap_len: usize) {
        const CHUNK: usize = 8;
        let (live, ksize, mr) = (self.live, self.ksize, self.mr);
        // Per kernel index, the taps that take it (the transposes' destinations).
        let mut slots: Vec<Vec<usize>> = vec![Vec::new(); ksize];
        for (t, &k) in kernel_index.iter().enumerate() {
            slots[k].push(t);
        }
        let mut buf = vec![T::zero(); CHUNK * live * ksize];
        for c0 in (0..self.cin).step_by(CHUNK) {
            let c1 = (c0 + CHUNK).min(self.cin);
            // In `w`'s order: a conv's chunk is one run per output channel.
            let copy = |buf: &mut [T], ci: usize, m: usize| {
                let src = &self.w[self.base + ci * self.ci_step + m * self.co_step..][..ksize];
                let at = ((ci - c0) * live + m) * ksize;
                for (d, &x) in buf[at..at + ksize].iter_mut().zip(src) {
                    *d = x;
                }
            };
            if self.co_step > self.ci_step {
                (0..live).for_each(|m| (c0..c1).for_each(|ci| copy(&mut buf, ci, m)));
            } else {
                (c0..c1).for_each(|ci| (0..live).for_each(|m| copy(&mut buf, ci, m)));
            }
            if transpose_chunk(&buf, (c0, c1), (live, ksize, mr, tap_len), &slots, out) {
                continue;
            }
            for (t, &k) in kernel_index.iter().enumerate() {
                let rows = &mut out[t * tap_len + c0 * mr..t * tap_len + c1 * mr];
                for (kernels, row) in buf
                    .chunks_exact(live * ksize)
                    .zip(rows.chunks_exact_mut(mr))
                {
                    for (d, kernel) in row.iter_mut().zip(kernels.chunks_exact(ksize)) {
                        *d = kernel[k];
                    }
                }
            }
        }
    }
}

/// A chunk's kernels (`buf`, `[ci][m][k]` for input channels `c0..c1` and `live` rows)
/// into the run's rows, `run[t·tap_len + ci·mr + m] = buf[ci][m][k]` for every tap `t` in
/// `slots[k]`, by AVX 8×8 transposes for f32 where `live` and `ksize` are multiples of 8;
/// returns `false` (doing nothing) elsewhere. Element by element, packing dcgan1's input
/// gradient (8.6 MB of weights, every call) took 18.5 % of its perf samples.
fn transpose_chunk<T: Element>(
    buf: &[T],
    (c0, c1): (usize, usize),
    (live, ksize, mr, tap_len): (usize, usize, usize, usize),
    slots: &[Vec<usize>],
    run: &mut [T],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if live.is_multiple_of(8)
        && ksize.is_multiple_of(8)
        && live <= mr
        && slots.len() == ksize
        && is_x86_feature_detected!("avx")
    {
        if let (Some(b), Some(r)) = (super::as_f32(buf), super::as_f32_mut(run)) {
            // Every read inside the chunk's kernels, every write inside its rows.
            assert!(
                b.len() >= (c1 - c0) * live * ksize
                    && slots
                        .iter()
                        .flatten()
                        .all(|&t| t * tap_len + (c1 - 1) * mr + live <= r.len()),
                "transpose_chunk bounds"
            );
            // Safety: the bounds were checked above; AVX was detected.
            unsafe { transpose_chunk_avx(b, (c0, c1), (live, ksize, mr, tap_len), slots, r) };
            return true;
        }
    }
    let _ = (buf, c0, c1, live, ksize, mr, tap_len, slots, run);
    false
}

/// # Safety
/// AVX available; the bounds [`transpose_chunk`] checks hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_chunk_avx(
    buf: &[f32],
    (c0, c1): (usize, usize),
    (live, ksize, mr, tap_len): (usize, usize, usize, usize),
    slots: &[Vec<usize>],
    run: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (b, r) = (buf.as_ptr(), run.as_mut_ptr());
    for ci in c0..c1 {
        let kernels = b.add((ci - c0) * live * ksize);
        for m0 in (0..live).step_by(8) {
            for k0 in (0..ksize).step_by(8) {
                let x: [__m256; 8] =
                    std::array::from_fn(|i| _mm256_loadu_ps(kernels.add((m0 + i) * ksize + k0)));
                // Column j: tap k0 + j of rows m0..m0 + 8.
                for (j, col) in super::direct::transpose8x8(x).iter().enumerate() {
                    for &t in &slots[k0 + j] {
                        _mm256_storeu_ps(r.add(t * tap_len + ci * mr + m0), *col);
                    }
                }
            }
        }
    }
}

/// The source buffer the kernels read, `(N, C_in, channel block)`; `None` means read the
/// caller's input as it is. Planes are filled independently, on `threads` threads, into a
/// reused scratch buffer; input rows are copied (padded) or dealt out to the polyphase
/// components (strided) with one loop each.
pub fn pack_source<T: Element>(
    g: &Geometry,
    spec: &DirectSpec,
    x: &[T],
    threads: usize,
) -> Option<Scratch<T>> {
    let inputs: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
    let dims = inputs.len();
    let in_plane = numel(&inputs);
    let planes = g.batch * g.in_channels;
    let (extents, strides) = match &spec.source {
        SourceLayout::Direct => return None,
        SourceLayout::Padded { extents } => (extents.clone(), vec![1; dims]),
        SourceLayout::Polyphase { extents } => {
            (extents.clone(), g.axes.iter().map(|a| a.stride).collect())
        }
    };
    let block = spec.channel_stride;
    let comp_plane = numel(&extents);
    let ext_pitch: Vec<usize> = (0..dims)
        .map(|a| extents[a + 1..].iter().product())
        .collect();
    let in_pitch: Vec<usize> = (0..dims)
        .map(|a| inputs[a + 1..].iter().product())
        .collect();
    // Component pitch per axis in the flat component index (row-major over `strides`).
    let comp_pitch: Vec<usize> = (0..dims)
        .map(|a| strides[a + 1..].iter().product())
        .collect();
    let (last_s, last_in, last_ext) = (strides[dims - 1], inputs[dims - 1], extents[dims - 1]);
    // Every element is written when the components tile the input exactly and fill the
    // block; otherwise zeros go wherever no input lands (stale scratch otherwise).
    let exact = (0..dims).all(|a| extents[a] * strides[a] == inputs[a])
        && block == comp_plane * strides.iter().product::<usize>();
    let fill = |p: usize, dst: &mut [T]| {
        if !exact {
            dst.fill(T::zero());
        }
        let src = &x[p * in_plane..(p + 1) * in_plane];
        // Each input row (all axes but the last) goes to one row of each last-axis component.
        for_each_index(&inputs[..dims - 1], |r| {
            let (mut from, mut comp, mut at) = (0, 0, 0);
            for a in 0..dims - 1 {
                if r[a] / strides[a] >= extents[a] {
                    return; // a row no output reads
                }
                from += r[a] * in_pitch[a];
                comp += (r[a] % strides[a]) * comp_pitch[a];
                at += (r[a] / strides[a]) * ext_pitch[a];
            }
            let row = &src[from..from + last_in];
            deal_row(row, last_s, last_ext, dst, |rho| {
                (comp + rho) * comp_plane + at
            });
        });
    };
    let mut buf = scratch::take::<T>(planes * block);
    if block > 0 {
        run_chunks(if planes > 1 { threads } else { 1 }, &mut buf, block, fill);
    }
    Some(buf)
}

/// Deal one row out to its `s` polyphase components along the last axis: element `j` goes
/// to `dst[start(j % s) + j / s]`, at most `limit` per component. The components' runs
/// must not overlap and must start in increasing order of `j % s`. Stride 1 is a copy,
/// stride 2 one deinterleaving pass, stride 8 AVX 8×8 transposes (f32); the rest (and any
/// tail) component by component.
pub(crate) fn deal_row<T: Element>(
    row: &[T],
    s: usize,
    limit: usize,
    dst: &mut [T],
    start: impl Fn(usize) -> usize,
) {
    let n = row.len();
    // Positions `u` already dealt to every component.
    let done = match s {
        1 => {
            let count = n.min(limit);
            let b = start(0);
            dst[b..b + count].copy_from_slice(&row[..count]);
            return;
        }
        2 => {
            let half = (n / 2).min(limit);
            let (b0, b1) = (start(0), start(1));
            let (lo, hi) = dst.split_at_mut(b1);
            let (evens, odds) = (&mut lo[b0..b0 + half], &mut hi[..half]);
            // Rows of a few vectors stay element by element, where the call costs about
            // what it saves (vnet3d's rows of 32: 7.5-9.9 % of its backward pass's perf
            // samples either way, within the machine's noise).
            let done = if half >= 32 {
                deinterleave2(&row[..2 * half], evens, odds)
            } else {
                0
            };
            for ((e, o), pair) in evens[done..]
                .iter_mut()
                .zip(&mut odds[done..])
                .zip(row[2 * done..].chunks_exact(2))
            {
                *e = pair[0];
                *o = pair[1];
            }
            half
        }
        8 => {
            let starts: [usize; 8] = std::array::from_fn(&start);
            let whole = (n / 64 * 8).min(limit / 8 * 8);
            deinterleave8(&row[..8 * whole], &starts, dst)
        }
        _ => 0,
    };
    for rho in 0..s.min(n) {
        let count = (n - rho).div_ceil(s).min(limit);
        let base = start(rho);
        for u in done..count {
            dst[base + u] = row[u * s + rho];
        }
    }
}

/// `evens[u] = row[2u]`, `odds[u] = row[2u + 1]` for the whole blocks of 16 values of
/// `row`, with AVX2 shuffles for f32; returns the positions `u` done (0 where this path
/// does not apply). (Element by element, dealing the 16.8 MB upstream gradient of unet's
/// input gradient took 15 % of its perf samples, and 36 % through im2col.)
fn deinterleave2<T: Element>(row: &[T], evens: &mut [T], odds: &mut [T]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        if let (Some(r), Some(e), Some(o)) = (
            super::as_f32(row),
            super::as_f32_mut(evens),
            super::as_f32_mut(odds),
        ) {
            let u = (r.len() / 16 * 8).min(e.len() / 8 * 8).min(o.len() / 8 * 8);
            // Safety: loads stay below `2u <= row.len()`, stores below `u` in both
            // destinations (`u` bounded by their lengths above); AVX2 was detected.
            unsafe { deinterleave2_avx2(r.as_ptr(), u, e.as_mut_ptr(), o.as_mut_ptr()) };
            return u;
        }
    }
    let _ = (row, evens, odds);
    0
}

/// # Safety
/// AVX2 available; `src` readable for `2u` values; `evens` and `odds` writable for `u`; `u`
/// a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn deinterleave2_avx2(
    src: *const f32,
    u: usize,
    evens: *mut f32,
    odds: *mut f32,
) {
    use std::arch::x86_64::_mm256_storeu_ps;
    for u0 in (0..u).step_by(8) {
        let (e, o) = super::direct::evens_odds16(src.add(2 * u0));
        _mm256_storeu_ps(evens.add(u0), e);
        _mm256_storeu_ps(odds.add(u0), o);
    }
}

/// [`deinterleave2_avx2`] 16 positions at a time with AVX-512 shuffles (`u` a multiple of
/// 16), for the panels of [`strided_conv`](super::strided_conv) on AVX-512 plans.
///
/// # Safety
/// AVX-512F available; as [`deinterleave2_avx2`] for the pointers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn deinterleave2_avx512(
    src: *const f32,
    u: usize,
    evens: *mut f32,
    odds: *mut f32,
) {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for u0 in (0..u).step_by(16) {
        let a = _mm512_loadu_ps(src.add(2 * u0));
        let b = _mm512_loadu_ps(src.add(2 * u0 + 16));
        _mm512_storeu_ps(evens.add(u0), _mm512_permutex2var_ps(a, even, b));
        _mm512_storeu_ps(odds.add(u0), _mm512_permutex2var_ps(a, odd, b));
    }
}

/// `padded[starts[rho] + u] = row[8u + rho]` for the whole blocks of 64 values of `row`,
/// with AVX 8×8 transposes for f32; returns the positions `u` done (0 where this path does
/// not apply).
fn deinterleave8<T: Element>(row: &[T], starts: &[usize; 8], padded: &mut [T]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && is_x86_feature_detected!("avx")
    {
        let u = row.len() / 64 * 8;
        assert!(
            starts.iter().all(|&st| st + u <= padded.len()),
            "deinterleave8 bounds"
        );
        // Safety: `T` is `f32` (same TypeId); loads stay below `8u <= row.len()`, stores
        // below `starts[rho] + u <= padded.len()` (checked); AVX was detected.
        unsafe {
            let src = row.as_ptr() as *const f32;
            let dst = padded.as_mut_ptr() as *mut f32;
            deinterleave8_avx(src, u, starts, dst);
        }
        return u;
    }
    let _ = (row, starts, padded);
    0
}

/// # Safety
/// AVX available; `src` readable for `8u` values; `dst + starts[rho]` writable for `u`;
/// `u` a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn deinterleave8_avx(src: *const f32, u: usize, starts: &[usize; 8], dst: *mut f32) {
    use std::arch::x86_64::*;
    for u0 in (0..u).step_by(8) {
        let x: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(src.add(8 * (u0 + j))));
        // Column rho: elements rho of the 8 loaded groups, i.e. component rho at u0..u0 + 8.
        for (rho, col) in super::direct::transpose8x8(x).iter().enumerate() {
            _mm256_storeu_ps(dst.add(starts[rho] + u0), *col);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stride's dealing (the vector paths of strides 2 and 8 and the element-by-element
    /// rest), with and without a limit per component, f32 and f64: each element where the
    /// definition puts it, nothing else written.
    #[test]
    fn rows_deal_to_their_components() {
        for s in [1, 2, 3, 8] {
            for n in [0usize, 1, 7, 15, 16, 17, 33, 64, 100, 131] {
                for limit in [usize::MAX, 5, 9] {
                    let row: Vec<f64> = (0..n).map(|v| v as f64 + 1.0).collect();
                    let per = n.div_ceil(s).min(limit) + 3;
                    let start = |rho: usize| rho * per + 1;
                    let mut want = vec![-1.0; s * per + 1];
                    for (j, &v) in row.iter().enumerate() {
                        if j / s < limit {
                            want[start(j % s) + j / s] = v;
                        }
                    }
                    let mut got = vec![-1.0; s * per + 1];
                    deal_row(&row, s, limit, &mut got, start);
                    assert_eq!(got, want, "f64 s {s} n {n} limit {limit}");
                    let row32: Vec<f32> = row.iter().map(|&v| v as f32).collect();
                    let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                    let mut got32 = vec![-1.0f32; s * per + 1];
                    deal_row(&row32, s, limit, &mut got32, start);
                    assert_eq!(got32, want32, "f32 s {s} n {n} limit {limit}");
                }
            }
        }
    }
}
