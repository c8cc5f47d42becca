"""`local`: one point after another in this process, each record streamed to the driver as
it is measured, with a progress bar over the steps of the running point."""

from __future__ import annotations

from collections.abc import Iterator

from forgetscope.sweep.executors import EXECUTORS, ExecutorContext
from forgetscope.sweep.grid import Point
from forgetscope.sweep.point import PointResult, run_point
from forgetscope.sweep.prepare import BaseWork, base_work


class LocalExecutor:
    def __init__(self, context: ExecutorContext):
        context.take_options({})
        self.context = context
        self.queue: list[Point] = []

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.queue.clear()

    def prepare_base(self, record: bool, evaluators: list[str]) -> BaseWork:
        return base_work(self.context.config, self.context.shared_inputs(), record, evaluators)

    def submit(self, point: Point) -> None:
        self.queue.append(point)

    def as_completed(self) -> Iterator[PointResult]:
        c = self.context
        while self.queue:
            point = self.queue.pop(0)
            callbacks = [c.step_callback(point)] if c.step_callback is not None else []
            yield run_point(c.config, point, c.shared_inputs(), on_record=c.on_record, callbacks=callbacks,
                            resume=c.resume.get(point.point_id))


EXECUTORS.register("local", LocalExecutor)
