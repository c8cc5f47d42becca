"""Sweep directories drawn from known laws: records as a sweep writes them, with KL and the
fine-tuning gain from a broken power law with a `P`-dependent knee, a factor per module set,
time measured as learning rate x steps, and multiplicative noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from forgetscope.laws.forms import FORMS

H_BASE, FT_START, VOCAB = 4.6, 5.1, 4096
# KL: knee at N_c = 20 P^0.1 (30 to 70 steps here), steep then flatter, as the demo's curves bend.
KL_LAW = [np.log(2e-5), 0.45, 1.4, 0.7, np.log(20.0), 0.1]  # beta2 = 1.4 - 0.7
GAIN_LAW = [np.log(1e-3), 0.25, 1.2, 0.7, np.log(15.0), 0.05]
ARMS = {"all-linear": (1.0, 4864), "q_proj,v_proj": (3.0, 1024)}
"""module set: (KL factor, parameters per rank)."""
REPLAY_B = 30.0
"""Replay's effect on KL: 5% replay divides it by 2.5."""
STEPS = [0, 1, 3, 7, 20, 33, 47, 60, 73, 87, 100, 113, 127, 140, 153, 167, 180, 200]


def truth(law: list[float], P, T, factor=1.0) -> np.ndarray:
    """The broken law's value at `(P, T)`, times `factor`."""
    P, T = np.broadcast_arrays(np.asarray(P, dtype=float), np.asarray(T, dtype=float))
    return factor * FORMS.get("broken").value_and_grad(np.array(law), P.ravel(), T.ravel(), 0.0)[0].reshape(P.shape)


def write_sweep(directory: Path, seed: int = 0, noise: float = 0.03, ranks=(1, 2, 4, 8, 16, 32),
                arms=("all-linear", "q_proj,v_proj"), learning_rates=(1e-3,), replay_fractions=(0.0,)) -> Path:
    """`DIR/records.jsonl` of every (rank, module set, learning rate, replay fraction) run at
    `STEPS`; replay divides KL by `1 + REPLAY_B * fraction` (Bethune et al.'s form)."""
    rng = np.random.default_rng(seed)
    reference = float(np.median(learning_rates))
    records = []
    for arm in arms:
        factor, per_rank = ARMS[arm]
        for rank in ranks:
            for lr, replay in ((lr, f) for lr in learning_rates for f in replay_fractions):
                P = rank * per_rank
                pid = f"r{rank}-{arm}-lr{lr:g}" + (f"-replay{replay:g}" if replay else "")
                T = np.array(STEPS, dtype=float) * lr / reference
                kl = truth(KL_LAW, P, T, factor / (1 + REPLAY_B * replay)) * np.exp(rng.normal(0, noise, len(T)))
                gain = truth(GAIN_LAW, P, T) * np.exp(rng.normal(0, noise, len(T)))
                for step, k, g in zip(STEPS, kl, gain):
                    records.append({"point_id": pid, "trainable_params": P, "step": step, "kl": float(k),
                                    "forgetting_ce": H_BASE + float(k), "base_entropy": H_BASE, "ft_loss": FT_START - float(g),
                                    "rank": rank, "target_modules": "all-linear" if arm == "all-linear" else arm.split(","),
                                    "rslora": True, "learning_rate": lr, "vocab_size": VOCAB, "replay_fraction": replay})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory
