"""The mpi4py facade (``from tutti import MPI``) on a small mpi4py-style program
(mpi_program.py) on 1-4 processes under ``python -m tutti.launch``; and, where mpi4py and
Open MPI are installed, the same program on them, to show it is mpi4py's behaviour that the
facade reproduces."""

import os
import re
import shutil
import subprocess
import sys

import numpy  # noqa: F401  (required: a missing numpy fails the run, it does not skip)
import pytest

from conftest import HERE, launch

CASES = re.findall(r"^@case\ndef (\w+)\(", (HERE / "mpi_program.py").read_text(), re.M)
SIZES = [1, 2, 3, 4]
_runs = {}


def run(n):
    if n not in _runs:
        _runs[n] = launch(n, "mpi_program.py", timeout=180)
    return _runs[n]


def test_the_program_has_cases():
    assert len(CASES) >= 17, CASES


@pytest.mark.parametrize("n", SIZES)
def test_program_completes(n):
    r = run(n)
    assert r.rc == 0, f"launcher exit {r.rc}; stdout tail: {r.out[-2000:]} stderr tail: {r.err[-3000:]}"
    r.assert_case("done")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n", SIZES)
def test_case(n, case):
    run(n).assert_case(case)


def test_import_alone_is_a_world_of_one():
    code = ("from tutti import MPI; c = MPI.COMM_WORLD; "
            "print(c.Get_rank(), c.Get_size(), c.allreduce(5), c.bcast('x'))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TUTTI_LAUNCHER")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=env, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["0", "1", "5", "x"]


def test_unsupported_calls_raise_not_implemented_naming_them():
    code = ("from tutti import MPI\n"
            "for get in (lambda: MPI.COMM_WORLD.Scan, lambda: MPI.Win, lambda: MPI.Op.Create(max)):\n"
            "    try:\n        get()\n    except NotImplementedError as e:\n        print(e)\n"
            "print(hasattr(MPI.COMM_WORLD, 'Exscan'))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "Comm.Scan" in lines[0] and "MPI.Win" in lines[1] and "Op.Create" in lines[2], lines
    assert lines[3] == "False"


MPIRUN = shutil.which("mpirun.openmpi") or shutil.which("mpirun")


def _have_mpi4py():
    p = subprocess.run([sys.executable, "-c", "import mpi4py"], capture_output=True, timeout=60)
    return p.returncode == 0


@pytest.mark.skipif(MPIRUN is None, reason="Open MPI's mpirun is not installed")
def test_same_program_passes_on_mpi4py():
    if not _have_mpi4py():
        pytest.skip("mpi4py is not installed in this venv (bench/py_overhead installs it)")
    env = dict(os.environ, MPI_IMPL="mpi4py", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run([MPIRUN, "--oversubscribe", "-n", "3", "--tag-output", sys.executable,
                        "mpi_program.py"],
                       cwd=HERE, env=env, capture_output=True, text=True, timeout=180,
                       stdin=subprocess.DEVNULL)
    # mpirun may interleave the ranks' lines: find the results anywhere.
    results = re.findall(r"\[1,(\d+)\]<stdout>:RESULT (\S+) (OK|FAIL)", p.stdout)
    failed = [r for r in results if r[2] != "OK"]
    assert not failed, failed
    seen = {(int(rank), case) for rank, case, _ in results}
    want = {(rank, case) for rank in range(3) for case in CASES + ["done"]}
    assert seen == want, f"missing {sorted(want - seen)}; stderr: {p.stderr[-2000:]}"
