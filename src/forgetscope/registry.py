"""Named plug-ins: law forms, sweep executors, end-of-point evaluators, post-hoc and
training mitigations, prompt transforms.

Each kind of plug-in lives in one package; a plug-in is one module in it that calls
`registry.register(name, obj)` at import. `discover()` imports every module of the package
(and any `forgetscope.<kind>` entry points of installed distributions), so adding a plug-in
is adding one file: nothing else names it.

Registration is honest, as PEFT's and lm-eval's registries are: a name registered twice is
an error unless the second registration asks to replace the first (so an installed plug-in
never shadows a built-in unnoticed), and a registry given its protocol refuses an object
that lacks one of the protocol's members.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from forgetscope.errors import UserInputError

T = TypeVar("T")


def protocol_members(protocol: type) -> list[str]:
    """The attributes and methods a `typing.Protocol` declares (its own and its bases')."""
    members: set[str] = set()
    for klass in protocol.__mro__:
        if klass is object or klass.__name__ in ("Protocol", "Generic"):
            continue
        members |= set(getattr(klass, "__annotations__", {}))
        members |= {name for name, value in vars(klass).items() if callable(value) and not name.startswith("_")}
    return sorted(members)


class Registry(Generic[T]):
    """A name -> plug-in table that fills itself from `package` on first use."""

    def __init__(self, kind: str, package: str, protocol: type | None = None):
        self.kind, self.package, self.protocol = kind, package, protocol
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._discovered = False

    def register(self, name: str, item: T, *, replace: bool = False) -> T:
        """Add `item` under `name`. A name already registered is refused unless `replace`;
        with a protocol, an item missing one of its members is refused."""
        origin = getattr(item, "__module__", None) or type(item).__module__
        if name in self._items and not replace:
            raise UserInputError(f"{self.kind.rstrip('s')} {name!r} is registered twice (by {self._origins[name]} and by {origin}); "
                                 "pass replace=True to replace it on purpose")
        if self.protocol is not None:
            missing = [member for member in protocol_members(self.protocol) if not hasattr(item, member)]
            if missing:
                raise TypeError(f"{self.kind.rstrip('s')} {name!r} from {origin} lacks {', '.join(missing)} "
                                f"of the {self.protocol.__name__} protocol")
        self._items[name], self._origins[name] = item, origin
        return item

    def unregister(self, name: str) -> None:
        """Remove `name` (tests that add a plug-in take it away again)."""
        self._items.pop(name, None)
        self._origins.pop(name, None)

    def discover(self) -> None:
        """Import every module of the package, then the entry points, once."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")
        for entry in entry_points(group=f"forgetscope.{self.kind}"):
            entry.load()

    def get(self, name: str) -> T:
        """The plug-in called `name`; an unknown name is a `UserInputError` listing the known ones."""
        self.discover()
        if name not in self._items:
            raise UserInputError(f"unknown {self.kind.rstrip('s')} {name!r} (known: {', '.join(self.names())})")
        return self._items[name]

    def names(self) -> list[str]:
        self.discover()
        return list(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        self.discover()
        return iter(list(self._items.items()))

    def values(self) -> list[Any]:
        self.discover()
        return list(self._items.values())

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._items
