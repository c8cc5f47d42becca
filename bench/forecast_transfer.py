"""Do forecasts transfer? Pilot sweeps forecast the larger and longer runs made after them.

Each scenario in `bench/forecast_transfer/NAME/` is a pilot sweep (`pilot.yaml`: ranks 1 to
8, 100 steps, two seeds per configuration) and target runs made afterwards (`targets.yaml`:
ranks up to 8x the pilot's largest, 400 steps). The scenarios differ in the fine-tuning
domain, the learning rate, the module set and LoRA against rsLoRA. Their records are stored
beside the configs, so the benchmark replays in seconds without training:

    python bench/forecast_transfer.py              # fit every pilot, forecast every target, print the tables
    python bench/forecast_transfer.py --run        # first (re)make the sweeps that are missing (resumable)
    python bench/forecast_transfer.py --scenario code-rslora-all --json

A target is a target run's measurement at the pilot's last step (when its rank is beyond the
pilot's) and at 2x and 4x the pilot's steps. The pilot is fitted with `fit`'s defaults and
forecast with `predict`'s machinery (`--extrapolate`, so every target gets a forecast);
`validated` says whether `predict` would have answered without it. A scenario's table
gives, per target, the forecast KL with its 95% interval and the measured KL, then the
median and largest error, the coverage of the intervals, their median width (high / low),
and how many forecasts `predict` would have given without `--extrapolate` (with their median
error). Then the in-run forecast (the callback's) of each target run's last KL from its
first 25% and 50%, with the pilot's law as a prior and without.

Leave one out: each scenario's forecasts past its pilot's steps slow as the other
scenarios' target runs did (`saturation_relation`, `laws.fit.Saturation`), and its
intervals take the slope the other scenarios' targets needed, so no scenario is judged by
what it helped to set. The relation and the slope measured on every scenario are printed
last: `BENCHMARK_SATURATION` and `BENCHMARK_SLOPE` in `forgetscope.laws.select`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent / "forecast_transfer"
CORPUS_ORDER = ROOT / "_corpus_order"
"""Scenarios made before sweeps sampled their fine-tuning documents (kept for comparison):
`--root bench/forecast_transfer/_corpus_order`."""
TARGETS = {"median_error": 0.20, "coverage": 0.80, "median_width": 2.5}
"""What the issue asks of the whole benchmark: median error, coverage of the 95% intervals,
median interval width (high / low)."""


def scenarios() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if (p / "pilot.yaml").is_file() or (p / "pilot" / "records.jsonl").is_file())


def make(name: str) -> None:
    """Run (or resume) a scenario's pilot and target sweeps into `ROOT/NAME/pilot|targets*`
    (target runs added later are a sweep of their own, `targets-2.yaml`, so the first resumes)."""
    from forgetscope.sweep.config import load_config
    from forgetscope.sweep.run import run_sweep

    for kind in ("pilot", *sorted(p.stem for p in (ROOT / name).glob("targets*.yaml"))):
        started = time.time()
        result = run_sweep(load_config(ROOT / name / f"{kind}.yaml"), ROOT / name / kind)
        print(f"{name}/{kind}: {len(result.ran)} ran, {len(result.skipped)} done before, {time.time() - started:.0f} s",
              file=sys.stderr)


def target_runs(name: str) -> dict[str, list[dict]]:
    """Every finished target run of a scenario, from each of its target sweeps."""
    return {k: v for directory in sorted((ROOT / name).glob("targets*")) if (directory / "records.jsonl").is_file()
            for k, v in last_records(directory).items()}


def last_records(directory: Path) -> dict[str, list[dict]]:
    """Each finished point's records, in step order."""
    from forgetscope.sweepdir import sweep_records

    records, _ = sweep_records(directory)
    runs: dict[str, list[dict]] = {}
    for r in records:
        runs.setdefault(r["point_id"], []).append(r)
    return {k: sorted(v, key=lambda r: r["step"]) for k, v in runs.items()}


def target_points(pilot: dict, runs: dict[str, list[dict]]) -> list[dict]:
    """The measurements each target run is judged at: 1x (rank beyond the pilot's), 2x and 4x
    the pilot's steps."""
    steps = pilot["steps"]
    out = []
    for point_id, records in runs.items():
        first = records[0]
        arm_ranks = pilot["ranks"].get(_arm(first, pilot), [])
        beyond = bool(arm_ranks) and first["rank"] > max(arm_ranks)
        for factor in ((1, 2, 4) if beyond else (2, 4)):
            at = [r for r in records if r["step"] == factor * steps]
            if at:
                out.append({"point_id": point_id, "rank": first["rank"], "arm": _arm(first, pilot), "step": factor * steps,
                            "P": first["trainable_params"], "learning_rate": first["learning_rate"], "kl": at[0]["kl"],
                            "rank_factor": first["rank"] / max(arm_ranks) if arm_ranks else float("nan"), "step_factor": factor})
    return out


