"""Pretrain the default tiny and miniature bases from their recipes and write them, with
their manifests, into `src/forgetscope/tiny/bases/` (what the package ships).

    python scripts/ship_bases.py [--first-steps 3]

Run it after changing a recipe (`TinyConfig`, `MiniatureConfig`, the corpora), on the
machine kind the README names (2 CPU cores, torch 2.13.0 CPU). It pretrains each base twice:
once stopped after its first steps, whose weights' hash goes into the manifest for the test
of the recipe, and once to the end.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
from pathlib import Path

import tokenizers
import torch
import transformers

from forgetscope.conjugate.miniature import MiniatureConfig, pretrain_miniature
from forgetscope.tiny.model import TinyConfig, corpus_stamp, pretrain
from forgetscope.tiny.shipped import BASES, sha256, write_manifest


def ship(name: str, settings: dict, build, first_steps: int) -> None:
    made_with = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                 "tokenizers": tokenizers.__version__, "machine": platform.machine(), "processor": platform.processor(),
                 "cpu_capability": torch.backends.cpu.get_cpu_capability()}  # float kernels differ by ISA: run with ATEN_CPU_CAPABILITY=avx2
    with tempfile.TemporaryDirectory() as scratch:
        build(Path(scratch), first_steps)
        first = {"steps": first_steps, "model.safetensors": sha256(Path(scratch) / "model.safetensors")}
    target = BASES / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    build(target, None)
    print(name, "->", write_manifest(name, target, settings, first, made_with))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first-steps", type=int, default=3, help="steps of the recipe whose weights' hash the test checks")
    args = parser.parse_args()
    tiny = TinyConfig()
    ship("tiny-llama", tiny.model_dump() | corpus_stamp(), lambda out, stop: pretrain(tiny, out, False, stop), args.first_steps)
    miniature = MiniatureConfig()
    ship("miniature-llama", miniature.base_settings(), lambda out, stop: pretrain_miniature(miniature, out, False, stop),
         args.first_steps)


if __name__ == "__main__":
    main()
