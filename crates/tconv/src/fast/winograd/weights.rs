//! Building a plan's Winograd part: the decomposition, the task sizes, and the weights
//! transformed and packed once.

use super::*;
use crate::fast::pack::PackCache;
use crate::fast::spec::pitches_of;
use crate::params::Op;
use crate::tensor::{for_each_index, numel};

impl<T: Element> Winograd<T> {
    /// Plan `g` (where [`applies`]) with weight `w` for `kernel`, an `mr × v` tile of
    /// `lanes`-wide vectors, with enough tasks for `threads` threads; the transformed
    /// weights packed into a pooled scratch buffer where `pooled` (see
    /// [`crate::fast::pack::pack_weights`]), and taken from or kept in `packs` where given.
    pub fn new(
        g: &Geometry,
        w: &[T],
        kernel: KernelFn<T>,
        (mr, v, lanes, isa): (usize, usize, usize, Isa),
        (threads, pooled): (usize, bool),
        packs: Option<&PackCache>,
    ) -> Option<Winograd<T>> {
        let (transforms, phases, out_stride, in_stride) = decompose(g)?;
        let dims = g.axes.len();
        let points: usize = transforms.iter().map(|t| t.alpha).product();
        let kflat = kernel_taps(g, &transforms, &phases);
        let packing = Packing::new(g, (&transforms, &phases, &kflat), mr, isa);
        let kdim = packing.kdim;
        let packed = packing.packed(w, (threads, pooled), packs);
        let Sizing {
            batch_chunk,
            band_tiles,
            channel_parts,
            pitch,
            registers,
            slice,
            task_len,
            ..
        } = sizing::<T>(
            g,
            &transforms,
            &phases,
            &in_stride,
            (mr, v, lanes, isa),
            threads,
        );
        let in_shape: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
        let in_terms = terms(&transforms, |t| (t.bt.as_slice(), t.alpha, t.alpha));
        let out_terms = terms(&transforms, |t| (t.at.as_slice(), t.m, t.alpha));
        let out_shape: Vec<usize> = g.axes.iter().map(|a| a.output).collect();
        let bias_only = phases.iter().filter(|p| !p.live() && !p.empty()).count();
        let fill_first = 2 * bias_only >= phases.len();
        let mut plan = Winograd {
            kernel,
            isa,
            mr,
            v,
            lanes,
            phases,
            out_stride,
            points,
            blocks: g.out_per_group().div_ceil(mr),
            packed,
            band_tiles,
            batch_chunk,
            channel_parts,
            pitch,
            registers,
            slice,
            task_len,
            fill_first,
            in_terms_f32: terms(&transforms, |t| (t.bt.as_slice(), t.alpha, t.alpha)),
            in_form: winograd_input::Points::of(&transforms),
            out_terms_f32: terms(&transforms, |t| (t.at.as_slice(), t.m, t.alpha)),
            out_form: winograd_input::Outputs::of(&transforms),
            in_terms,
            out_terms,
            in_pitch: pitches_of(&in_shape),
            in_stride,
            kdim,
            in_shape,
            out_pitch: pitches_of(&out_shape),
            outer_alpha: transforms[..dims - 1].iter().map(|t| t.alpha).collect(),
            outer_m: transforms[..dims - 1].iter().map(|t| t.m).collect(),
            transforms,
            staged: None,
            tables: Vec::new(),
        };
        plan.staged = plan.staged_layout(g);
        plan.tables = plan.build_tables(g);
        Some(plan)
    }

    /// Ranges of whole blocks each group's output channels are cut into between tasks.
    pub(crate) fn channel_parts(&self) -> usize {
        self.channel_parts
    }

    /// Cut each group's output channels into `parts` ranges between tasks (clamped to the
    /// blocks), whatever the sizing chose: for tests of the split on small problems.
    #[cfg(test)]
    pub(crate) fn set_channel_parts(&mut self, parts: usize) {
        self.channel_parts = parts;
    }

    /// The packed transformed weights' address (which a [`crate::fast::pack::PackCache`] may
    /// hold).
    pub(crate) fn packing_id(&self) -> *const () {
        std::sync::Arc::as_ptr(&self.packed) as *const ()
    }

    /// Bytes of the packed transformed weights and the tasks' tables.
    pub fn packed_bytes(&self) -> usize {
        self.packed.len() * std::mem::size_of::<T>() + run::TaskTables::distinct_bytes(&self.tables)
    }

    /// Elements of scratch one task allocates: transformed input and GEMM results for a
    /// band, the row buffers of the transforms and the channels-last input copy.
    pub fn scratch_len(&self) -> usize {
        self.task_len
    }

