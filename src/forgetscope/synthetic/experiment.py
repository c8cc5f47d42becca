"""The experiment end to end: pretrain on the mixture, fine-tune on the pool, measure, conjugate-prompt.

1. Draw the discrete pool and fixed evaluation prompts (continuous and discrete), shared by
   every model, baseline and gamma so that all comparisons are paired.
2. Pretrain the network on the mixture; fine-tune it on discrete prompts only, evaluating
   at each fine-tuning checkpoint.
3. At every state and every gamma: error per dimension against the number of in-context
   examples k, on both distributions, next to ridge, the discrete posterior and the Bayes
   predictor for the mixture.
4. Forgetting = fine-tuned minus pretrained continuous error; the recovered fraction of it
   at gamma is (plain - conjugate) / (plain - pretrained).
5. The same for an ideal Bayesian whose prior weight on the pool goes from `discrete_weight`
   ("pretrained") to `ideal_finetuned_weight` ("fine-tuned"): what perfect task inference does.

"mean" is the mean over k = 1..max_examples (k = 0 is the prior guess, the same for all).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from forgetscope.models import resolve_device
from forgetscope.synthetic.baselines import discrete_posterior_predict, mixture_bayes_predict, ridge_predict
from forgetscope.synthetic.config import SyntheticConfig
from forgetscope.synthetic.model import InContextRegressor, count_parameters, prefix_loss
from forgetscope.synthetic.tasks import Prompts, draw_pool, sample_prompts

DISTRIBUTIONS = ("continuous", "discrete")
EVAL_CHUNK = 500



def _seeds(seed: int) -> dict[str, int]:
    # Separate streams, so that e.g. a longer pretraining does not change the eval prompts.
    return {name: seed * 100 + i for i, name in enumerate(("pool", "eval", "init", "pretrain", "finetune", "reference"))}


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int, floor: float = 0.1):
    """Linear warm-up, then cosine decay to `floor` times the peak learning rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss/d {task.fields[loss]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


def train(
    model: InContextRegressor,
    sample: Callable[[], Prompts],
    steps: int,
    lr: float,
    warmup: int,
    device: torch.device,
    log_every: int,
    progress: Progress | None = None,
    description: str = "training",
    at_step: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """AdamW on the prefix loss with fresh prompts every step; returns `[step, mean loss / d]` every `log_every`.

    `at_step(step)` runs after each step (the fine-tuning checkpoints evaluate there).
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, warmup, steps)
    task = progress.add_task(description, total=steps, loss="-") if progress else None
    curve, window = [], []
    model.train()
    for step in range(1, steps + 1):
        batch = sample().to(device)
        loss = prefix_loss(model, batch.xs, batch.ys)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        window.append(loss.item() / model.d)
        if step % log_every == 0 or step == steps:
            curve.append([step, sum(window) / len(window)])
            window = []
            if progress:
                progress.update(task, loss=f"{curve[-1][1]:.3f}")
        if progress:
            progress.advance(task)
        if at_step:
            model.eval()
            at_step(step)
            model.train()
    model.eval()
    return curve


def squared_errors(predictions: torch.Tensor, prompts: Prompts) -> torch.Tensor:
    """(N, n): squared error per dimension against the noiseless label, for every prompt and k."""
    return ((predictions.double().cpu() - prompts.targets.double().cpu()) ** 2) / prompts.xs.shape[-1]


@torch.no_grad()
def model_predictions(model: InContextRegressor, prompts: Prompts, gamma: float, device: torch.device) -> torch.Tensor:
    """The network's predictions for every prefix, under conjugate prompting with `gamma` (1 = plain)."""
    out = []
    for start in range(0, len(prompts), EVAL_CHUNK):
        part = prompts.slice(start, start + EVAL_CHUNK).to(device)
        out.append((model(part.xs, gamma * part.ys) / gamma).cpu())
    return torch.cat(out)


def summarize(errors: torch.Tensor) -> dict:
    """Per-k curve, the mean over k >= 1 and its standard error over prompts."""
    per_prompt = errors[:, 1:].mean(1)
    return {
        "by_k": [round(v, 6) for v in errors.mean(0).tolist()],
        "mean": round(per_prompt.mean().item(), 6),
        "se": round((per_prompt.std() / math.sqrt(len(per_prompt))).item(), 6),
    }


def recovered_fraction(pretrained: float, plain: float, conjugate: float) -> float | None:
    """Share of the forgetting (plain - pretrained) that conjugate prompting removes; None without forgetting."""
    lost = plain - pretrained
    return None if lost <= 0 else round((plain - conjugate) / lost, 4)


def _recovery(pretrained: dict, states: dict, gammas: list[float]) -> dict:
    """For each fine-tuned state: forgetting, and per gamma the recovered fraction (mean and per k)."""
    out = {}
    for label, by_gamma in states.items():
        plain = by_gamma["1.0"]
        per_gamma = {}
        for gamma in gammas:
            conj = by_gamma[str(float(gamma))]
            per_gamma[str(float(gamma))] = {
                "mean": conj["mean"],
                "recovered": recovered_fraction(pretrained["mean"], plain["mean"], conj["mean"]),
                "recovered_by_k": [recovered_fraction(p, f, c) for p, f, c in zip(pretrained["by_k"], plain["by_k"], conj["by_k"])],
            }
        best = min(per_gamma, key=lambda g: per_gamma[g]["mean"])
        out[label] = {
            "pretrained_mean": pretrained["mean"],
            "finetuned_mean": plain["mean"],
            "forgetting": round(plain["mean"] - pretrained["mean"], 6),
            "best_gamma": float(best),
            "best_mean": per_gamma[best]["mean"],
            "best_recovered": per_gamma[best]["recovered"],
            "gammas": per_gamma,
        }
    return out


def _plateau(curve: list[list[float]], zero_loss: float, bayes_loss: float, pretrained: dict, zero: float, bayes: float) -> dict:
    """Did pretraining leave the plateau where the network predicts little better than zero?

    `escaped_at_step`: the first logged step whose training loss is below halfway from the
    zero predictor's loss to the mixture Bayes predictor's. `gap_closed`: how much of the gap
    from the zero predictor to the mixture Bayes predictor the pretrained network closes on
    continuous prompts (1 = as good as Bayes).
    """
    halfway = (zero_loss + bayes_loss) / 2
    escaped_at = next((step for step, loss in curve if loss < halfway), None)
    gap_closed = (zero - pretrained["mean"]) / (zero - bayes)
    return {
        "zero_predictor_loss": round(zero_loss, 6), "bayes_loss": round(bayes_loss, 6), "halfway_loss": round(halfway, 6),
        "escaped_at_step": escaped_at, "continuous_gap_closed": round(gap_closed, 4),
        "escaped": escaped_at is not None and gap_closed > 0.5,
    }


def run_experiment(config: SyntheticConfig, console: Console | None = None) -> dict:
    """Run it all; returns the results (what `results.json` holds). Progress bars go to `console` (stderr by default)."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    device = resolve_device(config.device)  # a device this machine lacks is a one-line error
    seeds = _seeds(config.seed)
    n_points = config.max_examples + 1
    pool = draw_pool(config.n_tasks, config.d, config.tau, seeds["pool"])
    eval_gen = torch.Generator().manual_seed(seeds["eval"])
    prompts = {
        "continuous": sample_prompts(config.eval_prompts, n_points, pool, 0.0, config.sigma, config.tau, eval_gen),
        "discrete": sample_prompts(config.eval_prompts, n_points, pool, 1.0, config.sigma, config.tau, eval_gen),
    }
    gammas = [float(g) for g in config.gammas]
    args = (config.sigma, config.tau)

    # Baselines and the ideal Bayesian reference.
    baselines: dict[str, dict] = {}
    ideal: dict[str, dict] = {}
    for dist, p in prompts.items():
        baselines[dist] = {
            "ridge": summarize(squared_errors(ridge_predict(p.xs, p.ys, *args), p)),
            "discrete posterior": summarize(squared_errors(discrete_posterior_predict(p.xs, p.ys, pool, config.sigma), p)),
            "mixture Bayes": summarize(squared_errors(mixture_bayes_predict(p.xs, p.ys, pool, *args, config.discrete_weight), p)),
            "zero": summarize(squared_errors(torch.zeros_like(p.ys), p)),
        }
        ideal[dist] = {
            str(g): summarize(squared_errors(
                mixture_bayes_predict(p.xs, g * p.ys, pool, *args, config.ideal_finetuned_weight) / g, p))
            for g in gammas
        }
    ideal_pre = {"continuous": baselines["continuous"]["mixture Bayes"], "discrete": baselines["discrete"]["mixture Bayes"]}
    # Training-loss scale for the plateau check: zero and mixture Bayes on mixture prompts, noisy labels.
    ref = sample_prompts(config.eval_prompts, n_points, pool, config.discrete_weight, *args,
                         torch.Generator().manual_seed(seeds["reference"]))
    zero_loss = (ref.ys**2).mean().item() / config.d
    bayes_loss = ((mixture_bayes_predict(ref.xs, ref.ys, pool, *args, config.discrete_weight) - ref.ys) ** 2).mean().item() / config.d

    # The network.
    torch.manual_seed(seeds["init"])
    model = InContextRegressor(config.d, n_points, config.n_layer, config.n_embd, config.n_head).to(device)
    states: dict[str, dict] = {dist: {} for dist in DISTRIBUTIONS}  # state label -> gamma -> summary

    def evaluate(label: str) -> None:
        for dist, p in prompts.items():
            states[dist][label] = {str(g): summarize(squared_errors(model_predictions(model, p, g, device), p)) for g in gammas}

    seconds = {}
    with _progress(console) as progress:
        pre_gen = torch.Generator().manual_seed(seeds["pretrain"])
        t0 = time.perf_counter()
        pretrain_curve = train(
            model, lambda: sample_prompts(config.batch_size, n_points, pool, config.discrete_weight, *args, pre_gen),
            config.pretrain_steps, config.pretrain_lr, config.pretrain_warmup, device, config.log_every, progress,
            "pretraining (mixture)",
        )
        seconds["pretrain"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluate("pretrained")
        seconds["evaluate"] = time.perf_counter() - t0
        ft_gen = torch.Generator().manual_seed(seeds["finetune"])
        checkpoints = set(config.finetune_checkpoints)
        t0 = time.perf_counter()
        finetune_curve = train(
            model, lambda: sample_prompts(config.batch_size, n_points, pool, 1.0, *args, ft_gen),
            config.finetune_steps, config.finetune_lr, config.finetune_warmup, device,
            min(config.log_every, config.finetune_checkpoints[0]), progress, "fine-tuning (discrete only)",
            at_step=lambda step: evaluate(f"fine-tuned {step}") if step in checkpoints else None,
        )
        seconds["finetune_and_evaluate"] = time.perf_counter() - t0

    finetuned = [f"fine-tuned {s}" for s in config.finetune_checkpoints]
    recovery = _recovery(states["continuous"]["pretrained"]["1.0"], {label: states["continuous"][label] for label in finetuned}, gammas)
    discrete_cost = {label: {g: states["discrete"][label][g]["mean"] for g in states["discrete"][label]} for label in ["pretrained", *finetuned]}
    ideal_recovery = _recovery(ideal_pre["continuous"], {"ideal fine-tuned": ideal["continuous"]}, gammas)["ideal fine-tuned"]
    plateau = _plateau(pretrain_curve, zero_loss, bayes_loss, states["continuous"]["pretrained"]["1.0"],
                       baselines["continuous"]["zero"]["mean"], baselines["continuous"]["mixture Bayes"]["mean"])
    seconds["total"] = time.perf_counter() - started
    return {
        "config": config.to_dict(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(model),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "k": list(range(n_points)),
        "pool": [[round(v, 6) for v in row] for row in pool.tolist()],
        "baselines": baselines,
        "model": states,
        "recovery": recovery,
        "discrete_error_under_conjugation": discrete_cost,
        "ideal_bayes": {
            "pretrained_weight": config.discrete_weight, "finetuned_weight": config.ideal_finetuned_weight,
            "pretrained": ideal_pre, "finetuned": ideal, "recovery": ideal_recovery,
        },
        "pretrain_curve": pretrain_curve,
        "finetune_curve": finetune_curve,
        "plateau": plateau,
    }


__all__ = ["run_experiment", "train", "model_predictions", "squared_errors", "summarize", "recovered_fraction",
           "warmup_cosine"]
