//! `split`: sub-communicators, as `MPI_Comm_split`.

use super::Communicator;
use crate::error::{Error, Op, Result};
use crate::exec::Group;

impl Communicator {
    /// Splits this communicator: ranks that pass the same `color` form a new communicator, ordered
    /// by `key` (ties by their rank here); ranks that pass `None` get `None`. A collective call on
    /// this communicator: every rank must call it.
    ///
    /// The new communicator shares this one's links but has its own id and sequence numbers, so
    /// it may be used concurrently with this one (for example from another thread).
    pub fn split(&self, color: Option<u32>, key: i64) -> Result<Option<Communicator>> {
        let n = self.size();
        let mine = [color.map_or(-1, i64::from), key, self.rank() as i64];
        let mut all = vec![0i64; 3 * n];
        self.all_gather(&mine, &mut all)?;
        let split_index = {
            let mut st = self.lock_state();
            st.splits += 1;
            st.splits
        };
        let Some(color) = color else {
            return Ok(None);
        };
        let (rank, members) =
            members_of(&all, color, self.rank()).map_err(|(peer, what)| Error::Mismatch {
                op: Op::Split,
                seq: 0,
                rank: self.rank(),
                peer,
                what,
            })?;
        let world: Vec<usize> = members
            .iter()
            .map(|&r| self.group.members.get(r).copied())
            .collect::<Option<_>>()
            .ok_or_else(|| {
                Error::bootstrap(Some(self.rank()), "split: a member is outside the group")
            })?;
        let group = Group {
            members: world.into(),
            rank,
            comm_id: child_id(self.group.comm_id, split_index, color),
        };
        let child = Communicator::new(
            self.transport.clone(),
            group,
            self.timeout,
            self.algorithms(),
            self.world_hosts.clone(),
            self._keepalive.clone(),
        )
        .with_trace_settings(self.recorder.settings.clone());
        // The same links, so the same model (every member's parent holds the same one).
        child.set_tuning(self.tuning());
        Ok(Some(child))
    }
}

/// Decodes what the split's all-gather collected (`all`: `[color or -1, key, rank]` per rank,
/// in rank order) into this rank's place in its `color` and the members of that color, ordered
/// by key then rank. Nothing a peer sent is trusted: a triple whose rank is not its position,
/// or whose color is neither -1 nor a `u32`, is an error `(peer, what)` naming that peer. Every
/// rank decodes the same gathered data, so every rank reports the same peer. O(n log n).
fn members_of(
    all: &[i64],
    color: u32,
    me: usize,
) -> std::result::Result<(usize, Vec<usize>), (usize, String)> {
    let mut members = Vec::new();
    for (peer, e) in all.chunks_exact(3).enumerate() {
        let &[c, key, r] = e else {
            continue; // chunks_exact(3) yields only triples
        };
        if usize::try_from(r).ok() != Some(peer) {
            return Err((peer, format!("rank {peer} sent split data naming rank {r}")));
        }
        if c != -1 && u32::try_from(c).is_err() {
            return Err((
                peer,
                format!("rank {peer} sent split color {c}, neither none (-1) nor a u32"),
            ));
        }
        if c == i64::from(color) {
            members.push((key, peer));
        }
    }
    members.sort_unstable();
    let rank = members.iter().position(|&(_, r)| r == me).ok_or_else(|| {
        (
            me,
            format!(
                "this rank's own entry (color {color}) is missing from the gathered split data"
            ),
        )
    })?;
    Ok((rank, members.into_iter().map(|(_, r)| r).collect()))
}

/// The id of the child of `parent` made by its `index`-th split with `color`: the same on every
/// member, and (with overwhelming probability) distinct from every other communicator's id.
fn child_id(parent: u64, index: u64, color: u32) -> u64 {
    let mut h = splitmix(parent ^ 0x7475_7474_6900_0000);
    h = splitmix(h ^ index);
    h = splitmix(h ^ u64::from(color));
    h.max(1)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::members_of;

    #[test]
    fn members_are_ordered_by_key_then_rank() {
        // ranks 0..4: colors 1, 2, 1, none; keys 5, 0, 5, 0.
        let all = [1, 5, 0, 2, 0, 1, 1, 5, 2, -1, 0, 3];
        assert_eq!(members_of(&all, 1, 2), Ok((1, vec![0, 2])));
        assert_eq!(members_of(&all, 2, 1), Ok((0, vec![1])));
        let all = [1, 9, 0, 1, -3, 1];
        assert_eq!(members_of(&all, 1, 0), Ok((1, vec![1, 0])));
    }

    #[test]
    fn malformed_peer_data_names_the_peer() {
        let (peer, what) = members_of(&[1, 0, 0, 1, 0, 7], 1, 0).unwrap_err();
        assert_eq!(peer, 1);
        assert!(what.contains("naming rank 7"), "{what}");
        let (peer, what) = members_of(&[1, 0, 0, 1 << 40, 0, 1], 1, 0).unwrap_err();
        assert_eq!(peer, 1);
        assert!(what.contains("color 1099511627776"), "{what}");
        let (peer, what) = members_of(&[1, 0, 0, 2, 0, -1], 1, 0).unwrap_err();
        assert_eq!(peer, 1);
        assert!(what.contains("naming rank -1"), "{what}");
        // This rank's own entry disagrees with its color: reported, not a panic.
        let (peer, _) = members_of(&[2, 0, 0, 1, 0, 1], 1, 0).unwrap_err();
        assert_eq!(peer, 0);
    }
}
