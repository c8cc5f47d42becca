"""What the CLI prints: rich tables of the results that the library returns as plain data.

Each `print_*` takes the dict (or result object) a public function returned, so Python
users get the same data and the CLI only decides how it looks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forgetscope.laws.schema import Fits, IntervalFit, LawFit, LinearFit, Target

console = Console()


def _fmt_ci(values: dict, key: str) -> str:
    ci = values.get("ci", {}).get(key)
    return f"{values[key]:.4f}" + (f"\n[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def print_measure_table(result: dict) -> None:
    """Overall and per-domain rows of the metric, with 95% intervals."""
    table = Table(title="Forgetting (nats per token; 95% bootstrap intervals over sequences)")
    for column in ("domain", "tokens", "L_f (forgetting_ce)", "KL", "H_base", "hard CE", "base loss", "fine-tuned loss"):
        table.add_column(column, justify="left" if column == "domain" else "right", no_wrap=column == "domain")
    rows = [("all", result)] + list(result["domains"].items()) if len(result["domains"]) > 1 else list(result["domains"].items())
    for name, values in rows:
        table.add_row(
            name, str(values["tokens"]), _fmt_ci(values, "forgetting_ce"), _fmt_ci(values, "kl"),
            f"{values['base_entropy']:.4f}", f"{values['hard_ce']:.4f}", f"{values['base_loss']:.4f}",
            f"{values['finetuned_loss']:.4f}",
        )
    Console(width=max(console.width, 130)).print(table)  # whole numbers and headers even in an 80-column pipe


def print_records_table(records: list[dict], title: str) -> None:
    """One row per measured step: how fine-tuning loss and forgetting move together."""
    domains = list(records[0].get("domains", {})) if records else []
    table = Table(title=title)
    for column in ("step", "train loss", "ft loss", "L_f", "KL", "hard CE", *(f"KL {d}" for d in domains)):
        table.add_column(column, justify="right")
    for r in records:
        train_loss = "-" if r.get("train_loss") is None else f"{r['train_loss']:.3f}"
        ft_loss = f"{r['ft_loss']:.3f}" if "ft_loss" in r else "-"
        table.add_row(
            str(r["step"]), train_loss, ft_loss, f"{r['forgetting_ce']:.4f}", f"{r['kl']:.4f}", f"{r['hard_ce']:.4f}",
            *(f"{r['domains'][d]['kl']:.4f}" for d in domains),
        )
    console.print(table)


def print_sweep_summary(result) -> None:
    """One row per point: what was fine-tuned, and where fine-tuning loss and forgetting ended."""
    last: dict[str, dict] = {}
    for record in result.records:
        if record["step"] >= last.get(record["point_id"], {}).get("step", -1):
            last[record["point_id"]] = record
    table = Table(title="Each point at its last measured step (P: non-embedding parameters fine-tuned)")
    for column in ("rank", "modules", "scaling", "P", "step", "ft loss", "L_f", "KL"):
        table.add_column(column, justify="left" if column in ("modules", "scaling") else "right")
    for point in result.points:
        r = last.get(point.point_id)
        if r is None:
            continue
        modules = point.target_modules if isinstance(point.target_modules, str) else ",".join(point.target_modules)
        table.add_row(
            str(point.rank), modules, "rsLoRA" if point.rslora else "LoRA", f"{r['trainable_params']:,}",
            str(r["step"]), f"{r['ft_loss']:.3f}", f"{r['forgetting_ce']:.4f}", f"{r['kl']:.4f}",
        )
    console.print(table)
    console.print(
        f"{len(result.ran)} points run, {len(result.skipped)} already done; records: {result.directory / 'records.jsonl'}"
    )
    for point_id, error in result.failed.items():
        console.print(f"[red]failed[/red] {point_id}: {error}")
    if result.failed:
        console.print("run again with --retry-failed to retry the failed points")


def _pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.1%}"


def _coverage_text(interval: IntervalFit) -> str:
    parts = [f"{split.replace('_', ' ')} {c['with_model_error']:.0%} of {c['n']} (bootstrap alone {c['bootstrap']:.0%})"
             for split, c in interval["coverage"].items()]
    return f"95% forecast intervals cover the held-out points {', '.join(parts)}"


def _anchor_text(entry: LawFit, before: str = "", after: str = "") -> str:
    """How far an anchored law was moved onto its runs' last measurements, per arm ('' if not)."""
    anchor = entry.get("anchor")
    if not anchor:
        return ""
    moves = ", ".join(f"x{np.exp(o):.2f}" + (f" ({escape(a)})" if len(anchor["arms"]) > 1 else "") for a, o in zip(anchor["arms"], anchor["offsets"]))
    slowing = "; past them, slowing as KL rises" if anchor.get("saturation") else ""
    return f"{before}forecasts moved onto the runs' last measurements: {moves}{slowing}{after}"


