"""The identity: the prompt as it is."""

from __future__ import annotations

from forgetscope.conjugate.transforms import TRANSFORMS, without_argument


class Plain:
    """The identity: the prompt as it is."""

    name = "plain"

    def forward(self, text: str) -> str:
        return text

    def inverse(self, text: str) -> str:
        return text


TRANSFORMS.register("plain", without_argument(Plain))
