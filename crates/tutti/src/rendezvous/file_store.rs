//! [`FileStore`]: a store in a directory on a file system every rank can see (NFS, Lustre, a
//! local disk for single-host jobs). No server: useful when no port can be agreed on.
//!
//! Layout: each key is one file `k.<escaped key>` holding the value; `.lock` serialises counters;
//! `.tmp.*` are writes in progress.
//! - `set` writes a fresh temporary file and renames it over the key's file: readers see the old
//!   value or the new one, never a torn write (rename is atomic on POSIX file systems, NFS too).
//! - `get`/`wait` poll for the file with short sleeps (1 ms doubling to 20 ms) until the deadline.
//! - `add` holds an exclusive lock on `.lock` (`flock`, which NFSv4 and Lustre forward to every
//!   client) around read, add, write-and-rename.
//!
//! Key escaping: bytes `a-z`, `0-9`, `-` and `.` stay as they are, every other byte becomes `_xx`
//! (two lowercase hex digits), so names stay readable (`k.rank_2f3`), distinct keys never share a
//! file, and case-insensitive file systems cannot merge two keys. An escaped name is at most
//! [`MAX_FILE_NAME`] bytes (file systems cap names at 255); longer keys are refused.
//!
//! A directory holds the keys of one job: point each job at a fresh directory, or stale keys of a
//! previous job will be read as this job's.

use super::store::{add_to_counter, check_limits, owned, Store, StoreError, MAX_VALUE_LEN};
use crate::deadline::Deadline;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The longest escaped file name (prefix included) a key may take.
pub const MAX_FILE_NAME: usize = 240;
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(20);

/// A [`Store`] kept in a shared directory.
pub struct FileStore {
    dir: PathBuf,
    /// `file:<dir>`, for messages.
    label: String,
}

impl FileStore {
    /// A store in `dir`, created if missing (with its parents).
    pub fn new(dir: PathBuf) -> Result<FileStore, StoreError> {
        let label = format!("file:{}", dir.display());
        let io = |source| StoreError::Io {
            store: label.clone(),
            op: "open",
            keys: Vec::new(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        if !fs::metadata(&dir).map_err(io)?.is_dir() {
            return Err(io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            )));
        }
        Ok(FileStore { dir, label })
    }

