//! One GEMM over the batch, for layers whose small side has a single position per image: a
//! transposed convolution of a `1×…×1` input (a GAN generator's projection of its latent
//! vector, `100 → 512` channels, `1×1 → 4×4`) and a convolution to a `1×…×1` output (a
//! discriminator's last layer; that projection's input gradient).
//!
//! The other engines run a GEMM per image over its positions: with one position a register
//! tile fills one lane in 16, and the phase decomposition's padded input makes most of its
//! products multiplications by zero (15 in 16 for the projection, whose direct plan ran
//! 15.7-24 ms against PyTorch's 3.5-4.9 at 1 thread). With the small side of one position,
//! the big side's position `b = t·d - pad` of each tap `t` is fixed, so the layer is one
//! dense product over the batch:
//!
//! - conv_transpose: `y[n][(co, b(t))] = Σ_ci x[n][ci] · w[ci][co][t]`, `K = C_in/g`
//!   over columns `(co, t)` (the weight's own rows);
//! - conv: `y[n][co] = Σ_(ci, t) x[n][ci][b(t)] · w[co][ci][t]`, `K = C_in/g · taps` over
//!   columns `co`.
//!
//! Taps whose `b(t)` falls outside the big side (a conv's padding, a transposed conv's
//! cropped border) are left out of the GEMM: pix2pix's `1×1 → 2×2` layer keeps 4 of its 16.
//!
//! The register tile's rows are images (their inputs packed per call as `[k][mr]`, one
//! reduction block at a time), its vectors the columns (the weight packed once per plan as
//! panels `[k][V·LANES]`). Where the columns are fewer than a vector's lanes (a
//! discriminator's last conv has one), each output is instead a [dot product](dots) of the
//! image's inputs, read in place, with its column's weights (packed once as
//! `[column][k]`). The reduction runs in blocks of 256 rows (each tile accumulating block
//! after block in a fixed order), tasks own whole images, and each output element is one
//! tile's sum plus its bias: results are bitwise identical for any thread count. Output
//! positions no tap reaches (output_padding, dilation gaps) hold the bias.

use super::direct::run_chunks;
use super::kernels::{KernelFn, Rows};
use super::scratch;
use crate::geometry::Geometry;
use crate::params::Op;
use crate::tensor::{numel, Element};

/// Reduction rows per block: a block of the weight's panel (`KC × V·LANES`, 64 KiB on
/// AVX-512's 6×4) stays in L2 while every row block of the task's images runs over it, and
/// a task packs its images' inputs one block at a time (every panel's results kept between
/// blocks): the projection's input gradient (a conv of 64 images of 512 × 4×4 to 100
/// channels) held 525 KB of packed inputs at 1 thread for a 25.6 KB output, now 23.5 KB,
/// the same bits, 1.02-1.03x slower at 1 thread (minima of 30 runs, 3 alternating rounds).
const KC: usize = 256;

/// Bytes of inputs a task's images aim at (their whole reductions; at least one row block
/// of images): how many images a task takes.
const TASK_BYTES: usize = 256 * 1024;

/// Whether the batch GEMM serves `g`: every axis of its small side (a conv's output, a
/// transposed conv's input) has one position.
pub fn applies(g: &Geometry) -> bool {
    g.axes.iter().all(|a| a.small(g.op) == 1)
}

/// The GEMM's reduction length and columns per group for `g` (one that [`applies`]): a
/// transposed conv's `C_in/g` over `C_out/g` times the taps that reach its output, a conv's
/// `C_in/g` times the taps that reach its input over `C_out/g`.
pub fn shape(g: &Geometry) -> (usize, usize) {
    let taps = big_positions(g).1.iter().filter(|a| a.is_some()).count();
    match g.op {
        Op::ConvTranspose => (g.in_per_group(), g.out_per_group() * taps),
        Op::Conv => (g.in_per_group() * taps, g.out_per_group()),
    }
}

/// Whether the batch GEMM of `g` (one that [`applies`]) on `lanes`-wide vectors takes dot
/// products instead of register tiles: where its columns are fewer than the lanes. A
/// vector of columns was then mostly empty, and packing the inputs for it took most of the
/// time: DCGAN's discriminator's last conv (512 channels of 4×4 to 1, batch 64: 2 MB of
/// inputs, one column) ran 0.42-0.46 ms at 1 thread on a 16×1 tile.
pub fn dots(g: &Geometry, lanes: usize) -> bool {
    shape(g).1 < lanes
}

