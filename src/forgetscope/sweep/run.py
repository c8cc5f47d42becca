"""Run a sweep: prepare the data once, run every unfinished point on an executor, store each
record as it arrives.

Executors:
- `local`: one point after another in this process, records streamed as measured.
- `ray`: one Ray task per point with the resources the config asks for; results come back
  to the driver with `ray.wait`, and only the driver writes the sweep directory, so no
  shared filesystem is needed for results.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from forgetscope.data import group_into_blocks, load_eval_blocks, read_domains, split_validation
from forgetscope.errors import UserInputError
from forgetscope.sweep.config import DataSource, SweepConfig
from forgetscope.sweep.grid import Point, expand
from forgetscope.sweep.store import SweepStore
from forgetscope.train import TrainSettings, finetune


@dataclass
class SweepInputs:
    """What every point shares: where the base model is, and the token blocks."""

    base_path: str
    tokenizer_path: str
    train_blocks: torch.Tensor
    ft_eval_blocks: torch.Tensor
    eval_blocks: dict[str, torch.Tensor]
    base_predictions: object = None  # forgetscope.base_cache.BasePredictions, recorded once for all points


class NonFiniteLoss(RuntimeError):
    """A point's loss or forgetting became NaN or infinite: the run diverged."""


def _documents(source: DataSource, split: str) -> dict[str, list[str]]:
    if source.embedded is not None:
        from forgetscope.tiny import corpora

        splits = corpora.load(source.embedded)
        documents = getattr(splits, split) or splits.pretrain
        return {source.embedded: documents}
    return read_domains(source.files, source.text_column)


def resolve_base(config: SweepConfig, progress: bool = True) -> str:
    """The base model's directory or hub id; `tiny` is pretrained here first if not cached."""
    if config.base_model != "tiny":
        return config.base_model
    from forgetscope.tiny.model import ensure_tiny_base

    return str(ensure_tiny_base(progress=progress))


def prepare(config: SweepConfig, base_path: str) -> SweepInputs:
    """Everything the points share, done once: tokenize the fine-tuning and eval data, and
    record the base model's predictions on the eval text."""
    from forgetscope.models import load_tokenizer

    tokenizer_path = config.tokenizer or base_path
    tokenizer = load_tokenizer(tokenizer_path)
    budget = config.steps * config.batch_size * config.seq_len + config.ft_eval_tokens  # one pass
    ft_docs = [d for docs in _documents(config.finetune_data, "finetune").values() for d in docs]
    ft_blocks = group_into_blocks(ft_docs, tokenizer, config.seq_len, budget)
    train_blocks, ft_eval_blocks = split_validation(ft_blocks, config.ft_eval_tokens, seed=0)
    eval_blocks: dict[str, torch.Tensor] = {}
    for source in config.eval_data:
        if source.files is not None:
            eval_blocks.update(load_eval_blocks(source.files, tokenizer, config.seq_len, config.eval_tokens, source.text_column))
        else:
            for name, docs in _documents(source, "heldout").items():
                eval_blocks[name] = group_into_blocks(docs, tokenizer, config.seq_len, config.eval_tokens)
    # Record the base model's final hidden states on the eval text once: every point
    # rebuilds its base logits from them with its own (frozen) head.
    from forgetscope.base_cache import try_record_base_predictions
    from forgetscope.models import load_causal_lm, resolve_device

    base = load_causal_lm(base_path, device=resolve_device("auto")).requires_grad_(False)  # the driver's GPU if it has one
    base_predictions = try_record_base_predictions(base, eval_blocks)  # None: each point uses disable_adapter()
    del base
    return SweepInputs(base_path, tokenizer_path, train_blocks, ft_eval_blocks, eval_blocks, base_predictions)


