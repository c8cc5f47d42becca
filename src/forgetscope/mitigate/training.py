"""Mitigations during training, each a field of `TrainSettings` (and so a sweep grid axis):

- **replay** (`replay_fraction`): that share of the training sequences comes from a replay
  corpus, pretraining-like text mixed into the fine-tuning set (pretraining-data injection,
  Bethune et al. 2025, "Scaling Laws for Forgetting during Finetuning with Pretraining Data
  Injection", report that about 1% prevents forgetting of the pretraining set);
- **a KL penalty toward the base on replay text** (`kl_weight`): self-distillation. Each step
  adds `kl_weight * KL(base || model)` on a batch of replay sequences; the base side is the
  base model's final hidden states on that text, recorded once (`base_cache`), so no second
  model runs;
- **an L2 pull of the update** (`l2_weight`): `l2_weight * sum ||s B A||_F^2` over adapted
  layers, the squared size of the update itself (unlike weight decay on A and B, which
  depends on how the product is split), computed as `s^2 tr((B^T B)(A A^T))` in r x r.

Replay text must never overlap the text forgetting is measured on: `check_no_overlap`.
With every weight 0 the run is plain training, record for record.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from forgetscope.errors import UserInputError

OVERLAP_WINDOW = 32
"""Tokens in a run of text shared by replay and eval text that counts as an overlap: long
enough that natural text does not repeat it by chance, short enough to catch a copied passage."""

KL_POOL_SEQUENCES = 512
"""Replay sequences whose base hidden states are recorded for the KL penalty, cycled through."""


def _window_hashes(blocks: torch.Tensor, width: int) -> np.ndarray:
    """A 64-bit polynomial hash of every `width`-token window of each block."""
    ids = blocks.numpy().astype(np.uint64)
    if ids.shape[1] < width:
        return np.zeros(0, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(ids, width, axis=1).reshape(-1, width)
    powers = np.uint64(1_000_003) ** np.arange(width, dtype=np.uint64)  # wraps mod 2^64, as intended
    hashes = np.empty(len(windows), dtype=np.uint64)
    for start in range(0, len(windows), 65_536):
        with np.errstate(over="ignore"):
            hashes[start : start + 65_536] = (windows[start : start + 65_536] * powers).sum(axis=1)
    return hashes


def check_no_overlap(replay_blocks: torch.Tensor, eval_blocks: Mapping[str, torch.Tensor], width: int = OVERLAP_WINDOW) -> None:
    """A one-line `UserInputError` if any `width`-token run of an eval domain also occurs in
    the replay text: replaying the eval text would hide the forgetting it measures."""
    width = min(width, replay_blocks.shape[1])
    replay = np.unique(_window_hashes(replay_blocks, width))
    for name, blocks in eval_blocks.items():
        hashes = _window_hashes(blocks, width)
        shared = int(np.isin(hashes, replay).sum())
        if shared:
            raise UserInputError(
                f"the replay text overlaps eval domain {name!r}: {shared} of its {len(hashes)} runs of {width} tokens "
                "also occur in the replay corpus; replay must be text forgetting is not measured on"
            )


def with_replay(train_blocks: torch.Tensor, replay_blocks: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """The training sequences with replay ones added so that `fraction` of all come from the
    replay corpus (drawn with `seed`, repeated if it is short); the Trainer shuffles them."""
    n_replay = round(fraction / (1.0 - fraction) * len(train_blocks))
    if n_replay == 0:
        return train_blocks
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(replay_blocks), generator=generator)
                       for _ in range(-(-n_replay // len(replay_blocks)))])[:n_replay]
    return torch.cat([train_blocks, replay_blocks[order]])


def l2_of_update(model: torch.nn.Module) -> torch.Tensor:
    """`sum ||s B A||_F^2` over the model's LoRA layers, computed in r x r."""
    from forgetscope.mitigate.methods import lora_layers

    total = None
    for _, layer, adapter in lora_layers(model):
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        term = layer.scaling[adapter] ** 2 * ((b.T @ b) * (a @ a.T)).sum()
        total = term if total is None else total + term
    if total is None:
        raise UserInputError("l2_weight needs LoRA layers to pull toward zero")
    return total


class ReplayDistillation:
    """The KL penalty's replay batches and the base's recorded hidden states on them."""

    def __init__(self, model: torch.nn.Module, replay_blocks: torch.Tensor, batch_size: int, seed: int):
        from forgetscope.base_cache import record_base_predictions

        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(replay_blocks), generator=generator)[:KL_POOL_SEQUENCES]
        self.blocks = replay_blocks[order]
        # Recorded before the adapter exists (or with it off): the base's own predictions.
        self.hidden = record_base_predictions(model, {"replay": self.blocks}, batch_size=16).hidden["replay"]
        self.batch_size, self._next = batch_size, 0

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        """Mean per-token `KL(base || model)` on the next batch of replay sequences."""
        from forgetscope.base_cache import final_hidden

        index = torch.arange(self._next, self._next + self.batch_size) % len(self.blocks)
        self._next = int(index[-1]) + 1
        device = next(model.parameters()).device
        head = model.get_output_embeddings()
        model_hidden = final_hidden(model, self.blocks[index].to(device))[:, :-1]
        base_hidden = self.hidden[index].to(device, model_hidden.dtype)[:, :-1]
        log_q = torch.log_softmax(head(model_hidden).float(), dim=-1)
        with torch.no_grad():
            log_p = torch.log_softmax(head(base_hidden).float(), dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def mitigated_trainer_class(kl: ReplayDistillation | None, kl_weight: float, l2_weight: float):
    """A `transformers.Trainer` subclass whose loss adds the penalties; plain `Trainer` when
    both weights are 0, so unmitigated runs take exactly the usual path."""
    from transformers import Trainer

    if kl is None and l2_weight == 0:
        return Trainer

    class MitigatedTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            if kl is not None:
                loss = loss + kl_weight * kl.penalty(model)
            if l2_weight:
                loss = loss + l2_weight * l2_of_update(model)
            return (loss, outputs) if return_outputs else loss

    return MitigatedTrainer
