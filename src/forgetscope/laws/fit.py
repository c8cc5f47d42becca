"""Fitting laws the way the scaling-law field does: log-space residuals, a Huber loss summed
over points, L-BFGS-B from a grid of starting points, bootstrap over whole runs, and
validation by extrapolation, in two separate tests: in time (the latest steps of every
run) and in size (the largest `P` of each module set)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import minimize

from forgetscope.errors import UserInputError
from forgetscope.laws.forms import Form

HUBER_DELTA = 1e-3
CONVERGED = 1e-6
"""`refine` stops a member after `STALLED` accepted steps in a row that lower its objective by
less than this share, or once its damping is at its ceiling and still no step gains."""
STALLED = 5


@dataclass
class Fit:
    """A fitted law: its form, the fixed shift (or None when E was fitted), the parameters,
    and the arms (module set and scaling) it has a factor for beyond the first."""

    form: Form
    shift: float | None
    theta: np.ndarray
    loss: float
    converged: bool
    arms: tuple[str, ...] = ()
    replay: bool = False
    """Whether the law has the replay knob (its last parameter is `log B`)."""

    def predict(self, P, N, theta: np.ndarray | list[np.ndarray] | None = None, arm=None, replay=None) -> np.ndarray:
        """The law at `(P, N)` (broadcast), in arm `arm` (an index into `arms`; 0 if omitted),
        at replay fraction `replay` (0 if omitted; ignored by a law without the knob)."""
        P, N, arm, fraction = np.broadcast_arrays(np.asarray(P, dtype=float), np.asarray(N, dtype=float),
                                                  np.asarray(0 if arm is None else arm, dtype=int),
                                                  np.asarray(0.0 if replay is None else replay, dtype=float))
        y, _ = self.form.value_and_grad(self.theta if theta is None else np.asarray(theta), P.ravel(), N.ravel(), self.shift, arm.ravel(),
                                        fraction.ravel() if self.replay else None)
        return y.reshape(y.shape[:-1] + P.shape)

    @property
    def params(self) -> dict[str, float]:
        return self.form.report(self.theta, self.shift, self.arms, self.replay)


@dataclass
class Ensemble:
    """Laws fitted to the same rows whose forecasts are averaged in log space (a geometric
    mean). One form chosen from a short pilot extrapolates by luck: on the forecast benchmark
    the choice among forms was as noisy as the forms' errors, and the average of the forms
    that bend erred less than any one of them on the scenarios it was chosen on; on those run
    after, its worst miss and its intervals were far smaller (`laws.select.KL_LAWS`)."""

    members: tuple[Fit, ...]

    @property
    def arms(self) -> tuple[str, ...]:
        """The arms of the members with a factor per arm (the others pool them)."""
        return next((m.arms for m in self.members if m.arms), ())

    def predict(self, P, N, theta: np.ndarray | list[np.ndarray] | None = None, arm=None, replay=None) -> np.ndarray:
        """The geometric mean of the members' forecasts; `theta`: one parameter array per
        member (its bootstrap samples: resample `i` of every member drew the same runs)."""
        thetas = [None] * len(self.members) if theta is None else theta
        logs = [np.log(np.maximum(m.predict(P, N, t, arm=arm if m.arms else None, replay=replay), 1e-300))
                for m, t in zip(self.members, thetas)]
        return np.exp(np.mean(logs, axis=0))


@dataclass(frozen=True)
class Saturation:
    """How KL's growth slows past the steps a sweep measured, as it nears what the base model
    can lose: `d log KL / d log N = a + b log(KL / H_base)`, with `b < 0`, so that the slope
    falls as KL rises and reaches 0 at `KL = H_base exp(-a / b)`.

    A pilot's short runs show the steep early growth and not where it bends, so the laws
    fitted to them carry the early slope forward. On the forecast benchmark the slope of log
    KL over each doubling past a pilot's last step hardly followed the pilot's law (median
    errors 24% and 31% at 2x and 4x the pilots' steps) and followed the level KL had reached
    (R² 0.73 over the target runs; adding the step count explained nothing more): growth
    slows as KL rises, whatever the step. `Anchored` continues the law past the end of each arm's longest run by
    this relation from where the law stands there, and forecasts the geometric mean of the
    two, the law's share `weight` (`laws.select.BENCHMARK_SATURATION`)."""

    a: float
    b: float
    weight: float
    """The law's share of the forecast past the horizon (in log space); the relation has the rest."""
    base_entropy: float
    """`H_base`, the base model's entropy on the eval text: KL's level is read relative to it."""
    after: tuple[float, ...] = ()
    """Per arm, the time past which it applies: the end of the arm's longest run (`anchor`
    sets it), so that no measured step is forecast by it."""

    def blend(self, law: np.ndarray, at_horizon: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """The forecast at `ratio` times the horizon, from the law's forecast there (`law`) and
        at the horizon (`at_horizon`). The relation, integrated, is `z = z* + (z_h - z*)
        (N / N_h)^b` in `z = log(KL / H_base)`, `z* = -a / b`; it never falls (a level past
        `z*` stays where it is)."""
        log_h = np.log(self.base_entropy)
        start = np.log(np.maximum(at_horizon, 1e-300)) - log_h
        ceiling = -self.a / self.b
        continued = np.maximum(ceiling + (start - ceiling) * np.power(np.maximum(ratio, 1.0), self.b), start) + log_h
        return np.exp(self.weight * np.log(np.maximum(law, 1e-300)) + (1.0 - self.weight) * continued)


@dataclass
class Anchored:
    """A law moved, per arm, onto where the runs it was fitted to ended: its forecasts times
    `exp(offset)`, the mean log residual of the arm's runs at their last measurement. A law
    fitted in log space to a whole curve balances its errors over every step, and on the
    forecast benchmark the pilots' curves bent near their end in ways the laws did not
    (KL steepened late on most scripture pilots, flattened on others), so forecasts started
    from the wrong level, by 11% (median) and up to a factor 1.8, at the very step they
    extrapolate from. Forecasting from the last observed level is what time-series
    forecasters call intercept correction.

    The offset applies in full from the arm's horizon (the earliest end of its runs) on and
    fades in, linearly in `log N`, from the arm's `start`: half the horizon, or earlier where
    a lowering offset over one doubling would make a rising law fall (`anchor` sets it from
    the law's smallest slope over the six doublings before the horizon), so forecasts inside
    the sweep keep the law's shape and do not turn down where the law rises (the forecast
    itself: a bootstrap resample's own, lower offset may dip inside the ramp)."""

    law: Fit | Ensemble
    arms: tuple[str, ...]
    """Every arm (the inner law's `arms`, where it has a factor per arm)."""
    offsets: np.ndarray
    horizons: np.ndarray
    starts: np.ndarray
    sample_offsets: np.ndarray | None = None
    """The offsets of each bootstrap resample of the inner law (a row each, a column an arm), anchored on
    the runs that resample drew (`anchor_resamples`): with them, a bootstrap band holds how
    well the law's shape is known beyond the anchor, not how far its level sat from the runs'
    ends, which the anchor removes."""
    saturation: Saturation | None = None
    """How forecasts continue past the end of each arm's longest run (None: the law alone, as before)."""

    def predict(self, P, N, theta: np.ndarray | list[np.ndarray] | None = None, arm=None, replay=None) -> np.ndarray:
        """The inner law's forecast times `exp(offset * weight)`: `weight` 0 up to the arm's
        `start`, 1 from its horizon on, linear in `log N` between. With bootstrap samples
        `theta` (the first of `sample_offsets`' resamples), each moved by its own offsets.
        Past the arm's longest run, blended with the `saturation` relation continued from there."""
        moved = self._moved(P, N, theta, arm, replay)
        if self.saturation is None:
            return moved
        _, N, arm = np.broadcast_arrays(np.asarray(P, dtype=float), np.asarray(N, dtype=float),
                                        np.asarray(0 if arm is None else arm, dtype=int))
        after = np.asarray(self.saturation.after, dtype=float)[arm] if self.saturation.after else self.horizons[arm]
        if not (N > after).any():
            return moved
        return np.where(N > after, self.saturation.blend(moved, self._moved(P, after, theta, arm, replay), N / after), moved)

    def _moved(self, P, N, theta, arm, replay) -> np.ndarray:
        inner = self.law.predict(P, N, theta, arm=arm if self.law.arms else None, replay=replay)
        _, N, arm = np.broadcast_arrays(np.asarray(P, dtype=float), np.asarray(N, dtype=float),
                                        np.asarray(0 if arm is None else arm, dtype=int))
        span = np.log(self.horizons[arm] / self.starts[arm])
        weight = np.clip(np.log(np.maximum(N, 1e-300) / self.starts[arm]) / span, 0.0, 1.0)
        offsets = self.offsets[arm]
        if theta is not None and self.sample_offsets is not None and len(self.sample_offsets) >= inner.shape[0]:
            offsets = self.sample_offsets[: inner.shape[0]][:, arm]
        return inner * np.exp(offsets * weight)


def anchor(law: Fit | Ensemble, P, N, y, groups, arm_names, arms: tuple[str, ...], replay=None,
           saturation: Saturation | None = None) -> Anchored:
    """`law` anchored at the last measurement of each run (`groups`) of each of `arms`
    (`arm_names`: each row's; `replay`: each row's replay fraction, for a law with the knob),
    continued past the end of each arm's longest run with `saturation`. An arm without runs
    among these rows takes the mean offset of the others."""
    P, N, y, groups, last, index, inner_arm, fraction = _run_ends(law, P, N, y, groups, arm_names, arms, replay)
    residual = np.log(y[last]) - np.log(np.maximum(law.predict(P[last], N[last], arm=inner_arm, replay=fraction), 1e-300))
    offsets, horizons, starts = (np.empty(len(arms)) for _ in range(3))
    for i in range(len(arms)):
        mine = index == i if (index == i).any() else np.ones(len(last), dtype=bool)
        offsets[i], horizons[i] = residual[mine].mean(), N[last][mine].min()
        starts[i] = horizons[i] / 2
        if offsets[i] < 0:  # lowering over one doubling must not outpace the law's own rise
            grid = np.geomspace(horizons[i] / 64, horizons[i], 33)
            rows = last[mine]
            curves = np.log(np.maximum(law.predict(P[rows][:, None], grid[None, :], arm=None if inner_arm is None else inner_arm[mine][:, None],
                                                   replay=None if fraction is None else fraction[mine][:, None]), 1e-300))
            rise = float(np.min(np.diff(curves, axis=1)) / np.log(grid[1] / grid[0]))  # the law's smallest local slope in log-log
            if rise > 0:
                starts[i] = min(starts[i], horizons[i] * np.exp(offsets[i] / (0.9 * rise)))
    ends = tuple(float(N[last][index == i].max()) if (index == i).any() else float(N[last].max()) for i in range(len(arms)))
    return Anchored(law, arms, offsets, horizons, starts, saturation=None if saturation is None else replace(saturation, after=ends))


def _run_ends(law: Fit | Ensemble, P, N, y, groups, arm_names, arms: tuple[str, ...], replay):
    """The rows as arrays, and of each run (in `np.unique(groups)` order, as `bootstrap`
    counts them): its last row, its arm's index in `arms` and in the law's own arms, and
    its replay fraction."""
    P, N, y, groups, arm_names = (np.asarray(v) for v in (P, N, y, groups, arm_names))
    P, N, y = P.astype(float), N.astype(float), y.astype(float)
    last = np.array([np.flatnonzero(groups == g)[np.argmax(N[groups == g])] for g in np.unique(groups)], dtype=int)
    index = np.array([arms.index(a) for a in arm_names[last]], dtype=int)
    inner_arm = np.array([law.arms.index(a) if a in law.arms else 0 for a in arm_names[last]]) if law.arms else None
    fraction = None if replay is None else np.asarray(replay, dtype=float)[last]
    return P, N, y, groups, last, index, inner_arm, fraction


def anchor_resamples(anchored: Anchored, samples: np.ndarray | list[np.ndarray], P, N, y, groups, arm_names,
                     seed: int = 0, replay=None) -> Anchored:
    """`anchored` with the offsets of each bootstrap resample (`samples`, drawn by
    `bootstrap_law` with `seed` on these rows): each resample anchored on the runs it drew,
    counted as often as it drew them. An arm a resample drew no run of takes the mean offset
    of the runs it drew."""
    law = anchored.law
    P, N, y, groups, last, index, inner_arm, fraction = _run_ends(law, P, N, y, groups, arm_names, anchored.arms, replay)
    drawn = len(samples[0]) if isinstance(samples, list) else len(samples)
    if drawn == 0:
        return anchored
    counts = resample_counts(groups, drawn, seed)
    residual = np.log(y[last]) - np.log(np.maximum(law.predict(P[last], N[last], samples, arm=inner_arm, replay=fraction), 1e-300))
    offsets = np.empty((drawn, len(anchored.arms)))
    everywhere = (counts * residual).sum(axis=1) / counts.sum(axis=1)
    for i in range(len(anchored.arms)):
        weights = counts * (index == i)
        total = weights.sum(axis=1)
        offsets[:, i] = np.where(total > 0, (weights * residual).sum(axis=1) / np.maximum(total, 1), everywhere)
    return replace(anchored, sample_offsets=offsets)


Law = Fit | Ensemble | Anchored


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    return np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))


