//! The library over real TCP between separate processes, started by `tutti launch`: the whole
//! correctness suite on world sizes 2 to 5, a rank that exits, is killed or is frozen mid-run,
//! and bad environments. Every run is
//! bounded by a deadline and killed (by PID) if it overstays.

mod common;

use common::{direct_rank, free_port, launch, run, text, Spawned, BIN, LONG_BENCH};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[test]
fn selftest_passes_over_tcp_on_2_3_4_5_processes() {
    for n in [2, 3, 4, 5] {
        let (out, took) = run(launch(n, &[BIN, "selftest"]), Duration::from_secs(600));
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "world of {n} failed ({:?}):\n{stdout}\n{}",
            out.status,
            text(&out.stderr)
        );
        for r in 0..n {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("[rank {r}] selftest: rank {r} of {n}: ")))
                .unwrap_or_else(|| panic!("no report from rank {r} of {n}:\n{stdout}"));
            assert!(line.contains("cases passed"), "{line}");
        }
        eprintln!("selftest on {n} processes: {took:.1?}");
    }
}

#[test]
fn a_rank_that_dies_mid_run_is_named_and_the_job_stops() {
    // Rank 1 makes the same calls as the others for the first size (a prefix of their run), then
    // exits with status 9; the others go on to larger sizes and find it gone. Whichever the
    // launcher reaps first, it must stop the job, exit non-zero and report rank 1's status.
    // (Rank 1's shell ignores SIGTERM: if a peer's failure is reaped first, the launcher's
    // SIGTERM must not race rank 1's own `exit 9`.)
    let script = format!(
        "if [ \"$RANK\" = 1 ]; then trap '' TERM; {BIN} bench --min-bytes 4M --max-bytes 4M --iters 5 >/dev/null && exit 9; \
         else exec {BIN} bench --min-bytes 4M --max-bytes 64M --iters 5; fi"
    );
    let (out, took) = run(launch(3, &["sh", "-c", &script]), Duration::from_secs(60));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("tutti launch: rank 1 (pid ") && stderr.contains("exited with status 9"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn survivors_name_the_rank_that_died() {
    // Without the launcher stopping them, surviving ranks must fail on their own, naming rank 1.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut children = Vec::new();
    for rank in 0..3 {
        let mut c = Command::new(BIN);
        let args: Vec<String> = if rank == 1 {
            // The same calls as the others' first size: a prefix of their run.
            [
                "bench",
                "--min-bytes",
                "64K",
                "--max-bytes",
                "64K",
                "--iters",
                "20",
            ]
            .map(String::from)
            .to_vec()
        } else {
            [
                "bench",
                "--min-bytes",
                "64K",
                "--max-bytes",
                "64M",
                "--iters",
                "20",
            ]
            .map(String::from)
            .to_vec()
        };
        c.args(&args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "3")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("TUTTI_TIMEOUT", "20");
        children.push(std::thread::spawn(move || run(c, Duration::from_secs(60))));
    }
    let results: Vec<_> = children.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        results[1].0.status.success(),
        "rank 1 should finish its short run: {}",
        text(&results[1].0.stderr)
    );
    for r in [0, 2] {
        let (out, took) = &results[r];
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "rank {r} should fail");
        assert!(
            stderr.contains(&format!("on rank {r}")) && stderr.contains("rank 1"),
            "rank {r}: {stderr}"
        );
        assert!(*took < Duration::from_secs(25), "rank {r} took {took:?}");
    }
}

/// Three ranks of a long `tutti bench` started directly (no launcher), rank `r`'s calls bounded
/// by `timeouts_s[r]` seconds (`None`: the default, 300 s); returns once rank 0 has printed its
/// table header.
fn three_benchmarking_ranks(timeouts_s: [Option<&str>; 3]) -> Vec<Spawned> {
    let port = free_port();
    let mut ranks: Vec<Spawned> = (0..3)
        .map(|rank| {
            let mut c = direct_rank(rank, 3, port, &LONG_BENCH);
            c.env_remove("TUTTI_TIMEOUT").env_remove("TUTTI_LIVENESS");
            if let Some(t) = timeouts_s[rank] {
                c.env("TUTTI_TIMEOUT", t);
            }
            Spawned::start(c)
        })
        .collect();
    assert!(
        ranks[0].wait_for_line("# tutti bench", Duration::from_secs(30)),
        "the world did not form"
    );
    std::thread::sleep(Duration::from_millis(300)); // well inside the timed loop
    ranks
}

