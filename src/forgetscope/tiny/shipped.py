"""The pretrained tiny bases that ship inside the package, so the first demo fine-tunes at once.

Each is `bases/NAME/`: an ordinary `transformers` model directory (float32 safetensors and
its tokenizer) with `manifest.json` beside it, which holds
- `settings`: the recipe it was pretrained with, including the corpus stamp (the corpus
  version and the Python version whose standard library is the code corpus), so a base is
  served only to the recipe that made it;
- `sha256`: the hash of every file, checked each time the base is served;
- `first_steps`: the hash of the weights after the recipe's first steps, which
  `forgetscope tiny pretrain --stop-after` reproduces and a test checks;
- `made_with`: the versions and machine it was pretrained on, and the instruction set of
  torch's CPU kernels (`cpu_capability`): float results differ between AVX2 and AVX-512
  kernels, so a rerun matches bit for bit only on the same (`ATEN_CPU_CAPABILITY=avx2`
  makes torch use AVX2 kernels on a machine with AVX-512).

`scripts/ship_bases.py` pretrains the bases and writes these directories.
"""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files
from pathlib import Path

from forgetscope.errors import UserInputError

BASES = Path(str(files("forgetscope.tiny").joinpath("bases")))
REPRODUCED = ("model.safetensors", "tokenizer.json")  # what a rerun of the recipe must match bit for bit


def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def manifest(name: str) -> dict | None:
    """The manifest of the shipped base `name`, or None if none ships."""
    path = BASES / name / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def shipped_base(name: str, settings: dict) -> Path | None:
    """The shipped base `name` if it was pretrained with exactly `settings`, after checking
    every file's hash; None if no base ships for these settings."""
    found = manifest(name)
    if found is None or found["settings"] != settings:
        return None
    directory = BASES / name
    for file, digest in found["sha256"].items():
        if not (directory / file).is_file() or sha256(directory / file) != digest:
            raise UserInputError(f"the shipped base {directory} fails its hash check on {file}: reinstall forgetscope")
    return directory


def compare_with_shipped(name: str, directory: Path) -> str:
    """One line saying whether a pretrained `directory` matches the shipped base `name`
    bit for bit (at the end of the recipe, or after its first steps)."""
    found = manifest(name)
    if found is None:
        return f"no {name} base ships to compare with"
    steps = json.loads((Path(directory) / "tiny_metrics.json").read_text())["pretrain_steps"]
    settings = found["settings"]
    if steps == found["first_steps"]["steps"]:
        expected, what = {"model.safetensors": found["first_steps"]["model.safetensors"]}, f"after its first {steps} steps"
    elif steps == settings["pretrain_steps"]:
        expected, what = {f: found["sha256"][f] for f in REPRODUCED}, "at the end of the recipe"
    else:
        return f"{steps} steps: the shipped {name} records hashes at {found['first_steps']['steps']} and {settings['pretrain_steps']} steps only"
    differing = [f for f, digest in expected.items() if sha256(Path(directory) / f) != digest]
    if differing:
        hint = ""
        made_on, here = found["made_with"].get("cpu_capability"), _cpu_capability()
        if made_on and here and made_on != here:
            hint = (f" (this torch runs {here} kernels, the shipped base's ran {made_on}, and their floats differ: "
                    f"rerun with ATEN_CPU_CAPABILITY={made_on.lower()} to compare bit for bit)")
        return f"differs from the shipped {name} {what} ({', '.join(differing)}); it was made with {found['made_with']}{hint}"
    return f"matches the shipped {name} {what}, bit for bit"


def _cpu_capability() -> str | None:
    """The instruction set torch's CPU kernels use here (`AVX2`, `AVX512`, ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def write_manifest(name: str, directory: Path, settings: dict, first_steps: dict, made_with: dict) -> Path:
    """Write `directory/manifest.json` for a base pretrained into `directory`."""
    hashes = {p.name: sha256(p) for p in sorted(Path(directory).iterdir()) if p.is_file() and p.name != "manifest.json"}
    content = {"name": name, "settings": settings, "sha256": hashes, "first_steps": first_steps, "made_with": made_with}
    path = Path(directory) / "manifest.json"
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path
