"""The README is the front door: its set-up commands are the ones CI runs, and its links lead
somewhere. Its tour's commands are run by tests/test_docs.py, through the guides that hold them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def pins() -> dict[str, str]:
    """constraints.txt as {normalised name: version}; every line is an exact pin."""
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def test_the_readme_test_command_is_what_ci_runs():
    test_command = next(c for c in readme_commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.replace(" -c constraints.txt", " -q -c constraints.txt") in ci


def test_the_readme_demo_command_installs_with_the_pinned_constraints_and_runs_the_demo():
    demo_command = readme_commands()[0]
    assert "-c constraints.txt" in demo_command and demo_command.endswith("forgetscope demo")


def test_the_pins_satisfy_the_ranges_of_pyproject():
    """constraints.txt pins what pyproject.toml's ranges admit, torch among them, so the install
    line resolves; the pins themselves are read, not repeated here."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pinned = pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    assert "torch" in pinned
    for text in wanted:
        requirement = Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pinned, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} is outside {text}"


def test_the_readmes_links_lead_to_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", readme) if not re.match(r"[a-z]+:", t)]
    assert any(t.startswith("docs/guides/") for t in targets) and any(t.startswith("docs/results/") for t in targets)
    for target in targets:
        assert (ROOT / target.split("#")[0]).exists(), target


def test_the_readme_stays_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
