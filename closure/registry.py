"""Registry of plug-ins by name: ``register`` decorates a class, ``make_plugin`` builds one."""
from __future__ import annotations

from solvers.registry import Registry

from .base import Plugin

__all__ = ["register", "make_plugin", "available", "plugin_class"]

_PLUGINS = Registry("closure", "option(s)")
register = _PLUGINS.register  # class decorator: make ``cls`` available as ``--closure name``
available = _PLUGINS.available  # names of every registered plug-in, sorted
plugin_class = _PLUGINS.get  # the class registered as ``name``; a clear error listing the choices otherwise


def make_plugin(name: str, grid, equation, **options) -> Plugin:
    """Build plug-in ``name`` with its options; unknown options are an error naming the valid ones."""
    _PLUGINS.check_options(name, options, skip=("self", "grid", "equation"))
    return plugin_class(name)(grid, equation, **options)
