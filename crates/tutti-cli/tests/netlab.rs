//! Multi-host tests: one rank per host, each host a network namespace of a `../shared/netlab` lab,
//! joined by shaped or emulated links. They check what loopback cannot: that every rank listens
//! on (and publishes) the address of the interface that routes to `MASTER_ADDR`, that the whole
//! correctness suite passes across a rate-limited network and across one with delay, jitter
//! (reordering) and loss, that the file store works between hosts, and that a host cut off
//! silently makes every other rank fail by its deadline, naming a peer, instead of hanging, and
//! that `tutti probe` finds the host behind a slow link.
//!
//! They need root, iproute2 and netlab (`netlab check`). Where that is missing each test says it
//! is skipped (under `CI=true` it fails instead), on stderr and in `$CARGO_TARGET_TMPDIR/skipped.txt`, which `scripts/test.sh` reports
//! and subtracts from the passed count: a skipped test is never counted as a pass.

mod common;

use common::{Spawned, BIN, LONG_BENCH};
use std::path::PathBuf;
use std::process::Command;
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

#[test]
fn a_host_cut_off_silently_is_named_by_every_survivor_by_the_deadline() {
    let Some(lab) = Lab::up(
        "a_host_cut_off_silently_is_named_by_every_survivor_by_the_deadline",
        "cu",
        3,
        &["--rate", "1gbit"],
    ) else {
        return;
    };
    // Rank 0 gives up on the vanished rank 2 after 5 s and aborts; rank 1, whose own timeout is
    // much longer, must learn from rank 0's abort at once, and so name rank 2 too.
    let timeouts = ["5", "60", "5"];
    let bound = Duration::from_secs(5 + 10);
    // Bounded by the kill limit below too; the cut ends it sooner.
    let mut ranks: Vec<_> = (0..lab.hosts)
        .map(|i| Spawned::start(lab.rank(i, &LONG_BENCH, &[("TUTTI_TIMEOUT", timeouts[i])])))
        .collect();
    assert!(
        ranks[0].wait_for_line("# tutti bench", Duration::from_secs(60)),
        "the world did not form"
    );
    thread::sleep(Duration::from_millis(500)); // well inside the timed loop
    let cut_at = Instant::now();
    lab.cut(2);
    let finished: Vec<_> = ranks
        .drain(..)
        .map(|r| r.finish(Duration::from_secs(180)))
        .collect();
    for (i, f) in finished.iter().enumerate() {
        let after_cut = f.ended - cut_at;
        eprintln!(
            "rank {i} failed {after_cut:.1?} after the cut: {}",
            f.stderr.trim()
        );
        assert!(!f.status.success(), "rank {i} should fail: {}", f.stdout);
        assert!(
            after_cut < bound,
            "rank {i} took {after_cut:?} after the cut"
        );
        assert!(
            f.stderr.contains(&format!("on rank {i}")),
            "rank {i}: {}",
            f.stderr
        );
    }
    let (e0, e1) = (&finished[0].stderr, &finished[1].stderr);
    assert!(
        e0.contains("timed out after") && e0.contains("from rank 2"),
        "{e0}"
    );
    assert!(
        e1.contains("rank 0 aborted: ") && e1.contains("from rank 2"),
        "rank 1 should name rank 2 through rank 0's abort: {e1}"
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
