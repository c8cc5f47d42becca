"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a single line `error: ...` on stderr and exit code 2; anything else
is a bug and exits 1 with a one-line message (`forgetscope.cli.main`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class UserInputError(Exception):
    """Bad input: a wrong path, an unusable model, a malformed setting."""


UNNAMED = ("", "-")
"""Tags of a union's branches that error paths leave out (`SweepConfig.grid`'s one grid or list)."""


def describe(error: ValidationError, source: str = "", prefix: str = "") -> str:
    """The first error of `error` on one line: `` source: `field.path`: what is wrong ``."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in (prefix, *first["loc"]) if part not in UNNAMED)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source + ': ' if source else ''}{f'`{where}`: ' if where else ''}{message}{more}"


def first_line(message: object) -> str:
    """The first non-blank line of `message` (an exception, a warning, any text), stripped;
    `""` when it has none, so `first_line(exc) or type(exc).__name__` always names something."""
    return next((line.strip() for line in str(message).splitlines() if line.strip()), "")
