"""Post-hoc mitigation grid: every setting of every method (`methods/`) on one fine-tune,
measured as KL, `L_f` and `ft_loss`, so a user can pick the cheapest way to stay inside a
forgetting budget, and save it.

The base predictions on the eval text are recorded once (`base_cache`), so each setting
costs one forward pass per eval set: the forgetting text (hidden states only, the logits
made by the metric) and the held-out fine-tuning text (`ft_loss`). A setting that is the
base exactly (scale 0) reuses the recorded pass for the first.

    grid = mitigation_grid(peft_model, eval_blocks, ft_blocks, MitigationSettings())
    grid.rows, grid.choose(budget=0.05), grid.save(row, "mitigated/")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from forgetscope.base_cache import choose_base_source
from forgetscope.errors import UserInputError
from forgetscope.files import atomic_directory
from forgetscope.heads import output_head
from forgetscope.meter import ForgettingMeter
from forgetscope.metric import base_chunk_log_probs
from forgetscope.mitigate.methods import METHODS, Edit
from forgetscope.settings import MitigationSettings

LOG_PROB_BYTES = 1 << 30
"""The base side of the metric on the eval text (log-probabilities and probabilities) is
kept in memory up to this size (1 GiB), saving every setting a head pass, a softmax and two
vocabulary-wide operations; beyond it, it is made again each time."""


@dataclass
class MitigationGrid:
    """Every measured setting (`rows`), the base's `ft_loss`, the methods that did not apply
    (`skipped`, with why), and the live edits that can still save a setting."""

    rows: list[dict]
    base_ft_loss: float
    skipped: dict[str, str]
    edits: dict[str, Edit] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict:
        """What `--json` prints and the files keep."""
        return {"rows": self.rows, "base_ft_loss": self.base_ft_loss, "skipped": self.skipped}

    def choose(self, budget: float) -> dict | None:
        """The row with the lowest `ft_loss` among those with KL within `budget`, or None."""
        return choose(self.rows, budget)

    def save(self, row: dict, directory: str | Path, tokenizer=None) -> Path:
        """Write the fine-tune edited at `row`'s setting to `directory` (an ordinary PEFT
        adapter, or a full model for WiSE-FT), with the tokenizer when given."""
        directory = Path(directory)
        with atomic_directory(directory) as scratch:  # whole or not at all
            self.edits[row["method"]].save(row["setting"], scratch)
            if tokenizer is not None:
                tokenizer.save_pretrained(scratch)
        return directory


def _progress(total: int, enabled: bool):
    from rich.progress import Progress

    progress = Progress(transient=True, disable=not enabled)
    return progress, progress.add_task("mitigation settings", total=total)


@torch.no_grad()
def mitigation_grid(
    finetuned: torch.nn.Module,
    eval_blocks: Mapping[str, torch.Tensor],
    ft_blocks: torch.Tensor,
    settings: MitigationSettings,
    base: torch.nn.Module | None = None,
    batch_size: int = 16,
    n_bootstrap: int = 1000,
    progress: bool = False,
) -> MitigationGrid:
    """Measure every method's settings on `finetuned` (a PEFT model, or with `base` a full
    fine-tune of it). Each row is `{"method", "setting", "kl", "forgetting_ce", "ft_loss",
    "ft_gain", "ci", "domains", ...}`; `ft_gain` is how far `ft_loss` fell from the base's.
    """
    finetuned.eval()
    if base is None and not hasattr(finetuned, "disable_adapter"):
        raise UserInputError("mitigate needs a PEFT adapter (--adapter) or a base model to interpolate toward (--finetuned)")
    if base is not None:
        base.eval().requires_grad_(False)
    source = choose_base_source(finetuned, eval_blocks, base=base, record=True, batch_size=batch_size)
    n_scored = sum(ids.shape[0] * (ids.shape[1] - 1) for ids in eval_blocks.values())
    head = output_head(finetuned)
    if source.kind == "recorded" and head is not None and 2 * n_scored * head.vocab * 4 <= LOG_PROB_BYTES:
        source = base_chunk_log_probs(source, head, batch_size)
    meter = ForgettingMeter(eval_blocks, ft_eval_blocks=ft_blocks, base_source=source, batch_size=batch_size)
    edits, skipped = {}, {}
    for name, method in sorted(METHODS.items(), key=lambda item: item[1].order):
        edit = method.prepare(finetuned, base, settings)
        if isinstance(edit, str):
            skipped[name] = edit
        else:
            edits[name] = edit
    rows = []
    bar, task = _progress(sum(len(e.settings) for e in edits.values()), progress)
    with bar:
        for name, edit in edits.items():
            for setting in edit.settings:
                # A setting that is the base exactly reuses the recorded pass: it costs the ft_loss pass only.
                reuse = source.predictions.hidden if edit.is_base(setting) and source.predictions is not None else None
                with edit.applied(setting):
                    result = meter.result(finetuned, n_bootstrap=n_bootstrap, finetuned_hidden=reuse)
                    ft_loss = meter.ft_loss(finetuned)
                overall = result.overall
                rows.append({
                    "method": name, "setting": setting, "kl": overall["kl"], "forgetting_ce": overall["forgetting_ce"],
                    "ft_loss": ft_loss, "base_entropy": overall["base_entropy"],
                    "hard_ce": overall["hard_ce"], "tokens": overall["tokens"], "ci": overall.get("ci", {}),
                    "domains": {d: {"kl": v["kl"], "forgetting_ce": v["forgetting_ce"]} for d, v in result.domains.items()},
                    **edit.describe(setting),
                })
                bar.advance(task)
    # A method's base setting is the base exactly (scale 0: a test checks it), so its ft_loss
    # is the base's; else one more pass.
    base_ft_loss = next((r["ft_loss"] for r in rows if r["setting"] == METHODS.get(r["method"]).base_setting), None)
    if base_ft_loss is None:
        if base is not None:
            base_ft_loss = meter.ft_loss(base)
        else:
            with finetuned.disable_adapter():
                base_ft_loss = meter.ft_loss(finetuned)
    for row in rows:
        row["ft_gain"] = base_ft_loss - row["ft_loss"]
    return MitigationGrid(rows, base_ft_loss, skipped, edits)


def choose(rows: list[dict], budget: float) -> dict | None:
    """The row with the lowest `ft_loss` among those with KL within `budget`, or None."""
    within = [row for row in rows if row["kl"] <= budget]
    return min(within, key=lambda row: row["ft_loss"]) if within else None
