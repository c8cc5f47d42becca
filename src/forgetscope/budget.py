"""`KLBudget`: a run's forecast KL at its last step, and when a KL budget stops the run.

From the measurements so far (`laws.forecast.forecast_run`), optionally with a sweep's law
of KL as the prior (`law`), each new measurement gets a forecast of the last step's KL; the
policy `stop_on_budget` then says whether the run should stop: when a measured KL crosses
the budget (`measured`), when the forecast's 95% lower bound does (`forecast`), or `never`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

from forgetscope.laws.forecast import Query, RunPrior, forecast_run, run_prior
from forgetscope.laws.schema import Fits
from forgetscope.settings import TrainSettings


class KLBudget:
    """The forecast and stop policy of one run; `begin` sets it for the run's length and size."""

    def __init__(self, budget: float | None = None, stop_on_budget: str = "never", law: Mapping | None = None,
                 law_arm: str | None = None):
        TrainSettings.check("stop_on_budget", stop_on_budget)  # the setting's one definition says what is valid
        self.budget, self.stop_on_budget = budget, stop_on_budget
        self.law, self.law_arm = law, law_arm
        self.prior: RunPrior | None = None
        """The sweep's law for this run, from `law`, set by `begin`."""
        self.max_steps: int | None = None

    def begin(self, max_steps: int, trainable_params: int, learning_rate: float | None) -> None:
        self.max_steps = max_steps
        if self.law is not None:
            self.prior = run_prior(cast(Fits, self.law), Query(P=trainable_params, arm=self.law_arm, learning_rate=learning_rate,
                                                         extrapolate=True))

    def forecast(self, earlier: Sequence[Mapping], step: int, kl: float) -> dict | None:
        """The KL forecast at the last step from the `earlier` records and this measurement;
        None without a budget or a law, or at the last step itself."""
        if (self.budget is None and self.prior is None) or self.max_steps is None or step >= self.max_steps:
            return None
        steps = [r["step"] for r in earlier] + [step]
        kls = [r["kl"] for r in earlier] + [kl]
        return forecast_run(steps, kls, self.max_steps, self.budget, prior=self.prior)

    def crossed(self, record: Mapping) -> str | None:
        """Why this record should stop training under the policy, or None."""
        if self.budget is None or self.stop_on_budget == "never":
            return None
        if record["kl"] > self.budget:
            return f"measured KL {record['kl']:.4g} exceeded the budget {self.budget:g} at step {record['step']}"
        forecast = record.get("forecast")
        if self.stop_on_budget == "forecast" and forecast is not None and forecast["low"] > self.budget:
            return (f"the forecast KL at step {forecast['planned_steps']} is at least {forecast['low']:.4g} (95%), "
                    f"over the budget {self.budget:g}, at step {record['step']}")
        return None
