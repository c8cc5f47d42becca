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
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from forgetscope.errors import UserInputError
from forgetscope.files import check_schema, read_json, write_atomically
from forgetscope.laws.analyses import claims, domain_analysis, linear_relation, matched_loss_analysis
from forgetscope.laws.fit import (
    Anchored,
    Ensemble,
    Fit,
    Law,
    Saturation,
    anchor,
    anchor_resamples,
    band_side,
    bootstrap,
    bootstrap_law,
    check_enough_data,
    extrapolation_errors,
    fit_law,
    grid_starts,
    half_width,
    last_steps,
    log_metrics,
    model_error,
    reach,
    size_split,
    time_split,
    widen,
)
from forgetscope.laws.forms import FORMS, candidate_forms
from forgetscope.laws.schema import FitsFile
from forgetscope.records import FIT_KEYS, digest, is_mitigated
from forgetscope.sweepdir import sweep_records

TARGETS = ("forgetting_ce", "kl", "ft_loss")


def read_table(directory: str | Path, records: tuple[list, int] | None = None) -> pd.DataFrame:
    """One row per (point, step) in `DIR/records.jsonl` (a torn last line is skipped), but for
    runs with a penalty (a training mitigation other than replay): the laws describe
    fine-tuning with replay as their only knob; the penalised runs are compared on their
    trade-off curves (`mitigate.tradeoff`). `records`: what `sweepdir.sweep_records` read of
    the directory already, if it did."""
    path = Path(directory) / "records.jsonl"
    if not path.is_file():
        raise UserInputError(f"no records to fit: {path} not found (run `forgetscope sweep` first)")
    records, unfinished = sweep_records(directory) if records is None else records
    if not records:
        raise UserInputError(f"cannot fit: {path} holds no records" + (f" of finished points ({unfinished} of unfinished ones)" if unfinished else ""))
    for number, record in enumerate(records, 1):
        missing = set(FIT_KEYS) - set(record)
        if missing:
            raise UserInputError(f"{path}: record {number} (point {record.get('point_id', '?')}) lacks {', '.join(sorted(missing))}")
    twice = next((key for key, n in Counter((r["point_id"], r["step"]) for r in records).items() if n > 1), None)
    if twice is not None:
        raise UserInputError(f"{path} holds two records of point {twice[0]} at step {twice[1]}: "
                             "records of two runs with one id, or a file appended twice")
    fitted = digest(records)
    # Replay is a knob of the laws (`+replay` candidates); other training mitigations are not.
    records = [r for r in records if not is_mitigated({**r, "replay_fraction": 0})]
    if not records:
        raise UserInputError(f"cannot fit: every run in {path} has a KL or L2 penalty, and the laws describe runs without one")
    finite = [r for r in records if all(_is_finite_number(r[k]) for k in FIT_KEYS if k != "point_id")]
    if not finite:
        raise UserInputError(f"cannot fit: no record in {path} has finite values of {', '.join(FIT_KEYS[1:])}")
    table = pd.DataFrame(finite).rename(columns={"trainable_params": "P", "step": "N"})
    table.attrs["skipped"] = {"unfinished_points": unfinished, "non_finite": len(records) - len(finite)}
    table.attrs["records_sha256"] = fitted
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


def _candidates(target: str, table: pd.DataFrame, growing: list[str] | None = None, transient: float = 0.0,
                ) -> dict[str, tuple[str, float | None, pd.DataFrame, str, bool, bool]]:
    """`{label: (form name, fixed shift or None, rows, column fitted, with arm factors, with
    the replay knob)}` to try for one target; `+arms` labels have a factor per arm, tried when
    the sweep has several; `+replay` labels the replay knob, tried when runs differ in it.
    `growing`: the increasing forms to try (default: every registered one). `transient`: KL is
    fitted to each run's measurements from this share of its steps on (`TRANSIENT`)."""
    trained = table[table.N > 0]
    growing = candidate_forms(increasing=True) if growing is None else growing
    if target == "kl":
        settled = trained[(trained.kl > 0) & (trained.N >= transient * trained.groupby("point_id").N.transform("max"))]
        base = {name: (name, 0.0, settled, "kl") for name in growing}
    elif target == "ft_loss":
        base = {name: (name, None, trained, "ft_loss") for name in candidate_forms(increasing=False)}
        gaining = trained[trained.ft_gain > 0]
        base |= {f"{name}/gain": (name, 0.0, gaining, "ft_gain") for name in growing}
    else:
        base = {}
        for name in growing:
            base[f"{name}/fixed"] = (name, base_values(table)["forgetting_ce"], trained, "forgetting_ce")
        # The shift fitted instead of known (step 0 rows pin it), for the multiplicative law:
        # `fit` shows what knowing it is worth. Forecasts of L_f are H_base + the KL law's.
        base["mult/free"] = ("mult", None, table, "forgetting_ce")
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


EMPTY = {"median_ape": float("nan"), "max_ape": float("nan"), "mape": float("nan"), "log_rmse": float("nan"), "n": 0}


