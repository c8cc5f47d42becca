"""Fit the laws on a sweep's records: every registered form, free and fixed shifts,
selection by held-out error, bootstrap intervals for the selected one; `fit_sweep` adds
the paper's analyses (`analyses`) and writes `fits.json`, which `forecast` and the report read.

Reads only `records.jsonl`, so any tool that writes that format can be fitted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from forgetscope.errors import UserInputError
from forgetscope.laws.analyses import domain_analysis, linear_relation, matched_loss_analysis
from forgetscope.laws.fit import Fit, bootstrap, check_enough_data, extrapolation_errors, fit_law, log_metrics, size_split, time_split
from forgetscope.laws.forms import FORMS, candidate_forms
from forgetscope.records import FIT_KEYS
from forgetscope.sweep.store import read_records  # json + yaml only: no torch

TARGETS = ("forgetting_ce", "kl", "ft_loss")


def read_table(directory: str | Path) -> pd.DataFrame:
    """One row per (point, step) from `DIR/records.jsonl` (a torn last line is skipped)."""
    path = Path(directory) / "records.jsonl"
    if not path.is_file():
        raise UserInputError(f"no records to fit: {path} not found (run `forgetscope sweep` first)")
    records = read_records(path)
    if not records:
        raise UserInputError(f"cannot fit: {path} holds no records")
    missing = set(FIT_KEYS) - set(records[0])
    if missing:
        raise UserInputError(f"{path}: records lack {', '.join(sorted(missing))}")
    table = pd.DataFrame(records).rename(columns={"trainable_params": "P", "step": "N"})
    return table.sort_values(["point_id", "N"]).reset_index(drop=True)


def _candidates(target: str, table: pd.DataFrame) -> dict[str, tuple[str, float | None, pd.DataFrame]]:
    """`{label: (form name, fixed shift or None, rows)}` to try for one target."""
    trained = table[table.N > 0]
    if target == "kl":
        rows = trained[trained.kl > 0]
        return {name: (name, 0.0, rows) for name in candidate_forms(increasing=True)}
    if target == "ft_loss":
        return {name: (name, None, trained) for name in candidate_forms(increasing=False)}
    start = table[table.N == 0]
    base_entropy = float(start.forgetting_ce.median()) if len(start) else float(table.base_entropy.median())
    out = {}
    for name in candidate_forms(increasing=True):
        out[f"{name}/fixed"] = (name, base_entropy, trained)
        out[f"{name}/free"] = (name, None, table)  # step 0 rows pin the free shift
    return out


def _modules(rows: pd.DataFrame) -> np.ndarray:
    """Each row's module set (one set for records that do not say)."""
    if "target_modules" not in rows:
        return np.zeros(len(rows), dtype=int)
    return rows.target_modules.map(lambda m: m if isinstance(m, str) else ",".join(m)).to_numpy()


def _score(form, shift, rows: pd.DataFrame, target: str, train: np.ndarray, held: np.ndarray) -> tuple[dict, Fit | None]:
    """Fit on `train`, score on `held` (trained steps only); NaNs where the split leaves too little."""
    P, N, y = rows.P.to_numpy(float), rows.N.to_numpy(float), rows[target].to_numpy(float)
    held = held & (N > 0)
    fitted = train & (N > 0)
    empty = {"median_ape": float("nan"), "max_ape": float("nan"), "mape": float("nan"), "log_rmse": float("nan"), "n": 0}
    enough = (held.any() and len(np.unique(P[fitted])) >= 2 and len(np.unique(N[fitted])) >= 2
              and fitted.sum() >= len(form.fit_names(shift)) + 2)
    if not enough:
        return empty, None
    partial = fit_law(form, P[train], N[train], y[train], shift)
    floor = rows.base_entropy.to_numpy(float)[held] if target == "forgetting_ce" else 0.0
    return extrapolation_errors(y[held], partial.predict(P[held], N[held]), floor), partial


