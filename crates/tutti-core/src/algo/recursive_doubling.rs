//! Recursive doubling: the latency-optimal all-reduce
//! ([`allreduce::recursive_doubling`](super::allreduce::recursive_doubling)), and the fold of a
//! world that is not a power of two onto one that is.
//!
//! Terms: `n` ranks, `m = buf.len()` bytes, `p` the largest power of two `<= n`, `e = n - p`
//! *extra* ranks. A *step* is one exchange of whole buffers between two partners.
//!
//! ## The fold ([`Fold`])
//! The first `2e` ranks pair up, `(0, 1), (2, 3), ..., (2e-2, 2e-1)`: the odd rank of each pair
//! is an *extra*, the even one its *proxy*. The proxies and the ranks `2e..n` are the `p` *base*
//! ranks, numbered in rank order by their *virtual rank* `v` in `0..p`: proxy `2v` is `v` (for
//! `v < e`), rank `v + e` is `v` otherwise. When `n` is a power of two, `e = 0` and `v` is the
//! rank.
//!
//! ## Schedule
//! 1. **Fold** (only if `e > 0`). Each extra sends its buffer to its proxy and waits for the
//!    result; each proxy receives it and combines: `x_proxy op x_extra`.
//! 2. **Doubling.** In step `k = 0, 1, ..., log2(p) - 1`, base rank `v` and its partner
//!    `v XOR 2^k` exchange their whole buffers in one `send_recv` and both compute
//!    `lower op upper`: the partial result of the lower virtual rank is always the left operand.
//!    The incoming buffer lands in a scratch copy; the lower partner combines it into its own
//!    (`own = own op incoming`), the upper one combines its own into it
//!    (`incoming = incoming op own`), which becomes its buffer for the next step (the two swap
//!    roles; the result is copied back into `buf` at the end if it ended in the scratch).
//! 3. **Unfold** (only if `e > 0`). Each proxy sends the result to its extra.
//!
//! **Combine order, and why every rank holds the same bits.** By induction on `k`: after step
//! `k`, every base rank of an aligned block of `2^(k+1)` virtual ranks holds `R(block) =
//! R(lower half) op R(upper half)`, because both partners hold the halves' values (the same bits
//! on every rank of a half) and compute the same `a op b` from the same `a` and `b`, in the same
//! order. So the result is `x_0 op x_1 op ... op x_(n-1)` in rank order, bracketed as a balanced
//! binary tree over the `p` base values (`y_v = x_(2v) op x_(2v+1)` for a proxy, `x_(v+e)`
//! otherwise), and bit-identical on every rank: this holds even where `a op b` and `b op a`
//! differ in their bits (NaN payloads in sums, `min(+0, -0)`), and for f16/bf16, which are
//! combined in f32 and rounded back after each combine on both partners alike. Extras receive a
//! copy of their proxy's result. `Avg` is combined as a sum; the caller divides once at the end
//! ([`finish_avg`](crate::reduce::finish_avg)), the same division on every rank.
//!
//! ## Bytes on the wire and cost
//! A base rank sends and receives `log2(p) m` bytes in `log2(p)` messages (a proxy one more of
//! each); an extra sends and receives `m` once. Cost, `n` a power of two:
//! `ceil(log2 n) alpha + ceil(log2 n) m beta + ceil(log2 n) m gamma`; otherwise the fold adds two
//! steps, one with a combine: `(ceil(log2 n) + 1)(alpha + m beta) + ceil(log2 n) m gamma`. Against
//! the ring's `2(n-1) alpha + 2(n-1)/n m beta + (n-1)/n m gamma` it takes the fewest steps there
//! are for a power of two (every rank needs all `n` inputs, and the inputs a rank's result covers
//! at most double per step: `log2 n` steps), but moves about `log2(n) / 2` times the ring's
//! bytes: the choice for small buffers (see
//! [`DEFAULT_SMALL_ALL_REDUCE_BYTES`](super::DEFAULT_SMALL_ALL_REDUCE_BYTES)). Unsegmented: each
//! step is one message of `m` bytes, and the scratch copy holds `m` bytes for the call.
//!
//! ## Flow control
//! Every exchange of the doubling is a `send_recv` with the same peer on both sides, which posts
//! its receive before its send may wait (the channel contract's rule for a cycle of senders,
//! here of two). A pair of step `k` depends only on the two partners: by induction on `k`, every
//! base rank finishes step `k - 1`, so both partners of step `k` post their receives, and each
//! send lands in the other's posted receive however small the window. The fold's two one-way
//! sends are the contract's two exceptions and need no pairing, at any size and window: the
//! extra's send is the one from whose bytes the next message it receives (the result) is
//! computed, so the proxy, which posts that receive first thing, is never waiting for the
//! extra; the proxy's send of the result comes after its last receive of the call (no one waits
//! for a rank with nothing left to receive). Between two ranks the messages of one call are the
//! fold's pair or one doubling exchange, never both (an extra takes no part in the doubling, and
//! partners of different steps differ), so each receive gets the message it expects.

