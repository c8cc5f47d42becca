"""One point of a sweep: fine-tune, measure forgetting along the way, run the enabled
end-of-point evaluators, and return everything as a `PointResult`.

This is the body every executor runs, here or in a worker: it writes nothing. The driver
loop (`executors.drive`) alone writes the sweep directory.
"""

from __future__ import annotations

import math
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from forgetscope.errors import UserInputError
from forgetscope.records import Record
from forgetscope.sweep.config import SweepConfig
from forgetscope.sweep.evaluators import EVALUATORS
from forgetscope.sweep.grid import Point
from forgetscope.sweep.prepare import SweepInputs, load_point_base, point_threads


class NonFiniteLoss(RuntimeError):
    """A point's loss or forgetting became NaN or infinite: the run diverged."""


@dataclass
class PointResume:
    """Where a point keeps its checkpoints (a sweep with `checkpoints: true`), and the records it
    measured up to the last one there, in an earlier attempt that a time limit or a pre-emption
    ended: the point resumes from that checkpoint and measures only what follows."""

    checkpoint_dir: str
    earlier: list[Record] = field(default_factory=list)


@dataclass
class PointResult:
    """What one point produced: its records and artifacts (`{evaluator name: result}`), or the
    error that ended it."""

    point: Point
    records: list[Record] = field(default_factory=list)
    artifacts: dict[str, object] = field(default_factory=dict)
    adapter_files: dict[str, bytes] = field(default_factory=dict)
    """With `save_adapters`: the files of the point's saved PEFT adapter, by name."""
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _evaluate_at_end(config: SweepConfig, tokenizer, artifacts: dict):
    """A `TrainerCallback` that runs every enabled evaluator on the adapted model when training ends."""
    from transformers import TrainerCallback

    enabled = [(name, EVALUATORS.get(name), settings) for name, settings in config.sections().items()]

    class EvaluateAtEnd(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            for name, evaluator, settings in enabled:
                artifacts[name] = evaluator.evaluate_point(settings, model, tokenizer)

    return EvaluateAtEnd()


def run_point(
    config: SweepConfig, point: Point, inputs: SweepInputs,
    on_record: Callable[[Record], None] | None = None, callbacks: Sequence = (), resume: PointResume | None = None,
) -> PointResult:
    """Fine-tune one point; every record carries the point's labels and goes to `on_record`
    as it is measured. With `resume`, checkpoints are kept and an earlier attempt's last one
    is resumed from; the result holds only the records measured after it. A failure of the
    point comes back in the result; a `UserInputError` (a config that cannot work for any
    point) is raised."""
    from forgetscope.models import load_tokenizer
    from forgetscope.train import finetune

    labels = point.labels()
    result = PointResult(point)

    def labelled(record: Record) -> None:
        record.update(labels)
        values = [record.get(k) for k in ("train_loss", "ft_loss", "kl", "forgetting_ce")]
        if any(v is not None and not math.isfinite(v) for v in values):
            raise NonFiniteLoss(f"non-finite loss or forgetting at step {record['step']}")
        if on_record is not None:
            on_record(record)

    try:
        with point_threads(config), tempfile.TemporaryDirectory(prefix="forgetscope-point-") as scratch:
            model = load_point_base(config, inputs.base_path)
            tokenizer = load_tokenizer(inputs.tokenizer_path)
            at_end = _evaluate_at_end(config, tokenizer, result.artifacts)
            earlier = resume.earlier if resume is not None else []
            result.records = list(finetune(  # a plain list: it travels back to the driver
                model, tokenizer, point.lora(), config.train_settings(point), inputs.train_blocks, inputs.eval_blocks,
                inputs.ft_eval_blocks, out_dir=scratch if config.save_adapters else None, on_record=labelled, progress=False,
                callbacks=[*callbacks, at_end], base_predictions=inputs.base_predictions, replay_blocks=inputs.replay_blocks,
                checkpoint_dir=resume.checkpoint_dir if resume is not None else None, earlier=earlier,
            ))[len(earlier):]
            if config.save_adapters:  # carried back as bytes: the driver alone writes the sweep directory
                result.adapter_files = {f.name: f.read_bytes() for f in (Path(scratch) / "adapter").iterdir() if f.is_file()}
    except (KeyboardInterrupt, SystemExit, UserInputError):
        raise
    except Exception as exc:  # noqa: BLE001 - a failing point must not stop the sweep
        result.records, result.artifacts, result.adapter_files = [], {}, {}
        result.error, result.traceback = f"{type(exc).__name__}: {exc}".strip(), traceback.format_exc()
    return result
