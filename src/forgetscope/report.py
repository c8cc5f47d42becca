"""`forgetscope report DIR`: one self-contained `DIR/report.html` (images embedded) and its PNGs.

The plots a reader of the paper expects: forgetting and KL against steps for each `P` on
log axes with the fitted laws and their bootstrap bands, forgetting against fine-tuning
loss with its line, predicted against measured on the held-out points, residuals,
per-domain forgetting, and the fit tables.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from forgetscope.laws.forecast import fit_from
from forgetscope.laws.select import fit_sweep, fitted_rows, load_fits, read_table
from forgetscope.plots import colors as _colors
from forgetscope.plots import save as _save
from forgetscope.plots import subplots


def _law_vs_steps(table, entry, target: str, title: str, path: Path) -> None:
    fit = fit_from(entry)
    samples = np.array(entry["bootstrap"])
    colors = _colors(table.P)
    fig, ax = subplots(figsize=(7, 4.5))
    trained = table[table.N > 0]
    grid = np.geomspace(max(1, trained.N.min()), trained.N.max() * 1.5, 60)
    for P, group in trained.groupby("P"):
        g = group.groupby("N")[target].mean()
        ax.scatter(g.index, g.values, color=colors[P], s=18, zorder=3)
        ax.plot(grid, fit.predict(P, grid), color=colors[P], lw=1.5, label=f"P = {P:,}")
        if len(samples):
            band = np.array([fit.predict(P, grid, t) for t in samples])
            ax.fill_between(grid, *np.percentile(band, [2.5, 97.5], axis=0), color=colors[P], alpha=0.15, lw=0)
    if target == "forgetting_ce" and entry.get("shift_value") is not None:
        ax.axhline(entry["shift_value"], color="grey", ls=":", lw=1, label="base entropy")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning steps N")
    ax.set_ylabel(target)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def _vs_ft_loss(table, line: dict, path: Path) -> None:
    trained = table[table.N > 0]
    colors = _colors(trained.P)
    fig, ax = subplots(figsize=(6, 4.5))
    for P, group in trained.groupby("P"):
        ax.scatter(group.ft_loss, group.forgetting_ce, color=colors[P], s=16, label=f"P = {P:,}")
    xs = np.linspace(trained.ft_loss.min(), trained.ft_loss.max(), 20)
    ax.plot(xs, line["intercept"] + line["slope"] * xs, "k--", lw=1,
            label=f"L_f = {line['intercept']:.3f} {line['slope']:+.3f} L_ft (R² {line['r2']:.2f})")
    ax.set_xlabel("fine-tuning loss L_ft (held out)")
    ax.set_ylabel("forgetting L_f")
    ax.set_title("Forgetting against fine-tuning loss", fontsize=10)
    ax.legend(fontsize=7)
    _save(fig, path)


def _heldout_and_residuals(table, fits: dict, heldout_path: Path, residual_path: Path) -> None:
    fig_h, axes_h = subplots(1, 3, figsize=(11, 3.8))
    fig_r, axes_r = subplots(1, 3, figsize=(11, 3.4))
    for ax_h, ax_r, target in zip(axes_h, axes_r, ("forgetting_ce", "kl", "ft_loss")):
        entry = fits[target]
        rows, held = fitted_rows(table, fits, target)
        P, N, y = rows.P.to_numpy(float), rows.N.to_numpy(float), rows[target].to_numpy(float)
        heldout_fit = fit_from(entry, "heldout_theta")
        if heldout_fit is not None and held.any():
            pred = heldout_fit.predict(P, N)
            ax_h.scatter(y[~held], pred[~held], s=12, color="tab:blue", label="fitted on")
            ax_h.scatter(y[held], pred[held], s=16, color="tab:red", label="held out")
            lims = [min(y.min(), pred.min()), max(y.max(), pred.max())]
            ax_h.plot(lims, lims, "k:", lw=1)
            ax_h.set_xscale("log")
            ax_h.set_yscale("log")
            ax_h.legend(fontsize=7)
        ax_h.set_title(f"{target}: predicted vs measured", fontsize=9)
        ax_h.set_xlabel("measured")
        ax_h.set_ylabel("predicted")
        residual = np.log(fit_from(entry).predict(P, N)) - np.log(y)
        ax_r.scatter(np.maximum(N, 0.8), residual, s=12, c=np.log(P), cmap="viridis")
        ax_r.axhline(0, color="k", lw=0.8)
        ax_r.set_xscale("log")
        ax_r.set_title(f"{target}: log residual of the full fit", fontsize=9)
        ax_r.set_xlabel("steps N")
    for fig, path in ((fig_h, heldout_path), (fig_r, residual_path)):
        _save(fig, path)


def _domains(table, path: Path) -> bool:
    if "domains" not in table or table.domains.isna().all():
        return False
    last = table.loc[table.groupby("point_id").N.idxmax()].sort_values("P")
    names = sorted({d for doms in last.domains for d in doms})
    fig, ax = subplots(figsize=(7, 4))
    width = 0.8 / len(names)
    x = np.arange(len(last))
    for i, name in enumerate(names):
        ax.bar(x + i * width, [doms.get(name, {}).get("kl", np.nan) for doms in last.domains], width, label=name)
    ax.set_xticks(x + 0.4 - width / 2, [f"{p:,}" for p in last.P], rotation=45, fontsize=7)
    ax.set_xlabel("trainable parameters P (each run at its last step)")
    ax.set_ylabel("KL to the base")
    ax.set_title("Forgetting per domain", fontsize=10)
    ax.legend(fontsize=8)
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


def _fit_table(target: str, entry: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td><td>"
        + (f"[{entry['ci'][k][0]:.4g}, {entry['ci'][k][1]:.4g}]" if k in entry["ci"] else "-") + "</td></tr>"
        for k, v in entry["params"].items()
    )
    forms = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['heldout_mape']:.2%}</td><td>{v['heldout_log_rmse']:.4f}</td><td>{v['r2']:.3f}</td></tr>"
        for k, v in entry["forms"].items()
    )
    return (
        f"<h3>{target}: <code>{entry['form']}</code>, shift {entry['shift']}</h3>"
        f"<p>R² {entry['r2']:.3f} and RMSE {entry['log_rmse']:.4f} in log space over {entry['n']} measurements; "
        f"held-out MAPE {entry['heldout_mape']:.2%}.</p>"
        f"<table><tr><th>parameter</th><th>value</th><th>95% interval (bootstrap over runs)</th></tr>{rows}</table>"
        f"<table><tr><th>form</th><th>held-out MAPE</th><th>held-out log RMSE</th><th>R² (all data)</th></tr>{forms}</table>"
    )


def write_report(directory: str | Path, n_bootstrap: int = 1000, seed: int = 0) -> Path:
    """Write `report.html` and the PNGs next to the sweep's records, from its `fits.json` as
    `forgetscope fit` wrote it (never rewritten here). Without one, the laws are fitted first
    with `fit`'s defaults (and `n_bootstrap`, `seed`), and `fits.json` is written as `fit` would."""
    directory = Path(directory)
    table = read_table(directory)
    fits = load_fits(directory) if (directory / "fits.json").is_file() else fit_sweep(directory, n_bootstrap, seed)
    images = {
        "kl_vs_steps.png": "KL to the base against steps, one colour per P, with the fitted law and its 95% band",
        "forgetting_vs_steps.png": "Forgetting L_f against steps, with the fitted law and its 95% band",
        "forgetting_vs_ft_loss.png": "Forgetting against fine-tuning loss: the paper's inverse linear relation",
        "heldout.png": "Validation by extrapolation: fitted without the largest P and the latest steps",
        "residuals.png": "Residuals of the full fits",
    }
    _law_vs_steps(table, fits["kl"], "kl", "KL(base ‖ fine-tuned) against steps", directory / "kl_vs_steps.png")
    _law_vs_steps(table, fits["forgetting_ce"], "forgetting_ce", "Forgetting L_f against steps", directory / "forgetting_vs_steps.png")
    _vs_ft_loss(table, fits["linear"], directory / "forgetting_vs_ft_loss.png")
    _heldout_and_residuals(table, fits, directory / "heldout.png", directory / "residuals.png")
    if _domains(table, directory / "domains.png"):
        images["domains.png"] = "Forgetting per eval domain at the last step of each run"
    downstream = downstream_against_forgetting(directory, table)
    if downstream is not None:
        _downstream_plot(downstream, directory / "downstream.png")
        images["downstream.png"] = "Downstream drop of each task against forgetting L_f, one dot per point (± paired SE)"
    figures = "".join(
        f"<figure><img src='data:image/png;base64,{base64.b64encode((directory / name).read_bytes()).decode()}' "
        f"alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in images.items()
    )
    line = fits["linear"]
    domains = fits.get("domains") or {}
    domain_text = ""
    if domains:
        rows = "".join(f"<tr><td>{html.escape(d)}</td><td>{v['kl']:.4f}</td><td>{v['loss_change']:+.4f}</td></tr>"
                       for d, v in domains["domains"].items())
        domain_text = (
            "<h2>Per-domain forgetting</h2><table><tr><th>domain</th><th>mean KL at last step</th>"
            f"<th>change of its own loss</th></tr>{rows}</table><p>Most forgotten: <b>{html.escape(domains['most_hurt'])}</b>; "
            f"closest to the fine-tuning data (its own loss rose least or fell most): <b>{html.escape(domains['closest_to_finetuning'])}</b>.</p>"
        )
    matched = fits["matched_loss"]
    spreads = [lv["kl_spread"] for lv in matched.get("levels", []) if lv["kl_spread"] is not None]
    matched_text = (
        f"<p>At matched fine-tuning loss, KL varies across runs by a coefficient of variation of "
        f"{np.mean(spreads):.2f} on average, against {matched['kl_spread_at_last_step']:.2f} at the same step count. "
        "The smaller the first number, the more forgetting is tied to how far fine-tuning got, whatever the number of "
        "parameters or steps it took: fewer parameters or earlier stopping reduce forgetting only by reducing fine-tuning.</p>"
        if spreads and matched.get("kl_spread_at_last_step") is not None else ""
    )
    corr = list(matched.get("within_run_corr", {}).values())
    if corr:
        matched_text += f"<p>Within each run, the rank correlation of fine-tuning loss and KL over steps is {np.mean(corr):+.2f} on average.</p>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>forgetscope report: {html.escape(directory.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:.5em 1em .5em 0;display:inline-table;vertical-align:top}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}}th{{background:#f3f3f3}}td:first-child{{text-align:left}}
figure{{display:inline-block;margin:.5em}}img{{max-width:100%}}figcaption{{font-size:12px;color:#555}}</style></head><body>
<h1>Forgetting in {html.escape(directory.name)}</h1>
<p>{fits['n_points']} runs, {fits['n_records']} measurements. Forgetting L_f is the cross-entropy of the fine-tuned model's
next-token distribution against the base model's on held-out text; KL = L_f - H_base.</p>
<p><b>Forgetting against fine-tuning loss:</b> L_f = {line['intercept']:.4f} {line['slope']:+.4f} × L_ft, R² {line['r2']:.3f}
over {line['n']} measurements ({'lower fine-tuning loss, more forgetting' if line['slope'] < 0 else 'not the inverse relation the paper reports'}).</p>
{figures}
<h2>Fitted laws</h2>{''.join(_fit_table(t, fits[t]) for t in ('forgetting_ce', 'kl', 'ft_loss'))}
<h2>Can early stopping or fewer parameters avoid forgetting?</h2>{matched_text}
{domain_text}
{_downstream_html(downstream) if downstream is not None else ""}
</body></html>"""
    out = directory / "report.html"
    out.write_text(page)
    return out
