//! `tutti launch` end to end: the real binary starting `sh -c` ranks.
//!
//! Every test is bounded: the launcher is waited for with a deadline and killed (with its
//! ranks, by PDEATHSIG) if it overstays, and output is collected with a deadline too.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tutti");

/// Upper bound for anything a test waits for.
const LIMIT: Duration = Duration::from_secs(20);

/// A running launcher whose stdout and stderr are read line by line by two threads.
struct Launcher {
    child: Child,
    started: Instant,
    stdout: Receiver<Vec<u8>>,
    stderr: Receiver<Vec<u8>>,
    stdout_seen: Vec<u8>,
}

/// What a finished launcher left.
struct Finished {
    status: ExitStatus,
    elapsed: Duration,
    stdout: Vec<u8>,
    stderr: String,
}

impl Finished {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Launcher {
    fn start(args: &[&str]) -> Launcher {
        let mut child = Command::new(BIN)
            .arg("launch")
            .args(args)
            .env("TUTTI_TEST_PARENT", "inherited")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the tutti binary");
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Launcher {
            child,
            started: Instant::now(),
            stdout,
            stderr,
            stdout_seen: Vec::new(),
        }
    }

    /// Runs a launcher to completion.
    fn run(args: &[&str]) -> Finished {
        Launcher::start(args).finish()
    }

    /// Waits until `n` stdout lines matching `pattern` arrived; returns them.
    fn wait_for_lines(&mut self, n: usize, pattern: &str) -> Vec<String> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let text = String::from_utf8_lossy(&self.stdout_seen).into_owned();
            let found: Vec<String> = text
                .lines()
                .filter(|l| l.contains(pattern))
                .map(String::from)
                .collect();
            if found.len() >= n {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => self.stdout_seen.extend_from_slice(&line),
                Err(_) => panic!("{n} lines with {pattern:?} not seen in {LIMIT:?}; got {text:?}"),
            }
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        assert_eq!(
            unsafe { libc::kill(self.pid(), sig) },
            0,
            "signal the launcher"
        );
    }

    /// Waits (bounded) for the launcher to exit and collects all its output.
    fn finish(mut self) -> Finished {
        let deadline = self.started + LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "launcher still running after {LIMIT:?}"
            );
            thread::sleep(Duration::from_millis(10));
        };
        let elapsed = self.started.elapsed();
        let mut stdout = std::mem::take(&mut self.stdout_seen);
        stdout.extend(drain(&self.stdout, deadline));
        let stderr = String::from_utf8_lossy(&drain(&self.stderr, deadline)).into_owned();
        Finished {
            status,
            elapsed,
            stdout,
            stderr,
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill(); // its ranks die with it (PDEATHSIG)
            let _ = self.child.wait();
        }
    }
}

/// A thread that sends every line (bytes, `\n` kept) of `src`.
fn lines_of(src: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(src);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Everything `rx` sends until its sender is gone (or the deadline passes).
fn drain(rx: &Receiver<Vec<u8>>, deadline: Instant) -> Vec<u8> {
    let mut all = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        all.extend(line);
    }
    all
}

/// The `pid=N` values printed by ranks.
fn pids_in(lines: &[String]) -> Vec<i32> {
    lines
        .iter()
        .map(|l| l.split("pid=").nth(1).unwrap().trim().parse().unwrap())
        .collect()
}

/// `/proc/PID/stat` split after the command name: state is field 0, pgrp field 2.
fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    Some(after_comm.split_whitespace().map(String::from).collect())
}

/// True while `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|f| f[0] != "Z" && f[0] != "X")
}

