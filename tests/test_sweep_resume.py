"""A sweep process killed with SIGKILL at random moments resumes to exactly the records of an
uninterrupted sweep: nothing lost, nothing duplicated, no torn line."""

from __future__ import annotations

import random
import subprocess
import sys
import time

from forgetscope.sweep.config import parse_config
from forgetscope.sweep.run import run_sweep
from forgetscope.sweep.store import read_records
from sweep_helpers import by_point_and_step, tiny_sweep_config, write_config


def count_lines(path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def start_sweep(config_path, out) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "forgetscope.cli", "sweep", str(config_path), "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def test_a_sweep_killed_three_times_resumes_to_the_same_records(llama_dir, eval_files, tmp_path):
    config = tiny_sweep_config(llama_dir, eval_files, steps=12)
    config_path = write_config(tmp_path / "sweep.yaml", config)
    out = tmp_path / "killed"
    rng = random.Random(7)
    kills, partial_points_left = 0, 0
    while kills < 3:
        finished_before = len(list((out / "points").glob("*.json"))) if out.exists() else 0
        already = 4 * finished_before  # records of finished points survive a restart
        target = already + rng.randint(1, 7)
        proc = start_sweep(config_path, out)
        while proc.poll() is None and count_lines(out / "records.jsonl") < target:
            time.sleep(0.02)
        if proc.poll() is not None:
            break  # finished before we could kill it
        proc.kill()  # SIGKILL: no cleanup, no flush, mid-point
        proc.wait()
        kills += 1
        finished = {p.stem for p in (out / "points").glob("*.json")}
        partial_points_left += any(r["point_id"] not in finished for r in read_records(out / "records.jsonl"))
    assert kills == 3, "the sweep finished before it could be killed three times"
    assert partial_points_left > 0, "no kill landed mid-point: the test did not exercise recovery"
    proc = start_sweep(config_path, out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err

    records = read_records(out / "records.jsonl")
    assert len(records) == len({(r["point_id"], r["step"]) for r in records}) == 16  # no duplicates, none lost
    uninterrupted = run_sweep(parse_config(config), tmp_path / "clean", progress=False).records
    assert by_point_and_step(records) == by_point_and_step(uninterrupted)
