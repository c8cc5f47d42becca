"""The sweep directory: the only place a sweep's results live, and what makes resuming safe.
This module owns its layout: it writes it (`SweepStore`) and reads it (`sweep_records`,
`finished_points`, `read_artifacts`, `read_heldout`) for the laws, the report and `mitigate`.

    DIR/config.yaml      the config as resolved (every default filled in), written first
    DIR/.lock            held (`fcntl.flock`) by the one process that writes the directory
    DIR/records.jsonl    one JSON record a line, appended and flushed as each arrives
    DIR/data.json        a digest of the token blocks: a resume on changed data files is refused
    DIR/points/ID.json   one file per point that ended: finished, or failed with its error
    DIR/adapters/ID/     with save_adapters: each finished point's PEFT adapter
    DIR/heldout.safetensors  with save_adapters: the held-out fine-tuning and eval blocks, for
                         measuring the kept adapters later without tokenizing the data again
    DIR/KIND/            artifacts of an end-of-point evaluator (KIND is its name, e.g.
                         `downstream`, `sweep/evaluators/`): base.json (the base, evaluated once) and ID.json
                         per point, written before the point is marked finished

A point's records count only once its `points/ID.json` says "finished". Opening the
directory again drops the records of points that never finished (and a torn last line),
so a sweep killed at any moment resumes without losing or duplicating a finished record.
A second process that opens a directory in use is refused, naming the first. A directory
that holds no result yet (only a config, an empty `points/`, an empty records file) is a
skeleton: a killed or refused start left it, and any config may start there.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from forgetscope.errors import UserInputError, first_line
from forgetscope.files import atomic_path, plain_name, read_json, read_yaml, scratch_path, write_atomically
from forgetscope.records import Record, read_records


class AnyObject(BaseModel):
    """The least an artifact must be: a JSON object."""

    model_config = ConfigDict(extra="allow")


def read_artifacts(directory: str | Path, kind: str, finished: set[str] | None = None,
                   schema: type[BaseModel] = AnyObject) -> tuple[object, dict[str, object]]:
    """`(base, {point_id: artifact})` of one kind from `DIR/KIND/`, for the finished points only
    (`finished` defaults to what `DIR/points/` says), each checked against `schema`."""
    if finished is None:
        finished = finished_points(directory)
    folder = Path(directory) / plain_name(kind, "artifact kind")
    base_path = folder / "base.json"
    base = read_json(base_path, f"{kind} result", schema) if base_path.is_file() else None
    points = {path.stem: read_json(path, f"{kind} result", schema) for path in sorted(folder.glob("*.json"))
              if path.stem != "base" and path.stem in finished}
    return base, points


class SweepStore:
    """Open (or create) a sweep directory for `config` and keep it consistent."""

    def __init__(self, directory: str | Path, config: dict, identity: Callable[[dict], object] = lambda data: data):
        """`identity` maps a config to what must match for a resume (by default the whole of it;
        the sweep passes its non-default settings, so a new field with a default never strands
        an old sweep)."""
        self.dir = Path(directory)
        self.records_path = self.dir / "records.jsonl"
        self.points_dir = self.dir / "points"
        config_path = self.dir / "config.yaml"
        check_resumable(self.dir, config, identity)
        self._lock = _lock(self.dir)
        try:
            _remove_scratch(self.dir)  # of writers killed mid-write: the lock says none is alive
            if config_path.is_file() and not _is_skeleton(self.dir):
                check_resumable(self.dir, config, identity)  # again, now that no other process can change it
            else:  # a new sweep, or a skeleton any config may take over
                (self.dir / "data.json").unlink(missing_ok=True)
                write_atomically(config_path, yaml.safe_dump(config, sort_keys=False))
            self.points_dir.mkdir(exist_ok=True)
            self._drop_unfinished_records()
        except BaseException:
            self._lock.close()
            raise
        self._records = open(self.records_path, "a")
        self._streamed: Counter[str] = Counter()

    def close(self) -> None:
        self._records.close()
        self._lock.close()  # closing the file releases the lock

    def __enter__(self) -> SweepStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- points --------------------------------------------------------------------------------

    def status(self) -> dict[str, dict]:
        """`{point_id: {"status": "finished" | "failed", ...}}` for every point that ended."""
        return point_statuses(self.dir)

    def finished(self) -> set[str]:
        return finished_points(self.dir)

    def failed(self) -> dict[str, str]:
        return {pid: s.get("error", "") for pid, s in self.status().items() if s.get("status") == "failed"}

    def mark(self, point_id: str, status: str, labels: dict, **extra) -> None:
        """Record that a point ended; "finished" makes its records count (and its checkpoint
        needless: it is removed)."""
        write_atomically(self.points_dir / f"{plain_name(point_id, 'point id')}.json", json.dumps({"status": status, **labels, **extra}, indent=2))
        if status == "finished":
            shutil.rmtree(self.checkpoints(point_id), ignore_errors=True)

    def forget_point(self, point_id: str) -> None:
        """Drop a point's status (to run it again) and what it left, except the records up to
        its last checkpoint (`checkpoints`), from which it resumes."""
        (self.points_dir / f"{point_id}.json").unlink(missing_ok=True)
        for folder in self.dir.iterdir():
            if folder.is_dir() and folder.name not in ("points", CHECKPOINTS):
                (folder / f"{point_id}.json").unlink(missing_ok=True)  # its artifacts, of any kind
        shutil.rmtree(self.dir / "adapters" / point_id, ignore_errors=True)
        self._streamed.pop(point_id, None)
        self._rewrite(lambda r: r.get("point_id") != point_id or self._checkpointed(r))

    def drop_checkpoints(self, point_id: str) -> None:
        """Remove an unfinished point's checkpoints and the records kept for them: it starts over."""
        folder = self.checkpoints(point_id)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            self._streamed.pop(point_id, None)
            self._rewrite(lambda r: r.get("point_id") != point_id)

    def checkpoints(self, point_id: str) -> Path:
        """Where an unfinished point keeps its Trainer checkpoints (sweeps with `checkpoints: true`)."""
        return self.dir / CHECKPOINTS / plain_name(point_id, "point id")

    def earlier_records(self, point_id: str) -> list[Record]:
        """The records an unfinished point measured up to its last checkpoint: what it resumes with."""
        return [r for r in read_records(self.records_path) if r.get("point_id") == point_id and self._checkpointed(r)]

    def _checkpointed(self, record: Record) -> bool:
        """Whether `record` was measured at or before its point's last complete checkpoint."""
        last = last_checkpoint(self.checkpoints(str(record.get("point_id"))))
        return last is not None and int(record.get("step", 0)) <= last[0]

    def check_data(self, digest: str) -> None:
        """Refuse to resume on other token blocks than the sweep started with (`DIR/data.json`
        keeps their digest; a directory from before it existed takes this one)."""
        path = self.dir / "data.json"
        if path.is_file():
            kept = read_json(path, "sweep data digest")
            if isinstance(kept, dict) and kept.get("sha256") not in (None, digest):
                raise UserInputError(f"{self.dir} was measured on other text: its data files (or the tokenizer) changed since the "
                                     "sweep started, and resuming would mix measurements of two texts: use another --out directory")
        write_atomically(path, json.dumps({"sha256": digest}))

    def save_heldout(self, ft_eval_blocks, eval_blocks: dict) -> None:
        """Keep the held-out fine-tuning blocks and the eval blocks as `DIR/heldout.safetensors`,
        so that measuring a kept adapter later (`mitigate --sweep`) reads them instead of
        tokenizing the whole fine-tuning budget again."""
        from safetensors.torch import save_file

        tensors = {"ft_eval": ft_eval_blocks} | {f"eval/{name}": blocks for name, blocks in eval_blocks.items()}
        with atomic_path(self.dir / HELDOUT) as scratch:
            save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(scratch),
                      metadata={"domains": json.dumps(list(eval_blocks))})

    # -- artifacts ---------------------------------------------------------------------------

    def save_artifact(self, kind: str, name: str, artifact: object) -> None:
        """Store an evaluator's result for `name` (a point id, or "base") as `DIR/KIND/NAME.json`,
        replacing any earlier one."""
        folder = self.dir / plain_name(kind, "artifact kind")
        folder.mkdir(exist_ok=True)
        write_atomically(folder / f"{plain_name(name, 'artifact name')}.json", json.dumps(artifact))

    def save_adapter(self, point_id: str, files: dict[str, bytes]) -> Path:
        """Store a point's adapter files as `DIR/adapters/ID/`, whole or not at all (written
        beside it, then renamed into place)."""
        target = self.dir / "adapters" / plain_name(point_id, "point id")
        scratch = scratch_path(target)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        for name, data in files.items():
            (scratch / plain_name(name, "adapter file")).write_bytes(data)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(scratch, target)
        return target

    def artifact(self, kind: str, name: str) -> object:
        """A stored artifact, or None."""
        path = self.dir / kind / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def artifacts(self, kind: str) -> tuple[object, dict[str, object]]:
        """`(base artifact or None, {point_id: artifact})` of finished points."""
        return read_artifacts(self.dir, kind, self.finished())

    # -- records -------------------------------------------------------------------------------

    def append(self, record: Record) -> None:
        """Append one record and flush it to the OS: a killed process loses nothing written."""
        self._records.write(json.dumps(record) + "\n")
        self._records.flush()
        self._streamed[str(record.get("point_id"))] += 1

    def streamed(self, point_id: str) -> int:
        """How many records of `point_id` were appended since the store was opened."""
        return self._streamed[point_id]

    def records(self) -> list[Record]:
        """The records of finished points."""
        done = self.finished()
        return [r for r in read_records(self.records_path) if r.get("point_id") in done]

    def _drop_unfinished_records(self) -> None:
        done = self.finished()
        self._rewrite(lambda r: r.get("point_id") in done or self._checkpointed(r))

    def _rewrite(self, keep) -> None:
        records = read_records(self.records_path)
        kept = [r for r in records if keep(r)]
        raw = self.records_path.read_text() if self.records_path.is_file() else ""
        if len(kept) != len(records) or (raw and not raw.endswith("\n")):
            reopen = hasattr(self, "_records") and not self._records.closed
            if reopen:
                self._records.close()
            write_atomically(self.records_path, "".join(json.dumps(r) + "\n" for r in kept))
            if reopen:
                self._records = open(self.records_path, "a")


