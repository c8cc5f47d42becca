"""Forgetting measurement three ways, on the same eval tokens, through `measure_forgetting`:

- naive: a separate base model next to the fine-tuned one (two models, two forward passes);
- disable_adapter: the PEFT model with its adapter switched off (one copy of the weights,
  two forward passes, the adapter unmerged);
- cache: base final hidden states recorded once, then one forward pass of the fine-tuned
  model without its head; both models' logits are made from hidden states chunk by chunk;
- cache-bf16: the same with the hidden states stored in bfloat16 (half the file).

Prints tokens per second, the ratio to naive, the ideal ratio for the model's shape, peak
memory against a process that runs one model's plain forward pass, and the largest
per-token difference of L_f from naive. Speeds come from one process that interleaves the
paths (best of --repeats rounds), so every ratio is measured in the same run under the same
load; memory comes from one fresh process per path.

    python bench/forgetting_eval.py            # tiny default and a Llama-shaped model
    python bench/forgetting_eval.py --models tiny
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

SHAPES = {
    # A Llama-shaped model as wide as a few CPU minutes allow (random weights: speed and
    # exactness depend on the shape, not on training).
    "llama-768": {"hidden_size": 768, "layers": 6, "heads": 12, "intermediate_size": 2048, "vocab_size": 32000},
}
PATHS = ("naive", "disable_adapter", "cache", "cache-bf16")
BATCH_SIZE = 8
# glibc keeps freed blocks under its (adaptive) mmap threshold in its arenas, so one process's
# peak varied by up to 2x from run to run (971 to 2,183 MB for the same cache child); a fixed
# threshold returns big blocks at once and makes every path's peak, one_model's included,
# the memory its work needs.
CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def load_base(model_name: str):
    from transformers import AutoModelForCausalLM

    from forgetscope.tiny.model import llama

    if model_name == "tiny":
        from forgetscope.tiny.model import ensure_tiny_base

        return AutoModelForCausalLM.from_pretrained(ensure_tiny_base()).eval().requires_grad_(False)
    return llama(max_positions=512, **SHAPES[model_name]).eval().requires_grad_(False)


def with_adapter(model):
    """The same LoRA fine-tune every time (random, non-zero B so that there is forgetting)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", init_lora_weights=False)).eval()


def eval_blocks(vocab: int) -> dict[str, torch.Tensor]:
    return {"eval": torch.randint(0, vocab, (32, 256), generator=torch.Generator().manual_seed(0))}


def setups(model_name: str, paths) -> dict:
    """`{path: measure_forgetting keyword arguments}`; the fine-tuned model is merged wherever
    the path allows, so that naive and cache run the very same fine-tuned forward pass."""
    from forgetscope.base_cache import record_base_predictions

    out = {}
    for path in paths:
        if path == "naive":
            out[path] = dict(finetuned=with_adapter(load_base(model_name)).merge_and_unload(), base=load_base(model_name))
        elif path == "disable_adapter":
            out[path] = dict(finetuned=with_adapter(load_base(model_name)))
        elif path.startswith("cache"):
            base = load_base(model_name)
            dtype = torch.bfloat16 if path == "cache-bf16" else torch.float32
            started = time.perf_counter()
            recorded = record_base_predictions(base, eval_blocks(base.config.vocab_size), batch_size=BATCH_SIZE,
                                               storage_dtype=dtype)
            out[path] = dict(finetuned=with_adapter(base).merge_and_unload(), base_predictions=recorded,
                             record_seconds=time.perf_counter() - started)
    return out


@torch.no_grad()
def measure(setup: dict) -> float:
    """Seconds for one measurement of L_f on the eval blocks."""
    from forgetscope.base_cache import BaseSource
    from forgetscope.metric import measure_forgetting

    kwargs = {k: v for k, v in setup.items() if k not in ("record_seconds", "base_predictions")}
    if "base_predictions" in setup:  # measure_forgetting takes recorded predictions as a BaseSource
        kwargs["base"] = BaseSource("recorded", predictions=setup["base_predictions"])
    started = time.perf_counter()
    measure_forgetting(blocks=eval_blocks(kwargs["finetuned"].config.vocab_size), batch_size=BATCH_SIZE, n_bootstrap=0, **kwargs)
    return time.perf_counter() - started


