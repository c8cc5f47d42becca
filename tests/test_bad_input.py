"""Bad input across commands, as a table: each case is one `error:` line and exit code 2,
and what was already written stays as it was (issue 16's cases, as they are fixed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import assert_user_error, run_cli
from forgetscope.errors import UserInputError
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


# -- round three: the classes (issue 26); the fuzzer (`test_fuzz_cli.py`) draws the rest --------

ROUND_THREE = [
    ("mitigate --batch-size 0", "--batch-size"),
    ("mitigate --scales none --intruder-scales none --base {base}", "nothing to measure"),
    ("mitigate --sweep {fitted} --point ../../evil", "is not a plain name"),
    ("mitigate --sweep {fitted} --point /etc", "is not a plain name"),
    ("mitigate --base {base} --adapter {dir} --eval-data {eval} --ft-eval-data {train} --out {tmp}/m.png", "where the plot goes"),
    ("measure --base {base} --finetuned {base} --eval-data {eval} --seed -1", "--seed"),
    ("measure --base {base} --finetuned {base} --eval-data {eval} --bootstrap 1000000000", "--bootstrap"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {tmp}/r --learning-rate inf", "--learning-rate"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {tmp}/r --lora-alpha inf", "--lora-alpha"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {tmp}/r --kl-weight inf", "--kl-weight"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {tmp}/r --scheduler nosuch", "unknown scheduler"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {tmp}/r --target-modules embed_tokens", "P (the non-embedding parameters trained) would be 0"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {tmp}/r --target-modules lm_head", "would be 0"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {tmp}/r --target-modules q_proj,v_prj", "'v_prj' matches no module"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {tmp}/r --layers 0,7", "layer 7 does not exist"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {tmp}/r --rank 64", "exceeds"),
    ("train --base {base} --train-data {tmp}/missing.txt --eval-data {eval} --out {tmp}/r", "--train-data file not found"),
    ("measure --base {base} --finetuned {base} --eval-data {tmp}/number-text.jsonl", "record 1's 'text' is a int"),
    ("measure --base {base} --finetuned {base} --eval-data {tmp}/mixed-text.jsonl", "record 2's 'text' is a int"),
    ("measure --base {base} --finetuned {base} --eval-data {tmp}/bare.json", "holds a bare JSON value"),
    ("measure --base {base} --finetuned {base} --eval-data {tmp}/int.parquet", "record 1's 'text' is a int"),
    ("measure --base {base} --finetuned {base} --eval-data {tmp}/loop", "Too many levels of symbolic links"),
    ("measure --base {base} --finetuned {base} --eval-data {eval} --sequences {file}/below", "is under"),
    ("measure --base {tmp}/evil --finetuned {base} --eval-data {eval}", "holds objects other than tensors"),
    ("measure --base {tmp}/corrupt --finetuned {base} --eval-data {eval}", "not a readable safetensors file"),
    ("fit {tmp}/negative-kl", "is negative"),
    ("fit {tmp}/duplicated", "holds two records of point"),
    ("predict {tmp}/markup --params 5000 --steps 10", "`claims.0.verdict`"),
    ("predict {tmp}/params-as-list --params 5000 --steps 10", "`kl.params`"),
    ("report {tmp}/other-fits", "was fitted on other records"),
    ("synthetic --config {tmp}/empty.yaml --out {tmp}/syn", "is empty"),
    ("eval --base {base} --finetuned {base} --judge os:getcwd", "--judge and --harmful are the safety suite's"),
    ("conjugate probe --base {base} --finetuned {base} --judge json:dumps", "must take (instruction, response)"),
]


@pytest.fixture
def round_three(paths, fitted, tmp_path) -> dict[str, str]:
    """The broken files of ROUND_THREE, beside `paths`' ones."""
    import shutil

    import pandas as pd
    import torch

    tmp = Path(paths["{tmp}"])
    (tmp / "number-text.jsonl").write_text('{"text": 5}\n')
    (tmp / "mixed-text.jsonl").write_text('{"text": "In the beginning God created the heaven and the earth."}\n{"text": 6}\n')
    (tmp / "bare.json").write_text("5\n")
    pd.DataFrame({"text": [1, 2]}).to_parquet(tmp / "int.parquet")
    (tmp / "loop").symlink_to(tmp / "loop")
    (tmp / "empty.yaml").write_text("")
    evil = tmp / "evil"
    shutil.copytree(paths["{base}"], evil)
    (evil / "model.safetensors").unlink()
    torch.save({"weight": torch.zeros(1), "payload": _RunsCode()}, evil / "pytorch_model.bin")
    shutil.copytree(paths["{base}"], tmp / "corrupt")
    (tmp / "corrupt" / "model.safetensors").write_bytes(b"garbage")
    write_sweep(tmp / "negative-kl", arms=("all-linear",), ranks=(1, 2))
    with open(tmp / "negative-kl" / "records.jsonl", "a") as f:
        f.write('{"point_id": "z", "step": 3, "trainable_params": 10, "kl": -0.5, "forgetting_ce": 1.0, "ft_loss": 2.0}\n')
    duplicated = write_sweep(tmp / "duplicated", arms=("all-linear",), ranks=(1, 2)) / "records.jsonl"
    duplicated.write_text(duplicated.read_text() * 2)
    for name, patch in {"markup": ("claims", [{"claim": "x", "verdict": "<script>alert(1)</script>", "evidence": "y"}]),
                        "params-as-list": ("kl", None)}.items():
        shutil.copytree(fitted, tmp / name)
        fits = json.loads((fitted / "fits.json").read_text())
        if name == "params-as-list":
            fits["kl"]["params"] = [1, 2]
        else:
            fits[patch[0]] = patch[1]
        (tmp / name / "fits.json").write_text(json.dumps(fits))
    other = write_sweep(tmp / "other-fits", arms=("all-linear",), ranks=(1, 2, 4), seed=5)
    shutil.copyfile(fitted / "fits.json", other / "fits.json")
    return paths


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


