"""Prompt transforms: the "other languages" a conjugate prompt is written in.

A transform is anything with a `name`, a `forward(text) -> text` and, where one exists, an
`inverse(text) -> text` (used to bring a model's answer back, e.g. to judge a refusal);
`inverse` is `None` on transforms that have none. Specs name them on the command line:

    plain                      the identity
    leetspeak                  a->4 e->3 i->1 o->0 s->5 t->7 (inverse lossy, see `Leetspeak`)
    piglatin                   classic Pig Latin, "hello" -> "ellohay" (inverse lossy)
    piglatin-hyphen            "hello" -> "ello-hay", "apple" -> "apple-ay" (inverse exact)
    translate:MODEL[:BACK]     a Hugging Face translation model, BACK translating outputs back
    parallel:SRC,TGT           user-provided parallel sentence files, one sentence a line
    NAME                       anything registered with `register_transform`

Leetspeak and Pig Latin are written by hand: they are a dozen lines of string rules that no
library we depend on ships.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from forgetscope.errors import UserInputError
from forgetscope.files import read_text_file


@runtime_checkable
class Transform(Protocol):
    """What a prompt transform provides; `inverse` is `None` where there is none."""

    name: str

    def forward(self, text: str) -> str: ...

    inverse: Callable[[str], str] | None


class Plain:
    """The identity: the prompt as it is."""

    name = "plain"

    def forward(self, text: str) -> str:
        return text

    def inverse(self, text: str) -> str:
        return text


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


class TranslationModel:
    """A Hugging Face sequence-to-sequence translation model (Marian, T5, NLLB, ...).

    `forward` translates with `model_id`, `inverse` with `back_model_id` (None without one).
    Loaded with `AutoTokenizer` / `AutoModelForSeq2SeqLM` and decoded greedily, one line at a
    time (newlines and blank lines are kept, so a multi-line prompt keeps its layout).
    `source_prefix` is prepended to each line, as T5-style models expect
    ("translate English to German: ").
    """

    def __init__(self, model_id: str, back_model_id: str | None = None, max_new_tokens: int = 128,
                 source_prefix: str = "", back_prefix: str = ""):
        self.name = f"translate:{model_id}" + (f":{back_model_id}" if back_model_id else "")
        self.max_new_tokens = max_new_tokens
        self._forward = _load_seq2seq(model_id), source_prefix
        self._back = (_load_seq2seq(back_model_id), back_prefix) if back_model_id else None
        if self._back is None:
            self.inverse = None

    def forward(self, text: str) -> str:
        return self._translate(text, *self._forward)

    def inverse(self, text: str) -> str:  # replaced by None in __init__ without a back model
        return self._translate(text, *self._back)

    def _translate(self, text: str, loaded, prefix: str) -> str:
        import torch

        tokenizer, model = loaded
        lines = []
        for line in text.split("\n"):
            if not line.strip():
                lines.append(line)
                continue
            inputs = tokenizer(prefix + line, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
            lines.append(tokenizer.decode(out[0], skip_special_tokens=True).strip())
        return "\n".join(lines)


def _load_seq2seq(model_id: str):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from forgetscope.models import check_location

    check_location(model_id, "translation model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_id).eval()
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"cannot load translation model {model_id}: {first}") from exc
    return tokenizer, model


class ParallelFiles:
    """A lookup table from user-provided parallel files (line i of SRC translates to line i of TGT).

    `forward` maps each line of a text through the table, `inverse` maps back; a line not
    in the table is an error (the files must cover every sentence the probes use), except
    blank lines, which are kept.
    """

    def __init__(self, source: str | Path, target: str | Path):
        self.name = f"parallel:{source},{target}"
        src, tgt = (_read_lines(Path(p)) for p in (source, target))
        if len(src) != len(tgt):
            raise UserInputError(f"parallel files differ in length: {source} has {len(src)} lines, {target} has {len(tgt)}")
        self._to, self._back = dict(zip(src, tgt)), dict(zip(tgt, src))

    def forward(self, text: str) -> str:
        return self._map(text, self._to, "source")

    def inverse(self, text: str) -> str:
        return self._map(text, self._back, "target")

    @staticmethod
    def _map(text: str, table: dict[str, str], side: str) -> str:
        out = []
        for line in text.split("\n"):
            key = line.strip()
            if not key:
                out.append(line)
            elif key in table:
                out.append(table[key])
            else:
                raise UserInputError(f"line not in the parallel {side} file: {key[:60]!r}")
        return "\n".join(out)


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in read_text_file(path, "parallel file").splitlines()]


_REGISTRY: dict[str, Callable[[], Transform]] = {
    "plain": Plain,
    "leetspeak": Leetspeak,
    "piglatin": PigLatin,
    "piglatin-hyphen": lambda: PigLatin(hyphen=True),
}


def register_transform(name: str, factory: Callable[[], Transform]) -> None:
    """Make `get_transform(name)` build `factory()`: how users add their own transforms."""
    if not name or ":" in name or "," in name:
        raise ValueError(f"transform names cannot be empty or contain ':' or ',': {name!r}")
    _REGISTRY[name] = factory


def available_transforms() -> list[str]:
    """Registered names (the parameterised `translate:` and `parallel:` come on top)."""
    return sorted(_REGISTRY)


def get_transform(spec: str) -> Transform:
    """The transform a spec names (see the module docstring); `UserInputError` if none does."""
    spec = spec.strip()
    kind, _, arg = spec.partition(":")
    if kind == "translate":
        ids = arg.split(":")
        if not arg or len(ids) > 2 or not all(ids):
            raise UserInputError(f"translate needs translate:MODEL_ID[:BACK_MODEL_ID], got {spec!r}")
        return TranslationModel(ids[0], ids[1] if len(ids) == 2 else None)
    if kind == "parallel":
        files = arg.split(",")
        if len(files) != 2 or not all(files):
            raise UserInputError(f"parallel needs parallel:SRC_FILE,TGT_FILE, got {spec!r}")
        return ParallelFiles(*files)
    if spec not in _REGISTRY:
        raise UserInputError(
            f"unknown transform {spec!r} (choose from {', '.join(available_transforms())}, "
            "translate:MODEL_ID[:BACK_MODEL_ID], parallel:SRC_FILE,TGT_FILE)"
        )
    return _REGISTRY[spec]()
