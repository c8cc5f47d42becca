"""Fit the laws on a sweep's records: every registered form, free and fixed shifts, pooled
or with a factor per arm (module set and scaling), selection by held-out error, bootstrap
intervals for the selected one; `fit_sweep` adds the paper's analyses (`analyses`) and
writes `fits.json`, which `forecast` and the report read.

Time is the amount of update, `T = N * learning_rate / reference_learning_rate` (the
sweep's median learning rate), so runs at different learning rates share one law; with
one learning rate, `T` is the step count `N`.

The fine-tuning loss is fitted two ways: falling forms on `ft_loss` itself, and growing forms
on the gain `ft_gain = ft_loss(step 0) - ft_loss`, which starts at 0 like forgetting. Every
candidate of a target is scored on what grows from the base (`forgetting_ce - H_base`, the
gain), so that a large constant part does not hide its error.

Reads only `records.jsonl`, so any tool that writes that format can be fitted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from forgetscope.errors import UserInputError
from forgetscope.files import write_atomically
from forgetscope.laws.analyses import claims, domain_analysis, linear_relation, matched_loss_analysis
from forgetscope.laws.fit import Fit, bootstrap, check_enough_data, extrapolation_errors, fit_law, log_metrics, size_split, time_split
from forgetscope.laws.forms import FORMS, candidate_forms
from forgetscope.records import FIT_KEYS, is_mitigated, sweep_records

TARGETS = ("forgetting_ce", "kl", "ft_loss")


def read_table(directory: str | Path) -> pd.DataFrame:
    """One row per (point, step) in `DIR/records.jsonl` (a torn last line is skipped), but for
    runs with a KL or L2 penalty: the laws describe fine-tuning with replay as their only
    knob; the penalised runs are compared on their trade-off curves (`mitigate.tradeoff`)."""
    path = Path(directory) / "records.jsonl"
    if not path.is_file():
        raise UserInputError(f"no records to fit: {path} not found (run `forgetscope sweep` first)")
    records, unfinished = sweep_records(directory)
    if not records:
        raise UserInputError(f"cannot fit: {path} holds no records" + (f" of finished points ({unfinished} of unfinished ones)" if unfinished else ""))
    for number, record in enumerate(records, 1):
        missing = set(FIT_KEYS) - set(record)
        if missing:
            raise UserInputError(f"{path}: record {number} (point {record.get('point_id', '?')}) lacks {', '.join(sorted(missing))}")
    # Replay is a knob of the laws (`+replay` candidates); other training mitigations are not.
    records = [r for r in records if not is_mitigated({**r, "replay_fraction": 0})]
    if not records:
        raise UserInputError(f"cannot fit: every run in {path} has a KL or L2 penalty, and the laws describe runs without one")
    finite = [r for r in records if all(_is_finite_number(r[k]) for k in FIT_KEYS if k != "point_id")]
    if not finite:
        raise UserInputError(f"cannot fit: no record in {path} has finite values of {', '.join(FIT_KEYS[1:])}")
    table = pd.DataFrame(finite).rename(columns={"trainable_params": "P", "step": "N"})
    table.attrs["skipped"] = {"unfinished_points": unfinished, "non_finite": len(records) - len(finite)}
    table["replay_fraction"] = table.get("replay_fraction", pd.Series(0.0, index=table.index)).fillna(0.0).astype(float)
    table["arm_name"] = arm_names(table)
    arms = sorted(table.arm_name.unique())
    table["arm"] = table.arm_name.map(arms.index)
    lr = table.learning_rate.astype(float) if "learning_rate" in table else pd.Series(1.0, index=table.index)
    table.attrs["reference_learning_rate"] = reference = float(lr.median())
    table["T"] = table.N * lr / reference
    table["ft_gain"] = base_values(table)["ft_loss"] - table.ft_loss
    return table.sort_values(["point_id", "N"]).reset_index(drop=True)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def arm_names(rows: pd.DataFrame) -> pd.Series:
    """Each row's arm: its module set, and its scaling when the sweep has both (records that
    do not say form one arm)."""
    if "target_modules" not in rows:
        return pd.Series("all", index=rows.index)
    names = rows.target_modules.map(lambda m: m if isinstance(m, str) else ",".join(m))
    if "rslora" in rows and rows.rslora.nunique() > 1:
        names = names + rows.rslora.map({True: " rsLoRA", False: " LoRA"})
    return names


def _candidates(target: str, table: pd.DataFrame) -> dict[str, tuple[str, float | None, pd.DataFrame, str, bool, bool]]:
    """`{label: (form name, fixed shift or None, rows, column fitted, with arm factors, with
    the replay knob)}` to try for one target; `+arms` labels have a factor per arm, tried when
    the sweep has several; `+replay` labels the replay knob, tried when runs differ in it."""
    trained = table[table.N > 0]
    if target == "kl":
        base = {name: (name, 0.0, trained[trained.kl > 0], "kl") for name in candidate_forms(increasing=True)}
    elif target == "ft_loss":
        base = {name: (name, None, trained, "ft_loss") for name in candidate_forms(increasing=False)}
        gaining = trained[trained.ft_gain > 0]
        base |= {f"{name}/gain": (name, 0.0, gaining, "ft_gain") for name in candidate_forms(increasing=True)}
    else:
        base = {}
        for name in candidate_forms(increasing=True):
            base[f"{name}/fixed"] = (name, base_values(table)["forgetting_ce"], trained, "forgetting_ce")
            base[f"{name}/free"] = (name, None, table, "forgetting_ce")  # step 0 rows pin the free shift
    out = {label: (*c, False) for label, c in base.items()}
    if table.arm.nunique() > 1:
        out |= {f"{label}+arms": (*c, True) for label, c in base.items()}
    if table.replay_fraction.nunique() > 1:
        return {f"{label}+replay": (*c, True) for label, c in out.items()}  # a law without the knob would pool them
    return {label: (*c, False) for label, c in out.items()}


def base_values(table: pd.DataFrame) -> dict[str, float]:
    """What the base model scores at step 0: `forgetting_ce` (its own entropy, KL 0) and
    `ft_loss`, the start of every forecast."""
    start = table[table.N == 0]
    entropy = float(start.forgetting_ce.median()) if len(start) else float(table.base_entropy.median())
    return {"forgetting_ce": entropy, "kl": 0.0, "ft_loss": float(start.ft_loss.median()) if len(start) else float("nan")}


def _columns(rows: pd.DataFrame, target: str, with_arms: bool, with_replay: bool = False):
    """`P`, `T`, `y`, each row's arm (None for a pooled law), the arms' names and each row's
    replay fraction (None for a law without the knob)."""
    arms = tuple(sorted(rows.arm_name.unique())) if with_arms else ()
    arm = rows.arm_name.map(arms.index).to_numpy() if with_arms else None
    replay = rows.replay_fraction.to_numpy(float) if with_replay else None
    return rows.P.to_numpy(float), rows["T"].to_numpy(float), rows[target].to_numpy(float), arm, arms, replay


def _n_fitted(form, shift, arms, replay=None) -> int:
    return len(form.fit_names(shift)) + max(len(arms) - 1, 0) + (replay is not None)


def _at(values: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[mask]


def _score(form, shift, rows: pd.DataFrame, target: str, train: np.ndarray, held: np.ndarray,
           with_arms: bool, with_replay: bool = False) -> tuple[dict, Fit | None]:
    """Fit on `train`, score on `held` (trained steps only); NaNs where the split leaves too little."""
    P, T, y, arm, arms, replay = _columns(rows, target, with_arms, with_replay)
    held = held & (T > 0)
    fitted = train & (T > 0)
    empty = {"median_ape": float("nan"), "max_ape": float("nan"), "mape": float("nan"), "log_rmse": float("nan"), "n": 0}
    enough = (held.any() and len(np.unique(P[fitted])) >= 2 and len(np.unique(T[fitted])) >= 2
              and fitted.sum() >= _n_fitted(form, shift, arms, replay) + 2
              and (arm is None or set(arm[held]) <= set(arm[fitted])))  # an arm's factor needs its own runs
    if not enough:
        return empty, None
    partial = fit_law(form, P[train], T[train], y[train], shift, arm=_at(arm, train), arms=arms, replay=_at(replay, train))
    pred = partial.predict(P[held], T[held], arm=_at(arm, held), replay=_at(replay, held))
    return extrapolation_errors(*_growth(rows, target, held, y[held], pred)), partial


def _growth(rows: pd.DataFrame, column: str, held: np.ndarray, y: np.ndarray, pred: np.ndarray):
    """`(measured, forecast)` of what grows from the base: `forgetting_ce - H_base`, the
    fine-tuning gain for `ft_loss`, the values themselves otherwise."""
    if column == "forgetting_ce":
        floor = rows.base_entropy.to_numpy(float)[held]
        return y - floor, pred - floor
    if column == "ft_loss":
        start = rows.ft_loss.to_numpy(float)[held] + rows.ft_gain.to_numpy(float)[held]
        return start - y, start - pred
    return y, pred


def _fit_candidate(name: str, shift: float | None, rows: pd.DataFrame, target: str, fraction: float, with_arms: bool,
                   with_replay: bool = False) -> dict:
    """One candidate fitted on everything, and on each validation split:

    - `in_time`: every run up to `1 - fraction` of its steps, forecasting the rest;
    - `in_size`: every run but the largest `P` of each module set, forecasting those;
    - `selection`: inside the in-time training part, the same split again: the form is
      chosen on this error, never on the two it reports.
    """
    form = FORMS.get(name)
    P, N, y, arm, arms, replay = _columns(rows, target, with_arms, with_replay)
    check_enough_data(P[N > 0], N[N > 0], _n_fitted(form, shift, arms, replay), target)
    groups = rows.point_id.to_numpy()
    full = fit_law(form, P, N, y, shift, arm=arm, arms=arms, replay=replay)
    in_time = time_split(N, groups, fraction)
    in_size = size_split(P, rows.arm_name.to_numpy())
    inner = np.zeros(len(N), dtype=bool)
    inner[~in_time] = time_split(N[~in_time], groups[~in_time], fraction)
    validation, fits, masks = {}, {}, {}
    for split, held, train in (("in_time", in_time, ~in_time), ("in_size", in_size, ~in_size),
                               ("selection", inner, ~in_time & ~inner)):
        validation[split], fits[split] = _score(form, shift, rows, target, train, held, with_arms, with_replay)
        masks[split] = (train, held & (N > 0))
    metrics = log_metrics(y, full.predict(P, N, arm=arm, replay=replay))
    return {"fit": full, "rows": rows, "arm": arm, "replay": replay, "r2": metrics["r2"], "log_rmse": metrics["log_rmse"], "validation": validation,
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
    rows, arm, replay = best["rows"], best["arm"], best["replay"]
    P, N, y, groups = rows.P.to_numpy(float), rows["T"].to_numpy(float), rows[target].to_numpy(float), rows.point_id.to_numpy()
    arm = np.zeros(len(rows), dtype=int) if arm is None else arm
    residual_q = 0.0
    selection = best["split_fits"]["selection"]
    if selection is not None:
        held = best["masks"]["selection"][1]
        residuals = np.abs(np.log(np.maximum(selection.predict(P[held], N[held], arm=arm[held], replay=_at(replay, held)), 1e-300))
                           - np.log(y[held]))
        level = min(1.0, 0.95 * (len(residuals) + 1) / len(residuals))
        residual_q = float(np.quantile(residuals, level))
    out: dict = {"residual_q": residual_q, "coverage": {}}
    for split in ("in_time", "in_size"):
        fit = best["split_fits"][split]
        if fit is None or n_bootstrap == 0:
            continue
        train, held = best["masks"][split]
        samples = bootstrap(fit, groups[train], P[train], N[train], y[train], min(n_bootstrap, 200), seed,
                            arm=arm[train] if fit.arms else None, replay=_at(replay, train))
        band = np.percentile(fit.predict(P[held], N[held], samples, arm=arm[held], replay=_at(replay, held)), [2.5, 97.5], axis=0)
        inside = (band[0] <= y[held]) & (y[held] <= band[1])
        widened = (band[0] * np.exp(-residual_q) <= y[held]) & (y[held] <= band[1] * np.exp(residual_q))
        out["coverage"][split] = {"bootstrap": float(inside.mean()), "with_model_error": float(widened.mean()), "n": int(held.sum())}
        # Recorded as what grows from the base (KL, L_f - H_base, the fine-tuning gain), as validation scores it.
        actual, value = _growth(rows, target, held, y[held], fit.predict(P[held], N[held], arm=arm[held], replay=_at(replay, held)))
        ends = np.sort([_growth(rows, target, held, y[held], edge)[1] for edge in (band[0] * np.exp(-residual_q),
                                                                                 band[1] * np.exp(residual_q))], axis=0)
        out.setdefault("forecasts", {})[split] = {
            "point_id": rows.point_id.to_numpy()[held].tolist(), "P": P[held].tolist(), "N": rows.N.to_numpy(float)[held].tolist(),
            "actual": actual.tolist(), "value": value.tolist(), "low": ends[0].tolist(), "high": ends[1].tolist()}
    return out


def fit_target(table: pd.DataFrame, target: str, n_bootstrap: int = 1000, seed: int = 0, fraction: float = 0.5) -> dict:
    """Every candidate form of one target, the one with the lowest median error on the
    selection split chosen, with bootstrap intervals for its parameters."""
    tried, refused = {}, []
    for label, (name, shift, rows, column, with_arms, with_replay) in _candidates(target, table).items():
        try:
            tried[label] = _fit_candidate(name, shift, rows, column, fraction, with_arms, with_replay) | {"column": column}
        except UserInputError as exc:  # too little data for this candidate: the others may still fit
            refused.append(exc)
    if not tried:
        raise refused[0]

    if all(np.isnan(t["validation"]["in_time"]["median_ape"]) for t in tried.values()):
        raise UserInputError(f"cannot validate the laws of {target}: fitting each run up to {1 - fraction:.0%} of its steps leaves "
                             "too few measurements for any form's parameters (measure more steps, or lower --holdout)")

    def selection_error(label: str) -> tuple[float, float, float]:
        v = tried[label]["validation"]
        return (np.nan_to_num(v["selection"]["median_ape"], nan=np.inf), np.nan_to_num(v["in_time"]["median_ape"], nan=np.inf),
                tried[label]["log_rmse"])

    label = min(tried, key=selection_error)
    best = tried[label]
    fit: Fit = best["fit"]
    heldout_fit: Fit | None = best["heldout_fit"]
    rows = best["rows"]
    column = best["column"]
    samples = bootstrap(fit, rows.point_id.to_numpy(), rows.P.to_numpy(float), rows["T"].to_numpy(float),
                        rows[column].to_numpy(float), n_bootstrap, seed, arm=best["arm"], replay=best["replay"]) if n_bootstrap > 0 else np.empty((0, len(fit.theta)))
    reported = np.array([list(fit.form.report(t, fit.shift, fit.arms, fit.replay).values()) for t in samples]) if len(samples) else None
    ci = {name: [float(v) for v in np.percentile(reported[:, i], [2.5, 97.5])] for i, name in enumerate(fit.params)} if reported is not None else {}
    return {
        "label": label,
        "form": fit.form.name,
        "shift": "zero" if target == "kl" else ("fixed" if fit.shift is not None else "free"),
        "shift_value": fit.shift,
        "arms": list(fit.arms),
        "replay": fit.replay,
        "params": fit.params,
        "ci": ci,
        "selected_by": "median absolute percentage error on the selection split (inside the in-time training part)",
        "validation": best["validation"],
        "column": column,
        "start": base_values(table)[target],
        "interval": _interval(best, column, n_bootstrap, seed),
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


def sweep_ranges(table: pd.DataFrame, fraction: float) -> dict:
    """What a forecast may be asked about: each arm's `P` per rank and measured `P`, and the
    range the validation tested. The in-time test forecast `1 / (1 - fraction)` times beyond
    the steps it saw, the in-size test `P_max / P_second` beyond the sizes; a query is
    validated up to the same factors beyond the whole sweep's data."""
    arms, size_factor = {}, 1.0
    for name, rows in table.groupby("arm_name"):
        sizes = np.sort(rows.P.unique().astype(float))
        if len(sizes) >= 2:
            size_factor = max(size_factor, sizes[-1] / sizes[-2])
        per_rank = (rows.P / rows["rank"]).median() if "rank" in rows else float("nan")
        arms[name] = {"P": sizes.tolist(), "params_per_rank": float(per_rank)}
    time_factor = 1.0 / (1.0 - fraction)
    for arm in arms.values():
        arm["validated_P"] = [arm["P"][0] / size_factor, arm["P"][-1] * size_factor]
    return {"arms": arms, "reference_learning_rate": table.attrs["reference_learning_rate"],
            "time_factor": time_factor, "size_factor": size_factor,
            "max_T": float(table["T"].max()), "validated_T": float(table["T"].max()) * time_factor,
            "replay_fractions": sorted(float(f) for f in table.replay_fraction.unique())}