/// A layer whose small side has one position per image, as one GEMM over the batch.
pub struct BatchGemm<T> {
    kernel: KernelFn<T>,
    /// Rows of the register tile (images).
    pub mr: usize,
    /// Vectors of the register tile.
    pub v: usize,
    /// Lanes per vector.
    pub lanes: usize,
    /// Reduction length per group: `C_in/g` (conv_transpose) or `C_in/g` times the taps
    /// that reach the input (conv).
    pub kdim: usize,
    /// GEMM columns per group: `C_out/g` times the taps that reach the output
    /// (conv_transpose) or `C_out/g` (conv).
    pub cols: usize,
    /// Whether each output is a dot product instead ([`dots`]).
    pub dots: bool,
    /// Column panels per group.
    panels: usize,
    /// The weight packed as `[group][panel][k][V·LANES]`, zero past the columns, or for
    /// dot products as `[group][column][k]`.
    packed: Vec<T>,
    /// Per column: its output's offset in the image's block of the group's channels.
    out_at: Vec<usize>,
    /// Per column: its output channel within the group.
    channel: Vec<usize>,
    /// Whether column `j` writes offset `j` for every column (no crop, no gaps): then each
    /// row of a tile is stored as one contiguous run (DCGAN's projection, batch 64, 1
    /// thread: 1.02 ms against 1.47 through `out_at`, 6 alternating rounds).
    identity: bool,
    /// Whether every output position is written by a column (else the outputs are first
    /// filled with the bias).
    covered: bool,
    /// conv: per reduction row, its input's offset in the image's block of the group's
    /// channels.
    in_at: Vec<usize>,
    /// Images per task (whole row blocks).
    images: usize,
    /// Values of an input image, and of one group's channels in it.
    in_image: usize,
    group_in: usize,
    /// Whether an image's reduction rows are one run of its inputs (a transposed conv's
    /// channels; a conv's where every tap reaches them): its dot products then read them
    /// as such.
    in_run: bool,
}

/// Which side of `g` is the small one (of one position per image), in words.
pub fn small_side(g: &Geometry) -> &'static str {
    match g.op {
        Op::ConvTranspose => "input",
        Op::Conv => "output",
    }
}

/// The positions of the big side (a transposed conv's output, a conv's input) per image,
/// and per flat tap of `g`'s kernel the flat position `b(t) = t·d - pad_begin` it reaches
/// there (row-major), or `None` where that falls outside it.
fn big_positions(g: &Geometry) -> (usize, Vec<Option<usize>>) {
    let shape = match g.op {
        Op::ConvTranspose => g.output_shape(),
        Op::Conv => g.input_shape(),
    };
    let extents = &shape[2..];
    let kshape = g.kernel_shape();
    let mut out = Vec::with_capacity(numel(&kshape));
    crate::tensor::for_each_index(&kshape, |t| {
        let mut at = 0usize;
        let mut inside = true;
        for ((a, &ti), &e) in g.axes.iter().zip(t).zip(extents) {
            let b = ti as i64 * a.dilation as i64 - a.pad_begin;
            if b < 0 || b >= e as i64 {
                inside = false;
            }
            at = at * e + b.max(0) as usize;
        }
        out.push(inside.then_some(at));
    });
    (numel(extents), out)
}

