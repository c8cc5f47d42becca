"""Every command's options and input files, each with values that must work and values that
must be refused: what the fuzzer (`test_fuzz_cli.py`) draws from and what the table of tried
cases (`bench/bad_input.py`) runs one by one.

A case is a command line (placeholders such as `{base}` name files of a small world built by
`build_world`) plus, optionally, one input file replaced by a broken one, and optionally one
write refused by the operating system (a full disk, a read-only file system, no permission).
`judge` says what happened: a clean run (exit 0), or one `error:` line with exit code 2 that
left the working directory as it was; or which class of defect it showed.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

# -- the small world every case runs in -------------------------------------------------------


def build_world(root: Path) -> dict[str, str]:
    """Models, data, sweeps and broken files under `root`; `{name: path}` for the placeholders."""
    import pandas as pd
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from forgetscope.laws.select import fit_sweep
    from forgetscope.tiny import corpora
    from forgetscope.tiny.model import train_tokenizer
    from law_helpers import write_sweep
    from model_helpers import llama, save_with_tokenizer
    from sweep_helpers import tiny_sweep_config

    root.mkdir(parents=True, exist_ok=True)
    w: dict[str, str] = {"root": str(root)}
    train_tokenizer(corpora.scripture()[:40] + corpora.docs()[:200], vocab_size=512).save_pretrained(root / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    w["base"] = str(save_with_tokenizer(llama(len(tokenizer)), tokenizer, root / "llama"))
    adapter = get_peft_model(llama(len(tokenizer)), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    adapter.save_pretrained(root / "adapter")
    w["adapter"] = str(root / "adapter")
    (root / "eval.txt").write_text("\n".join(corpora.scripture()[40:60]) + "\n")
    (root / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in corpora.docs()[200:400]))
    w["eval"], w["train"] = str(root / "eval.txt"), str(root / "train.jsonl")
    sweep = write_sweep(root / "records-sweep", arms=("all-linear",), ranks=(1, 2, 4, 8))
    w["records_sweep"] = str(sweep)
    fitted = write_sweep(root / "fitted", arms=("all-linear",), ranks=(1, 2, 4, 8))
    fit_sweep(fitted, n_bootstrap=5)
    (fitted / "config.yaml").write_text(yaml.safe_dump(tiny_sweep_config(Path(w["base"]), [root / "eval.txt", root / "train.jsonl"])))
    w["fitted"] = str(fitted)
    other = write_sweep(root / "other-fitted", arms=("all-linear",), ranks=(1, 2, 4), seed=3)
    fit_sweep(other, n_bootstrap=5)
    w["other_fits"] = str(other / "fits.json")
    config = tiny_sweep_config(Path(w["base"]), [root / "eval.txt", root / "train.jsonl"], grid={"rank": [1]}, steps=2)
    (root / "sweep.yaml").write_text(yaml.safe_dump(config))
    w["sweep_config"] = str(root / "sweep.yaml")
    (root / "synthetic.yaml").write_text("pretrain_steps: 2\nfinetune_checkpoints: [1, 2]\neval_prompts: 8\n")
    w["synthetic_config"] = str(root / "synthetic.yaml")
    # A sweep kept for `mitigate --sweep`: its config and one saved adapter.
    kept = root / "kept-sweep"
    (kept / "points").mkdir(parents=True)
    (kept / "config.yaml").write_text(yaml.safe_dump({**config, "save_adapters": True}))
    shutil.copytree(root / "adapter", kept / "adapters" / "r1-q_proj-rs-s0-x")
    w["kept_sweep"] = str(kept)
    # Things that are not what a path should be.
    (root / "a-file").write_text("a file")
    (root / "a-dir").mkdir()
    (root / "loop").symlink_to(root / "loop")
    w |= {"file": str(root / "a-file"), "dir": str(root / "a-dir"), "loop": str(root / "loop"),
          "under": str(root / "a-file" / "below"), "missing": str(root / "no-such-thing")}
    evil = root / "evil-model"
    llama(len(tokenizer)).config.save_pretrained(evil)
    tokenizer.save_pretrained(evil)
    _write_evil_pickle(evil / "pytorch_model.bin")
    w["evil_model"] = str(evil)
    corrupt = root / "corrupt-model"
    shutil.copytree(w["base"], corrupt)
    (corrupt / "model.safetensors").write_bytes(b"garbage")
    w["corrupt_model"] = str(corrupt)
    evil_adapter = root / "evil-adapter"
    shutil.copytree(root / "adapter", evil_adapter)
    (evil_adapter / "adapter_model.safetensors").unlink()
    _write_evil_pickle(evil_adapter / "adapter_model.bin")
    w["evil_adapter"] = str(evil_adapter)
    pd.DataFrame({"text": [1, 2, 3]}).to_parquet(root / "int.parquet")
    w["int_parquet"] = str(root / "int.parquet")
    (root / "judge_module.py").write_text("def one_argument(x):\n    return True\n\ndef not_a_bool(instruction, response):\n    return 'yes'\n")
    w["judges"] = str(root)
    if str(root) not in sys.path:
        sys.path.append(str(root))  # `--judge judge_module:...` imports it
    return w


class _Runs:
    """A pickle that would run code when loaded: what `torch.load`'s safe mode refuses."""

    def __reduce__(self):
        return (print, ("this pickle ran code",))


