"""`forgetscope train` and a one-point sweep of the same settings are the same run: one data
pipeline (`data.prepare_run_data`) cuts their text, so they train on, hold out and measure
the same sequences, and give the same records."""

from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import run_cli
from conftest import docs_text, scripture_text
from forgetscope.models import torch_threads
from forgetscope.sweep.config import parse_config
from forgetscope.sweep.run import run_sweep
from sweep_helpers import tiny_sweep_config

METRICS = ("step", "kl", "forgetting_ce", "hard_ce", "ft_loss", "train_loss", "trainable_params", "eval_tokens")


def test_train_and_a_one_point_sweep_give_the_same_records(llama_dir, eval_files, tmp_path, capsys):
    grid = {"rank": [2], "target_modules": [["q_proj", "v_proj"]], "learning_rate": [0.01], "seed": [3]}
    config = parse_config(tiny_sweep_config(llama_dir, eval_files, grid=grid))
    swept = run_sweep(config, tmp_path / "sweep", progress=False).records

    with torch_threads(config.resources.cpus):  # a sweep point's threads: the same float sums
        code, out, err = run_cli(
            ["train", "--base", llama_dir, "--train-data", eval_files[1], "--eval-data", eval_files[0], "--out", tmp_path / "run",
             "--rank", 2, "--target-modules", "q_proj,v_proj", "--learning-rate", 0.01, "--seed", 3,
             "--steps", config.steps, "--eval-points", config.eval_points, "--eval-tokens", config.eval_tokens,
             "--ft-eval-tokens", config.ft_eval_tokens, "--batch-size", config.batch_size, "--seq-len", config.seq_len,
             "--json"], capsys)
    assert code == 0, err
    trained = json.loads(out)

    assert len(trained) == len(swept) == config.eval_points
    for ours, theirs in zip(trained, swept):
        for key in METRICS:
            if theirs[key] is None:  # train_loss at step 0
                assert ours[key] is None, key
            else:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), key


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_the_split_never_depends_on_the_run_seed(tok):
    from forgetscope.data import prepare_run_data

    def cut(seed_of_nothing: int):
        torch.manual_seed(seed_of_nothing)  # the global generator must not matter either
        return prepare_run_data(tok, docs_text(300), {"scripture": scripture_text(40)}, seq_len=32, steps=4, batch_size=4,
                                eval_tokens=128, ft_eval_tokens=64)

    first, second = cut(0), cut(1)
    assert torch.equal(first.train_blocks, second.train_blocks)
    assert torch.equal(first.ft_eval_blocks, second.ft_eval_blocks)
    # one pass of the budget (4 steps x 4 sequences) plus 64 held-out tokens, of which 5% at most (1 block) is held out
    assert first.train_blocks.shape == (17, 32) and first.ft_eval_blocks.shape == (1, 32)