def _arm(record: dict, pilot: dict) -> str:
    modules = record["target_modules"]
    name = modules if isinstance(modules, str) else ",".join(modules)
    return name + ((" rsLoRA" if record["rslora"] else " LoRA") if pilot["both_scalings"] else "")


def pilot_summary(directory: Path) -> dict:
    runs = last_records(directory)
    firsts = [v[0] for v in runs.values()]
    both = len({r["rslora"] for r in firsts}) > 1
    summary = {"steps": max(r["step"] for v in runs.values() for r in v), "both_scalings": both, "ranks": {}}
    for r in firsts:
        summary["ranks"].setdefault(_arm(r, summary), []).append(r["rank"])
        summary.setdefault("P", {})[_arm(r, summary)] = max(summary.get("P", {}).get(_arm(r, summary), 0), r["trainable_params"])
    return summary


def saturation_points(name: str) -> list[tuple[float, float]]:
    """`(log(KL / H_base), slope of log KL in log N over the next doubling)` of each target
    run from the pilot's last step and from twice it: how growth slowed past the pilot."""
    steps = pilot_summary(ROOT / name / "pilot")["steps"]
    points = []
    for records in target_runs(name).values():
        kl = {r["step"]: r["kl"] for r in records}
        for t in (steps, 2 * steps):
            if kl.get(t, 0) > 0 and kl.get(2 * t, 0) > 0:
                points.append((float(np.log(kl[t] / records[0]["base_entropy"])), float(np.log(kl[2 * t] / kl[t]) / np.log(2))))
    return points


def saturation_relation(names: list[str]) -> dict:
    """`laws.fit.Saturation`'s `a` and `b` fitted by least squares to these scenarios' target
    runs (`saturation_points`), with `BENCHMARK_SATURATION`'s weight."""
    from forgetscope.laws.select import BENCHMARK_SATURATION

    z, slope = np.array([p for name in names for p in saturation_points(name)]).T
    b, a = np.polyfit(z, slope, 1)
    return {"a": float(a), "b": float(b), "weight": BENCHMARK_SATURATION["weight"]}


def fit_pilot(name: str, n_bootstrap: int = 200, kl_law: str = "average", saturation: dict | None = None) -> tuple[dict, float]:
    """The scenario's pilot fitted as `fit` does (into a scratch copy), and the seconds it
    took; `saturation` as `fit_sweep` takes it (default `BENCHMARK_SATURATION`)."""
    import shutil
    import tempfile

    from forgetscope.laws.select import fit_sweep

    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "pilot"
        shutil.copytree(ROOT / name / "pilot", copy, ignore=shutil.ignore_patterns("fits.json", "report*", "*.png", ".lock"))
        started = time.perf_counter()
        fits = fit_sweep(copy, n_bootstrap=n_bootstrap, kl_law=kl_law, saturation=saturation)
        return fits, time.perf_counter() - started


def forecast_targets(name: str, fits: dict, transfer: tuple[float, int] | None = None) -> list[dict]:
    """Each target's forecast, as `predict --extrapolate` gives it. With `transfer` (a slope
    and how many targets needed it, measured without this scenario), the interval's slope is
    the pilot's own pooled with that, as `fit` pools its own with `BENCHMARK_SLOPE`."""
    from forgetscope.laws.fit import band_side, model_error
    from forgetscope.laws.forecast import Query, forecasts
    from forgetscope.laws.select import interval_slope

    interval = fits["kl"]["interval"]
    if transfer is not None and "slope_calibrated" in interval:
        slope = interval_slope(interval["slope_calibrated"], interval["n_calibration"], *transfer)
        fits = {**fits, "kl": {**fits["kl"], "interval": {**interval, "slope": slope}}}
    rows = []
    pilot = pilot_summary(ROOT / name / "pilot")
    for t in target_points(pilot, target_runs(name)):
        arms = fits.get("range", {}).get("arms", {})
        query = Query(P=t["P"], arm=t["arm"] if t["arm"] in arms else None, learning_rate=t["learning_rate"], extrapolate=True)
        kl = forecasts(fits, query, t["step"])["kl"]
        # doublings beyond the pilot: in P (its arm's largest) and in steps (one learning rate a scenario)
        reach = max(np.log2(t["P"] / pilot["P"][t["arm"]]), 0.0) + np.log2(t["step"] / pilot["steps"])
        log_error = np.log(kl["value"] / t["kl"])
        # the slope covers what the band's side toward the measurement and the floor leave
        side = band_side(log_error, kl["value"], kl["bootstrap_low"], kl["bootstrap_high"])
        floor = fits["kl"]["interval"].get("floor", 0.0)
        rows.append(t | {"forecast": kl["value"], "low": kl["low"], "high": kl["high"], "validated": kl["validated"],
                         "error": abs(kl["value"] - t["kl"]) / t["kl"], "inside": bool(kl["low"] <= t["kl"] <= kl["high"]),
                         "width": kl["high"] / kl["low"], "reach": float(reach),
                         "needed_slope": float(model_error(log_error, side, floor) / max(reach, 0.5))})
    return rows


