//! Executing a plan's Winograd part: per task, the input transform, one GEMM per
//! transformed point, and the output transform stored with the bias.

use super::*;
use crate::tensor::for_each_index;
use std::ops::Range;

use crate::fast::direct::{band_tasks, channel_parts, run_each, Task};
use crate::fast::kernels::Rows;
use crate::fast::winograd_input::{GatherPlan, Gathered, Points, Slab, SlabSource};
use crate::tensor::numel;

impl<T: Element> Winograd<T> {
    /// Run on `x (N, C_in, *in)` into `y (N, C_out, *out)`, adding `bias`.
    pub fn execute(&self, g: &Geometry, x: &[T], bias: Option<&[T]>, y: &mut [T], threads: usize) {
        let out_shape = g.output_shape();
        let out_plane = numel(&out_shape[2..]);
        if out_plane == 0 || g.batch == 0 || g.out_channels == 0 {
            return;
        }
        // One task per (group, batch chunk, band of tile rows along axis 0).
        let parts = channel_parts(g.out_per_group(), self.mr, self.channel_parts);
        let tasks = band_tasks(g, y, self.batch_chunk, &parts, &self.bands(g));
        let avx2 = cfg!(target_arch = "x86_64") && self.isa >= Isa::Avx2 && Isa::Avx2.available();
        // f64 (plans of `Scalar`) runs its transforms' loops compiled for its loops' ISA:
        // compiled for the x86-64 baseline they took 42 % of dcgan3's f64 forward pass.
        let loops = self.isa.loops_for::<T>();
        run_each(threads, tasks, |task| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // Safety: AVX2 and FMA are available (checked just above).
                unsafe { self.run_task_avx2(g, x, bias, task, true) };
                return;
            } else if loops == Isa::Avx512 {
                // Safety: `loops_for` takes AVX-512 only where it was detected.
                unsafe { self.run_task_avx512(g, x, bias, task) };
                return;
            } else if loops == Isa::Avx2 {
                // Safety: `loops_for` takes AVX2 (with FMA) only where it was detected.
                unsafe { self.run_task_avx2(g, x, bias, task, false) };
                return;
            }
            let _ = (avx2, loops);
            self.run_task(g, x, bias, task, false);
        });
    }

    /// The bands of tile rows along axis 0, each with its length in output elements per
    /// plane.
    fn bands(&self, g: &Geometry) -> Vec<(Range<usize>, usize)> {
        let out_shape = g.output_shape();
        let row_len = numel(&out_shape[3..]);
        let out0 = out_shape[2];
        let (s0, m0) = (self.out_stride[0], self.transforms[0].m);
        let q0 = self.phases.iter().map(|p| p.extents[0]).max().unwrap_or(0);
        let t0 = q0.div_ceil(m0).max(1);
        (0..t0.div_ceil(self.band_tiles))
            .map(|b| {
                let tiles = b * self.band_tiles..((b + 1) * self.band_tiles).min(t0);
                let rows = (s0 * m0 * tiles.start).min(out0)..(s0 * m0 * tiles.end).min(out0);
                (tiles, rows.len() * row_len)
            })
            .collect()
    }

    /// The tables of every kind of task `g`'s runs take: per band, for a whole batch chunk
    /// and for the shorter last one (where there is one). Tables count from the band's
    /// first input row and first output row, so the bands that read no padding along axis
    /// 0 and hold as many tile rows have equal tables, which they share. None where the
    /// distinct tables would take more than [`MAX_TABLE_BYTES`]: each task then builds its
    /// own as it runs.
    pub(super) fn build_tables(&self, g: &Geometry) -> Vec<TaskTables> {
        if numel(&g.output_shape()[2..]) == 0 || g.batch == 0 || g.out_channels == 0 {
            return Vec::new();
        }
        let chunk = self.batch_chunk.min(g.batch);
        let mut sizes = vec![chunk];
        if !g.batch.is_multiple_of(chunk) {
            sizes.push(g.batch % chunk);
        }
        let mut out: Vec<TaskTables> = Vec::new();
        let mut bytes = 0;
        for (band, _) in self.bands(g) {
            let interior = self.interior(&band);
            for &images in &sizes {
                // An interior band of as many tile rows and images as the last one shares
                // its tables unbuilt (checked against building them in debug builds).
                let kin =
                    out.iter().rev().take(sizes.len()).find(|p| {
                        p.images == images && interior && p.interior && p.rows == band.len()
                    });
                if let Some(p) = kin {
                    let origin = self.band_origin(&band);
                    debug_assert!(p.phases == self.task_tables(g, band.clone(), images).phases);
                    let phases = p.phases.clone();
                    out.push(TaskTables {
                        band: band.start,
                        rows: band.len(),
                        interior,
                        images,
                        origin,
                        phases,
                    });
                    continue;
                }
                let mut t = self.task_tables(g, band.clone(), images);
                // Else the last band's tables of as many images, where equal.
                let same = out
                    .iter()
                    .rev()
                    .take(sizes.len())
                    .find(|p| p.images == images && p.phases == t.phases);
                match same {
                    Some(p) => t.phases = p.phases.clone(),
                    None => bytes += t.bytes(),
                }
                if bytes > MAX_TABLE_BYTES {
                    return Vec::new();
                }
                out.push(t);
            }
        }
        out
    }

    /// Whether `band` is interior along axis 0: every live phase's tile rows there lie
    /// wholly inside its extent, and every input row their sources read inside the input.
    /// Interior bands of as many tile rows have equal tables: every index counts from the
    /// band's first input row read or output row, and nothing is cut along axis 0.
    fn interior(&self, band: &Range<usize>) -> bool {
        let (m0, s0, in0) = (self.transforms[0].m, self.in_stride[0], self.in_shape[0]);
        let alpha0 = self.transforms[0].alpha;
        !band.is_empty()
            && self
                .phases
                .iter()
                .filter(|p| p.live() && !p.empty())
                .all(|p| {
                    m0 * band.end <= p.extents[0]
                        && p.sources.iter().all(|src| {
                            let first = (m0 * band.start) as isize + src.base[0];
                            let last = (m0 * (band.end - 1) + alpha0 - 1) as isize + src.base[0];
                            first >= 0 && last * s0 as isize + (src.comp[0] as isize) < in0 as isize
                        })
                })
    }

    /// Where a task over `band` counts its gather indices from, past its first input: the
    /// first input row (axis 0) any live phase's source reads there (or 0), in elements.
    fn band_origin(&self, band: &Range<usize>) -> usize {
        let (m0, s0, in0) = (self.transforms[0].m, self.in_stride[0], self.in_shape[0]);
        let mut lo = in0;
        for p in self.phases.iter().filter(|p| p.live() && !p.empty()) {
            let tiles0 = p.extents[0].div_ceil(m0);
            if band.start.min(tiles0) == band.end.min(tiles0) {
                continue;
            }
            for src in &p.sources {
                let u = (m0 * band.start) as isize + src.base[0];
                let row = u * s0 as isize + src.comp[0] as isize;
                lo = lo.min(row.clamp(0, in0 as isize) as usize);
            }
        }
        // (At most the last row, so that padding's placeholder lies inside the image.)
        lo.min(in0.saturating_sub(1)) * self.in_pitch[0]
    }

    /// The tables of a task over `band` with `images` images.
    fn task_tables(&self, g: &Geometry, band: Range<usize>, images: usize) -> TaskTables {
        let origin = self.band_origin(&band);
        let n_pad_of = |n: usize| n.div_ceil(self.v * self.lanes) * self.v * self.lanes;
        let gather = self.registers
            && self.isa == Isa::Avx512
            && matches!(self.in_form, Points::Separable { dims: 2, .. });
        let phases = self
            .phases
            .iter()
            .map(|p| {
                if p.empty() || !p.live() {
                    return None;
                }
                let runs = self.runs(g, p, band.clone(), images);
                let n_cols: usize = runs.iter().map(|r| r.tiles.len()).sum();
                if n_cols == 0 {
                    return None;
                }
                let sources = p
                    .sources
                    .iter()
                    .map(|src| {
                        let (table, zeros) = self.gather_table(g, src, &runs, n_cols, origin);
                        let source = Gathered {
                            table: &table,
                            zeros: &zeros,
                            n: n_cols,
                        };
                        let gathered = gather
                            .then(|| {
                                let cols = (n_pad_of(n_cols), self.pitch);
                                GatherPlan::new(&source, self.in_form, cols)
                            })
                            .flatten();
                        SourceTables {
                            table,
                            zeros,
                            gathered,
                        }
                    })
                    .collect();
                let (mut scatter, spans) = self.scatter_table(g, p, &runs, band.start);
                if let Some((stride, per)) = self.staged {
                    // Position `stride·q + r` of the plane staged at `r·per + q` (see
                    // `staged_layout`).
                    for seg in &mut scatter {
                        seg.1 = seg.1 % stride * per + seg.1 / stride;
                    }
                }
                Some(PhaseTables {
                    n_cols,
                    sources,
                    scatter,
                    spans,
                })
            })
            .collect();
        TaskTables {
            band: band.start,
            rows: band.len(),
            interior: self.interior(&band),
            images,
            origin,
            phases: std::sync::Arc::new(phases),
        }
    }

    /// [`Self::run_task`] compiled for AVX2 and FMA: the transforms' loops vectorised 8
    /// lanes wide.
    ///
    /// # Safety
    /// AVX2 and FMA available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_task_avx2(
        &self,
        g: &Geometry,
        x: &[T],
        bias: Option<&[T]>,
        task: Task<'_, T>,
        avx2: bool,
    ) {
        self.run_task(g, x, bias, task, avx2);
    }

    /// [`Self::run_task`] compiled for AVX-512 (f64's portable transforms: 8 lanes a
    /// register), without the f32 transforms in registers.
    ///
    /// # Safety
    /// AVX-512F available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_task_avx512(&self, g: &Geometry, x: &[T], bias: Option<&[T]>, task: Task<'_, T>) {
        self.run_task(g, x, bias, task, false);
    }

    /// One task; with `avx2` (AVX2 and FMA available), f32 inputs are transformed in
    /// registers from a channels-last copy of the band's input rows
    /// ([`crate::fast::winograd_input`]).
    #[inline(always)]
    fn run_task(
        &self,
        g: &Geometry,
        x: &[T],
        bias: Option<&[T]>,
        mut task: Task<'_, T>,
        avx2: bool,
    ) {
        let (slice, pitch) = (self.slice, self.pitch);
        // The transforms in registers (f32 only; `registers` implies it).
        let registers = avx2 && self.registers;
        // On AVX-512 the separable 2-D forms load their inputs straight from `x`, without
        // the slab (the 1-D and 3-D forms keep it: hifigan1d's F(3, 2) lost 2-7 % so).
        let gather = registers
            && self.isa == Isa::Avx512
            && matches!(self.in_form, Points::Separable { dims: 2, .. });
        let slab = match crate::fast::as_f32(x) {
            Some(x) if registers && !gather => self.slab(g, x, &task),
            _ => None,
        };
        let mut v = scratch::take::<T>(self.points * self.v_stride());
        let mut mres = scratch::take::<T>(self.points * slice * pitch);
        let mut rows = scratch::take::<T>(self.row_scratch());
        let mut live_index = 0;
        // The phase whose transformed input `v` holds: consecutive phases that read the
        // same inputs (HiFi-GAN's k16 s8: four phases per base) transform it once.
        let mut v_of: Option<&Phase> = None;
        if self.fill_first {
            let cout_g = g.out_per_group();
            let (first, n) = (task.channels.start, task.channels.len());
            for (k, plane) in task.planes.iter_mut().enumerate() {
                let c = task.group * cout_g + first + k % n;
                plane.fill(bias.map_or(T::zero(), |b| b[c]));
            }
        }
        // The task's tables, built with the plan (or here, where the plan keeps none):
        // [`Self::build_tables`] keeps them band by band, a whole batch chunk's first.
        let kinds = 1 + usize::from(!g.batch.is_multiple_of(self.batch_chunk.min(g.batch)));
        let kind = usize::from(task.batch.len() != self.batch_chunk.min(g.batch));
        let kept = self
            .tables
            .get(task.band.start / self.band_tiles * kinds + kind)
            .filter(|t| t.band == task.band.start && t.images == task.batch.len());
        debug_assert!(
            kept.is_some() || self.tables.is_empty(),
            "a task's tables not kept"
        );
        let built;
        let tables = match kept {
            Some(t) => t,
            None => {
                built = self.task_tables(g, task.band.clone(), task.batch.len());
                &built
            }
        };
        // Where the task's gather indices count from: its first image's channel 0 of its
        // group, plus the band's origin.
        let base = (task.batch.start * g.in_channels + task.group * g.in_per_group())
            * numel(&self.in_shape)
            + tables.origin;
        for (p, t) in self.phases.iter().zip(tables.phases.iter()) {
            if p.empty() {
                if p.live() {
                    live_index += 1;
                }
                continue;
            }
            if !p.live() {
                if !self.fill_first {
                    self.fill_bias(g, p, bias, &mut task);
                }
                continue;
            }
            let Some(t) = t else {
                live_index += 1; // no tiles in this task
                continue;
            };
            // V[ξ][(source, ci)]: each source's channels in turn (none where `v` holds it).
            if !v_of.is_some_and(|q| q.same_input(p)) {
                self.clear_columns(t.n_cols, &mut rows);
                self.phase_inputs(g, x, (t, base), (slab.as_ref(), gather), &mut v, &mut rows);
            }
            v_of = Some(p);
            let scratch = (&mut mres[..], &mut rows[..]);
            let operands = (&v[..], bias, registers);
            self.phase_outputs(g, (live_index, t), operands, scratch, &mut task);
            live_index += 1;
        }
        if let Some((stride, _)) = self.staged {
            for plane in task.planes.iter_mut() {
                unstage_phases(plane, &mut rows, stride);
            }
        }
    }

    /// Whether a task writes each phase's outputs contiguously into its planes and
    /// interleaves the phases once at its end, `Some((stride, positions per phase))`: a
    /// 1-D layer whose phases (all with taps) each hold `len / stride` positions and whose
    /// tasks hold whole planes (one band). Written in place, HiFi-GAN's 8 phases each
    /// touched every line of a task's 4 MiB of planes, 8 passes through a 2 MiB L2
    /// (`scatter_outputs` took 14 % of hifigan1d's forward pass); staged, each phase writes
    /// its own eighth of the lines, and one pass interleaves them ([`unstage_phases`]):
    /// scatter 14 % -> 6 %, interleave 1 %, hifigan1d's forward pass 1.10-1.11x at 1
    /// thread and 1.06-1.10x at 2 (medians / minima, 4 paired rounds). The same values go
    /// to the same places.
    pub(super) fn staged_layout(&self, g: &Geometry) -> Option<(usize, usize)> {
        let ([axis], [stride]) = (&g.axes[..], &self.out_stride[..]) else {
            return None;
        };
        let (stride, len) = (*stride, axis.output);
        if stride < 2 || !len.is_multiple_of(stride) || self.fill_first {
            return None;
        }
        let per = len / stride;
        let whole = self.phases.len() == stride
            && self.phases.iter().all(|p| p.live() && p.extents[0] == per);
        let one_band = per.div_ceil(self.transforms[0].m) <= self.band_tiles;
        // The interleave goes through the task's row scratch.
        (whole && one_band && self.row_scratch() >= len).then_some((stride, per))
    }

    /// A phase's transformed input `V[ξ][(source, ci)]` over the `n_cols` tiles of its
    /// tables `t` (their indices from `base` in `x`: the task's first input plus its band's
    /// origin): each source's channels in turn, in registers, gathered straight from `x`
    /// (`gather`: f32 on AVX-512) or from `slab` (f32 on AVX2), else gathered through a
    /// table into rows, `CHUNK` channels at a time.
    #[inline(always)]
    fn phase_inputs(
        &self,
        g: &Geometry,
        x: &[T],
        (t, base): (&PhaseTables, usize),
        (slab, gather): (Option<&Slab>, bool),
        v: &mut [T],
        rows: &mut [T],
    ) {
        let (cin_g, pitch) = (g.in_per_group(), self.pitch);
        let in_plane = numel(&self.in_shape);
        let n_cols = t.n_cols;
        // Columns the GEMMs run over: whole register panels.
        let n_pad = n_cols.div_ceil(self.v * self.lanes) * self.v * self.lanes;
        for (si, src) in t.sources.iter().enumerate() {
            if let (true, Some(plan), Some(x), Some(v)) = (
                gather,
                src.gathered.as_ref(),
                crate::fast::as_f32(x),
                crate::fast::as_f32_mut(&mut *v),
            ) {
                let rows = (si * cin_g, pitch, self.v_stride());
                winograd_input::transform_gathered(x, plan, base, (cin_g, in_plane), v, rows);
                continue;
            }
            let (table, zeros) = (&src.table[..], &src.zeros[..]);
            let fast = slab.and_then(|slab| {
                let gather = (table, zeros, base);
                let offs = slab.offsets(gather, (n_cols, n_pad, pitch), self.points)?;
                Some((slab, offs, crate::fast::as_f32_mut(v)?))
            });
            if let Some((slab, offs, v)) = fast {
                let rows = (si * cin_g, pitch, self.v_stride());
                let form = (&self.in_terms_f32[..], self.in_form);
                winograd_input::transform(slab, &offs, form, cin_g, v, rows);
                continue;
            }
            for c0 in (0..cin_g).step_by(CHUNK) {
                let cn = CHUNK.min(cin_g - c0);
                let dst = &mut v[(si * cin_g + c0) * pitch..];
                let chans = (c0, cn, in_plane);
                let v = (dst, self.v_stride());
                // (The table's indices count from `base`.)
                self.input_transform(&x[base..], chans, (table, zeros), n_cols, v, rows);
            }
        }
    }

    /// A phase's outputs (the `live_index`-th live phase, over the `n_cols` tiles of its
    /// tables `t`): per slice of output channels, one GEMM per transformed point of `v`
    /// into `mres`, then the output transform with the bias `CHUNK` channels at a time (in
    /// registers for f32 on AVX2, `registers`), scattered into the task's planes.
    #[inline(always)]
    fn phase_outputs(
        &self,
        g: &Geometry,
        (live_index, t): (usize, &PhaseTables),
        (v, bias, registers): (&[T], Option<&[T]>, bool),
        (mres, rows): (&mut [T], &mut [T]),
        task: &mut Task<'_, T>,
    ) {
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let (slice, pitch, kdim) = (self.slice, self.pitch, self.kdim);
        let (tl, n_cols) = (self.v * self.lanes, t.n_cols);
        // A last panel of columns that fills fewer vectors than the register tile's runs on
        // a tile of as many rows and just those vectors, where one is instantiated
        // (`Element::tail_kernel`: the same sums column by column, so the same bits).
        // hifigan1d's tasks (two images of 86 tiles: 172 columns) on 12×2 tiles ran five
        // panels of 32 columns and one of 32 for the last 12, now one of 16 (12×1): its
        // forward pass 1.06x / 1.06x faster at 1 thread and 1.05x / 1.05x at 2
        // (`bench/paired.sh hifigan1d T 4`, medians / minima; Intel Xeon, 2026-12-08);
        // dilated's (its last band's tasks 64 columns on 8×3: 8×1 for the last 16) 1.05x /
        // 1.05x and 1.01x / 1.02x.
        let full = n_cols / tl * tl;
        let tail_v = (n_cols - full).div_ceil(self.lanes);
        let tail = (tail_v > 0 && tail_v < self.v)
            .then(|| T::tail_kernel(self.isa, self.mr, tail_v))
            .flatten();
        let n_pad = if tail.is_some() {
            full + tail_v * self.lanes
        } else {
            n_cols.div_ceil(tl) * tl
        };
        // The plan's ISA, for the output stores (AVX-512's masked stores where it is).
        let avx512 = self.isa == Isa::Avx512;
        let avx2 = self.isa >= Isa::Avx2;
        let unit = self.live_phases() * self.points * kdim * self.mr;
        let k = t.sources.len() * cin_g;
        let shape = Rows {
            k,
            pitch,
            taps: 1,
            out_pitch: pitch,
        };
        let (scatter, spans) = (&t.scatter, &t.spans);
        let mut step = self.out_stride[g.axes.len() - 1] * self.transforms[g.axes.len() - 1].m;
        if let Some((stride, _)) = self.staged {
            step /= stride; // the segments are staged (`task_tables`)
        }
        let per_slice = slice / self.mr;
        // The task's channels and their blocks.
        let (ch, n_ch) = (task.channels.clone(), task.channels.len());
        let task_blocks = task.blocks(self.mr);
        for b0 in task_blocks.clone().step_by(per_slice) {
            let blocks = b0..task_blocks.end.min(b0 + per_slice);
            for xi in 0..self.points {
                let b_rows = &v[xi * self.v_stride()..];
                for b in blocks.clone() {
                    let at = (task.group * self.blocks + b) * unit
                        + (live_index * self.points + xi) * kdim * self.mr;
                    let w = &self.packed[at..at + k * self.mr];
                    for p0 in (0..n_cols).step_by(tl) {
                        let out = &mut mres[(xi * slice + (b - b0) * self.mr) * pitch + p0..];
                        let kernel = match tail {
                            Some(k) if p0 == full => k,
                            _ => self.kernel,
                        };
                        kernel(w, &b_rows[p0..], shape, out.into(), false);
                    }
                }
            }
            // The slice's channels, CHUNK at a time (`c0` from the slice's start).
            let first = b0 * self.mr;
            let mut b = [T::zero(); CHUNK];
            for c0 in (first..ch.end.min(first + slice)).step_by(CHUNK) {
                let cn = CHUNK.min(ch.end - c0);
                for (cc, b) in b[..cn].iter_mut().enumerate() {
                    *b = bias.map_or(T::zero(), |bias| bias[task.group * cout_g + c0 + cc]);
                }
                let m_at = (c0 - first) * pitch;
                let y = match (crate::fast::as_f32(mres), crate::fast::as_f32(&b[..cn])) {
                    (Some(m), Some(b)) if registers => {
                        let r32 = crate::fast::as_f32_mut(rows).expect("f32 like the results");
                        let args = winograd_input::OutputArgs {
                            mres: &m[m_at..],
                            point_stride: slice * pitch,
                            pitch,
                            cols: n_pad,
                            bias: b,
                            block: CHUNK * pitch,
                        };
                        let form = (&self.out_terms_f32[..], self.out_form);
                        winograd_input::output(&args, form, (self.points, avx512), r32);
                        &rows[..]
                    }
                    _ => self.output_transform(cn, &mres[m_at..], &b[..cn], rows),
                };
                for cc in 0..cn {
                    let y = &y[cc * pitch..];
                    for (image, span) in spans {
                        let plane = &mut *task.planes[image * n_ch + c0 - ch.start + cc];
                        scatter_outputs(plane, y, &scatter[span.clone()], step, (avx512, avx2));
                    }
                }
            }
        }
    }

    /// The channels-last copy of the input rows (axis 0) a task reads, over every source of
    /// every live phase; `None` where it reads none.
    fn slab(&self, g: &Geometry, x: &[f32], task: &Task<'_, T>) -> Option<Slab> {
        let (m0, alpha0) = (self.transforms[0].m, self.transforms[0].alpha);
        let (s0, in0) = (self.in_stride[0], self.in_shape[0]);
        let mut rows: Option<Range<usize>> = None;
        for p in self.phases.iter().filter(|p| p.live() && !p.empty()) {
            let tiles0 = p.extents[0].div_ceil(m0);
            let band = task.band.start.min(tiles0)..task.band.end.min(tiles0);
            if band.is_empty() {
                continue;
            }
            for src in &p.sources {
                let u_lo = (m0 * band.start) as isize + src.base[0];
                let u_hi = (m0 * (band.end - 1) + alpha0 - 1) as isize + src.base[0];
                let pos = |u: isize| u * s0 as isize + src.comp[0] as isize;
                let lo = pos(u_lo).clamp(0, in0 as isize) as usize;
                let hi = (pos(u_hi) + 1).clamp(0, in0 as isize) as usize;
                if lo < hi {
                    rows = Some(rows.map_or(lo..hi, |r| r.start.min(lo)..r.end.max(hi)));
                }
            }
        }
        let source = SlabSource {
            channels: g.in_channels,
            cin_g: g.in_per_group(),
            group: task.group,
            in_plane: numel(&self.in_shape),
            row_len: numel(&self.in_shape[1..]),
            rows: rows?,
            batch: task.batch.clone(),
        };
        Some(Slab::new(x, &source))
    }

    /// The runs of tiles phase `p` covers in a task over `band` with `images` images, in
    /// GEMM column order: per image and outer tile index, a range of tiles along the last
    /// axis.
    fn runs(&self, g: &Geometry, p: &Phase, band: Range<usize>, images: usize) -> Vec<Run> {
        let dims = g.axes.len();
        let tiles: Vec<usize> = (0..dims)
            .map(|a| p.extents[a].div_ceil(self.transforms[a].m))
            .collect();
        let band = band.start.min(tiles[0])..band.end.min(tiles[0]);
        let mut runs = Vec::new();
        let mut col = 0;
        for image in 0..images {
            if dims == 1 {
                runs.push(Run {
                    image,
                    outer: [0; MAX_DIMS],
                    tiles: band.clone(),
                    col,
                });
                col += band.len();
                continue;
            }
            let mut extent: Vec<usize> = tiles[..dims - 1].to_vec();
            extent[0] = band.len();
            for_each_index(&extent, |i| {
                let mut outer = [0; MAX_DIMS];
                outer[..dims - 1].copy_from_slice(i);
                outer[0] += band.start;
                runs.push(Run {
                    image,
                    outer,
                    tiles: 0..tiles[dims - 1],
                    col,
                });
                col += tiles[dims - 1];
            });
        }
        runs
    }

    /// Where each tile input of a task's phase comes from: for outer line `l`, tap `j`
    /// of the last axis and column `c`, entry `(l·α + j)·n + c` is the index for input
    /// channel 0 of the task's group, from `origin` past the task's first input (its first
    /// image's channel 0 of the group; add `ci · plane` for channel `ci`): `origin` is at or
    /// before the first input row the task's phases read ([`Self::band_origin`]). Padding
    /// reads the element at `origin` of its image and is listed in the second vector
    /// (`(l·α + j)·pitch + c`), to be zeroed after the gather.
    fn gather_table(
        &self,
        g: &Geometry,
        src: &Source,
        runs: &[Run],
        n: usize,
        origin: usize,
    ) -> (Vec<usize>, Vec<usize>) {
        let dims = g.axes.len();
        let last = &self.transforms[dims - 1];
        let (m, alpha) = (last.m, last.alpha);
        let in_plane = numel(&self.in_shape);
        let lines = self.points / alpha;
        let l_in = self.in_shape[dims - 1] as isize;
        let s_last = self.in_stride[dims - 1] as isize;
        let mut table = vec![0usize; lines * alpha * n];
        let mut zeros = Vec::new();
        for run in runs {
            let chan = run.image * g.in_channels * in_plane;
            let mut li = 0;
            for_each_index(&self.outer_alpha, |io| {
                let line = li;
                li += 1;
                let mut off = Some(chan as isize);
                for (a, &i) in io.iter().enumerate() {
                    let u =
                        (self.transforms[a].m * run.outer[a]) as isize + src.base[a] + i as isize;
                    let c = u * self.in_stride[a] as isize + src.comp[a] as isize;
                    off = off
                        .filter(|_| u >= 0 && c < self.in_shape[a] as isize)
                        .map(|o| o + c * self.in_pitch[a] as isize);
                }
                for j in 0..alpha {
                    let row = (line * alpha + j) * n + run.col;
                    for (k, t) in run.tiles.clone().enumerate() {
                        let u = (m * t) as isize + src.base[dims - 1] + j as isize;
                        let pos = u * s_last + src.comp[dims - 1] as isize;
                        match off {
                            Some(o) if u >= 0 && pos < l_in => {
                                table[row + k] = (o + pos) as usize - origin
                            }
                            _ => {
                                table[row + k] = chan;
                                zeros.push((line * alpha + j) * self.pitch + run.col + k);
                            }
                        }
                    }
                }
            });
        }
        (table, zeros)
    }

    /// `V[ξ][c0..c0 + cn][..]` (`v` starts at `V[0][c0]`; points `point_stride` apart)
    /// for input channels `c0..c0 + cn` (at most [`CHUNK`]) of one source over a task's
    /// phase: each tile's `α^D` inputs gathered through `table` ([`Self::gather_table`])
    /// into rows `(line, j)` of `cn · pitch` values (channel-major), then each point
    /// `(Bᵀ ⊗ … ⊗ Bᵀ) d` one loop over all `cn · pitch` values per four terms. Columns past
    /// `n` of `rows` must hold zeros (see [`Self::clear_columns`]).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn input_transform(
        &self,
        x: &[T],
        (c0, cn, plane): (usize, usize, usize),
        (table, zeros): (&[usize], &[usize]),
        n: usize,
        (v, point_stride): (&mut [T], usize),
        rows: &mut [T],
    ) {
        let alpha = self.transforms.last().expect("one axis at least").alpha;
        let lines = self.points / alpha;
        let pitch = self.pitch;
        let block = CHUNK * pitch;
        let len = cn * pitch;
        // d[line][j][cc][col]: the `α^D` inputs of each tile.
        let (d, _) = rows.split_at_mut(lines * alpha * block);
        for cc in 0..cn {
            let x = &x[(c0 + cc) * plane..];
            let rows = d.chunks_exact_mut(block).zip(table.chunks_exact(n));
            for (drow, trow) in rows {
                for (e, &i) in drow[cc * pitch..][..n].iter_mut().zip(trow) {
                    *e = x[i];
                }
            }
            for &z in zeros {
                d[(z / pitch) * block + cc * pitch + z % pitch] = T::zero();
            }
        }
        // V[ξ] = Σ (Bᵀ ⊗ … ⊗ Bᵀ)[ξ][(line, j)] · d[line][j].
        for (xi, terms) in self.in_terms.iter().enumerate() {
            let dst = &mut v[xi * point_stride..][..len];
            combine(dst, d, block, terms, false);
        }
    }

    /// Zero the columns `n..pitch` of every channel of every gathered row `(line, j)` of
    /// `rows` (the gather writes only the first `n`; the transforms run over whole rows).
    fn clear_columns(&self, n: usize, rows: &mut [T]) {
        let alpha = self.transforms.last().expect("one axis at least").alpha;
        let lines = self.points / alpha;
        for row in rows[..lines * alpha * CHUNK * self.pitch].chunks_exact_mut(self.pitch) {
            row[n..].fill(T::zero());
        }
    }

    /// Where the outputs of a task's phase go: segments `(index into the output
    /// transform's results, index into the image's plane band, count)`, each a run of
    /// tiles' outputs at one offset within the tile (consecutive results, stored
    /// `out_stride · m` apart along the last axis), and per run its image and range of
    /// segments. `band_start` is the band's first tile along axis 0.
    #[allow(clippy::type_complexity)]
    fn scatter_table(
        &self,
        g: &Geometry,
        p: &Phase,
        runs: &[Run],
        band_start: usize,
    ) -> (Vec<(usize, usize, usize)>, Vec<(usize, Range<usize>)>) {
        let dims = g.axes.len();
        let m = self.transforms[dims - 1].m;
        let pitch = self.pitch;
        let out_pitch = &self.out_pitch;
        // The plane slices start at output row s0·m0·band_start of axis 0.
        let origin = self.out_stride[0] * self.transforms[0].m * band_start * out_pitch[0];
        let (sl, rl, ql) = (
            self.out_stride[dims - 1],
            p.residue[dims - 1],
            p.extents[dims - 1],
        );
        let mut segments = Vec::new();
        let mut spans = Vec::new();
        for run in runs {
            let start = segments.len();
            let mut ao_flat = 0;
            for_each_index(&self.outer_m, |ao| {
                let line = ao_flat;
                ao_flat += 1;
                let mut base = 0usize;
                for a in 0..dims - 1 {
                    let q = self.transforms[a].m * run.outer[a] + ao[a];
                    if q >= p.extents[a] {
                        return;
                    }
                    base += (self.out_stride[a] * q + p.residue[a]) * out_pitch[a];
                }
                for aw in 0..m {
                    // The run's tiles whose output at `aw` lies inside the phase: a prefix.
                    let n = run.tiles.clone().filter(|&t| m * t + aw < ql).count();
                    if n > 0 {
                        let q = m * run.tiles.start + aw;
                        // At or after the band's start (axis 0's term is in `base`, or is
                        // the last axis's own).
                        let at = base + sl * q + rl - origin;
                        segments.push(((line * m + aw) * CHUNK * pitch + run.col, at, n));
                    }
                }
            });
            spans.push((run.image, start..segments.len()));
        }
        (segments, spans)
    }

    /// `y = Aᵀ M A + bias` for output channels `c0..c0 + cn` (at most [`CHUNK`]; `mres`
    /// starts at `M[0][c0]`, points `slice · pitch` apart), in `rows`:
    /// `y[(ao·m + aw)·CHUNK·pitch + cc·pitch + col]`, each step one loop over `cn · pitch`
    /// values.
    #[inline(always)]
    fn output_transform<'r>(
        &self,
        cn: usize,
        mres: &[T],
        bias: &[T],
        rows: &'r mut [T],
    ) -> &'r [T] {
        let pitch = self.pitch;
        let block = CHUNK * pitch;
        let len = cn * pitch;
        let stride = self.slice * pitch;
        // y[o] = bias + Σ (Aᵀ ⊗ … ⊗ Aᵀ)[o][ξ] · M[ξ].
        for (o, terms) in self.out_terms.iter().enumerate() {
            let dst = &mut rows[o * block..][..len];
            for (seg, &b) in dst.chunks_exact_mut(pitch).zip(bias) {
                seg.fill(b);
            }
            combine(dst, mres, stride, terms, true);
        }
        rows
    }

    /// The bias (or zeros) at every position of a phase no tap reaches, in the task's band.
    #[inline(always)]
    fn fill_bias(&self, g: &Geometry, p: &Phase, bias: Option<&[T]>, task: &mut Task<'_, T>) {
        let dims = g.axes.len();
        let out_pitch = &self.out_pitch;
        let m0 = self.transforms[0].m;
        let origin = self.out_stride[0] * m0 * task.band.start * out_pitch[0];
        let q_band =
            (m0 * task.band.start).min(p.extents[0])..(m0 * task.band.end).min(p.extents[0]);
        // Outer positions (axis 0 within the band), then a strided run along the last axis.
        let mut outer = p.extents[..dims - 1].to_vec();
        let last = if dims == 1 {
            q_band.clone()
        } else {
            outer[0] = q_band.len();
            0..p.extents[dims - 1]
        };
        if last.is_empty() || outer.contains(&0) {
            return; // none of the phase's positions in this band
        }
        let (sl, rl) = (self.out_stride[dims - 1], p.residue[dims - 1]);
        let cout_g = g.out_per_group();
        let group = task.group;
        let (first, n) = (task.channels.start, task.channels.len());
        for (k, plane) in task.planes.iter_mut().enumerate() {
            let b = bias.map_or(T::zero(), |b| b[group * cout_g + first + k % n]);
            for_each_index(&outer, |q| {
                let mut at = rl;
                for a in 0..dims - 1 {
                    let qa = if a == 0 { q[0] + q_band.start } else { q[a] };
                    at += (self.out_stride[a] * qa + p.residue[a]) * out_pitch[a];
                }
                // At or after the band's start (axis 0's term is in `at` or in the run).
                let first = at + sl * last.start - origin;
                for v in plane[first..].iter_mut().step_by(sl).take(last.len()) {
                    *v = b;
                }
            });
        }
    }
}

