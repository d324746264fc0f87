//! Where received messages wait until a receive asks for them.
//!
//! One [`Mailbox`] per rank, with one slot per source peer: a FIFO queue per [`MsgKey`] and the
//! peer's closed state. Transports deliver into it from their background readers (or, in
//! process, from the sending thread); receives take from it, waiting on a condition variable
//! until their deadline.
//!
//! Invariant: once a peer is closed, messages it delivered before are still handed out; only a
//! receive that finds its queue empty reports the peer lost.

use super::{Message, MsgKey, TransportError};
use crate::deadline::Deadline;
use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Received messages of one rank, by source peer.
pub struct Mailbox {
    slots: Vec<Slot>,
    /// How long a receive polls (yielding the CPU between looks) before it sleeps on the
    /// condition variable: a message that arrives meanwhile costs no wake-up.
    spin: Duration,
}

struct Slot {
    state: Mutex<SlotState>,
    arrived: Condvar,
}

#[derive(Default)]
struct SlotState {
    queues: HashMap<MsgKey, VecDeque<Message>>,
    /// Why the peer can send no more, once it can't.
    closed: Option<String>,
}

impl Mailbox {
    /// A mailbox for a world of `size` ranks whose receives sleep at once.
    pub fn new(size: usize) -> Mailbox {
        Mailbox::with_spin(size, Duration::ZERO)
    }

    /// A mailbox whose receives poll for `spin` before they sleep.
    pub fn with_spin(size: usize, spin: Duration) -> Mailbox {
        Mailbox {
            spin,
            slots: (0..size)
                .map(|_| Slot {
                    state: Mutex::new(SlotState::default()),
                    arrived: Condvar::new(),
                })
                .collect(),
        }
    }

    fn slot(&self, peer: usize) -> Result<&Slot, TransportError> {
        self.slots.get(peer).ok_or(TransportError::NoSuchPeer {
            peer,
            size: self.slots.len(),
        })
    }

    fn lock(slot: &Slot) -> MutexGuard<'_, SlotState> {
        // A panic while holding this lock leaves the queues consistent (push/pop only).
        slot.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files a message from `peer`.
    pub fn deliver(&self, peer: usize, msg: Message) {
        if let Ok(slot) = self.slot(peer) {
            Self::lock(slot)
                .queues
                .entry(msg.key)
                .or_default()
                .push_back(msg);
            slot.arrived.notify_all();
        }
    }

    /// Marks `peer` as unable to send more (the first reason sticks) and wakes its waiters.
    pub fn close(&self, peer: usize, reason: &str) {
        if let Ok(slot) = self.slot(peer) {
            let mut st = Self::lock(slot);
            if st.closed.is_none() {
                st.closed = Some(reason.to_string());
            }
            drop(st);
            slot.arrived.notify_all();
        }
    }

    /// Closes every slot.
    pub fn close_all(&self, reason: &str) {
        for peer in 0..self.slots.len() {
            self.close(peer, reason);
        }
    }

    /// The reason `peer` was closed, if it was.
    pub fn closed_reason(&self, peer: usize) -> Option<String> {
        self.slot(peer)
            .ok()
            .and_then(|s| Self::lock(s).closed.clone())
    }

    /// Takes the next message from `peer` with `key`, waiting until `deadline`.
    pub fn take(
        &self,
        peer: usize,
        key: MsgKey,
        deadline: Deadline,
    ) -> Result<Message, TransportError> {
        let slot = self.slot(peer)?;
        let mut st = Self::lock(slot);
        let spin_until = Instant::now() + self.spin;
        loop {
            if let Some(m) = Self::pop(&mut st, key) {
                return Ok(m);
            }
            if st.closed.is_none() && Instant::now() < spin_until {
                drop(st);
                std::thread::yield_now();
                st = Self::lock(slot);
                continue;
            }
            if let Some(reason) = &st.closed {
                return Err(TransportError::PeerLost {
                    peer,
                    reason: reason.clone(),
                });
            }
            let left = deadline.remaining();
            if left.is_zero() {
                return Err(TransportError::Timeout {
                    peer,
                    what: "receive from",
                    waited: deadline.elapsed(),
                });
            }
            st = slot
                .arrived
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Takes the next message from `peer` with `key` if there is one.
    pub fn try_take(&self, peer: usize, key: MsgKey) -> Result<Option<Message>, TransportError> {
        let slot = self.slot(peer)?;
        let mut st = Self::lock(slot);
        if let Some(m) = Self::pop(&mut st, key) {
            return Ok(Some(m));
        }
        match &st.closed {
            Some(reason) => Err(TransportError::PeerLost {
                peer,
                reason: reason.clone(),
            }),
            None => Ok(None),
        }
    }

    fn pop(st: &mut SlotState, key: MsgKey) -> Option<Message> {
        let q = st.queues.get_mut(&key)?;
        let m = q.pop_front();
        if q.is_empty() {
            st.queues.remove(&key);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Lane;
    use std::time::Duration;

    fn key(tag: u64) -> MsgKey {
        MsgKey {
            comm_id: 0,
            lane: Lane::P2p,
            tag,
        }
    }

    fn msg(tag: u64, byte: u8) -> Message {
        Message {
            key: key(tag),
            fingerprint: 0,
            payload: vec![byte],
        }
    }

    #[test]
    fn fifo_per_key_and_keys_independent() {
        let mb = Mailbox::new(2);
        mb.deliver(1, msg(7, 1));
        mb.deliver(1, msg(8, 9));
        mb.deliver(1, msg(7, 2));
        let d = Deadline::after(Duration::from_secs(1));
        assert_eq!(mb.take(1, key(8), d).unwrap().payload, [9]);
        assert_eq!(mb.take(1, key(7), d).unwrap().payload, [1]);
        assert_eq!(mb.take(1, key(7), d).unwrap().payload, [2]);
        assert!(mb.try_take(1, key(7)).unwrap().is_none());
    }

    #[test]
    fn timeout_names_peer_and_closed_peer_drains_first() {
        let mb = Mailbox::new(3);
        let e = mb
            .take(2, key(0), Deadline::after(Duration::from_millis(10)))
            .unwrap_err();
        assert!(matches!(e, TransportError::Timeout { peer: 2, .. }), "{e}");
        mb.deliver(2, msg(0, 5));
        mb.close(2, "connection reset");
        let d = Deadline::after(Duration::from_secs(1));
        assert_eq!(mb.take(2, key(0), d).unwrap().payload, [5]);
        let e = mb.take(2, key(0), d).unwrap_err();
        assert!(
            e.to_string().contains("rank 2 is gone: connection reset"),
            "{e}"
        );
        assert!(matches!(
            mb.take(5, key(0), d),
            Err(TransportError::NoSuchPeer { .. })
        ));
    }

    #[test]
    fn a_waiting_receive_wakes_on_delivery() {
        let mb = std::sync::Arc::new(Mailbox::new(2));
        let mb2 = mb.clone();
        let t = std::thread::spawn(move || {
            mb2.take(0, key(3), Deadline::after(Duration::from_secs(5)))
                .map(|m| m.payload)
        });
        std::thread::sleep(Duration::from_millis(20));
        mb.deliver(0, msg(3, 42));
        assert_eq!(t.join().unwrap().unwrap(), [42]);
    }
}