/// Asserts that none of `pids` is alive, allowing `within` for them to go.
fn assert_gone(pids: &[i32], within: Duration) {
    let deadline = Instant::now() + within;
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "ranks still alive: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `key=` in a line of `key=value` words.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn every_rank_gets_its_environment_and_a_live_store() {
    let script = r#"
        if exec 3<>"/dev/tcp/$MASTER_ADDR/$MASTER_PORT"; then store=up; else store=down; fi
        echo "rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK local_world=$LOCAL_WORLD_SIZE" \
             "addr=$MASTER_ADDR port=$MASTER_PORT launcher=$TUTTI_LAUNCHER agent=$TUTTI_USE_AGENT_STORE" \
             "parent=$TUTTI_TEST_PARENT store=$store"
    "#;
    let done = Launcher::run(&["-n", "3", "--", "bash", "-c", script]);
    assert!(
        done.status.success(),
        "status {:?}, stderr {}",
        done.status,
        done.stderr
    );
    let out = done.stdout_text();
    assert_eq!(out.lines().count(), 3, "{out}");
    let mut ports = Vec::new();
    for rank in 0..3 {
        let prefix = format!("[rank {rank}] ");
        let line = out
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {prefix:?}: {out}"));
        assert_eq!(field(line, "rank"), rank.to_string());
        assert_eq!(field(line, "local"), rank.to_string());
        assert_eq!(field(line, "world"), "3");
        assert_eq!(field(line, "local_world"), "3");
        assert_eq!(field(line, "addr"), "127.0.0.1");
        assert_eq!(field(line, "launcher"), "1");
        assert_eq!(field(line, "agent"), "1");
        assert_eq!(field(line, "parent"), "inherited");
        assert_eq!(field(line, "store"), "up", "store not listening: {line}");
        ports.push(field(line, "port").parse::<u16>().unwrap());
    }
    assert_ne!(ports[0], 0);
    assert!(
        ports.iter().all(|&p| p == ports[0]),
        "ports differ: {ports:?}"
    );
}

#[test]
fn a_given_master_port_is_used_and_a_busy_one_is_named() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port_arg = port.to_string();
    let done = Launcher::run(&[
        "-n",
        "1",
        "--master-port",
        &port_arg,
        "--",
        "sh",
        "-c",
        "echo port=$MASTER_PORT",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout_text(), format!("[rank 0] port={port}\n"));

    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let done = Launcher::run(&[
        "-n",
        "2",
        "--master-port",
        &busy_port,
        "--",
        "sh",
        "-c",
        "echo started",
    ]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.contains(&format!("127.0.0.1:{busy_port}")),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("--master-port"), "{}", done.stderr);
    assert!(
        done.stdout.is_empty(),
        "a rank started: {}",
        done.stdout_text()
    );
}

#[test]
fn a_failing_rank_stops_the_others() {
    let script = r#"if [ "$RANK" = 2 ]; then sleep 1; exit 3; fi; echo "pid=$$"; exec sleep 30"#;
    let done = Launcher::run(&["-n", "4", "--", "sh", "-c", script]);
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert!(
        done.elapsed < Duration::from_secs(5),
        "took {:?}",
        done.elapsed
    );
    let failure = done
        .stderr
        .lines()
        .find(|l| l.contains("rank 2 (pid "))
        .unwrap_or_else(|| panic!("{}", done.stderr));
    assert!(
        failure.contains("exited with status 3; stopping the other 3 ranks"),
        "{failure}"
    );
    let lines: Vec<String> = done.stdout_text().lines().map(String::from).collect();
    let pids = pids_in(&lines);
    assert_eq!(pids.len(), 3, "{lines:?}");
    assert_gone(&pids, Duration::ZERO); // the launcher reaped them before exiting
}

#[test]
fn a_rank_killed_by_a_signal_is_named() {
    let script = r#"if [ "$RANK" = 1 ]; then ulimit -c 0; kill -SEGV $$; fi; exec sleep 30"#;
    let done = Launcher::run(&["-n", "2", "--", "sh", "-c", script]);
    assert_eq!(
        done.status.code(),
        Some(128 + libc::SIGSEGV),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("rank 1 (pid "), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("killed by signal SIGSEGV; stopping the other 1 rank"),
        "{}",
        done.stderr
    );
}

