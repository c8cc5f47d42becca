"""Base against fine-tuned downstream results, as plain dict arithmetic: no torch, no
harness, so the report and `fit` can read them instantly."""

from __future__ import annotations

import math


def compare(base: dict, finetuned: dict) -> list[dict]:
    """One row per task and metric present in both: values, stderrs, difference (fine-tuned
    minus base) and its stderr (paired when per-example values exist), and `worse`: the
    difference signed so that positive means the fine-tune did worse."""
    rows = []
    for task, b in base.items():
        f = finetuned.get(task)
        if f is None or b["in_group"]:
            continue
        for metric, bm in b["metrics"].items():
            fm = f["metrics"].get(metric)
            if fm is None:
                continue
            diff = fm["value"] - bm["value"]
            pb, pf = b["per_example"].get(metric), f["per_example"].get(metric)
            if pb and pf and len(pb) == len(pf) > 1:
                deltas = [y - x for x, y in zip(pb, pf)]
                mean = sum(deltas) / len(deltas)
                diff_se = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (len(deltas) - 1) / len(deltas))
                paired = True
            elif bm["stderr"] is not None and fm["stderr"] is not None:
                diff_se, paired = math.hypot(bm["stderr"], fm["stderr"]), False
            else:
                diff_se, paired = None, False
            higher = bm["higher_is_better"]
            rows.append({
                "task": task, "metric": metric, "n": b["n"], "base": bm["value"], "base_stderr": bm["stderr"],
                "finetuned": fm["value"], "finetuned_stderr": fm["stderr"], "difference": diff,
                "difference_stderr": diff_se, "paired": paired, "higher_is_better": higher,
                "worse": None if higher is None else (-diff if higher else diff) + 0.0,  # + 0.0: no "-0.0"
            })
    return rows


def primary_metric(task_result: dict) -> str | None:
    """The metric a task is summarised by: its first (the YAML's order: `nll` for cloze, `acc` for choice)."""
    return next(iter(task_result["metrics"]), None)


def drops(base: dict, point: dict) -> dict[str, dict]:
    """`{task: comparison row}` of each task's primary metric: `worse` > 0 means the point did worse."""
    rows = {(r["task"], r["metric"]): r for r in compare(base, point)}
    out = {}
    for task, result in base.items():
        metric = primary_metric(result)
        if (task, metric) in rows:
            out[task] = rows[(task, metric)]
    return out
