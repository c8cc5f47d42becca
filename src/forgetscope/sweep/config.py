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
                                      # or a list of such grids: their union
    steps: 200
    eval_points: 8
    downstream:                       # optional: an evaluator's section (`sweep/evaluators/`), here
      suite: tiny                     # lm-eval tasks on the base once and on each point at its end
      limit: 100

Every error names the field and what is wrong with it, on one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from forgetscope.data import DATA_SUFFIXES, split_spec
from forgetscope.errors import UserInputError
from forgetscope.extensions import training_mitigations
from forgetscope.files import plain_name, read_yaml
from forgetscope.settings import Settings, TrainSettings, describe, grid_axes


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataSource(Strict):
    """Text files (`.txt`, `.jsonl`, `.parquet`) or one of the embedded corpora."""

    files: list[Path] | None = Field(None, description="Data sources read with `datasets`: .txt, .jsonl or .parquet files, folders (save_to_disk, or of data files), or hub datasets NAME[:CONFIG]; SOURCE@SPLIT picks a split. Each is a domain unless it has a `domain` column.")
    embedded: Literal["scripture", "docs", "code"] | None = Field(None, description="An embedded corpus of the tiny default.")
    text_column: str = "text"

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.files is None) == (self.embedded is None):
            raise ValueError("give exactly one of `files` or `embedded`")
        if self.files is not None and not self.files:
            raise ValueError("`files` is empty")
        return self


class _Grid(Strict):
    """Lists of values of the run settings that are grid axes (`settings.grid_axes()`); the
    sweep runs every combination, and every value is validated as that setting."""

    @field_validator("*", mode="before")
    @classmethod
    def _each_value_is_a_valid_setting(cls, values: object, info: ValidationInfo) -> object:
        if not isinstance(values, list):
            return values  # the field's type says what is wrong
        if not values:
            raise ValueError("empty list: the grid would have no points")
        owner = grid_axes()[info.field_name]
        for value in values:  # as written: `true` is no rank, though pydantic would read it as 1
            try:
                owner.check(info.field_name, value)
            except UserInputError as exc:  # "rank: what is wrong"
                raise ValueError(f"{value!r}: {str(exc).split(': ', 1)[-1]}") from None
        return values


def _axis(owner: type[Settings], name: str) -> tuple[Any, Any]:
    """A grid axis over one setting: a list of its values, by default its default alone."""
    return (list[owner.model_fields[name].annotation],  # type: ignore[name-defined]
            Field(default_factory=lambda: [owner.default(name)], description=f"A list of: {owner.help(name)}"))


if TYPE_CHECKING:
    Grid = _Grid
else:
    Grid = create_model("Grid", __base__=_Grid, __module__=__name__, __doc__=_Grid.__doc__,
                        **{name: _axis(owner, name) for name, owner in grid_axes().items()})


class Resources(Strict):
    """What one point asks of a Ray cluster (fractions allowed); `cpus` also sets torch's threads."""

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)


RESUMABLE_SETTINGS = {"checkpoints"}
"""Settings that change how points run, not what they measure: a sweep resumes with them changed."""