def print_fit_tables(fits: Fits) -> None:
    """The selected law of each target with intervals, and every form's held-out error."""
    targets: tuple[Target, ...] = ("forgetting_ce", "kl", "ft_loss")
    for target in targets:
        entry = fits[target]
        validation = entry.get("validation", {})
        in_time, in_size = validation.get("in_time", {}), validation.get("in_size", {})
        table = Table(title=f"{target}: {entry.get('label', entry['form'])} law (R^2 {entry['r2']:.3f} in log space; "
                            f"median error forecasting in time {_pct(in_time.get('median_ape'))}, in size {_pct(in_size.get('median_ape'))})")
        if entry.get("members"):  # a mean of laws: the parameters shown are one member's
            table.caption = f"parameters of {entry['form']}, the member with the lowest selection error" + _anchor_text(entry, "; ")
        table.add_column("parameter")
        table.add_column("value", justify="right")
        table.add_column("95% interval", justify="right")
        for name, value in entry["params"].items():
            ci = entry["ci"].get(name)
            table.add_row(escape(name), f"{value:.4g}", f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "-")
        console.print(table)
        if entry.get("interval", {}).get("coverage"):
            console.print(f"{target}: {_coverage_text(entry['interval'])}")
        excess = {"forgetting_ce": " (of L_f - H_base)", "ft_loss": " (of the fine-tuning gain)"}.get(target, "")
        forms = Table(title=f"{target}: every form's forecast errors{excess}; * chosen on the selection split")
        for column in ("form", "selection median", "in time median", "in time max", "in size median", "in size max", "R^2 (all data)"):
            forms.add_column(column, justify="left" if column == "form" else "right", no_wrap=column == "form")
        columns: tuple[tuple[str, Literal["median_ape", "max_ape"]], ...] = (
            ("selection", "median_ape"), ("in_time", "median_ape"), ("in_time", "max_ape"), ("in_size", "median_ape"), ("in_size", "max_ape"))
        for label, values in entry["forms"].items():
            v = values.get("validation", {})
            cells = [_pct(v.get(split, {}).get(key)) for split, key in columns]
            forms.add_row(label + (" *" if label == entry["label"] else ""), *cells, f"{values['r2']:.3f}")
        console.print(forms)
    line = fits["linear"]
    console.print(f"L_f = {_line(line, 4)}   (R^2 {line['r2']:.3f}, n {line['n']})")
    for arm, fit in (line.get("per_arm") or {}).items():
        console.print(f"  {arm}: L_f = {_line(fit, 4)}   (R^2 {fit['r2']:.3f}, n {fit['n']})")
    domains = fits.get("domains") or {}
    if domains:
        console.print(
            f"most forgotten domain: {domains['most_hurt']}; closest to the fine-tuning data "
            f"(own loss rose least or fell most): {domains['closest_to_finetuning']}"
        )
    print_claims(fits)


def print_claims(fits: Fits) -> None:
    """The paper's claims and this sweep's verdict on each."""
    if not fits.get("claims"):
        return
    table = Table(title="The paper's claims on this sweep")
    for column in ("claim", "verdict", "the numbers"):
        table.add_column(column)
    for claim in fits["claims"]:
        table.add_row(escape(claim["claim"]), claim["verdict"], escape(claim["evidence"]))
    console.print(table)


