"""A smoothly broken power law in N whose knee moves with P:

    broken:  y = E + A * P^alpha * N^beta1 * (1 + N / N_c)^(beta2 - beta1),   N_c = n0 * P^g

Below the knee `N_c` forgetting grows like `N^beta1`, above it like `N^beta2`; the knee moves
with the number of parameters fine-tuned (`g`), so the exponent in `P` can change with `N`, as
was measured on the demo's sweep. The curves bend down, never up, and never turn down:
`beta2 = beta1 - bend` with `0 <= bend <= beta1` (a larger fitted `bend` acts as `beta1`),
since a fitted upturn (the noise of a few late steps) would run away when extrapolated, and
a law whose forgetting falls with more steps forecast KL falling beyond the pilots (issue
23). It is the smoothly broken power law of Caballero et al. (2023, "Broken Neural Scaling
Laws") with one break and smoothness 1, written in log space:
`log(term) = log A + alpha log P + beta1 log N - bend softplus(log N - log N_c)`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from forgetscope.laws.forms import FORMS, Form


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class BrokenPowerLaw(Form):
    fitted_names: tuple[str, ...] = ("log_A", "alpha", "beta1", "bend", "log_n0", "g")

    def terms(self, params, logP, logN, trained):
        log_a, alpha, beta1, bend, log_n0, g = params
        bend, capped = np.minimum(bend, beta1), bend > beta1  # never past flat: beta2 >= 0
        x = logN - log_n0 - g * logP  # log(N / N_c)
        soft, gate = _softplus(x), _sigmoid(x)
        term = np.where(trained, np.exp(log_a + alpha * logP + beta1 * logN - bend * soft), 0.0)
        grads = [term, term * logP, term * (logN - capped * soft), -term * soft * ~capped, term * bend * gate, term * bend * gate * logP]
        return [term], grads

    def bounds(self):
        return [(-40.0, 40.0), (-2.0, 3.0), (0.0, 3.0), (0.0, 3.0), (-5.0, 20.0), (-2.0, 2.0)]

    def starts(self, level):
        grid = itertools.product((0.05, 0.5), (0.5, 1.0, 1.5), (0.2, 0.6), (np.log(10.0), np.log(100.0)), (0.0, 0.3), (-3.0, 0.0))
        return [[level + scale, a, b1, bend, ln0, g] for a, b1, bend, ln0, g, scale in grid]

    def report(self, theta, shift, arms=(), replay=False):
        return with_beta2(super().report(theta, shift, arms, replay))


def with_beta2(out: dict[str, float]) -> dict[str, float]:
    """A bending form's parameters with the bend it acts with (at most `beta1`) and `beta2 =
    beta1 - bend`, the slope past the knee."""
    out["bend"] = min(out["bend"], out["beta1"])
    return out | {"beta2": out["beta1"] - out["bend"]}


FORMS.register("broken", BrokenPowerLaw("broken", increasing=True, bends=True))