def check_resumable(directory: Path, config: dict, identity: Callable[[dict], object] = lambda data: data) -> None:
    """Refuse, writing nothing, a directory a sweep of `config` cannot start or resume in: a
    file, a directory that holds something else, or a sweep of another config."""
    if directory.exists() and not directory.is_dir():
        raise UserInputError(f"--out {directory} is a file: give a directory")
    if not directory.is_dir() or _is_skeleton(directory):
        return
    config_path = directory / "config.yaml"
    if not config_path.is_file():
        raise UserInputError(f"{directory} is not empty and holds no sweep config.yaml: use another --out directory")
    existing = read_config_data(config_path)
    before, now = identity(existing), identity(config)
    if before != now:
        # what the identity compares (a setting left at its default counts as unchanged)
        before, now = (before, now) if isinstance(before, dict) and isinstance(now, dict) else (existing, config)
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        raise UserInputError(f"{directory} holds a sweep with a different config (differs in: {', '.join(changed)}): "
                             "use another --out directory")


HELDOUT = "heldout.safetensors"
CHECKPOINTS = "checkpoints"


def last_checkpoint(folder: Path) -> tuple[int, Path] | None:
    """`(step, path)` of the latest complete Trainer checkpoint (`checkpoint-STEP/` holding its
    `trainer_state.json`) in `folder`, or None."""
    found = [(int(entry.name.removeprefix("checkpoint-")), entry) for entry in folder.glob("checkpoint-*")
             if entry.name.removeprefix("checkpoint-").isdigit() and (entry / "trainer_state.json").is_file()]
    return max(found) if found else None


