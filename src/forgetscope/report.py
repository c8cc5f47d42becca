"""`forgetscope report DIR`: one self-contained `DIR/report.html` (images embedded) and its PNGs.

What a reader of the paper expects, labelled by rank and module set: KL and forgetting
against steps with the fitted laws and their bands, forgetting against fine-tuning loss
with one line per module set, the forecasts of both validation tests against what
happened with their intervals and coverage, residuals, forgetting at matched fine-tuning
gain, the domains over steps, every form's errors, the paper's claims with the verdict
this sweep's numbers give (`laws.analyses.claims`); nothing is concluded that they do not.
A sweep with mitigated runs, or with `mitigate --sweep` results in `DIR/mitigation/`, also
gets the trade-off of each mitigation: fine-tuning gain against KL, KL at matched gain, and
the cheapest option under each KL budget (`mitigate.tradeoff`). The laws are fitted on the
unmitigated runs.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.ticker import LogLocator, NullFormatter

from forgetscope.errors import UserInputError
from forgetscope.files import write_atomically
from forgetscope.laws.forecast import fit_from
from forgetscope.laws.select import fit_sweep, load_fits, read_table
from forgetscope.plots import colors as _colors
from forgetscope.plots import save as _save
from forgetscope.plots import subplots

LABELS = {"kl": "KL(base ‖ fine-tuned), nats/token", "forgetting_ce": "forgetting L_f, nats/token",
          "ft_loss": "held-out fine-tuning loss L_ft", "ft_gain": "fine-tuning gain L_ft(0) - L_ft"}
STYLES = ("-", "--", ":", "-.")


def _run_label(rows) -> str:
    first = rows.iloc[0]
    rank = f"r={int(first['rank'])} " if "rank" in rows else ""
    replay = f", replay {first.replay_fraction:.0%}" if first.replay_fraction else ""
    return f"{rank}{first.arm_name} (P={int(first.P):,}{replay})"


def _log_axes(ax) -> None:
    """Log axes with few, non-overlapping labels."""
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale == "log":
            axis.set_major_locator(LogLocator(numticks=5))
            axis.set_minor_formatter(NullFormatter())
    ax.tick_params(labelsize=7)


def _runs(table):
    """Each run's rows, ordered by arm then P, with a colour per rank and a line style per arm."""
    trained = table[table.N > 0]
    colors = _colors(trained["rank"] if "rank" in trained else trained.P)
    arms = sorted(trained.arm_name.unique())
    for (arm, P, _), rows in sorted(trained.groupby(["arm_name", "P", "replay_fraction"]), key=lambda kv: (arms.index(kv[0][0]), *kv[0][1:])):
        key = rows["rank"].iloc[0] if "rank" in rows else P
        yield rows.sort_values("N"), colors[key], STYLES[arms.index(arm) % len(STYLES)]


def _law_vs_steps(table, entry, target: str, title: str, path: Path) -> None:
    fit = fit_from(entry)
    samples = np.array(entry["bootstrap"])
    fig, ax = subplots(figsize=(8, 5))
    grid_steps = np.geomspace(1, table.N.max() * 1.5, 60)
    for rows, color, style in _runs(table):
        T_per_step = float(rows["T"].iloc[-1] / rows.N.iloc[-1])
        grid = grid_steps * T_per_step
        arm = fit.arms.index(rows.arm_name.iloc[0]) if fit.arms else 0
        P, replay = float(rows.P.iloc[0]), float(rows.replay_fraction.iloc[0])
        ax.scatter(rows.N, rows[target], color=color, s=14, zorder=3)
        ax.plot(grid_steps, fit.predict(P, grid, arm=arm, replay=replay), color=color, ls=style, lw=1.4, label=_run_label(rows))
        if len(samples):
            band = fit.predict(P, grid, samples[:200], arm=arm, replay=replay)
            ax.fill_between(grid_steps, *np.percentile(band, [2.5, 97.5], axis=0), color=color, alpha=0.12, lw=0)
    if target == "forgetting_ce" and entry.get("shift_value") is not None:
        ax.axhline(entry["shift_value"], color="grey", ls=":", lw=1, label="base entropy H_base")
    ax.set_xscale("log")
    if target == "kl":  # L_f spans a few percent above H_base: a linear axis shows it
        ax.set_yscale("log")
    _log_axes(ax)
    ax.set_xlabel("fine-tuning steps N")
    ax.set_ylabel(LABELS[target])
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6.5, ncol=2, title="rank, module set (line style), P", title_fontsize=7,
              loc="lower right" if target == "kl" else "upper left")
    _save(fig, path)


