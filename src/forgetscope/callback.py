"""`ForgettingCallback`: watch forgetting live inside any `transformers.Trainer` (or TRL trainer).

    trainer = Trainer(model=peft_model, args=args, train_dataset=ds)
    trainer.add_callback(ForgettingCallback(trainer, eval_blocks={"wiki": blocks}))
    trainer.train()

At step 0 and at scheduled steps (log-spaced by default) it measures the forgetting metric of the model being
trained against its base (through `disable_adapter()` for a PEFT model, or a separate
`base_model`), and logs it through the Trainer's own logging, so TensorBoard, W&B or MLflow
(`report_to`) plot `forgetting/kl` beside the training loss (TensorBoard files it under
`train/forgetting/kl`, as it files every training log). It logs through `Trainer.log`
itself, not a subclass's: TRL's `SFTTrainer.log` would flush the metrics it accumulates
for the loss entry (`entropy`, `mean_token_accuracy`) into the forgetting entry. It also keeps every measurement as a record
(`callback.records`) and can hand each to `on_record` as it is completed.

With a KL `budget`, every measurement also forecasts the run's KL at its last step from the
measurements so far (`forgetscope.laws.forecast.forecast_run`), logs it, and can stop the
run once the budget is crossed, or once the forecast says it surely will be.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from forgetscope.base_cache import BasePredictions, BaseSource
from forgetscope.budget import KLBudget
from forgetscope.distributed import broadcast, is_main, unsupported_reason
from forgetscope.errors import UserInputError
from forgetscope.meter import ForgettingMeter
from forgetscope.models import count_trainable_params
from forgetscope.records import Record
from forgetscope.settings import TrainSettings

log = logging.getLogger(__name__)


def log_spaced_steps(max_steps: int, n_points: int) -> list[int]:
    """Step 0 plus up to `n_points - 1` distinct, roughly log-spaced steps ending at `max_steps`."""
    if max_steps < 1 or n_points <= 2:  # geomspace with one point would give step 1, not the last
        return [0] if max_steps < 1 else [0, max_steps]
    steps = np.unique(np.round(np.geomspace(1, max_steps, n_points - 1)).astype(int))
    return [0, *(int(s) for s in steps)]


def dense_late_steps(max_steps: int, n_points: int) -> list[int]:
    """Step 0, a third of the points log-spaced up to a fifth of the run, the rest evenly
    spaced from there to `max_steps`: the early rise is seen, and most points fall past the
    bend, where laws are tested."""
    if max_steps < 5 or n_points <= 4:
        return log_spaced_steps(max_steps, n_points)
    n_log = max(2, (n_points - 1) // 3)
    early = np.geomspace(1, max_steps / 5, n_log)
    late = np.linspace(max_steps / 5, max_steps, n_points - n_log)[1:]
    steps = np.unique(np.round(np.concatenate([early, late])).astype(int))
    return [0, *(int(s) for s in steps)]


SCHEDULES = {"log": log_spaced_steps, "dense-late": dense_late_steps}


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
        eval_steps: the steps to measure at; default `n_eval_points` steps of `schedule`
            (`log` or `dense-late`, see `SCHEDULES`).
        on_record: called with each finished record (a dict), e.g. to append it to a file.
        record_base: record the base model's final hidden states once at the start (when the
            output head is frozen, as with LoRA) and rebuild base logits from them at every
            measurement, instead of a second forward pass through the base each time.
        base_predictions: hidden states already recorded for `eval_blocks` from the same
            base (`forgetscope.base_cache`), e.g. shared by every point of a sweep.
        budget: a KL budget (nats/token); each record then carries `forecast`, the KL
            forecast at the last step with its 95% interval and the step the budget will
            be crossed, also logged as `forgetting/forecast_kl` and friends.
        stop_on_budget: `measured` stops the run when a measured KL exceeds `budget`,
            `forecast` when the forecast's lower bound at the last step does, `never` not.
        law: a sweep's fitted laws (`fits.json`, as `forgetscope.laws.select.load_fits` reads
            it): the forecast then takes the sweep's law of KL for this run's `P`, module set
            (`law_arm`, as the sweep names it; needed when it has several) and learning rate
            as a prior, and fits only this run's own factor (`forecast_run(prior=)`). Each
            measurement then forecasts the last step's KL, with or without a `budget`.
        progress: show a bar on stderr while a measurement runs (training waits for it).
        checkpoint: ask the Trainer to save a checkpoint right after each measurement (its
            `save_total_limit` says how many are kept): a run resumed from one lost nothing
            it measured.
        earlier: the records a run resumed from a checkpoint measured before it; steps they
            hold are not measured again, and forecasts see them.

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
        schedule: str = "log",
        batch_size: int = 16,
        prefix: str = "forgetting/",
        on_record: Callable[[Record], None] | None = None,
        record_base: bool = True,
        base_predictions: BasePredictions | None = None,
        budget: float | None = None,
        stop_on_budget: str = "never",
        law: Mapping | None = None,
        law_arm: str | None = None,
        progress: bool = False,
        checkpoint: bool = False,
        earlier: Sequence[Record] = (),
    ):
        if not eval_blocks:
            raise ValueError("ForgettingCallback needs eval_blocks: {domain: [n, seq_len] token ids}")
        TrainSettings.check("eval_schedule", schedule, "schedule")  # the setting's one definition says what is valid
        self.trainer = trainer
        self.meter = ForgettingMeter(eval_blocks, ft_eval_blocks=ft_eval_blocks, base_model=base_model,
                                     base_predictions=base_predictions, record_base=record_base, batch_size=batch_size,
                                     progress=progress)
        self.budget = KLBudget(budget, stop_on_budget, law, law_arm)
        self.eval_steps = None if eval_steps is None else sorted(set(int(s) for s in eval_steps))
        self.n_eval_points, self.schedule = n_eval_points, schedule
        self.prefix = prefix
        self.on_record = on_record
        self.stopped_by_budget: str | None = None
        """Why the budget stopped training, when it did."""
        self.records: list[Record] = list(earlier)
        self.checkpoint = checkpoint
        self._pending: dict | None = None
        self._last_train_loss: float | None = None

    @property
    def base_source(self) -> BaseSource | None:
        """Where base predictions come from (`base_cache.choose_base_source`), once chosen."""
        return self.meter.base_source

    # -- measuring ---------------------------------------------------------------------------

    def measure(self, model: torch.nn.Module, step: int) -> Record:
        """One record (`ForgettingMeter.record`), with the forecast, logged through the Trainer.

        Under many processes every process measures its share and holds the whole record;
        only the main one forecasts and logs."""
        record, result = self.meter.record(model, step)
        if not is_main():
            return record
        forecast = self.budget.forecast(self.records, step, record["kl"])
        if forecast is not None:
            record["forecast"] = forecast
        if self.trainer is not None:
            logs = result.flat(self.prefix)
            if "ft_loss" in record:
                logs[f"{self.prefix}ft_loss"] = record["ft_loss"]
            for key in ("kl", "low", "high", "budget_step"):
                if forecast is not None and key in forecast:
                    logs[f"{self.prefix}forecast_{key}"] = forecast[key]
            Trainer.log(self.trainer, logs)  # the base method: a subclass's log() may add its own metrics
        return record

    def _emit(self, record: Record) -> None:
        if not is_main():
            return  # records and their files are the main process's
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    # -- Trainer events ----------------------------------------------------------------------
    # Every process takes part in every measurement (`distributed`): under FSDP each forward
    # pass gathers weights from all of them, and a process that skipped one would hang the rest.

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        reason = unsupported_reason(model)
        if reason is not None:
            raise UserInputError(reason)
        self.budget.begin(state.max_steps, count_trainable_params(model), getattr(args, "learning_rate", None))
        if self.eval_steps is None:
            self.eval_steps = SCHEDULES[self.schedule](state.max_steps, self.n_eval_points)
        self.meter.start(model)
        measured = any(r["step"] == state.global_step for r in self.records)  # a run resumed at a step already measured
        if state.global_step in self.eval_steps and not broadcast(measured):
            self._emit(self.measure(model, state.global_step))  # step 0: before any update

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step not in self.eval_steps:
            return
        should_log = control.should_log  # Trainer.log() below clears it; the step's own log must still happen
        record = self.measure(model, state.global_step)
        control.should_log = should_log
        control.should_save = control.should_save or self.checkpoint
        # The main process decides, every process follows: all stop at the same step.
        reason = broadcast(self.budget.crossed(record) if is_main() else None)
        if reason is not None:
            self.stopped_by_budget = reason
            if is_main():
                log.warning("stopping: %s", reason)
            control.should_training_stop = True
        if should_log and is_main():
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
