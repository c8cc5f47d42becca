"""A sweep's `downstream:` section: the base evaluated once, every point at its end, stored
next to the records, resumed without re-running or duplicating, and reported against L_f."""

from __future__ import annotations

import pytest

from cli_helpers import assert_user_error, run_cli
from forgetscope.report import downstream_against_forgetting, write_report
from forgetscope.sweep.config import parse_config
from forgetscope.sweep.run import run_sweep
from forgetscope.sweepdir import read_artifacts
from sweep_helpers import tiny_sweep_config, write_config


def read_downstream(directory):
    return read_artifacts(directory, "downstream")

pytestmark = pytest.mark.usefixtures("one_thread")  # fixed threads: the same numbers on every machine

DOWNSTREAM = {"suite": "fs_scripture_cloze,fs_docs_choice", "limit": 4}
GRID = {"rank": [1, 4, 8], "target_modules": [["q_proj", "v_proj"]], "learning_rate": [0.05]}


@pytest.fixture(scope="module")
def sweep(llama_dir, eval_files, tmp_path_factory):
    config = parse_config(tiny_sweep_config(llama_dir, eval_files, grid=GRID, downstream=DOWNSTREAM))
    out = tmp_path_factory.mktemp("downstream-sweep") / "s"
    return run_sweep(config, out, progress=False), config


def test_the_base_and_every_point_are_evaluated_and_stored(sweep):
    result, _ = sweep
    folder = result.directory / "downstream"
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(["base", *(p.point_id for p in result.points)])
    base, points = read_downstream(result.directory)
    assert set(base) == {"fs_scripture_cloze", "fs_docs_choice"}
    for point_result in points.values():
        assert point_result["fs_scripture_cloze"]["n"] == 4
    nll = {pid: r["fs_scripture_cloze"]["metrics"]["nll"]["value"] for pid, r in points.items()}
    assert len(set(nll.values())) == 3  # each point evaluated its own fine-tuned model
    assert base["fs_scripture_cloze"]["metrics"]["nll"]["value"] not in nll.values()


@pytest.fixture
def evaluations(monkeypatch):
    """Counts of the downstream evaluator's calls: `{"base": n, "point": n}`."""
    from forgetscope.sweep.evaluators import EVALUATORS

    evaluator, calls = EVALUATORS.get("downstream"), {"base": 0, "point": 0}
    real_base, real_point = evaluator.evaluate_base, evaluator.evaluate_point

    def base(*args, **kwargs):
        calls["base"] += 1
        return real_base(*args, **kwargs)

    def point(*args, **kwargs):
        calls["point"] += 1
        return real_point(*args, **kwargs)

    monkeypatch.setattr(evaluator, "evaluate_base", base)
    monkeypatch.setattr(evaluator, "evaluate_point", point)
    return calls


def test_resuming_runs_nothing_again_and_a_killed_point_only_itself(sweep, evaluations):
    result, config = sweep
    folder = result.directory / "downstream"
    contents = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    again = run_sweep(config, result.directory, progress=False)
    assert again.ran == [] and evaluations == {"base": 0, "point": 0}

    killed = result.points[1].point_id  # as if killed after its evaluation, before it was marked finished
    (result.directory / "points" / f"{killed}.json").unlink()
    assert killed not in read_downstream(result.directory)[1]  # an unfinished point's result does not count
    resumed = run_sweep(config, result.directory, progress=False)
    assert resumed.ran == [killed]
    assert evaluations == {"base": 0, "point": 1}  # the base is not evaluated again, the killed point is
    assert {p.name: p.read_bytes() for p in folder.glob("*.json")} == contents  # same seed, same numbers


def test_the_report_shows_downstream_drop_against_forgetting(sweep):
    result, _ = sweep
    summary = downstream_against_forgetting(result.directory)
    assert len(summary["points"]) == 3
    lf = [p["forgetting_ce"] for p in summary["points"]]
    assert lf == sorted(lf)
    cloze = summary["tasks"]["fs_scripture_cloze"]
    assert cloze["metric"] == "nll" and cloze["n_points"] == 3 and -1 <= cloze["pearson"] <= 1
    page = write_report(result.directory, n_bootstrap=20).read_text()
    assert "Downstream against forgetting" in page and "Pearson(L_f, drop)" in page
    assert (result.directory / "downstream.png").is_file()


@pytest.mark.slow
def test_the_ray_executor_stores_the_same_downstream_results(sweep, tmp_path):
    pytest.importorskip("ray")
    result, config = sweep
    on_ray = run_sweep(config, tmp_path / "ray", executor="ray", progress=False)  # a cluster of its own
    assert on_ray.failed == {}
    assert read_downstream(tmp_path / "ray") == read_downstream(result.directory)


@pytest.mark.slow
def test_the_submitit_executor_stores_the_same_downstream_results(sweep, tmp_path):
    pytest.importorskip("submitit")
    result, config = sweep
    on_submitit = run_sweep(config, tmp_path / "sub", executor="submitit", options={"cluster": "local"}, progress=False)
    assert on_submitit.failed == {}
    assert read_downstream(tmp_path / "sub") == read_downstream(result.directory)


def test_a_config_without_the_section_enables_no_evaluator_and_keeps_its_canonical_form(llama_dir, eval_files):
    config = parse_config(tiny_sweep_config(llama_dir, eval_files))
    assert config.sections() == {} and config.section("downstream") is None and "downstream" not in config.canonical()


@pytest.mark.parametrize(
    ("downstream", "fragment"),
    [
        ({"suite": "fs_nope"}, "unknown task 'fs_nope'"),
        ({"suite": "piqa"}, "cannot load the task data (offline"),
        ({"suite": "tiny", "limit": 0}, "`downstream.limit`"),
        ({"suite": "tiny", "shots": 3}, "`downstream.shots`: unknown field"),
    ],
)
def test_a_bad_downstream_section_is_a_one_line_error(downstream, fragment, llama_dir, eval_files, tmp_path, capsys):
    path = write_config(tmp_path / "c.yaml", tiny_sweep_config(llama_dir, eval_files, downstream=downstream))
    code, _, err = run_cli(["sweep", path, "--out", tmp_path / "out"], capsys)
    assert_user_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_the_example_config_runs_the_offline_suite_on_four_ranks():
    from pathlib import Path

    from forgetscope.sweep.config import load_config
    from forgetscope.sweep.grid import expand

    config = load_config(Path(__file__).parent.parent / "examples" / "tiny-downstream.yaml")
    assert config.section("downstream").suite == "tiny" and [p.rank for p in expand(config.grid)] == [1, 4, 16, 64]