def _write_evil_pickle(path: Path) -> None:
    import torch

    torch.save({"weight": torch.zeros(1), "payload": _Runs()}, path)


# -- broken files ------------------------------------------------------------------------------

BINARY = bytes(range(256)) * 4

TEXT_FILES: dict[str, str | bytes | None] = {
    # name (its suffix is what the reader sees): content
    "empty.jsonl": "",
    "binary.txt": BINARY,
    "garbage.jsonl": "this is not json\n",
    "list-line.jsonl": "[1, 2]\n",
    "number-text.jsonl": '{"text": 5}\n{"text": 6}\n',
    "list-text.jsonl": '{"text": ["a", "b"]}\n',
    "object-text.jsonl": '{"text": {"a": 1}}\n',
    "mixed-text.jsonl": '{"text": "In the beginning God created the heaven and the earth."}\n{"text": 6}\n',
    "no-text.jsonl": '{"content": "no text column here"}\n',
    "bare-number.json": "5\n",
    "bare-string.json": '"hello"\n',
    "null.json": "null\n",
    "garbage.parquet": b"not parquet at all",
    "short.txt": "just a few words\n",
    "table.csv": "text\nhello\n",
}
"""Text data that must be refused (besides a missing path, a directory, a loop and a path under a file)."""

RECORDS: dict[str, str | bytes] = {
    "garbage": "not json\n{}\n",
    "list": "[1, 2, 3]\n{}\n",
    "binary": BINARY,
    "step-as-text": '{"point_id": "a", "step": "3", "trainable_params": 10, "kl": 0.1, "forgetting_ce": 1.0, "ft_loss": 2.0}\n',
    "step-as-bool": '{"point_id": "a", "step": true, "trainable_params": 10, "kl": 0.1, "forgetting_ce": 1.0, "ft_loss": 2.0}\n',
    "negative-step": '{"point_id": "a", "step": -3, "trainable_params": 10, "kl": 0.1, "forgetting_ce": 1.0, "ft_loss": 2.0}\n',
    "negative-kl": '{"point_id": "a", "step": 3, "trainable_params": 10, "kl": -0.5, "forgetting_ce": 1.0, "ft_loss": 2.0}\n',
    "zero-learning-rate": '{"point_id": "a", "step": 3, "trainable_params": 10, "kl": 0.1, "forgetting_ce": 1.0, "ft_loss": 2.0, "learning_rate": 0}\n',
    "all-nan": '{"point_id": "a", "step": 3, "trainable_params": 10, "kl": NaN, "forgetting_ce": NaN, "ft_loss": NaN}\n',
    "escaping-id": '{"point_id": "../../x", "step": 3, "trainable_params": 10, "kl": 0.1, "forgetting_ce": 1.0, "ft_loss": 2.0}\n',
    "params-as-list": '{"point_id": "a", "step": 3, "trainable_params": [10], "kl": 0.1, "forgetting_ce": 1.0, "ft_loss": 2.0}\n',
    "lacking-keys": '{"point_id": "a", "step": 3}\n',
    "empty": "",
    "duplicated": "DUPLICATE",  # the sweep's own records, each twice
}
"""`records.jsonl` contents that `fit` and `report` must refuse."""

