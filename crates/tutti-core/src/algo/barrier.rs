//! Barrier: no rank returns before every rank has entered.
//!
//! ## Dissemination ([`dissemination`])
//! In round `k = 0, 1, ...` while `2^k < n`, rank `r` sends an empty message to `(r + 2^k) mod n`
//! and waits for one from `(r - 2^k) mod n`, both in one `send_recv`. By induction, after round
//! `k` rank `r` has heard (directly or through intermediaries) from the `2^(k+1) - 1` ranks
//! before it, so after `ceil(log2 n)` rounds it has heard from every rank: all have entered.
//! Unlike a tree barrier there is no root and no release phase; it works for every `n`, powers
//! of two or not.
//!
//! **Flow control.** The senders of a round form cycles (`r -> r + 2^k -> ...`), so each send is
//! paired with the round's receive (the channel contract's rule). Empty messages fit in any
//! window, so plain sends would not wait either; the pairing keeps the barrier safe on a
//! transport that also bounds the number of messages it buffers.
//!
//! Bytes on the wire: none (zero-length messages); `ceil(log2 n)` messages sent and received
//! per rank. Cost: `ceil(log2 n) alpha`.

use crate::channel::{Channel, RecvInto};

/// Dissemination barrier (see the module doc).
pub fn dissemination<C: Channel>(ch: &mut C) -> Result<(), C::Error> {
    let (rank, n) = (ch.rank(), ch.size());
    let mut dist = 1;
    while dist < n {
        let (to, from) = ((rank + dist) % n, (rank + n - dist) % n);
        ch.send_recv(to, &[], from, RecvInto::Copy(&mut []))?;
        dist *= 2;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{run_cluster_with_window, Rng, UNBOUNDED};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn no_rank_leaves_before_all_entered() {
        for (n, window) in (1..=9).flat_map(|n| [(n, UNBOUNDED), (n, 0)]) {
            let entered = AtomicUsize::new(0);
            let out = run_cluster_with_window(n, window, |ch| {
                // Late arrivals: without the barrier, early ranks would see a short count.
                let delay = Rng::new(n as u64 * 100 + ch.rank() as u64).range(0, 20);
                std::thread::sleep(Duration::from_millis(delay as u64));
                entered.fetch_add(1, Ordering::SeqCst);
                dissemination(ch)?;
                Ok::<_, String>((entered.load(Ordering::SeqCst), ch.stats()))
            });
            let rounds = n.next_power_of_two().trailing_zeros() as usize;
            for (rank, r) in out.into_iter().enumerate() {
                let (seen, sent) = r.unwrap();
                assert_eq!(seen, n, "n={n}: rank {rank} left before everyone entered");
                assert_eq!(sent.messages_sent, rounds, "n={n}: rank {rank}");
                assert_eq!(sent.plain_sends, 0, "n={n}: rank {rank}");
            }
        }
    }
}
