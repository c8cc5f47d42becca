"""The offline harness tasks: held-out text of the embedded corpora as lm-eval task data.

The task definitions are YAML files shipped in `forgetscope/downstream/tasks/`; their data
is not shipped but built here, deterministically, from the held-out split of each embedded
domain (`forgetscope.tiny.corpora`): passages the tiny default never saw in pretraining.
On first use the YAMLs and their generated JSONL files are written together into the user
cache, each `data_files` entry made absolute (the `datasets` json loader reads paths
relative to the working directory, not to the YAML), and that folder is what lm-eval's
`TaskManager(include_path=...)` is given. It is a plain task folder: a user can copy it as
the start of their own tasks.

Every example is a window of a held-out document cut at a whitespace boundary: a context
of about `CONTEXT_CHARS` characters and the `TARGET_CHARS`-odd characters that follow.
Cloze tasks score the true continuation; choice tasks add three continuations of other
examples of the same domain as distractors.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from importlib.resources import files
from pathlib import Path

import yaml

from forgetscope.tiny import corpora

TAG = "forgetscope_tiny"
KINDS = ("choice", "cloze")
TASKS = tuple(f"fs_{domain}_{kind}" for domain in corpora.DOMAINS for kind in KINDS)
EXAMPLES_PER_DOMAIN = 200
CONTEXT_CHARS = 240
TARGET_CHARS = 24
CHOICES = 4
DATA_VERSION = 1  # bump when the generated data changes


def _package_files() -> dict[str, str]:
    """`{file name: text}` of the task folder shipped with the package."""
    folder = files("forgetscope.downstream").joinpath("tasks")
    return {p.name: p.read_text() for p in folder.iterdir() if p.name.endswith((".yaml", ".py"))}


def _cut(document: str, rng: random.Random) -> tuple[str, str] | None:
    """A (context, target) window of `document` split at whitespace, or None if too short."""
    spaces = [i for i, c in enumerate(document) if c.isspace() and (i == 0 or not document[i - 1].isspace())]
    candidates = [i for i in spaces if i >= CONTEXT_CHARS // 2 and i + TARGET_CHARS < len(document)]
    if not candidates:
        return None
    split = rng.choice(candidates)
    end = next((j for j in spaces if j >= split + TARGET_CHARS), None)
    if end is None:
        return None
    start = next((j for j in spaces if j >= split - CONTEXT_CHARS), split)
    context = document[start:split].lstrip()
    return (context, document[split:end]) if context else None


def examples(domain: str, n: int = EXAMPLES_PER_DOMAIN, seed: int = 0) -> list[dict]:
    """`n` cloze examples `{"context", "target"}` from the held-out documents of `domain`,
    taken round-robin over the documents so each contributes about equally."""
    documents = corpora.load(domain).heldout
    rng = random.Random(f"{domain}-{seed}-{DATA_VERSION}")
    out, seen = [], set()
    attempts = 0
    while len(out) < n and attempts < 20 * n:
        cut = _cut(documents[attempts % len(documents)], rng)
        attempts += 1
        if cut is None or cut[1] in seen:
            continue
        seen.add(cut[1])
        out.append({"context": cut[0], "target": cut[1]})
    return out


def choice_examples(cloze: list[dict], seed: int = 0) -> list[dict]:
    """Multiple-choice versions of cloze examples: the true target among distractors drawn
    from the targets of other examples."""
    rng = random.Random(f"choice-{seed}-{DATA_VERSION}")
    out = []
    for i, example in enumerate(cloze):
        others = rng.sample([j for j in range(len(cloze)) if j != i], CHOICES - 1)
        choices = [cloze[j]["target"] for j in others]
        label = rng.randrange(CHOICES)
        choices.insert(label, example["target"])
        out.append({"context": example["context"], "choices": choices, "label": label})
    return out


def _version_key(shipped: dict[str, str]) -> str:
    from forgetscope.tiny.model import corpus_stamp

    # corpus_stamp names the Python: the code domain is its standard library.
    payload = json.dumps({"files": shipped, "data": DATA_VERSION, **corpus_stamp(), "n": EXAMPLES_PER_DOMAIN}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def task_dir(cache_dir: Path | None = None) -> Path:
    """The folder of offline task YAMLs and their data, built on first use; pass it to
    `lm_eval.tasks.TaskManager(include_path=...)`."""
    from forgetscope.sources import cache_root

    shipped = _package_files()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / "downstream" / f"tasks-{_version_key(shipped)}"
    if (target / "complete").is_file():
        return target
    scratch = target.with_name(f".{target.name}-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        for domain in corpora.DOMAINS:
            cloze = examples(domain)
            data = {"cloze": cloze, "choice": choice_examples(cloze)}
            for kind in KINDS:
                lines = "".join(json.dumps(e) + "\n" for e in data[kind])
                (scratch / f"{domain}_{kind}.jsonl").write_text(lines)
        for name, text in shipped.items():
            if name.startswith("fs_"):  # a task YAML: point its data at the generated file
                config = yaml.safe_load(text)
                split_files = config["dataset_kwargs"]["data_files"]
                config["dataset_kwargs"]["data_files"] = {k: str(target / v) for k, v in split_files.items()}
                text = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
                text += yaml.safe_dump(config, sort_keys=False)
            (scratch / name).write_text(text)
        (scratch / "complete").write_text("")
        try:
            scratch.rename(target)  # whole or not at all: a killed build is never half-used
        except OSError:
            if not (target / "complete").is_file():  # not another process's finished build
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
