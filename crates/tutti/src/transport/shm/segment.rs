//! Shared-memory segments: one file in a tmpfs (`/dev/shm` unless `TUTTI_SHM_DIR` says
//! otherwise) per pair of ranks on one host, mapped by both and unlinked as soon as both have
//! it mapped.
//!
//! - **Names are job-unique**: `tutti-<session>-<lower rank>-<higher rank>`, where the session
//!   is the random id every rank of the job agreed on at rendezvous, so two jobs on one host
//!   never collide; the file is created with `O_EXCL` and mode 0600.
//! - **Nothing is left behind**, even after a SIGKILL: the file exists only between the lower
//!   rank's create and the higher rank's open (milliseconds, during start-up); both sides unlink
//!   it then, and the memory lives on only as long as one of the two mappings does. A rank
//!   killed inside that window leaves one file; its name carries the session, and the launcher
//!   removes `tutti-<session>-*` when the job ends.
//! - **Room is checked up front**: the creator reserves the whole segment with
//!   `posix_fallocate`, so a missing or too small `/dev/shm` fails at start-up with the size
//!   needed (never with a SIGBUS in the middle of a collective).

use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where segments live unless `TUTTI_SHM_DIR` is set.
pub const DEFAULT_SHM_DIR: &str = "/dev/shm";

/// Why a segment could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path} ({needed} bytes, {mib:.1} MiB): {source}{hint}", mib = *.needed as f64 / 1048576.0, hint = hint(.source))]
pub struct SegmentError {
    pub what: &'static str,
    pub path: PathBuf,
    /// The segment's size.
    pub needed: usize,
    #[source]
    pub source: io::Error,
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => {
            "; the shared-memory file system is too small: enlarge it (docker run --shm-size, \
             or mount -o remount,size=... /dev/shm), point TUTTI_SHM_DIR at a larger tmpfs, \
             or use TCP (TUTTI_TRANSPORT=tcp)"
        }
        Some(libc::ENOENT) => {
            "; there is no such directory: mount a tmpfs there, set TUTTI_SHM_DIR, or use TCP \
             (TUTTI_TRANSPORT=tcp)"
        }
        _ => "",
    }
}

/// A mapped segment. Invariant: `len` bytes at `ptr()` stay mapped, shared and writable until
/// drop; the base is page-aligned.
pub struct Segment {
    map: MmapRaw,
    len: usize,
}

impl Segment {
    /// The segment's name for the pair `(lo, hi)` of the job `session`.
    pub fn name(session: u64, lo: usize, hi: usize) -> String {
        format!("tutti-{session:016x}-{lo}-{hi}")
    }

    /// Creates `dir/name` (exclusively), reserves `len` bytes in it and maps it.
    pub fn create(dir: &Path, name: &str, len: usize) -> Result<Segment, SegmentError> {
        let path = dir.join(name);
        let err = |what, source| SegmentError {
            what,
            path: path.clone(),
            needed: len,
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| err("cannot create the shared-memory segment", e))?;
        let reserved = reserve(&file, len);
        if let Err(e) = reserved {
            let _ = std::fs::remove_file(&path);
            return Err(err("no room for the shared-memory segment", e));
        }
        map(&file, len).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            err("cannot map the shared-memory segment", e)
        })
    }

    /// Opens and maps `dir/name`, created by the peer with at least `len` bytes.
    pub fn open(dir: &Path, name: &str, len: usize) -> Result<Segment, SegmentError> {
        let path = dir.join(name);
        let err = |what, source| SegmentError {
            what,
            path: path.clone(),
            needed: len,
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| err("cannot open the peer's shared-memory segment", e))?;
        let size = file
            .metadata()
            .map_err(|e| err("cannot stat the peer's shared-memory segment", e))?
            .len();
        if size < len as u64 {
            return Err(err(
                "the peer's shared-memory segment is too small",
                io::Error::new(io::ErrorKind::InvalidData, format!("it has {size} bytes")),
            ));
        }
        map(&file, len).map_err(|e| err("cannot map the peer's shared-memory segment", e))
    }

    /// Removes `dir/name` (a missing file is fine: the other side was first).
    pub fn unlink(dir: &Path, name: &str) {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("could not remove {}: {e}", dir.join(name).display()),
        }
    }

    pub fn ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Sets the file's length and allocates its pages now (tmpfs: counted against its size).
fn reserve(file: &File, len: usize) -> io::Result<()> {
    file.set_len(len as u64)?;
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a valid open descriptor; offset and length are in range.
        let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file.as_raw_fd();
    Ok(())
}

fn map(file: &File, len: usize) -> io::Result<Segment> {
    let map = MmapOptions::new().len(len).populate().map_raw(file)?;
    Ok(Segment { map, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_open_unlink_and_clear_errors() {
        let dir = std::env::temp_dir();
        let name = Segment::name(std::process::id() as u64 ^ 0xabc, 0, 1);
        let a = Segment::create(&dir, &name, 8192).unwrap();
        let b = Segment::open(&dir, &name, 8192).unwrap();
        Segment::unlink(&dir, &name);
        assert!(!dir.join(&name).exists());
        // SAFETY: both mappings are 8192 bytes of one file.
        unsafe {
            *a.ptr().add(100) = 42;
            assert_eq!(*b.ptr().add(100), 42, "the two mappings share their bytes");
        }
        let e = Segment::open(&dir, &name, 8192).err().unwrap();
        assert!(e.to_string().contains("cannot open"), "{e}");
        let e = Segment::create(Path::new("/nonexistent-tutti"), &name, 1 << 20)
            .err()
            .unwrap();
        let text = e.to_string();
        assert!(
            text.contains("1048576 bytes") && text.contains("TUTTI_SHM_DIR"),
            "{text}"
        );
    }
}
