"""What every point of a sweep shares: the base model's location and the token blocks, made
once by the driver (`prepare`), and the base model's recorded predictions on the eval text
with each evaluator's base result, made once where the points run (`base_work`): the driver
of a Slurm or Ray sweep may have no GPU, and never loads the model.

Nothing here trains; `point.py` runs one point on these inputs and the executors carry them
to wherever points run.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from forgetscope.base_cache import BasePredictions
from forgetscope.data import prepare_run_data, read_domains
from forgetscope.errors import UserInputError
from forgetscope.models import torch_threads
from forgetscope.sweep.config import DataSource, SweepConfig
from forgetscope.sweep.grid import Point


@dataclass
class SweepInputs:
    """What every point shares: where the base model is, the token blocks, and the base
    model's recorded hidden states on the eval blocks (None: each point uses `disable_adapter()`)."""

    base_path: str
    tokenizer_path: str
    train_blocks: torch.Tensor
    ft_eval_blocks: torch.Tensor
    eval_blocks: dict[str, torch.Tensor]
    base_predictions: BasePredictions | None = None
    replay_blocks: torch.Tensor | None = None
    """The replay corpus of the training mitigations (`replay_data`), if the sweep has one."""


def save_inputs(inputs: SweepInputs, path: Path) -> None:
    """Write `inputs` for points in other processes as one safetensors file (tensors, and the
    paths and the base key as JSON metadata): unlike a pickle, loading it runs no code, so a
    replaced file in a shared job folder can corrupt numbers at worst, never run a program."""
    from safetensors.torch import save_file

    from forgetscope.files import atomic_path

    tensors = {"train_blocks": inputs.train_blocks, "ft_eval_blocks": inputs.ft_eval_blocks}
    tensors |= {f"eval/{name}": blocks for name, blocks in inputs.eval_blocks.items()}
    if inputs.replay_blocks is not None:
        tensors["replay_blocks"] = inputs.replay_blocks
    meta = {"base_path": inputs.base_path, "tokenizer_path": inputs.tokenizer_path, "eval": list(inputs.eval_blocks),
            "base_key": None if inputs.base_predictions is None else inputs.base_predictions.key}
    if inputs.base_predictions is not None:
        tensors |= {f"base/{name}": hidden for name, hidden in inputs.base_predictions.hidden.items()}
    with atomic_path(path) as scratch:
        save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(scratch), metadata={"forgetscope": json.dumps(meta)})


