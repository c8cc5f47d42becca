"""The tiny Llama base model that `forgetscope demo` and the tests stand on.

The recipe pretrains it on the CPU from the embedded corpora (`forgetscope.tiny.corpora`)
with a byte-level BPE tokenizer trained by `tokenizers`. The default recipe's result ships
inside the package (`forgetscope.tiny.shipped`), so the first demo fine-tunes within
seconds; any other settings are pretrained here once and cached under the user's cache
directory, keyed by those settings. Either way the result is an ordinary `transformers`
model directory: everything downstream loads it with `from_pretrained`, exactly as it
would load a hub model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ConfigDict, Field

from forgetscope.settings import Settings
from forgetscope.sources import cache_root, cached_build
from forgetscope.tiny import corpora

EOS = "<|endoftext|>"


class TinyConfig(Settings):
    """Size and pretraining budget of the tiny base model."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="tiny config")

    vocab_size: int = Field(4096, ge=256, description="Byte-level BPE vocabulary.")
    hidden_size: int = Field(192, ge=1, description="Width.")
    layers: int = Field(4, ge=1, description="Transformer blocks.")
    heads: int = Field(6, ge=1, description="Attention heads (and key-value heads).")
    intermediate_size: int = Field(512, ge=1, description="MLP width.")
    seq_len: int = Field(128, ge=2, description="Tokens per pretraining sequence.")
    pretrain_steps: int = Field(600, ge=1, description="Pretraining steps (600 keeps the first demo run within 10 minutes on 2 cores).")
    batch_size: int = Field(16, ge=1, description="Sequences per pretraining step.")
    learning_rate: float = Field(3e-3, gt=0, description="Peak learning rate (AdamW, cosine schedule).")
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up steps.")
    heldout_tokens: int = Field(16_384, ge=2, description="Held-out tokens per domain for the reported loss.")
    seed: int = Field(0, description="Seed of the tokenizer-independent model init and the data order.")
    threads: int = Field(2, ge=1, description="torch threads while pretraining: a thread count can change how the kernels split their sums, so it is part of the recipe (1 and 2 gave the same first steps on the machines measured).")

    def key(self) -> str:
        """Cache key: changes whenever a setting or the corpus version changes."""
        payload = json.dumps(self.model_dump() | corpus_stamp(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


CORPUS_VERSION = 2  # bump when corpora.py changes what text the model sees


def corpus_stamp() -> dict:
    """What decides the embedded corpora's text, for cache keys: their version, and the
    Python version, since the code corpus is the running interpreter's standard library."""
    return {"corpus": CORPUS_VERSION, "python": "{}.{}".format(*sys.version_info[:2])}


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2 style) wrapped as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS)


def llama(
    vocab_size: int,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate_size: int = 64,
    max_positions: int = 128,
    tie_embeddings: bool = False,
    seed: int = 0,
    **config: Any,
):
    """A freshly initialised `LlamaForCausalLM`, the same weights for the same `seed`: the
    tiny bases' architecture at any size (the defaults are 2 layers, width 32, untied head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_positions,
            tie_word_embeddings=tie_embeddings,
            **config,
        )
    )


def build_model(config: TinyConfig, vocab_size: int):
    """A freshly initialised tiny Llama (tied head, token 0 the end of text)."""
    return llama(
        vocab_size, hidden_size=config.hidden_size, layers=config.layers, heads=config.heads,
        intermediate_size=config.intermediate_size, max_positions=max(256, config.seq_len), tie_embeddings=True,
        seed=config.seed, eos_token_id=0, bos_token_id=0, pad_token_id=0,
    )


def pretrain(config: TinyConfig, out_dir: Path, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train tokenizer and model from scratch into `out_dir`; return the metrics written there.
    `stop_after` ends training after that many steps, with the recipe's schedule unchanged,
    to check the first steps of a long recipe."""
    from transformers import set_seed

    from forgetscope.data import group_into_blocks

    started = time.time()
    set_seed(config.seed)
    splits = {domain: corpora.load(domain) for domain in corpora.DOMAINS}
    # The tokenizer sees all non-held-out text, fine-tuning text included, as a released
    # model's tokenizer is trained on a broad corpus.
    tokenizer = train_tokenizer([d for s in splits.values() for d in s.pretrain + s.finetune], config.vocab_size)
    budget = config.pretrain_steps * config.batch_size * config.seq_len  # no domain needs more than one pass
    train_ids = torch.cat([group_into_blocks(s.pretrain, tokenizer, config.seq_len, budget) for s in splits.values()])
    heldout = {d: group_into_blocks(s.heldout, tokenizer, config.seq_len, config.heldout_tokens) for d, s in splits.items()}
    return train_from_scratch(config, tokenizer, train_ids, heldout, out_dir, progress, started, stop_after)


def train_from_scratch(
    config: TinyConfig,
    tokenizer,
    train_ids: torch.Tensor,
    heldout: dict[str, torch.Tensor],
    out_dir: Path,
    progress: bool = True,
    started: float | None = None,
    stop_after: int | None = None,
) -> dict:
    """Pretrain a fresh tiny Llama on `[n, seq_len]` blocks; save it with `tokenizer` and its metrics.

    `heldout` is `{domain: blocks}` whose loss is reported in `tiny_metrics.json`. Used by
    `pretrain` (the embedded corpora) and by anything that pretrains on its own text.
    """
    import datasets
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    from forgetscope.metric import mean_loss
    from forgetscope.models import torch_threads

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_after is not None and state.global_step >= stop_after:
                control.should_training_stop = True

    started = time.time() if started is None else started
    model = build_model(config, len(tokenizer))
    ids = train_ids.tolist()
    args = TrainingArguments(
        output_dir=str(out_dir / "trainer"),
        max_steps=config.pretrain_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        weight_decay=0.1,
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=True,
        disable_tqdm=not progress,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_dict({"input_ids": ids, "labels": ids}),
        data_collator=default_data_collator, callbacks=[StopAfter()],
    )
    with torch_threads(config.threads):
        trainer.train()
        model.eval()
        heldout_loss = {d: mean_loss(model, ids_) for d, ids_ in heldout.items()}
    shutil.rmtree(out_dir / "trainer", ignore_errors=True)
    metrics = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "non_embedding_parameters": sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n),
        "pretrain_steps": trainer.state.global_step,
        "pretrain_tokens": trainer.state.global_step * config.batch_size * config.seq_len,
        "corpus_tokens": int(train_ids.numel()),
        "heldout_loss": heldout_loss,
        "pretrain_seconds": round(time.time() - started, 1),
        "config": config.model_dump(),
    }
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "tiny_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def ensure_tiny_base(config: TinyConfig = TinyConfig(), cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The tiny base model directory: the shipped one for the default recipe, else the cached
    one, pretraining it first if needed."""
    from forgetscope.tiny.shipped import shipped_base

    shipped = shipped_base("tiny-llama", config.model_dump() | corpus_stamp())
    if shipped is not None:
        return shipped
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return cached_build(root, "tiny-llama", config.key(), lambda scratch: pretrain(config, scratch, progress))


def tiny_metrics(model_dir: Path) -> dict:
    """What pretraining measured: sizes, held-out loss per domain, time."""
    return json.loads((Path(model_dir) / "tiny_metrics.json").read_text())
