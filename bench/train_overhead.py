"""What watching forgetting costs a fine-tune: the same rsLoRA run of the tiny default with
and without `ForgettingCallback` on its default schedule (step 0 plus 7 log-spaced steps),
with the base predictions recorded once (default) and without them (`disable_adapter()`
at every measurement), measured in the same run.

The run has the shape of `forgetscope train`'s defaults scaled to the tiny model's context:
200 steps of 8 sequences (of 256 tokens here, 512 there) and, at each measurement, two
forgetting domains plus the held-out fine-tuning text, each at the same share of the
training tokens as the command's default `--eval-tokens 4096` (2048 here).

The overhead is the time spent inside the callback over the rest of the same run; the
end-to-end difference from the run without it is printed too, but runs of a minute vary
by several percent on a shared machine, as much as the overhead itself.

    python bench/train_overhead.py [--steps 200] [--seq-len 256] [--eval-tokens 2048] [--repeats 2]

`--seq-len 128 --eval-tokens 4096` is `forgetscope train`'s own default (one definition in
`forgetscope.settings.TrainSettings`), unscaled.
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


def timed(callback: ForgettingCallback) -> ForgettingCallback:
    """Wrap the callback's event handlers so that `callback.seconds` adds up the time spent in them."""
    callback.seconds = 0.0
    for name in dir(type(callback)):
        if name.startswith("on_"):
            handler = getattr(callback, name)

            def wrapper(*args, _handler=handler, **kwargs):
                started = time.perf_counter()
                try:
                    return _handler(*args, **kwargs)
                finally:
                    callback.seconds += time.perf_counter() - started

            setattr(callback, name, wrapper)
    return callback


def run(base: str, train_ids: list, eval_blocks, ft_eval_blocks, steps: int, callback: str, out: str) -> tuple[float, float]:
    """Seconds of the whole run, and of them the seconds spent inside the callback."""
    model = get_peft_model(load_causal_lm(base), LoraSettings(rank=8, lora_alpha=16).to_peft())
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-3,
                             logging_steps=10, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, data_collator=default_data_collator,
                      train_dataset=datasets.Dataset.from_dict({"input_ids": train_ids, "labels": train_ids}))
    watcher = None
    if callback != "none":
        watcher = timed(ForgettingCallback(trainer, eval_blocks, ft_eval_blocks=ft_eval_blocks, record_base=callback == "recorded"))
        trainer.add_callback(watcher)
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started, watcher.seconds if watcher else 0.0


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=256, help="Tokens per training and eval sequence.")
    parser.add_argument("--eval-tokens", type=int, default=2048, help="Eval tokens per domain (2048: the share of 512-token sequences with 4096, scaled to 256).")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    base = str(ensure_tiny_base())
    tok = load_tokenizer(base)
    code = group_into_blocks(corpora.load("code").finetune, tok, args.seq_len, args.steps * 8 * args.seq_len + args.eval_tokens)
    n_ft_eval = args.eval_tokens // args.seq_len
    ft_eval_blocks, train_ids = code[:n_ft_eval], code[n_ft_eval:].tolist()
    eval_blocks = {d: group_into_blocks(corpora.load(d).heldout, tok, args.seq_len, args.eval_tokens) for d in ("scripture", "docs")}
    seconds, inside = {}, {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.repeats):  # alternate the modes, keep each one's best: one run, one load
            for mode in ("none", "recorded", "disable_adapter"):
                total, in_callback = run(base, train_ids, eval_blocks, ft_eval_blocks, args.steps, mode, out)
                if total < seconds.get(mode, float("inf")):
                    seconds[mode], inside[mode] = total, in_callback
    print(f"{'callback':<38} {'seconds':>8} {'in callback':>11} {'overhead':>9} {'end to end':>10}")
    for mode, label in (("none", "none"), ("recorded", "ForgettingCallback (recorded base)"),
                        ("disable_adapter", "ForgettingCallback (disable_adapter)")):
        # overhead: callback time over the rest of the same run (immune to run-to-run noise);
        # end to end: against the run without the callback (a few % of noise either way).
        overhead = inside[mode] / (seconds[mode] - inside[mode])
        print(f"{label:<38} {seconds[mode]:>8.1f} {inside[mode]:>11.1f} {overhead:>8.1%} {seconds[mode] / seconds['none'] - 1:>9.1%}")
    print(f"\n{args.steps} steps of 8 x {args.seq_len} tokens; 8 measurements, each on {len(eval_blocks)} domains x "
          f"{args.eval_tokens} eval tokens plus {len(ft_eval_blocks) * args.seq_len} held-out fine-tuning tokens.")


if __name__ == "__main__":
    main()
