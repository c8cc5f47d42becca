"""Sweeps: grid expansion, the sweep directory contract, resuming, failures, bad configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli_helpers import assert_user_error, run_cli
from forgetscope.errors import UserInputError
from forgetscope.metric import METRIC_KEYS
from forgetscope.sweep.config import Grid, load_config, parse_config
from forgetscope.sweep.grid import expand
from forgetscope.sweep.run import run_sweep
from forgetscope.sweepdir import SweepStore, read_records
from sweep_helpers import by_point_and_step, tiny_sweep_config, write_config

RECORD_FIELDS = {"point_id", "rank", "target_modules", "layers", "rslora", "lora_alpha", "learning_rate", "seed",
                 "trainable_params", "step", "train_loss", "ft_loss", "domains", *METRIC_KEYS}


def test_the_grid_expands_to_every_combination_with_stable_unique_ids():
    grid = Grid(rank=[1, 2, 4], target_modules=[["q_proj"], "all-linear"], rslora=[True, False])
    points = expand(grid)
    assert len(points) == 12
    assert len({p.point_id for p in points}) == 12
    assert [p.point_id for p in expand(grid)] == [p.point_id for p in points]
    assert points[0].point_id.startswith("r1-q_proj-rs-s0-")


def test_the_demo_config_and_the_gpu_example_are_valid():
    from pathlib import Path

    from forgetscope.demo import demo_config

    assert len(expand(demo_config().grid)) >= 8
    example = load_config(Path(__file__).parent.parent / "examples" / "llama2-7b-gpu.yaml")
    assert example.dtype == "bfloat16" and example.resources.gpus == 1


@pytest.fixture(scope="module")
def sweep(llama_dir, eval_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    config = parse_config(tiny_sweep_config(llama_dir, eval_files))
    return run_sweep(config, out / "s", progress=False), config


def test_a_sweep_directory_holds_config_records_and_one_file_per_point(sweep):
    result, config = sweep
    d = result.directory
    assert yaml.safe_load((d / "config.yaml").read_text()) == config.canonical()
    assert sorted(p.stem for p in (d / "points").glob("*.json")) == sorted(p.point_id for p in result.points)
    records = read_records(d / "records.jsonl")
    assert len(records) == 4 * 4  # 4 points x 4 eval steps
    for record in records:
        assert RECORD_FIELDS <= set(record)
    assert {r["step"] for r in records} == {0, 1, 3, 8}
    assert not (d / "downstream").exists()  # no evaluator enabled, no artifacts


def test_trainable_params_grow_with_rank_and_modules(sweep):
    result, _ = sweep
    params = {(r["rank"], str(r["target_modules"])): r["trainable_params"] for r in result.records}
    assert params[(1, "['q_proj']")] < params[(4, "['q_proj']")] < params[(4, "all-linear")]
    assert params[(1, "['q_proj']")] == 2 * (32 + 32)  # A 1x32 and B 32x1, in 2 layers


def test_running_a_finished_sweep_again_skips_every_point(sweep):
    result, config = sweep
    again = run_sweep(config, result.directory, progress=False)
    assert again.ran == [] and len(again.skipped) == 4
    assert by_point_and_step(again.records) == by_point_and_step(result.records)


def test_a_directory_from_another_config_is_refused(sweep):
    result, config = sweep
    other = config.model_copy(update={"steps": 9})
    with pytest.raises(UserInputError, match=r"different config \(differs in: steps\)"):
        run_sweep(other, result.directory, progress=False)


def test_a_directory_whose_config_predates_a_setting_names_only_what_really_differs(sweep, tmp_path):
    import shutil

    import yaml

    result, config = sweep
    old = tmp_path / "old"
    shutil.copytree(result.directory, old)
    written = yaml.safe_load((old / "config.yaml").read_text())
    written.pop("checkpoints", None)  # as a version before that setting wrote it
    (old / "config.yaml").write_text(yaml.safe_dump(written))
    assert run_sweep(config, old, progress=False).ran == []  # the same sweep: it resumes
    with pytest.raises(UserInputError, match=r"different config \(differs in: steps\)"):
        run_sweep(config.model_copy(update={"steps": 9}), old, progress=False)


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(llama_dir, eval_files, tmp_path, monkeypatch):
    import forgetscope.train as train_module

    real = train_module.finetune

    def flaky(model, tokenizer, lora, *args, **kwargs):
        if lora.rank == 4:
            raise RuntimeError("simulated out-of-memory")
        return real(model, tokenizer, lora, *args, **kwargs)

    config = parse_config(tiny_sweep_config(llama_dir, eval_files, grid={"rank": [1, 4, 2], "target_modules": [["q_proj"]]}))
    monkeypatch.setattr(train_module, "finetune", flaky)
    result = run_sweep(config, tmp_path / "s", progress=False)
    failed_id = next(p.point_id for p in result.points if p.rank == 4)
    assert set(result.failed) == {failed_id} and "simulated out-of-memory" in result.failed[failed_id]
    assert {r["rank"] for r in result.records} == {1, 2}  # the points after the failure ran

    assert run_sweep(config, tmp_path / "s", progress=False).ran == []  # failed points wait for --retry-failed
    monkeypatch.setattr(train_module, "finetune", real)
    retried = run_sweep(config, tmp_path / "s", retry_failed=True, progress=False)
    assert retried.ran == [failed_id] and retried.failed == {}
    assert {r["rank"] for r in retried.records} == {1, 2, 4}


def test_a_diverging_point_fails_with_non_finite_loss(llama_dir, eval_files, tmp_path):
    config = parse_config(tiny_sweep_config(llama_dir, eval_files, grid={"rank": [4], "learning_rate": [1e30]}))
    result = run_sweep(config, tmp_path / "s", progress=False)
    assert list(result.failed.values())[0].startswith("NonFiniteLoss")
    assert result.records == []  # a failed point leaves no records behind


def test_reopening_drops_records_of_unfinished_points_and_a_torn_last_line(tmp_path):
    config = {"name": "x"}
    with SweepStore(tmp_path / "s", config) as store:
        store.append({"point_id": "done", "step": 0})
        store.mark("done", "finished", {})
        store.append({"point_id": "killed", "step": 0})
    with open(tmp_path / "s" / "records.jsonl", "a") as f:
        f.write('{"point_id": "killed", "st')  # SIGKILL mid-write
    assert [r["point_id"] for r in read_records(tmp_path / "s" / "records.jsonl")] == ["done", "killed"]
    with SweepStore(tmp_path / "s", config) as store:
        assert store.records() == [{"point_id": "done", "step": 0}]
    assert (tmp_path / "s" / "records.jsonl").read_text() == '{"point_id": "done", "step": 0}\n'


def test_a_non_empty_directory_without_a_sweep_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(UserInputError, match="not empty"):
        SweepStore(tmp_path, {"name": "x"})
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda c: c.update(unknown_knob=3), "`unknown_knob`: unknown field"),
        (lambda c: c.update(steps="many"), "`steps`: Input should be a valid integer"),
        (lambda c: c["grid"].update(rank=[]), "`grid.rank`: empty list"),
        (lambda c: c["grid"].update(rank=[0, 4]), "`grid.rank`: 0: Input should be greater than or equal to 1"),
        (lambda c: c["grid"].update(target_modules=[["no_such_proj"]]), "not found in the base model"),
        (lambda c: c.update(finetune_data={}), "`finetune_data`: give exactly one of `files` or `embedded`"),
        (lambda c: c.update(eval_data=[{"embedded": "klingon"}]), "`eval_data.0.embedded`"),
        (lambda c: c.update(eval_tokens=8), "smaller than one sequence"),
        (lambda c: c.update(batch_size=4, micro_batch_size=3), "batch_size 4 is not a multiple of micro_batch_size 3"),
        (lambda c: c.update(trainer_args={"seed": 3}), "seed is set by forgetscope's own setting seed"),
        (lambda c: c.update(base_model="/no/such/model"), "base model not found"),
    ],
)
def test_bad_configs_are_one_line_errors_with_exit_2(edit, fragment, llama_dir, eval_files, tmp_path, capsys):
    config = tiny_sweep_config(llama_dir, eval_files)
    edit(config)
    path = write_config(tmp_path / "bad.yaml", config)
    code, _, err = run_cli(["sweep", path, "--out", tmp_path / "out"], capsys)
    assert_user_error(code, err, fragment)
    assert not (tmp_path / "out").exists()  # nothing half-made to trip over after fixing the config


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("grid: [unclosed", "not valid YAML"), ("- just\n- a list\n", "expected a mapping")],
)
def test_malformed_yaml_is_a_one_line_error(text, fragment, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = run_cli(["sweep", path], capsys)
    assert_user_error(code, err, fragment)


def test_a_missing_config_file_is_a_one_line_error(tmp_path, capsys):
    code, _, err = run_cli(["sweep", tmp_path / "nope.yaml"], capsys)
    assert_user_error(code, err, "sweep config not found")


def test_the_sweep_command_prints_a_summary(llama_dir, eval_files, tmp_path, capsys):
    config = tiny_sweep_config(llama_dir, eval_files, grid={"rank": [2], "target_modules": [["q_proj"]]})
    code, out, err = run_cli(["sweep", write_config(tmp_path / "c.yaml", config), "--out", tmp_path / "s"], capsys)
    assert code == 0, err
    assert "q_proj" in out and "rsLoRA" in out and "1 points run" in out
    summary = json.loads((tmp_path / "s" / "points" / f"{expand(parse_config(config).grid)[0].point_id}.json").read_text())
    assert summary["status"] == "finished" and summary["records"] == 4


@pytest.mark.slow
def test_the_ray_executor_gives_the_same_records_as_local(sweep, tmp_path):
    pytest.importorskip("ray")
    result, config = sweep
    on_ray = run_sweep(config, tmp_path / "ray", executor="ray", progress=False)  # a cluster of its own
    assert on_ray.failed == {}
    assert by_point_and_step(on_ray.records) == by_point_and_step(result.records)


@pytest.mark.slow
def test_the_submitit_executor_gives_the_same_records_as_local_from_a_driver_without_the_points_device(sweep, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    import forgetscope.models

    result, config = sweep

    def no_device_here(name):  # a login node: the points' device is not on the driver's machine
        raise UserInputError(f"device {name!r} is not available on this machine")

    monkeypatch.setattr(forgetscope.models, "resolve_device", no_device_here)  # the jobs are other processes
    on_submitit = run_sweep(config, tmp_path / "sub", executor="submitit", options={"cluster": "local"}, progress=False)
    assert on_submitit.failed == {}
    assert by_point_and_step(on_submitit.records) == by_point_and_step(result.records)
    assert len(list((tmp_path / "sub" / "submitit").glob("*_result.pkl"))) == len(result.points) + 1  # a job per point, one for the base
    streamed = [read_records(path) for path in (tmp_path / "sub" / "submitit" / "records").glob("*.jsonl")]
    assert sorted(len(lines) for lines in streamed) == [4] * len(result.points), "each job streamed its records through its file"


@pytest.mark.parametrize(
    ("executor", "options", "fragment"),
    [
        ("slurmish", {}, "unknown executor 'slurmish' (known: "),
        ("local", {"address": "auto"}, "unknown executor option address"),
        ("submitit", {"cluster": "pbs"}, "cluster must be auto, slurm or local"),
    ],
)
def test_an_unknown_executor_or_option_is_a_user_error(sweep, tmp_path, executor, options, fragment):
    _, config = sweep
    with pytest.raises(UserInputError, match=fragment.replace("(", r"\(")):
        run_sweep(config, tmp_path / "s", executor=executor, options=options, progress=False)
    assert not (tmp_path / "s").exists()  # refused before a sweep directory was made


@pytest.mark.slow
def test_the_sweep_command_starts_and_stops_its_own_ray_cluster(llama_dir, eval_files, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    config = tiny_sweep_config(llama_dir, eval_files, grid={"rank": [2], "target_modules": [["q_proj"]]})
    code, out, err = run_cli(["sweep", write_config(tmp_path / "c.yaml", config), "--out", tmp_path / "s", "--executor", "ray"], capsys)
    assert code == 0, err
    assert "1 points run" in out and len(read_records(tmp_path / "s" / "records.jsonl")) == 4
    assert not ray.is_initialized()  # the cluster it started is shut down


def test_an_address_without_the_ray_executor_is_a_user_error(llama_dir, eval_files, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_sweep_config(llama_dir, eval_files))
    code, _, err = run_cli(["sweep", config, "--address", "auto"], capsys)
    assert_user_error(code, err, "--address joins a Ray cluster")


COUNTING_EVALUATOR = '''
"""`weights:` count the base's parameters once, and each point's trainable ones at its end."""
from pydantic import BaseModel

from forgetscope.sweep.evaluators import EVALUATORS


class WeightsSection(BaseModel):
    scale: float = 1.0


class Weights:
    name = "weights"
    section = WeightsSection

    def check(self, settings):
        pass

    def evaluate_base(self, settings, base_path, tokenizer_path, device, dtype=None):
        from transformers import AutoModelForCausalLM

        return {"parameters": settings.scale * AutoModelForCausalLM.from_pretrained(base_path).num_parameters()}

    def evaluate_point(self, settings, model, tokenizer):
        return {"trainable": settings.scale * sum(p.numel() for p in model.parameters() if p.requires_grad)}


EVALUATORS.register(Weights.name, Weights())
'''


def test_a_new_evaluator_is_one_file_whose_section_and_artifacts_the_sweep_handles(llama_dir, eval_files, tmp_path, registries):
    import forgetscope.sweep.evaluators as evaluators_package

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "weights.py").write_text(COUNTING_EVALUATOR)
    registries.extend_package(evaluators_package, tmp_path / "plugins")
    config = parse_config(tiny_sweep_config(llama_dir, eval_files, grid={"rank": [2], "target_modules": [["q_proj"]]},
                                            weights={"scale": 2}))
    result = run_sweep(config, tmp_path / "s", progress=False)
    point_id = result.points[0].point_id
    base = json.loads((tmp_path / "s" / "weights" / "base.json").read_text())
    point = json.loads((tmp_path / "s" / "weights" / f"{point_id}.json").read_text())
    trainable = result.records[0]["trainable_params"]
    assert point == {"trainable": 2.0 * trainable} and base["parameters"] > point["trainable"]
    with pytest.raises(UserInputError, match="`weights.scale`: Input should be a valid number"):
        parse_config(tiny_sweep_config(llama_dir, eval_files, weights={"scale": "big"}))


def test_a_list_of_grids_runs_their_union_each_point_once():
    grids = [Grid(rank=[1, 2, 4], target_modules=["all-linear"]), Grid(rank=[2, 16], target_modules=[["q_proj", "v_proj"]]),
             Grid(rank=[4], target_modules=["all-linear"])]  # the last repeats a point of the first
    points = expand(grids)
    assert [(p.rank, p.target_modules) for p in points] == [
        (1, "all-linear"), (2, "all-linear"), (4, "all-linear"), (2, ["q_proj", "v_proj"]), (16, ["q_proj", "v_proj"])]


def test_the_ray_executor_never_joins_a_running_cluster_and_listens_on_loopback_only(sweep, tmp_path, monkeypatch):
    """A cluster that `ray start` left running (here named by RAY_ADDRESS, which `ray.init()`
    would join) is not used; the cluster the executor starts listens on 127.0.0.1 only."""
    ray = pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    import shutil
    import socket
    import tempfile

    from forgetscope.sweep.executors import ExecutorContext
    from forgetscope.sweep.executors.ray import RayExecutor

    ray_cli = str(Path(sys.executable).with_name("ray"))
    other = Path(tempfile.mkdtemp(prefix="fs-ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--temp-dir", str(other), "--include-dashboard", "false", "--num-cpus", "1"],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        other_gcs = f"127.0.0.1:{port}"
        monkeypatch.setenv("RAY_ADDRESS", other_gcs)
        _, config = sweep
        with RayExecutor(ExecutorContext(config, None, tmp_path / "s", {})):
            assert ray.get_runtime_context().gcs_address != other_gcs
            listening = {c.laddr.ip for p in [psutil.Process(), *psutil.Process().children(recursive=True)]
                         for c in _listening(p, psutil)}
        assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening
        assert not ray.is_initialized()
    finally:
        for process in psutil.process_iter(["cmdline"]):
            if any(str(other) in part for part in process.info["cmdline"] or []):
                process.kill()
        shutil.rmtree(other, ignore_errors=True)


def _listening(process, psutil) -> list:
    try:
        return [c for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        return []  # a worker that has just exited


def test_a_shorter_budget_trains_on_a_sample_of_the_longer_ones_text_not_its_first_documents(llama_dir, eval_files):
    from forgetscope.data import group_into_blocks, read_domains
    from forgetscope.models import load_tokenizer
    from forgetscope.sweep.prepare import prepare

    def train_rows(steps: int) -> set[tuple]:
        config = parse_config(tiny_sweep_config(llama_dir, eval_files, steps=steps, ft_eval_tokens=32))
        return {tuple(row) for row in prepare(config, str(llama_dir)).train_blocks.tolist()}

    pilot, longer = train_rows(2), train_rows(12)
    assert len(pilot - longer) <= 1  # the pilot's text is the longer run's (but the one block each holds out)
    documents = [d for docs in read_domains([str(eval_files[1])]).values() for d in docs]
    first = group_into_blocks(documents, load_tokenizer(str(llama_dir)), 32, 2 * 4 * 32 + 32)
    assert pilot - {tuple(row) for row in first.tolist()}  # a sample, not the corpus's first documents


def test_a_scripture_fine_tune_trains_on_held_out_chapters_so_it_cannot_also_be_measured_on_them():
    from forgetscope.tiny import corpora

    assert corpora.FINETUNE_SOURCE == {"code": "finetune", "scripture": "heldout", "docs": "pretrain"}
    config = {"finetune_data": {"embedded": "scripture"}, "eval_data": [{"embedded": "scripture"}], "grid": {"rank": [1]}}
    with pytest.raises(UserInputError, match="held-out chapters"):
        parse_config(config)
    parse_config(config | {"eval_data": [{"embedded": "docs"}]})


@pytest.mark.slow
def test_a_point_that_dies_half_way_keeps_its_checkpointed_records_and_resumes_from_its_checkpoint(llama_dir, eval_files, tmp_path, monkeypatch):
    """The point dies the moment the driver has its record of step 4 (before the checkpoint
    of step 4 is saved: the Trainer saves after it logs), then the sweep is run again."""
    from forgetscope.sweepdir import last_checkpoint

    config = parse_config(tiny_sweep_config(llama_dir, eval_files, grid={"rank": [2], "target_modules": [["q_proj"]]},
                                            steps=48, eval_points=5, checkpoints=True))  # measured at 0, 1, 4, 13, 48
    whole = run_sweep(config.model_copy(update={"checkpoints": False}), tmp_path / "whole", progress=False)
    point_id, append = whole.points[0].point_id, SweepStore.append

    def die_at_step_4(store, record):
        append(store, record)
        if record["step"] == 4:
            raise RuntimeError("the node went away")

    monkeypatch.setattr(SweepStore, "append", die_at_step_4)
    killed = run_sweep(config, tmp_path / "s", progress=False)
    assert list(killed.failed) == [point_id]
    assert last_checkpoint(tmp_path / "s" / "checkpoints" / point_id)[0] == 1
    assert [r["step"] for r in read_records(tmp_path / "s" / "records.jsonl")] == [0, 1], "what preceded the checkpoint is kept"

    monkeypatch.setattr(SweepStore, "append", append)
    import shutil

    shutil.copytree(tmp_path / "s", tmp_path / "without")
    over = run_sweep(config.model_copy(update={"checkpoints": False}), tmp_path / "without", retry_failed=True, progress=False)
    assert over.failed == {} and [r["step"] for r in over.records] == [0, 1, 4, 13, 48], "without checkpoints it starts over, once"
    resumed = run_sweep(config, tmp_path / "s", retry_failed=True, progress=False)
    assert resumed.failed == {}
    records = read_records(tmp_path / "s" / "records.jsonl")
    assert [r["step"] for r in records] == [0, 1, 4, 13, 48], "each record exactly once"
    for again, reference in zip(records, whole.records):
        assert again["kl"] == pytest.approx(reference["kl"], rel=1e-4, abs=1e-9), again["step"]
        assert again["train_loss"] == (None if reference["train_loss"] is None else pytest.approx(reference["train_loss"], rel=1e-5))
    assert not (tmp_path / "s" / "checkpoints" / point_id).exists(), "a finished point's checkpoint is removed"
