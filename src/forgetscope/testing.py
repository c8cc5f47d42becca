"""The one factory of small models: the tests' 2-layer, 32-wide ones, the bench's Llama
shapes and the tiny defaults' bases (`tiny.model`) are all built here.

    model = llama(vocab_size=512)                 # 2 layers, width 32, untied head
    save_with_tokenizer(model, tokenizer, path)   # an ordinary from_pretrained directory
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def llama(
    vocab_size: int,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate_size: int = 64,
    max_positions: int = 128,
    tie_embeddings: bool = False,
    seed: int = 0,
    **config: Any,
):
    """A freshly initialised `LlamaForCausalLM`, the same weights for the same `seed`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_positions,
            tie_word_embeddings=tie_embeddings,
            **config,
        )
    )


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
