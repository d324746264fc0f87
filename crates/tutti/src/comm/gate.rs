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

/// What the gate's mutex guards.
#[derive(Default)]
struct GateState {
    /// Who holds the gate: the op and (once chosen) the sequence number of the running call.
    holder: Option<(Op, u64)>,
    /// Calls asleep on `freed`: a turn's end notifies only if there are any (a notification
    /// costs a `futex` system call even when nobody waits, about a tenth of an 8-byte
    /// all-reduce's time between two local ranks).
    waiters: usize,
}

/// The turn of one call on one communicator. Cost: one uncontended mutex lock and unlock on
/// entry, on [`Turn::started`] and on exit; no system call unless another call waits.
#[derive(Default)]
pub(crate) struct CallGate {
    state: Mutex<GateState>,
    freed: Condvar,
}

/// A call's turn; dropping it lets the next call in.
pub(crate) struct Turn<'a> {
    gate: &'a CallGate,
}

impl CallGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // Plain values: a panic elsewhere cannot leave them half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the gate until `deadline`; on timeout returns how long this call waited and a
    /// description of the call that holds the gate (e.g. "all_reduce #7").
    pub fn enter(&self, op: Op, deadline: Deadline) -> Result<Turn<'_>, (Duration, String)> {
        let mut state = self.lock();
        while let Some((held, seq)) = state.holder {
            let left = deadline.remaining();
            if left.is_zero() {
                let what = if seq == 0 {
                    held.to_string()
                } else {
                    format!("{held} #{seq}")
                };
                return Err((deadline.elapsed(), what));
            }
            state.waiters += 1;
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            state.waiters -= 1;
        }
        state.holder = Some((op, 0));
        Ok(Turn { gate: self })
    }
}

impl Turn<'_> {
    /// Records the running call's sequence number (for the error of a call behind it).
    pub fn started(&self, seq: u64) {
        if let Some((_, s)) = self.gate.lock().holder.as_mut() {
            *s = seq;
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.holder = None;
        // A waiter counts itself under the mutex before it sleeps (and `wait_timeout` releases
        // the mutex atomically), so none is missed. All are woken: one whose wait timed out
        // meanwhile may swallow a single notification, leaving the others asleep.
        if state.waiters > 0 {
            self.gate.freed.notify_all();
        }
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

    #[test]
    fn a_waiting_call_enters_as_soon_as_the_turn_ends() {
        let gate = CallGate::default();
        let first = gate
            .enter(Op::AllReduce, Deadline::after(Duration::ZERO))
            .unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let t = Instant::now();
                let turn = gate.enter(Op::Barrier, Deadline::after(Duration::from_secs(20)));
                (turn.is_ok(), t.elapsed())
            });
            // Bounded: the waiter counts itself within 10 s, or the test fails below.
            let t = Instant::now();
            while gate.lock().waiters == 0 && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(gate.lock().waiters, 1, "the waiter sleeps on the gate");
            drop(first);
            let (entered, waited) = waiter.join().unwrap();
            assert!(entered, "the waiter gets the turn");
            // Woken by the turn's end, not by its own 20 s deadline.
            assert!(waited < Duration::from_secs(12), "{waited:?}");
        });
        assert_eq!(gate.lock().waiters, 0);
    }
}
