"""Eval text becomes blocks exactly as the data contract says (docs/guides/measure.md)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from transformers import AutoTokenizer

from forgetscope.data import group_into_blocks, load_eval_blocks, read_documents
from forgetscope.errors import UserInputError


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_documents_are_tokenized_without_specials_joined_by_eos_and_cut_into_full_blocks(tok):
    docs = ["In the beginning", "was the Word", "and the Word was with God"]
    ids = []
    for doc in docs:
        ids += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    blocks = group_into_blocks(docs, tok, seq_len=4)
    assert blocks.shape == (len(ids) // 4, 4)
    assert blocks.flatten().tolist() == ids[: len(ids) // 4 * 4]  # remainder dropped


def test_max_tokens_keeps_whole_blocks_in_order(tok):
    docs = ["word " * 50] * 4
    full = group_into_blocks(docs, tok, seq_len=8)
    capped = group_into_blocks(docs, tok, seq_len=8, max_tokens=30)
    assert capped.shape == (3, 8)
    assert capped.tolist() == full[:3].tolist()


def test_a_txt_file_is_one_domain_named_by_its_stem_with_a_document_per_line(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text("first line\nsecond line\n")
    assert read_documents(path) == {"wiki": ["first line", "second line"]}


def test_a_domain_column_splits_a_file_into_domains(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"text": "a b", "domain": "x"}, {"text": "c d", "domain": "y"}, {"text": "e f", "domain": "x"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_documents(path) == {"x": ["a b", "e f"], "y": ["c d"]}


def test_parquet_files_are_read(tmp_path):
    path = tmp_path / "code.parquet"
    pd.DataFrame({"text": ["def f(): pass", "x = 1"]}).to_parquet(path)
    assert read_documents(path) == {"code": ["def f(): pass", "x = 1"]}


def test_load_eval_blocks_returns_one_tensor_per_domain(eval_files, tok):
    blocks = load_eval_blocks(eval_files, tok, seq_len=32, max_tokens=320)
    assert set(blocks) == {"scripture", "docs"}
    assert all(b.shape == (10, 32) for b in blocks.values())


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.txt", "not found"),
        ("tiny\n", "short.txt", "shorter than one sequence"),
        ('{"body": "x"}\n', "nocol.jsonl", "no 'text' column"),
        ("x", "data.csv", "unsupported data file type"),
    ],
)
def test_bad_eval_data_is_a_user_error(tmp_path, tok, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserInputError, match=message):
        load_eval_blocks([path], tok, seq_len=64)