def _score(form, shift, rows: pd.DataFrame, target: str, train: np.ndarray, held: np.ndarray,
           with_arms: bool, with_replay: bool = False, start: Fit | None = None) -> tuple[dict, Fit | None, np.ndarray]:
    """Fit on `train`, forecast every held run's last held step; NaNs where the split leaves
    too little. Returns the errors, the partial fit and the scored rows (a mask)."""
    P, T, y, arm, arms, replay = _columns(rows, target, with_arms, with_replay)
    groups = rows.point_id.to_numpy()
    held = last_steps(T, groups, held & (T > 0))
    fitted = train & (T > 0)
    enough = (held.any() and len(np.unique(P[fitted])) >= 2 and len(np.unique(T[fitted])) >= 2
              and fitted.sum() >= _n_fitted(form, shift, arms, replay) + 2
              and (arm is None or set(arm[held]) <= set(arm[fitted])))  # an arm's factor needs its own runs
    if not enough:
        return EMPTY, None, held & False
    starts = None if start is None else [start.theta, *grid_starts(form, shift, y[train], arm, replay)]  # the full fit's optimum, and the form's grid
    partial = fit_law(form, P[train], T[train], y[train], shift, starts=starts, arm=_at(arm, train), arms=arms,
                      replay=_at(replay, train), n_optimized=2 if start is not None else 4)
    return _errors(partial, rows, target, train, held, arm, replay), partial, held


def _errors(law: Law, rows: pd.DataFrame, target: str, train: np.ndarray, held: np.ndarray, arm, replay) -> dict:
    """A partial fit's errors on the `held` rows, and how far they reach beyond `train`."""
    P, T, y = rows.P.to_numpy(float), rows["T"].to_numpy(float), rows[target].to_numpy(float)
    pred = law.predict(P[held], T[held], arm=_at(arm, held), replay=_at(replay, held))
    errors = extrapolation_errors(*_growth(rows, target, held, y[held], pred))
    modules = rows.arm_name.to_numpy()
    in_P, in_N = reach(P, T, modules, train & (T > 0), held)
    # in P as far as every held arm reached: one arm's wider gap in rank validates no other arm's
    arms = modules[held]
    return errors | {"reach_P": float(min(in_P[arms == a].max() for a in np.unique(arms))), "reach_N": float(in_N.max())}


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


SPLITS = ("in_time", "in_size", "in_size_far", "joint", "selection", "selection_size")
"""The validation splits. Reported, each scored at the last held step of every held run:
`in_time` (fit each run's first steps, forecast its end), `in_size` (fit all but the
largest `P` of each module set), `in_size_far` (all but the two largest, 4x beyond on the
benchmark's pilots), `joint` (the smaller runs' first steps forecast the largest runs' end:
beyond in `P` and `N` at once). The form is chosen on the two nested inside them:
`selection` (the in-time split again, inside the in-time training part) and
`selection_size` (the in-size split again, among the runs the in-size test fits)."""
REPORTED = ("in_time", "in_size", "in_size_far", "joint")
BENCHMARK_SLOPE = {"average": 0.10, "select": 0.47}
"""The model-error slope of an interval (95% log half-width per doubling of reach), per
`kl_law`, that the forecast benchmark's targets needed (`bench/forecast_transfer.py` prints
it): a pilot's own tests reach one or two doublings on a few runs, so their slope alone is
a noisy guide further out (`interval_slope`)."""
BENCHMARK_TARGETS = 282
"""How many forecasts `BENCHMARK_SLOPE` was measured on."""
BENCHMARK_SATURATION = {"a": -0.379, "b": -0.343, "weight": 0.3}
"""How KL's growth slowed past the forecast benchmark's pilots (`laws.fit.Saturation`):
`d log KL / d log N = a + b log(KL / H_base)`, fitted to the slope of each target run over
the doubling from the pilot's last step and from twice it (`bench/forecast_transfer.py`
prints it; 35 scenarios, 209 slopes); `weight`, the law's share past the sweep's steps,
chosen on the first 32 scenarios (leave one out: 0.5 gave 19.1% median error, 0.3 16.7%,
0 18.2%, the law alone 23.7%). Fitted on those 32 (`a` -0.395, `b` -0.350) it lowered the
median error on the 24 targets of the three scenarios run after it from 26.6% to 14.4%
(`docs/results/forecasts.md`)."""


def interval_slope(own: float, n_own: int, transfer: float, n_transfer: int = BENCHMARK_TARGETS) -> float:
    """The intervals' model-error slope: the sweep's own (`own`, calibrated on `n_own`
    forecasts of its tests, summed over the four, so one run's end may count in more than
    one) and the benchmark's (`transfer`, needed by `n_transfer` forecasts of pilots'
    targets), pooled as variances are, weighted by those counts. Taking the larger of the two
    let one pilot's few, noisy tests widen its intervals far beyond what its targets needed
    (on the benchmark's first 136 targets, pooling took coverage from 98% to 96% and the
    median width from 5.4 to 4.5). `transfer` 0: the sweep's own alone."""
    weight = n_transfer if transfer > 0 else 0
    return float(np.sqrt((n_own * own**2 + weight * transfer**2) / max(n_own + weight, 1)))