/// `plane[stride·q + r] = staged[r·per + q]` for a plane staged phase by phase
/// ([`Winograd::staged_layout`]), through `tmp` (at least the plane's length): an 8×8 transpose
/// of vectors for 8 phases of f32 with AVX, else element by element.
fn unstage_phases<T: Element>(plane: &mut [T], tmp: &mut [T], stride: usize) {
    let len = plane.len();
    let per = len / stride;
    assert!(
        per * stride == len && tmp.len() >= len,
        "unstage_phases lengths"
    );
    let tmp = &mut tmp[..len];
    tmp.copy_from_slice(plane);
    #[cfg(target_arch = "x86_64")]
    if stride == 8 && is_x86_feature_detected!("avx") {
        if let (Some(d), Some(t)) = (crate::fast::as_f32_mut(plane), crate::fast::as_f32(tmp)) {
            // Safety: AVX was detected; `d` holds 8·per values and `t` as many (checked).
            unsafe { unstage8_avx(d, t, per) };
            return;
        }
    }
    for (q, out) in plane.chunks_exact_mut(stride).enumerate() {
        for (r, o) in out.iter_mut().enumerate() {
            *o = tmp[r * per + q];
        }
    }
}

/// [`unstage_phases`] for 8 phases of f32: 8 positions of each phase per step.
///
/// # Safety
/// AVX available; `d.len() == t.len() == 8 · per`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn unstage8_avx(d: &mut [f32], t: &[f32], per: usize) {
    use std::arch::x86_64::*;
    let mut q = 0;
    while q + 8 <= per {
        let x: [__m256; 8] = std::array::from_fn(|r| _mm256_loadu_ps(t.as_ptr().add(r * per + q)));
        crate::fast::direct::store_block(d.as_mut_ptr().add(8 * q), x, false);
        q += 8;
    }
    for q in q..per {
        for r in 0..8 {
            d[8 * q + r] = t[r * per + q];
        }
    }
}

