"""`forgetscope`: a thin typer front over the same functions Python users call.

Exit codes: 0 success, 2 bad input (one line `error: ...` on stderr), 1 anything unexpected.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from forgetscope.errors import UserInputError

app = typer.Typer(
    help="Measure, explain, predict and mitigate forgetting in LoRA / rsLoRA fine-tunes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()


def _max_positions(model) -> int | None:
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def _check_seq_len(model, seq_len: int) -> None:
    limit = _max_positions(model)
    if limit is not None and seq_len > limit:
        raise UserInputError(f"--seq-len {seq_len} exceeds the model's context of {limit} positions")


def _check_files_exist(paths: list[Path], what: str) -> None:
    for path in paths:
        if not path.is_file():
            raise UserInputError(f"{what} not found: {path}")


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
    console.print(table)


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


@app.command()
def measure(
    base: Annotated[str, typer.Option(help="Base model: a local directory or a hub id.")],
    eval_data: Annotated[list[Path], typer.Option(help="Held-out text: .txt, .jsonl or .parquet; repeat for several files.")],
    finetuned: Annotated[str | None, typer.Option(help="Fine-tuned model (full weights): directory or hub id.")] = None,
    adapter: Annotated[str | None, typer.Option(help="PEFT adapter directory fine-tuned from --base.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Token budget per domain (whole sequences).")] = 65536,
    seq_len: Annotated[int, typer.Option(help="Tokens per eval sequence.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 (reductions stay float32/64).")] = "float32",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps or auto.")] = "auto",
    text_column: Annotated[str, typer.Option(help="Text column of JSONL / Parquet files.")] = "text",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals (0: none).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    sequences: Annotated[Path | None, typer.Option(help="Also write per-sequence values to this JSONL file.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="With --adapter: keep the base model's recorded predictions here and reuse them for later adapters of the same base on the same text.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Forgetting of an existing fine-tune against its base on held-out text (L_f, KL, ...)."""
    from forgetscope.base_cache import choose_base_source
    from forgetscope.data import load_eval_blocks
    from forgetscope.metric import measure_forgetting
    from forgetscope.models import load_pair

    if batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {batch_size}")
    _check_files_exist(eval_data, "eval data file")  # before loading a large model, not after
    pair = load_pair(base, finetuned=finetuned, adapter=adapter, dtype=dtype, device=device)
    _check_seq_len(pair.finetuned, seq_len)
    blocks = load_eval_blocks(eval_data, pair.tokenizer, seq_len, max_tokens, text_column)
    source = choose_base_source(pair.finetuned, blocks, base=pair.base, cache_dir=cache_dir, batch_size=batch_size)
    result = measure_forgetting(
        pair.finetuned, blocks, base=source, batch_size=batch_size, n_bootstrap=bootstrap, seed=seed, progress=not as_json,
    )
    if sequences is not None:
        sequences.parent.mkdir(parents=True, exist_ok=True)
        sequences.write_text("".join(json.dumps(row) + "\n" for row in result.sequences))
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        print_measure_table(result.to_dict())


