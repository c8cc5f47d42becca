"""Forgetting as a function of the effective amount of update, `u = N * P^gamma`, that bends:

    rescaled:  y = E + A * u^beta1 * (1 + u / u_c)^(beta2 - beta1),   u = N * P^gamma

A larger adapter moves faster early on (with rsLoRA its update grows with the rank), so it is
ahead on the same curve; the smaller ones catch up later. The slope in `P` is then `gamma`
times the local slope in `N`, and falls as the curve bends: measured on the benchmark's pilots
(issue 23), the slope of log KL in log rank fell from 0.63 at step 20 to 0.20 at step 100,
which a law separable in P and N (`mult`) cannot follow and overshoots when it extrapolates
in P. Written in log space, with `beta2 = beta1 - bend`, `0 <= bend <= beta1` (the curves
bend down, never turn down): `log(term) = log A + beta1 u' - bend softplus(u' - log u_c)`, `u' = log N + gamma log P`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from forgetscope.laws.forms import FORMS, Form
from forgetscope.laws.forms.broken import _sigmoid, _softplus, with_beta2


@dataclass(frozen=True)
class Rescaled(Form):
    fitted_names: tuple[str, ...] = ("log_A", "gamma", "beta1", "bend", "log_uc")

    def terms(self, params, logP, logN, trained):
        log_a, gamma, beta1, bend, log_uc = params
        bend, capped = np.minimum(bend, beta1), bend > beta1  # never past flat: beta2 >= 0
        u = logN + gamma * logP
        x = u - log_uc
        soft, gate = _softplus(x), _sigmoid(x)
        term = np.where(trained, np.exp(log_a + beta1 * u - bend * soft), 0.0)
        slope = beta1 - bend * gate  # d log(term) / d u
        return [term], [term, term * slope * logP, term * (u - capped * soft), -term * soft * ~capped, term * bend * gate]

    def bounds(self):
        return [(-40.0, 40.0), (0.0, 2.0), (0.0, 3.0), (0.0, 3.0), (-5.0, 40.0)]

    def starts(self, level):
        grid = itertools.product((0.1, 0.5), (0.6, 1.2), (0.3, 0.8), (3.0, 6.0), (-3.0, 0.0))
        return [[level + scale, g, b1, bend, luc] for g, b1, bend, luc, scale in grid]

    def report(self, theta, shift, arms=(), replay=False):
        return with_beta2(super().report(theta, shift, arms, replay))


FORMS.register("rescaled", Rescaled("rescaled", increasing=True, bends=True))
