"""A KL penalty toward the base on replay text: self-distillation. Each step adds
`kl_weight * KL(base || model)` on a batch of replay sequences; the base side is the base
model's final hidden states on that text, recorded once (`base_cache`) before training, so
no second model runs."""

from __future__ import annotations

from pydantic.fields import FieldInfo

from forgetscope.errors import UserInputError
from forgetscope.extensions import TRAINING_MITIGATIONS

KL_POOL_SEQUENCES = 512
"""Replay sequences whose base hidden states are recorded for the KL penalty, cycled through."""


class ReplayDistillation:
    """The KL penalty's replay batches and the base's recorded hidden states on them."""

    def __init__(self, model, replay_blocks, batch_size: int, seed: int):
        import torch

        from forgetscope.base_cache import record_base_predictions

        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(replay_blocks), generator=generator)[:KL_POOL_SEQUENCES]
        self.blocks = replay_blocks[order]
        # Recorded before training, while the adapter is B = 0: the base's own predictions.
        self.hidden = record_base_predictions(model, {"replay": self.blocks}, batch_size=16).hidden["replay"]
        self.batch_size, self._next = batch_size, 0

    def penalty(self, model):
        """Mean per-token `KL(base || model)` on the next batch of replay sequences, through the
        float32 head a chunk of positions at a time (`metric.kl_to_base`)."""
        import torch

        from forgetscope.heads import final_hidden, output_head
        from forgetscope.metric import kl_to_base

        index = torch.arange(self._next, self._next + self.batch_size) % len(self.blocks)
        self._next = int(index[-1]) + 1
        device = model.get_input_embeddings().weight.device
        model_hidden = final_hidden(model, self.blocks[index].to(device))[:, :-1]
        base_hidden = self.hidden[index].to(model_hidden.device)[:, :-1]
        width, head = model_hidden.shape[-1], output_head(model)
        if head is None:
            raise ValueError("the KL penalty needs the model's output head")
        return kl_to_base(head, model_hidden.reshape(-1, width), base_hidden.reshape(-1, width))


class KLPenalty:
    name, tag, order, needs_replay = "kl_weight", "kl", 10, True
    field = FieldInfo.from_field(0.0, ge=0.0, description="Weight of a KL(base || model) penalty on a batch of replay text each step (self-distillation toward the base); needs replay text.")

    def describe(self, value: float) -> str:
        return f"KL penalty {value:g}"

    def apply(self, value: float, run) -> None:
        try:
            from forgetscope.distributed import world  # lazily: settings load this file, and fits never need torch

            distillation = ReplayDistillation(run.model, run.replay_blocks, run.settings.per_process(world()[1])[0], run.settings.seed)
        except ValueError as exc:
            raise UserInputError(f"kl_weight: {exc}") from None
        run.loss_terms.append(lambda model: value * distillation.penalty(model))


TRAINING_MITIGATIONS.register(KLPenalty.name, KLPenalty())
