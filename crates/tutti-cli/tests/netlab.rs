//! Multi-host tests: one rank per host, each host a network namespace of a `../shared/netlab` lab,
//! joined by shaped or emulated links. They check what loopback cannot: that every rank listens
//! on (and publishes) the address of the interface that routes to `MASTER_ADDR`, that the whole
//! correctness suite passes across a rate-limited network and across one with delay, jitter
//! (reordering) and loss, that the file store works between hosts, that a rank killed, stopped
//! or cut off in the middle of a 256 MiB all-reduce is named by every other rank within 5 s with
//! the default settings (the liveness bound, not the 300 s call timeout), that mismatched calls
//! fail every rank within 5 s, and that `tutti probe` finds the host behind a slow link.
//!
//! They need root, iproute2 and netlab (`netlab check`). Where that is missing each test says it
//! is skipped (under `CI=true` it fails instead), on stderr and in `$CARGO_TARGET_TMPDIR/skipped.txt`, which `scripts/test.sh` reports
//! and subtracts from the passed count: a skipped test is never counted as a pass.

mod common;

use common::{Finished, Spawned, BIN};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Where the team keeps netlab: `../shared/netlab/netlab` beside the project root, unless
/// `TUTTI_NETLAB` names it.
fn netlab_tool() -> PathBuf {
    std::env::var_os("TUTTI_NETLAB").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/netlab/netlab"),
        PathBuf::from,
    )
}

