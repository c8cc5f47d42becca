"""The documentation's code runs as written, on the tiny default.

Every ```bash and ```python block of the guides, topics and reference pages is run, in
order, in a scratch folder that stands where a clone's root would (`bench/` and `examples/`
are links to the repository's), except a block right after a comment
`<!-- not-run: REASON -->` (a GPU, a cluster, the network, minutes of CPU): the reason is
required. A ```yaml block right after `<!-- file: NAME -->` is written to NAME first; any
other ```yaml block must say why it is not run. Nothing is substituted: the guides use tiny
budgets themselves (`--steps 20`, 1,024 eval tokens), so what a reader copies is what ran.

Getting started runs first and its folder (the tiny base and its text as files, and a first
adapter in `runs/r8`) is copied for every other page, as a reader who followed it would
have it. `forgetscope` commands run in-process (as the shell would run the entry point);
the few other shell commands a page may use are listed in `SHELL`.

The README's tour is not run again: each of its commands must be one that a guide runs.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_helpers import run_cli

# One torch thread, as a sweep point of the guides' has: on a shared machine, idle threads of
# a tiny model's matmuls spin and cost more than they save.
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FIRST = "guides/getting-started.md"
# Pages whose code is run: everything but the measured results and the generated API pages.
PAGES = [FIRST] + sorted(
    str(p.relative_to(DOCS)) for folder in ("guides", "topics", "reference") for p in (DOCS / folder).glob("*.md")
    if str(p.relative_to(DOCS)) != FIRST
)
SHELL = {"cp", "mkdir", "ls", "cat"}  # run as subprocesses; anything else needs a not-run marker
MARKER = re.compile(r"<!--\s*(not-run|file):\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None = None  # "not-run" or "file"
    argument: str = ""  # the reason, or the file name

    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced blocks of a page, each with the marker on the last non-blank line before it."""
    lines = (DOCS / page).read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.fullmatch(before.strip())
        found.append(Block(page, i + 1, opening.group(1), "\n".join(lines[i + 1:end]),
                           marker.group(1) if marker else None, marker.group(2) if marker else ""))
        i = end + 1
    return found


def commands(code: str) -> list[str]:
    """A bash block's commands: continuation lines joined, blank and comment-only lines dropped."""
    joined = code.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def normalized(command: str) -> str:
    return " ".join(shlex.split(command, comments=True))


def run_bash(block: Block, workspace: Path, capsys) -> None:
    for command in commands(block.code):
        assert not re.search(r"[|&;<>`$]", command.split("#")[0]), \
            f"{block.where()}: pipes, redirections and variables are not run here; mark the block not-run: {command}"
        argv = shlex.split(command, comments=True)
        if argv[0] == "forgetscope":
            code, out, err = run_cli(argv[1:], capsys)
            assert code == 0, f"{block.where()}: `{command}` exited {code}\n{out[-2000:]}\n{err[-4000:]}"
        elif argv[0] in SHELL:
            done = subprocess.run(argv, cwd=workspace, capture_output=True, text=True)
            assert done.returncode == 0, f"{block.where()}: `{command}` failed: {done.stderr}"
        else:
            pytest.fail(f"{block.where()}: `{argv[0]}` is not run by this test; mark the block <!-- not-run: why -->")


def run_page(page: str, workspace: Path, capsys) -> None:
    namespace: dict = {"__name__": "__main__"}
    for block in blocks(page):
        if block.lang not in ("bash", "python", "yaml"):
            continue  # output and other text
        if block.marker == "not-run":
            assert block.argument, f"{block.where()}: a not-run block says why"
            continue
        if block.lang == "yaml":
            assert block.marker == "file" and block.argument, f"{block.where()}: a yaml block is a <!-- file: NAME --> or not-run"
            (workspace / block.argument).write_text(block.code + "\n")
        elif block.lang == "python":
            exec(compile(block.code, block.where(), "exec"), namespace)
        else:
            run_bash(block, workspace, capsys)


