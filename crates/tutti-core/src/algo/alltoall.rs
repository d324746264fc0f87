//! All-to-all: every rank sends a distinct chunk to every rank (a transpose of chunks).
//!
//! Terms: `n` ranks; rank `r`'s input `send` is split into `n` *chunks* `send_chunks[p]` (the part
//! for rank `p`) and its output `recv` into `recv_chunks[p]` (the part from rank `p`). Equal
//! chunks give all-to-all, per-pair counts all-to-all-v; `|send_chunks[p]|` on rank `r` must equal
//! `|recv_chunks[r]|` on rank `p`.
//!
//! ## Pairwise exchange ([`pairwise`])
//! The own chunk is copied locally. In step `k = 1..n-1` rank `r` sends `send_chunks[(r+k) mod n]`
//! to rank `r+k` and receives `recv_chunks[(r-k) mod n]` from rank `r-k`: the `k`-th message of
//! every rank goes to a different peer, so no rank is the target of everyone at once. Every
//! chunk is sent as exactly one message, even when empty: the two ends of a pair only agree on
//! its size if the user's counts are consistent, and a disagreement must fail as a size
//! mismatch, not hang. Unsegmented.
//!
//! **Flow control.** Each peer gets one message, so a chunk of at most `window()` bytes can be
//! sent ahead without waiting: all such chunks go first, in step order, before any receive, so
//! the steps do not wait for each other and their latencies overlap instead of adding up (what
//! matters on long links; with an unbounded window this is "send everything, then receive").
//! Every larger chunk is exchanged in its step with `send_recv(to = r+k, from = r-k)`, paired
//! with the receive of that step; a step whose chunk went ahead only receives. This cannot
//! deadlock: a send of step `k` waits only for rank `r+k` to reach its step `k`, which posts the
//! receive from `r`, and a rank short of step `k` waits only for ranks still further behind.
//!
//! Bytes on the wire per rank: sends `|send| - |own chunk|` and receives
//! `|recv| - |own chunk|`, `(n-1)/n m` each for equal chunks of a buffer of `m` bytes. Cost:
//! `(n-1) alpha + (n-1)/n m beta` if every message's latency is paid in turn (large chunks, step
//! by step); with the sends overlapped (chunks within the window), closer to
//! `alpha + (n-1)/n m beta` when the per-message overhead is small.

use crate::channel::{Channel, RecvInto};
use std::ops::Range;

