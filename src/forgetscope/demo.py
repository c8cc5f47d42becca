"""`forgetscope demo`: the whole pipeline on the embedded tiny default, offline, on a CPU.

1. pretrain the tiny Llama on scripture + docs + code (cached after the first run);
2. fine-tune it with rsLoRA on Python code files it never saw;
3. measure forgetting on held-out scripture and docs at log-spaced steps, next to the
   held-out loss on code (`ft_loss`);
4. print the forgetting table and say where the records and the adapter are.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from forgetscope.data import group_into_blocks
from forgetscope.models import load_causal_lm, load_tokenizer
from forgetscope.tiny import corpora
from forgetscope.tiny.model import TinyConfig, ensure_tiny_base, tiny_metrics
from forgetscope.train import LoraSettings, TrainSettings, finetune


@dataclass
class DemoSettings:
    """What the demo fine-tunes on, what it measures forgetting on, and its budget."""

    finetune_domain: str = "code"
    eval_domains: tuple[str, ...] = ("scripture", "docs")
    eval_tokens: int = 8192
    """Held-out tokens per eval domain."""
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(rank=8, alpha=16.0, rslora=True))
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=200, learning_rate=1e-3, batch_size=8, seq_len=128, eval_points=8)
    )


def run_demo(
    out_dir: str | Path,
    tiny: TinyConfig = TinyConfig(),
    settings: DemoSettings | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> dict:
    """Run the demo into `out_dir`; return `{base, tiny_metrics, records, seconds}`."""
    settings = settings or DemoSettings()
    started = time.time()
    out = Path(out_dir)
    base_dir = ensure_tiny_base(tiny, cache_dir, progress)
    tokenizer = load_tokenizer(str(base_dir))
    model = load_causal_lm(str(base_dir))
    seq_len = settings.train.seq_len
    ft = corpora.load(settings.finetune_domain)
    # Fine-tuning data with a validation split, as a fine-tuning dataset has: held-out
    # blocks drawn at random from the same files give `ft_loss`.
    budget = settings.train.steps * settings.train.batch_size * seq_len + settings.eval_tokens
    ft_blocks = group_into_blocks(ft.finetune or ft.pretrain, tokenizer, seq_len, budget)
    order = torch.randperm(len(ft_blocks), generator=torch.Generator().manual_seed(settings.train.seed))
    n_val = max(1, settings.eval_tokens // seq_len)
    ft_eval_blocks, train_blocks = ft_blocks[order[:n_val]], ft_blocks[order[n_val:]]
    eval_blocks = {d: group_into_blocks(corpora.load(d).heldout, tokenizer, seq_len, settings.eval_tokens) for d in settings.eval_domains}
    records = finetune(
        model, tokenizer, settings.lora, settings.train, train_blocks, eval_blocks, ft_eval_blocks, out / "run", progress=progress
    )
    summary = {
        "base": str(base_dir),
        "tiny_metrics": tiny_metrics(base_dir),
        "finetune_domain": settings.finetune_domain,
        "eval_domains": list(settings.eval_domains),
        "lora": asdict(settings.lora),
        "records": records,
        "seconds": round(time.time() - started, 1),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary
