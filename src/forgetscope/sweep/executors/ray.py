"""`ray`: one Ray task per point with the resources the config asks for (`resources.cpus`,
`resources.gpus`, fractions allowed). The shared inputs go to the object store once; results
come back to the driver through `ray.wait`.

Options: `address` (a running cluster, e.g. `ray://head:10001` or `auto`; default: start
Ray here).
"""

from __future__ import annotations

from collections.abc import Iterator

from forgetscope.errors import UserInputError
from forgetscope.sweep.executors import EXECUTORS, ExecutorContext, run_remote
from forgetscope.sweep.grid import Point
from forgetscope.sweep.point import PointResult


class RayExecutor:
    def __init__(self, context: ExecutorContext):
        self.options = context.take_options({"address": ""})
        self.context = context
        self.pending: dict = {}

    def __enter__(self) -> RayExecutor:
        try:
            import ray
        except ImportError:
            raise UserInputError("the ray executor needs Ray: pip install 'forgetscope[ray]'") from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            ray.init(address=self.options["address"] or None, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        resources = self.context.config.resources
        self.task = ray.remote(run_remote).options(num_cpus=resources.cpus, num_gpus=resources.gpus)
        self.inputs_ref = ray.put(self.context.inputs)
        self.config_data = self.context.config.canonical()
        return self

    def __exit__(self, *exc) -> None:
        if self.started_here:
            self.ray.shutdown()

    def submit(self, point: Point) -> None:
        self.pending[self.task.remote(self.config_data, point, self.inputs_ref)] = point

    def as_completed(self) -> Iterator[PointResult]:
        while self.pending:
            done, _ = self.ray.wait(list(self.pending), num_returns=1)
            point = self.pending.pop(done[0])
            try:
                yield self.ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a worker that died (OOM, node lost) fails its point only
                yield PointResult(point, error=f"{type(exc).__name__}: {exc}".strip().splitlines()[0])


EXECUTORS.register("ray", RayExecutor)
