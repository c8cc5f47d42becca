"""Recorded base predictions: the same numbers as running the base model, for one forward pass
per measurement; a cache recorded for other weights or other tokens is detected and redone."""

from __future__ import annotations

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from forgetscope.base_cache import BaseSource, choose_base_source, record_base_predictions, usable_reason
from forgetscope.data import load_eval_blocks
from forgetscope.metric import measure_forgetting

SEQ_LEN = 32


@pytest.fixture(scope="module")
def blocks(tokenizer_dir, eval_files):
    return load_eval_blocks(eval_files, AutoTokenizer.from_pretrained(tokenizer_dir), SEQ_LEN, max_tokens=320)


def adapted(model_dir, seed: int = 0, **lora):
    torch.manual_seed(seed)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **lora)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_cache_path_gives_the_numbers_of_the_two_model_path(arch, llama_dir, gpt2_dir, blocks, tmp_path):
    model_dir = {"llama": llama_dir, "gpt2": gpt2_dir}[arch]
    target = ["q_proj", "v_proj"] if arch == "llama" else ["c_attn"]
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, target_modules=target, init_lora_weights=False)).eval()
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    cached = record_base_predictions(model, blocks, tmp_path / "base.safetensors")
    with_cache = measure_forgetting(model, blocks, n_bootstrap=0, base=BaseSource("recorded", predictions=cached))
    naive = measure_forgetting(model, blocks, base=base, n_bootstrap=0)
    assert with_cache.overall["kl"] > 0
    for a, b in zip(with_cache.sequences, naive.sequences):
        assert a["forgetting_ce"] == pytest.approx(b["forgetting_ce"], abs=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-5)


def base_passes(model) -> list[int]:
    """A list that grows by one at every forward pass of `model`'s base transformer."""
    passes: list[int] = []
    model.get_base_model().model.register_forward_pre_hook(lambda module, args: passes.append(1))
    return passes


def test_a_cache_for_the_same_base_and_tokens_is_read_back_without_running_the_model(llama_dir, blocks, tmp_path, caplog):
    path = tmp_path / "base.safetensors"
    model = adapted(llama_dir)
    passes = base_passes(model)
    first = record_base_predictions(model, blocks, path)
    assert passes  # recording runs the base: the spy sees it
    written = path.stat()
    other_adapter = adapted(llama_dir, seed=5)  # other adapter, same base: reused
    passes = base_passes(other_adapter)
    with caplog.at_level(logging.INFO, logger="forgetscope.base_cache"):
        again = record_base_predictions(other_adapter, blocks, path)
    assert passes == [] and not caplog.records
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # not rewritten
    assert again.key == first.key and all(torch.equal(again.hidden[name], first.hidden[name]) for name in blocks)


def test_a_cache_for_other_weights_or_other_tokens_is_recorded_again(llama_dir, blocks, tmp_path, caplog):
    path = tmp_path / "base.safetensors"
    first = record_base_predictions(adapted(llama_dir), blocks, path)

    other_base = AutoModelForCausalLM.from_pretrained(llama_dir)
    with torch.no_grad():
        other_base.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    other = get_peft_model(other_base, LoraConfig(r=4, target_modules=["q_proj"])).eval()
    with caplog.at_level(logging.INFO, logger="forgetscope.base_cache"):
        rebuilt = record_base_predictions(other, blocks, path)
    assert rebuilt.key != first.key and "stale" in caplog.text
    fresh = measure_forgetting(other, blocks, n_bootstrap=0, base=BaseSource("recorded", predictions=rebuilt))
    assert fresh.overall["kl"] == 0.0  # B = 0: the rebuilt cache matches the new base exactly

    fewer = {name: ids[:3] for name, ids in blocks.items()}
    assert record_base_predictions(other, fewer, path).key != rebuilt.key


def test_a_trained_head_cannot_use_the_cache_and_says_why(llama_dir, blocks):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir),
                           LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    assert "head" in usable_reason(model)
    with pytest.raises(ValueError, match="head"):
        record_base_predictions(model, blocks)


def test_bfloat16_storage_halves_the_file_and_stays_close(llama_dir, blocks, tmp_path):
    model = adapted(llama_dir)
    full = record_base_predictions(model, blocks, tmp_path / "f32.safetensors")
    half = record_base_predictions(model, blocks, tmp_path / "bf16.safetensors", storage_dtype=torch.bfloat16)
    assert (tmp_path / "bf16.safetensors").stat().st_size < 0.55 * (tmp_path / "f32.safetensors").stat().st_size
    a = measure_forgetting(model, blocks, n_bootstrap=0, base=BaseSource("recorded", predictions=full)).overall["forgetting_ce"]
    b = measure_forgetting(model, blocks, n_bootstrap=0, base=BaseSource("recorded", predictions=half)).overall["forgetting_ce"]
    assert b == pytest.approx(a, rel=1e-2)


