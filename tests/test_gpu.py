"""The metric on CUDA gives the CPU's numbers, on the tests' tiny Llama with a random LoRA.
Marked `gpu` (and `multi_gpu`): tests/conftest.py skips them on a machine without enough
CUDA devices."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from forgetscope.base_cache import BaseSource, record_base_predictions
from forgetscope.data import load_eval_blocks
from forgetscope.metric import METRIC_KEYS, ForgettingResult, measure_forgetting

SEQ_LEN = 32


@pytest.fixture(scope="module")
def blocks(tokenizer_dir, eval_files):
    return load_eval_blocks(eval_files, AutoTokenizer.from_pretrained(tokenizer_dir), SEQ_LEN, max_tokens=320)


def adapted(llama_dir, device: str):
    """The same random (B != 0) LoRA fine-tune on every call, on `device`."""
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir), config).to(device).eval()


def assert_same_numbers(got: ForgettingResult, want: ForgettingResult) -> None:
    assert want.overall["kl"] > 0  # a fine-tune that forgets: the comparison is not of zeros
    for scope, (a, b) in {"overall": (got.overall, want.overall),
                          **{name: (got.domains[name], want.domains[name]) for name in want.domains}}.items():
        for key in METRIC_KEYS:
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), (scope, key)


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["adapter", "recorded"])
def test_the_metric_on_cuda_matches_the_cpu(path, llama_dir, blocks):
    """Both base paths: `disable_adapter()` on the fine-tune, and recorded hidden states (kept
    on the CPU, moved to the model's device batch by batch) through the model's own head."""
    results = {}
    for device in ("cpu", "cuda"):
        model = adapted(llama_dir, device)
        base = BaseSource("recorded", predictions=record_base_predictions(model, blocks)) if path == "recorded" else None
        results[device] = measure_forgetting(model, blocks, base=base, n_bootstrap=0)
    assert_same_numbers(results["cuda"], results["cpu"])


@pytest.mark.gpu
@pytest.mark.multi_gpu
def test_a_separate_base_model_on_another_cuda_device_gives_the_cpu_numbers(llama_dir, blocks):
    """The base's logits are moved to the fine-tune's device, whichever device the base is on."""
    cpu = measure_forgetting(adapted(llama_dir, "cpu"), blocks, n_bootstrap=0,
                             base=AutoModelForCausalLM.from_pretrained(llama_dir).eval())
    split = measure_forgetting(adapted(llama_dir, "cuda:0"), blocks, n_bootstrap=0,
                               base=AutoModelForCausalLM.from_pretrained(llama_dir).to("cuda:1").eval())
    assert_same_numbers(split, cpu)
