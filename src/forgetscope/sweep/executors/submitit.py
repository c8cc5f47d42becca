"""`submitit`: one job per point through submitit (github.com/facebookincubator/submitit),
the way research clusters run Python on Slurm. The shared inputs are saved once into the
job folder as safetensors (no pickle: loading them runs no code); each job loads them, runs
its point and returns its `PointResult` to the driver. submitit's own job files in that
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

import math
from collections.abc import Iterator
from pathlib import Path

from forgetscope.errors import UserInputError
from forgetscope.sweep.executors import EXECUTORS, ExecutorContext, run_remote
from forgetscope.sweep.grid import Point
from forgetscope.sweep.point import PointResult
from forgetscope.sweep.prepare import load_inputs, save_inputs

POLL_SECONDS = 1.0


def _run_job(config_data: dict, point: Point, inputs_path: str) -> PointResult:
    return run_remote(config_data, point, load_inputs(inputs_path))


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
        self.jobs: list = []

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
        save_inputs(self.context.shared_inputs(), self.inputs_path)
        self.config_data = self.context.config.canonical()
        return self

    def __exit__(self, *exc) -> None:
        for job, _ in self.jobs:
            if not job.done():
                job.cancel(check=False)
        self.inputs_path.unlink(missing_ok=True)

    def submit(self, point: Point) -> None:
        self.jobs.append((self.executor.submit(_run_job, self.config_data, point, str(self.inputs_path)), point))

    def as_completed(self) -> Iterator[PointResult]:
        points = {job.job_id: point for job, point in self.jobs}
        for job in self.submitit.helpers.as_completed([job for job, _ in self.jobs], poll_frequency=POLL_SECONDS):
            try:
                yield job.result()
            except Exception as exc:  # noqa: BLE001 - a job that failed or was cancelled fails its point only
                lines = [line for line in str(exc).splitlines() if line.strip()]
                yield PointResult(points[job.job_id], error=f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip())


EXECUTORS.register("submitit", SubmititExecutor)
