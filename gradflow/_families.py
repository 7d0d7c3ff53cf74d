"""The command line's flags for the three families, read from their registries.

Each family's members are the values of its registry (`flows.PARAMETERIZATIONS`, `flows.PENALTIES`,
`flows.DYNAMICS`, keyed by the names the command line accepts); each constructor argument of a member
becomes one flag, its type read from the annotation, its default from the signature and its help from
the member's docstring (the `Args:` section). Members that share an argument name share the flag
(`--eps` for Adam, RMSProp and Sign). A member whose argument is another member of its family (EachFactor)
becomes a switch that wraps the chosen member (`--each-factor`). A new member in a registry gets its
choice and its flags with no change here.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any


@dataclasses.dataclass(frozen=True)
class Argument:
    """One constructor argument across the members that take it: one flag."""

    name: str
    flag: str
    type: Any
    defaults: dict[str, Any]  # member key -> default (inspect.Parameter.empty: required)
    help: dict[str, str]  # member key -> its docstring's line for the argument

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


@dataclasses.dataclass(frozen=True)
class Family:
    """A family of the flow as flags: `--NAME {members}` plus one flag per constructor argument."""

    name: str
    registry: str  # the name of its registry in flows
    members: dict[str, type]
    default: str | None  # None: optional, "none" on the command line
    prefix: str  # flag prefix of the members' arguments ("" or "penalty-")

    @property
    def dest(self) -> str:
        return self.name

    def choices(self) -> dict[str, type]:
        """The members chosen by name; wrappers (members taking a member) are switches instead."""
        return {key: cls for key, cls in self.members.items() if not self._wraps(cls)}

    def wrappers(self) -> dict[str, type]:
        return {key: cls for key, cls in self.members.items() if self._wraps(cls)}

    def _wraps(self, cls) -> bool:
        return any(_is_member(t) for t in _argument_types(cls).values())

    def arguments(self) -> list[Argument]:
        """The flags of the chosen members' arguments, one per argument name."""
        by_name: dict[str, Argument] = {}
        for key, cls in self.choices().items():
            docs = argument_docs(cls)
            types_ = _argument_types(cls)
            for name, parameter in inspect.signature(cls).parameters.items():
                kind = _flag_type(types_[name])
                argument = by_name.setdefault(
                    name, Argument(name, f"--{self.prefix}{name.replace('_', '-')}", kind, {}, {})
                )
                if kind is _widths:  # one member's list of ints ("3,2"); it also reads the others' single int
                    argument = by_name[name] = dataclasses.replace(argument, type=kind)
                argument.defaults[key] = parameter.default
                argument.help[key] = docs.get(name, "")
        return list(by_name.values())

    def add_to(self, parser: argparse.ArgumentParser, description: str):
        """This family's flag group (returned, for flags of the flow that belong with it)."""
        group = parser.add_argument_group(self.name, description)
        choices = list(self.choices())
        if self.default is None:
            choices = ["none", *choices]
        group.add_argument(
            f"--{self.name}",
            choices=choices,
            default=self.default or "none",
            help=f"one of flows.{self.registry}: "
            + ", ".join(f"{key} ({cls.__name__})" for key, cls in self.choices().items())
            + f" (default: {self.default or 'none'})",
        )
        for key, cls in self.wrappers().items():
            inner = "; ".join(argument_docs(cls).values())
            group.add_argument(
                f"--{key}", action="store_true", help=f"wrap the --{self.name} in {cls.__name__}: {inner}"
            )
        for argument in self.arguments():
            group.add_argument(
                argument.flag,
                type=argument.type,
                default=None,
                metavar=argument.name.upper() if argument.type is not _widths else "N[,N...]",
                help=_argument_help(argument),
            )
        return group

    def build(self, args: argparse.Namespace):
        """The member the flags choose (None for "none"), or ValueError for a flag that does not apply."""
        key = getattr(args, self.dest)
        given = {a.name: getattr(args, a.dest) for a in self.arguments() if getattr(args, a.dest) is not None}
        switches = [k for k in self.wrappers() if getattr(args, k.replace("-", "_"))]
        if key == "none":
            stray = self.given(args) + [f"--{k}" for k in switches]
            if stray:
                raise ValueError(f"{stray[0]} does not apply without a {self.name}: choose --{self.name}")
            return None
        cls = self.members[key]
        takes = inspect.signature(cls).parameters
        for argument in self.arguments():
            if argument.name in given and argument.name not in takes:
                raise ValueError(
                    f"{argument.flag} does not apply to --{self.name} {key} (it is an argument of "
                    f"{', '.join(argument.defaults)})"
                )
            if (
                argument.name in takes
                and argument.name not in given
                and argument.defaults[key] is inspect.Parameter.empty
            ):
                raise ValueError(f"--{self.name} {key} needs {argument.flag}: {argument.help[key]}")
        try:
            member = cls(**given)
        except TypeError as err:
            raise ValueError(f"bad arguments for --{self.name} {key}: {err}") from None
        for wrapper in switches:
            member = self.members[wrapper](member)
        return member

    def given(self, args: argparse.Namespace) -> list[str]:
        """The flags of this family's arguments given on the command line."""
        return [a.flag for a in self.arguments() if getattr(args, a.dest) is not None]