use crate::channel::{Channel, RecvInto};
use crate::reduce::Reducer;

/// How a world of `n` ranks folds onto the largest power of two `p <= n` (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fold {
    /// The largest power of two `<= n`: the number of base ranks.
    pub p: usize,
    /// `n - p`: the number of extra ranks (and of proxies).
    pub extra: usize,
}

/// A rank's part in the fold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A base rank: virtual rank `v` in `0..p`, proxy of `extra` if it has one.
    Base { v: usize, extra: Option<usize> },
    /// An extra rank: it hands its buffer to `proxy` and gets the result back.
    Extra { proxy: usize },
}

impl Fold {
    /// The fold of `n >= 1` ranks.
    pub(crate) fn new(n: usize) -> Fold {
        debug_assert!(n >= 1, "fold: an empty world");
        let p = if n.is_power_of_two() {
            n
        } else {
            n.next_power_of_two() / 2
        };
        Fold { p, extra: n - p }
    }

    /// The part `rank` plays.
    pub(crate) fn role(&self, rank: usize) -> Role {
        if rank >= 2 * self.extra {
            Role::Base {
                v: rank - self.extra,
                extra: None,
            }
        } else if rank.is_multiple_of(2) {
            Role::Base {
                v: rank / 2,
                extra: Some(rank + 1),
            }
        } else {
            Role::Extra { proxy: rank - 1 }
        }
    }

    /// The rank of virtual rank `v < p`.
    pub(crate) fn rank_of(&self, v: usize) -> usize {
        if v < self.extra {
            2 * v
        } else {
            v + self.extra
        }
    }
}

/// Recursive-doubling all-reduce of `buf` (see the module doc). `Avg` is combined as a sum.
///
/// Preconditions (checked by the communicator): every rank passes the same reducer and a `buf`
/// of the same length, a whole number of elements.
pub(crate) fn all_reduce<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    red: &Reducer,
) -> Result<(), C::Error> {
    debug_assert_eq!(
        buf.len() % red.dtype().size(),
        0,
        "allreduce: partial element"
    );
    let fold = Fold::new(ch.size());
    match fold.role(ch.rank()) {
        Role::Extra { proxy } => {
            ch.send(proxy, buf)?; // the result we receive next is computed from it
            ch.recv(proxy, buf)
        }
        Role::Base { v, extra } => {
            if let Some(extra) = extra {
                ch.recv_reduce(extra, buf, red)?; // x_proxy op x_extra: the lower rank first
            }
            doubling(ch, buf, red, &fold, v)?;
            match extra {
                Some(extra) => ch.send(extra, buf), // after our last receive
                None => Ok(()),
            }
        }
    }
}

/// Messages up to this many bytes get their scratch copy on the stack: a small all-reduce is
/// latency-bound, and an allocation (with its free) is a measurable part of it.
const STACK_SCRATCH: usize = 256;

/// The stack scratch, aligned as an allocation would be (kernels reinterpret aligned slices in
/// place).
#[repr(C, align(64))]
struct StackScratch([u8; STACK_SCRATCH]);