/// A band's outputs of one channel from its output transform's rows `y`: each segment
/// `(row offset in y, offset in the plane, n)` to `n` positions `step` apart. With step 2
/// (tiles 2 wide on an output of one phase: s1k3's, and the input gradients of the strided
/// layers), a tile's two columns are two segments one position apart, interleaved by vectors
/// (their element-by-element stores took about a seventh of s1k3's forward pass). With step
/// 4 (2-wide tiles of a stride-2 phase: dcgan1-3), the two columns are two positions apart,
/// and on AVX-512 (`avx512`) they go out four tiles at a time, interleaved in a register and
/// written with one masked store (element by element they took 10-18 % of dcgan2-3's forward
/// pass), on AVX2 (`avx2`) two tiles at a time by a load, blend and store. Either way the
/// same values to the same places as one by one.
fn scatter_outputs<T: Element>(
    plane: &mut [T],
    y: &[T],
    segments: &[(usize, usize, usize)],
    step: usize,
    (avx512, avx2): (bool, bool),
) {
    let mut i = 0;
    while i < segments.len() {
        let (yi, off, n) = segments[i];
        // Step 3 (3-wide tiles of a staged 1-D phase: hifigan1d's F(3, 2)): a tile's three
        // columns are three segments one position apart, interleaved by vectors on AVX-512.
        if step == 3 && avx512 && n >= 16 {
            // (The later columns may hold one tile fewer: the phase ends inside a tile.)
            let col = |d: usize| {
                segments
                    .get(i + d)
                    .filter(|&&(_, o, m)| o == off + d && m + 1 >= n && m <= n)
            };
            if let (Some(&(yb, _, nb)), Some(&(yc, _, nc))) = (col(1), col(2)) {
                let cols = [&y[yi..yi + nc], &y[yb..yb + nc], &y[yc..yc + nc]];
                if nc <= nb && interleave3(&mut plane[off..off + 3 * nc], cols) {
                    for (j, (yj, nj)) in [(yi, n), (yb, nb)].into_iter().enumerate() {
                        for k in nc..nj {
                            plane[off + 3 * k + j] = y[yj + k];
                        }
                    }
                    i += 3;
                    continue;
                }
            }
        }
        // A tile's other column: the next segment, half a step further.
        let pair = segments
            .get(i + 1)
            .filter(|&&(_, next, m)| m == n && next == off + step / 2);
        if let Some(&(yj, ..)) = pair {
            let (a, c) = (&y[yi..yi + n], &y[yj..yj + n]);
            // (Runs shorter than a vector stay element by element.)
            let stored = match step {
                2 => {
                    n >= 8
                        && crate::fast::direct::interleave2(
                            &mut plane[off..off + 2 * n],
                            a,
                            c,
                            None,
                        )
                }
                4 => avx2 && n >= 4 && store_pairs_2_apart(&mut plane[off..], a, c, avx512),
                _ => false,
            };
            if stored {
                i += 2;
                continue;
            }
        }
        for (d, &v) in plane[off..].iter_mut().step_by(step).zip(&y[yi..yi + n]) {
            *d = v;
        }
        i += 1;
    }
}

