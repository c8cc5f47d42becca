"""The synthetic experiment's config: a frozen dataclass, validated when it is built or loaded.

Two configs ship with the package: `cpu.yaml` (shows forgetting and its partial recovery on
2 CPU cores in minutes) and `paper.yaml` (the scale of Kotha et al. / Garg et al., for GPUs).
A user config names only the fields it changes; every other field keeps its default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from forgetscope.errors import UserInputError

SHIPPED = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything one run of the experiment needs; `validate()` says what is wrong in one line."""

    name: str = "cpu"
    # The regression problem: x ~ N(0, I_d), w ~ N(0, tau^2 I_d), y = <w, x> + N(0, sigma^2).
    d: int = 4
    max_examples: int = 15  # prompts hold max_examples + 1 points: predictions with k = 0..max_examples examples
    n_tasks: int = 8  # size of the discrete pool, drawn once from the prior
    sigma: float = 0.5
    tau: float = 1.0
    discrete_weight: float = 0.5  # share of discrete-pool prompts in pretraining
    # The model: GPT-2 with a linear read-in and read-out.
    n_layer: int = 4
    n_embd: int = 64
    n_head: int = 2
    # Pretraining on the mixture.
    batch_size: int = 64
    pretrain_steps: int = 9000
    pretrain_lr: float = 2e-3
    pretrain_warmup: int = 500
    # Fine-tuning on the discrete pool only, evaluated at each checkpoint.
    finetune_lr: float = 1e-4
    finetune_warmup: int = 20
    finetune_checkpoints: tuple[int, ...] = (50, 100, 200, 400)  # the last one is the fine-tuning length
    # Evaluation on fixed prompts, the same for every model and gamma (paired comparisons).
    eval_prompts: int = 2000
    gammas: tuple[float, ...] = (0.5, 1.0, 1.25, 1.5, 2.0, 3.0)
    ideal_finetuned_weight: float = 0.999  # prior weight on the pool of the "fine-tuned" ideal Bayesian
    log_every: int = 100
    seed: int = 0
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:N

    def validate(self) -> SyntheticConfig:
        """Raise `UserInputError` naming the first bad field; return self so calls chain."""
        positive = ("d", "max_examples", "n_tasks", "n_layer", "n_embd", "n_head", "batch_size", "pretrain_steps",
                    "eval_prompts", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserInputError(f"synthetic config: `{name}` must be a positive integer, got {value!r}")
        for name in ("pretrain_warmup", "finetune_warmup", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserInputError(f"synthetic config: `{name}` must be a non-negative integer, got {value!r}")
        for name in ("sigma", "tau", "pretrain_lr", "finetune_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise UserInputError(f"synthetic config: `{name}` must be a positive number, got {value!r}")
        for name in ("discrete_weight", "ideal_finetuned_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise UserInputError(f"synthetic config: `{name}` must be a probability in [0, 1], got {value!r}")
        if self.n_embd % self.n_head:
            raise UserInputError(f"synthetic config: `n_embd` ({self.n_embd}) must be divisible by `n_head` ({self.n_head})")
        checkpoints = self.finetune_checkpoints
        if not checkpoints or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in checkpoints) \
                or list(checkpoints) != sorted(set(checkpoints)):
            raise UserInputError(f"synthetic config: `finetune_checkpoints` must be increasing positive step counts, got {list(checkpoints)}")
        if not self.gammas or any(isinstance(g, bool) or not isinstance(g, (int, float)) or not g > 0 for g in self.gammas):
            raise UserInputError(f"synthetic config: `gammas` must be positive numbers, got {list(self.gammas)}")
        if 1.0 not in self.gammas:
            raise UserInputError("synthetic config: `gammas` must include 1 (the plain prompt the others are compared with)")
        if not self.device == "auto" and not self.device == "cpu" and not self.device.startswith("cuda"):
            raise UserInputError(f"synthetic config: `device` must be auto, cpu or cuda[:N], got {self.device!r}")
        return self

    @property
    def finetune_steps(self) -> int:
        return self.finetune_checkpoints[-1]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["finetune_checkpoints"] = list(self.finetune_checkpoints)
        data["gammas"] = list(self.gammas)
        return data


def config_from_dict(data: dict, base: SyntheticConfig | None = None) -> SyntheticConfig:
    """A validated config from plain data (e.g. parsed YAML): unknown keys are an error."""
    if not isinstance(data, dict):
        raise UserInputError(f"synthetic config: expected a mapping of fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(SyntheticConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserInputError(f"synthetic config: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    values = dict(data)
    for name in ("finetune_checkpoints", "gammas"):
        if name in values:
            if not isinstance(values[name], (list, tuple)):
                raise UserInputError(f"synthetic config: `{name}` must be a list, got {values[name]!r}")
            values[name] = tuple(values[name])
    return dataclasses.replace(base or SyntheticConfig(), **values).validate()


def load_config(path: str | Path | None = None, **overrides) -> SyntheticConfig:
    """Load a YAML config: a file path, the name of a shipped one (`cpu`, `paper`), or None for `cpu`.

    `overrides` (e.g. `seed=3`, `pretrain_steps=50`) replace fields after loading.
    """
    source = Path(path) if path is not None else SHIPPED / "cpu.yaml"
    if path is not None and not source.exists() and (SHIPPED / f"{path}.yaml").exists():
        source = SHIPPED / f"{path}.yaml"
    if not source.is_file():
        raise UserInputError(f"synthetic config not found: {source}")
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserInputError(f"synthetic config {source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(data, dict):
        data.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(data)


__all__ = ["SyntheticConfig", "config_from_dict", "load_config", "SHIPPED"]