@torch.no_grad()
def per_token_ce(setup: dict) -> torch.Tensor:
    """L_f at every scored position, for the difference from naive."""
    from forgetscope.base_cache import final_hidden
    from forgetscope.metric import token_stats

    model = setup["finetuned"]
    ids = eval_blocks(model.config.vocab_size)["eval"]
    values = []
    for s in range(0, len(ids), BATCH_SIZE):
        x = ids[s : s + BATCH_SIZE]
        targets = x[:, 1:].reshape(-1)
        if "base_predictions" in setup:
            width = model.config.hidden_size
            base = setup["base_predictions"].hidden["eval"][s : s + len(x), :-1].reshape(-1, width)
            ft = final_hidden(model, x)[:, :-1].reshape(-1, width)
            values.append(token_stats(base, ft, targets, head=model.get_output_embeddings())["forgetting_ce"])
            continue
        if "base" in setup:
            p = setup["base"](input_ids=x).logits
        else:
            with model.disable_adapter():
                p = model(input_ids=x).logits
        q = model(input_ids=x).logits
        v = q.shape[-1]
        values.append(token_stats(p[:, :-1].reshape(-1, v), q[:, :-1].reshape(-1, v), targets)["forgetting_ce"])
    return torch.cat(values)


def ideal_ratio(model: torch.nn.Module) -> float:
    """Two full forwards against one forward plus the output head (matmul FLOPs per token)."""
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    return 2 * (body + head) / (body + 2 * head)


def speed_run(model_name: str, repeats: int) -> dict:
    """Interleaved timings of the three paths in this process, and their per-token values."""
    runs = setups(model_name, PATHS)
    seconds = {path: float("inf") for path in PATHS}
    for _ in range(repeats):
        for path in PATHS:
            seconds[path] = min(seconds[path], measure(runs[path]))
    values = {path: per_token_ce(runs[path]) for path in PATHS}
    tokens = eval_blocks(1)["eval"].numel()
    return {
        "tokens_per_s": {path: tokens / seconds[path] for path in PATHS},
        "max_diff": {path: float((values[path] - values["naive"]).abs().max()) for path in PATHS},
        "ideal": ideal_ratio(runs["naive"]["base"]),
        "record_seconds": runs["cache"]["record_seconds"],
    }


@torch.no_grad()
def memory_child(path: str, model_name: str) -> float:
    """Peak resident MB of a fresh process that does one measurement by `path` (or, for
    `one_model`, one model's plain forward pass over the same batches). Every child imports
    the same libraries first, so that the comparison is of the work, not of the imports."""
    import peft  # noqa: F401

    import forgetscope.base_cache  # noqa: F401
    import forgetscope.metric  # noqa: F401

    if path == "one_model":
        model = load_base(model_name)
        ids = eval_blocks(model.config.vocab_size)["eval"]
        for s in range(0, len(ids), BATCH_SIZE):
            model(input_ids=ids[s : s + BATCH_SIZE]).logits.sum()
    else:
        measure(setups(model_name, [path])[path])
    return peak_resident_mb()


def peak_resident_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: the latter
    survives exec, so a child would report its parent's peak when that was higher."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: may include the parent's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "llama-768"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one path in its own process, so that its peak memory is its own
        print(json.dumps(memory_child(*args.child)))
        return
    print(f"{'model':<10} {'path':<16} {'tokens/s':>9} {'vs naive':>9} {'ideal':>6} {'of ideal':>8} {'peak MB':>8} "
          f"{'vs one model':>12} {'max |d L_f|':>11}")
    for model_name in args.models:
        speed = speed_run(model_name, args.repeats)
        peak = {path: json.loads(subprocess.run([sys.executable, __file__, "--child", path, model_name], capture_output=True,
                                                text=True, check=True, env=CHILD_ENV).stdout.strip().splitlines()[-1])
                for path in (*PATHS, "one_model")}
        naive = speed["tokens_per_s"]["naive"]
        for path in PATHS:
            ratio = speed["tokens_per_s"][path] / naive
            ideal = speed["ideal"] if path.startswith("cache") else 1.0
            print(f"{model_name:<10} {path:<16} {speed['tokens_per_s'][path]:>9.0f} {ratio:>8.2f}x {ideal:>5.2f}x "
                  f"{ratio / ideal:>8.2f} {peak[path]:>8.0f} {peak[path] / peak['one_model']:>11.2f}x {speed['max_diff'][path]:>11.2e}")
        print(f"{model_name:<10} {'(one model)':<16} {'':>9} {'':>9} {'':>6} {'':>8} {peak['one_model']:>8.0f}")
        print(f"{model_name:<10} {'(recording)':<16} base hidden states recorded once in {speed['record_seconds']:.2f} s")
    print("\nideal: two full forward passes against one forward plus the output head (matmul FLOPs per token);"
          "\nof ideal: the measured ratio over the ideal one (target >= 0.9 for cache);"
          "\nvs one model: peak resident memory against a process that runs one model's forward pass only (target <= 1.1);"
          "\nmax |d L_f|: largest per-token difference of forgetting_ce from naive, float32 (target <= 1e-5).")


if __name__ == "__main__":
    main()