def _pm(value: float, stderr: float | None, signed: bool = False) -> str:
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return text + (f" ± {stderr:.3f}" if stderr is not None else "")


def print_downstream_table(result: dict) -> None:
    """One row per task and metric: base, fine-tuned, difference, each ± its standard error."""
    from rich import box

    table = Table(title="Base against fine-tuned (± standard error; the difference's is paired over the examples)",
                  box=box.SIMPLE_HEAD)
    for column in ("task", "metric", "n", "base", "fine-tuned", "difference"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right", no_wrap=True)
    for row in result["comparison"]:
        arrow = {True: " ↑", False: " ↓", None: ""}[row["higher_is_better"]]  # which way is better
        table.add_row(
            row["task"], row["metric"] + arrow, str(row["n"]), _pm(row["base"], row["base_stderr"]),
            _pm(row["finetuned"], row["finetuned_stderr"]), _pm(row["difference"], row["difference_stderr"], signed=True),
        )
    Console(width=max(console.width, 100)).print(table)  # whole numbers even in an 80-column pipe


def print_synthetic_tables(results: dict) -> None:
    """Errors against k for every predictor, then forgetting and recovery per fine-tuning checkpoint."""
    from forgetscope.synthetic.plots import summary_rows

    ks = results["k"]
    shown = [k for k in (1, 2, 3, 5, 10, 15, 20, 30, 40) if k < len(ks)]
    for dist in ("continuous", "discrete"):
        table = Table(title=f"{dist} tasks: squared error / d against in-context examples k")
        for column in ("predictor", *(f"k={k}" for k in shown), "mean k>=1"):
            table.add_column(column, justify="left" if column == "predictor" else "right")
        rows = [(n, results["baselines"][dist][n]) for n in ("ridge", "discrete posterior", "mixture Bayes")]
        rows += [(label, by_gamma["1.0"]) for label, by_gamma in results["model"][dist].items()]
        for name, summary in rows:
            table.add_row(name, *(f"{summary['by_k'][k]:.3f}" for k in shown), f"{summary['mean']:.3f}")
        console.print(table)
    table = Table(title="Forgetting on continuous tasks and what conjugate prompting recovers (mean error / d, k>=1)")
    rows = summary_rows(results)
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "state" else "right")
    for row in rows:
        cells = []
        for key, value in row.items():
            if value is None:
                cells.append("-")
            elif isinstance(value, list):
                cells.append(", ".join("-" if v is None else f"{v:.0%}" for v in value))
            elif key == "recovered":
                cells.append(f"{value:.0%}")
            elif key == "best gamma":
                cells.append(f"{value:g}")
            elif isinstance(value, float):
                cells.append(f"{value:.3f}")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    console.print(table)
    ideal, plateau = results["ideal_bayes"], results["plateau"]
    rec = ideal["recovery"]
    console.print(
        f"ideal Bayes (continuous): {rec['pretrained_mean']:.3f} at pool weight {ideal['pretrained_weight']:g}, "
        f"{rec['finetuned_mean']:.3f} at {ideal['finetuned_weight']:g}, {rec['best_mean']:.3f} with gamma {rec['best_gamma']:g}"
    )
    console.print(
        f"pretraining plateau: {'escaped' if plateau['escaped'] else 'NOT escaped'} "
        f"(loss below halfway at step {plateau['escaped_at_step']}; {plateau['continuous_gap_closed']:.0%} of the gap "
        f"from predicting 0 to the mixture Bayes closed)"
    )


