"""What `fits.json` must hold for `predict`, `report` and `train --law` to read it: a pydantic
schema of the fields they use (others are allowed, so files from older versions still read).

`fit` writes the file; anything else that writes one (a user, another version, a copy from
another sweep) is checked here first, so a wrong type is one line naming the field, never a
traceback deep in a plot, and a verdict is one of three words, never markup.

`Fits` and the TypedDicts under it describe the same file for a type checker: what the
report, `predict` and the CLI read from it, keyed as `fit` writes it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from typing_extensions import Required, TypedDict

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


class MemberEntry(_Open):
    """One law of an average (`LawEntry.members`)."""

    form: str
    label: str | None = None
    shift_value: Number = None
    theta: list[float]
    bootstrap: list[list[float]] = []
    arms: list[str] = []
    replay: bool = False


class SaturationEntry(_Open):
    """How KL's forecasts continue past the sweep's steps (`laws.fit.Saturation`): the slope
    of log KL falls as KL rises (`b` negative); `weight`, the law's share, lies in [0, 1]."""

    a: float = Field(allow_inf_nan=False)
    b: float = Field(lt=0, allow_inf_nan=False)
    weight: float = Field(ge=0, le=1)
    base_entropy: float = Field(gt=0, allow_inf_nan=False)
    after: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = []
    """Per arm, the time past which it applies (the end of the arm's longest run)."""


class AnchorEntry(_Open):
    """Where a law was moved onto its runs' last measurements (`LawEntry.anchor`): one finite
    log offset and one positive horizon per arm."""

    arms: list[str] = Field(min_length=1)
    offsets: list[float]
    horizons: list[float]
    starts: list[float] | None = None
    sample_offsets: list[list[float]] | None = None
    """The offsets of each bootstrap resample (one row per resample, one offset per arm)."""
    saturation: SaturationEntry | None = None
    """Past the end of each arm's longest run (absent in files from before it: the law alone)."""

    @model_validator(mode="after")
    def _one_per_arm(self) -> AnchorEntry:
        if self.saturation is not None and self.saturation.after and len(self.saturation.after) != len(self.arms):
            raise ValueError(f"saturation.after has {len(self.saturation.after)} times; one per arm ({len(self.arms)})")
        starts = self.starts if self.starts is not None else [h / 2 for h in self.horizons]
        if not len(self.arms) == len(self.offsets) == len(self.horizons) == len(starts):
            raise ValueError(f"{len(self.arms)} arms, {len(self.offsets)} offsets, {len(self.horizons)} horizons and {len(starts)} starts: "
                             "one of each per arm")
        drawn = self.sample_offsets or []
        if any(len(row) != len(self.arms) for row in drawn):
            raise ValueError(f"each row of sample_offsets must have one offset per arm ({len(self.arms)})")
        if not all(abs(o) < 50 for o in [*self.offsets, *(o for row in drawn for o in row)]) \
                or not all(0 < s < h < float("inf") for s, h in zip(starts, self.horizons)):
            raise ValueError("offsets must be finite logs, and each start a positive time before its horizon")
        return self


class LawEntry(_Open):
    """One target's law: its form, parameters and their intervals, and how it validated;
    where its forecasts average several laws, those are its `members`; where it was moved
    onto its runs' last measurements, that is its `anchor`."""

    form: str
    members: list[MemberEntry] = []
    anchor: AnchorEntry | None = None
    label: str | None = None
    shift_value: Number = None
    params: dict[str, float]
    ci: dict[str, list[float]] = {}
    theta: list[float]
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


# The TypedDicts of `fits.json`: the shape a type checker holds readers to.
# (From `typing_extensions`: pydantic can check them on Python 3.10 and 3.11, as a test does.)

Target = Literal["kl", "forgetting_ce", "ft_loss"]
"""A fitted target: each has a law (`LawFit`) in `fits.json`."""


class Validation(TypedDict, total=False):
    """How a form forecast measurements its fit never saw, on one split (`in_time`, `in_size`, ...)."""

    median_ape: float
    max_ape: float
    mape: float
    log_rmse: float
    n: int
    reach_P: float
    reach_N: float


class Coverage(TypedDict, total=False):
    """The share of one split's held-out points inside the 95% interval."""

    bootstrap: float
    with_model_error: float
    n: int
    median_width: float


class HeldOutForecasts(TypedDict):
    """One split's forecasts of the held-out runs' measurements, and what was measured."""

    point_id: list[str]
    P: list[float]
    N: list[float]
    actual: list[float]
    value: list[float]
    low: list[float]
    high: list[float]


class IntervalFit(TypedDict, total=False):
    """How a law's 95% interval is widened beyond the bootstrap band, and how it covered."""

    floor: float
    slope: float
    slope_calibrated: float
    residual_q: float
    n_calibration: int
    seed_noise: dict[str, float | int | None]
    coverage: dict[str, Coverage]
    forecasts: dict[str, HeldOutForecasts]


class FormFit(TypedDict, total=False):
    """One candidate form of a target, fitted and validated."""

    params: dict[str, float]
    validation: dict[str, Validation]
    heldout_mape: float
    heldout_log_rmse: float
    r2: float


class MemberFit(TypedDict, total=False):
    """One law of an average: a form and its parameters, as `LawFit` has them."""

    label: str
    form: Required[str]
    shift_value: float | None
    theta: Required[list[float]]
    bootstrap: list[list[float]]
    arms: list[str]
    replay: bool


