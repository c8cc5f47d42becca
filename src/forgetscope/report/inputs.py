"""What the report reads of a sweep directory besides its records' table and `fits.json`:
its name, its downstream results and its mitigation results, each read and checked before
anything is drawn, so that a bad file fails the report with nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pandas as pd

from forgetscope.errors import UserInputError
from forgetscope.laws.schema import Fits


def sweep_title(directory: Path) -> str:
    """`name on base` from the sweep's `config.yaml`; the directory's name without one."""
    from forgetscope.sweepdir import read_config_data

    config = directory / "config.yaml"
    data = read_config_data(config) if config.is_file() else {}
    name = str(data.get("name") or directory.name)
    base = Path(str(data.get("base_model", ""))).name
    return f"{name}" + (f" on {base}" if base else "")


def check_fitted_on(fits: Fits, table: pd.DataFrame, directory: Path) -> None:
    """Refuse a `fits.json` fitted on other records than the sweep holds now."""
    if fits.get("records_sha256") not in (None, table.attrs["records_sha256"]):  # older files have no digest
        raise UserInputError(f"{directory / 'fits.json'} was fitted on other records than {directory / 'records.jsonl'} holds "
                             f"(another sweep's, or an older state of this one): run `forgetscope fit {directory}` again")


def downstream_against_forgetting(directory: str | Path, table: pd.DataFrame | None = None) -> dict | None:
    """Each finished point's downstream drop per task (its primary metric, signed so that
    positive is worse than the base) next to its forgetting L_f at its last step, and per
    task the Pearson and Spearman correlations across points (`laws.analyses.downstream_correlation`).
    None without downstream results. `table`: the records' table, when already read."""
    from forgetscope.downstream.compare import drops
    from forgetscope.laws.analyses import downstream_correlation
    from forgetscope.laws.select import read_table
    from forgetscope.sweepdir import read_artifacts

    base, points = read_artifacts(directory, "downstream")
    if base is None or not points:
        return None
    table = read_table(directory) if table is None else table
    results = cast(dict[str, dict], points)  # JSON objects, as `read_artifacts` checked
    return downstream_correlation(table, {point_id: drops(cast(dict, base), result) for point_id, result in results.items()})


def mitigation_curves(directory: Path, records: list) -> dict[str, list[list[dict]]] | None:
    """`{option: [curve of gain against KL]}` when the sweep has mitigated runs or kept
    `mitigate --sweep` results in `DIR/mitigation/` (each checked), else None: the runs of
    the size that was mitigated, unmitigated or not, and every post-hoc method's settings."""
    from forgetscope.mitigate import tradeoff
    from forgetscope.records import is_mitigated
    from forgetscope.sweepdir import read_artifacts

    # `records`: the sweep's finished records, penalised runs included (the laws' table keeps
    # only the unpenalised ones, and these curves need them all).
    _, posthoc = read_artifacts(directory, "mitigation", schema=tradeoff.MitigationFile)
    if not posthoc and not any(is_mitigated(r) for r in records):
        return None
    # Compare like with like: the runs of the size the mitigated runs (or the post-hoc fine-tune) have.
    sizes = {r["trainable_params"] for r in records if is_mitigated(r) or r["point_id"] in posthoc}
    curves = tradeoff.training_curves([dict(r) for r in records if r["trainable_params"] in sizes])
    for point_id, result in sorted(cast(dict[str, dict], posthoc).items()):  # each checked: a `MitigationFile`
        suffix = f" ({point_id})" if len(posthoc) > 1 else ""
        curves.update({label + suffix: c for label, c in tradeoff.posthoc_curves(result).items()})
    return curves
