"""The record: one forgetting measurement of one run at one step, the contract between the
callback (which makes records), the sweep store (which keeps them, one JSON object a line of
`records.jsonl`), the laws (which fit them) and the report (which plots them).

Keys may be added, never removed; anything that writes records in this shape can be fitted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from forgetscope.errors import UserInputError


class DomainMetrics(TypedDict):
    """The metric on one eval domain, nats per token (see `forgetscope.metric`)."""

    forgetting_ce: float
    kl: float
    base_entropy: float
    hard_ce: float
    base_loss: float
    finetuned_loss: float


class Record(DomainMetrics, total=False):
    """One measurement: the metric over every eval domain, and per domain, at `step`."""

    step: int
    train_loss: float | None
    """The last logged training loss (None at step 0)."""
    ft_loss: float
    """Loss on held-out fine-tuning text: how far fine-tuning got."""
    eval_tokens: int
    domains: dict[str, DomainMetrics]
    trainable_params: int
    """`P`: non-embedding parameters being trained."""
    vocab_size: int
    """The output vocabulary: KL cannot sensibly exceed what a uniform prediction costs."""
    forecast: dict
    """With a KL budget: the forecast KL at the run's last step so far (`laws.forecast.forecast_run`)."""
    # A sweep adds the point's labels:
    point_id: str
    rank: int
    target_modules: list[str] | str
    layers: list[int] | None
    rslora: bool
    lora_alpha: float
    learning_rate: float
    seed: int
    replay_fraction: float
    kl_weight: float
    l2_weight: float
    """The training mitigations of the point (`forgetscope.mitigate.training`); 0 or absent: none."""


MITIGATION_KEYS = ("replay_fraction", "kl_weight", "l2_weight")
"""The record labels that say a run was mitigated while it trained."""


def is_mitigated(record: dict) -> bool:
    """Whether a run used any training mitigation (records from before they existed did not)."""
    return any(record.get(key) for key in MITIGATION_KEYS)


FIT_KEYS = ("point_id", "trainable_params", "step", "kl", "forgetting_ce", "ft_loss")
"""What every record must hold for the laws to be fitted."""


def read_records(path: str | Path) -> list[Record]:
    """Every complete record of a `records.jsonl`; a torn last line (a crash mid-write) is skipped."""
    records = []
    try:
        lines = Path(path).read_text().splitlines() if Path(path).is_file() else []
    except UnicodeDecodeError:
        raise UserInputError(f"{path} is not a text file of JSON records") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # torn last line
            raise UserInputError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise UserInputError(f"{path}: line {number} is a JSON {type(record).__name__}, not a record (an object)")
        records.append(record)
    return records


def finished_points(directory: str | Path) -> set[str]:
    """The ids of the points `DIR/points/` of a sweep marks finished: the only ones whose records count."""
    finished = set()
    for path in (Path(directory) / "points").glob("*.json"):
        try:
            if json.loads(path.read_text()).get("status") == "finished":
                finished.add(path.stem)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue  # written atomically, so only a foreign file can be torn
    return finished


def sweep_records(directory: str | Path) -> tuple[list[Record], int]:
    """The records of a sweep directory's finished points, and how many records of unfinished
    ones (a sweep killed and not yet resumed, or still running) were left out. A directory with
    no `points/` (one `train` run) has all its records."""
    records = read_records(Path(directory) / "records.jsonl")
    if not (Path(directory) / "points").is_dir():
        return records, 0
    finished = finished_points(directory)
    kept = [r for r in records if r.get("point_id") in finished]
    return kept, len(records) - len(kept)
