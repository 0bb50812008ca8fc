"""Variants by name: a :class:`Registry` of classes, each with a ``name`` and the fold
statistics it ``needs`` (:class:`Variant`). The likelihoods and scalings
(:mod:`vaefusion.model.objective`) and the methods (:mod:`vaefusion.evaluation.methods`) are
found through one each; a name is compared only here (a dictionary key)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Generic, TypeVar


class Variant:
    """A registered variant: a ``name`` and the fold statistics it ``needs``; variants are
    stateless, so two objects of one class are equal."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


T = TypeVar("T", bound=Variant)


class Registry(Generic[T]):
    """Variants of one kind by name, in registration order. ``in`` and iteration give the
    names, so a registry is the ``choices`` of an option as it is."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        # a class, or where to import it from ("package.module:Class") until first used
        self._classes: dict[str, type[T] | str] = {}

    def _add(self, name: str, entry: type[T] | str) -> str:
        if not name or name in self._classes:
            raise ValueError(f"{self.kind} {name!r} has no name or is registered already")
        self._classes[name] = entry
        return name

    def register(self, cls: type[T]) -> type[T]:
        """Add ``cls`` under ``cls.name`` (a class decorator); a name is registered once."""
        self._add(cls.name, cls)
        return cls

    def register_at(self, name: str, target: str) -> str:
        """Add the class at ``target`` (``"package.module:Class"``) under ``name`` without
        importing it: the registration line of a variant in a module of its own, which
        imports the registry's base class (so the registry cannot import it back); the
        module is imported when the variant is first used. Returns ``name``."""
        return self._add(name, target)

    @contextmanager
    def registered(self, entry: type[T] | str, name: str = "") -> Iterator[T]:
        """``entry`` (a class, or ``name`` at a ``"module:Class"`` target) registered for
        the ``with`` block only (a test's toy variant); yields an instance."""
        key = self.register_at(name, entry) if isinstance(entry, str) else \
            self.register(entry).name
        try:
            yield self.get(key)
        finally:
            self._classes.pop(key, None)

    def get(self, name: str) -> T:
        """A new instance of the variant called ``name`` (``ValueError`` if there is none)."""
        try:
            entry = self._classes[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from "
                             f"{', '.join(self._classes)}") from None
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            if entry.name != name:
                raise ValueError(f"{self.kind} {name!r} at {self._classes[name]} is called "
                                 f"{entry.name!r}")
            self._classes[name] = entry
        return entry()

    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._classes))

    def __len__(self) -> int:
        return len(self._classes)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self._classes)})"
