"""`forgetscope measure`: the documented contract, agreement with independent computations, and
one clear line for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from cli_helpers import assert_user_error, run_cli
from conftest import make_llama
from forgetscope.base_cache import BaseSource
from forgetscope.data import load_eval_blocks
from forgetscope.metric import METRIC_KEYS, measure_forgetting, token_stats
from forgetscope.tiny.model import train_tokenizer
from test_metric import numpy_reference

SEQ_LEN = 32
TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}


def train_plain_peft_adapter(model_dir: Path, target_modules: list[str], out: Path, steps: int = 12) -> Path:
    """An adapter trained outside forgetscope: plain PEFT and a hand-written torch loop."""
    torch.manual_seed(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=4, lora_alpha=8, target_modules=target_modules))
    text = " ".join(f"def f{i}(x): return x * {i}" for i in range(200))
    ids = torch.tensor(tok(text)["input_ids"][: 8 * SEQ_LEN]).view(8, SEQ_LEN)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def arch(request, llama_dir, gpt2_dir, tmp_path_factory):
    """(base dir, plain-PEFT adapter dir, merged full fine-tune dir) for one architecture."""
    base_dir = {"llama": llama_dir, "gpt2": gpt2_dir}[request.param]
    root = tmp_path_factory.mktemp(f"ft-{request.param}")
    adapter_dir = train_plain_peft_adapter(base_dir, TARGETS[request.param], root / "adapter")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).merge_and_unload()
    merged.save_pretrained(root / "merged")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(root / "merged")
    return base_dir, adapter_dir, root / "merged"


def independent_forgetting(base_dir: Path, merged_dir: Path, eval_files: list[Path], max_tokens: int) -> dict:
    """The metric from scratch: own tokenization per the contract, merged weights, numpy float64."""
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    docs = {"scripture": Path(eval_files[0]).read_text().splitlines(),
            "docs": [json.loads(line)["text"] for line in Path(eval_files[1]).read_text().splitlines()]}
    sums, count = {k: 0.0 for k in METRIC_KEYS}, 0
    for texts in docs.values():
        ids = []
        for text in texts:
            ids += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = min(len(ids) // SEQ_LEN, max_tokens // SEQ_LEN)
        x = torch.tensor(ids[: n * SEQ_LEN]).view(n, SEQ_LEN)
        with torch.no_grad():
            p, q = base(input_ids=x).logits[:, :-1], merged(input_ids=x).logits[:, :-1]
        ref = numpy_reference(p.reshape(-1, p.shape[-1]).numpy(), q.reshape(-1, q.shape[-1]).numpy(), x[:, 1:].reshape(-1).numpy())
        for k in METRIC_KEYS:
            sums[k] += ref[k].sum()
        count += x[:, 1:].numel()
    return {k: v / count for k, v in sums.items()} | {"tokens": count}


def test_measure_json_matches_an_independent_computation(arch, eval_files, capsys):
    base_dir, adapter_dir, merged_dir = arch
    code, out, err = run_cli(
        ["measure", "--base", base_dir, "--adapter", adapter_dir, "--eval-data", eval_files[0], "--eval-data", eval_files[1],
         "--seq-len", SEQ_LEN, "--max-tokens", 640, "--device", "cpu", "--json"],
        capsys,
    )
    assert code == 0, err
    got = json.loads(out)
    want = independent_forgetting(base_dir, merged_dir, eval_files, 640)
    assert got["tokens"] == want["tokens"] == 2 * 20 * (SEQ_LEN - 1)
    assert got["kl"] > 1e-3  # the adapter really changed the model
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-4), key


def test_measure_json_has_the_contract_keys_overall_and_per_domain(arch, eval_files, capsys):
    base_dir, adapter_dir, _ = arch
    code, out, err = run_cli(
        ["measure", "--base", base_dir, "--adapter", adapter_dir, "--eval-data", eval_files[0], "--eval-data", eval_files[1],
         "--seq-len", SEQ_LEN, "--max-tokens", 320, "--bootstrap", 200, "--json"],
        capsys,
    )
    assert code == 0, err
    got = json.loads(out)
    keys = {"forgetting_ce", "kl", "base_entropy", "hard_ce", "base_loss", "finetuned_loss", "tokens"}
    assert keys <= set(got) and set(got["domains"]) == {"scripture", "docs"}
    for values in [got, *got["domains"].values()]:
        assert keys <= set(values)
        assert values["forgetting_ce"] == pytest.approx(values["base_entropy"] + values["kl"])
        assert values["ci"]["kl"][0] <= values["kl"] <= values["ci"]["kl"][1]


def test_full_finetune_and_adapter_paths_agree(arch, eval_files):
    """The reference two-model path and the one-copy `disable_adapter()` path, per token."""
    base_dir, adapter_dir, merged_dir = arch
    tok = AutoTokenizer.from_pretrained(base_dir)
    blocks = load_eval_blocks(eval_files, tok, SEQ_LEN, max_tokens=320)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    ids = torch.cat(list(blocks.values()))
    with torch.no_grad():
        one_copy = token_stats(BaseSource("adapter").run(peft_model)(ids)[:, :-1].reshape(-1, len(tok)),
                               peft_model(input_ids=ids).logits[:, :-1].reshape(-1, len(tok)), ids[:, 1:].reshape(-1))
        two_models = token_stats(BaseSource("model", model=base).run(peft_model)(ids)[:, :-1].reshape(-1, len(tok)),
                                 merged(input_ids=ids).logits[:, :-1].reshape(-1, len(tok)), ids[:, 1:].reshape(-1))
    assert torch.max(torch.abs(one_copy["forgetting_ce"] - two_models["forgetting_ce"])) < 1e-5
    a = measure_forgetting(peft_model, blocks, n_bootstrap=0)
    b = measure_forgetting(merged, blocks, base=base, n_bootstrap=0)
    assert [s["forgetting_ce"] for s in a.sequences] == pytest.approx([s["forgetting_ce"] for s in b.sequences], abs=1e-5)


def test_an_unchanged_model_has_zero_forgetting(llama_dir, eval_files, capsys):
    code, out, err = run_cli(["measure", "--base", llama_dir, "--finetuned", llama_dir, "--eval-data", eval_files[0],
                              "--seq-len", SEQ_LEN, "--max-tokens", 320, "--json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert got["kl"] == 0.0 and got["forgetting_ce"] == got["base_entropy"]


def test_the_table_output_names_every_domain(llama_dir, eval_files, capsys):
    code, out, err = run_cli(["measure", "--base", llama_dir, "--finetuned", llama_dir, "--eval-data", eval_files[0],
                              "--eval-data", eval_files[1], "--seq-len", SEQ_LEN, "--max-tokens", 320, "--bootstrap", 50], capsys)
    assert code == 0, err
    assert "scripture" in out and "docs" in out and "KL" in out


# -- bad input: one line, exit 2 --------------------------------------------------------------


@pytest.fixture(scope="module")
def other_vocab_model(tmp_path_factory) -> Path:
    """A causal LM whose tokenizer has a different vocabulary."""
    tok_dir = tmp_path_factory.mktemp("other-tok")
    train_tokenizer(["completely different text " * 50, "zebra yak quokka " * 40], vocab_size=300).save_pretrained(tok_dir)
    return make_llama(tok_dir, tmp_path_factory.mktemp("other-llama"))


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A model that is not a causal LM (a ViT), next to a tokenizer."""
    from transformers import ViTConfig, ViTModel

    path = tmp_path_factory.mktemp("vit")
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=8, patch_size=4)).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("missing_base", "model not found"),
        ("missing_adapter", "adapter not found"),
        ("not_causal", "not a causal language model"),
        ("tokenizer_mismatch", "tokenizers differ"),
        ("short_eval", "shorter than one sequence"),
        ("missing_eval", "eval data file not found"),
        ("dtype", "'float8' is not one of 'float32', 'bfloat16', 'float16'"),
        ("device", "unknown device"),
        ("device_absent", "not available"),
        ("both_finetuned_and_adapter", "exactly one of"),
        ("seq_len_too_long", "exceeds the model's context"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, fragment, llama_dir, other_vocab_model, encoder_dir, eval_files, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("just a few words\n")
    base = ["--base", llama_dir]
    ft = ["--finetuned", llama_dir]
    data = ["--eval-data", eval_files[0], "--seq-len", SEQ_LEN, "--max-tokens", 320]
    args = {
        "missing_base": ["--base", tmp_path / "nope", *ft, *data],
        "missing_adapter": [*base, "--adapter", tmp_path / "no-adapter", *data],
        "not_causal": ["--base", encoder_dir, *ft, *data],
        "tokenizer_mismatch": [*base, "--finetuned", other_vocab_model, *data],
        "short_eval": [*base, *ft, "--eval-data", short, "--seq-len", SEQ_LEN],
        "missing_eval": [*base, *ft, "--eval-data", tmp_path / "absent.txt", "--seq-len", SEQ_LEN],
        "dtype": [*base, *ft, *data, "--dtype", "float8"],
        "device": [*base, *ft, *data, "--device", "toaster"],
        "device_absent": [*base, *ft, *data, "--device", "cuda:7"],
        "both_finetuned_and_adapter": [*base, *ft, "--adapter", tmp_path, *data],
        "seq_len_too_long": [*base, *ft, "--eval-data", eval_files[0], "--seq-len", 4096],
    }[case]
    code, _, err = run_cli(["measure", *args], capsys)
    assert_user_error(code, err, fragment)


def test_a_missing_required_option_is_one_line_too(capsys):
    code, _, err = run_cli(["measure", "--eval-data", "x.txt"], capsys)
    assert_user_error(code, err, "--base")


def test_bfloat16_models_are_measured_with_float_reductions_close_to_float32(arch, eval_files, capsys):
    base_dir, adapter_dir, _ = arch
    args = ["measure", "--base", base_dir, "--adapter", adapter_dir, "--eval-data", eval_files[0],
            "--seq-len", SEQ_LEN, "--max-tokens", 320, "--bootstrap", 0, "--json"]
    code, out32, err = run_cli([*args, "--dtype", "float32"], capsys)
    assert code == 0, err
    code, out16, err = run_cli([*args, "--dtype", "bfloat16"], capsys)
    assert code == 0, err
    full, half = json.loads(out32), json.loads(out16)
    assert half["kl"] >= 0
    assert half["forgetting_ce"] == pytest.approx(full["forgetting_ce"], rel=0.02)
