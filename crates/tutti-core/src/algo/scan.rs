//! Scan (prefix reduction): rank `r` ends with the reduction of the inputs of ranks `0..=r`
//! (inclusive) or `0..r` (exclusive).
//!
//! Terms: `n` ranks, `m = buf.len()` bytes, `x_r` the input of rank `r`, `L = ceil(log2 n)`.
//!
//! ## Recursive doubling ([`recursive_doubling`])
//! Hillis-Steele over the ranks. Every rank holds a *partial*: the reduction of a contiguous
//! run of ranks that ends at itself, at first `x_r` alone. In step `k = 0..L` (distance
//! `d = 2^k`), rank `r` sends its partial to `r + d` (if that rank exists) and receives the
//! partial of `r - d` (if that rank exists), then extends its own to the left:
//! `partial = received op partial`. By induction, after step `k` the partial of rank `r` covers
//! ranks `max(0, r - 2^(k+1) + 1)..=r`, so after `L` steps it covers `0..=r`: the inclusive
//! result. For the exclusive scan a rank also keeps the *prefix* of the ranks before it, the
//! received partials combined the same way (`prefix = received op prefix`, the first one copied
//! in); rank 0 receives nothing and its buffer is left unchanged (as MPI's `MPI_Exscan`, whose
//! output on rank 0 is undefined).
//!
//! **Combine order.** Every combine puts the lower ranks on the left (`acc = lower op higher`),
//! so operands keep rank order, but the bracketing is the doubling tree's, not a left fold: with
//! `P_k(r)` the partial of rank `r` after `k` steps, `P_0(r) = x_r` and
//! `P_(k+1)(r) = P_k(r - 2^k) op P_k(r)` when `r >= 2^k` (else `P_k(r)`); the inclusive result
//! is `P_L(r)`, and the exclusive one `P_j(r - 2^j) op (... op (P_1(r - 2) op P_0(r - 1)))`
//! over the steps `j` in which `r` receives. For example rank 3 ends with
//! `(x0 op x1) op (x2 op x3)` and rank 6 with `(x0 op (x1 op x2)) op ((x3 op x4) op (x5 op x6))`.
//! On floats the result may therefore differ in its last bits from the left fold
//! `((x0 op x1) op x2) op ...` (which takes `r` combines one after the other, where this takes
//! `L`). It is fixed by `n` and `r` alone (not by timing or the window), so every run gives the
//! same bits; for integers and bitwise ops (associative), and for floats whose sums and products
//! are exact (small integers, as in the tests), it equals the left fold.
//!
//! Bytes on the wire: each rank sends `m` in each step in which `r + d < n`, and receives `m`
//! in each step in which `r >= d`: at most `L` messages each way. Cost, for small buffers
//! (the latency-bound case this algorithm is for): `L (alpha + m beta + m gamma)`. The exclusive
//! scan combines the prefix it keeps in every step, and the partial only while it still has a
//! step to send it in: up to `L (alpha + m beta + 2 m gamma)` on the middle ranks, and
//! `L (alpha + m beta + m gamma)` on the last rank, which sends nothing. Unsegmented: one message
//! per step.
//!
//! **Flow control.** Every message goes from a lower rank to a higher one, so there is no cycle
//! of senders: plain sends would be safe at any size and window (the channel contract's rule).
//! A rank that both sends and receives in a step still pairs the two in one `send_recv`, so its
//! send never waits on a receive it has not posted; the top rank of each chain only receives.

use crate::channel::{Channel, RecvInto};
use crate::reduce::Reducer;

/// Which prefix a scan computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanKind {
    /// Rank `r` gets `x_0 op ... op x_r`.
    Inclusive,
    /// Rank `r > 0` gets `x_0 op ... op x_(r-1)`; rank 0's buffer is left unchanged.
    Exclusive,
}

