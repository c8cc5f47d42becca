"""The record: one forgetting measurement of one run at one step, the contract between the
callback (which makes records), the sweep store (which keeps them, one JSON object a line of
`records.jsonl`), the laws (which fit them) and the report (which plots them).

Keys may be added, never removed; anything that writes records in this shape can be fitted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, TypedDict, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic.fields import FieldInfo

from forgetscope.errors import UserInputError, describe
from forgetscope.extensions import training_mitigations
from forgetscope.files import plain_name
from forgetscope.settings import grid_axes


class DomainMetrics(TypedDict):
    """The metric on one eval domain, nats per token (see `forgetscope.metric`)."""

    forgetting_ce: float
    kl: float
    base_entropy: float
    hard_ce: float
    base_loss: float
    finetuned_loss: float


class Record(DomainMetrics, total=False):
    """One measurement: the metric over every eval domain, and per domain, at `step`."""

    step: int
    train_loss: float | None
    """The last logged training loss (None at step 0)."""
    ft_loss: float
    """Loss on held-out fine-tuning text: how far fine-tuning got."""
    eval_tokens: int
    domains: dict[str, DomainMetrics]
    trainable_params: int
    """`P`: non-embedding parameters being trained."""
    tokens_per_step: int
    """Tokens one optimizer step trains on (the global batch times the sequence length): what
    turns `step` into tokens seen, the same on any number of devices or accumulation steps."""
    world_size: int
    """The processes the run trained in (DDP: one per GPU), each on its share of the batch."""
    vocab_size: int
    """The output vocabulary: KL cannot sensibly exceed what a uniform prediction costs."""
    forecast: dict
    """With a KL budget: the forecast KL at the run's last step so far (`laws.forecast.forecast_run`)."""
    point_id: str
    """A sweep's point; its records also carry the point's value of every grid axis
    (`settings.grid_axes()`: rank, target_modules, ..., each training mitigation's setting)."""


def mitigation_keys() -> list[str]:
    """The record labels that say a run was mitigated while it trained: one per training
    mitigation (`forgetscope.mitigate.training`); 0 or absent is none."""
    return [m.name for m in training_mitigations()]


def is_mitigated(record: Mapping) -> bool:
    """Whether a run used any training mitigation (records from before they existed did not)."""
    return any(record.get(key) for key in mitigation_keys())


FIT_KEYS = ("point_id", "trainable_params", "step", "kl", "forgetting_ce", "ft_loss")
"""What every record must hold for the laws to be fitted."""


class _RecordSchema(BaseModel):
    """What a record's known keys may hold (others are allowed: keys may be added). Numbers
    may be NaN (a diverged run; `fit` leaves those out with a note) but never of the wrong
    sign, and never strings or booleans. A grid axis's label (`rank`, `kl_weight`, ...) holds
    what its setting may, by the setting's own definition."""

    model_config = ConfigDict(extra="allow", strict=True)

    point_id: str | None = None
    step: int | None = Field(None, ge=0)
    trainable_params: int | None = Field(None, ge=0)
    vocab_size: int | None = Field(None, ge=1)
    tokens_per_step: int | None = Field(None, ge=1)
    world_size: int | None = Field(None, ge=1)
    eval_tokens: int | None = Field(None, ge=0)
    kl: float | None = None
    forgetting_ce: float | None = None
    ft_loss: float | None = None
    train_loss: float | None = None
    domains: dict[str, dict[str, float | int | None]] | None = None

    @field_validator("point_id")
    @classmethod
    def _a_name(cls, value: str | None) -> str | None:
        try:
            return value if value is None else plain_name(value, "point_id")
        except UserInputError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("kl", "forgetting_ce")
    @classmethod
    def _never_below_zero(cls, value: float | None) -> float | None:
        if value is not None and value < -1e-6:  # a NaN passes: `fit` counts and skips it
            raise ValueError(f"is negative ({value}); a divergence is never below 0")
        return value


_AXIS_LABELS: dict[str, Any] = {
    # `Optional[...]`: mypy cannot join an annotation object and None with `|`
    name: (Optional[owner.model_fields[name].annotation], FieldInfo.merge_field_infos(owner.model_fields[name], default=None))  # noqa: UP045
    for name, owner in grid_axes().items()}
RecordSchema: type[BaseModel] = create_model("RecordSchema", __base__=_RecordSchema, __module__=__name__,
                                             __doc__=_RecordSchema.__doc__, **_AXIS_LABELS)


def read_records(path: str | Path) -> list[Record]:
    """Every complete record of a `records.jsonl`, each checked against `RecordSchema`; a torn
    last line (a crash mid-write) is skipped. A bad record is one `UserInputError` naming the
    file, the line and the field."""
    records = []
    try:
        lines = Path(path).read_text().splitlines() if Path(path).is_file() else []
    except UnicodeDecodeError:
        raise UserInputError(f"{path} is not a text file of JSON records") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # torn last line
            raise UserInputError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise UserInputError(f"{path}: line {number} is a JSON {type(record).__name__}, not a record (an object)")
        try:
            RecordSchema.model_validate(record)
        except ValidationError as exc:
            raise UserInputError(describe(exc, f"{path}: line {number}")) from None
        records.append(record)
    return cast(list[Record], records)


def digest(records: list[Record]) -> str:
    """A SHA-256 of `records` in order: what `fits.json` keeps of the records it was fitted on."""
    h = hashlib.sha256()
    for record in records:
        h.update(json.dumps(record, sort_keys=True).encode())
    return h.hexdigest()
