"""What watching forgetting costs a fine-tune: the same rsLoRA run of the tiny default with
and without `ForgettingCallback` on its default schedule (step 0 plus 7 log-spaced steps),
with the base predictions recorded once (default) and without them (`disable_adapter()`
at every measurement), measured in the same run.

    python bench/train_overhead.py [--steps 200] [--eval-tokens 8192]
"""

from __future__ import annotations

import argparse
import time

import datasets
from peft import get_peft_model
from transformers import Trainer, TrainingArguments, default_data_collator

from forgetscope.callback import ForgettingCallback
from forgetscope.data import group_into_blocks
from forgetscope.models import load_causal_lm, load_tokenizer
from forgetscope.tiny import corpora
from forgetscope.tiny.model import ensure_tiny_base
from forgetscope.train import LoraSettings


def run(base: str, train_ids: list, eval_blocks, steps: int, callback: str, out: str) -> float:
    model = get_peft_model(load_causal_lm(base), LoraSettings(rank=8, alpha=16).to_peft())
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-3,
                             logging_steps=10, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, data_collator=default_data_collator,
                      train_dataset=datasets.Dataset.from_dict({"input_ids": train_ids, "labels": train_ids}))
    if callback != "none":
        trainer.add_callback(ForgettingCallback(trainer, eval_blocks, record_base=callback == "recorded"))
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    args = parser.parse_args()
    base = str(ensure_tiny_base())
    tok = load_tokenizer(base)
    train_ids = group_into_blocks(corpora.load("code").finetune, tok, 128, args.steps * 8 * 128).tolist()
    eval_blocks = {d: group_into_blocks(corpora.load(d).heldout, tok, 128, args.eval_tokens) for d in ("scripture", "docs")}
    seconds = {}
    with tempfile.TemporaryDirectory() as out:
        for mode in ("none", "recorded", "disable_adapter"):
            seconds[mode] = run(base, train_ids, eval_blocks, args.steps, mode, out)
    print(f"{'callback':<34} {'seconds':>8} {'overhead':>9}")
    for mode, label in (("none", "none"), ("recorded", "ForgettingCallback (recorded base)"),
                        ("disable_adapter", "ForgettingCallback (disable_adapter)")):
        print(f"{label:<34} {seconds[mode]:>8.1f} {seconds[mode] / seconds['none'] - 1:>8.1%}")
    print(f"\n{args.steps} steps of 8 x 128 tokens; 8 measurements on {len(eval_blocks)} x {args.eval_tokens} eval tokens.")


if __name__ == "__main__":
    main()
