"""Run a sweep: prepare the shared inputs once, have the executor record and evaluate the
base where its points run, submit every unfinished point to it, and store each result as
it completes. This driver loop is the only code that writes the sweep directory, whatever
the executor (`executors/`: local, ray, submitit), and it never loads the model: it may run
on a machine without the points' GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from forgetscope.sweep.config import SweepConfig, parse_config
from forgetscope.sweep.evaluators import EVALUATORS
from forgetscope.sweep.executors import EXECUTORS, ExecutorContext
from forgetscope.sweep.grid import Point, expand
from forgetscope.sweep.point import PointResult, PointResume
from forgetscope.sweep.prepare import check_modules, prepare, resolve_base
from forgetscope.sweepdir import SweepStore, check_resumable, finished_points
from forgetscope.train import data_digest


@dataclass
class SweepResult:
    directory: Path
    points: list[Point]
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    records: list[dict]


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    executor: str = "local",
    options: dict[str, str] | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> SweepResult:
    """Run (or resume) a sweep into `out` on the named executor. Finished points are skipped;
    failed ones too unless `retry_failed`. `options` are the executor's own (`address` for Ray)."""
    context = ExecutorContext(config, None, Path(out), dict(options or {}))
    engine = EXECUTORS.get(executor)(context)  # checks its options now; starts at `with engine`
    points = expand(config.grid)
    base_path = resolve_base(config, progress)
    check_modules(config, points, base_path)  # a config error must not leave a sweep directory behind
    for name, settings in config.sections().items():
        EVALUATORS.get(name).check(settings)
    check_resumable(Path(out), config.canonical(), _identity)
    # Bad data is refused here, before the sweep directory is written (a resume of a finished
    # sweep needs no inputs).
    finished = finished_points(out)
    inputs = prepare(config, base_path) if any(p.point_id not in finished for p in points) else None
    sections = config.sections()
    with SweepStore(out, config.canonical(), identity=_identity) as store:
        done, failed = store.finished(), store.failed()
        if retry_failed:
            for point_id in failed:
                store.forget_point(point_id)
            failed = {}
        todo = [p for p in points if p.point_id not in done and p.point_id not in failed]
        skipped = [p.point_id for p in points if p not in todo]
        if todo:
            context.inputs = inputs or prepare(config, base_path)
            store.check_data(data_digest(context.inputs.train_blocks, context.inputs.eval_blocks,
                                         context.inputs.ft_eval_blocks, context.inputs.replay_blocks))
            if config.save_adapters:
                store.save_heldout(context.inputs.ft_eval_blocks, context.inputs.eval_blocks)
        unevaluated = [name for name in sections if store.artifact(name, "base") is None]
        if not todo and not unevaluated:
            return SweepResult(Path(out), points, [], skipped, store.failed(), store.records())
        context.inputs = context.inputs or inputs or prepare(config, base_path)
        with _SweepProgress(len(points), len(skipped), config.steps, progress and bool(todo)) as bar, engine:
            work = engine.prepare_base(record=bool(todo), evaluators=unevaluated)
            context.inputs.base_predictions = work.predictions
            for name, artifact in work.artifacts.items():
                store.save_artifact(name, "base", artifact)
            context.on_record, context.step_callback = store.append, bar.step_callback
            for point in todo:
                if not config.checkpoints:  # left by an earlier run with them: without, a point starts over
                    store.drop_checkpoints(point.point_id)
            if config.checkpoints:
                context.resume = {p.point_id: PointResume(str(store.checkpoints(p.point_id)), store.earlier_records(p.point_id))
                                  for p in todo}
            for point in todo:
                engine.submit(point)
            for result in engine.as_completed():
                _store(store, result)
                bar.point_done()
        return SweepResult(Path(out), points, [p.point_id for p in todo], skipped, store.failed(), store.records())


def _identity(data: dict) -> dict:
    """What must match for a sweep to resume: its settings that differ from their defaults."""
    return parse_config(data).identity()


def _store(store: SweepStore, result: PointResult) -> None:
    """Keep a finished point's artifacts and records, then mark it: only then do they count.
    Records an executor already streamed are not written twice. A failed point keeps the
    records up to its last checkpoint, if it has one, to resume from."""
    point_id, labels = result.point.point_id, result.point.labels()
    if not result.ok:
        store.forget_point(point_id)
        store.mark(point_id, "failed", labels, error=result.error, **({"traceback": result.traceback} if result.traceback else {}))
        return
    for kind, artifact in result.artifacts.items():
        store.save_artifact(kind, point_id, artifact)
    if result.adapter_files:
        store.save_adapter(point_id, result.adapter_files)
    streamed = store.streamed(point_id)
    for record in result.records[streamed:]:
        store.append(record)
    store.mark(point_id, "finished", labels, records=len(result.records))


class _SweepProgress:
    """Two rich bars: the sweep's points, and the steps of the point running here (local executor)."""

    def __init__(self, total_points: int, done_points: int, steps: int, enabled: bool):
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        # Points take minutes: estimate the speed over the whole sweep, not rich's last 30 s,
        # or the time left stays unknown.
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            disable=not enabled, speed_estimate_period=24 * 3600,
        )
        self._points = self._progress.add_task("sweep points", total=total_points, completed=done_points)
        self._steps = self._progress.add_task("steps", total=steps, visible=False)
        # Through a pipe or into a log file, rich draws no bar: a line per point says how far it is.
        self._lines = enabled and not self._progress.console.is_terminal
        self._started, self._done, self._total, self._resumed = time.monotonic(), done_points, total_points, done_points

    def __enter__(self) -> _SweepProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def point_done(self) -> None:
        import time

        self._progress.advance(self._points)
        self._done += 1
        if self._lines:
            elapsed = time.monotonic() - self._started
            left = elapsed / (self._done - self._resumed) * (self._total - self._done)
            self._progress.console.print(f"sweep: {self._done}/{self._total} points done, {elapsed:.0f} s so far, "
                                         f"about {left:.0f} s left")

    def step_callback(self, point: Point):
        """A `TrainerCallback` that moves the steps bar through one point's fine-tune."""
        from transformers import TrainerCallback

        progress, task = self._progress, self._steps
        progress.reset(task, description=f"  {point.point_id}", visible=True)

        class StepProgress(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                progress.update(task, completed=state.global_step)

        return StepProgress()
