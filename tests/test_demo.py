"""The embedded default end to end, on a reduced budget: pretrain, cache, sweep, forget."""

from __future__ import annotations

import json

import pytest

from cli_helpers import run_cli
from forgetscope.demo import demo_config, run_demo
from forgetscope.sweep.config import Grid
from forgetscope.tiny import corpora
from forgetscope.tiny.model import TinyConfig, ensure_tiny_base

SMALL = TinyConfig(vocab_size=512, hidden_size=32, layers=2, heads=2, intermediate_size=64, seq_len=64,
                   pretrain_steps=30, batch_size=8, heldout_tokens=1024)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    config = demo_config().model_copy(
        update={"steps": 12, "eval_points": 4, "eval_tokens": 512, "ft_eval_tokens": 256, "batch_size": 4, "seq_len": 64}
    )
    config.grid = Grid(rank=[1, 8], target_modules=[["q_proj", "v_proj"], "all-linear"], learning_rate=[5e-3])
    out = tmp_path_factory.mktemp("demo")
    result, summary = run_demo(out, config, SMALL, cache_dir=cache, progress=False)
    return result, summary, out, cache


def test_the_corpora_ship_with_python_and_pypi_and_split_the_same_way_every_time():
    for domain in corpora.DOMAINS:
        splits = corpora.load(domain)
        assert len(splits.pretrain) > 3 * len(splits.heldout) > 0
        assert not set(splits.pretrain) & set(splits.heldout)
        assert not set(splits.finetune) & (set(splits.pretrain) | set(splits.heldout))
    assert len(corpora.load("code").finetune) > 20  # code files reserved for fine-tuning
    assert corpora.load("docs") == corpora.load("docs")


@pytest.mark.slow
def test_the_demo_pretrains_sweeps_and_shows_forgetting_growing(demo):
    result, summary, out, _ = demo
    assert result.failed == {} and len(result.points) == 4
    kl_at = {0: [], 1: [], 3: [], 12: []}
    for point in result.points:
        steps = sorted((r for r in result.records if r["point_id"] == point.point_id), key=lambda r: r["step"])
        assert [r["step"] for r in steps] == [0, 1, 3, 12]
        assert set(steps[-1]["domains"]) == {"scripture", "docs"}
        for r in steps:
            kl_at[r["step"]].append(r["kl"])
    assert kl_at[0] == [0.0] * 4
    mean = {step: sum(kls) / len(kls) for step, kls in kl_at.items()}
    assert 0 < mean[1] < mean[12]
    metrics = summary["tiny_metrics"]
    assert set(metrics["heldout_loss"]) == set(corpora.DOMAINS)
    assert all(0 < loss < 6.2 for loss in metrics["heldout_loss"].values())  # better than uniform over 512 tokens (6.24)
    assert json.loads((out / "demo.json").read_text())["points"] == 4
    assert (out / "sweep" / "report.html").is_file() and (out / "sweep" / "fits.json").is_file()


