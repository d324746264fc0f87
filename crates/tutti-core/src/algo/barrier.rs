//! Barrier: no rank returns before every rank has entered.
//!
//! ## Dissemination ([`dissemination`])
//! In round `k = 0, 1, ...` while `2^k < n`, rank `r` sends an empty message to `(r + 2^k) mod n`
//! and waits for one from `(r - 2^k) mod n`. By induction, after round `k` rank `r` has heard
//! (directly or through intermediaries) from the `2^(k+1) - 1` ranks before it, so after
//! `ceil(log2 n)` rounds it has heard from every rank: all have entered. Unlike a tree barrier
//! there is no root and no release phase; it works for every `n`, powers of two or not.
//!
//! Bytes on the wire: none (zero-length messages); `ceil(log2 n)` messages sent and received
//! per rank. Cost: `ceil(log2 n) alpha`.

use crate::channel::Channel;

/// Dissemination barrier (see the module doc).
pub fn dissemination<C: Channel>(ch: &mut C) -> Result<(), C::Error> {
    let (rank, n) = (ch.rank(), ch.size());
    let mut dist = 1;
    while dist < n {
        ch.send((rank + dist) % n, &[])?;
        ch.recv((rank + n - dist) % n, &mut [])?;
        dist *= 2;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{run_cluster, Rng};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn no_rank_leaves_before_all_entered() {
        for n in 1..=9 {
            let entered = AtomicUsize::new(0);
            let out = run_cluster(n, |ch| {
                // Late arrivals: without the barrier, early ranks would see a short count.
                let delay = Rng::new(n as u64 * 100 + ch.rank() as u64).range(0, 20);
                std::thread::sleep(Duration::from_millis(delay as u64));
                entered.fetch_add(1, Ordering::SeqCst);
                dissemination(ch)?;
                Ok::<_, String>((entered.load(Ordering::SeqCst), ch.stats().messages_sent))
            });
            let rounds = n.next_power_of_two().trailing_zeros() as usize;
            for (rank, r) in out.into_iter().enumerate() {
                let (seen, sent) = r.unwrap();
                assert_eq!(seen, n, "n={n}: rank {rank} left before everyone entered");
                assert_eq!(sent, rounds, "n={n}: rank {rank}");
            }
        }
    }
}
