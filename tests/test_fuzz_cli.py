"""A fuzzer over every command: hypothesis draws option values from each option's valid and
invalid values (out of range, non-finite, empty, of the wrong type, path-like), broken input
files from a small grammar of them, and a write the operating system refuses (a full disk, a
read-only file system, no permission). Every case must end as a clean run (exit 0), or as
exactly one `error:` line with exit code 2 that left the working directory as it was.

CI runs a few examples per command, the same ones each time; for a larger search:

    FORGETSCOPE_FUZZ_EXAMPLES=200 FORGETSCOPE_FUZZ_RANDOM=1 FORGETSCOPE_FUZZ_FORK=1 pytest tests/test_fuzz_cli.py

(`FORGETSCOPE_FUZZ_FORK=1` runs each case in a forked child, so an interpreter crash is a
finding rather than the end of the session; use it on its own, not beside the whole suite,
whose earlier tests leave torch's threads in a state a fork does not survive.)

The table of the cases we thought of is `bench/bad_input.py`; this finds the ones we did not.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bad_input_specs import COMMANDS, FAULTS, WRITERS, Case, Command, build_world, run_case, run_isolated

EXAMPLES = int(os.environ.get("FORGETSCOPE_FUZZ_EXAMPLES", "4"))
RANDOM = os.environ.get("FORGETSCOPE_FUZZ_RANDOM", "") not in ("", "0")
RUN = run_isolated if os.environ.get("FORGETSCOPE_FUZZ_FORK", "") not in ("", "0") else run_case


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return build_world(tmp_path_factory.mktemp("world"))


@st.composite
def cases(draw, command: Command) -> Case:
    """A command line with up to three options changed, each to a valid or an invalid value."""
    chosen = draw(st.lists(st.sampled_from(command.options), min_size=0 if command.runs else 1, max_size=3,
                           unique_by=lambda option: option.flag))
    case = Case(command, list(command.args), [])
    for option in chosen:
        bad = not option.valid or (option.invalid and draw(st.booleans()))
        value = draw(st.sampled_from(option.invalid if bad else option.valid))
        _add(case, option, value, bad)
    if not command.runs and not case.invalid:  # a valid case of this command would run for minutes
        option = draw(st.sampled_from([o for o in command.options if o.invalid]))
        _add(case, option, draw(st.sampled_from(option.invalid)), True)
    if command.name in WRITERS and draw(st.booleans()):
        case.fault = (draw(st.sampled_from(sorted(FAULTS))), draw(st.integers(1, 4)))
    return case


def _add(case: Case, option, value: str, bad: bool) -> None:
    if option.flag.startswith("@"):
        case.files[option.flag[1:]] = value
    elif option.flag:
        case.args += [option.flag, value]
    else:
        case.args.append(value)
    if bad:
        case.invalid.append(f"{option.flag} {value}")


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_every_drawn_case_is_a_clean_run_or_one_error_line(command, world, tmp_path_factory):
    root = tmp_path_factory.mktemp(command.name.replace(" ", "-"))

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=cases(command))
    def check(case: Case) -> None:
        work = Path(tempfile.mkdtemp(dir=root))
        outcome, err = RUN(case, world, work)
        assert outcome == "clean", f"{case.describe()}\n-> {outcome}\n{err[-3000:]}"

    check()
