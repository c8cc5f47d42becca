"""Expand a grid into points: one fine-tuning run each, named by a stable id.

A point is one value of every grid axis (`settings.grid_axes()`): the LoRA settings, the
learning rate, the seed, and one setting per training mitigation. Nothing here names an
axis beyond the readable head of the id (rank, modules, scaling, seed), so a new axis or a
new training mitigation is picked up as it is declared.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from forgetscope.settings import LoraSettings, axis_tag, grid_axes
from forgetscope.sweep.config import Grid


@dataclass(frozen=True)
class Point:
    """One combination of the grid: `{axis: value}` for every axis, in axis order. Axes left
    out take their settings' defaults."""

    values: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        axes = grid_axes()
        unknown = set(self.values) - set(axes)
        if unknown:
            raise TypeError(f"Point: unknown axis {', '.join(sorted(unknown))}")
        object.__setattr__(self, "values", {name: self.values[name] if name in self.values else owner.default(name)
                                            for name, owner in axes.items()})

    @classmethod
    def of(cls, **values: Any) -> Point:
        return cls(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getstate__(self) -> dict:  # pickled to remote executors as its values
        return {"values": self.values}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "values", state["values"])

    def optional(self) -> dict[str, Any]:
        """The axes that enter the id only when set (training mitigations, ...): those this
        point sets away from their defaults."""
        axes = grid_axes()
        return {name: value for name, value in self.values.items()
                if axis_tag(name) is not None and value != axes[name].default(name)}

    @property
    def point_id(self) -> str:
        """A readable, stable id: the same settings get the same id in every sweep. An axis
        with a tag enters it only when set, so the points of sweeps from before that axis
        existed keep their ids."""
        settings = {k: v for k, v in self.values.items() if axis_tag(k) is None} | self.optional()
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        modules = "all" if self.values["target_modules"] == "all-linear" else "+".join(self.values["target_modules"])
        tagged = "".join(f"-{axis_tag(name)}{value:g}" if isinstance(value, float) else f"-{axis_tag(name)}{value}"
                         for name, value in self.optional().items())
        scaling = "rs" if self.values["rslora"] else "lora"
        return f"r{self.values['rank']}-{modules}-{scaling}-s{self.values['seed']}{tagged}-{digest}"

    def lora(self) -> LoraSettings:
        return LoraSettings(**{k: v for k, v in self.values.items() if k in LoraSettings.model_fields})

    def labels(self) -> dict:
        """What every record of this point carries to name it."""
        return {"point_id": self.point_id, **self.values}


def expand(grid: Grid | list[Grid]) -> list[Point]:
    """Every combination, in a fixed order (the order of the YAML lists); for a list of
    grids, their union in order, each point once."""
    if isinstance(grid, list):
        points = [point for sub in grid for point in expand(sub)]
        return list({point.point_id: point for point in points}.values())
    names = list(grid_axes())
    return [Point(dict(zip(names, values))) for values in itertools.product(*(getattr(grid, name) for name in names))]
