"""Helpers for the binding's tests: run a script under ``python -m tutti.launch`` (bounded by
the launcher's --timeout and a subprocess timeout) and collect the ``RESULT`` lines of every
rank."""

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT = re.compile(r"^\[rank (\d+)\] RESULT (\S+) (OK|FAIL)(?: (.*))?$")


class Run:
    def __init__(self, n, proc):
        self.n = n
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        self.results = {}  # case -> {rank: (ok, why)}
        for line in proc.stdout.splitlines():
            m = RESULT.match(line)
            if m:
                rank, case, status, why = m.groups()
                self.results.setdefault(case, {})[int(rank)] = (status == "OK", why or "")

    def lines(self, marker):
        return [line for line in self.out.splitlines() if f"] {marker}" in line]

    def assert_case(self, case):
        got = self.results.get(case, {})
        failed = {r: why for r, (ok, why) in got.items() if not ok}
        missing = sorted(set(range(self.n)) - set(got))
        assert not failed, f"{case} failed on ranks {failed}"
        assert not missing, (
            f"{case}: no result from ranks {missing} (launcher exit {self.rc}); "
            f"stderr tail: {self.err[-3000:]}")


def launch(n, *argv, env=None, timeout=240):
    """Runs ``python -m tutti.launch -n N ARGV`` in this directory and returns a Run."""
    e = dict(os.environ)
    e.setdefault("TUTTI_TIMEOUT", "30")  # a rank that falls out of step fails, not hangs
    e.update(env or {})
    cmd = [sys.executable, "-m", "tutti.launch", "-n", str(n), "--timeout", str(timeout - 30), *argv]
    proc = subprocess.run(cmd, cwd=HERE, env=e, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return Run(n, proc)
