"""Reading the text files users give, and writing result files so that a reader never sees
half of one: a crash leaves the old file or the new one."""

from __future__ import annotations

import os
from pathlib import Path

from forgetscope.errors import UserInputError


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of a file a user named as `what` ("sweep config", ...); a missing file,
    a directory or a binary file is a one-line `UserInputError`."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{what} {path} is a directory: give a file")
    if not path.is_file():
        raise UserInputError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{what} {path} is not a UTF-8 text file (byte {exc.start} cannot be decoded)") from None


def write_atomically(path: str | Path, text: str) -> None:
    """Write `text` to a scratch file beside `path`, flush it to disk, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
