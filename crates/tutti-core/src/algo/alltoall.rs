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
//!
//! ## Bruck ([`bruck`], [`bruck_v`])
//! For small chunks, where the number of messages matters more than the bytes. A local rotation
//! first: position `i` of rank `r`'s scratch holds the chunk bound for rank `r+i` (mod n). In step
//! `k = 0..ceil(log2 n)-1`, with `d = 2^k`, rank `r` sends every block at a position with bit `k`
//! set, packed into one message, to rank `r+d`, and receives the same positions from rank `r-d`
//! in their place. A block at position `i` thus moves `+2^k` for every bit `k` of `i`, `+i` in
//! all: to the rank it is bound for, where position `i` ends up holding the chunk from rank
//! `r-i`. A local rotation back puts each in its place in `recv`.
//!
//! The block arriving at position `i` in step `k` left rank `r - d - (i mod d)`, bound for that
//! rank plus `i`, so a rank must know the size of chunks between other ranks. With equal chunks
//! ([`bruck`]) it does. With per-pair counts ([`bruck_v`]) every rank first all-gathers every
//! rank's send and receive sizes ([`allgather::bruck`] of `2n` 8-byte sizes per rank), so every
//! rank checks the same `n x n` table (rank `i`'s size for rank `j` against rank `j`'s size from
//! `i`): a disagreement fails on every rank alike with the same error, before any data moves,
//! and every message's size is known on both ends (the channel checks it again).
//!
//! Cost, `n` ranks with chunks of `m/n` bytes: `ceil(log2 n) alpha + ceil(log2 n) m/2 beta` (at
//! most `n/2` chunks per step, exactly that for `n` a power of two), plus the local rotations and
//! the packing (copies of `m` bytes per step at most). Against pairwise exchange's
//! `(n-1) alpha + (n-1)/n m beta`: fewer messages, about `log2(n) / 2` times the bytes.
//! [`bruck_v`] adds the sizes' all-gather: `ceil(log2 n) alpha + 16 n (n-1) beta` more.
//!
//! **Flow control.** Every step is a cycle of senders (rank `r` sends to `r+d` and receives from
//! `r-d`), so every send is paired with that step's receive via `send_recv`, at any window
//! (the contract's rule): a send of step `k` waits at most until rank `r+d` reaches step `k`,
//! which posts the matching receive, and a rank short of step `k` waits only for ranks still
//! further behind. No message goes ahead of its receive.

use super::allgather;
use crate::channel::{Channel, RecvInto};
use crate::layout;
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

/// Bruck all-to-all of equal chunks of `block` bytes (see the module doc): rank `r` sends
/// `send[p * block..][..block]` to rank `p` and receives rank `p`'s into the same place of
/// `recv`. Cost `ceil(log2 n) alpha + ceil(log2 n) m/2 beta`.
///
/// Flow control: every step is a cycle of senders, so every send is paired with the step's
/// receive via `send_recv`.
///
/// Preconditions (checked by the communicator): `send.len() == recv.len() == size * block`, and
/// every rank passes the same `block` (a rank that does not fails on a message's size).
pub fn bruck<C: Channel>(
    ch: &mut C,
    send: &[u8],
    recv: &mut [u8],
    block: usize,
) -> Result<(), C::Error> {
    let chunks = layout::even_chunks(ch.size() * block, ch.size(), 1);
    let blocks = Blocks {
        send,
        send_chunks: &chunks,
        recv,
        recv_chunks: &chunks,
    };
    exchange(ch, blocks, |_, _| block)
}

/// Bruck all-to-all with per-pair sizes (see the module doc): the sizes' all-gather, then the
/// data. Cost `2 ceil(log2 n) alpha + (16 n (n-1) + ceil(log2 n) m/2) beta` for chunks of `m/n`
/// bytes.
///
/// When some rank's size for another disagrees with that rank's size from it, every rank returns
/// `mismatch(peer, what)`, naming the first disagreement in rank order (`peer`: the other end, or
/// the sender when this rank is neither), and no data moves.
///
/// Flow control: every step (of the sizes and of the data) is a cycle of senders, so every send
/// is paired with the step's receive via `send_recv`.
///
/// Buffers and preconditions as for [`pairwise`].
pub fn bruck_v<C: Channel>(
    ch: &mut C,
    send: &[u8],
    send_chunks: &[Range<usize>],
    recv: &mut [u8],
    recv_chunks: &[Range<usize>],
    mismatch: impl FnOnce(usize, String) -> C::Error,
) -> Result<(), C::Error> {
    let sizes = SizeTable::all_gather(ch, send_chunks, recv_chunks)?;
    if let Some((peer, what)) = sizes.first_disagreement(ch.rank()) {
        return Err(mismatch(peer, what));
    }
    let blocks = Blocks {
        send,
        send_chunks,
        recv,
        recv_chunks,
    };
    exchange(ch, blocks, |from, to| sizes.sends[from][to])
}

