"""Every collective and point-to-point call, every numpy dtype, on 1, 2, 3 and 4 processes
(and 3 over TCP), against numpy references, in the arrays' own memory (cases.py)."""

import functools

import numpy  # noqa: F401  (required: a missing numpy fails the run, it does not skip)
import pytest

from cases import case_names
from conftest import launch

CONFIGS = [(1, "auto"), (2, "auto"), (3, "auto"), (4, "auto"), (3, "tcp")]


@functools.cache
def run(n, transport):
    return launch(n, "cases.py", env={"TUTTI_TRANSPORT": transport})


@pytest.mark.parametrize("n,transport", CONFIGS, ids=[f"n{n}-{t}" for n, t in CONFIGS])
def test_run_completes(n, transport):
    r = run(n, transport)
    assert r.rc == 0, f"launcher exit {r.rc}; stderr tail: {r.err[-3000:]}"
    r.assert_case("done")


@pytest.mark.parametrize("case", case_names())
@pytest.mark.parametrize("n,transport", CONFIGS, ids=[f"n{n}-{t}" for n, t in CONFIGS])
def test_case(n, transport, case):
    run(n, transport).assert_case(case)
