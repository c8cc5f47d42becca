"""Scaling down intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An
Illusion of Equivalence", arXiv:2410.21228), written by hand from the paper's description
(its Algorithm 1 and the intervention of its section on forgetting).

For every adapted weight, `W0` (base) and `Wt = W0 + dW` (fine-tuned) are decomposed by SVD.
Among the top `top_k` left singular vectors `u_j` of `Wt`, an *intruder dimension* is one
whose cosine similarity with every left singular vector of `W0` is below `threshold`: a new
direction the fine-tune put among the matrix's largest. The paper shows forgetting sits in
these directions and that shrinking their singular values, `Wt + (s - 1) sigma_j u_j v_j^T`,
recovers the pre-training distribution at little cost on the fine-tuning task. The scale `s`
is the setting (1 leaves the fine-tune as it is). Singular vectors are defined up to sign,
so similarity is the absolute cosine.

The correction is kept as its low-rank factors (`[out, k]` and `[k, in]` per weight, never
a dense `[out, in]` matrix) and applied by a forward hook on the adapted layer, so a setting
costs no copy of any weight and is undone exactly by removing the hook. A saved setting is
an ordinary PEFT LoRA adapter whose factors are the adapter's and the correction's side by
side: the update `s B A + (scale - 1) U_k S_k V_k^T` exactly, at rank `r + intruders`
(`rank_pattern`, with `alpha_pattern` making its scaling 1).

PEFT 0.21 ships the same intervention (`peft.tuners.lora.intruders.reduce_intruder_dimension`).
Its detection is the same test on the same SVDs, in float32 (`tests/test_mitigate.py`
checks that both find the same intruders); forgetscope keeps its own because PEFT truncates
the edited update back to rank `r` (losing up to `k` of its directions), transposes GPT-2's
`Conv1D` weights before the SVD (so it compares right singular vectors there), and makes a
new adapter per setting instead of measuring one in place.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

from pydantic import Field
from pydantic.fields import FieldInfo

from forgetscope.mitigate.methods import METHODS, Edit, lora_layers

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraConfig
    from peft.tuners.lora.layer import Linear as LoraLinear


@dataclass
class _Layer:
    name: str
    module: LoraLinear
    """The adapted layer: a PEFT LoRA layer, typed as its `Linear` (every kind has its
    `get_base_layer`, `get_delta_weight` and `r`)."""
    adapter: str
    intruders: int
    left: torch.Tensor
    """`U_k S_k`, `[out, k]`: the intruder dimensions' left singular vectors times their values..."""
    right: torch.Tensor
    """...and `V_k^T`, `[k, in]`: the correction is `left @ right`, in `[out, in]` orientation."""