def _objective(theta, form: Form, P, N, log_y, shift, delta, arm=None, replay=None):
    pred, grad = form.value_and_grad(theta, P, N, shift, arm, replay)
    pred = np.maximum(pred, 1e-300)
    r = np.log(pred) - log_y
    huber = _huber(r, delta)
    slope = np.clip(r, -delta, delta)
    return float(huber.sum()), (slope / pred) @ grad


def _n_factors(arm) -> int:
    """How many arm factors a fit has: one per arm beyond the first."""
    return 0 if arm is None or len(arm) == 0 else int(np.max(arm))


def _bounds(form: Form, shift: float | None, y: np.ndarray, arm=None, replay=None) -> list[tuple[float, float]]:
    inner = form.bounds() + [(-8.0, 8.0)] * _n_factors(arm) + ([(-12.0, 12.0)] if replay is not None else [])
    return inner if shift is not None else [(0.0, float(np.min(y)) * (1 - 1e-9)), *inner]


def grid_starts(form: Form, shift: float | None, y: np.ndarray, arm=None, replay=None) -> list[np.ndarray]:
    """The form's starting grid around the data's level (arm factors at 1, the replay knob's
    B at 1), times a few shifts when E is free."""
    level = np.log(max(float(np.median(y) - (shift or 0.0)), 1e-12))
    shifts = [None] if shift is not None else [0.0, 0.5 * float(np.min(y)), 0.95 * float(np.min(y))]
    factors = [0.0] * _n_factors(arm) + ([0.0] if replay is not None else [])
    return [np.array(([] if e is None else [e]) + list(inner) + factors, dtype=float)
            for e, inner in itertools.product(shifts, form.starts(level))]


