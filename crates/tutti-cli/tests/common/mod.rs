//! Helpers shared by the tests that start `tutti` processes: every process is bounded by a time
//! limit and, if it overstays, killed by its PID (which names the process we started: it is
//! reaped only here).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The `tutti` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tutti");

/// `tutti bench` arguments for a run that goes on until something breaks it: bounded in count
/// (iterations), and in time by the caller's `finish` limit.
pub const LONG_BENCH: [&str; 7] = [
    "bench",
    "--min-bytes",
    "1M",
    "--max-bytes",
    "1M",
    "--iters",
    "100000",
];

/// A started process whose stdout is read line by line as it comes and whose stderr is
/// collected. Dropping it kills the process if it is still running.
pub struct Spawned {
    child: Option<Child>,
    what: String,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    started: Instant,
}

/// How a [`Spawned`] process ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// When it was reaped.
    pub ended: Instant,
    /// From start to reaping.
    pub took: Duration,
}

impl Spawned {
    /// Starts `cmd` with stdin closed and stdout/stderr captured.
    pub fn start(mut cmd: Command) -> Spawned {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        Spawned {
            child: Some(child),
            what,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
            started: Instant::now(),
        }
    }

    /// The PID of the process (it names the process we started: we reap it only in `finish`).
    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("not finished yet");
        i32::try_from(child.id()).expect("pid fits in i32")
    }

    /// Sends `sig` to the process, by its PID.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a PID of a child we have not reaped yet, so it is still ours.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Waits up to `limit` for a stdout line containing `needle`; true if one came.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> bool {
        if self.seen.iter().any(|l| l.contains(needle)) {
            return true;
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Waits for the process to end; kills it (by PID) and panics if it runs past `limit` from
    /// its start.
    pub fn finish(mut self, limit: Duration) -> Finished {
        let mut child = self.child.take().expect("not finished yet");
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for the child") {
                break s;
            }
            if self.started.elapsed() > limit {
                let _ = child.kill();
                let s = child.wait().expect("reap the killed child");
                let stderr = self.stderr_text();
                panic!(
                    "{} overstayed {limit:?} ({s}); stderr:\n{stderr}",
                    self.what
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let ended = Instant::now();
        let stderr = self.stderr_text();
        self.seen.extend(self.lines.iter());
        Finished {
            status,
            stdout: self.seen.join("\n"),
            stderr,
            ended,
            took: ended - self.started,
        }
    }

    fn stderr_text(&mut self) -> String {
        let bytes = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Runs `cmd` to completion or kills it after `limit`; returns its output and how long it took.
pub fn run(cmd: Command, limit: Duration) -> (Output, Duration) {
    let f = Spawned::start(cmd).finish(limit);
    let mut stdout = f.stdout.into_bytes();
    if !stdout.is_empty() {
        stdout.push(b'\n');
    }
    let output = Output {
        status: f.status,
        stdout,
        stderr: f.stderr.into_bytes(),
    };
    (output, f.took)
}

/// Lossy UTF-8.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `tutti launch -n N -- PROGRAM...`.
pub fn launch(n: usize, program: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["launch", "-n", &n.to_string(), "--"]).args(program);
    c
}

/// A loopback port that was free a moment ago (for a `MASTER_PORT`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tutti ARGS` as rank `rank` of `world` started directly (no launcher), its store on
/// loopback `port` (rank 0 serves it).
pub fn direct_rank(rank: usize, world: usize, port: u16, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string());
    c
}
