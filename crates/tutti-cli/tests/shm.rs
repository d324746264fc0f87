//! Shared memory between `tutti` processes on this host: which links use it, what is left in
//! the segment directory (nothing, even after a SIGKILL), and a missing or too small tmpfs
//! (TCP with a warning under `auto`, an error naming the size under `shm`).
//!
//! Each test gives its ranks a segment directory of its own (`TUTTI_SHM_DIR`, under
//! `/dev/shm`), so that what it finds there is its own job's.

mod common;

use common::{direct_rank, free_port, launch, run, text, Spawned, BIN, LONG_BENCH};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A fresh directory under /dev/shm, removed on drop.
struct ShmDir(PathBuf);

impl ShmDir {
    fn new(test: &str) -> ShmDir {
        let p = PathBuf::from("/dev/shm").join(format!("tutti-test-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| {
            panic!(
                "this test needs a writable /dev/shm (a tmpfs): {}: {e}",
                p.display()
            )
        });
        ShmDir(p)
    }

    fn entries(&self) -> Vec<String> {
        entries(&self.0)
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// `tutti bench` on 3 ranks started directly, with shared memory in `dir`.
fn three_ranks(dir: &Path, transport: &str, args: &[&str]) -> Vec<Spawned> {
    let port = free_port();
    (0..3)
        .map(|rank| {
            let mut c = direct_rank(rank, 3, port, args);
            c.env("TUTTI_TIMEOUT", "60")
                .env("TUTTI_TRANSPORT", transport)
                .env("TUTTI_SHM_DIR", dir);
            Spawned::start(c)
        })
        .collect()
}

#[test]
fn ranks_of_one_host_use_shared_memory_and_a_sigkill_leaves_nothing_behind() {
    let dir = ShmDir::new("sigkill");
    let mut ranks = three_ranks(&dir.0, "shm", &LONG_BENCH);
    assert!(
        ranks[0].wait_for_line(
            "# links of rank 0: shared memory to 1, 2; TCP to none",
            Duration::from_secs(30)
        ),
        "rank 0 should reach both peers over shared memory"
    );
    std::thread::sleep(Duration::from_millis(300)); // inside the timed loop
    assert_eq!(
        dir.entries(),
        Vec::<String>::new(),
        "segments are unlinked once mapped"
    );
    ranks[1].signal(libc::SIGKILL);
    let mut ranks = ranks.into_iter();
    let (r0, r1, r2) = (
        ranks.next().unwrap(),
        ranks.next().unwrap(),
        ranks.next().unwrap(),
    );
    for (i, r) in [(0, r0), (2, r2)] {
        let f = r.finish(Duration::from_secs(60));
        assert!(!f.status.success(), "rank {i} should fail");
        assert!(
            f.stderr.contains(&format!("on rank {i}")) && f.stderr.contains("rank 1"),
            "rank {i} should name rank 1: {}",
            f.stderr
        );
        assert!(
            f.took < Duration::from_secs(40),
            "rank {i} took {:?}",
            f.took
        );
    }
    drop(r1);
    assert_eq!(
        dir.entries(),
        Vec::<String>::new(),
        "nothing is left after the SIGKILL"
    );
}

#[test]
fn forced_tcp_uses_no_shared_memory() {
    let dir = ShmDir::new("tcp");
    let mut ranks = three_ranks(&dir.0, "tcp", &["bench", "--max-bytes", "64K"]);
    assert!(
        ranks[0].wait_for_line(
            "# links of rank 0: shared memory to none; TCP to 1, 2",
            Duration::from_secs(30)
        ),
        "TUTTI_TRANSPORT=tcp keeps every link on TCP"
    );
    for (i, r) in ranks.into_iter().enumerate() {
        let f = r.finish(Duration::from_secs(60));
        assert!(f.status.success(), "rank {i}: {}", f.stderr);
    }
}

/// Runs a small all-reduce on 2 ranks under `tutti launch` with `TUTTI_SHM_DIR=dir`.
fn two_ranks_with_dir(dir: &Path, transport: &str) -> (bool, String, String) {
    let mut c = launch(2, &[BIN, "bench", "--max-bytes", "64K"]);
    c.env("TUTTI_TRANSPORT", transport)
        .env("TUTTI_SHM_DIR", dir);
    let (out, _) = run(c, Duration::from_secs(60));
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_missing_segment_directory_means_tcp_with_a_warning_or_an_error_under_shm() {
    let missing = Path::new("/dev/shm/tutti-test-no-such-dir");
    let (ok, stdout, stderr) = two_ranks_with_dir(missing, "auto");
    assert!(ok, "auto falls back to TCP: {stderr}");
    assert!(
        stdout.contains("shared memory to none; TCP to 1"),
        "{stdout}"
    );
    assert!(
        stderr.contains("using TCP")
            && stderr.contains("bytes")
            && stderr.contains("no such directory"),
        "the warning names the size needed and why: {stderr}"
    );
    let (ok, _, stderr) = two_ranks_with_dir(missing, "shm");
    assert!(!ok, "shm makes it an error");
    assert!(
        stderr.contains("TUTTI_TRANSPORT=shm") && stderr.contains("bytes"),
        "the error names the size needed: {stderr}"
    );
}

#[test]
fn a_too_small_tmpfs_means_tcp_with_a_warning_or_an_error_under_shm() {
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root: mounting a small tmpfs must work there"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("skipped.txt");
        let line =
            "shm::a_too_small_tmpfs_means_tcp_with_a_warning_or_an_error_under_shm: not root\n";
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        return;
    }
    let dir = ShmDir::new("small");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dir.0)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount -t tmpfs failed");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&dir.0);
    let (ok, stdout, stderr) = two_ranks_with_dir(&dir.0, "auto");
    assert!(ok, "auto falls back to TCP: {stderr}");
    assert!(stdout.contains("TCP to 1"), "{stdout}");
    assert!(
        stderr.contains("using TCP") && stderr.contains("too small") && stderr.contains("bytes"),
        "the warning names the size needed: {stderr}"
    );
    let (ok, _, stderr) = two_ranks_with_dir(&dir.0, "shm");
    assert!(!ok, "shm makes it an error");
    assert!(
        stderr.contains("TUTTI_TRANSPORT=shm") && stderr.contains("too small"),
        "{stderr}"
    );
    assert_eq!(
        entries(&dir.0),
        Vec::<String>::new(),
        "a failed create leaves no file"
    );
}
