"""The paper's analyses of a sweep's records (Kalajdzievski 2024), each per arm (module set
and scaling) as well as pooled, and what they say about its claims:

- the forgetting / fine-tuning-loss line (the paper: forgetting rises linearly as the
  fine-tuning loss falls);
- forgetting at matched fine-tuning gain over the whole range the runs reach, within an
  arm (can fewer parameters or earlier stopping avoid forgetting at a given result?) and
  across arms (does the module set matter?), with bootstrap intervals over runs;
- which domain forgets most, at every step, not only at the end;
- whether forgetting predicts the drop on downstream benchmarks (`downstream_correlation`).

`claims` turns these numbers into verdicts; the report states only those.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from forgetscope.errors import UserInputError
from forgetscope.laws.schema import Fits, Verdict


def _line(rows: pd.DataFrame, y: str) -> dict:
    line = stats.linregress(rows.ft_loss, rows[y])
    return {"slope": float(line.slope), "intercept": float(line.intercept), "r2": float(line.rvalue**2), "n": int(len(rows))}


def linear_relation(table: pd.DataFrame, y: str = "forgetting_ce") -> dict:
    """`y = intercept + slope * ft_loss` over every trained measurement, pooled and per arm."""
    rows = table[table.N > 0]
    if len(rows) < 3 or rows.ft_loss.nunique() < 2:
        raise UserInputError("cannot fit the forgetting / fine-tuning-loss line: fewer than 3 measurements after step 0")
    per_arm = {arm: _line(g, y) for arm, g in rows.groupby("arm_name") if len(g) >= 3 and g.ft_loss.nunique() >= 2}
    return {"target": y, **_line(rows, y), "per_arm": per_arm if len(per_arm) > 1 else {}}


def _kl_at_gain(run: pd.DataFrame, gain: float) -> tuple[float, float] | None:
    """`(step, kl)` where the run first reaches fine-tuning gain `gain`, interpolated between
    its measurements (log KL linear in gain); None if it never does."""
    g, kl, n = run.ft_gain.to_numpy(float), run.kl.to_numpy(float), run.N.to_numpy(float)
    reached = np.flatnonzero(g >= gain)
    if not len(reached) or reached[0] == 0 or kl[reached[0] - 1] <= 0:
        return None
    j = reached[0]
    w = (gain - g[j - 1]) / (g[j] - g[j - 1])
    return float(n[j - 1] + w * (n[j] - n[j - 1])), float(np.exp((1 - w) * np.log(kl[j - 1]) + w * np.log(kl[j])))


def _ratio_interval(a: np.ndarray, b: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> dict:
    """Geometric-mean ratio `a / b` with a 95% bootstrap interval over runs."""
    la, lb = np.log(a), np.log(b)
    ratio = float(np.exp(la.mean() - lb.mean()))
    boots = np.exp(rng.choice(la, (n_bootstrap, len(la))).mean(1) - rng.choice(lb, (n_bootstrap, len(lb))).mean(1))
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"ratio": ratio, "low": float(low), "high": float(high), "runs": [int(len(a)), int(len(b))]}


def matched_loss_analysis(table: pd.DataFrame, levels: int = 8, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """KL of every run at the steps where it reaches the same fine-tuning gain, on `levels`
    log-spaced gains spanning everything the runs reach.

    At each gain: within each arm, the spread of KL across its runs (coefficient of variation,
    and the ratio of the largest to the smallest, with the smallest and largest `P`); across
    arms, the ratio of their geometric-mean KL with a bootstrap interval over runs. If runs
    of very different `P` in one arm forget the same amount at the same gain, neither fewer
    parameters nor stopping earlier avoids forgetting at a given result within that arm.
    """
    trained = table[table.N > 0]
    runs = {pid: g.sort_values("N") for pid, g in trained.groupby("point_id")}
    out: dict = {"levels": [], "within_run_corr": {}}
    for pid, g in runs.items():
        if len(g) >= 3:
            out["within_run_corr"][pid] = float(stats.spearmanr(g.ft_loss, g.kl).statistic)
    gains = trained.ft_gain[trained.ft_gain > 0]
    if gains.empty:
        out["note"] = "no run lowered its fine-tuning loss"
        return out
    first_measured = min(g.ft_gain[g.ft_gain > 0].min() for g in runs.values() if (g.ft_gain > 0).any())
    rng = np.random.default_rng(seed)
    start_loss = float(trained.ft_loss.iloc[0] + trained.ft_gain.iloc[0])
    for gain in np.geomspace(first_measured, gains.max(), levels + 1)[1:] * (1 - 1e-9):
        at = []
        for pid, g in runs.items():
            hit = _kl_at_gain(g, gain)
            if hit is not None:
                at.append({"point_id": pid, "arm": g.arm_name.iloc[0], "rank": int(g["rank"].iloc[0]) if "rank" in g else None,
                           "P": int(g.P.iloc[0]), "step": hit[0], "kl": hit[1]})
        if not at:
            continue
        level: dict[str, Any] = {"gain": float(gain), "ft_loss": start_loss - float(gain), "runs": at, "within": {}, "across": {}}
        by_arm = {arm: [r for r in at if r["arm"] == arm] for arm in sorted({r["arm"] for r in at})}
        for arm, rs in by_arm.items():
            if len(rs) >= 2:
                kls = np.array([r["kl"] for r in rs])
                smallest, largest = min(rs, key=lambda r: r["P"]), max(rs, key=lambda r: r["P"])
                level["within"][arm] = {"kl_spread": float(kls.std() / kls.mean()), "runs": len(rs),
                                        "largest_over_smallest_P": largest["kl"] / smallest["kl"]}
        for a, b in itertools.combinations(by_arm, 2):
            if by_arm[a] and by_arm[b]:
                level["across"][f"{a} / {b}"] = _ratio_interval(np.array([r["kl"] for r in by_arm[a]]),
                                                                np.array([r["kl"] for r in by_arm[b]]), n_bootstrap, rng)
        kls = np.array([r["kl"] for r in at])
        level["kl_spread"] = float(kls.std() / kls.mean()) if len(kls) > 1 else None
        out["levels"].append(level)
    last = table.loc[table.groupby("point_id").N.idxmax()]
    out["kl_spread_at_last_step"] = float(last.kl.std(ddof=0) / last.kl.mean()) if len(last) > 1 and last.kl.mean() > 0 else None
    return out


def domain_analysis(table: pd.DataFrame) -> dict:
    """Forgetting per domain at each run's last step, which domain is closest to the
    fine-tuning data (its own loss rose least or fell most) and whether it is the one hurt
    most, and the same question at every measured step of the largest run."""
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
    largest = table[(table.P == table.P.max()) & (table.N > 0)].sort_values("N").drop_duplicates("N")
    over_steps = [{"step": int(row.N), **{d: float(row.domains[d]["kl"]) for d in names if d in row.domains},
                   "most_hurt": max((d for d in names if d in row.domains), key=lambda d: row.domains[d]["kl"])}
                  for row in largest.itertuples()]
    holds = [s["most_hurt"] == closest for s in over_steps]
    return {"domains": per, "most_hurt": most_hurt, "closest_to_finetuning": closest,
            "closest_is_most_hurt": most_hurt == closest, "over_steps": over_steps,
            "closest_most_hurt_share_of_steps": float(np.mean(holds)) if holds else None}


def downstream_correlation(table: pd.DataFrame, drops: dict[str, dict[str, dict]]) -> dict:
    """Each point's downstream drop per task next to its forgetting L_f at its last step, and
    per task the Pearson and Spearman correlations across points. `drops`: `{point_id: {task:
    comparison row}}` as `downstream.compare.drops` gives them (`worse` > 0: worse than the base);
    points without records in `table` are left out."""
    last = table.loc[table.groupby("point_id").N.idxmax()].set_index("point_id")
    rows: list[dict[str, Any]] = [{"point_id": point_id, "P": int(last.loc[point_id].P), "forgetting_ce": float(last.loc[point_id].forgetting_ce),
             "drops": by_task} for point_id, by_task in drops.items() if point_id in last.index]
    tasks = {}
    for task in sorted({t for r in rows for t in r["drops"]}):
        pairs = [(r["forgetting_ce"], r["drops"][task]["worse"]) for r in rows if r["drops"].get(task, {}).get("worse") is not None]
        x, y = np.array(pairs).T if pairs else (np.array([]), np.array([]))
        varied = len(pairs) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0  # a correlation needs spread on both sides
        metric = next(r["drops"][task]["metric"] for r in rows if task in r["drops"])
        tasks[task] = {"metric": metric, "n_points": len(pairs),
                       "pearson": float(stats.pearsonr(x, y)[0]) if varied else None,
                       "spearman": float(stats.spearmanr(x, y)[0]) if varied else None}
    return {"points": sorted(rows, key=lambda r: r["forgetting_ce"]), "tasks": tasks}


def claims(fits: Fits) -> list[Verdict]:
    """The paper's claims, each with a verdict (`holds`, `fails`, `mixed`) and the numbers
    behind it, from what `fit_sweep` measured on this sweep."""
    out: list[Verdict] = []
    line = fits["linear"]
    lines = line.get("per_arm") or {"all runs": line}
    negative = {arm: v for arm, v in lines.items() if v["slope"] < 0 and v["r2"] >= 0.8}
    out.append({"claim": "Forgetting rises linearly as the fine-tuning loss falls (one line per module set)",
                "verdict": "holds" if len(negative) == len(lines) else ("mixed" if negative else "fails"),
                "evidence": "; ".join(f"{arm}: slope {v['slope']:+.3f}, R² {v['r2']:.2f}" for arm, v in lines.items())
                + (f"; pooled R² {line['r2']:.2f}" if line.get("per_arm") else "")})
    forms = fits["kl"]["forms"]
    if "mult" in forms:
        chosen = fits["kl"]["label"]
        mult, best = forms["mult"]["validation"], forms[chosen]["validation"]
        worse = [s for s in ("in_time", "in_size") if np.nan_to_num(mult[s]["median_ape"], nan=np.inf)
                 > 1.5 * np.nan_to_num(best[s]["median_ape"], nan=np.inf)]
        out.append({"claim": "One power law A P^α N^β forecasts forgetting (KL)",
                    "verdict": "holds" if chosen == "mult" or not worse else "fails",
                    "evidence": "median forecast error in time / in size: "
                    f"mult {mult['in_time']['median_ape']:.1%} / {mult['in_size']['median_ape']:.1%}, "
                    f"{chosen} (chosen) {best['in_time']['median_ape']:.1%} / {best['in_size']['median_ape']:.1%}"})
    levels = fits["matched_loss"].get("levels", [])
    within = [(lv["gain"], arm, w) for lv in levels for arm, w in lv["within"].items()]
    if within:
        spreads = np.array([w["kl_spread"] for _, _, w in within])
        share = float(np.mean(spreads <= 0.25))
        out.append({"claim": "Within a module set, fewer parameters or earlier stopping do not reduce forgetting at the same fine-tuning gain",
                    "verdict": "holds" if share >= 0.75 else ("mixed" if share >= 0.25 else "fails"),
                    "evidence": f"KL spread across ranks at matched gain within 25% at {share:.0%} of {len(within)} (gain, module set) "
                    f"levels; median spread {np.median(spreads):.2f}"})
    across = [(lv["gain"], pair, r) for lv in levels for pair, r in lv["across"].items()]
    if across:
        apart = [r for _, _, r in across if r["low"] > 1 or r["high"] < 1]
        ratios = [r["ratio"] for _, _, r in across]
        out.append({"claim": "Across module sets, forgetting at the same fine-tuning gain is the same",
                    "verdict": "fails" if len(apart) >= len(across) / 2 else ("mixed" if apart else "holds"),
                    "evidence": f"the 95% interval of the KL ratio excludes 1 at {len(apart)} of {len(across)} gains; "
                    f"ratios {min(ratios):.2f} to {max(ratios):.2f} ({across[0][1]})"})
    domains = fits.get("domains") or {}
    if domains.get("over_steps"):
        steps_share = domains["closest_most_hurt_share_of_steps"] or 0.0  # None only without steps
        out.append({"claim": "The domain closest to the fine-tuning data forgets most",
                    "verdict": "holds" if steps_share == 1 else ("mixed" if steps_share > 0 else "fails"),
                    "evidence": f"{domains['closest_to_finetuning']} (closest) is the most forgotten at {steps_share:.0%} of the largest "
                    f"run's {len(domains['over_steps'])} measured steps; at the last steps of all runs the most forgotten is "
                    f"{domains['most_hurt']}"})
    return out
