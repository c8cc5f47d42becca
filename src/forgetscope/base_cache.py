"""Recorded base predictions: the base model's final hidden states, once per
(model, eval set, sequence length), reused at every measurement.

When the output head is frozen (the LoRA default), `head(final hidden state)` reproduces the
base logits exactly, so storing `[tokens, hidden]` floats replaces storing `[tokens, vocab]`
(gigabytes) or running the base model again (a second forward pass) at every measurement.
The hidden states can live in a safetensors file keyed by a fingerprint of the base
weights and of the eval tokens, checked on load; a file that does not match is
recorded again. Where the head cannot reproduce the logits (a trained head, one carrying an
adapter, a transform after the head that `heads.output_head` does not know) `usable_reason`
or the recording's own check says why, and callers fall back to `disable_adapter()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import mmap
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from forgetscope.distributed import sharded_reason
from forgetscope.heads import OutputHead, backbone, final_hidden, full_logits, head_mismatch, output_head

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
        # 4,096 strided elements, moved alone; a parameter with no data here (meta, offloaded) counts by name and shape
        sample = b"" if param.device.type == "meta" else flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes()
        digest.update(name.encode() + str(tuple(param.shape)).encode() + sample)
    return digest.hexdigest()[:24]


def _tokens_fingerprint(blocks: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(blocks):
        digest.update(name.encode() + str(tuple(blocks[name].shape)).encode() + blocks[name].numpy().tobytes())
    return digest.hexdigest()[:24]


def cache_key(model: torch.nn.Module, blocks: Mapping[str, torch.Tensor]) -> str:
    return f"v{FORMAT_VERSION}-{_weights_fingerprint(model)}-{_tokens_fingerprint(blocks)}"


def usable_reason(model: torch.nn.Module) -> str | None:
    """None if the output head can rebuild this model's base logits from its final hidden
    states (`heads.output_head`); otherwise why not.

    This looks at the model's structure; `record_base_predictions` also checks the logits
    themselves on the first eval sequence, for heads that scale or cap logits in their own way.
    """
    sharded = sharded_reason(model)
    if sharded is not None:
        return sharded
    head = model.get_output_embeddings()
    if head is None or backbone(model) is None:
        return "the model has no separate output head"
    if any(p.requires_grad for p in head.parameters()):
        return "the output head is being trained, so base logits need the base head"
    if any("lora_" in n for n, _ in head.named_parameters()):
        return "the output head carries an adapter"
    return None


class BasePredictions:
    """Recorded final hidden states of the base model for eval blocks, by domain.

    Any model with the same frozen base (every LoRA point of a sweep, say) rebuilds the
    base logits from them with its own output head. Read from a file, the tensors are
    memory-mapped: a measurement pages in the batches it reads, not the whole file.
    """

    def __init__(self, hidden: Mapping[str, torch.Tensor], key: str):
        self.hidden, self.key = dict(hidden), key


def _base_hidden(model, input_ids: torch.Tensor) -> torch.Tensor:
    with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
        return final_hidden(model, input_ids)


def _base_mismatch(model, input_ids: torch.Tensor) -> str | None:
    with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
        return head_mismatch(model, input_ids)


# safetensors has no streaming writer (`save_file` takes whole tensors, and copies each into
# bytes before writing), so the file is written here in its format, batch by batch:
# little-endian u64 header length, the JSON header, then each tensor's bytes in order.
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}


def _write_streamed(path: Path, shapes: Mapping[str, tuple[int, ...]], dtype: torch.dtype,
                    batches: Iterator[torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file of tensors `shapes` (in that order) of `dtype`, filled from
    `batches` (consecutive leading-dimension slices), without holding any tensor whole."""
    element = torch.empty(0, dtype=dtype).element_size()
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape) * element
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    written = 0
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        for batch in batches:
            data = batch.detach().to("cpu", dtype).contiguous().view(torch.uint8).numpy()
            out.write(data)
            written += data.nbytes
    if written != offset:
        raise RuntimeError(f"recorded {written} bytes of hidden states where {offset} were expected")


