"""`translate:MODEL[:BACK]`: a Hugging Face sequence-to-sequence translation model."""

from __future__ import annotations

from forgetscope.conjugate.transforms import TRANSFORMS
from forgetscope.errors import UserInputError, first_line


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
        first = first_line(exc) or type(exc).__name__
        raise UserInputError(f"cannot load translation model {model_id}: {first}") from exc
    return tokenizer, model


def translation(argument: str) -> TranslationModel:
    ids = argument.split(":")
    if not argument or len(ids) > 2 or not all(ids):
        raise UserInputError(f"translate needs translate:MODEL_ID[:BACK_MODEL_ID], got {'translate:' + argument!r}")
    return TranslationModel(ids[0], ids[1] if len(ids) == 2 else None)


translation.usage = "translate:MODEL_ID[:BACK_MODEL_ID]"  # type: ignore[attr-defined]
TRANSFORMS.register("translate", translation)