    /// The directory holding the keys.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `key`, after checking the limits.
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_limits(&self.label, &[key], None)?;
        let name = file_name(key);
        if name.len() > MAX_FILE_NAME {
            return Err(StoreError::Protocol {
                store: self.label.clone(),
                what: format!(
                    "key '{}' is too long for a file store: its file name takes {} bytes, the \
                     limit is {MAX_FILE_NAME} (bytes outside a-z 0-9 - . take 3)",
                    key.chars().take(40).collect::<String>(),
                    name.len()
                ),
            });
        }
        Ok(self.dir.join(name))
    }

    fn paths(&self, keys: &[&str]) -> Result<Vec<PathBuf>, StoreError> {
        keys.iter().map(|k| self.path(k)).collect()
    }

    fn io_error(&self, op: &'static str, keys: &[&str], source: io::Error) -> StoreError {
        StoreError::Io {
            store: self.label.clone(),
            op,
            keys: owned(keys),
            source,
        }
    }

    fn timeout(&self, op: &'static str, keys: Vec<String>, deadline: Deadline) -> StoreError {
        StoreError::Timeout {
            store: self.label.clone(),
            op,
            keys,
            waited: deadline.elapsed(),
        }
    }

    /// Writes `value` to a new temporary file and renames it to `path`.
    fn write_atomic(&self, path: &Path, value: &[u8]) -> io::Result<()> {
        let (tmp, mut file) = self.temp_file()?;
        let written = file.write_all(value).and_then(|()| fs::rename(&tmp, path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// A temporary file no other process (on any host) can be using: created with `create_new`,
    /// named after this process, a counter and the clock.
    fn temp_file(&self) -> io::Result<(PathBuf, File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = self
                .dir
                .join(format!(".tmp.{}.{n}.{nanos}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(file) => return Ok((tmp, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the exclusive lock on `.lock`, polling until `deadline`; released when the returned
    /// file is dropped.
    // File::try_lock is stable since Rust 1.89.
    fn lock(&self, key: &str, deadline: Deadline) -> Result<File, StoreError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(".lock"))
            .map_err(|e| self.io_error("add", &[key], e))?;
        let mut pause = POLL_MIN;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(self.io_error("add", &[key], e)),
            }
            if deadline.expired() {
                return Err(StoreError::Timeout {
                    store: self.label.clone(),
                    op: "add (waiting for the lock file .lock)",
                    keys: vec![key.to_owned()],
                    waited: deadline.elapsed(),
                });
            }
            pause = nap(pause, deadline);
        }
    }
}

impl Store for FileStore {
    fn set(&self, key: &str, value: &[u8], _deadline: Deadline) -> Result<(), StoreError> {
        check_limits(&self.label, &[key], Some(value))?;
        let path = self.path(key)?;
        self.write_atomic(&path, value)
            .map_err(|e| self.io_error("set", &[key], e))
    }

    fn get(&self, key: &str, deadline: Deadline) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        let mut pause = POLL_MIN;
        loop {
            if let Some(v) = read_value(&path).map_err(|e| self.io_error("get", &[key], e))? {
                return Ok(v);
            }
            if deadline.expired() {
                return Err(self.timeout("get", vec![key.to_owned()], deadline));
            }
            pause = nap(pause, deadline);
        }
    }

    fn add(&self, key: &str, delta: i64, deadline: Deadline) -> Result<i64, StoreError> {
        let path = self.path(key)?;
        let _lock = self.lock(key, deadline)?;
        let current = read_value(&path).map_err(|e| self.io_error("add", &[key], e))?;
        let new = add_to_counter(current.as_deref(), delta).map_err(|why| StoreError::Refused {
            store: self.label.clone(),
            op: "add",
            keys: vec![key.to_owned()],
            why,
        })?;
        self.write_atomic(&path, new.to_string().as_bytes())
            .map_err(|e| self.io_error("add", &[key], e))?;
        Ok(new)
    }

    fn wait(&self, keys: &[&str], deadline: Deadline) -> Result<(), StoreError> {
        let paths = self.paths(keys)?;
        let mut pause = POLL_MIN;
        loop {
            let mut missing = Vec::new();
            for (key, path) in keys.iter().zip(&paths) {
                if !exists(path).map_err(|e| self.io_error("wait", &[key], e))? {
                    missing.push((*key).to_owned());
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if deadline.expired() {
                return Err(self.timeout("wait", missing, deadline));
            }
            pause = nap(pause, deadline);
        }
    }

    fn check(&self, keys: &[&str], _deadline: Deadline) -> Result<bool, StoreError> {
        for (key, path) in keys.iter().zip(self.paths(keys)?) {
            if !exists(&path).map_err(|e| self.io_error("check", &[key], e))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn delete(&self, key: &str, _deadline: Deadline) -> Result<bool, StoreError> {
        match fs::remove_file(self.path(key)?) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io_error("delete", &[key], e)),
        }
    }

    fn location(&self) -> String {
        self.label.clone()
    }
}

/// `k.` followed by the escaped key (see the module doc).
fn file_name(key: &str) -> String {
    let mut name = String::with_capacity(2 + key.len());
    name.push_str("k.");
    for b in key.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' => name.push(char::from(b)),
            _ => name.push_str(&format!("_{b:02x}")),
        }
    }
    name
}

/// The value in `path`, `None` if the file does not exist; refuses files over the value limit.
fn read_value(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut value = Vec::new();
    file.take(MAX_VALUE_LEN as u64 + 1)
        .read_to_end(&mut value)?;
    if value.len() > MAX_VALUE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} exceeds the {MAX_VALUE_LEN}-byte value limit",
                path.display()
            ),
        ));
    }
    Ok(Some(value))
}

fn exists(path: &Path) -> io::Result<bool> {
    path.try_exists()
}

/// Sleeps `pause` (never past `deadline`) and returns the next, doubled pause.
fn nap(pause: Duration, deadline: Deadline) -> Duration {
    std::thread::sleep(pause.min(deadline.remaining()));
    (pause * 2).min(POLL_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_distinct() {
        assert_eq!(file_name("rank/3"), "k.rank_2f3");
        assert_eq!(file_name("A"), "k._41");
        assert_ne!(file_name("a"), file_name("A"));
        assert_ne!(file_name("_2f"), file_name("/"));
        assert_eq!(file_name(""), "k.");
        assert_eq!(file_name(".."), "k...");
    }
}
