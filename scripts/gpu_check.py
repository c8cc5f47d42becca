"""The GPU check of the scale work, in one go (under 5 minutes on one GPU): the 8B-shaped slice
of `bench/scale_memory.py` (Llama-3-8B's widths, 2 layers, random weights, no hub) in
bfloat16 on CUDA, reporting

- `torch.cuda.max_memory_allocated` of each path of the benchmark against the same budgets;
- the KL of one adapter measured in bfloat16 against the same weights in float32;
- tokens per second of `measure` and of one training step.

    python scripts/gpu_check.py [--tokens 2048]

Prints markdown tables for the README's "Scale" section.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from scale_memory import GIB, LLAMA3_8B, Shape, adapt, run_paths, slice_model  # noqa: E402


def kl_bf16_against_float32(s: Shape, tokens: int) -> tuple[float, float]:
    """One adapter's KL on the slice in float32 and in bfloat16 (the same weights, rounded once)."""
    from forgetscope.base_cache import choose_base_source
    from forgetscope.metric import measure_forgetting

    ids = {"eval": torch.randint(0, s.vocab, (4, tokens), generator=torch.Generator().manual_seed(3))}
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        model = slice_model(s, torch.bfloat16, "cuda").to(dtype)  # bfloat16 first: both hold the same numbers
        torch.manual_seed(1)
        peft_model = adapt(model, 16, "all-linear")
        source = choose_base_source(peft_model, ids, record=True, batch_size=1)
        results.append(measure_forgetting(peft_model, ids, base=source, batch_size=1, n_bootstrap=0).overall["kl"])
        del model, peft_model, source
        torch.cuda.empty_cache()
    return results[0], results[1]


def throughput(s: Shape, tokens: int) -> tuple[float, float]:
    """Tokens per second of a measurement (recorded base) and of one LoRA training step, bfloat16."""
    from forgetscope.base_cache import choose_base_source
    from forgetscope.metric import measure_forgetting

    model = adapt(slice_model(s, torch.bfloat16, "cuda"), 16, "all-linear")
    ids = {"eval": torch.randint(0, s.vocab, (8, tokens), generator=torch.Generator().manual_seed(4))}
    source = choose_base_source(model, ids, record=True, batch_size=4)
    measure_forgetting(model, ids, base=source, batch_size=4, n_bootstrap=0)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    measure_forgetting(model, ids, base=source, batch_size=4, n_bootstrap=0)
    torch.cuda.synchronize()
    measure_rate = ids["eval"].numel() / (time.perf_counter() - start)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = ids["eval"][:1].cuda()
    rates = []
    for _ in range(3):  # the first step warms up
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", torch.bfloat16):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        rates.append(batch.numel() / (time.perf_counter() - start))
    return measure_rate, max(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: scripts/gpu_check.py needs a CUDA GPU (the CPU stand-in is bench/scale_memory.py)")
    s = Shape(**{**LLAMA3_8B, "layers": 2})
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; 8B slice {s}, bfloat16, {args.tokens} tokens")
    rows = run_paths(s, torch.bfloat16, "cuda", args.tokens, args.tokens)
    print("\n| path | peak allocated (GiB) | budget (GiB) | peak / budget | seconds | full 8B (GiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r.path} | {r.peak / GIB:.2f} | {r.budget / GIB:.2f} | {r.peak / r.budget:.2f} | {r.seconds:.1f} | {r.full_8b / GIB:.1f} |")
    torch.cuda.empty_cache()
    exact, rounded = kl_bf16_against_float32(s, args.tokens)
    print(f"\nKL of one adapter: float32 {exact:.6f}, bfloat16 {rounded:.6f} ({(rounded - exact) / exact:+.2%})")
    measure_rate, train_rate = throughput(s, args.tokens)
    print(f"tokens per second: measure {measure_rate:,.0f}, one training step {train_rate:,.0f} (2 of 32 layers)")


if __name__ == "__main__":
    main()
