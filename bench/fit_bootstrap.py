"""How long fitting a law takes: 200 measurements (10 runs x 20 steps), 1,000 bootstrap
resamples of whole runs. The batched bootstrap (`forgetscope.laws.fit.bootstrap`) against
the baseline of refitting each resample one by one (L-BFGS-B + polish, `fit_law(optimizer="lbfgsb")`), measured in
the same run; then `fit` on whole stored sweeps (the forecast benchmark's pilots) against a 5 s budget.

    python bench/fit_bootstrap.py [--resamples 1000] [--sweep forgetscope-demo/sweep]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from forgetscope.laws.fit import bootstrap, fit_law
from forgetscope.laws.forms import FORMS

CASES = {
    "mult (kl, shift 0)": ("mult", 0.0, np.array([np.log(1e-4), 0.3, 0.8])),
    "add (free shift)": ("add", None, np.array([0.2, np.log(0.05), 0.3, np.log(0.1), 0.5])),
    "broken (kl, shift 0)": ("broken", 0.0, np.array([np.log(1e-5), 0.4, 1.3, 0.7, np.log(20.0), 0.2])),
    # the same with a factor for a second module set (runs 5-9), as `broken+arms`
    "broken+arms": ("broken", 0.0, np.array([np.log(1e-5), 0.4, 1.3, 0.7, np.log(20.0), 0.2, np.log(3.0)])),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--sweep", action="append", default=[], help="a sweep directory to fit as well, e.g. the demo's "
                        "(forgetscope-demo/sweep, after `forgetscope demo`); repeatable")
    args = parser.parse_args()
    P = np.repeat(np.geomspace(1e3, 1e7, 10), 20)
    N = np.tile(np.geomspace(1, 3000, 20), 10)
    runs = np.repeat(np.arange(10), 20)
    arms = (runs % 2).astype(int)  # two module sets, each with five sizes
    print(f"{'form':<21} {'fit (s)':>8} {'bootstrap (s)':>14} {'one-by-one (s)':>18} {'speed-up':>9} {'max |d theta|':>14}")
    for label, (name, shift, true) in CASES.items():
        form = FORMS.get(name)
        arm = arms if label.endswith("+arms") else None
        y = form.value_and_grad(true, P, N, shift, arm)[0] * np.exp(np.random.default_rng(0).normal(0, 0.03, len(P)))
        started = time.perf_counter()
        fit = fit_law(form, P, N, y, shift, arm=arm)
        fit_seconds = time.perf_counter() - started

        started = time.perf_counter()
        batched = bootstrap(fit, runs, P, N, y, args.resamples, seed=0, arm=arm)
        batched_seconds = time.perf_counter() - started

        # Baseline: the same resamples, each refitted from the full fit with L-BFGS-B.
        counts = np.random.default_rng(0).multinomial(10, np.full(10, 0.1), size=args.resamples)
        started = time.perf_counter()
        looped = []
        for count in counts:
            rows = np.concatenate([np.flatnonzero(runs == r) for r in range(10) for _ in range(int(count[r]))])
            looped.append(fit_law(form, P[rows], N[rows], y[rows], shift, starts=[fit.theta],
                                  arm=None if arm is None else arm[rows], optimizer="lbfgsb").theta)
        loop_seconds = time.perf_counter() - started
        gap = float(np.max(np.abs(np.percentile(batched, [2.5, 97.5], axis=0) - np.percentile(looped, [2.5, 97.5], axis=0))))
        print(f"{label:<21} {fit_seconds:>8.2f} {batched_seconds:>14.2f} {loop_seconds:>18.2f} "
              f"{loop_seconds / batched_seconds:>8.1f}x {gap:>14.4f}")
    print(f"\n{args.resamples} resamples of 10 runs; last column: largest difference of the 95% interval ends.")
    whole_sweeps(args.resamples, extra=args.sweep)


def whole_sweeps(resamples: int, budget: float = 5.0, extra: list[str] = ()) -> None:
    """`fit` on whole sweeps, as the command runs it: the forecast benchmark's stored pilots
    and the sweeps in `extra` (every candidate, every split, `resamples` bootstrap resamples),
    against a budget of `budget` seconds for the demo's size of sweep (about 100 records)."""
    import shutil
    import tempfile
    from pathlib import Path

    from forgetscope.laws.select import fit_sweep

    root = Path(__file__).resolve().parent / "forecast_transfer"
    pilots = sorted(p for p in root.glob("*/pilot") if (p / "records.jsonl").is_file()) + [Path(e) for e in extra]
    print(f"\n{'fit DIR (whole sweep)':<34} {'records':>8} {'wall (s)':>9} {'cpu (s)':>8} {'/ budget':>9}")
    for pilot in pilots:
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / "pilot"
            shutil.copytree(pilot, copy, ignore=shutil.ignore_patterns("fits.json", ".lock"))
            wall, cpu = time.perf_counter(), time.process_time()
            fits = fit_sweep(copy, n_bootstrap=resamples)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        name = pilot.parent.name if pilot.name == "pilot" else str(pilot)
        print(f"{name:<34} {fits['n_records']:>8} {wall:>9.2f} {cpu:>8.2f} {wall / budget:>8.2f}x")
    print(f"budget: {budget:.0f} s for a sweep of the demo's size (issue 23)")


if __name__ == "__main__":
    main()
