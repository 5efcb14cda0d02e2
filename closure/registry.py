"""Registry of plug-ins by name: ``register`` decorates a class, ``make_plugin`` builds one."""
from __future__ import annotations

import inspect

from .base import Plugin

__all__ = ["register", "make_plugin", "available", "plugin_class"]

_REGISTRY: dict[str, type[Plugin]] = {}


def register(name: str):
    """Class decorator: make ``cls`` available as ``--closure name``."""

    def wrap(cls: type[Plugin]) -> type[Plugin]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"plug-in name {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Names of every registered plug-in, sorted."""
    return sorted(_REGISTRY)


def plugin_class(name: str) -> type[Plugin]:
    """The class registered as ``name``; a clear error listing the choices otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown closure {name!r}; choose one of {available()}")
    return _REGISTRY[name]


def make_plugin(name: str, grid, equation, **options) -> Plugin:
    """Build plug-in ``name`` with its options; unknown options are an error naming the valid ones."""
    cls = plugin_class(name)
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p not in ("self", "grid", "equation")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"closure {name!r} got unknown option(s) {unknown}; it accepts {accepted}")
    return cls(grid, equation, **options)
