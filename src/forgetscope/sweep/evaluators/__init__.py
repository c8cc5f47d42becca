"""End-of-point evaluators: extra measurements a sweep makes of the base once and of every
point when its fine-tune ends (downstream benchmarks, and what comes next).

An evaluator is one module in this package that registers an `Evaluator`. Its `name` is
both the sweep config's section (`downstream:`) and the artifact kind in the sweep
directory (`DIR/downstream/base.json`, `DIR/downstream/ID.json`). The sweep only ever
loops over the evaluators a config enables; it names none of them.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel

from forgetscope.registry import Registry


class Evaluator(Protocol):
    """What an end-of-point evaluation provides."""

    name: str
    """The config section and the artifact kind."""
    section: type[BaseModel]
    """The section's schema; every field carries its help text."""

    def check(self, settings: Any) -> None:
        """Raise `UserInputError` for settings that cannot work, before any point runs."""

    def evaluate_base(self, settings: Any, base_path: str, tokenizer_path: str, device: Any, dtype: Any = None) -> Any:
        """The base model's result (JSON-serialisable), once per sweep, on `device` with
        weights in `dtype` (the points' own: a torch dtype; None is float32)."""

    def evaluate_point(self, settings: Any, model: Any, tokenizer: Any) -> Any:
        """A fine-tuned point's result (JSON-serialisable), on the model its Trainer holds."""


EVALUATORS: Registry[Evaluator] = Registry("evaluators", __name__)