/// `dst[3k + j] = cols[j][k]` for every `k` (`dst` three times a column's length), with
/// AVX-512 for f32; `false` (nothing done) where that path does not apply.
fn interleave3<T: Element>(dst: &mut [T], cols: [&[T]; 3]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (Some(d), Some(a), Some(b), Some(c)) = (
        crate::fast::as_f32_mut(dst),
        crate::fast::as_f32(cols[0]),
        crate::fast::as_f32(cols[1]),
        crate::fast::as_f32(cols[2]),
    ) {
        if is_x86_feature_detected!("avx512f") {
            let n = a.len();
            assert!(
                b.len() == n && c.len() == n && d.len() == 3 * n,
                "interleave3 lengths"
            );
            // Safety: AVX-512F was detected; the lengths were checked above.
            unsafe { interleave3_avx512(d, [a, b, c]) };
            return true;
        }
    }
    let _ = (dst, cols);
    false
}

/// [`interleave3_avx512`]'s permutes: per output vector `v`, the indices of its `a` and `b`
/// lanes (from 16 for `b`), those of its `c` lanes, and which lanes are `c`'s. Output lane
/// `e` of vector `v` is value `g = 16v + e`: column `g % 3`, index `g / 3`.
#[cfg(target_arch = "x86_64")]
const INTERLEAVE3: ([[i32; 16]; 3], [[i32; 16]; 3], [u16; 3]) = {
    let (mut ab, mut cx, mut cmask) = ([[0i32; 16]; 3], [[0i32; 16]; 3], [0u16; 3]);
    let mut g = 0;
    while g < 48 {
        let (v, e, k) = (g / 16, g % 16, (g / 3) as i32);
        match g % 3 {
            0 => ab[v][e] = k,
            1 => ab[v][e] = 16 + k,
            _ => {
                cx[v][e] = k;
                cmask[v] |= 1 << e;
            }
        }
        g += 1;
    }
    (ab, cx, cmask)
};