def _split_masks(rows: pd.DataFrame, T: np.ndarray, fraction: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{split: (train, held)}` over `rows`."""
    groups, modules, P = rows.point_id.to_numpy(), rows.arm_name.to_numpy(), rows.P.to_numpy(float)
    in_time = time_split(T, groups, fraction)
    in_size, far = size_split(P, modules), size_split(P, modules, top=2)
    inner_time = np.zeros(len(T), dtype=bool)
    inner_time[~in_time] = time_split(T[~in_time], groups[~in_time], fraction)
    inner_size = np.zeros(len(T), dtype=bool)
    inner_size[~in_size] = size_split(P[~in_size], modules[~in_size])
    return {"in_time": (~in_time, in_time), "in_size": (~in_size, in_size), "in_size_far": (~far, far),
            "joint": (~in_size & ~in_time, in_size), "selection": (~in_time & ~inner_time, inner_time),
            "selection_size": (~in_size & ~inner_size, inner_size)}


def _fit_candidate(name: str, shift: float | None, rows: pd.DataFrame, target: str, fraction: float, with_arms: bool,
                   with_replay: bool = False) -> dict:
    """One candidate fitted on everything, and on each validation split (`SPLITS`), each
    split's fit started from the full fit's optimum as well as the form's grid."""
    form = FORMS.get(name)
    P, N, y, arm, arms, replay = _columns(rows, target, with_arms, with_replay)
    check_enough_data(P[N > 0], N[N > 0], _n_fitted(form, shift, arms, replay), target)
    full = fit_law(form, P, N, y, shift, arm=arm, arms=arms, replay=replay)
    validation, fits, masks = {}, {}, {}
    splits = _split_masks(rows, N, fraction)
    if target != "kl":  # the validated range and the benchmark are about KL; the others get the classic tests
        splits = {k: v for k, v in splits.items() if k not in ("in_size_far", "joint")}
    for split, (train, held) in splits.items():
        validation[split], fits[split], scored = _score(form, shift, rows, target, train, held, with_arms, with_replay, full)
        masks[split] = (train, scored)
    metrics = log_metrics(y, full.predict(P, N, arm=arm, replay=replay))
    return {"fit": full, "rows": rows, "arm": arm, "replay": replay, "r2": metrics["r2"], "log_rmse": metrics["log_rmse"], "validation": validation,
            "split_fits": fits, "masks": masks,
            "heldout_fit": fits["in_time"], "heldout_mape": validation["in_time"]["mape"],
            "heldout_log_rmse": validation["in_time"]["log_rmse"]}


TRANSIENT = 1 / 8
"""With `kl_law="average"`, KL's laws are fitted to each run's measurements from this share
of its steps on, its last three doublings: the first steps are a transient (the adapter's
`B` starts at zero, so KL first grows about as `N^2`, and Adam's first updates are not yet
steady) whose slope in `N` differs from the rest of the run's; on the forecast benchmark,
laws fitted through it forecast later steps worse. A quarter erred less on the 210 targets
it was tried on (19.5% against 21.7%) and more on the 24 run after it (28.2% against
25.9%), so not kept (`docs/results/forecasts.md`). Where that leaves too few measurements
to validate in time, every step is fitted (`kl.transient` says which)."""
KL_LAWS = ("average", "select")
"""How KL is forecast (`fit --kl-law`). `average` (the default): the geometric mean of the
forms that bend (`Form.bends`), each pooled or with a factor per arm as its selection error
says, fitted past each run's first steps (`TRANSIENT`) and anchored per arm at its runs' last
measurements (`laws.fit.Anchored`). On the forecast benchmark (`bench/forecast_transfer.py`),
selection among forms from a pilot's short runs was as noisy as their errors, and the average
erred less than the selected form; on the scenarios run after it was fixed its worst error
and its intervals were far smaller. The anchor lowered the median error on the scenarios it
was chosen on; on the eighteen run after it, with fits that reach their minimum, it is about
even (23% with it and 22% without, better on 73 of 144 targets), with a smaller worst miss
and slightly narrower intervals (`docs/results/forecasts.md`).
`select`: the one form with the lowest selection error,
fitted to every step, as before issue 23's benchmark; it is right where the data follow one of
the forms from the first step (the tests' sweeps drawn from known laws) and costs accuracy
where they follow none."""


def _ensemble(tried: dict, labels: list[str], target: str, saturation: dict | None = None) -> dict:
    """The candidates `labels` (fitted to the same rows) as one: their forecasts averaged in
    log space on everything and on every split, scored as one candidate is, and continued
    past the end of each arm's longest run by the relation `saturation` (`a`, `b`, `weight`;
    KL's level read against the base entropy, `L_f - KL`)."""
    members = [tried[label] for label in labels]
    first = members[0]
    rows, replay = first["rows"], first["replay"]
    P, N, y = rows.P.to_numpy(float), rows["T"].to_numpy(float), rows[target].to_numpy(float)
    groups, names = rows.point_id.to_numpy(), rows.arm_name.to_numpy()
    arms = tuple(sorted(set(names)))  # the anchor's arms: every arm, pooled members or not
    arm = rows.arm_name.map(arms.index).to_numpy()
    entropy = float((rows.forgetting_ce - rows.kl).median())  # H_base, by the identity L_f = H_base + KL
    slowing = Saturation(**saturation, base_entropy=entropy) if saturation and np.isfinite(entropy) and entropy > 0 else None

    def anchored(parts: list[Fit], train: np.ndarray) -> Anchored:
        return anchor(Ensemble(tuple(parts)), P[train], N[train], y[train], groups[train], names[train], arms, _at(replay, train),
                      slowing)

    law = anchored([m["fit"] for m in members], np.ones(len(rows), dtype=bool))
    validation, fits, masks = {}, {}, {}
    for split in first["masks"]:
        parts = [m["split_fits"][split] for m in members]
        train, scored = first["masks"][split]
        if any(part is None for part in parts) or not scored.any():
            validation[split], fits[split], masks[split] = EMPTY, None, (train, scored & False)
            continue
        fits[split], masks[split] = anchored(parts, train & (N > 0)), (train, scored)
        validation[split] = _errors(fits[split], rows, target, train, scored, arm, replay)
    metrics = log_metrics(y, law.predict(P, N, arm=arm, replay=replay))
    return {"fit": law, "rows": rows, "arm": arm, "replay": replay, "r2": metrics["r2"], "log_rmse": metrics["log_rmse"],
            "validation": validation, "split_fits": fits, "masks": masks, "heldout_fit": fits["in_time"],
            "heldout_mape": validation["in_time"]["mape"], "heldout_log_rmse": validation["in_time"]["log_rmse"],
            "column": first["column"], "labels": labels}


def _mean_label(labels: list[str]) -> str:
    return f"mean({', '.join(labels)})"


def seed_noise(rows: pd.DataFrame, column: str) -> dict:
    """How much runs that differ only in their seed differ: the standard deviation of one
    run's log value about its configuration's mean at the same step, pooled over the
    configurations run with several seeds (late steps: the second half of each run)."""
    keys = [k for k in ("arm_name", "P", "learning_rate", "replay_fraction") if k in rows]
    late = rows[(rows.N > 0) & (rows.N > 0.5 * rows.groupby("point_id").N.transform("max"))]
    late = late[late[column] > 0]
    squares, dof = 0.0, 0
    for _, group in late.groupby([*keys, "N"]):
        if group.point_id.nunique() >= 2:
            logs = np.log(group[column].to_numpy(float))
            squares += float(np.sum((logs - logs.mean()) ** 2))
            dof += len(logs) - 1
    return {"log_sd": float(np.sqrt(squares / dof)) if dof else None, "dof": dof}


def _bootstrap_band(fit: Law, rows: pd.DataFrame, target: str, train: np.ndarray, held: np.ndarray, arm: np.ndarray,
                    replay: np.ndarray | None, n_bootstrap: int, seed: int, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(low, high)`: the 95% bootstrap band over runs of `fit` (fitted on `train`) on the
    `held` rows, from at most 100 resamples; `value` itself where `n_bootstrap` is 0."""
    if n_bootstrap == 0:
        return value, value
    P, N, y, groups = rows.P.to_numpy(float), rows["T"].to_numpy(float), rows[target].to_numpy(float), rows.point_id.to_numpy()
    samples = bootstrap_law(fit, groups[train], P[train], N[train], y[train], min(n_bootstrap, 100), seed,
                            arm=arm[train], replay=_at(replay, train))
    if isinstance(fit, Anchored):
        fit = anchor_resamples(fit, samples, P[train], N[train], y[train], groups[train], rows.arm_name.to_numpy()[train],
                               seed, _at(replay, train))
    low, high = np.percentile(fit.predict(P[held], N[held], samples, arm=arm[held], replay=_at(replay, held)), [2.5, 97.5], axis=0)
    return low, high


def _interval(best: dict, target: str, n_bootstrap: int, seed: int, transfer_slope: float = BENCHMARK_SLOPE["average"]) -> dict:
    """The model-error term of the prediction intervals, as a function of how far a forecast
    reaches, and the intervals' coverage on what each reported split held out.

    A forecast's log error grows with how far it extrapolates (`fit.reach`, in doublings of
    `P` and of time). Its 95% half-width in log space is `sqrt(floor^2 + (slope * reach)^2)`:
    `floor` is 1.96 times the seed-to-seed noise of one run (`seed_noise`), which a single
    run shows whatever the law; `slope` is calibrated on the reported splits' forecasts at the
    last steps (the smallest slope under which all but 5% of them, rounded down, lie inside
    the interval as issued: the bootstrap band and the half-width, added in quadrature by
    `widen`), pooled with `transfer_slope`, what the forecast benchmark needed
    (`interval_slope`). Coverage of each split is checked with the slope calibrated on the
    other splits alone, so that no forecast judges an interval it helped to size; the
    interval is the bootstrap band over runs of the fit that never saw the held-out runs,
    widened by the half-width.
    """
    rows, arm, replay = best["rows"], best["arm"], best["replay"]
    P, N, y, groups = rows.P.to_numpy(float), rows["T"].to_numpy(float), rows[target].to_numpy(float), rows.point_id.to_numpy()
    modules = rows.arm_name.to_numpy()
    arm = np.zeros(len(rows), dtype=int) if arm is None else arm
    noise = seed_noise(rows, target)
    # Without runs that differ only in their seed, the scatter of the measurements about the
    # full fit stands in for it: a forecast of one measurement shows that much at least.
    floor = 1.96 * (noise["log_sd"] if noise["log_sd"] is not None else best["log_rmse"])
    falling = target == "ft_loss"  # issued as `forecast._band` issues it
    reported = [s for s in REPORTED if best["split_fits"].get(s) is not None and best["masks"][s][1].any()]
    ratios, value, doublings, bands = {}, {}, {}, {}
    for split in reported:
        fit, (train, held) = best["split_fits"][split], best["masks"][split]
        value[split] = fit.predict(P[held], N[held], arm=arm[held], replay=_at(replay, held))
        bands[split] = _bootstrap_band(fit, rows, target, train, held, arm, replay, n_bootstrap, seed, value[split])
        error = np.log(np.maximum(value[split], 1e-300)) - np.log(y[held])
        side = band_side(error, value[split], *bands[split], falling)
        doublings[split] = sum(reach(P, N, modules, train & (N > 0), held))
        ratios[split] = model_error(error, side, floor, falling) / np.maximum(doublings[split], 0.5)

    def calibrated(splits: list[str]) -> float:
        pooled = np.sort(np.concatenate([ratios[s] for s in splits])) if splits else np.zeros(0)
        return float(pooled[max(len(pooled) - 1 - int(0.05 * len(pooled)), 0)]) if len(pooled) else 0.0

    own = calibrated(reported)
    n_own = int(sum(len(ratios[s]) for s in reported))
    slope = interval_slope(own, n_own, transfer_slope)
    out: dict = {"floor": floor, "slope": slope, "slope_calibrated": own, "seed_noise": noise, "coverage": {},
                 "n_calibration": n_own,
                 "residual_q": float(np.hypot(floor, slope))}  # at one doubling (read by fits.json of before issue 23)
    for split in reported:
        if n_bootstrap == 0:
            break
        held, band = best["masks"][split][1], bands[split]
        others = [s for s in reported if s != split]
        half = half_width(floor, interval_slope(calibrated(others), int(sum(len(ratios[s]) for s in others)), transfer_slope), doublings[split])
        low, high = widen(value[split], band[0], band[1], half, falling)
        inside = (band[0] <= y[held]) & (y[held] <= band[1])
        widened = (low <= y[held]) & (y[held] <= high)
        out["coverage"][split] = {"bootstrap": float(inside.mean()), "with_model_error": float(widened.mean()), "n": int(held.sum()),
                                  "median_width": float(np.median(high / low))}
        # Recorded as what grows from the base (KL, L_f - H_base, the fine-tuning gain), as validation scores it.
        actual, grown = _growth(rows, target, held, y[held], value[split])
        ends = np.sort([_growth(rows, target, held, y[held], edge)[1] for edge in (low, high)], axis=0)
        out.setdefault("forecasts", {})[split] = {
            "point_id": groups[held].tolist(), "P": P[held].tolist(), "N": rows.N.to_numpy(float)[held].tolist(),
            "actual": actual.tolist(), "value": grown.tolist(), "low": ends[0].tolist(), "high": ends[1].tolist()}
    return out


def fit_target(table: pd.DataFrame, target: str, n_bootstrap: int = 1000, seed: int = 0, fraction: float = 0.5,
               growing: list[str] | None = None, transfer_slope: float | None = None, kl_law: str = "average",
               saturation: dict | None = None) -> dict:
    """Every candidate form of one target, the one with the lowest median error on the
    selection split chosen (for KL with `kl_law="average"`, the mean of the forms that bend),
    with bootstrap intervals for its parameters. `transfer_slope`: the benchmark's model-error
    slope, pooled with the sweep's own (default `BENCHMARK_SLOPE[kl_law]`; `interval_slope`).
    `saturation`: how the averaged law of KL continues past the sweep's steps (default
    `BENCHMARK_SATURATION`; `{}`: the law alone)."""
    transfer_slope = BENCHMARK_SLOPE[kl_law] if transfer_slope is None else transfer_slope
    saturation = BENCHMARK_SATURATION if saturation is None else saturation
    # Past the transient where that leaves enough to validate in time, else every step.
    for transient in ([TRANSIENT, 0.0] if kl_law == "average" and target == "kl" else [0.0]):
        tried, refused = {}, []
        for label, (name, shift, rows, column, with_arms, with_replay) in _candidates(target, table, growing, transient).items():
            try:
                tried[label] = _fit_candidate(name, shift, rows, column, fraction, with_arms, with_replay) | {"column": column}
            except UserInputError as exc:  # too little data for this candidate: the others may still fit
                refused.append(exc)
        if tried and not all(np.isnan(t["validation"]["in_time"]["median_ape"]) for t in tried.values()):
            break
    if not tried:
        raise refused[0]

    if all(np.isnan(t["validation"]["in_time"]["median_ape"]) for t in tried.values()):
        raise UserInputError(f"cannot validate the laws of {target}: fitting each run up to {1 - fraction:.0%} of its steps leaves "
                             "too few measurements for any form's parameters (measure more steps, or lower --holdout)")

    # Chosen on the nested splits, in time (where any candidate has one: a run measured at too
    # few steps after the transient has none) and (where every candidate has one) in size:
    # a law that extrapolates well in N alone may still overshoot in P.
    with_time = any(np.isfinite(t["validation"]["selection"]["median_ape"]) for t in tried.values())
    with_size = all(np.isfinite(t["validation"]["selection_size"]["median_ape"]) for t in tried.values())

    def selection_error(label: str) -> tuple[float, float, float]:
        v = tried[label]["validation"]
        nested = [np.nan_to_num(v[split]["median_ape"], nan=np.inf) for split, used in (("selection", with_time), ("selection_size", with_size)) if used]
        return float(np.mean(nested)) if nested else np.inf, np.nan_to_num(v["in_time"]["median_ape"], nan=np.inf), tried[label]["log_rmse"]

    label = min(tried, key=selection_error)
    best = tried[label]
    forms = {k: {"validation": v["validation"], "heldout_mape": v["heldout_mape"], "heldout_log_rmse": v["heldout_log_rmse"],
                 "r2": v["r2"], "params": v["fit"].params} for k, v in tried.items()}
    members: list[dict] = []
    if target == "kl" and kl_law == "average":
        # each bending form once, pooled or with arm factors as its selection error says
        bending = sorted({v["fit"].form.name for v in tried.values() if v["fit"].form.bends})
        chosen = [min((k for k in tried if tried[k]["fit"].form.name == name), key=selection_error) for name in bending]
        if len(chosen) >= 2:
            best = _ensemble(tried, chosen, target, saturation)
            label = min(chosen, key=selection_error)  # its parameters are the ones shown
            forms[_mean_label(chosen)] = {"validation": best["validation"], "heldout_mape": best["heldout_mape"],
                                          "heldout_log_rmse": best["heldout_log_rmse"], "r2": best["r2"], "params": {}}
    fit: Fit = tried[label]["fit"]
    heldout_fit: Fit | None = tried[label]["heldout_fit"]
    rows = best["rows"]
    column = best["column"]
    groups, P, T, y = rows.point_id.to_numpy(), rows.P.to_numpy(float), rows["T"].to_numpy(float), rows[column].to_numpy(float)
    samples = bootstrap(fit, groups, P, T, y, n_bootstrap, seed, arm=tried[label]["arm"], replay=best["replay"]) if n_bootstrap > 0 else np.empty((0, len(fit.theta)))
    drawn_per_member = []
    for member in best.get("labels", []):
        law = tried[member]["fit"]
        drawn = samples if member == label else (
            bootstrap(law, groups, P, T, y, n_bootstrap, seed, arm=tried[member]["arm"], replay=best["replay"])
            if n_bootstrap > 0 else np.empty((0, len(law.theta))))
        drawn_per_member.append(drawn)
        members.append({"label": member, "form": law.form.name, "shift_value": law.shift, "arms": list(law.arms), "replay": law.replay,
                        "theta": law.theta.tolist(), "bootstrap": drawn.tolist()})
    reported = np.array([list(fit.form.report(t, fit.shift, fit.arms, fit.replay).values()) for t in samples]) if len(samples) else None
    ci = {name: [float(v) for v in np.percentile(reported[:, i], [2.5, 97.5])] for i, name in enumerate(fit.params)} if reported is not None else {}
    anchored = best["fit"] if isinstance(best["fit"], Anchored) else None
    if anchored is not None and n_bootstrap > 0:
        anchored = anchor_resamples(anchored, drawn_per_member, P, T, y, groups, rows.arm_name.to_numpy(), seed, best["replay"])
    return {
        "label": _mean_label(best["labels"]) if members else label,
        "members": members,
        **({"anchor": {"arms": list(anchored.arms), "offsets": anchored.offsets.tolist(), "horizons": anchored.horizons.tolist(),
                       "starts": anchored.starts.tolist(),
                       **({"sample_offsets": anchored.sample_offsets.tolist()} if anchored.sample_offsets is not None else {}),
                       **({"saturation": asdict(anchored.saturation)} if anchored.saturation is not None else {})}}
           if anchored is not None else {}),
        "transient": transient,
        "form": fit.form.name,
        "shift": "zero" if target == "kl" else ("fixed" if fit.shift is not None else "free"),
        "shift_value": fit.shift,
        "arms": list(fit.arms),
        "replay": fit.replay,
        "params": fit.params,
        "ci": ci,
        "selected_by": ("the mean in log space of the forms that bend, each pooled or not by " if members else "")
                       + "median absolute percentage error at the last steps on the nested selection splits ("
                       + " and ".join(n for n, used in (("in time", with_time), ("in size", with_size)) if used) + ")"
                       + (", moved per arm onto its runs' last measurements" if anchored is not None else "")
                       + (", continued past them as KL's growth slows with its level" if anchored is not None and anchored.saturation else ""),
        "validation": best["validation"],
        "column": column,
        "start": base_values(table)[target],
        "interval": _interval(best, column, n_bootstrap, seed, transfer_slope),
        "heldout_mape": best["heldout_mape"],
        "heldout_log_rmse": best["heldout_log_rmse"],
        "r2": best["r2"],
        "log_rmse": best["log_rmse"],
        "n": int(len(rows)),
        "forms": forms,
        "theta": fit.theta.tolist(),
        "heldout_theta": None if heldout_fit is None else heldout_fit.theta.tolist(),
        "bootstrap": samples.tolist(),
    }


HELD = 0.25
"""A reported split's forecasts held when their median error at the last steps is at most this."""
BENCHMARK_HELD = {"average": {"P": 2.0, "N": 1.0}, "select": {"P": 1.0, "N": 0.0}}
"""How far, in doublings, forecasts held (median error at most `HELD`) on the forecast
benchmark (`bench/forecast_transfer.py`: pilot sweeps forecasting runs made after them),
beyond the pilots' largest `P` at their own steps, and beyond their steps, per `kl_law`. A
sweep's own tests validate no further than this. On the benchmark's 282 targets in 35
scenarios, with `average` (anchored, slowing past the pilots' steps): 2x the pilots' largest
`P` at their steps 9.8%, 8x 22.4% (25.5% on the first 258: kept at 4x, which no target
tried); 2x their steps 15.7% (2x both 16.7%, 2x steps and 8x `P` 19.6%), 4x 16% to 20%
(kept at 2x: no pilot's own test in time reaches further than one doubling); on its first
136, with `select`: 2x in `P` 15%, 8x 33%, 2x their steps 36%."""