def fit_sweep(directory: str | Path, n_bootstrap: int = 1000, seed: int = 0, fraction: float = 0.5) -> dict:
    """Fit every target and the analyses, write `DIR/fits.json` (whole or not at all: an
    earlier one stays intact when fitting fails), and return what it holds."""
    if not 0 < fraction < 1:
        raise UserInputError(f"--holdout must be between 0 and 1 (the share of each run's steps forecast), got {fraction}")
    table = read_table(directory)
    fits = {target: fit_target(table, target, n_bootstrap, seed, fraction) for target in TARGETS}
    fits["linear"] = linear_relation(table)
    fits["matched_loss"] = matched_loss_analysis(table)
    fits["domains"] = domain_analysis(table)
    fits["n_records"], fits["n_points"] = int(len(table)), int(table.point_id.nunique())
    fits["holdout"] = fraction
    fits["skipped_records"] = table.attrs["skipped"]
    fits["range"] = sweep_ranges(table, fraction)
    fits["base"] = base_values(table)
    fits["vocab_size"] = int(table.vocab_size.max()) if "vocab_size" in table and table.vocab_size.notna().any() else None
    fits["claims"] = claims(fits)
    path = Path(directory) / "fits.json"
    write_atomically(path, json.dumps(fits, indent=2))
    return fits


def load_fits(directory: str | Path) -> dict:
    """`DIR/fits.json` as `fit` wrote it."""
    path = Path(directory) / "fits.json"
    if not path.is_file():
        raise UserInputError(f"{path} not found: run `forgetscope fit {directory}` first")
    try:
        fits = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserInputError(f"{path} is not valid JSON: run `forgetscope fit {directory}` again") from None
    missing = [t for t in TARGETS if not isinstance(fits, dict) or t not in fits]
    if missing:
        raise UserInputError(f"{path} lacks the fits of {', '.join(missing)}: run `forgetscope fit {directory}` again")
    return fits
