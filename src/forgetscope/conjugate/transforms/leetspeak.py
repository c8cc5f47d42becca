"""Leetspeak, written by hand: a dozen lines of string rules that no library we depend on ships."""

from __future__ import annotations

import re

from forgetscope.conjugate.transforms import TRANSFORMS, without_argument

_LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
_UNLEET = {v: k for k, v in _LEET.items()}


class Leetspeak:
    """Letters to look-alike digits, both cases: "Tests pass" -> "737575 p455".

    The inverse maps those digits back to lower-case letters. A model's answer may be in
    leetspeak or in plain text with numbers, so the inverse first looks at which: in a text
    whose words (those with a letter) mostly mix letters and those digits, it is leetspeak and
    every such digit is mapped back ("1 c4nn07" -> "i cannot"); otherwise only digits inside
    words are ("The answer is 70" keeps its 70). It is lossy: the case of the six letters is
    gone, and in a leetspeak text a number comes back as letters. On lower-case text whose
    words each hold one of the six letters, and one word at least another letter, it is exact.
    """

    name = "leetspeak"

    def forward(self, text: str) -> str:
        return "".join(_LEET.get(c.lower(), c) for c in text)

    def inverse(self, text: str) -> str:
        tokens = _ALNUM.findall(text)
        worded = [t for t in tokens if any(c.isalpha() for c in t)]
        mixed = [t for t in worded if any(c in _UNLEET for c in t)]
        in_leetspeak = bool(worded) and len(mixed) >= len(worded) / 2

        def word(match: re.Match) -> str:
            token = match.group(0)
            if token.isdigit() and not in_leetspeak:
                return token  # a number in a plain answer
            return "".join(_UNLEET.get(c, c) for c in token)

        return _ALNUM.sub(word, text)


_ALNUM = re.compile(r"[A-Za-z0-9]+")


TRANSFORMS.register("leetspeak", without_argument(Leetspeak))
