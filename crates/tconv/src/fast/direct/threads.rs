//! Thread pools, and work split into tasks that own disjoint output bands.

use super::*;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

/// Thread pools by thread count.
type Pools = Mutex<Vec<(usize, Arc<rayon::ThreadPool>)>>;

/// A thread pool per thread count, built once.
fn pool(threads: usize) -> Arc<rayon::ThreadPool> {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(Vec::new()));
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = pools.iter().find(|(n, _)| *n == threads) {
        return p.clone();
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("tconv-{i}"))
            .build()
            .expect("thread pool"),
    );
    pools.push((threads, p.clone()));
    p
}

/// Run `f` on each of `items`, on `threads` threads (in order, on this thread, for one).
pub(crate) fn run_each<I: Send>(threads: usize, items: Vec<I>, f: impl Fn(I) + Sync + Send) {
    if threads <= 1 {
        items.into_iter().for_each(f);
    } else {
        pool(threads).install(|| items.into_par_iter().for_each(f));
    }
}

/// Run `a` and `b` at once on a pool of two threads (one after the other for fewer), and
/// return both results.
pub(crate) fn run_both<RA: Send, RB: Send>(
    threads: usize,
    a: impl FnOnce() -> RA + Send,
    b: impl FnOnce() -> RB + Send,
) -> (RA, RB) {
    if threads <= 1 {
        (a(), b())
    } else {
        pool(2).join(a, b)
    }
}

/// A result buffer of `len` zeros, zeroed on `threads` threads where it is large (at least
/// [`PARALLEL_ZEROS`] elements): the allocator's zeroing of a reused block runs on one
/// thread, while the other waits (22 % of dcgan4's input gradient at 2 threads, 4 MiB).
///
/// From [`HUGE_BYTES`] on, the buffer comes zeroed from the allocator, its pages asked to
/// be huge ([`huge_zeros`]).
pub(crate) fn zeros<T: Element>(len: usize, threads: usize) -> Vec<T> {
    if len.saturating_mul(std::mem::size_of::<T>()) >= HUGE_BYTES {
        if let Some(v) = huge_zeros(len) {
            return v;
        }
    }
    if threads <= 1 || len < PARALLEL_ZEROS {
        return vec![T::zero(); len];
    }
    let mut v = Vec::new();
    pool(threads).install(|| {
        (0..len)
            .into_par_iter()
            .with_min_len(PARALLEL_ZEROS / threads)
            .map(|_| T::zero())
            .collect_into_vec(&mut v)
    });
    v
}

/// Fewest elements [`zeros`] zeroes on several threads (1 MiB of f32).
const PARALLEL_ZEROS: usize = 1 << 18;

/// Fewest bytes of a buffer [`zeros`] asks to be backed by huge pages: glibc's largest
/// threshold for serving an allocation by a fresh `mmap` (32 MiB on 64-bit), beyond which
/// every call's result is new memory that faults in page by page as it is first written.
pub(crate) const HUGE_BYTES: usize = 32 << 20;

/// A buffer of `len` zeros from the allocator's zeroed memory (a fresh `mmap` is zero
/// already), whose 2 MiB-aligned extents are advised to be transparent huge pages
/// (`madvise(MADV_HUGEPAGE)`, Linux), before anything touches them: each 2 MiB then faults
/// once instead of 512 times. pix2pix's 1024 -> 512 upsampler's weight gradient (32 MiB;
/// one image of 2×2 inputs) spent more of its time in the page faults of its result than
/// in its products. `None` where the advice is not available or zero bits are not `T`'s zero.
#[cfg(target_os = "linux")]
fn huge_zeros<T: Element>(len: usize) -> Option<Vec<T>> {
    const HUGE_PAGE: usize = 2 << 20;
    let zero = T::zero();
    // Safety: `zero` is a plain float of `size_of::<T>()` bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts((&zero as *const T).cast::<u8>(), std::mem::size_of::<T>())
    };
    if bytes.iter().any(|&b| b != 0) {
        return None;
    }
    let layout = std::alloc::Layout::array::<T>(len).ok()?;
    // Safety: the layout's size is at least HUGE_BYTES, not zero.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    let (start, end) = (p as usize, p as usize + layout.size());
    let (lo, hi) = (
        start.next_multiple_of(HUGE_PAGE),
        end / HUGE_PAGE * HUGE_PAGE,
    );
    if hi > lo {
        // Safety: [lo, hi) lies inside the allocation and starts on a page; the advice
        // changes no contents (a failure leaves ordinary pages).
        unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        // Fault the huge pages in here, one write each (of the zero they hold): where the
        // threads that write them faulted them in at once, that layer's weight gradient on
        // 4×4 inputs at 2 threads ran 18-21 ms in 6 of 27 processes (8.7-10.7 in 2 more,
        // 4.5-6.2 in the rest); faulted in here, 3.9-4.3 in all of 6.
        for a in (lo..hi).step_by(HUGE_PAGE) {
            // Safety: inside the allocation, which holds zero there.
            unsafe { std::ptr::write_volatile(a as *mut u8, 0) };
        }
    }
    // Safety: allocated by the global allocator with `T`'s array layout for `len`
    // elements, all of them zero bits, which are `T`'s zero (checked above).
    Some(unsafe { Vec::from_raw_parts(p.cast::<T>(), len, len) })
}

#[cfg(not(target_os = "linux"))]
fn huge_zeros<T: Element>(_len: usize) -> Option<Vec<T>> {
    None
}