def fit_law(
    form: Form, P, N, y, shift: float | None = None, starts: list[np.ndarray] | None = None,
    delta: float = HUBER_DELTA, n_optimized: int = 4, arm=None, arms: tuple[str, ...] = (), replay=None,
    optimizer: str = "lbfgsb",
) -> Fit:
    """Fit `form` to `(P, N, y)`: score a grid of starting points in one batched evaluation,
    minimise from the `n_optimized` best, keep the best result. With `arm` (each row's index
    into `arms`), every arm but the first gets a fitted factor; with `replay` (each row's
    replay fraction), the law gets the replay knob.

    `optimizer="lbfgsb"` (the default) runs scipy's L-BFGS-B from each start, then polishes
    its results and the starts themselves with `refine` and keeps the best. `"lm"` runs the
    starts through `refine` alone (batched, damped Gauss-Newton on the IRLS weights of the
    Huber loss): quicker, and right from a start near the optimum (the bootstrap's), but from
    the grid it stops short where the knee's parameters are barely determined: on the
    forecast benchmark's 69 KL fits it ended above L-BFGS-B's objective on 13 (by up to 21%),
    and on 48 (up to 5.7x) before `refine` stopped counting rejected steps as stalls (issue 23)."""
    P, N, y = (np.asarray(v, dtype=float) for v in (P, N, y))
    arm = None if arm is None else np.asarray(arm, dtype=int)
    log_y = np.log(y)
    replay = None if replay is None else np.asarray(replay, dtype=float)
    bounds = _bounds(form, shift, y, arm, replay)
    low, high = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    starts = [np.clip(s, low, high) for s in (starts if starts is not None else grid_starts(form, shift, y, arm, replay))]
    if len(starts) > n_optimized:
        pred = np.maximum(form.value_and_grad(np.array(starts), P, N, shift, arm, replay)[0], 1e-300)
        scores = np.nan_to_num(_huber(np.log(pred) - log_y, delta).sum(axis=1), nan=np.inf)
        starts = [starts[i] for i in np.argsort(scores)[:n_optimized]]
    converged = True
    if optimizer == "lbfgsb":  # the starts themselves are refined too: each optimizer stops short where the other does not
        results = [minimize(_objective, start, args=(form, P, N, log_y, shift, delta, arm, replay), jac=True, method="L-BFGS-B",
                            bounds=bounds) for start in starts]
        starts, converged = [res.x for res in results] + starts, any(res.success for res in results)
    # IRLS steps only ever lower the objective; they also finish what L-BFGS-B leaves where
    # the Huber loss is linear (residuals beyond delta).
    theta, value = refine(form, shift, P, N, y, np.array(starts), np.ones((len(starts), len(y))), iterations=150,
                          delta=delta, arm=arm, replay=replay)
    best = int(np.argmin(value))
    return Fit(form, shift, theta[best], float(value[best]), converged, tuple(arms), replay is not None)


