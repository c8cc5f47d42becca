"""The adapters a sweep kept (`save_adapters: true`): which point to take, and that point's
adapter on the sweep's base with the sweep's own eval and held-out fine-tuning text, for
post-hoc mitigation (`forgetscope mitigate --sweep DIR --point ID`)."""

from __future__ import annotations

from pathlib import Path

from forgetscope.errors import UserInputError
from forgetscope.files import plain_name
from forgetscope.mitigate.inputs import MitigationInputs


def _last_records(directory: Path) -> dict[str, dict]:
    """Each finished point's last record."""
    from forgetscope.sweepdir import sweep_records

    last: dict[str, dict] = {}
    for record in sweep_records(directory)[0]:
        pid = record.get("point_id")
        if record["step"] >= last.get(pid, {}).get("step", -1):
            last[pid] = record
    return last


def pick_point(directory: Path, point: str) -> str:
    """`point` itself, or for `largest` the unmitigated finished point with a saved adapter
    and the most trainable parameters (the longest run, then the first id, on ties)."""
    from forgetscope.records import is_mitigated

    adapters = directory / "adapters"
    if point != "largest":
        plain_name(point, "--point")  # an id, never a path out of the sweep
        if not (adapters / point / "adapter_config.json").is_file():
            raise UserInputError(f"{directory} kept no adapter for point {point!r} (is it finished, with save_adapters: true?)")
        return point
    last = _last_records(directory)
    plain = [r for pid, r in last.items() if (adapters / pid / "adapter_config.json").is_file()
             and not is_mitigated(r)]
    if not plain:
        raise UserInputError(f"{directory} has no finished unmitigated point with a saved adapter (set save_adapters: true)")
    return min(plain, key=lambda r: (-r["trainable_params"], -r["step"], r["point_id"]))["point_id"]


def from_sweep(directory: Path, point: str = "largest", device: str = "auto") -> MitigationInputs:
    """A sweep point's adapter on the sweep's base, with the sweep's own eval and held-out
    fine-tuning blocks (`sweep.prepare`), so the rows compare with its records."""
    from forgetscope.models import load_adapter, load_causal_lm, load_tokenizer, resolve_device, resolve_dtype
    from forgetscope.sweep.config import parse_config
    from forgetscope.sweep.prepare import prepare, resolve_base
    from forgetscope.sweepdir import read_config_data, read_heldout

    if point != "largest":
        plain_name(point, "--point")  # an id, never a path out of the sweep
    config_path = Path(directory) / "config.yaml"
    if not config_path.is_file():
        raise UserInputError(f"{directory} is not a sweep directory (no config.yaml)")
    config = parse_config(read_config_data(config_path), str(config_path))
    point_id = pick_point(Path(directory), point)
    base_path = resolve_base(config)
    kept = read_heldout(Path(directory))
    if kept is None:  # a sweep from before it kept its held-out text: cut it again, by the same rule
        inputs = prepare(config, base_path)
        kept = inputs.ft_eval_blocks, inputs.eval_blocks
    ft_eval_blocks, eval_blocks = kept
    model = load_causal_lm(base_path, resolve_dtype(config.dtype), resolve_device(device))
    finetuned = load_adapter(model, str(Path(directory) / "adapters" / point_id))
    return MitigationInputs(finetuned, None, load_tokenizer(config.tokenizer or base_path), eval_blocks, ft_eval_blocks,
                            name=point_id, describe={"sweep": str(directory), "point_id": point_id})