def run_point(
    config: SweepConfig, point: Point, inputs: SweepInputs, on_record: Callable[[dict], None] | None = None,
    callbacks: Sequence = (), on_downstream: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Fine-tune one point; every record carries the point's labels. Raises on failure.
    With a `downstream` section, the fine-tuned model's results go to `on_downstream`."""
    from forgetscope.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config.resources.cpus)))  # same threads on every executor: same numbers
    try:
        device = resolve_device("cuda" if config.resources.gpus > 0 else "cpu")
        model = load_causal_lm(inputs.base_path, device=device)
        settings = TrainSettings(
            steps=config.steps, learning_rate=point.learning_rate, batch_size=config.batch_size, seq_len=config.seq_len,
            warmup_steps=config.warmup_steps, scheduler=config.scheduler, eval_points=config.eval_points, seed=point.seed,
            bf16=resolve_dtype(config.dtype) == torch.bfloat16,
        )
        labels = point.labels()
        tokenizer = load_tokenizer(inputs.tokenizer_path)
        at_end = None
        if config.downstream is not None:
            from forgetscope.downstream.sweep import EvaluateAtEnd

            at_end = EvaluateAtEnd(config.downstream.settings(), tokenizer)
            callbacks = [*callbacks, at_end]

        def labelled(record: dict) -> None:
            record.update(labels)
            values = [record.get(k) for k in ("train_loss", "ft_loss", "kl", "forgetting_ce")]
            if any(v is not None and not math.isfinite(v) for v in values):
                raise NonFiniteLoss(f"non-finite loss or forgetting at step {record['step']}")
            if on_record is not None:
                on_record(record)

        records = finetune(
            model, tokenizer, point.lora(), settings, inputs.train_blocks, inputs.eval_blocks,
            inputs.ft_eval_blocks, on_record=labelled, progress=False, callbacks=callbacks,
            base_predictions=inputs.base_predictions,
        )
        if at_end is not None and on_downstream is not None:
            on_downstream(at_end.result)
        return records
    finally:
        torch.set_num_threads(threads)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _run_local(config, points, inputs, store: SweepStore, bar: _SweepProgress) -> None:
    for point in points:
        try:
            records = run_point(config, point, inputs, on_record=store.append, callbacks=[bar.step_callback(point)],
                                on_downstream=lambda result, pid=point.point_id: store.save_downstream(pid, result))
            store.mark(point.point_id, "finished", point.labels(), records=len(records))
        except (KeyboardInterrupt, SystemExit):
            raise
        except UserInputError:
            raise  # a config that cannot work for any point: stop, don't record a failure per point
        except Exception as exc:  # noqa: BLE001 - a failing point must not stop the sweep
            store.forget_point(point.point_id)
            store.mark(point.point_id, "failed", point.labels(), error=_error_text(exc), traceback=traceback.format_exc())
        bar.point_done()


def _ray_point(config_data: dict, point: Point, inputs: SweepInputs) -> tuple[list[dict] | None, str | None, dict | None]:
    """The body of one Ray task: records and downstream results, or the error that ended the point."""
    downstream = []
    try:
        records = run_point(SweepConfig.model_validate(config_data), point, inputs, on_downstream=downstream.append)
        return records, None, (downstream or [None])[0]
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which records it
        return None, _error_text(exc), None


