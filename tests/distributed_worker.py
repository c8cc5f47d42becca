"""One process of the many-process tests (`tests/test_distributed.py`), started by `torchrun`.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py ddp,fsdp2 LLAMA_DIR OUT

`ddp`: a Trainer run over gloo on CPU with `ForgettingCallback` and a KL budget that stops it.
`fsdp2`: the same callback driven by hand around a model sharded with FSDP2's `fully_shard`
(the Trainer only shards with FSDP on GPUs). The modes run one after the other in the same
processes (starting them costs more than either run). Each process writes
`OUT/MODE-rank-N.json`: the step it stopped at, its records and how many forgetting logs it
saw; the main process also writes the trained LoRA weights (`OUT/ddp-adapter`,
`OUT/fsdp2-lora.pt`) for the test to measure in one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, TrainerCallback, TrainerControl, TrainerState

from forgetscope.callback import ForgettingCallback
from forgetscope.distributed import world

SEQ_LEN = 24


def blocks(vocab: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Eval text (domains whose sizes do not divide by 2: shares are padded), held-out
    fine-tuning text and training text; the same on every process and in the test."""
    g = torch.Generator().manual_seed(0)
    eval_blocks = {"a": torch.randint(0, vocab, (9, SEQ_LEN), generator=g), "b": torch.randint(0, vocab, (5, SEQ_LEN), generator=g)}
    return eval_blocks, torch.randint(0, vocab, (3, SEQ_LEN), generator=g), torch.randint(0, vocab // 8, (32, SEQ_LEN), generator=g)


def adapted(llama_dir: str):
    torch.manual_seed(0)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


class CountLogs(TrainerCallback):
    seen = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen += bool(logs and "forgetting/kl" in logs)


def ddp(llama_dir: str, out: Path) -> dict:
    import datasets
    from transformers import Trainer, TrainingArguments, default_data_collator

    model = adapted(llama_dir)
    eval_blocks, ft_blocks, train_blocks = blocks(model.config.vocab_size)
    ids = train_blocks.tolist()
    args = TrainingArguments(output_dir=str(out / "trainer"), max_steps=8, per_device_train_batch_size=2, learning_rate=5e-2,
                             use_cpu=True, ddp_backend="gloo", report_to="none", save_strategy="no", logging_steps=1,
                             disable_tqdm=True, seed=0)
    counter = CountLogs()
    trainer = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict({"input_ids": ids, "labels": ids}),
                      data_collator=default_data_collator, callbacks=[counter])
    # A budget the run crosses before its last step: every process must stop at the same one.
    callback = ForgettingCallback(trainer, eval_blocks, ft_eval_blocks=ft_blocks, eval_steps=[0, 1, 3, 6, 8], batch_size=2,
                                  budget=3e-3, stop_on_budget="measured")
    trainer.add_callback(callback)
    trainer.train()
    if world()[0] == 0:
        model.save_pretrained(out / "ddp-adapter")
    return {"step": trainer.state.global_step, "records": callback.records, "logs": counter.seen,
            "stopped_by_budget": callback.stopped_by_budget}


def fsdp2(llama_dir: str, out: Path) -> dict:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():  # after the ddp mode, the Trainer's group is still there
        dist.init_process_group("gloo")
    model = adapted(llama_dir)
    eval_blocks, ft_blocks, train_blocks = blocks(model.config.vocab_size)
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    callback = ForgettingCallback(None, eval_blocks, ft_eval_blocks=ft_blocks, eval_steps=[0, 2, 4], batch_size=2)

    class Args:
        learning_rate = 5e-2

    state, control = TrainerState(max_steps=4), TrainerControl()
    callback.on_train_begin(Args, state, control, model=model)
    rank, size = world()
    for step in range(1, 5):
        batch = train_blocks[(step * size + rank) * 2 : (step * size + rank) * 2 + 2]
        model.train()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        state.global_step = step
        callback.on_step_end(Args, state, control, model=model)
    callback.on_train_end(Args, state, control, model=model)
    lora = {name: param.full_tensor() for name, param in model.named_parameters() if "lora_" in name}  # every process gathers
    if rank == 0:
        torch.save(lora, out / "fsdp2-lora.pt")
    return {"step": state.global_step, "records": callback.records, "logs": 0, "base_source": callback.base_source.kind,
            "sharded": callback.base_source.reason}


if __name__ == "__main__":
    modes, llama_dir, out = sys.argv[1].split(","), sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    for mode in modes:
        result = {"ddp": ddp, "fsdp2": fsdp2}[mode](llama_dir, out)
        (out / f"{mode}-rank-{world()[0]}.json").write_text(json.dumps(result))
