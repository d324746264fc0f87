//! [`MemStore`]: the store of one process, a map behind a mutex with a condition variable that
//! wakes waiters when a key appears. It is the state of [`TcpStoreServer`](super::TcpStoreServer)
//! and the store of a world of one rank (or of ranks that are threads of one process).

use super::store::{add_to_counter, check_limits, owned, Store, StoreError};
use crate::deadline::Deadline;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// An in-process [`Store`].
///
/// Invariant: every change to the map is followed by `notify_all` on `changed`, so a waiter
/// re-checks its keys after each change, and returns by its deadline otherwise.
pub struct MemStore {
    name: String,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    map: HashMap<String, Arc<[u8]>>,
    closed: bool,
}

impl MemStore {
    /// An empty store; `name` is how errors refer to it (`"in-process"`, `"0.0.0.0:29500"`).
    pub fn new(name: impl Into<String>) -> MemStore {
        MemStore {
            name: name.into(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    /// Wakes every waiter and makes pending and later waits fail with [`StoreError::Closed`].
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Like [`Store::get`] but shares the stored bytes instead of copying them.
    pub fn get_shared(&self, key: &str, deadline: Deadline) -> Result<Arc<[u8]>, StoreError> {
        check_limits(&self.name, &[key], None)?;
        let state = self.wait_until(&[key], "get", deadline)?;
        state
            .map
            .get(key)
            .cloned()
            .ok_or_else(|| self.timeout("get", vec![key.to_owned()], deadline))
    }

    /// Sets `key` to `value` unless it holds another value already: `Ok(true)` if set now,
    /// `Ok(false)` if it already held exactly `value` (a retried request), and an error naming
    /// the key otherwise. The check and the set are one step under the store's lock.
    pub fn set_once(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        check_limits(&self.name, &[key], Some(value))?;
        let mut state = self.lock();
        match state.map.get(key) {
            Some(old) if old[..] == *value => return Ok(false),
            Some(_) => {
                return Err(StoreError::Refused {
                    store: self.name.clone(),
                    op: "set",
                    keys: vec![key.to_owned()],
                    why: "the key is set once and already holds another value".into(),
                })
            }
            None => {}
        }
        state.map.insert(key.to_owned(), Arc::from(value));
        drop(state);
        self.changed.notify_all();
        Ok(true)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated (every update is one
        // insert or remove), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until every key exists, returning the locked state.
    fn wait_until(
        &self,
        keys: &[&str],
        op: &'static str,
        deadline: Deadline,
    ) -> Result<MutexGuard<'_, State>, StoreError> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return Err(StoreError::Closed {
                    store: self.name.clone(),
                    op,
                    keys: owned(keys),
                });
            }
            let missing: Vec<String> = keys
                .iter()
                .filter(|k| !state.map.contains_key(**k))
                .map(|k| (*k).to_owned())
                .collect();
            if missing.is_empty() {
                return Ok(state);
            }
            let left = deadline.remaining();
            if left.is_zero() {
                return Err(self.timeout(op, missing, deadline));
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn timeout(&self, op: &'static str, keys: Vec<String>, deadline: Deadline) -> StoreError {
        StoreError::Timeout {
            store: self.name.clone(),
            op,
            keys,
            waited: deadline.elapsed(),
        }
    }
}

impl Store for MemStore {
    fn set(&self, key: &str, value: &[u8], _deadline: Deadline) -> Result<(), StoreError> {
        check_limits(&self.name, &[key], Some(value))?;
        self.lock().map.insert(key.to_owned(), Arc::from(value));
        self.changed.notify_all();
        Ok(())
    }

    fn get(&self, key: &str, deadline: Deadline) -> Result<Vec<u8>, StoreError> {
        self.get_shared(key, deadline).map(|v| v.to_vec())
    }

    fn add(&self, key: &str, delta: i64, _deadline: Deadline) -> Result<i64, StoreError> {
        check_limits(&self.name, &[key], None)?;
        let mut state = self.lock();
        let new = add_to_counter(state.map.get(key).map(|v| &v[..]), delta).map_err(|why| {
            StoreError::Refused {
                store: self.name.clone(),
                op: "add",
                keys: vec![key.to_owned()],
                why,
            }
        })?;
        state
            .map
            .insert(key.to_owned(), Arc::from(new.to_string().as_bytes()));
        drop(state);
        self.changed.notify_all();
        Ok(new)
    }

    fn wait(&self, keys: &[&str], deadline: Deadline) -> Result<(), StoreError> {
        check_limits(&self.name, keys, None)?;
        self.wait_until(keys, "wait", deadline).map(drop)
    }

    fn check(&self, keys: &[&str], _deadline: Deadline) -> Result<bool, StoreError> {
        check_limits(&self.name, keys, None)?;
        let state = self.lock();
        Ok(keys.iter().all(|k| state.map.contains_key(*k)))
    }

    fn delete(&self, key: &str, _deadline: Deadline) -> Result<bool, StoreError> {
        check_limits(&self.name, &[key], None)?;
        let existed = self.lock().map.remove(key).is_some();
        self.changed.notify_all();
        Ok(existed)
    }

    fn location(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn soon() -> Deadline {
        Deadline::after(Duration::from_secs(5))
    }

    #[test]
    fn get_waits_for_a_later_set() {
        let s = Arc::new(MemStore::new("mem"));
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.get("k", soon()));
        std::thread::sleep(Duration::from_millis(30));
        s.set("k", b"v", soon()).unwrap();
        assert_eq!(t.join().unwrap().unwrap(), b"v");
    }

    #[test]
    fn wait_timeout_names_only_missing_keys() {
        let s = MemStore::new("mem");
        s.set("here", b"", soon()).unwrap();
        let t0 = Instant::now();
        let e = s
            .wait(
                &["here", "gone"],
                Deadline::after(Duration::from_millis(40)),
            )
            .unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(40));
        match e {
            StoreError::Timeout { keys, .. } => assert_eq!(keys, vec!["gone".to_string()]),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn close_wakes_waiters() {
        let s = Arc::new(MemStore::new("mem"));
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.get("never", soon()));
        std::thread::sleep(Duration::from_millis(20));
        s.close();
        assert!(matches!(t.join().unwrap(), Err(StoreError::Closed { .. })));
    }

    #[test]
    fn counters_and_delete() {
        let s = MemStore::new("mem");
        assert_eq!(s.add("c", 2, soon()).unwrap(), 2);
        assert_eq!(s.add("c", -5, soon()).unwrap(), -3);
        assert_eq!(s.get("c", soon()).unwrap(), b"-3");
        s.set("t", b"text", soon()).unwrap();
        assert!(matches!(
            s.add("t", 1, soon()),
            Err(StoreError::Refused { .. })
        ));
        assert!(s.check(&["c", "t"], soon()).unwrap());
        assert!(s.delete("c", soon()).unwrap());
        assert!(!s.delete("c", soon()).unwrap());
        assert!(!s.check(&["c", "t"], soon()).unwrap());
    }
}