@pytest.mark.parametrize("command, fragment", ROUND_THREE, ids=[c[0].split()[0] + ": " + c[1] for c in ROUND_THREE])
def test_round_three_bad_input_is_one_line_and_exit_2(command, fragment, round_three, capsys):
    test_bad_input_is_one_line_and_exit_2(command, fragment, round_three, capsys)


def test_an_error_of_the_file_system_is_one_line_and_leaves_no_scratch_file(paths, monkeypatch, tmp_path, capsys):
    import builtins
    import errno
    import os

    real_open = builtins.open
    out = tmp_path / "out"
    out.mkdir()

    def read_only(file, mode="r", *args, **kwargs):
        if "w" in mode and str(file).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only)
    code, _, err = run_cli(["measure", "--base", paths["{base}"], "--finetuned", paths["{base}"], "--eval-data", paths["{eval}"],
                            "--sequences", out / "seq.jsonl", "--bootstrap", "0"], capsys)
    assert_user_error(code, err, "Read-only file system")
    assert list(out.iterdir()) == []


def test_a_bug_is_one_line_exit_1_with_the_traceback_in_a_log(fitted, monkeypatch, capsys):
    import forgetscope.laws.select

    def broken(*args, **kwargs):
        raise RuntimeError("something inside went wrong")

    monkeypatch.setattr(forgetscope.laws.select, "fit_sweep", broken)
    code, _, err = run_cli(["fit", fitted], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unexpected RuntimeError: something inside went wrong"), err
    log = lines[0].split("the traceback is in ")[1].split(",")[0]
    assert "Traceback" in Path(log).read_text() and "something inside went wrong" in Path(log).read_text()


# -- security and crash-safety holes ---------------------------------------------------------


@pytest.mark.parametrize("change", [{"name": "../../escaped"}, {"name": "/tmp/escaped-absolute"},
                                    {"grid": {"rank": [1], "target_modules": [["../../../../escaped"]]}}])
def test_a_name_that_would_escape_the_sweep_directory_is_refused(change, paths, tmp_path, monkeypatch, capsys):
    from sweep_helpers import tiny_sweep_config, write_config

    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    config = write_config(work / "s.yaml", tiny_sweep_config(Path(paths["{base}"]), [Path(paths["{eval}"]), Path(paths["{train}"])],
                                                             **change))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run_cli(["sweep", config] + (["--out", work / "s"] if "grid" in change else []), capsys)
    assert_user_error(code, err, "name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/escaped-absolute").exists()


def test_the_submitit_job_folder_holds_no_pickle_of_ours(tmp_path):
    """A replaced inputs file cannot run code: it is safetensors, which loading never executes."""
    import torch
    from safetensors import SafetensorError

    from forgetscope.base_cache import BasePredictions
    from forgetscope.sweep.executors.submitit import _run_job
    from forgetscope.sweep.prepare import SweepInputs, load_inputs, save_inputs

    inputs = SweepInputs("base", "tok", torch.arange(12).view(3, 4), torch.arange(4).view(1, 4), {"docs": torch.ones(2, 4, dtype=torch.long)},
                         BasePredictions({"docs": torch.rand(2, 4, 3)}, "key"), None)
    path = tmp_path / "inputs.safetensors"
    save_inputs(inputs, path)
    back = load_inputs(path)
    assert torch.equal(back.train_blocks, inputs.train_blocks) and torch.equal(back.eval_blocks["docs"], inputs.eval_blocks["docs"])
    assert torch.equal(back.base_predictions.hidden["docs"], inputs.base_predictions.hidden["docs"]) and back.base_predictions.key == "key"
    marker = tmp_path / "ran"
    torch.save({"payload": _TouchesMarker(str(marker))}, path)  # what an attacker would put there
    with pytest.raises(SafetensorError):
        _run_job({}, None, str(path), str(tmp_path / "records.jsonl"), None)
    assert not marker.exists()


class _TouchesMarker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_crafted_verdict_never_reaches_the_report(fitted, tmp_path, capsys):
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(fitted, sweep)
    fits = json.loads((sweep / "fits.json").read_text())
    fits["claims"] = [{"claim": "x", "verdict": "<script>alert(1)</script>", "evidence": "y"}]
    (sweep / "fits.json").write_text(json.dumps(fits))
    code, _, err = run_cli(["report", sweep], capsys)
    assert_user_error(code, err, "`claims.0.verdict`")
    assert not (sweep / "report.html").exists() and not list(sweep.glob("*.png"))


def test_a_sweep_killed_during_its_first_config_write_starts_again(tmp_path):
    from forgetscope.sweepdir import SweepStore

    out = tmp_path / "sweep"
    out.mkdir()
    (out / ".config.yaml.4242.tmp").write_text("name: half-writ")  # a scratch file of the killed writer
    (out / ".lock").write_text("4242\n")
    with SweepStore(out, {"name": "x"}) as store:
        assert store.finished() == set()
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml", "points", "records.jsonl"]


def test_a_sweep_refused_for_its_data_writes_no_directory(paths, tmp_path, capsys):
    from sweep_helpers import tiny_sweep_config, write_config

    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    config = write_config(tmp_path / "s.yaml", tiny_sweep_config(Path(paths["{base}"]), [Path(paths["{eval}"]), binary]))
    code, _, err = run_cli(["sweep", config, "--out", tmp_path / "out"], capsys)
    assert_user_error(code, err, "not UTF-8 text")
    assert not (tmp_path / "out").exists()


def test_a_sweep_resumed_on_changed_data_is_refused(tmp_path):
    from forgetscope.sweepdir import SweepStore

    with SweepStore(tmp_path / "s", {"name": "x"}) as store:
        store.check_data("aaa")
    with SweepStore(tmp_path / "s", {"name": "x"}) as store:
        store.check_data("aaa")  # the same text: fine
        with pytest.raises(UserInputError, match="measured on other text"):
            store.check_data("bbb")


def test_fit_reads_records_with_crlf_line_ends_as_it_reads_lf(tmp_path):
    from forgetscope.laws.select import fit_sweep

    lf = write_sweep(tmp_path / "lf", arms=("all-linear",), ranks=(1, 2, 4))
    crlf = write_sweep(tmp_path / "crlf", arms=("all-linear",), ranks=(1, 2, 4))
    (crlf / "records.jsonl").write_bytes((crlf / "records.jsonl").read_bytes().replace(b"\n", b"\r\n"))
    assert fit_sweep(crlf, n_bootstrap=5)["kl"]["params"] == fit_sweep(lf, n_bootstrap=5)["kl"]["params"]
