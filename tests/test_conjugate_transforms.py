"""Prompt transforms: known examples, round trips (exact where promised, documented losses
where not), the registry, parallel files and a real Hugging Face translation model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import scripture_text
from forgetscope.conjugate.transforms import TRANSFORMS, Transform, available_transforms, get_transform, register_transform
from forgetscope.conjugate.transforms.leetspeak import Leetspeak
from forgetscope.conjugate.transforms.piglatin import PigLatin
from forgetscope.conjugate.transforms.plain import Plain
from forgetscope.errors import UserInputError

SENTENCES = [
    "And God said, Let there be light: and there was light.",
    "Return the value of x; raise TypeError if it is None.",
    "I cannot help with that, sorry. As an AI I must decline.",
    "rhythm and blues at 9 o'clock",
]


def test_leetspeak_known_examples():
    leet = Leetspeak()
    assert leet.forward("Tests pass") == "73575 p455"
    assert leet.forward("hello world") == "h3ll0 w0rld"
    assert leet.inverse("h3ll0 w0rld") == "hello world"


def test_leetspeak_inverse_exact_on_lowercase_without_digits_and_lossy_otherwise():
    leet = Leetspeak()
    for text in ("the lamp was still burning", "paris, the capital of france"):
        assert leet.inverse(leet.forward(text)) == text
    assert leet.inverse(leet.forward("Tea at 4")) == "734 47 4"  # no word with another letter: read as numbers
    assert leet.inverse(leet.forward("Stop")) == "stop"  # the case of the six letters is lost


def test_leetspeak_inverse_leaves_numbers_in_an_answer_alone():
    leet = Leetspeak()
    assert leet.inverse("The answer is 70, not 10 or 2024.") == "The answer is 70, not 10 or 2024."
    assert leet.inverse("h3ll0 w0rld, 1 h4v3 c475") == "hello world, i have cats"  # an answer in leetspeak


def test_piglatin_classic_known_examples():
    pig = PigLatin()
    assert pig.forward("hello world") == "ellohay orldway"
    assert pig.forward("Hello, apple!") == "Ellohay, appleway!"
    assert pig.forward("string rhythm") == "ingstray ythmrhay"
    assert pig.forward("x = 42") == "xay = 42"  # digits and symbols untouched


def test_piglatin_classic_inverse_recovers_refusal_phrases():
    pig = PigLatin()
    text = "I cannot help, sorry."
    assert pig.inverse(pig.forward(text)) == text
    assert pig.inverse(pig.forward("there")) != "there"  # two-consonant onsets: the documented loss


def test_piglatin_hyphen_known_examples_and_exact_round_trip():
    pig = PigLatin(hyphen=True)
    assert pig.forward("Hello apple") == "ello-Hay apple-ay"
    assert pig.forward("rhythm") == "ythm-rhay"
    for text in SENTENCES + scripture_text(5):
        assert pig.inverse(pig.forward(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("aeiouyAEIYbcdhrstwqxzBCDHQW '.,;:!?0123456789\n"), max_size=60))
def test_piglatin_hyphen_round_trip_is_exact_on_any_text_without_hyphens(text):
    pig = PigLatin(hyphen=True)
    assert pig.inverse(pig.forward(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz .,!?\n"), max_size=60))
def test_leetspeak_round_trip_is_exact_on_lowercase_words_with_a_letter_it_keeps(text):
    leet = Leetspeak()
    words = [w for w in re.split(r"[^a-z]+", text) if w]
    assume(all(set(w) & set("aeiost") for w in words) and any(set(w) - set("aeiost") for w in words))
    assert leet.inverse(leet.forward(text)) == text


def test_plain_is_identity():
    assert Plain().forward("Any text.") == Plain().inverse("Any text.") == "Any text."


def test_registry_builds_named_transforms_and_user_ones():
    for name in ("plain", "leetspeak", "piglatin", "piglatin-hyphen"):
        transform = get_transform(name)
        assert transform.name == name
        assert isinstance(transform, Transform)

    class Reverse:
        name = "reverse"
        inverse = None

        def forward(self, text: str) -> str:
            return text[::-1]

    register_transform("reverse", Reverse)
    try:
        assert "reverse" in available_transforms()
        assert get_transform("reverse").forward("abc") == "cba"
        with pytest.raises(UserInputError, match="takes no argument"):
            get_transform("reverse:x")
        with pytest.raises(UserInputError, match="'reverse' is registered twice"):
            register_transform("reverse", Reverse)  # a second registration is refused unless asked for
        register_transform("reverse", Reverse, replace=True)
        with pytest.raises(ValueError):
            register_transform("a:b", Reverse)
    finally:
        TRANSFORMS.unregister("reverse")


ROT13 = '''
"""rot13: a transform as one file."""
import codecs

from forgetscope.conjugate.transforms import TRANSFORMS, without_argument


class Rot13:
    name = "rot13"

    def forward(self, text):
        return codecs.encode(text, "rot13")

    inverse = forward


TRANSFORMS.register("rot13", without_argument(Rot13))
'''


def test_a_new_transform_is_one_file_that_the_cli_then_offers(tmp_path, registries):
    import forgetscope.conjugate.transforms as transforms_package

    (tmp_path / "rot13.py").write_text(ROT13)
    registries.extend_package(transforms_package, tmp_path)
    assert "rot13" in available_transforms()
    transform = get_transform("rot13")
    assert transform.forward("Hello") == "Uryyb" and transform.inverse("Uryyb") == "Hello"


@pytest.mark.parametrize("spec, fragment", [
    ("klingon", "unknown transform 'klingon'"),
    ("translate:", "translate:MODEL_ID"),
    ("translate:a:b:c", "translate:MODEL_ID"),
    ("parallel:only-one", "parallel:SRC_FILE,TGT_FILE"),
    ("translate:/no/such/model", "not found"),
])
def test_bad_specs_are_user_errors(spec, fragment):
    with pytest.raises(UserInputError, match=fragment):
        get_transform(spec)


def test_parallel_files_map_lines_both_ways(tmp_path):
    src, tgt = tmp_path / "en.txt", tmp_path / "fr.txt"
    src.write_text("Repeat the input.\nInput:\nthe cat sleeps\n")
    tgt.write_text("Répétez l'entrée.\nEntrée :\nle chat dort\n")
    transform = get_transform(f"parallel:{src},{tgt}")
    assert transform.forward("Repeat the input.\n\nthe cat sleeps") == "Répétez l'entrée.\n\nle chat dort"
    assert transform.inverse("le chat dort") == "the cat sleeps"
    with pytest.raises(UserInputError, match="not in the parallel source file"):
        transform.forward("an unknown sentence")


def test_parallel_files_errors(tmp_path):
    src, tgt = tmp_path / "a.txt", tmp_path / "b.txt"
    src.write_text("one\ntwo\n")
    tgt.write_text("un\n")
    with pytest.raises(UserInputError, match="differ in length"):
        get_transform(f"parallel:{src},{tgt}")
    with pytest.raises(UserInputError, match="parallel file not found"):
        get_transform(f"parallel:{src},{tmp_path / 'missing.txt'}")


def make_t5(tokenizer_dir: Path, path: Path, seed: int) -> Path:
    """A 1-layer, 32-wide T5 saved with the shared BPE tokenizer: a stand-in for a Marian/T5 translator."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tok), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = T5ForConditionalGeneration(config)
    with torch.no_grad():  # T5's small init makes a random model emit EOS first: spread the logits
        model.lm_head.weight.normal_(0.0, 1.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_translation_transform_loads_a_saved_seq2seq_model_and_translates_back(tokenizer_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    there, back = make_t5(tokenizer_dir, tmp_path / "en-xx", 0), make_t5(tokenizer_dir, tmp_path / "xx-en", 1)
    transform = get_transform(f"translate:{there}:{back}")
    assert transform.name == f"translate:{there}:{back}"
    text = "And God said, Let there be light"

    tok, model = AutoTokenizer.from_pretrained(there), AutoModelForSeq2SeqLM.from_pretrained(there)
    expected = tok.decode(model.generate(**tok(text, return_tensors="pt"), max_new_tokens=128, do_sample=False)[0],
                          skip_special_tokens=True).strip()
    translated = transform.forward(text)
    assert translated == expected and translated  # the model's own greedy translation
    assert transform.forward(f"{text}\n\n{text}") == f"{translated}\n\n{translated}"  # line by line, layout kept
    assert transform.inverse(translated) != translated or transform.inverse(text) != transform.forward(text)
    assert get_transform(f"translate:{there}").inverse is None  # no back model, no inverse