def _run_ray(config, points, inputs, store: SweepStore, bar: _SweepProgress, address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise UserInputError("the ray executor needs Ray: pip install 'forgetscope[ray]'") from None

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(_ray_point).options(num_cpus=config.resources.cpus, num_gpus=config.resources.gpus)
        inputs_ref = ray.put(inputs)
        config_data = config.canonical()
        pending = {task.remote(config_data, point, inputs_ref): point for point in points}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            point = pending.pop(done[0])
            try:
                records, error, downstream = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a worker that died (OOM, node lost) fails its point only
                records, error = None, _error_text(exc).splitlines()[0]
            if error is None:
                if downstream is not None:
                    store.save_downstream(point.point_id, downstream)
                for record in records:
                    store.append(record)
                store.mark(point.point_id, "finished", point.labels(), records=len(records))
            else:
                store.mark(point.point_id, "failed", point.labels(), error=error)
            bar.point_done()
    finally:
        if started_here:
            ray.shutdown()


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
    address: str | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> SweepResult:
    """Run (or resume) a sweep into `out`. Finished points are skipped; failed ones too unless
    `retry_failed`."""
    if executor not in ("local", "ray"):
        raise UserInputError(f"unknown executor {executor!r} (use local or ray)")
    if address is not None and executor != "ray":
        raise UserInputError("--address joins a Ray cluster: use it with --executor ray")
    points = expand(config.grid)
    base_path = resolve_base(config, progress)
    _check_modules(config, points, base_path)  # a config error must not leave a sweep directory behind
    if config.downstream is not None:
        from forgetscope.downstream.evaluate import prepare_tasks

        prepare_tasks(config.downstream.settings())  # unknown tasks or unreachable data: same
    with SweepStore(out, config.canonical()) as store:
        done, failed = store.finished(), store.failed()
        if retry_failed:
            for point_id in failed:
                store.forget_point(point_id)
            failed = {}
        todo = [p for p in points if p.point_id not in done and p.point_id not in failed]
        skipped = [p.point_id for p in points if p not in todo]
        if config.downstream is not None and store.downstream()[0] is None:
            store.save_downstream("base", _evaluate_base(config, base_path))
        if todo:
            inputs = prepare(config, base_path)
            with _SweepProgress(len(points), len(skipped), config.steps, progress) as bar:
                if executor == "local":
                    _run_local(config, todo, inputs, store, bar)
                else:
                    _run_ray(config, todo, inputs, store, bar, address)
        return SweepResult(Path(out), points, [p.point_id for p in todo], skipped, store.failed(), store.records())


def _evaluate_base(config: SweepConfig, base_path: str) -> dict:
    """The base's downstream results, once per sweep, on the device and threads of a point."""
    from forgetscope.downstream.sweep import evaluate_base
    from forgetscope.models import resolve_device

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config.resources.cpus)))
    try:
        device = resolve_device("cuda" if config.resources.gpus > 0 else "cpu")
        return evaluate_base(base_path, config.tokenizer or base_path, config.downstream.settings(), device)
    finally:
        torch.set_num_threads(threads)


def _check_modules(config: SweepConfig, points: list[Point], base_path: str) -> None:
    """Catch a module name that matches nothing before any point runs, as a config error.

    PEFT is asked on a weightless copy of the model (meta device), so this costs nothing
    even for a 7B model.
    """
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from forgetscope.models import check_location

    check_location(base_path, "base model")
    try:
        model_config = AutoConfig.from_pretrained(base_path)
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot load a model config from {base_path}: {str(exc).splitlines()[0]}") from None
    checked = set()
    for point in points:
        key = (str(point.target_modules), str(point.layers))
        if key in checked:
            continue
        checked.add(key)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(model_config)
        try:
            get_peft_model(skeleton, point.lora().to_peft())
        except ValueError as exc:
            raise UserInputError(
                f"grid.target_modules {point.target_modules!r} (layers {point.layers}) match nothing in "
                f"{config.base_model}: {str(exc).splitlines()[0]}"
            ) from None


class _SweepProgress:
    """Two rich bars: the sweep's points, and the steps of the point running here (local executor)."""

    def __init__(self, total_points: int, done_points: int, steps: int, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=not enabled
        )
        self._points = self._progress.add_task("sweep points", total=total_points, completed=done_points)
        self._steps = self._progress.add_task("steps", total=steps, visible=False)

    def __enter__(self) -> _SweepProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def point_done(self) -> None:
        self._progress.advance(self._points)

    def step_callback(self, point: Point):
        """A `TrainerCallback` that moves the steps bar through one point's fine-tune."""
        from transformers import TrainerCallback

        progress, task = self._progress, self._steps
        progress.reset(task, description=f"  {point.point_id}", visible=True)

        class StepProgress(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                progress.update(task, completed=state.global_step)

        return StepProgress()
