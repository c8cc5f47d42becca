"""The candidate laws, as functions of `P` (non-embedding parameters fine-tuned) and `N`
(update steps): `y = E + g(P, N)`.

`E` is the shift: 0 for `kl`, the base entropy for `forgetting_ce` when fixed, fitted
otherwise. A form is one module in this package that registers a `Form`: its `g`, the
gradient of `g` with respect to its own parameters (so fits use exact gradients), the
parameters' names, bounds and a grid of starting points. Amplitudes are fitted as
logarithms (`log_A`) so they stay positive; `report` gives them back as `A`.

An increasing form (forgetting grows with P and N) is a candidate for `kl` and
`forgetting_ce`; a decreasing one for the fine-tuning loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forgetscope.registry import Registry


@dataclass(frozen=True)
class Form:
    """A law `y = E + g(P, N)`; subclasses define `g` through `fitted_names`, `terms`,
    `bounds` and `starts`."""

    name: str
    increasing: bool
    fitted_names: tuple[str, ...] = ()
    """`g`'s parameters as fitted, amplitudes as `log_X`."""

    def terms(self, params: list[np.ndarray], logP: np.ndarray, logN: np.ndarray, trained: np.ndarray):
        """`([terms of g], [dg/dparam ...])` for parameter columns of shape `(B, 1)` and 1-d
        `log P`, `log N`; `trained` is False at step 0, where the N-dependent part must be 0.
        `y = E + term_1 + term_2 + ...`, summed in that order."""
        raise NotImplementedError

    def bounds(self) -> list[tuple[float, float]]:
        """Box bounds of `fitted_names`, in order."""
        raise NotImplementedError

    def starts(self, level: float) -> list[list[float]]:
        """Starting points of `fitted_names`; `level` is the log of the median of `y - E`."""
        raise NotImplementedError

    # -- shared by every form ------------------------------------------------------------

    @property
    def sign(self) -> float:
        return 1.0 if self.increasing else -1.0

    @property
    def names(self) -> tuple[str, ...]:
        """Reported parameter names, E first, amplitudes without `log_`."""
        return ("E", *(n.removeprefix("log_") for n in self.fitted_names))

    def fit_names(self, shift: float | None) -> tuple[str, ...]:
        """The names of the fitted vector theta: E first unless the shift is fixed."""
        return self.fitted_names if shift is not None else ("E", *self.fitted_names)

    def value_and_grad(self, theta: np.ndarray, P: np.ndarray, N: np.ndarray, shift: float | None):
        """`(y, dy/dtheta)` for 1-d `P`, `N` of length n, theta laid out as `fit_names(shift)`.

        `theta` of shape `(k,)` gives `y` of shape `(n,)` and a gradient of `(n, k)`; a batch
        of shape `(B, k)` gives `(B, n)` and `(B, n, k)` (used by the batched bootstrap).
        """
        theta = np.asarray(theta, dtype=float)
        batch = theta if theta.ndim == 2 else theta[None]
        cols = [batch[:, j : j + 1] for j in range(batch.shape[1])]  # each (B, 1)
        E, rest = (shift, cols) if shift is not None else (cols[0], cols[1:])
        trained = N > 0  # step 0 carries only the shift
        logP, logN = np.log(P), np.log(np.where(trained, N, 1.0))
        parts, grads = self.terms(rest, logP, logN, trained)
        y = E
        for part in parts:
            y = y + part
        if shift is None:
            grads = [np.ones_like(y), *grads]
        grad = np.stack(np.broadcast_arrays(*grads), axis=-1)
        y = np.broadcast_to(y, grad.shape[:-1])
        return (y, grad) if theta.ndim == 2 else (y[0], grad[0])

    def report(self, theta: np.ndarray, shift: float | None) -> dict[str, float]:
        """`{E, A, alpha, ...}` in the natural parameterisation."""
        values = dict(zip(self.fit_names(shift), np.asarray(theta, dtype=float)))
        out = {"E": float(shift if shift is not None else values["E"])}
        for name in self.fitted_names:
            out[name.removeprefix("log_")] = float(np.exp(values[name])) if name.startswith("log_") else float(values[name])
        return out


FORMS: Registry[Form] = Registry("forms", __name__)


def candidate_forms(increasing: bool) -> list[str]:
    """Names of the registered forms that grow (forgetting) or fall (fine-tuning loss)."""
    return [name for name, form in FORMS.items() if form.increasing == increasing]