def log_metrics(y, pred) -> dict[str, float]:
    """R^2 and RMSE in log space, and the mean absolute percentage error."""
    log_y, log_p = np.log(y), np.log(np.maximum(pred, 1e-300))
    ss_res = float(np.sum((log_y - log_p) ** 2))
    ss_tot = float(np.sum((log_y - log_y.mean()) ** 2))
    return {
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "log_rmse": float(np.sqrt(ss_res / len(y))),
        "mape": float(np.mean(np.abs(pred - y) / y)),
    }


def check_enough_data(P, N, n_params: int, what: str) -> None:
    """Too few points, a single P or a single N cannot pin a law down: say so."""
    P, N = np.asarray(P), np.asarray(N)
    if len(np.unique(P)) < 2:
        raise UserInputError(f"cannot fit {what}: every run has the same number of trainable parameters P (need at least 2 values)")
    if len(np.unique(N)) < 2:
        raise UserInputError(f"cannot fit {what}: all measurements are at one step N (need at least 2 steps after step 0)")
    if len(P) < n_params + 2:
        raise UserInputError(f"cannot fit {what}: {len(P)} measurements for {n_params} parameters (need at least {n_params + 2})")


def refine(form: Form, shift: float | None, P, N, y, theta: np.ndarray, weights: np.ndarray,
           iterations: int = 60, delta: float = HUBER_DELTA, arm=None, replay=None) -> tuple[np.ndarray, np.ndarray]:
    """Minimise a batch of weighted Huber objectives at once from `theta` `(B, k)`.

    Batched, damped Gauss-Newton: IRLS weights for the Huber loss, Levenberg-Marquardt
    steps, bounds by projection; a step is kept only if it lowers that batch member's
    objective, so the result is never worse than the start. Written here because no
    library batches many small robust fits; the tests check it against L-BFGS-B.
    Returns `(theta, objective)`.
    """
    P, N, y = (np.asarray(v, dtype=float) for v in (P, N, y))
    log_y = np.log(y)
    bounds = np.array(_bounds(form, shift, y, arm, replay))
    theta = np.clip(np.array(theta, dtype=float), bounds[:, 0], bounds[:, 1])

    pred, grad = form.value_and_grad(theta, P, N, shift, arm, replay)
    pred = np.maximum(pred, 1e-300)
    r = np.log(pred) - log_y
    value, jac = (weights * _huber(r, delta)).sum(axis=1), grad / pred[..., None]
    damping = np.full(len(theta), 1e-3)
    stalled = np.zeros(len(theta), dtype=int)  # accepted steps in a row that gained (almost) nothing
    eye = np.eye(theta.shape[1])
    weights = np.broadcast_to(weights, r.shape)
    for _ in range(iterations):
        active = np.flatnonzero(stalled < STALLED)  # a member that has converged stops costing anything
        if not len(active):
            break
        w, ra, ja = weights[active], r[active], jac[active]
        irls = w * np.where(np.abs(ra) <= delta, 1.0, delta / np.maximum(np.abs(ra), 1e-300))
        weighted = ja * np.sqrt(irls)[..., None]
        hess = weighted.transpose(0, 2, 1) @ weighted  # batched matmul: far faster than einsum here
        grad = ((w * np.clip(ra, -delta, delta))[:, None, :] @ ja)[:, 0]
        scale = np.maximum(np.diagonal(hess, axis1=1, axis2=2), 1e-12)
        step = np.linalg.solve(hess + (damping[active, None] * scale)[..., None] * eye, -grad[..., None])[..., 0]
        trial = np.clip(theta[active] + step, bounds[:, 0], bounds[:, 1])
        pred, g = form.value_and_grad(trial, P, N, shift, arm, replay)
        pred = np.maximum(pred, 1e-300)
        trial_r = np.log(pred) - log_y
        trial_value = (w * _huber(trial_r, delta)).sum(axis=1)
        better = trial_value < value[active]
        gain = np.where(better, (value[active] - trial_value) / np.maximum(np.abs(value[active]), 1e-300), 0.0)
        kept = active[better]
        theta[kept], value[kept], r[kept], jac[kept] = trial[better], trial_value[better], trial_r[better], (g / pred[..., None])[better]
        damping[active] = np.clip(np.where(better, damping[active] / 3, damping[active] * 4), 1e-6, 1e10)  # floor: a one-P resample is singular
        # A rejected step is not convergence: it raises the damping until a step gains (the
        # poorly determined knee parameters first take steps far too long). Counting rejections
        # as stalls stopped members at their start (issue 23: `broken` never left its grid).
        small = (gain < CONVERGED) | (np.abs(step).max(axis=1) < 1e-10)
        stalled[active] = np.where(better, np.where(small, stalled[active] + 1, 0),
                                   np.where(damping[active] >= 1e10, STALLED, stalled[active]))
    return theta, value


