"""`submitit`: one job per point through submitit (github.com/facebookincubator/submitit),
the way research clusters run Python on Slurm. The shared inputs are saved once into the
job folder as safetensors (no pickle: loading them runs no code); each job loads them, runs
its point and returns its `PointResult` to the driver, and appends each record as it is
measured to `FOLDER/records/ID.jsonl`, which the driver reads as it grows: a job that hits
`timeout_min` or is pre-empted keeps what it measured up to its last checkpoint
(`checkpoints: true`). The base model is recorded and
evaluated in a job of its own first (`prepare_base`): a login node needs no GPU. submitit's own job files in that
folder are pickles, so the folder must be one only trusted users can write.

Options (`--executor-option KEY=VALUE`):
- `cluster`: `slurm`, `local` (subprocesses on this machine: no Slurm needed) or `auto`
  (Slurm where `sbatch` exists, else local);
- `folder`: where submitit keeps job scripts and logs (default `DIR/submitit`);
- `timeout_min`: per-job wall-clock limit (default 240);
- `partition`: the Slurm partition.
Each job asks for `resources.cpus` CPUs and `resources.gpus` GPUs (rounded up).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetscope.errors import UserInputError
from forgetscope.records import Record
from forgetscope.sweep.executors import EXECUTORS, ExecutorContext, prepare_remote, run_remote
from forgetscope.sweep.grid import Point
from forgetscope.sweep.point import PointResult, PointResume
from forgetscope.sweep.prepare import BaseWork, load_inputs, save_inputs

POLL_SECONDS = 1.0


def _run_job(config_data: dict, point: Point, inputs_path: str, records_path: str, resume: PointResume | None) -> PointResult:
    with open(records_path, "a") as stream:

        def streamed(record: Record) -> None:  # a line per record, flushed: the driver reads the file as it grows
            stream.write(json.dumps(record) + "\n")
            stream.flush()

        return run_remote(config_data, point, load_inputs(inputs_path), resume, streamed)


def _prepare_job(config_data: dict, inputs_path: str, record: bool, evaluators: list[str]) -> BaseWork:
    return prepare_remote(config_data, load_inputs(inputs_path), record, evaluators)


class SubmititExecutor:
    def __init__(self, context: ExecutorContext):
        self.options = context.take_options(
            {"cluster": "auto", "folder": str(context.directory / "submitit"), "timeout_min": "240", "partition": ""}
        )
        if self.options["cluster"] not in ("auto", "slurm", "local"):
            raise UserInputError(f"executor option cluster must be auto, slurm or local, got {self.options['cluster']!r}")
        try:
            self.timeout_min = int(self.options["timeout_min"])
        except ValueError:
            raise UserInputError(f"executor option timeout_min must be a whole number of minutes, got {self.options['timeout_min']!r}") from None
        self.context = context
        self.jobs: list[_Job] = []

    def __enter__(self) -> SubmititExecutor:
        try:
            import submitit
        except ImportError:
            raise UserInputError("the submitit executor needs submitit: pip install 'forgetscope[slurm]'") from None
        self.submitit = submitit
        folder = Path(self.options["folder"])
        folder.mkdir(parents=True, exist_ok=True)
        cluster = None if self.options["cluster"] == "auto" else self.options["cluster"]
        self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        resources = self.context.config.resources
        parameters = {"timeout_min": self.timeout_min, "cpus_per_task": max(1, math.ceil(resources.cpus)),
                      "gpus_per_node": math.ceil(resources.gpus), "name": f"forgetscope-{self.context.config.name}"}
        if self.options["partition"]:
            parameters["slurm_partition"] = self.options["partition"]
        self.executor.update_parameters(**parameters)
        self.inputs_path = folder / "inputs.safetensors"
        self.records_folder = folder / "records"  # a file per point, that its job appends each record to
        self.records_folder.mkdir(exist_ok=True)
        self.saved: object = None  # the base predictions the saved inputs hold
        self.config_data = self.context.config.canonical()
        return self

    def __exit__(self, *exc) -> None:
        for entry in self.jobs:
            if not entry.job.done():
                entry.job.cancel(check=False)
        self.inputs_path.unlink(missing_ok=True)

    def prepare_base(self, record: bool, evaluators: list[str]) -> BaseWork:
        """A job of its own, with a point's resources: the driver (a login node) may have no GPU."""
        self._save_inputs()
        return self.executor.submit(_prepare_job, self.config_data, str(self.inputs_path), record, evaluators).result()

    def _save_inputs(self) -> None:
        """The shared inputs into the job folder, again once the base predictions are in them."""
        inputs = self.context.shared_inputs()
        if not self.inputs_path.is_file() or self.saved is not inputs.base_predictions:
            save_inputs(inputs, self.inputs_path)
            self.saved = inputs.base_predictions

    def submit(self, point: Point) -> None:
        self._save_inputs()
        stream = self.records_folder / f"{point.point_id}.jsonl"
        stream.unlink(missing_ok=True)  # an earlier attempt's lines were stored (or dropped) by then
        job = self.executor.submit(_run_job, self.config_data, point, str(self.inputs_path), str(stream),
                                   self.context.resume.get(point.point_id))
        self.jobs.append(_Job(job, point, stream))

    def as_completed(self) -> Iterator[PointResult]:
        running = list(self.jobs)
        while running:
            for entry in list(running):
                finished = entry.job.done()  # asked first: every line a done job wrote is then in its file
                for record in entry.new_records():
                    if self.context.on_record is not None:
                        self.context.on_record(record)
                if not finished:
                    continue
                running.remove(entry)
                try:
                    yield entry.job.result()
                except Exception as exc:  # noqa: BLE001 - a job that failed, timed out or was cancelled fails its point only
                    lines = [line for line in str(exc).splitlines() if line.strip()]
                    yield PointResult(entry.point, error=f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip())
            if running:
                time.sleep(POLL_SECONDS)


@dataclass
class _Job:
    """A submitted point, and how far the driver has read the records file it streams to."""

    job: Any
    point: Point
    stream: Path
    read: int = 0

    def new_records(self) -> list[Record]:
        """The whole lines written since the last call (a line being written waits for the next)."""
        if not self.stream.is_file():
            return []
        with open(self.stream, "rb") as f:
            f.seek(self.read)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.read += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


EXECUTORS.register("submitit", SubmititExecutor)
