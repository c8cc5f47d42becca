"""Expand a grid into points: one fine-tuning run each, named by a stable id."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass

from forgetscope.records import MITIGATION_KEYS
from forgetscope.settings import LoraSettings
from forgetscope.sweep.config import Grid

MITIGATION_TAGS = {"replay_fraction": "replay", "kl_weight": "kl", "l2_weight": "l2"}


@dataclass(frozen=True)
class Point:
    """One combination of the grid."""

    rank: int
    target_modules: list[str] | str
    layers: list[int] | None
    rslora: bool
    lora_alpha: float
    learning_rate: float
    seed: int
    replay_fraction: float = 0.0
    kl_weight: float = 0.0
    l2_weight: float = 0.0

    @property
    def mitigations(self) -> dict[str, float]:
        """The training mitigations this point uses (`forgetscope.mitigate.training`): none is `{}`."""
        return {name: getattr(self, name) for name in MITIGATION_KEYS if getattr(self, name)}

    @property
    def point_id(self) -> str:
        """A readable, stable id: the same settings get the same id in every sweep. Mitigations
        enter it only when used, so the points of sweeps from before they existed keep their ids."""
        settings = {k: v for k, v in asdict(self).items() if k not in MITIGATION_KEYS} | self.mitigations
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        modules = "all" if self.target_modules == "all-linear" else "+".join(self.target_modules)
        mitigated = "".join(f"-{MITIGATION_TAGS[name]}{value:g}" for name, value in self.mitigations.items())
        return f"r{self.rank}-{modules}-{'rs' if self.rslora else 'lora'}-s{self.seed}{mitigated}-{digest}"

    def lora(self) -> LoraSettings:
        return LoraSettings(
            rank=self.rank, lora_alpha=self.lora_alpha, target_modules=self.target_modules, layers=self.layers, rslora=self.rslora
        )

    def labels(self) -> dict:
        """What every record of this point carries to name it."""
        return {"point_id": self.point_id, **asdict(self)}


def expand(grid: Grid | list[Grid]) -> list[Point]:
    """Every combination, in a fixed order (the order of the YAML lists); for a list of
    grids, their union in order, each point once."""
    if isinstance(grid, list):
        points = [point for sub in grid for point in expand(sub)]
        return list({point.point_id: point for point in points}.values())
    axes = [grid.rank, grid.target_modules, grid.layers, grid.rslora, grid.lora_alpha, grid.learning_rate, grid.seed,
            grid.replay_fraction, grid.kl_weight, grid.l2_weight]
    return [Point(*values) for values in itertools.product(*axes)]
