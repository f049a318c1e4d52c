//! Packing: weights once per plan into the order the kernels stream them, and (only where
//! the decomposition needs it) the input into a padded or polyphase buffer.

use super::spec::{DirectSpec, SourceLayout};
use crate::geometry::Geometry;
use crate::params::Op;
use crate::tensor::{for_each_index, numel, Element};

/// Weights packed as `[group][co_block][phase][tap][ci][MR]`, zero-filled past `C_out/g`.
#[derive(Clone, Debug)]
pub struct PackedWeights<T> {
    /// The packed values.
    pub data: Vec<T>,
    /// Output channels per block (the kernel's register rows).
    pub mr: usize,
    /// Blocks per group.
    pub blocks: usize,
    /// Start of each `(group, block, phase)` run.
    offsets: Vec<usize>,
    phases: usize,
}

impl<T> PackedWeights<T> {
    /// The packed run for one group, block and phase: `taps * C_in/g * mr` values.
    pub fn run(&self, group: usize, block: usize, phase: usize) -> &[T] {
        let i = (group * self.blocks + block) * self.phases + phase;
        &self.data[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// Pack `w` (PyTorch layout for `g.op`) for the phases of `spec`, on `threads` threads.
pub fn pack_weights<T: Element>(
    g: &Geometry,
    spec: &DirectSpec,
    w: &[T],
    mr: usize,
    threads: usize,
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
    let mut data = vec![T::zero(); g.groups * blocks * run_len];
    let mut offsets = Vec::with_capacity(g.groups * blocks * spec.phases.len() + 1);
    for unit in 0..g.groups * blocks {
        let mut at = unit * run_len;
        for phase in &spec.phases {
            offsets.push(at);
            at += phase.taps.len() * cin_g * mr;
        }
    }
    offsets.push(data.len());
    // Each (group, block) fills its own contiguous run: in parallel when asked.
    let fill = |unit: usize, run: &mut [T]| {
        let (group, block) = (unit / blocks, unit % blocks);
        let live = mr.min(cout_g - block * mr);
        let mut at = 0;
        for tap in spec.phases.iter().flat_map(|p| &p.taps) {
            let base = group_base(group) + block * mr * co_step + tap.kernel_index;
            for ci in 0..cin_g {
                let src = base + ci * ci_step;
                for (m, d) in run[at..at + mr].iter_mut().enumerate().take(live) {
                    *d = w[src + m * co_step];
                }
                at += mr;
            }
        }
    };
    if threads > 1 && data.len() > 1 << 16 {
        use rayon::prelude::*;
        crate::fast::direct::pool(threads).install(|| {
            data.par_chunks_mut(run_len.max(1))
                .enumerate()
                .for_each(|(u, run)| fill(u, run))
        });
    } else {
        for (u, run) in data.chunks_mut(run_len.max(1)).enumerate() {
            fill(u, run);
        }
    }
    PackedWeights {
        data,
        mr,
        blocks,
        offsets,
        phases: spec.phases.len(),
    }
}

/// The source buffer the kernels read, `(N, C_in, channel block)`; `None` means read the
/// caller's input as it is. Rows (the last axis) are copied with one strided loop each.
pub fn pack_source<T: Element>(g: &Geometry, spec: &DirectSpec, x: &[T]) -> Option<Vec<T>> {
    let inputs: Vec<usize> = g.axes.iter().map(|a| a.input).collect();
    let dims = inputs.len();
    let in_plane = numel(&inputs);
    let planes = g.batch * g.in_channels;
    let in_pitch: Vec<usize> = (0..dims)
        .map(|a| inputs[a + 1..].iter().product())
        .collect();
    match &spec.source {
        SourceLayout::Direct => None,
        SourceLayout::Padded { extents } => {
            let out_plane = numel(extents);
            let mut buf = vec![T::zero(); planes * out_plane];
            let rows = &inputs[..dims - 1];
            let len = inputs[dims - 1];
            for p in 0..planes {
                for_each_index(rows, |r| {
                    let mut src = p * in_plane;
                    let mut dst = p * out_plane;
                    for a in 0..dims - 1 {
                        src += r[a] * in_pitch[a];
                        dst += r[a] * extents[a + 1..].iter().product::<usize>();
                    }
                    buf[dst..dst + len].copy_from_slice(&x[src..src + len]);
                });
            }
            Some(buf)
        }
        SourceLayout::Polyphase { extents } => {
            let strides: Vec<usize> = g.axes.iter().map(|a| a.stride).collect();
            let comp_plane = numel(extents);
            let ext_pitch: Vec<usize> = (0..dims)
                .map(|a| extents[a + 1..].iter().product())
                .collect();
            let block = spec.channel_stride;
            let mut buf = vec![T::zero(); planes * block];
            let rows = &extents[..dims - 1];
            let (last_s, last_in, last_ext) =
                (strides[dims - 1], inputs[dims - 1], extents[dims - 1]);
            for p in 0..planes {
                let mut c = 0;
                for_each_index(&strides, |rho| {
                    let comp = p * block + c * comp_plane;
                    c += 1;
                    for_each_index(rows, |u| {
                        // Source row of component rho at u (outer axes), if inside the input.
                        let mut src = p * in_plane;
                        let mut dst = comp;
                        for a in 0..dims - 1 {
                            let i = u[a] * strides[a] + rho[a];
                            if i >= inputs[a] {
                                return;
                            }
                            src += i * in_pitch[a];
                            dst += u[a] * ext_pitch[a];
                        }
                        let first = rho[dims - 1];
                        if first >= last_in {
                            return;
                        }
                        let count = (last_in - first).div_ceil(last_s).min(last_ext);
                        for (j, d) in buf[dst..dst + count].iter_mut().enumerate() {
                            *d = x[src + first + j * last_s];
                        }
                    });
                });
            }
            Some(buf)
        }
    }
}
