"""The report's figures: one function each, from data already read, returning the figure and
its caption (`Drawn`); `law_figures` lists those of the laws in page order.

Every run is labelled by rank and module set: a colour per rank, a line style per module set.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter

from forgetscope.laws.forecast import fit_from, samples_from
from forgetscope.laws.schema import Fits, Target
from forgetscope.plots import colors, subplots

Drawn = tuple[Figure, str]
"""A figure and its caption."""

LABELS = {"kl": "KL(base ‖ fine-tuned), nats/token", "forgetting_ce": "forgetting L_f, nats/token",
          "ft_loss": "held-out fine-tuning loss L_ft", "ft_gain": "fine-tuning gain L_ft(0) - L_ft"}
GROWTH_LABELS = {"kl": "KL", "forgetting_ce": "L_f - H_base", "ft_loss": "fine-tuning gain"}
STYLES = ("-", "--", ":", "-.")
TARGETS: tuple[Target, ...] = ("kl", "forgetting_ce", "ft_loss")


def law_figures(table: pd.DataFrame, fits: Fits, downstream: dict | None) -> Iterator[tuple[str, Figure, str]]:
    """`(file name, figure, caption)` of each figure of the laws, in page order; one with
    nothing to show (no matched levels, no domains, no downstream results) is left out."""
    yield "kl_vs_steps.png", *law_vs_steps(table, fits, "kl")
    yield "forgetting_vs_steps.png", *law_vs_steps(table, fits, "forgetting_ce")
    yield "heldout.png", *heldout(fits)
    yield "residuals.png", *residuals(table, fits)
    yield "forgetting_vs_ft_loss.png", *vs_ft_loss(table, fits)
    optional = {"matched.png": matched(table, fits), "domains.png": domains(fits),
                "downstream.png": downstream_drops(downstream) if downstream is not None else None}
    for name, drawn in optional.items():
        if drawn is not None:
            yield name, *drawn


def law_vs_steps(table: pd.DataFrame, fits: Fits, target: Target) -> Drawn:
    """KL or forgetting against steps: every run's measurements, the fitted law and its 95% band."""
    entry = fits[target]
    fit = fit_from(entry)
    samples = samples_from(entry, limit=200)
    fig, ax = subplots(figsize=(8, 5))
    grid_steps = np.geomspace(1, table.N.max() * 1.5, 60)
    for rows, color, style in _runs(table):
        T_per_step = float(rows["T"].iloc[-1] / rows.N.iloc[-1])
        grid = grid_steps * T_per_step
        arm = fit.arms.index(rows.arm_name.iloc[0]) if rows.arm_name.iloc[0] in fit.arms else 0
        P, replay = float(rows.P.iloc[0]), float(rows.replay_fraction.iloc[0])
        ax.scatter(rows.N, rows[target], color=color, s=14, zorder=3)
        ax.plot(grid_steps, fit.predict(P, grid, arm=arm, replay=replay), color=color, ls=style, lw=1.4, label=_run_label(rows))
        if len(samples):
            band = fit.predict(P, grid, samples, arm=arm, replay=replay)
            ax.fill_between(grid_steps, *np.percentile(band, [2.5, 97.5], axis=0), color=color, alpha=0.12, lw=0)
    if target == "forgetting_ce" and entry.get("shift_value") is not None:
        ax.axhline(entry["shift_value"], color="grey", ls=":", lw=1, label="base entropy H_base")
    ax.set_xscale("log")
    if target == "kl":  # L_f spans a few percent above H_base: a linear axis shows it
        ax.set_yscale("log")
    _log_axes(ax)
    ax.set_xlabel("fine-tuning steps N")
    ax.set_ylabel(LABELS[target])
    ax.set_title("KL(base ‖ fine-tuned) against steps" if target == "kl" else "Forgetting L_f against steps", fontsize=10)
    ax.legend(fontsize=6.5, ncol=2, title="rank, module set (line style), P", title_fontsize=7,
              loc="lower right" if target == "kl" else "upper left")
    if target == "kl":
        return fig, "KL to the base against steps: a colour per rank, a line style per module set, the fitted law and its 95% band"
    return fig, "Forgetting L_f against steps, with the fitted law and its 95% band"