    /// Elements from one point's rows of `V` to the next's in a task's scratch: its `kdim`
    /// rows of `pitch`, then [`point_gap`]'s cache line.
    pub(super) fn v_stride(&self) -> usize {
        self.kdim * self.pitch + point_gap(std::mem::size_of::<T>())
    }

    /// Elements of the transforms' buffers: the gathered inputs of every tile (`α^D` rows),
    /// or the output transform's results (`m^D` rows), for [`CHUNK`] channels.
    pub(super) fn row_scratch(&self) -> usize {
        self.points.max(self.out_terms.len()) * CHUNK * self.pitch
    }

    /// The Winograd tile as printed, e.g. `F(2x2,3x3)`.
    pub fn name(&self) -> String {
        tile_name(&self.transforms)
    }

    /// Phases with taps.
    pub fn live_phases(&self) -> usize {
        self.phases.iter().filter(|p| p.live()).count()
    }
}

/// Flat kernel indices of the taps of each source of a phase (row-major over its taps).
pub(super) type PhaseTaps = Vec<Vec<usize>>;

/// [`PhaseTaps`] of each live phase of `phases`.
fn kernel_taps(g: &Geometry, transforms: &[Transform], phases: &[Phase]) -> Vec<PhaseTaps> {
    let kpitch = pitches_of(&g.kernel_shape());
    let rs: Vec<usize> = transforms.iter().map(|t| t.r).collect();
    let taps: usize = rs.iter().product();
    phases
        .iter()
        .filter(|p| p.live())
        .map(|p| {
            p.sources
                .iter()
                .map(|src| {
                    let mut k = Vec::with_capacity(taps);
                    for_each_index(&rs, |j| {
                        k.push(
                            (0..g.axes.len())
                                .map(|a| src.kidx[a][j[a]] * kpitch[a])
                                .sum::<usize>(),
                        );
                    });
                    k
                })
                .collect()
        })
        .collect()
}

/// Whether `packs` holds the transformed weights a plan of `g` with tiles of `mr` rows on
/// `isa` would pack (none where Winograd tiles do not apply).
pub(crate) fn packed_in(g: &Geometry, mr: usize, isa: Isa, packs: &PackCache) -> bool {
    let Some((transforms, phases, _, _)) = decompose(g) else {
        return false;
    };
    let kflat = kernel_taps(g, &transforms, &phases);
    packs.contains(&Packing::new(g, (&transforms, &phases, &kflat), mr, isa).key())
}

/// How a plan's weights are transformed and packed: `U = G g Gᵀ` per live phase, source
/// and point, as `[group][block][live phase][point][(source, ci)][mr]`, one contiguous unit
/// per (group, block).
struct Packing<'a> {
    g: &'a Geometry,
    transforms: &'a [Transform],
    /// The live phases' taps ([`kernel_taps`]).
    kflat: &'a [PhaseTaps],
    mr: usize,
    /// The GEMMs' reduction: the most sources of a phase times `C_in/g`.
    kdim: usize,
    isa: Isa,
}

impl<'a> Packing<'a> {
    /// The packing of `g`'s live phases (their taps `kflat`, [`kernel_taps`]) for tiles of
    /// `mr` rows on `isa`; the GEMMs' reduction is (source, input channel).
    fn new(
        g: &'a Geometry,
        (transforms, phases, kflat): (&'a [Transform], &[Phase], &'a [PhaseTaps]),
        mr: usize,
        isa: Isa,
    ) -> Self {
        Packing {
            g,
            transforms,
            kflat,
            mr,
            kdim: most_sources(phases) * g.in_per_group(),
            isa,
        }
    }

    /// What the packing depends on besides `w`: the channel layout, the tile's rows, the
    /// transforms (and the ISA computing them) and every live phase's sources' taps.
    fn key(&self) -> Vec<usize> {
        let g = self.g;
        let mut key = vec![
            2, // this packing
            g.op as usize,
            g.groups,
            g.in_per_group(),
            g.out_per_group(),
            numel(&g.kernel_shape()),
            self.mr,
            self.isa as usize,
            self.kdim,
        ];
        key.extend(self.transforms.iter().flat_map(|t| [t.m, t.r]));
        for sources in self.kflat {
            key.push(sources.len());
            for k in sources {
                key.push(k.len());
                key.extend(k);
            }
        }
        key
    }

