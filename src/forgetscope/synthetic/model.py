"""The in-context learner of Garg et al. (2022): a GPT-2 over interleaved (x, y) tokens.

`transformers.GPT2Model` does the work; what is ours is the linear read-in of the tokens,
the linear read-out of a scalar at every `x` token, and the squared loss on every prefix.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model


class InContextRegressor(nn.Module):
    """Predicts y_k from (x_0, y_0, ..., x_{k-1}, y_{k-1}, x_k) for every k in one causal pass."""

    def __init__(self, d: int, n_points: int, n_layer: int, n_embd: int, n_head: int):
        super().__init__()
        self.d, self.n_points = d, n_points
        config = GPT2Config(
            n_positions=2 * n_points, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
            vocab_size=1, bos_token_id=None, eos_token_id=None,  # no vocabulary: tokens come from read_in
        )
        # Tokens have d + 1 coordinates: x in the first d, y in the last, so the two kinds
        # of token are told apart by position in the vector rather than guessed.
        self.read_in = nn.Linear(d + 1, n_embd)
        self.backbone = GPT2Model(config)
        self.read_out = nn.Linear(n_embd, 1)

    def tokens(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """(B, 2n, d + 1): x_0, y_0, x_1, y_1, ..."""
        batch, n, d = xs.shape
        x_tokens = torch.cat([xs, xs.new_zeros(batch, n, 1)], dim=-1)
        y_tokens = torch.cat([xs.new_zeros(batch, n, d), ys[..., None]], dim=-1)
        return torch.stack([x_tokens, y_tokens], dim=2).reshape(batch, 2 * n, d + 1)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Predictions (B, n): entry k is read out at the token x_k."""
        hidden = self.backbone(inputs_embeds=self.read_in(self.tokens(xs, ys))).last_hidden_state
        return self.read_out(hidden[:, ::2]).squeeze(-1)


def prefix_loss(model: InContextRegressor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every prefix (every k), as Garg et al. train."""
    return ((model(xs, ys) - ys) ** 2).mean()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["InContextRegressor", "count_parameters", "prefix_loss"]
