"""The `downstream:` section: lm-evaluation-harness tasks on the base once and on every
point when its fine-tune ends.

    downstream:
      suite: tiny       # knowledge, reasoning, safety, tiny, or task names
      limit: 100
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from forgetscope.sweep.evaluators import EVALUATORS


class DownstreamSection(BaseModel):
    """Benchmarks run through lm-evaluation-harness: on the base once, on every point at its end."""

    model_config = ConfigDict(extra="forbid")

    suite: str = Field("tiny", description="knowledge, reasoning, safety, tiny, or comma-separated lm-eval task names.")
    limit: int | None = Field(None, ge=1, description="At most this many examples per task.")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples per prompt (default: each task's own).")
    batch_size: int = Field(8, ge=1, description="Harness batch size.")
    harmful: Path | None = Field(None, description="Harmful-instruction file (.txt or .csv) for the safety suite (default AdvBench).")
    judge: str | None = Field(None, description="Refusal judge module:function.")

    def resolve_paths(self, folder: Path) -> None:
        """Take a relative `harmful` path from the config file's folder."""
        if self.harmful is not None and not self.harmful.is_absolute():
            self.harmful = (folder / self.harmful).resolve()

    def settings(self):
        """The `forgetscope.downstream.evaluate.EvalSettings` these stand for."""
        from forgetscope.downstream.evaluate import EvalSettings

        data = self.model_dump()
        data["harmful"] = None if self.harmful is None else str(self.harmful)
        return EvalSettings(**data)


class Downstream:
    name = "downstream"
    section = DownstreamSection

    def check(self, settings: DownstreamSection) -> None:
        from forgetscope.downstream.evaluate import prepare_tasks

        prepare_tasks(settings.settings())  # unknown tasks or unreachable data: one-line errors

    def evaluate_base(self, settings: DownstreamSection, base_path: str, tokenizer_path: str, device: Any) -> dict:
        from forgetscope.downstream.evaluate import evaluate_model, prepare_tasks
        from forgetscope.models import load_causal_lm, load_tokenizer

        model = load_causal_lm(base_path, device=device)
        eval_settings = settings.settings()
        return evaluate_model(model, load_tokenizer(tokenizer_path), eval_settings, prepare_tasks(eval_settings))

    def evaluate_point(self, settings: DownstreamSection, model: Any, tokenizer: Any) -> dict:
        from forgetscope.downstream.evaluate import evaluate_model, prepare_tasks

        eval_settings = settings.settings()
        return evaluate_model(model, tokenizer, eval_settings, prepare_tasks(eval_settings))


EVALUATORS.register(Downstream.name, Downstream())
