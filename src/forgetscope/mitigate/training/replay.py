"""Replay: a share of the training sequences comes from a replay corpus, pretraining-like
text mixed into the fine-tuning set (pretraining-data injection; Bethune et al. 2025,
"Scaling Laws for Forgetting during Finetuning with Pretraining Data Injection", report that
about 1% prevents forgetting of the pretraining set)."""

from __future__ import annotations

from pydantic.fields import FieldInfo

from forgetscope.extensions import TRAINING_MITIGATIONS


def with_replay(train_blocks, replay_blocks, fraction: float, seed: int):
    """The training sequences with replay ones added so that `fraction` of all come from the
    replay corpus (drawn with `seed`, repeated if it is short); the Trainer shuffles them."""
    import torch

    n_replay = round(fraction / (1.0 - fraction) * len(train_blocks))
    if n_replay == 0:
        return train_blocks
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(replay_blocks), generator=generator)
                       for _ in range(-(-n_replay // len(replay_blocks)))])[:n_replay]
    return torch.cat([train_blocks, replay_blocks[order]])


class Replay:
    name, tag, order, needs_replay = "replay_fraction", "replay", 0, True
    field = FieldInfo.from_field(0.0, ge=0.0, lt=1.0, description="Share of the training sequences drawn from the replay corpus (pretraining-data injection, Bethune et al. 2025); needs replay text.")

    def describe(self, value: float) -> str:
        return f"replay {value:.0%}"

    def apply(self, value: float, run) -> None:
        run.train_blocks = with_replay(run.train_blocks, run.replay_blocks, value, run.settings.seed)


TRAINING_MITIGATIONS.register(Replay.name, Replay())
