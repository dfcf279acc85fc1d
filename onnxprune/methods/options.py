"""Method-specific options, declared as data next to each method, and the typed settings built from them.

Each MethodOption becomes one click option of `onnxprune prune` and one field of the method's settings:
a frozen dataclass made from the method's table (`settings_type`), filled by `build_settings` from the
values a user gave (CLI flags or PruneOptions.extra) with every default taken from the table, each value
converted to the option's type and checked against its choices and lower bound. A default is written
once: in the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..errors import OptionError


@dataclass(frozen=True)
class MethodOption:
    """One option: `flags` as click declares them (e.g. "--norm" or "--merge-normalize/--no-merge-normalize"),
    `dest` the field name, `default`, `help`, `type` (int, float, str; None for flags), and the checks:
    `choices` (allowed values) and `minimum` (inclusive lower bound, with `minimum_hint` saying why)."""

    flags: str
    dest: str
    default: Any
    help: str
    type: Any = None
    is_flag: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    minimum_hint: str = ""

    @property
    def flag(self) -> str:
        """The option's name on the command line (the first of its flags)."""
        return self.flags.split("/")[0]

    def convert(self, value: Any) -> Any:
        """`value` as this option's type, checked; OptionError naming the flag otherwise."""
        if value is None:
            return None
        if self.is_flag:
            return bool(value)
        if self.type is not None:
            try:
                value = self.type(value)
            except (TypeError, ValueError):
                raise OptionError(f"{self.flag} {value!r}: not a valid {self.type.__name__}") from None
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"{self.flag} {value}: unknown; use one of {', '.join(map(str, self.choices))}")
        if self.minimum is not None and not value >= self.minimum:
            hint = f" ({self.minimum_hint})" if self.minimum_hint else ""
            raise OptionError(f"{self.flag} {value}: must be >= {self.minimum:g}{hint}")
        return value


@cache
def settings_type(name: str, table: tuple[MethodOption, ...]) -> type:
    """The frozen dataclass `<Name>Settings` with one typed field per option of `table`."""
    fields = [(o.dest, _annotation(o), dataclasses.field(default=o.default)) for o in table]
    cls_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + "Settings"
    return dataclasses.make_dataclass(cls_name, fields, frozen=True)


def _annotation(option: MethodOption) -> Any:
    kind = bool if option.is_flag else option.type if isinstance(option.type, type) else object
    return kind | None if option.default is None else kind


def build_settings(name: str, table: Sequence[MethodOption], values: Mapping[str, Any]) -> Any:
    """The settings of method `name`: each option of `table` from `values` (converted and checked), or
    its default. Keys of `values` that are not in the table are ignored here (the pipeline reports
    options that no chosen method takes)."""
    table = tuple(table)
    chosen = {o.dest: o.convert(values[o.dest]) for o in table if o.dest in values}
    return settings_type(name, table)(**chosen)


def unused_options(tables: Sequence[Sequence[MethodOption]], values: Mapping[str, Any]) -> list[str]:
    """Keys of `values` that none of `tables` declares."""
    known = {o.dest for table in tables for o in table}
    return sorted(k for k in values if k not in known)
