"""Conjugate prompting in miniature, offline: is forgetting lower in a transformed "language"?

1. A tiny Llama is pretrained here on the embedded corpora (`forgetscope.tiny.corpora`),
   where a share of each domain's documents is given twice: plain and transformed (Pig
   Latin or Leetspeak). The base model thus knows two "languages", the second from less text.
2. It is fine-tuned with LoRA (`forgetscope.train.finetune`, the ordinary training path) on
   plain text of one domain only, documents it never saw in pretraining.
3. Forgetting (KL to the base, nats/token) is measured on the same held-out documents of
   every domain, plain and transformed.

If fine-tuning changed the model mostly for prompts that look like its data, as Kotha,
Springer and Raghunathan (ICLR 2024) argue for real models, the KL on transformed prompts is
lower. The base model is cached under the forgetscope cache root like the default tiny
model, keyed by its own settings.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ConfigDict, Field, field_validator

from forgetscope.errors import UserInputError
from forgetscope.settings import Settings
from forgetscope.sources import cache_root, cached_build
from forgetscope.tiny import corpora
from forgetscope.tiny.model import TinyConfig, corpus_stamp, train_from_scratch, train_tokenizer

MINIATURE_VERSION = 1  # bump when the corpus construction below changes
TRANSFORMS = ("piglatin", "leetspeak")


class MiniatureConfig(Settings):
    """The whole experiment: corpus mixture, model size, pretraining and fine-tuning budgets.
    The model and pretraining fields become a `TinyConfig` (`tiny()`), with this seed."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="miniature config")

    transform: str = Field("piglatin", description=f"The second language of pretraining: {', '.join(TRANSFORMS)}.")
    finetune_domain: str = Field("scripture", description=f"The domain fine-tuned on: {', '.join(corpora.DOMAINS)}.")
    transformed_fraction: float = Field(0.5, gt=0, le=1, description="Share of each domain's pretraining documents also given in the transformed language.")
    seed: int = Field(0, description="Seeds pretraining (model init, data order) and fine-tuning alike.")
    # The base model and its pretraining, as `TinyConfig` defines them, at the miniature's size.
    vocab_size: int = TinyConfig.field("vocab_size", default=2048)
    hidden_size: int = TinyConfig.field("hidden_size", default=128)
    layers: int = TinyConfig.field("layers", default=2)
    heads: int = TinyConfig.field("heads", default=4)
    intermediate_size: int = TinyConfig.field("intermediate_size", default=384)
    seq_len: int = TinyConfig.field("seq_len", description="Tokens per sequence, pretraining and fine-tuning.")
    pretrain_steps: int = TinyConfig.field("pretrain_steps", default=500)
    pretrain_batch_size: int = TinyConfig.field("batch_size")
    pretrain_learning_rate: float = TinyConfig.field("learning_rate")
    finetune_steps: int = Field(150, ge=1, description="rsLoRA fine-tuning steps.")
    finetune_batch_size: int = Field(8, ge=1, description="Sequences per fine-tuning step.")
    finetune_learning_rate: float = Field(1e-3, gt=0, description="Peak fine-tuning learning rate.")
    rank: int = Field(16, ge=1, description="LoRA rank of the fine-tune.")
    eval_tokens: int = Field(8192, ge=2, description="Plain held-out tokens per domain (the transformed copies of those documents come on top).")
    max_documents: int | None = Field(None, ge=1, description="Documents read per domain (None: all); small values make the test run in seconds.")

    @field_validator("transform")
    @classmethod
    def _known_transform(cls, value: str) -> str:
        if value not in TRANSFORMS:
            raise ValueError(f"unknown miniature transform {value!r} (choose from {', '.join(TRANSFORMS)})")
        return value

    @field_validator("finetune_domain")
    @classmethod
    def _known_domain(cls, value: str) -> str:
        if value not in corpora.DOMAINS:
            raise ValueError(f"unknown fine-tuning domain {value!r} (choose from {', '.join(corpora.DOMAINS)})")
        return value

    def tiny(self) -> TinyConfig:
        """The pretraining settings in the tiny model's terms."""
        return TinyConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, layers=self.layers, heads=self.heads,
            intermediate_size=self.intermediate_size, seq_len=self.seq_len, pretrain_steps=self.pretrain_steps,
            batch_size=self.pretrain_batch_size, learning_rate=self.pretrain_learning_rate,
            warmup_steps=min(50, self.pretrain_steps // 10), heldout_tokens=self.eval_tokens, seed=self.seed,
        )

    def base_settings(self) -> dict:
        """Everything the base model's pretraining depends on, not the fine-tune's budget."""
        fields = self.model_dump()
        for name in ("finetune_steps", "finetune_batch_size", "finetune_learning_rate", "rank"):
            fields.pop(name)
        return fields | {"threads": self.tiny().threads} | corpus_stamp() | {"miniature": MINIATURE_VERSION}

    def base_key(self) -> str:
        """Cache key of the base model (`base_settings`)."""
        return hashlib.sha256(json.dumps(self.base_settings(), sort_keys=True).encode()).hexdigest()[:12]


