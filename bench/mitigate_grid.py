"""Post-hoc mitigation: an 11-point update-scale grid against 11 plain forward passes.

`forgetscope mitigate --scales 0,0.1,...,1` measures KL, L_f and ft_loss at every lambda. The
base predictions on the eval text are recorded once, so each lambda should cost about one
forward pass per eval set (the forgetting text and the held-out fine-tuning text). The
baseline is exactly that: 11 forward passes of the fine-tuned model (logits) over both
texts. The target is a ratio of at most 1.2.

Both are timed in this one process, interleaved, best of --repeats rounds, so the ratio is
measured under one load. The grid's time includes recording the base predictions and the
base's ft_loss, its bootstrap intervals (1000 resamples, as the CLI), and the rows' metric.

    python bench/mitigate_grid.py                  # the tiny default, 2 x 2048 eval tokens, 2048 ft tokens
    python bench/mitigate_grid.py --tokens 8192
"""

from __future__ import annotations

import argparse
import time

import torch

SCALES = [i / 10 for i in range(11)]
BATCH_SIZE = 16


def setup(tokens: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgetscope.data import group_into_blocks
    from forgetscope.tiny import corpora
    from forgetscope.tiny.model import ensure_tiny_base

    path = ensure_tiny_base()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(r=16, target_modules="all-linear", init_lora_weights=False, use_rslora=True)).eval()
    blocks = {d: group_into_blocks(corpora.load(d).heldout, tokenizer, 128, tokens) for d in ("scripture", "docs")}
    ft_blocks = group_into_blocks(corpora.load("code").heldout, tokenizer, 128, tokens)
    return model, blocks, ft_blocks


@torch.no_grad()
def forward_passes(model, blocks, ft_blocks, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        for ids in [*blocks.values(), ft_blocks]:
            for s in range(0, len(ids), BATCH_SIZE):
                _ = model(input_ids=ids[s : s + BATCH_SIZE]).logits
    return time.perf_counter() - started


def grid(model, blocks, ft_blocks) -> float:
    from forgetscope.mitigate.posthoc import mitigation_grid
    from forgetscope.settings import MitigationSettings

    started = time.perf_counter()
    mitigation_grid(model, blocks, ft_blocks, MitigationSettings(scales=SCALES, intruder_scales=[]), batch_size=BATCH_SIZE)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="Tokens per eval domain and of fine-tuning text.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, blocks, ft_blocks = setup(args.tokens)
    forward_passes(model, blocks, ft_blocks, 1)  # warm-up
    base, measured = [], []
    for _ in range(args.repeats):
        base.append(forward_passes(model, blocks, ft_blocks, len(SCALES)))
        measured.append(grid(model, blocks, ft_blocks))
    b, m = min(base), min(measured)
    tokens = sum(ids.numel() for ids in [*blocks.values(), ft_blocks])
    print(f"tiny default, rsLoRA r=16 all-linear, {tokens} tokens per pass, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'what':<44}{'seconds':>10}{'ratio':>8}")
    print(f"{'11 forward passes (baseline)':<44}{b:>10.2f}{1.0:>8.2f}")
    print(f"{'11-point scale grid (KL, L_f, ft_loss)':<44}{m:>10.2f}{m / b:>8.2f}")
    print(f"target: ratio <= 1.2 -> {'met' if m / b <= 1.2 else 'NOT met'}")


if __name__ == "__main__":
    main()