/// The buffers of one all-to-all and their chunks (as for [`pairwise`]).
struct Blocks<'a> {
    send: &'a [u8],
    send_chunks: &'a [Range<usize>],
    recv: &'a mut [u8],
    recv_chunks: &'a [Range<usize>],
}

/// Bruck's steps (see the module doc); `size(from, to)` is the length of the chunk rank `from`
/// sends rank `to`.
fn exchange<C: Channel>(
    ch: &mut C,
    blocks: Blocks<'_>,
    size: impl Fn(usize, usize) -> usize,
) -> Result<(), C::Error> {
    let (rank, n) = (ch.rank(), ch.size());
    debug_assert_eq!(
        blocks.send_chunks.len(),
        n,
        "alltoall: one send chunk per rank"
    );
    debug_assert_eq!(
        blocks.recv_chunks.len(),
        n,
        "alltoall: one recv chunk per rank"
    );
    // Position `i` holds the chunk bound for `rank + i`.
    let mut held: Vec<Vec<u8>> = (0..n)
        .map(|i| blocks.send[blocks.send_chunks[(rank + i) % n].clone()].to_vec())
        .collect();
    let mut d = 1;
    while d < n {
        let moving: Vec<usize> = (0..n).filter(|i| i & d != 0).collect();
        let outgoing = moving
            .iter()
            .flat_map(|&i| &held[i])
            .copied()
            .collect::<Vec<u8>>();
        // The chunk arriving at position `i` left rank `rank - d - (i mod d)`.
        let lens: Vec<usize> = moving
            .iter()
            .map(|&i| {
                let from = (rank + 2 * n - d - i % d) % n;
                size(from, (from + i) % n)
            })
            .collect();
        let parts = allgather::offsets(lens.into_iter());
        let mut incoming = vec![0u8; parts[moving.len()]];
        let (to, from) = ((rank + d) % n, (rank + n - d) % n);
        ch.send_recv(to, &outgoing, from, RecvInto::Copy(&mut incoming))?;
        for (k, &i) in moving.iter().enumerate() {
            held[i] = incoming[parts[k]..parts[k + 1]].to_vec();
        }
        d *= 2;
    }
    // Position `i` now holds the chunk from `rank - i`.
    for (i, chunk) in held.iter().enumerate() {
        blocks.recv[blocks.recv_chunks[(rank + n - i) % n].clone()].copy_from_slice(chunk);
    }
    Ok(())
}

/// Every rank's send and receive sizes, as [`bruck_v`] all-gathers them.
struct SizeTable {
    /// `sends[i][j]`: bytes rank `i` sends rank `j`.
    sends: Vec<Vec<usize>>,
    /// `recvs[j][i]`: bytes rank `j` expects from rank `i`.
    recvs: Vec<Vec<usize>>,
}

impl SizeTable {
    /// All-gathers `2n` sizes per rank (8 bytes each, little-endian): its chunks' lengths.
    fn all_gather<C: Channel>(
        ch: &mut C,
        send_chunks: &[Range<usize>],
        recv_chunks: &[Range<usize>],
    ) -> Result<SizeTable, C::Error> {
        let n = ch.size();
        let row = 2 * n * 8;
        let mut table = vec![0u8; n * row];
        let own = &mut table[ch.rank() * row..][..row];
        for (slot, chunk) in own
            .chunks_exact_mut(8)
            .zip(send_chunks.iter().chain(recv_chunks))
        {
            slot.copy_from_slice(&(chunk.len() as u64).to_le_bytes());
        }
        allgather::bruck(ch, &mut table, &layout::even_chunks(n * row, n, 1))?;
        let sizes: Vec<usize> = table.chunks_exact(8).map(decode_size).collect();
        let rows: Vec<&[usize]> = sizes.chunks_exact(2 * n).collect();
        Ok(SizeTable {
            sends: rows.iter().map(|r| r[..n].to_vec()).collect(),
            recvs: rows.iter().map(|r| r[n..].to_vec()).collect(),
        })
    }

    /// The first pair (in rank order) whose two ends disagree: the peer `rank` names, and what.
    fn first_disagreement(&self, rank: usize) -> Option<(usize, String)> {
        let n = self.sends.len();
        let (from, to) = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .find(|&(i, j)| self.sends[i][j] != self.recvs[j][i])?;
        let peer = if rank == from { to } else { from };
        let what = format!(
            "rank {from} sends rank {to} {} bytes, but rank {to} expects {} from it",
            self.sends[from][to], self.recvs[to][from]
        );
        Some((peer, what))
    }
}

