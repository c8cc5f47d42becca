"""A causal LM split at its output head: the final hidden states, and the head as a float32
function applied to a chunk of them.

Every sum over the vocabulary in forgetscope (the metric, `ft_loss`, the KL penalty) goes
through these two, so no `[tokens, vocab]` logits exist beyond one chunk of positions, and
the head runs in float32 whatever the model's dtype: a bfloat16 head rounds logits of
magnitude 16 to 32 by up to 0.06, which is the size of early forgetting.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from forgetscope.distributed import sharded_reason

HEAD_SLICE_ELEMENTS = 2**25
"""Elements of one float32 slice of a low-precision head's rows (128 MB): such a head is
upcast slice by slice, never whole (a 128,256 x 4096 head is 2.1 GB in float32)."""

CHECK_POSITIONS = 16
"""Positions on which `head_mismatch` compares the head's logits with the model's own."""


def backbone(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module of a causal LM (PEFT-wrapped or not) that returns its final hidden states,
    after the last norm: what the output head is applied to. None if it has no separate one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]  # a PeftModel's method
    body = getattr(inner, "base_model", None)
    return None if body is None or body is inner else body


def final_hidden(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """`[batch, seq_len, hidden]` final hidden states: the forward pass without the head, so
    no `[batch, seq_len, vocab]` logits are made, and without a KV cache (nothing generates)."""
    body = backbone(model)
    if body is None:
        raise ValueError(f"{type(model).__name__} has no separate backbone to take final hidden states from")
    return body(input_ids=input_ids, use_cache=False).last_hidden_state


def full_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The model's own `[batch, seq_len, vocab]` logits, without a KV cache: the one path that
    makes them whole, for models whose head cannot be rebuilt from the hidden states."""
    return model(input_ids=input_ids, use_cache=False).logits


@dataclass(frozen=True)
class OutputHead:
    """`hidden -> float32 logits` for a chunk of final hidden states: the model's output layer
    in float32, then the transforms some models apply after it (Gemma-2's soft cap, Granite's
    and Cohere's logit scales). `adapter_off` is a PEFT model whose adapters are switched off
    around each call: the base side when the head itself carries an adapter."""

    module: torch.nn.Module
    softcap: float | None = None
    scale: float = 1.0
    adapter_off: torch.nn.Module | None = None

    @classmethod
    def of(cls, head: torch.nn.Module | OutputHead) -> OutputHead:
        """A head as given, or a bare output layer."""
        return head if isinstance(head, OutputHead) else cls(head)

    @property
    def weight(self) -> torch.Tensor:
        weight = self.module.weight
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"the output head {type(self.module).__name__} has no weight tensor")
        return weight

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        off = self.adapter_off
        context = off.disable_adapter() if off is not None else contextlib.nullcontext()  # type: ignore[operator]  # a PeftModel's method
        with context:
            logits = self._linear(hidden)
        if self.scale != 1.0:
            logits = logits.mul_(self.scale) if not logits.requires_grad else logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _linear(self, hidden: torch.Tensor) -> torch.Tensor:
        head, weight = self.module, self.weight
        if type(head) is not torch.nn.Linear:  # a head with an adapter, or another kind of layer: as it runs
            return head(hidden.to(weight.dtype)).float()
        hidden = hidden.float()
        if weight.dtype == torch.float32:
            return torch.nn.functional.linear(hidden, weight, head.bias)
        out = hidden.new_empty(*hidden.shape[:-1], weight.shape[0])
        rows = max(1, HEAD_SLICE_ELEMENTS // weight.shape[1])
        for start in range(0, weight.shape[0], rows):
            bias = None if head.bias is None else head.bias[start : start + rows].float()
            out[..., start : start + rows] = torch.nn.functional.linear(hidden, weight[start : start + rows].float(), bias)
        return out


def output_head(model: torch.nn.Module, adapter_off: bool = False) -> OutputHead | None:
    """The float32 output head of `model` (None if it has none, or if its weights are sharded
    across processes: `distributed.sharded_reason`); with `adapter_off`, the head of the PEFT
    model with its adapters switched off."""
    get = getattr(model, "get_output_embeddings", None)
    module = get() if get is not None else None
    if module is None or sharded_reason(model) is not None:
        return None
    config: Any = getattr(model, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = 1.0
    if isinstance(getattr(config, "logits_scaling", None), (int, float)):  # Granite divides its logits
        scale = 1.0 / float(config.logits_scaling)
    elif isinstance(getattr(config, "logit_scale", None), (int, float)):  # Cohere multiplies them
        scale = float(config.logit_scale)
    off = model if adapter_off and hasattr(model, "disable_adapter") and _carries_adapter(module) else None
    return OutputHead(module, float(softcap) if softcap else None, scale, off)


def _carries_adapter(head: torch.nn.Module) -> bool:
    return any("lora_" in name for name, _ in head.named_parameters())


@torch.no_grad()
def head_mismatch(model: torch.nn.Module, input_ids: torch.Tensor) -> str | None:
    """None if `output_head(model)` applied to the final hidden states gives the model's own
    logits on the first `CHECK_POSITIONS` positions of one sequence; otherwise by how much they
    differ (a head whose transform forgetscope does not know)."""
    head = output_head(model)
    if head is None or backbone(model) is None:
        return "the model has no separate output head"
    ids = input_ids[:1, :CHECK_POSITIONS]
    own = full_logits(model, ids)
    logits = own.float()
    gap = (head(final_hidden(model, ids)) - logits).abs().max().item()
    scale = logits.abs().max().item()
    # bfloat16 models: the model rounds its logits to bfloat16 (relative 2^-8); ours are float32.
    tolerance = (1e-4 if own.dtype == torch.float32 and head.weight.dtype == torch.float32 else 1e-2) * max(1.0, scale)
    if not gap <= tolerance:
        return f"the output head applied to the final hidden states misses the model's logits by {gap:.3g}"
    return None
