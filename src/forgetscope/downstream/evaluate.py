"""Base against fine-tuned on lm-evaluation-harness tasks.

Both models are already loaded; each is wrapped in lm-eval's `HFLM` with the tokenizer
passed explicitly and run through `lm_eval.simple_evaluate`, the way the harness's Python
users do it. What is added here: suite names, task-name and data checks that fail with one
line, and the comparison: per task and metric the base value, the fine-tuned value, their
difference, and standard errors. The difference's standard error is paired over the same
examples when the harness logged per-example values (it did for every mean metric), which
is much tighter than combining the two standard errors as if the runs were independent.
"""

from __future__ import annotations

import difflib
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from forgetscope.downstream import offline, safety
from forgetscope.downstream.compare import compare
from forgetscope.errors import UserInputError, first_line
from forgetscope.files import read_yaml
from forgetscope.judges import load_judge
from forgetscope.settings import EvalSettings

SUITE_FOLDERS: list[Path] = [Path(str(files("forgetscope.downstream").joinpath("suites")))]
"""Where suites are found: each is an lm-eval group config (`group: NAME`, `task: [...]`) in
one YAML file, so adding a suite is adding a file."""


def suites() -> dict[str, list[str]]:
    """`{suite: its task names}` of every suite file, in folder order (a later folder's suite
    of the same name wins)."""
    found: dict[str, list[str]] = {}
    for folder in SUITE_FOLDERS:
        for path in sorted(folder.glob("*.yaml")):
            config = read_yaml(path, "suite")
            if not isinstance(config, dict) or not isinstance(config.get("group"), str) or not isinstance(config.get("task"), list):
                raise UserInputError(f"{path}: a suite is an lm-eval group config with `group: NAME` and a `task:` list")
            found[config["group"]] = [str(task) for task in config["task"]]
    return found


def resolve_tasks(suite: str) -> list[str]:
    """Comma-separated suite or task names -> the harness names they stand for."""
    known = suites()
    names = [n.strip() for n in suite.split(",") if n.strip()]
    if not names:
        raise UserInputError(f"--suite is empty: name a suite ({', '.join(known)}) or tasks")
    return [n for name in names for n in known.get(name, [name])]


def _is_offline(name: str) -> bool:
    return name == offline.TAG or name in offline.TASKS


@dataclass
class Tasks:
    """Checked task names and the `TaskManager` that knows them."""

    harness: list[str] = field(default_factory=list)  # names lm-eval resolves (its own and the offline ones)
    safety: bool = False
    manager: object = None


def prepare_tasks(settings: EvalSettings, cache_dir: Path | None = None) -> Tasks:
    """Resolve the suite and check every name, before any model is evaluated."""
    from lm_eval.tasks import TaskManager

    names = resolve_tasks(settings.suite)
    tasks = Tasks(safety=safety.TASK in names)
    if not tasks.safety and (settings.judge is not None or settings.harmful is not None):
        raise UserInputError("--judge and --harmful are the safety suite's: add safety to --suite, or leave them out")
    tasks.harness = [n for n in names if n != safety.TASK]
    if tasks.harness:
        builtin = not all(_is_offline(n) for n in tasks.harness)  # indexing the harness's own tasks takes seconds
        with _quiet():
            tasks.manager = TaskManager(include_path=str(offline.task_dir(cache_dir)), include_defaults=builtin)
        known = set(tasks.manager.all_tasks)
        for name in tasks.harness:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known | set(suites())), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise UserInputError(f"unknown task {name!r}{hint}: use a suite ({', '.join(suites())}) "
                                     "or lm-eval task names")
        with _quiet():
            _load(tasks.manager, tasks.harness)  # unreachable data fails now, before any model is evaluated
    if tasks.safety:
        with _quiet():
            _load(TaskManager(include_defaults=False), [safety.refusal_task(settings.harmful, load_judge(settings.judge))])
    return tasks