def bootstrap(fit: Fit, groups: np.ndarray, P, N, y, n_resamples: int = 1000, seed: int = 0, arm=None, replay=None) -> np.ndarray:
    """Parameter vectors refitted on `n_resamples` resamples of whole runs (`groups`).

    Steps of one run are correlated, so runs, not single measurements, are resampled. A
    resample is a vector of run counts, i.e. per-row weights of the same Huber objective,
    so all resamples are refitted at once by `refine`, warm-started at `fit`.
    """
    row_group = np.unique(np.asarray(groups), return_inverse=True)[1]
    counts = resample_counts(groups, n_resamples, seed)
    start = np.repeat(fit.theta[None], n_resamples, axis=0)
    return refine(fit.form, fit.shift, P, N, y, start, counts[:, row_group], arm=arm, replay=replay if fit.replay else None)[0]


def resample_counts(groups, n_resamples: int, seed: int) -> np.ndarray:
    """How often each run (in `np.unique(groups)` order) is drawn in each of `n_resamples`
    bootstrap resamples of whole runs: the same for the same seed, so that `anchor_resamples`
    sees the runs `bootstrap` refitted on."""
    ids = np.unique(np.asarray(groups))
    rng = np.random.default_rng(seed)
    return rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=n_resamples).astype(float)


