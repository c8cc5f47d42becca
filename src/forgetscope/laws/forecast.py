"""Forecasts from `fits.json`: forgetting for a configuration not yet run, and the steps a
forgetting budget allows. Forecast intervals are the 95% bootstrap band over runs widened by
the form's own error, calibrated on held-out forecasts (`select._interval`)."""

from __future__ import annotations

import numpy as np

from forgetscope.errors import UserInputError
from forgetscope.laws.fit import Fit
from forgetscope.laws.forms import FORMS


def fit_from(entry: dict, theta_key: str = "theta") -> Fit | None:
    """The `Fit` one target's entry of `fits.json` describes (`heldout_theta`: the one fitted
    without the held-out runs; None where the entry has none)."""
    if entry.get(theta_key) is None:
        return None
    return Fit(FORMS.get(entry["form"]), entry["shift_value"], np.array(entry[theta_key]), 0.0, True)


def predict(fits: dict, target: str, P: float, N: float) -> dict:
    """The forecast for `P` parameters after `N` steps, with a 95% bootstrap interval."""
    if P <= 0 or N < 0:
        raise UserInputError(f"--params must be positive and --steps non-negative (got {P}, {N})")
    entry = fits[target]
    fit = fit_from(entry)
    value = float(fit.predict(P, N))
    samples = np.array([float(fit.predict(P, N, np.array(t))) for t in entry["bootstrap"]])
    low, high = (np.percentile(samples, [2.5, 97.5]) if len(samples) else (value, value))
    # The form's own error, calibrated on held-out forecasts (`fits.json` before it: none).
    q = entry.get("interval", {}).get("residual_q", 0.0)
    return {"target": target, "P": P, "N": N, "value": value, "low": float(low * np.exp(-q)), "high": float(high * np.exp(q)),
            "bootstrap_low": float(low), "bootstrap_high": float(high)}


def _steps_within(fit: Fit, theta: np.ndarray, P: float, budget: float, max_steps: float = 1e12) -> float:
    """Largest N whose forecast stays within `budget` (bisection in log N; the laws grow in N)."""
    if float(fit.predict(P, 1.0, theta)) > budget:
        return 0.0
    if float(fit.predict(P, max_steps, theta)) <= budget:
        return float("inf")
    lo, hi = 0.0, np.log(max_steps)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(fit.predict(P, np.exp(mid), theta)) <= budget else (lo, mid)
    return float(np.exp(lo))


def budget_steps(fits: dict, P: float, budget: float, target: str = "kl") -> dict:
    """How many steps `P` trainable parameters can take before forgetting exceeds `budget`."""
    if budget <= 0:
        raise UserInputError(f"--budget must be positive, got {budget}")
    entry = fits[target]
    fit = fit_from(entry)
    steps = _steps_within(fit, fit.theta, P, budget)
    samples = np.array([_steps_within(fit, np.array(t), P, budget) for t in entry["bootstrap"]])
    low, high = (np.percentile(samples, [2.5, 97.5]) if len(samples) else (steps, steps))
    return {"target": target, "P": P, "budget": budget, "steps": steps, "low": float(low), "high": float(high)}


def forecasts(fits: dict, P: float, N: float) -> dict[str, dict]:
    """`predict` for every target `fits.json` holds a law of (`kl`, `forgetting_ce`, `ft_loss`)."""
    return {target: predict(fits, target, P, N) for target in ("forgetting_ce", "kl", "ft_loss")}