def test_measure_with_a_cache_dir_reuses_recorded_predictions_across_adapters(llama_dir, eval_files, tmp_path, capsys):
    import json

    from cli_helpers import run_cli

    adapters = []
    for seed in (1, 2):
        path = tmp_path / f"adapter{seed}"
        adapted(llama_dir, seed=seed).save_pretrained(path)
        adapters.append(path)
    common = ["measure", "--base", llama_dir, "--eval-data", eval_files[0], "--seq-len", SEQ_LEN, "--max-tokens", 320,
              "--bootstrap", 0, "--json"]
    results = []
    for adapter in adapters:
        code, out, err = run_cli([*common, "--adapter", adapter, "--cache-dir", tmp_path / "cache"], capsys)
        assert code == 0, err
        results.append(json.loads(out))
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1  # one recording served both adapters
    code, out, err = run_cli([*common, "--adapter", adapters[1]], capsys)  # no cache: disable_adapter() path
    assert json.loads(out)["kl"] == pytest.approx(results[1]["kl"], abs=1e-6)


def test_the_callback_falls_back_when_the_head_is_trained(llama_dir, blocks):
    from forgetscope.callback import ForgettingCallback

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir),
                           LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    callback = ForgettingCallback(None, blocks, eval_steps=[0])

    class State:
        max_steps, global_step, is_world_process_zero = 1, 0, True

    callback.on_train_begin(None, State(), None, model=model)
    assert callback.base_source.kind == "adapter" and callback.records[0]["kl"] == 0.0
    assert "output head is being trained" in callback.base_source.reason


def trained_head(llama_dir):
    return get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir),
                          LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))


@pytest.mark.parametrize(
    ("case", "expected_kind", "reason_fragment"),
    [
        ("separate base", "model", "separate base model"),
        ("record", "recorded", None),
        ("already recorded", "recorded", None),
        ("cache dir", "recorded", None),
        ("nothing asked", "adapter", "not asked"),
        ("trained head, record", "adapter", "output head is being trained"),
    ],
)
def test_one_function_chooses_where_base_predictions_come_from(case, expected_kind, reason_fragment, llama_dir, blocks, tmp_path):
    model = trained_head(llama_dir) if case.startswith("trained head") else adapted(llama_dir)
    kwargs = {
        "separate base": {"base": AutoModelForCausalLM.from_pretrained(llama_dir)},
        "record": {"record": True},
        "already recorded": {"recorded": record_base_predictions(adapted(llama_dir, seed=3), blocks)},
        "cache dir": {"cache_dir": tmp_path / "cache"},
        "nothing asked": {},
        "trained head, record": {"record": True},
    }[case]
    source = choose_base_source(model, blocks, **kwargs)
    assert source.kind == expected_kind
    assert (source.reason is None) if reason_fragment is None else (reason_fragment in source.reason)
    if case == "cache dir":
        assert len(list((tmp_path / "cache").glob("base-*.safetensors"))) == 1
    if expected_kind == "recorded":
        assert set(source.predictions.hidden) == set(blocks)


def test_a_model_that_rescales_its_logits_after_the_head_falls_back_and_says_why(llama_dir, blocks, caplog):
    from transformers import LlamaForCausalLM

    from forgetscope.base_cache import try_record_base_predictions

    class ScaledLogits(LlamaForCausalLM):  # like Granite's logits_scaling: invisible to usable_reason
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits / 4.0
            return out

    model = get_peft_model(ScaledLogits.from_pretrained(llama_dir), LoraConfig(r=4, target_modules=["q_proj"])).eval()
    assert usable_reason(model) is None
    with caplog.at_level(logging.INFO, logger="forgetscope.base_cache"):
        assert try_record_base_predictions(model, blocks) is None
    assert "misses the model's logits" in caplog.text


def test_with_recorded_predictions_no_full_vocabulary_logits_are_made(llama_dir, blocks):
    """The head runs on chunks of positions only: memory stays near one model's, whatever the batch."""
    from forgetscope.allocations import AllocationTracker

    model = adapted(llama_dir)
    recorded = record_base_predictions(model, blocks)
    vocab = model.get_output_embeddings().weight.shape[0]
    with AllocationTracker(keep=True) as tracked:
        measure_forgetting(model, blocks, n_bootstrap=0, batch_size=8, chunk_size=16, base=BaseSource("recorded", predictions=recorded))
    assert 0 < tracked.largest_with(vocab) <= 16 * vocab




def test_a_model_whose_weights_are_not_here_still_has_a_fingerprint(llama_dir):
    """Meta (or offloaded) parameters hold no data to sample: they count by name and shape."""
    from transformers import AutoConfig

    from forgetscope.base_cache import cache_key

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(llama_dir))
    blocks = {"a": torch.zeros(2, 8, dtype=torch.long)}
    assert cache_key(skeleton, blocks) == cache_key(skeleton, blocks)
    assert cache_key(skeleton, blocks) != cache_key(AutoModelForCausalLM.from_pretrained(llama_dir), blocks)