@app.command()
def train(
    base: Annotated[str, typer.Option(help="Base model: a local directory or a hub id.")],
    train_data: Annotated[list[Path], typer.Option(help="Fine-tuning text (.txt, .jsonl, .parquet).")],
    eval_data: Annotated[list[Path], typer.Option(help="Held-out pretraining-like text to measure forgetting on.")],
    out: Annotated[Path, typer.Option(help="Output directory: records.jsonl, adapter/, run.json.")],
    ft_eval_data: Annotated[list[Path] | None, typer.Option(help="Held-out fine-tuning text (default: a seeded random 5% of --train-data's sequences, at most --eval-tokens).")] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    alpha: Annotated[float, typer.Option(help="LoRA alpha.")] = 16.0,
    target_modules: Annotated[str, typer.Option(help="Comma-separated module names, or all-linear.")] = "all-linear",
    layers: Annotated[str | None, typer.Option(help="Comma-separated block indices to adapt (default all).")] = None,
    dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.0,
    rslora: Annotated[bool, typer.Option("--rslora/--no-rslora", help="alpha/sqrt(r) scaling (rsLoRA) or alpha/r.")] = True,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 200,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 8,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = 512,
    eval_points: Annotated[int, typer.Option(help="Log-spaced forgetting measurements, step 0 included.")] = 8,
    eval_tokens: Annotated[int, typer.Option(help="Eval token budget per domain, and of the held-out fine-tuning text (the default keeps the 8 measurements at about 6% of the time of 200 steps of 8 x 512 tokens; see bench/train_overhead.py).")] = 4096,
    seed: Annotated[int, typer.Option(help="Seed for adapter init and data order.")] = 0,
    dtype: Annotated[str, typer.Option(help="float32, or bfloat16 for mixed-precision (autocast) training.")] = "float32",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps or auto.")] = "auto",
    report_to: Annotated[str, typer.Option(help="Trainer integrations, comma-separated (tensorboard, wandb, mlflow) or none.")] = "none",
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:
    """One LoRA / rsLoRA fine-tune with forgetting measured at log-spaced steps."""
    import torch

    from forgetscope.data import group_into_blocks, load_eval_blocks, read_domains, split_validation
    from forgetscope.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype
    from forgetscope.train import LoraSettings, TrainSettings, finetune

    modules = target_modules if target_modules == "all-linear" else [m.strip() for m in target_modules.split(",") if m.strip()]
    try:
        layer_ids = None if layers is None else [int(x) for x in layers.split(",")]
    except ValueError:
        raise UserInputError(f"--layers must be comma-separated integers, got {layers!r}") from None
    lora = LoraSettings(rank=rank, alpha=alpha, target_modules=modules, layers=layer_ids, dropout=dropout, rslora=rslora)
    settings = TrainSettings(
        steps=steps, learning_rate=learning_rate, batch_size=batch_size, seq_len=seq_len, eval_points=eval_points,
        seed=seed, bf16=resolve_dtype(dtype) == torch.bfloat16,
        report_to=[] if report_to == "none" else report_to.split(","),
    )
    _check_files_exist([*train_data, *eval_data, *(ft_eval_data or [])], "data file")
    tokenizer = load_tokenizer(base)
    model = load_causal_lm(base, device=resolve_device(device))
    _check_seq_len(model, seq_len)
    docs = [d for texts in read_domains(train_data).values() for d in texts]
    train_blocks = group_into_blocks(docs, tokenizer, seq_len)
    if ft_eval_data:
        ft_eval = torch.cat(list(load_eval_blocks(ft_eval_data, tokenizer, seq_len, eval_tokens).values()))
    else:
        # 5% of the text, at most the eval budget: its cost at every measurement stays bounded.
        train_blocks, ft_eval = split_validation(train_blocks, min(train_blocks.numel() // 20, eval_tokens), seed)
    eval_blocks = load_eval_blocks(eval_data, tokenizer, seq_len, eval_tokens)
    records = finetune(model, tokenizer, lora, settings, train_blocks, eval_blocks, ft_eval, out, progress=not as_json)
    if as_json:
        print(json.dumps(records))
    else:
        print_records_table(records, f"Forgetting during fine-tuning ({'rsLoRA' if rslora else 'LoRA'} r={rank})")
        console.print(f"records: {out / 'records.jsonl'}\nadapter: {out / 'adapter'}")


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


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="Sweep config (YAML); see examples/.")],
    out: Annotated[Path | None, typer.Option(help="Sweep directory (default sweeps/NAME); an existing one is resumed.")] = None,
    executor: Annotated[str, typer.Option(help="Where points run: local (one after another here), ray, or submitit (Slurm).")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster to join (e.g. auto or HOST:6379); default starts a local one.")] = None,
    executor_option: Annotated[list[str] | None, typer.Option(
        "--executor-option", help="KEY=VALUE for the executor, repeatable (submitit: cluster, folder, timeout_min, partition).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run the points that failed before again.")] = False,
) -> None:
    """Run or resume a grid of LoRA / rsLoRA fine-tunes, storing every record as it arrives."""
    from forgetscope.sweep.config import load_config
    from forgetscope.sweep.run import run_sweep

    options = {}
    for pair in executor_option or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError(f"--executor-option takes KEY=VALUE, got {pair!r}")
        options[key] = value
    if address is not None:
        if executor != "ray":
            raise UserInputError("--address joins a Ray cluster: use it with --executor ray")
        options["address"] = address
    sweep_config = load_config(config)
    result = run_sweep(sweep_config, out or Path("sweeps") / sweep_config.name, executor, options, retry_failed)
    print_sweep_summary(result)


def print_fit_tables(fits: dict) -> None:
    """The selected law of each target with intervals, and every form's held-out error."""
    for target in ("forgetting_ce", "kl", "ft_loss"):
        entry = fits[target]
        table = Table(title=f"{target}: {entry['form']} law, shift {entry['shift']} "
                            f"(R^2 {entry['r2']:.3f} in log space, held-out MAPE {entry['heldout_mape']:.2%})")
        table.add_column("parameter")
        table.add_column("value", justify="right")
        table.add_column("95% interval", justify="right")
        for name, value in entry["params"].items():
            ci = entry["ci"].get(name)
            table.add_row(name, f"{value:.4g}", f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "-")
        console.print(table)
        forms = Table(title=f"{target}: candidate forms, fitted without the largest P and the latest steps")
        for column in ("form", "held-out MAPE", "held-out log RMSE", "R^2 (all data)"):
            forms.add_column(column, justify="left" if column == "form" else "right")
        for label, values in entry["forms"].items():
            forms.add_row(label + (" *" if label == entry["label"] else ""),
                          f"{values['heldout_mape']:.2%}", f"{values['heldout_log_rmse']:.4f}", f"{values['r2']:.3f}")
        console.print(forms)
    line = fits["linear"]
    console.print(f"L_f = {line['intercept']:.4f} + {line['slope']:.4f} * ft_loss   (R^2 {line['r2']:.3f}, n {line['n']})")
    domains = fits.get("domains") or {}
    if domains:
        console.print(
            f"most forgotten domain: {domains['most_hurt']}; closest to the fine-tuning data "
            f"(own loss rose least or fell most): {domains['closest_to_finetuning']}"
        )


@app.command()
def fit(
    directory: Annotated[Path, typer.Argument(help="Sweep directory (its records.jsonl is all that is read).")],
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of whole runs for the intervals.")] = 1000,
    holdout: Annotated[float, typer.Option(help="Fraction of each run's last steps held out for validation.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print fits.json instead of tables.")] = False,
) -> None:
    """Fit the scaling laws of forgetting on a sweep; writes DIR/fits.json."""
    from forgetscope.laws.select import fit_sweep

    if bootstrap < 0 or not 0 < holdout < 1:
        raise UserInputError("--bootstrap must be >= 0 and --holdout in (0, 1)")
    fits = fit_sweep(directory, bootstrap, seed, holdout)
    if as_json:
        print(json.dumps(fits))
    else:
        print_fit_tables(fits)
        console.print(f"fits: {directory / 'fits.json'}")


@app.command()
def predict(
    directory: Annotated[Path, typer.Argument(help="Sweep directory with fits.json (run `forgetscope fit` first).")],
    params: Annotated[float, typer.Option(help="Trainable non-embedding parameters P of the planned fine-tune.")],
    steps: Annotated[float | None, typer.Option(help="Planned update steps N.")] = None,
    budget: Annotated[float | None, typer.Option(help="Forgetting budget (KL, nats/token): the largest N within it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Forecast forgetting for a configuration not yet run, or the steps a forgetting budget allows."""
    from forgetscope.laws.forecast import budget_steps
    from forgetscope.laws.forecast import predict as forecast
    from forgetscope.laws.select import load_fits

    if (steps is None) == (budget is None):
        raise UserInputError("give exactly one of --steps (forecast forgetting) or --budget (forecast steps)")
    fits = load_fits(directory)
    if steps is not None:
        out = {t: forecast(fits, t, params, steps) for t in ("forgetting_ce", "kl", "ft_loss")}
        if not as_json:
            for t, f in out.items():
                console.print(f"{t:>14} at P={params:,.0f}, N={steps:,.0f}: {f['value']:.4f}  [{f['low']:.4f}, {f['high']:.4f}]")
    else:
        out = budget_steps(fits, params, budget)
        if not as_json:
            console.print(f"KL stays within {budget} for about {out['steps']:,.0f} steps at P={params:,.0f} "
                          f"(95% interval {out['low']:,.0f} to {out['high']:,.0f})")
    if as_json:
        print(json.dumps(out))


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="Sweep directory.")],
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the bands and intervals.")] = 1000,
) -> None:
    """Fit the laws and write DIR/report.html (self-contained) and its PNG plots."""
    from forgetscope.report import write_report

    console.print(f"report: {write_report(directory, bootstrap)}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where to write the demo's sweep (resumed if it is there).")] = Path("forgetscope-demo"),
) -> None:
    """The embedded default end to end: pretrain a tiny Llama (cached), sweep rsLoRA fine-tunes, watch forgetting."""
    from forgetscope.demo import run_demo

    console.print("[bold]forgetscope demo[/bold]: a tiny Llama pretrained here on scripture, Python docs and code,")
    console.print("fine-tuned with rsLoRA on unseen Python code (8 runs: ranks 1-64, attention or all linear layers);")
    console.print("forgetting measured on held-out scripture and docs.\n")
    result, summary = run_demo(out)
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
    print_sweep_summary(result)
    if summary["report"]:
        fits = json.loads((out / "sweep" / "fits.json").read_text())
        line, kl = fits["linear"], fits["kl"]
        params = ", ".join(f"{k} {v:.3g}" for k, v in kl["params"].items())
        console.print(
            f"law of KL: {kl['form']} ({params}; R^2 {kl['r2']:.3f}, held-out MAPE {kl['heldout_mape']:.1%})\n"
            f"L_f = {line['intercept']:.3f} {line['slope']:+.3f} * ft_loss (R^2 {line['r2']:.3f})"
        )
        console.print(f"report: {summary['report']}")
    console.print(f"summary: {out / 'demo.json'}\ntook {summary['seconds']:.0f} s")


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