/// Records that `test` did not run, and why. Under `CI=true` a multi-host test that cannot run
/// fails instead: CI runs as root with iproute2 installed by scripts/test.sh, so netlab must
/// work there.
fn skip(test: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: CI=true and this multi-host test cannot run: {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("skipped.txt");
    let line = format!("netlab::{test}: {why}\n");
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
}

/// A lab that exists until this value is dropped (`netlab down` runs even if the test panics).
struct Lab {
    tool: PathBuf,
    name: String,
    hosts: usize,
}

impl Lab {
    /// Brings up lab `tag` + our PID with `hosts` hosts and netlab's `options`; `None` (after
    /// recording the skip) when this machine cannot run labs.
    fn up(test: &str, tag: &str, hosts: usize, options: &[&str]) -> Option<Lab> {
        let tool = netlab_tool();
        if !tool.exists() {
            skip(test, &format!("netlab not found at {}", tool.display()));
            return None;
        }
        let check = Command::new(&tool)
            .arg("check")
            .output()
            .expect("run netlab check");
        if !check.status.success() {
            let why = String::from_utf8_lossy(&check.stdout).trim().to_string();
            skip(test, &format!("netlab check: {why}"));
            return None;
        }
        let name = format!("{tag}{}", std::process::id() % 100_000);
        let lab = Lab { tool, name, hosts };
        let out = Command::new(&lab.tool)
            .args(["up", &lab.name, "--hosts", &hosts.to_string()])
            .args(options)
            .output()
            .expect("run netlab up");
        assert!(
            out.status.success(),
            "netlab up {}: {}{}",
            lab.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(lab)
    }

    /// The address of host `i`.
    fn addr(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// `tutti ARGS` on host `i` as rank `i` of a world of all hosts, rendezvous at host 0.
    fn rank(&self, i: usize, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("{}-h{i}", self.name), BIN])
            .args(args)
            .env("RANK", i.to_string())
            .env("WORLD_SIZE", self.hosts.to_string())
            .env("MASTER_ADDR", Lab::addr(0))
            .env("MASTER_PORT", "29500")
            .env("TUTTI_INIT_TIMEOUT", "60");
        for (k, v) in envs {
            c.env(k, v);
        }
        c
    }

    /// `tutti ARGS` as rank `rank` of a world of `world` ranks, on host `host`.
    fn rank_on(
        &self,
        host: usize,
        rank: usize,
        world: usize,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Command {
        let mut c = self.rank(host, args, envs);
        c.env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string());
        c
    }

    /// Silently cuts host `i` off the network.
    fn cut(&self, i: usize) {
        let ok = Command::new(&self.tool)
            .args(["cut", &self.name, &i.to_string()])
            .status()
            .expect("run netlab cut");
        assert!(ok.success(), "netlab cut {} {i}", self.name);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(&self.tool).args(["down", &self.name]).output();
    }
}

/// Runs the correctness suite with `args` on every host of `lab`; asserts that every rank passed
/// and listened on its own host's address. Returns the slowest rank's time.
fn selftest_on_every_host(lab: &Lab, args: &[&str], envs: &[(&str, &str)]) -> Duration {
    let mut full_args = vec!["selftest"];
    full_args.extend_from_slice(args);
    let mut envs = envs.to_vec();
    envs.push(("TUTTI_LOG", "tutti::comm=debug"));
    let ranks: Vec<_> = (0..lab.hosts)
        .map(|i| Spawned::start(lab.rank(i, &full_args, &envs)))
        .collect();
    let limit = Duration::from_secs(240);
    let finished: Vec<_> = ranks.into_iter().map(|r| r.finish(limit)).collect();
    for (i, f) in finished.iter().enumerate() {
        let n = lab.hosts;
        assert!(
            f.status.success(),
            "rank {i} failed ({}):\n{}\n{}",
            f.status,
            f.stdout,
            f.stderr
        );
        let passed = format!("selftest: rank {i} of {n}: ");
        assert!(f.stdout.contains(&passed), "rank {i}: {}", f.stdout);
        let listens = format!("addr={}:", Lab::addr(i));
        assert!(
            f.stderr.contains("listening for the mesh") && f.stderr.contains(&listens),
            "rank {i} should listen on {}: {}",
            Lab::addr(i),
            f.stderr
        );
    }
    finished.iter().map(|f| f.took).max().unwrap_or_default()
}

#[test]
fn selftest_across_four_hosts_on_gigabit_links() {
    let Some(lab) = Lab::up(
        "selftest_across_four_hosts_on_gigabit_links",
        "st",
        4,
        &["--rate", "1gbit"],
    ) else {
        return;
    };
    let took = selftest_on_every_host(&lab, &["--large", "262144"], &[]);
    eprintln!("selftest on 4 hosts at 1 Gbit/s: {took:.1?}");
}

#[test]
fn selftest_across_three_hosts_with_delay_jitter_and_loss() {
    let options = ["--delay", "1ms", "--jitter", "0.5ms", "--loss", "1%"];
    let Some(lab) = Lab::up(
        "selftest_across_three_hosts_with_delay_jitter_and_loss",
        "sj",
        3,
        &options,
    ) else {
        return;
    };
    let took = selftest_on_every_host(&lab, &["--counts", "0,13", "--large", "100000"], &[]);
    eprintln!("selftest on 3 hosts, 1 ms +- 0.5 ms one way, 1% loss: {took:.1?}");
}

/// 100 all-reduces of 4 MiB (f32 sum, the ring forced) across 4 hosts whose paths have 25 ms
/// one-way delay, +-5 ms jitter (so packets are reordered) and 1% loss each way: every rank's
/// digest of the results (`tutti selftest --all-reduces`, `tutti::check::all_reduce_digest`)
/// equals that of a clean in-process run of the same algorithm, and no call reaches its 60 s
/// deadline. Measured here (2026-12-06, release build, load about 4): 104 s wall, slowest call
/// 2.9 s (2 hosts: 10 calls in 3.5 s, so about 35 s for 100); 4 hosts fit the suite's budget,
/// so this is the full variant of issue 14, not a reduced one.
#[test]
fn all_reduces_across_a_lossy_long_link_are_bit_identical_to_a_clean_run() {
    const CALLS: usize = 100;
    const BYTES: usize = 4 << 20;
    const HOSTS: usize = 4;
    const SEED: u64 = 1;
    let test = "all_reduces_across_a_lossy_long_link_are_bit_identical_to_a_clean_run";
    let options = ["--delay", "25ms", "--jitter", "5ms", "--loss", "1%"];
    let Some(lab) = Lab::up(test, "ll", HOSTS, &options) else {
        return;
    };
    let args = [
        "selftest",
        "--all-reduces",
        &CALLS.to_string(),
        "--bytes",
        &BYTES.to_string(),
        "--seed",
        &SEED.to_string(),
    ];
    let envs = [
        ("TUTTI_ALGO", "allreduce:ring"),
        ("TUTTI_TUNE", "0"),
        ("TUTTI_TIMEOUT", "60"),
    ];
    let ranks: Vec<_> = (0..HOSTS)
        .map(|i| Spawned::start(lab.rank(i, &args, &envs)))
        .collect();
    // The clean run, in this process, while the lab's runs: the same algorithm and inputs.
    let config = tutti::Config {
        algorithms: tutti::Algorithms {
            all_reduce: tutti::algo::AllReduceAlgo::Ring,
            ..tutti::Algorithms::default()
        },
        ..tutti::Config::default()
    };
    let comms = tutti::Communicator::in_process(HOSTS, config).expect("in-process world");
    let clean: Vec<u64> = thread::scope(|s| {
        let runs: Vec<_> = comms
            .iter()
            .map(|c| s.spawn(move || tutti::check::all_reduce_digest(c, CALLS, BYTES / 4, SEED)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("clean rank").expect("clean run").digest)
            .collect()
    });
    assert!(
        clean.iter().all(|&d| d == clean[0]),
        "clean run: {clean:x?}"
    );
    let want = format!("by ring: {:016x}; slowest call ", clean[0]);
    let finished: Vec<_> = ranks
        .into_iter()
        .map(|r| r.finish(Duration::from_secs(400)))
        .collect();
    for (i, f) in finished.iter().enumerate() {
        assert!(
            f.status.success(),
            "rank {i} failed ({}):\n{}\n{}",
            f.status,
            f.stdout,
            last_lines(&f.stderr, 20)
        );
        let line = f
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("all-reduce digest: rank {i} of {HOSTS}: ")))
            .unwrap_or_else(|| panic!("rank {i} printed no digest: {}", f.stdout));
        eprintln!("{line} (took {:.1?})", f.took);
        assert!(line.contains(&want), "rank {i}: {line}, clean: {want}");
        let slowest: f64 = line
            .split("slowest call ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("rank {i}: no slowest call in {line}"));
        assert!(slowest < 60.0, "rank {i}: a call took {slowest} s");
    }
}

#[test]
fn a_file_store_on_a_shared_path_forms_a_world_across_hosts() {
    let Some(lab) = Lab::up(
        "a_file_store_on_a_shared_path_forms_a_world_across_hosts",
        "fs",
        3,
        &["--rate", "1gbit"],
    ) else {
        return;
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("store-{}", lab.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the store directory");
    let store = format!("file:{}", dir.display());
    let ranks: Vec<_> = (0..lab.hosts)
        .map(|i| {
            let bind = Lab::addr(i);
            let envs = [
                ("TUTTI_STORE", store.as_str()),
                ("TUTTI_BIND_ADDR", bind.as_str()),
                ("TUTTI_LOG", "tutti::comm=debug"),
            ];
            let mut c = lab.rank(i, &["selftest", "--counts", "0,13", "--large", "0"], &envs);
            // No TCP store: the file store alone must form the world.
            c.env_remove("MASTER_ADDR").env_remove("MASTER_PORT");
            Spawned::start(c)
        })
        .collect();
    for (i, r) in ranks.into_iter().enumerate() {
        let f = r.finish(Duration::from_secs(120));
        assert!(f.status.success(), "rank {i}: {}\n{}", f.stdout, f.stderr);
        assert!(
            f.stderr.contains(&format!("addr={}:", Lab::addr(i))),
            "{}",
            f.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits for every process at once, so that each is reaped within 20 ms of its end (`ended` is
/// then when it ended, not when its turn to be waited for came).
fn finish_all(ranks: Vec<(usize, Spawned)>, limit: Duration) -> Vec<(usize, Finished)> {
    let waiting: Vec<_> = ranks
        .into_iter()
        .map(|(i, r)| (i, thread::spawn(move || r.finish(limit))))
        .collect();
    waiting
        .into_iter()
        .map(|(i, h)| {
            (
                i,
                h.join().unwrap_or_else(|_| panic!("rank {i} overstayed")),
            )
        })
        .collect()
}

/// How the victim of a fault test is made to fail.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL: its sockets close (the kernel of its host answers for it).
    Kill,
    /// SIGSTOP: its sockets stay open, it just stops talking.
    Stop,
    /// `netlab cut`: its host vanishes from the network, nobody gets an error.
    Cut,
}

/// The rank that meets the fault.
const VICTIM: usize = 2;

/// 4 hosts run back-to-back all-reduces of 256 MiB with the default timeout (300 s) and
/// liveness bound (3 s); one second into the first, rank [`VICTIM`] meets `fault`. Every other
/// rank must fail within 5 s of it, naming the victim; prints each one's time to error.
fn survivors_of_a_fault_in_a_256_mib_all_reduce(test: &str, tag: &str, fault: Fault) {
    // One at a time: three labs of 256 MiB all-reduces at once on two cores would measure the
    // machine, not the liveness bound.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = Lab::up(test, tag, 4, &["--rate", "1gbit"]) else {
        return;
    };
    // Each call moves 384 MiB per rank (a few seconds at 1 Gbit/s): bounded in count here, and
    // in time by the kill limit below; the fault ends it sooner.
    let args = [
        "bench",
        "all_reduce",
        "--min-bytes",
        "256M",
        "--max-bytes",
        "256M",
        "--iters",
        "20",
        "--warmup",
        "0",
        "--check",
        "0",
    ];
    let mut ranks: Vec<_> = (0..lab.hosts)
        .map(|i| {
            let mut c = lab.rank(i, &args, &[]);
            c.env_remove("TUTTI_TIMEOUT").env_remove("TUTTI_LIVENESS");
            Some(Spawned::start(c))
        })
        .collect();
    let header = ranks[0]
        .as_mut()
        .map(|r| r.wait_for_line("# tutti bench", Duration::from_secs(60)));
    assert_eq!(header, Some(true), "the world did not form");
    thread::sleep(Duration::from_secs(1)); // inside the first all-reduce
    let victim = ranks[VICTIM].take().expect("the victim runs");
    let fault_at = Instant::now();
    match fault {
        Fault::Kill => victim.signal(libc::SIGKILL),
        Fault::Stop => victim.signal(libc::SIGSTOP),
        Fault::Cut => lab.cut(VICTIM),
    }
    let survivors = ranks
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|r| (i, r)))
        .collect();
    let finished = finish_all(survivors, Duration::from_secs(60));
    drop(victim); // killed by PID if still there
    let mut failures = Vec::new();
    for (i, f) in &finished {
        let after = f.ended - fault_at;
        let last = f.stderr.trim().lines().last().unwrap_or("").to_string();
        eprintln!("{fault:?}: rank {i} failed {after:.2?} after the fault: {last}");
        if f.status.success()
            || after >= Duration::from_secs(5)
            || !f.stderr.contains(&format!("on rank {i}"))
            || !f.stderr.contains(&format!("rank {VICTIM}"))
        {
            failures.push(format!(
                "rank {i} ({after:.2?}, {}): {}",
                f.status, f.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{fault:?}: {failures:#?}");
}

#[test]
fn a_rank_killed_in_a_256_mib_all_reduce_is_named_by_every_survivor_within_5_s() {
    survivors_of_a_fault_in_a_256_mib_all_reduce(
        "a_rank_killed_in_a_256_mib_all_reduce_is_named_by_every_survivor_within_5_s",
        "fk",
        Fault::Kill,
    );
}

#[test]
fn a_rank_stopped_in_a_256_mib_all_reduce_is_named_by_every_survivor_within_5_s() {
    survivors_of_a_fault_in_a_256_mib_all_reduce(
        "a_rank_stopped_in_a_256_mib_all_reduce_is_named_by_every_survivor_within_5_s",
        "fs",
        Fault::Stop,
    );
}

#[test]
fn a_host_cut_off_silently_in_a_256_mib_all_reduce_is_named_by_every_survivor_within_5_s() {
    survivors_of_a_fault_in_a_256_mib_all_reduce(
        "a_host_cut_off_silently_in_a_256_mib_all_reduce_is_named_by_every_survivor_within_5_s",
        "fc",
        Fault::Cut,
    );
}

/// 4 hosts: ranks 0 to 2 run `bench all_reduce` of 1 MiB, rank 3 runs `odd` instead, with the
/// default timeout. Every rank must fail with the mismatch (its own, or the one in an aborting
/// peer's reason) within 5 s of the first rank that found it; prints each one's time. (Ranks
/// leave `init` at different times: one still tuning the cost model when the others start
/// fails there, with the same reason.)
fn every_rank_fails_with_the_mismatch(test: &str, tag: &str, odd: &[&str], needles: &[&str]) {
    let Some(lab) = Lab::up(test, tag, 4, &["--rate", "1gbit"]) else {
        return;
    };
    let same = ["bench", "all_reduce", "-b", "1M", "-e", "1M", "-n", "5"];
    let ranks: Vec<_> = (0..lab.hosts)
        .map(|i| {
            let args: &[&str] = if i == 3 { odd } else { &same };
            let mut c = lab.rank(i, args, &[]);
            c.env_remove("TUTTI_TIMEOUT").env_remove("TUTTI_LIVENESS");
            Spawned::start(c)
        })
        .collect();
    let finished = finish_all(
        ranks.into_iter().enumerate().collect(),
        Duration::from_secs(60),
    );
    let first = finished
        .iter()
        .map(|(_, f)| f.ended)
        .min()
        .expect("4 ranks");
    let mut failures = Vec::new();
    for (i, f) in &finished {
        let after = f.ended - first;
        let last = f.stderr.trim().lines().last().unwrap_or("").to_string();
        eprintln!(
            "rank {i} failed {after:.2?} after the first rank ({:.2?} after its start): {last}",
            f.took
        );
        let named = needles.iter().all(|n| f.stderr.contains(n));
        if f.status.success() || after >= Duration::from_secs(5) || !named {
            failures.push(format!(
                "rank {i} ({after:.2?}, {}): {}",
                f.status, f.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_mismatched_count_fails_every_rank_within_5_s() {
    every_rank_fails_with_the_mismatch(
        "a_mismatched_count_fails_every_rank_within_5_s",
        "mc",
        &["bench", "all_reduce", "-b", "2M", "-e", "2M", "-n", "5"],
        &[
            "mismatched call",
            "all_reduce(f32, sum, count 262144)",
            "all_reduce(f32, sum, count 524288)",
        ],
    );
}

#[test]
fn broadcast_against_all_reduce_fails_every_rank_within_5_s() {
    every_rank_fails_with_the_mismatch(
        "broadcast_against_all_reduce_fails_every_rank_within_5_s",
        "mb",
        &["bench", "broadcast", "-b", "1M", "-e", "1M", "-n", "5"],
        &[
            "mismatched call",
            "all_reduce(f32, sum, count 262144)",
            "broadcast(f32, root 0, count 262144)",
        ],
    );
}

#[test]
fn two_hosts_of_two_ranks_use_shared_memory_within_and_the_hierarchical_all_reduce() {
    let Some(lab) = Lab::up(
        "two_hosts_of_two_ranks_use_shared_memory_within_and_the_hierarchical_all_reduce",
        "hi",
        2,
        &["--rate", "1gbit"],
    ) else {
        return;
    };
    // Ranks 0, 1 on host 0 and 2, 3 on host 1: the default all-reduce is hierarchical, the
    // links within a host are shared memory, those across are TCP. The suite checks every
    // collective bit for bit against its reference.
    let envs = [("TUTTI_LOG", "tutti::comm=debug")];
    let ranks: Vec<_> = (0..4)
        .map(|r| {
            let args = ["selftest", "--counts", "0,13,4099", "--large", "300000"];
            Spawned::start(lab.rank_on(r / 2, r, 4, &args, &envs))
        })
        .collect();
    let finished: Vec<_> = ranks
        .into_iter()
        .map(|s| s.finish(Duration::from_secs(240)))
        .collect();
    // Every rank's last words, so that the rank that failed first can be told from the rest.
    let failures: String = finished
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.status.success())
        .map(|(r, f)| format!("rank {r}: {}\n{}\n", f.stdout, last_lines(&f.stderr, 400)))
        .collect();
    assert!(failures.is_empty(), "{failures}");
    for (r, f) in finished.iter().enumerate() {
        assert!(
            f.stdout.contains(&format!("selftest: rank {r} of 4: ")),
            "{}",
            f.stdout
        );
    }
    let bench = |r: usize| {
        let args = ["bench", "all_reduce", "-b", "1M", "-e", "1M", "-n", "5"];
        Spawned::start(lab.rank_on(r / 2, r, 4, &args, &envs))
    };
    let ranks: Vec<_> = (0..4).map(bench).collect();
    let finished: Vec<_> = ranks
        .into_iter()
        .map(|s| s.finish(Duration::from_secs(120)))
        .collect();
    for (r, f) in finished.iter().enumerate() {
        assert!(f.status.success(), "rank {r}: {}", f.stderr);
        assert!(
            f.stderr
                .contains("op=all_reduce seq=1 bytes=1048576 algorithm=\"hierarchical\"")
                // The tuning at start-up forces the ring on its own communicator: not a choice.
                && !f.stderr.lines().any(|l| {
                    l.contains("algorithm=\"ring\"") && !l.contains("reason=forced")
                }),
            "rank {r} should run the hierarchical all-reduce by default: {}",
            f.stderr
        );
    }
    assert!(
        finished[0]
            .stdout
            .contains("# links of rank 0: shared memory to 1; TCP to 2, 3"),
        "{}",
        finished[0].stdout
    );
}

#[test]
fn probe_names_the_host_behind_a_slow_link_as_the_slow_rank_and_the_bottleneck() {
    let Some(lab) = Lab::up(
        "probe_names_the_host_behind_a_slow_link_as_the_slow_rank_and_the_bottleneck",
        "pb",
        4,
        &["--rate", "1gbit", "--host", "2:rate=100mbit"],
    ) else {
        return;
    };
    // Rounds of 2 x 1 MiB: about 0.18 s at 100 Mbit/s, so the 6 directions through host 2 take
    // about 3 s in all.
    let args = [
        "probe",
        "--pings",
        "200",
        "--bw-size",
        "1M",
        "--bw-count",
        "2",
        "--bw-rounds",
        "3",
        "--budget",
        "20",
    ];
    let ranks: Vec<_> = (0..lab.hosts)
        .map(|i| Spawned::start(lab.rank(i, &args, &[])))
        .collect();
    let finished: Vec<_> = ranks
        .into_iter()
        .map(|r| r.finish(Duration::from_secs(120)))
        .collect();
    for (i, f) in finished.iter().enumerate() {
        assert!(f.status.success(), "rank {i}: {}\n{}", f.stdout, f.stderr);
        if i > 0 {
            assert!(f.stdout.is_empty(), "only rank 0 prints: {}", f.stdout);
        }
    }
    let out = &finished[0].stdout;
    eprintln!("{out}");
    assert!(out.contains("slow rank (bandwidth): 2 ("), "{out}");
    let bottleneck = out
        .lines()
        .find(|l| l.starts_with("bottleneck link: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        bottleneck.starts_with("bottleneck link: 2 -> ") || bottleneck.contains(" -> 2 at "),
        "{bottleneck}"
    );
    // Row sends to column, Gbit/s.
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("bandwidth, row sends to column"))
        .unwrap_or_else(|| panic!("{out}"));
    let (mut slow, mut fast) = (Vec::new(), Vec::new());
    for a in 0..lab.hosts {
        let cells: Vec<&str> = lines[at + 2 + a].split_whitespace().collect();
        assert_eq!(cells.len(), lab.hosts + 1, "{out}");
        for b in (0..lab.hosts).filter(|&b| b != a) {
            let g: f64 = cells[b + 1]
                .parse()
                .unwrap_or_else(|_| panic!("{a} -> {b}: {:?}", cells[b + 1]));
            if a == 2 || b == 2 {
                slow.push(g);
            } else {
                fast.push(g);
            }
        }
    }
    let slowest_fast = fast.iter().copied().fold(f64::INFINITY, f64::min);
    let fastest_slow = slow.iter().copied().fold(0.0, f64::max);
    // Host 2's link is shaped to 100 Mbit/s, the others to 1 Gbit/s.
    assert!(
        fastest_slow < 0.12 && fastest_slow < 0.5 * slowest_fast,
        "through host 2 at most {fastest_slow} Gbit/s, elsewhere at least {slowest_fast}"
    );
    assert!(
        slowest_fast > 0.3,
        "1 Gbit/s links at {slowest_fast} Gbit/s"
    );
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