def bootstrap_law(law: Law, groups: np.ndarray, P, N, y, n_resamples: int = 1000, seed: int = 0, arm=None, replay=None):
    """`bootstrap` of a law, or of each member of an ensemble (a list, one array a member,
    drawn with the same seed, so resample `i` refits every member on the same runs)."""
    if isinstance(law, Anchored):  # the inner law's resamples; `anchor_resamples` gives each its offsets
        return bootstrap_law(law.law, groups, P, N, y, n_resamples, seed, arm, replay)
    if isinstance(law, Ensemble):
        return [bootstrap(m, groups, P, N, y, n_resamples, seed, arm=arm if m.arms else None, replay=replay) for m in law.members]
    return bootstrap(law, groups, P, N, y, n_resamples, seed, arm=arm if law.arms else None, replay=replay)


def time_split(N, groups, fraction: float = 0.5) -> np.ndarray:
    """True for what the in-time test holds out: every measurement after `1 - fraction` of its
    run's training steps (with 0.5, fit up to N_max / 2 and forecast the rest)."""
    N, groups = np.asarray(N, dtype=float), np.asarray(groups)
    held = np.zeros(len(N), dtype=bool)
    for g in np.unique(groups):
        rows = groups == g
        held[rows] = N[rows] > (1.0 - fraction) * N[rows].max()
    return held


def size_split(P, modules, top: int = 1) -> np.ndarray:
    """True for what the in-size test holds out: the runs with the `top` largest `P` of each
    module set (fit the smaller runs' full curves, forecast the largest). A module set needs
    two `P` for one to be held out, and two left to fit for more."""
    P, modules = np.asarray(P, dtype=float), np.asarray(modules)
    held = np.zeros(len(P), dtype=bool)
    for m in np.unique(modules):
        rows = modules == m
        sizes = np.unique(P[rows])
        if len(sizes) >= (2 if top == 1 else top + 2):
            held[rows] = P[rows] >= sizes[-top]
    return held


