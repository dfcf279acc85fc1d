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
    """Every method-specific option, in registry order, each flag once (options shared by several
    methods, like lobs/obs --damping, are one object declared once)."""
    seen, options = set(), []
    for method in METHODS.values():
        for option in method.options:
            if option.dest not in seen:
                seen.add(option.dest)
                options.append(option)
    return options


def methods_taking(dest: str) -> list[str]:
    """Names of the methods whose options include `dest`."""
    return [m.name for m in METHODS.values() if any(o.dest == dest for o in m.options)]
