"""The candidate laws, as a function of `P` (non-embedding parameters fine-tuned) and `N`
(update steps).

Forgetting (`kl`, `forgetting_ce`) grows with both; the fine-tuning loss falls:

    mult:      y = E + A * P^alpha * N^beta            (Kalajdzievski 2024, first reading)
    add:       y = E + A * P^alpha + B * N^beta
    mult_dec:  y = E + A * P^-alpha * N^-beta          (fine-tuning loss)
    add_dec:   y = E + A / P^alpha + B / N^beta

`E` is the shift: 0 for `kl`, the base entropy for `forgetting_ce` when fixed. Amplitudes
are fitted as logarithms so they stay positive; each form gives its value and the gradient
of its value with respect to the fitted parameters, so the fit can use exact gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Form:
    """A law `y = E + g(P, N)`; `theta` holds the fitted parameters (without E when it is fixed)."""

    name: str
    names: tuple[str, ...]  # reported parameter names, E first
    increasing: bool

    def amplitudes(self) -> tuple[str, ...]:
        return ("A", "B") if "B" in self.names else ("A",)

    def value_and_grad(self, theta: np.ndarray, P: np.ndarray, N: np.ndarray, shift: float | None):
        """`(y, dy/dtheta)` for 1-d `P`, `N` of length n, theta laid out as `fit_names(shift)`.

        `theta` of shape `(k,)` gives `y` of shape `(n,)` and a gradient of `(n, k)`; a batch
        of shape `(B, k)` gives `(B, n)` and `(B, n, k)` (used by the batched bootstrap).
        """
        theta = np.asarray(theta, dtype=float)
        batch = theta if theta.ndim == 2 else theta[None]
        cols = [batch[:, j : j + 1] for j in range(batch.shape[1])]  # each (B, 1)
        E, rest = (shift, cols) if shift is not None else (cols[0], cols[1:])
        # Step 0 (N = 0) carries only the shift: the N-dependent term is 0 there.
        before_training = N <= 0
        logP, logN = np.log(P), np.log(np.where(before_training, 1.0, N))
        sign = 1.0 if self.increasing else -1.0
        if self.name.startswith("mult"):
            log_a, alpha, beta = rest
            term = np.where(before_training, 0.0, np.exp(log_a + sign * (alpha * logP + beta * logN)))
            grads = [term, sign * term * logP, sign * term * logN]
            y = E + term
        else:
            log_a, alpha, log_b, beta = rest
            term_p = np.exp(log_a + sign * alpha * logP)
            term_n = np.where(before_training, 0.0, np.exp(log_b + sign * beta * logN))
            grads = [term_p, sign * term_p * logP, term_n, sign * term_n * logN]
            y = E + term_p + term_n
        if shift is None:
            grads = [np.ones_like(y)] + grads
        grad = np.stack(np.broadcast_arrays(*grads), axis=-1)
        y = np.broadcast_to(y, grad.shape[:-1])
        return (y, grad) if theta.ndim == 2 else (y[0], grad[0])

    def fit_names(self, shift: float | None) -> tuple[str, ...]:
        """The names of the fitted vector theta (amplitudes as logs)."""
        inner = ("log_A", "alpha", "beta") if self.name.startswith("mult") else ("log_A", "alpha", "log_B", "beta")
        return inner if shift is not None else ("E", *inner)

    def report(self, theta: np.ndarray, shift: float | None) -> dict[str, float]:
        """`{E, A, alpha, [B], beta}` in the natural parameterisation."""
        values = dict(zip(self.fit_names(shift), np.asarray(theta, dtype=float)))
        out = {"E": float(shift if shift is not None else values["E"])}
        for name in self.names[1:]:
            out[name] = float(np.exp(values[f"log_{name}"])) if name in ("A", "B") else float(values[name])
        return out


FORMS = {
    "mult": Form("mult", ("E", "A", "alpha", "beta"), increasing=True),
    "add": Form("add", ("E", "A", "alpha", "B", "beta"), increasing=True),
    "mult_dec": Form("mult_dec", ("E", "A", "alpha", "beta"), increasing=False),
    "add_dec": Form("add_dec", ("E", "A", "alpha", "B", "beta"), increasing=False),
}
FORGETTING_FORMS = ("mult", "add")
LOSS_FORMS = ("mult_dec", "add_dec")