impl<T: Element> BatchGemm<T> {
    /// Plan `g` (one that [`applies`]) with weight `w` for `kernel`, an `mr × v` tile of
    /// `lanes`-wide vectors (unused where it takes [`dots`]), with tasks for `threads`
    /// threads.
    pub fn new(
        g: &Geometry,
        w: &[T],
        kernel: KernelFn<T>,
        (mr, v, lanes): (usize, usize, usize),
        threads: usize,
    ) -> BatchGemm<T> {
        let ksize = numel(&g.kernel_shape());
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let (plane, at) = big_positions(g);
        // The (channel, tap) pairs whose tap reaches the big side, as (index in the
        // weight's row, offset in the image's block of the group's channels): a transposed
        // conv's columns, a conv's reduction rows. The others would only multiply padding
        // (or be cropped): pix2pix's 1x1 -> 2x2 layer keeps 4 of its 16 taps.
        let reach = |channels: usize| -> Vec<(usize, usize)> {
            (0..channels)
                .flat_map(|c| {
                    let at = &at;
                    (0..ksize).filter_map(move |t| at[t].map(|b| (c * ksize + t, c * plane + b)))
                })
                .collect()
        };
        let (live, kdim, cols, row_len) = match g.op {
            Op::ConvTranspose => {
                let live = reach(cout_g);
                let cols = live.len();
                (live, cin_g, cols, cout_g * ksize)
            }
            Op::Conv => {
                let live = reach(cin_g);
                let kdim = live.len();
                (live, kdim, cout_g, cin_g * ksize)
            }
        };
        let dots = dots(g, lanes);
        // Dot products: each column a panel of one, its weights `[k]`.
        let width = if dots { 1 } else { v * lanes };
        let panels = cols.div_ceil(width);
        let mut packed = vec![T::zero(); g.groups * panels * kdim * width];
        for (unit, run) in packed.chunks_mut((kdim * width).max(1)).enumerate() {
            let (group, p) = (unit / panels.max(1), unit % panels.max(1));
            let (n, j0) = (width.min(cols - p * width), p * width);
            match g.op {
                // w[ci][co][t]: the row of ci holds the columns (co, t).
                Op::ConvTranspose => {
                    for (k, dst) in run.chunks_mut(width).enumerate().take(kdim) {
                        let row = &w[(group * cin_g + k) * row_len..][..row_len];
                        for (d, &(j, _)) in dst[..n].iter_mut().zip(&live[j0..j0 + n]) {
                            *d = row[j];
                        }
                    }
                }
                // w[co][ci][t]: the row of co holds the reduction (ci, t); transposed 16
                // reduction rows at a time (a column at a time read values a row apart).
                Op::Conv => {
                    for k0 in (0..kdim).step_by(16) {
                        let kl = 16.min(kdim - k0);
                        for c in 0..n {
                            let row = &w[(group * cout_g + j0 + c) * row_len..][..row_len];
                            for (i, &(k, _)) in live[k0..k0 + kl].iter().enumerate() {
                                run[(k0 + i) * width + c] = row[k];
                            }
                        }
                    }
                }
            }
        }
        let (out_at, channel, in_at): (Vec<usize>, Vec<usize>, Vec<usize>) = match g.op {
            Op::ConvTranspose => {
                let out_at = live.iter().map(|&(_, o)| o).collect();
                let channel = live.iter().map(|&(j, _)| j / ksize).collect();
                (out_at, channel, Vec::new())
            }
            Op::Conv => {
                let in_at = live.iter().map(|&(_, i)| i).collect();
                ((0..cols).collect(), (0..cols).collect(), in_at)
            }
        };
        let identity = out_at.iter().enumerate().all(|(j, &o)| o == j);
        let in_run = g.op == Op::ConvTranspose || in_at.iter().enumerate().all(|(k, &i)| i == k);
        let reached = at.iter().filter(|a| a.is_some()).count();
        let covered = match g.op {
            Op::ConvTranspose => reached == plane,
            Op::Conv => true,
        };
        let elem = std::mem::size_of::<T>();
        let row_blocks = g.batch.div_ceil(mr).max(1);
        let by_bytes = (TASK_BYTES / (kdim * mr * elem).max(1)).max(1);
        let by_threads = row_blocks.div_ceil(threads.max(1));
        let images = mr * by_bytes.min(by_threads).max(1);
        BatchGemm {
            kernel,
            mr,
            v,
            lanes,
            kdim,
            cols,
            dots,
            panels,
            packed,
            out_at,
            channel,
            identity,
            covered,
            in_at,
            images,
            in_image: g.in_channels * numel(&g.input_shape()[2..]),
            group_in: cin_g * numel(&g.input_shape()[2..]),
            in_run,
        }
    }

    fn width(&self) -> usize {
        if self.dots {
            1
        } else {
            self.v * self.lanes
        }
    }

