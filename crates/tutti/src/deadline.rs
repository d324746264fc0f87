//! [`Deadline`]: the point in time by which a blocking call must return.
//!
//! Every blocking call in tutti takes one (connect, handshake, store wait, send, recv); a call
//! that cannot finish in time returns a timeout error that names what it waited for.

use std::time::{Duration, Instant};

/// An instant by which a blocking call gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    at: Instant,
    started: Instant,
}

impl Deadline {
    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Deadline {
        let now = Instant::now();
        Deadline {
            // Saturate absurd timeouts (Duration::MAX) at a century.
            at: now
                .checked_add(timeout)
                .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600)),
            started: now,
        }
    }

    /// Time left, zero once passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// True once the deadline has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The instant itself.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// How long ago this deadline was set (for error messages: "waited 30.0s").
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// When it was set (the call it bounds started then).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The earlier of two deadlines.
    pub fn min(self, other: Deadline) -> Deadline {
        if other.at < self.at {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires() {
        let d = Deadline::after(Duration::from_millis(20));
        assert!(!d.expired());
        assert!(d.remaining() <= Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(25));
        assert!(d.expired());
        assert_eq!(d.remaining(), Duration::ZERO);
        assert!(Deadline::after(Duration::MAX).remaining() > Duration::from_secs(1_000_000));
    }
}
