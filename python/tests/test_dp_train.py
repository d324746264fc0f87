"""python/examples/dp_train.py (numpy) against the Rust dp_train: the same short run (2 ranks,
2 epochs = 46 steps) of each, compared line by line and by their final parameters.

Tolerances: the printed losses agree to 1e-3 and the accuracies to one sample of the logging
window (the two sum a batch's float32 gradients in different orders, so a printed digit may
round the other way); the final parameters to 1e-4, dp_train's own bound between runs that
differ only in summation order (crates/dp-train/src/main.rs, TOLERANCE: round-off is ~1e-7
here, while a real difference moves parameters by >= 1e-3 from the first step on)."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import HERE

ROOT = HERE.parents[1]
EXAMPLE = ROOT / "python" / "examples" / "dp_train.py"
ARGS = ["--epochs", "2", "--log-every", "5", "--seed", "3"]
STEP = re.compile(r"step (\d+)/(\d+)  loss ([0-9.]+)  acc ([0-9.]+)")
TEST = re.compile(r"test accuracy ([0-9.]+) \((\d+)/(\d+)\)")


def binaries():
    """The Rust dp_train and tutti: an existing build where both are (release or debug, as
    `cargo test --workspace` leaves them), else built here (debug)."""
    for profile in ("release", "debug"):
        d = ROOT / "target" / profile
        if (d / "dp_train").exists() and (d / "tutti").exists():
            return d / "dp_train", d / "tutti"
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("the Rust dp_train and tutti are not built and cargo is not on PATH")
    subprocess.run([cargo, "build", "-q", "-p", "dp-train", "-p", "tutti-cli"], cwd=ROOT, check=True,
                   timeout=1800)
    return ROOT / "target" / "debug" / "dp_train", ROOT / "target" / "debug" / "tutti"


def parse(out):
    steps = [(int(a), float(l), float(c)) for a, _, l, c in STEP.findall(out)]
    test = TEST.search(out)
    return steps, (int(test.group(2)) if test else None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp")
    dp, tutti = binaries()
    env = dict(os.environ, TUTTI_TIMEOUT="60")
    rust = subprocess.run([str(tutti), "launch", "-n", "2", "--", str(dp), *ARGS,
                           "--no-check", "--save-params", str(tmp / "rust.bin")],
                          capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert rust.returncode == 0, rust.stderr[-3000:]
    py = subprocess.run([sys.executable, "-m", "tutti.launch", "-n", "2", "--timeout", "240",
                         str(EXAMPLE), *ARGS, "--save-params", str(tmp / "py.bin")],
                        capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert py.returncode == 0, py.stderr[-3000:]
    return (rust.stdout, np.fromfile(tmp / "rust.bin", "<f4")), (py.stdout, np.fromfile(tmp / "py.bin", "<f4"))


def test_losses_and_accuracies_match_the_rust_run(runs):
    (rust_out, _), (py_out, _) = runs
    (rs, rtest), (ps, ptest) = parse(rust_out), parse(py_out)
    assert len(rs) == 10 and [s for s, _, _ in rs] == [s for s, _, _ in ps], (rust_out, py_out)
    for (step, rl, ra), (_, pl, pa) in zip(rs, ps):
        assert abs(rl - pl) <= 1e-3, f"step {step}: loss {pl} (Python) vs {rl} (Rust)"
        assert abs(ra - pa) <= 1 / (5 * 64) + 1e-3, f"step {step}: acc {pa} (Python) vs {ra} (Rust)"
    assert rtest is not None and ptest is not None and abs(rtest - ptest) <= 1, (rtest, ptest)
    assert rs[-1][1] < rs[0][1] - 0.5, "the run learns"


def test_final_parameters_match_the_rust_run(runs):
    (_, rp), (_, pp) = runs
    assert rp.shape == pp.shape == (64 * 32 + 32 + 10 * 32 + 10,)
    diff = float(np.max(np.abs(rp - pp)))
    assert diff <= 1e-4, f"max |theta_py - theta_rust| = {diff:e}"
