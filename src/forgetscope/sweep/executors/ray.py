"""`ray`: one Ray task per point with the resources the config asks for (`resources.cpus`,
`resources.gpus`, fractions allowed). The shared inputs go to the object store once; results
come back to the driver through `ray.wait`, and each record streams to it through a Ray queue
as it is measured: a task lost to a node failure or a time limit keeps what it measured up
to its last checkpoint (`checkpoints: true`). The base model is recorded and evaluated in a
task with a point's resources too (`prepare_base`): the driver may be a CPU-only head.

Options: `address` (a running cluster, e.g. `ray://head:10001` or `auto`; default: start
a cluster of this machine for the sweep alone, listening on 127.0.0.1 only, and shut it
down at the end; a cluster that `ray start` left running, or `RAY_ADDRESS`, is never joined
unless `address` names it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from forgetscope.errors import UserInputError, first_line
from forgetscope.sweep.executors import EXECUTORS, ExecutorContext, prepare_remote, run_remote
from forgetscope.sweep.grid import Point
from forgetscope.sweep.point import PointResult

if TYPE_CHECKING:
    from ray import ObjectRef

    from forgetscope.sweep.prepare import BaseWork, SweepInputs


POLL_SECONDS = 1.0


class RayExecutor:
    def __init__(self, context: ExecutorContext):
        self.options = context.take_options({"address": ""})
        self.context = context
        self.pending: dict = {}
        self.inputs_ref: ObjectRef[SweepInputs] | None = None

    def __enter__(self) -> RayExecutor:
        address = self.options["address"] or "local"  # "local": a new cluster, never one already running
        self.restore = _loopback_only() if address == "local" else lambda: None
        try:
            import ray
        except ImportError:
            raise UserInputError("the ray executor needs Ray: pip install 'forgetscope[ray]'") from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        resources = self.context.config.resources
        # No retries by Ray: a retried task would stream its records again; the sweep resumes a
        # failed point itself, from its checkpoint (`checkpoints: true`).
        self.task = ray.remote(run_remote).options(num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=0)
        self.preparation = ray.remote(prepare_remote).options(num_cpus=resources.cpus, num_gpus=resources.gpus)
        self.config_data = self.context.config.canonical()
        self.inputs_ref = None  # put on the first submit, into this cluster's object store
        from ray.util.queue import Queue

        self.records = Queue(actor_options={"num_cpus": 0})  # an actor: tasks put, the driver takes
        return self

    def __exit__(self, *exc) -> None:
        if self.started_here:
            self.ray.shutdown()
        self.restore()

    def prepare_base(self, record: bool, evaluators: list[str]) -> BaseWork:
        """A task with a point's resources: the driver may have no GPU."""
        return self.ray.get(self.preparation.remote(self.config_data, self.context.shared_inputs(), record, evaluators))

    def submit(self, point: Point) -> None:
        if self.inputs_ref is None:  # once, into the object store: every task reads the same copy
            self.inputs_ref = self.ray.put(self.context.shared_inputs())
        resume = self.context.resume.get(point.point_id)
        self.pending[self.task.remote(self.config_data, point, self.inputs_ref, resume, self.records.put)] = point

    def _take_records(self) -> None:
        """Store every record the tasks streamed so far (`ExecutorContext.on_record`)."""
        size = self.records.qsize()
        for record in self.records.get_nowait_batch(size) if size else []:
            if self.context.on_record is not None:
                self.context.on_record(record)

    def as_completed(self) -> Iterator[PointResult]:
        while self.pending:
            done, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=POLL_SECONDS)
            self._take_records()  # a finished task's puts all returned before it did
            if not done:
                continue
            point = self.pending.pop(done[0])
            try:
                yield self.ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a worker that died (OOM, node lost) fails its point only
                yield PointResult(point, error=f"{type(exc).__name__}: {first_line(exc)}".strip())


_RAY_CONSTANTS = "ray._private.ray_constants"
"""The module holding Ray's copy of its single-machine setting, made when Ray is imported."""


def _loopback_only() -> Callable[[], None]:
    """Make the cluster Ray starts here listen on 127.0.0.1 only, and return what undoes it.

    A Ray head has no network authentication of its own, and `--node-ip-address 127.0.0.1`
    is replaced by the machine's address. Ray's single-machine mode (its default on macOS and
    Windows) binds every process to loopback; Ray reads it from the environment when it is
    imported, and the processes it starts inherit the environment, so both are set."""
    name, before = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ[name] = "0"
    previous: bool | None = None
    if _RAY_CONSTANTS in sys.modules:  # Ray was imported before: its copy of the setting is already made
        from ray._private import ray_constants

        previous = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
        ray_constants.ENABLE_RAY_CLUSTER = False

    def restore() -> None:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
        if _RAY_CONSTANTS in sys.modules:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = previous if previous is not None else not ray_constants.IS_WINDOWS_OR_OSX

    return restore


EXECUTORS.register("ray", RayExecutor)