/// [`interleave3`] on AVX-512: per 16 `k`, each of the three output vectors takes its
/// `a` and `b` lanes by one two-source permute and its `c` lanes by a masked permute
/// (hifigan1d's staged outputs element by element took 6 % of its forward pass, these 3 %:
/// 1.04x at 1 thread, 1.05x at 2, medians and minima of 4-5 paired rounds).
///
/// # Safety
/// AVX-512F available; `dst.len() == 3 · n` for columns of `n` values each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn interleave3_avx512(dst: &mut [f32], [a, b, c]: [&[f32]; 3]) {
    use std::arch::x86_64::*;
    let n = a.len();
    let (ab, cx, cmask) = INTERLEAVE3;
    let ab: [__m512i; 3] = std::array::from_fn(|v| _mm512_loadu_si512(ab[v].as_ptr().cast()));
    let cx: [__m512i; 3] = std::array::from_fn(|v| _mm512_loadu_si512(cx[v].as_ptr().cast()));
    let mut k = 0;
    while k + 16 <= n {
        let av = _mm512_loadu_ps(a.as_ptr().add(k));
        let bv = _mm512_loadu_ps(b.as_ptr().add(k));
        let cv = _mm512_loadu_ps(c.as_ptr().add(k));
        for v in 0..3 {
            let t = _mm512_permutex2var_ps(av, ab[v], bv);
            let o = _mm512_mask_permutexvar_ps(t, cmask[v], cx[v], cv);
            _mm512_storeu_ps(dst.as_mut_ptr().add(3 * k + 16 * v), o);
        }
        k += 16;
    }
    for j in k..n {
        dst[3 * j] = a[j];
        dst[3 * j + 1] = b[j];
        dst[3 * j + 2] = c[j];
    }
}