def sweep_ranges(table: pd.DataFrame, fraction: float, kl: dict | None = None, kl_law: str = "average") -> dict:
    """What a forecast may be asked about: each arm's `P` per rank and measured `P`, and how
    far beyond the data the validation of KL (`kl`, its `fit_target` entry) tested and held,
    in doublings of `P` and of time (`tested`): in each direction, the furthest reach up to
    which every test held, and no further than forecasts held on the forecast benchmark
    (`BENCHMARK_HELD`). A query is validated up to as far beyond the whole sweep's data,
    and, beyond in both at once, only where the joint test held too."""
    arms = {}
    for name, rows in table.groupby("arm_name"):
        sizes = np.sort(rows.P.unique().astype(float))
        per_rank = (rows.P / rows["rank"]).median() if "rank" in rows else float("nan")
        arms[name] = {"P": sizes.tolist(), "params_per_rank": float(per_rank)}
    tests = [v for split, v in (kl or {}).get("validation", {}).items() if split in REPORTED and v.get("n")]

    def held_up_to(direction: list[dict], key: str) -> float:
        """The furthest reach such that every test in this direction up to it held."""
        reached = 0.0
        for v in sorted(direction, key=lambda v: v[key]):
            if v["median_ape"] > HELD:
                break
            reached = v[key]
        return reached

    held = BENCHMARK_HELD[kl_law]
    tested = {"P": min(held_up_to([v for v in tests if v["reach_N"] == 0], "reach_P"), held["P"]),
              "N": min(held_up_to([v for v in tests if v["reach_P"] == 0], "reach_N"), held["N"]), "joint": 0.0}
    joint = [v for v in tests if v["reach_P"] > 0 and v["reach_N"] > 0]
    if tested["P"] > 0 and tested["N"] > 0:
        tested["joint"] = held_up_to([{**v, "reach": v["reach_P"] + v["reach_N"]} for v in joint], "reach")
    for arm in arms.values():
        arm["validated_P"] = [arm["P"][0] / 2 ** tested["P"], arm["P"][-1] * 2 ** tested["P"]]
    max_T = float(table["T"].max())
    return {"arms": arms, "reference_learning_rate": table.attrs["reference_learning_rate"], "tested": tested,
            "time_factor": 2 ** tested["N"], "size_factor": 2 ** tested["P"],
            "max_T": max_T, "validated_T": max_T * 2 ** tested["N"],
            "replay_fractions": sorted(float(f) for f in table.replay_fraction.unique())}


