"""The candidate laws, as functions of `P` (non-embedding parameters fine-tuned) and `N`
(update steps): `y = E + g(P, N)`.

`E` is the shift: 0 for `kl`, the base entropy for `forgetting_ce` when fixed, fitted
otherwise. Any form can also take one factor per arm (module set and scaling) beyond the
first: `y = E + k_arm * g(P, N)`, fitted as `log k`, so a sweep over several module sets
shares one law instead of pooling them under one `P`; and the replay knob of Bethune et al.
(2025), `y = E + g(P, N) / (1 + B f)` for a replay fraction `f`, fitted as `log B`. A form is one module in this package that registers a `Form`: its `g`, the
gradient of `g` with respect to its own parameters (so fits use exact gradients), the
parameters' names, bounds and a grid of starting points. Amplitudes are fitted as
logarithms (`log_A`) so they stay positive; `report` gives them back as `A`.

An increasing form (forgetting grows with P and N) is a candidate for `kl` and
`forgetting_ce`; a decreasing one for the fine-tuning loss. A form that `bends` (its growth in
`N` can slow past a knee) is a member of the average that forecasts KL.
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
    bends: bool = False
    """Whether its growth in `N` can slow down past a knee (`broken`, `steps`, `rescaled`):
    the forms whose forecasts of KL `fit` averages (`laws.select.KL_LAWS`)."""
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

    def value_and_grad(self, theta: np.ndarray, P: np.ndarray, N: np.ndarray, shift: float | None,
                       arm: np.ndarray | None = None, replay: np.ndarray | None = None):
        """`(y, dy/dtheta)` for 1-d `P`, `N` of length n, theta laid out as `fit_names(shift)`
        followed by the log-factors of arms 1, 2, ... (`arm`: each row's arm index; arm 0
        has no factor), then, with `replay` (each row's replay fraction), `log B`.

        `theta` of shape `(k,)` gives `y` of shape `(n,)` and a gradient of `(n, k)`; a batch
        of shape `(B, k)` gives `(B, n)` and `(B, n, k)` (used by the batched bootstrap).
        """
        theta = np.asarray(theta, dtype=float)
        batch = theta if theta.ndim == 2 else theta[None]
        n_core = len(self.fit_names(shift))
        cols = [batch[:, j : j + 1] for j in range(n_core)]  # each (B, 1)
        E, rest = (shift, cols) if shift is not None else (cols[0], cols[1:])
        trained = N > 0  # step 0 carries only the shift
        logP, logN = np.log(P), np.log(np.where(trained, N, 1.0))
        parts, grads = self.terms(rest, logP, logN, trained)
        g = sum(parts[1:], parts[0])
        if replay is not None:
            # Bethune et al.'s injection factor 1 / (1 + B f): 1 without replay, falling with it.
            log_b = batch[:, -1:]
            batch = batch[:, :-1]
            denominator = 1.0 + np.exp(log_b) * np.asarray(replay, dtype=float)[None, :]
            knob = 1.0 / denominator
            knob_grad = -g * np.exp(log_b) * np.asarray(replay, dtype=float)[None, :] / denominator**2
            grads = [knob * d for d in grads]
            g = knob * g
        log_factors = batch[:, n_core:]  # (B, arms - 1)
        if log_factors.shape[1]:
            onehot = (np.asarray(arm)[None, :] == np.arange(1, log_factors.shape[1] + 1)[:, None]).astype(float)
            factor = np.exp(log_factors @ onehot)  # (B, n)
            grads = [factor * d for d in grads] + [factor * g * row for row in onehot]
            if replay is not None:
                knob_grad = factor * knob_grad
            g = factor * g
        if replay is not None:
            grads = grads + [knob_grad]
        y = E + g
        if shift is None:
            grads = [np.ones_like(y), *grads]
        shape = np.broadcast_shapes(np.shape(y), *(np.shape(d) for d in grads))
        grad = np.empty((*shape, len(grads)))
        for j, d in enumerate(grads):  # filled in place: np.stack of broadcast copies costs more than the fit
            grad[..., j] = d
        y = np.broadcast_to(y, shape)
        return (y, grad) if theta.ndim == 2 else (y[0], grad[0])

    def report(self, theta: np.ndarray, shift: float | None, arms: tuple[str, ...] = (), replay: bool = False) -> dict[str, float]:
        """`{E, A, alpha, ..., "k[arm]": ..., "B_replay": ...}` in the natural parameterisation."""
        theta = np.asarray(theta, dtype=float)
        if replay:
            theta, out_b = theta[:-1], {"B_replay": float(np.exp(theta[-1]))}
        else:
            out_b = {}
        values = dict(zip(self.fit_names(shift), theta))
        out = {"E": float(shift if shift is not None else values["E"])}
        for name in self.fitted_names:
            out[name.removeprefix("log_")] = float(np.exp(values[name])) if name.startswith("log_") else float(values[name])
        for name, log_k in zip(arms[1:], theta[len(values):]):
            out[f"k[{name}]"] = float(np.exp(log_k))
        return out | out_b


FORMS: Registry[Form] = Registry("forms", __name__)


def candidate_forms(increasing: bool) -> list[str]:
    """Names of the registered forms that grow (forgetting) or fall (fine-tuning loss)."""
    return [name for name, form in FORMS.items() if form.increasing == increasing]
