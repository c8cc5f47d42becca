"""Fit the laws on a sweep's records: every form, free and fixed shifts, selection by
held-out error, bootstrap intervals for the selected one, and the paper's analyses.

Reads only `records.jsonl`, so any tool that writes that format can be fitted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from forgetscope.errors import UserInputError
from forgetscope.laws.fit import Fit, bootstrap, check_enough_data, fit_law, holdout_mask, log_metrics
from forgetscope.laws.forms import FORGETTING_FORMS, FORMS, LOSS_FORMS
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
    missing = {"point_id", "trainable_params", "step", "kl", "forgetting_ce", "ft_loss"} - set(records[0])
    if missing:
        raise UserInputError(f"{path}: records lack {', '.join(sorted(missing))}")
    table = pd.DataFrame(records).rename(columns={"trainable_params": "P", "step": "N"})
    return table.sort_values(["point_id", "N"]).reset_index(drop=True)


def _candidates(target: str, table: pd.DataFrame) -> dict[str, tuple[str, float | None, pd.DataFrame]]:
    """`{label: (form name, fixed shift or None, rows)}` to try for one target."""
    trained = table[table.N > 0]
    if target == "kl":
        rows = trained[trained.kl > 0]
        return {name: (name, 0.0, rows) for name in FORGETTING_FORMS}
    if target == "ft_loss":
        return {name: (name, None, trained) for name in LOSS_FORMS}
    start = table[table.N == 0]
    base_entropy = float(start.forgetting_ce.median()) if len(start) else float(table.base_entropy.median())
    out = {}
    for name in FORGETTING_FORMS:
        out[f"{name}/fixed"] = (name, base_entropy, trained)
        out[f"{name}/free"] = (name, None, table)  # step 0 rows pin the free shift
    return out


def _fit_candidate(name: str, shift: float | None, rows: pd.DataFrame, target: str, last_fraction: float) -> dict:
    form = FORMS[name]
    n_params = len(form.fit_names(shift))
    check_enough_data(rows.P[rows.N > 0], rows.N[rows.N > 0], n_params, target)
    P, N, y, groups = rows.P.to_numpy(float), rows.N.to_numpy(float), rows[target].to_numpy(float), rows.point_id.to_numpy()
    full = fit_law(form, P, N, y, shift)
    held = holdout_mask(P, N, groups, last_fraction) & (N > 0)
    train = ~held
    result = {"fit": full, "rows": rows, **{k: v for k, v in log_metrics(y, full.predict(P, N)).items() if k != "mape"}}
    if held.any() and len(np.unique(P[train & (N > 0)])) >= 2:
        partial = fit_law(form, P[train], N[train], y[train], shift)
        errors = log_metrics(y[held], partial.predict(P[held], N[held]))
        result.update(heldout_mape=errors["mape"], heldout_log_rmse=errors["log_rmse"], heldout_fit=partial, heldout=held)
    else:
        result.update(heldout_mape=float("nan"), heldout_log_rmse=float("nan"), heldout_fit=None, heldout=held)
    return result


def fit_target(table: pd.DataFrame, target: str, n_bootstrap: int = 1000, seed: int = 0, last_fraction: float = 0.25) -> dict:
    """Every candidate form of one target, the selected one with bootstrap intervals."""
    tried = {label: _fit_candidate(name, shift, rows, target, last_fraction)
             for label, (name, shift, rows) in _candidates(target, table).items()}
    label = min(tried, key=lambda k: (np.nan_to_num(tried[k]["heldout_mape"], nan=np.inf), tried[k]["log_rmse"]))
    best = tried[label]
    fit: Fit = best["fit"]
    rows = best["rows"]
    samples = bootstrap(fit, rows.point_id.to_numpy(), rows.P.to_numpy(float), rows.N.to_numpy(float),
                        rows[target].to_numpy(float), n_bootstrap, seed) if n_bootstrap > 0 else np.empty((0, len(fit.theta)))
    reported = np.array([list(fit.form.report(t, fit.shift).values()) for t in samples]) if len(samples) else None
    ci = {name: [float(v) for v in np.percentile(reported[:, i], [2.5, 97.5])] for i, name in enumerate(fit.params)} if reported is not None else {}
    return {
        "form": fit.form.name,
        "shift": "zero" if target == "kl" else ("fixed" if fit.shift is not None else "free"),
        "shift_value": fit.shift,
        "params": fit.params,
        "ci": ci,
        "heldout_mape": best["heldout_mape"],
        "heldout_log_rmse": best["heldout_log_rmse"],
        "r2": best["r2"],
        "log_rmse": best["log_rmse"],
        "n": int(len(rows)),
        "forms": {k: {"heldout_mape": v["heldout_mape"], "heldout_log_rmse": v["heldout_log_rmse"], "r2": v["r2"],
                      "params": v["fit"].params} for k, v in tried.items()},
        "theta": fit.theta.tolist(),
        "bootstrap": samples.tolist(),
        "_best": best,  # the selected candidate's Fit objects and rows, for the report; dropped when written
    }


def linear_relation(table: pd.DataFrame, y: str = "forgetting_ce") -> dict:
    """`y = intercept + slope * ft_loss` over every trained measurement (the paper: negative slope)."""
    rows = table[table.N > 0]
    if len(rows) < 3 or rows.ft_loss.nunique() < 2:
        raise UserInputError("cannot fit the forgetting / fine-tuning-loss line: fewer than 3 measurements after step 0")
    line = stats.linregress(rows.ft_loss, rows[y])
    return {"target": y, "slope": float(line.slope), "intercept": float(line.intercept), "r2": float(line.rvalue**2), "n": int(len(rows))}


def matched_loss_analysis(table: pd.DataFrame, levels: int = 3) -> dict:
    """Forgetting of each run at the step where it reaches the same fine-tuning loss.

    If runs of very different `P` forget about the same amount once they reach the same
    fine-tuning loss, then neither fewer parameters nor stopping earlier avoids forgetting
    at a given fine-tuning result: they only trade it for fine-tuning progress.
    """
    runs = {pid: g.sort_values("N") for pid, g in table[table.N > 0].groupby("point_id")}
    reachable_high = min(g.ft_loss.max() for g in runs.values())
    reachable_low = max(g.ft_loss.min() for g in runs.values())
    out: dict = {"levels": [], "within_run_corr": {}}
    for pid, g in runs.items():
        if len(g) >= 3:
            out["within_run_corr"][pid] = float(stats.spearmanr(g.ft_loss, g.kl).statistic)
    if reachable_low >= reachable_high:
        out["note"] = "the runs reach no common fine-tuning loss"
        return out
    for level in np.linspace(reachable_high, reachable_low, levels + 2)[1:-1]:
        at_level = []
        for pid, g in runs.items():
            loss, kl, n = g.ft_loss.to_numpy(), g.kl.to_numpy(), g.N.to_numpy()
            below = np.flatnonzero(loss <= level)
            if not len(below) or below[0] == 0:
                continue
            j = below[0]
            w = (loss[j - 1] - level) / (loss[j - 1] - loss[j])
            at_level.append({"point_id": pid, "P": int(g.P.iloc[0]), "step": float(n[j - 1] + w * (n[j] - n[j - 1])),
                             "kl": float(kl[j - 1] + w * (kl[j] - kl[j - 1]))})
        kls = np.array([r["kl"] for r in at_level])
        out["levels"].append({"ft_loss": float(level), "runs": at_level,
                              "kl_spread": float(kls.std() / kls.mean()) if len(kls) > 1 and kls.mean() > 0 else None})
    last = table[table.N == table.N.max()]
    out["kl_spread_at_last_step"] = float(last.kl.std(ddof=0) / last.kl.mean()) if len(last) > 1 and last.kl.mean() > 0 else None
    return out


def domain_analysis(table: pd.DataFrame) -> dict:
    """Forgetting per domain at each run's last step, and whether the domain closest to the
    fine-tuning data (the one whose own loss rose least or fell most) is the one hurt most."""
    if "domains" not in table or table.domains.isna().all():
        return {}
    last = table.loc[table.groupby("point_id").N.idxmax()]
    names = sorted({d for doms in last.domains for d in doms})
    per = {}
    for d in names:
        kl = [doms[d]["kl"] for doms in last.domains if d in doms]
        delta = [doms[d]["finetuned_loss"] - doms[d]["base_loss"] for doms in last.domains if d in doms]
        per[d] = {"kl": float(np.mean(kl)), "loss_change": float(np.mean(delta))}
    if not per:
        return {}
    most_hurt = max(per, key=lambda d: per[d]["kl"])
    closest = min(per, key=lambda d: per[d]["loss_change"])
    return {"domains": per, "most_hurt": most_hurt, "closest_to_finetuning": closest,
            "closest_is_most_hurt": most_hurt == closest}


def fit_sweep(directory: str | Path, n_bootstrap: int = 1000, seed: int = 0, last_fraction: float = 0.25) -> dict:
    """Fit everything, write `DIR/fits.json`, and return it (with Fit objects under `_candidates`)."""
    table = read_table(directory)
    fits = {target: fit_target(table, target, n_bootstrap, seed, last_fraction) for target in TARGETS}
    fits["linear"] = linear_relation(table)
    fits["matched_loss"] = matched_loss_analysis(table)
    fits["domains"] = domain_analysis(table)
    fits["n_records"], fits["n_points"] = int(len(table)), int(table.point_id.nunique())
    (Path(directory) / "fits.json").write_text(json.dumps(public(fits), indent=2))
    return fits


def public(fits: dict) -> dict:
    """`fits` without the in-memory Fit objects: what `fits.json` and `--json` hold."""
    return {k: ({kk: vv for kk, vv in v.items() if not kk.startswith("_")} if isinstance(v, dict) else v) for k, v in fits.items()}


def load_fits(directory: str | Path) -> dict:
    path = Path(directory) / "fits.json"
    if not path.is_file():
        raise UserInputError(f"{path} not found: run `forgetscope fit {directory}` first")
    return json.loads(path.read_text())


def _fit_from(entry: dict) -> Fit:
    return Fit(FORMS[entry["form"]], entry["shift_value"], np.array(entry["theta"]), 0.0, True)


def predict(fits: dict, target: str, P: float, N: float) -> dict:
    """The forecast for `P` parameters after `N` steps, with a 95% bootstrap interval."""
    if P <= 0 or N < 0:
        raise UserInputError(f"--params must be positive and --steps non-negative (got {P}, {N})")
    entry = fits[target]
    fit = _fit_from(entry)
    value = float(fit.predict(P, N))
    samples = np.array([float(fit.predict(P, N, np.array(t))) for t in entry["bootstrap"]])
    low, high = (np.percentile(samples, [2.5, 97.5]) if len(samples) else (value, value))
    return {"target": target, "P": P, "N": N, "value": value, "low": float(low), "high": float(high)}


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
    fit = _fit_from(entry)
    steps = _steps_within(fit, fit.theta, P, budget)
    samples = np.array([_steps_within(fit, np.array(t), P, budget) for t in entry["bootstrap"]])
    low, high = (np.percentile(samples, [2.5, 97.5]) if len(samples) else (steps, steps))
    return {"target": target, "P": P, "budget": budget, "steps": steps, "low": float(low), "high": float(high)}
