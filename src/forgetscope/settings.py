"""Every setting, defined once: name, type, default, bounds and help.

`LoraSettings` says which parameters are fine-tuned and how the adapter is scaled;
`TrainSettings` the optimisation budget, the forgetting-measurement schedule and the
training mitigations (one field each, contributed by `forgetscope.mitigate.training`);
`MitigationSettings` the post-hoc edits `forgetscope mitigate` measures (each method's
options, from `forgetscope.mitigate.methods`); `EvalSettings` the downstream benchmarks.
The same definitions serve `forgetscope.train.finetune`, the sweep config (whose grid axes
are the fields marked `AXIS`, and whose points, ids and record labels follow from them:
`grid_axes`) and the CLI options (`forgetscope.options` makes them from the fields), so names
and defaults agree everywhere. Bad values are one-line `UserInputError`s.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonDict

from forgetscope.errors import UserInputError, describe
from forgetscope.extensions import posthoc_methods, training_mitigations

TargetModules = list[str] | Literal["all-linear"]
MODULE_NAME = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
"""A module name or dotted suffix (`q_proj`, `self_attn.q_proj`): never a path."""


AXIS: JsonDict = {"axis": "always"}
"""Field metadata of the settings a sweep's grid can vary and every point id names. A field
marked `{"axis": TAG}` is an axis too, named in ids (as `-TAG<value>`) only when it differs
from its default, so adding one never changes the ids of existing points."""

SEED_MAX = 2**32 - 1
"""numpy's and torch's generators take seeds in [0, 2**32)."""


class Settings(BaseModel):
    """Strict settings: unknown fields are errors, numbers are finite and never booleans, and
    constructing with bad values raises a one-line `UserInputError` naming the field."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic's lax mode reads `rank: true` as 1; a YAML `true` for a number is a mistake.
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and not _admits_bool(field.annotation):
                    raise ValueError(f"`{name}` takes a number, got {value}")
        return data

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise UserInputError(f"{self.model_config.get('title') or type(self).__name__}: {describe(exc)}") from None

    @classmethod
    def field(cls, name: str, **overrides: Any) -> FieldInfo:
        """A copy of one field's definition (bounds, help), to declare the same setting
        elsewhere; `overrides` (e.g. `default=`) change the copy only."""
        return FieldInfo.merge_field_infos(cls.model_fields[name], **overrides)

    @classmethod
    def help(cls, name: str) -> str:
        return cls.model_fields[name].description or ""

    @classmethod
    def default(cls, name: str) -> Any:
        return cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def check(cls, name: str, value: Any, label: str | None = None) -> Any:
        """`value` validated as the setting `name` alone (type, bounds, finiteness, the field's
        own validators): the CLI's options check their values here, as they are parsed; a bad
        one is a `UserInputError` naming `label` (the option)."""
        if isinstance(value, bool) and not _admits_bool(cls.model_fields[name].annotation):
            raise UserInputError(f"{label or name} takes a number, got {value}")
        try:
            checked = cls.__pydantic_validator__.validate_assignment(cls.model_construct(), name, value)
        except ValidationError as exc:
            raise UserInputError(f"{label or name}: {describe(exc).split('`: ', 1)[-1]}") from None
        return getattr(checked, name)


def _admits_bool(annotation: Any) -> bool:
    return annotation is bool or "bool" in str(annotation)


