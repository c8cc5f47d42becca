"""`ForgettingMeter`: one model's forgetting on fixed text, measured again and again.

What the training callback, `forgetscope measure` and post-hoc mitigation all do: choose once
where the base predictions come from (`base_cache.choose_base_source`), then measure the
model against them (`metric.measure_forgetting`), with the loss on held-out fine-tuning text
(`ft_loss`) beside it. The meter holds the text and that choice; it knows nothing of
Trainers, schedules or budgets.

Under many processes (DDP, FSDP) each process records and measures its share of the
sequences (`distributed.Shard`), and the per-sequence sums are gathered, so every process
holds the result one process would have made.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import cast

import numpy as np
import torch

from forgetscope.base_cache import BasePredictions, BaseSource, choose_base_source
from forgetscope.distributed import Shard, all_gather, world
from forgetscope.metric import METRIC_KEYS, ForgettingResult, SequenceSums, measure_sums, result_from_sums, sequence_losses
from forgetscope.records import Record


class ForgettingMeter:
    """Forgetting of a model on `eval_blocks` (`{domain: [n, seq_len] ids}`), and its loss on
    `ft_eval_blocks`, against the base: a separate `base_model`, predictions already recorded
    (`base_predictions`), or the PEFT model's own `disable_adapter()`, recorded once at the
    start when `record_base` and the output head allow it (kept in `cache_dir` and reused
    from there when given); or a `base_source` its caller chose itself (`mitigate` records
    the base once and keeps its log-probabilities)."""

    def __init__(self, eval_blocks: Mapping[str, torch.Tensor], *, ft_eval_blocks: torch.Tensor | None = None,
                 base_model: torch.nn.Module | None = None, base_predictions: BasePredictions | None = None,
                 record_base: bool = True, cache_dir: str | Path | None = None, base_source: BaseSource | None = None,
                 batch_size: int = 16, progress: bool = False):
        if not eval_blocks:
            raise ValueError("a ForgettingMeter needs eval_blocks: {domain: [n, seq_len] token ids}")
        self.eval_blocks = dict(eval_blocks)
        self.ft_eval_blocks = ft_eval_blocks
        self.base_model, self.base_predictions, self.record_base = base_model, base_predictions, record_base
        self.cache_dir = cache_dir
        self.batch_size, self.progress = batch_size, progress
        self.base_source: BaseSource | None = base_source
        """Where base predictions come from, chosen by `start` (or the first measurement)."""
        self.local_blocks = self.eval_blocks
        """This process's share of `eval_blocks`, set by `start`."""

    @property
    def shards(self) -> dict[str, Shard]:
        """This process's share of each domain's sequences, among the processes there are now
        (asked at each use: a Trainer starts the process group after its callbacks are made)."""
        return {name: Shard.of(len(ids)) for name, ids in self.eval_blocks.items()}

    def start(self, model: torch.nn.Module) -> BaseSource:
        """Choose the base source for `model` (recording the base's predictions if asked), once,
        for this process's share of the text (`shards`)."""
        if self.base_source is None:
            shards = self.shards
            self.local_blocks = {name: shards[name].take(ids) for name, ids in self.eval_blocks.items()}
            if self.base_predictions is not None and world()[1] > 1:  # recorded for all of the text
                self.base_predictions = BasePredictions({name: shards[name].take(hidden) for name, hidden
                                                         in self.base_predictions.hidden.items()}, self.base_predictions.key)
            # A separate base is run, not recorded: one measurement costs a forward pass either way.
            self.base_source = choose_base_source(model, self.local_blocks, base=self.base_model, recorded=self.base_predictions,
                                                  record=self.record_base and self.base_model is None, cache_dir=self.cache_dir,
                                                  batch_size=self.batch_size)
        return self.base_source

    def result(self, model: torch.nn.Module, n_bootstrap: int = 0, seed: int = 0,
               finetuned_hidden: Mapping[str, torch.Tensor] | None = None) -> ForgettingResult:
        """The metric overall, per domain and per sequence (bootstrapped intervals with
        `n_bootstrap`); `finetuned_hidden`: the model's final hidden states, when known to be
        the base's (`metric.measure_forgetting`; one process only)."""
        base = self.start(model)
        mine = measure_sums(model, self.local_blocks, base=base, batch_size=self.batch_size,
                            progress=self.progress and world()[0] == 0, finetuned_hidden=finetuned_hidden)
        return result_from_sums(self._gathered(mine), n_bootstrap, seed)

    def _gathered(self, mine: SequenceSums) -> SequenceSums:
        """Every process's real rows (padding dropped), in process order: all the sequences."""
        if world()[1] == 1:
            return mine
        shards = self.shards
        shares = all_gather({name: {key: values[: shards[name].real] for key, values in sums.items()}
                             for name, sums in mine.items()})
        return {name: {key: np.concatenate([share[name][key] for share in shares]) for key in mine[name]} for name in mine}

    def ft_loss(self, model: torch.nn.Module) -> float:
        """The mean loss on the held-out fine-tuning text (`ft_eval_blocks`), over every process's share."""
        if self.ft_eval_blocks is None:
            raise ValueError("this ForgettingMeter has no held-out fine-tuning text (ft_eval_blocks)")
        shard = Shard.of(len(self.ft_eval_blocks))
        losses = np.concatenate(all_gather(sequence_losses(model, shard.take(self.ft_eval_blocks), self.batch_size)[: shard.real]))
        return float(losses.sum()) / max(1, self.ft_eval_blocks[:, 1:].numel())

    def record(self, model: torch.nn.Module, step: int) -> tuple[Record, ForgettingResult]:
        """One record at `step` (`forgetscope.records.Record`: the metric overall and per domain,
        `ft_loss` when there is held-out fine-tuning text), and the result it came from."""
        result = self.result(model)
        record: Record = {
            "step": step, "train_loss": None,
            **{key: result.overall[key] for key in METRIC_KEYS},  # type: ignore[typeddict-item]  # METRIC_KEYS are DomainMetrics
            "eval_tokens": result.overall["tokens"],
            "domains": {name: {key: values[key] for key in METRIC_KEYS} for name, values in result.domains.items()},
            "vocab_size": int(cast(torch.nn.Module, model.get_output_embeddings()).weight.shape[0]),  # a DTensor's is the whole
        }
        if self.ft_eval_blocks is not None:
            record["ft_loss"] = self.ft_loss(model)
        return record, result
