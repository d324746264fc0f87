//! The [`Store`] trait: a small key-value store every rank of a job can reach, used once at start-up
//! to exchange addresses (and by tests and tools to coordinate).
//!
//! Semantics follow torch's `c10d::Store`, so that ranks launched by torch tooling and tutti's own
//! launcher agree on what a key means:
//! - `set` overwrites; `get` *waits* until the key exists (or the deadline passes);
//! - `add` is an atomic counter whose value is stored as decimal ASCII text (a key never set counts
//!   as 0), so `get` on a counter returns e.g. `b"42"`;
//! - `wait` waits for several keys; `check` answers at once; `delete` says whether the key existed.
//!
//! Every call takes a [`Deadline`]. A call whose deadline has already passed still makes one
//! attempt (so `get` of a present key succeeds), then fails with [`StoreError::Timeout`].
//!
//! Limits, enforced by every implementation before anything is allocated: a key is at most
//! [`MAX_KEY_LEN`] bytes of UTF-8, a value at most [`MAX_VALUE_LEN`] bytes.

use crate::deadline::Deadline;
use std::time::Duration;

/// The longest key a store accepts, in bytes.
pub const MAX_KEY_LEN: usize = 4 * 1024;
/// The largest value a store accepts, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024 * 1024;

/// A key-value store shared by the ranks of one job.
///
/// Implementations: [`MemStore`](super::MemStore) (one process), [`TcpStore`](super::TcpStore)
/// (a client of [`TcpStoreServer`](super::TcpStoreServer)), [`FileStore`](super::FileStore) (a
/// directory on a shared file system).
pub trait Store: Send + Sync {
    /// Sets `key` to `value`, replacing any previous value, and wakes every waiter on `key`.
    fn set(&self, key: &str, value: &[u8], deadline: Deadline) -> Result<(), StoreError>;

    /// The value of `key`, waiting until some rank sets it or `deadline` passes.
    fn get(&self, key: &str, deadline: Deadline) -> Result<Vec<u8>, StoreError>;

    /// Atomically adds `delta` to the counter `key` (absent: 0) and returns the new value.
    /// Fails with [`StoreError::Refused`] if the key holds something that is not a decimal `i64`
    /// or if the sum overflows.
    fn add(&self, key: &str, delta: i64, deadline: Deadline) -> Result<i64, StoreError>;

    /// Waits until every key of `keys` exists; a timeout names the keys still missing.
    fn wait(&self, keys: &[&str], deadline: Deadline) -> Result<(), StoreError>;

    /// True if every key of `keys` exists now (no waiting).
    fn check(&self, keys: &[&str], deadline: Deadline) -> Result<bool, StoreError>;

    /// Removes `key`; true if it existed.
    fn delete(&self, key: &str, deadline: Deadline) -> Result<bool, StoreError>;

    /// Where the store lives, for messages: `"10.0.0.1:29500"`, `"file:/shared/job"`, ...
    fn location(&self) -> String;
}

/// What went wrong with a store. Every message names the store and the key(s).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The deadline passed first. `keys` are the keys still missing (or the key operated on).
    #[error(
        "store {store}: {op} timed out after {waited:.1?} waiting for key(s) {}",
        quoted(keys)
    )]
    Timeout {
        store: String,
        op: &'static str,
        keys: Vec<String>,
        waited: Duration,
    },

    /// No tutti store answered at `addr` before the deadline.
    #[error("store {addr} is unreachable: {why}")]
    Unreachable { addr: String, why: String },

    /// The server could not listen on `addr`.
    #[error("cannot serve a store on {addr}: {why}")]
    Bind { addr: String, why: String },

    /// An operating-system error while talking to the store.
    #[error("store {store}: {op} {}: {source}", quoted(keys))]
    Io {
        store: String,
        op: &'static str,
        keys: Vec<String>,
        #[source]
        source: std::io::Error,
    },

    /// The peer does not speak the store protocol, or sent something malformed; or a request
    /// breaks a limit (key or value too long).
    #[error("store {store}: protocol error: {what}")]
    Protocol { store: String, what: String },

    /// The store understood the request and refused it (e.g. `add` on a non-counter value).
    #[error("store {store}: {op} {}: {why}", quoted(keys))]
    Refused {
        store: String,
        op: &'static str,
        keys: Vec<String>,
        why: String,
    },

    /// The handshake failed on authentication: a missing or wrong job secret on either side.
    #[error("store {store}: not authorized: {why}")]
    Unauthorized { store: String, why: String },

    /// The store was shut down while the call was pending.
    #[error("store {store}: {op} {}: the store is shut down", quoted(keys))]
    Closed {
        store: String,
        op: &'static str,
        keys: Vec<String>,
    },
}

