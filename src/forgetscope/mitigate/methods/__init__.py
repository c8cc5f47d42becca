"""Post-hoc mitigations: edits of an existing fine-tune that trade fine-tuning progress for
less forgetting, with no retraining. A method is one module in this package that registers
a `Method` (`forgetscope.extensions`); `forgetscope.mitigate.posthoc` measures every setting
of every method, and its options are `forgetscope mitigate`'s.

    class MyMethod:
        name = "mine"
        label = "post-hoc: mine"                     # how plots and tables name its curve
        order = 50                                   # where its rows come in the table
        base_setting = None                          # the setting that is the base exactly, if any
        full_setting = 1.0                           # the setting that is the fine-tune as it is
        options = {"mine_scales": (list[float], FieldInfo.from_field([0.0, 1.0], description="..."))}
        measures = "mine_scales"                     # the option listing the settings it measures
        def prepare(self, finetuned, base, options) -> Edit | str: ...   # str: why it does not apply

    METHODS.register("mine", MyMethod())

Modules here import torch inside their functions: the settings are built from the methods'
options when any command starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from forgetscope.extensions import METHODS, Method

if TYPE_CHECKING:
    import torch
    from peft.tuners.lora import LoraLayer

__all__ = ["METHODS", "Edit", "Method", "lora_layers", "restored"]


class Edit(Protocol):
    """One fine-tune, ready to be edited at each setting of one method."""

    settings: list[float]

    def applied(self, setting: float) -> contextlib.AbstractContextManager[None]:
        """The fine-tune edited at `setting` inside the block, exactly restored after it."""

    def is_base(self, setting: float) -> bool:
        """Whether this setting gives the base model bit for bit (then its measurement reuses
        the base's recorded pass instead of running the model again)."""

    def describe(self, setting: float) -> dict[str, Any]:
        """Extra keys for this setting's row (e.g. how many intruder dimensions were scaled)."""

    def save(self, setting: float, directory: Path) -> None:
        """Write the edited fine-tune as an ordinary PEFT adapter (or full model) directory."""


def lora_layers(model: torch.nn.Module) -> Iterator[tuple[str, LoraLayer, str]]:
    """`(module name in the base model, LoRA layer, adapter name)` of every adapted layer."""
    import torch
    from peft.tuners.lora import LoraLayer

    inner = cast(torch.nn.Module, model.get_base_model())  # type: ignore[operator]  # a PeftModel's method, typed as a Module's attribute
    for name, module in inner.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    yield name, module, adapter


@contextlib.contextmanager
def restored(tensors: list[torch.Tensor]) -> Iterator[None]:
    """Whatever the block does to `tensors` in place is undone exactly (copies back)."""
    import torch

    saved = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, copy in zip(tensors, saved):
                tensor.copy_(copy)
