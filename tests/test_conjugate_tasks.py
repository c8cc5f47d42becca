"""The conflict tasks: what the prompts look like, in plain text and in a transform, and how
hand-written outputs are scored."""

from __future__ import annotations

import pytest

from forgetscope.conjugate.tasks import (
    BLANK,
    DEFAULT_SENTENCES,
    follows_context,
    make_conflict_tasks,
    read_sentences,
)
from forgetscope.conjugate.transforms.leetspeak import Leetspeak
from forgetscope.conjugate.transforms.piglatin import PigLatin
from forgetscope.errors import UserInputError

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn", "rain falls on the roof"]


def test_every_task_and_final_kind_with_two_demonstrations_in_the_template():
    tasks = make_conflict_tasks(SENTENCES, n_per_kind=3, seed=0)
    assert len(tasks) == 12
    assert {(t.task, t.final_kind) for t in tasks} == {
        ("repeat", "arithmetic"), ("repeat", "blank"), ("capitalize", "arithmetic"), ("capitalize", "blank")}
    for t in tasks:
        lines = t.prompt.split("\n")
        assert lines[0] == ("Repeat the input." if t.task == "repeat" else "Capitalize every character.")
        assert [line.split(" ")[0] for line in lines[1:]] == ["Input:", "Output:"] * 3
        assert lines[-1] == "Output:"
        final = lines[-2].removeprefix("Input: ")
        assert t.answer == (final if t.task == "repeat" else final.upper())
        if t.final_kind == "arithmetic":
            assert final.startswith("What is ") and final.endswith("?")
        else:
            assert final.startswith(BLANK + " ")
        for demo_in, demo_out in ((lines[1], lines[2]), (lines[3], lines[4])):
            sentence = demo_in.removeprefix("Input: ")
            assert sentence in SENTENCES
            assert demo_out.removeprefix("Output: ") == (sentence if t.task == "repeat" else sentence.upper())


def test_capitalize_example_reads_as_documented():
    task = next(t for t in make_conflict_tasks(SENTENCES, n_per_kind=1, seed=3)
                if (t.task, t.final_kind) == ("capitalize", "arithmetic"))
    demo = task.prompt.split("\n")[1].removeprefix("Input: ")
    assert f"Output: {demo.upper()}" in task.prompt
    assert task.answer.startswith("WHAT IS ")


def test_transformed_tasks_are_the_plain_ones_in_the_other_language():
    plain = make_conflict_tasks(SENTENCES, n_per_kind=2, seed=1)
    pig = make_conflict_tasks(SENTENCES, PigLatin(), n_per_kind=2, seed=1)
    leet = make_conflict_tasks(SENTENCES, Leetspeak(), n_per_kind=2, seed=1)
    for p, g, leet_task in zip(plain, pig, leet):
        assert (p.task, p.final_kind) == (g.task, g.final_kind) == (leet_task.task, leet_task.final_kind)
        assert g.transform == "piglatin" and leet_task.transform == "leetspeak"
        assert g.prompt.split("\n")[0] in ("Epeatray ethay inputway.", "Apitalizecay everyway aracterchay.")
        assert leet_task.prompt.startswith(("R3p347 7h3 1npu7.", "C4p174l1z3 3v3ry ch4r4c73r."))
        if p.final_kind == "blank":  # the same sentence, transformed
            assert leet_task.answer.lower() == Leetspeak().forward(p.answer).lower()


def test_seed_fixes_the_tasks_and_sentences_are_cut():
    assert make_conflict_tasks(DEFAULT_SENTENCES, seed=5) == make_conflict_tasks(DEFAULT_SENTENCES, seed=5)
    assert make_conflict_tasks(DEFAULT_SENTENCES, seed=5) != make_conflict_tasks(DEFAULT_SENTENCES, seed=6)
    long = ["one two three four five six seven eight nine ten"] * 3
    task = make_conflict_tasks(long, n_per_kind=1, max_words=4)[0]
    assert "Input: one two three four\n" in task.prompt


def test_scoring_on_hand_made_outputs():
    tasks = make_conflict_tasks(SENTENCES, n_per_kind=1, seed=0)
    follow = [" " + t.answer + "\nInput: more" for t in tasks]  # leading space, trailing text: still follows
    assert all(follows_context(o, t.answer) for t, o in zip(tasks, follow))
    instruct = [" 42" if t.final_kind == "arithmetic" else " The cat" for t in tasks]
    assert not any(follows_context(o, t.answer) for t, o in zip(tasks, instruct))
    assert not follows_context(" WHAT IS", "WHAT IS 3 + 4?")  # a prefix of the answer is not enough


def test_sentence_file_errors(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        read_sentences(tmp_path / "missing.txt")
    short = tmp_path / "short.txt"
    short.write_text("one sentence\n\nanother\n")
    with pytest.raises(UserInputError, match="at least 3"):
        read_sentences(short)
    good = tmp_path / "good.txt"
    good.write_text("\n".join(SENTENCES) + "\n")
    assert read_sentences(good) == SENTENCES
