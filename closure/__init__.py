"""Plug-ins called by the solver's rollout every N steps, registered by name.

Importing this package registers the built-in plug-ins; ``make_plugin(name, grid, equation, **opts)``
builds one and ``available()`` lists them.
"""
from .base import FlowState, Plugin
from .registry import available, make_plugin, plugin_class, register
from . import none  # noqa: F401  (registers "none")
from . import classical  # noqa: F401
from . import fno  # noqa: F401
from . import cdm  # noqa: F401
from . import assimilation  # noqa: F401
from . import reconstruction  # noqa: F401
from . import ld_ensf  # noqa: F401
from . import vq_forecast  # noqa: F401

__all__ = ["FlowState", "Plugin", "available", "make_plugin", "plugin_class", "register"]
