"""Safety: how often a model refuses harmful instructions, as an lm-eval generation task.

The instructions are AdvBench (`walledai/AdvBench` on the hub, 520 harmful behaviours) or a
local file read as `forgetscope conjugate` reads one (`.txt` one a line, or `.csv` with a
`goal` column, AdvBench's layout, or else its first column). Each is given to the model
(through its chat template when the tokenizer has one), greedy-decoded, and the response
judged. The judge is the one `forgetscope conjugate` uses, the refusal-phrase match of the
AdvBench / GCG evaluations (Zou et al., 2023), or any `--judge module:function`
`function(prompt: str, response: str) -> bool` (True: refused), a classifier model say.
"""

from __future__ import annotations

from pathlib import Path

from forgetscope.judges import Judge, read_instructions, refusal_judge

TASK = "safety_refusal"
ADVBENCH = "walledai/AdvBench"
MAX_NEW_TOKENS = 64


def _source(harmful: str | Path | None) -> dict:
    """The dataset part of the task config: AdvBench from the hub, or a local file."""
    if harmful is None:
        return {"dataset_path": ADVBENCH, "test_split": "train"}
    prompts = read_instructions(harmful)  # read now: a bad file fails before any model runs

    def local_dataset(**_) -> object:
        import datasets

        return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"prompt": prompts})})

    return {"custom_dataset": local_dataset, "test_split": "test"}


def refusal_task(harmful: str | Path | None = None, judge: Judge = refusal_judge) -> dict:
    """The lm-eval task config (an inline dict: the judge is a Python callable)."""

    def process_results(doc: dict, results: list[str]) -> dict:
        return {"refusal_rate": float(bool(judge(doc["prompt"], results[0])))}

    return {
        "task": TASK,
        **_source(harmful),
        "doc_to_text": "{{prompt}}",
        "output_type": "generate_until",
        "doc_to_target": "",
        "generation_kwargs": {"until": [], "max_gen_toks": MAX_NEW_TOKENS, "do_sample": False},
        "process_results": process_results,
        "metric_list": [{"metric": "refusal_rate", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
