"""One LoRA / rsLoRA fine-tuning run with forgetting measured along the way.

base model + LoRA settings + fine-tuning text + a step budget -> records at log-spaced steps
(step 0 included), each `{step, train_loss, ft_loss, forgetting_ce, kl, hard_ce, ...,
domains, trainable_params}`, and the adapter saved at the end. It is a plain
`transformers.Trainer` run with `ForgettingCallback`, the same callback users add to their
own Trainer or TRL scripts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from forgetscope.base_cache import BasePredictions
from forgetscope.callback import ForgettingCallback
from forgetscope.distributed import start, world
from forgetscope.errors import UserInputError, first_line
from forgetscope.files import check_output_dir, write_atomically
from forgetscope.models import count_trainable_params
from forgetscope.settings import LoraSettings, TrainSettings
from forgetscope.sweepdir import last_checkpoint


def apply_lora(model: torch.nn.Module, lora: LoraSettings):
    """`peft.get_peft_model`, refusing settings whose P would mean nothing (`check_adapted`)."""
    from peft import get_peft_model

    try:
        peft_model = get_peft_model(model, lora.to_peft(model))
    except ValueError as exc:
        msg = first_line(exc) or type(exc).__name__
        raise UserInputError(f"LoRA settings do not fit the model: {msg}") from exc
    check_adapted(peft_model, lora)
    return peft_model


def check_adapted(peft_model: torch.nn.Module, lora: LoraSettings) -> None:
    """Refuse what PEFT accepts but the laws cannot use: a module name or a layer index that
    adapts nothing (PEFT drops it silently when another matches), only embeddings (P = 0),
    or a rank beyond a layer's narrower side (P then counts more than the weight holds)."""
    targeted = list(getattr(peft_model, "targeted_module_names", []))
    if isinstance(lora.target_modules, list):
        for name in lora.target_modules:
            if not any(t == name or t.endswith("." + name) for t in targeted):
                raise UserInputError(f"LoRA settings do not fit the model: target module {name!r} matches no module it adapts")
    if lora.layers is not None:
        n_layers = getattr(peft_model.config, "num_hidden_layers", None)
        beyond = [i for i in lora.layers if n_layers is not None and i >= n_layers]
        if beyond:
            raise UserInputError(f"LoRA settings do not fit the model: layer {beyond[0]} does not exist (the model has {n_layers} blocks)")
    for name, module in peft_model.named_modules():
        weight = getattr(getattr(module, "base_layer", None), "weight", None)
        if hasattr(module, "lora_A") and weight is not None and lora.rank > min(weight.shape):
            raise UserInputError(f"LoRA settings do not fit the model: rank {lora.rank} exceeds {name.removeprefix('base_model.model.')}'s "
                                 f"narrower side ({min(weight.shape)}), where an update of full rank needs only {min(weight.shape)}")
    if count_trainable_params(peft_model) == 0:
        raise UserInputError("LoRA settings do not fit the model: they adapt only embeddings or the output head, so P (the "
                             "non-embedding parameters trained) would be 0")


def _quiet_progress_callback():
    """Trainer's progress bar without its one printed line per log (we log every step)."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

    return QuietProgress()


def law_arm(fits: Mapping, lora: LoraSettings) -> str | None:
    """The arm of a sweep's laws (`fits.json`'s `range.arms`) that `lora` belongs to: its
    module set, as a sweep names it, and its scaling where the sweep has both."""
    modules = lora.target_modules if isinstance(lora.target_modules, str) else ",".join(lora.target_modules)
    arms = (fits.get("range") or {}).get("arms", {})
    for name in (modules, f"{modules} {'rsLoRA' if lora.rslora else 'LoRA'}"):
        if name in arms:
            return name
    return None


class RunRecords(list):
    """A run's records, in step order, and how the run ended (so no caller reads `run.json` back)."""

    stopped_by_budget: str | None = None
    """Why the KL budget stopped the run early, or None when it ran every step."""
    trainable_params: int = 0
    """`P`: the non-embedding parameters the run trained."""


