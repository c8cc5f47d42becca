"""Eval and fine-tuning text -> fixed-length token blocks, one tensor per domain.

Documents are read with `datasets` (a line of a `.txt` file, a row of JSONL or Parquet),
tokenized without special tokens, each followed by EOS when the tokenizer has one; the
documents of a domain are concatenated and cut into blocks of exactly `seq_len` tokens, the
remainder dropped, the way Hugging Face's causal-LM examples group texts. `max_tokens` keeps
whole blocks, in order, up to that many tokens per domain.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from forgetscope.errors import UserInputError, first_line

_LOADERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
DATA_SUFFIXES = tuple(_LOADERS)
"""What names a data file (not a folder or a hub dataset)."""


def split_spec(source: str | Path) -> tuple[str, str | None]:
    """`(location, split)` of a data source written `LOCATION[@SPLIT]`; a path that exists as
    written is all location (a file may have an `@` in its name)."""
    text = str(source)
    if Path(text).exists() or "@" not in text:
        return text, None
    location, _, split = text.rpartition("@")
    return location, split or None


def check_data_sources(sources: Sequence[str | Path], what: str) -> None:
    """Before any model is loaded: a source that names a data file (by its suffix) must exist;
    folders and hub names are checked when they are read."""
    for source in sources:
        location, _ = split_spec(source)
        if not _exists(Path(location), f"{what} {source}") and Path(location).suffix.lower() in _LOADERS:
            raise UserInputError(f"{what} not found: {location}")


def _exists(path: Path, what: str) -> bool:
    """Whether `path` is there. A path that cannot be looked at (a symlink loop or to nothing,
    a path under a file) is one line naming why, not taken for a hub name."""
    try:
        path.stat()
        return True
    except FileNotFoundError:
        if path.is_symlink():
            raise UserInputError(f"{what}: a symbolic link to nothing ({path.readlink()})") from None
        return False
    except OSError as exc:
        raise UserInputError(f"{what}: {exc.strerror}") from None


def read_documents(source: str | Path, text_column: str = "text") -> dict[str, list[str]]:
    """Read one data source into `{domain: [document, ...]}`. A source is any of what a
    `datasets` user has at hand, each read by `datasets` itself:

    - a file: `.txt` (a line a document), `.jsonl` / `.json` or `.parquet` (a row a document);
    - a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`;
    - a folder of data files of one kind (parquet, json, csv or text), read as one dataset;
    - a dataset on the hub, `NAME[:CONFIG]`, e.g. `wikitext:wikitext-103-raw-v1`.

    A folder or a hub dataset takes its split as `SOURCE@SPLIT` (default `train`, or the only
    one). The domain is the file's stem, the folder's name or the hub name, unless the data has
    a `domain` column, whose values then name the domains.
    """
    import datasets

    location, split = split_spec(source)
    path = Path(location)
    _exists(path, f"data source {source}")  # a loop or a dangling link is named as such, not sent to the hub
    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its log lines would come before the one error line
    try:
        if path.is_file():
            loader = _LOADERS.get(path.suffix.lower())
            if loader is None:
                raise UserInputError(f"unsupported data file type {path.suffix!r} for {path} (use .txt, .jsonl, .json or .parquet, "
                                     "or a folder or hub dataset)")
            _check_content(path, loader)
            table, domain = _loaded(path, lambda: datasets.load_dataset(loader, data_files=str(path), split="train")), path.stem
        elif path.is_dir():
            table, domain = _from_folder(path, split), path.name
        elif path.suffix.lower() in _LOADERS:
            raise UserInputError(f"data file not found: {path}")
        else:
            name, _, config = location.partition(":")
            table = _loaded(location, lambda: datasets.load_dataset(name, config or None, split=split or "train"), hub=True)
            domain = (config or name).replace("/", "-")
    finally:
        datasets.logging.set_verbosity(verbosity)
    return _documents_of(table, str(source), domain, text_column)


def _from_folder(path: Path, split: str | None):
    """A `save_to_disk` folder (one split of a `DatasetDict`), or a folder of data files."""
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        saved = _loaded(path, lambda: datasets.load_from_disk(str(path)))
        if isinstance(saved, datasets.DatasetDict):
            splits = list(saved)
            chosen = split or ("train" if "train" in saved or len(splits) != 1 else splits[0])
            if chosen not in saved:
                raise UserInputError(f"{path} has no split {chosen!r} (splits: {', '.join(splits)}): write {path}@SPLIT")
            return saved[chosen]
        return saved
    if not any(entry.is_file() for entry in path.iterdir()):
        raise UserInputError(f"data folder {path} holds no data files")
    return _loaded(path, lambda: datasets.load_dataset(str(path), split=split or "train"))


def _loaded(where: object, load, hub: bool = False):
    """`load()`, with whatever `datasets` raises for data it cannot read as one line naming `where`."""
    try:
        return load()
    except UserInputError:
        raise
    except Exception as exc:  # datasets raises many types for a malformed file or an unreachable hub
        cause = exc.__cause__ or exc  # DatasetGenerationError wraps what went wrong
        what = f"{where}: no such file or folder, and the hub has no dataset of that name here" if hub else f"cannot read {where}"
        raise UserInputError(f"{what}: {type(cause).__name__}: {first_line(cause)}") from exc


def _documents_of(table, source: str, domain: str, text_column: str) -> dict[str, list[str]]:
    """`{domain: texts}` of a loaded table, every text checked to be a string."""
    if text_column not in table.column_names:
        raise UserInputError(f"{source} has no {text_column!r} column (columns: {', '.join(table.column_names)})")
    texts = [t if t is not None else "" for t in table[text_column]]
    wrong = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if wrong is not None:
        raise UserInputError(f"{source}: record {wrong + 1}'s {text_column!r} is a {type(texts[wrong]).__name__} "
                             f"({str(texts[wrong])[:40]!r}), not text")
    if "domain" not in table.column_names:
        return {domain: texts}
    by_domain: dict[str, list[str]] = {}
    for text, name in zip(texts, table["domain"]):
        by_domain.setdefault(str(name), []).append(text)
    return by_domain


def _check_content(path: Path, loader: str) -> None:
    """Say what is wrong with a file that cannot be what its suffix says, before `datasets`
    turns it into a generic "An error occurred while generating the dataset"."""
    import json

    if path.stat().st_size == 0:
        raise UserInputError(f"{path} is empty")
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if loader == "parquet":
        with open(path, "rb") as f:
            f.seek(-4, 2)
            tail = f.read(4)
        if head[:4] != b"PAR1" or tail != b"PAR1":
            raise UserInputError(f"{path} is not a Parquet file (it lacks Parquet's PAR1 markers)")
        return
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of what was read
            raise UserInputError(f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
        text = head[: exc.start].decode("utf-8")
    if loader == "json" and path.suffix.lower() == ".json" and text.strip() and text.lstrip()[0] not in "{[":
        raise UserInputError(f"{path} holds a bare JSON value, not records (a list of objects, or one object a line)")
    if loader == "json" and path.suffix.lower() == ".jsonl":
        lines = text.splitlines()
        for number, line in enumerate(lines[:-1] if len(head) == 1 << 16 else lines, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserInputError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
            if not isinstance(value, dict):
                raise UserInputError(f"{path}: line {number} is a JSON {type(value).__name__}, not an object with a text field")


def read_domains(paths: Sequence[str | Path], text_column: str = "text") -> dict[str, list[str]]:
    """Read several files; documents of the same domain from different files are joined in order."""
    if not paths:
        raise UserInputError("no eval data given")
    domains: dict[str, list[str]] = {}
    for path in paths:
        for name, docs in read_documents(path, text_column).items():
            domains.setdefault(name, []).extend(docs)
    return domains


def group_into_blocks(
    documents: Iterable[str], tokenizer, seq_len: int, max_tokens: int | None = None
) -> torch.Tensor:
    """Tokenize `documents` and cut them into a `[n_blocks, seq_len]` LongTensor.

    Returns an empty `[0, seq_len]` tensor when the text is shorter than one block.
    """
    if seq_len < 2:
        raise UserInputError(f"seq_len must be at least 2, got {seq_len}")
    max_blocks = None if max_tokens is None else max_tokens // seq_len
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in documents:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if max_blocks is not None and len(ids) >= max_blocks * seq_len:
            break  # enough text for the budget; don't tokenize the rest
    n_blocks = len(ids) // seq_len
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    return torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


def load_eval_blocks(
    paths: Sequence[str | Path],
    tokenizer,
    seq_len: int,
    max_tokens: int | None = None,
    text_column: str = "text",
) -> dict[str, torch.Tensor]:
    """Read eval files and return `{domain: [n_blocks, seq_len] token ids}`.

    Raises `UserInputError` if a domain has less text than one block of `seq_len` tokens.
    """
    if max_tokens is not None and max_tokens < seq_len:
        raise UserInputError(f"--max-tokens ({max_tokens}) is smaller than one sequence (--seq-len {seq_len})")
    blocks = {}
    for name, docs in read_domains(paths, text_column).items():
        blocks[name] = group_into_blocks(docs, tokenizer, seq_len, max_tokens)
        if len(blocks[name]) == 0:
            raise UserInputError(f"eval domain {name!r} is shorter than one sequence of {seq_len} tokens")
    return blocks


def hold_out_finetune_text(blocks: torch.Tensor, n_tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`(train, held out)` for `ft_loss`, the one rule `train` and sweeps share: `n_tokens` of
    whole sequences drawn with `seed`, but never more than 5% of the text (at least one
    sequence), so measuring `ft_loss` stays cheap next to training on the rest."""
    return split_validation(blocks, min(n_tokens, blocks.numel() // 20), seed)


def split_validation(blocks: torch.Tensor, n_tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`(train, validation)`: a seeded random `n_tokens` worth of whole blocks held out.

    A fine-tuning dataset's validation split: `ft_loss` is measured on blocks drawn from the
    same text as the training blocks, never trained on.
    """
    if len(blocks) < 2:
        raise UserInputError("fine-tuning text is shorter than two sequences: nothing left to hold out")
    n_val = min(max(1, n_tokens // blocks.shape[1]), len(blocks) - 1)
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    return blocks[order[n_val:]], blocks[order[:n_val]]


# -- replay text never overlaps eval text ---------------------------------------------------

OVERLAP_WINDOW = 32
"""Tokens in a run of text shared by replay and eval text that counts as an overlap: long
enough that natural text does not repeat it by chance, short enough to catch a copied passage."""

HASH_ROWS = 4096
"""Blocks hashed at once: memory stays at a few `[rows, seq_len]` uint64 arrays, whatever the corpus."""


def _window_hashes(blocks: torch.Tensor, width: int) -> np.ndarray:
    """A 64-bit polynomial hash of every `width`-token window of each block (`HASH_ROWS` blocks
    at a time, summed one window offset at a time: no `[windows, width]` copy is made)."""
    if blocks.shape[1] < width:
        return np.zeros(0, dtype=np.uint64)
    base = np.uint64(1_000_003)
    parts = []
    for start in range(0, len(blocks), HASH_ROWS):
        ids = blocks[start : start + HASH_ROWS].numpy().astype(np.uint64)
        count = ids.shape[1] - width + 1
        hashes = np.zeros((len(ids), count), dtype=np.uint64)
        power = np.uint64(1)
        with np.errstate(over="ignore"):  # wraps mod 2^64, as intended
            for offset in range(width):
                hashes += ids[:, offset : offset + count] * power
                power = power * base
        parts.append(hashes.reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def check_no_overlap(replay_blocks: torch.Tensor, eval_blocks: Mapping[str, torch.Tensor], width: int = OVERLAP_WINDOW) -> None:
    """A one-line `UserInputError` if any `width`-token run of an eval domain also occurs in
    the replay text: replaying the eval text would hide the forgetting it measures. The eval
    text's windows are held; the replay corpus is streamed past them `HASH_ROWS` blocks at a time."""
    width = min(width, replay_blocks.shape[1])
    eval_hashes = {name: _window_hashes(blocks, width) for name, blocks in eval_blocks.items()}
    replayed = {name: np.zeros(len(hashes), dtype=bool) for name, hashes in eval_hashes.items()}
    for start in range(0, len(replay_blocks), HASH_ROWS):
        replay = np.unique(_window_hashes(replay_blocks[start : start + HASH_ROWS], width))
        for name, hashes in eval_hashes.items():
            replayed[name] |= np.isin(hashes, replay)
    for name, hashes in eval_hashes.items():
        shared = int(replayed[name].sum())
        if shared:
            raise UserInputError(
                f"the replay text overlaps eval domain {name!r}: {shared} of its {len(hashes)} runs of {width} tokens "
                "also occur in the replay corpus; replay must be text forgetting is not measured on"
            )


def _check_no_shared_documents(replay: list[str], eval_documents: Mapping[str, list[str]]) -> None:
    """A one-line `UserInputError` if a document of an eval domain is also a replay document."""
    replayed = {doc.strip() for doc in replay}
    for name, docs in eval_documents.items():
        shared = sum(1 for doc in docs if doc.strip() and doc.strip() in replayed)
        if shared:
            raise UserInputError(f"the replay text overlaps eval domain {name!r}: {shared} of its {len(docs)} documents are also "
                                 "replay documents; replay must be text forgetting is not measured on")


# -- one pipeline for a run's text: `train` and every sweep point ----------------------------


@dataclass
class RunData:
    """A run's text as token blocks: what it trains on, the held-out fine-tuning text its
    `ft_loss` is measured on, the eval domains forgetting is measured on, and the replay
    corpus of the training mitigations that need one."""

    train_blocks: torch.Tensor
    ft_eval_blocks: torch.Tensor
    eval_blocks: dict[str, torch.Tensor]
    replay_blocks: torch.Tensor | None = None


def prepare_run_data(tokenizer, finetune_documents: list[str], eval_documents: Mapping[str, list[str]], *, seq_len: int,
                     steps: int, batch_size: int, eval_tokens: int, ft_eval_tokens: int,
                     replay_documents: list[str] | None = None, ft_eval_documents: list[str] | None = None) -> RunData:
    """The one rule `forgetscope train` and sweeps cut their text by, so that a `train` run
    and a one-point sweep of the same settings see the same sequences.

    - Fine-tuning text: a sample of the documents (shuffled with seed 0, never the run's seed,
      so runs that differ only in seed share their data) up to one pass of the step budget
      plus `ft_eval_tokens`, cut into blocks; then `ft_eval_tokens` of whole blocks drawn with
      seed 0 (at most 5%: `hold_out_finetune_text`) are held out for `ft_loss`, unless
      `ft_eval_documents` give the held-out text instead.
    - Eval text: each domain's first `eval_tokens`, in whole blocks.
    - Replay text: a sample as for the fine-tuning text, up to one pass of the step budget,
      never overlapping the eval text (`check_no_overlap`).
    """
    if eval_tokens < seq_len:
        raise UserInputError(f"eval_tokens ({eval_tokens}) is smaller than one sequence (seq_len {seq_len})")
    one_pass = steps * batch_size * seq_len
    documents = list(finetune_documents)
    # A seeded sample of the documents, not the first ones in corpus order: a 100-step pilot
    # and a 400-step run then train on text from the same distribution (the shorter budget's
    # documents are the first of the longer one's). In corpus order, the forecast benchmark's
    # pilots trained on the first fifth of the code files (alphabetical) and their targets on
    # nearly all of them, and every forecast came out too high.
    random.Random(0).shuffle(documents)
    if ft_eval_documents:
        train_blocks = group_into_blocks(documents, tokenizer, seq_len, one_pass)
        ft_eval_blocks = group_into_blocks(ft_eval_documents, tokenizer, seq_len, ft_eval_tokens)
        if len(ft_eval_blocks) == 0:
            raise UserInputError(f"the held-out fine-tuning text is shorter than one sequence of {seq_len} tokens")
    else:
        blocks = group_into_blocks(documents, tokenizer, seq_len, one_pass + ft_eval_tokens)
        train_blocks, ft_eval_blocks = hold_out_finetune_text(blocks, ft_eval_tokens, seed=0)
    eval_blocks = {}
    for name, docs in eval_documents.items():
        eval_blocks[name] = group_into_blocks(docs, tokenizer, seq_len, eval_tokens)
        if len(eval_blocks[name]) == 0:
            raise UserInputError(f"eval domain {name!r} is shorter than one sequence of {seq_len} tokens")
    replay_blocks = None
    if replay_documents is not None:
        replay = list(replay_documents)
        _check_no_shared_documents(replay, eval_documents)  # the sample below may miss a copied passage's windows
        random.Random(0).shuffle(replay)
        replay_blocks = group_into_blocks(replay, tokenizer, seq_len, one_pass)
        if len(replay_blocks) == 0:
            raise UserInputError(f"the replay text is shorter than one sequence of {seq_len} tokens")
        check_no_overlap(replay_blocks, eval_blocks)
    return RunData(train_blocks, ft_eval_blocks, eval_blocks, replay_blocks)
