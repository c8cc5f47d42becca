"""Peak memory of forgetscope's paths on an 8B-shaped slice, against budgets worked out from
the shapes, and the extrapolation to the full 8B model and to `examples/llama2-7b-gpu.yaml`.

The slice has Llama-3-8B's widths (hidden 4096, MLP 14336, 32 query and 8 KV heads, a
128,256-token vocabulary) and 2 layers, with random weights. Each path runs once under
`forgetscope.allocations.AllocationTracker` (on a CPU) or `torch.cuda.max_memory_allocated`
(on a GPU); its peak is the resident weights plus the most tensor bytes it allocated at once.
The budget of a path is the weights plus what the path must hold (`Budget` below says what,
term by term). The extrapolation scales each activation term to 32 layers and the target
token count, times the ratio the slice measured.

    python bench/scale_memory.py                     # CPU: float32, 256 tokens (about 10 minutes on 2 cores)
    python bench/scale_memory.py --dtype bfloat16 --tokens 2048 --device cuda   # what scripts/gpu_check.py runs

On a CPU without bfloat16 matrix units (no AVX512-BF16 or AMX) a bfloat16 matmul runs at
about 0.3 GFLOP/s, so the CPU default is float32; the bfloat16 paths are covered, at small
widths, by `tests/test_scale.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

LLAMA3_8B = {"hidden": 4096, "mlp": 14336, "heads": 32, "kv_heads": 8, "vocab": 128_256, "layers": 32}
LLAMA2_7B = {"hidden": 4096, "mlp": 11008, "heads": 32, "kv_heads": 32, "vocab": 32_000, "layers": 32}
GIB = 2**30


@dataclass
class Shape:
    hidden: int
    mlp: int
    heads: int
    kv_heads: int
    vocab: int
    layers: int

    @property
    def kv(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    @property
    def layer_params(self) -> int:
        return 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv + 3 * self.hidden * self.mlp + 2 * self.hidden

    def weights(self, nbytes: int) -> int:
        return nbytes * (self.layers * self.layer_params + 2 * self.vocab * self.hidden + self.hidden)

    def lora_params(self, rank: int, modules: str = "all-linear") -> int:
        h, kv, m = self.hidden, self.kv, self.mlp
        pairs = {"all-linear": [(h, h), (h, kv), (h, kv), (h, h), (h, m), (h, m), (m, h)], "q,v": [(h, h), (h, kv)]}[modules]
        return self.layers * sum(rank * (i + o) for i, o in pairs)


def chunk_positions(vocab: int) -> int:
    from forgetscope.metric import chunk_positions as positions

    return positions(vocab)


class Budget:
    """What each path must hold besides the weights, from the shapes (bytes). `b` is the
    weights' bytes per element; float32 work (logits, the LoRA inputs PEFT upcasts, the
    norms' internals) is 4 bytes."""

    @staticmethod
    def head_chunk(s: Shape, b: int) -> int:
        """The metric's vocabulary work on one chunk: the two sides' logits, p, log p, log q
        (float32), and the float32 slice of a low-precision head being upcast."""
        from forgetscope.heads import HEAD_SLICE_ELEMENTS

        slices = 2 * HEAD_SLICE_ELEMENTS * 4 if b < 4 else 0
        return 4 * chunk_positions(s.vocab) * s.vocab * 4 + slices

    @staticmethod
    def inference(s: Shape, b: int, tokens: int) -> int:
        """One layer's forward at its widest (the MLP: gate, up, their product and the
        activation; the residual stream and the norm's float32 internals)."""
        return tokens * (b * (3 * s.mlp + 2 * s.hidden) + 8 * s.hidden)

    @staticmethod
    def saved_per_layer(s: Shape, b: int, tokens: int) -> int:
        """What backward needs of one layer: its inputs and norms, q, k, v (and their rotated
        copies), the attention output, the MLP's four [tokens, mlp] tensors, the norms' float32
        internals, and (low-precision weights) the float32 copies of each adapted input."""
        lora_casts = 4 * (6 * s.hidden + s.mlp) if b < 4 else 0
        return tokens * (b * (8 * s.hidden + 3 * s.kv + 4 * s.mlp) + 16 * s.hidden + lora_casts)

    @staticmethod
    def head_training(s: Shape, b: int, tokens: int) -> int:
        """The training loss's logits (the model's own), their float32 copy and its gradient."""
        return tokens * s.vocab * (b + 8)

    @staticmethod
    def optimizer(lora_params: int) -> int:
        """float32 LoRA parameters, their gradients and AdamW's two moments."""
        return 16 * lora_params


@dataclass
class Row:
    path: str
    peak: int
    budget: int
    weights: int
    seconds: float
    full_8b: int
    """The budget at 32 layers and the target tokens, times this row's measured ratio."""