@app.command("eval")
def eval_command(
    base: Annotated[str, typer.Option(help="Base model: a local directory or a hub id.")],
    finetuned: Annotated[str | None, typer.Option(help="Fine-tuned model (full weights): directory or hub id.")] = None,
    adapter: Annotated[str | None, typer.Option(help="PEFT adapter directory fine-tuned from --base.")] = None,
    suite: Annotated[str, typer.Option(help="knowledge (MMLU), reasoning (ARC, HellaSwag, WinoGrande, PIQA), safety (refusals), tiny (offline), or comma-separated lm-eval task names.")] = "tiny",
    limit: Annotated[int | None, typer.Option(help="At most this many examples per task.")] = None,
    num_fewshot: Annotated[int | None, typer.Option(help="Few-shot examples in each prompt (default: each task's own).")] = None,
    batch_size: Annotated[int, typer.Option(help="Requests per forward pass.")] = 8,
    harmful: Annotated[Path | None, typer.Option(help="Harmful instructions for the safety suite (.txt one a line, or .csv with a goal column); default AdvBench from the hub.")] = None,
    judge: Annotated[str | None, typer.Option(help="Refusal judge module:function(prompt, response) -> bool; default refusal phrases.")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps or auto.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Benchmarks through lm-evaluation-harness, base against fine-tuned: what forgetting costs on tasks users know."""
    from forgetscope.downstream.evaluate import EvalSettings, evaluate_pair, strip_examples

    settings = EvalSettings(suite=suite, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
                            harmful=None if harmful is None else str(harmful), judge=judge)
    result = evaluate_pair(base, finetuned, adapter, settings, device=device, dtype=dtype)
    if as_json:
        print(json.dumps({**result, "base": strip_examples(result["base"]), "finetuned": strip_examples(result["finetuned"])}))
    else:
        print_downstream_table(result)
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


@app.command()
def synthetic(
    config: Annotated[Path | None, typer.Option(help="Experiment config (YAML); default: the shipped cpu.yaml. `paper` names the shipped paper-scale one.")] = None,
    out: Annotated[Path, typer.Option(help="Where to write results.json, the PNGs and index.html.")] = Path("synthetic-out"),
    seed: Annotated[int | None, typer.Option(help="Override the config's seed.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON instead of tables.")] = False,
) -> None:
    """In-context regression: pretrain on a task mixture, fine-tune on the discrete pool, measure forgetting and conjugate prompting."""
    from forgetscope.synthetic.config import load_config
    from forgetscope.synthetic.experiment import run_experiment
    from forgetscope.synthetic.plots import write_outputs

    settings = load_config(config, seed=seed)
    results = run_experiment(settings)
    write_outputs(results, out)
    if as_json:
        print(json.dumps(results))
        return
    print_synthetic_tables(results)
    console.print(f"results: {out / 'results.json'}, plots and {out / 'index.html'}; took {results['seconds']['total']:.0f} s")


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


@app.command()
def conjugate(
    base: Annotated[str | None, typer.Option(help="Base model: a local directory or a hub id.")] = None,
    finetuned: Annotated[str | None, typer.Option(help="Fine-tuned model (full weights).")] = None,
    adapter: Annotated[str | None, typer.Option(help="PEFT adapter fine-tuned from --base.")] = None,
    transform: Annotated[list[str], typer.Option(help="Comma-separated transforms: plain, leetspeak, piglatin, piglatin-hyphen, translate:MODEL[:BACK], parallel:SRC,TGT.")] = None,
    sentences: Annotated[Path | None, typer.Option(help="Sentences for the conflict tasks, one a line (default: built-in ones).")] = None,
    harmful: Annotated[Path | None, typer.Option(help="Harmful instructions for the refusal probe (.csv with a goal column, e.g. AdvBench, or one a line).")] = None,
    judge: Annotated[str | None, typer.Option(help="Refusal judge module:function(instruction, response) -> bool (default: refusal phrases).")] = None,
    tasks_per_kind: Annotated[int, typer.Option(help="Conflict tasks per (task, final input) pair; 4 pairs.")] = 8,
    refusal_tokens: Annotated[int, typer.Option(help="Tokens generated per harmful instruction.")] = 32,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the KL intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the tasks, the bootstrap, and the miniature experiment.")] = 0,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps or auto.")] = "auto",
    miniature: Annotated[bool, typer.Option("--miniature", help="Run the offline miniature experiment instead (no models needed).")] = False,
    miniature_transform: Annotated[str, typer.Option(help="Language of the miniature: piglatin or leetspeak.")] = "piglatin",
    miniature_finetune: Annotated[str, typer.Option(help="Domain the miniature fine-tunes on: code, scripture or docs.")] = "scripture",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Conjugate prompting: do base and fine-tune differ less when the prompt is transformed?"""
    if transform is None:
        transform = ["plain,leetspeak,piglatin"]
    if miniature:
        from forgetscope.conjugate.miniature import MiniatureConfig, run_miniature

        config = MiniatureConfig(transform=miniature_transform, finetune_domain=miniature_finetune, seed=seed)
        # The Trainer prints its logs to stdout; with --json, stdout holds the JSON only.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            result = run_miniature(config, progress=not as_json)
        if as_json:
            print(json.dumps(result))
        else:
            print_miniature(result)
        return
    from forgetscope.conjugate.probes import parse_transform_specs, run_probes
    from forgetscope.conjugate.tasks import DEFAULT_SENTENCES, read_sentences
    from forgetscope.conjugate.transforms import get_transform
    from forgetscope.judges import load_judge, read_instructions
    from forgetscope.models import load_pair

    if base is None:
        raise UserInputError("give --base (and --finetuned or --adapter), or --miniature")
    if tasks_per_kind < 1 or refusal_tokens < 1:
        raise UserInputError("--tasks-per-kind and --refusal-tokens must be at least 1")
    # Everything cheap is checked before a large model is loaded.
    texts = read_sentences(sentences) if sentences is not None else DEFAULT_SENTENCES
    instructions = read_instructions(harmful) if harmful is not None else None
    judge_fn = load_judge(judge)
    transforms = [get_transform(spec) for spec in parse_transform_specs(transform)]
    pair = load_pair(base, finetuned=finetuned, adapter=adapter, dtype=dtype, device=device)
    results = run_probes(
        pair.finetuned, pair.base, pair.tokenizer, transforms, texts, instructions, judge_fn, tasks_per_kind,
        refusal_tokens=refusal_tokens, n_bootstrap=bootstrap, seed=seed, progress=not as_json,
    )
    if as_json:
        print(json.dumps(results))
    else:
        print_conjugate_tables(results)


def main() -> None:
    """Entry point: map bad input to exit 2 with one line, and keep tracebacks for bugs."""
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # transformers 5 vs peft
    if not sys.stderr.isatty():  # scripts and CI: no weight-loading bars around the output
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        code = app(standalone_mode=False)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # Usage errors (a missing or malformed option) are click exceptions; typer vendors
        # its own click, so recognise them by their interface rather than their class.
        if callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int):
            print(f"error: {exc.format_message()}", file=sys.stderr)
            sys.exit(2)
        raise
    if isinstance(code, int) and code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
