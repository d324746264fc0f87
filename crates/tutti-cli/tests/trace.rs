//! `tutti trace DIR` on real dumps: from three `tutti bench` processes over TCP loopback with
//! one of them stopped (SIGSTOP) and SIGUSR2 sent to each by PID, and from an in-process world
//! where one rank lags a collective behind. Every process is bounded in time and killed by PID.

mod common;

use common::{direct_rank, free_port, launch, run, text, Spawned, BIN, LONG_BENCH};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use tutti::{Communicator, Config, ReduceOp};

/// A fresh directory for one test's dumps.
fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tutti-trace-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The dump file of `rank`, if one is in `dir`.
fn dump_of(dir: &Path, rank: usize) -> Option<PathBuf> {
    let prefix = format!("tutti-trace-rank{rank}-pid");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".json"))
        })
}

/// Waits up to `limit` (polling every 50 ms) until every rank of `ranks` has a dump in `dir`.
fn wait_for_dumps(dir: &Path, ranks: &[usize], limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if ranks.iter().all(|&r| dump_of(dir, r).is_some()) {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// True while process `pid` runs (exists and is not a zombie).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(") ").next().map(|rest| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// `tutti trace DIR`: (exit code, stdout, stderr).
fn trace(dir: &Path) -> (Option<i32>, String, String) {
    let mut c = Command::new(BIN);
    c.arg("trace").arg(dir);
    let (out, _) = run(c, Duration::from_secs(30));
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_stopped_rank_is_named_by_tutti_trace_after_sigusr2() {
    let dir = fresh_dir("stopped");
    let port = free_port();
    let mut ranks: Vec<Spawned> = (0..3)
        .map(|rank| {
            let mut c = direct_rank(rank, 3, port, &LONG_BENCH);
            c.env("TUTTI_TIMEOUT", "60")
                .env("TUTTI_TRACE_DIR", &dir)
                .env_remove("TUTTI_TRACE_SIGNAL");
            Spawned::start(c)
        })
        .collect();
    assert!(
        ranks[0].wait_for_line("# tutti bench", Duration::from_secs(30)),
        "the world did not form"
    );
    thread::sleep(Duration::from_millis(300)); // inside the timed loop
    ranks[1].signal(libc::SIGSTOP);
    thread::sleep(Duration::from_millis(500)); // the others now wait for rank 1
    let asked = Instant::now();
    for r in &ranks {
        r.signal(libc::SIGUSR2);
    }
    assert!(
        wait_for_dumps(&dir, &[0, 2], Duration::from_secs(10)),
        "ranks 0 and 2 did not dump"
    );
    eprintln!("ranks 0 and 2 dumped {:?} after SIGUSR2", asked.elapsed());
    assert!(dump_of(&dir, 1).is_none(), "a stopped rank cannot dump");
    let (code, out, err) = trace(&dir);
    eprintln!("{out}");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2 dump(s) of a world of 3 rank(s)"), "{out}");
    assert!(out.contains("dumped on signal SIGUSR2"), "{out}");
    assert!(out.contains("no dump from rank 1"), "{out}");
    assert!(out.contains("rank 1 has NO DUMP"), "{out}");
    // Usually "ranks 0, 2 reached all_reduce #k"; if rank 1 stopped just after its last send
    // of call k to one of them, that one is in k + 1 and the other one is named behind.
    assert!(out.contains(" reached all_reduce #"), "{out}");
    assert!(out.contains("  rank 0: all_reduce #"), "{out}");
    assert!(out.contains(": started "), "{out}");
    // Continued, rank 1 takes its pending SIGUSR2 and dumps too.
    ranks[1].signal(libc::SIGCONT);
    assert!(
        wait_for_dumps(&dir, &[1], Duration::from_secs(10)),
        "rank 1 did not dump once continued"
    );
    let (code, out, _) = trace(&dir);
    assert_eq!(code, Some(0));
    assert!(out.contains("3 dump(s) of a world of 3 rank(s)"), "{out}");
    drop(ranks); // each killed by its PID
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tutti_launch_forwards_sigusr2_so_every_rank_dumps_and_goes_on() {
    let dir = fresh_dir("launch");
    let mut program = vec![BIN];
    program.extend(LONG_BENCH);
    let mut cmd = launch(3, &program);
    cmd.env("TUTTI_TRACE_DIR", &dir)
        .env("TUTTI_TIMEOUT", "60")
        .env_remove("TUTTI_TRACE_SIGNAL");
    let mut job = Spawned::start(cmd);
    assert!(
        job.wait_for_line("# tutti bench", Duration::from_secs(30)),
        "the world did not form"
    );
    let asked = Instant::now();
    job.signal(libc::SIGUSR2);
    assert!(
        wait_for_dumps(&dir, &[0, 1, 2], Duration::from_secs(10)),
        "not every rank dumped"
    );
    eprintln!(
        "3 ranks dumped {:?} after SIGUSR2 to the launcher",
        asked.elapsed()
    );
    let (code, out, err) = trace(&dir);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("3 dump(s) of a world of 3 rank(s)"), "{out}");
    // The job goes on: the launcher did not stop it (nor die of the signal).
    thread::sleep(Duration::from_millis(300));
    assert!(running(job.pid()), "the launcher is gone after SIGUSR2");
    job.signal(libc::SIGTERM);
    let f = job.finish(Duration::from_secs(60));
    assert!(
        f.stderr
            .contains("received SIGUSR2; forwarding it to 3 ranks (trace dump)"),
        "{}",
        f.stderr
    );
    let usr2 = f.stderr.find("received SIGUSR2").unwrap_or(0);
    let term = f.stderr.find("received SIGTERM").unwrap_or(0);
    assert!(usr2 < term, "the job stopped before SIGTERM: {}", f.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rank_a_collective_behind_is_named_with_the_op_it_has_not_started() {
    // Ranks 0 and 2 run two all-reduces; rank 1 only the first. While 0 and 2 wait in the
    // second, every rank dumps, and `tutti trace` must say rank 1 has not started #2.
    let dir = fresh_dir("behind");
    let mut config = Config {
        timeout: Duration::from_secs(3),
        ..Config::default()
    };
    config.trace.dir = Some(dir.clone());
    config.trace.signal = None;
    let comms = Communicator::in_process(3, config).unwrap();
    thread::scope(|s| {
        let waiting: Vec<_> = comms
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let mut x = vec![1.0f32; 256];
                    c.all_reduce(&mut x, ReduceOp::Sum).unwrap();
                    if c.rank() != 1 {
                        let _ = c.all_reduce(&mut x, ReduceOp::Sum);
                    }
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(500));
        for c in &comms {
            c.dump_trace(Some(&dir), "test: a lagging rank").unwrap();
        }
        for h in waiting {
            h.join().unwrap();
        }
    });
    // The timeouts (3 s) later rewrote ranks 0 and 2's files with the failure: that is the
    // newest state, and it must still name rank 1 as behind.
    let (code, out, err) = trace(&dir);
    eprintln!("{out}");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("rank 1 is BEHIND: it has not started all_reduce #2, which ranks 0, 2 started; its last collective is all_reduce #1 (done)"),
        "{out}"
    );
    assert!(out.contains("rank 0 FAILED in all_reduce #2: "), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tutti_trace_refuses_a_missing_directory_and_reports_an_empty_one() {
    let dir = fresh_dir("empty");
    std::fs::write(dir.join("tutti-trace-rank0-pid1.json"), "{").unwrap();
    let (code, out, _) = trace(&dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("0 dump(s)") && out.contains("unreadable, skipped"),
        "{out}"
    );
    let (code, _, err) = trace(&dir.join("nope"));
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot read") && err.contains("nope"), "{err}");
    // Without DIR: TUTTI_TRACE_DIR.
    let mut c = Command::new(BIN);
    c.arg("trace").env("TUTTI_TRACE_DIR", &dir);
    let (out, _) = run(c, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("unreadable, skipped"),
        "{}",
        text(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