def _vs_ft_loss(table, line: dict, path: Path) -> None:
    trained = table[table.N > 0]
    fig, ax = subplots(figsize=(7, 4.8))
    arms = sorted(trained.arm_name.unique())
    palette = _colors(range(len(arms))) if len(arms) > 1 else {0: "tab:blue"}
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
    _save(fig, path)


GROWTH_LABELS = {"kl": "KL", "forgetting_ce": "L_f - H_base", "ft_loss": "fine-tuning gain"}


def _forecasts_plot(fits: dict, path: Path) -> bool:
    """Each validation test's forecasts, with their 95% intervals, against what happened."""
    fig, axes = subplots(2, 3, figsize=(12, 7.5), squeeze=False)
    drawn = False
    for col, target in enumerate(("kl", "forgetting_ce", "ft_loss")):
        entry = fits[target]
        forecasts = entry.get("interval", {}).get("forecasts", {})
        for row, split in enumerate(("in_time", "in_size")):
            ax = axes[row][col]
            f = forecasts.get(split)
            ax.set_title(f"{GROWTH_LABELS[target]}, forecast {split.replace('_', ' ')}", fontsize=9)
            if not f:
                ax.text(0.5, 0.5, "not tested", ha="center", va="center", transform=ax.transAxes)
                continue
            drawn = True
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
    _save(fig, path)
    return drawn


def _residuals(table, fits: dict, path: Path) -> None:
    fig, axes = subplots(1, 3, figsize=(12, 3.8))
    for ax, target in zip(axes, ("kl", "forgetting_ce", "ft_loss")):
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
        ax.set_title(f"{LABELS[column]}: {entry['label'] if 'label' in entry else entry['form']}", fontsize=8)
        ax.set_xlabel("fine-tuning steps N")
        ax.set_ylabel("log(fitted / measured)")
    _save(fig, path)


def _matched_plot(fits: dict, table, path: Path) -> bool:
    levels = fits["matched_loss"].get("levels", [])
    if not levels:
        return False
    fig, ax = subplots(figsize=(7.5, 4.8))
    by_run: dict = {}
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
    _save(fig, path)
    return True


def _domains(fits: dict, path: Path) -> bool:
    over = (fits.get("domains") or {}).get("over_steps")
    if not over:
        return False
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
    _save(fig, path)
    return True


def downstream_against_forgetting(directory: str | Path, table=None) -> dict | None:
    """Each finished point's downstream drop per task (its primary metric, signed so that
    positive is worse than the base) next to its forgetting L_f at its last step, and per
    task the Pearson and Spearman correlations across points. None without downstream results."""
    from scipy import stats

    from forgetscope.downstream.compare import drops
    from forgetscope.sweep.store import read_artifacts

    base, points = read_artifacts(directory, "downstream")
    if base is None or not points:
        return None
    table = read_table(directory) if table is None else table
    last = table.loc[table.groupby("point_id").N.idxmax()].set_index("point_id")
    rows = []
    for point_id, result in points.items():
        if point_id in last.index:
            row = last.loc[point_id]
            rows.append({"point_id": point_id, "P": int(row.P), "forgetting_ce": float(row.forgetting_ce),
                         "drops": drops(base, result)})
    tasks = {}
    for task in sorted({t for r in rows for t in r["drops"]}):
        pairs = [(r["forgetting_ce"], r["drops"][task]["worse"]) for r in rows if r["drops"].get(task, {}).get("worse") is not None]
        x, y = np.array(pairs).T if pairs else (np.array([]), np.array([]))
        varied = len(pairs) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
        metric = next(r["drops"][task]["metric"] for r in rows if task in r["drops"])
        tasks[task] = {"metric": metric, "n_points": len(pairs),
                       "pearson": float(stats.pearsonr(x, y)[0]) if varied else None,
                       "spearman": float(stats.spearmanr(x, y)[0]) if varied else None}
    return {"points": sorted(rows, key=lambda r: r["forgetting_ce"]), "tasks": tasks}