/// Ends ranks 0 and 2 and checks that each failed within `bound` of `since`, naming rank 1.
fn survivors_name_rank_1(ranks: Vec<Spawned>, since: Instant, bound: Duration) {
    let mut ranks = ranks.into_iter();
    let (r0, r1, r2) = (
        ranks.next().unwrap(),
        ranks.next().unwrap(),
        ranks.next().unwrap(),
    );
    for (i, r) in [(0, r0), (2, r2)] {
        let f = r.finish(Duration::from_secs(120));
        let after = f.ended - since;
        assert!(!f.status.success(), "rank {i} should fail: {}", f.stdout);
        assert!(after < bound, "rank {i} took {after:?}: {}", f.stderr);
        assert!(
            f.stderr.contains(&format!("on rank {i}")) && f.stderr.contains("rank 1"),
            "rank {i} should name rank 1: {}",
            f.stderr
        );
        eprintln!("rank {i} failed {after:.1?} after: {}", f.stderr.trim());
    }
    drop(r1); // killed by PID if still there
}

#[test]
fn a_rank_killed_mid_collective_is_named_by_every_survivor_at_once() {
    // The call timeout is a minute: the survivors must learn from the dead link, not from it.
    let ranks = three_benchmarking_ranks([Some("60"); 3]);
    let killed_at = Instant::now();
    ranks[1].signal(libc::SIGKILL);
    survivors_name_rank_1(ranks, killed_at, Duration::from_secs(10));
}

#[test]
fn a_frozen_rank_is_named_by_every_survivor_within_the_liveness_bound() {
    // A stopped process keeps its sockets open, but sends no heartbeat: with the default
    // settings (timeout 300 s, liveness 3 s) every survivor fails within 5 s naming rank 1.
    // The three ranks share this host, so their links run over shared memory: the heartbeats
    // go through the rings.
    let ranks = three_benchmarking_ranks([None; 3]);
    let frozen_at = Instant::now();
    ranks[1].signal(libc::SIGSTOP);
    survivors_name_rank_1(ranks, frozen_at, Duration::from_secs(5));
}

fn solo(envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(["bench", "--max-bytes", "4K"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in envs {
        c.env(k, v);
    }
    run(c, Duration::from_secs(20)).0
}

#[test]
fn bad_environments_are_clear_errors() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("RANK", "0"), ("WORLD_SIZE", "0")], "WORLD_SIZE=0"),
        (&[("RANK", "abc"), ("WORLD_SIZE", "2")], "RANK=abc"),
        (
            &[
                ("RANK", "2"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "127.0.0.1"),
            ],
            "RANK",
        ),
        (&[("RANK", "1"), ("WORLD_SIZE", "2")], "MASTER_ADDR"),
        (
            &[
                ("RANK", "0"),
                ("WORLD_SIZE", "1"),
                ("TUTTI_ALGO", "allreduce:fast"),
            ],
            "valid: naive, ring, tree",
        ),
        // Too large for a Duration: an error naming the variable, not a panic.
        (
            &[
                ("RANK", "0"),
                ("WORLD_SIZE", "1"),
                ("TUTTI_TIMEOUT", "1e20"),
            ],
            "TUTTI_TIMEOUT=\"1e20\" is not a positive number of seconds of at most 1e9",
        ),
        (
            &[
                ("RANK", "0"),
                ("WORLD_SIZE", "1"),
                ("TUTTI_INIT_TIMEOUT", "1e20"),
            ],
            "TUTTI_INIT_TIMEOUT=1e20",
        ),
        (
            &[
                ("RANK", "0"),
                ("WORLD_SIZE", "1"),
                ("TUTTI_SECRET", "short"),
            ],
            "TUTTI_SECRET: a job secret must have at least 16 bytes",
        ),
    ];
    for (envs, needle) in cases {
        let out = solo(envs);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{envs:?} should fail");
        assert!(stderr.contains(needle), "{envs:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{envs:?}: {stderr}");
    }
}

#[test]
fn unreachable_master_fails_within_the_init_deadline() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let port_s = port.to_string();
    let out = solo(&[
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", &port_s),
        ("TUTTI_INIT_TIMEOUT", "1"),
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("MASTER_PORT={port}")), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn busy_master_port_is_a_clear_error() {
    let busy = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = solo(&[
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", &port),
        ("TUTTI_INIT_TIMEOUT", "2"),
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("already in use"), "{stderr}");
}
