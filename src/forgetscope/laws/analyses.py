"""The paper's analyses of a sweep's records: the forgetting / fine-tuning-loss line,
forgetting at matched fine-tuning loss (can early stopping or fewer parameters avoid it?),
and which domain forgets most."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from forgetscope.errors import UserInputError


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
