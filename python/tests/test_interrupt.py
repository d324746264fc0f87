"""Ctrl-C interrupts a call blocked with the GIL released within a second (KeyboardInterrupt),
and leaves the process group revoked with a clear cause. The launcher gets SIGINT, as from a
terminal, and forwards it to every rank."""

import os
import select
import signal
import subprocess
import sys
import time

from conftest import HERE

SCRIPT = r'''
import time, numpy as np, tutti
tutti.init_process_group()
rank = tutti.get_rank()
if rank == 0:
    a = np.zeros(4)
    print("BLOCKED", flush=True)
    start = time.monotonic()
    try:
        tutti.recv(a, src=1)  # rank 1 never sends; the timeout is 60 s
    except KeyboardInterrupt:
        print(f"INTERRUPTED at {time.time():.6f} after {time.monotonic() - start:.2f}s", flush=True)
    try:
        tutti.all_reduce(a)
    except tutti.Error as e:
        assert "revoked" in str(e) and "Ctrl-C" in str(e), e
        print(f"RESULT interrupt OK {e}", flush=True)
else:
    try:
        time.sleep(120)
    except KeyboardInterrupt:
        pass
    try:
        tutti.all_reduce(np.zeros(4))
    except tutti.Error as e:
        print(f"RESULT peer_sees_it OK {type(e).__name__}: {e}", flush=True)
'''


def test_ctrl_c_interrupts_a_blocked_call(tmp_path):
    script = tmp_path / "blocked.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, TUTTI_TIMEOUT="60")
    proc = subprocess.Popen([sys.executable, "-m", "tutti.launch", "-n", "2", "--timeout", "100", str(script)],
                            cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        seen, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline and not any("BLOCKED" in line for line in seen):
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                seen.append(line)
        assert any("BLOCKED" in line for line in seen), seen
        time.sleep(1)  # rank 0 is now waiting in recv
        signalled = time.time()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(seen) + out
    lines = out.splitlines()
    interrupted = [line for line in lines if "INTERRUPTED at" in line]
    assert interrupted, out + err
    at = float(interrupted[0].split("at ")[1].split()[0])
    took = float(interrupted[0].split("after ")[1].rstrip("s"))
    assert took >= 1.0, f"recv returned after {took}s, before the signal"
    # Within a second of the signal (the launcher forwards it); 1 s more for a loaded machine.
    assert -0.001 <= at - signalled < 2.0, f"interrupted {at - signalled:.3f}s after the signal"
    assert any("[rank 0] RESULT interrupt OK" in line for line in lines), out + err
    assert any("[rank 1] RESULT peer_sees_it OK" in line for line in lines), out + err
