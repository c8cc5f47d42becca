"""The Bayes-optimal predictors the network is compared with, for every prefix of a prompt at once.

Each function takes `xs` (B, n, d) and `ys` (B, n) and returns predictions (B, n): entry `k`
predicts `y_k` from the first `k` points only, as the causal network does. Written by hand:
no library computes these posteriors (they are a few lines of linear algebra).

- ridge regression with penalty sigma^2 / tau^2: the posterior mean under the Gaussian prior;
- the discrete posterior mean: the posterior over the pool under a uniform prior;
- the Bayes predictor for the mixture: the two, weighted by the posterior of each component.
"""

from __future__ import annotations

import math

import torch


def _prefix_stats(xs: torch.Tensor, ys: torch.Tensor, lam: float):
    """For every k: A_k = X_k^T X_k + lam I, b_k = X_k^T y_k and y_k^T y_k over the first k points."""
    xs, ys = xs.double(), ys.double()
    d = xs.shape[-1]
    outer = torch.einsum("bni,bnj->bnij", xs, xs)
    # Exclusive cumulative sums: the statistics of the points *before* position k.
    gram = torch.cumsum(outer, dim=1) - outer
    xty = torch.cumsum(xs * ys[..., None], dim=1) - xs * ys[..., None]
    yty = torch.cumsum(ys * ys, dim=1) - ys * ys
    a = gram + lam * torch.eye(d, dtype=xs.dtype, device=xs.device)
    return a, xty, yty


def ridge_predict(xs: torch.Tensor, ys: torch.Tensor, sigma: float, tau: float) -> torch.Tensor:
    """Ridge regression with penalty sigma^2 / tau^2 on each prefix, evaluated at the next x."""
    a, xty, _ = _prefix_stats(xs, ys, sigma**2 / tau**2)
    w_hat = torch.linalg.solve(a, xty[..., None])[..., 0]
    return (w_hat * xs.double()).sum(-1).to(xs.dtype)


def _pool_log_likelihoods(xs: torch.Tensor, ys: torch.Tensor, pool: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, n, M): -SS_j / (2 sigma^2), the residual sum of squares of pool vector j over each prefix."""
    residual = ys.double()[..., None] - torch.einsum("bnd,md->bnm", xs.double(), pool.double())
    squared = residual**2
    return -(torch.cumsum(squared, dim=1) - squared) / (2 * sigma**2)


def discrete_posterior_predict(xs: torch.Tensor, ys: torch.Tensor, pool: torch.Tensor, sigma: float) -> torch.Tensor:
    """The posterior mean of <w, x_k> when w is uniform over the pool."""
    posterior = torch.softmax(_pool_log_likelihoods(xs, ys, pool, sigma), dim=-1)
    per_task = torch.einsum("bnd,md->bnm", xs.double(), pool.double())
    return (posterior * per_task).sum(-1).to(xs.dtype)


def discrete_posterior_weights(xs: torch.Tensor, ys: torch.Tensor, pool: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, n, M): the posterior over the pool after each prefix (uniform prior)."""
    return torch.softmax(_pool_log_likelihoods(xs, ys, pool, sigma), dim=-1).to(xs.dtype)


def mixture_bayes_predict(
    xs: torch.Tensor, ys: torch.Tensor, pool: torch.Tensor, sigma: float, tau: float, discrete_weight: float
) -> torch.Tensor:
    """Bayes-optimal prediction when w is from the pool with probability `discrete_weight`, else N(0, tau^2 I)."""
    if discrete_weight <= 0:
        return ridge_predict(xs, ys, sigma, tau)
    if discrete_weight >= 1:
        return discrete_posterior_predict(xs, ys, pool, sigma)
    lam = sigma**2 / tau**2
    d = xs.shape[-1]
    a, xty, yty = _prefix_stats(xs, ys, lam)
    w_hat = torch.linalg.solve(a, xty[..., None])[..., 0]
    # Log marginal likelihoods of the prefix under each component, dropping the terms
    # (k/2 log 2 pi sigma^2) the two share. Gaussian: y ~ N(0, sigma^2 I + tau^2 X X^T), written
    # through the d x d matrix A = X^T X + lam I (Woodbury and the matrix determinant lemma).
    log_gauss = -0.5 * ((yty - (xty * w_hat).sum(-1)) / sigma**2 + torch.logdet(a) - d * math.log(lam))
    log_pool = torch.logsumexp(_pool_log_likelihoods(xs, ys, pool, sigma), dim=-1) - math.log(pool.shape[0])
    logit = math.log(discrete_weight) - math.log1p(-discrete_weight) + log_pool - log_gauss
    p_pool = torch.sigmoid(logit)
    ridge = (w_hat * xs.double()).sum(-1)
    discrete = discrete_posterior_predict(xs, ys, pool, sigma).double()
    return (p_pool * discrete + (1 - p_pool) * ridge).to(xs.dtype)


__all__ = ["ridge_predict", "discrete_posterior_predict", "discrete_posterior_weights", "mixture_bayes_predict"]
