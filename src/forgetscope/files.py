"""Reading the text files users give, and writing result files so that a reader never sees
half of one: a crash leaves the old file or the new one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forgetscope.errors import UserInputError, describe

if TYPE_CHECKING:
    from pydantic import BaseModel


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


def read_yaml(path: str | Path, what: str) -> Any:
    """The YAML value of a file a user named as `what`; a file that is not YAML is one
    `UserInputError` naming the file and the first problem."""
    import yaml

    text = read_text_file(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserInputError(f"{what} {path} is not valid YAML: {' '.join(str(exc).split())}") from None


def read_json(path: str | Path, what: str, schema: type[BaseModel] | None = None) -> Any:
    """The JSON value of a file forgetscope (or a user) wrote, checked against `schema` (a
    pydantic model; extra keys allowed where the model allows them). A file that is not
    JSON, not an object, or does not fit the schema is one `UserInputError` that names the
    file and the field."""
    import json

    text = read_text_file(path, what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return value if schema is None else check_schema(value, schema, f"{what} {path}")


def check_schema(value: Any, schema: type[BaseModel], source: str) -> Any:
    """`value` itself if it fits `schema`; else a `UserInputError` naming `source` and the field."""
    from pydantic import ValidationError

    if not isinstance(value, dict):
        raise UserInputError(f"{source} holds a JSON {type(value).__name__}, not an object")
    try:
        schema.model_validate(value)
    except ValidationError as exc:
        raise UserInputError(describe(exc, source)) from None
    return value


def plain_name(name: str, what: str) -> str:
    """`name` if it can be one component of a path (a point id, a sweep or domain name, an
    artifact kind); anything that could climb out of a directory or name another is a
    `UserInputError`. The one check every user-given name that becomes a path passes."""
    if not isinstance(name, str) or not name or name in (".", "..") or name.startswith((".", "-")) or len(name) > 200 \
            or any(c in name for c in '/\\\0:') or any(ord(c) < 32 for c in name):
        raise UserInputError(f"{what} {name!r} is not a plain name: use letters, digits, `_`, `-`, `+` and `.`, "
                             "with no `/` and no leading `.` or `-`")
    return name


def check_output_dir(path: str | Path, what: str) -> None:
    """Refuse, before any work, a directory that could not be written: a file, a path under a
    file, a symlink loop, or one whose nearest existing parent this process may not write."""
    _check_writable(Path(path), what, [Path(path), *Path(path).parents])


def check_output_file(path: str | Path, what: str) -> None:
    """`check_output_dir` for the folder of a file to be written; the file is no directory."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{what} {path} is a directory: give a file path")
    _check_writable(path, what, list(path.parents))


def _check_writable(path: Path, what: str, ancestors: list[Path]) -> None:
    import stat

    for ancestor in ancestors:
        try:
            mode = ancestor.stat().st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:  # a path under a file, a symlink loop
            raise UserInputError(f"{what} {path}: {exc.strerror}") from None
        if not stat.S_ISDIR(mode):
            where = "is a file" if ancestor == path else f"is under {ancestor}, a file"
            raise UserInputError(f"{what} {path} {where}: give a directory")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise UserInputError(f"{what} {path}: {ancestor} is not writable (permission denied)")
        return


def scratch_path(path: Path) -> Path:
    """The scratch file a writer of `path` uses: hidden, beside it, named by the writer's
    process and a random token, so no two writers share one, even on two machines that
    share the directory (a process id is unique on one machine only)."""
    import secrets

    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A scratch path to write `path`'s content to (by any library: `savefig`, `torch.save`);
    renamed over `path` when the block ends, removed if it fails. The parent must exist."""
    path = Path(path)
    tmp = scratch_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A scratch directory to fill; renamed to `path` (new, or empty) when the block ends,
    removed with everything in it if the block fails: a directory appears whole or not at all."""
    import shutil

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserInputError(f"{path} is {'a file' if not path.is_dir() else 'not empty'}: give a new or empty directory")
    made = _missing_parents(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_path(path)
    try:
        tmp.mkdir()
        yield tmp
        if path.is_dir():
            path.rmdir()  # empty, checked above
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def write_atomically(path: str | Path, content: str | bytes) -> None:
    """Write `content` to a scratch file beside `path`, flush it to disk, then rename it over
    `path`: a reader sees the old file or the new one, and a failed write (a full disk, a
    kill) leaves no scratch file behind. Missing parent directories are created."""
    path = Path(path)
    made = _missing_parents(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        for folder in made:  # the directories this write made, innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _missing_parents(path: Path) -> list[Path]:
    missing, parent = [], path.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    return missing
