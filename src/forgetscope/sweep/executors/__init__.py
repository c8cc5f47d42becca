"""Where a sweep's points run. An executor is one module in this package that registers a
class; the driver loop (`forgetscope.sweep.run`) submits every unfinished point to it and
stores each `PointResult` as `as_completed` yields it. Executors never write the sweep
directory, so no executor needs a shared filesystem for results.

    class MyExecutor:
        def __init__(self, context: ExecutorContext): ...
        def __enter__(self) / __exit__(self, *exc): start and stop the engine
        def prepare_base(self, record: bool, evaluators: list[str]) -> BaseWork:
            `prepare.base_work` where the points run, before any is submitted
        def submit(self, point: Point) -> None: ...
        def as_completed(self) -> Iterator[PointResult]: each submitted point once

    EXECUTORS.register("mine", MyExecutor)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from forgetscope.errors import UserInputError
from forgetscope.records import Record
from forgetscope.registry import Registry
from forgetscope.sweep.config import SweepConfig
from forgetscope.sweep.grid import Point
from forgetscope.sweep.point import PointResult, PointResume
from forgetscope.sweep.prepare import BaseWork, SweepInputs, base_work


@dataclass
class ExecutorContext:
    """What an executor is given: the sweep, its shared inputs, and hooks for in-process runs."""

    config: SweepConfig
    inputs: SweepInputs | None
    """Set by the driver before the executor starts (`with executor:`)."""
    directory: Path
    options: dict[str, str] = field(default_factory=dict)
    """`--executor-option KEY=VALUE` pairs; each executor says which it takes."""
    on_record: Callable[[Record], None] | None = None
    """Called by executors that run points in this process with each record as it is measured."""
    step_callback: Callable[[Point], object] | None = None
    """A `TrainerCallback` per point that moves a progress bar (in-process executors)."""
    resume: dict[str, PointResume] = field(default_factory=dict)
    """Per point id, its checkpoints and earlier records (sweeps with `checkpoints: true`),
    set by the driver: executors pass them to `run_point`."""

    def shared_inputs(self) -> SweepInputs:
        """`inputs`, which the driver sets before the executor starts."""
        if self.inputs is None:
            raise RuntimeError("the sweep's inputs are set by the driver before its executor starts (`with executor:`)")
        return self.inputs

    def take_options(self, known: dict[str, str]) -> dict[str, str]:
        """The options with `known`'s defaults filled in; an unknown key is a `UserInputError`."""
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise UserInputError(f"unknown executor option {', '.join(unknown)} (this executor takes: {', '.join(known) or 'none'})")
        return {**known, **self.options}


class Executor(Protocol):
    def __init__(self, context: ExecutorContext) -> None: ...
    def __enter__(self) -> Executor: ...
    def __exit__(self, *exc) -> None: ...
    def prepare_base(self, record: bool, evaluators: list[str]) -> BaseWork: ...
    def submit(self, point: Point) -> None: ...
    def as_completed(self) -> Iterator[PointResult]: ...


EXECUTORS: Registry[type[Executor]] = Registry("executors", __name__)


def run_remote(config_data: dict, point: Point, inputs: SweepInputs, resume: PointResume | None = None,
               on_record: Callable[[Record], None] | None = None) -> PointResult:
    """The body of a point in another process: the config travels as plain data; `on_record`
    streams each record to the driver as it is measured."""
    from forgetscope.sweep.point import run_point

    return run_point(SweepConfig.model_validate(config_data), point, inputs, on_record=on_record, resume=resume)


def prepare_remote(config_data: dict, inputs: SweepInputs, record: bool, evaluators: list[str]) -> BaseWork:
    """The body of the preparation task in another process (`prepare.base_work`)."""
    return base_work(SweepConfig.model_validate(config_data), inputs, record, evaluators)
