"""Mitigations: measured ways to forget less.

- `posthoc`: edits of an existing fine-tune (scaling the update, WiSE-FT, intruder
  dimensions; one module each in `methods/`), measured as a trade-off table;
- `training`: what a fine-tune can do while it trains (replay, a KL penalty toward the base,
  an L2 pull of the update), the fields `replay_fraction`, `kl_weight`, `l2_weight` of
  `forgetscope.settings.TrainSettings`.
"""