/// Run `f(index, chunk)` on each `len`-long chunk of `data` (the last may be shorter), on
/// `threads` threads.
pub(crate) fn run_chunks<T: Send>(
    threads: usize,
    data: &mut [T],
    len: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let len = len.max(1);
    if threads <= 1 {
        data.chunks_mut(len).enumerate().for_each(|(u, d)| f(u, d));
    } else {
        pool(threads).install(|| {
            data.par_chunks_mut(len)
                .enumerate()
                .for_each(|(u, d)| f(u, d))
        });
    }
}

/// One unit of parallel work: a band of output rows of some output channels of one group
/// for some batch items.
pub(crate) struct Task<'y, T> {
    pub(crate) group: usize,
    pub(crate) batch: Range<usize>,
    /// The output channels, within the group (all of them unless the plan splits them
    /// between tasks: see [`channel_parts`]).
    pub(crate) channels: Range<usize>,
    /// The band, in the caller's units (the direct driver: chunks of its tile table;
    /// Winograd tiles: tile rows).
    pub(crate) band: Range<usize>,
    /// Row bands in `(n, channel)` order, over the task's channels.
    pub(crate) planes: Vec<&'y mut [T]>,
}

impl<T> Task<'_, T> {
    /// The blocks of `block` output channels (within the group) the task's channels cover.
    pub(crate) fn blocks(&self, block: usize) -> Range<usize> {
        self.channels.start / block..self.channels.end.div_ceil(block)
    }
}

/// `cout` output channels cut into `parts` consecutive ranges of whole blocks of `block`
/// channels (the last block may be short), as even as the blocks allow; fewer ranges where
/// there are fewer blocks.
pub(crate) fn channel_parts(cout: usize, block: usize, parts: usize) -> Vec<Range<usize>> {
    let blocks = cout.div_ceil(block.max(1)).max(1);
    let parts = parts.clamp(1, blocks);
    (0..parts)
        .map(|p| {
            (p * blocks / parts * block).min(cout)..((p + 1) * blocks / parts * block).min(cout)
        })
        .collect()
}

/// One task per (group, batch chunk of `batch_chunk` images, channel range of `parts`,
/// band), each band of every output plane (`bands`: its range in the caller's units and its
/// length in elements, consecutive and covering the plane) handed to its task as a `&mut`
/// slice. `parts` cut the group's output channels (consecutive, covering them: one range
/// `0..C_out/g` where tasks hold every channel).
pub(crate) fn band_tasks<'y, T>(
    g: &Geometry,
    y: &'y mut [T],
    batch_chunk: usize,
    parts: &[Range<usize>],
    bands: &[(Range<usize>, usize)],
) -> Vec<Task<'y, T>> {
    let out_plane = numel(&g.output_shape()[2..]);
    let cout_g = g.out_per_group();
    let n_chunks = g.batch.div_ceil(batch_chunk);
    let (np, nb) = (parts.len(), bands.len());
    debug_assert!(
        parts.first().is_some_and(|p| p.start == 0)
            && parts.last().is_some_and(|p| p.end == cout_g)
            && parts.windows(2).all(|w| w[0].end == w[1].start),
        "channel parts cover the group's channels"
    );
    let mut tasks: Vec<Task<'y, T>> = (0..g.groups * n_chunks * np * nb)
        .map(|t| {
            let nc = t / (np * nb) % n_chunks;
            Task {
                group: t / (n_chunks * np * nb),
                batch: nc * batch_chunk..((nc + 1) * batch_chunk).min(g.batch),
                channels: parts[t / nb % np].clone(),
                band: bands[t % nb].0.clone(),
                planes: Vec::new(),
            }
        })
        .collect();
    // The part of each channel within its group.
    let part_of: Vec<usize> = (0..cout_g)
        .map(|c| parts.iter().position(|p| p.contains(&c)).unwrap_or(0))
        .collect();
    for (i, plane) in y.chunks_mut(out_plane.max(1)).enumerate() {
        let (n, co) = (i / g.out_channels, i % g.out_channels);
        let task0 = ((co / cout_g) * n_chunks + n / batch_chunk) * np + part_of[co % cout_g];
        let mut rest = plane;
        for (b, (_, len)) in bands.iter().enumerate() {
            let (band, tail) = rest.split_at_mut(*len);
            rest = tail;
            tasks[task0 * nb + b].planes.push(band);
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zeros of every length around the parallel threshold, on one to three threads.
    #[test]
    fn zeros_of_every_size() {
        for len in [
            0,
            1,
            PARALLEL_ZEROS - 1,
            PARALLEL_ZEROS,
            3 * PARALLEL_ZEROS + 5,
        ] {
            for threads in 1..=3 {
                let v = zeros::<f32>(len, threads);
                assert_eq!(v.len(), len, "{len} on {threads}");
                assert!(v.iter().all(|&x| x == 0.0), "{len} on {threads}");
                let v = zeros::<f64>(len, threads);
                assert!(v.len() == len && v.iter().all(|&x| x == 0.0));
            }
        }
    }

    /// Results of [`HUGE_BYTES`] and more come from the allocator's zeroed memory (with
    /// the huge-page advice on Linux): zeros, the length asked for, writable to the end,
    /// in f32 and f64, on one thread and two; and so does a buffer just below.
    #[test]
    fn large_results_are_zeros() {
        fn check<T: Element>(len: usize, threads: usize) {
            let mut v = zeros::<T>(len, threads);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == T::zero() && x.is_sign_positive()));
            let last = len - 1;
            v[last] = T::one();
            v[0] = T::one();
            assert_eq!(v[last] + v[0], T::one() + T::one());
        }
        for threads in [1, 2] {
            check::<f32>(HUGE_BYTES / 4 + 3, threads);
            check::<f64>(HUGE_BYTES / 8, threads);
            check::<f32>(HUGE_BYTES / 4 - 1, threads);
        }
    }
}