def finetune(
    model: torch.nn.Module,
    tokenizer,
    lora: LoraSettings,
    settings: TrainSettings,
    train_blocks: torch.Tensor,
    eval_blocks: Mapping[str, torch.Tensor],
    ft_eval_blocks: torch.Tensor | None = None,
    out_dir: str | Path | None = None,
    on_record: Callable[[dict], None] | None = None,
    progress: bool = True,
    callbacks: Sequence = (),
    base_predictions: BasePredictions | None = None,
    replay_blocks: torch.Tensor | None = None,
    overwrite: bool = False,
    law: Mapping | None = None,
    checkpoint_dir: str | Path | None = None,
    earlier: Sequence[dict] = (),
) -> RunRecords:
    """Fine-tune `model` (a base causal LM, adapted in place) and return its records.

    `train_blocks` are `[n, seq_len]` ids of the fine-tuning text, `ft_eval_blocks` held-out
    ids of the same domain, `eval_blocks` the `{domain: ids}` that forgetting is measured on.
    With `out_dir`, the adapter is saved to `out_dir/adapter` and the records to
    `out_dir/records.jsonl`. `callbacks` are extra `TrainerCallback`s (e.g. a progress display);
    `base_predictions` are base hidden states recorded for `eval_blocks` beforehand (else
    the callback records them at the start). `replay_blocks` are the replay corpus of the
    training mitigations that need one (`forgetscope.mitigate.training`), checked never to
    overlap `eval_blocks`. A non-empty `out_dir` is refused unless it holds
    an earlier run of the same settings, or `overwrite` is given (`check_out_dir`).
    With `checkpoint_dir`, a Trainer checkpoint is saved there at every measurement (the last
    one kept) and the run resumes from the last complete one found there; `earlier` are the
    records the run measured up to it, which the returned records then start with.
    """
    import dataclasses
    import tempfile

    import datasets
    from transformers import TrainingArguments, default_data_collator, set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from forgetscope.data import check_no_overlap
    from forgetscope.mitigate.training import TrainingRun, apply_training_mitigations, trainer_class

    if len(train_blocks) == 0:
        raise UserInputError(f"fine-tuning text is shorter than one sequence of {settings.seq_len} tokens")
    identity = run_identity(lora, settings, data_digest(train_blocks, eval_blocks, ft_eval_blocks, replay_blocks))
    start(next(model.parameters()).device)  # under torchrun: the process group, before the batch is split over it
    rank, processes = world()
    micro_batch, accumulation = settings.per_process(processes)
    if out_dir is not None and rank == 0:  # the others would see the main process's files appear
        check_out_dir(Path(out_dir), identity, overwrite)
    resume_from = last_checkpoint(Path(checkpoint_dir)) if checkpoint_dir is not None else None
    if earlier and resume_from is None:  # starting over would measure again what was kept
        raise RuntimeError(f"records up to step {max(r['step'] for r in earlier)} were kept to resume from a checkpoint in "
                           f"{checkpoint_dir}, which this process cannot see: points must reach the sweep directory")
    if settings.needs_replay:
        if replay_blocks is None or len(replay_blocks) == 0:
            raise UserInputError(f"{', '.join(settings.replay_users)} need a replay corpus (--replay-data, or replay_data in a sweep)")
        check_no_overlap(replay_blocks, eval_blocks)
    set_seed(settings.seed)  # LoRA's A init draws from the global generator
    peft_model = apply_lora(model, lora)
    run = apply_training_mitigations(TrainingRun(peft_model, settings, train_blocks, replay_blocks))
    train_blocks = run.train_blocks
    trainable = count_trainable_params(peft_model)
    out = Path(out_dir) if out_dir is not None else None
    writes = out is not None and rank == 0  # under many processes only the main one writes
    records_file = None
    if writes:
        assert out is not None
        out.mkdir(parents=True, exist_ok=True)
        write_atomically(out / "run.json", json.dumps({**identity, "trainable_params": trainable, "finished": False}, indent=2))
        records_file = open(out / "records.jsonl", "w")

    def record_sink(record: dict) -> None:
        record["trainable_params"] = trainable
        record["tokens_per_step"] = settings.batch_size * settings.seq_len
        record["world_size"] = processes
        if records_file is not None:
            records_file.write(json.dumps(record) + "\n")
            records_file.flush()
        if on_record is not None:
            on_record(record)

    # The Trainer wants an output_dir; it writes nothing there but TensorBoard's event files
    # (`runs/`), which belong with the run's results. Without one, a scratch directory.
    scratch = tempfile.TemporaryDirectory(prefix="forgetscope-trainer-") if out is None and checkpoint_dir is None else None
    ids = train_blocks.tolist()
    dataset = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    # Checkpoints are saved by the callback at its measurements, not on the Trainer's schedule.
    extra = {"save_strategy": "no", **({"save_total_limit": 1} if checkpoint_dir is not None else {}), **settings.trainer_args}
    # transformers 5 renamed gradient checkpointing "activation checkpointing" (the old names warn).
    renamed = "activation_checkpointing" in {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if renamed else "gradient_checkpointing"
    extra[checkpointing] = settings.gradient_checkpointing
    if settings.gradient_checkpointing and not any(key.endswith("checkpointing_kwargs") for key in extra):
        extra[f"{checkpointing}_kwargs"] = {"use_reentrant": False}  # non-reentrant: PEFT needs no inputs that require grad
    try:
        args = TrainingArguments(
            output_dir=str(checkpoint_dir) if checkpoint_dir is not None else scratch.name if scratch is not None else str(out),
            max_steps=settings.steps,
            per_device_train_batch_size=micro_batch,
            gradient_accumulation_steps=accumulation,
            learning_rate=settings.learning_rate,
            lr_scheduler_type=settings.scheduler,
            warmup_steps=settings.warmup_steps,
            logging_steps=1,
            report_to=settings.report_to or "none",
            seed=settings.seed,
            data_seed=settings.seed,
            bf16=settings.bf16,
            use_cpu=next(model.parameters()).device.type == "cpu",
            disable_tqdm=not progress,
            **extra,
        )
    except (ValueError, TypeError) as exc:  # a trainer_args value TrainingArguments refuses
        raise UserInputError(f"trainer_args: {first_line(exc) or type(exc).__name__}") from None
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False  # training never generates: no KV cache in its forward passes
    trainer = trainer_class(run.loss_terms)(model=peft_model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    # The Trainer prints every log line (each step here); keep a bar, or nothing.
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if progress:
        trainer.add_callback(_quiet_progress_callback())
    for extra in callbacks:
        trainer.add_callback(extra)
    callback = ForgettingCallback(
        trainer,
        eval_blocks,
        ft_eval_blocks=ft_eval_blocks,
        n_eval_points=settings.eval_points,
        schedule=settings.eval_schedule,
        budget=settings.kl_budget,
        stop_on_budget=settings.stop_on_budget,
        batch_size=settings.eval_batch_size,
        on_record=record_sink,
        base_predictions=base_predictions,
        law=law,
        law_arm=None if law is None else law_arm(law, lora),
        progress=progress,
        checkpoint=checkpoint_dir is not None,
        earlier=earlier,
    )
    trainer.add_callback(callback)
    try:
        trainer.train(resume_from_checkpoint=str(resume_from[1]) if resume_from is not None else None)
    finally:
        model.config.use_cache = use_cache
        if scratch is not None:
            scratch.cleanup()
        if records_file is not None:
            records_file.close()
    if writes:
        assert out is not None
        peft_model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        write_atomically(out / "run.json", json.dumps({**identity, "trainable_params": trainable,
                                                       "stopped_by_budget": callback.stopped_by_budget, "finished": True}, indent=2))
    records = RunRecords(callback.records)
    records.stopped_by_budget, records.trainable_params = callback.stopped_by_budget, trainable
    return records


def run_identity(lora: LoraSettings, settings: TrainSettings, data: str | None = None) -> dict:
    """What `run.json` holds of a run's settings (and, with `data`, the digest of its token
    blocks: `data_digest`), as JSON reads it back."""
    identity = json.loads(json.dumps({"lora": lora.model_dump(), "train": settings.model_dump()}))
    return identity if data is None else identity | {"data_sha256": data}


def data_digest(*blocks: torch.Tensor | dict[str, torch.Tensor] | None) -> str:
    """A SHA-256 of a run's token blocks: two runs of the same settings on other text differ."""
    h = hashlib.sha256()
    for part in blocks:
        tensors = part.items() if isinstance(part, dict) else [("", part)]
        for name, tensor in tensors:
            h.update(name.encode())
            if tensor is not None:
                h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def check_out_dir(out: Path, identity: dict, overwrite: bool = False) -> None:
    """Refuse an `--out` that is a file, or that holds anything but an earlier run with the
    same settings (`identity`), unless `overwrite`: a run never silently replaces results."""
    check_output_dir(out, "--out")
    if not out.exists():
        return
    entries = sorted(entry.name for entry in out.iterdir())
    if not entries or overwrite:
        return
    earlier = out / "run.json"
    if earlier.is_file():
        try:
            previous = json.loads(earlier.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = {}
        if isinstance(previous, dict) and {key: previous.get(key) for key in identity} == identity:
            return  # the same run again: same settings, same seed, the same numbers
        holds = "an earlier run with other settings"
    elif (out / "config.yaml").is_file() or (out / "points").is_dir():
        holds = "a sweep"
    else:
        holds = f"other files ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''})"
    raise UserInputError(f"--out {out} already holds {holds}: give a new or empty directory, or --overwrite to replace it")
