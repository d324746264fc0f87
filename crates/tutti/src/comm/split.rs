//! `split`: sub-communicators, as `MPI_Comm_split`.

use super::Communicator;
use crate::error::Result;
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
        let mut members: Vec<(i64, usize)> = all
            .chunks_exact(3)
            .filter(|e| e[0] == i64::from(color))
            .map(|e| (e[1], e[2] as usize))
            .collect();
        members.sort_unstable();
        let rank = members
            .iter()
            .position(|&(_, r)| r == self.rank())
            .expect("this rank is among the members of its own color");
        let world: Vec<usize> = members
            .iter()
            .map(|&(_, r)| self.group.members[r])
            .collect();
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