def _downstream_plot(summary: dict, path: Path) -> None:
    names = list(summary["tasks"])
    cols = min(3, len(names))
    fig, axes = subplots((len(names) + cols - 1) // cols, cols, figsize=(4 * cols, 3.3 * ((len(names) + cols - 1) // cols)),
                             squeeze=False)
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
    _save(fig, path)


def _downstream_html(summary: dict) -> str:
    tasks = summary["tasks"]
    head = "".join(f"<th>{html.escape(t)}<br>{html.escape(v['metric'])}</th>" for t, v in tasks.items())
    body = "".join(
        f"<tr><td>{html.escape(r['point_id'])}</td><td>{r['P']:,}</td><td>{r['forgetting_ce']:.4f}</td>"
        + "".join(f"<td>{r['drops'][t]['worse']:+.3f} ± {r['drops'][t]['difference_stderr'] or 0:.3f}</td>"
                  if t in r["drops"] else "<td>-</td>" for t in tasks) + "</tr>"
        for r in summary["points"]
    )
    def r(value: float | None) -> str:
        return "-" if value is None else f"{value:+.3f}"

    corr = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{v['metric']}</td><td>{v['n_points']}</td>"
        f"<td>{r(v['pearson'])}</td><td>{r(v['spearman'])}</td></tr>"
        for t, v in tasks.items()
    )
    return (
        "<h2>Downstream against forgetting</h2><p>Each point's drop on the downstream tasks against the base "
        "(fine-tuned minus base of each task's main metric, signed so that positive means worse; ± the standard "
        "error paired over the same examples), next to its forgetting L_f at its last step. A high correlation "
        "means L_f predicts the benchmark drop.</p>"
        f"<table><tr><th>point</th><th>P</th><th>L_f</th>{head}</tr>{body}</table>"
        "<table><tr><th>task</th><th>metric</th><th>points</th><th>Pearson(L_f, drop)</th>"
        f"<th>Spearman(L_f, drop)</th></tr>{corr}</table>"
    )


def _pct(value) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.1%}"