    /// Elements of scratch one task allocates: one reduction block of its images' packed
    /// inputs and one panel's results for them, or every panel's where the reduction takes
    /// several blocks (none for dot products).
    pub fn scratch_len(&self) -> usize {
        if self.dots {
            return 0;
        }
        let slots = if self.kdim > KC { self.panels } else { 1 };
        self.images * (KC.min(self.kdim) + slots * self.width())
    }

    /// Bytes of the packed weight.
    pub fn packed_bytes(&self) -> usize {
        self.packed.len() * std::mem::size_of::<T>()
    }

    /// Run on `x (N, C_in, *in)` into `y (N, C_out, *out)` (every element written), adding
    /// `bias`.
    pub fn execute(&self, g: &Geometry, x: &[T], bias: Option<&[T]>, y: &mut [T], threads: usize) {
        let out_image = g.out_channels * numel(&g.output_shape()[2..]);
        if out_image == 0 || g.batch == 0 {
            return;
        }
        run_chunks(threads, y, self.images * out_image, |task, y| {
            self.run_task(g, x, bias, task * self.images, y);
        });
    }

    /// The images from `first` whose outputs are `y` (whole images).
    fn run_task(&self, g: &Geometry, x: &[T], bias: Option<&[T]>, first: usize, y: &mut [T]) {
        let out_plane = numel(&g.output_shape()[2..]);
        let out_image = g.out_channels * out_plane;
        let (in_image, group_in) = (self.in_image, self.group_in);
        let images = y.len() / out_image;
        let cout_g = g.out_per_group();
        let (mr, width, kdim) = (self.mr, self.width(), self.kdim);
        let blocks = images.div_ceil(mr);
        let bias_of = |group: usize, c: usize| bias.map_or(T::zero(), |b| b[group * cout_g + c]);
        if !self.covered || kdim == 0 {
            // Outputs no column writes (all of them, without a reduction): the bias.
            for yi in y.chunks_mut(out_image) {
                for (co, plane) in yi.chunks_mut(out_plane).enumerate() {
                    plane.fill(bias.map_or(T::zero(), |b| b[co]));
                }
            }
            if kdim == 0 {
                return;
            }
        }
        if self.dots {
            for (n, yi) in y.chunks_mut(out_image).enumerate() {
                for group in 0..g.groups {
                    let xi = &x[(first + n) * in_image + group * group_in..][..group_in];
                    let base = group * cout_g * out_plane;
                    for j in 0..self.cols {
                        let wj = &self.packed[(group * self.cols + j) * kdim..][..kdim];
                        let sum = if self.in_run {
                            dot(&xi[..kdim], wj)
                        } else {
                            dot_gathered(xi, &self.in_at, wj)
                        };
                        yi[base + self.out_at[j]] = sum + bias_of(group, self.channel[j]);
                    }
                }
            }
            return;
        }
        // `a[block][k][mr]`: the images' inputs of one reduction block, zero past the last
        // image.
        let kc = KC.min(kdim);
        let mut a = scratch::take::<T>(blocks * kc * mr);
        // `tiles[slot][block][mr][width]`: a panel's results, each panel its own slot where
        // the reduction takes several blocks (they accumulate block after block).
        let slots = if kdim > KC { self.panels } else { 1 };
        let mut tiles = scratch::take::<T>(slots * blocks * mr * width);
        for group in 0..g.groups {
            for k0 in (0..kdim).step_by(KC) {
                let kl = KC.min(kdim - k0);
                self.pack_block(x, (first, images, group), (k0, kl), &mut a);
                for p in 0..self.panels {
                    let panel =
                        &self.packed[(group * self.panels + p) * kdim * width..][..kdim * width];
                    let slot =
                        &mut tiles[(p % slots) * blocks * mr * width..][..blocks * mr * width];
                    for b in 0..blocks {
                        let ab = &a[b * kc * mr..][..kl * mr];
                        let out = &mut slot[b * mr * width..][..mr * width];
                        (self.kernel)(
                            ab,
                            &panel[k0 * width..][..kl * width],
                            Rows::packed(kl, width),
                            out.into(),
                            k0 > 0,
                        );
                    }
                    if k0 + kl == kdim {
                        self.store_panel(g, (group, p), slot, bias, y);
                    }
                }
            }
        }
    }

