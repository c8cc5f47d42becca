"""Forgetting that depends on the steps alone, bending like the others:

    steps:  y = E + A * N^beta1 * (1 + N / N_c)^(beta2 - beta1)

The null hypothesis in `P`: the size of the adapter does not matter. On a pilot whose ranks
forget alike within their seeds' noise (issue 23: rank 8 forgot less than rank 4), it is the
law that extrapolates in P without overshooting; it is chosen only where the validation in
size says the laws in P do worse. `P` still scales it across module sets through the arms'
factors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from forgetscope.laws.forms import FORMS, Form
from forgetscope.laws.forms.broken import _sigmoid, _softplus, with_beta2


@dataclass(frozen=True)
class Steps(Form):
    fitted_names: tuple[str, ...] = ("log_A", "beta1", "bend", "log_nc")

    def terms(self, params, logP, logN, trained):
        log_a, beta1, bend, log_nc = params
        bend, capped = np.minimum(bend, beta1), bend > beta1  # never past flat: beta2 >= 0
        x = logN - log_nc
        soft, gate = _softplus(x), _sigmoid(x)
        term = np.where(trained, np.exp(log_a + beta1 * logN - bend * soft), 0.0)
        return [term], [term, term * (logN - capped * soft), -term * soft * ~capped, term * bend * gate]

    def bounds(self):
        return [(-40.0, 40.0), (0.0, 3.0), (0.0, 3.0), (-5.0, 20.0)]

    def starts(self, level):
        grid = itertools.product((0.6, 1.2), (0.3, 0.8), (np.log(10.0), np.log(100.0)), (-3.0, 0.0))
        return [[level + scale, b1, bend, lnc] for b1, bend, lnc, scale in grid]

    def report(self, theta, shift, arms=(), replay=False):
        return with_beta2(super().report(theta, shift, arms, replay))


FORMS.register("steps", Steps("steps", increasing=True, bends=True))
