"""The embedded default end to end, on a reduced budget: pretrain, cache, fine-tune, forget."""

from __future__ import annotations

import json

import pytest

from cli_helpers import run_cli
from forgetscope.demo import DemoSettings, run_demo
from forgetscope.tiny import corpora
from forgetscope.tiny.model import TinyConfig, ensure_tiny_base
from forgetscope.train import LoraSettings, TrainSettings

SMALL = TinyConfig(vocab_size=512, hidden_size=32, layers=2, heads=2, intermediate_size=64, seq_len=64,
                   pretrain_steps=30, batch_size=8, heldout_tokens=1024)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    settings = DemoSettings(
        eval_tokens=1024,
        lora=LoraSettings(rank=4, alpha=8),
        train=TrainSettings(steps=12, learning_rate=5e-3, batch_size=4, seq_len=64, eval_points=4),
    )
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, SMALL, settings, cache_dir=cache, progress=False), out, cache


def test_the_corpora_ship_with_python_and_pypi_and_split_the_same_way_every_time():
    for domain in corpora.DOMAINS:
        splits = corpora.load(domain)
        assert len(splits.pretrain) > 3 * len(splits.heldout) > 0
        assert not set(splits.pretrain) & set(splits.heldout)
        assert not set(splits.finetune) & (set(splits.pretrain) | set(splits.heldout))
    assert len(corpora.load("code").finetune) > 20  # code files reserved for fine-tuning
    assert corpora.load("docs") == corpora.load("docs")


def test_the_demo_pretrains_fine_tunes_and_reports_growing_forgetting(demo):
    summary, out, _ = demo
    records = summary["records"]
    assert records[0]["step"] == 0 and records[0]["kl"] == 0.0
    assert records[-1]["kl"] > 0
    assert set(records[-1]["domains"]) == {"scripture", "docs"}
    metrics = summary["tiny_metrics"]
    assert set(metrics["heldout_loss"]) == set(corpora.DOMAINS)
    assert all(0 < loss < 7 for loss in metrics["heldout_loss"].values())  # better than uniform over 512 tokens (6.24)
    assert (out / "run" / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "demo.json").read_text())["records"] == records


def test_the_tiny_base_is_cached_and_loadable_by_transformers(demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary, _, cache = demo
    path = ensure_tiny_base(SMALL, cache)  # second call: from the cache, no retraining
    assert str(path) == summary["base"]
    assert len(list(cache.iterdir())) == 1  # no scratch directories left behind
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "llama" and tok.eos_token == "<|endoftext|>"


def test_every_command_has_help(capsys):
    for command in ([], ["measure"], ["train"], ["demo"]):
        code, out, _ = run_cli([*command, "--help"], capsys)
        assert code == 0 and "Usage" in out
