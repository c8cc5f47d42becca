"""The README is the front door: its set-up commands are the ones CI runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_test_command_is_what_ci_runs():
    test_command = next(c for c in readme_commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.replace(" -c constraints.txt", " -q -c constraints.txt") in ci


def test_the_readme_demo_command_installs_with_the_pinned_constraints_and_runs_the_demo():
    demo_command = readme_commands()[0]
    assert "-c constraints.txt" in demo_command and demo_command.endswith("forgetscope demo")
    pins = (ROOT / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in pins


def test_the_readme_python_example_runs(llama_dir, eval_files, tmp_path, monkeypatch):
    """The README's Python API snippet, with its paths pointed at a tiny model and adapter."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from forgetscope.train import LoraSettings

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir), LoraSettings(rank=2).to_peft()).save_pretrained(adapter)
    (tmp_path / "wiki.txt").write_text(eval_files[0].read_text())
    snippet = next(c for c in re.findall(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
                   if "measure_forgetting" in c)
    snippet = snippet.replace('"./base"', repr(str(llama_dir))).replace('"./adapter"', repr(str(adapter)))
    snippet = snippet.replace("seq_len=512", "seq_len=32")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})


def test_the_readme_mitigation_example_runs_after_it(llama_dir, eval_files, tmp_path, monkeypatch):
    """The README's post-hoc mitigation snippet, run on the pair and blocks of the measure snippet."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from forgetscope.train import LoraSettings

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(llama_dir), LoraSettings(rank=2).to_peft()).save_pretrained(adapter)
    (tmp_path / "wiki.txt").write_text(eval_files[0].read_text())
    (tmp_path / "code-val.jsonl").write_text(eval_files[1].read_text())
    snippets = re.findall(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    measure = next(c for c in snippets if "measure_forgetting" in c)
    mitigate = next(c for c in snippets if "mitigation_grid" in c)
    code = (measure + "\n" + mitigate).replace('"./base"', repr(str(llama_dir))).replace('"./adapter"', repr(str(adapter)))
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("seq_len=512", "seq_len=32"), "README.md", "exec"), {})
    assert (tmp_path / "mitigated-adapter" / "adapter_config.json").is_file()


def test_the_readme_train_command_runs_as_written(llama_dir, eval_files, tmp_path, monkeypatch, capsys):
    """`forgetscope train ... --target-modules all-linear --layers 0,1,2,3` from the README, on
    the tests' tiny model; only the budget is cut (later options win)."""
    import shlex

    from transformers import AutoTokenizer

    from cli_helpers import run_cli
    from model_helpers import llama, save_with_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    four_blocks = save_with_tokenizer(llama(len(tokenizer), layers=4), tokenizer, tmp_path / "base")  # the README adapts blocks 0-3
    command = next(c for c in readme_commands() if c.startswith("forgetscope train"))
    args = shlex.split(command.replace("\\\n", " "))[1:]
    args = [{"./base": str(four_blocks), "my_task.jsonl": str(eval_files[1]), "wiki.txt": str(eval_files[0])}.get(a, a) for a in args]
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli([*args, "--steps", "2", "--seq-len", "32", "--eval-points", "2", "--eval-tokens", "128", "--json"], capsys)
    assert code == 0, err
    adapter = json.loads((tmp_path / "runs" / "r8" / "adapter" / "adapter_config.json").read_text())
    assert adapter["layers_to_transform"] == [0, 1, 2, 3] and "q_proj" in adapter["target_modules"] and "down_proj" in adapter["target_modules"]
