//! [`SubChannel`]: a [`Channel`] restricted to an ordered subset of its ranks, so that any
//! algorithm of this crate runs unchanged on a group of ranks (the ranks of one host, the
//! leaders of all hosts: see [`hierarchical`](super::hierarchical)).
//!
//! Sub-rank `i` is the parent's rank `members[i]`; this rank is the sub-rank `index` with
//! `members[index] == parent.rank()`. Every call maps its peers through `members` and goes to
//! the parent unchanged otherwise, so the parent's contract holds for the view as it is:
//!
//! - **Flow control.** [`window`](Channel::window) is the parent's: the window is per peer, and
//!   the view talks to each of its peers over the parent's link to the same rank. An algorithm
//!   that runs on the view keeps the rule for the window as long as no other traffic of the same
//!   call uses the same directed pair (sender, receiver) while it runs; whoever combines several
//!   views in one call says why (see `hierarchical`'s module doc).
//! - **Order and exact sizes** hold per pair of parent ranks, hence per pair of sub-ranks.
//!
//! Nothing is copied or buffered: a view is two references and an index.

use crate::channel::{Channel, RecvInto};
use crate::reduce::Reducer;

/// A view of `parent` restricted to the ranks `members`, in that order (see the module doc).
///
/// Invariants: `members` holds distinct ranks of the parent, and `members[index]` is the parent's
/// own rank. [`rank`](Channel::rank) is `index`, [`size`](Channel::size) is `members.len()`.
pub struct SubChannel<'a, C: Channel> {
    parent: &'a mut C,
    members: &'a [usize],
    index: usize,
}

impl<'a, C: Channel> SubChannel<'a, C> {
    /// The view of `parent` over `members` (distinct ranks of the parent, in any order), or
    /// `None` if the parent's rank is not one of them.
    pub fn new(parent: &'a mut C, members: &'a [usize]) -> Option<SubChannel<'a, C>> {
        debug_assert!(
            members.iter().all(|&r| r < parent.size()),
            "SubChannel: member out of range"
        );
        debug_assert!(
            members
                .iter()
                .enumerate()
                .all(|(i, r)| !members[..i].contains(r)),
            "SubChannel: repeated member"
        );
        let index = members.iter().position(|&r| r == parent.rank())?;
        Some(SubChannel {
            parent,
            members,
            index,
        })
    }

    /// The parent's rank of sub-rank `sub`.
    ///
    /// # Panics
    /// If `sub >= size()` (a schedule that names a peer outside the view).
    pub fn parent_rank(&self, sub: usize) -> usize {
        self.members[sub]
    }
}

impl<C: Channel> Channel for SubChannel<'_, C> {
    type Error = C::Error;

    fn rank(&self) -> usize {
        self.index
    }

    fn size(&self) -> usize {
        self.members.len()
    }

    fn send(&mut self, peer: usize, data: &[u8]) -> Result<(), C::Error> {
        let peer = self.parent_rank(peer);
        self.parent.send(peer, data)
    }

    fn recv(&mut self, peer: usize, buf: &mut [u8]) -> Result<(), C::Error> {
        let peer = self.parent_rank(peer);
        self.parent.recv(peer, buf)
    }

    fn recv_reduce(
        &mut self,
        peer: usize,
        acc: &mut [u8],
        reducer: &Reducer,
    ) -> Result<(), C::Error> {
        let peer = self.parent_rank(peer);
        self.parent.recv_reduce(peer, acc, reducer)
    }

    fn send_recv(
        &mut self,
        to: usize,
        data: &[u8],
        from: usize,
        into: RecvInto<'_>,
    ) -> Result<(), C::Error> {
        let (to, from) = (self.parent_rank(to), self.parent_rank(from));
        self.parent.send_recv(to, data, from, into)
    }

    fn window(&self) -> usize {
        self.parent.window()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::allreduce;
    use crate::algo::test_cluster::{run_cluster_with_window, Rng, UNBOUNDED};
    use crate::dtype::DType;
    use crate::reduce::ReduceOp;

    #[test]
    fn a_view_maps_ranks_and_keeps_the_window() {
        let out = run_cluster_with_window(5, 7, |ch| {
            let members = [4, 1, 3];
            SubChannel::new(ch, &members)
                .map(|sub| (sub.rank(), sub.size(), sub.window(), sub.parent_rank(0)))
        });
        assert_eq!(
            out,
            vec![
                None,
                Some((1, 3, 7, 4)),
                None,
                Some((2, 3, 7, 4)),
                Some((0, 3, 7, 4))
            ]
        );
    }

    #[test]
    fn an_all_reduce_runs_on_a_subset_while_the_others_talk_among_themselves() {
        // Ranks 5, 0, 3 all-reduce over one view and 1, 2, 4 over another, at the same time.
        let red = Reducer::new(DType::I64, ReduceOp::Sum).unwrap();
        let groups: [&[usize]; 2] = [&[5, 0, 3], &[1, 4, 2]];
        for window in [UNBOUNDED, 0, 8] {
            let out = run_cluster_with_window(6, window, |ch| {
                let mut buf = Rng::new(ch.rank() as u64).exact_elems(&red, 21);
                let group = groups.iter().find(|g| g.contains(&ch.rank())).unwrap();
                let mut sub = SubChannel::new(ch, group).unwrap();
                allreduce::ring(&mut sub, &mut buf, &red, 16).map(|()| buf)
            });
            for group in groups {
                let mut expect = Rng::new(group[0] as u64).exact_elems(&red, 21);
                for &r in &group[1..] {
                    red.combine(&mut expect, &Rng::new(r as u64).exact_elems(&red, 21));
                }
                for &r in group {
                    assert_eq!(
                        out[r].as_ref().unwrap(),
                        &expect,
                        "rank {r}, window {window}"
                    );
                }
            }
        }
    }
}
