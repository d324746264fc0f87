//! `tutti probe` through the real binary under `tutti launch` on loopback: the three matrices
//! with every pair, plausible values, a model file that parses and that `tutti model --from`
//! uses; the budget scales counts down; `--json`; clear errors for one rank and for a missing or
//! malformed model file.

mod common;

use common::{launch, run, text, BIN};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;
use tutti_core::model::Tuning;

/// `tutti launch -n N -- tutti probe ARGS`, bounded by two minutes.
fn probe(n: usize, args: &[&str]) -> Output {
    let mut program = vec![BIN, "probe"];
    program.extend_from_slice(args);
    run(launch(n, &program), Duration::from_secs(120)).0
}

/// Rank 0's lines without their prefix; panics if another rank printed.
fn rank0_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.strip_prefix("[rank 0] ")
                .unwrap_or_else(|| panic!("a line not from rank 0: {l:?}\n{stdout}"))
        })
        .collect()
}

/// The matrix under the line starting with `title`: `n` rows of `n` cells, "-" on the diagonal.
fn matrix(lines: &[&str], title: &str, n: usize) -> Vec<Vec<String>> {
    let at = lines
        .iter()
        .position(|l| l.starts_with(title))
        .unwrap_or_else(|| panic!("no {title:?} in {lines:#?}"));
    let head: Vec<&str> = lines[at + 1].split_whitespace().collect();
    let want: Vec<String> = std::iter::once("rank".to_string())
        .chain((0..n).map(|r| r.to_string()))
        .collect();
    assert_eq!(head, want, "{title}: {lines:#?}");
    (0..n)
        .map(|a| {
            let cells: Vec<String> = lines[at + 2 + a]
                .split_whitespace()
                .map(String::from)
                .collect();
            assert_eq!(cells.len(), n + 1, "{title}, row {a}: {cells:?}");
            assert_eq!(cells[0], a.to_string(), "{title}, row {a}");
            for (b, c) in cells[1..].iter().enumerate() {
                assert_eq!(a == b, c == "-", "{title}, {a} -> {b}: {c:?}");
            }
            cells[1..].to_vec()
        })
        .collect()
}

fn num(cell: &str) -> f64 {
    let v: f64 = cell
        .parse()
        .unwrap_or_else(|_| panic!("{cell:?} is not a number"));
    assert!(v.is_finite(), "{cell}");
    v
}

/// A file under the test's temporary directory, unique to this process.
fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", std::process::id()))
}

fn model(args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.arg("model").args(args);
    run(c, Duration::from_secs(20)).0
}

#[test]
fn three_ranks_print_every_pair_and_write_a_model_that_tutti_model_reads() {
    let file = tmp("probe3.model");
    let _ = std::fs::remove_file(&file);
    let path = file.to_str().expect("a UTF-8 path");
    let out = probe(3, &["--out", path, "--budget", "3"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let lines = rank0_lines(&stdout);
    assert!(lines[0].starts_with("# tutti probe: 3 ranks"), "{stdout}");
    // Taken while every link is up (the other ranks close theirs once the results are in).
    let want = match std::env::var("TUTTI_TRANSPORT").as_deref() {
        Ok("tcp") => "# links of rank 0: shared memory to none; TCP to 1, 2",
        _ => "# links of rank 0: shared memory to 1, 2; TCP to none",
    };
    assert_eq!(lines[1], want, "{stdout}");
    let n = 3;
    let lat = matrix(&lines, "latency, one way = round trip / 2, p50/p99 (us)", n);
    let jit = matrix(&lines, "jitter, p99 - p50", n);
    let bw = matrix(&lines, "bandwidth, row sends to column", n);
    let (mut worst_p50, mut least_bw) = (0f64, f64::INFINITY);
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            let (p50, p99) = lat[a][b]
                .split_once('/')
                .map(|(x, y)| (num(x), num(y)))
                .unwrap_or_else(|| panic!("latency {a}-{b}: {:?}", lat[a][b]));
            // Loopback on a shared 2-core machine: between 0.1 us and 10 ms one way.
            assert!(
                p50 > 0.1 && p50 <= p99 && p99 < 10_000.0,
                "{a}-{b}: {p50}/{p99}"
            );
            assert_eq!(lat[a][b], lat[b][a], "one ping-pong per pair");
            let j = num(&jit[a][b]);
            assert!(
                j >= 0.0 && (j - (p99 - p50)).abs() <= 0.01 * p99 + 0.01,
                "jitter {a}-{b}: {j} against {p99} - {p50}"
            );
            let g = num(&bw[a][b]);
            // 10 Mbit/s to 10 Tbit/s: anything outside is a unit or timing error.
            assert!(g > 0.01 && g < 10_000.0, "bandwidth {a} -> {b}: {g} Gbit/s");
            worst_p50 = worst_p50.max(p50);
            least_bw = least_bw.min(g);
        }
    }
    let bottleneck = lines
        .iter()
        .find(|l| l.starts_with("bottleneck link: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        bottleneck.contains(&format!(" at {} Gbit/s", sig(least_bw))),
        "{bottleneck} should name the least bandwidth {least_bw}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("slow rank (bandwidth): ")),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("slow rank (latency): ")),
        "{stdout}"
    );

    let saved = std::fs::read_to_string(&file).expect("rank 0 wrote the model file");
    let t = Tuning::parse(&saved).unwrap_or_else(|e| panic!("{e}\n{saved}"));
    let m = t.model;
    // The printed figures have 3 digits: the file's must agree within their rounding.
    let alpha_us = m.alpha_s * 1e6;
    assert!(
        (alpha_us / worst_p50 - 1.0).abs() < 0.01,
        "alpha {alpha_us} us, the worst p50 printed {worst_p50}"
    );
    let beta_gbit = 8e-9 / m.beta_s_per_byte;
    assert!(
        (beta_gbit / least_bw - 1.0).abs() < 0.01,
        "beta means {beta_gbit} Gbit/s, the least printed {least_bw}"
    );
    assert!(
        m.gamma_s_per_byte > 0.0 && m.gamma_s_per_byte < 1e-6,
        "{m:?}"
    );
    assert!(t.gamma_by_dtype.len() >= 10, "{t:?}");
    assert!(
        saved.contains("# bandwidth, row sends to column"),
        "{saved}"
    );

    let out = model(&[
        "all_reduce",
        "-n",
        "3",
        "--from",
        path,
        "-b",
        "8",
        "-e",
        "64M",
        "-f",
        "16",
    ]);
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(shown.contains(&format!("# model from {path}")), "{shown}");
    let choices: Vec<&str> = shown
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(choices.len(), 6, "8 B to 8 MiB by 16: {shown}");
    for row in choices {
        assert!(
            [
                "ring",
                "recursive_doubling",
                "rabenseifner",
                "tree",
                "double_binary_tree"
            ]
            .iter()
            .any(|a| row.contains(&format!("  {a}"))),
            "every row names a choice: {row}"
        );
    }
    let _ = std::fs::remove_file(&file);
}

/// As `probe.rs` prints: three significant digits.
fn sig(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 1.0 => format!("{v:.2}"),
        a if a >= 0.1 => format!("{v:.3}"),
        _ => format!("{v:.4}"),
    }
}

