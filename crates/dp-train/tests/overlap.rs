//! `dp_train --overlap` across processes: the same final parameters, bit for bit, as the run
//! with one all-reduce after the backward pass, under an all-reduce whose order of summation
//! does not depend on the buffer's length (recursive doubling; the ring's chunks would move
//! with the bucket sizes).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dp_train");

/// Runs `dp_train ARGS` as `n` ranks (torchrun's variables) and returns rank 0's stdout.
fn run_ranks(n: usize, args: &[&str]) -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let children: Vec<_> = (0..n)
        .map(|r| {
            Command::new(BIN)
                .args(args)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", n.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("TUTTI_ALGO", "allreduce:recursive_doubling")
                .env("TUTTI_TIMEOUT", "60")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn dp_train")
        })
        .collect();
    let started = Instant::now();
    let mut out0 = String::new();
    for (r, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().expect("wait for dp_train");
        assert!(
            out.status.success(),
            "rank {r} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if r == 0 {
            out0 = String::from_utf8_lossy(&out.stdout).into_owned();
        }
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    out0
}

#[test]
fn overlap_gives_the_same_bits_as_one_all_reduce() {
    let dir = std::env::temp_dir().join(format!("dp-overlap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("plain.bin");
    let overlapped = dir.join("overlap.bin");
    let common = [
        "--epochs",
        "2",
        "--hidden",
        "48",
        "--batch",
        "60",
        "--no-check",
    ];
    for n in [2, 3] {
        let mut a = common.to_vec();
        a.extend(["--save-params", plain.to_str().unwrap()]);
        let out = run_ranks(n, &a);
        assert!(
            out.contains("one all-reduce after the backward pass"),
            "{out}"
        );
        let mut b = common.to_vec();
        b.extend([
            "--overlap",
            "--buckets",
            "3",
            "--save-params",
            overlapped.to_str().unwrap(),
        ]);
        let out = run_ranks(n, &b);
        assert!(
            out.contains("overlapped with the backward pass in 4 buckets"),
            "{out}"
        );
        let (x, y) = (
            std::fs::read(&plain).unwrap(),
            std::fs::read(&overlapped).unwrap(),
        );
        assert_eq!(x.len(), 4 * (64 * 48 + 48 + 10 * 48 + 10));
        assert!(x == y, "{n} ranks: the overlapped run's parameters differ");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
