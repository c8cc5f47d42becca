"""The sweep config: a YAML file validated with pydantic at the edge.

    base_model: tiny                  # the embedded default, or a model directory / hub id
    finetune_data: {embedded: code}   # or {files: [train.jsonl]}
    eval_data:                        # the domains forgetting is measured on
      - {embedded: scripture}
      - {files: [wiki.txt]}
    grid:                             # every combination is one point
      rank: [1, 4, 16]
      target_modules: [[q_proj, v_proj], all-linear]
      rslora: [true]
    steps: 200
    eval_points: 8
    downstream:                       # optional: an evaluator's section (`sweep/evaluators/`), here
      suite: tiny                     # lm-eval tasks on the base once and on each point at its end
      limit: 100

Every error names the field and what is wrong with it, on one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from forgetscope.errors import UserInputError

TargetModules = list[str] | Literal["all-linear"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSource(Strict):
    """Text files (`.txt`, `.jsonl`, `.parquet`) or one of the embedded corpora."""

    files: list[Path] | None = Field(None, description="Files read with `datasets`; a file is a domain unless it has a `domain` column.")
    embedded: Literal["scripture", "docs", "code"] | None = Field(None, description="An embedded corpus of the tiny default.")
    text_column: str = "text"

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.files is None) == (self.embedded is None):
            raise ValueError("give exactly one of `files` or `embedded`")
        if self.files is not None and not self.files:
            raise ValueError("`files` is empty")
        return self


class Grid(Strict):
    """Lists of values; the sweep runs every combination."""

    rank: list[int] = Field([8], description="LoRA ranks (each at least 1).")
    target_modules: list[TargetModules] = Field(["all-linear"], description="Module-name lists, or all-linear.")
    layers: list[list[int] | None] = Field([None], description="Block-index lists to adapt; null adapts all.")
    rslora: list[bool] = Field([True], description="rsLoRA scaling alpha/sqrt(r) (true) or alpha/r (false).")
    lora_alpha: list[float] = Field([16.0], description="LoRA alpha values.")
    learning_rate: list[float] = Field([1e-3], description="Peak learning rates.")
    seed: list[int] = Field([0], description="Seeds (adapter init and data order).")

    @field_validator("*")
    @classmethod
    def _non_empty(cls, values: list) -> list:
        if not values:
            raise ValueError("empty list: the grid would have no points")
        return values

    @field_validator("rank")
    @classmethod
    def _positive_rank(cls, values: list[int]) -> list[int]:
        if any(r < 1 for r in values):
            raise ValueError(f"LoRA rank must be at least 1, got {values}")
        return values

    @field_validator("lora_alpha", "learning_rate")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values):
            raise ValueError(f"must be positive, got {values}")
        return values


class Resources(Strict):
    """What one point asks of a Ray cluster (fractions allowed); `cpus` also sets torch's threads."""

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)


class SweepConfig(Strict):
    """One sweep: a base model, data, a grid, and the budget every point shares. Any other
    top-level key must be the section of a registered end-of-point evaluator
    (`forgetscope.sweep.evaluators`), validated by that evaluator's schema."""

    model_config = ConfigDict(extra="allow")

    name: str = "sweep"
    base_model: str = Field("tiny", description="`tiny` (the embedded default), a model directory or a hub id.")
    tokenizer: str | None = Field(None, description="Tokenizer directory or hub id, if not the base model's.")
    finetune_data: DataSource
    eval_data: list[DataSource] = Field(min_length=1)
    grid: Grid = Grid()
    steps: int = Field(200, ge=1)
    eval_points: int = Field(8, ge=2, description="Log-spaced measurements per point, step 0 included.")
    eval_tokens: int = Field(8192, ge=2, description="Eval tokens per forgetting domain.")
    ft_eval_tokens: int = Field(4096, ge=2, description="Held-out fine-tuning tokens for `ft_loss`.")
    batch_size: int = Field(8, ge=1)
    seq_len: int = Field(128, ge=2)
    warmup_steps: int = Field(0, ge=0)
    scheduler: str = "constant_with_warmup"
    dtype: Literal["float32", "bfloat16"] = "float32"
    resources: Resources = Resources()

    @model_validator(mode="after")
    def _evaluator_sections(self) -> SweepConfig:
        from forgetscope.sweep.evaluators import EVALUATORS

        extra = self.__pydantic_extra__ or {}
        for key, value in list(extra.items()):
            if key not in EVALUATORS:
                raise _SectionError(f"`{key}`: unknown field")
            if value is not None and not isinstance(value, BaseModel):
                try:
                    extra[key] = EVALUATORS.get(key).section.model_validate(value)
                except ValidationError as exc:
                    raise _SectionError(_describe(exc, prefix=key)) from None
        return self

    def sections(self) -> dict[str, BaseModel]:
        """`{evaluator name: its validated section}` of the evaluators this sweep enables."""
        return {k: v for k, v in (self.__pydantic_extra__ or {}).items() if v is not None}

    def section(self, name: str) -> BaseModel | None:
        """One evaluator's section, or None when the sweep does not enable it."""
        return self.sections().get(name)

    @model_validator(mode="after")
    def _budgets_hold_a_sequence(self) -> SweepConfig:
        for name in ("eval_tokens", "ft_eval_tokens"):
            if getattr(self, name) < self.seq_len:
                raise ValueError(f"`{name}` ({getattr(self, name)}) is smaller than one sequence (seq_len {self.seq_len})")
        return self

    def canonical(self) -> dict:
        """The config as plain data, every default filled in: what `config.yaml` holds."""
        data = self.model_dump(mode="json")
        return {k: v for k, v in data.items() if v is not None or k in type(self).model_fields}

    def identity(self) -> dict:
        """The settings that differ from their defaults: what must match for a sweep to resume,
        so that adding a field with a default never strands an old sweep directory."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def train_settings(self, point):
        """The `forgetscope.train.TrainSettings` of one grid point (`forgetscope.sweep.grid.Point`)."""
        import torch

        from forgetscope.models import resolve_dtype
        from forgetscope.train import TrainSettings

        return TrainSettings(
            steps=self.steps, learning_rate=point.learning_rate, batch_size=self.batch_size, seq_len=self.seq_len,
            warmup_steps=self.warmup_steps, scheduler=self.scheduler, eval_points=self.eval_points, seed=point.seed,
            bf16=resolve_dtype(self.dtype) == torch.bfloat16,
        )


class _SectionError(Exception):
    """An evaluator section or an unknown top-level key that failed validation, already
    described on one line. Not a `ValueError`, so pydantic passes it through unwrapped."""


def _describe(error: ValidationError, source: str = "", prefix: str = "") -> str:
    """The first error of `error` on one line: `` source: `field.path`: what is wrong ``."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "") or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source + ': ' if source else ''}`{where}`: {message}{more}"


def parse_config(data: object, source: str = "config") -> SweepConfig:
    """Validate already-loaded YAML data; errors become one-line `UserInputError`s."""
    if not isinstance(data, dict):
        raise UserInputError(f"{source}: expected a mapping of settings at the top level")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise UserInputError(_describe(exc, source)) from None
    except _SectionError as exc:
        raise UserInputError(f"{source}: {exc}") from None


def load_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep YAML file; relative data paths are taken from its folder."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"sweep config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserInputError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    config = parse_config(data, str(path))
    for source in [config.finetune_data, *config.eval_data]:
        if source.files is not None:
            source.files = [f if f.is_absolute() else (path.parent / f).resolve() for f in source.files]
    for section in config.sections().values():
        if hasattr(section, "resolve_paths"):
            section.resolve_paths(path.parent)
    return config