def fit_sweep(directory: str | Path, n_bootstrap: int = 1000, seed: int = 0, fraction: float = 0.5,
              transfer_slope: float | None = None, table: pd.DataFrame | None = None, kl_law: str = "average",
              saturation: dict | None = None) -> dict:
    """Fit every target and the analyses, write `DIR/fits.json` (whole or not at all: an
    earlier one stays intact when fitting fails), and return what it holds.
    `transfer_slope`: the benchmark's model-error slope of KL, pooled with the sweep's own in
    KL's intervals (`BENCHMARK_SLOPE[kl_law]`; 0 leaves them to the sweep's own tests). `table`: `read_table(directory)`, if already read.
    `saturation`: how KL's averaged law continues past the sweep's steps (`BENCHMARK_SATURATION`; `{}`: the law alone).
    `kl_law`: `average` or `select` (`KL_LAWS`)."""
    if kl_law not in KL_LAWS:
        raise UserInputError(f"--kl-law must be one of {', '.join(KL_LAWS)}, got {kl_law!r}")
    transfer_slope = BENCHMARK_SLOPE[kl_law] if transfer_slope is None else transfer_slope
    if not 0 < fraction < 1:
        raise UserInputError(f"--holdout must be between 0 and 1 (the share of each run's steps forecast), got {fraction}")
    table = read_table(directory) if table is None else table
    fits = {"kl": fit_target(table, "kl", n_bootstrap, seed, fraction, transfer_slope=transfer_slope, kl_law=kl_law,
                             saturation=saturation)}
    # L_f and the fine-tuning gain try the multiplicative law and KL's chosen form, not every
    # form again: L_f's forecasts are H_base + KL's, and the paper finds L_f linear in the
    # fine-tuning loss, so the same shape is expected. It keeps `fit` quick as forms are added.
    growing = sorted({"mult", fits["kl"]["form"]})
    # The benchmark's slope is of log KL, so their intervals rest on their own tests: pooled into
    # log L_f (about 5 nats, of which KL is a few hundredths) it made them some 30 times too wide.
    fits |= {target: fit_target(table, target, n_bootstrap, seed, fraction, growing, transfer_slope=0.0)
             for target in ("forgetting_ce", "ft_loss")}
    fits = {target: fits[target] for target in TARGETS}
    fits["linear"] = linear_relation(table)
    fits["matched_loss"] = matched_loss_analysis(table)
    fits["domains"] = domain_analysis(table)
    fits["n_records"], fits["n_points"] = int(len(table)), int(table.point_id.nunique())
    fits["holdout"] = fraction
    fits["kl_law"] = kl_law
    fits["skipped_records"] = table.attrs["skipped"]
    fits["range"] = sweep_ranges(table, fraction, fits["kl"], kl_law)
    fits["base"] = base_values(table)
    fits["vocab_size"] = int(table.vocab_size.max()) if "vocab_size" in table and table.vocab_size.notna().any() else None
    fits["claims"] = claims(fits)
    fits["records_sha256"] = table.attrs["records_sha256"]
    path = Path(directory) / "fits.json"
    write_atomically(path, json.dumps(fits, indent=2))
    return fits


