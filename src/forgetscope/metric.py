"""The forgetting metric of Kalajdzievski (2024), computed exactly as the measure guide defines it (docs/guides/measure.md).

For eval tokens with base next-token distribution p_t and fine-tuned q_t:

    forgetting_ce_t = -sum_v p_t(v) log q_t(v)       (L_f, soft cross-entropy)
    base_entropy_t  = -sum_v p_t(v) log p_t(v)       (H_base, the floor of L_f)
    kl_t            =  sum_v p_t(v) (log p_t(v) - log q_t(v)) = forgetting_ce_t - base_entropy_t
    hard_ce_t       = -log q_t(argmax_v p_t(v))
    base_loss_t, finetuned_loss_t: the ordinary next-token losses of both models.

The models run in their own dtype; the output head that turns final hidden states into
logits runs in float32 whatever that dtype is (`heads.OutputHead`), on a chunk of positions
at a time, so a 128k vocabulary never materialises a [tokens, vocab] tensor. The sums over
the vocabulary (the softmax's normaliser, the entropy, the KL) add float32 partial sums over
blocks of the vocabulary in float64, and every per-position value, and every sum over
positions, is float64. Only a model whose head cannot be rebuilt from its hidden states
(`heads.head_mismatch`) is measured from its whole logits.
Means are token-weighted; 95% intervals come from a bootstrap over whole sequences.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from forgetscope.base_cache import BaseSource
from forgetscope.heads import OutputHead, backbone, final_hidden, full_logits, head_mismatch, output_head
from forgetscope.records import DomainMetrics

METRIC_KEYS = tuple(DomainMetrics.__annotations__)
"""`forgetting_ce`, `kl`, `base_entropy`, `hard_ce`, `base_loss`, `finetuned_loss`."""


CHUNK_ELEMENTS = 2**21
"""Positions per chunk times vocabulary: each float32 intermediate of a chunk stays at 8 MB..."""

MIN_CHUNK_POSITIONS = 256
"""...unless that is fewer positions than this: the output head's matmul slows down on few
rows (a 768 x 32k head on 2 CPU cores: 131-row chunks take 1.43x the time of one matmul
over 2,040 rows, 262-row chunks 1.14x)."""


def token_stats(
    base_logits: torch.Tensor,
    finetuned_logits: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int | None = None,
    head: torch.nn.Module | OutputHead | None = None,
    base_head: torch.nn.Module | OutputHead | None = None,
    base_log_probs: list[tuple[torch.Tensor, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-position metric values for aligned `[n, vocab]` logits and `[n]` next tokens.

    With `head` (the frozen output layer both models share), the first two arguments are
    `[n, hidden]` final hidden states instead, and logits are made chunk by chunk, so no
    `[n, vocab]` tensor ever exists; `base_head` is the base's own head where the two differ
    (a full fine-tune). `base_log_probs` are the base side already made, `(log p, p,
    entropy, argmax)` per chunk (`base_chunk_log_probs`): the first argument is then not used. Returns float64 tensors of shape `[n]`, one per key of
    `METRIC_KEYS`. Positions are processed `chunk_size` at a time (default: as many as keep
    a chunk at `CHUNK_ELEMENTS`, and at least `MIN_CHUNK_POSITIONS`).
    """
    if base_logits.shape != finetuned_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(base_logits.shape)} vs {tuple(finetuned_logits.shape)}")
    vocab = OutputHead.of(head).vocab if head is not None else base_logits.shape[-1]
    chunk_size = chunk_size or chunk_positions(vocab)
    to_logits = _logits_maker(head)
    to_base_logits = _logits_maker(base_head) if base_head is not None else to_logits
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in METRIC_KEYS}
    for index, start in enumerate(range(0, finetuned_logits.shape[0], chunk_size)):
        stop = start + chunk_size
        if base_log_probs is not None:
            log_p, p, entropy, top = base_log_probs[index]
        else:
            # Logits a head made here are this loop's own: normalised in place, one tensor fewer.
            log_p, p = log_probs(to_base_logits(base_logits[start:stop]), overwrite=base_head is not None or head is not None)
            entropy, top = _row_dots(p, log_p).neg_(), log_p.argmax(-1, keepdim=True)
        log_q = log_softmax(to_logits(finetuned_logits[start:stop]), overwrite=head is not None)
        tgt = targets[start:stop].unsqueeze(-1)
        parts["hard_ce"].append(-log_q.gather(-1, top).squeeze(-1).double())
        parts["base_loss"].append(-log_p.gather(-1, tgt).squeeze(-1).double())
        parts["finetuned_loss"].append(-log_q.gather(-1, tgt).squeeze(-1).double())
        # KL from its own sum (not ce - h) so identical models give exactly 0; clamp the
        # rounding-level negatives that a sum of p*(log p - log q) can produce. log q is
        # overwritten by log p - log q in one pass: no [chunk, vocab] temporary.
        log_diff = torch.sub(log_p, log_q, out=log_q)
        kl = _row_dots(p, log_diff).clamp_min(0.0)
        parts["base_entropy"].append(entropy)
        parts["kl"].append(kl)
        parts["forgetting_ce"].append(entropy + kl)
    return {key: torch.cat(values) if values else torch.zeros(0, dtype=torch.float64) for key, values in parts.items()}