FITS: dict[str, str | bytes] = {
    "garbage": "{not json",
    "list": "[1, 2]",
    "number": "5",
    "null": "null",
    "empty-object": "{}",
    "binary": BINARY,
    "kl-as-text": "PATCH:kl=\"mult\"",
    "params-as-list": "PATCH:kl.params=[1, 2]",
    "form-unknown": "PATCH:kl.form=\"nosuch\"",
    "verdict-markup": "PATCH:claims=[{\"claim\": \"x\", \"verdict\": \"<script>alert(1)</script>\", \"evidence\": \"y\"}]",
    "vocab-as-text": "PATCH:vocab_size=\"many\"",
    "bootstrap-ragged": "PATCH:kl.bootstrap=\"x\"",
    "theta-short": "PATCH:kl.theta=[1.0]",
    "member-form-unknown": "PATCH:kl.members=[{\"form\": \"nosuch\", \"theta\": [1.0, 0.5, 0.5]}]",
    "member-theta-short": "PATCH:kl.members=[{\"form\": \"mult\", \"theta\": [1.0]}, {\"form\": \"mult\", \"theta\": [1.0, 0.5, 0.5]}]",
    "member-bootstrap-short": "PATCH:kl.members=[{\"form\": \"mult\", \"theta\": [1.0, 0.5, 0.5], \"bootstrap\": [[1.0]]}]",
    "anchor-offsets-short": "PATCH:kl.anchor={\"arms\": [\"all-linear\"], \"offsets\": [], \"horizons\": [100]}",
    "anchor-horizon-zero": "PATCH:kl.anchor={\"arms\": [\"all-linear\"], \"offsets\": [0.1], \"horizons\": [0]}",
    "anchor-offset-huge": "PATCH:kl.anchor={\"arms\": [\"all-linear\"], \"offsets\": [1e300], \"horizons\": [100]}",
    "anchor-start-after-horizon": "PATCH:kl.anchor={\"arms\": [\"all-linear\"], \"offsets\": [0.1], \"horizons\": [100], \"starts\": [200]}",
    "anchor-samples-ragged": "PATCH:kl.anchor={\"arms\": [\"all-linear\"], \"offsets\": [0.1], \"horizons\": [100], \"sample_offsets\": [[0.1, 0.2]]}",
    "anchor-sample-huge": "PATCH:kl.anchor={\"arms\": [\"all-linear\"], \"offsets\": [0.1], \"horizons\": [100], \"sample_offsets\": [[1e300]]}",
    "saturation-rising": "PATCH:kl.anchor={\"arms\": [\"all-linear\"], \"offsets\": [0.1], \"horizons\": [100], "
                         "\"saturation\": {\"a\": -0.4, \"b\": 0.3, \"weight\": 0.3, \"base_entropy\": 5.0}}",
    "saturation-weight-above-one": "PATCH:kl.anchor={\"arms\": [\"all-linear\"], \"offsets\": [0.1], \"horizons\": [100], "
                                   "\"saturation\": {\"a\": -0.4, \"b\": -0.3, \"weight\": 1.5, \"base_entropy\": 5.0}}",
    "saturation-after-per-arm": "PATCH:kl.anchor={\"arms\": [\"all-linear\"], \"offsets\": [0.1], \"horizons\": [100], "
                                "\"saturation\": {\"a\": -0.4, \"b\": -0.3, \"weight\": 0.3, \"base_entropy\": 5.0, \"after\": [100, 200]}}",
}
"""`fits.json` contents that `predict`, `report` and `train --law` must refuse."""

SWEEP_DIR_CONFIGS: dict[str, str | bytes] = {
    "garbage": "name: [unclosed\n",
    "list": "- 1\n- 2\n",
    "number": "5\n",
    "binary": BINARY,
    "empty": "",
}
"""A sweep directory's `config.yaml` contents that `report` and `mitigate --sweep` must refuse."""

MITIGATION_FILES: dict[str, str] = {
    "garbage": "{not json",
    "list": "[1]",
    "empty-object": "{}",
    "rows-as-text": '{"rows": "many", "base_ft_loss": 1.0}',
    "setting-as-text": '{"rows": [{"method": "scale", "setting": "half", "kl": 0.1, "ft_loss": 1.0, "ft_gain": 0.1}], "base_ft_loss": 1.0}',
}
"""A sweep's `mitigation/ID.json` contents that `report` must refuse."""

SWEEP_CONFIGS: dict[str, object] = {
    # name: a change to the valid config (a dict merged in), or raw text
    "yaml-garbage": "name: [unclosed\n",
    "empty": "",
    "list": "- 1\n",
    "rank-true": {"grid": {"rank": [True]}},
    "empty-grid-list": {"grid": []},
    "empty-axis": {"grid": {"rank": []}},
    "seed-negative": {"grid": {"seed": [-1]}},
    "learning-rate-inf": {"grid": {"learning_rate": [float("inf")]}},
    "learning-rate-zero": {"grid": {"learning_rate": [0]}},
    "scheduler-unknown": {"scheduler": "nosuch"},
    "name-escaping": {"name": "../../x"},
    "name-absolute": {"name": "/tmp/x"},
    "module-escaping": {"grid": {"target_modules": [["../../../../x"]]}},
    "module-misspelt": {"grid": {"target_modules": [["q_proj", "v_prj"]]}},
    "module-embedding": {"grid": {"target_modules": [["embed_tokens"]]}},
    "rank-beyond-width": {"grid": {"rank": [64]}},
    "layer-beyond-model": {"grid": {"layers": [[0, 7]]}},
    "steps-zero": {"steps": 0},
    "eval-points-one": {"eval_points": 1},
    "batch-negative": {"batch_size": -1},
    "seq-len-one": {"seq_len": 1},
    "unknown-key": {"nosuch": 1},
    "cpus-zero": {"resources": {"cpus": 0}},
    "eval-data-empty": {"eval_data": []},
    "finetune-missing": {"finetune_data": {"files": ["/no/such/file.txt"]}},
    "finetune-number-text": {"finetune_data": {"files": ["{broken:number-text.jsonl}"]}},
    "eval-binary": {"eval_data": [{"files": ["{broken:binary.txt}"]}]},
    "kl-weight-inf": {"grid": {"kl_weight": [float("inf")]}},
}
"""Sweep configs that `sweep` must refuse before it writes a directory."""