/// Recursive-doubling (Hillis-Steele) scan, in place (see the module doc). Cost
/// `ceil(log2 n) (alpha + m beta + m gamma)` (the exclusive scan: up to one more combine per
/// step on the ranks that still send).
///
/// On entry `buf` holds this rank's input; on return the inclusive or exclusive prefix
/// reduction (rank 0 of an exclusive scan: unchanged). `Avg` is combined as a sum: the caller
/// divides by the number of ranks in the prefix.
///
/// Preconditions (checked by the communicator): every rank passes the same `buf.len()`, a whole
/// number of elements, and the same reducer and kind.
pub fn recursive_doubling<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    red: &Reducer,
    kind: ScanKind,
) -> Result<(), C::Error> {
    let (rank, n) = (ch.rank(), ch.size());
    let mut partial = buf.to_vec();
    let mut incoming = vec![0u8; buf.len()];
    let mut prefix: Option<Vec<u8>> = None;
    let mut dist = 1;
    while dist < n {
        let to = (rank + dist < n).then_some(rank + dist);
        let from = rank.checked_sub(dist);
        exchange(ch, to, &partial, from, &mut incoming)?;
        if from.is_some() {
            if kind == ScanKind::Exclusive {
                extend_left(&mut prefix, &incoming, red);
            }
            // An exclusive scan needs its partial only to send it on.
            if kind == ScanKind::Inclusive || rank + 2 * dist < n {
                red.combine(&mut incoming, &partial);
                std::mem::swap(&mut partial, &mut incoming);
            }
        }
        dist *= 2;
    }
    match kind {
        ScanKind::Inclusive => buf.copy_from_slice(&partial),
        ScanKind::Exclusive => {
            if let Some(prefix) = prefix {
                buf.copy_from_slice(&prefix);
            }
        }
    }
    Ok(())
}

/// One step's traffic: sends `partial` to `to` and receives into `incoming` from `from`, paired
/// in one `send_recv` when there are both.
fn exchange<C: Channel>(
    ch: &mut C,
    to: Option<usize>,
    partial: &[u8],
    from: Option<usize>,
    incoming: &mut [u8],
) -> Result<(), C::Error> {
    match (to, from) {
        (Some(to), Some(from)) => ch.send_recv(to, partial, from, RecvInto::Copy(incoming)),
        (Some(to), None) => ch.send(to, partial),
        (None, Some(from)) => ch.recv(from, incoming),
        (None, None) => Ok(()),
    }
}

