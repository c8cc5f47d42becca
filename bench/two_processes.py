"""One process against two: the same `forgetscope train` run of the tiny default, once as one
process and once under `torchrun --nproc_per_node 2` (DDP over gloo on this CPU), and every
value of their records side by side with the difference.

`batch_size` is the global batch, so the two processes train on the same sequences per step
(each on half), and the measurement is split between them and gathered: the records should
agree to float rounding, not merely to the noise of another data order.

    python bench/two_processes.py [--steps 40] [--batch-size 8] [--seq-len 128] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from forgetscope.tiny import corpora
from forgetscope.tiny.model import ensure_tiny_base

KEYS = ("kl", "forgetting_ce", "base_entropy", "hard_ce", "ft_loss", "train_loss")


def write_jsonl(path: Path, documents: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    return path


def run(command: list[str]) -> tuple[list[dict], float]:
    """The records a `train --json` command prints, and its wall time."""
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    base = ensure_tiny_base(progress=False)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        train = write_jsonl(root / "code.jsonl", corpora.finetune_documents("code")[:400])
        evals = [write_jsonl(root / f"{name}.jsonl", corpora.load(name).heldout[:200]) for name in ("scripture", "docs")]
        command = ["train", "--base", str(base), "--train-data", str(train), *[x for e in evals for x in ("--eval-data", str(e))],
                   "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
                   "--eval-points", "5", "--device", "cpu", "--json"]
        one, one_s = run([sys.executable, "-m", "forgetscope", *command, "--out", str(root / "one")])
        many, many_s = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.processes),
                            "-m", "forgetscope", *command, "--out", str(root / "many")])
    print(f"tiny default, {args.steps} steps of {args.batch_size} x {args.seq_len} tokens (global batch), "
          f"1 process: {one_s:.1f} s, {args.processes} processes: {many_s:.1f} s (wall, with start-up)\n")
    print(f"| step | value | 1 process | {args.processes} processes | difference | relative |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    worst = 0.0
    for a, b in zip(one, many, strict=True):
        for key in KEYS:
            if a.get(key) is None:
                continue
            diff = b[key] - a[key]
            relative = abs(diff) / abs(a[key]) if a[key] else 0.0
            worst = max(worst, relative)
            print(f"| {a['step']} | {key} | {a[key]:.6g} | {b[key]:.6g} | {diff:+.2e} | {relative:.1e} |")
    print(f"\nlargest relative difference: {worst:.1e}; world_size in the records: {one[0]['world_size']} and {many[0]['world_size']}")


if __name__ == "__main__":
    main()
