//! The one place that splits a buffer into per-rank chunks and pipelining segments.
//!
//! Every rank must compute the same split from the same inputs (the element count, the number of
//! parts, the element size), so that what one rank sends is exactly what its peer expects.

use std::ops::Range;

/// Byte ranges of the `parts` chunks of a buffer of `count` elements of `elem_size` bytes.
///
/// Invariants: the chunks are contiguous, in order, cover `0..count * elem_size` exactly, and
/// their element counts differ by at most one (the first `count % parts` chunks get the extra
/// element). With `count < parts` the last chunks are empty.
pub fn even_chunks(count: usize, parts: usize, elem_size: usize) -> Vec<Range<usize>> {
    assert!(parts > 0, "even_chunks: zero parts");
    let base = count / parts;
    let extra = count % parts;
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = (base + usize::from(i < extra)) * elem_size;
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// Byte ranges of chunks whose element counts are given (for the `_v` collectives).
pub fn chunks_from_counts(counts: &[usize], elem_size: usize) -> Vec<Range<usize>> {
    let mut start = 0;
    counts
        .iter()
        .map(|&c| {
            let r = start..start + c * elem_size;
            start = r.end;
            r
        })
        .collect()
}

/// Splits a byte range into pipelining segments of at most `segment_bytes` (rounded down to a
/// whole number of elements, and at least one element). An empty range has no segments.
pub fn segments(
    range: Range<usize>,
    segment_bytes: usize,
    elem_size: usize,
) -> impl Iterator<Item = Range<usize>> {
    let step = segment_len(segment_bytes, elem_size);
    let end = range.end;
    (range.start..end)
        .step_by(step)
        .map(move |s| s..(s + step).min(end))
}

/// The length of a full segment as cut by [`segments`]: `segment_bytes` rounded down to whole
/// elements, at least one element. No segment is longer.
pub fn segment_len(segment_bytes: usize, elem_size: usize) -> usize {
    (segment_bytes / elem_size).max(1) * elem_size
}

/// Borrows `buf[read]` shared and `buf[write]` mutably at once, for sending one part of a buffer
/// while receiving into another (the ring forwards one segment while the next one arrives).
///
/// # Panics
/// If the ranges overlap (an empty range overlaps nothing) or one is out of bounds: a bug in the
/// schedule, never something a peer or a user controls.
pub fn split_read_write(
    buf: &mut [u8],
    read: Range<usize>,
    write: Range<usize>,
) -> (&[u8], &mut [u8]) {
    let len = buf.len();
    assert!(
        read.start <= read.end && read.end <= len && write.start <= write.end && write.end <= len,
        "split_read_write: ranges {read:?} and {write:?} do not both lie in a buffer of {len} bytes"
    );
    if read.is_empty() {
        return (&[], &mut buf[write]);
    }
    if write.is_empty() {
        return (&buf[read], &mut []);
    }
    if read.end <= write.start {
        let (head, tail) = buf.split_at_mut(write.start);
        (&head[read], &mut tail[..write.len()])
    } else if write.end <= read.start {
        let (head, tail) = buf.split_at_mut(read.start);
        (&tail[..read.len()], &mut head[write])
    } else {
        panic!("split_read_write: the range read {read:?} overlaps the range written {write:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn even_chunks_cover_exactly(count in 0usize..10_000, parts in 1usize..20, es in prop::sample::select(vec![1usize, 2, 4, 8])) {
            let c = even_chunks(count, parts, es);
            prop_assert_eq!(c.len(), parts);
            prop_assert_eq!(c[0].start, 0);
            prop_assert_eq!(c[parts - 1].end, count * es);
            for w in c.windows(2) {
                prop_assert_eq!(w[0].end, w[1].start);
            }
            let lens: Vec<usize> = c.iter().map(|r| r.len() / es).collect();
            let (mn, mx) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            prop_assert!(mx - mn <= 1);
        }

        #[test]
        fn segments_cover_in_whole_elements(start in 0usize..100, len in 0usize..5000, seg in 1usize..700, es in prop::sample::select(vec![1usize, 2, 4, 8])) {
            let r = start * es..(start + len) * es;
            let segs: Vec<_> = segments(r.clone(), seg, es).collect();
            prop_assert_eq!(segs.is_empty(), len == 0);
            let mut at = r.start;
            for s in &segs {
                prop_assert_eq!(s.start, at);
                prop_assert!(!s.is_empty() && s.len() % es == 0);
                prop_assert!(s.len() <= seg.max(es));
                at = s.end;
            }
            prop_assert_eq!(at, r.end);
        }
    }

    #[test]
    fn split_read_write_borrows_either_order_and_empty_ranges() {
        let mut buf: Vec<u8> = (0..10).collect();
        let (r, w) = split_read_write(&mut buf, 0..3, 3..5);
        assert_eq!(r, &[0, 1, 2]);
        w.copy_from_slice(&[9, 9]);
        let (r, w) = split_read_write(&mut buf, 6..10, 1..3);
        assert_eq!(r, &[6, 7, 8, 9]);
        assert_eq!(w, &[1, 2]);
        let (r, w) = split_read_write(&mut buf, 4..4, 2..8);
        assert!(r.is_empty());
        assert_eq!(w.len(), 6);
        let (r, w) = split_read_write(&mut buf, 2..8, 5..5);
        assert_eq!(r, &[2, 9, 9, 5, 6, 7]);
        assert!(w.is_empty());
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn split_read_write_rejects_overlap() {
        let mut buf = [0u8; 10];
        let _ = split_read_write(&mut buf, 2..5, 4..6);
    }

    #[test]
    #[should_panic(expected = "do not both lie")]
    fn split_read_write_rejects_out_of_bounds() {
        let mut buf = [0u8; 10];
        let _ = split_read_write(&mut buf, 2..5, 8..11);
    }

    #[test]
    fn counts_layout() {
        assert_eq!(chunks_from_counts(&[2, 0, 3], 4), vec![0..8, 8..8, 8..20]);
    }
}
