"""Downstream evaluation inside a sweep: the base once, each point when its fine-tune ends.

The point's evaluation runs in a `TrainerCallback` at `on_train_end`, on the adapted model
the Trainer holds, wherever the point runs (here or in a Ray worker); its result travels
back with the point's records and the driver stores it as `DIR/downstream/ID.json`.
"""

from __future__ import annotations

from transformers import TrainerCallback

from forgetscope.downstream.evaluate import EvalSettings, compare, evaluate_model, prepare_tasks


class EvaluateAtEnd(TrainerCallback):
    """Run the downstream tasks on the fine-tuned model when training ends; `result` holds them."""

    def __init__(self, settings: EvalSettings, tokenizer):
        self.settings = settings
        self.tokenizer = tokenizer
        self.tasks = prepare_tasks(settings)  # checked before the fine-tune, not after it
        self.result: dict | None = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.result = evaluate_model(model, self.tokenizer, self.settings, self.tasks)


def evaluate_base(base_path: str, tokenizer_path: str, settings: EvalSettings, device) -> dict:
    """The base model's downstream results (the reference every point is compared with)."""
    from forgetscope.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(base_path, device=device)
    return evaluate_model(model, load_tokenizer(tokenizer_path), settings, prepare_tasks(settings))


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
