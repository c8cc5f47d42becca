"""Forecasts from `fits.json`: forgetting for a configuration not yet run, the steps a
forgetting budget allows, and (`forecast_run`) the rest of a run from its first part.

Forecasts are coherent: KL is the law of KL, `forgetting_ce = H_base + KL` (the identity the
metric obeys), KL stays below the cross-entropy of a uniform prediction (`log V`), and step 0
is the base. Intervals are the 95% bootstrap band over runs widened by the form's own
error, calibrated on held-out forecasts (`select._interval`). A query beyond the range the
validation tested is refused unless `extrapolate`, and then its interval is widened in
proportion to how much further it reaches than the validation did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from forgetscope.errors import UserInputError
from forgetscope.laws.fit import Anchored, Ensemble, Fit, Law, Saturation, half_width, widen
from forgetscope.laws.forms import FORMS
from forgetscope.laws.schema import Fits, LawFit, MemberFit, SaturationFit, Target


def fit_from(entry: LawFit) -> Law:
    """The law one target's entry of `fits.json` describes: its `Fit`, or the `Ensemble` of
    its members where it averages several, `Anchored` where it has an `anchor`."""
    law: Fit | Ensemble = Ensemble(tuple(_one_fit(member) for member in entry["members"])) if entry.get("members") else _one_fit(entry)
    if entry.get("anchor"):
        at = entry["anchor"]
        horizons = np.array(at["horizons"], dtype=float)
        return Anchored(law, tuple(at["arms"]), np.array(at["offsets"], dtype=float), horizons,
                        np.array(at["starts"], dtype=float) if at.get("starts") else horizons / 2,
                        np.array(at["sample_offsets"], dtype=float) if at.get("sample_offsets") else None,
                        _saturation(at.get("saturation")))
    return law


def _saturation(entry: SaturationFit | None) -> Saturation | None:
    if not entry:
        return None
    return Saturation(entry["a"], entry["b"], entry["weight"], entry["base_entropy"], tuple(entry.get("after", ())))


def _one_fit(entry: LawFit | MemberFit) -> Fit:
    return Fit(FORMS.get(entry["form"]), entry.get("shift_value"), np.array(entry["theta"]), 0.0, True, tuple(entry.get("arms", ())),
               bool(entry.get("replay", False)))


def samples_from(entry: LawFit, limit: int | None = None) -> np.ndarray | list[np.ndarray]:
    """The first `limit` bootstrap samples of `fit_from(entry)`, as its `predict` takes them
    (an empty array where there are none)."""
    if entry.get("members"):
        drawn = [np.array(member.get("bootstrap", []))[:limit] for member in entry["members"]]
        return drawn if all(len(d) for d in drawn) else np.empty((0, 0))
    return np.array(entry.get("bootstrap", []))[:limit]


@dataclass(frozen=True)
class Query:
    """A planned fine-tune: `P` parameters (or `rank` in arm `arm`), `steps` at `learning_rate`."""

    P: float | None = None
    rank: int | None = None
    arm: str | None = None
    """The module set (and scaling, when the sweep has both), as `fits.json`'s `range.arms` names it."""
    learning_rate: float | None = None
    extrapolate: bool = False
    replay_fraction: float = 0.0
    """Share of the training sequences from a replay corpus (laws with the replay knob only)."""


@dataclass(frozen=True)
class Resolved:
    """A query in the laws' terms: `P`, the arm's name, `T` per step and the replay fraction."""

    P: float
    arm: str | None
    T_per_step: float
    replay: float = 0.0


