"""Eval and fine-tuning text -> fixed-length token blocks, one tensor per domain.

Documents are read with `datasets` (a line of a `.txt` file, a row of JSONL or Parquet),
tokenized without special tokens, each followed by EOS when the tokenizer has one; the
documents of a domain are concatenated and cut into blocks of exactly `seq_len` tokens, the
remainder dropped, the way Hugging Face's causal-LM examples group texts. `max_tokens` keeps
whole blocks, in order, up to that many tokens per domain.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from forgetscope.errors import UserInputError

_LOADERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def read_documents(path: str | Path, text_column: str = "text") -> dict[str, list[str]]:
    """Read one file into `{domain: [document, ...]}`.

    The domain is the file's stem, unless the file has a `domain` column, whose values then
    name the domains.
    """
    import datasets

    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"data file {path} is a directory: give a file")
    if not path.is_file():
        raise UserInputError(f"data file not found: {path}")
    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        raise UserInputError(f"unsupported data file type {path.suffix!r} for {path} (use .txt, .jsonl, .json or .parquet)")
    _check_content(path, loader)
    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its log lines would come before the one error line
    try:
        table = datasets.load_dataset(loader, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for a malformed file
        cause = exc.__cause__ or exc  # DatasetGenerationError wraps what went wrong
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise UserInputError(f"cannot read {path}: {type(cause).__name__}: {text}") from exc
    finally:
        datasets.logging.set_verbosity(verbosity)
    if text_column not in table.column_names:
        raise UserInputError(f"{path} has no {text_column!r} column (columns: {', '.join(table.column_names)})")
    texts = [t if t is not None else "" for t in table[text_column]]
    wrong = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if wrong is not None:
        raise UserInputError(f"{path}: record {wrong + 1}'s {text_column!r} is a {type(texts[wrong]).__name__} "
                             f"({str(texts[wrong])[:40]!r}), not text")
    if "domain" not in table.column_names:
        return {path.stem: texts}
    by_domain: dict[str, list[str]] = {}
    for text, domain in zip(texts, table["domain"]):
        by_domain.setdefault(str(domain), []).append(text)
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
