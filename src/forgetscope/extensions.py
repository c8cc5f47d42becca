"""The plug-ins that extend the settings themselves, so they sit below `settings`.

A training mitigation is one module of `forgetscope.mitigate.training` that registers a
`TrainingMitigation` here. Its setting becomes a field of `settings.TrainSettings`, and so,
with nothing else edited, a sweep grid axis, a record label, a part of point ids, a
`forgetscope train` option, and a curve of the trade-off plot.

A post-hoc mitigation is one module of `forgetscope.mitigate.methods` that registers a
`Method` here. Its options become fields of `settings.MitigationSettings`, and so options of
`forgetscope mitigate`.

A plug-in module imports this module (never `settings`, which is built from it), pydantic's
`FieldInfo`, and torch only inside its functions (settings are read at every command's start).
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


class Method(Protocol):
    """A post-hoc mitigation: what it is called, where its rows go, which of its settings are
    the two ends of its curve, and its options, so that no other module names any method."""

    name: str
    label: str
    """Its curve's name in plots and tables ("post-hoc: update scale")."""
    order: int
    """Rows and curves of lower orders come first."""
    base_setting: float | None
    """The setting that gives the base model exactly (its `ft_loss` is the base's), or None."""
    full_setting: float
    """The setting that leaves the fine-tune as it is."""
    options: dict[str, tuple[Any, FieldInfo]]
    """`{name: (type, definition)}`: its fields of `MitigationSettings` (`mitigate` options)."""
    measures: str
    """Which of its options lists the settings it measures (empty: it measures none)."""

    def prepare(self, finetuned: Any, base: Any, options: Any) -> Any:
        """An `Edit` of `finetuned` (`forgetscope.mitigate.methods.Edit`; a PEFT model when
        `base` is None, else a full fine-tune of `base`), or a sentence saying why this method
        does not apply to it. `options`: the `MitigationSettings`."""


METHODS: Registry[Method] = Registry("mitigations", "forgetscope.mitigate.methods", Method)


def posthoc_methods() -> list[Method]:
    """Every registered post-hoc method, in order."""
    return sorted(METHODS.values(), key=lambda m: (m.order, m.name))


TRAINING_MITIGATIONS: Registry[TrainingMitigation] = Registry("training_mitigations", "forgetscope.mitigate.training",
                                                              TrainingMitigation)


def training_mitigations() -> list[TrainingMitigation]:
    """Every registered training mitigation, in order."""
    return sorted(TRAINING_MITIGATIONS.values(), key=lambda m: (m.order, m.name))
