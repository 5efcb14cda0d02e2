"""A name -> class registry with helpful errors, shared by plug-ins (``closure``) and models (``latent``).

``register(name)`` decorates a class (and sets ``cls.name``); ``get(name)`` fails with the list of
choices; ``check_options(name, options, skip)`` names unknown keyword options and the accepted ones.
"""
from __future__ import annotations

import inspect
from typing import Any, Iterable

__all__ = ["Registry"]


class Registry:
    """Classes by name. ``kind`` and ``option_word`` appear in error messages."""

    def __init__(self, kind: str, option_word: str = "option(s)") -> None:
        self.kind, self.option_word = kind, option_word
        self._classes: dict[str, type] = {}

    def register(self, name: str):
        """Class decorator registering ``cls`` as ``name``."""

        def wrap(cls: type) -> type:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} name {name!r} is already registered by {self._classes[name].__name__}")
            cls.name, self._classes[name] = name, cls
            return cls

        return wrap

    def available(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {self.available()}")
        return self._classes[name]

    def check_options(self, name: str, options: dict[str, Any], skip: Iterable[str] = ("self",)) -> list[str]:
        """The constructor's accepted keyword names; ``ValueError`` naming any unknown ``options``."""
        skip = set(skip)
        accepted = [p for p in inspect.signature(self.get(name).__init__).parameters if p not in skip]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"{self.kind} {name!r} got unknown {self.option_word} {unknown}; it accepts {accepted}")
        return accepted