/// `prefix = lower op prefix`, or `lower` itself for the first piece.
fn extend_left(prefix: &mut Option<Vec<u8>>, lower: &[u8], red: &Reducer) {
    let mut extended = lower.to_vec();
    if let Some(higher) = prefix.as_ref() {
        red.combine(&mut extended, higher);
    }
    *prefix = Some(extended);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{
        any_reducer, elem_count, exact_reducer, fold_in_rank_order, run_cluster_with_window,
        window, Rng, UNBOUNDED,
    };
    use crate::dtype::DType;
    use crate::reduce::ReduceOp;
    use proptest::prelude::*;

    /// Runs the scan on every rank; returns each rank's buffer and what it put on the wire.
    fn run(
        red: Reducer,
        inputs: &[Vec<u8>],
        kind: ScanKind,
        window: usize,
    ) -> Vec<(Vec<u8>, crate::algo::test_cluster::Stats)> {
        run_cluster_with_window(inputs.len(), window, |ch| {
            let mut buf = inputs[ch.rank()].clone();
            recursive_doubling(ch, &mut buf, &red, kind).map(|()| (buf, ch.stats()))
        })
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
    }

    /// What rank `rank` must hold after a scan, folded left to right in rank order.
    fn left_fold(red: &Reducer, inputs: &[Vec<u8>], rank: usize, kind: ScanKind) -> Vec<u8> {
        match kind {
            ScanKind::Inclusive => fold_in_rank_order(red, &inputs[..=rank]),
            ScanKind::Exclusive if rank == 0 => inputs[0].clone(),
            ScanKind::Exclusive => fold_in_rank_order(red, &inputs[..rank]),
        }
    }

    /// `P_k(r)` of the module doc: the partial of rank `r` after `k` steps.
    fn partial_after(red: &Reducer, inputs: &[Vec<u8>], r: usize, k: u32) -> Vec<u8> {
        if k == 0 {
            return inputs[r].clone();
        }
        let dist = 1 << (k - 1);
        let own = partial_after(red, inputs, r, k - 1);
        if r < dist {
            return own;
        }
        let mut combined = partial_after(red, inputs, r - dist, k - 1);
        red.combine(&mut combined, &own);
        combined
    }

    /// What rank `rank` must hold, in the documented combine order.
    fn documented(red: &Reducer, inputs: &[Vec<u8>], rank: usize, kind: ScanKind) -> Vec<u8> {
        let steps = inputs.len().next_power_of_two().trailing_zeros();
        if kind == ScanKind::Inclusive {
            return partial_after(red, inputs, rank, steps);
        }
        let mut prefix: Option<Vec<u8>> = None;
        for k in (0..steps).filter(|&k| rank >= 1 << k) {
            let received = partial_after(red, inputs, rank - (1 << k), k);
            extend_left(&mut prefix, &received, red);
        }
        prefix.unwrap_or_else(|| inputs[rank].clone())
    }

    fn kind() -> impl Strategy<Value = ScanKind> {
        prop_oneof![Just(ScanKind::Inclusive), Just(ScanKind::Exclusive)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(192))]

        #[test]
        fn every_rank_gets_its_prefix(
            n in 1usize..=17,
            count in elem_count(),
            red in exact_reducer(),
            kind in kind(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let inputs: Vec<_> = (0..n).map(|_| rng.exact_elems(&red, count)).collect();
            for (rank, (got, _)) in run(red, &inputs, kind, window).into_iter().enumerate() {
                prop_assert_eq!(got, left_fold(&red, &inputs, rank, kind), "rank {}", rank);
            }
        }

        #[test]
        fn any_values_follow_the_documented_order(
            n in 1usize..=17,
            count in prop_oneof![Just(0usize), Just(1), 0usize..40],
            red in any_reducer(),
            kind in kind(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let width = red.dtype().size();
            let inputs: Vec<_> = (0..n).map(|_| rng.bytes(count * width)).collect();
            for (rank, (got, _)) in run(red, &inputs, kind, window).into_iter().enumerate() {
                prop_assert_eq!(got, documented(&red, &inputs, rank, kind), "rank {}", rank);
            }
        }
    }

    #[test]
    fn the_doubling_order_differs_from_a_left_fold_on_floats() {
        // Guards the test above: its reference must encode an order a left fold does not.
        let red = Reducer::new(DType::F32, ReduceOp::Sum).unwrap();
        let mut rng = Rng::new(5);
        let inputs: Vec<_> = (0..8).map(|_| rng.rough_f32(200)).collect();
        let got = run(red, &inputs, ScanKind::Inclusive, UNBOUNDED);
        assert_eq!(got[7].0, documented(&red, &inputs, 7, ScanKind::Inclusive));
        assert_ne!(got[7].0, fold_in_rank_order(&red, &inputs));
        // Ranks 0 and 1 combine at most one pair: both orders agree there.
        assert_eq!(got[1].0, fold_in_rank_order(&red, &inputs[..2]));
        // The module doc's example, element by element.
        let x = |r: usize, i: usize| {
            f32::from_le_bytes(inputs[r][4 * i..4 * i + 4].try_into().unwrap())
        };
        for i in 0..200 {
            let want =
                (x(0, i) + (x(1, i) + x(2, i))) + ((x(3, i) + x(4, i)) + (x(5, i) + x(6, i)));
            assert_eq!(
                got[6].0[4 * i..4 * i + 4],
                want.to_le_bytes(),
                "element {i}"
            );
        }
    }

    #[test]
    fn messages_per_rank_follow_the_doubling_steps() {
        let red = Reducer::new(DType::I32, ReduceOp::Sum).unwrap();
        for n in 1..=17 {
            let inputs = vec![vec![1u8; 12]; n];
            for kind in [ScanKind::Inclusive, ScanKind::Exclusive] {
                for window in [UNBOUNDED, 0] {
                    for (rank, (_, stats)) in run(red, &inputs, kind, window).iter().enumerate() {
                        let steps = n.next_power_of_two().trailing_zeros() as usize;
                        let sends = (0..steps).filter(|k| rank + (1 << k) < n).count();
                        assert_eq!(stats.messages_sent, sends, "n={n} rank {rank}");
                        assert_eq!(stats.bytes_sent, sends * 12, "n={n} rank {rank}");
                    }
                }
            }
        }
    }

    #[test]
    fn rank_zero_of_an_exclusive_scan_keeps_its_buffer() {
        let red = Reducer::new(DType::U8, ReduceOp::Sum).unwrap();
        let inputs: Vec<_> = (0..5u8).map(|r| vec![r + 10; 3]).collect();
        let got = run(red, &inputs, ScanKind::Exclusive, 0);
        assert_eq!(got[0].0, vec![10; 3]);
        assert_eq!(got[1].0, vec![10; 3]);
        assert_eq!(got[4].0, vec![10 + 11 + 12 + 13; 3]);
    }
}
