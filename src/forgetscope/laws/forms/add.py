"""The additive shifted power law, one term for each of P and N:

    add:      y = E + A * P^alpha + B * N^beta    (forgetting)
    add_dec:  y = E + A / P^alpha + B / N^beta    (fine-tuning loss)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from forgetscope.laws.forms import FORMS, Form


@dataclass(frozen=True)
class Additive(Form):
    fitted_names: tuple[str, ...] = ("log_A", "alpha", "log_B", "beta")

    def terms(self, params, logP, logN, trained):
        log_a, alpha, log_b, beta = params
        term_p = np.exp(log_a + self.sign * alpha * logP)
        term_n = np.where(trained, np.exp(log_b + self.sign * beta * logN), 0.0)
        return [term_p, term_n], [term_p, self.sign * term_p * logP, term_n, self.sign * term_n * logN]

    def bounds(self):
        return [(-40.0, 40.0), (-2.0, 3.0) if self.increasing else (0.0, 3.0), (-40.0, 40.0), (0.0, 3.0)]

    def starts(self, level):
        alphas = (0.05, 0.5) if self.increasing else (0.1, 0.5)
        return [[level + scale, a, level + scale, b] for a, b, scale in itertools.product(alphas, (0.1, 0.5, 1.0), (-3.0, 0.0))]


FORMS.register("add", Additive("add", increasing=True))
FORMS.register("add_dec", Additive("add_dec", increasing=False))