    /// The packed transformed weights of `w`, from `packs` where it holds them (else packed
    /// on `threads` threads, and kept there); into a pooled scratch buffer where `pooled`.
    fn packed<T: Element>(
        &self,
        w: &[T],
        (threads, pooled): (usize, bool),
        packs: Option<&PackCache>,
    ) -> std::sync::Arc<scratch::Scratch<T>> {
        let bytes = |p: &scratch::Scratch<T>| p.len() * std::mem::size_of::<T>();
        PackCache::get_or_pack(
            packs,
            || self.key(),
            || self.pack(w, threads, pooled),
            bytes,
        )
    }

    /// Transform and pack `w`. A pooled buffer holds stale values (zero-filling and
    /// page-faulting 19.5 MB afresh took 5-6 % of dcgan1's input gradient): every value is
    /// written.
    fn pack<T: Element>(&self, w: &[T], threads: usize, pooled: bool) -> scratch::Scratch<T> {
        let (g, mr, kdim, kflat) = (self.g, self.mr, self.kdim, self.kflat);
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let blocks = cout_g.div_ceil(mr);
        let points: usize = self.transforms.iter().map(|t| t.alpha).product();
        let ksize = numel(&g.kernel_shape());
        // Per point, its `(tap, coefficient)` terms of `G ⊗ … ⊗ G`, in the element type.
        let gterms: Vec<Vec<(usize, T)>> =
            terms(self.transforms, |t| (t.g.as_slice(), t.alpha, t.r));
        let unit = kflat.len() * points * kdim * mr;
        // Weight index of (ci, co) for channel offsets within the group.
        let (ci_step, co_step) = match g.op {
            Op::ConvTranspose => (cout_g * ksize, ksize),
            Op::Conv => (ksize, cin_g * ksize),
        };
        let per_phase = points * kdim * mr;
        let identity: Vec<usize> = (0..ksize).collect();
        // One (source, point) run of U: `C_in/g × mr` values, contiguous in the packing.
        let run = cin_g * mr;
        // f32 on AVX-512 with kernels of at most 16 taps: each block straight from `w`.
        #[cfg(target_arch = "x86_64")]
        let direct = (crate::fast::as_f32(w).is_some()
            && self.isa == Isa::Avx512
            && super::weights_avx512::applies(ksize))
        .then(|| {
            let gterms = terms::<f32>(self.transforms, |t| (t.g.as_slice(), t.alpha, t.r));
            let sizes = (per_phase, kdim, cin_g, mr);
            super::weights_avx512::Runs::new(kflat, &gterms, sizes, ksize)
        });
        let mut packed = if pooled {
            scratch::take::<T>(g.groups * blocks * unit)
        } else {
            scratch::owned::<T>(g.groups * blocks * unit)
        };
        crate::fast::direct::run_chunks(threads, &mut packed, unit, |k, dst| {
            let (group, b) = (k / blocks, k % blocks);
            let rows = mr.min(cout_g - b * mr);
            let first = match g.op {
                Op::ConvTranspose => group * cin_g * cout_g * ksize,
                Op::Conv => group * cout_g * cin_g * ksize,
            } + b * mr * co_step;
            let kernels = crate::fast::pack::BlockKernels {
                w,
                base: first,
                ci_step,
                co_step,
                ksize,
                live: rows,
                cin: cin_g,
                mr,
            };
            #[cfg(target_arch = "x86_64")]
            if let (Some(runs), Some(kernels), Some(dst)) =
                (&direct, kernels.as_f32(), crate::fast::as_f32_mut(dst))
            {
                super::weights_avx512::pack_block(&kernels, runs, dst);
                zero_missing_sources(kflat, (points, per_phase, kdim, run, mr), dst);
                return;
            }
            // The block's kernels as `wk[tap position][ci][mm]` (zero past the last output
            // channel), each weight read once: every U run of a (phase, source, point) is
            // then a combination of whole runs of `wk`, one vectorised pass each.
            // Taps `stride` values apart: at `run` the rows of all taps could lie a
            // multiple of 4 KiB apart (dcgan1's input gradient: 24 KiB), so the
            // transposes' stores to every tap of a channel fell in one L1 set.
            let stride = run + 64 / std::mem::size_of::<T>();
            let mut wk = scratch::take::<T>(ksize * stride);
            if rows < mr {
                // Rows past the last output channel are zero (the buffer is stale).
                wk.fill(T::zero());
            }
            kernels.by_tap(&identity, &mut wk, stride);
            let terms = KernelTerms {
                kflat,
                gterms: &gterms,
                wk: &wk,
                run,
                stride,
                per_phase,
                kdim,
                cin: cin_g,
                mr,
            };
            // (On the loops' ISA: f64's plans are `Scalar`, its loops vectorised.)
            transform_kernels(self.isa.loops_for::<T>(), &terms, dst);
            zero_missing_sources(kflat, (points, per_phase, kdim, run, mr), dst);
        });
        packed
    }
}

