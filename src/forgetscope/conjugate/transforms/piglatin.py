"""Pig Latin, written by hand: a dozen lines of string rules that no library we depend on ships."""

from __future__ import annotations

import re

from forgetscope.conjugate.transforms import TRANSFORMS, without_argument

_WORD = re.compile(r"[A-Za-z]+")
_VOWELS = set("aeiouAEIOU")


def _split_onset(word: str) -> tuple[str, str]:
    """(leading consonants, rest); "y" after the first letter counts as a vowel ("rhythm")."""
    for i, c in enumerate(word):
        if c in _VOWELS or (i > 0 and c in "yY"):
            return word[:i], word[i:]
    return word, ""


class PigLatin:
    """Pig Latin on every run of letters; everything else (digits, punctuation, space) kept.

    Classic (`hyphen=False`): the leading consonants move to the end followed by "ay", and a
    word that starts with a vowel gets "way": "Hello world, I am" -> "Ellohay orldway, Iway
    amway" (a capital first letter stays first). Its inverse is a guess, since "ellohay"
    could come from "hello" or "ohell" and "away" from "a" or "wa": it strips "way" from
    vowel-initial words and moves one consonant back otherwise, so "Iway annotcay" -> "I
    cannot" and "orrysay" -> "sorry" (enough for a refusal judge), but "erethay" -> "heret".

    Hyphenated (`hyphen=True`): "hello" -> "ello-hay", "apple" -> "apple-ay", "Hello" ->
    "ello-Hay" (case kept where it was). The hyphen marks the split, so the inverse is exact
    on any text in which no "-" touches a letter.
    """

    def __init__(self, hyphen: bool = False):
        self.hyphen = hyphen
        self.name = "piglatin-hyphen" if hyphen else "piglatin"

    def _word(self, match: re.Match) -> str:
        word = match.group(0)
        onset, rest = _split_onset(word)
        if self.hyphen:
            return f"{rest}-{onset}ay"
        if not onset:
            return word + "way"
        out = rest + onset.lower() + "ay"
        if word[0].isupper() and rest:
            out = out[0].upper() + out[1:]
        return out

    def forward(self, text: str) -> str:
        return _WORD.sub(self._word, text)

    def inverse(self, text: str) -> str:
        if self.hyphen:
            return re.sub(r"([A-Za-z]*)-([A-Za-z]*)ay", lambda m: m.group(2) + m.group(1), text)
        return _WORD.sub(self._unclassic, text)

    @staticmethod
    def _unclassic(match: re.Match) -> str:
        word = match.group(0)
        if len(word) < 3 or not word.lower().endswith("ay"):
            return word
        stem = word[:-2]
        if stem[-1] in "wW" and stem[0] in _VOWELS:  # "Iway" -> "I", "appleway" -> "apple"
            return stem[:-1]
        if len(stem) < 2 or stem[-1] in _VOWELS:
            return word
        # Guess a one-letter onset, the commonest case ("orrysay" -> "sorry").
        out = stem[-1] + stem[:-1]
        if stem[0].isupper():
            out = out[0].upper() + out[1].lower() + out[2:]
        return out


TRANSFORMS.register("piglatin", without_argument(PigLatin))
TRANSFORMS.register("piglatin-hyphen", without_argument(lambda: PigLatin(hyphen=True)))
