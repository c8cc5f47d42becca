"""The table of tried bad inputs: every invalid value of every option of every command alone,
every broken input file alone, and a refused write (full disk, read-only, no permission) at
each of the first writes of the commands that write (`tests/bad_input_specs.py`). Prints the
count of each outcome per command, and every case that was not clean.

    python bench/bad_input.py                 # all cases, about 10 minutes on 2 cores
    python bench/bad_input.py --only measure  # one command

Outcomes: clean (exit 0 where the case may run, or one `error:` line, exit 2, nothing
written), traceback (exit 1 or a traceback), multi-line (more than the one line), accepted
(exit 0 where something had to be refused), wrote-on-error (exit 2 but files changed), hang,
crash (the interpreter died: a segfault in a library). Each case runs in a forked child.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bad_input_specs import build_world, every_case, run_isolated  # noqa: E402

OUTCOMES = ("clean", "traceback", "multi-line", "accepted", "wrote-on-error", "hang", "crash")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="Run the cases of this command only.")
    parser.add_argument("--timeout", type=int, default=300, help="Seconds before a case counts as a hang.")
    args = parser.parse_args()
    cases = [c for c in every_case() if args.only in (None, c.command.name)]
    counts: dict[str, Counter] = defaultdict(Counter)
    failures = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(Path(tmp) / "world")
        for number, case in enumerate(cases):
            outcome, err = run_isolated(case, world, Path(tmp) / f"case-{number}", args.timeout)
            counts[case.command.name][outcome] += 1
            if outcome != "clean":
                last = err.strip().splitlines()[-1] if err.strip() else ""
                failures.append(f"{outcome:15} {case.describe()}\n{'':15} {last[:200]}")
            print(f"\r{number + 1}/{len(cases)} cases", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for line in failures:
        print(line)
    width = max(len(name) for name in counts)
    print(f"\n{'command':{width}}  " + "  ".join(f"{o:>14}" for o in OUTCOMES) + "  total")
    total: Counter = Counter()
    for name, c in counts.items():
        total.update(c)
        print(f"{name:{width}}  " + "  ".join(f"{c[o]:>14}" for o in OUTCOMES) + f"  {sum(c.values()):>5}")
    print(f"{'all':{width}}  " + "  ".join(f"{total[o]:>14}" for o in OUTCOMES) + f"  {sum(total.values()):>5}")
    print(f"\n{len(cases)} cases in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