/// The doubling among the base ranks, from virtual rank `v`.
fn doubling<C: Channel>(
    ch: &mut C,
    buf: &mut [u8],
    red: &Reducer,
    fold: &Fold,
    v: usize,
) -> Result<(), C::Error> {
    if fold.p == 1 {
        return Ok(());
    }
    let mut stack = StackScratch([0; STACK_SCRATCH]);
    let mut heap: Vec<u8>;
    let scratch: &mut [u8] = match stack.0.get_mut(..buf.len()) {
        Some(s) => s,
        None => {
            heap = vec![0u8; buf.len()];
            &mut heap
        }
    };
    // Whether this rank's partial result is in `scratch` (else in `buf`).
    let mut in_scratch = false;
    let mut dist = 1;
    while dist < fold.p {
        let partner_v = v ^ dist;
        let partner = fold.rank_of(partner_v);
        let (own, incoming) = if in_scratch {
            (&mut *scratch, &mut *buf)
        } else {
            (&mut *buf, &mut *scratch)
        };
        ch.send_recv(partner, own, partner, RecvInto::Copy(incoming))?;
        // Both partners compute lower op upper (see the module doc).
        if v < partner_v {
            red.combine(own, incoming);
        } else {
            red.combine(incoming, own);
            in_scratch = !in_scratch;
        }
        dist *= 2;
    }
    if in_scratch {
        buf.copy_from_slice(scratch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::test_cluster::{
        any_reducer, run_cluster_with_window, window, Rng, Stats, UNBOUNDED,
    };
    use crate::dtype::DType;
    use crate::reduce::ReduceOp;
    use proptest::prelude::*;

    /// The world sizes the tests run: every size to 9, and powers of two and their neighbours.
    fn world() -> impl Strategy<Value = usize> {
        prop_oneof![1usize..=9, prop::sample::select(vec![12usize, 13, 16, 17])]
    }

    /// The combine order of the module doc, computed sequentially: the fold's pairs, then the
    /// balanced tree over the base values in virtual-rank order.
    fn tree_order(red: &Reducer, inputs: &[Vec<u8>]) -> Vec<u8> {
        let fold = Fold::new(inputs.len());
        let mut level: Vec<Vec<u8>> = (0..fold.p)
            .map(|v| {
                let r = fold.rank_of(v);
                let mut y = inputs[r].clone();
                if v < fold.extra {
                    red.combine(&mut y, &inputs[r + 1]);
                }
                y
            })
            .collect();
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|pair| {
                    let mut a = pair[0].clone();
                    red.combine(&mut a, &pair[1]);
                    a
                })
                .collect();
        }
        level.pop().unwrap_or_default()
    }

    fn run(red: Reducer, inputs: &[Vec<u8>], window: usize) -> Vec<(Vec<u8>, Stats)> {
        run_cluster_with_window(inputs.len(), window, |ch| {
            let mut buf = inputs[ch.rank()].clone();
            all_reduce(ch, &mut buf, &red).map(|()| (buf, ch.stats()))
        })
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
    }

    /// A float whose sum with another shows its operand order: NaNs with different payloads and
    /// signs, zeros of both signs, and ordinary values.
    fn order_sensitive_f32(rng: &mut Rng) -> f32 {
        match rng.range(0, 3) {
            0 => f32::from_bits(0x7fc0_0000 | (rng.next_u64() as u32 & 0x803f_ffff)),
            1 => 0.0,
            2 => -0.0,
            _ => rng.range(-3, 3) as f32,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary bits in every dtype and op (NaNs, infinities, f16 and bf16 included): every
        /// rank holds exactly the bits of the documented combine order.
        #[test]
        fn every_rank_holds_the_bits_of_the_documented_order(
            n in world(),
            count in prop_oneof![Just(0usize), Just(1), 2usize..20, Just(1009)],
            red in any_reducer(),
            window in window(),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let elem = red.dtype().size();
            let inputs: Vec<_> = (0..n).map(|_| rng.bytes(count * elem)).collect();
            let expect = tree_order(&red, &inputs);
            for (rank, (got, _)) in run(red, &inputs, window).into_iter().enumerate() {
                prop_assert_eq!(&got, &expect, "{} rank {} of {}", red.op(), rank, n);
            }
        }

        /// Operands whose bits depend on the order (`NaN_a + NaN_b`, `min(+0, -0)`): still the
        /// same bits on every rank.
        #[test]
        fn operand_order_is_the_same_on_both_partners(
            n in world(),
            op in prop::sample::select(vec![ReduceOp::Sum, ReduceOp::Min, ReduceOp::Max]),
            half in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let (dtype, to_bytes): (DType, fn(f32) -> Vec<u8>) = if half {
                (DType::BF16, |x| half::bf16::from_f32(x).to_le_bytes().to_vec())
            } else {
                (DType::F32, |x| x.to_le_bytes().to_vec())
            };
            let red = Reducer::new(dtype, op).unwrap();
            let inputs: Vec<Vec<u8>> = (0..n)
                .map(|_| (0..64).flat_map(|_| to_bytes(order_sensitive_f32(&mut rng))).collect())
                .collect();
            let out = run(red, &inputs, 0);
            for (rank, (got, _)) in out.iter().enumerate() {
                prop_assert!(got == &out[0].0, "{} rank {} of {} differs from rank 0", op, rank, n);
            }
            prop_assert_eq!(&out[0].0, &tree_order(&red, &inputs));
        }
    }

    #[test]
    fn the_fold_maps_virtual_ranks_in_rank_order() {
        assert_eq!(Fold::new(1), Fold { p: 1, extra: 0 });
        assert_eq!(Fold::new(8), Fold { p: 8, extra: 0 });
        assert_eq!(Fold::new(13), Fold { p: 8, extra: 5 });
        let f = Fold::new(6); // pairs (0, 1), (2, 3); base ranks 0, 2, 4, 5
        let roles: Vec<Role> = (0..6).map(|r| f.role(r)).collect();
        assert_eq!(
            roles,
            [
                Role::Base {
                    v: 0,
                    extra: Some(1)
                },
                Role::Extra { proxy: 0 },
                Role::Base {
                    v: 1,
                    extra: Some(3)
                },
                Role::Extra { proxy: 2 },
                Role::Base { v: 2, extra: None },
                Role::Base { v: 3, extra: None },
            ]
        );
        for n in 1..=40 {
            let f = Fold::new(n);
            assert!(f.p.is_power_of_two() && f.p <= n && n < 2 * f.p, "n={n}");
            let base: Vec<usize> = (0..f.p).map(|v| f.rank_of(v)).collect();
            assert!(base.windows(2).all(|w| w[0] < w[1]), "n={n}: {base:?}");
            for (v, &r) in base.iter().enumerate() {
                assert!(
                    matches!(f.role(r), Role::Base { v: w, .. } if w == v),
                    "n={n}"
                );
            }
        }
    }

    #[test]
    fn bytes_and_messages_match_the_docs_at_every_window() {
        let red = Reducer::new(DType::U64, ReduceOp::BXor).unwrap();
        let count = 37;
        let m = count * 8;
        for n in [2, 3, 4, 5, 7, 8, 12, 13, 16, 17] {
            let inputs: Vec<_> = (0..n)
                .map(|r| Rng::new(r as u64).exact_elems(&red, count))
                .collect();
            let fold = Fold::new(n);
            let steps = fold.p.trailing_zeros() as usize;
            for window in [UNBOUNDED, m, m - 1, 1, 0] {
                for (rank, (_, s)) in run(red, &inputs, window).into_iter().enumerate() {
                    // (messages, plain sends): the doubling's exchanges are all paired.
                    let (msgs, plain) = match fold.role(rank) {
                        Role::Extra { .. } => (1, 1),
                        Role::Base { extra: Some(_), .. } => (steps + 1, 1),
                        Role::Base { extra: None, .. } => (steps, 0),
                    };
                    let want = Stats {
                        messages_sent: msgs,
                        bytes_sent: msgs * m,
                        plain_sends: plain,
                    };
                    assert_eq!(s, want, "n={n} rank {rank} window {window}");
                }
            }
        }
    }

    #[test]
    fn two_ranks_need_one_exchange() {
        let red = Reducer::new(DType::F64, ReduceOp::Sum).unwrap();
        let inputs = vec![
            1.5f64.to_le_bytes().to_vec(),
            2.25f64.to_le_bytes().to_vec(),
        ];
        for (got, s) in run(red, &inputs, 0) {
            assert_eq!(got, 3.75f64.to_le_bytes());
            assert_eq!((s.messages_sent, s.plain_sends), (1, 0));
        }
    }
}