/// Pairwise-exchange all-to-all (see the module doc).
///
/// Preconditions (checked by the communicator): `send_chunks.len() == recv_chunks.len() == size`,
/// every range lies in its buffer, `send_chunks[rank].len() == recv_chunks[rank].len()`, and every
/// rank passes the same segment-free schedule (nothing else to agree on).
pub fn pairwise<C: Channel>(
    ch: &mut C,
    send: &[u8],
    send_chunks: &[Range<usize>],
    recv: &mut [u8],
    recv_chunks: &[Range<usize>],
) -> Result<(), C::Error> {
    let (rank, n) = (ch.rank(), ch.size());
    debug_assert_eq!(send_chunks.len(), n, "alltoall: one send chunk per rank");
    debug_assert_eq!(recv_chunks.len(), n, "alltoall: one recv chunk per rank");
    recv[recv_chunks[rank].clone()].copy_from_slice(&send[send_chunks[rank].clone()]);
    let window = ch.window();
    let ahead = |to: usize| send_chunks[to].len() <= window;
    for k in 1..n {
        let to = (rank + k) % n;
        if ahead(to) {
            ch.send(to, &send[send_chunks[to].clone()])?;
        }
    }
    for k in 1..n {
        let (to, from) = ((rank + k) % n, (rank + n - k) % n);
        let into = &mut recv[recv_chunks[from].clone()];
        if ahead(to) {
            ch.recv(from, into)?;
        } else {
            let data = &send[send_chunks[to].clone()];
            ch.send_recv(to, data, from, RecvInto::Copy(into))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{run_cluster_with_window, window, Rng, UNBOUNDED};
    use crate::layout;
    use proptest::prelude::*;

    /// `counts[i][j]`: elements rank `i` sends to rank `j`, some of them zero.
    fn count_matrix() -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..=9).prop_flat_map(|n| {
            prop::collection::vec(
                prop::collection::vec(prop_oneof![Just(0usize), 0usize..30], n),
                n,
            )
        })
    }

    /// The bytes rank `src` sends to rank `dst`: a function of both, so misrouting shows.
    fn payload(seed: u64, src: usize, dst: usize, len: usize) -> Vec<u8> {
        Rng::new(seed ^ ((src as u64) << 32 | dst as u64)).bytes(len)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_pair_exchanges_its_chunk(
            counts in count_matrix(),
            elem in prop::sample::select(vec![1usize, 4]),
            window in window(),
            seed in any::<u64>(),
        ) {
            let n = counts.len();
            let out = run_cluster_with_window(n, window, |ch| {
                let r = ch.rank();
                let send_chunks = layout::chunks_from_counts(&counts[r], elem);
                let from: Vec<usize> = (0..n).map(|p| counts[p][r]).collect();
                let recv_chunks = layout::chunks_from_counts(&from, elem);
                let send: Vec<u8> =
                    (0..n).flat_map(|p| payload(seed, r, p, send_chunks[p].len())).collect();
                let mut recv = vec![0u8; recv_chunks[n - 1].end];
                pairwise(ch, &send, &send_chunks, &mut recv, &recv_chunks)
                    .map(|()| (recv, ch.stats()))
            });
            for (r, got) in out.into_iter().enumerate() {
                let (got, stats) = got.map_err(TestCaseError::fail)?;
                let expect: Vec<u8> =
                    (0..n).flat_map(|p| payload(seed, p, r, counts[p][r] * elem)).collect();
                prop_assert!(got == expect, "rank {} of {}", r, n);
                // One message per peer, empty chunks included; those that fit go ahead.
                prop_assert_eq!(stats.messages_sent, n - 1);
                let ahead = (0..n).filter(|&p| p != r && counts[r][p] * elem <= window).count();
                prop_assert_eq!(stats.plain_sends, ahead);
            }
        }
    }

    #[test]
    fn chunks_beyond_the_window_are_exchanged_step_by_step() {
        let chunk = 5000;
        for (n, window) in [2, 5, 9]
            .into_iter()
            .flat_map(|n| [0, chunk - 1, chunk, UNBOUNDED].map(|w| (n, w)))
        {
            let chunks: Vec<_> = (0..n).map(|p| p * chunk..(p + 1) * chunk).collect();
            let out = run_cluster_with_window(n, window, |ch| {
                let r = ch.rank();
                let send: Vec<u8> = (0..n).flat_map(|p| payload(7, r, p, chunk)).collect();
                let mut recv = vec![0u8; n * chunk];
                pairwise(ch, &send, &chunks, &mut recv, &chunks).map(|()| (recv, ch.stats()))
            });
            for (r, got) in out.into_iter().enumerate() {
                let (got, stats) = got.unwrap();
                let expect: Vec<u8> = (0..n).flat_map(|p| payload(7, p, r, chunk)).collect();
                assert!(got == expect, "n={n} window {window}: rank {r}");
                let ahead = if chunk <= window { n - 1 } else { 0 };
                assert_eq!(stats.plain_sends, ahead, "n={n} window {window}: rank {r}");
            }
        }
    }

    #[test]
    fn inconsistent_counts_fail_with_a_size_mismatch() {
        // Rank 0 sends rank 1 nothing, but rank 1 expects 3 bytes from rank 0.
        for window in [UNBOUNDED, 0] {
            let out = run_cluster_with_window(2, window, |ch| {
                let (send_chunks, recv_chunks) = if ch.rank() == 0 {
                    (vec![0..1, 1..1], vec![0..1, 1..2])
                } else {
                    (vec![0..1, 1..2], vec![0..3, 3..4])
                };
                let mut recv = vec![0u8; recv_chunks[1].end];
                pairwise(ch, &[7, 8], &send_chunks, &mut recv, &recv_chunks)
            });
            assert!(out[0].is_ok(), "{:?}", out[0]);
            let e = out[1].as_ref().unwrap_err();
            assert!(
                e.contains("rank 1: recv from peer 0: expected 3 bytes, got 0"),
                "{e}"
            );
        }
    }
}