/// The sources a phase lacks (fewer than the most a phase has), if any: zeros in a block's
/// unit `dst` (`run` values a source). (No such decomposition turned up in a sweep of 1-D
/// geometries, kernels 1-6, strides 1-4, dilations 1-3, pads 0-3 at each end, both ops;
/// this keeps a stale pooled buffer harmless should one exist.)
fn zero_missing_sources<T: Element>(
    kflat: &[PhaseTaps],
    (points, per_phase, kdim, run, mr): (usize, usize, usize, usize, usize),
    dst: &mut [T],
) {
    for (pi, sources) in kflat.iter().enumerate() {
        for xi in 0..points {
            let at = pi * per_phase + xi * kdim * mr;
            dst[at + sources.len() * run..at + kdim * mr].fill(T::zero());
        }
    }
}

/// A block's transformed weights: for each live phase, source and point, `dst`'s run
/// `[(source, ci)][mr]` is `Σ c · wk[tap]` over the point's terms of `G ⊗ … ⊗ G` (`wk`: the
/// block's kernels `[tap][ci][mr]`, `run` values a tap, `stride` apart).
struct KernelTerms<'a, T> {
    kflat: &'a [PhaseTaps],
    gterms: &'a [Vec<(usize, T)>],
    wk: &'a [T],
    run: usize,
    stride: usize,
    per_phase: usize,
    kdim: usize,
    cin: usize,
    mr: usize,
}

/// [`KernelTerms`] into `dst`, compiled for `isa` (AVX-512, or AVX2 and FMA; portable
/// otherwise) so that [`combine`]'s loops use its widest vectors; the same operations in
/// the same order on every path.
fn transform_kernels<T: Element>(isa: Isa, k: &KernelTerms<'_, T>, dst: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// AVX-512F available.
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<T: Element>(k: &KernelTerms<'_, T>, dst: &mut [T]) {
            kernel_terms_body(k, dst)
        }
        /// # Safety
        /// AVX2 and FMA available.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<T: Element>(k: &KernelTerms<'_, T>, dst: &mut [T]) {
            kernel_terms_body(k, dst)
        }
        if isa == Isa::Avx512 && Isa::Avx512.available() {
            // Safety: AVX-512F was detected.
            return unsafe { avx512(k, dst) };
        }
        if isa == Isa::Avx2 && Isa::Avx2.available() {
            // Safety: AVX2 and FMA were detected.
            return unsafe { avx2(k, dst) };
        }
    }
    let _ = isa;
    kernel_terms_body(k, dst)
}

#[inline(always)]
fn kernel_terms_body<T: Element>(k: &KernelTerms<'_, T>, dst: &mut [T]) {
    let mut terms: Vec<(usize, T)> = Vec::new();
    for (pi, sources) in k.kflat.iter().enumerate() {
        for (si, kf) in sources.iter().enumerate() {
            for (xi, ts) in k.gterms.iter().enumerate() {
                terms.clear();
                terms.extend(ts.iter().map(|&(j, c)| (kf[j], c)));
                let at = pi * k.per_phase + (xi * k.kdim + si * k.cin) * k.mr;
                combine(&mut dst[at..at + k.run], k.wk, k.stride, &terms, false);
            }
        }
    }
}

/// `dst (+)= Σ c · src[i·stride..][..dst.len()]` over `terms` (`(i, c)`), adding to
/// `dst` with `accumulate`, else overwriting it (zeros for no terms): each group of up to
/// four terms one pass over `dst`.
#[inline(always)]
pub(crate) fn combine<T: Element>(
    dst: &mut [T],
    src: &[T],
    stride: usize,
    terms: &[(usize, T)],
    accumulate: bool,
) {
    let n = dst.len();
    let row = |i: usize| &src[i * stride..i * stride + n];
    if terms.is_empty() && !accumulate {
        dst.fill(T::zero());
    }
    for (k, group) in terms.chunks(4).enumerate() {
        let acc = accumulate || k > 0;
        match *group {
            [(a, ca)] => fused(dst, [row(a)], [ca], acc),
            [(a, ca), (b, cb)] => fused(dst, [row(a), row(b)], [ca, cb], acc),
            [(a, ca), (b, cb), (c, cc)] => fused(dst, [row(a), row(b), row(c)], [ca, cb, cc], acc),
            [(a, ca), (b, cb), (c, cc), (d, cd)] => {
                fused(dst, [row(a), row(b), row(c), row(d)], [ca, cb, cc, cd], acc)
            }
            _ => unreachable!("groups of one to four"),
        }
    }
}