@pytest.mark.slow
def test_the_tiny_base_is_cached_and_loadable_by_transformers(demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, summary, _, cache = demo
    path = ensure_tiny_base(SMALL, cache)  # second call: from the cache, no retraining
    assert str(path) == summary["base"]
    assert len(list(cache.iterdir())) == 1  # no scratch directories left behind
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "llama" and tok.eos_token == "<|endoftext|>"


def registered_commands(group=None, prefix=()) -> list[tuple[str, ...]]:
    """Every command path of the CLI, sub-commands included, from the typer app itself."""
    import typer

    from forgetscope.cli import app

    group = group or typer.main.get_command(app)
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if hasattr(command, "commands"):
            paths.extend(registered_commands(command, (*prefix, name)))
    return paths


def test_every_registered_command_has_help_with_a_summary(capsys):
    import typer

    from forgetscope.cli import app

    commands = registered_commands()
    root = typer.main.get_command(app)
    for path in commands:
        command = root
        for name in path:
            command = command.commands[name]
        assert (command.help or "").strip(), f"{' '.join(path)} has no summary"
    assert {("measure",), ("train",), ("sweep",), ("fit",), ("predict",), ("report",), ("demo",), ("eval",),
            ("synthetic",), ("conjugate",)} <= set(commands)
    for command in [(), *commands]:
        code, out, _ = run_cli([*command, "--help"], capsys)
        assert code == 0 and "Usage" in out and "--help" in out, command


def test_the_default_tiny_base_ships_with_the_package_and_is_served_without_pretraining(tmp_path, monkeypatch):
    from forgetscope.tiny import model, shipped

    monkeypatch.setattr(model, "pretrain", lambda *a, **k: pytest.fail("the shipped base must not be pretrained again"))
    path = ensure_tiny_base(cache_dir=tmp_path)
    assert path == shipped.BASES / "tiny-llama" and not any(tmp_path.iterdir())
    manifest = shipped.manifest("tiny-llama")
    assert manifest["settings"] == TinyConfig().model_dump() | model.corpus_stamp()
    assert manifest["sha256"]["model.safetensors"] == shipped.sha256(path / "model.safetensors")
    assert model.tiny_metrics(path)["pretrain_steps"] == TinyConfig().pretrain_steps


def test_other_settings_are_not_served_the_shipped_base(tmp_path):
    from forgetscope.tiny.shipped import shipped_base

    assert shipped_base("tiny-llama", TinyConfig(seed=1).model_dump()) is None
    assert shipped_base("no-such-base", {}) is None


def test_a_shipped_base_that_fails_its_hash_check_is_refused(tmp_path, monkeypatch):
    import shutil

    from forgetscope.errors import UserInputError
    from forgetscope.tiny import shipped

    copy = tmp_path / "bases"
    shutil.copytree(shipped.BASES / "tiny-llama", copy / "tiny-llama")
    with open(copy / "tiny-llama" / "model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    monkeypatch.setattr(shipped, "BASES", copy)
    with pytest.raises(UserInputError, match="fails its hash check on model.safetensors: reinstall forgetscope"):
        ensure_tiny_base(cache_dir=tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.parametrize("miniature", [False, True], ids=["tiny", "miniature"])
def test_the_recipe_reproduces_the_shipped_bases_first_steps_bit_for_bit(miniature, tmp_path, capsys):
    """`forgetscope tiny pretrain --stop-after N`: the recipe's first steps, on this machine,
    give the very weights the shipped base's recipe gave (the schedule of the whole run), with
    torch's CPU kernels of the instruction set the base was made with (AVX2 and AVX-512
    kernels round differently); without them, the mismatch says how to compare."""
    import os
    import subprocess
    import sys

    from forgetscope.tiny import shipped

    name = "miniature-llama" if miniature else "tiny-llama"
    found = shipped.manifest(name)
    steps = found["first_steps"]["steps"]
    args = [sys.executable, "-m", "forgetscope", "tiny", "pretrain", "--out", str(tmp_path / "p"), "--stop-after", str(steps),
            *(["--miniature"] if miniature else [])]
    env = {**os.environ, "ATEN_CPU_CAPABILITY": found["made_with"]["cpu_capability"].lower()}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"matches the shipped {name} after its first {steps} steps, bit for bit" in done.stdout


@pytest.mark.slow
def test_every_point_and_its_base_predictions_run_on_the_points_threads_not_the_drivers(tmp_path, monkeypatch):
    """A thread count can change how kernels split their sums, so a sweep pins torch's threads
    to `resources.cpus` where it records the base predictions and where each point fine-tunes,
    whatever the driver's count (and gives the driver's back after). Spies read
    `torch.get_num_threads()` at both places; the driver's count and the points' differ both ways."""
    import torch

    from forgetscope import base_cache, train
    from forgetscope.models import torch_threads
    from forgetscope.sweep.config import Resources
    from forgetscope.sweep.run import run_sweep

    seen: dict[str, list[int]] = {"record": [], "finetune": []}

    def spy(name, real):
        def noting_threads(*args, **kwargs):
            seen[name].append(torch.get_num_threads())
            return real(*args, **kwargs)
        return noting_threads

    monkeypatch.setattr(base_cache, "try_record_base_predictions", spy("record", base_cache.try_record_base_predictions))
    monkeypatch.setattr(train, "finetune", spy("finetune", train.finetune))
    for driver, cpus in ((1, 2), (2, 1)):
        config = demo_config().model_copy(update={"steps": 2, "eval_points": 2, "eval_tokens": 256, "ft_eval_tokens": 128,
                                                  "resources": Resources(cpus=cpus)})
        config.grid = [demo_config().grid[0]]
        for calls in seen.values():
            calls.clear()
        with torch_threads(driver):
            result = run_sweep(config, tmp_path / f"driver-{driver}", progress=False)
            assert torch.get_num_threads() == driver
        assert result.failed == {} and len(result.records) == 2
        assert seen == {"record": [cpus], "finetune": [cpus]}, (driver, cpus)


@pytest.mark.slow
def test_demo_json_keeps_every_run_and_the_laws_it_fitted(demo):
    result, summary, out, cache = demo
    first = json.loads((out / "demo.json").read_text())
    assert set(first["laws"]) == {"forgetting_ce", "kl", "ft_loss"} and first["laws"]["kl"]["form"]
    assert first["runs"] == [{"seconds": first["seconds"], "points_run": 4, "points_skipped": 0}]
    config = demo_config().model_copy(
        update={"steps": 12, "eval_points": 4, "eval_tokens": 512, "ft_eval_tokens": 256, "batch_size": 4, "seq_len": 64}
    )
    config.grid = Grid(rank=[1, 8], target_modules=[["q_proj", "v_proj"], "all-linear"], learning_rate=[5e-3])
    run_demo(out, config, SMALL, cache_dir=cache, progress=False)  # resumed: every point already done
    again = json.loads((out / "demo.json").read_text())
    assert again["runs"][0] == first["runs"][0] and again["runs"][1]["points_skipped"] == 4