SYNTHETIC_CONFIGS: dict[str, object] = {
    "empty": "",
    "yaml-garbage": "d: [unclosed\n",
    "list": "- 1\n",
    "binary": BINARY,
    "pretrain-lr-inf": {"pretrain_lr": float("inf")},
    "seed-negative": {"seed": -1},
    "heads-not-dividing": {"n_embd": 3, "n_head": 2},
    "gammas-without-1": {"gammas": [2.0]},
    "device-absent": {"device": "cuda"},
    "checkpoints-decreasing": {"finetune_checkpoints": [3, 2]},
    "unknown-key": {"nosuch": 1},
    "d-true": {"d": True},
}
"""Synthetic experiment configs that `synthetic` must refuse."""


# -- commands ----------------------------------------------------------------------------------

INT = ["abc", "", "1.5", "nan"]
FLOAT = ["nan", "inf", "-inf", "abc", ""]
NAMES = ["../../evil", "/tmp/evil", "a/b", "..", ""]
OUT_FILE = ["{dir}", "{under}", "{loop}/x"]
OUT_DIR = ["{file}", "{under}", "{loop}/x"]
IN_PATH = ["{missing}", "{dir}", "{loop}", "{under}"]
TEXT_IN = IN_PATH + [f"{{broken:{name}}}" for name in TEXT_FILES] + ["{int_parquet}"]


@dataclass
class Option:
    """One option: values it must accept, and values it must refuse. A flag of `@KIND` replaces
    the input file KIND of the case instead (its values are names of broken files)."""

    flag: str
    valid: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)


@dataclass
class Command:
    """A command's valid, cheap command line and its options. `runs`: a valid case is quick
    enough to run (else every drawn case holds at least one invalid value)."""

    name: str
    args: list[str]
    options: list[Option]
    runs: bool = True
    copies: dict[str, str] = field(default_factory=dict)
    """`{placeholder: world entry}` copied into the case's working directory first (what it may write)."""


TRAIN_ARGS = ["train", "--base", "{base}", "--train-data", "{train}", "--eval-data", "{eval}", "--out", "{work}/run", "--steps", "1",
              "--eval-points", "2", "--eval-tokens", "128", "--seq-len", "32", "--batch-size", "2", "--rank", "2"]
MEASURE_ARGS = ["measure", "--base", "{base}", "--adapter", "{adapter}", "--eval-data", "{eval}", "--eval-tokens", "128",
                "--seq-len", "32", "--bootstrap", "10"]
MITIGATE_ARGS = ["mitigate", "--base", "{base}", "--adapter", "{adapter}", "--eval-data", "{eval}", "--ft-eval-data", "{train}",
                 "--eval-tokens", "128", "--seq-len", "32", "--scales", "0,1", "--intruder-scales", "none", "--out", "{work}/m.json"]