def transfer_slope(rows: list[dict]) -> float:
    """The smallest interval slope under which all but 5% of `rows` (rounded down) are inside."""
    needed = np.sort([r["needed_slope"] for r in rows])
    return float(needed[max(len(needed) - 1 - int(0.05 * len(needed)), 0)]) if len(needed) else 0.0


def replay(name: str, n_bootstrap: int = 200, others: list[dict] | None = None, kl_law: str = "average",
           anchored: bool = True, saturation: dict | None = None) -> dict:
    """Fit the scenario's pilot and forecast each of its targets; with `others` (the other
    scenarios' target rows), the intervals take the slope those needed (leave one out).
    `anchored=False`: the averaged law without its anchor (`kl.anchor`), to measure what the
    anchor does (its interval slope stays the anchored law's). `saturation`: as `fit_sweep`
    takes it (`{}`: the law alone past the pilot's steps)."""
    fits, fit_seconds = fit_pilot(name, n_bootstrap, kl_law, saturation)
    if not anchored:
        fits = {**fits, "kl": {k: v for k, v in fits["kl"].items() if k != "anchor"}}
    slope = None if others is None else transfer_slope(others)
    rows = forecast_targets(name, fits, None if slope is None else (slope, len(others or [])))
    pilot = pilot_summary(ROOT / name / "pilot")
    return {"scenario": name, "law": fits["kl"].get("label"), "fit_seconds": fit_seconds, "targets": rows, "transfer_slope": slope,
            "summary": summarise(rows), "in_run": in_run(fits, pilot, target_runs(name)), "fits": fits}


def replay_all(names: list[str], n_bootstrap: int = 200, kl_law: str = "average", anchored: bool = True,
               saturating: bool = True) -> list[dict]:
    """Every scenario fitted once, its forecasts past the pilot's steps slowing as the other
    scenarios' target runs did (`saturation_relation`); its intervals then take the slope
    that the other scenarios' targets needed, so no scenario is judged by what it set.
    `saturating=False`: the law alone past the pilot's steps."""
    first = {name: replay(name, n_bootstrap, kl_law=kl_law, anchored=anchored,
                          saturation=saturation_relation([n for n in names if n != name]) if saturating else {})
             for name in names}
    results = []
    for name in names:
        others = [row for other, result in first.items() if other != name for row in result["targets"]]
        rows = forecast_targets(name, first[name]["fits"], (transfer_slope(others), len(others)))
        results.append(first[name] | {"targets": rows, "summary": summarise(rows), "transfer_slope": transfer_slope(others)})
    return results


def in_run(fits: dict, pilot: dict, runs: dict[str, list[dict]]) -> list[dict]:
    """The callback's forecast of each target run's last KL from its first 25% and 50%, with
    the pilot's law as a prior and without (`forecast_run`)."""
    try:
        from forgetscope.laws.forecast import Query, forecast_run, run_prior
    except ImportError:  # a forgetscope from before priors (PYTHONPATH=OLD/src, to compare): no in-run rows
        return []
    out = []
    for records in runs.values():
        first, last = records[0], records[-1]
        arm = _arm(first, pilot)
        prior = run_prior(fits, Query(P=first["trainable_params"], arm=arm if arm in fits["range"]["arms"] else None,
                                      learning_rate=first["learning_rate"], extrapolate=True))
        for share in (0.25, 0.5):
            seen = [r for r in records if r["step"] <= share * last["step"]]
            steps, kl = [r["step"] for r in seen], [r["kl"] for r in seen]
            row = {"arm": arm, "rank": first["rank"], "share": share, "kl": last["kl"]}
            for label, given in (("prior", prior), ("alone", None)):
                f = forecast_run(steps, kl, last["step"], prior=given)
                if f is not None:
                    row[label] = {"value": f["kl"], "error": abs(f["kl"] - last["kl"]) / last["kl"],
                                  "inside": bool(f["low"] <= last["kl"] <= f["high"]), "width": f["high"] / f["low"]}
            out.append(row)
    return out


