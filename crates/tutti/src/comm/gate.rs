//! [`CallGate`]: one collective at a time on a communicator, waited for within a deadline.
//!
//! Calls on one communicator must run in the same order on every rank, so a second thread's
//! call waits until the first has finished. That wait is bounded by the waiting call's own
//! deadline: a call stuck behind another (which is itself bounded by its deadline, but may have
//! a longer one) gives up with [`Error::Busy`](crate::Error::Busy) naming the call ahead of it,
//! before it has taken a sequence number or sent anything, so the world stays intact.

use crate::deadline::Deadline;
use crate::error::Op;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Who holds the gate: the op and (once chosen) the sequence number of the running call.
type Holder = Option<(Op, u64)>;

/// The turn of one call on one communicator. Cost: one uncontended mutex lock and unlock on
/// entry and on exit.
#[derive(Default)]
pub(crate) struct CallGate {
    holder: Mutex<Holder>,
    freed: Condvar,
}

/// A call's turn; dropping it lets the next call in.
pub(crate) struct Turn<'a> {
    gate: &'a CallGate,
}

impl CallGate {
    fn lock(&self) -> MutexGuard<'_, Holder> {
        // The holder is a plain value: a panic elsewhere cannot leave it half-written.
        self.holder.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the gate until `deadline`; on timeout returns how long this call waited and a
    /// description of the call that holds the gate (e.g. "all_reduce #7").
    pub fn enter(&self, op: Op, deadline: Deadline) -> Result<Turn<'_>, (Duration, String)> {
        let mut holder = self.lock();
        while let Some((held, seq)) = *holder {
            let left = deadline.remaining();
            if left.is_zero() {
                let what = if seq == 0 {
                    held.to_string()
                } else {
                    format!("{held} #{seq}")
                };
                return Err((deadline.elapsed(), what));
            }
            holder = self
                .freed
                .wait_timeout(holder, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *holder = Some((op, 0));
        Ok(Turn { gate: self })
    }
}

impl Turn<'_> {
    /// Records the running call's sequence number (for the error of a call behind it).
    pub fn started(&self, seq: u64) {
        if let Some((_, s)) = self.gate.lock().as_mut() {
            *s = seq;
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.gate.lock() = None;
        self.gate.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_call_behind_another_gives_up_at_its_deadline_naming_it() {
        let gate = CallGate::default();
        let first = gate
            .enter(Op::AllReduce, Deadline::after(Duration::ZERO))
            .unwrap();
        first.started(7);
        let t = Instant::now();
        let (waited, holder) = gate
            .enter(Op::Broadcast, Deadline::after(Duration::from_millis(50)))
            .err()
            .expect("the gate is held");
        let took = t.elapsed();
        assert_eq!(holder, "all_reduce #7");
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        drop(first);
        let again = gate.enter(Op::Broadcast, Deadline::after(Duration::ZERO));
        assert!(again.is_ok(), "a freed gate is entered at once");
    }
}