def _draw(document: str, salt: str) -> float:
    """A stable number in [0, 1) from a document's content: the same split on every machine."""
    digest = hashlib.sha256((salt + document).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") / 2**32


def _take_chars(documents: list[str], n_chars: int) -> list[str]:
    out, total = [], 0
    for document in documents:
        if total >= n_chars:
            break
        out.append(document)
        total += len(document)
    return out


@dataclass
class MiniatureCorpus:
    """Documents of each part of the experiment, plain unless named transformed."""

    pretrain: dict[str, list[str]]
    pretrain_transformed: dict[str, list[str]]
    finetune: list[str]
    heldout: dict[str, list[str]]


def build_corpus(config: MiniatureConfig) -> MiniatureCorpus:
    """Split the embedded corpora for the experiment and write the transformed copies.

    The fine-tuning domain's fine-tuning documents (its `finetune` split, or half of its
    pretraining documents for domains without one) are withheld from pretraining. Text is
    taken in corpus order up to about 4 characters per pretraining token the budget allows.
    """
    from forgetscope.conjugate.transforms import get_transform

    transform = get_transform(config.transform)
    chars = 4 * config.pretrain_steps * config.pretrain_batch_size * config.seq_len
    # Plain and transformed text of three domains share the pretraining budget.
    per_domain = int(chars / (len(corpora.DOMAINS) * (1 + config.transformed_fraction)))
    out = MiniatureCorpus({}, {}, [], {})
    for domain in corpora.DOMAINS:
        splits = corpora.load(domain)
        pretrain, finetune = list(splits.pretrain), list(splits.finetune)
        if domain == config.finetune_domain and not finetune:
            finetune = [d for d in pretrain if _draw(d, "finetune") < 0.5]
            pretrain = [d for d in pretrain if _draw(d, "finetune") >= 0.5]
        if config.max_documents is not None:
            pretrain, finetune = pretrain[: config.max_documents], finetune[: config.max_documents]
        pretrain = _take_chars(pretrain, per_domain)
        out.pretrain[domain] = pretrain
        out.pretrain_transformed[domain] = [
            transform.forward(d) for d in pretrain if _draw(d, "transform") < config.transformed_fraction
        ]
        if domain == config.finetune_domain:
            out.finetune = finetune
        heldout = splits.heldout[: config.max_documents] if config.max_documents else splits.heldout
        out.heldout[domain] = _take_chars(heldout, 5 * config.eval_tokens)
    return out


def ensure_miniature_base(config: MiniatureConfig, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The miniature base model: the shipped one for the default recipe, else the cached one,
    pretrained first if needed (scratch dir, then rename)."""
    from forgetscope.tiny.shipped import shipped_base

    shipped = shipped_base("miniature-llama", config.base_settings())
    if shipped is not None:
        return shipped
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return cached_build(root, "miniature-llama", config.base_key(), lambda scratch: pretrain_miniature(config, scratch, progress))


def pretrain_miniature(config: MiniatureConfig, out_dir: Path, progress: bool, stop_after: int | None = None) -> dict:
    from transformers import set_seed

    from forgetscope.data import group_into_blocks

    started = time.time()
    set_seed(config.seed)
    corpus = build_corpus(config)
    texts = [d for part in (corpus.pretrain, corpus.pretrain_transformed) for docs in part.values() for d in docs]
    tokenizer = train_tokenizer(texts + corpus.finetune, config.vocab_size)
    tiny = config.tiny()
    blocks = [group_into_blocks(docs, tokenizer, config.seq_len) for part in (corpus.pretrain, corpus.pretrain_transformed)
              for docs in part.values()]
    train_ids = torch.cat(blocks)
    heldout = {d: group_into_blocks(docs, tokenizer, config.seq_len, config.eval_tokens) for d, docs in corpus.heldout.items()}
    metrics = train_from_scratch(tiny, tokenizer, train_ids, heldout, out_dir, progress, started, stop_after)
    metrics["miniature"] = config.model_dump()
    metrics["transformed_tokens"] = int(sum(b.numel() for b in blocks[len(corpus.pretrain):]))
    (out_dir / "tiny_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def run_miniature(config: MiniatureConfig = MiniatureConfig(), cache_dir: Path | None = None,
                  out_dir: Path | None = None, progress: bool = True) -> dict:
    """Pretrain (cached), fine-tune on plain text, and measure KL on plain vs transformed held-out text.

    Returns `{"config", "base", "base_metrics", "records", "final": {domain: {"plain": kl,
    "transformed": kl, ...tokens, base entropy and loss of each}}, "other_domains": {"plain",
    "transformed"}, "seconds"}`, where
    `other_domains` is the token-weighted KL over the domains not fine-tuned on, and
    `transformed_same_text` the transformed text's KL summed over the same documents and
    divided by their plain token count (the transformed copy drops at most one block's
    remainder), so that both sides are totals over one text.
    """
    from forgetscope.conjugate.transforms import get_transform
    from forgetscope.data import group_into_blocks
    from forgetscope.models import load_causal_lm, load_tokenizer, torch_threads
    from forgetscope.tiny.model import tiny_metrics
    from forgetscope.train import LoraSettings, TrainSettings, finetune

    started = time.time()
    base = ensure_miniature_base(config, cache_dir, progress)
    pretrain_seconds = time.time() - started
    tokenizer = load_tokenizer(str(base))
    model = load_causal_lm(str(base))
    corpus = build_corpus(config)
    transform = get_transform(config.transform)
    eval_blocks: dict[str, torch.Tensor] = {}
    for domain, docs in corpus.heldout.items():
        plain = group_into_blocks(docs, tokenizer, config.seq_len, config.eval_tokens)
        # Exactly the text of the plain blocks, transformed document by document.
        covered = tokenizer.decode(plain.flatten(), skip_special_tokens=False).split(tokenizer.eos_token)
        eval_blocks[f"{domain}/plain"] = plain
        eval_blocks[f"{domain}/{config.transform}"] = group_into_blocks(
            [transform.forward(d) for d in covered if d], tokenizer, config.seq_len
        )
    train_blocks = group_into_blocks(corpus.finetune, tokenizer, config.seq_len)
    needed = config.finetune_steps * config.finetune_batch_size
    if len(train_blocks) == 0:
        raise UserInputError("the fine-tuning text is shorter than one sequence")
    train_blocks = train_blocks[:needed]
    settings = TrainSettings(
        steps=config.finetune_steps, learning_rate=config.finetune_learning_rate,
        batch_size=config.finetune_batch_size, seq_len=config.seq_len, eval_points=4, seed=config.seed,
    )
    with torch_threads(config.tiny().threads):  # the recipe's threads: the same numbers on any machine of one kind
        records = finetune(
            model, tokenizer, LoraSettings(rank=config.rank), settings, train_blocks,
            eval_blocks, out_dir=out_dir, progress=progress,
        )
    last = records[-1]["domains"]
    tokens = {name: blocks.shape[0] * (blocks.shape[1] - 1) for name, blocks in eval_blocks.items()}
    final = {}
    for d in corpora.DOMAINS:
        plain, moved = last[f"{d}/plain"], last[f"{d}/{config.transform}"]
        final[d] = {
            "plain": plain["kl"], "transformed": moved["kl"],
            "plain_tokens": tokens[f"{d}/plain"], "transformed_tokens": tokens[f"{d}/{config.transform}"],
            # How sure the base is on each: KL is bounded by nothing, but tends to grow with H_base.
            "plain_base_entropy": plain["base_entropy"], "transformed_base_entropy": moved["base_entropy"],
            "plain_base_loss": plain["base_loss"], "transformed_base_loss": moved["base_loss"],
        }
        # Per token, a transform that cuts text into more, easier tokens looks less forgotten;
        # over the same text (nats per plain token) it does not get that discount.
        final[d]["transformed_same_text"] = moved["kl"] * final[d]["transformed_tokens"] / final[d]["plain_tokens"]
    others = [d for d in corpora.DOMAINS if d != config.finetune_domain]

    def weighted(kind: str) -> float:
        tokens = sum(final[d][f"{kind}_tokens"] for d in others)
        return sum(final[d][kind] * final[d][f"{kind}_tokens"] for d in others) / tokens

    plain_tokens = sum(final[d]["plain_tokens"] for d in others)
    return {
        "config": config.model_dump(),
        "base": str(base),
        "base_metrics": tiny_metrics(base),
        "records": records,
        "final": final,
        "other_domains": {"plain": weighted("plain"), "transformed": weighted("transformed"),
                          "transformed_same_text": weighted("transformed") * sum(
                              final[d]["transformed_tokens"] for d in others) / plain_tokens},
        "pretrain_seconds_this_run": round(pretrain_seconds, 1),
        "seconds": round(time.time() - started, 1),
    }