def heldout(fits: Fits) -> Drawn:
    """Each validation test's forecasts, with their 95% intervals, against what happened."""
    fig, axes = subplots(2, 3, figsize=(12, 7.5), squeeze=False)
    for col, target in enumerate(TARGETS):
        forecasts = fits[target].get("interval", {}).get("forecasts", {})
        for row, split in enumerate(("in_time", "in_size")):
            ax = axes[row][col]
            f = forecasts.get(split)
            ax.set_title(f"{GROWTH_LABELS[target]}, forecast {split.replace('_', ' ')}", fontsize=9)
            if not f:
                ax.text(0.5, 0.5, "not tested", ha="center", va="center", transform=ax.transAxes)
                continue
            actual, value, low, high = (np.asarray(f[k], dtype=float) for k in ("actual", "value", "low", "high"))
            inside = (low <= actual) & (actual <= high)
            for mask, color, name in ((inside, "tab:blue", "interval covers"), (~inside, "tab:red", "interval misses")):
                if mask.any():
                    below, above = np.maximum(value - low, 0), np.maximum(high - value, 0)  # the band need not hold the value
                    ax.errorbar(actual[mask], value[mask], yerr=[below[mask], above[mask]], fmt="o", ms=3,
                                color=color, capsize=2, lw=0.8, label=f"{name} ({int(mask.sum())})")
            lims = [min(actual.min(), low.min()) * 0.9, max(actual.max(), high.max()) * 1.1]
            ax.plot(lims, lims, "k:", lw=0.8)
            if min(actual.min(), low.min()) > 0:  # a gain can be negative early on: then a linear axis
                ax.set_xscale("log")
                ax.set_yscale("log")
                _log_axes(ax)
            ax.set_xlabel("measured", fontsize=8)
            ax.set_ylabel("forecast (95% interval)", fontsize=8)
            ax.legend(fontsize=7)
    return fig, "Validation: each test's forecasts (with 95% intervals) against what was measured; the dotted line is perfect"


def residuals(table: pd.DataFrame, fits: Fits) -> Drawn:
    """Each target's log residuals against steps, coloured by `P`."""
    fig, axes = subplots(1, 3, figsize=(12, 3.8))
    for ax, target in zip(axes, TARGETS):
        entry = fits[target]
        column = entry.get("column", target)
        fit = fit_from(entry)
        rows = table[(table.N > 0) & (table[column] > 0)]
        arm = np.array([fit.arms.index(a) if a in fit.arms else 0 for a in rows.arm_name]) if fit.arms else None
        residual = (np.log(fit.predict(rows.P.to_numpy(float), rows["T"].to_numpy(float), arm=arm, replay=rows.replay_fraction.to_numpy(float)))
                    - np.log(rows[column].to_numpy(float)))
        dots = ax.scatter(rows.N, residual, s=12, c=np.log10(rows.P.to_numpy(float)), cmap="viridis")
        fig.colorbar(dots, ax=ax, label="log10 P")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{LABELS[column]}: {entry.get('label', entry['form'])}", fontsize=8)
        ax.set_xlabel("fine-tuning steps N")
        ax.set_ylabel("log(fitted / measured)")
    return fig, "Log residuals of the full fits against steps, coloured by P"


def vs_ft_loss(table: pd.DataFrame, fits: Fits) -> Drawn:
    """Forgetting against the fine-tuning loss, with the pooled line and one per module set."""
    line = fits["linear"]
    trained = table[table.N > 0]
    fig, ax = subplots(figsize=(7, 4.8))
    arms = sorted(trained.arm_name.unique())
    palette = colors(range(len(arms))) if len(arms) > 1 else {0: "tab:blue"}
    lines = line.get("per_arm") or {}
    for i, arm in enumerate(arms):
        rows = trained[trained.arm_name == arm]
        ax.scatter(rows.ft_loss, rows.forgetting_ce, color=palette[i], s=14, alpha=0.8, label=f"{arm} runs")
        if arm in lines:
            xs = np.linspace(rows.ft_loss.min(), rows.ft_loss.max(), 20)
            fit = lines[arm]
            ax.plot(xs, fit["intercept"] + fit["slope"] * xs, color=palette[i], lw=1.2,
                    label=f"{arm}: slope {fit['slope']:+.3f}, R² {fit['r2']:.2f}")
    xs = np.linspace(trained.ft_loss.min(), trained.ft_loss.max(), 20)
    ax.plot(xs, line["intercept"] + line["slope"] * xs, "k--", lw=1,
            label=f"pooled: slope {line['slope']:+.3f}, R² {line['r2']:.2f}")
    ax.set_xlabel(LABELS["ft_loss"])
    ax.set_ylabel(LABELS["forgetting_ce"])
    ax.set_title("Forgetting against fine-tuning loss, one line per module set", fontsize=10)
    ax.legend(fontsize=7)
    return fig, "Forgetting against fine-tuning loss: the paper's inverse linear relation, per module set"


