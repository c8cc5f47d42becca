"""The one exception type that means "the user gave us something we cannot use".

The CLI turns it into a single line `error: ...` on stderr and exit code 2; anything else
is a bug and exits 1 with its traceback.
"""


class UserInputError(Exception):
    """Bad input: a wrong path, an unusable model, a malformed setting."""