class SweepConfig(Strict):
    """One sweep: a base model, data, a grid, and the budget every point shares. Any other
    top-level key must be the section of a registered end-of-point evaluator
    (`forgetscope.sweep.evaluators`), validated by that evaluator's schema."""

    model_config = ConfigDict(extra="allow")

    name: str = Field("sweep", description="The sweep's name: its directory is sweeps/NAME unless --out is given.")
    base_model: str = Field("tiny", description="`tiny` (the embedded default), a model directory or a hub id.")
    tokenizer: str | None = Field(None, description="Tokenizer directory or hub id, if not the base model's.")
    finetune_data: DataSource
    eval_data: list[DataSource] = Field(min_length=1)
    replay_data: list[DataSource] | None = Field(None, min_length=1, description="Replay corpus of the grid's replay_fraction and kl_weight: pretraining-like text, never the eval text (an embedded corpus gives its pretraining split).")
    save_adapters: bool = Field(False, description="Keep every finished point's adapter in DIR/adapters/ID (for `forgetscope mitigate --sweep`).")
    checkpoints: bool = Field(False, description="Save a Trainer checkpoint of each point at every measurement (the last one kept, in DIR/checkpoints/ID, removed when the point finishes): a point killed by a time limit or a pre-emption resumes from it with the records it measured up to it. The points must be able to write the sweep directory.")
    grid: Annotated[Annotated[Grid, Tag("")] | Annotated[list[Grid], Tag("-")],
                    Discriminator(lambda v: "-" if isinstance(v, list) else "")] = Field(
        default_factory=Grid, description="Every combination of the axes is one point; a list of grids runs their union.")
    steps: int = TrainSettings.field("steps")
    eval_points: int = TrainSettings.field("eval_points")
    eval_schedule: Literal["log", "dense-late"] = TrainSettings.field("eval_schedule")
    eval_tokens: int = TrainSettings.field("eval_tokens")
    ft_eval_tokens: int = TrainSettings.field("ft_eval_tokens")
    batch_size: int = TrainSettings.field("batch_size")
    seq_len: int = TrainSettings.field("seq_len")
    warmup_steps: int = TrainSettings.field("warmup_steps")
    scheduler: str = TrainSettings.field("scheduler")
    dtype: Literal["float32", "bfloat16"] = TrainSettings.field("dtype")
    micro_batch_size: int | None = TrainSettings.field("micro_batch_size")
    gradient_checkpointing: bool = TrainSettings.field("gradient_checkpointing")
    trainer_args: dict[str, Any] = TrainSettings.field("trainer_args")
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
                    raise _SectionError(describe(exc, prefix=key)) from None
        return self

    def sections(self) -> dict[str, BaseModel]:
        """`{evaluator name: its validated section}` of the evaluators this sweep enables."""
        return {k: v for k, v in (self.__pydantic_extra__ or {}).items() if v is not None}

    def section(self, name: str) -> BaseModel | None:
        """One evaluator's section, or None when the sweep does not enable it."""
        return self.sections().get(name)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        try:
            return plain_name(value, "name")
        except UserInputError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("grid")
    @classmethod
    def _some_grid(cls, value: Grid | list[Grid]) -> Grid | list[Grid]:
        if isinstance(value, list) and not value:
            raise ValueError("an empty list of grids: the sweep would have no points")
        return value

    @model_validator(mode="after")
    def _replay_has_a_corpus(self) -> SweepConfig:
        grids = self.grid if isinstance(self.grid, list) else [self.grid]
        used = [m.name for m in training_mitigations() if m.needs_replay and any(max(getattr(g, m.name)) > 0 for g in grids)]
        if self.replay_data is None and used:
            raise ValueError(f"the grid's {' and '.join(used)} needs `replay_data`: the replay corpus")
        return self

    @model_validator(mode="after")
    def _never_measured_on_its_own_finetuning_text(self) -> SweepConfig:
        ft = self.finetune_data.embedded
        if ft == "scripture" and any(source.embedded == ft for source in self.eval_data):
            raise ValueError("a scripture fine-tune trains on scripture's held-out chapters: measure forgetting on docs or code")
        return self

    @field_validator("steps", "eval_points", "eval_schedule", "eval_tokens", "ft_eval_tokens", "batch_size", "seq_len", "warmup_steps",
                     "scheduler", "dtype", "micro_batch_size", "gradient_checkpointing", "trainer_args")
    @classmethod
    def _a_valid_train_setting(cls, value: object, info: ValidationInfo) -> object:
        # The field's type and bounds come with `TrainSettings.field`; its validators (a known
        # scheduler) are the setting's own, so they are run here too.
        try:
            return TrainSettings.check(info.field_name, value)
        except UserInputError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None

    @model_validator(mode="after")
    def _train_settings_hold_together(self) -> SweepConfig:
        # Rules between shared settings (micro_batch_size divides batch_size) are TrainSettings' own.
        try:
            TrainSettings(**self._shared_train_settings())
        except UserInputError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return self

    def _shared_train_settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TrainSettings.model_fields if name in type(self).model_fields}

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
        return self.model_dump(mode="json", exclude_defaults=True, exclude=RESUMABLE_SETTINGS)

    def train_settings(self, point) -> TrainSettings:
        """The `TrainSettings` of one grid point (`forgetscope.sweep.grid.Point`): the sweep's
        shared fields and the point's training axes."""
        own = {name: value for name, value in point.values.items() if name in TrainSettings.model_fields}
        return TrainSettings(**self._shared_train_settings(), **own)


class _SectionError(Exception):
    """An evaluator section or an unknown top-level key that failed validation, already
    described on one line. Not a `ValueError`, so pydantic passes it through unwrapped."""


def parse_config(data: object, source: str = "config") -> SweepConfig:
    """Validate already-loaded YAML data; errors become one-line `UserInputError`s."""
    if not isinstance(data, dict):
        raise UserInputError(f"{source}: expected a mapping of settings at the top level")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise UserInputError(describe(exc, source)) from None
    except _SectionError as exc:
        raise UserInputError(f"{source}: {exc}") from None


def _relative_to(folder: Path, source: Path) -> Path:
    """A relative data source taken from the config's folder, unless it is a hub dataset:
    nothing of that name is there, and it does not name a data file."""
    location = Path(split_spec(source)[0])
    if source.is_absolute() or (not (folder / location).exists() and location.suffix.lower() not in DATA_SUFFIXES):
        return source
    return (folder / source).resolve()


def load_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep YAML file; relative data paths are taken from its folder."""
    path = Path(path)
    config = parse_config(read_yaml(path, "sweep config"), str(path))
    for source in [config.finetune_data, *config.eval_data, *(config.replay_data or [])]:
        if source.files is not None:
            source.files = [_relative_to(path.parent, f) for f in source.files]
    for section in config.sections().values():
        if hasattr(section, "resolve_paths"):
            section.resolve_paths(path.parent)
    return config
