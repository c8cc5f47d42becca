"""In-context linear regression prompts: x ~ N(0, I_d), y = <w, x> + N(0, sigma^2).

A task is a weight vector `w`. It comes either from the continuous prior N(0, tau^2 I_d) or
from a discrete pool of `n_tasks` vectors drawn once from that same prior; a mixture picks
the discrete pool for each prompt with probability `discrete_weight`. Sampling runs on the
CPU from an explicit generator, so a seed gives the same prompts on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Prompts:
    """A batch of prompts: `xs` (B, n, d), noisy labels `ys` (B, n), tasks `ws` (B, d).

    `targets` (B, n) are the noiseless labels <w, x> that errors are measured against.
    """

    xs: torch.Tensor
    ys: torch.Tensor
    ws: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device | str) -> Prompts:
        return Prompts(*(t.to(device) for t in (self.xs, self.ys, self.ws, self.targets)))

    def __len__(self) -> int:
        return self.xs.shape[0]

    def slice(self, start: int, stop: int) -> Prompts:
        return Prompts(self.xs[start:stop], self.ys[start:stop], self.ws[start:stop], self.targets[start:stop])


def draw_pool(n_tasks: int, d: int, tau: float, seed: int) -> torch.Tensor:
    """The discrete task set: `n_tasks` weight vectors drawn once from N(0, tau^2 I_d)."""
    generator = torch.Generator().manual_seed(seed)
    return tau * torch.randn(n_tasks, d, generator=generator)


def sample_prompts(
    batch: int,
    n_points: int,
    pool: torch.Tensor,
    discrete_weight: float,
    sigma: float,
    tau: float,
    generator: torch.Generator,
) -> Prompts:
    """`batch` prompts of `n_points` points; each prompt's task is from the pool with probability `discrete_weight`.

    `discrete_weight=1` samples the discrete distribution, `0` the continuous one.
    """
    d = pool.shape[1]
    continuous = tau * torch.randn(batch, d, generator=generator)
    pick = torch.randint(pool.shape[0], (batch,), generator=generator)
    from_pool = torch.rand(batch, generator=generator) < discrete_weight
    ws = torch.where(from_pool[:, None], pool[pick], continuous)
    xs = torch.randn(batch, n_points, d, generator=generator)
    targets = torch.einsum("bnd,bd->bn", xs, ws)
    ys = targets + sigma * torch.randn(batch, n_points, generator=generator)
    return Prompts(xs, ys, ws, targets)


__all__ = ["Prompts", "draw_pool", "sample_prompts"]