def last_steps(N, groups, mask) -> np.ndarray:
    """True at the last step of each run among the rows in `mask`: the forecast a user asks
    for is the one at the end of the run, not an average over easier, earlier steps."""
    N, groups, mask = np.asarray(N, dtype=float), np.asarray(groups), np.asarray(mask, dtype=bool)
    out = np.zeros(len(N), dtype=bool)
    for g in np.unique(groups[mask]):
        rows = np.flatnonzero(mask & (groups == g))
        out[rows[np.argmax(N[rows])]] = True
    return out


def reach(P, N, modules, train, held) -> tuple[np.ndarray, np.ndarray]:
    """How far each held row lies beyond what `train` saw, in doublings: `(in P, in time)`,
    `log2` of its `P` over its module set's largest fitted `P` and of its time over the
    largest fitted time, each counted only beyond."""
    P, N, modules = np.asarray(P, dtype=float), np.asarray(N, dtype=float), np.asarray(modules)
    rows = np.flatnonzero(held)
    top_P = np.array([P[train & (modules == modules[r])].max() if (train & (modules == modules[r])).any() else P[train].max()
                      for r in rows])
    return np.maximum(np.log2(P[rows] / top_P), 0.0), np.maximum(np.log2(N[rows] / N[train].max()), 0.0)


def extrapolation_errors(y, pred, floor=0.0) -> dict[str, float]:
    """Absolute percentage errors of `pred` against `y` above `floor` (the base entropy for
    `forgetting_ce`, so that its large constant part does not hide the error in what grows),
    and the RMSE of their logs."""
    y, pred = np.asarray(y, dtype=float) - floor, np.asarray(pred, dtype=float) - floor
    ape = np.abs(pred - y) / np.abs(y)
    log_err = np.log(np.maximum(pred, 1e-300)) - np.log(np.maximum(y, 1e-300))
    return {"median_ape": float(np.median(ape)), "max_ape": float(np.max(ape)), "mape": float(np.mean(ape)),
            "log_rmse": float(np.sqrt(np.mean(log_err**2))), "n": int(len(y))}


def half_width(floor: float, slope: float, doublings) -> np.ndarray:
    """The model-error half-width of a 95% interval in log space, `doublings` beyond the
    data: the seed noise `floor`, and `slope` more per doubling, added in quadrature."""
    return np.sqrt(floor**2 + (slope * np.asarray(doublings, dtype=float)) ** 2)


def widen(value, boot_low, boot_high, half, falling: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`(low, high)`: the bootstrap band around `value` and the model error `half`, added in
    quadrature in log space (each end never on the wrong side of `value`). `falling` (a law of
    the fine-tuning loss, whose log-space band sits around `E + g`): each end of the band
    moved out by `half`."""
    if falling:
        return np.asarray(boot_low, dtype=float) * np.exp(-half), np.asarray(boot_high, dtype=float) * np.exp(half)
    value = np.maximum(np.asarray(value, dtype=float), 1e-300)
    below = np.log(value / np.maximum(np.minimum(boot_low, value), 1e-300))
    above = np.log(np.maximum(boot_high, value) / value)
    return value * np.exp(-np.hypot(below, half)), value * np.exp(np.hypot(above, half))


def band_side(error, value, boot_low, boot_high, falling: bool = False) -> np.ndarray:
    """The log distance from `value` to the bootstrap band's end on the side of a log
    `error` (forecast over measured: the low end), as `widen` widens from it: for a rising law
    never below 0, for a `falling` one negative where that end lies beyond `value`."""
    value = np.maximum(np.asarray(value, dtype=float), 1e-300)
    side = np.log(np.where(np.asarray(error) > 0, value / np.maximum(boot_low, 1e-300), np.asarray(boot_high, dtype=float) / value))
    return side if falling else np.maximum(side, 0.0)


def model_error(error, band_side, floor: float, falling: bool = False) -> np.ndarray:
    """The part of each log `error` that the interval's model-error term must cover: what
    the seed noise `floor` and the bootstrap band's side the measurement lies on
    (`band_side`, in log; for a `falling` law, negative where the band's end lies beyond its
    value) leave, combined as `widen` combines them."""
    error, band_side = np.abs(np.asarray(error, dtype=float)), np.asarray(band_side, dtype=float)
    beyond_band = np.maximum(error - band_side, 0.0) if falling else np.sqrt(np.maximum(error**2 - band_side**2, 0.0))
    return np.sqrt(np.maximum(beyond_band**2 - floor**2, 0.0))