def summarise(rows: list[dict]) -> dict:
    if not rows:
        return {"n": 0}
    errors = np.array([r["error"] for r in rows])
    validated = [r["error"] for r in rows if r["validated"]]
    return {"n": len(rows), "median_error": float(np.median(errors)), "max_error": float(errors.max()),
            "coverage": float(np.mean([r["inside"] for r in rows])), "median_width": float(np.median([r["width"] for r in rows])),
            "validated": len(validated), "validated_median_error": float(np.median(validated)) if validated else None}


def line(label: str, s: dict) -> str:
    if not s.get("n"):
        return f"{label:<26} no targets"
    validated = f"{s['validated']} ({s['validated_median_error']:.0%})" if s["validated"] else "0"
    return (f"{label:<26} {s['n']:>3} {s['median_error']:>8.1%} {s['max_error']:>8.1%} {s['coverage']:>9.0%} "
            f"{s['median_width']:>7.2f} {validated:>16}")


def main() -> None:
    global ROOT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run (or resume) the sweeps first; 7 to 10 min a tiny scenario, 5 to 6 h for all 35 on 2 cores")
    parser.add_argument("--scenario", action="append", help="only these scenarios (repeatable)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of each pilot's fit")
    parser.add_argument("--json", action="store_true", help="print every target as JSON instead of the tables")
    parser.add_argument("--root", type=Path, default=ROOT, help="folder of scenarios (default: the benchmark's)")
    parser.add_argument("--kl-law", choices=("average", "select"), default="average", help="as `fit --kl-law`")
    parser.add_argument("--no-anchor", action="store_true", help="the averaged law without its anchor at the pilot's last measurements")
    parser.add_argument("--no-saturation", action="store_true", help="the averaged law alone past the pilot's steps (no slowing with KL's level)")
    args = parser.parse_args()
    ROOT = args.root
    names = args.scenario or scenarios()
    if args.run:
        for name in names:
            make(name)
    names = [name for name in names if (ROOT / name / "targets" / "records.jsonl").is_file()]
    results = (replay_all(names, args.bootstrap, args.kl_law, not args.no_anchor, not args.no_saturation) if len(names) > 1
               else [replay(name, args.bootstrap, kl_law=args.kl_law, anchored=not args.no_anchor,
                            saturation={} if args.no_saturation else None) for name in names])
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "fits"} for r in results], indent=1))
        return
    header = f"{'':<26} {'n':>3} {'median':>8} {'max':>8} {'coverage':>9} {'width':>7} {'validated (error)':>16}"
    for result in results:
        slope = "" if result["transfer_slope"] is None else f", interval slope pooled with the others' {result['transfer_slope']:.3f}"
        print(f"\n{result['scenario']}: law {result['law']}, fitted in {result['fit_seconds']:.1f} s{slope}")
        print(f"  {'target':<22} {'step':>5} {'forecast [95%]':>26} {'measured':>9} {'error':>7}")
        for t in result["targets"]:
            interval = f"{t['forecast']:.3f} [{t['low']:.3f}, {t['high']:.3f}]"
            mark = "" if t["inside"] else "  outside"
            print(f"  {t['arm'] + ' r' + str(t['rank']):<22} {t['step']:>5} {interval:>26} {t['kl']:>9.3f} {t['error']:>7.1%}{mark}")
    print(f"\n{header}")
    for result in results:
        print(line(result["scenario"], result["summary"]))
    every = [t for r in results for t in r["targets"]]
    print(line("all", summarise(every)))
    print(f"{'target':<26} {'':>3} {TARGETS['median_error']:>8.0%} {'':>8} {TARGETS['coverage']:>9.0%} {TARGETS['median_width']:>7.2f}")
    if len(results) > 1:
        print(f"\ninterval slope all scenarios' targets needed: {transfer_slope(every):.3f} "
              "(forgetscope.laws.select.BENCHMARK_SLOPE, per --kl-law)")
        relation = saturation_relation([r["scenario"] for r in results])
        print(f"KL's growth past the pilots, all scenarios' target runs: a {relation['a']:.3f}, b {relation['b']:.3f} "
              "(forgetscope.laws.select.BENCHMARK_SATURATION)")
    print("\nin-run forecast of each target run's last KL (median error, coverage, median width):")
    for share in (0.25, 0.5):
        for label in ("prior", "alone"):
            got = [row[label] for r in results for row in r["in_run"] if row["share"] == share and label in row]
            if got:
                print(f"  from the first {share:.0%}, {'with the pilot law as prior' if label == 'prior' else 'without a prior':<30} "
                      f"{np.median([g['error'] for g in got]):>7.1%} {np.mean([g['inside'] for g in got]):>6.0%} "
                      f"{np.median([g['width'] for g in got]):>8.2f}  ({len(got)} runs)")


if __name__ == "__main__":
    main()