def print_conjugate_tables(results: list[dict]) -> None:
    """One table per transform: conflict-task scores, refusal rates, forgetting on its prompts."""
    for r in results:
        table = Table(title=f"{r['transform']}: {r['tasks']} conflict tasks (share following the in-context task)")
        for column in ("probe", "base", "fine-tuned", "drop"):
            table.add_column(column, justify="left" if column == "probe" else "right")
        table.add_row("in-context score", f"{r['base_score']:.3f}", f"{r['finetuned_score']:.3f}", f"{r['drop']:+.3f}")
        for kind, v in r["by_kind"].items():
            table.add_row(f"  {kind}", f"{v['base']:.3f}", f"{v['finetuned']:.3f}", f"{v['drop']:+.3f}")
        if r["refusal"] is not None:
            ref = r["refusal"]
            label = f"refusal rate (n={ref['n']}{', back-transformed' if ref['back_transformed'] else ''})"
            table.add_row(label, f"{ref['base']:.3f}", f"{ref['finetuned']:.3f}", f"{ref['drop']:+.3f}")
        f = r["forgetting"]
        table.add_row(f"KL on these prompts ({f['tokens']} tokens)", "", _fmt_ci(f, "kl").replace("\n", " "), "")
        table.add_row("L_f on these prompts", "", _fmt_ci(f, "forgetting_ce").replace("\n", " "), "")
        console.print(table)


def print_miniature(result: dict) -> None:
    """KL to the base after fine-tuning, per domain, on plain and transformed held-out text."""
    c = result["config"]
    table = Table(title=f"Miniature: fine-tuned on plain {c['finetune_domain']}; KL to the base (nats/token)")
    columns = ("held-out domain", "plain, per token", f"{c['transform']}, per token", f"{c['transform']}, same text")
    for column in columns:
        table.add_column(column, justify="left" if column == "held-out domain" else "right")
    rows = [(d + (" (fine-tuned on)" if d == c["finetune_domain"] else ""), v) for d, v in result["final"].items()]
    for name, v in rows + [("other domains", result["other_domains"])]:
        table.add_row(name, f"{v['plain']:.4f}", f"{v['transformed']:.4f}", f"{v['transformed_same_text']:.4f}")
    console.print(table)
    console.print("same text: the transformed text's KL summed over the same documents, per plain token")
    console.print(f"base: {result['base']}\ntook {result['seconds']:.0f} s (pretraining {result['pretrain_seconds_this_run']:.0f} s of it)")


def print_demo_intro() -> None:
    console.print("[bold]forgetscope demo[/bold]: a tiny Llama pretrained here on scripture, Python docs and code,")
    console.print("fine-tuned with rsLoRA on unseen Python code (8 runs: ranks 1-32 on all linear layers, 2 and 16 on q,v);")
    console.print("forgetting measured on held-out scripture and docs at 13 steps of each run.\n")


def print_demo(result, summary: dict, fits: Fits | None, out: Path) -> None:
    """The base model, the largest run step by step, every point at its end, and the fitted law."""
    tm = summary["tiny_metrics"]
    held = ", ".join(f"{d} {v:.3f}" for d, v in tm["heldout_loss"].items())
    console.print(
        f"\nbase model: {summary['base']}\n  {tm['parameters']:,} parameters "
        f"({tm['non_embedding_parameters']:,} non-embedding), held-out loss (nats/token): {held}"
    )
    largest = max(result.points, key=lambda p: (p.target_modules == "all-linear", p.rank))
    steps = [r for r in result.records if r["point_id"] == largest.point_id]
    if steps:
        print_records_table(steps, f"Forgetting over steps, rsLoRA r={largest.rank} on all linear layers (KL to the base, nats/token)")
    early = summary.get("in_run_forecast")
    if early:
        console.print(f"in-run forecast from steps up to {early['from_step']}: KL at step {early['planned_steps']} {early['kl']:.4f} "
                      f"[{early['low']:.4f}, {early['high']:.4f}], measured {early['measured']:.4f} (error {early['ape']:.1%})")
    print_sweep_summary(result)
    if fits is not None:
        line, kl = fits["linear"], fits["kl"]
        params = escape(", ".join(f"{k} {v:.3g}" for k, v in kl["params"].items()))
        validation = kl.get("validation", {})
        console.print(
            f"law of KL: {kl.get('label', kl['form'])} ("
            + (f"R^2 {kl['r2']:.3f}; its member {kl['form']}: {params})\n" if kl.get("members") else f"{params}; R^2 {kl['r2']:.3f})\n")
            + _anchor_text(kl, "  ", "\n")
            + f"  forecast error (median at the held-out runs' last steps): in time {_pct(validation.get('in_time', {}).get('median_ape'))}, "
            f"in size {_pct(validation.get('in_size', {}).get('median_ape'))}\n"
            + (f"  {_coverage_text(kl['interval'])}\n" if kl.get("interval", {}).get("coverage") else "") +
            f"L_f = {_line(line, 3)} (R^2 {line['r2']:.3f})"
        )
        print_claims(fits)
        console.print(f"report: {summary['report']}")
    console.print(f"summary: {out / 'demo.json'}\ntook {summary['seconds']:.0f} s")