def resolve(fits: Fits, query: Query) -> Resolved:
    """Work out `P` and the arm; refuse what the sweep cannot answer, with one line."""
    ranges = fits.get("range")
    arms = (ranges or {}).get("arms", {})
    arm = query.arm
    if arm is not None and arms and arm not in arms:
        raise UserInputError(f"--target-modules {arm!r} is not in this sweep; it has {', '.join(arms)}")
    anchored = fits["kl"].get("anchor")
    per_arm = any(fits[t].get("arms") for t in ("kl", "ft_loss")) or (anchored is not None and len(anchored["arms"]) > 1)
    if arm is None and len(arms) > 1 and (query.rank is not None or per_arm):
        raise UserInputError(f"this sweep has several module sets ({'; '.join(arms)}): give --target-modules")
    if arm is None and len(arms) == 1:
        arm = next(iter(arms))
    if query.rank is not None and query.P is None:
        if query.rank < 1:
            raise UserInputError(f"--rank must be at least 1, got {query.rank}")
        per_rank = arms[arm].get("params_per_rank", float("nan")) if arm is not None and arm in arms else float("nan")
        if not np.isfinite(per_rank):
            raise UserInputError("this fits.json does not know parameters per rank: give --params (refit with this version)")
        P = query.rank * per_rank
    elif query.P is not None and query.rank is None:
        P = float(query.P)
    else:
        raise UserInputError("give exactly one of --params or --rank")
    if P <= 0:
        raise UserInputError(f"--params must be positive, got {P}")
    reference = (ranges or {}).get("reference_learning_rate", 1.0)
    lr = reference if query.learning_rate is None else query.learning_rate
    if lr <= 0:
        raise UserInputError(f"--learning-rate must be positive, got {lr}")
    replay = float(query.replay_fraction)
    if not 0.0 <= replay < 1.0:
        raise UserInputError(f"--replay-fraction must lie in [0, 1), got {replay}")
    if replay > 0 and not all(fits[t].get("replay") for t in ("kl", "forgetting_ce")):
        raise UserInputError("this sweep's laws have no replay knob (no runs with replay_fraction > 0 were fitted): "
                             "sweep replay_fraction to forecast with it")
    return Resolved(P, arm, lr / reference, replay)


def query_reach(fits: Fits, where: Resolved, T: float) -> tuple[float, float]:
    """How far a query lies beyond the sweep's data, in doublings: `(in P, in time)`; `P`
    below the arm's smallest counts too."""
    ranges = fits.get("range") or {}
    arm = ranges.get("arms", {}).get(where.arm) if where.arm else None
    in_P = 0.0
    if arm is not None:
        in_P = max(np.log2(where.P / arm["P"][-1]), np.log2(arm["P"][0] / where.P), 0.0)
    return float(in_P), float(np.log2(max(T / ranges["max_T"], 1.0))) if ranges.get("max_T") else 0.0  # step 0 reaches nowhere


def widening(fits: Fits, where: Resolved, T: float, extrapolate: bool) -> tuple[bool, float]:
    """`(validated, factor)`: inside the validated range `(True, 1)`; beyond it (with
    `extrapolate`), `False` and how much wider the interval is than at the edge of what the
    validation tested; without `extrapolate`, a one-line refusal."""
    ranges = fits.get("range")
    if ranges is None:
        return True, 1.0  # fits.json from before validated ranges: nothing to check against
    reasons = []
    if T > ranges["validated_T"]:
        reasons.append(f"{T:.4g} steps-equivalent is beyond the {ranges['validated_T']:.4g} the in-time test validated")
    arm = ranges["arms"].get(where.arm) if where.arm else None
    if arm is not None:
        low, high = arm["validated_P"]
        if not low <= where.P <= high:
            reasons.append(f"P = {where.P:,.0f} is outside the {low:,.0f} to {high:,.0f} the in-size test validated for {where.arm}")
    in_P, in_N = query_reach(fits, where, T)
    tested = ranges.get("tested")
    if not reasons and tested is not None and in_P > 0 and in_N > 0 and in_P + in_N > tested["joint"] + 1e-9:
        reasons.append(f"the query is beyond the sweep in both P and steps ({in_P + in_N:.1f} doublings), "
                       f"further than the joint test reached and held ({tested['joint']:.1f})")
    measured = ranges.get("replay_fractions")
    if measured and where.replay > max(measured):
        reasons.append(f"replay fraction {where.replay:g} is beyond the {max(measured):g} the sweep measured")
    if reasons and not extrapolate:
        raise UserInputError("; ".join(reasons) + " (pass --extrapolate for a forecast with a wider interval)")
    if not reasons:
        return True, 1.0
    if tested is None:  # fits.json from before issue 23: the old rule, by how much further than the validation
        factor = np.log(T / ranges["max_T"]) / max(np.log(ranges["time_factor"]), 1e-9) if T > ranges["validated_T"] else 1.0
        return False, float(max(factor, in_P / max(np.log2(ranges["size_factor"]), 1e-9), 1.0))
    interval = fits["kl"].get("interval", {})
    edge_reach = (tested["P"] if in_P > 0 else 0.0) + (tested["N"] if in_N > 0 else 0.0)  # as far, in the same directions
    edge = half_width(interval.get("floor", 0.0), interval.get("slope", 0.0), edge_reach)
    return False, float(max(half_width(interval.get("floor", 0.0), interval.get("slope", 0.0), in_P + in_N) / max(edge, 1e-12), 1.0))


