//! All-gather: every rank contributes one chunk; afterwards every rank holds all of them.
//!
//! Terms: `n` ranks; the output buffer `buf` of `m` bytes is split into `n` *chunks* by the caller
//! (equal for all-gather, per-rank counts for all-gather-v; empty chunks are fine) and rank `r`
//! owns `chunks[r]`; a chunk travels as *segments* of at most `seg` bytes ([`layout::segments`]
//! at byte granularity: nothing is combined, so element boundaries do not matter); a *step* is one
//! round of the ring.
//!
//! ## Ring ([`ring`])
//! Ranks form a ring `r -> r+1 (right)`, receiving from `r-1 (left)`, all mod n. In step
//! `k = 0..n-2`, rank `r` sends chunk `(r-k) mod n` to the right and receives chunk
//! `(r-k-1) mod n` from the left into its place. Step 0 sends the rank's own chunk; the chunk
//! received in step `k` is the one forwarded in step `k+1`, segment by segment as it arrives
//! ([`ring::forward`]); after `n-1` steps every chunk has gone around the ring once. An empty chunk has no segments, hence no messages, on both ends.
//!
//! Bytes on the wire per rank: sends every chunk but its right neighbour's (`m - |chunk r+1|`),
//! receives every chunk but its own (`m - |chunk r|`): `(n-1)/n * m` each for equal chunks.
//! Cost with equal chunks: `(n-1) alpha + (n-1)/n m beta` (segmented: `(n-1) * ceil(m/(n seg))`
//! messages per rank).
//!
//! **Flow control.** The ring is a cycle of senders: `ring::forward` sends at most the window's
//! worth of segments ahead and pairs every later send with the receive it needs next (its module
//! doc says why that cannot deadlock).
//!
//! ## Recursive doubling ([`recursive_doubling`])
//! For `n` a power of two: in step `k = 0..log2(n)-1` rank `r` and its partner `r XOR 2^k`
//! exchange everything they hold, the chunks of the aligned block of `2^k` ranks around each of
//! them, in one message each way (the block is one contiguous range of `buf`), so what every rank
//! holds doubles per step. Otherwise the world folds onto `p`, the largest power of two `<= n`, as
//! the recursive-doubling all-reduce does ([`Fold`]): each extra rank `2v+1` (`v < e = n - p`)
//! first sends its chunk to its proxy `2v`, which then stands for chunks `2v, 2v+1` as virtual
//! rank `v`; the other ranks are virtual rank `rank - e`. Virtual rank `v` thus holds chunks
//! `min(2v, v+e)..min(2v+2, v+e+1)`, in rank order, so an aligned block of virtual ranks still
//! holds one contiguous range of chunks. After the doubling among the `p` base ranks, each proxy
//! sends the whole result to its extra.
//!
//! Cost, `n` a power of two: `log2(n) alpha + (n-1)/n m beta` (the fewest steps and bytes there
//! are). Otherwise, with `L = log2 p` and equal chunks of `m/n`: `(L + 2) alpha + (1 + (p + s)/n)
//! m beta`, under `3m beta`: the fold's chunk (`m/n`), the doubling, whose step `k` moves at
//! most `2^k + min(2^k, e)` chunks (the blocks holding proxies are the larger; `s` sums the
//! `min(2^k, e)`, at most `p - 1`), and the whole result once more for the extras (`m`). A
//! world one rank past a power of two pays about `2m beta`; Bruck moves `(n-1)/n m` for any
//! `n`. Every exchange is one message, however small (an empty block included).
//!
//! ## Bruck ([`bruck`])
//! Rank `r` keeps a scratch buffer holding chunks `r, r+1, ..., r+n-1` (mod n) in that order,
//! starting with its own. In step `k = 0..ceil(log2 n)-1`, with `d = 2^k`, it sends the first
//! `min(d, n-d)` chunks of its scratch to rank `r-d` and receives the same number from rank `r+d`
//! (whose first chunks are `r+d, r+d+1, ...`) behind its first `d`, so after the step it holds
//! `min(2d, n)` chunks. A final local rotation copies chunk `r+i` from position `i` of the scratch
//! to its place in `buf`. Any `n`, no fold: `ceil(log2 n)` messages per rank.
//!
//! Cost: `ceil(log2 n) alpha + (n-1)/n m beta` (each rank receives every chunk but its own once),
//! plus two local copies of `m` bytes (into and out of the scratch).
//!
//! **Flow control.** Recursive doubling's exchanges and every Bruck step are cycles of senders (of
//! two ranks; of all ranks at distance `d`), so every such send is paired with the receive this
//! rank needs next via `send_recv` (the contract's rule), whatever the window: in step `k` a send
//! to `r-d` (or to the partner) waits at most until that rank reaches step `k`, whose receive is
//! the matching one, and the rank behind it waits only for ranks further behind. The fold's two
//! one-way sends need no pairing, as in the all-reduce: the extra's chunk is part of the next
//! message it receives (the whole result), and the proxy sends the result after its last receive.

