//! `tutti bench` through the real binary under `tutti launch`: every collective on 2 and 3
//! processes prints one sane, checked row per size; every datatype and reduction op; `--json` and
//! `--csv`; the old `--op` spelling; bad arguments are clear errors. Small sizes and few calls
//! keep each run well under a second.

mod common;

use common::{run, text, BIN};
use std::process::{Command, Output};
use std::time::Duration;

const COLLECTIVES: [&str; 10] = [
    "all_reduce",
    "broadcast",
    "reduce",
    "all_gather",
    "reduce_scatter",
    "all_to_all",
    "gather",
    "scatter",
    "send_recv",
    "barrier",
];

fn is_chunked(c: &str) -> bool {
    matches!(
        c,
        "all_gather" | "reduce_scatter" | "all_to_all" | "gather" | "scatter"
    )
}

fn is_rooted(c: &str) -> bool {
    matches!(c, "broadcast" | "reduce" | "gather" | "scatter")
}

fn is_reduction(c: &str) -> bool {
    matches!(c, "all_reduce" | "reduce" | "reduce_scatter")
}

fn factor(c: &str, n: usize) -> f64 {
    let n = n as f64;
    match c {
        "all_reduce" => 2.0 * (n - 1.0) / n,
        "barrier" => 0.0,
        c if is_chunked(c) => (n - 1.0) / n,
        _ => 1.0,
    }
}

/// The real size of a requested one, rounded as nccl-tests does.
fn real_size(c: &str, requested: usize, elem: usize, n: usize) -> usize {
    match c {
        "barrier" => 0,
        c if is_chunked(c) => requested / elem / n * n * elem,
        _ => requested / elem * elem,
    }
}

/// `tutti launch -n N [--no-prefix] -- tutti bench ARGS`, bounded by a minute.
fn bench(n: usize, prefix: bool, args: &[&str]) -> Output {
    let mut program = vec![BIN, "bench"];
    program.extend_from_slice(args);
    let mut cmd = Command::new(BIN);
    cmd.args(["launch", "-n", &n.to_string()]);
    if !prefix {
        cmd.arg("--no-prefix");
    }
    cmd.arg("--").args(&program);
    run(cmd, Duration::from_secs(60)).0
}

fn success(out: &Output, what: &str) -> String {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    stdout
}

/// The table's data rows (rank 0's non-comment lines), split into cells; checks that no other
/// rank printed.
fn table_rows(stdout: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for line in stdout.lines().filter(|l| !l.is_empty()) {
        let body = line
            .strip_prefix("[rank 0] ")
            .unwrap_or_else(|| panic!("a line not from rank 0: {line:?}\n{stdout}"));
        if !body.starts_with('#') {
            rows.push(body.split_whitespace().map(String::from).collect());
        }
    }
    rows
}

fn num(cell: &str) -> f64 {
    let v: f64 = cell
        .parse()
        .unwrap_or_else(|_| panic!("{cell:?} is not a number"));
    assert!(v.is_finite() && v >= 0.0, "{cell}");
    v
}

/// Checks one table row of collective `c` on `n` ranks against what was asked.
fn check_row(row: &[String], c: &str, n: usize, requested: usize, elem: usize, ty: &str) {
    let ctx = format!("{c} on {n} ranks, {requested} B: {row:?}");
    assert_eq!(row.len(), 14, "{ctx}");
    // The plan the communicator ran: an algorithm of this collective (never `auto`), its
    // segment, and the model's prediction (under `tutti launch` the world measures a model).
    let algorithm = &row[11];
    assert!(
        !algorithm.is_empty() && algorithm != "auto",
        "{ctx}: algorithm {algorithm:?}"
    );
    let segment: usize = row[12].parse().expect("segment");
    assert!(segment > 0 || c == "send_recv", "{ctx}");
    if c != "send_recv" && std::env::var("TUTTI_TUNE").as_deref() != Ok("0") {
        assert!(num(&row[13]) >= 0.0, "{ctx}: no prediction");
    }
    let size: usize = row[0].parse().expect("size");
    let count: usize = row[1].parse().expect("count");
    assert_eq!(size, real_size(c, requested, elem, n), "{ctx}");
    let per_call = if is_chunked(c) { size / n } else { size };
    assert_eq!(count * elem, per_call, "{ctx}");
    assert_eq!(row[2], ty, "{ctx}");
    assert_eq!(
        row[3],
        if is_reduction(c) { "sum" } else { "none" },
        "{ctx}"
    );
    let root = if is_rooted(c) {
        (n - 1).to_string()
    } else {
        "-1".into()
    };
    assert_eq!(row[4], root, "{ctx}");
    let (time, algbw, busbw, p50, p99) = (
        num(&row[5]),
        num(&row[6]),
        num(&row[7]),
        num(&row[8]),
        num(&row[9]),
    );
    assert!(time > 0.0 && time < 1e6, "{ctx}");
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 1e7, "{ctx}");
    // algbw = S / time in GB/s (1e9 B/s): bytes / us / 1e3; algbw printed to 3 decimals, time
    // to 2 (0.005 us of rounding is a large share of a sub-microsecond call over shared memory).
    let expect_algbw = size as f64 / time / 1e3;
    let time_rounding = expect_algbw * 0.005 / time;
    assert!(
        (algbw - expect_algbw).abs() <= 0.0015 + time_rounding,
        "{ctx}: {expect_algbw}"
    );
    assert!((busbw - algbw * factor(c, n)).abs() <= 0.0015, "{ctx}");
    assert_eq!(row[10], "0", "{ctx}: #wrong");
}

