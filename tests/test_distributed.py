"""Many processes: the callback under DDP and FSDP2, two processes over gloo on CPU.

Each test starts `torchrun --nproc_per_node 2 tests/distributed_worker.py` with a timeout, so a
process left waiting on the other fails the test instead of stalling the suite. What the two
processes measured is checked against one process measuring the same trained adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from cli_helpers import run_cli
from forgetscope.distributed import Shard
from forgetscope.meter import ForgettingMeter
from forgetscope.metric import METRIC_KEYS

WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT_S = 300  # a healthy run takes about 16 s on 2 cores

pytestmark = pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch was built without gloo")


def torchrun(*args: object) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 ARGS...`, failed by a timeout if it hangs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def launched(llama_dir, tmp_path_factory) -> Path:
    """The worker's DDP and FSDP2 runs, in one launch of two processes."""
    out = tmp_path_factory.mktemp("two-processes")
    torchrun(WORKER, "ddp,fsdp2", llama_dir, out)
    return out


def per_process(out: Path, mode: str) -> list[dict]:
    """What each process of `mode` wrote (`MODE-rank-N.json`), main first."""
    return [json.loads((out / f"{mode}-rank-{rank}.json").read_text()) for rank in (0, 1)]


def one_process_record(model, step: int) -> dict:
    sys.path.insert(0, str(WORKER.parent))
    from distributed_worker import blocks

    eval_blocks, ft_blocks, _ = blocks(model.config.vocab_size)
    return ForgettingMeter(eval_blocks, ft_eval_blocks=ft_blocks, batch_size=2).record(model, step)[0]


def assert_same_measurement(two: dict, one: dict) -> None:
    for key in (*METRIC_KEYS, "ft_loss", "eval_tokens", "vocab_size"):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
    for name, values in one["domains"].items():
        for key in METRIC_KEYS:
            assert two["domains"][name][key] == pytest.approx(values[key], rel=1e-5, abs=1e-7), (name, key)


def test_shares_cover_every_row_once_and_every_process_runs_as_many():
    for n in (0, 1, 5, 9):
        shards = [Shard.of(n, rank, 2) for rank in (0, 1)]
        assert sum(s.real for s in shards) == n and len({s.size for s in shards}) == 1
        rows = torch.arange(n).unsqueeze(1)
        taken = [s.take(rows) for s in shards]
        assert all(len(t) == shards[0].size for t in taken)
        assert torch.cat([t[: s.real] for t, s in zip(taken, shards)]).flatten().tolist() == list(range(n))


def test_under_ddp_every_process_stops_at_the_budget_and_the_main_one_records_what_one_process_measures(llama_dir, launched):
    main, other = per_process(launched, "ddp")
    assert main["stopped_by_budget"] and main["stopped_by_budget"] == other["stopped_by_budget"]
    assert main["step"] == other["step"] < 8, "both processes stop at the step the budget was crossed"
    assert [r["step"] for r in main["records"]][-1] == main["step"]
    assert other["records"] == [], "records are kept once, on the main process"
    assert main["logs"] == len(main["records"]) and other["logs"] == 0, "each measurement is logged once"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), launched / "ddp-adapter")
    assert_same_measurement(main["records"][-1], one_process_record(model, main["step"]))


def test_under_fsdp2_every_process_joins_each_forward_and_the_result_is_one_process_s(llama_dir, launched):
    sys.path.insert(0, str(WORKER.parent))
    from distributed_worker import adapted

    main, other = per_process(launched, "fsdp2")
    assert main["step"] == other["step"] == 4 and [r["step"] for r in main["records"]] == [0, 2, 4] and other["records"] == []
    assert main["base_source"] == "adapter" and "FSDP2" in main["sharded"], "sharded weights are measured through the model's forward"
    model = adapted(str(llama_dir))
    missing = model.load_state_dict(torch.load(launched / "fsdp2-lora.pt"), strict=False)
    assert not missing.unexpected_keys
    assert_same_measurement(main["records"][-1], one_process_record(model, 4))


@pytest.mark.parametrize("setup", ["FSDP1", "ZeRO-3"])
def test_what_no_measurement_was_built_for_is_refused_before_the_first_step(setup, llama_dir, monkeypatch):
    import transformers.integrations

    from forgetscope.callback import ForgettingCallback
    from forgetscope.errors import UserInputError

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    if setup == "FSDP1":
        model = type("FullyShardedDataParallel", (torch.nn.Module,), {})()
        model.add_module("module", AutoModelForCausalLM.from_pretrained(llama_dir))
    else:
        monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    callback = ForgettingCallback(None, {"a": torch.zeros(2, 8, dtype=torch.long)})
    with pytest.raises(UserInputError, match=setup) as refused:
        callback.on_train_begin(None, None, None, model=model)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.multi_gpu)])  # gloo, or NCCL on 2 GPUs
def test_forgetscope_train_under_torchrun_writes_once_and_trains_what_one_process_does(device, llama_dir, eval_files, tmp_path, capsys):
    train = ["train", "--base", llama_dir, "--train-data", eval_files[1], "--eval-data", eval_files[0], "--seq-len", 32, "--steps", 6,
             "--eval-points", 3, "--eval-tokens", 256, "--batch-size", 4, "--device", device, "--json"]
    two = torchrun("-m", "forgetscope", *train, "--out", tmp_path / "two")
    code, _, err = run_cli([*train, "--out", tmp_path / "one"], capsys)
    assert code == 0, err
    printed = json.loads(two.stdout)  # one JSON document: only the main process prints
    written = [json.loads(line) for line in (tmp_path / "two" / "records.jsonl").read_text().splitlines()]
    assert written == printed and [r["step"] for r in written] == [0, 1, 6], "each record once"
    assert all(r["world_size"] == 2 and r["tokens_per_step"] == 4 * 32 for r in written)
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()
    # batch_size is the global batch: 2 processes of 2 sequences train what 1 of 4 does.
    alone = [json.loads(line) for line in (tmp_path / "one" / "records.jsonl").read_text().splitlines()]
    for a, b in zip(alone, written):
        assert a["world_size"] == 1
        for key in ("kl", "forgetting_ce", "ft_loss", "train_loss"):
            assert b[key] == (None if a[key] is None else pytest.approx(a[key], rel=1e-4, abs=1e-8)), (a["step"], key)
