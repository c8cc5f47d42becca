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
