//! A single-producer single-consumer byte ring in memory shared by two processes.
//!
//! Layout (at the start of a 64-byte-aligned region of `RING_HEADER + capacity` bytes):
//! ```text
//! offset field
//!      0 head            u64, bytes ever written (the writer's; readers load it Acquire)
//!     64 tail            u64, bytes ever read (the reader's; writers load it Acquire)
//!    128 reader_sleeps   u32, 1 while the reader may block without looking again
//!    132 writer_sleeps   u32, 1 while the writer waits for room and may block
//!    192 data            `capacity` bytes, a power of two
//! ```
//! `head` and `tail` sit on cache lines of their own, so the two sides never write the same line
//! in the fast path.
//!
//! ## Invariants
//! - `tail <= head <= tail + capacity` (as wrapping counters, which never wrap in practice).
//! - Bytes `tail..head` (mod capacity) are written and not yet read; only the writer touches
//!   the rest of `data`, only the reader the written part.
//! - The writer publishes data with a Release store of `head` after copying it; the reader frees
//!   room with a Release store of `tail` after copying out.
//! - The reader publishes `tail` lazily: it keeps its own read position and stores it once a
//!   quarter of the ring has been read since the last store ([`PUBLISH_EVERY`]), and always
//!   before it blocks ([`Ring::reader_may_sleep`]). So at any time fewer than `capacity / 4`
//!   read bytes are unpublished, and a writer that finds the ring full leaves more than
//!   `3 capacity / 4` unread bytes, whose reading publishes `tail` (and checks its sleep flag,
//!   below); a reader that stops reading blocks, which publishes too. Small messages thus cost
//!   the reader no store to a line the writer reads and no fence: on two local ranks an
//!   8-byte all-reduce's receive paid both on its critical path.
//!
//! ## Sleeping without missing a wake-up (the doorbell)
//! A side that wants to block sets its `*_sleeps` flag, issues a SeqCst fence and looks at the
//! ring once more; only if nothing changed does it block (in `poll` on the pair's socket). The
//! other side, after publishing, issues a SeqCst fence and reads the flag: if set, it clears it
//! and rings the doorbell (one byte on the socket). With both fences, at least one of the two
//! sees the other's store (the store-buffering pattern), so a sleeper is never left asleep with
//! data (or room) waiting. (The reader checks the writer's flag after each store of `tail`
//! only: room the writer cannot see yet is no reason to wake it.)

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// The reader stores `tail` once `capacity / PUBLISH_EVERY` bytes were read since its last store.
pub const PUBLISH_EVERY: usize = 4;

/// Bytes before the data of a ring.
pub const RING_HEADER: usize = 192;

/// One side's view of a ring. Both processes map the same bytes; this struct only holds the
/// pointers (the mapping is owned by the segment, which outlives it).
pub struct Ring {
    base: *mut u8,
    capacity: usize,
    /// Reader: bytes ever read (`tail` lags it by less than `capacity / PUBLISH_EVERY`).
    read: Cell<u64>,
    /// Reader: `tail` was stored since the last [`Ring::writer_needs_wake`].
    published: Cell<bool>,
}

// SAFETY: the ring's shared state is only accessed through atomics and the SPSC protocol above;
// each `Ring` is used by one side (the engine's mutex serialises the threads of that side), and
// its cells are that side's own.
unsafe impl Send for Ring {}

impl Ring {
    /// The ring at `base` (64-byte aligned, `RING_HEADER + capacity` bytes, zeroed by whoever
    /// created the mapping), with `capacity` a power of two.
    ///
    /// # Safety
    /// `base` must stay mapped, readable and writable for the life of the `Ring`, and only one
    /// writer and one reader may use it.
    pub unsafe fn new(base: *mut u8, capacity: usize) -> Ring {
        debug_assert!(capacity.is_power_of_two());
        debug_assert_eq!(base as usize % 64, 0);
        let ring = Ring {
            base,
            capacity,
            read: Cell::new(0),
            published: Cell::new(false),
        };
        ring.read.set(ring.tail().load(Ordering::Acquire));
        ring
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: in the header, aligned, valid for the ring's life (constructor contract).
        unsafe { &*(self.base as *const AtomicU64) }
    }

    fn tail(&self) -> &AtomicU64 {
        // SAFETY: as for `head`.
        unsafe { &*(self.base.add(64) as *const AtomicU64) }
    }

    fn reader_sleeps(&self) -> &AtomicU32 {
        // SAFETY: as for `head`.
        unsafe { &*(self.base.add(128) as *const AtomicU32) }
    }

