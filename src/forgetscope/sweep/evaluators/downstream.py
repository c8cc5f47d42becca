"""The `downstream:` section: lm-evaluation-harness tasks on the base once and on every
point when its fine-tune ends.

    downstream:
      suite: tiny       # knowledge, reasoning, safety, tiny, or task names
      limit: 100
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, create_model

from forgetscope.settings import EvalSettings
from forgetscope.sweep.evaluators import EVALUATORS


class DownstreamSection(BaseModel):
    """Benchmarks run through lm-evaluation-harness: on the base once, on every point at its
    end. Its fields are `settings.EvalSettings`'s (a plain pydantic model here, so the sweep
    config names a bad field `downstream.FIELD`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def resolve_paths(self, folder: Path) -> None:
        """Take a relative `harmful` path from the config file's folder."""
        harmful = self.harmful
        if harmful is not None and not Path(harmful).is_absolute():
            self.harmful = str((folder / harmful).resolve())

    def settings(self) -> EvalSettings:
        return EvalSettings(**self.model_dump())


if not TYPE_CHECKING:
    DownstreamSection = create_model("DownstreamSection", __base__=DownstreamSection, __module__=__name__,
                                     __doc__=DownstreamSection.__doc__,
                                     **{name: (field.annotation, field) for name, field in EvalSettings.model_fields.items()})


class Downstream:
    name = "downstream"
    section = DownstreamSection

    def check(self, settings: DownstreamSection) -> None:
        from forgetscope.downstream.evaluate import prepare_tasks

        prepare_tasks(settings.settings())  # unknown tasks or unreachable data: one-line errors

    def evaluate_base(self, settings: DownstreamSection, base_path: str, tokenizer_path: str, device: Any, dtype: Any = None) -> dict:
        from forgetscope.downstream.evaluate import evaluate_model, prepare_tasks
        from forgetscope.models import load_causal_lm, load_tokenizer, resolve_dtype

        model = load_causal_lm(base_path, dtype or resolve_dtype("float32"), device)
        eval_settings = settings.settings()
        return evaluate_model(model, load_tokenizer(tokenizer_path), eval_settings, prepare_tasks(eval_settings))

    def evaluate_point(self, settings: DownstreamSection, model: Any, tokenizer: Any) -> dict:
        from forgetscope.downstream.evaluate import evaluate_model, prepare_tasks

        eval_settings = settings.settings()
        return evaluate_model(model, tokenizer, eval_settings, prepare_tasks(eval_settings))


EVALUATORS.register(Downstream.name, Downstream())