fn every_collective_on(n: usize) {
    let root = (n - 1).to_string();
    let requested = [8, 64, 512, 4096];
    for c in COLLECTIVES {
        let args = [
            c, "-b", "8", "-e", "4K", "-f", "8", "-n", "3", "-w", "1", "-r", &root,
        ];
        let stdout = success(&bench(n, true, &args), c);
        assert!(
            stdout.starts_with(&format!("[rank 0] # tutti bench: {c} on {n} ranks")),
            "{stdout}"
        );
        assert!(stdout.contains("# Wrong elements     : 0 OK"), "{stdout}");
        let rows = table_rows(&stdout);
        let sizes: &[usize] = if c == "barrier" { &[0] } else { &requested };
        assert_eq!(rows.len(), sizes.len(), "{c}:\n{stdout}");
        for (row, &req) in rows.iter().zip(sizes) {
            check_row(row, c, n, req, 4, "float");
        }
    }
}

#[test]
fn every_collective_on_2_processes_prints_checked_rows() {
    every_collective_on(2);
}

#[test]
fn every_collective_on_3_processes_prints_checked_rows() {
    every_collective_on(3);
}

#[test]
fn every_datatype_and_op_checks_clean() {
    // (collective, -d, printed type, element size, -o)
    let cases = [
        ("all_reduce", "int8", "int8", 1, "sum"),
        ("reduce_scatter", "uint8", "uint8", 1, "prod"),
        ("reduce", "int32", "int32", 4, "min"),
        ("all_reduce", "uint32", "uint32", 4, "max"),
        ("reduce_scatter", "int64", "int64", 8, "avg"),
        ("all_reduce", "uint64", "uint64", 8, "bxor"),
        ("reduce", "half", "half", 2, "prod"),
        ("all_reduce", "float", "float", 4, "avg"),
        ("reduce_scatter", "double", "double", 8, "min"),
        ("all_reduce", "bfloat16", "bfloat16", 2, "max"),
        ("all_gather", "bf16", "bfloat16", 2, "sum"),
        ("all_reduce", "f64", "double", 8, "prod"),
    ];
    for (c, d, ty, elem, op) in cases {
        let stdout = success(
            &bench(
                3,
                true,
                &[
                    c, "-d", d, "-o", op, "-b", "100", "-e", "1000", "-f", "3", "-n", "2",
                ],
            ),
            &format!("{c} {d} {op}"),
        );
        let rows = table_rows(&stdout);
        assert_eq!(rows.len(), 3, "{stdout}"); // 100, 300, 900
        for (row, req) in rows.iter().zip([100, 300, 900]) {
            assert_eq!(
                row[0].parse::<usize>().ok(),
                Some(real_size(c, req, elem, 3))
            );
            assert_eq!(row[2], ty, "{row:?}");
            let redop = if is_reduction(c) { op } else { "none" };
            assert_eq!(row[3], redop, "{row:?}");
            assert_eq!(row[10], "0", "{c} {d} {op}: {row:?}");
        }
    }
}

#[test]
fn json_is_one_object_per_size_from_rank_0_only() {
    let out = bench(
        3,
        false,
        &[
            "reduce_scatter",
            "-b",
            "8",
            "-e",
            "4K",
            "-f",
            "8",
            "-n",
            "2",
            "-d",
            "int32",
            "-o",
            "max",
            "--json",
        ],
    );
    let stdout = success(&out, "--json");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    // Unprefixed output: a line from another rank would be an extra row.
    assert_eq!(rows.len(), 4, "{stdout}");
    for (row, req) in rows.iter().zip([8, 64, 512, 4096]) {
        assert_eq!(row["collective"], "reduce_scatter");
        assert_eq!(row["ranks"], 3);
        let size = real_size("reduce_scatter", req, 4, 3);
        assert_eq!(row["size"], size, "{row}");
        assert_eq!(row["count"], size / 4 / 3, "{row}");
        assert_eq!(row["type"], "int32");
        assert_eq!(row["redop"], "max");
        assert!(row["root"].is_null(), "{row}");
        assert_eq!(row["wrong"], 0, "{row}");
        for f in ["time_us", "algbw_gbps", "busbw_gbps", "p50_us", "p99_us"] {
            let v = row[f]
                .as_f64()
                .unwrap_or_else(|| panic!("{f} missing: {row}"));
            assert!(v.is_finite() && v >= 0.0, "{f}: {row}");
        }
        assert!(row["time_us"].as_f64() > Some(0.0), "{row}");
        assert!(row["p50_us"].as_f64() <= row["p99_us"].as_f64(), "{row}");
    }
}