def _band(fits: Fits, target: Target, where: Resolved, T: np.ndarray, widen_by: float) -> tuple[np.ndarray, ...]:
    """`(value, low, high, bootstrap_low, bootstrap_high)` of one target's law over `T`."""
    entry = fits[target]
    fit = fit_from(entry)
    arm = fit.arms.index(where.arm) if fit.arms and where.arm in fit.arms else 0
    value = fit.predict(where.P, T, arm=arm, replay=where.replay)
    samples = samples_from(entry)
    if len(samples):
        boot_low, boot_high = np.percentile(fit.predict(where.P, T, samples, arm=arm, replay=where.replay), [2.5, 97.5], axis=0)
    else:
        boot_low, boot_high = value, value
    interval = entry.get("interval", {})
    falling = entry.get("column", target) == "ft_loss"  # a falling law: its log-space band sits around E + g
    ranges = fits.get("range")
    if "slope" in interval and ranges:  # the half-width grows with how far the query reaches beyond the data
        in_P = query_reach(fits, where, 1.0)[0]
        in_N = np.log2(np.maximum(np.asarray(T, dtype=float) / ranges["max_T"], 1.0))
        low, high = widen(value, boot_low, boot_high, half_width(interval["floor"], interval["slope"], in_P + in_N), falling)
        return value, low, high, boot_low, boot_high
    q = interval.get("residual_q", 0.0) * widen_by  # fits.json from before issue 23: a fixed model-error term
    if falling:
        return value, boot_low * np.exp(-q), boot_high * np.exp(q), boot_low, boot_high
    return value, np.minimum(boot_low, value) * np.exp(-q), np.maximum(boot_high, value) * np.exp(q), boot_low, boot_high


def forecasts(fits: Fits, query: Query, steps: float) -> dict[str, dict]:
    """`{kl, forgetting_ce, ft_loss}`, each with `value`, `low`, `high` (95%), after `steps`."""
    if steps < 0:
        raise UserInputError(f"--steps must be non-negative, got {steps}")
    where = resolve(fits, query)
    T = steps * where.T_per_step
    validated, widened = widening(fits, where, T, query.extrapolate)
    base = fits.get("base", {})
    H = base.get("forgetting_ce", fits["forgetting_ce"].get("shift_value") or 0.0)
    vocab_size = fits.get("vocab_size")
    cap = np.log(vocab_size) if vocab_size else np.inf  # the cross-entropy of a uniform prediction
    common = {"P": where.P, "N": steps, "module_set": where.arm, "validated": validated, "interval_widening": widened,
              "reach_doublings": dict(zip(("P", "steps"), query_reach(fits, where, T)))}
    if steps == 0:  # the base itself
        start = {"kl": 0.0, "forgetting_ce": H, "ft_loss": base.get("ft_loss", float(fits["ft_loss"]["params"]["E"]))}
        return {t: {"target": t, **common, "value": v, "low": v, "high": v} for t, v in start.items()}
    out = {}
    kl = [min(float(v), cap) for v in _band(fits, "kl", where, np.array(T), widened)]
    out["kl"] = {"target": "kl", **common, "value": kl[0], "low": kl[1], "high": kl[2], "bootstrap_low": kl[3],
                 "bootstrap_high": kl[4], "capped_at_uniform": bool(kl[0] >= cap)}
    out["forgetting_ce"] = {"target": "forgetting_ce", **common, "value": H + kl[0], "low": H + kl[1], "high": H + kl[2],
                            "base_entropy": H}
    ft = [float(v) for v in _band(fits, "ft_loss", where, np.array(T), widened)]
    if fits["ft_loss"].get("column") == "ft_gain":  # a law of the gain: ft_loss = start - gain
        start_loss = fits["ft_loss"]["start"]
        ft = [start_loss - ft[0], start_loss - ft[2], start_loss - ft[1], start_loss - ft[4], start_loss - ft[3]]
    out["ft_loss"] = {"target": "ft_loss", **common, "value": ft[0], "low": ft[1], "high": ft[2], "bootstrap_low": ft[3],
                      "bootstrap_high": ft[4]}
    return out


