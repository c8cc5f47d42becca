"""Scaling the update: `W0 + lambda * dW` for lambda in [0, 1].

For a LoRA adapter the update `s B A` is scaled through `B` (so a saved setting is an
ordinary adapter with the same config); for a full fine-tune the weights are interpolated,
`(1 - lambda) W0 + lambda W1`, which is WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning
of zero-shot models"). lambda = 0 is the base exactly and lambda = 1 the fine-tune exactly.
The interpolated weights are torch parametrizations (`torch.nn.utils.parametrize`): each is
made when its module runs and dropped after, so the two models stay the only copies.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

from pydantic import Field
from pydantic.fields import FieldInfo

from forgetscope.mitigate.methods import METHODS, Edit, lora_layers, restored

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


class _Scaled:
    """What both kinds share: lambda = 0 is the base, and a setting saves as the model's own format."""

    model: PeftModel | PreTrainedModel
    settings: list[float]
    applied: Callable[[float], contextlib.AbstractContextManager[None]]
    """The fine-tune at a setting inside the block, restored after it (each kind's own)."""

    def is_base(self, setting: float) -> bool:
        return setting == 0.0  # B scaled by 0 adds exact zeros; (1 - 0) W0 + 0 W1 is W0 (tested)

    def describe(self, setting: float) -> dict:
        return {}

    def save(self, setting: float, directory: Path) -> None:
        with self.applied(setting):
            self.model.save_pretrained(str(directory))


class _ScaledAdapter(_Scaled):
    """LoRA: `B` times lambda, so the update `s B A` is."""

    def __init__(self, finetuned: PeftModel, settings: list[float]):
        import torch

        self.model, self.settings = finetuned, settings
        # `lora_B` is a `ModuleDict` of `Linear`s (or convolutions), typed as modules.
        self.b_weights = [cast(torch.nn.Linear, layer.lora_B[adapter]).weight
                          for _, layer, adapter in lora_layers(finetuned)]

    @contextlib.contextmanager
    def applied(self, setting: float) -> Iterator[None]:
        import torch

        with restored(self.b_weights), torch.no_grad():
            for weight in self.b_weights:
                weight.mul_(setting)
            yield


@functools.cache
def _toward_class() -> type:
    import torch

    class Toward(torch.nn.Module):
        """The parametrization `W1 -> (1 - l) W0 + l W1`, in this order so l = 0 and l = 1 give W0 and W1 exactly."""

        def __init__(self, base_weight: torch.Tensor, setting: float):
            super().__init__()
            self.base_weight, self.setting = base_weight, setting

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return torch.add(weight * self.setting, self.base_weight.to(weight.device, weight.dtype), alpha=1.0 - self.setting)

    return Toward


class _Interpolated(_Scaled):
    """WiSE-FT: every floating-point parameter moved from the base toward the fine-tune."""

    def __init__(self, finetuned: PreTrainedModel, base: PreTrainedModel, settings: list[float]):
        self.model, self.settings = finetuned, settings
        # Every name a tensor has (tied embeddings and heads too), so each module sees the interpolation.
        base_params = dict(base.named_parameters(remove_duplicate=False))
        self.pairs = [(name, base_params[name].detach()) for name, p in finetuned.named_parameters(remove_duplicate=False)
                      if name in base_params and p.is_floating_point() and p.shape == base_params[name].shape]

    @contextlib.contextmanager
    def applied(self, setting: float) -> Iterator[None]:
        from torch.nn.utils import parametrize

        done = []
        try:
            for name, base_weight in self.pairs:
                owner, _, attr = name.rpartition(".")
                module = self.model.get_submodule(owner)
                parametrize.register_parametrization(module, attr, _toward_class()(base_weight, setting), unsafe=True)
                done.append((module, attr))
            yield
        finally:
            for module, attr in reversed(done):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)

    def save(self, setting: float, directory: Path) -> None:
        """The interpolated weights, saved as a full model (they are gathered on the CPU to be written)."""
        import torch

        current = dict(self.model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            state = {name: _toward_class()(base_weight, setting)(current[name]).cpu() for name, base_weight in self.pairs}
        self.model.save_pretrained(str(directory), state_dict={**self.model.state_dict(), **state})


class ScaleMethod:
    name = "scale"
    label = "post-hoc: update scale"
    order = 0
    base_setting: float | None = 0.0
    full_setting = 1.0
    options = {"scales": (list[Annotated[float, Field(ge=0.0, le=1.0)]], FieldInfo.from_field(
        [0.0, 0.25, 0.5, 0.75, 1.0], description="Update scales lambda in [0, 1], comma-separated (LoRA: lambda s B A; full fine-tune: "
                                                 "WiSE-FT interpolation); 1 is the fine-tune as it is; none for no rows."))}
    measures = "scales"

    def prepare(self, finetuned, base, options) -> Edit | str:
        if not options.scales:
            return "no --scales given"
        if base is None:
            return _ScaledAdapter(finetuned, list(options.scales))
        return _Interpolated(finetuned, base, list(options.scales))


METHODS.register("scale", ScaleMethod())
