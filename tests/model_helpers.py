"""The tests' small models: the tiny bases' Llama (`forgetscope.tiny.model.llama`) and a GPT-2
at the same size, each saved with a tokenizer as an ordinary `from_pretrained` directory.

    model = llama(vocab_size=512)                 # 2 layers, width 32, untied head
    save_with_tokenizer(model, tokenizer, path)   # a directory every forgetscope command accepts
"""

from __future__ import annotations

from pathlib import Path

import torch

from forgetscope.tiny.model import llama

__all__ = ["gpt2", "llama", "save_with_tokenizer"]


def gpt2(vocab_size: int, width: int = 32, layers: int = 2, heads: int = 2, max_positions: int = 128, seed: int = 0):
    """A freshly initialised `GPT2LMHeadModel` (Conv1D projections, tied head)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=width, n_layer=layers, n_head=heads, n_positions=max_positions))


def save_with_tokenizer(model, tokenizer, path: str | Path) -> Path:
    """`model` and `tokenizer` saved together: a directory every forgetscope command accepts."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)