/// `dst[4k] = a[k]`, `dst[4k + 2] = c[k]` for every `k`, leaving the other positions as they
/// are, with AVX-512 for f32 where `avx512` (four `k` a masked store), else with AVX2 (two
/// `k` a load, blend and store of 8 values); `false` (nothing done) where that path does
/// not apply. `dst` must hold position `4·(len - 1) + 2`.
#[inline(always)]
fn store_pairs_2_apart<T: Element>(dst: &mut [T], a: &[T], c: &[T], avx512: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (Some(d), Some(a), Some(c)) = (
        crate::fast::as_f32_mut(dst),
        crate::fast::as_f32(a),
        crate::fast::as_f32(c),
    ) {
        let n = a.len();
        assert!(
            c.len() == n && (n == 0 || d.len() > 4 * (n - 1) + 2),
            "store_pairs_2_apart lengths"
        );
        if avx512 && is_x86_feature_detected!("avx512f") {
            // Safety: AVX-512F was detected; the lengths were checked above.
            unsafe { store_pairs_2_apart_avx512(d, a, c) };
            return true;
        }
        if is_x86_feature_detected!("avx2") {
            // Safety: AVX2 was detected; the lengths were checked above.
            unsafe { store_pairs_2_apart_avx2(d, a, c) };
            return true;
        }
    }
    let _ = (dst, a, c, avx512);
    false
}

