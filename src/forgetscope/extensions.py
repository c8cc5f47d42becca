"""The plug-ins that extend the run settings themselves, so they sit below `settings`.

A training mitigation is one module of `forgetscope.mitigate.training` that registers a
`TrainingMitigation` here. Its setting becomes a field of `settings.TrainSettings`, and so,
with nothing else edited, a sweep grid axis, a record label, a part of point ids, a
`forgetscope train` option, and a curve of the trade-off plot. A plug-in module imports this
module (never `settings`, which is built from it) and pydantic's `FieldInfo`.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic.fields import FieldInfo

from forgetscope.registry import Registry


class TrainingMitigation(Protocol):
    """Something a fine-tune does while it trains to forget less, switched on by one number."""

    name: str
    """Its setting's name: a field of `TrainSettings` (`kl_weight`)."""
    field: FieldInfo
    """The setting's definition (bounds, help); its default, 0, turns the mitigation off."""
    tag: str
    """How a point id shows it in use (`kl` in `...-kl0.1-...`)."""
    order: int
    """Settings, labels and id parts of lower orders come first."""
    needs_replay: bool
    """Whether it draws on the replay corpus (then a run needs replay text)."""

    def describe(self, value: float) -> str:
        """The mitigation at `value`, in words for plots and tables ("KL penalty 0.1")."""

    def apply(self, value: float, run: Any) -> None:
        """Change a run about to train (`forgetscope.mitigate.training.TrainingRun`): its
        training sequences, or the loss terms its Trainer adds."""


TRAINING_MITIGATIONS: Registry[TrainingMitigation] = Registry("training_mitigations", "forgetscope.mitigate.training",
                                                              TrainingMitigation)


def training_mitigations() -> list[TrainingMitigation]:
    """Every registered training mitigation, in order."""
    return sorted(TRAINING_MITIGATIONS.values(), key=lambda m: (m.order, m.name))