def matched(table: pd.DataFrame, fits: Fits) -> Drawn | None:
    """KL at matched fine-tuning gain, one line per run; None without matched levels."""
    levels = fits.get("matched_loss", {}).get("levels", [])
    if not levels:
        return None
    fig, ax = subplots(figsize=(7.5, 4.8))
    by_run: dict[str, list[tuple[float, float]]] = {}
    for level in levels:
        for r in level["runs"]:
            by_run.setdefault(r["point_id"], []).append((level["gain"], r["kl"]))
    for rows, color, style in _runs(table):
        pid = rows.point_id.iloc[0]
        if pid in by_run:
            gain, kl = np.array(by_run[pid]).T
            ax.plot(gain, kl, color=color, ls=style, marker="o", ms=3, lw=1.2, label=_run_label(rows))
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_axes(ax)
    ax.set_xlabel(LABELS["ft_gain"])
    ax.set_ylabel(LABELS["kl"])
    ax.set_title("KL at matched fine-tuning gain: lines that coincide forget alike", fontsize=10)
    ax.legend(fontsize=6.5, ncol=2)
    return fig, "KL at matched fine-tuning gain, one line per run"


def domains(fits: Fits) -> Drawn | None:
    """KL per eval domain over the steps of the largest run; None without per-domain records."""
    over = (fits.get("domains") or {}).get("over_steps")
    if not over:
        return None
    names = [k for k in over[0] if k not in ("step", "most_hurt")]
    fig, ax = subplots(figsize=(7, 4.2))
    steps = [o["step"] for o in over]
    for name in names:
        ax.plot(steps, [o.get(name, np.nan) for o in over], marker="o", ms=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_axes(ax)
    ax.set_xlabel("fine-tuning steps N (the run with the largest P)")
    ax.set_ylabel(LABELS["kl"])
    ax.set_title("Forgetting per domain over steps", fontsize=10)
    ax.legend(fontsize=8, title="eval domain", title_fontsize=8)
    return fig, "Forgetting per eval domain over the steps of the largest run"


def downstream_drops(summary: dict) -> Drawn:
    """Each task's downstream drop against forgetting, one dot per point
    (`laws.analyses.downstream_correlation`'s summary)."""
    names = list(summary["tasks"])
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = subplots(rows, cols, figsize=(4 * cols, 3.3 * rows), squeeze=False)
    for ax, task in zip(axes.flat, names):
        info = summary["tasks"][task]
        pts = [(r["forgetting_ce"], r["drops"][task]) for r in summary["points"] if task in r["drops"]]
        ax.errorbar([x for x, _ in pts], [d["worse"] for _, d in pts], yerr=[d["difference_stderr"] or 0 for _, d in pts],
                    fmt="o", ms=4, capsize=2)
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        r = f"Pearson {info['pearson']:+.2f}" if info["pearson"] is not None else "too few points"
        ax.set_title(f"{task} ({info['metric']}): {r}", fontsize=8)
        ax.set_xlabel("forgetting L_f at the last step")
        ax.set_ylabel("drop (positive: worse)")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return fig, "Downstream drop of each task against forgetting L_f, one dot per point (± paired SE)"


def tradeoff(curves: dict[str, list[list[dict]]]) -> tuple[Figure, str]:
    """The trade-off of each mitigation, and its caption."""
    from forgetscope.mitigate.tradeoff import tradeoff_figure

    fig = tradeoff_figure(curves, "Fine-tuning gain against forgetting, per mitigation")
    return fig, "Fine-tuning gain against KL to the base: one colour per mitigation, dashed lines post-hoc"


def _run_label(rows: pd.DataFrame) -> str:
    first = rows.iloc[0]
    rank = f"r={int(first['rank'])} " if "rank" in rows else ""
    replay = f", replay {first.replay_fraction:.0%}" if first.replay_fraction else ""
    return f"{rank}{first.arm_name} (P={int(first.P):,}{replay})"


def _log_axes(ax: Axes) -> None:
    """Log axes with few, non-overlapping labels; on one that spans less than a decade, at
    1, 2 and 5 times the powers of ten, so that it keeps some."""
    for axis, scale, (low, high) in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()), (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
        if scale == "log":
            narrow = low > 0 and high / low < 10
            axis.set_major_locator(LogLocator(numticks=5, subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
            axis.set_minor_formatter(NullFormatter())
    ax.tick_params(labelsize=7)


def _runs(table: pd.DataFrame) -> Iterator[tuple[pd.DataFrame, object, str]]:
    """Each run's rows, ordered by arm then P, with a colour per rank and a line style per arm."""
    trained = table[table.N > 0]
    palette = colors(trained["rank"] if "rank" in trained else trained.P)
    arms = sorted(trained.arm_name.unique())
    groups = sorted(trained.groupby(["arm_name", "P", "replay_fraction"]), key=lambda kv: (arms.index(kv[0][0]), *kv[0][1:]))
    for (arm, P, _), rows in groups:
        key = rows["rank"].iloc[0] if "rank" in rows else P
        yield rows.sort_values("N"), palette[key], STYLES[arms.index(arm) % len(STYLES)]
