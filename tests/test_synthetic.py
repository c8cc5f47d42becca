"""The synthetic conjugate-prompting testbed: baselines, sampling, model, config, and the experiment end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import multivariate_normal

from cli_helpers import assert_user_error, run_cli
from forgetscope.errors import UserInputError
from forgetscope.synthetic import SyntheticConfig, load_config, run_experiment, write_outputs
from forgetscope.synthetic.baselines import (
    discrete_posterior_predict,
    discrete_posterior_weights,
    mixture_bayes_predict,
    ridge_predict,
)
from forgetscope.synthetic.config import SHIPPED, config_from_dict
from forgetscope.synthetic.experiment import model_predictions, recovered_fraction, train, warmup_cosine
from forgetscope.synthetic.model import InContextRegressor, prefix_loss
from forgetscope.synthetic.tasks import draw_pool, sample_prompts

pytestmark = pytest.mark.usefixtures("one_thread")  # fixed threads: the same numbers on every machine

# A few steps of the CPU config: enough to run every stage, not to learn anything.
SMALL = dict(pretrain_steps=12, pretrain_warmup=2, finetune_checkpoints=[2, 4], eval_prompts=64, log_every=4)


def _prompts(batch=5, n=9, d=3, weight=0.0, sigma=0.5, seed=0, n_tasks=4):
    pool = draw_pool(n_tasks, d, 1.0, seed)
    return pool, sample_prompts(batch, n, pool, weight, sigma, 1.0, torch.Generator().manual_seed(seed + 1))


# --- baselines against closed forms ---------------------------------------------------------


def test_ridge_is_the_closed_form_on_every_prefix():
    _, p = _prompts(sigma=0.7)
    sigma, tau = 0.7, 1.3
    predicted = ridge_predict(p.xs, p.ys, sigma, tau)
    xs, ys = p.xs.double().numpy(), p.ys.double().numpy()
    for b in range(len(p)):
        for k in range(xs.shape[1]):
            X, y = xs[b, :k], ys[b, :k]
            w = np.linalg.solve(X.T @ X + (sigma**2 / tau**2) * np.eye(X.shape[1]), X.T @ y)
            assert predicted[b, k].item() == pytest.approx(w @ xs[b, k], abs=1e-5)
    assert torch.all(predicted[:, 0] == 0)  # no examples: the prior mean


def test_discrete_posterior_picks_the_right_task_when_noise_is_tiny():
    pool, p = _prompts(batch=8, weight=1.0, sigma=1e-3, n_tasks=6)
    weights = discrete_posterior_weights(p.xs, p.ys, pool, 1e-3)
    truth = torch.cdist(p.ws, pool).argmin(1)
    assert torch.all(weights[:, 2:].argmax(-1) == truth[:, None])
    assert torch.all(weights[:, 2:].max(-1).values > 0.999)
    assert torch.allclose(weights[:, 0], torch.full_like(weights[:, 0], 1 / 6))  # before any example: the uniform prior
    predictions = discrete_posterior_predict(p.xs, p.ys, pool, 1e-3)
    assert torch.allclose(predictions[:, 2:], p.targets[:, 2:], atol=1e-3)


def test_discrete_posterior_is_the_bayes_rule_for_a_single_example():
    pool, p = _prompts(batch=1, n=2, sigma=0.8)
    x, y = p.xs[0, 0].double(), p.ys[0, 0].double()
    likelihood = torch.exp(-((y - pool.double() @ x) ** 2) / (2 * 0.8**2))
    expected = (likelihood / likelihood.sum()) @ (pool.double() @ p.xs[0, 1].double())
    assert discrete_posterior_predict(p.xs, p.ys, pool, 0.8)[0, 1].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("weight, component", [(0.0, "ridge"), (1e-15, "ridge"), (1.0, "discrete"), (1 - 1e-15, "discrete")])
def test_mixture_bayes_reduces_to_its_components_at_prior_weight_0_and_1(weight, component):
    pool, p = _prompts(weight=0.5, sigma=0.5)
    mixture = mixture_bayes_predict(p.xs, p.ys, pool, 0.5, 1.0, weight)
    expected = ridge_predict(p.xs, p.ys, 0.5, 1.0) if component == "ridge" else discrete_posterior_predict(p.xs, p.ys, pool, 0.5)
    assert torch.allclose(mixture, expected, atol=1e-5)


def test_mixture_bayes_weighs_the_components_by_their_marginal_likelihoods():
    """Brute force with dense covariances: y ~ N(0, s^2 I + t^2 X X^T) against the pool's likelihoods."""
    sigma, tau, weight = 0.6, 1.2, 0.3
    pool, p = _prompts(batch=3, n=6, weight=0.5, sigma=sigma)
    predicted = mixture_bayes_predict(p.xs, p.ys, pool, sigma, tau, weight)
    ridge = ridge_predict(p.xs, p.ys, sigma, tau)
    discrete = discrete_posterior_predict(p.xs, p.ys, pool, sigma)
    for b in range(3):
        for k in (1, 3, 5):
            X, y = p.xs[b, :k].double().numpy(), p.ys[b, :k].double().numpy()
            gauss = multivariate_normal(np.zeros(k), sigma**2 * np.eye(k) + tau**2 * X @ X.T).pdf(y)
            in_pool = np.mean([multivariate_normal(X @ w, sigma**2 * np.eye(k)).pdf(y) for w in pool.double().numpy()])
            post = weight * in_pool / (weight * in_pool + (1 - weight) * gauss)
            expected = post * discrete[b, k].item() + (1 - post) * ridge[b, k].item()
            assert predicted[b, k].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