class LoraSettings(Settings):
    """Which parameters are fine-tuned, and how the adapter is scaled (PEFT's `LoraConfig`)."""

    rank: int = Field(8, ge=1, le=65_536, description="LoRA rank r (at least 1, at most the narrower side of every adapted layer).", json_schema_extra=AXIS)
    target_modules: TargetModules = Field("all-linear", description="Module names (or suffixes) to adapt, or all-linear for every linear layer but the head.", json_schema_extra=AXIS)
    layers: list[int] | None = Field(None, min_length=1, description="Indices of the transformer blocks to adapt; none adapts all.", json_schema_extra=AXIS)
    rslora: bool = Field(True, description="Rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023) instead of alpha / r.", json_schema_extra=AXIS)
    lora_alpha: float = Field(16.0, gt=0, description="Scale numerator: the update B A is scaled by alpha / r, or alpha / sqrt(r) with rsLoRA.", json_schema_extra=AXIS)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value: TargetModules) -> TargetModules:
        if not value:
            raise ValueError("target_modules is empty")
        if value != "all-linear":
            for name in value:  # module names become part of point ids, hence of file names
                if not MODULE_NAME.fullmatch(name):
                    raise ValueError(f"{name!r} is not a module name (letters, digits, `_`, `-` and `.` between names)")
        return value

    @field_validator("layers")
    @classmethod
    def _block_indices(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(i < 0 for i in value):
            raise ValueError(f"block indices must be >= 0, got {value}")
        return value

    def to_peft(self, model=None):
        """The equivalent `peft.LoraConfig` (causal-LM task, default init so B = 0).

        PEFT takes `layers` only with a list of module names, so `all-linear` with `layers`
        is resolved on `model` into the names of its linear layers, by PEFT's own helper."""
        from peft import LoraConfig

        modules = self.target_modules
        if modules == "all-linear" and self.layers is not None:
            if model is None:
                raise ValueError("all-linear with layers needs the model, to name its linear layers")
            from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

            resolved = _maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear", task_type="CAUSAL_LM"), model)
            modules = sorted({name.rsplit(".", 1)[-1] for name in cast(LoraConfig, resolved).target_modules or []})
        return LoraConfig(  # PEFT types lora_alpha as an int, and takes a float
            r=self.rank, lora_alpha=self.lora_alpha, target_modules=modules, layers_to_transform=self.layers,  # type: ignore[arg-type]
            lora_dropout=self.dropout, use_rslora=self.rslora, task_type="CAUSAL_LM",
        )


MANAGED_TRAINER_ARGS = {
    "output_dir": "--out", "max_steps": "steps", "per_device_train_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "batch_size / (micro_batch_size x processes)", "learning_rate": "learning_rate",
    "lr_scheduler_type": "scheduler", "warmup_steps": "warmup_steps", "report_to": "report_to", "seed": "seed",
    "data_seed": "seed", "bf16": "dtype", "fp16": "dtype", "use_cpu": "--device", "gradient_checkpointing": "gradient_checkpointing",
    "activation_checkpointing": "gradient_checkpointing",
    "logging_steps": "eval_points (forgetscope logs every step)", "disable_tqdm": "progress",
}
"""The `TrainingArguments` fields forgetscope sets from its own settings (named here), which
`trainer_args` may not set again."""


class _TrainSettings(Settings):
    """The optimisation budget, the forgetting-measurement schedule and the training
    mitigations (one field each, from `forgetscope.mitigate.training`) of one run."""

    steps: int = Field(200, ge=1, le=10_000_000, description="Optimizer steps.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate (1e-3 suits the embedded tiny models; pretrained models usually want 1e-4 to 2e-4).", json_schema_extra=AXIS)
    batch_size: int = Field(8, ge=1, le=65_536, description="Sequences per step.")
    seq_len: int = Field(128, ge=2, le=1_048_576, description="Tokens per sequence, for training and for the eval text.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    scheduler: str = Field("constant_with_warmup", description="Any transformers scheduler name; constant keeps step counts comparable across budgets.")
    eval_points: int = Field(8, ge=2, le=10_000, description="Forgetting measurements, step 0 included, spaced by eval_schedule.")
    eval_schedule: Literal["log", "dense-late"] = Field("log", description="log: log-spaced steps; dense-late: a third log-spaced up to a fifth of the run, the rest evenly spaced after it, for fitting laws past the bend.")
    eval_tokens: int = Field(4096, ge=2, le=1_000_000_000, description="Eval tokens per forgetting domain at each measurement, in whole sequences (the default keeps 8 measurements near 6% of a run's time).")
    ft_eval_tokens: int = Field(4096, ge=2, le=1_000_000_000, description="Held-out fine-tuning tokens for ft_loss, in whole sequences drawn with seed 0 (at most 5% of the fine-tuning text).")
    eval_batch_size: int = Field(16, ge=1, le=65_536, description="Sequences per forward pass when measuring.")
    micro_batch_size: int | None = Field(None, ge=1, le=65_536, description="Sequences per forward and backward pass: batch_size, the global batch that N counts, is reached by accumulating gradients over batch_size / micro_batch_size passes. None: the whole batch in one pass.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass instead of keeping them (transformers' gradient checkpointing): far less memory for about a third more time.")
    trainer_args: dict[str, Any] = Field(default_factory=dict, description="Any other transformers TrainingArguments field, as KEY=VALUE,... (optim=adamw_torch_fused,weight_decay=0.01); the fields forgetscope sets from its own settings are refused.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the adapter init and the data order.", json_schema_extra=AXIS)
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="The base weights' dtype: float32, or bfloat16 (weights loaded in bfloat16, LoRA parameters kept in float32, autocast in training).")
    report_to: list[str] = Field(default_factory=list, description="Trainer integrations (tensorboard, wandb, mlflow, ...) that also receive forgetting.")
    kl_budget: float | None = Field(None, gt=0, description="Forgetting budget (KL, nats/token): each measurement logs the forecast KL at the last step and the step the budget will be crossed.")
    stop_on_budget: Literal["never", "measured", "forecast"] = Field("measured", description="With kl_budget, stop training when the measured KL crosses it (measured), when the forecast's 95% lower bound at the last step does (forecast), or never.")

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        from transformers import SchedulerType

        known = [s.value for s in SchedulerType]
        if value not in known:
            raise ValueError(f"unknown scheduler {value!r} (known: {', '.join(known)})")
        return value

    @field_validator("report_to")
    @classmethod
    def _known_integrations(cls, value: list[str]) -> list[str]:
        if value and value != ["none"]:
            from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

            unknown = [name for name in value if name not in INTEGRATION_TO_CALLBACK and name != "all"]
            if unknown:
                raise ValueError(f"unknown integration {unknown[0]!r} (known: {', '.join(INTEGRATION_TO_CALLBACK)})")
        return value

    @field_validator("trainer_args")
    @classmethod
    def _known_trainer_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            return value
        import typing

        from pydantic import TypeAdapter
        from transformers import TrainingArguments

        hints = typing.get_type_hints(TrainingArguments)
        for key, given in value.items():
            if key in MANAGED_TRAINER_ARGS:
                raise ValueError(f"{key} is set by forgetscope's own setting {MANAGED_TRAINER_ARGS[key]}: give that instead")
            if key not in hints or key.startswith("_"):
                raise ValueError(f"{key!r} is not a TrainingArguments field")
            try:
                TypeAdapter(hints[key]).validate_python(given)
            except ValidationError as exc:
                raise ValueError(f"{key}: {describe(exc).split(': ', 1)[-1]}") from None
        return value

    def model_post_init(self, context: Any) -> None:
        # A rule between two fields, checked once they are all set: `check` validates one
        # field against the others' defaults, where a model validator would misfire.
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise UserInputError(f"TrainSettings: batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}")

    def per_process(self, processes: int = 1) -> tuple[int, int]:
        """`(sequences per forward pass, accumulation steps)` on each of `processes` (DDP),
        making one optimizer step of `batch_size` sequences in all: `batch_size` is the
        global batch that N counts, the same on any number of processes."""
        if self.batch_size % processes:
            raise UserInputError(f"batch_size {self.batch_size} does not split over {processes} processes: give a multiple of {processes}")
        share = self.batch_size // processes
        micro = min(self.micro_batch_size or share, share)
        if share % micro:
            raise UserInputError(f"batch_size {self.batch_size} over {processes} processes is {share} sequences each, "
                                 f"not a multiple of micro_batch_size {micro}")
        return micro, share // micro

    @property
    def replay_users(self) -> list[str]:
        """The settings of the training mitigations this run uses that draw on a replay corpus."""
        return [m.name for m in training_mitigations() if m.needs_replay and getattr(self, m.name)]

    @property
    def needs_replay(self) -> bool:
        """Whether this run draws on a replay corpus."""
        return bool(self.replay_users)

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"


def _with_training_mitigations(core: type[_TrainSettings]) -> type[_TrainSettings]:
    """`core` plus one field per registered training mitigation: each is a grid axis that
    enters point ids, under its own tag, only when it is used."""
    fields: dict[str, Any] = {
        m.name: (float, FieldInfo.merge_field_infos(m.field, json_schema_extra={"axis": m.tag})) for m in training_mitigations()}
    return create_model("TrainSettings", __base__=core, __module__=__name__, __doc__=core.__doc__, **fields)


if TYPE_CHECKING:
    class TrainSettings(_TrainSettings):
        def __getattr__(self, name: str) -> float: ...  # the training mitigations' settings
else:
    TrainSettings = _with_training_mitigations(_TrainSettings)


def grid_axes() -> dict[str, type[Settings]]:
    """`{setting: the Settings class defining it}` of every setting a sweep's grid can vary, in
    order: a field marked as an axis (`AXIS`, or a training mitigation's tag)."""
    return {name: owner for owner in (LoraSettings, TrainSettings) for name, field in owner.model_fields.items()
            if isinstance(field.json_schema_extra, dict) and "axis" in field.json_schema_extra}


def axis_tag(name: str) -> str | None:
    """How a point id shows axis `name` when it differs from its default, or None for the axes
    every id always holds (rank, modules, scaling, seed, ... : `AXIS`)."""
    extra = grid_axes()[name].model_fields[name].json_schema_extra
    tag = extra.get("axis") if isinstance(extra, dict) else None
    return None if tag in ("always", None) else str(tag)


class _MitigationSettings(Settings):
    """Which post-hoc edits `forgetscope mitigate` measures: each method's options (`options`
    of the methods in `forgetscope.mitigate.methods`), one field each."""

    @model_validator(mode="after")
    def _some_setting(self) -> _MitigationSettings:
        lists = [m.measures for m in posthoc_methods() if m.measures]
        if lists and not any(getattr(self, name) for name in lists):
            raise ValueError(f"{' and '.join(lists)} are all none: there is nothing to measure")
        return self


if TYPE_CHECKING:
    class MitigationSettings(_MitigationSettings):
        def __getattr__(self, name: str) -> Any: ...  # the post-hoc methods' options
else:
    MitigationSettings = create_model(
        "MitigationSettings", __base__=_MitigationSettings, __module__=__name__, __doc__=_MitigationSettings.__doc__,
        **{name: option for method in posthoc_methods() for name, option in method.options.items()})


class EvalSettings(Settings):
    """Downstream benchmarks through lm-evaluation-harness: what `forgetscope eval` runs and
    what a sweep's `downstream:` section runs on the base and on every point."""

    suite: str = Field("tiny", min_length=1, description="knowledge (MMLU), reasoning (ARC, HellaSwag, WinoGrande, PIQA), safety (refusals), tiny (offline), or comma-separated lm-eval task names.")
    limit: int | None = Field(None, ge=1, description="At most this many examples per task.")
    num_fewshot: int | None = Field(None, ge=0, le=1000, description="Few-shot examples in each prompt (default: each task's own).")
    batch_size: int = Field(8, ge=1, le=65_536, description="Requests per forward pass.")
    harmful: str | None = Field(None, description="Harmful instructions for the safety suite (.txt one a line, or .csv with a goal column); default AdvBench from the hub.")
    judge: str | None = Field(None, description="Refusal judge module:function(prompt, response) -> bool; default refusal phrases.")
    bootstrap_iters: int = Field(1000, ge=0, le=100_000, description="Bootstrap resamples of metrics without a closed-form standard error.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the harness's sampling and few-shot draws.")


class CommandOptions(Settings):
    """The options of commands that are not settings of a run, each defined once with its
    bounds: the CLI validates every numeric option through a `Settings` class."""

    bootstrap: int = Field(1000, ge=0, le=100_000, description="Bootstrap resamples for the 95% intervals (0: none).")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the bootstrap.")
    holdout: float = Field(0.5, gt=0, lt=1, description="Share of each run's training steps the in-time test forecasts (0.5: fit up to N_max/2).")
    kl_law: Literal["average", "select"] = Field("average", description="How KL is forecast: average the forms that bend (what held best on the forecast benchmark's pilot sweeps), or select the one form the sweep's own nested validation scores best (right when the data follow one of the forms).")
    params: float | None = Field(None, gt=0, description="Trainable non-embedding parameters P of the planned fine-tune.")
    rank: int | None = Field(None, ge=1, description="LoRA rank of the planned fine-tune (P worked out from the sweep's module set).")
    learning_rate: float | None = Field(None, gt=0, description="Learning rate of the planned fine-tune (default: the sweep's median).")
    steps: float | None = Field(None, ge=0, description="Planned update steps N (0: the base).")
    budget: float | None = Field(None, gt=0, description="Forgetting budget (KL, nats/token).")
    replay_fraction: float = Field(0.0, ge=0, lt=1, description="Replay fraction of the planned fine-tune (laws fitted with the replay knob only).")
    tasks_per_kind: int = Field(8, ge=1, le=100_000, description="Conflict tasks per (task, final input) pair; 4 pairs.")
    refusal_tokens: int = Field(32, ge=1, le=100_000, description="Tokens generated per harmful instruction.")
    stop_after: int | None = Field(None, ge=1, description="Stop after this many steps, the schedule unchanged (to check the recipe's first steps).")