COMMANDS: list[Command] = [
    Command("measure", MEASURE_ARGS, [
        Option("--eval-tokens", ["64", "256"], ["1", "0", "-5", "20", "2000000000", *INT]),
        Option("--seq-len", ["16", "32"], ["1", "0", "-1", "100000", *INT]),
        Option("--batch-size", ["1", "16"], ["0", "-1", "70000", *INT]),
        Option("--bootstrap", ["0", "10"], ["-1", "100001", "1e9", *INT]),
        Option("--seed", ["0", "7"], ["-1", "4294967296", *INT]),
        Option("--dtype", ["bfloat16"], ["float8", ""]),
        Option("--device", ["cpu"], ["cuda", "nosuch", "mps:9", ""]),
        Option("--text-column", ["text"], ["nosuch", ""]),
        Option("--sequences", ["{work}/seq.jsonl", "{work}/new/seq.jsonl"], OUT_FILE),
        Option("--cache-dir", ["{work}/cache"], OUT_DIR),
        Option("--eval-data", [], TEXT_IN),
        Option("--adapter", [], ["{dir}", "{missing}", "{file}", "{evil_adapter}"]),
        Option("--finetuned", [], ["{base}"]),
        Option("--base", [], ["{missing}", "{file}", "{dir}", "{evil_model}", "{corrupt_model}", "{loop}"]),
    ]),
    Command("mitigate", MITIGATE_ARGS, [
        Option("--scales", ["0,0.5,1", "1"], ["2", "-0.5", "nan", "abc", "0,,x"]),
        Option("--intruder-threshold", ["0.5"], ["0", "1", "-1", *FLOAT]),
        Option("--intruder-top-k", ["3"], ["0", "-1", *INT]),
        Option("--budget", ["100"], ["0", "-1", *FLOAT]),
        Option("--save", ["{work}/saved"], ["{file}", "{under}", "{loop}/x"]),
        Option("--out", ["{work}/m2.json", "{work}/sub/m.json"], ["{work}/m.png", *OUT_FILE]),
        Option("--batch-size", ["4"], ["0", "-1", *INT]),
        Option("--eval-tokens", ["64"], ["0", "1", "-1", *INT]),
        Option("--seq-len", ["16"], ["0", "1", "100000", *INT]),
        Option("--eval-data", [], TEXT_IN),
        Option("--ft-eval-data", [], TEXT_IN),
        Option("--adapter", [], ["{dir}", "{missing}", "{evil_adapter}"]),
    ]),
    Command("mitigate --sweep", ["mitigate", "--sweep", "{work}/kept"], [
        Option("--point", [], [*NAMES, "nosuch"]),
        Option("@kept/config.yaml", [], list(SWEEP_DIR_CONFIGS)),
        Option("--base", [], ["{base}"]),
    ], runs=False, copies={"kept": "kept_sweep"}),
    Command("train", TRAIN_ARGS, [
        Option("--rank", ["1", "4"], ["0", "-1", "64", *INT]),
        Option("--lora-alpha", ["8", "0.5"], ["0", "-1", *FLOAT]),
        Option("--dropout", ["0", "0.1"], ["1", "-0.1", "nan"]),
        Option("--steps", ["1", "2"], ["0", "-1", "1e3", *INT]),
        Option("--learning-rate", ["0.001", "1e-4"], ["0", "-1", *FLOAT]),
        Option("--batch-size", ["1", "2"], ["0", "-2", "70000", *INT]),
        Option("--warmup-steps", ["0", "1"], ["-1", *INT]),
        Option("--scheduler", ["linear", "constant"], ["nosuch", ""]),
        Option("--eval-points", ["2", "3"], ["1", "0", "20000", *INT]),
        Option("--eval-schedule", ["dense-late"], ["nosuch"]),
        Option("--eval-tokens", ["64"], ["1", "0", *INT]),
        Option("--kl-budget", ["0.5"], ["0", "-1", *FLOAT]),
        Option("--stop-on-budget", ["never"], ["nosuch"]),
        Option("--kl-weight", [], ["-1", "0.5", *FLOAT]),
        Option("--replay-fraction", [], ["1", "-0.1", "0.5", "nan"]),
        Option("--l2-weight", ["0", "0.1"], ["-1", *FLOAT]),
        Option("--seed", ["0", "3"], ["-1", "4294967296", *INT]),
        Option("--target-modules", ["q_proj", "q_proj,v_proj"], ["../../x", "q_proj,v_prj", "embed_tokens", "lm_head", "nosuch", "q_proj/x", ","]),
        Option("--layers", ["0", "0,1"], ["7", "0,7", "-1", "abc", ""]),
        Option("--dtype", [], ["float16", "float8"]),
        Option("--report-to", ["none"], ["nosuchlogger"]),
        Option("--out", ["{work}/run2"], [*OUT_DIR, "{work}/sweep"]),
        Option("--train-data", ["{broken:short.txt}"], [v for v in TEXT_IN if "short.txt" not in v]),  # more text, however short
        Option("--eval-data", [], TEXT_IN),
        Option("--ft-eval-data", [], TEXT_IN),
        Option("--base", [], ["{missing}", "{file}", "{evil_model}", "{corrupt_model}"]),
        Option("--law", [], ["{dir}", "{missing}", "{file}"]),
    ], copies={"sweep": "records_sweep"}),
    Command("fit", ["fit", "{work}/sweep", "--bootstrap", "5"], [
        Option("--bootstrap", ["0", "5"], ["-1", "100001", *INT]),
        Option("--holdout", ["0.5", "0.3"], ["0", "1", "-0.5", *FLOAT]),
        Option("--seed", ["1"], ["-1", *INT]),
        Option("@sweep/records.jsonl", ["crlf"], list(RECORDS)),
    ], copies={"sweep": "records_sweep"}),
    Command("predict", ["predict", "{work}/fitted", "--params", "5000", "--steps", "10"], [
        Option("--params", ["100", "1e6"], ["0", "-5", *FLOAT]),
        Option("--steps", ["0", "5", "1000"], ["-3", *FLOAT]),  # step 0 is the base
        Option("--budget", [], ["0.1"]),
        Option("--learning-rate", ["0.001"], ["0", "-1", *FLOAT]),
        Option("--replay-fraction", [], ["1", "-0.1", "0.5", *FLOAT]),
        Option("@fitted/fits.json", [], list(FITS)),
    ], copies={"fitted": "fitted"}),
    Command("report", ["report", "{work}/fitted", "--bootstrap", "5"], [
        Option("--bootstrap", ["0"], ["-1", "100001", *INT]),
        Option("@fitted/fits.json", [], [*FITS, "another-sweeps"]),
        Option("@fitted/config.yaml", [], list(SWEEP_DIR_CONFIGS)),
        Option("@fitted/records.jsonl", [], list(RECORDS)),
        Option("@fitted/mitigation/a.json", [], list(MITIGATION_FILES)),
    ], copies={"fitted": "fitted"}),
    Command("sweep", ["sweep", "{work}/sweep.yaml", "--out", "{work}/s"], [
        Option("@sweep.yaml", [], list(SWEEP_CONFIGS)),
        Option("--out", [], OUT_DIR),
        Option("--executor", [], ["nosuch", ""]),
        Option("--executor-option", [], ["nokey", "x=1", "=1"]),
        Option("--address", [], ["auto"]),
    ], runs=False, copies={"sweep.yaml": "sweep_config"}),
    Command("synthetic", ["synthetic", "--config", "{work}/synthetic.yaml", "--out", "{work}/syn"], [
        Option("@synthetic.yaml", [], list(SYNTHETIC_CONFIGS)),
        Option("--seed", [], ["-1", "4294967296", *INT]),
        Option("--out", [], OUT_DIR),
        Option("--config", [], IN_PATH),
    ], runs=False, copies={"synthetic.yaml": "synthetic_config"}),
    Command("eval", ["eval", "--base", "{base}", "--finetuned", "{base}", "--suite", "tiny", "--limit", "2"], [
        Option("--limit", [], ["0", "-1", *INT]),
        Option("--num-fewshot", [], ["-1", "1001", *INT]),
        Option("--batch-size", [], ["0", "-1", *INT]),
        Option("--suite", [], ["nosuch_task", "", ","]),
        Option("--judge", [], ["nomodule:f", "judge_module:one_argument", "abc", "os:nosuch"]),
        Option("--harmful", [], IN_PATH),
        Option("--dtype", [], ["float8"]),
        Option("--device", [], ["cuda", "nosuch"]),
        Option("--base", [], ["{missing}", "{evil_model}", "{file}"]),
    ], runs=False),
    Command("conjugate probe", ["conjugate", "probe", "--base", "{base}", "--finetuned", "{base}", "--tasks-per-kind", "1",
                                "--refusal-tokens", "2", "--bootstrap", "5"], [
        Option("--tasks-per-kind", [], ["0", "-1", "100001", *INT]),
        Option("--refusal-tokens", [], ["0", "-1", *INT]),
        Option("--bootstrap", [], ["-1", "100001"]),
        Option("--seed", [], ["-1", *INT]),
        Option("--transform", [], ["nosuch", "translate:", "parallel:", ""]),
        Option("--sentences", [], [*IN_PATH, "{broken:binary.txt}", "{broken:empty.jsonl}"]),
        Option("--harmful", [], IN_PATH),
        Option("--judge", [], ["nomodule:f", "judge_module:one_argument", "abc"]),
    ], runs=False),
    Command("conjugate miniature", ["conjugate", "miniature"], [
        Option("--transform", [], ["nosuch", ""]),
        Option("--finetune", [], ["nosuch", ""]),
        Option("--seed", [], ["-1", *INT]),
    ], runs=False),
    Command("tiny pretrain", ["tiny", "pretrain", "--out", "{work}/tiny"], [
        Option("--out", [], [*OUT_DIR, "{work}/fitted"]),
        Option("--stop-after", [], ["0", "-1", *INT]),
    ], runs=False, copies={"fitted": "fitted"}),
    Command("fetch", ["fetch"], [Option("", [], ["nosuch", "../../x", "", "/abs"])], runs=False),
    Command("demo", ["demo"], [Option("--out", [], OUT_DIR)], runs=False),
]