# --- sampling -------------------------------------------------------------------------------


def test_sampling_shapes_and_the_two_distributions():
    pool, p = _prompts(batch=200, n=7, d=3, weight=1.0, sigma=0.5)
    assert p.xs.shape == (200, 7, 3) and p.ys.shape == (200, 7) and p.ws.shape == (200, 3)
    assert torch.allclose(p.targets, torch.einsum("bnd,bd->bn", p.xs, p.ws))
    assert torch.cdist(p.ws, pool).min(1).values.max() < 1e-6  # every discrete task is a pool vector
    assert (p.ys - p.targets).std().item() == pytest.approx(0.5, rel=0.1)
    _, c = _prompts(batch=200, weight=0.0)
    assert torch.cdist(c.ws, pool).min(1).values.min() > 1e-3  # continuous tasks are fresh draws
    _, m = _prompts(batch=2000, weight=0.5)
    share = (torch.cdist(m.ws, pool).min(1).values < 1e-6).float().mean().item()
    assert share == pytest.approx(0.5, abs=0.05)


def test_sampling_is_deterministic_given_the_seed():
    assert torch.equal(draw_pool(8, 4, 1.0, 3), draw_pool(8, 4, 1.0, 3))
    assert not torch.equal(draw_pool(8, 4, 1.0, 3), draw_pool(8, 4, 1.0, 4))
    _, a = _prompts(seed=5)
    _, b = _prompts(seed=5)
    assert torch.equal(a.xs, b.xs) and torch.equal(a.ys, b.ys)


# --- the model ------------------------------------------------------------------------------


def _tiny_model(d=3, n=8):
    torch.manual_seed(0)
    return InContextRegressor(d, n, n_layer=2, n_embd=32, n_head=2)


def test_model_predicts_every_prefix_causally():
    model = _tiny_model().eval()
    _, p = _prompts(batch=4, n=8, d=3)
    with torch.no_grad():
        out = model(p.xs, p.ys)
        assert out.shape == (4, 8)
        ys = p.ys.clone()
        ys[:, 5] += 10.0  # y_5 is seen only by the predictions for k >= 6
        changed = model(p.xs, ys)
    assert torch.allclose(out[:, :6], changed[:, :6], atol=1e-5)
    assert (out[:, 6:] - changed[:, 6:]).abs().min() > 1e-5  # every later prediction moves