#[test]
fn csv_has_a_header_and_one_line_per_size() {
    let stdout = success(
        &bench(
            2,
            false,
            &[
                "broadcast",
                "-b",
                "1K",
                "-e",
                "16K",
                "-f",
                "2",
                "-n",
                "2",
                "-r",
                "1",
                "--csv",
            ],
        ),
        "--csv",
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("collective,ranks,size,count,type,redop,root,time_us,algbw_gbps,busbw_gbps,p50_us,p99_us,wrong,algorithm,segment,model_us"),
        "{stdout}"
    );
    assert_eq!(lines.len(), 1 + 5, "{stdout}");
    for (line, size) in lines[1..].iter().zip([1024, 2048, 4096, 8192, 16384]) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 16, "{line}");
        assert!(
            ["binomial", "chain", "scatter_allgather"].contains(&f[13]),
            "{line}"
        );
        assert_eq!(
            (f[0], f[1], f[2], f[4], f[5], f[6], f[12]),
            ("broadcast", "2", &*size.to_string(), "float", "", "1", "0"),
            "{line}"
        );
        assert_eq!(f[3].parse::<usize>().ok(), Some(size / 4), "{line}");
        let time: f64 = f[7].parse().expect("time_us");
        assert!(time > 0.0, "{line}");
    }
}

#[test]
fn the_old_op_spelling_still_names_the_collective() {
    let stdout = success(
        &bench(
            2,
            true,
            &[
                "--op",
                "all-to-all",
                "--min-bytes",
                "1K",
                "--max-bytes",
                "4K",
                "--factor",
                "2",
                "--iters",
                "2",
                "--warmup",
                "1",
            ],
        ),
        "--op all-to-all",
    );
    assert!(
        stdout.starts_with("[rank 0] # tutti bench: all_to_all on 2 ranks"),
        "{stdout}"
    );
    let rows = table_rows(&stdout);
    assert_eq!(rows.len(), 3, "{stdout}");
    for (row, req) in rows.iter().zip([1024, 2048, 4096]) {
        check_row(row, "all_to_all", 2, req, 4, "float");
    }
    // nccl-tests' binary name works as the positional.
    let stdout = success(
        &bench(
            2,
            true,
            &["all_reduce_perf", "-b", "8", "-e", "8", "-n", "1"],
        ),
        "all_reduce_perf",
    );
    assert!(
        stdout.contains("# tutti bench: all_reduce on 2"),
        "{stdout}"
    );
}

#[test]
fn bad_arguments_are_clear_errors_not_panics() {
    // Refused before the world forms: no environment needed.
    let cases: &[(&[&str], &str)] = &[
        (
            &["all_reduce", "-d", "float128"],
            "unknown datatype \"float128\"",
        ),
        (&["all_reduc"], "unknown collective \"all_reduc\""),
        (&["all_reduce", "-o", "median"], "unknown reduction op"),
        (
            &["all_reduce", "--op", "broadcast"],
            "-o/--op takes a reduction op",
        ),
        (&["all_reduce", "-o", "band"], "not defined on float"),
        (&["all_reduce", "-b", "1Q"], "not a size"),
        (&["all_reduce", "-b", "2M", "-e", "1M"], "larger than"),
    ];
    for (args, needle) in cases {
        let mut cmd = Command::new(BIN);
        cmd.arg("bench").args(*args);
        let (out, _) = run(cmd, Duration::from_secs(20));
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "{args:?}: {:?}",
            out.status
        );
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // Under the launcher, and the checks that need the world.
    let cases: &[(usize, &[&str], &str)] = &[
        (2, &["-d", "float128"], "unknown datatype"),
        (
            2,
            &["broadcast", "-r", "2"],
            "-r/--root 2 is out of range for 2 ranks",
        ),
        (1, &["send_recv"], "send_recv needs 2 ranks"),
    ];
    for (n, args, needle) in cases {
        let out = bench(*n, true, args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
