"""The forgetting metric of a bfloat16 model against the same model in float32, with the output
head in float32 (now) and in bfloat16 (before: logits rounded to bfloat16 before the softmax).

The weights are the tiny default's, trained, rounded to bfloat16 once so both models hold the
same numbers; each adapter (LoRA r=8 on q,v, B drawn at a scale) is float32 in both, as PEFT
keeps it. Prints, per adapter scale, the float32 KL and the relative error of each bfloat16
path: a zero adapter shows the noise floor, larger ones the error where forgetting is small.

    python bench/bf16_head.py
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from forgetscope.base_cache import choose_base_source
from forgetscope.data import group_into_blocks
from forgetscope.heads import OutputHead
from forgetscope.metric import measure_forgetting
from forgetscope.models import load_causal_lm, load_tokenizer
from forgetscope.tiny import corpora
from forgetscope.tiny.model import ensure_tiny_base

SCALES = (0.0, 0.003, 0.01, 0.03)


def adapted(model, scale: float):
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return peft_model.eval()


def bf16_head(self, hidden: torch.Tensor) -> torch.Tensor:
    """The head as it ran before: in the weights' dtype, the logits upcast after."""
    return self.module(hidden.to(self.weight.dtype)).float()


def main() -> None:
    base_dir = ensure_tiny_base()
    tokenizer = load_tokenizer(str(base_dir))
    text = corpora.load("docs").heldout  # the demo's eval text
    ids = {"docs": group_into_blocks(text, tokenizer, 128, max_tokens=4 * 128)}
    print(f"tiny default, {ids['docs'].numel()} eval tokens; max |logit| ", end="")
    rows = []
    for scale in SCALES:
        full = load_causal_lm(str(base_dir))
        with torch.no_grad():
            for param in full.parameters():
                param.copy_(param.to(torch.bfloat16).float())
        half = load_causal_lm(str(base_dir), torch.bfloat16)
        half.load_state_dict(full.state_dict())
        full, half = adapted(full, scale), adapted(half, scale)
        if scale == 0.0:
            print(f"{float(full(input_ids=ids['docs'][:1]).logits.abs().max()):.1f}")
        exact = measure_forgetting(full, ids, n_bootstrap=0).overall["kl"]
        source = choose_base_source(half, ids, record=True)
        now = measure_forgetting(half, ids, base=source, n_bootstrap=0).overall["kl"]
        own = OutputHead._linear
        OutputHead._linear = bf16_head  # the old head, for this one measurement
        try:
            before = measure_forgetting(half, ids, base=source, n_bootstrap=0).overall["kl"]
        finally:
            OutputHead._linear = own
        rows.append((scale, exact, before, now))
    print("\n| adapter scale | KL float32 | KL bf16, bf16 head (before) | error | KL bf16, float32 head (now) | error |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for scale, exact, before, now in rows:
        errors = [f"{(v - exact) / exact:+.1%}" if exact else f"{v:+.2e} nats" for v in (before, now)]
        print(f"| {scale:g} | {exact:.3e} | {before:.3e} | {errors[0]} | {now:.3e} | {errors[1]} |")


if __name__ == "__main__":
    main()