impl StoreError {
    /// True for [`StoreError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, StoreError::Timeout { .. })
    }
}

/// `'a', 'b'` for messages.
fn quoted(keys: &[String]) -> String {
    let mut out = String::new();
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('\'');
        out.push_str(k);
        out.push('\'');
    }
    out
}

/// Owned copies of borrowed keys, for errors.
pub(crate) fn owned(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

/// Checks the documented limits; `store` names the store in the error.
pub(crate) fn check_limits(
    store: &str,
    keys: &[&str],
    value: Option<&[u8]>,
) -> Result<(), StoreError> {
    for k in keys {
        if k.len() > MAX_KEY_LEN {
            return Err(StoreError::Protocol {
                store: store.to_owned(),
                what: format!(
                    "key of {} bytes (starting '{}') exceeds the {MAX_KEY_LEN}-byte limit",
                    k.len(),
                    k.chars().take(32).collect::<String>()
                ),
            });
        }
    }
    match value {
        Some(v) if v.len() > MAX_VALUE_LEN => Err(StoreError::Protocol {
            store: store.to_owned(),
            what: format!(
                "value of {} bytes for key '{}' exceeds the {MAX_VALUE_LEN}-byte limit",
                v.len(),
                keys.first().copied().unwrap_or_default()
            ),
        }),
        _ => Ok(()),
    }
}

/// The counter arithmetic shared by every store: parses the stored text (absent: 0), adds.
pub(crate) fn add_to_counter(current: Option<&[u8]>, delta: i64) -> Result<i64, String> {
    let old = match current {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                format!(
                    "holds {:?}, which is not a decimal integer counter",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
                )
            })?,
    };
    old.checked_add(delta)
        .ok_or_else(|| format!("counter {old} + {delta} overflows i64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_arithmetic() {
        assert_eq!(add_to_counter(None, 5), Ok(5));
        assert_eq!(add_to_counter(Some(b"41"), 1), Ok(42));
        assert_eq!(add_to_counter(Some(b"-3"), -4), Ok(-7));
        let e = add_to_counter(Some(b"abc"), 1).unwrap_err();
        assert!(e.contains("abc"), "{e}");
        assert!(add_to_counter(Some(b"9223372036854775807"), 1)
            .unwrap_err()
            .contains("overflows"));
    }

    #[test]
    fn limits_name_the_store_and_key() {
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let e = check_limits("h:1", &[&long], None).unwrap_err().to_string();
        assert!(e.contains("h:1") && e.contains("4097 bytes"), "{e}");
        assert!(check_limits("h:1", &["ok"], Some(&[0; 16])).is_ok());
    }

    #[test]
    fn timeout_message_lists_keys() {
        let e = StoreError::Timeout {
            store: "h:1".into(),
            op: "wait",
            keys: vec!["a".into(), "b".into()],
            waited: Duration::from_millis(50),
        };
        let s = e.to_string();
        assert!(
            s.contains("'a', 'b'") && s.contains("h:1") && s.contains("wait"),
            "{s}"
        );
        assert!(e.is_timeout());
    }
}