FAULTS = {"ENOSPC": errno.ENOSPC, "EROFS": errno.EROFS, "EACCES": errno.EACCES}
"""What the operating system may refuse a write with: a full disk, a read-only file system, no permission."""

WRITERS = {"measure": ["--sequences", "{work}/seq.jsonl", "--cache-dir", "{work}/cache"], "mitigate": ["--save", "{work}/saved", "--budget", "100"],
           "train": [], "fit": [], "report": []}
"""The commands a write fault is injected into, with options that make them write more."""


# -- running one case --------------------------------------------------------------------------


@dataclass
class Case:
    command: Command
    args: list[str]
    invalid: list[str]
    """What in this case must be refused (empty: it must run, or be refused cleanly)."""
    files: dict[str, str] = field(default_factory=dict)
    """`{target in the working directory: broken-file name}`."""
    fault: tuple[str, int] | None = None
    """`(errno name, n)`: the n-th write into the working directory fails with that error."""

    def describe(self) -> str:
        extra = "".join(f" [{k} <- {v}]" for k, v in self.files.items())
        fault = f" [write {self.fault[1]} fails: {self.fault[0]}]" if self.fault else ""
        return " ".join(self.args) + extra + fault


def prepare_work(case: Case, world: dict[str, str], work: Path) -> list[str]:
    """Fill `work` with the case's copies and broken files; the command line with placeholders filled."""
    work.mkdir(parents=True, exist_ok=True)
    for target, source in case.command.copies.items():
        src = Path(world[source])
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, work / target)
    for target, name in case.files.items():
        _write_broken(work / target, name, world, case.command.name)
    values = {**world, "work": str(work)}
    return [_fill(arg, values, work) for arg in case.args]


