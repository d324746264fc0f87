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
    let step = (segment_bytes / elem_size).max(1) * elem_size;
    let end = range.end;
    (range.start..end)
        .step_by(step)
        .map(move |s| s..(s + step).min(end))
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
    fn counts_layout() {
        assert_eq!(chunks_from_counts(&[2, 0, 3], 4), vec![0..8, 8..8, 8..20]);
    }
}