def _fit_table(target: str, entry: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td><td>"
        + (f"[{entry['ci'][k][0]:.4g}, {entry['ci'][k][1]:.4g}]" if k in entry["ci"] else "-") + "</td></tr>"
        for k, v in entry["params"].items()
    )
    forms = "".join(
        f"<tr><td>{'<b>' if k == entry.get('label') else ''}{html.escape(k)}{' (chosen)</b>' if k == entry.get('label') else ''}</td>"
        + "".join(f"<td>{_pct(v['validation'][split][stat])}</td>" for split in ('selection', 'in_time', 'in_size')
                  for stat in ('median_ape', 'max_ape'))
        + "".join(f"<td>{v['validation'][split]['log_rmse']:.3f}</td>" for split in ('in_time', 'in_size'))
        + f"<td>{v['r2']:.3f}</td></tr>"
        for k, v in entry["forms"].items()
    )
    coverage = entry.get("interval", {}).get("coverage", {})
    cover = "; ".join(f"{split.replace('_', ' ')}: {c['with_model_error']:.0%} of {c['n']} (bootstrap alone {c['bootstrap']:.0%})"
                      for split, c in coverage.items())
    what = {"kl": "KL", "forgetting_ce": "L_f - H_base", "ft_loss": "the fine-tuning gain"}[target]
    return (
        f"<h3>{target}: <code>{html.escape(entry.get('label', entry['form']))}</code></h3>"
        f"<p>R² {entry['r2']:.3f} and RMSE {entry['log_rmse']:.4f} in log space over {entry['n']} measurements. "
        f"Errors are absolute percentage errors of {what}, forecast for measurements the fit never saw; the form is chosen on the "
        f"selection split, inside the in-time training part. 95% interval coverage of the held-out points: {cover or 'not measured'}.</p>"
        f"<table><tr><th>parameter</th><th>value</th><th>95% interval (bootstrap over runs)</th></tr>{rows}</table>"
        "<table><tr><th rowspan=2>form</th><th colspan=2>selection</th><th colspan=2>in time</th><th colspan=2>in size</th>"
        "<th colspan=2>log RMSE</th><th rowspan=2>R² (all)</th></tr><tr><th>median</th><th>max</th><th>median</th><th>max</th>"
        f"<th>median</th><th>max</th><th>in time</th><th>in size</th></tr>{forms}</table>"
    )


def _claims_html(fits: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(c['claim'])}</td><td class='{html.escape(c['verdict'])}'>{html.escape(c['verdict'])}</td>"
                   f"<td>{html.escape(c['evidence'])}</td></tr>" for c in fits.get("claims", []))
    return ("<h2>The paper's claims on this sweep</h2><table class='claims'><tr><th>claim</th><th>verdict</th><th>the numbers</th></tr>"
            f"{rows}</table>") if rows else ""


def _matched_html(fits: dict) -> str:
    levels = fits["matched_loss"].get("levels", [])
    if not levels:
        return f"<p>{html.escape(fits['matched_loss'].get('note', 'no matched levels'))}</p>"
    arms = sorted({a for lv in levels for a in lv["within"]})
    pairs = sorted({p for lv in levels for p in lv["across"]})
    head = "".join(f"<th>spread within {html.escape(a)}</th>" for a in arms) + "".join(f"<th>KL ratio {html.escape(p)} (95%)</th>" for p in pairs)
    body = ""
    for lv in levels:
        cells = "".join(f"<td>{lv['within'][a]['kl_spread']:.2f} ({lv['within'][a]['runs']} runs)</td>" if a in lv["within"] else "<td>-</td>"
                        for a in arms)
        cells += "".join(f"<td>{lv['across'][p]['ratio']:.2f} [{lv['across'][p]['low']:.2f}, {lv['across'][p]['high']:.2f}]</td>"
                         if p in lv["across"] else "<td>-</td>" for p in pairs)
        body += f"<tr><td>{lv['gain']:.4f}</td><td>{len(lv['runs'])}</td>{cells}</tr>"
    return ("<p>Every run's KL where it reaches the same fine-tuning gain, over the whole range of gains the runs reach "
            "(interpolated between measurements, never extrapolated). Spread: coefficient of variation of KL across the ranks of "
            "one module set. Ratio: geometric-mean KL of one module set over the other's, with a bootstrap interval over runs.</p>"
            f"<table><tr><th>gain</th><th>runs</th>{head}</tr>{body}</table>")