def budget_steps(fits: Fits, query: Query, budget: float, target: Target = "kl") -> dict:
    """The steps `query` can take before its KL forecast (value, and each end of the 95%
    interval) exceeds `budget`; `None` where it stays within it over the validated range."""
    if budget <= 0:
        raise UserInputError(f"--budget must be positive, got {budget}")
    where = resolve(fits, query)
    ranges = fits.get("range") or {}
    top = ranges.get("validated_T", 1e6) if not query.extrapolate else 1e4 * ranges.get("max_T", 1e2)
    T = np.geomspace(min(1.0, top), top, 400)
    widened = widening(fits, where, T[-1], query.extrapolate)[1]  # without extrapolate T stays validated: checks P
    curves = _band(fits, target, where, T, widened)[:3]

    def first_crossing(which: int) -> float | None:
        over = np.flatnonzero(curves[which] > budget)
        if not len(over):
            return None
        j = over[0]
        if j == 0:
            return 0.0
        # between the grid points around the crossing, on a finer grid (a law anchored to its
        # runs' ends bends where its anchor starts and stops), interpolated in log-log
        fine = np.geomspace(T[j - 1], T[j], 201)
        curve = _band(fits, target, where, fine, widened)[which]
        k = max(int(np.flatnonzero(curve > budget)[0]) if (curve > budget).any() else len(fine) - 1, 1)
        w = (np.log(budget) - np.log(curve[k - 1])) / (np.log(curve[k]) - np.log(curve[k - 1]))
        return float(np.exp(np.log(fine[k - 1]) + np.clip(w, 0.0, 1.0) * (np.log(fine[k]) - np.log(fine[k - 1]))) / where.T_per_step)

    return {"target": target, "P": where.P, "module_set": where.arm, "budget": budget, "steps": first_crossing(0),
            "low": first_crossing(2), "high": first_crossing(1), "searched_up_to": float(T[-1] / where.T_per_step)}


@dataclass(frozen=True)
class RunPrior:
    """A sweep's law of KL for one planned run (`run_prior`): `kl(N)` at its `P`, module set
    and learning rate, and how much the law's shape errs per doubling of time (`slope`)."""

    fits: Fits
    where: Resolved
    slope: float

    def kl(self, steps, samples: int | None = None) -> np.ndarray:
        """The law's KL at `steps`; with `samples`, at each of its first `samples` bootstrap
        resamples (one row each). An anchored law's shape without its anchor: the run's own
        factor sets the level, and the anchor's ramp toward the sweep's horizon is no part of
        a run's shape."""
        fit = fit_from(self.fits["kl"])
        fit = fit.law if isinstance(fit, Anchored) else fit
        arm = fit.arms.index(self.where.arm) if fit.arms and self.where.arm in fit.arms else 0
        T = np.asarray(steps, dtype=float) * self.where.T_per_step
        theta = None if samples is None else samples_from(self.fits["kl"], samples)
        if theta is not None and len(theta) == 0:
            return np.empty((0, *T.shape))
        return np.asarray(fit.predict(self.where.P, T, theta, arm=arm, replay=self.where.replay), dtype=float)

    @property
    def saturation(self) -> Saturation | None:
        """How the sweep's forecasts slow past its steps (`laws.fit.Saturation`), if they do."""
        anchored = self.fits["kl"].get("anchor")
        return _saturation(anchored.get("saturation") if anchored else None)

    def slows_after(self) -> float:
        """This run's step past which the sweep's forecasts slow: the end of its arm's longest
        run, in this run's steps (infinite where they never do)."""
        anchored, slowing = self.fits["kl"].get("anchor"), self.saturation
        if slowing is None or not slowing.after or not anchored:
            return float("inf")
        index = anchored["arms"].index(self.where.arm) if self.where.arm in anchored["arms"] else 0
        return slowing.after[index] / self.where.T_per_step

    def growth_sd(self, from_steps: float, to_steps: float, samples: int = 200) -> float:
        """How uncertain the law's growth from `from_steps` to `to_steps` is: the standard
        deviation of its log over the bootstrap resamples (0 without any), the prior's part of
        what the bootstrap band is to `predict`'s intervals."""
        ends = self.kl(np.array([from_steps, to_steps], dtype=float), samples)
        if len(ends) < 2:
            return 0.0
        growth = np.log(np.maximum(ends[:, 1], 1e-300) / np.maximum(ends[:, 0], 1e-300))
        return float(np.std(growth, ddof=1))


def run_prior(fits: Fits, query: Query) -> RunPrior:
    """The prior `forecast_run` takes from a sweep's `fits.json` for the run `query` plans."""
    where = resolve(fits, query)
    return RunPrior(fits, where, float(fits["kl"].get("interval", {}).get("slope", 0.0)))