/// A size as all-gathered (8 bytes, little-endian); one beyond `usize` saturates (it then
/// disagrees with the other end's, which fits).
fn decode_size(bytes: &[u8]) -> usize {
    let mut le = [0u8; 8];
    le.copy_from_slice(bytes);
    usize::try_from(u64::from_le_bytes(le)).unwrap_or(usize::MAX)
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

    /// Like [`count_matrix`], over 1..=17 ranks and with odd element counts.
    fn wide_count_matrix() -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..=17).prop_flat_map(|n| {
            prop::collection::vec(
                prop::collection::vec(prop_oneof![Just(0usize), Just(1), 0usize..12], n),
                n,
            )
        })
    }

    /// `ceil(log2 n)`.
    fn log2_ceil(n: usize) -> usize {
        n.next_power_of_two().trailing_zeros() as usize
    }

    /// A [`bruck_v`] error as the tests see it.
    fn mismatch(peer: usize, what: String) -> String {
        format!("mismatch with rank {peer}: {what}")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn bruck_v_delivers_every_chunk(
            counts in wide_count_matrix(),
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
                bruck_v(ch, &send, &send_chunks, &mut recv, &recv_chunks, mismatch)
                    .map(|()| (recv, ch.stats()))
            });
            for (r, got) in out.into_iter().enumerate() {
                let (got, stats) = got.map_err(TestCaseError::fail)?;
                let expect: Vec<u8> =
                    (0..n).flat_map(|p| payload(seed, p, r, counts[p][r] * elem)).collect();
                prop_assert!(got == expect, "rank {} of {}", r, n);
                // The sizes' steps, then the data's: every one paired.
                prop_assert_eq!(stats.messages_sent, 2 * log2_ceil(n));
                prop_assert_eq!(stats.plain_sends, 0);
            }
        }

        #[test]
        fn bruck_delivers_every_block(
            n in 1usize..=17,
            block in prop_oneof![Just(0usize), Just(1), Just(7), 0usize..40],
            window in window(),
            seed in any::<u64>(),
        ) {
            let out = run_cluster_with_window(n, window, |ch| {
                let r = ch.rank();
                let send: Vec<u8> = (0..n).flat_map(|p| payload(seed, r, p, block)).collect();
                let mut recv = vec![0u8; n * block];
                bruck(ch, &send, &mut recv, block).map(|()| (recv, ch.stats()))
            });
            for (r, got) in out.into_iter().enumerate() {
                let (got, stats) = got.map_err(TestCaseError::fail)?;
                let expect: Vec<u8> = (0..n).flat_map(|p| payload(seed, p, r, block)).collect();
                prop_assert!(got == expect, "rank {} of {}", r, n);
                prop_assert_eq!(stats.messages_sent, log2_ceil(n));
                prop_assert_eq!(stats.plain_sends, 0);
                // Step k moves the positions with bit k set.
                let moved: usize = (0..log2_ceil(n))
                    .map(|k| (0..n).filter(|i| i >> k & 1 == 1).count())
                    .sum();
                prop_assert_eq!(stats.bytes_sent, moved * block);
            }
        }
    }

    #[test]
    fn bruck_v_fails_alike_everywhere_on_inconsistent_counts() {
        // Rank 2 sends rank 0 four bytes; rank 0 expects three from it.
        let n = 5;
        for window in [UNBOUNDED, 0] {
            let out = run_cluster_with_window(n, window, |ch| {
                let r = ch.rank();
                let mut send_counts = vec![2; n];
                let mut recv_counts = vec![2; n];
                if r == 2 {
                    send_counts[0] = 4;
                }
                if r == 0 {
                    recv_counts[2] = 3;
                }
                let sc = layout::chunks_from_counts(&send_counts, 1);
                let rc = layout::chunks_from_counts(&recv_counts, 1);
                let send = vec![r as u8; sc[n - 1].end];
                let mut recv = vec![0u8; rc[n - 1].end];
                bruck_v(ch, &send, &sc, &mut recv, &rc, mismatch)
            });
            for (r, got) in out.into_iter().enumerate() {
                let e = got.unwrap_err();
                let peer = if r == 2 { 0 } else { 2 };
                assert_eq!(
                    e,
                    format!(
                        "mismatch with rank {peer}: rank 2 sends rank 0 4 bytes, but rank 0 \
                         expects 3 from it"
                    )
                );
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