class Anchor(TypedDict, total=False):
    """Per arm (`arms`), the log offset that moves the law onto its runs' last measurements,
    the time from which it applies in full and the time it starts to fade in from
    (`laws.fit.Anchored`; half the horizon where `starts` is absent), and the offsets of each
    bootstrap resample (`sample_offsets`, absent in files from before them)."""

    arms: Required[list[str]]
    offsets: Required[list[float]]
    horizons: Required[list[float]]
    starts: list[float]
    sample_offsets: list[list[float]]
    saturation: SaturationFit
    """How forecasts continue past the end of each arm's longest run (absent in files from before it)."""


class SaturationFit(TypedDict):
    """`laws.fit.Saturation`'s fields: the relation `d log KL / d log N = a + b log(KL /
    base_entropy)`, the law's share `weight` of forecasts past the sweep's steps, and per arm
    the time `after` which it applies."""

    a: float
    b: float
    weight: float
    base_entropy: float
    after: list[float]


class LawFit(TypedDict, total=False):
    """One target's chosen law: its form, parameters and their intervals, how it validated,
    and every candidate it was chosen from (`FormFit`'s keys, and more)."""

    form: Required[str]
    """The form of the law whose parameters are shown (`params`); where `members` is not
    empty, forecasts average those laws (the mean of their logs) instead."""
    members: list[MemberFit]
    anchor: Anchor
    transient: float
    """Each run's measurements before this share of its steps were left out of the fit
    (`laws.select.TRANSIENT`; 0 where that left too few to validate in time)."""
    params: Required[dict[str, float]]
    validation: dict[str, Validation]
    heldout_mape: float
    heldout_log_rmse: float
    r2: float
    label: str
    """The candidate's name, `form/shift+arms` (files from before it have only `form`)."""
    shift: str
    shift_value: float | None
    ci: dict[str, list[float]]
    selected_by: str
    theta: Required[list[float]]
    """The fitted parameters as the form takes them (`laws.forecast.fit_from`)."""
    heldout_theta: list[float] | None
    bootstrap: list[list[float]]
    arms: list[str]
    replay: bool
    column: str
    """The table column fitted: the target, or `ft_gain` for a law of the fine-tuning gain."""
    start: float
    forms: dict[str, FormFit]
    interval: IntervalFit
    log_rmse: float
    n: int


class LinearFit(TypedDict, total=False):
    """`forgetting_ce = intercept + slope * ft_loss`, pooled, and per arm where there are several."""

    target: str
    slope: float
    intercept: float
    r2: float
    n: int
    per_arm: dict[str, LinearFit]


class MatchedRun(TypedDict):
    """One run where it reaches a level of fine-tuning gain."""

    point_id: str
    arm: str
    rank: int | None
    P: int
    step: float
    kl: float


class Spread(TypedDict):
    """How far KL spreads across the runs of one arm at one gain."""

    kl_spread: float
    runs: int
    largest_over_smallest_P: float


class Ratio(TypedDict):
    """Geometric-mean KL of one arm over another's at one gain, with its 95% interval."""

    ratio: float
    low: float
    high: float
    runs: list[int]


class MatchedLevel(TypedDict):
    """Every run's KL at one level of fine-tuning gain."""

    gain: float
    ft_loss: float
    runs: list[MatchedRun]
    within: dict[str, Spread]
    across: dict[str, Ratio]
    kl_spread: float | None


class MatchedLoss(TypedDict, total=False):
    """`analyses.matched_loss_analysis`: KL at matched fine-tuning gain."""

    levels: list[MatchedLevel]
    within_run_corr: dict[str, float]
    note: str
    kl_spread_at_last_step: float | None


class DomainForgetting(TypedDict):
    """One eval domain: mean KL at each run's last step, and the change of its own loss."""

    kl: float
    loss_change: float


class Domains(TypedDict, total=False):
    """`analyses.domain_analysis`: which domain forgets most; empty without per-domain records."""

    domains: dict[str, DomainForgetting]
    most_hurt: str
    closest_to_finetuning: str
    closest_is_most_hurt: bool
    over_steps: list[dict[str, Any]]
    """One entry per step of the largest run: `step`, each domain's KL, and `most_hurt`."""
    closest_most_hurt_share_of_steps: float | None


class Verdict(TypedDict):
    """One of the paper's claims and what this sweep's numbers say of it."""

    claim: str
    verdict: Literal["holds", "fails", "mixed"]
    evidence: str


class ArmRange(TypedDict, total=False):
    """The sizes one arm measured and the range its in-size test validated."""

    P: list[float]
    params_per_rank: float
    validated_P: list[float]


class Reach(TypedDict):
    """How far a validation test reached and held, in doublings."""

    P: float
    N: float
    joint: float


class Ranges(TypedDict, total=False):
    """What the sweep measured and how far its tests validated the laws beyond it."""

    arms: dict[str, ArmRange]
    reference_learning_rate: float
    tested: Reach
    time_factor: float
    size_factor: float
    max_T: float
    validated_T: float
    replay_fractions: list[float]


class Fits(TypedDict, total=False):
    """The whole of `fits.json` (keys added by later versions are optional: older files read)."""

    kl: Required[LawFit]
    forgetting_ce: Required[LawFit]
    ft_loss: Required[LawFit]
    linear: LinearFit
    matched_loss: MatchedLoss
    domains: Domains
    claims: list[Verdict]
    n_records: int
    n_points: int
    holdout: float
    kl_law: str
    """How KL is forecast: `average` or `select` (`laws.select.KL_LAWS`)."""
    """The share of each run's steps the in-time test fitted on."""
    skipped_records: dict[str, int]
    range: Ranges | None
    base: dict[str, float]
    vocab_size: int | None
    records_sha256: str