/// `dst[i] (+)= Σ_k c[k] · src[k][i]` in one pass (vectorised by the compiler).
///
/// Each row is cut to exactly `n` values first: indexing the rows as given, the compiler
/// kept a bounds check and ran the last vector steps of every row value by value (32 or
/// 64 of the 384 values of s1k3's weight-gradient rows). Its weight gradient 3.1 -> 2.8 ms.
/// (Compiled for the x86-64 baseline, where plans take no Winograd tiles unless forced,
/// the compiler left f64's loop scalar; the callers plans take are compiled for AVX2 or
/// AVX-512.)
#[inline(always)]
fn fused<T: Element, const N: usize>(dst: &mut [T], src: [&[T]; N], c: [T; N], accumulate: bool) {
    let n = dst.len();
    assert!(src.iter().all(|s| s.len() == n), "rows of equal length");
    let src: [&[T]; N] = std::array::from_fn(|k| &src[k][..n]);
    for i in 0..n {
        let mut s = if accumulate { dst[i] } else { T::zero() };
        for k in 0..N {
            s = s + c[k] * src[k][i];
        }
        dst[i] = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ConvParams;

    /// The AVX-512 packing straight from the weights (kernels of at most 16 taps) and the
    /// general one give the same bits: both ops, 1-D and 2-D, strides and dilations whose
    /// phases have several sources, groups, partial blocks, tiles of 6 to 24 rows. Random
    /// floats (not small integers) so that any change in the order of a sum shows.
    #[test]
    fn avx512_packing_matches_the_general_one() {
        if !Isa::Avx512.available() {
            return;
        }
        let cases: Vec<(Op, Vec<usize>, Vec<usize>, ConvParams)> = vec![
            (
                Op::Conv,
                vec![2, 20, 8, 8],
                vec![37, 20, 4, 4],
                ConvParams::new().stride(&[2]).padding(&[1]),
            ),
            (
                Op::ConvTranspose,
                vec![2, 19, 4, 4],
                vec![19, 30, 4, 4],
                ConvParams::new().stride(&[2]).padding(&[1]),
            ),
            (
                Op::ConvTranspose,
                vec![2, 17, 6, 6],
                vec![17, 13, 3, 3],
                ConvParams::new().padding(&[1]),
            ),
            (
                Op::Conv,
                vec![1, 9, 9, 9],
                vec![26, 9, 3, 3],
                ConvParams::new().padding(&[1]),
            ),
            (
                Op::Conv,
                vec![1, 8, 64],
                vec![40, 8, 16],
                ConvParams::new().stride(&[8]).padding(&[4]),
            ),
            (
                Op::ConvTranspose,
                vec![1, 12, 10],
                vec![12, 7, 16],
                ConvParams::new().stride(&[8]).padding(&[4]),
            ),
            (
                Op::ConvTranspose,
                vec![1, 8, 7, 7],
                vec![8, 5, 3, 3],
                ConvParams::new()
                    .stride(&[2])
                    .dilation(&[2])
                    .padding(&[2])
                    .groups(2),
            ),
            (
                Op::Conv,
                vec![1, 6, 8, 8],
                vec![10, 3, 2, 2],
                ConvParams::new().groups(2),
            ),
        ];
        let mut seed = 0x9e37_79b9_u32;
        for (op, xs, ws, p) in cases {
            let g = Geometry::new(op, &xs, &ws, None, &p).unwrap();
            let Some((transforms, phases, _, _)) = decompose(&g) else {
                panic!("Winograd tiles for {op:?} {xs:?} {ws:?}");
            };
            let w: Vec<f32> = (0..numel(&ws))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
                })
                .collect();
            let kflat = kernel_taps(&g, &transforms, &phases);
            for mr in [6, 8, 12, 16, 24] {
                let pack = |isa| {
                    let packing = Packing::new(&g, (&transforms, &phases, &kflat), mr, isa);
                    packing.pack(&w, 2, false).to_vec()
                };
                let (direct, general) = (pack(Isa::Avx512), pack(Isa::Avx2));
                assert_eq!(direct.len(), general.len());
                let differ = direct
                    .iter()
                    .zip(&general)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(differ, 0, "{op:?} {xs:?} {ws:?} mr {mr}");
            }
        }
    }
}
