"""The miniature experiment on a seconds-long budget: its corpus, its cache, its result, its CLI."""

from __future__ import annotations

import json

import pytest

import forgetscope.conjugate.miniature as miniature
from cli_helpers import assert_user_error, run_cli
from forgetscope.conjugate.miniature import MiniatureConfig, build_corpus, ensure_miniature_base, run_miniature
from forgetscope.conjugate.transforms.piglatin import PigLatin
from forgetscope.errors import UserInputError
from forgetscope.tiny.model import TinyConfig


def reduced(config: MiniatureConfig) -> MiniatureConfig:
    """A seconds-long version of `config`."""
    return MiniatureConfig(**{**config.model_dump(), **dict(
        vocab_size=400, hidden_size=32, layers=1, heads=2, intermediate_size=64, seq_len=64, pretrain_steps=30,
        pretrain_batch_size=8, finetune_steps=10, finetune_batch_size=4, rank=4, eval_tokens=512, max_documents=60)})


SMALL = reduced(MiniatureConfig(seed=0))


def test_corpus_withholds_the_finetuning_text_and_transforms_part_of_each_domain():
    corpus = build_corpus(SMALL)
    pig = PigLatin()
    assert corpus.finetune and not set(corpus.finetune) & set(corpus.pretrain["scripture"])
    for domain, docs in corpus.pretrain.items():
        transformed = corpus.pretrain_transformed[domain]
        assert docs and 0 < len(transformed) < len(docs)  # about half of them, as configured
        assert set(transformed) <= {pig.forward(d) for d in docs}
        assert not set(corpus.heldout[domain]) & set(docs)


def test_base_key_covers_pretraining_only():
    assert SMALL.base_key() != SMALL.model_copy(update=dict(transform="leetspeak")).base_key()
    assert SMALL.base_key() != SMALL.model_copy(update=dict(seed=1)).base_key()
    assert SMALL.base_key() == SMALL.model_copy(update=dict(finetune_steps=99, rank=2)).base_key()
    assert SMALL.base_key() != TinyConfig().key()


@pytest.mark.parametrize("change, fragment", [
    ({"transform": "klingon"}, "unknown miniature transform"),
    ({"finetune_domain": "poetry"}, "unknown fine-tuning domain"),
    ({"transformed_fraction": 0.0}, "transformed_fraction"),
])
def test_config_is_validated(change, fragment):
    with pytest.raises(UserInputError, match=fragment):
        type(SMALL)(**(SMALL.model_dump() | change))


@pytest.mark.slow
def test_runs_end_to_end_and_caches_the_base(tmp_path, monkeypatch):
    result = run_miniature(SMALL, cache_dir=tmp_path, progress=False)
    assert result["base"].startswith(str(tmp_path / "miniature-llama-"))
    for domain, values in result["final"].items():
        assert values["plain"] > 0 and values["transformed"] > 0, domain
        assert values["transformed_tokens"] > values["plain_tokens"] * 0.8  # the same text, transformed
        assert values["transformed_same_text"] == pytest.approx(
            values["transformed"] * values["transformed_tokens"] / values["plain_tokens"])
    assert [r["step"] for r in result["records"]][0] == 0 and result["records"][0]["kl"] == 0.0
    assert set(result["other_domains"]) == {"plain", "transformed", "transformed_same_text"}
    assert result["base_metrics"]["transformed_tokens"] > 0

    def no_pretraining(*args):
        raise AssertionError("the cached base should be reused")

    monkeypatch.setattr(miniature, "pretrain_miniature", no_pretraining)
    assert str(ensure_miniature_base(SMALL, tmp_path, progress=False)) == result["base"]
    assert not list(tmp_path.glob(".tmp-*"))  # the scratch directory was renamed into place


@pytest.mark.slow
def test_cli_prints_plain_vs_transformed_kl(tmp_path, monkeypatch, capsys):
    real = miniature.run_miniature
    seen = []

    def small_run(config, progress=True):
        seen.append(config)
        return real(reduced(config), cache_dir=tmp_path, progress=False)

    monkeypatch.setattr(miniature, "run_miniature", small_run)
    code, out, err = run_cli(["conjugate", "miniature", "--transform", "leetspeak",
                              "--finetune", "docs", "--seed", "1"], capsys)
    assert code == 0, err
    assert (seen[0].transform, seen[0].finetune_domain, seen[0].seed) == ("leetspeak", "docs", 1)
    assert "fine-tuned on plain docs" in out and "leetspeak" in out and "same text: " in out and "other domains" in out
    code, out, err = run_cli(["conjugate", "miniature", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["config"]["transform"] == "piglatin"
    assert_user_error(*run_cli(["conjugate", "miniature", "--finetune", "poetry"], capsys)[::2],
                      "unknown fine-tuning domain")
