"""Bad input across commands, as a table: each case is one `error:` line and exit code 2,
and what was already written stays as it was (issue 16's cases, as they are fixed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import assert_user_error, run_cli
from law_helpers import write_sweep


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    from forgetscope.laws.select import fit_sweep

    directory = write_sweep(tmp_path_factory.mktemp("fitted") / "sweep", arms=("all-linear",))
    fit_sweep(directory, n_bootstrap=20)
    return directory


@pytest.fixture(scope="module")
def bert_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """An encoder checkpoint, as `BertForMaskedLM.save_pretrained` writes it, with a tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    path = tmp_path_factory.mktemp("bert")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert_tokenizer_dir(tmp_path_factory) -> Path:
    """A WordPiece (BERT-style) tokenizer: another model's vocabulary than the tiny Llama's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(["In the beginning God created the heaven and the earth."] * 20,
                            trainers.WordPieceTrainer(vocab_size=500, special_tokens=["[UNK]", "[SEP]", "[PAD]"]))
    path = tmp_path_factory.mktemp("bert-tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]").save_pretrained(path)
    return path


@pytest.fixture
def paths(tmp_path, llama_dir, eval_files, fitted, bert_dir, bert_tokenizer_dir) -> dict[str, str]:
    from peft import LoraConfig

    from law_helpers import write_sweep
    from sweep_helpers import tiny_sweep_config, write_config

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    garbage_adapter = tmp_path / "garbage-adapter"
    LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM").save_pretrained(garbage_adapter)
    (garbage_adapter / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    (tmp_path / "garbage.jsonl").write_text("this is not json\n")
    (tmp_path / "list.jsonl").write_text('[1, 2]\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    not_objects = write_sweep(tmp_path / "not-objects", arms=("all-linear",))
    with open(not_objects / "records.jsonl", "a") as f:
        f.write("[1, 2, 3]\n")
    lacking = write_sweep(tmp_path / "lacking", arms=("all-linear",))
    with open(lacking / "records.jsonl", "a") as f:
        f.write('{"point_id": "late", "step": 3}\n')
    for name, extra in {"long": {"seq_len": 256, "eval_tokens": 512, "ft_eval_tokens": 256}, "bert-base": {"base_model": str(bert_dir)},
                        "other-tokenizer": {"tokenizer": str(bert_tokenizer_dir)}}.items():
        write_config(tmp_path / f"{name}.yaml", tiny_sweep_config(llama_dir, eval_files, **extra))
    earlier = tmp_path / "earlier-run"
    earlier.mkdir()
    (earlier / "run.json").write_text('{"lora": {"rank": 99}, "train": {}}')
    (earlier / "records.jsonl").write_text('{"step": 0}\n')
    a_sweep = tmp_path / "a-sweep"
    (a_sweep / "points").mkdir(parents=True)
    (a_sweep / "config.yaml").write_text("name: x\n")
    (tmp_path / "synthetic-list.yaml").write_text("name: [a, b]\n")
    (tmp_path / "synthetic-cuda.yaml").write_text("device: cuda\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    (tmp_path / "a-dir").mkdir()
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "fits.json").write_text('{"kl": {"form": "mu')
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "fits.json").write_text("{}")
    return {"{base}": str(llama_dir), "{eval}": str(eval_files[0]), "{train}": str(eval_files[1]), "{file}": str(a_file),
            "{dir}": str(tmp_path / "a-dir"), "{fitted}": str(fitted), "{torn}": str(torn), "{empty}": str(empty),
            "{tmp}": str(tmp_path), "{bert}": str(bert_dir)}


CASES = [
    # command line (placeholders from `paths`), fragment of the one error line
    ("measure --base {base} --adapter {dir} --eval-data {eval} --bootstrap -5", "--bootstrap"),
    ("measure --base {base} --finetuned {base} --eval-data {eval} --sequences {dir}", "is a directory"),
    ("measure --base {base} --finetuned {base} --eval-data {eval} --cache-dir {file}", "is a file"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {file} --steps 1", "is a file"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {dir}/run --report-to nosuchlogger", "nosuchlogger"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {dir}/run --eval-points 1", "--eval-points"),
    ("report {fitted} --bootstrap -5", "--bootstrap"),
    ("predict {fitted} --params nan --steps 10", "--params: Input should be a finite number"),
    ("predict {fitted} --params 5000 --steps inf", "--steps: Input should be a finite number"),
    ("predict {fitted} --params 5000 --budget nan", "--budget: Input should be a finite number"),
    ("predict {torn} --params 5000 --steps 10", "not valid JSON"),
    ("predict {empty} --params 5000 --steps 10", "lacks the fits"),
    # models that are not complete causal LMs, and adapters that cannot be read
    ("measure --base {bert} --finetuned {bert} --eval-data {eval}", "is not a causal language model (it is a BertForMaskedLM)"),
    ("train --base {bert} --train-data {train} --eval-data {eval} --out {tmp}/new-run", "is not a causal language model"),
    ("eval --base {bert} --finetuned {base}", "is not a causal language model"),
    ("eval --base {tmp}/no-such-model --finetuned {base}", "model not found"),
    ("measure --base {base} --adapter {tmp}/garbage-adapter --eval-data {eval}", "cannot apply adapter"),
    # files that are not what they say
    ("sweep {tmp}/binary.yaml --out {tmp}/s", "is not a UTF-8 text file"),
    ("conjugate probe --base {base} --finetuned {base} --sentences {tmp}/binary.yaml", "is not a UTF-8 text file"),
    ("synthetic --config {tmp}/binary.yaml --out {tmp}/syn", "is not a UTF-8 text file"),
    ("measure --base {base} --finetuned {base} --eval-data {tmp}/garbage.jsonl", "line 1 is not valid JSON"),
    ("measure --base {base} --finetuned {base} --eval-data {tmp}/list.jsonl", "line 1 is a JSON list, not an object"),
    ("measure --base {base} --finetuned {base} --eval-data {tmp}/empty.jsonl", "is empty"),
    ("train --base {base} --train-data {tmp}/garbage.parquet --eval-data {eval} --out {tmp}/new-run", "is not a Parquet file"),
    ("fit {tmp}/not-objects", "is a JSON list, not a record"),
    ("fit {tmp}/lacking", "lacks forgetting_ce, ft_loss, kl, trainable_params"),
    # sweeps that would run but give nonsense
    ("sweep {tmp}/long.yaml --out {tmp}/s", "`seq_len` 256 exceeds the base model's context of 128 positions"),
    ("sweep {tmp}/bert-base.yaml --out {tmp}/s", "is not a causal language model"),
    ("sweep {tmp}/other-tokenizer.yaml --out {tmp}/s", "does not fit the base model"),
    # synthetic configs
    ("synthetic --config {tmp}/synthetic-list.yaml --out {tmp}/syn", "`name`"),
    ("synthetic --out {file}", "is a file: give a directory"),
    ("synthetic --config {tmp}/synthetic-cuda.yaml --out {tmp}/syn", "device 'cuda' is not available"),
    # results that would be overwritten
    ("train --base {base} --train-data {train} --eval-data {eval} --out {tmp}/earlier-run", "already holds an earlier run with other settings"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {tmp}/a-sweep", "already holds a sweep"),
    ("tiny pretrain --out {tmp}/a-sweep", "is not empty"),
]


@pytest.mark.parametrize("command, fragment", CASES, ids=[c[0].split()[0] + ": " + c[1] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(command, fragment, paths, capsys):
    args = [paths.get(word, word) for word in command.split()]
    args = [next((a.replace(k, v) for k, v in paths.items() if a.startswith(k)), a) for a in args]
    before = (Path(paths["{fitted}"]) / "fits.json").read_text()
    files_before = _snapshot(Path(paths["{tmp}"]))
    code, _, err = run_cli(args, capsys)
    assert_user_error(code, err, fragment)
    assert (Path(paths["{fitted}"]) / "fits.json").read_text() == before  # nothing already written changes
    assert json.loads(before)["kl"]
    assert _snapshot(Path(paths["{tmp}"])) == files_before  # and nothing is written


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_a_sweep_out_that_is_a_file_is_refused(paths, tmp_path, capsys):
    from sweep_helpers import tiny_sweep_config, write_config

    config = write_config(tmp_path / "s.yaml", tiny_sweep_config(Path(paths["{base}"]), [Path(paths["{eval}"]), Path(paths["{train}"])]))
    code, _, err = run_cli(["sweep", config, "--out", paths["{file}"]], capsys)
    assert_user_error(code, err, "is a file")
    assert Path(paths["{file}"]).read_text() == "not a directory"
