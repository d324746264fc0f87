"""Ray-style put/get/free (objects_program.py) on 2-4 processes: gets from every rank, a
get served while its owner's application sleeps, a clear error after free, and a bounded
error after the owner has left."""

import re

import numpy  # noqa: F401
import pytest

from conftest import launch

SIZES = [2, 3, 4]
CASES = ["get_everywhere", "served_while_the_owner_is_busy", "get_after_free", "get_after_owner_left"]
_runs = {}


def run(n):
    if n not in _runs:
        _runs[n] = launch(n, "objects_program.py", env={"TUTTI_TIMEOUT": "10"}, timeout=150)
    return _runs[n]


@pytest.mark.parametrize("n", SIZES)
def test_program_completes(n):
    r = run(n)
    assert r.rc == 0, f"launcher exit {r.rc}; stderr tail: {r.err[-3000:]}"
    r.assert_case("done")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n", SIZES)
def test_case(n, case):
    r = run(n)
    if case == "get_after_owner_left":
        # The owner (the last rank) leaves; the others report how fast their get failed.
        got = r.results.get(case, {})
        assert all(ok for ok, _ in got.values()), got
        assert set(got) == set(range(n)), f"ranks {sorted(got)} reported"
        for rank in range(n - 1):
            secs = float(re.search(r"after ([0-9.]+) s", got[rank][1]).group(1))
            assert secs < 10, f"rank {rank} waited {secs} s"
        return
    r.assert_case(case)
