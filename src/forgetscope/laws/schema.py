"""What `fits.json` must hold for `predict`, `report` and `train --law` to read it: a pydantic
schema of the fields they use (others are allowed, so files from older versions still read).

`fit` writes the file; anything else that writes one (a user, another version, a copy from
another sweep) is checked here first, so a wrong type is one line naming the field, never a
traceback deep in a plot, and a verdict is one of three words, never markup.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Number = float | None
"""A fitted value: finite, NaN (JSON's NaN) or absent (null)."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class FormSummary(_Open):
    validation: dict[str, dict[str, Number | int | list | dict]] = {}
    r2: Number = None


class Interval(_Open):
    floor: Number = None
    slope: Number = None
    coverage: dict[str, dict[str, Number | int]] = {}


class LawEntry(_Open):
    """One target's law: its form, parameters and their intervals, and how it validated."""

    form: str
    label: str | None = None
    shift_value: Number = None
    params: dict[str, float]
    ci: dict[str, list[float]] = {}
    theta: list[float] | None = None
    heldout_theta: list[float] | None = None
    bootstrap: list[list[float]] = []
    arms: list[str] = []
    replay: bool = False
    column: str | None = None
    validation: dict[str, dict[str, Any]] = {}
    forms: dict[str, FormSummary] = {}
    interval: Interval = Interval()
    r2: Number = None
    log_rmse: Number = None
    n: int | None = None


class Claim(_Open):
    claim: str
    verdict: Literal["holds", "fails", "mixed"]
    evidence: str


class Linear(_Open):
    slope: Number = None
    intercept: Number = None
    r2: Number = None
    n: int | None = None


class FitsFile(_Open):
    """The whole file."""

    kl: LawEntry
    forgetting_ce: LawEntry
    ft_loss: LawEntry
    linear: Linear = Linear()
    claims: list[Claim] = []
    range: dict[str, Any] | None = None
    base: dict[str, Number] = {}
    vocab_size: int | None = Field(None, ge=1)
    matched_loss: dict[str, Any] = {}
    domains: dict[str, Any] = {}
    records_sha256: str | None = None
    """A digest of the records fitted (`forgetscope.records.digest`): `report` checks the sweep still holds them."""