use super::recursive_doubling::{Fold, Role};
use super::ring;
use crate::channel::{Channel, RecvInto};
use crate::layout;
use std::ops::Range;

/// Ring all-gather over `chunks` (see the module doc).
///
/// On entry `buf[chunks[rank]]` holds this rank's contribution (the rest is ignored); on return
/// every `buf[chunks[p]]` holds rank `p`'s contribution.
///
/// Preconditions (checked by the communicator): `chunks.len() == size`, every range lies in `buf`,
/// and every rank passes the same `chunks` and `seg`.
pub fn ring<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    chunks: &[Range<usize>],
    seg: usize,
) -> Result<(), C::Error> {
    let (first, steps) = steps(ch.rank(), chunks);
    ring::forward(ch, buf, first, &steps, seg, 1)
}

/// The chunk rank `rank` sends first (its own) and the `n - 1` chunks it receives, in step order.
pub(crate) fn steps(
    rank: usize,
    chunks: &[Range<usize>],
) -> (Range<usize>, Vec<ring::Step<'static>>) {
    let n = chunks.len();
    debug_assert!(rank < n, "allgather: one chunk per rank");
    let steps = (0..n.saturating_sub(1))
        .map(|k| ring::Step {
            recv: chunks[(rank + 2 * n - k - 1) % n].clone(),
            how: ring::Receive::Copy,
        })
        .collect();
    (chunks[rank].clone(), steps)
}

/// Recursive-doubling all-gather over `chunks` (see the module doc): `log2 n` exchanges for a
/// power of two, else the fold adds two one-way messages. Cost `log2(n) alpha + (n-1)/n m beta`
/// for `n` a power of two, else `(floor(log2 n) + 2) alpha + (1 + (p + s)/n) m beta` (`p`, `s`:
/// the module doc), under `3m beta`.
///
/// Flow control: every exchange is a `send_recv` with the partner (a cycle of two); the fold's
/// sends are the contract's exceptions (the extra's chunk comes back in the result it receives
/// next; the proxy sends the result after its last receive).
///
/// Buffers as in [`ring`]. Preconditions (checked by the communicator): as for [`ring`], and the
/// chunks are contiguous and in rank order (as [`layout::chunks_from_counts`] and
/// [`layout::even_chunks`] cut them), so every block of consecutive ranks is one range.
pub fn recursive_doubling<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    chunks: &[Range<usize>],
) -> Result<(), C::Error> {
    let fold = Fold::new(ch.size());
    debug_assert!(is_contiguous(chunks), "allgather: chunks out of order");
    let whole = chunks[0].start..chunks[chunks.len() - 1].end;
    match fold.role(ch.rank()) {
        Role::Extra { proxy } => {
            ch.send(proxy, &buf[chunks[ch.rank()].clone()])?;
            ch.recv(proxy, &mut buf[whole])
        }
        Role::Base { v, extra } => {
            if let Some(extra) = extra {
                ch.recv(extra, &mut buf[chunks[extra].clone()])?;
            }
            double(ch, buf, chunks, fold, v)?;
            match extra {
                Some(extra) => ch.send(extra, &buf[whole]),
                None => Ok(()),
            }
        }
    }
}

/// The doubling among the `p` base ranks: virtual rank `v` swaps its aligned block of `2^k`
/// virtual ranks with its partner's in step `k`.
fn double<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    chunks: &[Range<usize>],
    fold: Fold,
    v: usize,
) -> Result<(), C::Error> {
    // The bytes of virtual ranks `a..b`: chunks `min(2a, a+e)..min(2b, b+e)`.
    let first_chunk = |u: usize| (2 * u).min(u + fold.extra);
    let span = |a: usize, b: usize| chunks[first_chunk(a)].start..chunks[first_chunk(b) - 1].end;
    let mut d = 1;
    while d < fold.p {
        let (mine, theirs) = (v & !(d - 1), (v ^ d) & !(d - 1));
        let partner = fold.rank_of(v ^ d);
        let (data, into) =
            layout::split_read_write(buf, span(mine, mine + d), span(theirs, theirs + d));
        ch.send_recv(partner, data, partner, RecvInto::Copy(into))?;
        d *= 2;
    }
    Ok(())
}