def forecast_run(steps, kl, planned_steps: int, budget: float | None = None, points: int = 3,
                 prior: RunPrior | None = None) -> dict | None:
    """Forecast one run's KL at `planned_steps` from its measurements so far.

    Without a `prior`, a run has one `P`, so no law in `P` can be fitted to it: this is a
    local power law, `log KL = a + b log N`, fitted by least squares to the latest half of
    the measurements in `log N` (those past the square root of the last step; at least the
    last `points`): the curves are steeper over the first steps, so the latest slope
    extrapolates best. The 95% prediction interval is from the t distribution.

    With a `prior` (a sweep's law for this run, `run_prior`), only the run's own factor is
    fitted: its level is the mean of its measurements against the law's shape, and the slope
    ahead is the law's, from the last measurement to the planned step (past the sweep's steps,
    where its forecasts slow as KL rises, `laws.fit.Saturation`, blended the same way from the
    run's own level there, the law's resamples spread at its share), with the law's
    calibrated error per doubling of time and the spread of its bootstrap resamples' growth
    over that stretch in the interval. The run's own slope is not used:
    over a run's first steps it is steeper than later (the transient), and on the forecast
    benchmark blending it in (weighted by its standard error) made forecasts of the last step
    from the first quarter 84% off instead of 47%. Two measurements are enough with a prior.
    Returns None until there are enough measurements.
    `budget_step`: the step at which the forecast crosses `budget`.
    """
    steps, kl = np.asarray(steps, dtype=float), np.asarray(kl, dtype=float)
    keep = (steps > 0) & (kl > 0)
    steps, kl = steps[keep], kl[keep]
    if len(steps):
        first = min(int(np.searchsorted(steps, np.sqrt(steps[-1]))), max(len(steps) - points, 0))
        steps, kl = steps[first:], kl[first:]
    if prior is not None:
        return _forecast_with_prior(steps, kl, planned_steps, budget, prior)
    if len(steps) < 3 or len(np.unique(steps)) < 3:
        return None
    x, y = np.log(steps), np.log(kl)
    line = stats.linregress(x, y)
    x0 = np.log(planned_steps)
    dof = len(x) - 2
    resid = y - (line.intercept + line.slope * x)
    s = np.sqrt(np.sum(resid**2) / dof)
    se = s * np.sqrt(1 + 1 / len(x) + (x0 - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2))
    mean = line.intercept + line.slope * x0
    t = stats.t.ppf(0.975, dof)
    out = {"from_step": int(steps[-1]), "planned_steps": int(planned_steps), "kl": float(np.exp(mean)),
           "low": float(np.exp(mean - t * se)), "high": float(np.exp(mean + t * se)), "slope": float(line.slope)}
    if budget is not None and line.slope > 0:
        out["budget_step"] = float(np.exp((np.log(budget) - line.intercept) / line.slope))
    return out


def _forecast_with_prior(steps: np.ndarray, kl: np.ndarray, planned_steps: int, budget: float | None,
                         prior: RunPrior) -> dict | None:
    if len(steps) < 2:
        return None
    x, y, x0 = np.log(steps), np.log(kl), np.log(planned_steps)
    ahead = max(x0 - x[-1], 1e-9)
    # The law's own slope from the last measurement to the planned step, and how uncertain it
    # is: its calibrated 95% error per doubling of time, as a standard error of a log slope,
    # beside the spread of its bootstrap resamples' growth (as `predict` adds the band).
    slope = float(np.log(prior.kl(planned_steps) / prior.kl(steps[-1])) / ahead)
    law_se = max(prior.slope, 1e-6) / (1.96 * np.log(2.0))
    band_sd = prior.growth_sd(steps[-1], planned_steps)
    # The run's level at its last measurement: its measurements against the law's shape.
    ratios = y - np.log(np.maximum(prior.kl(steps), 1e-300))
    level = float(ratios.mean() + np.log(prior.kl(steps[-1])))
    dof = max(len(x) - 1, 1)
    s = float(np.std(ratios, ddof=1)) if len(x) > 1 else 0.0
    mean = level + slope * ahead
    # Past the sweep's steps its forecasts slow with the level KL has reached (as `predict`'s
    # do), continued from the run's own level there; within them the law's shape holds.
    start = max(x[-1], np.log(prior.slows_after()))
    if prior.saturation is not None and x0 > start:
        at_start = level + slope * (start - x[-1])
        mean = float(np.log(prior.saturation.blend(np.exp(mean), np.exp(at_start), np.exp(x0 - start))))
        slope = (mean - level) / ahead
        band_sd *= prior.saturation.weight  # the law's resamples move only its share of the forecast
    half = stats.t.ppf(0.975, dof) * np.sqrt(s**2 * (1 + 1 / len(x)) + (ahead * law_se) ** 2 + band_sd**2)
    value = float(np.exp(mean))
    out = {"from_step": int(steps[-1]), "planned_steps": int(planned_steps), "kl": value,
           "low": float(np.exp(mean - half)), "high": float(np.exp(mean + half)), "slope": slope,
           "prior": True}
    if budget is not None and slope > 0:
        out["budget_step"] = float(np.exp(x[-1] + (np.log(budget) - level) / slope))
    return out