def _domains_html(fits: dict) -> str:
    domains = fits.get("domains") or {}
    if not domains:
        return ""
    rows = "".join(f"<tr><td>{html.escape(d)}</td><td>{v['kl']:.4f}</td><td>{v['loss_change']:+.4f}</td></tr>"
                   for d, v in domains["domains"].items())
    over = domains.get("over_steps") or []
    steps = "".join(f"<tr><td>{o['step']}</td>" + "".join(f"<td>{o[d]:.4f}</td>" for d in domains["domains"] if d in o)
                    + f"<td>{html.escape(o['most_hurt'])}</td></tr>" for o in over)
    names = "".join(f"<th>KL {html.escape(d)}</th>" for d in domains["domains"])
    return ("<h2>Per-domain forgetting</h2><table><tr><th>domain</th><th>mean KL at each run's last step</th>"
            f"<th>change of its own loss</th></tr>{rows}</table>"
            f"<table><tr><th>step (largest P)</th>{names}<th>most forgotten</th></tr>{steps}</table>"
            f"<p>Closest to the fine-tuning data (its own loss rose least or fell most): "
            f"<b>{html.escape(domains['closest_to_finetuning'])}</b>.</p>")


def _sweep_title(directory: Path) -> str:
    from forgetscope.sweep.store import read_config_data

    config = directory / "config.yaml"
    data = read_config_data(config) if config.is_file() else {}
    name = str(data.get("name") or directory.name)
    base = Path(str(data.get("base_model", ""))).name
    return f"{name}" + (f" on {base}" if base else "")


def _laws_part(directory: Path, table, fits: dict, out: Path) -> tuple[dict[str, str], str, str]:
    """`(images, introduction, tables)` of the fitted laws: everything the report says of plain
    fine-tuning; the images are drawn into `out`."""
    images = {
        "kl_vs_steps.png": "KL to the base against steps: a colour per rank, a line style per module set, the fitted law and its 95% band",
        "forgetting_vs_steps.png": "Forgetting L_f against steps, with the fitted law and its 95% band",
        "heldout.png": "Validation: each test's forecasts (with 95% intervals) against what was measured; the dotted line is perfect",
        "residuals.png": "Log residuals of the full fits against steps, coloured by P",
        "forgetting_vs_ft_loss.png": "Forgetting against fine-tuning loss: the paper's inverse linear relation, per module set",
    }
    _law_vs_steps(table, fits["kl"], "kl", "KL(base ‖ fine-tuned) against steps", out / "kl_vs_steps.png")
    _law_vs_steps(table, fits["forgetting_ce"], "forgetting_ce", "Forgetting L_f against steps", out / "forgetting_vs_steps.png")
    _forecasts_plot(fits, out / "heldout.png")
    _residuals(table, fits, out / "residuals.png")
    _vs_ft_loss(table, fits["linear"], out / "forgetting_vs_ft_loss.png")
    if _matched_plot(fits, table, out / "matched.png"):
        images["matched.png"] = "KL at matched fine-tuning gain, one line per run"
    if _domains(fits, out / "domains.png"):
        images["domains.png"] = "Forgetting per eval domain over the steps of the largest run"
    downstream = downstream_against_forgetting(directory, table)
    if downstream is not None:
        _downstream_plot(downstream, out / "downstream.png")
        images["downstream.png"] = "Downstream drop of each task against forgetting L_f, one dot per point (± paired SE)"
    kl = fits["kl"]
    validation, coverage = kl["validation"], kl.get("interval", {}).get("coverage", {})
    names = {"in_time": "in time", "in_size": "in size", "in_size_far": "in size, the two largest P held out",
             "joint": "in size and time at once"}
    headline = "; ".join(
        f"{names[split]}: median error {_pct(validation[split]['median_ape'])}"
        + (f", {coverage[split]['with_model_error']:.0%} of {coverage[split]['n']} inside the 95% interval" if split in coverage else "")
        for split in names if validation.get(split, {}).get("n"))
    tested = (fits.get("range") or {}).get("tested")
    reach = "" if tested is None else (
        f" <code>predict</code> answers without <code>--extrapolate</code> up to {2 ** tested['P']:g}x beyond the largest P of"
        f" each module set and {2 ** tested['N']:g}x beyond the steps measured: as far as a test reached with a median error"
        " of 25% or less.")
    arms = ", ".join(html.escape(a) for a in sorted(table.arm_name.unique()))
    intro = f"""<p>{fits['n_points']} runs ({arms}), {fits['n_records']} measurements. Forgetting L_f is the cross-entropy of the fine-tuned model's
next-token distribution against the base model's on held-out text; KL = L_f - H_base.</p>
<p><b>How far the KL law can be trusted</b> ({html.escape(kl.get('label', kl['form']))}, chosen on nested selection splits):
forecasts of each held-out run's last step, fitted without it (in time: each run up to {1 - fits.get('holdout', 0.5):.0%} of its
steps; in size: the largest P of each module set held out): {headline}.{reach}</p>
{_claims_html(fits)}"""
    tables = f"""<h2>Fitted laws</h2>{''.join(_fit_table(t, fits[t]) for t in ('kl', 'forgetting_ce', 'ft_loss'))}
<h2>Forgetting at matched fine-tuning gain</h2>{_matched_html(fits)}
{_domains_html(fits)}
{_downstream_html(downstream) if downstream is not None else ""}"""
    return images, intro, tables