/// Whether `chunks` follow each other without gaps, in rank order.
fn is_contiguous(chunks: &[Range<usize>]) -> bool {
    chunks.windows(2).all(|w| w[0].end == w[1].start)
}

/// Bruck all-gather over `chunks` (see the module doc): `ceil(log2 n)` steps for any `n`, then a
/// local rotation. Cost `ceil(log2 n) alpha + (n-1)/n m beta`.
///
/// Flow control: every step is a cycle of senders, so every send is paired with the step's
/// receive via `send_recv`.
///
/// Buffers and preconditions as for [`ring`] (the chunks may lie anywhere in `buf`).
pub fn bruck<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    chunks: &[Range<usize>],
) -> Result<(), C::Error> {
    let (rank, n) = (ch.rank(), ch.size());
    debug_assert_eq!(chunks.len(), n, "allgather: one chunk per rank");
    // Position `i` of the scratch holds chunk `rank + i`; it starts at `at[i]`.
    let order: Vec<&Range<usize>> = (0..n).map(|i| &chunks[(rank + i) % n]).collect();
    let at = offsets(order.iter().map(|c| c.len()));
    let mut held = vec![0u8; at[n]];
    held[..at[1]].copy_from_slice(&buf[order[0].clone()]);
    let mut d = 1;
    while d < n {
        let count = d.min(n - d);
        let (to, from) = ((rank + n - d) % n, (rank + d) % n);
        let (data, into) = layout::split_read_write(&mut held, 0..at[count], at[d]..at[d + count]);
        ch.send_recv(to, data, from, RecvInto::Copy(into))?;
        d *= 2;
    }
    for (i, chunk) in order.iter().enumerate().skip(1) {
        buf[(*chunk).clone()].copy_from_slice(&held[at[i]..at[i + 1]]);
    }
    Ok(())
}