def test_training_reduces_the_prefix_loss():
    model = _tiny_model()
    pool = draw_pool(4, 3, 1.0, 0)
    held_out = sample_prompts(256, 8, pool, 0.5, 0.3, 1.0, torch.Generator().manual_seed(9))
    with torch.no_grad():
        before = prefix_loss(model, held_out.xs, held_out.ys).item()
    gen = torch.Generator().manual_seed(1)
    curve = train(model, lambda: sample_prompts(64, 8, pool, 0.5, 0.3, 1.0, gen), steps=80, lr=3e-3, warmup=5,
                  device=torch.device("cpu"), log_every=20)
    with torch.no_grad():
        after = prefix_loss(model, held_out.xs, held_out.ys).item()
    assert [s for s, _ in curve] == [20, 40, 60, 80]
    assert after < 0.8 * before
    assert after < 0.9 * (held_out.ys**2).mean().item()  # better than predicting 0: it uses the examples


def test_conjugate_prompting_with_gamma_1_is_the_plain_prediction():
    model = _tiny_model().eval()
    _, p = _prompts(batch=6, n=8, d=3)
    with torch.no_grad():
        plain = model(p.xs, p.ys)
    assert torch.allclose(model_predictions(model, p, 1.0, torch.device("cpu")), plain)
    scaled = model_predictions(model, p, 2.0, torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(scaled, model(p.xs, 2.0 * p.ys) / 2.0)
    assert not torch.allclose(scaled, plain)  # a network is not linear in its labels, unlike ridge:
    assert torch.allclose(ridge_predict(p.xs, 2.0 * p.ys, 0.5, 1.0) / 2.0, ridge_predict(p.xs, p.ys, 0.5, 1.0), atol=1e-5)


def test_recovered_fraction_and_schedule():
    assert recovered_fraction(pretrained=0.2, plain=0.3, conjugate=0.25) == pytest.approx(0.5)
    assert recovered_fraction(pretrained=0.2, plain=0.3, conjugate=0.35) == pytest.approx(-0.5)
    assert recovered_fraction(pretrained=0.3, plain=0.3, conjugate=0.25) is None  # nothing was forgotten
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(optimizer, warmup=10, total=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


# --- config -----------------------------------------------------------------------------------


def test_the_shipped_configs_load():
    cpu, paper = load_config(), load_config("paper")
    assert cpu == SyntheticConfig()  # the defaults are the CPU config
    assert (paper.d, paper.n_layer, paper.n_embd, paper.n_head, paper.max_examples, paper.n_tasks, paper.sigma) == \
        (20, 12, 256, 8, 40, 64, 1.0)
    assert load_config("cpu", seed=7).seed == 7


@pytest.mark.parametrize("change, fragment", [
    ({"layers": 3}, "`layers`: unknown field"),
    ({"d": -1}, "`d`: Input should be greater than or equal to 1"),
    ({"pretrain_steps": 0}, "`pretrain_steps`: Input should be greater than or equal to 1"),
    ({"n_tasks": 2.5}, "`n_tasks`: Input should be a valid integer"),
    ({"sigma": 0}, "`sigma`: Input should be greater than 0"),
    ({"discrete_weight": 1.5}, "`discrete_weight`: Input should be less than or equal to 1"),
    ({"gammas": [2.0, 3.0]}, "`gammas`: must include 1"),
    ({"gammas": [1.0, -2.0]}, "`gammas`: must be positive"),
    ({"finetune_checkpoints": [100, 50]}, "`finetune_checkpoints`: must be increasing positive step counts"),
    ({"n_embd": 30, "n_head": 4}, "must be divisible by `n_head`"),
    ({"device": "tpu"}, "`device`: must be"),
    ({"name": ["a", "list"]}, "`name`: Input should be a valid string"),
])
def test_bad_configs_are_refused_with_the_field_named(change, fragment):
    with pytest.raises(UserInputError, match="synthetic config") as error:
        config_from_dict(change)
    assert fragment in str(error.value)


def test_bad_config_files_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("d: -4\n")
    assert_user_error(*run_cli(["synthetic", "--config", bad], capsys)[::2], "`d`: Input should be greater than or equal to 1")
    bad.write_text("n_layers: 4\n")
    assert_user_error(*run_cli(["synthetic", "--config", bad], capsys)[::2], "`n_layers`: unknown field")
    bad.write_text("d: [4\n")
    assert_user_error(*run_cli(["synthetic", "--config", bad], capsys)[::2], "not valid YAML")
    assert_user_error(*run_cli(["synthetic", "--config", tmp_path / "missing.yaml"], capsys)[::2], "not found")


# --- the experiment end to end ----------------------------------------------------------------


@pytest.mark.slow
def test_the_cpu_experiment_runs_end_to_end_on_a_reduced_budget(tmp_path):
    config = load_config("cpu", **SMALL)
    results = run_experiment(config)
    k = config.max_examples + 1
    assert results["k"] == list(range(k)) and results["parameters"] > 100_000 and results["device"] == "cpu"
    for dist in ("continuous", "discrete"):
        for name in ("ridge", "discrete posterior", "mixture Bayes"):
            assert len(results["baselines"][dist][name]["by_k"]) == k
        assert set(results["model"][dist]) == {"pretrained", "fine-tuned 2", "fine-tuned 4"}
        assert set(results["model"][dist]["fine-tuned 4"]) == {str(float(g)) for g in config.gammas}
    # The Bayes-optimal predictors win on their own distributions (2,000 prompts would make this sharper).
    base = results["baselines"]
    assert base["continuous"]["ridge"]["mean"] < base["continuous"]["discrete posterior"]["mean"]
    assert base["discrete"]["discrete posterior"]["mean"] < base["discrete"]["ridge"]["mean"]
    rec = results["recovery"]["fine-tuned 4"]
    plain = results["model"]["continuous"]["fine-tuned 4"]["1.0"]["mean"]
    assert rec["forgetting"] == pytest.approx(plain - results["model"]["continuous"]["pretrained"]["1.0"]["mean"], abs=1e-5)
    assert rec["best_mean"] == min(g["mean"] for g in rec["gammas"].values())
    # The ideal Bayesian forgets when its prior moves onto the pool, and gamma = 2 brings it back.
    ideal = results["ideal_bayes"]["recovery"]
    assert ideal["forgetting"] > 0 and ideal["gammas"]["2.0"]["recovered"] > 0.5
    assert [s for s, _ in results["pretrain_curve"]] == [4, 8, 12]
    assert not results["plateau"]["escaped"]  # 12 steps cannot leave the plateau, and the check says so

    out = write_outputs(results, tmp_path / "out")
    assert json.loads((out / "results.json").read_text())["recovery"] == json.loads(json.dumps(results["recovery"]))
    for name in ("error_vs_k_continuous.png", "error_vs_k_discrete.png", "error_vs_gamma.png", "forgetting.png",
                 "training_loss.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "Forgetting and recovery" in (out / "index.html").read_text()


@pytest.mark.slow
def test_the_cli_runs_the_experiment_and_writes_results_and_plots(tmp_path, capsys):
    config = tmp_path / "small.yaml"
    data = yaml.safe_load((SHIPPED / "cpu.yaml").read_text())
    config.write_text(yaml.safe_dump({**data, **SMALL, "eval_prompts": 32}))
    code, out, err = run_cli(["synthetic", "--config", config, "--out", tmp_path / "run", "--seed", 3], capsys)
    assert code == 0, err
    assert "Forgetting on continuous tasks" in out and "ideal Bayes" in out and "plateau" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["seed"] == 3 and results["config"]["eval_prompts"] == 32
    assert (tmp_path / "run" / "forgetting.png").exists() and (tmp_path / "run" / "index.html").exists()
    code, out, err = run_cli(["synthetic", "--config", config, "--out", tmp_path / "json", "--json"], capsys)
    assert code == 0, err
    printed = json.loads(out)
    assert printed["config"]["seed"] == 0 and math.isfinite(printed["recovery"]["fine-tuned 4"]["finetuned_mean"])
