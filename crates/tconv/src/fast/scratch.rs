//! Per-thread scratch buffers reused across calls, so that the panels, accumulators and
//! packed operands of a call do not page-fault fresh memory every time (a training loop or a
//! benchmark calls the same layer over and over). Each thread keeps a few buffers, at most
//! [`KEEP_BYTES`] in all; the rest are freed.
//!
//! A buffer comes back with *stale contents* (initialised values of `T`, not zeros): every
//! user writes each element before reading it.

use std::any::Any;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use crate::tensor::Element;

/// Most bytes of scratch one thread keeps between calls.
pub const KEEP_BYTES: usize = 256 << 20;
/// Most buffers one thread keeps between calls.
const KEEP_BUFFERS: usize = 6;

thread_local! {
    static POOL: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// A scratch buffer of `len` elements of stale contents; returned to the current thread's
/// pool when dropped.
pub struct Scratch<T: Element> {
    /// Every element initialised (the buffer only grows), so a reuse never writes it again.
    buf: Vec<T>,
    /// The length handed out, from element `start` (the first on a 64-byte boundary).
    len: usize,
    start: usize,
    /// Whether the buffer goes back to the pool when dropped ([`owned`] buffers do not).
    pooled: bool,
}

/// A buffer of `len` zeros outside the pool: it is freed, not pooled, when dropped (for
/// what lives as long as a plan: a pooled buffer could be larger than asked).
pub fn owned<T: Element>(len: usize) -> Scratch<T> {
    let buf = super::direct::zeros(len + ALIGN_SLACK, 1);
    let start = aligned_start(&buf);
    Scratch {
        buf,
        len,
        start,
        pooled: false,
    }
}

/// Take a buffer of `len` elements from this thread's pool (the smallest that is large
/// enough, else the largest, grown), or allocate one.
pub fn take<T: Element>(len: usize) -> Scratch<T> {
    let need = len + ALIGN_SLACK;
    let found = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let mut best: Option<(usize, usize)> = None; // (index, capacity)
        for (i, b) in pool.iter().enumerate() {
            if let Some(v) = b.downcast_ref::<Vec<T>>() {
                let cap = v.capacity();
                let better = match best {
                    None => true,
                    Some((_, c)) => (cap >= need && (c < need || cap < c)) || (c < need && cap > c),
                };
                if better {
                    best = Some((i, cap));
                }
            }
        }
        best.map(|(i, _)| pool.swap_remove(i))
    });
    let mut buf = found
        .and_then(|b| b.downcast::<Vec<T>>().ok())
        .map_or_else(Vec::new, |b| *b);
    // Only the part never initialised is written (a buffer grown to a larger request);
    // truncating and growing again would zero-fill what is already initialised.
    if buf.len() < need {
        buf.resize(need, T::zero());
    }
    let start = aligned_start(&buf);
    // Under debug assertions (the tests), what a buffer hands out reads as NaN until
    // written: a user that reads an element it did not write fails its checks instead
    // of passing on the zeros of a fresh allocation.
    if cfg!(debug_assertions) {
        buf[start..start + len].fill(T::nan());
    }
    Scratch {
        buf,
        len,
        start,
        pooled: true,
    }
}

/// Elements a buffer holds beyond the length handed out, so that what it hands out can start
/// on a 64-byte boundary (a cache line, an AVX-512 vector): 64 bytes of the smallest
/// element type. The allocator aligns only to 16 bytes, so the buffers' alignment, and with
/// it how many of the kernels' and transforms' vector loads straddle two cache lines, had
/// changed from build to build with the order of allocations: forward dcgan2, s1k3 and
/// dilated ran 1.06x, 1.08x and 1.11x faster aligned (1 thread, paired, 6 rounds, Intel
/// Xeon), dcgan3 1.00-1.22x in two sittings.
const ALIGN_SLACK: usize = 16;

/// The first element of `buf` on a 64-byte boundary (within [`ALIGN_SLACK`] elements of an
/// allocation aligned to `T`).
fn aligned_start<T>(buf: &[T]) -> usize {
    let size = std::mem::size_of::<T>().max(1);
    let misaligned = (buf.as_ptr() as usize) % 64;
    (64 - misaligned) % 64 / size
}

impl<T: Element> Drop for Scratch<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let bytes = buf.capacity() * std::mem::size_of::<T>();
        if !self.pooled || bytes == 0 || bytes > KEEP_BYTES {
            return;
        }
        // `try_with`: a thread being torn down simply frees the buffer.
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            pool.push(Box::new(buf));
            // Over the limits: free the smallest buffers first.
            let held = |p: &Vec<Box<dyn Any>>| -> usize { p.iter().map(size_of_any).sum() };
            while pool.len() > KEEP_BUFFERS || held(&pool) > KEEP_BYTES {
                let smallest = (0..pool.len())
                    .min_by_key(|&i| size_of_any(&pool[i]))
                    .expect("pool is not empty");
                pool.swap_remove(smallest);
            }
        });
    }
}

/// Bytes held by a pooled buffer.
fn size_of_any(b: &Box<dyn Any>) -> usize {
    if let Some(v) = b.downcast_ref::<Vec<f32>>() {
        v.capacity() * 4
    } else if let Some(v) = b.downcast_ref::<Vec<f64>>() {
        v.capacity() * 8
    } else {
        0
    }
}

impl<T: Element> Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl<T: Element> DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let p = {
            let mut a = take::<f32>(1000);
            a[999] = 7.0;
            a.as_ptr()
        };
        let b = take::<f32>(500);
        assert_eq!(b.len(), 500);
        assert_eq!(b.as_ptr(), p, "the returned buffer is reused");
        drop(b);
        let d = take::<f32>(1000);
        assert_eq!((d.len(), d.as_ptr()), (1000, p));
        // What a buffer hands out starts on a 64-byte boundary.
        assert_eq!(d.as_ptr() as usize % 64, 0);
        assert_eq!(owned::<f64>(3).as_ptr() as usize % 64, 0);
        let c = take::<f64>(10);
        assert_eq!(c.len(), 10);
        if cfg!(debug_assertions) {
            // The tests' poison: whatever a buffer held, it hands out NaN.
            assert!(d.iter().all(|v| v.is_nan()) && c.iter().all(|v| v.is_nan()));
        } else {
            // Grown back within what was initialised: no zero-fill, the stale value is
            // there; a fresh buffer starts at zero.
            assert_eq!(d[999], 7.0);
            assert!(c.iter().all(|&v| v == 0.0));
        }
    }
}