/// [`store_pairs_2_apart`] on AVX2: per two `k`, the 8 positions from `4k` loaded, the
/// even ones replaced by `a[k], c[k], a[k + 1], c[k + 1]` (one permute of both pairs, one
/// blend) and stored back (element by element, dcgan3's outputs took 11 % of its forward
/// pass on AVX2).
///
/// # Safety
/// AVX2 available; `c.len() == a.len()` and `dst` holds position `4·(a.len() − 1) + 2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn store_pairs_2_apart_avx2(dst: &mut [f32], a: &[f32], c: &[f32]) {
    use std::arch::x86_64::*;
    let n = a.len();
    // Lanes 0, 2, 4, 6 take a[k], c[k], a[k + 1], c[k + 1] of [a[k..k + 4], c[k..k + 4]].
    let lo = _mm256_setr_epi32(0, 0, 4, 4, 1, 1, 5, 5);
    let hi = _mm256_setr_epi32(2, 2, 6, 6, 3, 3, 7, 7);
    let mut k = 0;
    // Whole vectors only where all 16 positions lie in `dst`.
    while k + 4 <= n && 4 * k + 16 <= dst.len() {
        let ac = _mm256_set_m128(
            _mm_loadu_ps(c.as_ptr().add(k)),
            _mm_loadu_ps(a.as_ptr().add(k)),
        );
        let p = dst.as_mut_ptr().add(4 * k);
        for (h, idx) in [lo, hi].into_iter().enumerate() {
            let old = _mm256_loadu_ps(p.add(8 * h));
            let new = _mm256_permutevar8x32_ps(ac, idx);
            _mm256_storeu_ps(p.add(8 * h), _mm256_blend_ps::<0b0101_0101>(old, new));
        }
        k += 4;
    }
    for j in k..n {
        dst[4 * j] = a[j];
        dst[4 * j + 2] = c[j];
    }
}

/// # Safety
/// AVX-512F available; `c.len() == a.len()` and `dst` holds position `4·(a.len() − 1) + 2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_pairs_2_apart_avx512(dst: &mut [f32], a: &[f32], c: &[f32]) {
    use std::arch::x86_64::*;
    let n = a.len();
    // Lanes 4j and 4j + 2 take a[j] and c[j] (indices of c from 16); the odd lanes are
    // masked off.
    let idx = _mm512_setr_epi32(0, 0, 16, 0, 1, 0, 17, 0, 2, 0, 18, 0, 3, 0, 19, 0);
    let mask: __mmask16 = 0b0101_0101_0101_0101;
    let mut k = 0;
    // Whole vectors only where all 16 positions lie in `dst`.
    while k + 4 <= n && 4 * k + 16 <= dst.len() {
        let av = _mm512_castps128_ps512(_mm_loadu_ps(a.as_ptr().add(k)));
        let cv = _mm512_castps128_ps512(_mm_loadu_ps(c.as_ptr().add(k)));
        let v = _mm512_permutex2var_ps(av, idx, cv);
        _mm512_mask_storeu_ps(dst.as_mut_ptr().add(4 * k), mask, v);
        k += 4;
    }
    for j in k..n {
        dst[4 * j] = a[j];
        dst[4 * j + 2] = c[j];
    }
}

/// A run of tiles along the last axis: GEMM columns `col..col + tiles.len()`.
struct Run {
    /// Image within the task.
    image: usize,
    /// Tile index on every axis but the last.
    outer: [usize; MAX_DIMS],
    /// Tiles along the last axis.
    tiles: Range<usize>,
    col: usize,
}

/// Most bytes a plan's distinct Winograd tables may take ([`Winograd::build_tables`]), a
/// bound on the plan's memory: the suite's layers take 26-72 KB, a 1024×1024 image of 64
/// channels (F(2x2,3x3)) 363 KB, its 512 bands sharing three kinds; a single row of some
/// 35 000 tiles passes it, and its tasks build their tables as they run. (Measured before
/// the AVX-512 gather tables took one 128-byte entry per block input, 2026-12-08: by
/// `tconv plan`'s packed bytes, dcgan3's plan 7.4 KB more, s1k3's 6.4 KB, the 1024×1024
/// layer's 39.6 KB.)
const MAX_TABLE_BYTES: usize = 4 << 20;

/// The tables of one kind of task (its band of tile rows, from `band`, and its `images`),
/// built once with the plan: per phase, `None` where it has no tiles there (or no taps).
pub(crate) struct TaskTables {
    /// The band's first tile row and tile rows, and whether it is interior
    /// ([`Winograd::interior`]).
    band: usize,
    rows: usize,
    interior: bool,
    images: usize,
    /// Where the gather indices count from, past the task's first input
    /// ([`Winograd::band_origin`]).
    origin: usize,
    /// Shared by the bands whose tables are equal.
    phases: std::sync::Arc<Vec<Option<PhaseTables>>>,
}

