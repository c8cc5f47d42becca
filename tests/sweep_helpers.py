"""A small sweep over the tests' tiny Llama, written as a YAML file the way users write one."""

from __future__ import annotations

from pathlib import Path

import yaml


def tiny_sweep_config(base: Path, eval_files: list[Path], **overrides) -> dict:
    config = {
        "name": "test",
        "base_model": str(base),
        "finetune_data": {"files": [str(eval_files[1])]},
        "eval_data": [{"files": [str(eval_files[0])]}],
        "grid": {"rank": [1, 4], "target_modules": [["q_proj"], "all-linear"], "learning_rate": [0.01]},
        "steps": 8,
        "eval_points": 4,
        "eval_tokens": 256,
        "ft_eval_tokens": 128,
        "batch_size": 4,
        "seq_len": 32,
        "resources": {"cpus": 1},
    }
    config.update(overrides)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def by_point_and_step(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (r["point_id"], r["step"]))
