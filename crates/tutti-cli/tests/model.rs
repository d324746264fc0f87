//! `tutti model` through the real binary: the stop-and-wait example's figures, a million ranks
//! in well under a second, every collective, the overrides, and clear errors for bad arguments.

mod common;

use common::{run, text, BIN};
use std::process::{Command, Output};
use std::time::Duration;

/// Runs `tutti model ARGS` (bounded in time); returns its output and how long it took.
fn model(args: &[&str]) -> (Output, Duration) {
    let mut c = Command::new(BIN);
    c.arg("model").args(args);
    run(c, Duration::from_secs(20))
}

/// Runs `tutti model ARGS`, expecting success; returns stdout.
fn model_ok(args: &[&str]) -> String {
    let (out, _) = model(args);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The table's rows: the lines that start with a size.
fn rows(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect()
}

#[test]
fn stop_and_wait_gets_200_kbit_per_second() {
    let out = model_ok(&["--stop-and-wait"]);
    assert!(
        out.contains("stop-and-wait (window 1): 10.0 kbit per 50.1 ms = 200 kbit/s"),
        "{out}"
    );
    assert!(out.contains("window of 10 packets: 2.00 Mbit/s"), "{out}");
    assert!(
        out.contains("bandwidth-delay product 5.00 Mbit, 500 packets"),
        "{out}"
    );
    assert!(out.contains("window of 501 packets: 100"), "{out}");
    assert!(out.contains("pipelined"), "{out}");
}

#[test]
fn a_million_ranks_take_well_under_a_second() {
    let args = [
        "all_reduce",
        "-n",
        "1000000",
        "--profile",
        "wan",
        "-b",
        "8",
        "-e",
        "1G",
        "-f",
        "4",
    ];
    let (out, took) = model(&args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(stdout.contains("on 1000000 ranks"), "{stdout}");
    let header = stdout.lines().nth(1).unwrap_or_default();
    for name in [
        "naive",
        "ring",
        "tree",
        "recursive_doubling",
        "rabenseifner",
    ] {
        assert!(header.contains(name), "{header}");
    }
    assert!(
        !header.contains("auto") && !header.contains("hierarchical"),
        "{header}"
    );
    let rows = rows(&stdout);
    assert_eq!(rows.len(), 14, "8 B to 512 MiB by 4: {stdout}");
    assert!(rows[0].trim_start().starts_with("8 "), "{stdout}");
    assert!(rows[0].ends_with("recursive_doubling"), "{stdout}");
}

#[test]
fn every_collective_prints_one_row_per_size_with_a_choice() {
    let collectives = [
        "all_reduce",
        "broadcast",
        "reduce",
        "all_gather",
        "reduce_scatter",
        "all_to_all",
        "gather",
        "scatter",
        "barrier",
    ];
    for c in collectives {
        let out = model_ok(&[c, "-n", "6", "-b", "1K", "-e", "1M", "-f", "32"]);
        let rows = rows(&out);
        assert_eq!(rows.len(), 3, "{c}: {out}");
        for row in rows {
            assert!(row.split_whitespace().count() >= 4, "{c}: {row}");
        }
    }
}

#[test]
fn overrides_and_segments_change_the_prediction() {
    let base = ["broadcast", "-n", "4", "-b", "1M", "-e", "1M"];
    let slow = model_ok(&[&base[..], &["--alpha", "1", "--beta", "0"][..]].concat());
    assert!(slow.contains("alpha 1.00 s per message"), "{slow}");
    // One second per message: the binomial tree (2 messages) beats the chain's 3, at the first
    // segment size that holds the whole buffer.
    assert!(
        rows(&slow)[0].ends_with("binomial (segment 1 MiB)"),
        "{slow}"
    );
    let seg = model_ok(&[&base[..], &["--segment", "256K"][..]].concat());
    assert!(rows(&seg)[0].contains("(segment 256 KiB)"), "{seg}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let cases: [(&[&str], &str); 5] = [
        (&["all_sum"], "unknown collective"),
        (
            &["all_reduce", "--profile", "token-ring"],
            "unknown profile",
        ),
        (&["all_reduce", "-n", "0"], "0"),
        (&["all_reduce", "--alpha=-1"], "not a number of seconds"),
        (&["all_reduce", "-e", "lots"], "is not a size"),
    ];
    for (args, want) in cases {
        let (out, _) = model(args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let (out, _) = model(&[]);
    assert!(!out.status.success());
}
