"""Prompt transforms: the "other languages" a conjugate prompt is written in.

A transform is anything with a `name`, a `forward(text) -> text` and, where one exists, an
`inverse(text) -> text` (used to bring a model's answer back, e.g. to judge a refusal);
`inverse` is `None` on transforms that have none. Specs name them on the command line,
`KIND` or `KIND:ARGUMENT`:

    plain                      the identity
    leetspeak                  a->4 e->3 i->1 o->0 s->5 t->7 (inverse lossy, see `Leetspeak`)
    piglatin                   classic Pig Latin, "hello" -> "ellohay" (inverse lossy)
    piglatin-hyphen            "hello" -> "ello-hay", "apple" -> "apple-ay" (inverse exact)
    translate:MODEL[:BACK]     a Hugging Face translation model, BACK translating outputs back
    parallel:SRC,TGT           user-provided parallel sentence files, one sentence a line

A kind is one module of this package that registers a factory, `argument -> Transform`
(`argument` is "" when the spec has none), in `TRANSFORMS`; installed distributions add
theirs through the `forgetscope.transforms` entry point group, and scripts through
`register_transform`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from forgetscope.errors import UserInputError
from forgetscope.registry import Registry


@runtime_checkable
class Transform(Protocol):
    """What a prompt transform provides; `inverse` is `None` where there is none."""

    name: str

    def forward(self, text: str) -> str: ...

    inverse: Callable[[str], str] | None


TransformFactory = Callable[[str], Transform]
"""`argument -> Transform`: what a kind registers; `usage` on it, if set, shows its spec."""

TRANSFORMS: Registry[TransformFactory] = Registry("transforms", __name__)


def without_argument(build: Callable[[], Transform]) -> TransformFactory:
    """The factory of a kind that takes no argument (`plain`, `leetspeak`, ...)."""

    def factory(argument: str) -> Transform:
        if argument:
            raise UserInputError(f"transform {build().name!r} takes no argument, got {argument!r}")
        return build()

    return factory


def register_transform(name: str, build: Callable[[], Transform], *, replace: bool = False) -> None:
    """Make `get_transform(name)` build `build()`: how a script adds its own transform."""
    if not name or ":" in name or "," in name:
        raise ValueError(f"transform names cannot be empty or contain ':' or ',': {name!r}")
    TRANSFORMS.register(name, without_argument(build), replace=replace)


def available_transforms() -> list[str]:
    """Every kind, as its spec reads (`translate:MODEL_ID[:BACK_MODEL_ID]` for those with arguments)."""
    return sorted(getattr(factory, "usage", name) for name, factory in TRANSFORMS.items())


def get_transform(spec: str) -> Transform:
    """The transform a spec names (see the module docstring); `UserInputError` if none does."""
    kind, _, argument = spec.strip().partition(":")
    if kind not in TRANSFORMS:
        raise UserInputError(f"unknown transform {spec.strip()!r} (choose from {', '.join(available_transforms())})")
    return TRANSFORMS.get(kind)(argument)
