"""The synthetic experiment's config: frozen settings (`forgetscope.settings`), validated when built.

Two configs ship with the package: `cpu.yaml` (shows forgetting and its partial recovery on
2 CPU cores in minutes) and `paper.yaml` (the scale of Kotha et al. / Garg et al., for GPUs).
A user config names only the fields it changes; every other field keeps its default.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field, field_validator, model_validator

from forgetscope.errors import UserInputError
from forgetscope.files import read_yaml
from forgetscope.settings import Settings

SHIPPED = Path(__file__).resolve().parent


class SyntheticConfig(Settings):
    """Everything one run of the experiment needs, each field validated where it is declared."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="synthetic config")

    name: str = Field("cpu", description="A name for the run, shown in its outputs.")
    # The regression problem: x ~ N(0, I_d), w ~ N(0, tau^2 I_d), y = <w, x> + N(0, sigma^2).
    d: int = Field(4, ge=1, description="Dimension of x and w.")
    max_examples: int = Field(15, ge=1, description="Prompts hold max_examples + 1 points: predictions with k = 0..max_examples examples.")
    n_tasks: int = Field(8, ge=1, description="Size of the discrete pool, drawn once from the prior.")
    sigma: float = Field(0.5, gt=0, description="Label noise standard deviation.")
    tau: float = Field(1.0, gt=0, description="Prior standard deviation of w.")
    discrete_weight: float = Field(0.5, ge=0, le=1, description="Share of discrete-pool prompts in pretraining.")
    # The model: GPT-2 with a linear read-in and read-out.
    n_layer: int = Field(4, ge=1, description="Transformer blocks.")
    n_embd: int = Field(64, ge=1, description="Width (divisible by n_head).")
    n_head: int = Field(2, ge=1, description="Attention heads.")
    # Pretraining on the mixture.
    batch_size: int = Field(64, ge=1, description="Prompts per step.")
    pretrain_steps: int = Field(9000, ge=1, description="Pretraining steps.")
    pretrain_lr: float = Field(2e-3, gt=0, description="Peak pretraining learning rate.")
    pretrain_warmup: int = Field(500, ge=0, description="Pretraining warm-up steps.")
    # Fine-tuning on the discrete pool only, evaluated at each checkpoint.
    finetune_lr: float = Field(1e-4, gt=0, description="Peak fine-tuning learning rate.")
    finetune_warmup: int = Field(20, ge=0, description="Fine-tuning warm-up steps.")
    finetune_checkpoints: tuple[int, ...] = Field((50, 100, 200, 400), description="Increasing steps to evaluate at; the last is the fine-tuning length.")
    # Evaluation on fixed prompts, the same for every model and gamma (paired comparisons).
    eval_prompts: int = Field(2000, ge=1, description="Fixed evaluation prompts per distribution.")
    gammas: tuple[float, ...] = Field((0.5, 1.0, 1.25, 1.5, 2.0, 3.0), description="Label scales of conjugate prompting; must include 1 (the plain prompt).")
    ideal_finetuned_weight: float = Field(0.999, ge=0, le=1, description="Prior weight on the pool of the 'fine-tuned' ideal Bayesian.")
    log_every: int = Field(100, ge=1, description="Steps between logged losses.")
    seed: int = Field(0, ge=0, description="Seed of the data, the model and the evaluation prompts.")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda or cuda:N.")

    @field_validator("finetune_checkpoints")
    @classmethod
    def _increasing_steps(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(c < 1 for c in value) or list(value) != sorted(set(value)):
            raise ValueError(f"must be increasing positive step counts, got {list(value)}")
        return value

    @field_validator("gammas")
    @classmethod
    def _gammas(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not g > 0 for g in value):
            raise ValueError(f"must be positive numbers, got {list(value)}")
        if 1.0 not in value:
            raise ValueError("must include 1 (the plain prompt the others are compared with)")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not value.startswith("cuda"):
            raise ValueError(f"must be auto, cpu or cuda[:N], got {value!r}")
        return value

    @model_validator(mode="after")
    def _heads_divide_width(self) -> SyntheticConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"`n_embd` ({self.n_embd}) must be divisible by `n_head` ({self.n_head})")
        return self

    @property
    def finetune_steps(self) -> int:
        return self.finetune_checkpoints[-1]

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def config_from_dict(data: dict, base: SyntheticConfig | None = None) -> SyntheticConfig:
    """A validated config from plain data (e.g. parsed YAML), over `base`'s values: unknown keys are an error."""
    if not isinstance(data, dict):
        raise UserInputError(f"synthetic config: expected a mapping of fields, got {type(data).__name__}")
    return SyntheticConfig(**{**(base.model_dump() if base is not None else {}), **data})


def load_config(path: str | Path | None = None, **overrides) -> SyntheticConfig:
    """Load a YAML config: a file path, the name of a shipped one (`cpu`, `paper`), or None for `cpu`.

    `overrides` (e.g. `seed=3`, `pretrain_steps=50`) replace fields after loading.
    """
    source = Path(path) if path is not None else SHIPPED / "cpu.yaml"
    if path is not None and not source.exists() and (SHIPPED / f"{path}.yaml").exists():
        source = SHIPPED / f"{path}.yaml"
    data = read_yaml(source, "synthetic config")
    if data is None:  # an empty file would run the whole cpu experiment, minutes, unasked
        raise UserInputError(f"synthetic config {source} is empty: name the fields to change, or leave out --config for the shipped cpu.yaml")
    if isinstance(data, dict):
        data.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(data)


__all__ = ["SyntheticConfig", "config_from_dict", "load_config", "SHIPPED"]