def _read_mapped(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors file as views of a private memory map (nothing is read
    until used), and its metadata; files with other dtypes go through safetensors itself."""
    with open(path, "rb") as f:
        length = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(length))
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # copy-on-write: a writable buffer torch accepts
    metadata = header.pop("__metadata__", {}) or {}
    names = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = names[entry["dtype"]]
        count = (end - begin) // torch.empty(0, dtype=dtype).element_size()
        flat = torch.frombuffer(mapped, dtype=dtype, count=count, offset=8 + length + begin) if count else torch.empty(0, dtype=dtype)
        tensors[name] = flat.view(entry["shape"])
    return tensors, metadata


@torch.no_grad()
def record_base_predictions(
    model: torch.nn.Module,
    blocks: Mapping[str, torch.Tensor],
    path: str | Path | None = None,
    batch_size: int = 16,
    storage_dtype: torch.dtype | None = None,
) -> BasePredictions:
    """Run the base model once over `blocks` (adapters off) and keep its final hidden states,
    in `storage_dtype` (default: the model's own, so a bfloat16 model keeps bfloat16).

    With `path`, they are streamed to a safetensors file batch by batch and read back
    memory-mapped; an existing file is reused if its key matches this model and these
    tokens, else rewritten. Without, they are filled into one preallocated tensor per domain.
    Raises `ValueError` when the head cannot reproduce the base logits (`usable_reason`,
    then `heads.head_mismatch` on the first sequence).
    """
    reason = usable_reason(model)
    if reason is not None:
        raise ValueError(f"recorded base predictions cannot be used: {reason}")
    dtype = storage_dtype or model.get_output_embeddings().weight.dtype
    key = cache_key(model, blocks)
    if path is not None and Path(path).is_file():
        try:
            stored, meta = _read_mapped(Path(path))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            stored, meta = {}, {"key": f"unreadable ({exc})"}
        if meta.get("key") == key and meta.get("dtype") == str(dtype) and set(stored) == set(blocks):
            return BasePredictions(stored, key)
        log.info("base prediction cache %s is stale (recorded for %s, now %s): recording again", path, meta.get("key"), key)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        first = next((ids for ids in blocks.values() if len(ids)), None)
        if first is not None:
            mismatch = _base_mismatch(model, first.to(device))
            if mismatch is not None:
                raise ValueError(mismatch)
        width = model.get_output_embeddings().weight.shape[1]
        if path is None:
            hidden = {name: torch.empty((*ids.shape, width), dtype=dtype) for name, ids in blocks.items()}
            for name, ids in blocks.items():
                for s in range(0, len(ids), batch_size):
                    hidden[name][s : s + batch_size] = _base_hidden(model, ids[s : s + batch_size].to(device))
            return BasePredictions(hidden, key)
        from forgetscope.files import atomic_path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        batches = (_base_hidden(model, ids[s : s + batch_size].to(device))
                   for ids in blocks.values() for s in range(0, len(ids), batch_size))
        with atomic_path(Path(path)) as tmp:  # a scratch name per process: two recorders never share one
            _write_streamed(tmp, {name: (*ids.shape, width) for name, ids in blocks.items()}, dtype, batches,
                            {"key": key, "format": FORMAT_VERSION, "dtype": str(dtype)})
    finally:
        model.train(was_training)
    return BasePredictions(_read_mapped(Path(path))[0], key)


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
    head: OutputHead | torch.nn.Module | None = None
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

    def run(self, finetuned: torch.nn.Module, outputs: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] = full_logits
            ) -> Callable[[torch.Tensor], torch.Tensor]:
        """`ids -> outputs(base, ids)` for the `adapter` and `model` kinds: the base's final
        hidden states with `heads.final_hidden`, or its whole logits with `heads.full_logits`
        (the path for models whose head cannot be rebuilt)."""
        if self.kind == "model":
            base = self.model
            device = next(base.parameters()).device
            return lambda ids: outputs(base, ids.to(device))
        if self.kind == "adapter":
            if not hasattr(finetuned, "disable_adapter"):
                raise ValueError("the fine-tuned model is not a PEFT model: pass a separate base model")

            def adapter_off(ids: torch.Tensor) -> torch.Tensor:
                with finetuned.disable_adapter():
                    return outputs(finetuned, ids)

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

    A separate `base` model is used as given, or recorded with its own head when `record`
    asks for it (`mitigate` measures one full fine-tune many times). Otherwise, where the output head can rebuild the
    base logits (`usable_reason`), `recorded` predictions are reused, or recorded now when
    `record` or `cache_dir` asks for it (kept in `cache_dir` and reused from there); everything
    else uses `disable_adapter()`, with a log line saying why.
    """
    if base is not None:  # a full fine-tune: the base's own head makes its logits
        if record and usable_reason(base) is None:
            try:
                return BaseSource("recorded", predictions=record_base_predictions(base, blocks, batch_size=batch_size),
                                  head=output_head(base))
            except ValueError as exc:
                log.info("forgetting: a base forward pass at every measurement, because %s", exc)
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