def _mitigation_inputs(directory: Path) -> tuple[list[dict], dict[str, dict]] | None:
    """`(records, {point_id: post-hoc result})` when the sweep has mitigated runs or kept
    `mitigate --sweep` results in `DIR/mitigation/` (each checked), else None."""
    from forgetscope.mitigate import tradeoff
    from forgetscope.records import is_mitigated, sweep_records
    from forgetscope.sweep.store import read_artifacts

    records = sweep_records(directory)[0] if (directory / "records.jsonl").is_file() else []
    _, posthoc = read_artifacts(directory, "mitigation", schema=tradeoff.MitigationFile)
    if not posthoc and not any(is_mitigated(r) for r in records):
        return None
    return records, posthoc


def _mitigation_part(out: Path, records: list[dict], posthoc: dict[str, dict]) -> tuple[dict[str, str], str]:
    """The trade-off plot and tables of a sweep's mitigated runs and of every post-hoc
    `mitigate --sweep` result kept in `DIR/mitigation/`; the plot is drawn into `out`."""
    from forgetscope.mitigate import tradeoff
    from forgetscope.records import is_mitigated

    # Compare like with like: the runs of the size the mitigated runs (or the post-hoc fine-tune) have.
    sizes = {r["trainable_params"] for r in records if is_mitigated(r) or r["point_id"] in posthoc}
    curves = tradeoff.training_curves([r for r in records if r["trainable_params"] in sizes])
    for point_id, result in sorted(posthoc.items()):
        suffix = f" ({point_id})" if len(posthoc) > 1 else ""
        curves.update({label + suffix: c for label, c in tradeoff.posthoc_curves(result).items()})
    tradeoff.plot_tradeoff(curves, out / "tradeoff.png", "Fine-tuning gain against forgetting, per mitigation")
    reference = curves.get("no mitigation", [])
    full_gain = min((c[-1]["gain"] for c in reference), default=None)
    matched = []
    for share in (0.5, 0.8) if full_gain else ():
        rows = "".join(f"<tr><td>{html.escape(r['option'])}</td><td>{_num(r['kl'], '.4f')}</td><td>{_num(r['vs_none'], '.2f', 'x')}</td></tr>"
                       for r in tradeoff.matched_table(curves, share * full_gain))
        matched.append(f"<table><tr><th colspan=3>at gain {share * full_gain:.4f} ({share:.0%} of the unmitigated run's)</th></tr>"
                       f"<tr><th>option</th><th>KL</th><th>vs none</th></tr>{rows}</table>")
    kls = [p["kl"] for runs in curves.values() for c in runs for p in c]
    cheapest = "".join(
        f"<tr><td>{row['budget']:g}</td><td>{html.escape(row['option'] or 'none reaches it')}</td><td>{_num(row['gain'], '.4f')}</td>"
        f"<td>{html.escape(row['runner_up'] or '-')}</td><td>{_num(row['runner_up_gain'], '.4f')}</td></tr>"
        for row in tradeoff.cheapest_table(curves, tradeoff.levels(kls)))
    page = ("<h2>Mitigation: what each option trades</h2><p>Each curve is one run's steps (training mitigations) or one "
            "post-hoc method's settings from 0 to 1; any point on a curve can be had, by stopping the run there or by applying "
            "that setting. KL at a matched gain is read off each curve (linear between its points, never extrapolated).</p>"
            + "".join(matched)
            + "<table><tr><th>to stay under KL</th><th>the cheapest option</th><th>gain kept</th><th>next best</th><th>its gain</th></tr>"
            + cheapest + "</table>")
    return {"tradeoff.png": "Fine-tuning gain against KL to the base: one colour per mitigation, dashed lines post-hoc"}, page


