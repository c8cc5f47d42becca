"""Tiny models, tokenizers and text that the tests build themselves in seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from forgetscope.tiny import corpora  # noqa: E402
from forgetscope.tiny.model import train_tokenizer  # noqa: E402
from model_helpers import gpt2, llama, save_with_tokenizer  # noqa: E402


def scripture_text(n_chapters: int = 40) -> list[str]:
    return corpora.scripture()[:n_chapters]


def docs_text(n: int = 200) -> list[str]:
    return corpora.docs()[:n]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A 512-token byte-level BPE tokenizer trained on a slice of the embedded corpora."""
    path = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(scripture_text() + docs_text(), vocab_size=512).save_pretrained(path)
    return path


def make_llama(tokenizer_dir: Path, path: Path, seed: int = 0, vocab_size: int | None = None) -> Path:
    """A 2-layer, 32-wide Llama saved with the shared tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return save_with_tokenizer(llama(vocab_size or len(tokenizer), seed=seed), tokenizer, path)


def make_gpt2(tokenizer_dir: Path, path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide GPT-2 saved with the shared tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return save_with_tokenizer(gpt2(len(tokenizer), seed=seed), tokenizer, path)


@pytest.fixture(scope="session")
def llama_dir(tokenizer_dir, tmp_path_factory) -> Path:
    return make_llama(tokenizer_dir, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def gpt2_dir(tokenizer_dir, tmp_path_factory) -> Path:
    return make_gpt2(tokenizer_dir, tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def eval_files(tmp_path_factory) -> list[Path]:
    """Two eval domains as files: scripture as .txt (a line a document), docs as .jsonl."""
    root = tmp_path_factory.mktemp("eval")
    txt = root / "scripture.txt"
    txt.write_text("\n".join(scripture_text(60)[40:]) + "\n")
    jsonl = root / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs_text(400)[200:]))
    return [txt, jsonl]


class Registries:
    """Lets a test add plug-in files to a registry's package; everything is restored after."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def extend_package(self, package, folder: Path) -> None:
        """Make `folder`'s modules part of `package`, and have its registry discover again."""
        from forgetscope.registry import Registry

        registry = next(v for v in vars(package).values() if isinstance(v, Registry))
        registry.discover()  # the built-ins register into the registry kept after the test (their modules import once)
        self.monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
        self.monkeypatch.setattr(registry, "_items", dict(registry._items))
        self.monkeypatch.setattr(registry, "_origins", dict(registry._origins))
        self.monkeypatch.setattr(registry, "_discovered", False)


@pytest.fixture
def registries(monkeypatch) -> Registries:
    return Registries(monkeypatch)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items) -> None:
    """`gpu` tests are skipped without a CUDA device, `multi_gpu` ones with fewer than two."""
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if item.get_closest_marker("multi_gpu") is not None and devices < 2:
            item.add_marker(pytest.mark.skip(reason=f"needs two CUDA devices; this machine has {devices}"))
        elif item.get_closest_marker("gpu") is not None and devices < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device; this machine has none"))


def pytest_terminal_summary(terminalreporter) -> None:
    """One line saying whether the real-model tests ran, and how long they took (CI's log shows it)."""
    reports = [r for outcome in ("passed", "failed", "skipped", "error") for r in terminalreporter.stats.get(outcome, [])
               if getattr(r, "when", "call") in ("call", "setup") and "real_model" in getattr(r, "keywords", {})]
    calls = [r for r in reports if r.when == "call"]
    if not reports:
        return
    counts = {outcome: sum(r.outcome == outcome for r in calls) for outcome in ("passed", "failed")}
    skipped = sum(r.outcome == "skipped" for r in reports)
    seconds = sum(r.duration for r in reports)
    terminalreporter.write_line(f"real_model tests: {counts['passed']} passed, {counts['failed']} failed, {skipped} skipped, "
                                f"{seconds:.0f} s (setup, including the fetch, and calls)")
