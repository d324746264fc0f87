"""Errors: refused arguments (TypeError/ValueError naming the problem), the library's errors
as tutti.Error subclasses, a mismatched call raising on every rank, a lost peer
(error_cases.py), and calls before init_process_group."""

import builtins
import functools

import numpy as np
import pytest

import tutti
from conftest import launch
from error_cases import LOCAL


@functools.cache
def run(n, part):
    return launch(n, "error_cases.py", part)


@pytest.mark.parametrize("case", LOCAL + ["done"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_local(n, case):
    run(n, "local").assert_case(case)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_mismatch_raises_on_every_rank(n):
    r = run(n, "mismatch")
    r.assert_case("mismatch_raises_everywhere")
    lines = r.lines("MISMATCH")
    ranks = {int(line.split("]")[0][len("[rank "):]) for line in lines}
    assert ranks == set(range(n)), f"ranks that raised: {sorted(ranks)}; {lines}"
    assert any("MISMATCH MismatchError" in line and "count 200" in line for line in lines), lines


@pytest.mark.parametrize("n", [2, 3])
def test_peer_lost(n):
    r = run(n, "peer_lost")
    for rank in range(n - 1):
        assert r.results.get("peer_lost", {}).get(rank) == (True, ""), r.out[-3000:]
    assert r.rc == 0


def test_exception_classes():
    assert issubclass(tutti.TimeoutError, tutti.Error)
    assert issubclass(tutti.TimeoutError, builtins.TimeoutError)
    assert issubclass(tutti.PeerLostError, tutti.Error)
    assert issubclass(tutti.MismatchError, tutti.Error)
    assert issubclass(tutti.InvalidArgumentError, ValueError)
    assert not issubclass(tutti.MismatchError, tutti.TimeoutError)
    assert str(tutti.MismatchError("all_reduce #3 on rank 0: ...")) == "all_reduce #3 on rank 0: ..."


def test_before_init():
    assert not tutti.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        tutti.get_rank()
    with pytest.raises(RuntimeError, match="init_process_group"):
        tutti.all_reduce(np.zeros(3))
    with pytest.raises(RuntimeError):
        tutti.destroy_process_group()


def test_init_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="CPU"):
        tutti.init_process_group(backend="nccl")
    with pytest.raises(ValueError, match="store"):
        tutti.init_process_group(store=object())
    with pytest.raises(ValueError, match="init_method"):
        tutti.init_process_group(init_method="file:///tmp/x")
    with pytest.raises(ValueError, match="unknown backend"):
        tutti.init_process_group(backend="carrier-pigeon")
    assert not tutti.is_initialized()


def test_reduce_op_names():
    assert [op.name for op in tutti.ReduceOp] == [
        "SUM", "PRODUCT", "MIN", "MAX", "AVG", "BAND", "BOR", "BXOR"]
    assert tutti._op("sum") == tutti._op(tutti.ReduceOp.SUM) == 0
    assert tutti._op("prod") == int(tutti.ReduceOp.PRODUCT)
    with pytest.raises(ValueError):
        tutti._op("median")