def _fill(arg: str, values: dict[str, str], work: Path) -> str:
    out = arg
    while "{broken:" in out:
        start = out.index("{broken:")
        end = out.index("}", start)
        name = out[start + 8:end]
        path = work / "broken" / name
        path.parent.mkdir(exist_ok=True)
        content = TEXT_FILES[name]
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        out = out[:start] + str(path) + out[end + 1:]
    for key, value in values.items():
        out = out.replace("{" + key + "}", value)
    return out


def _write_broken(path: Path, name: str, world: dict[str, str], command: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = path.name
    if kind == "records.jsonl":
        content = RECORDS.get(name, "")
        if name == "crlf":
            content = path.read_text().replace("\n", "\r\n")
        if content == "DUPLICATE":
            content = "".join(line + "\n" + line + "\n" for line in path.read_text().splitlines())
    elif kind == "fits.json":
        if name == "another-sweeps":
            content = Path(world["other_fits"]).read_text()
        else:
            content = FITS[name]
            if isinstance(content, str) and content.startswith("PATCH:"):
                content = _patched(path, content.removeprefix("PATCH:"))
    elif kind == "config.yaml":
        content = SWEEP_DIR_CONFIGS[name]
    elif path.parent.name == "mitigation":
        (path.parent.parent / "points").mkdir(exist_ok=True)
        (path.parent.parent / "points" / f"{path.stem}.json").write_text('{"status": "finished"}')
        content = MITIGATION_FILES[name]
    elif kind == "sweep.yaml":
        content = _config(path, SWEEP_CONFIGS[name], world)
    elif kind == "synthetic.yaml":
        content = _config(path, SYNTHETIC_CONFIGS[name], world)
    else:
        raise ValueError(f"no grammar for {path}")
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _patched(path: Path, patch: str) -> str:
    data = json.loads(path.read_text())
    key, _, value = patch.partition("=")
    target = data
    *parents, last = key.split(".")
    for part in parents:
        target = target[part]
    target[last] = json.loads(value)
    return json.dumps(data)


def _config(path: Path, change: object, world: dict[str, str]) -> str | bytes:
    if isinstance(change, (str, bytes)):
        return change
    data = yaml.safe_load(path.read_text()) or {}
    text = json.dumps(change)
    while "{broken:" in text:  # a broken data file the config names
        start = text.index("{broken:")
        end = text.index("}", start)
        name = text[start + 8:end]
        target = path.parent / "broken" / name
        target.parent.mkdir(exist_ok=True)
        content = TEXT_FILES[name]
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
        text = text[:start] + str(target) + text[end + 1:]
    change = json.loads(text.replace("Infinity", '"__inf__"'))
    for key, value in change.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return yaml.safe_dump(data).replace("__inf__", ".inf").replace("'.inf'", ".inf")


def snapshot(root: Path) -> dict[str, str | None]:
    """Every path under `root` with a digest of its bytes: what a refused case must leave as it was."""
    out: dict[str, str | None] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.exists():
            out[str(path.relative_to(root))] = "link"
        elif path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[str(path.relative_to(root))] = None
    return out


@contextlib.contextmanager
def failing_writes(work: Path, fault: tuple[str, int] | None):
    """The `n`-th file opened for writing under `work` fails with the fault's error."""
    if fault is None:
        yield
        return
    real_open, seen = builtins.open, [0]
    code = FAULTS[fault[0]]

    def opener(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and str(file).startswith(str(work)):
            seen[0] += 1
            if seen[0] >= fault[1]:
                raise OSError(code, os.strerror(code), str(file))
        return real_open(file, mode, *args, **kwargs)

    builtins.open = opener
    try:
        yield
    finally:
        builtins.open = real_open


class Hang(Exception):
    pass


def run_case(case: Case, world: dict[str, str], work: Path, timeout_s: int = 300) -> tuple[str, str]:
    """Run one case in this process; `(outcome, stderr)`. Outcomes: clean, traceback,
    multi-line, accepted (exit 0 where something had to be refused), wrote-on-error, hang
    (and crash, from `run_isolated`)."""
    from forgetscope.cli import main

    args = prepare_work(case, world, work)
    before = snapshot(work)
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = ["forgetscope", *args]
    os.chdir(work)
    err_lines: list[str] = []
    code: int
    import io

    stderr, stdout = io.StringIO(), io.StringIO()

    def alarm(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout_s)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout), failing_writes(work, case.fault):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Hang:
        return "hang", stderr.getvalue()
    except BaseException as exc:  # noqa: BLE001 - an exception that escaped the boundary
        stderr.write(f"Traceback (escaped main): {type(exc).__name__}: {exc}\n")
        code = 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        sys.argv = old_argv
        os.chdir(old_cwd)
    err = stderr.getvalue()
    err_lines = [line for line in err.strip().splitlines() if line.strip()]
    return judge(code, err_lines, before, snapshot(work), bool(case.invalid)), err


def run_isolated(case: Case, world: dict[str, str], work: Path, timeout_s: int = 300) -> tuple[str, str]:
    """`run_case` in a forked child: a crash of the interpreter (a segfault in a library) is
    the outcome `crash`, and a case still running after `timeout_s` is killed as a `hang`."""
    import time

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        try:
            result = run_case(case, world, work, timeout_s + 60)
        except BaseException as exc:  # noqa: BLE001
            result = ("traceback", f"harness: {type(exc).__name__}: {exc}")
        with os.fdopen(write, "w") as out:
            out.write(json.dumps(result))
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return "hang", ""
        time.sleep(0.05)
    with os.fdopen(read) as source:
        text = source.read()
    if os.WIFSIGNALED(status) or not text:
        return "crash", f"the interpreter died (signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else '?'})"
    outcome, err = json.loads(text)
    return outcome, err


PROGRESS = re.compile(r"\d+%\||━|\d+/\d+ \[")


def judge(code: int, err_lines: list[str], before: dict, after: dict, must_refuse: bool) -> str:
    """The outcome's class (see `run_case`)."""
    if code == 0:
        return "accepted" if must_refuse else "clean"
    if code != 2 or any("Traceback" in line for line in err_lines):
        return "traceback"
    # Progress a long command drew before it failed (a bar per line through a pipe) is not a
    # second message; anything else is.
    said = [line for line in err_lines if not PROGRESS.search(line)]
    if len(said) != 1 or not said[0].startswith("error: "):
        return "multi-line"
    if before != after:
        return "wrote-on-error"
    return "clean"


def every_case() -> list[Case]:
    """The table: each invalid value of each option alone, each broken file alone, and each
    write fault at each of the first writes of the commands that write."""
    cases = []
    for command in COMMANDS:
        for option in command.options:
            for value in option.invalid:
                cases.append(_case(command, option, value))
    for command in COMMANDS:
        if command.name in WRITERS:
            for name in FAULTS:
                for n in (1, 2, 3):
                    args = [*command.args, *WRITERS[command.name]]
                    cases.append(Case(command, args, [], fault=(name, n)))
    return cases


def _case(command: Command, option: Option, value: str, base: Case | None = None) -> Case:
    case = base or Case(command, list(command.args), [])
    if option.flag.startswith("@"):
        case.files[option.flag[1:]] = value
    elif option.flag == "":
        case.args.append(value)
    else:
        case.args += [option.flag, value]
    if value in option.invalid:
        case.invalid.append(f"{option.flag or 'argument'} {value}")
    return case
