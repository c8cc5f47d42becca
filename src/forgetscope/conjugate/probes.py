"""Probes of a base model and its fine-tune in each prompt transform.

Per transform: the conflict tasks' score (share of greedy outputs that follow the in-context
task) for base and fine-tuned and its drop; the forgetting metric (`forgetscope.metric`, the
same per-token L_f and KL as `forgetscope measure`) between them on the transformed prompts;
and, given a file of harmful instructions, the refusal rate of both, judged on outputs
brought back by the transform's inverse. The question: does the fine-tuned model behave
more like its base when the prompt is transformed?
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch

from forgetscope.conjugate.tasks import ConflictTask, follows_context, make_conflict_tasks
from forgetscope.errors import UserInputError
from forgetscope.judges import Judge, refusal_judge
from forgetscope.metric import METRIC_KEYS, measure_forgetting, summarize


def _context_limit(model) -> int | None:
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def encode(tokenizer, text: str, chat: bool, limit: int | None = None, reserve: int = 0) -> torch.Tensor:
    """`[1, n]` ids of a prompt (through the chat template if `chat`), cut from the left to fit
    `limit - reserve` positions: the end of a prompt is what the next token depends on."""
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not chat)["input_ids"]
    if limit is not None:
        ids = ids[:, -max(2, limit - reserve):]
    return ids


@torch.no_grad()
def greedy(model, tokenizer, ids: torch.Tensor, max_new_tokens: int, use_base: bool = False) -> str:
    """The greedy continuation of `ids`; `use_base` switches a PEFT model's adapter off."""
    device = next(model.parameters()).device
    context = model.disable_adapter() if use_base else nullcontext()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with context:
        out = model.generate(
            input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pad,
        )
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def prompt_forgetting(finetuned, base, prompts: Sequence[torch.Tensor], n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """L_f, KL, ... of `finetuned` against `base` (or its disabled adapter when `base` is None),
    token-weighted over the next-token predictions inside each `[1, n]` prompt."""
    sums: dict[str, list[float]] = {key: [] for key in METRIC_KEYS}
    tokens = []
    for ids in prompts:
        if ids.shape[1] < 2:
            continue
        row = measure_forgetting(finetuned, {"prompt": ids}, base=base, batch_size=1, n_bootstrap=0).sequences[0]
        for key in METRIC_KEYS:
            sums[key].append(row[key] * row["tokens"])
        tokens.append(row["tokens"])
    if not tokens:
        raise UserInputError("no prompt is longer than one token: nothing to measure")
    return summarize({k: np.array(v) for k, v in sums.items()}, np.array(tokens), n_bootstrap, seed)


def _bar(total: int, enabled: bool):
    if not enabled:
        return nullcontext(lambda: None)
    from rich.console import Console
    from rich.progress import Progress

    class _Bar:
        def __enter__(self):
            self.progress = Progress(transient=True, console=Console(stderr=True))  # stdout: results only
            self.progress.__enter__()
            task = self.progress.add_task("probing", total=total)
            return lambda: self.progress.advance(task)

        def __exit__(self, *exc):
            return self.progress.__exit__(*exc)

    return _Bar()


def run_probes(
    finetuned,
    base,
    tokenizer,
    transforms: Sequence,
    sentences: Sequence[str],
    harmful: Sequence[str] | None = None,
    judge: Judge = refusal_judge,
    n_per_kind: int = 8,
    max_words: int = 8,
    refusal_tokens: int = 32,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """One result per transform (see the module docstring).

    `base` is a separate base model, or None when `finetuned` is a PEFT model (the base is
    then the same model with its adapter disabled). Each result: `{"transform", "tasks",
    "base_score", "finetuned_score", "drop", "by_kind": {"task/kind": {...}},
    "forgetting": {forgetting_ce, kl, ..., "ci"}, "refusal": {...} or None, "examples"}`;
    `examples` holds every conflict task (prompt, expected answer, both sides' responses and
    whether each followed the context), and `refusal.responses` every harmful instruction
    with both responses, their inverse-transformed text and the judge's verdicts, so the
    numbers can be audited.
    The forgetting metric is taken over every prompt of the transform (conflict tasks, and
    harmful instructions when given), as the model sees them.
    """
    chat = bool(getattr(tokenizer, "chat_template", None))
    limit = _context_limit(finetuned)
    per_transform = n_per_kind * 4 + len(harmful or ())
    results = []
    with _bar(2 * per_transform * len(transforms), progress) as advance:
        for transform in transforms:
            tasks = make_conflict_tasks(sentences, transform, n_per_kind, seed, max_words)
            outputs: dict[str, list[str]] = {"base": [], "finetuned": []}
            encoded = []
            for task in tasks:
                budget = len(tokenizer(task.answer, add_special_tokens=False)["input_ids"]) + 2
                ids = encode(tokenizer, task.prompt, chat=False, limit=limit, reserve=budget)
                encoded.append(ids)
                for side in outputs:
                    outputs[side].append(_generate(finetuned, base, tokenizer, ids, budget, side))
                    advance()
            result = {"transform": transform.name, "tasks": len(tasks)} | _scores(tasks, outputs)
            result["examples"] = [{"task": f"{t.task}/{t.final_kind}", "prompt": t.prompt, "answer": t.answer,
                                   "base": b, "finetuned": f, "base_follows": follows_context(b, t.answer),
                                   "finetuned_follows": follows_context(f, t.answer)}
                                  for t, b, f in zip(tasks, outputs["base"], outputs["finetuned"])]
            result["refusal"] = None
            if harmful:
                inverse = getattr(transform, "inverse", None)
                refused = {"base": [], "finetuned": []}
                responses = []
                for instruction in harmful:
                    prompt = transform.forward(instruction)
                    ids = encode(tokenizer, prompt, chat=chat, limit=limit, reserve=refusal_tokens)
                    encoded.append(ids)
                    row = {"instruction": instruction, "prompt": prompt}
                    for side in refused:
                        response = _generate(finetuned, base, tokenizer, ids, refusal_tokens, side)
                        judged = inverse(response) if inverse else response
                        verdict = bool(judge(instruction, judged))
                        refused[side].append(verdict)
                        row |= {side: response, f"{side}_judged_text": judged, f"{side}_refused": verdict}
                        advance()
                    responses.append(row)
                rates = {side: sum(v) / len(v) for side, v in refused.items()}
                result["refusal"] = {"n": len(harmful), "base": rates["base"], "finetuned": rates["finetuned"],
                                     "drop": rates["base"] - rates["finetuned"], "back_transformed": inverse is not None,
                                     "responses": responses}
            result["forgetting"] = prompt_forgetting(finetuned, base, encoded, n_bootstrap, seed)
            results.append(result)
    return results


def _generate(finetuned, base, tokenizer, ids, max_new_tokens: int, side: str) -> str:
    if side == "finetuned":
        return greedy(finetuned, tokenizer, ids, max_new_tokens)
    if base is not None:
        return greedy(base, tokenizer, ids, max_new_tokens)
    return greedy(finetuned, tokenizer, ids, max_new_tokens, use_base=True)


def _scores(tasks: Sequence[ConflictTask], outputs: dict[str, list[str]]) -> dict:
    def share(side: str, keep=lambda t: True) -> float:
        hits = [follows_context(o, t.answer) for t, o in zip(tasks, outputs[side]) if keep(t)]
        return sum(hits) / len(hits)

    out = {"base_score": share("base"), "finetuned_score": share("finetuned")}
    out["drop"] = out["base_score"] - out["finetuned_score"]
    out["by_kind"] = {}
    for name in sorted({(t.task, t.final_kind) for t in tasks}):
        keep = lambda t, name=name: (t.task, t.final_kind) == name  # noqa: E731
        base_score, ft_score = share("base", keep), share("finetuned", keep)
        out["by_kind"]["/".join(name)] = {"base": base_score, "finetuned": ft_score, "drop": base_score - ft_score}
    return out


def parse_transform_specs(values: Sequence[str]) -> list[str]:
    """Comma-separated specs from one or more `--transform` options; `parallel:SRC,TGT` keeps its comma."""
    specs: list[str] = []
    for value in values:
        parts = [p.strip() for p in value.split(",")]
        i = 0
        while i < len(parts):
            if parts[i].startswith("parallel:") and i + 1 < len(parts):
                specs.append(f"{parts[i]},{parts[i + 1]}")
                i += 2
            else:
                if parts[i]:
                    specs.append(parts[i])
                i += 1
    if not specs:
        raise UserInputError("no --transform given")
    return specs
