"""The shared error helpers: one line from any exception, whatever its message."""

from __future__ import annotations

import pytest

from forgetscope.errors import first_line


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("", ""),  # an exception raised with no message
        ("  \n\t\n", ""),
        ("one line", "one line"),
        ("first\nsecond\nthird", "first"),
        ("\n\n  indented first  \nsecond", "indented first"),
    ],
)
def test_first_line_is_the_first_non_blank_line_and_empty_when_there_is_none(message, expected):
    assert first_line(ValueError(message)) == expected
    assert first_line(message) == expected


def test_first_line_of_an_exception_without_arguments_lets_the_caller_name_its_type():
    exc = KeyError()
    assert (first_line(exc) or type(exc).__name__) == "KeyError"