def _fit_candidate(name: str, shift: float | None, rows: pd.DataFrame, target: str, fraction: float) -> dict:
    """One candidate fitted on everything, and on each validation split:

    - `in_time`: every run up to `1 - fraction` of its steps, forecasting the rest;
    - `in_size`: every run but the largest `P` of each module set, forecasting those;
    - `selection`: inside the in-time training part, the same split again: the form is
      chosen on this error, never on the two it reports.
    """
    form = FORMS.get(name)
    check_enough_data(rows.P[rows.N > 0], rows.N[rows.N > 0], len(form.fit_names(shift)), target)
    P, N, y, groups = rows.P.to_numpy(float), rows.N.to_numpy(float), rows[target].to_numpy(float), rows.point_id.to_numpy()
    full = fit_law(form, P, N, y, shift)
    in_time = time_split(N, groups, fraction)
    in_size = size_split(P, _modules(rows))
    inner = np.zeros(len(N), dtype=bool)
    inner[~in_time] = time_split(N[~in_time], groups[~in_time], fraction)
    validation, fits, masks = {}, {}, {}
    for split, held, train in (("in_time", in_time, ~in_time), ("in_size", in_size, ~in_size),
                               ("selection", inner, ~in_time & ~inner)):
        validation[split], fits[split] = _score(form, shift, rows, target, train, held)
        masks[split] = (train, held & (N > 0))
    metrics = log_metrics(y, full.predict(P, N))
    return {"fit": full, "rows": rows, "r2": metrics["r2"], "log_rmse": metrics["log_rmse"], "validation": validation,
            "split_fits": fits, "masks": masks,
            "heldout_fit": fits["in_time"], "heldout_mape": validation["in_time"]["mape"],
            "heldout_log_rmse": validation["in_time"]["log_rmse"]}


def _interval(best: dict, target: str, n_bootstrap: int, seed: int) -> dict:
    """The model-error term of the prediction intervals and their coverage on held-out points.

    The term is split-conformal: the largest absolute log residual of the selection split's
    forecasts (the finite-sample 95% quantile of so few points), applied in log space around
    the bootstrap band, which alone covers only the spread of the runs and not the error of
    the form. Coverage is the share of each test split's held-out points inside the 95%
    interval of the fit that never saw them, with and without the term.
    """
    rows = best["rows"]
    P, N, y, groups = rows.P.to_numpy(float), rows.N.to_numpy(float), rows[target].to_numpy(float), rows.point_id.to_numpy()
    residual_q = 0.0
    selection = best["split_fits"]["selection"]
    if selection is not None:
        held = best["masks"]["selection"][1]
        residuals = np.abs(np.log(np.maximum(selection.predict(P[held], N[held]), 1e-300)) - np.log(y[held]))
        level = min(1.0, 0.95 * (len(residuals) + 1) / len(residuals))
        residual_q = float(np.quantile(residuals, level))
    out: dict = {"residual_q": residual_q, "coverage": {}}
    for split in ("in_time", "in_size"):
        fit = best["split_fits"][split]
        if fit is None or n_bootstrap == 0:
            continue
        train, held = best["masks"][split]
        samples = bootstrap(fit, groups[train], P[train], N[train], y[train], min(n_bootstrap, 200), seed)
        band = np.percentile(fit.predict(P[held], N[held], samples), [2.5, 97.5], axis=0)
        inside = (band[0] <= y[held]) & (y[held] <= band[1])
        widened = (band[0] * np.exp(-residual_q) <= y[held]) & (y[held] <= band[1] * np.exp(residual_q))
        out["coverage"][split] = {"bootstrap": float(inside.mean()), "with_model_error": float(widened.mean()), "n": int(held.sum())}
    return out