/// The start of every part laid end to end, and the total: `[0, l0, l0+l1, ...]` (saturating:
/// a total beyond `usize` cannot be allocated anyway).
pub(crate) fn offsets(lens: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut at = vec![0];
    at.extend(lens.scan(0usize, |end, len| {
        *end = end.saturating_add(len);
        Some(*end)
    }));
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{
        counts, run_cluster_with_window, seg_bytes, window, Rng, Stats, UNBOUNDED,
    };
    use crate::layout;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_rank_gets_every_chunk(
            (n, cs) in (1usize..=9).prop_flat_map(|n| (Just(n), counts(n))),
            elem in prop::sample::select(vec![1usize, 4, 8]),
            seg in seg_bytes(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let chunks = layout::chunks_from_counts(&cs, elem);
            let expect = Rng::new(seed).bytes(chunks[n - 1].end);
            let out = run_cluster_with_window(n, window, |ch| {
                // Garbage everywhere except the rank's own chunk.
                let mut buf = Rng::new(!seed ^ ch.rank() as u64).bytes(expect.len());
                let own = chunks[ch.rank()].clone();
                buf[own.clone()].copy_from_slice(&expect[own]);
                ring(ch, &mut buf, &chunks, seg).map(|()| buf)
            });
            for (rank, got) in out.into_iter().enumerate() {
                prop_assert!(got.map_err(TestCaseError::fail)? == expect, "rank {} of {}", rank, n);
            }
        }
    }

    /// The all-gathers that take no segment size.
    #[derive(Clone, Copy, Debug)]
    enum Unsegmented {
        RecursiveDoubling,
        Bruck,
    }

    /// Runs `algo` on `chunks` (one per rank) under `window`: every rank starts with garbage
    /// around its own chunk of `expect`; returns what each rank ends with, and its stats.
    fn run_unsegmented(
        algo: Unsegmented,
        chunks: &[Range<usize>],
        window: usize,
        expect: &[u8],
        seed: u64,
    ) -> Vec<Result<(Vec<u8>, Stats), String>> {
        run_cluster_with_window(chunks.len(), window, |ch| {
            let mut buf = Rng::new(!seed ^ ch.rank() as u64).bytes(expect.len());
            let own = chunks[ch.rank()].clone();
            buf[own.clone()].copy_from_slice(&expect[own]);
            match algo {
                Unsegmented::RecursiveDoubling => recursive_doubling(ch, &mut buf, chunks),
                Unsegmented::Bruck => bruck(ch, &mut buf, chunks),
            }
            .map(|()| (buf, ch.stats()))
        })
    }

    /// `ceil(log2 n)`.
    fn log2_ceil(n: usize) -> usize {
        n.next_power_of_two().trailing_zeros() as usize
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn recursive_doubling_and_bruck_give_every_rank_every_chunk(
            (n, cs) in (1usize..=17).prop_flat_map(|n| (Just(n), counts(n))),
            elem in prop::sample::select(vec![1usize, 4, 8]),
            algo in prop::sample::select(vec![Unsegmented::RecursiveDoubling, Unsegmented::Bruck]),
            window in window(),
            seed in any::<u64>(),
        ) {
            let chunks = layout::chunks_from_counts(&cs, elem);
            let expect = Rng::new(seed).bytes(chunks[n - 1].end);
            let out = run_unsegmented(algo, &chunks, window, &expect, seed);
            for (rank, got) in out.into_iter().enumerate() {
                let (got, _) = got.map_err(TestCaseError::fail)?;
                prop_assert!(got == expect, "{:?}: rank {} of {}", algo, rank, n);
            }
        }
    }

    #[test]
    fn bruck_takes_ceil_log2_n_paired_steps_and_rotates_anywhere() {
        for n in 1..=17 {
            // Reversed chunks: the rotation must not assume rank order.
            let chunks: Vec<_> = (0..n).map(|p| (n - 1 - p) * 3..(n - p) * 3).collect();
            let expect = Rng::new(n as u64).bytes(3 * n);
            for window in [UNBOUNDED, 0] {
                let out = run_unsegmented(Unsegmented::Bruck, &chunks, window, &expect, 5);
                for (rank, got) in out.into_iter().enumerate() {
                    let (got, stats) = got.unwrap();
                    assert!(got == expect, "n={n} rank {rank}");
                    assert_eq!(stats.messages_sent, log2_ceil(n), "n={n} rank {rank}");
                    assert_eq!(stats.plain_sends, 0, "n={n} rank {rank}");
                    assert_eq!(stats.bytes_sent, 3 * (n - 1), "n={n} rank {rank}");
                }
            }
        }
    }

    #[test]
    fn recursive_doubling_takes_log2_steps_plus_the_fold() {
        for n in 1..=17 {
            let chunks = layout::even_chunks(5 * n, n, 1);
            let expect = Rng::new(n as u64).bytes(5 * n);
            let fold = Fold::new(n);
            let steps = fold.p.trailing_zeros() as usize;
            for window in [UNBOUNDED, 0] {
                let out =
                    run_unsegmented(Unsegmented::RecursiveDoubling, &chunks, window, &expect, 3);
                for (rank, got) in out.into_iter().enumerate() {
                    let (got, stats) = got.unwrap();
                    assert!(got == expect, "n={n} rank {rank}");
                    let (messages, plain) = match fold.role(rank) {
                        Role::Extra { .. } => (1, 1),
                        Role::Base { extra: Some(_), .. } => (steps + 1, 1),
                        Role::Base { extra: None, .. } => (steps, 0),
                    };
                    assert_eq!(stats.messages_sent, messages, "n={n} rank {rank}");
                    assert_eq!(stats.plain_sends, plain, "n={n} rank {rank}");
                }
            }
        }
    }

    #[test]
    fn bytes_on_the_wire_are_n_minus_1_chunks() {
        let n = 4;
        let chunks = layout::chunks_from_counts(&[10, 0, 30, 20], 1);
        for window in [UNBOUNDED, 0, 25] {
            let stats = run_cluster_with_window(n, window, |ch| {
                let mut buf = vec![0u8; 60];
                ring(ch, &mut buf, &chunks, 1 << 20).map(|()| ch.stats())
            });
            for (rank, s) in stats.into_iter().enumerate() {
                let s = s.unwrap();
                let right = &chunks[(rank + 1) % n];
                assert_eq!(s.bytes_sent, 60 - right.len(), "rank {rank}");
                // One message per non-empty chunk sent.
                let nonempty = chunks
                    .iter()
                    .filter(|c| !c.is_empty() && *c != right)
                    .count();
                assert_eq!(s.messages_sent, nonempty, "rank {rank}");
            }
        }
    }
}
