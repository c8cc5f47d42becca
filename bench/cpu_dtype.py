"""bfloat16 autocast against float32 on this CPU, for fine-tuning and for the forgetting metric.

Training: the same rsLoRA fine-tune of the tiny default (`forgetscope.train.finetune`,
r = 16 on all linear layers, batches of 8 x 128 tokens) with `bf16=False` and `bf16=True`
(the Trainer's CPU autocast); tokens per second, and the change in the fine-tuned loss and
in L_f at the last step. Metric: `measure_forgetting` of one adapter in float32, under
`torch.autocast("cpu", torch.bfloat16)`, and with the weights cast to bfloat16 (`measure
--dtype bfloat16`); tokens per second and the change in L_f. Runs alternate between the
settings and keep the best of --repeats, so the ratios are measured in one run.

    python bench/cpu_dtype.py [--steps 60] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from forgetscope.data import group_into_blocks
from forgetscope.metric import measure_forgetting
from forgetscope.models import load_causal_lm, load_tokenizer
from forgetscope.tiny import corpora
from forgetscope.tiny.model import ensure_tiny_base
from forgetscope.train import LoraSettings, TrainSettings, finetune

LORA = LoraSettings(rank=16, lora_alpha=16, target_modules="all-linear")


def train_once(base: str, tokenizer, train_blocks, eval_blocks, ft_eval_blocks, steps: int, bf16: bool) -> tuple[float, dict, torch.nn.Module]:
    """Seconds of one fine-tune, its last record and the adapted model."""
    model = load_causal_lm(base)
    settings = TrainSettings(steps=steps, batch_size=8, seq_len=128, learning_rate=1e-3, eval_points=2, dtype="bfloat16" if bf16 else "float32")
    started = time.perf_counter()
    records = finetune(model, tokenizer, LORA, settings, train_blocks, eval_blocks, ft_eval_blocks, progress=False)
    return time.perf_counter() - started, records[-1], model


def measure_once(model, base_model, eval_blocks, mode: str) -> tuple[float, float]:
    """Seconds and L_f of one measurement in `mode`: float32, autocast or bf16 weights."""
    if mode == "bf16 weights":
        model, base_model = model.to(torch.bfloat16), base_model.to(torch.bfloat16)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else contextlib.nullcontext()
    started = time.perf_counter()
    with context:
        result = measure_forgetting(model, eval_blocks, base=base_model, n_bootstrap=0, batch_size=16)
    seconds = time.perf_counter() - started
    if mode == "bf16 weights":
        model.to(torch.float32), base_model.to(torch.float32)
    return seconds, result.overall["forgetting_ce"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    args = parser.parse_args()
    torch.manual_seed(0)
    base = str(ensure_tiny_base())
    tokenizer = load_tokenizer(base)
    code = group_into_blocks(corpora.load("code").finetune, tokenizer, 128, args.steps * 8 * 128 + 4096)
    ft_eval_blocks, train_blocks = code[:32], code[32:]  # 4,096 held-out fine-tuning tokens
    eval_blocks = {d: group_into_blocks(corpora.load(d).heldout, tokenizer, 128, args.eval_tokens) for d in ("scripture", "docs")}
    train_tokens = args.steps * 8 * 128
    eval_tokens = sum(b.numel() for b in eval_blocks.values())

    train_s, last, model = {}, {}, None
    for _ in range(args.repeats):
        for bf16 in (False, True):
            seconds, last[bf16], adapted = train_once(base, tokenizer, train_blocks, eval_blocks, ft_eval_blocks, args.steps, bf16)
            train_s[bf16] = min(train_s.get(bf16, float("inf")), seconds)
            model = adapted if not bf16 else model
    print(f"fine-tuning: {args.steps} steps of 8 x 128 tokens (the callback's two measurements included); "
          f"ft_loss and L_f at step {last[False]['step']}")
    print(f"{'dtype':<18} {'tokens/s':>9} {'vs float32':>10} {'ft_loss':>8} {'L_f':>8} {'|d L_f|':>8}")
    for bf16, label in ((False, "float32"), (True, "bf16 autocast")):
        print(f"{label:<18} {train_tokens / train_s[bf16]:>9.0f} {train_s[False] / train_s[bf16]:>9.2f}x "
              f"{last[bf16]['ft_loss']:>8.4f} {last[bf16]['forgetting_ce']:>8.4f} "
              f"{abs(last[bf16]['forgetting_ce'] - last[False]['forgetting_ce']):>8.4f}")

    base_model = load_causal_lm(base)  # the fine-tune's LoRA layers are in `model`, without a PEFT wrapper
    modes = ("float32", "autocast", "bf16 weights")
    metric_s, values = {}, {}
    for _ in range(args.repeats):
        for mode in modes:
            seconds, values[mode] = measure_once(model, base_model, eval_blocks, mode)
            metric_s[mode] = min(metric_s.get(mode, float("inf")), seconds)
    print(f"\nmetric: the float32 fine-tune above against its base model, {eval_tokens} eval tokens")
    print(f"{'dtype':<18} {'tokens/s':>9} {'vs float32':>10} {'L_f':>8} {'|d L_f|':>8}")
    for mode in modes:
        print(f"{mode:<18} {eval_tokens / metric_s[mode]:>9.0f} {metric_s['float32'] / metric_s[mode]:>9.2f}x "
              f"{values[mode]:>8.4f} {abs(values[mode] - values['float32']):>8.4f}")


if __name__ == "__main__":
    main()
