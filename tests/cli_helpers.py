"""Run the `forgetscope` entry point in-process, the way a shell would see it."""

from __future__ import annotations

import sys

import pytest

from forgetscope.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """`(exit code, stdout, stderr)` of `forgetscope ARGS...`."""
    capsys.readouterr()
    old_argv = sys.argv
    sys.argv = ["forgetscope", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_user_error(code: int, err: str, fragment: str) -> None:
    """Exit 2 and exactly one line `error: ...` naming the problem, no traceback."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


__all__ = ["run_cli", "assert_user_error", "pytest"]