def fit_target(table: pd.DataFrame, target: str, n_bootstrap: int = 1000, seed: int = 0, fraction: float = 0.5) -> dict:
    """Every candidate form of one target, the one with the lowest median error on the
    selection split chosen, with bootstrap intervals for its parameters."""
    tried = {label: _fit_candidate(name, shift, rows, target, fraction)
             for label, (name, shift, rows) in _candidates(target, table).items()}

    def selection_error(label: str) -> tuple[float, float, float]:
        v = tried[label]["validation"]
        return (np.nan_to_num(v["selection"]["median_ape"], nan=np.inf), np.nan_to_num(v["in_time"]["median_ape"], nan=np.inf),
                tried[label]["log_rmse"])

    label = min(tried, key=selection_error)
    best = tried[label]
    fit: Fit = best["fit"]
    heldout_fit: Fit | None = best["heldout_fit"]
    rows = best["rows"]
    samples = bootstrap(fit, rows.point_id.to_numpy(), rows.P.to_numpy(float), rows.N.to_numpy(float),
                        rows[target].to_numpy(float), n_bootstrap, seed) if n_bootstrap > 0 else np.empty((0, len(fit.theta)))
    reported = np.array([list(fit.form.report(t, fit.shift).values()) for t in samples]) if len(samples) else None
    ci = {name: [float(v) for v in np.percentile(reported[:, i], [2.5, 97.5])] for i, name in enumerate(fit.params)} if reported is not None else {}
    return {
        "label": label,
        "form": fit.form.name,
        "shift": "zero" if target == "kl" else ("fixed" if fit.shift is not None else "free"),
        "shift_value": fit.shift,
        "params": fit.params,
        "ci": ci,
        "selected_by": "median absolute percentage error on the selection split (inside the in-time training part)",
        "validation": best["validation"],
        "interval": _interval(best, target, n_bootstrap, seed),
        "heldout_mape": best["heldout_mape"],
        "heldout_log_rmse": best["heldout_log_rmse"],
        "r2": best["r2"],
        "log_rmse": best["log_rmse"],
        "n": int(len(rows)),
        "forms": {k: {"validation": v["validation"], "heldout_mape": v["heldout_mape"], "heldout_log_rmse": v["heldout_log_rmse"],
                      "r2": v["r2"], "params": v["fit"].params} for k, v in tried.items()},
        "theta": fit.theta.tolist(),
        "heldout_theta": None if heldout_fit is None else heldout_fit.theta.tolist(),
        "bootstrap": samples.tolist(),
    }


def fit_sweep(directory: str | Path, n_bootstrap: int = 1000, seed: int = 0, fraction: float = 0.5) -> dict:
    """Fit every target and the analyses, write `DIR/fits.json`, and return what it holds."""
    table = read_table(directory)
    fits = {target: fit_target(table, target, n_bootstrap, seed, fraction) for target in TARGETS}
    fits["linear"] = linear_relation(table)
    fits["matched_loss"] = matched_loss_analysis(table)
    fits["domains"] = domain_analysis(table)
    fits["n_records"], fits["n_points"] = int(len(table)), int(table.point_id.nunique())
    fits["holdout"] = fraction
    (Path(directory) / "fits.json").write_text(json.dumps(fits, indent=2))
    return fits


def load_fits(directory: str | Path) -> dict:
    """`DIR/fits.json` as `fit` wrote it."""
    path = Path(directory) / "fits.json"
    if not path.is_file():
        raise UserInputError(f"{path} not found: run `forgetscope fit {directory}` first")
    return json.loads(path.read_text())


def fitted_rows(table: pd.DataFrame, fits: dict, target: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows the selected law of `target` was fitted on, and which of them validation held
    out (as `fit_sweep` chose them)."""
    entry = fits[target]
    label = entry.get("label") or (entry["form"] if target != "forgetting_ce" else f"{entry['form']}/{entry['shift']}")
    rows = _candidates(target, table)[label][2]
    held = time_split(rows.N.to_numpy(float), rows.point_id.to_numpy(), fits.get("holdout", 0.5))
    return rows, held & (rows.N.to_numpy() > 0)