def workspace_at(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in ("bench", "examples"):
        (path / name).symlink_to(ROOT / name, target_is_directory=True)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("forgetscope-cache")


@pytest.fixture
def in_cache(cache, monkeypatch):
    monkeypatch.setenv("FORGETSCOPE_CACHE", str(cache))


@pytest.fixture(scope="module")
def started(tmp_path_factory, cache, one_thread) -> dict:
    """Getting started, run once: its folder, or the failure to report."""
    workspace = workspace_at(tmp_path_factory.mktemp("docs") / "started")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workspace)
        mp.setenv("FORGETSCOPE_CACHE", str(cache))
        capture = _Capture()
        try:
            run_page(FIRST, workspace, capture)
        except BaseException as exc:  # noqa: BLE001 - reported by the test that needs it
            return {"workspace": workspace, "error": exc}
    return {"workspace": workspace, "error": None}


class _Capture:
    """What run_cli needs of capsys, for the module-scoped fixture (output is not checked)."""

    def readouterr(self):
        return _Output()


@dataclass
class _Output:
    out: str = ""
    err: str = ""


@pytest.mark.slow
def test_getting_started_runs(started):
    if started["error"] is not None:
        raise started["error"]
    workspace = started["workspace"]
    for name in ("base/config.json", "code.jsonl", "code-val.jsonl", "scripture.jsonl", "docs.jsonl",
                 "runs/r8/records.jsonl", "runs/r8/adapter/adapter_config.json"):
        assert (workspace / name).is_file(), name


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if p != FIRST])
def test_the_page_runs(page, started, tmp_path, monkeypatch, capsys, in_cache):
    if not any(b.lang in ("bash", "python") and b.marker is None for b in blocks(page)):
        pytest.skip(f"docs/{page} has no runnable code")
    if started["error"] is not None:
        pytest.fail(f"getting started failed, and docs/{page} starts from its folder: {started['error']}")
    workspace = tmp_path / "ws"
    shutil.copytree(started["workspace"], workspace, symlinks=True)
    monkeypatch.chdir(workspace)
    run_page(page, workspace, capsys)


def test_every_code_block_is_run_or_says_why_not():
    for page in PAGES:
        for block in blocks(page):
            if block.marker == "not-run":
                assert block.argument, f"{block.where()}: say why"
            if block.lang == "yaml":
                assert block.marker in ("file", "not-run"), f"{block.where()}: a yaml block is a file or not-run"
            if block.lang == "bash" and block.marker is None:
                for command in commands(block.code):
                    assert shlex.split(command, comments=True)[0] in SHELL | {"forgetscope"}, f"{block.where()}: {command}"


def test_the_set_up_lines_are_the_readmes():
    """Getting started repeats the README's two set-up lines (which CI runs: tests/test_readme.py)."""
    readme = re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)[:2]
    install = next(b for b in blocks(FIRST) if b.lang == "bash" and "pip install" in b.code)
    assert install.code.splitlines() == readme


def test_the_readmes_tour_is_what_the_guides_run():
    readme = (ROOT / "README.md").read_text()
    tour = readme[readme.index("## A 30-second tour"):readme.index("\n## ", readme.index("## A 30-second tour") + 1)]
    tour_commands = [c for block in re.findall(r"```bash\n(.+?)\n```", tour, flags=re.S) for c in commands(block)]
    assert len(tour_commands) >= 6
    run = {normalized(c) for page in PAGES for b in blocks(page) if b.lang == "bash" and b.marker is None for c in commands(b.code)}
    for command in tour_commands:
        assert normalized(command) in run, f"the README's tour runs `{command}`, which no guide runs as written"
    for name in ("measure", "train", "sweep", "fit", "predict", "mitigate"):
        assert any(c.startswith(f"forgetscope {name} ") for c in tour_commands), name
