"""A sweep process killed with SIGKILL resumes to exactly the records of an uninterrupted
sweep: nothing lost, nothing duplicated, no torn line.

The kills are injected, not timed: the sweep runs in a child process whose store kills the
process (SIGKILL: no cleanup, no flush) once it has appended a given number of records,
either right after a record or halfway through writing one (a torn line).
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from forgetscope.sweep.config import parse_config
from forgetscope.sweep.run import run_sweep
from forgetscope.sweepdir import read_records
from sweep_helpers import by_point_and_step, tiny_sweep_config, write_config

KILLING_SWEEP = """
import os, signal, sys
from forgetscope.sweepdir import SweepStore
from forgetscope.cli import main

kill_after, torn = int(sys.argv[1]), sys.argv[2] == "torn"
real_append, appended = SweepStore.append, [0]

def append(self, record):
    if appended[0] == kill_after:
        if torn:
            line = self._records.write
            import json
            text = json.dumps(record)
            line(text[: len(text) // 2])
            self._records.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_append(self, record)
    appended[0] += 1

SweepStore.append = append
sys.argv = ["forgetscope", "sweep", *sys.argv[3:]]
main()
"""


def run_sweep_process(config_path, out, kill_after: int | None = None, torn: bool = False) -> subprocess.CompletedProcess:
    """The sweep command in a child process; with `kill_after`, SIGKILLed at that record."""
    args = [str(config_path), "--out", str(out)]
    if kill_after is None:
        command = [sys.executable, "-m", "forgetscope.cli", "sweep", *args]
    else:
        command = [sys.executable, "-c", KILLING_SWEEP, str(kill_after), "torn" if torn else "clean", *args]
    return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)


@pytest.mark.slow
def test_a_sweep_killed_three_times_resumes_to_the_same_records(llama_dir, eval_files, tmp_path):
    config = tiny_sweep_config(llama_dir, eval_files, steps=12)
    config_path = write_config(tmp_path / "sweep.yaml", config)
    out = tmp_path / "killed"
    rng = random.Random(7)
    partial_points_left = 0
    for kill in range(3):
        # Every point has 4 records; kill within the next point, never on a point boundary.
        kill_after = 4 * rng.randint(0, 1) + rng.randint(1, 3)
        killed = run_sweep_process(config_path, out, kill_after, torn=kill % 2 == 1)
        assert killed.returncode == -9, killed.stderr  # killed by the hook, not finished or crashed
        finished = {p.stem for p in (out / "points").glob("*.json")}
        partial_points_left += any(r["point_id"] not in finished for r in read_records(out / "records.jsonl"))
        assert (out / "records.jsonl").read_text().endswith("\n") == (kill % 2 == 0)  # the torn kills left a torn line
    assert partial_points_left == 3  # every kill landed mid-point: recovery was exercised each time
    finished = run_sweep_process(config_path, out)
    assert finished.returncode == 0, finished.stderr

    records = read_records(out / "records.jsonl")
    assert len(records) == len({(r["point_id"], r["step"]) for r in records}) == 16  # no duplicates, none lost
    uninterrupted = run_sweep(parse_config(config), tmp_path / "clean", progress=False).records
    assert by_point_and_step(records) == by_point_and_step(uninterrupted)
