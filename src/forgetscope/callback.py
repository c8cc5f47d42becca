"""`ForgettingCallback`: watch forgetting live inside any `transformers.Trainer` (or TRL trainer).

    trainer = Trainer(model=peft_model, args=args, train_dataset=ds)
    trainer.add_callback(ForgettingCallback(trainer, eval_blocks={"wiki": blocks}))
    trainer.train()

At step 0 and at log-spaced steps it measures the forgetting metric of the model being
trained against its base (through `disable_adapter()` for a PEFT model, or a separate
`base_model`), and logs it with `trainer.log`, so TensorBoard, W&B or MLflow (`report_to`)
plot `forgetting/kl` beside the training loss. It also keeps every measurement as a record
(`callback.records`) and can hand each to `on_record` as it is completed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from transformers import TrainerCallback

from forgetscope.base_cache import BasePredictions, BaseSource, choose_base_source
from forgetscope.metric import METRIC_KEYS, mean_loss, measure_forgetting
from forgetscope.records import Record

log = logging.getLogger(__name__)


def log_spaced_steps(max_steps: int, n_points: int) -> list[int]:
    """Step 0 plus up to `n_points - 1` distinct, roughly log-spaced steps ending at `max_steps`."""
    if max_steps < 1 or n_points <= 2:  # geomspace with one point would give step 1, not the last
        return [0] if max_steps < 1 else [0, max_steps]
    steps = np.unique(np.round(np.geomspace(1, max_steps, n_points - 1)).astype(int))
    return [0, *(int(s) for s in steps)]


class ForgettingCallback(TrainerCallback):
    """Measure and log forgetting at scheduled steps of a Trainer run.

    Args:
        trainer: the trainer whose `log` receives the measurements (TRL's callbacks take it
            the same way); `None` keeps them in `records` only.
        eval_blocks: `{domain: [n, seq_len] token ids}` of pretraining-like held-out text
            (see `forgetscope.data.group_into_blocks`).
        ft_eval_blocks: held-out fine-tuning-domain blocks; their loss is logged as `ft_loss`.
        base_model: a separate frozen base model; `None` uses `disable_adapter()` of the
            PEFT model being trained.
        eval_steps: the steps to measure at; default `n_eval_points` log-spaced steps.
        on_record: called with each finished record (a dict), e.g. to append it to a file.
        record_base: record the base model's final hidden states once at the start (when the
            output head is frozen, as with LoRA) and rebuild base logits from them at every
            measurement, instead of a second forward pass through the base each time.
        base_predictions: hidden states already recorded for `eval_blocks` from the same
            base (`forgetscope.base_cache`), e.g. shared by every point of a sweep.

    Which of these is used is decided once, at the start of training, by
    `forgetscope.base_cache.choose_base_source`; `base_source` says what was chosen.
    """

    def __init__(
        self,
        trainer=None,
        eval_blocks: Mapping[str, torch.Tensor] | None = None,
        *,
        ft_eval_blocks: torch.Tensor | None = None,
        base_model: torch.nn.Module | None = None,
        eval_steps: Sequence[int] | None = None,
        n_eval_points: int = 8,
        batch_size: int = 16,
        prefix: str = "forgetting/",
        on_record: Callable[[Record], None] | None = None,
        record_base: bool = True,
        base_predictions: BasePredictions | None = None,
    ):
        if not eval_blocks:
            raise ValueError("ForgettingCallback needs eval_blocks: {domain: [n, seq_len] token ids}")
        self.trainer = trainer
        self.eval_blocks = dict(eval_blocks)
        self.ft_eval_blocks = ft_eval_blocks
        self.base_model = base_model
        self.eval_steps = None if eval_steps is None else sorted(set(int(s) for s in eval_steps))
        self.n_eval_points = n_eval_points
        self.batch_size = batch_size
        self.prefix = prefix
        self.on_record = on_record
        self.record_base = record_base
        self.base_predictions = base_predictions
        self.base_source: BaseSource | None = None
        self.records: list[Record] = []
        self._pending: dict | None = None
        self._last_train_loss: float | None = None

    # -- measuring ---------------------------------------------------------------------------

    def measure(self, model: torch.nn.Module, step: int) -> Record:
        """One record: the metric overall and per domain, and `ft_loss` when configured."""
        if self.base_source is None:  # measured outside a Trainer run
            self.base_source = choose_base_source(model, self.eval_blocks, base=self.base_model, recorded=self.base_predictions)
        result = measure_forgetting(model, self.eval_blocks, base=self.base_source, batch_size=self.batch_size, n_bootstrap=0)
        record: Record = {"step": step, "train_loss": None}
        if self.ft_eval_blocks is not None:
            record["ft_loss"] = mean_loss(model, self.ft_eval_blocks, self.batch_size)
        record.update({key: result.overall[key] for key in METRIC_KEYS})
        record["eval_tokens"] = result.overall["tokens"]
        record["domains"] = {name: {key: values[key] for key in METRIC_KEYS} for name, values in result.domains.items()}
        if self.trainer is not None:
            logs = result.flat(self.prefix)
            if "ft_loss" in record:
                logs[f"{self.prefix}ft_loss"] = record["ft_loss"]
            self.trainer.log(logs)
        return record

    def _emit(self, record: Record) -> None:
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    # -- Trainer events ----------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return  # under DDP / accelerate only the main process measures (no collectives are involved)
        if self.eval_steps is None:
            self.eval_steps = log_spaced_steps(state.max_steps, self.n_eval_points)
        self.base_source = choose_base_source(model, self.eval_blocks, base=self.base_model, recorded=self.base_predictions,
                                              record=self.record_base, batch_size=self.batch_size)
        if state.global_step in self.eval_steps and not any(r["step"] == state.global_step for r in self.records):
            self._emit(self.measure(model, state.global_step))  # step 0: before any update

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or state.global_step not in self.eval_steps:
            return
        should_log = control.should_log  # trainer.log() below clears it; the step's own log must still happen
        record = self.measure(model, state.global_step)
        control.should_log = should_log
        if should_log:
            self._pending = record  # the Trainer logs this step's loss right after this event
        else:
            record["train_loss"] = self._last_train_loss  # latest logged loss, from an earlier step
            self._emit(record)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._last_train_loss = float(logs["loss"])
            if self._pending is not None:
                self._pending["train_loss"] = self._last_train_loss
                self._emit(self._pending)
                self._pending = None

    def on_train_end(self, args, state, control, **kwargs):
        if self._pending is not None:  # training stopped before the step's loss was logged
            self._pending["train_loss"] = self._last_train_loss
            self._emit(self._pending)
            self._pending = None