def chunk_positions(vocab: int) -> int:
    """Positions per chunk for a vocabulary of `vocab`: `CHUNK_ELEMENTS` per chunk, at least
    `MIN_CHUNK_POSITIONS`."""
    return max(MIN_CHUNK_POSITIONS, CHUNK_ELEMENTS // vocab)


def _logits_maker(head: torch.nn.Module | OutputHead | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`hidden -> float32 logits` through the head, or (no head) the logits as they are."""
    if head is None:
        return lambda logits: logits
    return OutputHead.of(head)


def log_probs(logits: torch.Tensor, overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 `(log p, p)` of `[n, vocab]` logits, normalised by a float64 sum. torch's
    float32 `log_softmax` sums the exponentials in float32, which shifts every row's
    log-probabilities by up to 1e-5 relative at 49k tokens and 4e-5 at 128k. With
    `overwrite`, float32 `logits` are normalised in place."""
    log_p, exponentials, normaliser = _normalised(logits, overwrite)
    return log_p, exponentials.div_(normaliser.float())


def log_softmax(logits: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """The float32 `log p` of `log_probs`, without `p`."""
    return _normalised(logits, overwrite)[0]


def _normalised(logits: torch.Tensor, overwrite: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 log-probabilities, the exponentials of the shifted logits and their float64 row sums."""
    logits = logits.float()
    top = logits.amax(-1, keepdim=True)
    shifted = logits.sub_(top) if overwrite else logits - top
    exponentials = shifted.exp()
    normaliser = _row_sums(exponentials).unsqueeze(-1)
    return shifted.sub_(normaliser.log().float()), exponentials, normaliser


@functools.cache
def _block(vocab: int) -> int | None:
    """The block length of the vocabulary's float32 partial sums: the smallest divisor of
    `vocab` from 256 to 4096 (a float32 sum of that many terms is within 1e-6), or None."""
    return next((k for k in range(256, min(vocab, 4096) + 1) if vocab % k == 0), None)


def _row_sums(values: torch.Tensor) -> torch.Tensor:
    """float64 sums of the rows of a float32 `[n, vocab]` tensor: float32 partial sums over
    blocks, added in float64. One float32 sum over the vocabulary drifts low by 1e-4
    relative at 128k tokens; a float64 one of every element is several times slower."""
    n, vocab = values.shape
    block = _block(vocab)
    if block is None:
        return values.sum(-1, dtype=torch.float64)
    return values.reshape(n, vocab // block, block).sum(-1).sum(-1, dtype=torch.float64)


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float64 `sum_v a[:, v] * b[:, v]` for float32 `[n, vocab]` tensors: batched float32
    dot products over blocks (one fused kernel, no `[n, vocab]` temporary), added in
    float64 (`tests/test_metric.py` checks 1e-6 against float64 at 128k tokens)."""
    n, vocab = a.shape
    block = _block(vocab)
    if block is None:
        return torch.mul(a, b).sum(-1, dtype=torch.float64)
    blocks = n * (vocab // block)
    return torch.bmm(a.reshape(blocks, 1, block), b.reshape(blocks, block, 1)).view(n, -1).sum(-1, dtype=torch.float64)


def sequence_sums(
    base_logits: torch.Tensor,
    finetuned_logits: torch.Tensor,
    input_ids: torch.Tensor,
    chunk_size: int | None = None,
    head: torch.nn.Module | OutputHead | None = None,
    base_head: torch.nn.Module | OutputHead | None = None,
    base_log_probs: list[tuple[torch.Tensor, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sequence sums over the `seq_len - 1` scored positions of `[batch, seq_len]` blocks.

    The first two arguments are `[batch, seq_len, vocab]` logits, or final hidden states
    with `head` (see `token_stats`).
    """
    batch, seq_len = input_ids.shape
    width = base_logits.shape[-1]
    stats = token_stats(
        base_logits[:, :-1].reshape(-1, width),
        finetuned_logits[:, :-1].reshape(-1, width),
        input_ids[:, 1:].reshape(-1).to(base_logits.device),
        chunk_size,
        head,
        base_head,
        base_log_probs,
    )
    return {key: value.view(batch, seq_len - 1).sum(dim=1).cpu() for key, value in stats.items()}


def summarize(
    sums: Mapping[str, np.ndarray], tokens: np.ndarray, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Token-weighted means of per-sequence sums, with 95% bootstrap intervals over sequences.

    Returns `{key: mean, ..., "tokens": n, "ci": {key: [low, high]}}`; no `ci` when
    `n_bootstrap` is 0 (with one sequence the interval collapses to the point).
    """
    tokens = np.asarray(tokens, dtype=np.float64)
    total = float(tokens.sum())
    out: dict[str, Any] = {key: float(np.sum(sums[key]) / total) for key in METRIC_KEYS}
    out["tokens"] = int(total)
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        n = len(tokens)
        # Multinomial counts are a resample of whole sequences; ratio of sums per resample.
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap).astype(np.float64)
        denom = counts @ tokens
        out["ci"] = {
            key: [float(v) for v in np.percentile((counts @ np.asarray(sums[key], dtype=np.float64)) / denom, [2.5, 97.5])]
            for key in METRIC_KEYS
        }
    return out


@dataclass
class ForgettingResult:
    """The metric overall and per domain, plus per-sequence values for further analysis."""

    overall: dict[str, Any]
    """`summarize`'s object: the means (floats), `tokens` (an int) and `ci` (key -> [low, high])."""
    domains: dict[str, dict[str, Any]]
    sequences: list[dict[str, Any]] = field(repr=False, default_factory=list)

    def to_dict(self, include_sequences: bool = False) -> dict[str, Any]:
        """The `measure --json` object: overall keys at the top, `domains` by name."""
        out = dict(self.overall)
        out["domains"] = self.domains
        if include_sequences:
            out["sequences"] = self.sequences
        return out

    def flat(self, prefix: str = "") -> dict[str, float]:
        """`{key: value}` for the overall means and `{domain/key: value}` per domain (for logging)."""
        out = {f"{prefix}{key}": float(self.overall[key]) for key in METRIC_KEYS}
        for name, values in self.domains.items():
            out.update({f"{prefix}{name}/{key}": float(values[key]) for key in METRIC_KEYS})
        return out


def _input_device(model: torch.nn.Module) -> torch.device:
    """Where a model takes its input ids: its input embeddings' device (the first shard's,
    under `device_map="auto"`), else its first parameter's."""
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if get is not None else None
    weight = getattr(embeddings, "weight", None)
    return weight.device if isinstance(weight, torch.Tensor) else next(model.parameters()).device


BaseHidden = Callable[[str, int, torch.Tensor], torch.Tensor]
"""`(domain, first sequence, ids) -> the base's [batch, seq_len, hidden] final hidden states`."""


def hidden_path(finetuned: torch.nn.Module, source: BaseSource, probe: torch.Tensor
                ) -> tuple[OutputHead, OutputHead, BaseHidden] | None:
    """The chunked path's parts for `finetuned` against `source`: the fine-tune's float32
    head, the base's, and where the base's hidden states come from; None where a model's
    head cannot rebuild its logits (checked on `probe`, one sequence), which then measures
    from whole logits."""
    head = output_head(finetuned)
    if source.kind == "recorded":
        if source.predictions is None or head is None:
            raise ValueError("recorded base predictions need the recorded hidden states and the fine-tuned model's output head")
        recorded = source.predictions.hidden
        base_head = OutputHead.of(source.head) if source.head is not None else head
        return head, base_head, lambda name, start, ids: recorded[name][start : start + len(ids)]
    models = [finetuned] + ([source.model] if source.model is not None else [])
    if head is None or any(backbone(m) is None or head_mismatch(m, probe.to(_input_device(m))) is not None for m in models):
        return None
    run = source.run(finetuned, final_hidden)
    base = output_head(source.model) if source.model is not None else output_head(finetuned, adapter_off=True)
    assert base is not None  # backbone() found one above
    return head, base, lambda name, start, ids: run(ids)


def measure_forgetting(
    finetuned: torch.nn.Module,
    blocks: Mapping[str, torch.Tensor],
    base: torch.nn.Module | BaseSource | None = None,
    batch_size: int = 8,
    chunk_size: int | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = False,
    finetuned_hidden: Mapping[str, torch.Tensor] | None = None,
) -> ForgettingResult:
    """Measure forgetting of `finetuned` against its base on `{domain: [n, seq_len] ids}`.

    `base` is where base predictions come from (`forgetscope.base_cache.BaseSource`, chosen by
    `choose_base_source`): recorded hidden states (one forward pass per measurement), a
    separate base model (the reference path; both must share the tokenizer), or, when None,
    `disable_adapter()` on `finetuned`, which must then be a PEFT model. A model given
    directly is a separate base. Models are put in eval mode and restored afterwards.
    With recorded predictions, `finetuned_hidden` gives the fine-tuned side's final hidden
    states instead of running `finetuned` (a setting known to be the base, in `mitigate`).
    """
    sums = measure_sums(finetuned, blocks, base, batch_size, chunk_size, progress, finetuned_hidden)
    return result_from_sums(sums, n_bootstrap, seed)


SequenceSums = dict[str, dict[str, np.ndarray]]
"""`{domain: {key: [n] per-sequence sums, ..., "tokens": [n] scored tokens}}`."""


@torch.no_grad()
def measure_sums(
    finetuned: torch.nn.Module,
    blocks: Mapping[str, torch.Tensor],
    base: torch.nn.Module | BaseSource | None = None,
    batch_size: int = 8,
    chunk_size: int | None = None,
    progress: bool = False,
    finetuned_hidden: Mapping[str, torch.Tensor] | None = None,
) -> SequenceSums:
    """`measure_forgetting`'s per-sequence sums, before any mean: what processes that each
    measured a share of the sequences gather (`forgetscope.distributed`)."""
    source = BaseSource.of(base)
    models = [m for m in (finetuned, source.model) if m is not None]
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    device = _input_device(finetuned)
    probe = next((ids[:1] for ids in blocks.values() if len(ids)), None)
    path = hidden_path(finetuned, source, probe) if probe is not None else None
    base_logits = source.run(finetuned) if path is None and source.kind != "recorded" else None
    total_batches = sum((len(b) + batch_size - 1) // batch_size for b in blocks.values())
    bar = _ProgressBar(total_batches) if progress else nullcontext()
    sums: SequenceSums = {}
    try:
        with bar as advance:
            for name, ids in blocks.items():
                batch_sums: dict[str, list[np.ndarray]] = {k: [] for k in METRIC_KEYS}
                for start in range(0, len(ids), batch_size):
                    batch = ids[start : start + batch_size].to(device)
                    if path is not None:  # hidden states only: logits are made chunk by chunk
                        head, base_head, base_hidden = path
                        ft = (final_hidden(finetuned, batch) if finetuned_hidden is None
                              else finetuned_hidden[name][start : start + len(batch)].to(device))
                        made = source.log_probs[name][start // batch_size] if source.log_probs else None
                        reference = base_hidden(name, start, batch)
                        batch_sum = sequence_sums(reference.to(ft.device), ft, batch, chunk_size, head, base_head, made)
                    else:  # a head forgetscope cannot rebuild: the models' whole logits
                        assert base_logits is not None
                        ft = full_logits(finetuned, batch)
                        batch_sum = sequence_sums(base_logits(batch).to(ft.device), ft, batch, chunk_size)
                    for k in METRIC_KEYS:
                        batch_sums[k].append(batch_sum[k].numpy())
                    if advance is not None:
                        advance()
                sums[name] = {k: np.concatenate(v) if v else np.zeros(0) for k, v in batch_sums.items()}
                sums[name]["tokens"] = np.full(len(ids), ids.shape[1] - 1)
    finally:
        for m, training in zip(models, was_training):
            m.train(training)
    return sums


def result_from_sums(sums: SequenceSums, n_bootstrap: int = 1000, seed: int = 0) -> ForgettingResult:
    """The metric overall, per domain and per sequence from per-sequence sums (`measure_sums`)."""
    domains: dict[str, dict[str, Any]] = {}
    sequences: list[dict[str, Any]] = []
    for name, values in sums.items():
        tokens = values["tokens"]
        domains[name] = summarize(values, tokens, n_bootstrap, seed)
        for i in range(len(tokens)):
            sequences.append({"domain": name, "index": i, "tokens": int(tokens[i])}
                             | {k: float(values[k][i] / tokens[i]) for k in METRIC_KEYS})
    overall = summarize({k: np.concatenate([v[k] for v in sums.values()]) for k in METRIC_KEYS},
                        np.concatenate([v["tokens"] for v in sums.values()]), n_bootstrap, seed)
    return ForgettingResult(overall=overall, domains=domains, sequences=sequences)


@torch.no_grad()
def base_chunk_log_probs(source: BaseSource, head: torch.nn.Module | OutputHead, batch_size: int,
                         chunk_size: int | None = None) -> BaseSource:
    """`source` (recorded hidden states) with the base side made once: log-probabilities,
    probabilities and entropy, in the very batches and chunks `measure_forgetting` uses at
    `batch_size`, so measurements that reuse them give the same numbers bit for bit, minus a
    head pass, a softmax and two vocabulary-wide operations each (`mitigate`'s grid measures
    one fine-tune many times). Costs 2 x tokens x vocab floats."""
    import dataclasses

    if source.predictions is None:
        raise ValueError("base log-probabilities are made from recorded hidden states: the source has none")
    made: dict[str, list[list[tuple[torch.Tensor, ...]]]] = {}
    base_head = OutputHead.of(source.head or head)
    size = chunk_size or chunk_positions(base_head.vocab)
    for name, hidden in source.predictions.hidden.items():
        made[name] = []
        for start in range(0, len(hidden), batch_size):
            flat = hidden[start : start + batch_size, :-1].reshape(-1, hidden.shape[-1])
            chunks: list[tuple[torch.Tensor, ...]] = []
            for i in range(0, len(flat), size):
                log_p, p = log_probs(base_head(flat[i : i + size].to(base_head.weight.device)), overwrite=True)
                chunks.append((log_p, p, _row_dots(p, log_p).neg_(), log_p.argmax(-1, keepdim=True)))
            made[name].append(chunks)
    return dataclasses.replace(source, log_probs=made)


def mean_loss(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int = 16, chunk_size: int | None = None) -> float:
    """Token-weighted next-token cross-entropy of `model` on `[n, seq_len]` blocks: the float32
    head on `chunk_size` positions at a time (`chunk_positions`), summed in float64."""
    losses = sequence_losses(model, blocks, batch_size, chunk_size)
    return float(losses.sum()) / max(1, blocks[:, 1:].numel())


@torch.no_grad()
def sequence_losses(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int = 16, chunk_size: int | None = None) -> np.ndarray:
    """Each sequence's summed next-token cross-entropy (float64 `[n]`), as `mean_loss` adds them."""
    was_training = model.training
    model.eval()
    device = _input_device(model)
    head = output_head(model) if backbone(model) is not None else None
    if head is not None and len(blocks) and head_mismatch(model, blocks[:1].to(device)) is not None:
        head = None
    sums: list[torch.Tensor] = []
    try:
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size].to(device)
            if head is not None:  # the head on the scored positions only, a chunk at a time
                hidden = final_hidden(model, batch)[:, :-1]
                hidden = hidden.reshape(-1, hidden.shape[-1])
                size = chunk_size or chunk_positions(head.vocab)
                targets = batch[:, 1:].reshape(-1).to(hidden.device)
                losses = torch.cat([torch.nn.functional.cross_entropy(head(hidden[i : i + size]), targets[i : i + size],
                                                                      reduction="none").double()
                                    for i in range(0, len(hidden), size)])
            else:  # a head forgetscope cannot rebuild: the model's whole logits
                logits = full_logits(model, batch)[:, :-1].float()
                losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                           batch[:, 1:].reshape(-1).to(logits.device), reduction="none").double()
            sums.append(losses.view(len(batch), -1).sum(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(sums).numpy() if sums else np.zeros(0)


def kl_to_base(head: torch.nn.Module | OutputHead, hidden: torch.Tensor, base_hidden: torch.Tensor,
               base_head: torch.nn.Module | OutputHead | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """Mean per-position `KL(base || model)` over `[n, width]` final hidden states, differentiable
    in `hidden` (the KL penalty's loss). Positions go in chunks, each checkpointed: backward
    recomputes one chunk's logits at a time instead of keeping `[n, vocab]` of them."""
    from torch.utils.checkpoint import checkpoint

    head = OutputHead.of(head)
    base = OutputHead.of(base_head) if base_head is not None else head
    size = chunk_size or chunk_positions(head.vocab)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(hidden), size):
        total = total + checkpoint(_chunk_kl, hidden[start : start + size], base_hidden[start : start + size], head, base,
                                   use_reentrant=False)
    return total / max(1, len(hidden))


def _chunk_kl(hidden: torch.Tensor, base_hidden: torch.Tensor, head: OutputHead, base_head: OutputHead) -> torch.Tensor:
    with torch.no_grad():
        log_p = torch.log_softmax(base_head(base_hidden), dim=-1)
    log_q = torch.log_softmax(head(hidden), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum()


class _ProgressBar:
    """A rich progress bar over eval batches on stderr (stdout stays for results, `--json`);
    yields a callable that advances it."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import Progress

        self._progress = Progress(transient=True, console=Console(stderr=True))
        self._total = total

    def __enter__(self):
        self._progress.__enter__()
        task = self._progress.add_task("measuring forgetting", total=self._total)
        return lambda: self._progress.advance(task)

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)