#[test]
fn the_budget_scales_counts_down_and_json_has_every_pair() {
    // Far more round trips and rounds than 0.5 s allows: the budget must cut them.
    let args = [
        "--json",
        "--pings",
        "100000000",
        "--bw-rounds",
        "1000000",
        "--bw-size",
        "64K",
        "--budget",
        "0.5",
    ];
    let (out, took) = {
        let mut program = vec![BIN, "probe"];
        program.extend_from_slice(&args);
        run(launch(2, &program), Duration::from_secs(60))
    };
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let lines = rank0_lines(&stdout);
    assert_eq!(lines.len(), 1, "one JSON object: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(v["ranks"], 2);
    let lat = v["latency"].as_array().expect("latency list");
    assert_eq!(lat.len(), 1, "one pair: {v}");
    let trips = lat[0]["round_trips"].as_u64().expect("round_trips");
    assert!((10..100_000_000).contains(&trips), "{trips}");
    assert!(
        lat[0]["one_way_p50_us"].as_f64().is_some_and(|x| x > 0.0),
        "{v}"
    );
    let bw = v["bandwidth"].as_array().expect("bandwidth list");
    assert_eq!(bw.len(), 2, "both directions: {v}");
    for d in bw {
        let rounds = d["rounds"].as_u64().expect("rounds");
        assert!((1..1_000_000).contains(&rounds), "{d}");
        let msgs = d["messages_per_round"]
            .as_u64()
            .expect("messages_per_round");
        assert!((1..=4).contains(&msgs), "{d}");
        assert!(d["gbit_per_s"].as_f64().is_some_and(|x| x > 0.0), "{d}");
    }
    assert!(v["bottleneck"]["gbit_per_s"].as_f64().is_some(), "{v}");
    assert!(
        v["slow_ranks_bandwidth"].is_null(),
        "2 ranks: nothing to compare: {v}"
    );
}

#[test]
fn a_model_file_that_cannot_be_written_is_a_clear_error() {
    let file = tmp("no-such-dir").join("probe.model");
    let out = probe(
        2,
        &[
            "--pings",
            "10",
            "--bw-size",
            "4K",
            "--out",
            file.to_str().expect("UTF-8"),
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("tutti probe: cannot write {}", file.display())),
        "{err}"
    );
}

#[test]
fn one_rank_is_a_clear_error() {
    let out = probe(1, &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("tutti probe: needs 2 ranks or more"), "{err}");
}

#[test]
fn a_missing_or_malformed_model_file_is_an_error_naming_file_and_line() {
    let missing = tmp("no-such.model");
    let out = model(&["all_reduce", "--from", missing.to_str().expect("UTF-8")]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("cannot read the model file {}", missing.display())),
        "{err}"
    );
    assert!(text(&out.stdout).is_empty(), "no table for a missing file");

    let bad = tmp("bad.model");
    let cases = [
        (
            "# tutti model 1\nalpha_s 1e-6\nbeta_s_per_byte fast\n",
            ":3: ",
            "\"fast\"",
        ),
        ("alpha_s 1e-6\n", ":1: ", "first line"),
        (
            "# tutti model 1\nalpha_s 1e-6\nbeta 1e-9\n",
            ":3: ",
            "unknown key \"beta\"",
        ),
        (
            "# tutti model 1\nalpha_s 1e-6\n",
            ": ",
            "beta_s_per_byte is missing",
        ),
    ];
    for (body, at, what) in cases {
        std::fs::write(&bad, body).expect("write the bad file");
        let out = model(&["all_reduce", "--from", bad.to_str().expect("UTF-8")]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{body:?}");
        assert!(
            err.contains(&format!("{}{at}", bad.display())) && err.contains(what),
            "{body:?}: {err}"
        );
    }
    let _ = std::fs::remove_file(&bad);
    // A directory cannot be read as a file.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = model(&["all_reduce", "--from", dir.to_str().expect("UTF-8")]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read the model file"));
}
