"""Recorded base predictions: the base model's final hidden states, once per
(model, eval set, sequence length), reused at every measurement.

When the output head is frozen (the LoRA default), `head(final hidden state)` reproduces the
base logits exactly, so storing `[tokens, hidden]` floats replaces storing `[tokens, vocab]`
(gigabytes) or running the base model again (a second forward pass) at every measurement.
The hidden states can live in a safetensors file keyed by a fingerprint of the base
weights and of the eval tokens, checked on load; a file that does not match is
recorded again. Where the head cannot reproduce the logits (a trained head, logit
soft-capping) `usable_reason` says why, and callers fall back to `disable_adapter()`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

log = logging.getLogger(__name__)
FORMAT_VERSION = "1"


def _weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity of the frozen base weights: config, names, shapes and a strided sample
    of every non-adapter tensor. Two different checkpoints differ in it; one checkpoint
    always gives the same one."""
    digest = hashlib.sha256(getattr(model, "config", "").to_json_string().encode() if hasattr(model, "config") else b"")
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes()
        digest.update(name.encode() + str(tuple(param.shape)).encode() + sample)
    return digest.hexdigest()[:24]


def _tokens_fingerprint(blocks: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(blocks):
        digest.update(name.encode() + str(tuple(blocks[name].shape)).encode() + blocks[name].numpy().tobytes())
    return digest.hexdigest()[:24]


def cache_key(model: torch.nn.Module, blocks: Mapping[str, torch.Tensor]) -> str:
    return f"v{FORMAT_VERSION}-{_weights_fingerprint(model)}-{_tokens_fingerprint(blocks)}"


def backbone(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module of a causal LM (PEFT-wrapped or not) that returns its final hidden states,
    after the last norm: what the output head is applied to. None if it has no separate one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, "base_model", None)
    return None if body is None or body is inner else body


def final_hidden(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """`[batch, seq_len, hidden]` final hidden states: the forward pass without the head, so
    no `[batch, seq_len, vocab]` logits are made."""
    return backbone(model)(input_ids=input_ids).last_hidden_state


def usable_reason(model: torch.nn.Module) -> str | None:
    """None if `head(final hidden state)` can give this model's base logits; otherwise why not.

    This looks at the model's structure; `record_base_predictions` also checks the logits
    themselves on the first eval sequence, for heads that scale or cap logits in their own way.
    """
    head = model.get_output_embeddings()
    if head is None or backbone(model) is None:
        return "the model has no separate output head"
    if any(p.requires_grad for p in head.parameters()):
        return "the output head is being trained, so base logits need the base head"
    if any("lora_" in n for n, _ in head.named_parameters()):
        return "the output head carries an adapter"
    if getattr(getattr(model, "config", None), "final_logit_softcapping", None):
        return "the model soft-caps its logits after the head"
    return None


class BasePredictions:
    """Recorded final hidden states of the base model for eval blocks, by domain.

    Any model with the same frozen base (every LoRA point of a sweep, say) rebuilds the
    base logits from them with its own output head.
    """

    def __init__(self, hidden: Mapping[str, torch.Tensor], key: str):
        self.hidden, self.key = dict(hidden), key


def _base_hidden(model, input_ids: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            return final_hidden(model, input_ids)
    return final_hidden(model, input_ids)


def _check_head_reproduces_logits(model, input_ids: torch.Tensor) -> None:
    """Raise `ValueError` unless head(final hidden) equals the full forward's logits on one sequence."""
    hidden = _base_hidden(model, input_ids[:1])
    head = model.get_output_embeddings()
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            logits = model(input_ids=input_ids[:1]).logits
    else:
        logits = model(input_ids=input_ids[:1]).logits
    gap = (head(hidden).float() - logits.float()).abs().max().item()
    scale = logits.float().abs().max().item()
    if not gap <= 1e-4 * max(1.0, scale):
        raise ValueError(f"the output head applied to the final hidden states misses the model's logits by {gap:.3g}")


@torch.no_grad()
def record_base_predictions(
    model: torch.nn.Module,
    blocks: Mapping[str, torch.Tensor],
    path: str | Path | None = None,
    batch_size: int = 16,
    storage_dtype: torch.dtype = torch.float32,
) -> BasePredictions:
    """Run the base model once over `blocks` (adapters off) and keep its final hidden states.

    With `path`, they are written to a safetensors file; an existing file is reused if its key matches this model and these tokens, else rewritten.
    Raises `ValueError` when the head cannot reproduce the base logits (`usable_reason`,
    then a check of the logits on the first sequence).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    reason = usable_reason(model)
    if reason is not None:
        raise ValueError(f"recorded base predictions cannot be used: {reason}")
    key = cache_key(model, blocks)
    if path is not None and Path(path).is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            stored_key = meta.get("key")
            if stored_key == key and meta.get("dtype") == str(storage_dtype) and set(f.keys()) == set(blocks):
                return BasePredictions({name: f.get_tensor(name) for name in f.keys()}, key)
        log.info("base prediction cache %s is stale (recorded for %s, now %s): recording again", path, stored_key, key)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        first = next((ids for ids in blocks.values() if len(ids)), None)
        if first is not None:
            _check_head_reproduces_logits(model, first.to(device))
        hidden = {}
        for name, ids in blocks.items():
            parts = [_base_hidden(model, ids[s : s + batch_size].to(device)).to("cpu", storage_dtype)
                     for s in range(0, len(ids), batch_size)]
            hidden[name] = torch.cat(parts).contiguous()
    finally:
        model.train(was_training)
    if path is not None:
        from forgetscope.files import atomic_path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(path)) as tmp:  # a scratch name per process: two recorders never share one
            save_file(hidden, str(tmp), metadata={"key": key, "format": FORMAT_VERSION, "dtype": str(storage_dtype)})
    return BasePredictions(hidden, key)


def try_record_base_predictions(model: torch.nn.Module, blocks: Mapping[str, torch.Tensor], **kwargs) -> BasePredictions | None:
    """`record_base_predictions`, or None with a log line saying why when the model cannot use
    them: callers then take the base logits from `disable_adapter()` or a base model."""
    try:
        return record_base_predictions(model, blocks, **kwargs)
    except ValueError as exc:
        log.info("forgetting: base predictions from a base forward pass at every measurement, because %s", exc)
        return None


def cache_file(cache_dir: str | Path, model: torch.nn.Module, blocks: Mapping[str, torch.Tensor]) -> Path:
    """Where a cache directory keeps the recorded predictions of this base on these tokens."""
    return Path(cache_dir) / f"base-{cache_key(model, blocks)}.safetensors"


@dataclass(frozen=True)
class BaseSource:
    """Where a measurement takes the base model's next-token distributions from.

    - `recorded`: hidden states recorded once (`predictions`), turned into logits by the
      fine-tuned model's own frozen head: one forward pass per measurement;
    - `adapter`: the fine-tuned PEFT model with its adapters switched off (`disable_adapter()`);
    - `model`: a separate base model (full fine-tunes, and the reference path of the tests).

    `reason` says why recorded predictions are not used, when they are not.
    """

    kind: Literal["recorded", "adapter", "model"]
    predictions: BasePredictions | None = None
    model: torch.nn.Module | None = None
    reason: str | None = None
    head: torch.nn.Module | None = None
    """With `recorded`: the base's own output head, where the fine-tune's differs (a full
    fine-tune); None uses the fine-tune's frozen head."""
    log_probs: dict | None = None
    """With `recorded`: the base log-probabilities already made, per domain, batch and chunk
    (`metric.base_chunk_log_probs`)."""

    @classmethod
    def of(cls, base: torch.nn.Module | BaseSource | None) -> BaseSource:
        """A source as given, a separate base model, or (None) the adapter switched off."""
        if isinstance(base, BaseSource):
            return base
        return cls("adapter") if base is None else cls("model", model=base)

    def logits(self, finetuned: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """`ids -> base logits` for the `adapter` and `model` kinds."""
        if self.kind == "model":
            device = next(self.model.parameters()).device
            return lambda ids: self.model(input_ids=ids.to(device)).logits
        if self.kind == "adapter":
            if not hasattr(finetuned, "disable_adapter"):
                raise ValueError("the fine-tuned model is not a PEFT model: pass a separate base model")

            def adapter_off(ids: torch.Tensor) -> torch.Tensor:
                with finetuned.disable_adapter():
                    return finetuned(input_ids=ids).logits

            return adapter_off
        raise ValueError("recorded base predictions are hidden states: use them with the output head")


def choose_base_source(
    finetuned: torch.nn.Module,
    blocks: Mapping[str, torch.Tensor],
    *,
    base: torch.nn.Module | None = None,
    recorded: BasePredictions | None = None,
    record: bool = False,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
) -> BaseSource:
    """The one place that decides where base predictions come from, for `finetuned` on `blocks`.

    A separate `base` model is used as given. Otherwise, where the output head can rebuild the
    base logits (`usable_reason`), `recorded` predictions are reused, or recorded now when
    `record` or `cache_dir` asks for it (kept in `cache_dir` and reused from there); everything
    else uses `disable_adapter()`, with a log line saying why.
    """
    if base is not None:
        return BaseSource("model", model=base, reason="a separate base model was given")
    reason = usable_reason(finetuned)
    if reason is None and recorded is not None:
        return BaseSource("recorded", predictions=recorded)
    if reason is None and (record or cache_dir is not None):
        path = cache_file(cache_dir, finetuned, blocks) if cache_dir is not None else None
        try:
            return BaseSource("recorded", predictions=record_base_predictions(finetuned, blocks, path, batch_size))
        except ValueError as exc:
            reason = str(exc)
    if reason is not None and (record or recorded is not None or cache_dir is not None):
        log.info("forgetting: base predictions from disable_adapter() at every measurement, because %s", reason)
    return BaseSource("adapter", reason=reason or "recording was not asked for")