def _oriented(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """`[out, in]` whatever the layer stores (GPT-2's Conv1D keeps `[in, out]`)."""
    return weight.T if fan_in_fan_out else weight


def find_intruders(base_weight: torch.Tensor, tuned_weight: torch.Tensor, threshold: float, top_k: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(U_k S_k, V_k^T)`, the factors of `sum_j sigma_j u_j v_j^T` over the intruder
    dimensions of `tuned_weight` against `base_weight` (both `[out, in]`), computed in float64
    (`k` may be 0)."""
    import torch

    u0 = torch.linalg.svd(base_weight.double(), full_matrices=False).U
    ut, st, vht = torch.linalg.svd(tuned_weight.double(), full_matrices=False)
    k = min(top_k, len(st))
    similarity = (u0.T @ ut[:, :k]).abs().max(dim=0).values
    intruders = (similarity < threshold).nonzero().flatten()
    return ut[:, intruders] * st[intruders], vht[intruders]


def _base_weight(layer: LoraLinear) -> torch.Tensor:
    """The frozen weight under a LoRA layer (torch types a sub-module's attributes as
    `Tensor | Module`: the base layer's `weight` is a tensor)."""
    import torch

    return cast(torch.Tensor, layer.get_base_layer().weight)


class _IntruderEdit:
    def __init__(self, finetuned: PeftModel, options: Any):
        import torch

        self.model, self.settings = finetuned, list(options.intruder_scales)
        self.threshold, self.top_k = options.intruder_threshold, options.intruder_top_k
        self.layers: list[_Layer] = []
        with torch.no_grad():
            for name, layer, adapter in lora_layers(finetuned):
                module = cast("LoraLinear", layer)  # see `_Layer.module`
                fan = bool(getattr(module, "fan_in_fan_out", False))
                w0 = _oriented(_base_weight(module), fan)
                delta = _oriented(module.get_delta_weight(adapter), fan)
                left, right = find_intruders(w0, w0.double() + delta.double(), self.threshold, self.top_k)
                del delta
                if len(right):
                    self.layers.append(_Layer(name, module, adapter, len(right), left.float(), right.float()))

    @contextlib.contextmanager
    def applied(self, setting: float) -> Iterator[None]:
        """The layers' outputs gain `(setting - 1) x V_k S_k U_k^T`: the edited weight's, without editing it."""
        hooks = [layer.module.register_forward_hook(_Correction(layer, setting - 1.0)) for layer in self.layers]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def is_base(self, setting: float) -> bool:
        return False  # scaling the intruders alone never removes the rest of the update

    def describe(self, setting: float) -> dict:
        return {"threshold": self.threshold, "top_k": self.top_k,
                "intruders": sum(layer.intruders for layer in self.layers), "layers_with_intruders": len(self.layers)}

    def save(self, setting: float, directory: Path) -> None:
        import torch
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        self.model.save_pretrained(str(directory))  # the config, README and weights of the unedited layers
        adapter = next(iter(self.model.peft_config))
        config = cast("LoraConfig", copy.deepcopy(self.model.peft_config[adapter]))
        state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.model).items()}
        rank_pattern, alpha_pattern = dict(config.rank_pattern or {}), dict(config.alpha_pattern or {})
        with torch.no_grad():
            for layer in self.layers:  # B' A' = [s B, (scale - 1) U_k S_k] [A; V_k^T]: the edited update exactly
                scaling = layer.module.scaling[layer.adapter]
                a = cast("torch.nn.Linear", layer.module.lora_A[layer.adapter]).weight.detach().float()
                b = cast("torch.nn.Linear", layer.module.lora_B[layer.adapter]).weight.detach().float()
                rank = layer.module.r[layer.adapter] + layer.intruders
                prefix = next(k for k in state if k.endswith(f"{layer.name}.lora_A.weight")).removesuffix("lora_A.weight")
                left, right = layer.left.to(b.device), layer.right.to(a.device)
                state[prefix + "lora_B.weight"] = torch.cat([b * scaling, (setting - 1.0) * left], dim=1).cpu().contiguous()
                state[prefix + "lora_A.weight"] = torch.cat([a, right], dim=0).cpu().contiguous()
                key = re.escape(layer.name)
                rank_pattern[key] = rank
                alpha_pattern[key] = math.sqrt(rank) if config.use_rslora else float(rank)  # scaling 1
        save_file(state, str(Path(directory) / "adapter_model.safetensors"), metadata={"format": "pt"})
        saved = json.loads((Path(directory) / "adapter_config.json").read_text())
        saved.update(rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
        (Path(directory) / "adapter_config.json").write_text(json.dumps(saved, indent=2))


class _Correction:
    """A forward hook adding `factor x (x V_k^T^T) (U_k S_k)^T` to a LoRA layer's output: the
    intruder correction applied as two thin matmuls, in float32 as PEFT runs LoRA."""

    def __init__(self, layer: _Layer, factor: float):
        self.left, self.right, self.factor = layer.left, layer.right, factor

    def __call__(self, module, inputs, output):
        if module.disable_adapters:  # the base, as `disable_adapter()` gives it: no edit of the update
            return output
        x = inputs[0]
        right, left = self.right.to(x.device), self.left.to(x.device)
        return output + (self.factor * ((x.float() @ right.T) @ left.T)).to(output.dtype)


class IntruderMethod:
    name = "intruder"
    label = "post-hoc: intruder scale"
    order = 10
    base_setting: float | None = None  # no scale of the intruders alone gives the base back
    full_setting = 1.0
    options = {
        "intruder_scales": (list[Annotated[float, Field(ge=0.0, le=1.0)]], FieldInfo.from_field([0.0, 0.5], description="Scales in [0, 1] of the intruder dimensions' singular values (Shuttleworth et al. 2024), comma-separated; none to skip.")),
        "intruder_threshold": (float, FieldInfo.from_field(0.5, gt=0, lt=1, description="Intruder dimension: a top singular vector of the fine-tuned weight whose |cosine| with every base singular vector is below this.")),
        "intruder_top_k": (int, FieldInfo.from_field(10, ge=1, description="Top singular vectors of each fine-tuned weight examined for intruders.")),
    }
    measures = "intruder_scales"

    def prepare(self, finetuned, base, options) -> Edit | str:
        if not options.intruder_scales:
            return "no --intruder-scales given"
        if base is not None:
            return "intruder dimensions are found in LoRA updates: give --adapter"
        return _IntruderEdit(finetuned, options)


METHODS.register("intruder", IntruderMethod())
