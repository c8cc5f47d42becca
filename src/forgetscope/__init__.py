"""forgetscope: measure, explain, predict and mitigate forgetting in LoRA / rsLoRA fine-tunes.

The public pieces (importing the package itself loads nothing heavy; each module loads
what it needs):

- `forgetscope.metric.measure_forgetting`: L_f, KL, H_base, hard CE of a fine-tune vs its base.
- `forgetscope.callback.ForgettingCallback`: watch forgetting live in any Trainer.
- `forgetscope.train.finetune`: one LoRA / rsLoRA run with forgetting records.
"""

__version__ = "0.1.0"
