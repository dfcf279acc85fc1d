"""The table of methods: name -> Method. A new method is one module and one line here."""

from __future__ import annotations

from ..errors import OptionError
from . import lobs, magnitude, merge, obs, relief, wanda
from .base import Method
from .options import MethodOption

_MODULES = (magnitude, merge, lobs, obs, relief, wanda)

METHODS: dict[str, Method] = {m.name: m for module in _MODULES for m in module.EXPORTED}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise OptionError(f"--method {name}: unknown method; choose one of {known}") from None


def method_options() -> list[MethodOption]:
    """Every method-specific option, in module order, each flag once."""
    seen, options = set(), []
    for module in _MODULES:
        for option in getattr(module, "OPTIONS", ()):
            if option.dest not in seen:
                seen.add(option.dest)
                options.append(option)
    return options