def print_forecasts(forecasts: dict) -> None:
    first = next(iter(forecasts.values()))
    where = f"P={first['P']:,.0f}" + (f" ({first['module_set']})" if first.get("module_set") else "") + f", N={first['N']:,.0f}"
    for target, f in forecasts.items():
        console.print(f"{target:>14} at {where}: {f['value']:.4f}  [{f['low']:.4f}, {f['high']:.4f}]"
                      + (" (KL capped at a uniform prediction's cross-entropy, log V)" if f.get("capped_at_uniform") else ""))
    if not first["validated"]:
        console.print(f"beyond the validated range: intervals widened {first['interval_widening']:.2f}x in log space")


def print_budget(allowed: dict) -> None:
    def steps(value) -> str:
        return f"more than {allowed['searched_up_to']:,.0f}" if value is None else f"{value:,.0f}"

    console.print(f"KL stays within {allowed['budget']} for about {steps(allowed['steps'])} steps at P={allowed['P']:,.0f}"
                  + (f" ({allowed['module_set']})" if allowed.get("module_set") else "")
                  + f" (95% interval {steps(allowed['low'])} to {steps(allowed['high'])})")


def print_run_forecast(forecast: dict, budget: float | None) -> None:
    """The in-run forecast of the last measurement before the end."""
    crossing = forecast.get("budget_step")
    console.print(f"forecast from step {forecast['from_step']}: KL at step {forecast['planned_steps']} "
                  f"{forecast['kl']:.4f} [{forecast['low']:.4f}, {forecast['high']:.4f}]"
                  + (f"; the budget {budget:g} is crossed near step {crossing:,.0f}" if crossing is not None and budget else ""))


def print_mitigation(result: dict) -> None:
    """One row per method and setting: what it keeps of fine-tuning and what it forgets."""
    table = Table(title=f"Post-hoc mitigation (base ft_loss {result['base_ft_loss']:.4f}; gain: how far ft_loss fell from it)")
    for column in ("method", "setting", "KL", "L_f", "ft loss", "gain kept", "note"):
        table.add_column(column, justify="left" if column in ("method", "note") else "right")
    from forgetscope.mitigate.methods import METHODS

    full = max((r["ft_gain"] for r in result["rows"] if r["method"] in METHODS and r["setting"] == METHODS.get(r["method"]).full_setting),
               default=None)  # the fine-tune as it is: what each row keeps a share of
    chosen = result.get("chosen")
    for row in result["rows"]:
        kept = f"{row['ft_gain'] / full:.0%}" if full else "-"
        note = f"{row['intruders']} intruders" if "intruders" in row else ""
        if chosen is not None and (row["method"], row["setting"]) == (chosen["method"], chosen["setting"]):
            note = (note + "; " if note else "") + "[bold]chosen[/bold]"
        table.add_row(row["method"], f"{row['setting']:g}", f"{row['kl']:.4f}", f"{row['forgetting_ce']:.4f}",
                      f"{row['ft_loss']:.4f}", kept, note)
    console.print(table)
    for method, why in result.get("skipped", {}).items():
        console.print(f"{method}: skipped ({why})")
    if result.get("budget") is not None and chosen is None:
        console.print(f"no setting keeps KL within {result['budget']}")
    if result.get("saved"):
        console.print(f"saved: {result['saved']}")


def _line(fit: LinearFit, digits: int) -> str:
    """`7.553 - 0.463 * ft_loss` for a fitted intercept and slope."""
    sign = "-" if fit["slope"] < 0 else "+"
    return f"{fit['intercept']:.{digits}f} {sign} {abs(fit['slope']):.{digits}f} * ft_loss"
