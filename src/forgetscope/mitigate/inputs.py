"""What a post-hoc mitigation works on: a fine-tune, its base, and the two eval texts, from
files (`mitigate --base --adapter --eval-data --ft-eval-data`); `sweep.adapters` gives the
same from a sweep whose points kept their adapters (`mitigate --sweep DIR --point ID`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class MitigationInputs:
    finetuned: torch.nn.Module
    base: torch.nn.Module | None
    """A full fine-tune's base; None for a PEFT adapter (its base is the adapter switched off)."""
    tokenizer: object
    eval_blocks: dict[str, torch.Tensor]
    ft_blocks: torch.Tensor
    name: str = "mitigation"
    describe: dict = field(default_factory=dict)


def from_files(base: str, adapter: str | None, finetuned: str | None, eval_data: list[Path], ft_eval_data: list[Path],
               seq_len: int, eval_tokens: int, dtype: str = "float32", device: str = "auto") -> MitigationInputs:
    """Load a base and its fine-tune, and cut both texts into `seq_len` blocks (up to `eval_tokens` a domain)."""
    from forgetscope.data import check_data_sources, load_eval_blocks
    from forgetscope.models import check_seq_len, load_pair

    check_data_sources([*eval_data, *ft_eval_data], "data file")  # before a large model is loaded
    pair = load_pair(base, finetuned=finetuned, adapter=adapter, dtype=dtype, device=device)
    check_seq_len(pair.finetuned, seq_len)
    eval_blocks = load_eval_blocks(eval_data, pair.tokenizer, seq_len, eval_tokens)
    ft_blocks = torch.cat(list(load_eval_blocks(ft_eval_data, pair.tokenizer, seq_len, eval_tokens).values()))
    return MitigationInputs(pair.finetuned, pair.base, pair.tokenizer, eval_blocks, ft_blocks,
                            describe={"base": base, "adapter": adapter, "finetuned": finetuned})