def read_heldout(directory: Path):
    """`(ft_eval_blocks, {domain: eval blocks})` a sweep kept, or None for a sweep from before it kept them."""
    from safetensors import safe_open

    path = Path(directory) / HELDOUT
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            domains = json.loads((f.metadata() or {})["domains"])
            return f.get_tensor("ft_eval"), {name: f.get_tensor(f"eval/{name}") for name in domains}
    except Exception as exc:  # safetensors raises its own error types for a corrupt file
        raise UserInputError(f"{path} is not a held-out data file forgetscope wrote: {first_line(exc) or type(exc).__name__}") from None


def read_config_data(path: Path) -> dict:
    """The mapping a sweep directory's `config.yaml` holds, as written (not yet validated)."""
    data = read_yaml(path, "sweep config")
    if not isinstance(data, dict):
        raise UserInputError(f"sweep config {path} holds a {type(data).__name__}, not a mapping of settings")
    return data


def _is_skeleton(directory: Path) -> bool:
    """True if `directory` holds no result: nothing but a config, the lock, an empty
    `points/` and an empty records file (what a start killed or refused early leaves)."""
    for entry in directory.iterdir():
        if entry.name in ("config.yaml", ".lock", "data.json") and entry.is_file() or _is_scratch(entry):
            continue
        if entry.name == "points" and entry.is_dir() and not any(entry.iterdir()):
            continue
        if entry.name == "records.jsonl" and entry.is_file() and entry.stat().st_size == 0:
            continue
        return False
    return True


def _is_scratch(path: Path) -> bool:
    """A scratch file of `files.scratch_path` (`.NAME.PID.TOKEN.tmp`, or `.NAME.PID.tmp` as
    earlier versions wrote): a writer killed mid-write leaves one; once the directory's lock
    is ours, no live writer owns it."""
    parts = path.name.split(".")
    return path.name.startswith(".") and len(parts) >= 4 and parts[-1] == "tmp" and (parts[-2].isdigit() or parts[-3].isdigit())


def _remove_scratch(directory: Path) -> None:
    for folder in (directory, directory / "points"):
        if folder.is_dir():
            for entry in folder.iterdir():
                if _is_scratch(entry) and entry.is_file():
                    entry.unlink(missing_ok=True)


def _lock(directory: Path):
    """Hold `DIR/.lock` exclusively for as long as the returned file stays open; a directory
    another process holds is refused with that process's id."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise UserInputError(f"{directory} is in use by process {holder}: wait for it to end, or use another --out directory") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


# -- reading: which points finished, and their records ----------------------------------------


def point_statuses(directory: str | Path) -> dict[str, dict]:
    """`{point_id: its DIR/points/ID.json}` for every point of a sweep directory that ended
    ("finished" or "failed"): the one reader of that folder, for the store and the laws alike."""
    statuses = {}
    for path in sorted((Path(directory) / "points").glob("*.json")):
        try:
            status = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # written atomically, so only a foreign file can be torn
        if isinstance(status, dict):
            statuses[path.stem] = status
    return statuses


def finished_points(directory: str | Path) -> set[str]:
    """The ids of the points `DIR/points/` of a sweep marks finished: the only ones whose records count."""
    return {pid for pid, status in point_statuses(directory).items() if status.get("status") == "finished"}


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
