"""The forgetting metric on hand-made logits: it is exactly the formulas of the measure guide."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from forgetscope.metric import METRIC_KEYS, sequence_sums, summarize, token_stats


def numpy_reference(base_logits: np.ndarray, ft_logits: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """The definitions, written out in float64 numpy."""
    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    log_p, log_q = log_softmax(base_logits.astype(np.float64)), log_softmax(ft_logits.astype(np.float64))
    p = np.exp(log_p)
    rows = np.arange(len(targets))
    ce = -(p * log_q).sum(-1)
    h = -(p * log_p).sum(-1)
    return {
        "forgetting_ce": ce,
        "base_entropy": h,
        "kl": ce - h,
        "hard_ce": -log_q[rows, log_p.argmax(-1)],
        "base_loss": -log_p[rows, targets],
        "finetuned_loss": -log_q[rows, targets],
    }


def test_token_stats_equal_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    base, ft = rng.normal(size=(50, 37)) * 3, rng.normal(size=(50, 37)) * 3
    targets = rng.integers(0, 37, size=50)
    got = token_stats(torch.tensor(base, dtype=torch.float32), torch.tensor(ft, dtype=torch.float32), torch.tensor(targets))
    want = numpy_reference(base, ft, targets)
    for key in METRIC_KEYS:
        np.testing.assert_allclose(got[key].numpy(), want[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_identical_models_have_zero_kl_and_ce_equal_to_entropy():
    logits = torch.randn(64, 100) * 4
    stats = token_stats(logits, logits.clone(), torch.zeros(64, dtype=torch.long))
    assert torch.all(stats["kl"] == 0)
    torch.testing.assert_close(stats["forgetting_ce"], stats["base_entropy"])


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_chunking_does_not_change_the_result(chunk_size):
    base, ft = torch.randn(40, 50), torch.randn(40, 50)
    targets = torch.randint(0, 50, (40,))
    whole = token_stats(base, ft, targets, chunk_size=10_000)
    chunked = token_stats(base, ft, targets, chunk_size=chunk_size)
    for key in METRIC_KEYS:
        torch.testing.assert_close(chunked[key], whole[key], rtol=0, atol=1e-12)


def test_bfloat16_logits_are_reduced_as_float32_and_returned_as_float64():
    base, ft = torch.randn(16, 3000) * 4, torch.randn(16, 3000) * 4
    targets = torch.zeros(16, dtype=torch.long)
    stats = token_stats(base.bfloat16(), ft.bfloat16(), targets)
    upcast = token_stats(base.bfloat16().float(), ft.bfloat16().float(), targets)  # the same values, in float32
    for key in METRIC_KEYS:
        assert stats[key].dtype == torch.float64
        torch.testing.assert_close(stats[key], upcast[key], rtol=0, atol=0)  # a bfloat16 softmax would differ by ~1e-2


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 40),
    st.floats(0.01, 30.0),
    st.integers(0, 2**31 - 1),
)
def test_kl_is_never_negative_and_ce_never_below_entropy(vocab, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(8, vocab, generator=gen) * scale
    ft = base + torch.randn(8, vocab, generator=gen) * scale * 0.1
    stats = token_stats(base, ft, torch.zeros(8, dtype=torch.long))
    assert torch.all(stats["kl"] >= 0)
    assert torch.all(stats["forgetting_ce"] >= stats["base_entropy"] - 1e-9)


def test_sequence_sums_score_every_position_that_has_a_next_token():
    base, ft = torch.randn(3, 6, 11), torch.randn(3, 6, 11)
    ids = torch.randint(0, 11, (3, 6))
    sums = sequence_sums(base, ft, ids)
    per_token = token_stats(base[:, :-1].reshape(-1, 11), ft[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    for key in METRIC_KEYS:
        torch.testing.assert_close(sums[key], per_token[key].view(3, 5).sum(1))


def test_summary_is_token_weighted_with_a_bootstrap_interval_around_it():
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 50, size=200).astype(float)
    per_token = rng.gamma(2.0, 0.5, size=200)
    sums = {key: per_token * tokens for key in METRIC_KEYS}
    out = summarize(sums, tokens, n_bootstrap=500, seed=3)
    assert out["tokens"] == int(tokens.sum())
    assert out["kl"] == pytest.approx(float((per_token * tokens).sum() / tokens.sum()))
    low, high = out["ci"]["kl"]
    assert low < out["kl"] < high
    assert high - low < 0.5  # 200 sequences pin the mean down
    assert summarize(sums, tokens, n_bootstrap=500, seed=3) == out  # seeded: reproducible


def test_no_bootstrap_means_no_interval():
    sums = {key: np.array([1.0, 2.0]) for key in METRIC_KEYS}
    assert "ci" not in summarize(sums, np.array([2.0, 2.0]), n_bootstrap=0)


@pytest.mark.parametrize("vocab", [4_096, 49_152, 131_072])
def test_reductions_match_a_float64_computation_at_large_vocabularies(vocab):
    """A float32 sum over the vocabulary drifts low (1e-4 relative at 128k tokens, where H_base
    fixes the shift of every law); the metric's sums stay within 1e-6 of float64."""
    generator = torch.Generator().manual_seed(vocab)
    base = torch.randn(48, vocab, generator=generator) * 3
    finetuned = base + torch.randn(48, vocab, generator=generator) * 0.3
    targets = torch.randint(0, vocab, (48,), generator=generator)
    stats = token_stats(base, finetuned, targets)
    log_p, log_q = torch.log_softmax(base.double(), -1), torch.log_softmax(finetuned.double(), -1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    reference = {"base_entropy": entropy, "forgetting_ce": entropy + kl,
                 "base_loss": -log_p.gather(-1, targets[:, None])[:, 0], "finetuned_loss": -log_q.gather(-1, targets[:, None])[:, 0]}
    for key, expected in reference.items():
        assert ((stats[key] - expected).abs() / expected.abs()).max() < 1e-6, key
    assert ((stats["kl"] - kl).abs()).max() < 1e-6  # nats: KL grows from 0, so an absolute bound
    assert abs(stats["base_entropy"].mean() - entropy.mean()) / entropy.mean() < 1e-7  # no drift in the mean
