"""Mitigations during training: one module each in this package, registered in
`forgetscope.extensions.TRAINING_MITIGATIONS`. Each contributes one setting (a float whose
default, 0, turns it off), its words, and what it does to a run about to train: change the
training sequences, or add a term to the loss. Nothing else in forgetscope names them:
the setting becomes a `TrainSettings` field, a grid axis, a record label and a `train` option.

    class Mine:
        name, tag, order, needs_replay = "mine_weight", "mine", 40, False
        field = FieldInfo.from_field(0.0, ge=0.0, description="Weight of my penalty.")
        def describe(self, value): return f"my penalty {value:g}"
        def apply(self, value, run): run.loss_terms.append(lambda model: value * my_penalty(model))

    TRAINING_MITIGATIONS.register("mine_weight", Mine())

With every setting 0 the run is plain training, record for record (a plain `Trainer`).
Replay text must never overlap the text forgetting is measured on: `data.check_no_overlap`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LossTerm = Callable[[Any], Any]
"""`model -> scalar tensor` added to the training loss each step."""


@dataclass
class TrainingRun:
    """A run about to train, as the training mitigations see and change it."""

    model: Any
    """The PEFT model, adapter freshly initialised (B = 0: its predictions are the base's)."""
    settings: Any
    """Its `TrainSettings`."""
    train_blocks: Any
    """`[n, seq_len]` training sequences; a mitigation may add to them."""
    replay_blocks: Any = None
    """The replay corpus, `[m, seq_len]`, where the run has one."""
    loss_terms: list[LossTerm] = field(default_factory=list)


def apply_training_mitigations(run: TrainingRun) -> TrainingRun:
    """Every mitigation the run's settings switch on, in order, applied to `run`."""
    from forgetscope.extensions import training_mitigations

    for mitigation in training_mitigations():
        value = getattr(run.settings, mitigation.name)
        if value:
            mitigation.apply(value, run)
    return run


def trainer_class(loss_terms: list[LossTerm]):
    """A `transformers.Trainer` subclass whose loss adds `loss_terms`; plain `Trainer` without
    any, so unmitigated runs take exactly the usual path."""
    from transformers import Trainer

    if not loss_terms:
        return Trainer

    class MitigatedTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            # Where the Trainer leaves the loss as it is over accumulated passes (the model
            # normalised it by the whole batch's tokens), each pass adds its share of a term.
            scaled = self.loss_is_scaled_for_ga
            if scaled is None:
                scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
            share = 1.0 / getattr(self, "current_gradient_accumulation_steps", 1) if scaled else 1.0
            for term in loss_terms:
                loss = loss + share * term(model)
            return (loss, outputs) if return_outputs else loss

    return MitigatedTrainer