    /// Pack reduction rows `k0..k0 + kl` of the task's `images` images from `first` (of
    /// `group`) into `a[block][k - k0][mr]`, zero past the last image; transposed 16 rows
    /// at a time: a 16 × mr block of `a` stays in L1 while each image's 16 inputs are read
    /// (a row of `a` at a time wrote a cache line per value).
    fn pack_block(
        &self,
        x: &[T],
        (first, images, group): (usize, usize, usize),
        (k0, kl): (usize, usize),
        a: &mut [T],
    ) {
        let (g_in, in_image, mr) = (self.group_in, self.in_image, self.mr);
        let kc = KC.min(self.kdim);
        for (b, run) in a.chunks_mut(kc * mr).enumerate() {
            for j0 in (0..kl).step_by(16) {
                let jl = 16.min(kl - j0);
                for r in 0..mr {
                    let n = b * mr + r;
                    if n >= images {
                        for j in j0..j0 + jl {
                            run[j * mr + r] = T::zero();
                        }
                        continue;
                    }
                    let xi = &x[(first + n) * in_image + group * g_in..][..g_in];
                    let ks = k0 + j0..k0 + j0 + jl;
                    if self.in_run {
                        for (j, &v) in (j0..j0 + jl).zip(&xi[ks]) {
                            run[j * mr + r] = v;
                        }
                    } else {
                        for (j, &i) in (j0..j0 + jl).zip(&self.in_at[ks]) {
                            run[j * mr + r] = xi[i];
                        }
                    }
                }
            }
        }
    }

    /// Store panel `p`'s results (`tiles[block][mr][width]`) of `group` into the task's
    /// outputs `y`, with the bias.
    fn store_panel(
        &self,
        g: &Geometry,
        (group, p): (usize, usize),
        tiles: &[T],
        bias: Option<&[T]>,
        y: &mut [T],
    ) {
        let out_plane = numel(&g.output_shape()[2..]);
        let out_image = g.out_channels * out_plane;
        let cout_g = g.out_per_group();
        let bias_of = |c: usize| bias.map_or(T::zero(), |b| b[group * cout_g + c]);
        let width = self.width();
        let j0 = p * width;
        let live = width.min(self.cols - j0);
        let base = group * cout_g * out_plane;
        for (n, yi) in y.chunks_mut(out_image).enumerate() {
            let t = &tiles[n * width..][..live];
            if self.identity {
                let dst = &mut yi[base + j0..][..live];
                for (c, (d, &s)) in dst.iter_mut().zip(t).enumerate() {
                    *d = s + bias_of(self.channel[j0 + c]);
                }
            } else {
                for (c, &s) in t.iter().enumerate() {
                    let o = self.out_at[j0 + c];
                    yi[base + o] = s + bias_of(self.channel[j0 + c]);
                }
            }
        }
    }
}

/// Lanes of [`dot`]'s partial sums.
const DOT_LANES: usize = 16;

/// `Σ a[k] · b[k]` in [`DOT_LANES`] partial sums (element `k` into sum `k mod 16`), added
/// in a fixed order: the same bits on every call.
fn dot<T: Element>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); DOT_LANES];
    let whole = a.len() / DOT_LANES * DOT_LANES;
    for (x, y) in a[..whole]
        .chunks_exact(DOT_LANES)
        .zip(b[..whole].chunks_exact(DOT_LANES))
    {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s = *s + x * y;
        }
    }
    for ((s, &x), &y) in acc.iter_mut().zip(&a[whole..]).zip(&b[whole..]) {
        *s = *s + x * y;
    }
    sum_lanes(acc)
}

/// [`dot`] of `x` at the offsets `at` with `b`.
fn dot_gathered<T: Element>(x: &[T], at: &[usize], b: &[T]) -> T {
    let mut acc = [T::zero(); DOT_LANES];
    for (k, (&i, &y)) in at.iter().zip(b).enumerate() {
        acc[k % DOT_LANES] = acc[k % DOT_LANES] + x[i] * y;
    }
    sum_lanes(acc)
}

/// The partial sums added pairwise, in a fixed order.
fn sum_lanes<T: Element>(mut acc: [T; DOT_LANES]) -> T {
    let mut n = DOT_LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            acc[i] = acc[i] + acc[i + n];
        }
    }
    acc[0]
}