def load_fits(directory: str | Path) -> dict:
    """`DIR/fits.json` as `fit` wrote it, checked against its schema (`laws.schema`)."""
    path = Path(directory) / "fits.json"
    if not path.is_file():
        raise UserInputError(f"{path} not found: run `forgetscope fit {directory}` first")
    fits = read_json(path, "fits", None)
    missing = [t for t in TARGETS if not isinstance(fits, dict) or t not in fits]
    if missing:
        raise UserInputError(f"{path} lacks the fits of {', '.join(missing)}: run `forgetscope fit {directory}` again")
    check_schema(fits, FitsFile, f"fits {path}")
    anchored, arms = fits["kl"].get("anchor") or {"arms": []}, (fits.get("range") or {}).get("arms", {})
    if arms and not set(anchored["arms"]) <= set(arms):
        raise UserInputError(f"fits {path}: `kl.anchor.arms` names {', '.join(sorted(set(anchored['arms']) - set(arms)))}, "
                             f"which the sweep's range does not have ({', '.join(arms)})")
    drawn = {len(m.get("bootstrap", [])) for m in fits["kl"].get("members", [])} or {len(fits["kl"].get("bootstrap", []))}
    if anchored.get("sample_offsets") is not None and drawn != {len(anchored["sample_offsets"])}:
        raise UserInputError(f"fits {path}: `kl.anchor.sample_offsets` has {len(anchored['sample_offsets'])} rows; "
                             f"its law has {' or '.join(map(str, sorted(drawn)))} bootstrap samples (one row each)")
    factored = [m.get("arms") for m in fits["kl"].get("members", []) if m.get("arms")]
    if anchored["arms"] and any(a != anchored["arms"] for a in factored):
        raise UserInputError(f"fits {path}: `kl.anchor.arms` ({', '.join(anchored['arms'])}) are not the arms its members have factors for "
                             f"({', '.join(factored[0])})")
    for target in TARGETS:
        for where, entry in [(f"{target}.form", fits[target]), *((f"{target}.members[{i}].form", m) for i, m in enumerate(fits[target].get("members", [])))]:
            if entry["form"] not in FORMS:
                raise UserInputError(f"fits {path}: `{where}`: unknown law form {entry['form']!r} (known: {', '.join(FORMS.names())})")
            form, arms = FORMS.get(entry["form"]), entry.get("arms", [])
            expected = _n_fitted(form, entry.get("shift_value"), arms, True if entry.get("replay") else None)
            # a file without `arms` (older versions) may carry arm factors it does not name: every row is then arm 0
            named = "arms" in entry
            for key, vectors in (("theta", [entry["theta"]]), ("bootstrap", entry.get("bootstrap", []))):
                if not all(len(v) == expected or (not named and len(v) > expected) for v in vectors):
                    raise UserInputError(f"fits {path}: `{where.removesuffix('.form')}.{key}`: the {entry['form']} law with "
                                         f"{max(len(arms) - 1, 0)} arm factor(s) takes {expected} parameters per vector")
    return fits
