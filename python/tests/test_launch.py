"""``python -m tutti.launch``: scripts run with this interpreter, any program runs, ``--`` is
optional, exit codes and usage errors are those of ``tutti launch``."""

import os
import subprocess
import sys

from conftest import HERE, launch


def test_script_runs_with_this_interpreter(tmp_path):
    script = tmp_path / "who.py"
    script.write_text(
        "import os, sys\n"
        "print('RESULT who OK', os.environ['RANK'], os.environ['WORLD_SIZE'],"
        " os.path.realpath(sys.executable), *sys.argv[1:])\n")
    r = launch(3, str(script), "a", "--flag", "b c")
    assert r.rc == 0, r.err
    lines = sorted(r.lines("RESULT who"))
    assert len(lines) == 3, r.out
    for rank, line in enumerate(lines):
        assert line == (f"[rank {rank}] RESULT who OK {rank} 3 "
                        f"{os.path.realpath(sys.executable)} a --flag b c"), line


def test_any_program_with_and_without_dashes():
    for argv in (["--", "sh", "-c", "echo RESULT sh OK $RANK/$WORLD_SIZE"],
                 ["sh", "-c", "echo RESULT sh OK $RANK/$WORLD_SIZE"]):
        r = launch(2, *argv)
        assert r.rc == 0, r.err
        assert sorted(r.lines("RESULT sh")) == ["[rank 0] RESULT sh OK 0/2", "[rank 1] RESULT sh OK 1/2"]


def test_failing_rank_stops_the_job_with_its_status():
    r = launch(3, "sh", "-c", 'if [ "$RANK" = 1 ]; then exit 3; fi; sleep 30')
    assert r.rc == 3
    assert "rank 1" in r.err and "status 3" in r.err, r.err


def test_usage_errors():
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "tutti.launch", *argv], cwd=HERE,
                              capture_output=True, text=True, timeout=60)
    p = run("-n", "0", "true")
    assert p.returncode == 2 and "-n must be at least 1" in p.stderr
    p = run("-n", "2")
    assert p.returncode == 2 and "PROGRAM" in p.stderr
    p = run("--help")
    assert p.returncode == 0 and "python -m tutti.launch" in p.stdout and "--nproc" in p.stdout
    p = run("-n", "1", "./no-such-program-here")
    assert p.returncode == 127 and "no-such-program-here" in p.stderr