    fn writer_sleeps(&self) -> &AtomicU32 {
        // SAFETY: as for `head`.
        unsafe { &*(self.base.add(132) as *const AtomicU32) }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data follows the header within the mapping.
        unsafe { self.base.add(RING_HEADER) }
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Writer: copies as much of `parts` (in order) as fits; returns the bytes written. Cost: one
    /// copy, no system call.
    pub fn write(&self, parts: &[&[u8]]) -> usize {
        let head = self.head().load(Ordering::Relaxed);
        let tail = self.tail().load(Ordering::Acquire);
        let free = self.capacity - (head.wrapping_sub(tail) as usize);
        let mut at = head;
        let mut left = free;
        for part in parts {
            let n = part.len().min(left);
            self.copy_in(at, &part[..n]);
            at = at.wrapping_add(n as u64);
            left -= n;
            if left == 0 {
                break;
            }
        }
        let written = free - left;
        if written > 0 {
            self.head().store(at, Ordering::Release);
        }
        written
    }

    fn copy_in(&self, at: u64, bytes: &[u8]) {
        let start = at as usize & (self.capacity - 1);
        let first = bytes.len().min(self.capacity - start);
        // SAFETY: both ranges lie in the data area and in the free part of the ring (at most
        // `free` bytes from `head`), which only the writer touches.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data().add(start), first);
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr().add(first),
                self.data(),
                bytes.len() - first,
            );
        }
    }

    /// Reader: copies up to `dst.len()` bytes out; returns how many. Cost: one copy.
    pub fn read(&self, dst: &mut [std::mem::MaybeUninit<u8>]) -> usize {
        let tail = self.read.get();
        let head = self.head().load(Ordering::Acquire);
        let n = (head.wrapping_sub(tail) as usize).min(dst.len());
        if n == 0 {
            return 0;
        }
        let start = tail as usize & (self.capacity - 1);
        let first = n.min(self.capacity - start);
        let out = dst.as_mut_ptr() as *mut u8;
        // SAFETY: the source ranges are written, unread bytes (between tail and head, published
        // by the writer's Release store), the destination is `dst`, at least `n` bytes long.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data().add(start), out, first);
            std::ptr::copy_nonoverlapping(self.data(), out.add(first), n - first);
        }
        self.consumed(tail, n);
        n
    }

    /// Reader: `n` more bytes from `tail` were read; stores `tail` if enough have been since it
    /// last was (see the module doc).
    fn consumed(&self, tail: u64, n: usize) {
        let read = tail.wrapping_add(n as u64);
        self.read.set(read);
        let unpublished = read.wrapping_sub(self.tail().load(Ordering::Relaxed)) as usize;
        if unpublished >= self.capacity / PUBLISH_EVERY {
            self.publish_read();
        }
    }

    /// Reader: stores `tail` (frees the room read so far) if it lags; then
    /// [`writer_needs_wake`](Self::writer_needs_wake) says whether the writer must be rung.
    pub fn publish_read(&self) {
        let read = self.read.get();
        if self.tail().load(Ordering::Relaxed) != read {
            self.tail().store(read, Ordering::Release);
            self.published.set(true);
        }
    }

    /// Reader: hands up to `max` readable bytes to `f` in place (at most two slices, in order:
    /// the ring may wrap), then frees them; returns how many. Cost: whatever `f` does with them
    /// (a copy into a posted buffer, or a reduction into an accumulator): no copy of its own.
    pub fn read_with(&self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let tail = self.read.get();
        let head = self.head().load(Ordering::Acquire);
        let n = (head.wrapping_sub(tail) as usize).min(max);
        if n == 0 {
            return 0;
        }
        let start = tail as usize & (self.capacity - 1);
        let first = n.min(self.capacity - start);
        // SAFETY: written, unread bytes (published by the writer's Release store of `head`); the
        // writer does not touch them until `tail` moves past them, below.
        unsafe {
            f(std::slice::from_raw_parts(self.data().add(start), first));
            if n > first {
                f(std::slice::from_raw_parts(self.data(), n - first));
            }
        }
        self.consumed(tail, n);
        n
    }

    /// Bytes written and not yet read (as the reader sees it).
    pub fn readable(&self) -> usize {
        let tail = self.read.get();
        self.head().load(Ordering::Acquire).wrapping_sub(tail) as usize
    }

    /// Free bytes (as the writer sees it).
    pub fn writable(&self) -> usize {
        let head = self.head().load(Ordering::Relaxed);
        self.capacity - head.wrapping_sub(self.tail().load(Ordering::Acquire)) as usize
    }

    /// Reader, before blocking: publishes what it read (the caller then asks
    /// [`writer_needs_wake`](Self::writer_needs_wake)), raises the flag; returns false (and lowers
    /// it) if data arrived meanwhile, so the caller must not block.
    pub fn reader_may_sleep(&self) -> bool {
        self.publish_read();
        self.reader_sleeps().store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.readable() > 0 {
            self.reader_sleeps().store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Writer, before blocking on a full ring: as [`reader_may_sleep`](Self::reader_may_sleep)
    /// for room.
    pub fn writer_may_sleep(&self) -> bool {
        self.writer_sleeps().store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.writable() > 0 {
            self.writer_sleeps().store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Writer, after publishing: whether the reader sleeps and needs the doorbell (the flag is
    /// cleared: one doorbell per sleep).
    pub fn reader_needs_wake(&self) -> bool {
        fence(Ordering::SeqCst);
        self.reader_sleeps().load(Ordering::Relaxed) != 0
            && self.reader_sleeps().swap(0, Ordering::Relaxed) != 0
    }

    /// Reader, after reading: whether the writer sleeps and needs the doorbell. False at no
    /// cost (no fence) unless `tail` was stored since the last call.
    pub fn writer_needs_wake(&self) -> bool {
        if !self.published.replace(false) {
            return false;
        }
        fence(Ordering::SeqCst);
        self.writer_sleeps().load(Ordering::Relaxed) != 0
            && self.writer_sleeps().swap(0, Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;

    #[repr(C, align(64))]
    struct Backing([u8; RING_HEADER + 64]);

    fn read_all(r: &Ring, max: usize) -> Vec<u8> {
        let mut buf = vec![MaybeUninit::new(0u8); max];
        let n = r.read(&mut buf);
        buf[..n]
            .iter()
            // SAFETY: `read` initialised the first `n` bytes.
            .map(|b| unsafe { b.assume_init() })
            .collect()
    }

    #[test]
    fn wraps_around_and_keeps_order() {
        let mut mem = Box::new(Backing([0; RING_HEADER + 64]));
        // SAFETY: the backing outlives the ring and is aligned; one thread uses both ends.
        let r = unsafe { Ring::new(mem.0.as_mut_ptr(), 64) };
        let mut expect = Vec::new();
        let mut got = Vec::new();
        for round in 0..50u8 {
            let a: Vec<u8> = (0..round % 37).map(|i| i.wrapping_add(round)).collect();
            let n = r.write(&[&a[..a.len() / 2], &a[a.len() / 2..]]);
            expect.extend_from_slice(&a[..n]);
            got.extend(read_all(&r, (round as usize * 7) % 50 + 1));
        }
        got.extend(read_all(&r, 64));
        assert_eq!(got, expect);
        assert_eq!(r.readable(), 0);
        r.publish_read();
        assert_eq!(r.writable(), 64);
    }

    #[test]
    fn a_full_ring_takes_nothing_and_sleep_flags_see_changes() {
        let mut mem = Box::new(Backing([0; RING_HEADER + 64]));
        // SAFETY: as above.
        let r = unsafe { Ring::new(mem.0.as_mut_ptr(), 64) };
        assert!(r.reader_may_sleep());
        assert_eq!(r.write(&[&[7; 100]]), 64);
        assert!(r.reader_needs_wake(), "the sleeping reader is rung");
        assert!(!r.reader_needs_wake(), "once");
        assert_eq!(r.write(&[&[1]]), 0);
        assert!(r.writer_may_sleep());
        assert_eq!(read_all(&r, 10).len(), 10);
        assert_eq!(
            r.writable(),
            0,
            "less than a quarter read: not published yet"
        );
        assert!(!r.writer_needs_wake(), "nothing published: no doorbell");
        assert_eq!(read_all(&r, 6).len(), 6);
        assert_eq!(r.writable(), 16, "a quarter read: published");
        assert!(r.writer_needs_wake());
        assert!(!r.writer_may_sleep(), "room is there: do not sleep");
        assert!(!r.reader_may_sleep(), "data is there: do not sleep");
    }

    #[test]
    fn the_reader_publishes_lazily_and_always_before_it_sleeps() {
        let mut mem = Box::new(Backing([0; RING_HEADER + 64]));
        // SAFETY: as above.
        let r = unsafe { Ring::new(mem.0.as_mut_ptr(), 64) };
        assert_eq!(r.write(&[&[3; 64]]), 64);
        assert!(r.writer_may_sleep(), "full: the writer may block");
        assert_eq!(read_all(&r, 5).len(), 5);
        assert_eq!(r.readable(), 59, "the reader's own position moved");
        assert_eq!(r.writable(), 0, "the writer does not see it yet");
        assert!(!r.writer_needs_wake());
        assert_eq!(r.read_with(59, |_| {}), 59);
        assert!(
            r.writer_needs_wake(),
            "reading past a quarter published and rings"
        );
        assert_eq!(r.writable(), 64);
        assert_eq!(r.write(&[&[4; 3]]), 3);
        assert_eq!(read_all(&r, 3).len(), 3);
        assert_eq!(r.writable(), 61, "3 bytes read, not published");
        assert!(r.reader_may_sleep(), "empty: the reader may block");
        assert_eq!(r.writable(), 64, "published before blocking");
        assert!(!r.writer_needs_wake(), "the writer does not sleep");
    }
}