impl TaskTables {
    /// Bytes held by `tables`, each shared table counted once.
    pub(super) fn distinct_bytes(tables: &[TaskTables]) -> usize {
        let mut seen: Vec<*const Vec<Option<PhaseTables>>> = Vec::new();
        let mut bytes = 0;
        for t in tables {
            let at = std::sync::Arc::as_ptr(&t.phases);
            if !seen.contains(&at) {
                seen.push(at);
                bytes += t.bytes();
            }
        }
        bytes
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        let word = std::mem::size_of::<usize>();
        self.phases
            .iter()
            .flatten()
            .map(|t| {
                let sources: usize = t
                    .sources
                    .iter()
                    .map(|s| {
                        (s.table.len() + s.zeros.len()) * word
                            + s.gathered.as_ref().map_or(0, GatherPlan::bytes)
                    })
                    .sum();
                sources + t.scatter.len() * 3 * word + t.spans.len() * 3 * word
            })
            .sum()
    }
}

/// A phase's tables in one kind of task: its GEMM columns (tiles), per source the gather
/// table from the band's origin ([`Winograd::gather_table`]) and, for the
/// transform straight from the input, its blocks, and where the outputs go
/// ([`Winograd::scatter_table`], staged where the plan stages).
#[derive(PartialEq)]
struct PhaseTables {
    n_cols: usize,
    sources: Vec<SourceTables>,
    scatter: Vec<(usize, usize, usize)>,
    spans: Vec<(usize, Range<usize>)>,
}

/// One source's gather table, its padding entries, and its blocks for
/// [`winograd_input::transform_gathered`] where that applies.
#[derive(PartialEq)]
struct SourceTables {
    table: Vec<usize>,
    zeros: Vec<usize>,
    gathered: Option<GatherPlan>,
}

#[cfg(test)]
mod tests {
    use crate::params::{ConvParams, Op};
    use crate::plan::{Algorithm, Plan, PlanOptions};
    use ndarray::{ArrayD, IxDyn};

    /// Small integers of `shape` ([`crate::tensor::small_ints`]): the tiles' results are
    /// exact.
    fn ints(shape: &[usize], seed: u64) -> ArrayD<f32> {
        let v = crate::tensor::small_ints(shape.iter().product(), seed);
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("the shape's length")
    }

    /// Tall layers of many bands of tile rows, each kind of Winograd plan (stride 1, a
    /// stride-2 transposed conv's phases, bias-only phases of a dilation, a strided conv's
    /// polyphase sources, 1-D and 3-D, a batch whose last chunk is short, padding that
    /// crops): every task's tables as kept are the ones built for its own band (the
    /// interior bands' shared unbuilt, the others compared), the interior ones shared, and
    /// the plan's results those of the reference on small integers, whatever the threads.
    #[test]
    fn bands_share_tables_equal_to_their_own() {
        let cases: Vec<(Vec<usize>, Vec<usize>, ConvParams, Op)> = vec![
            (
                vec![1, 16, 151, 12],
                vec![16, 16, 3, 3],
                ConvParams::new().padding(&[1]),
                Op::ConvTranspose,
            ),
            (
                vec![2, 16, 401, 24],
                vec![16, 16, 4, 4],
                ConvParams::new().stride(&[2]).padding(&[1]),
                Op::ConvTranspose,
            ),
            (
                vec![1, 16, 200, 17],
                vec![16, 16, 3, 3],
                ConvParams::new()
                    .stride(&[2])
                    .padding(&[2])
                    .dilation(&[2])
                    .output_padding(&[1]),
                Op::ConvTranspose,
            ),
            (
                vec![1, 16, 301, 20],
                vec![16, 16, 4, 4],
                ConvParams::new().stride(&[2]).pads(&[2, 1], &[0, 1]),
                Op::Conv,
            ),
            (
                vec![2, 16, 20000],
                vec![16, 16, 16],
                ConvParams::new().stride(&[8]).padding(&[4]),
                Op::ConvTranspose,
            ),
            (
                vec![1, 16, 40, 8, 8],
                vec![16, 16, 3, 3, 3],
                ConvParams::new().padding(&[1]),
                Op::ConvTranspose,
            ),
        ];
        for (xs, ws, p, op) in cases {
            let (x, w) = (ints(&xs, 1), ints(&ws, 2));
            let mut outs = Vec::new();
            for threads in [1, 2] {
                let o = PlanOptions {
                    threads: Some(threads),
                    algorithm: Some(Algorithm::Winograd),
                    ..PlanOptions::default()
                };
                let plan = Plan::new(op, &xs, &w, None, &p, &o).unwrap();
                let wg = plan.winograd_part().expect("Winograd tiles");
                let g = plan.geometry();
                let bands = wg.bands(g);
                assert!(bands.len() >= 4, "{xs:?}: {} bands", bands.len());
                let kinds = if g.batch.is_multiple_of(wg.batch_chunk.min(g.batch)) {
                    1
                } else {
                    2
                };
                assert_eq!(wg.tables.len(), bands.len() * kinds, "{xs:?}");
                let mut distinct: Vec<*const Vec<Option<super::PhaseTables>>> = Vec::new();
                for t in &wg.tables {
                    let own = wg.task_tables(g, t.band..t.band + t.rows, t.images);
                    assert!(own.phases == t.phases && own.origin == t.origin, "{xs:?}");
                    let at = std::sync::Arc::as_ptr(&t.phases);
                    if !distinct.contains(&at) {
                        distinct.push(at);
                    }
                }
                assert!(
                    distinct.len() <= 3 * kinds && distinct.len() < wg.tables.len(),
                    "{xs:?}: {} distinct tables of {}",
                    distinct.len(),
                    wg.tables.len()
                );
                outs.push(plan.execute(&x, None).unwrap());
            }
            let want = match op {
                Op::ConvTranspose => crate::reference::conv_transpose_scatter(&x, &w, None, &p),
                Op::Conv => crate::reference::conv_gather(&x, &w, None, &p),
            }
            .unwrap();
            for o in &outs {
                assert!(o == want, "{op:?} {xs:?}: not the reference's");
            }
        }
    }

    /// A layer whose tables would pass `MAX_TABLE_BYTES` (one band of 35 000 tiles) keeps
    /// none, its tasks building theirs as they run, with the reference's results.
    #[test]
    fn tables_past_the_bound_are_built_as_tasks_run() {
        let (xs, ws) = (vec![1, 8, 2, 70000], vec![8, 8, 3, 3]);
        let p = ConvParams::new().padding(&[1]);
        let (x, w) = (ints(&xs, 1), ints(&ws, 2));
        let o = PlanOptions {
            threads: Some(2),
            algorithm: Some(Algorithm::Winograd),
            ..PlanOptions::default()
        };
        let plan = Plan::new(Op::ConvTranspose, &xs, &w, None, &p, &o).unwrap();
        let wg = plan.winograd_part().expect("Winograd tiles");
        assert!(wg.tables.is_empty(), "{} kinds kept", wg.tables.len());
        let want = crate::reference::conv_transpose_scatter(&x, &w, None, &p).unwrap();
        assert!(plan.execute(&x, None).unwrap() == want);
    }
}