def _num(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def write_report(directory: str | Path, n_bootstrap: int = 1000, seed: int = 0) -> Path:
    """Write `report.html` and the PNGs next to the sweep's records, from its `fits.json` as
    `forgetscope fit` wrote it (never rewritten here). Without one, the laws are fitted first
    with `fit`'s defaults (and `n_bootstrap`, `seed`), and `fits.json` is written as `fit` would."""
    directory = Path(directory)
    title = html.escape(_sweep_title(directory))
    # Every file is read and checked before anything is drawn: a bad one fails the report
    # with nothing written.
    try:
        table = read_table(directory)
        fits = load_fits(directory) if (directory / "fits.json").is_file() else fit_sweep(directory, n_bootstrap, seed)
        if fits.get("records_sha256") not in (None, table.attrs["records_sha256"]):  # older files have no digest
            raise UserInputError(f"{directory / 'fits.json'} was fitted on other records than {directory / 'records.jsonl'} holds "
                                 f"(another sweep's, or an older state of this one): run `forgetscope fit {directory}` again")
        not_fitted = None
    except UserInputError as exc:
        not_fitted = exc
    mitigation = _mitigation_inputs(directory)
    if not_fitted is not None and mitigation is None:
        raise not_fitted
    # The images are drawn into a scratch folder and moved beside the records at the end: a
    # failure half way (a full disk) leaves the earlier report as it was.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".report-") as scratch:
        drawn = Path(scratch)
        mitigation_images, mitigation_html = _mitigation_part(drawn, *mitigation) if mitigation else ({}, "")
        if not_fitted is not None:
            images, laws_html = {}, f"<h2>Laws</h2><p>Not fitted on this sweep: {html.escape(str(not_fitted))}.</p>"
            intro = "<p>Forgetting L_f is the cross-entropy of the fine-tuned model's next-token distribution against the base model's on held-out text; KL = L_f - H_base.</p>"
        else:
            images, intro, laws_html = _laws_part(directory, table, fits, drawn)
        images.update(mitigation_images)
        figures = "".join(
            f"<figure><img src='data:image/png;base64,{base64.b64encode((drawn / name).read_bytes()).decode()}' "
            f"alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
            for name, caption in images.items()
        )
        out = directory / "report.html"
        write_atomically(out, _page(title, intro, figures, mitigation_html, laws_html))  # whole, or the previous one
        for name in images:
            os.replace(drawn / name, directory / name)
    return out


def _page(title: str, intro: str, figures: str, mitigation_html: str, laws_html: str) -> str:
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>forgetscope: {title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:.5em 1em .5em 0;display:inline-table;vertical-align:top}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}}th{{background:#f3f3f3}}td:first-child{{text-align:left}}
table.claims td{{text-align:left}}td.holds{{background:#e3f4e3}}td.fails{{background:#f8e0e0}}td.mixed{{background:#fbf1d9}}
figure{{display:inline-block;margin:.5em}}img{{max-width:100%}}figcaption{{font-size:12px;color:#555}}</style></head><body>
<h1>Forgetting in {title}</h1>
{intro}
{figures}
{mitigation_html}
{laws_html}
</body></html>"""
