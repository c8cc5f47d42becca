"""The sweep directory is written by one process at a time, a start killed or refused early
never strands it, and what has not finished never counts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from forgetscope.errors import UserInputError
from forgetscope.laws.select import read_table
from forgetscope.records import read_records
from forgetscope.sweepdir import SweepStore
from law_helpers import write_sweep
from sweep_helpers import tiny_sweep_config, write_config

HELD_SWEEP = """
import os, sys, time
from forgetscope.sweepdir import SweepStore
from forgetscope.cli import main

real_append, release = SweepStore.append, sys.argv.pop(1)

def append(self, record):  # after its first record, the sweep waits until the test releases it
    real_append(self, record)
    while not os.path.exists(release):
        time.sleep(0.05)

SweepStore.append = append
sys.argv = ["forgetscope", "sweep", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_second_sweep_on_a_directory_in_use_exits_2_and_the_first_finishes_untouched(llama_dir, eval_files, tmp_path):
    config_path = write_config(tmp_path / "sweep.yaml", tiny_sweep_config(llama_dir, eval_files))
    out = tmp_path / "shared"
    release = tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", HELD_SWEEP, str(release), str(config_path), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "records.jsonl").is_file() or not (out / "records.jsonl").read_text():
        assert first.poll() is None and time.time() < deadline, "the first sweep ended before it wrote a record"
        time.sleep(0.2)
    second = subprocess.run([sys.executable, "-m", "forgetscope.cli", "sweep", str(config_path), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    assert second.stderr.strip() == f"error: {out} is in use by process {first.pid}: wait for it to end, or use another --out directory"
    release.write_text("")
    assert first.wait(timeout=600) == 0, first.stderr.read()
    records = read_records(out / "records.jsonl")
    assert len(records) == len({(r["point_id"], r["step"]) for r in records}) == 16  # 4 points x 4 steps, once each
    assert len(list((out / "points").glob("*.json"))) == 4


def test_the_lock_is_released_when_the_store_closes(tmp_path):
    with SweepStore(tmp_path / "s", {"name": "x"}):
        with pytest.raises(UserInputError, match="is in use by process"):
            SweepStore(tmp_path / "s", {"name": "x"})
    with SweepStore(tmp_path / "s", {"name": "x"}) as store:  # the first has ended: free again
        assert store.finished() == set()


@pytest.mark.parametrize("skeleton", [
    ["points/"],  # `mkdir -p X/points`, or a start killed before config.yaml
    ["points/", "config.yaml", "records.jsonl", ".lock"],  # a start refused for bad data, with another config
])
def test_a_directory_that_holds_no_result_yet_takes_any_config(skeleton, tmp_path):
    for name in skeleton:
        path = tmp_path / "s" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir()
        else:
            path.write_text("name: an-earlier-config\n" if name == "config.yaml" else "")
    with SweepStore(tmp_path / "s", {"name": "corrected"}) as store:
        store.append({"point_id": "a", "step": 0})
    assert "corrected" in (tmp_path / "s" / "config.yaml").read_text()


def test_a_sweep_refused_for_a_missing_eval_file_accepts_the_corrected_config(llama_dir, eval_files, tmp_path, capsys):
    from cli_helpers import assert_user_error, run_cli

    out = tmp_path / "out"
    wrong = tiny_sweep_config(llama_dir, eval_files, eval_data=[{"files": [str(tmp_path / "missing.txt")]}])
    code, _, err = run_cli(["sweep", str(write_config(tmp_path / "wrong.yaml", wrong)), "--out", str(out)], capsys)
    assert_user_error(code, err, "missing.txt")
    right = tiny_sweep_config(llama_dir, eval_files, grid={"rank": [1], "target_modules": [["q_proj"]]})
    code, _, err = run_cli(["sweep", str(write_config(tmp_path / "right.yaml", right)), "--out", str(out)], capsys)
    assert code == 0, err
    assert len(read_records(out / "records.jsonl")) == 4


def test_fit_leaves_out_the_records_of_unfinished_points_and_says_how_many(tmp_path, capsys):
    from cli_helpers import run_cli

    directory = write_sweep(tmp_path / "sweep", arms=("all-linear",))
    everything = read_records(directory / "records.jsonl")
    ids = sorted({r["point_id"] for r in everything})
    (directory / "points").mkdir()
    for point_id in ids[1:]:  # the first was killed before it was marked finished
        (directory / "points" / f"{point_id}.json").write_text('{"status": "finished"}')
    finished = ids
    partial = sum(r["point_id"] == ids[0] for r in everything)
    table = read_table(directory)
    assert finished[0] not in set(table.point_id) and len(table) == len(everything) - partial
    code, _, err = run_cli(["fit", str(directory), "--bootstrap", "5"], capsys)
    assert code == 0
    assert f"note: left out {partial} records of points that have not finished" in err
    assert json.loads((directory / "fits.json").read_text())["skipped_records"] == {"unfinished_points": partial, "non_finite": 0}


def test_fit_leaves_out_records_with_non_finite_values_and_counts_them(tmp_path, capsys):
    from cli_helpers import run_cli

    directory = write_sweep(tmp_path / "sweep", arms=("all-linear",))
    records = read_records(directory / "records.jsonl")
    for record in records[5:8]:
        record["kl"] = float("nan")
    records[9]["ft_loss"] = float("inf")
    (directory / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    code, _, err = run_cli(["fit", str(directory), "--bootstrap", "5"], capsys)
    assert code == 0, err
    assert "note: left out 4 records with non-finite values" in err
    fits = json.loads((directory / "fits.json").read_text())
    assert fits["n_records"] == len(records) - 4 and fits["skipped_records"]["non_finite"] == 4


def test_two_writers_of_one_file_never_share_a_scratch_name_and_both_are_cleaned_up(tmp_path):
    """Processes on two machines that share a directory may have the same process id."""
    from forgetscope.files import scratch_path
    from forgetscope.sweepdir import _is_scratch

    names = {scratch_path(tmp_path / "records.jsonl") for _ in range(100)}
    assert len(names) == 100 and all(_is_scratch(name) for name in names)
    assert _is_scratch(tmp_path / ".config.yaml.4242.tmp"), "an earlier version's scratch name is still recognised"