#[test]
fn sigterm_to_the_launcher_reaches_every_rank() {
    let mut launcher = Launcher::start(&[
        "-n",
        "3",
        "--",
        "sh",
        "-c",
        r#"echo "pid=$$"; exec sleep 30"#,
    ]);
    let pids = pids_in(&launcher.wait_for_lines(3, "pid="));
    launcher.signal(libc::SIGTERM);
    let done = launcher.finish();
    assert_eq!(done.status.code(), Some(143), "{}", done.stderr);
    assert!(
        done.elapsed < Duration::from_secs(5),
        "took {:?}",
        done.elapsed
    );
    assert!(
        done.stderr
            .contains("received SIGTERM; forwarding it to 3 ranks"),
        "{}",
        done.stderr
    );
    assert_gone(&pids, Duration::ZERO);
}

#[test]
fn ranks_ignoring_the_signal_are_killed_after_the_grace_period() {
    let script = r#"trap "" INT TERM; echo "pid=$$"; while :; do sleep 0.05; done"#;
    let mut launcher = Launcher::start(&["-n", "2", "--grace", "1", "--", "sh", "-c", script]);
    let pids = pids_in(&launcher.wait_for_lines(2, "pid="));
    launcher.signal(libc::SIGINT);
    let done = launcher.finish();
    assert_eq!(done.status.code(), Some(130), "{}", done.stderr);
    assert!(
        done.elapsed >= Duration::from_secs(1),
        "SIGKILL before the grace period: {:?}",
        done.elapsed
    );
    assert!(
        done.stderr
            .contains("2 ranks still running after 1s; sending SIGKILL"),
        "{}",
        done.stderr
    );
    assert_gone(&pids, Duration::ZERO);
}

#[test]
fn ranks_are_in_their_own_process_group_and_die_with_the_launcher() {
    let mut launcher = Launcher::start(&[
        "-n",
        "3",
        "--",
        "sh",
        "-c",
        r#"echo "pid=$$"; exec sleep 30"#,
    ]);
    let lines = launcher.wait_for_lines(3, "pid=");
    let pids = pids_in(&lines);
    let rank0 = pids_in(
        &lines
            .iter()
            .filter(|l| l.starts_with("[rank 0]"))
            .cloned()
            .collect::<Vec<_>>(),
    )[0];
    let launcher_group = proc_stat(launcher.pid()).unwrap()[2].clone();
    for &pid in &pids {
        let group = proc_stat(pid).unwrap()[2].clone();
        assert_eq!(group, rank0.to_string(), "pid {pid} not in rank 0's group");
        assert_ne!(group, launcher_group, "ranks share the launcher's group");
    }
    launcher.signal(libc::SIGKILL);
    let done = launcher.finish();
    assert_eq!(done.status.code(), None);
    assert_gone(&pids, Duration::from_secs(5)); // PR_SET_PDEATHSIG
}

