"""An L2 pull of the update toward zero: `l2_weight * sum ||s B A||_F^2` over adapted layers,
the squared size of the update itself (unlike weight decay on A and B, which depends on how
the product is split), computed as `s^2 tr((B^T B)(A A^T))` in r x r."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from pydantic.fields import FieldInfo

from forgetscope.errors import UserInputError
from forgetscope.extensions import TRAINING_MITIGATIONS

if TYPE_CHECKING:
    import torch


def l2_of_update(model):
    """`sum ||s B A||_F^2` over the model's LoRA layers, computed in r x r."""
    from forgetscope.mitigate.methods import lora_layers

    total = None
    for _, layer, adapter in lora_layers(model):
        a, b = cast("torch.Tensor", layer.lora_A[adapter].weight), cast("torch.Tensor", layer.lora_B[adapter].weight)
        term = layer.scaling[adapter] ** 2 * ((b.T @ b) * (a @ a.T)).sum()
        total = term if total is None else total + term
    if total is None:
        raise UserInputError("l2_weight needs LoRA layers to pull toward zero")
    return total


class L2Pull:
    name, tag, order, needs_replay = "l2_weight", "l2", 20, False
    field = FieldInfo.from_field(0.0, ge=0.0, description="Weight of an L2 pull of the LoRA update toward zero: sum over layers of ||s B A||_F^2.")

    def describe(self, value: float) -> str:
        return f"L2 pull {value:g}"

    def apply(self, value: float, run) -> None:
        run.loss_terms.append(lambda model: value * l2_of_update(model))


TRAINING_MITIGATIONS.register(L2Pull.name, L2Pull())
