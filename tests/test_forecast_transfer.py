"""The forecast benchmark (`bench/forecast_transfer.py`) replays from its stored records: each
pilot sweep is fitted as `fit` would, each target run made after it is forecast as `predict`
would, and the figures stay where they were measured. The records are real runs of the tiny
default; nothing is trained here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "forecast_transfer.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("forecast_transfer", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(bench):
    names = [n for n in bench.scenarios() if (bench.ROOT / n / "targets" / "records.jsonl").is_file()]
    return [bench.replay(name, n_bootstrap=100) for name in names]


def test_the_benchmark_has_scenarios_with_pilots_and_targets_stored(bench, results):
    assert len(bench.scenarios()) >= 6  # their configs; the records of those that were run
    assert len(results) >= 3
    for result in results:
        assert result["targets"], result["scenario"]
        steps = {t["step_factor"] for t in result["targets"]}
        largest = max(t["rank_factor"] for t in result["targets"])
        if result["scenario"].startswith("smollm2"):  # the real model's scenario is what fit on 2 cores
            assert 2 in steps and largest >= 4
        else:  # every tiny scenario forecasts 2x and 4x its pilot's steps, and 8x its largest rank
            assert {2, 4} <= steps and largest >= 8, result["scenario"]


def test_every_target_gets_a_forecast_with_an_interval_around_it(results):
    for result in results:
        for t in result["targets"]:
            assert 0 < t["low"] <= t["forecast"] <= t["high"], t
            assert np.isfinite(t["error"])


def test_the_figures_stay_within_what_was_measured(bench, results):
    every = bench.summarise([t for r in results for t in r["targets"]])
    # Measured on the stored records (docs/results/forecasts.md); a change to the laws
    # that makes them worse fails here.
    assert every["median_error"] <= MEASURED["median_error"] * 1.1 + 0.01, every
    assert every["coverage"] >= MEASURED["coverage"] - 0.05, every
    assert every["median_width"] <= MEASURED["median_width"] * 1.1, every
    # The targets on error and coverage are met; its width (2.5) is not.
    assert every["median_error"] <= bench.TARGETS["median_error"] and every["coverage"] >= bench.TARGETS["coverage"], every


def test_the_95_percent_intervals_hold_about_95_percent_of_the_targets_they_were_not_sized_on(bench, results):
    # Each scenario's intervals take the slope the other scenarios' targets needed. Sized as
    # issued (bootstrap band, seed noise and model error together) they hold 95% of the 282
    # (100 bootstrap resamples, median width 3.3); on the first 258, sized as if the model
    # error stood alone, 98% at 6.2: wider than the errors needed.
    rows = []
    for result in results:
        others = [t for other in results if other is not result for t in other["targets"]]
        rows += bench.forecast_targets(result["scenario"], result["fits"], (bench.transfer_slope(others), len(others)))
    coverage = bench.summarise(rows)["coverage"]
    assert 0.9 <= coverage <= 0.975, coverage


def test_the_in_run_forecast_of_every_target_run_is_made_with_and_without_the_pilot_law(results):
    rows = [row for r in results for row in r["in_run"]]
    assert {row["share"] for row in rows} == {0.25, 0.5}
    for row in rows:
        assert {"prior", "alone"} <= set(row), row
        assert np.isfinite(row["prior"]["error"]) and row["prior"]["width"] >= 1


def test_on_the_scenarios_made_after_it_was_fixed_the_averaged_laws_worst_miss_is_far_smaller(bench):
    # `fit --kl-law average` was chosen on the first seven scenarios; these were run after. Its
    # median error there is no better than the selected form's; its worst miss is.
    worst = {}
    for law in ("average", "select"):
        rows = [t for name in HELD_OUT for t in bench.replay(name, n_bootstrap=0, kl_law=law)["targets"]]
        worst[law] = bench.summarise(rows)["max_error"]
    assert worst["average"] < worst["select"] / 2, worst


def test_on_the_scenarios_made_after_it_was_fixed_the_anchor_is_about_even_and_its_worst_miss_less(bench):
    # The anchor (`laws.fit.Anchored`) was chosen on the eleven scenarios before these eighteen.
    # With fits that reach their minimum it is about even there: median 22.6% against 22.4%,
    # better on 73 of 144 targets; its worst miss is smaller (209% against 217%).
    errors = {anchored: np.array([t["error"] for name in HELD_OUT_ANCHOR  # the law alone past the pilots, as then
                                  for t in bench.replay(name, n_bootstrap=0, anchored=anchored, saturation={})["targets"]])
              for anchored in (True, False)}
    assert len(errors[True]) == 144
    assert np.mean(errors[True] < errors[False]) >= 0.5
    assert errors[True].max() < errors[False].max()


def test_on_the_scenarios_made_after_the_fits_were_fixed_they_err_less_than_before_in_the_median(bench):
    # Fits that reach their minimum (L-BFGS-B, bending forms that never turn down) were fixed
    # on the 186 targets before the sixth and seventh sets; on their 48 they erred 17.7%
    # (median), the fits of before (commit fd6934e) 21.0%: 12.2% against 25.3% on the sixth,
    # 25.9% against 17.7% on the seventh. Their worst miss is larger (157% against 141%).
    rows = [t for name in HELD_OUT_FITS for t in bench.replay(name, n_bootstrap=0, saturation={})["targets"]]  # the law alone, as then
    assert len(rows) == 48
    assert bench.summarise(rows)["median_error"] <= 0.19


def test_on_the_scenarios_made_after_it_was_fixed_slowing_past_the_pilot_errs_less(bench):
    # `laws.fit.Saturation` was fitted (and its weight chosen) on the first 32 scenarios; these
    # three were configured and committed before it was written, and run after. On their 24
    # targets: 14.4% median error, worst 103%, against 26.6% and 344% with the law alone.
    errors = {label: [t["error"] for name in HELD_OUT_SATURATION
                      for t in bench.replay(name, n_bootstrap=0, saturation=saturation)["targets"]]
              for label, saturation in (("slowing", SATURATION_OF_THE_FIRST_32), ("alone", {}))}
    assert len(errors["slowing"]) == 24
    assert np.median(errors["slowing"]) <= 0.16 and np.median(errors["alone"]) >= 0.25, {k: np.median(v) for k, v in errors.items()}
    assert max(errors["slowing"]) < max(errors["alone"]) / 2


def test_what_predict_calls_validated_held_on_the_benchmark(bench, results):
    validated = [t for r in results for t in r["targets"] if t["validated"]]
    assert len(validated) >= 10
    assert bench.summarise(validated)["median_error"] <= 0.2  # measured: 14.4% over 75 targets


HELD_OUT = ("code-rslora-attn", "docs-lora-qv", "docs-rslora-mlp", "scripture-lora-attn")
HELD_OUT_ANCHOR = ("code-lora-qv", "docs-lora-all", "scripture-rslora-mlp", "code-rslora-mlp", "docs-rslora-qv", "scripture-rslora-all",
                   "code-lora-attn", "docs-lora-mlp", "scripture-lora-mlp", "code-lora-all", "docs-lora-attn", "scripture-rslora-attn",
                   "code-rslora-qv", "scripture-lora-qv", "docs-rslora-all", "scripture-lora-all", "code-lora-mlp-2e3", "docs-lora-attn-5e4")
HELD_OUT_FITS = ("code-rslora-qv", "scripture-lora-qv", "docs-rslora-all", "scripture-lora-all", "code-lora-mlp-2e3", "docs-lora-attn-5e4")
HELD_OUT_SATURATION = ("code-lora-qv-5e4", "docs-rslora-mlp-2e3", "scripture-rslora-all-5e4")
SATURATION_OF_THE_FIRST_32 = {"a": -0.395, "b": -0.350, "weight": 0.3}
MEASURED = {"median_error": 0.167, "coverage": 0.957, "median_width": 3.30}
"""The replay above (`fit` defaults, `--kl-law average`; 282 targets in 35 scenarios), as
`bench/forecast_transfer.py` prints it but with each pilot's forecasts past its steps slowing
by `BENCHMARK_SATURATION` and its interval slope pooled with `BENCHMARK_SLOPE` (both measured
on every scenario, this one too) instead of the others'. The issue's width (2.5) is not met:
this guards what was reached, not what was asked."""