#[test]
fn stdout_and_stderr_lines_are_prefixed() {
    let script = r#"echo "out-$RANK"; echo "err-$RANK" >&2; printf '\377\376-%s\n' "$RANK"; printf "tail-$RANK""#;
    let done = Launcher::run(&["-n", "2", "--", "sh", "-c", script]);
    assert!(done.status.success(), "{}", done.stderr);
    for rank in 0..2 {
        let stdout = &done.stdout;
        for line in [format!("out-{rank}"), format!("tail-{rank}")] {
            let want = format!("[rank {rank}] {line}\n");
            assert!(
                contains(stdout, want.as_bytes()),
                "{want:?} missing from {stdout:?}"
            );
        }
        let raw = [
            format!("[rank {rank}] ").as_bytes(),
            b"\xff\xfe-",
            format!("{rank}\n").as_bytes(),
        ]
        .concat();
        assert!(
            contains(stdout, &raw),
            "non-UTF-8 line missing from {stdout:?}"
        );
        assert!(
            done.stderr.contains(&format!("[rank {rank}] err-{rank}\n")),
            "{}",
            done.stderr
        );
        assert!(!done.stderr.contains(&format!("out-{rank}")));
    }
    assert_eq!(
        done.stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        6
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_prefix_passes_output_through_and_stdin_is_empty() {
    let script = r#"if read -r x; then echo "stdin-$x"; else echo "stdin-eof"; fi"#;
    let done = Launcher::run(&["-n", "1", "--no-prefix", "--", "sh", "-c", script]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout_text(), "stdin-eof\n");
}

#[test]
fn zero_ranks_is_rejected() {
    let done = Launcher::run(&["-n", "0", "--", "true"]);
    assert_eq!(done.status.code(), Some(2));
    assert!(
        done.stderr.contains("-n must be at least 1"),
        "{}",
        done.stderr
    );
}

#[test]
fn a_missing_program_exits_127_and_is_named() {
    let done = Launcher::run(&["-n", "2", "--", "tutti-no-such-program", "arg"]);
    assert_eq!(done.status.code(), Some(127), "{}", done.stderr);
    assert!(
        done.stderr.contains("tutti-no-such-program"),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("rank 0"), "{}", done.stderr);
}

#[test]
fn the_timeout_stops_the_job_with_124() {
    let mut launcher = Launcher::start(&[
        "-n",
        "2",
        "--timeout",
        "1",
        "--",
        "sh",
        "-c",
        r#"echo "pid=$$"; exec sleep 30"#,
    ]);
    let pids = pids_in(&launcher.wait_for_lines(2, "pid="));
    let done = launcher.finish();
    assert_eq!(done.status.code(), Some(124), "{}", done.stderr);
    assert!(
        done.elapsed >= Duration::from_secs(1),
        "stopped early: {:?}",
        done.elapsed
    );
    assert!(
        done.elapsed < Duration::from_secs(5),
        "took {:?}",
        done.elapsed
    );
    assert!(
        done.stderr.contains("timed out after 1s; stopping 2 ranks"),
        "{}",
        done.stderr
    );
    assert_gone(&pids, Duration::ZERO);
}

/// The launcher draws a job secret (64 hex digits, a different one per job) and hands it to its
/// ranks; its store refuses a client without it and admits one with it.
#[test]
fn the_launcher_draws_a_secret_and_its_store_requires_it() {
    use tutti::rendezvous::{ClientAuth, StoreError, TcpStore};
    let script = "echo port=$MASTER_PORT secret=$TUTTI_SECRET job=$TUTTI_JOB_ID; sleep 5";
    let mut first = Launcher::start(&["-n", "1", "--", "sh", "-c", script]);
    let line = first.wait_for_lines(1, "port=").remove(0);
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {line:?}"))
            .to_string()
    };
    let (port, secret) = (field("port=").parse::<u16>().unwrap(), field("secret="));
    assert_eq!(secret.len(), 64, "{line}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
    assert!(field("job=").starts_with("0x"), "{line}");
    let d = || tutti::Deadline::after(Duration::from_secs(5));
    match TcpStore::connect("127.0.0.1", port, d()) {
        Err(e @ StoreError::Unauthorized { .. }) => {
            assert!(e.to_string().contains("requires the job secret"), "{e}")
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a client without the secret got in"),
    }
    let auth = ClientAuth {
        secret: Some(tutti::auth::Secret::new(secret.clone().into_bytes()).unwrap()),
        ..ClientAuth::default()
    };
    TcpStore::connect_as("127.0.0.1", port, auth, d()).expect("the secret lets one in");
    first.signal(libc::SIGTERM);
    let _ = first.finish();

    let done = Launcher::run(&["-n", "1", "--", "sh", "-c", "echo secret=$TUTTI_SECRET"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        !done.stdout_text().contains(&secret),
        "a second job drew the same secret"
    );

    // A secret set for the launcher is the job's: the ranks inherit it, nothing is drawn.
    let mut c = Command::new(BIN);
    c.args([
        "launch",
        "-n",
        "1",
        "--timeout",
        "20",
        "--",
        "sh",
        "-c",
        "echo secret=$TUTTI_SECRET",
    ])
    .env("TUTTI_SECRET", "mine-0123456789abcdef")
    .stdin(Stdio::null());
    let out = c.output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[rank 0] secret=mine-0123456789abcdef\n"
    );
}
