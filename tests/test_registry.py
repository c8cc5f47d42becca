"""Registries are honest: a name registered twice is refused unless the second registration
asks to replace the first, and a registry with a protocol refuses what lacks its members."""

from __future__ import annotations

from typing import Protocol

import pytest

from forgetscope.errors import UserInputError
from forgetscope.extensions import METHODS
from forgetscope.registry import Registry, protocol_members


class Greeter(Protocol):
    name: str

    def greet(self, who: str) -> str: ...


class Hello:
    name = "hello"

    def greet(self, who: str) -> str:
        return f"hello {who}"


def registry() -> Registry[Greeter]:
    return Registry("greeters", "forgetscope.registry_test_nothing", Greeter)


def test_a_second_registration_of_a_name_is_refused_unless_asked_for():
    greeters = registry()
    first = greeters.register("hello", Hello())
    with pytest.raises(UserInputError, match="greeter 'hello' is registered twice .*replace=True"):
        greeters.register("hello", Hello())
    assert greeters._items["hello"] is first  # the first one stays
    second = greeters.register("hello", Hello(), replace=True)
    assert greeters._items["hello"] is second


def test_an_object_that_lacks_a_member_of_the_protocol_is_refused():
    class Mute:
        name = "mute"

    with pytest.raises(TypeError, match="greeter 'mute' .* lacks greet of the Greeter protocol"):
        registry().register("mute", Mute())
    assert protocol_members(Greeter) == ["greet", "name"]


def test_a_post_hoc_method_that_does_not_say_its_settings_is_refused():
    class Unlabelled:
        name, order = "unlabelled", 99

        def prepare(self, finetuned, base, options):
            return "never applies"

    with pytest.raises(TypeError, match="lacks base_setting, full_setting, label, measures, options"):
        METHODS.register("unlabelled", Unlabelled())
    assert "unlabelled" not in METHODS
