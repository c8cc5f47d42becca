"""The record: one forgetting measurement of one run at one step, the contract between the
callback (which makes records), the sweep store (which keeps them, one JSON object a line of
`records.jsonl`), the laws (which fit them) and the report (which plots them).

Keys may be added, never removed; anything that writes records in this shape can be fitted.
"""

from __future__ import annotations

from typing import TypedDict


class DomainMetrics(TypedDict):
    """The metric on one eval domain, nats per token (see `forgetscope.metric`)."""

    forgetting_ce: float
    kl: float
    base_entropy: float
    hard_ce: float
    base_loss: float
    finetuned_loss: float


class Record(DomainMetrics, total=False):
    """One measurement: the metric over every eval domain, and per domain, at `step`."""

    step: int
    train_loss: float | None
    """The last logged training loss (None at step 0)."""
    ft_loss: float
    """Loss on held-out fine-tuning text: how far fine-tuning got."""
    eval_tokens: int
    domains: dict[str, DomainMetrics]
    trainable_params: int
    """`P`: non-embedding parameters being trained."""
    # A sweep adds the point's labels:
    point_id: str
    rank: int
    target_modules: list[str] | str
    layers: list[int] | None
    rslora: bool
    lora_alpha: float
    learning_rate: float
    seed: int


FIT_KEYS = ("point_id", "trainable_params", "step", "kl", "forgetting_ce", "ft_loss")
"""What every record must hold for the laws to be fitted."""