def argument_docs(cls) -> dict[str, str]:
    """The `Args:` section of a class docstring: argument name -> its text (continuation lines joined)."""
    lines = (inspect.getdoc(cls) or "").splitlines()
    docs: dict[str, str] = {}
    inside, name = False, None
    for line in lines:
        if line.strip() == "Args:":
            inside, name = True, None
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break  # the next section
        entry = re.match(r"^ {4}(\w+)(?: \(.*?\))?: (.*)$", line)
        if entry:
            name = entry.group(1)
            docs[name] = entry.group(2).strip()
        elif name is not None and line.strip():
            docs[name] += " " + line.strip()
    return docs


def _argument_help(argument: Argument) -> str:
    """Each member's line for the argument (members with the same line share it), then the defaults; a None
    default is left to the member's line, which says what it means."""
    texts: dict[str, list[str]] = {}
    for key, text in argument.help.items():
        texts.setdefault(text.rstrip("."), []).append(key)
    defaults: dict[str, list[str]] = {}
    for key, default in argument.defaults.items():
        if default is not None:
            shown = "required" if default is inspect.Parameter.empty else f"default {_show(default)}"
            defaults.setdefault(shown, []).append(key)
    parts = [f"{', '.join(keys)}: {text}" for text, keys in texts.items()]
    shown = "; ".join(d if len(defaults) == 1 else f"{d} for {', '.join(keys)}" for d, keys in defaults.items())
    return (" | ".join(parts) + (f" ({shown})" if shown else "")).replace("%", "%%")


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _argument_types(cls) -> dict[str, Any]:
    """Each constructor argument's annotation: the __init__'s where it annotates the argument (what the user passes),
    else the field's (dataclass-style members)."""
    hints = {}
    for source in (cls, cls.__init__):  # later sources win, but not with Any (a converter's unannotated argument)
        try:
            found = typing.get_type_hints(source)
        except Exception:  # noqa: BLE001 - an unresolvable annotation leaves the argument a string
            continue
        hints |= {name: hint for name, hint in found.items() if hint is not Any or name not in hints}
    return {name: hints.get(name, str) for name in inspect.signature(cls).parameters}


def _is_member(annotation) -> bool:
    import equinox as eqx

    return isinstance(annotation, type) and issubclass(annotation, eqx.Module)


def _flag_type(annotation):
    """int or float from an annotation (an optional one included); a tuple of ints also takes "4,5,6"."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if any(typing.get_origin(o) is tuple for o in options):
        return _widths
    for kind in (int, float):
        if kind in options:
            return kind
    return str


def _widths(text: str) -> int | tuple[int, ...]:
    """An int, or comma-separated ints as a tuple (one per factor, e.g. Deep's hidden widths)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or comma-separated integers; got {text!r}") from None
    return values[0] if len(values) == 1 else values


def families() -> tuple[Family, ...]:
    """The three families with the command line's defaults (a symmetric factorisation, no penalty, gradient flow)."""
    import flows

    found = (
        Family("parameterization", "PARAMETERIZATIONS", flows.PARAMETERIZATIONS, default="symmetric", prefix=""),
        Family("penalty", "PENALTIES", flows.PENALTIES, default=None, prefix="penalty-"),
        Family("dynamics", "DYNAMICS", flows.DYNAMICS, default="gradient", prefix=""),
    )
    flags = [a.flag for family in found for a in family.arguments()]
    clashes = {flag for flag in flags if flags.count(flag) > 1}
    if clashes:
        raise RuntimeError(f"two families' arguments map to the same flag: {sorted(clashes)}")
    return found
