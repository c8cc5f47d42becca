"""Everything `forgetscope synthetic` writes to its output folder: results.json, PNGs, index.html.

- error_vs_k_continuous.png / error_vs_k_discrete.png: error per dimension against the
  number of in-context examples, for the baselines, the pretrained network, each fine-tuning
  checkpoint, and the last checkpoint under its best conjugate prompt;
- error_vs_gamma.png: mean error against gamma, per state, with the ideal Bayesian;
- forgetting.png: mean error against fine-tuning steps, plain and at the best gamma;
- training_loss.png: the training loss curves, with the plateau marks.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from matplotlib import colormaps

from forgetscope.files import write_atomically
from forgetscope.plots import save as _save
from forgetscope.plots import subplots

BASELINE_STYLE = {"ridge": ("tab:blue", "--"), "discrete posterior": ("tab:red", "--"), "mixture Bayes": ("black", ":")}


def _finetuned_labels(results: dict) -> list[str]:
    return [f"fine-tuned {s}" for s in results["config"]["finetune_checkpoints"]]


def _state_colors(labels: list[str]) -> dict:
    cmap = colormaps["viridis"]
    return {label: cmap(i / max(1, len(labels) - 1)) for i, label in enumerate(labels)}


def _error_vs_k(results: dict, dist: str, path: Path) -> None:
    ks = results["k"]
    fig, ax = subplots(figsize=(7, 4.5))
    for name, (color, style) in BASELINE_STYLE.items():
        ax.plot(ks, results["baselines"][dist][name]["by_k"], color=color, ls=style, lw=1.4, label=name)
    labels = ["pretrained", *_finetuned_labels(results)]
    colors = _state_colors(labels)
    for label in labels:
        ax.plot(ks, results["model"][dist][label]["1.0"]["by_k"], color=colors[label], lw=1.6, marker=".", label=label)
    last = labels[-1]
    best = results["recovery"][last]["best_gamma"]
    ax.plot(ks, results["model"][dist][last][str(best)]["by_k"], color=colors[last], lw=1.6, ls="-.",
            label=f"{last}, conjugate gamma = {best:g}")
    ax.set_yscale("log")
    ax.set_xlabel("in-context examples k")
    ax.set_ylabel("squared error / d")
    ax.set_title(f"{dist} tasks", fontsize=10)
    ax.legend(fontsize=7)
    _save(fig, path)


def _error_vs_gamma(results: dict, path: Path) -> None:
    gammas = [float(g) for g in results["config"]["gammas"]]
    labels = ["pretrained", *_finetuned_labels(results)]
    colors = _state_colors(labels)
    fig, axes = subplots(1, 2, figsize=(11, 4.2))
    for ax, dist in zip(axes, ("continuous", "discrete")):
        for label in labels:
            ax.plot(gammas, [results["model"][dist][label][str(g)]["mean"] for g in gammas], marker="o", color=colors[label], label=label)
        ideal = results["ideal_bayes"]
        ax.plot(gammas, [ideal["finetuned"][dist][str(g)]["mean"] for g in gammas], color="grey", ls="--", marker="x",
                label=f"ideal Bayes, pool weight {ideal['finetuned_weight']:g}")
        ax.axhline(ideal["pretrained"][dist]["mean"], color="black", ls=":", lw=1, label=f"ideal Bayes, pool weight {ideal['pretrained_weight']:g}")
        ax.set_xscale("log")
        ax.set_xticks(gammas, [f"{g:g}" for g in gammas])
        ax.minorticks_off()
        ax.set_xlabel("gamma (in-context labels scaled by gamma, prediction divided by it)")
        ax.set_ylabel("mean squared error / d over k >= 1")
        ax.set_title(f"{dist} tasks", fontsize=10)
    axes[0].legend(fontsize=7)
    _save(fig, path)


def _forgetting(results: dict, path: Path) -> None:
    steps = [0, *results["config"]["finetune_checkpoints"]]
    labels = ["pretrained", *_finetuned_labels(results)]
    fig, ax = subplots(figsize=(7, 4.5))
    for dist, color in (("continuous", "tab:blue"), ("discrete", "tab:red")):
        ax.plot(steps, [results["model"][dist][label]["1.0"]["mean"] for label in labels], marker="o", color=color, label=f"{dist}, plain prompt")
    best = [results["recovery"][label]["best_gamma"] for label in labels[1:]]
    ax.plot(steps[1:], [results["model"]["continuous"][label][str(g)]["mean"] for label, g in zip(labels[1:], best)], marker="s",
            color="tab:blue", ls="-.", label="continuous, best conjugate prompt")
    for x, label, g in zip(steps[1:], labels[1:], best):
        ax.annotate(f"gamma {g:g}", (x, results["model"]["continuous"][label][str(g)]["mean"]), fontsize=7,
                    textcoords="offset points", xytext=(3, -10))
    ax.axhline(results["baselines"]["continuous"]["ridge"]["mean"], color="tab:blue", ls=":", lw=1, label="ridge (continuous)")
    ax.set_xlabel("fine-tuning steps on discrete tasks (0 = pretrained)")
    ax.set_ylabel("mean squared error / d over k >= 1")
    ax.legend(fontsize=7)
    _save(fig, path)


def _training_loss(results: dict, path: Path) -> None:
    fig, axes = subplots(1, 2, figsize=(11, 4.2))
    pre = results["pretrain_curve"]
    axes[0].plot([s for s, _ in pre], [v for _, v in pre], color="tab:green")
    plateau = results["plateau"]
    axes[0].axhline(plateau["zero_predictor_loss"], color="grey", ls=":", label="predicting 0")
    axes[0].axhline(plateau["halfway_loss"], color="orange", ls="--", label="halfway (plateau escaped below)")
    axes[0].axhline(plateau["bayes_loss"], color="black", ls=":", label="mixture Bayes")
    axes[0].set_title("pretraining on the mixture", fontsize=10)
    ft = results["finetune_curve"]
    axes[1].plot([s for s, _ in ft], [v for _, v in ft], color="tab:red", marker=".")
    axes[1].set_title("fine-tuning on the discrete pool", fontsize=10)
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("training loss / d (noisy labels, all k)")
    axes[0].legend(fontsize=7)
    _save(fig, path)


FIGURES = {
    "error_vs_k_continuous.png": "Continuous tasks: error against in-context examples",
    "error_vs_k_discrete.png": "Discrete tasks: error against in-context examples",
    "error_vs_gamma.png": "Conjugate prompting: error against gamma",
    "forgetting.png": "Forgetting over fine-tuning, and what the best gamma recovers",
    "training_loss.png": "Training loss (plateau check)",
}


def summary_rows(results: dict) -> list[dict]:
    """One row per fine-tuning checkpoint: the numbers the closing note needs."""
    rows = []
    for label in _finetuned_labels(results):
        rec = results["recovery"][label]
        g2 = rec["gammas"].get("2.0")
        rows.append({
            "state": label, "pretrained": rec["pretrained_mean"], "fine-tuned": rec["finetuned_mean"],
            "forgetting": rec["forgetting"], "best gamma": rec["best_gamma"], "at best gamma": rec["best_mean"],
            "recovered": rec["best_recovered"],
            "recovered k=1,2 at gamma 2": None if g2 is None else g2["recovered_by_k"][1:3],
            "discrete plain": results["model"]["discrete"][label]["1.0"]["mean"],
        })
    return rows


def _html(results: dict, out: Path) -> str:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, list):
            return ", ".join(fmt(x) for x in v)
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    rows = summary_rows(results)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    base = "".join(f"<tr><td>{html.escape(n)}</td><td>{results['baselines']['continuous'][n]['mean']:.3f}</td>"
                   f"<td>{results['baselines']['discrete'][n]['mean']:.3f}</td></tr>" for n in results["baselines"]["continuous"])
    ideal = results["ideal_bayes"]["recovery"]
    figures = "".join(
        f"<figure><img src='data:image/png;base64,{base64.b64encode((out / name).read_bytes()).decode()}' "
        f"alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in FIGURES.items()
    )
    p = results["plateau"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>forgetscope synthetic: {html.escape(results['config']['name'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}img{{max-width:100%}}</style></head><body>
<h1>In-context regression: forgetting and conjugate prompting</h1>
<p>Config <b>{html.escape(results['config']['name'])}</b>, seed {results['config']['seed']}, {results['parameters']:,} parameters,
device {html.escape(results['device'])}, {results['seconds']['total']:.0f} s. Errors: squared error / d against the noiseless label,
mean over k = 1..{results['k'][-1]}, on {results['config']['eval_prompts']} fixed prompts per distribution.</p>
<h2>Forgetting and recovery (continuous tasks)</h2><table><tr>{head}</tr>{body}</table>
<h2>Baselines</h2><table><tr><th>predictor</th><th>continuous</th><th>discrete</th></tr>{base}</table>
<p>Ideal Bayesian: {ideal['pretrained_mean']:.3f} (pool weight {results['ideal_bayes']['pretrained_weight']:g}) &rarr;
{ideal['finetuned_mean']:.3f} (pool weight {results['ideal_bayes']['finetuned_weight']:g}) &rarr; {ideal['best_mean']:.3f}
with gamma {ideal['best_gamma']:g} (recovered {fmt(ideal['best_recovered'])}).</p>
<p>Pretraining plateau: {'escaped' if p['escaped'] else 'NOT escaped'} (loss below halfway at step {p['escaped_at_step']};
continuous gap from predicting 0 to the mixture Bayes closed {p['continuous_gap_closed']:.0%}).</p>
{figures}</body></html>"""


def write_outputs(results: dict, out: str | Path) -> Path:
    """Write results.json, the PNGs and index.html into `out`; returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "results.json", json.dumps(results, indent=1))
    _error_vs_k(results, "continuous", out / "error_vs_k_continuous.png")
    _error_vs_k(results, "discrete", out / "error_vs_k_discrete.png")
    _error_vs_gamma(results, out / "error_vs_gamma.png")
    _forgetting(results, out / "forgetting.png")
    _training_loss(results, out / "training_loss.png")
    write_atomically(out / "index.html", _html(results, out))
    return out


__all__ = ["write_outputs", "summary_rows", "FIGURES"]
