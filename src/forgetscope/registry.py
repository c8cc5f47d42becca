"""Named plug-ins: law forms, sweep executors, end-of-point evaluators, prompt transforms.

Each kind of plug-in lives in one package; a plug-in is one module in it that calls
`registry.register(name, obj)` at import. `discover()` imports every module of the package
(and any `forgetscope.<kind>` entry points of installed distributions), so adding a plug-in
is adding one file: nothing else names it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from forgetscope.errors import UserInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> plug-in table that fills itself from `package` on first use."""

    def __init__(self, kind: str, package: str):
        self.kind, self.package = kind, package
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str, item: T) -> T:
        """Add `item` under `name` (a second registration of a name replaces the first)."""
        self._items[name] = item
        return item

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

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._items
