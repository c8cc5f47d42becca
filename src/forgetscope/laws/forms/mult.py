"""The multiplicative shifted power law (Kalajdzievski 2024, first reading):

    mult:      y = E + A * P^alpha * N^beta      (forgetting)
    mult_dec:  y = E + A * P^-alpha * N^-beta    (fine-tuning loss)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from forgetscope.laws.forms import FORMS, Form


@dataclass(frozen=True)
class Multiplicative(Form):
    fitted_names: tuple[str, ...] = ("log_A", "alpha", "beta")

    def terms(self, params, logP, logN, trained):
        log_a, alpha, beta = params
        term = np.where(trained, np.exp(log_a + self.sign * (alpha * logP + beta * logN)), 0.0)
        return [term], [term, self.sign * term * logP, self.sign * term * logN]

    def bounds(self):
        return [(-40.0, 40.0), (-2.0, 3.0) if self.increasing else (0.0, 3.0), (0.0, 3.0)]

    def starts(self, level):
        alphas = (0.05, 0.5) if self.increasing else (0.1, 0.5)
        return [[level + scale, a, b] for a, b, scale in itertools.product(alphas, (0.1, 0.5, 1.0), (-3.0, 0.0))]


FORMS.register("mult", Multiplicative("mult", increasing=True))
FORMS.register("mult_dec", Multiplicative("mult_dec", increasing=False))
