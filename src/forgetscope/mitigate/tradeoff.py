"""Trade-off curves: fine-tuning progress (`ft_gain`, the fall of `ft_loss` from the base)
against forgetting (KL to the base), one curve per mitigation, and the questions users ask
of them: KL at a matched gain, and the cheapest option under a KL budget.

A curve is a list of points `{"gain", "kl", ...}` in its own order: training steps for a
run, settings for a post-hoc method. Any point of a curve is reachable (stop training at
that step, or apply that setting), and so is any point between two neighbours.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from forgetscope.extensions import training_mitigations


class MitigationRow(BaseModel):
    """One measured setting of a `mitigate` result, as far as the trade-off reads it."""

    model_config = ConfigDict(extra="allow", strict=True)

    method: str
    setting: float = Field(ge=0, le=1)
    kl: float
    ft_loss: float
    ft_gain: float


class MitigationFile(BaseModel):
    """A `mitigate` result file (`mitigation.json`, `DIR/mitigation/ID.json`)."""

    model_config = ConfigDict(extra="allow", strict=True)

    rows: list[MitigationRow] = Field(min_length=1)
    base_ft_loss: float


def training_label(record: dict) -> str:
    """How a sweep point was mitigated while it trained, in words (each training mitigation's
    own `describe`)."""
    parts = [m.describe(record[m.name]) for m in training_mitigations() if record.get(m.name)]
    return " + ".join(parts) or "no mitigation"


def training_curves(records: list[dict], trainable_params: int | None = None) -> dict[str, list[list[dict]]]:
    """`{mitigation label: [one curve per run]}` from sweep records (each run's steps in
    order), for runs with `trainable_params` (default: all)."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if trainable_params is None or record.get("trainable_params") == trainable_params:
            runs[record["point_id"]].append(record)
    curves: dict[str, list[list[dict]]] = defaultdict(list)
    for run in runs.values():
        run.sort(key=lambda r: r["step"])
        start = run[0]["ft_loss"]
        curves[training_label(run[0])].append(
            [{"gain": start - r["ft_loss"], "kl": r["kl"], "step": r["step"]} for r in run])
    return dict(curves)


def posthoc_curves(result: dict) -> dict[str, list[list[dict]]]:
    """`{method label: [its curve]}` from a `mitigate` result, settings in order. A method
    missing from this installation keeps its name as its label."""
    from forgetscope.mitigate.methods import METHODS

    def full_setting(method: str) -> float | None:
        return METHODS.get(method).full_setting if method in METHODS else None

    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in result["rows"]:
        by_method[row["method"]].append({"gain": row["ft_gain"], "kl": row["kl"], "setting": row["setting"]})
    # Every method's full setting is the fine-tune as it is: end each curve there.
    unedited = [p for m, points in by_method.items() for p in points if p["setting"] == full_setting(m)]
    for method, points in by_method.items():
        if unedited and not any(p["setting"] == full_setting(method) for p in points):
            points.append({**unedited[0], "setting": full_setting(method)})
    return {(METHODS.get(m).label if m in METHODS else m): [sorted(points, key=lambda p: p["setting"])]
            for m, points in by_method.items()}


def _segments(curve: list[dict]):
    for a, b in zip(curve, curve[1:]):
        yield (a["gain"], a["kl"]), (b["gain"], b["kl"])


def kl_at_gain(curves: list[list[dict]], gain: float) -> float | None:
    """The least KL at which any of `curves` reaches fine-tuning gain `gain` (linear between
    neighbouring points), or None if none reaches it."""
    found = [p["kl"] for curve in curves for p in curve if p["gain"] == gain]
    for curve in curves:
        for (g0, k0), (g1, k1) in _segments(curve):
            if min(g0, g1) <= gain <= max(g0, g1) and g0 != g1:
                found.append(k0 + (gain - g0) / (g1 - g0) * (k1 - k0))
    return min(found) if found else None


def best_gain_within(curves: list[list[dict]], budget: float) -> float | None:
    """The most fine-tuning gain any of `curves` keeps with KL at most `budget`, or None."""
    found = [p["gain"] for curve in curves for p in curve if p["kl"] <= budget]
    for curve in curves:
        for (g0, k0), (g1, k1) in _segments(curve):
            if min(k0, k1) <= budget <= max(k0, k1) and k0 != k1:
                found.append(g0 + (budget - k0) / (k1 - k0) * (g1 - g0))
    return max(found) if found else None


def matched_table(curves: dict[str, list[list[dict]]], gain: float) -> list[dict]:
    """KL of each option at one fine-tuning gain, lowest first, with its ratio to no mitigation."""
    reference = kl_at_gain(curves.get("no mitigation", []), gain)
    rows = [{"option": label, "kl": kl_at_gain(c, gain)} for label, c in curves.items()]
    for row in rows:
        row["vs_none"] = row["kl"] / reference if row["kl"] is not None and reference else None
    return sorted(rows, key=lambda r: (r["kl"] is None, r["kl"] or 0.0))


def cheapest_table(curves: dict[str, list[list[dict]]], budgets: list[float]) -> list[dict]:
    """For each KL budget, the option that keeps the most fine-tuning gain within it."""
    out = []
    for budget in budgets:
        options = [(label, best_gain_within(c, budget)) for label, c in curves.items()]
        options = sorted([o for o in options if o[1] is not None], key=lambda o: -o[1])
        out.append({"budget": budget, "option": options[0][0] if options else None,
                    "gain": options[0][1] if options else None, "runner_up": options[1][0] if len(options) > 1 else None,
                    "runner_up_gain": options[1][1] if len(options) > 1 else None})
    return out


def tradeoff_figure(curves: dict[str, list[list[dict]]], title: str):
    """One colour per option, every run or method a line from its first point to its last."""
    from forgetscope import plots

    fig, ax = plots.subplots(figsize=(7.5, 4.8))
    palette = dict(zip(curves, [f"C{i}" for i in range(10)] * 3))
    for label, runs in curves.items():
        for i, curve in enumerate(runs):
            gains, kls = [p["gain"] for p in curve], [p["kl"] for p in curve]
            style = "--" if label.startswith("post-hoc") else "-"
            ax.plot(gains, kls, style, marker="o", ms=3, color=palette[label], lw=2.2 if label == "no mitigation" else 1.4,
                    label=label if i == 0 else None)
    ax.set_xlabel("fine-tuning gain (base ft_loss - ft_loss, nats/token)")
    ax.set_ylabel("KL to the base (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_tradeoff(curves: dict[str, list[list[dict]]], path: Path, title: str) -> Path:
    """`tradeoff_figure`, written to `path`."""
    from forgetscope import plots

    plots.save(tradeoff_figure(curves, title), path)
    return path


def plot_posthoc(result: dict, path: Path) -> Path:
    """The trade-off plot of one `mitigate` result."""
    return plot_tradeoff(posthoc_curves(result), Path(path), "Post-hoc mitigation: what each setting trades")


def levels(values: list[float], n: int = 4) -> list[float]:
    """`n` round budgets spread over the KL range the options cover (log-spaced)."""
    positive = [v for v in values if v > 0]
    if not positive:
        return []
    return [float(f"{v:.2g}") for v in np.geomspace(min(positive), max(positive), n + 2)[1:-1]]