def slice_model(s: Shape, dtype: torch.dtype, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=s.hidden, intermediate_size=s.mlp, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                         vocab_size=s.vocab, num_hidden_layers=s.layers, max_position_embeddings=8192, rope_theta=500_000.0,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval().requires_grad_(False)


def adapt(model, rank: int, modules: str):
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if modules == "all-linear" else ["q_proj", "v_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=16, target_modules=targets, use_rslora=True, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: B non-zero, so there is forgetting to measure
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return peft_model


@contextlib.contextmanager
def peak_bytes(device: str) -> Iterator[Callable[[], int]]:
    """`peak()` after the block: the most tensor bytes allocated at once inside it."""
    if device == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        yield lambda: torch.cuda.max_memory_allocated() - start
        return
    from forgetscope.allocations import AllocationTracker

    with AllocationTracker() as tracked:
        yield lambda: tracked.peak_bytes


def run_paths(s: Shape, dtype: torch.dtype, device: str, tokens: int, target_tokens: int, only: set[str] | None = None) -> list[Row]:
    """Every path of the benchmark on a slice of shape `s`."""
    from forgetscope.allocations import tensor_bytes
    from forgetscope.base_cache import choose_base_source
    from forgetscope.meter import ForgettingMeter
    from forgetscope.metric import measure_forgetting
    from forgetscope.mitigate.posthoc import mitigation_grid
    from forgetscope.mitigate.training.kl import ReplayDistillation
    from forgetscope.settings import MitigationSettings

    b = torch.empty(0, dtype=dtype).element_size()
    full = Shape(**LLAMA3_8B)
    generator = torch.Generator().manual_seed(2)
    ids = lambda n: torch.randint(0, s.vocab, (n, tokens), generator=generator)  # noqa: E731
    blocks, ft_blocks, replay = {"eval": ids(2)}, ids(1), ids(4)
    rows: list[Row] = []

    def row(name: str, work: Callable[[], object], weights: int, budget: Callable[[Shape, int], int]) -> None:
        if only and name.split(" ")[0] not in only:
            return
        start = time.perf_counter()
        with peak_bytes(device) as peak:
            work()
        seconds = time.perf_counter() - start
        measured, planned = weights + peak(), weights + budget(s, tokens)
        models = max(1, round(weights / s.weights(b)))  # WiSE-FT holds the base and the fine-tune
        extrapolated = int((models * full.weights(b) + budget(full, target_tokens)) * measured / planned)
        rows.append(Row(name, measured, planned, weights, seconds, extrapolated))
        print(f"  {name}: {measured / GIB:.2f} GiB of {planned / GIB:.2f} GiB budgeted, {seconds:.0f} s", flush=True)

    model = slice_model(s, dtype, device)
    peft_model = adapt(model, 16, "all-linear")
    weights = tensor_bytes(peft_model)
    inference = lambda sh, t: Budget.inference(sh, b, t) + Budget.head_chunk(sh, b) + 2 * t * sh.hidden * b  # noqa: E731

    with tempfile.TemporaryDirectory() as cache:
        source = choose_base_source(peft_model, blocks, cache_dir=cache)  # recorded before: measure reads the file
        row("measure (recorded base)", lambda: measure_forgetting(peft_model, blocks, base=source, batch_size=1, n_bootstrap=0),
            weights, inference)
        meter = ForgettingMeter(blocks, ft_eval_blocks=ft_blocks, base_source=source, batch_size=1)
        row("callback measurement", lambda: meter.record(peft_model, 0), weights, inference)

    def train_step(checkpointing: bool) -> None:
        from transformers import Trainer, TrainingArguments

        data = [{"input_ids": ft_blocks[0], "labels": ft_blocks[0]}]
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(output_dir=out, max_steps=1, per_device_train_batch_size=1, activation_checkpointing=checkpointing,
                                     activation_checkpointing_kwargs={"use_reentrant": False}, bf16=dtype == torch.bfloat16,
                                     use_cpu=device == "cpu", report_to="none", save_strategy="no", disable_tqdm=True)
            Trainer(model=peft_model, args=args, train_dataset=data).train()
        if checkpointing:
            peft_model.gradient_checkpointing_disable()

    def training(checkpointing: bool) -> Callable[[Shape, int], int]:
        def budget(sh: Shape, t: int) -> int:
            layers = (sh.layers * t * sh.hidden * b + Budget.saved_per_layer(sh, b, t)) if checkpointing \
                else sh.layers * Budget.saved_per_layer(sh, b, t)
            return layers + Budget.head_training(sh, b, t) + Budget.optimizer(sh.lora_params(16))
        return budget

    peft_model.config.use_cache = False
    row("train step r=16 all-linear", lambda: train_step(False), weights, training(False))
    row("train step r=16 all-linear + checkpointing", lambda: train_step(True), weights, training(True))

    distillation = ReplayDistillation(peft_model, replay, batch_size=1, seed=0)  # records the replay base before

    def kl_penalty() -> None:
        peft_model.train()
        distillation.penalty(peft_model).backward()
        peft_model.zero_grad(set_to_none=True)
        peft_model.eval()

    row("KL penalty (forward + backward)", kl_penalty, weights + tensor_bytes_of(distillation.hidden),
        lambda sh, t: sh.layers * Budget.saved_per_layer(sh, b, t) + Budget.head_chunk(sh, b) * 2 + 4 * sh.lora_params(16))

    settings = MitigationSettings(scales=[0.0, 0.5, 1.0], intruder_scales=[0.0, 0.5])

    def grid_budget(sh: Shape, t: int) -> int:
        recorded = 2 * t * sh.hidden * b  # the eval text's hidden states, held while the grid runs
        log_probs = 2 * 2 * t * sh.vocab * 4  # the base side made once (`base_chunk_log_probs`)
        svd = 6 * sh.hidden * sh.hidden * 8  # float64 (q_proj, the largest adapted): W0, W0 + dW, the SVD's factors and workspace
        return inference(sh, t) + recorded + log_probs + svd

    # The intruder search runs two float64 SVDs per adapted weight: on 2 CPU cores the 14 weights
    # of an all-linear slice took over 20 minutes, so the grid's adapter is r=16 on q,v.
    merged = peft_model.merge_and_unload()
    qv_model = adapt(merged, 16, "q,v")
    row("post-hoc grid: scales, intruders (q,v)", lambda: mitigation_grid(qv_model, blocks, ft_blocks, settings, batch_size=1, n_bootstrap=0),
        tensor_bytes(qv_model), grid_budget)
    merged = qv_model.merge_and_unload()
    base = slice_model(s, dtype, device)
    row("post-hoc grid: WiSE-FT (full fine-tune)",
        lambda: mitigation_grid(merged, blocks, ft_blocks, MitigationSettings(scales=[0.0, 0.5, 1.0], intruder_scales=[]), base=base,
                                batch_size=1, n_bootstrap=0),
        tensor_bytes(merged) + tensor_bytes(base),
        lambda sh, t: inference(sh, t) + 2 * t * sh.hidden * b + 2 * 2 * t * sh.vocab * 4 + 2 * sh.vocab * sh.hidden * b)
    return rows


def tensor_bytes_of(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().nbytes()


def example_estimate(micro_batch: int, checkpointing: bool, seq_len: int = 1024, eval_batch: int = 16) -> dict[str, float]:
    """`examples/llama2-7b-gpu.yaml` by the same budgets (bfloat16, LoRA r=256 all-linear, its
    largest point): GiB for a training step and for a measurement."""
    s, b = Shape(**LLAMA2_7B), 2
    tokens = micro_batch * seq_len
    layers = (s.layers * tokens * s.hidden * b + Budget.saved_per_layer(s, b, tokens)) if checkpointing \
        else s.layers * Budget.saved_per_layer(s, b, tokens)
    train = s.weights(b) + layers + Budget.head_training(s, b, tokens) + Budget.optimizer(s.lora_params(256))
    measure = s.weights(b) + 4 * s.lora_params(256) + Budget.inference(s, b, eval_batch * seq_len) + Budget.head_chunk(s, b) \
        + 2 * eval_batch * seq_len * s.hidden * b
    return {"train": train / GIB, "measure": measure / GIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tokens", type=int, default=256, help="Tokens per sequence on the slice.")
    parser.add_argument("--target-tokens", type=int, default=2048, help="Tokens per sequence of the 8B extrapolation.")
    parser.add_argument("--only", nargs="*", help="Run only the paths whose first word is one of these (measure, callback, train, KL, post-hoc).")
    parser.add_argument("--smoke", action="store_true", help="Narrow widths (hidden 128, vocabulary 32,000): checks the script in seconds.")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    s = Shape(**{**LLAMA3_8B, "layers": 2})
    if args.smoke:
        s = Shape(hidden=128, mlp=352, heads=4, kv_heads=2, vocab=32_000, layers=2)
    print(f"8B slice: {s}, {args.dtype} on {args.device}, {args.tokens} tokens per sequence")
    rows = run_paths(s, dtype, args.device, args.tokens, args.target_tokens, set(args.only) if args.only else None)
    print(f"\n| path | weights (GiB) | peak (GiB) | budget (GiB) | peak / budget | work / budgeted work | seconds | "
          f"full 8B at {args.target_tokens} tokens, {args.dtype} (GiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:  # work: what the path allocated beyond the weights, against what its budget allows beyond them
        work = (r.peak - r.weights) / (r.budget - r.weights)
        print(f"| {r.path} | {r.weights / GIB:.2f} | {r.peak / GIB:.2f} | {r.budget / GIB:.2f} | {r.peak / r.budget:.2f} | {work:.2f} | "
              f"{r.seconds:.0f} | {r.full_8b / GIB:.1f} |")
    print("\nexamples/llama2-7b-gpu.yaml (bfloat16, rank 256 all-linear, 16 x 1024 tokens per step), estimated:")
    print("| micro-batch | gradient checkpointing | train step (GiB) | measurement (GiB) | fits 80 GB |")
    print("| ---: | --- | ---: | ---: | --- |")
    for micro, checkpointing in ((16, False), (4, False), (16, True), (4, True)):
        estimate = example_estimate(micro, checkpointing)
        fits = max(estimate.values()) * GIB <= 80e9 * 0.9  # 10% for the allocator's fragmentation and CUDA's context
        print(f"| {micro} | {checkpointing} | {estimate['train']:.1f} | {estimate['measure']:.1f} | {'yes' if fits else 'no'} |")


if __name__ == "__main__":
    main()
