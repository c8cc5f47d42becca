"""What a post-hoc mitigation works on: a fine-tune, its base, and the two eval texts, from
files (`mitigate --base --adapter --eval-data --ft-eval-data`) or from a sweep directory
whose points kept their adapters (`mitigate --sweep DIR --point ID`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from forgetscope.errors import UserInputError


@dataclass
class MitigationInputs:
    finetuned: torch.nn.Module
    base: torch.nn.Module | None
    """A full fine-tune's base; None for a PEFT adapter (its base is the adapter switched off)."""
    tokenizer: object
    eval_blocks: dict[str, torch.Tensor]
    ft_blocks: torch.Tensor
    name: str = "mitigation"
    describe: dict = field(default_factory=dict)


def from_files(base: str, adapter: str | None, finetuned: str | None, eval_data: list[Path], ft_eval_data: list[Path],
               seq_len: int, eval_tokens: int, dtype: str = "float32", device: str = "auto") -> MitigationInputs:
    """Load a base and its fine-tune, and cut both texts into `seq_len` blocks (up to `eval_tokens` a domain)."""
    from forgetscope.data import load_eval_blocks
    from forgetscope.models import check_files_exist, check_seq_len, load_pair

    check_files_exist([*eval_data, *ft_eval_data], "data file")  # before a large model is loaded
    pair = load_pair(base, finetuned=finetuned, adapter=adapter, dtype=dtype, device=device)
    check_seq_len(pair.finetuned, seq_len)
    eval_blocks = load_eval_blocks(eval_data, pair.tokenizer, seq_len, eval_tokens)
    ft_blocks = torch.cat(list(load_eval_blocks(ft_eval_data, pair.tokenizer, seq_len, eval_tokens).values()))
    return MitigationInputs(pair.finetuned, pair.base, pair.tokenizer, eval_blocks, ft_blocks,
                            describe={"base": base, "adapter": adapter, "finetuned": finetuned})


def _last_records(directory: Path) -> dict[str, dict]:
    """Each finished point's last record."""
    from forgetscope.records import read_records
    from forgetscope.sweep.store import finished_points

    finished = finished_points(directory)
    last: dict[str, dict] = {}
    for record in read_records(directory / "records.jsonl"):
        pid = record.get("point_id")
        if pid in finished and record["step"] >= last.get(pid, {}).get("step", -1):
            last[pid] = record
    return last


def pick_point(directory: Path, point: str) -> str:
    """`point` itself, or for `largest` the unmitigated finished point with a saved adapter
    and the most trainable parameters (the longest run, then the first id, on ties)."""
    adapters = directory / "adapters"
    if point != "largest":
        if not (adapters / point / "adapter_config.json").is_file():
            raise UserInputError(f"{directory} kept no adapter for point {point!r} (is it finished, with save_adapters: true?)")
        return point
    last = _last_records(directory)
    plain = [r for pid, r in last.items() if (adapters / pid / "adapter_config.json").is_file()
             and not any(r.get(k) for k in ("replay_fraction", "kl_weight", "l2_weight"))]
    if not plain:
        raise UserInputError(f"{directory} has no finished unmitigated point with a saved adapter (set save_adapters: true)")
    return min(plain, key=lambda r: (-r["trainable_params"], -r["step"], r["point_id"]))["point_id"]


def from_sweep(directory: Path, point: str = "largest", device: str = "auto") -> MitigationInputs:
    """A sweep point's adapter on the sweep's base, with the sweep's own eval and held-out
    fine-tuning blocks (`sweep.prepare`), so the rows compare with its records."""
    from forgetscope.models import load_adapter, load_causal_lm, load_tokenizer, resolve_device
    from forgetscope.sweep.config import parse_config
    from forgetscope.sweep.prepare import prepare, resolve_base

    config_path = Path(directory) / "config.yaml"
    if not config_path.is_file():
        raise UserInputError(f"{directory} is not a sweep directory (no config.yaml)")
    config = parse_config(yaml.safe_load(config_path.read_text()), str(config_path))
    point_id = pick_point(Path(directory), point)
    base_path = resolve_base(config)
    inputs = prepare(config, base_path)
    model = load_causal_lm(base_path, device=resolve_device(device))
    finetuned = load_adapter(model, str(Path(directory) / "adapters" / point_id))
    return MitigationInputs(finetuned, None, load_tokenizer(inputs.tokenizer_path), inputs.eval_blocks, inputs.ft_eval_blocks,
                            name=point_id, describe={"sweep": str(directory), "point_id": point_id})