def load_inputs(path: str | Path) -> SweepInputs:
    """What `save_inputs` wrote."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["forgetscope"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    base = None
    if meta["base_key"] is not None:
        base = BasePredictions({name: tensors[f"base/{name}"] for name in meta["eval"]}, meta["base_key"])
    return SweepInputs(meta["base_path"], meta["tokenizer_path"], tensors["train_blocks"], tensors["ft_eval_blocks"],
                       {name: tensors[f"eval/{name}"] for name in meta["eval"]}, base, tensors.get("replay_blocks"))


def point_device(config: SweepConfig) -> torch.device:
    """The device every point runs on: CUDA when the config asks each point for a GPU."""
    from forgetscope.models import resolve_device

    return resolve_device("cuda" if config.resources.gpus > 0 else "cpu")


def load_point_base(config: SweepConfig, base_path: str) -> torch.nn.Module:
    """The base model as every point of `config` loads it: in the sweep's dtype, on the points' device."""
    from forgetscope.models import load_causal_lm, resolve_dtype

    return load_causal_lm(base_path, resolve_dtype(config.dtype), point_device(config))


def point_threads(config: SweepConfig) -> contextlib.AbstractContextManager[None]:
    """torch's thread count set to the point's CPUs while a point runs: the same threads on
    every executor give the same numbers."""
    return torch_threads(config.resources.cpus)


def _documents(source: DataSource, split: str) -> dict[str, list[str]]:
    if source.embedded is not None:
        from forgetscope.tiny import corpora

        documents = corpora.finetune_documents(source.embedded) if split == "finetune" else getattr(corpora.load(source.embedded), split)
        return {source.embedded: documents}
    return read_domains(source.files, source.text_column)


def resolve_base(config: SweepConfig, progress: bool = True) -> str:
    """The base model's directory or hub id; `tiny` is pretrained here first if not cached, a
    GGUF file or a known source (`smollm2`) converted or fetched first (`forgetscope.sources`)."""
    if config.base_model != "tiny":
        from forgetscope.sources import resolve_model

        return resolve_model(config.base_model)
    from forgetscope.tiny.model import ensure_tiny_base

    return str(ensure_tiny_base(progress=progress))


def prepare(config: SweepConfig, base_path: str) -> SweepInputs:
    """Tokenize the fine-tuning, eval and replay text by the rule every run follows
    (`data.prepare_run_data`). The base predictions are left to `base_work`, where points run."""
    from forgetscope.models import load_tokenizer

    tokenizer_path = config.tokenizer or base_path
    eval_documents: dict[str, list[str]] = {}
    for source in config.eval_data:
        eval_documents.update(_documents(source, "heldout"))
    replay = None if config.replay_data is None else [d for s in config.replay_data for docs in _documents(s, "pretrain").values() for d in docs]
    data = prepare_run_data(load_tokenizer(tokenizer_path), [d for docs in _documents(config.finetune_data, "finetune").values() for d in docs],
                            eval_documents, seq_len=config.seq_len, steps=config.steps, batch_size=config.batch_size,
                            eval_tokens=config.eval_tokens, ft_eval_tokens=config.ft_eval_tokens, replay_documents=replay)
    return SweepInputs(base_path, tokenizer_path, data.train_blocks, data.ft_eval_blocks, data.eval_blocks, None, data.replay_blocks)


def record_base_hidden(config: SweepConfig, inputs: SweepInputs) -> BasePredictions | None:
    """The base model's hidden states on the eval blocks, recorded on the points' device with
    their threads (the same hidden states on any machine); every point rebuilds its base
    logits from them with its own frozen head. None where the head cannot (`base_cache`)."""
    from forgetscope.base_cache import try_record_base_predictions

    base = load_point_base(config, inputs.base_path).requires_grad_(False)
    with point_threads(config):
        return try_record_base_predictions(base, inputs.eval_blocks)


@dataclass
class BaseWork:
    """What is done once on the base model, where the points run."""

    predictions: BasePredictions | None
    """Its recorded hidden states on the eval blocks (`record_base`), when asked for."""
    artifacts: dict[str, object]
    """`{evaluator name: the base model's result}` for the evaluators asked for."""


def base_work(config: SweepConfig, inputs: SweepInputs, record: bool, evaluators: list[str]) -> BaseWork:
    """Record the base predictions (with `record`) and run `evaluators`' base evaluation
    (`Evaluator.evaluate_base`) on the points' device, dtype and threads: the body of the
    preparation task an executor runs where its points run (`Executor.prepare_base`)."""
    from forgetscope.models import resolve_dtype
    from forgetscope.sweep.evaluators import EVALUATORS

    predictions = record_base_hidden(config, inputs) if record else None
    sections = config.sections()
    artifacts = {}
    with point_threads(config):
        for name in evaluators:
            artifacts[name] = EVALUATORS.get(name).evaluate_base(sections[name], inputs.base_path, inputs.tokenizer_path,
                                                                 point_device(config), resolve_dtype(config.dtype))
    return BaseWork(predictions, artifacts)


def check_modules(config: SweepConfig, points: list[Point], base_path: str) -> None:
    """Catch what does not fit the base model before any point runs, as a config error: a
    model that is not a causal LM, a `seq_len` beyond its context, a `tokenizer:` that is not
    its own, module names that match nothing.

    PEFT is asked on a weightless copy of the model (meta device), so this costs nothing
    even for a 7B model.
    """
    from transformers import AutoModelForCausalLM

    from forgetscope.models import causal_lm_config, check_tokenizer_fits, context_length, load_tokenizer
    from forgetscope.train import apply_lora

    model_config = causal_lm_config(base_path, "base model")
    limit = context_length(model_config)
    if limit is not None and config.seq_len > limit:
        raise UserInputError(f"`seq_len` {config.seq_len} exceeds the base model's context of {limit} positions")
    if config.tokenizer:
        check_tokenizer_fits(load_tokenizer(config.tokenizer), model_config, config.tokenizer)
    checked = set()
    for point in points:
        key = (str(point.target_modules), str(point.layers), point.rank)
        if key in checked:
            continue
        checked.add(key)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(model_config)
        try:
            apply_lora(skeleton, point.lora())
        except UserInputError as exc:
            raise UserInputError(f"grid.target_modules {point.target_modules!r} (layers {point.layers}, rank {point.rank}) on "
                                 f"{config.base_model}: {str(exc).removeprefix('LoRA settings do not fit the model: ')}") from None
