"""`forgetscope demo`: the whole pipeline on the embedded tiny default, offline, on a CPU.

1. pretrain the tiny Llama on scripture + docs + part of the Python standard library
   (cached after the first run);
2. sweep rsLoRA fine-tunes of it on Python code files it never saw: six ranks on every
   linear layer, two on the attention's q and v projections (`sweep/demo.yaml`);
3. measure forgetting on held-out scripture and docs at 13 steps of every run, most past
   the bend of the curves, next to the held-out loss on code (`ft_loss`);
4. store it all as a sweep directory, resumable like any other;
5. fit the scaling laws of forgetting, validated in time and in size, and write the HTML
   report; forecast the largest run's last step from its first quarter, as the callback
   would while it runs.
"""

from __future__ import annotations

import json
import time
from importlib.resources import files
from pathlib import Path

import yaml

from forgetscope.files import write_atomically
from forgetscope.laws.forecast import forecast_run
from forgetscope.laws.select import TARGETS, fit_sweep
from forgetscope.report import write_report
from forgetscope.sweep.config import SweepConfig, parse_config
from forgetscope.sweep.run import SweepResult, run_sweep
from forgetscope.tiny.model import TinyConfig, ensure_tiny_base, tiny_metrics


def demo_config() -> SweepConfig:
    """The sweep the demo runs, from the YAML shipped with the package."""
    text = files("forgetscope.sweep").joinpath("demo.yaml").read_text()
    return parse_config(yaml.safe_load(text), "demo.yaml")


def run_demo(
    out_dir: str | Path,
    config: SweepConfig | None = None,
    tiny: TinyConfig = TinyConfig(),
    cache_dir: Path | None = None,
    progress: bool = True,
) -> tuple[SweepResult, dict]:
    """Run the demo sweep into `out_dir/sweep`; return the sweep and a summary (also in `out_dir/demo.json`)."""
    started = time.time()
    config = (config or demo_config()).model_copy(deep=True)
    out = Path(out_dir)
    if config.base_model == "tiny":
        config.base_model = str(ensure_tiny_base(tiny, cache_dir, progress))
    result = run_sweep(config, out / "sweep", progress=progress)
    report, laws = None, None
    if not result.failed:
        fits = fit_sweep(out / "sweep")  # fitted again on every run, so a resumed demo shows this version's laws
        laws = {target: {"form": fits[target].get("label", fits[target]["form"]),
                         "median_ape": {split: v.get("median_ape") for split, v in fits[target].get("validation", {}).items()}}
                for target in TARGETS}
        report = write_report(out / "sweep")
    summary_path = out / "demo.json"
    earlier = json.loads(summary_path.read_text()).get("runs", []) if summary_path.is_file() else []
    seconds = round(time.time() - started, 1)
    summary = {
        "base": config.base_model,
        "in_run_forecast": in_run_forecast(result),
        "tiny_metrics": tiny_metrics(Path(config.base_model)),
        "sweep": str(out / "sweep"),
        "points": len(result.points),
        "failed": result.failed,
        "report": str(report) if report else None,
        "laws": laws,
        "seconds": seconds,
        # every run of the demo on this folder: a resumed one does not hide the first one's time
        "runs": [*earlier, {"seconds": seconds, "points_run": len(result.ran), "points_skipped": len(result.skipped)}],
    }
    write_atomically(summary_path, json.dumps(summary, indent=2))
    return result, summary


def in_run_forecast(result: SweepResult, share: float = 0.25) -> dict | None:
    """The largest run's KL at its last step, forecast from its first `share` of steps (what
    `ForgettingCallback(budget=...)` logs mid-run), against what it measured."""
    if not result.records:
        return None
    largest = max(result.records, key=lambda r: (r["trainable_params"], r["step"]))
    run = sorted((r for r in result.records if r["point_id"] == largest["point_id"]), key=lambda r: r["step"])
    last = run[-1]["step"]
    early = [r for r in run if r["step"] <= share * last]
    forecast = forecast_run([r["step"] for r in early], [r["kl"] for r in early], last)
    if forecast is None:
        return None
    measured = run[-1]["kl"]
    return {**forecast, "point_id": largest["point_id"], "measured": measured,
            "ape": abs(forecast["kl"] - measured) / measured, "covered": forecast["low"] <= measured <= forecast["high"]}
