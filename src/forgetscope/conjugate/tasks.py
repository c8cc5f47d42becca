"""In-context learning versus instruction following: the conflict tasks of conjugate prompting.

Each task states an in-context task, shows two demonstrations in an `Input:` / `Output:`
template, then gives a final input that invites instruction following instead (a question
to answer, a blank to fill):

    Capitalize every character.
    Input: the lamp was still burning
    Output: THE LAMP WAS STILL BURNING
    Input: she walked along the river
    Output: SHE WALKED ALONG THE RIVER
    Input: What is 12 + 7?
    Output:

A model that follows the in-context task answers `WHAT IS 12 + 7?`; one that has been
pulled towards instruction following answers `19`. The score of a model is the share of
tasks whose greedy output starts with the in-context answer. In a transform, every piece
of the prompt (instruction, labels, inputs) is transformed and the in-context answer is the
task applied to the transformed input, which is what the demonstrations show.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from forgetscope.errors import UserInputError
from forgetscope.files import read_text_file

INSTRUCTIONS: dict[str, tuple[str, Callable[[str], str]]] = {
    "repeat": ("Repeat the input.", lambda text: text),
    "capitalize": ("Capitalize every character.", str.upper),
}
FINAL_KINDS = ("arithmetic", "blank")
BLANK = "___"

DEFAULT_SENTENCES = [
    "the lamp was still burning in the window",
    "she walked along the river before dawn",
    "the old bridge was closed for repairs",
    "a small boat drifted toward the harbor",
    "the children planted trees behind the school",
    "rain fell softly on the tin roof",
    "the baker opened his shop at six",
    "a letter arrived from her brother in spring",
    "the train was late again this morning",
    "paris is the capital of france",
    "the moon rose slowly over the hills",
    "he forgot his keys on the kitchen table",
    "the library closes early on sundays",
    "water boils at one hundred degrees",
    "the cat slept in a patch of sunlight",
    "our neighbors painted their fence blue",
]
"""Short plain sentences written for these probes, used when no `--sentences` file is given."""


@dataclass(frozen=True)
class ConflictTask:
    """One prompt and the answer that in-context learning gives (in the transform's language)."""

    task: str
    """`repeat` or `capitalize`."""
    final_kind: str
    """`arithmetic` or `blank`: what the final input invites instead."""
    transform: str
    prompt: str
    answer: str


def read_sentences(path: str | Path) -> list[str]:
    """Non-empty lines of a text file, stripped."""
    path = Path(path)
    sentences = [line.strip() for line in read_text_file(path, "sentences file").splitlines() if line.strip()]
    if len(sentences) < 3:
        raise UserInputError(f"{path} has {len(sentences)} sentences; the tasks need at least 3")
    return sentences


def _final_input(kind: str, sentence: str, rng: random.Random) -> str:
    if kind == "arithmetic":
        return f"What is {rng.randint(2, 49)} + {rng.randint(2, 49)}?"
    words = sentence.split()
    return " ".join([BLANK, *words[1:]])


def make_conflict_tasks(
    sentences: Sequence[str],
    transform=None,
    n_per_kind: int = 8,
    seed: int = 0,
    max_words: int = 8,
) -> list[ConflictTask]:
    """`n_per_kind` tasks for every (task, final input kind) pair, from `sentences` in `transform`.

    Demonstrations are two distinct sentences drawn with `seed`; a blanked final input is a
    third. Sentences are cut to `max_words` words so that answers stay short. The same seed
    gives the same tasks in every transform, so scores across transforms are paired.
    """
    from forgetscope.conjugate.transforms.plain import Plain

    transform = transform or Plain()
    sentences = [" ".join(s.split()[:max_words]) for s in sentences if s.split()]
    if len(sentences) < 3:
        raise UserInputError(f"the conflict tasks need at least 3 sentences, got {len(sentences)}")
    t = transform.forward
    tasks = []
    for task, (instruction, op) in INSTRUCTIONS.items():
        for kind in FINAL_KINDS:
            rng = random.Random(f"{seed}-{task}-{kind}")
            for _ in range(n_per_kind):
                first, second, third = rng.sample(sentences, 3)
                final = t(_final_input(kind, third, rng))
                lines = [t(instruction)]
                for demo in (t(first), t(second)):
                    lines += [f"{t('Input:')} {demo}", f"{t('Output:')} {op(demo)}"]
                lines += [f"{t('Input:')} {final}", t("Output:")]
                tasks.append(ConflictTask(task, kind, transform.name, "\n".join(lines), op(final)))
    return tasks


def follows_context(output: str, answer: str) -> bool:
    """Whether a generated continuation starts with the in-context answer (spaces around ignored)."""
    return output.strip().startswith(answer.strip())
