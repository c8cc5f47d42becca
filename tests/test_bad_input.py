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


@pytest.fixture
def paths(tmp_path, llama_dir, eval_files, fitted) -> dict[str, str]:
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
            "{dir}": str(tmp_path / "a-dir"), "{fitted}": str(fitted), "{torn}": str(torn), "{empty}": str(empty)}


CASES = [
    # command line (placeholders from `paths`), fragment of the one error line
    ("measure --base {base} --adapter {dir} --eval-data {eval} --bootstrap -5", "--bootstrap"),
    ("measure --base {base} --finetuned {base} --eval-data {eval} --sequences {dir}", "is a directory"),
    ("measure --base {base} --finetuned {base} --eval-data {eval} --cache-dir {file}", "is a file"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {file} --steps 1", "is a file"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {dir}/run --report-to nosuchlogger", "nosuchlogger"),
    ("train --base {base} --train-data {train} --eval-data {eval} --out {dir}/run --eval-points 1", "eval_points"),
    ("report {fitted} --bootstrap -5", "--bootstrap"),
    ("predict {fitted} --params nan --steps 10", "--params must be a finite number"),
    ("predict {fitted} --params 5000 --steps inf", "--steps must be a finite number"),
    ("predict {fitted} --params 5000 --budget nan", "--budget must be a finite number"),
    ("predict {torn} --params 5000 --steps 10", "not valid JSON"),
    ("predict {empty} --params 5000 --steps 10", "lacks the fits"),
]


@pytest.mark.parametrize("command, fragment", CASES, ids=[c[0].split()[0] + ": " + c[1] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(command, fragment, paths, capsys):
    args = [paths.get(word, word) for word in command.split()]
    args = [next((a.replace(k, v) for k, v in paths.items() if a.startswith(k)), a) for a in args]
    before = (Path(paths["{fitted}"]) / "fits.json").read_text()
    code, _, err = run_cli(args, capsys)
    assert_user_error(code, err, fragment)
    assert (Path(paths["{fitted}"]) / "fits.json").read_text() == before  # nothing already written changes
    assert json.loads(before)["kl"]


def test_a_sweep_out_that_is_a_file_is_refused(paths, tmp_path, capsys):
    from sweep_helpers import tiny_sweep_config, write_config

    config = write_config(tmp_path / "s.yaml", tiny_sweep_config(Path(paths["{base}"]), [Path(paths["{eval}"]), Path(paths["{train}"])]))
    code, _, err = run_cli(["sweep", config, "--out", paths["{file}"]], capsys)
    assert_user_error(code, err, "is a file")
    assert Path(paths["{file}"]).read_text() == "not a directory"