@contextmanager
def _quiet():
    """lm-eval logs every step at INFO and warns that a loaded model ignores `model_args`."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load(manager, specs: list) -> dict:
    """Load tasks and their data; anything that stops the data from loading is one line."""
    try:
        return manager.load(specs)
    except (KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, KeyError) and "not a registered" in str(exc):
            raise UserInputError(f"unknown task: {str(exc).strip(chr(34) + chr(39))}") from None
        raise UserInputError(f"cannot load the task data: {type(exc).__name__}: {first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - datasets/hub raise many types (offline, 404, gated, network)
        hint = " (offline: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set)" if _offline_env() else ""
        raise UserInputError(f"cannot load the task data{hint}: {type(exc).__name__}: {first_line(exc)}") from None


def _offline_env() -> bool:
    import os

    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))




def _top_level(loaded: dict) -> list:
    """The loaded groups and tasks that no loaded group contains (what was asked for)."""
    children = {c for names in loaded["group_map"].values() for c in names}
    items = {**loaded["groups"], **loaded["tasks"]}
    return [item for name, item in items.items() if name not in children]


def _quiet_git_hash() -> str | None:
    """What lm-eval's `get_git_commit_hash` returns, with git's stderr discarded."""
    import subprocess

    try:
        return subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def evaluate_model(model, tokenizer, settings: EvalSettings, tasks: Tasks) -> dict:
    """Run the checked tasks on one loaded model; `{task: {"metrics", "n", "per_example", "group"}}`."""
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # lm-eval records `git describe` of the working directory and lets git's "fatal: not a
    # git repository" reach the user's stderr; ask git the same question quietly.
    lm_eval.evaluator.get_git_commit_hash = _quiet_git_hash
    was_training = model.training
    model.eval()
    runs = []
    with _quiet():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
        if tasks.harness:
            runs.append((tasks.manager, tasks.harness, False))
        if tasks.safety:
            task = safety.refusal_task(settings.harmful, load_judge(settings.judge))
            chat = getattr(tokenizer, "chat_template", None) is not None  # instructions as the model is prompted
            runs.append((TaskManager(include_defaults=False), [task], chat))
        out: dict[str, dict] = {}
        try:
            for manager, specs, chat in runs:
                loaded = _load(manager, specs)
                raw = lm_eval.simple_evaluate(
                    model=lm, tasks=_top_level(loaded), task_manager=manager, num_fewshot=settings.num_fewshot,
                    limit=settings.limit, bootstrap_iters=settings.bootstrap_iters, log_samples=True,
                    apply_chat_template=chat, random_seed=settings.seed, numpy_random_seed=settings.seed,
                    torch_random_seed=settings.seed, fewshot_random_seed=settings.seed, verbosity="ERROR",
                )
                out.update(_collect(raw))
        finally:
            model.train(was_training)
    return out


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _collect(raw: dict) -> dict:
    """The harness's results dict -> per task: metric values, stderrs, per-example values."""
    children = {c for names in raw.get("group_subtasks", {}).values() for c in names}
    out = {}
    for task, values in raw["results"].items():
        higher = raw.get("higher_is_better", {}).get(task, {})
        metrics = {}
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or _number(value) is None:
                continue
            name = metric if filter_name == "none" else f"{metric},{filter_name}"
            metrics[name] = {"value": float(value), "stderr": _number(values.get(f"{metric}_stderr,{filter_name}")),
                             "higher_is_better": higher.get(metric)}
        per_example = {}
        samples = sorted(raw.get("samples", {}).get(task, []), key=lambda s: s["doc_id"])
        for metric in metrics:
            column = [_number(s.get(metric)) for s in samples]
            if column and all(v is not None for v in column):
                per_example[metric] = column
        n = raw.get("n-samples", {}).get(task, {}).get("effective")
        out[task] = {"metrics": metrics, "n": n if n is not None else len(samples), "per_example": per_example,
                     "group": task in raw.get("group_subtasks", {}), "in_group": task in children}
    return out


def strip_examples(result: dict) -> dict:
    """A result without its per-example values (for printing or compact storage)."""
    return {task: {k: v for k, v in entry.items() if k != "per_example"} for task, entry in result.items()}


def evaluate_pair(
    base: str, finetuned: str | None = None, adapter: str | None = None, settings: EvalSettings = EvalSettings(),
    device: str = "auto", dtype: str = "float32",
) -> dict:
    """Evaluate a base model and its fine-tune (full weights or a PEFT adapter) on the same
    tasks; `{"tasks": [...], "base": ..., "finetuned": ..., "comparison": [rows]}`."""
    from forgetscope.models import causal_lm_config, load_pair

    if (finetuned is None) == (adapter is None):
        raise UserInputError("give exactly one of --finetuned (a full model) or --adapter (a PEFT adapter)")
    for name in (base, finetuned):  # a wrong model fails before lm-eval indexes its tasks
        if name is not None:
            causal_lm_config(name)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UserInputError(f"adapter not found: {adapter} (expected a directory with adapter_config.json)")
    tasks = prepare_tasks(settings)  # bad names and data fail before any model is loaded
    pair = load_pair(base, finetuned=finetuned, adapter=adapter, dtype=dtype, device=device)
    with pair.as_base() as base_model:
        base_result = evaluate_model(base_model, pair.tokenizer, settings, tasks)
    ft_result = evaluate_model(pair.finetuned, pair.tokenizer, settings, tasks)
    return {"suite": settings.suite, "tasks": tasks.harness + ([safety.TASK] if tasks.safety else []),
            "limit": settings.limit, "num_fewshot": settings.num_fewshot, "base": base_result,
            "finetuned": ft_result, "comparison": compare(base_result, ft_result)}
