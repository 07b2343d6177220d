"""How the bench names the parts of a stack it accounts CPU to."""

from __future__ import annotations

import subprocess
import sys
import time

from botpulse.bench.procs import cores_by_role, cpu_by_pid, role_of


def test_a_stacks_processes_are_named_by_their_part_and_summed() -> None:
    # A child whose command line reads like `python -m botpulse gateway`, and one busy child.
    named = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "botpulse", "gateway"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass", "botpulse", "worker"])
    try:
        time.sleep(0.3)
        assert role_of(named.pid) == "gateway"
        assert role_of(busy.pid) == "worker"
        root = cpu_by_pid(named.pid)
        assert set(root) == {named.pid}
        before = {busy.pid: 0.0}
        after = cpu_by_pid(busy.pid)
        cores = cores_by_role(before, after, 1.0)
        # From zero: all the CPU the busy child used so far, under its part's name.
        assert set(cores) == {"worker"} and cores["worker"] == round(after[busy.pid], 2) > 0
    finally:
        for p in (named, busy):
            p.kill()
            p.wait()
    assert role_of(named.pid) == "gone"
