"""Content keys: a hash of what determines a computation, so that a stored result is reused exactly when it would be
computed again the same way.

`fingerprint(value)` hashes a canonical encoding of `value`: Equinox modules and dataclasses by class and fields
(static or not), arrays by dtype, shape and bytes, Python numbers exactly (floats by their hex form), strings, None,
tuples, lists, dicts (by sorted keys), functions by their qualified name, objects without state by their class. A flow is therefore keyed by its problem's
data, its three families' parameters and classes; a solve by its solver and step-size controller with all their
settings, its tolerances, save times and budget. Two values with the same fingerprint compute the same thing with the
same code; `SCHEMA` enters every key a store writes, and changes when what a stored record holds changes.

A function is keyed by its name only: neither its code nor the values a closure captures enter the key. Two lambdas
defined at one place, or one function whose body changed, share a key; a quantity that changes what is computed
belongs in a module's field or an argument, where it is hashed. A class whose code computes differently from the
records already stored under its keys (not a parameter: how it is integrated) says so by its class attribute
`key_revision`, a positive integer that enters the key of every value of that class; classes without it are keyed as
if it were 0, so raising one class's revision re-keys only what holds an instance of it.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import struct
import types
from pathlib import PurePath
from typing import Any

import jax
import numpy as np

SCHEMA = 4
"""The layout of stored records and of their keys, and the meaning of a solve beyond its arguments (how stops are
located, whether save times are landed on). It changes when either changes; a store of another schema is refused,
never mixed."""


def fingerprint(value: Any, length: int = 24) -> str:
    """A hex digest (`length` characters) of `value`'s canonical encoding; TypeError for what cannot be encoded."""
    digest = hashlib.sha256()
    _feed(digest, value, set())
    return digest.hexdigest()[:length]


def _tag(digest, tag: bytes, payload: bytes = b"") -> None:
    digest.update(tag + struct.pack("<Q", len(payload)) + payload)


def _feed(digest, node: Any, active: set[int]) -> None:
    if node is None:
        _tag(digest, b"none")
    elif isinstance(node, bool):
        _tag(digest, b"bool", b"1" if node else b"0")
    elif isinstance(node, enum.Enum):
        _tag(digest, b"enum", f"{_qualname(type(node))}.{node.name}".encode())
    elif isinstance(node, int):
        _tag(digest, b"int", str(node).encode())
    elif isinstance(node, float):
        _tag(digest, b"float", node.hex().encode())
    elif isinstance(node, str):
        _tag(digest, b"str", node.encode())
    elif isinstance(node, bytes):
        _tag(digest, b"bytes", node)
    elif isinstance(node, PurePath):
        _tag(digest, b"path", str(node).encode())
    elif isinstance(node, (np.ndarray, np.generic, jax.Array)):
        array = np.ascontiguousarray(jax.device_get(node))
        _tag(digest, b"array", f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    elif isinstance(node, np.dtype):
        _tag(digest, b"dtype", node.str.encode())
    elif isinstance(node, type):
        _tag(digest, b"type", _qualname(node).encode())
    elif isinstance(node, functools.partial):
        _tag(digest, b"partial")
        _feed(digest, (node.func, node.args, node.keywords), active)
    elif isinstance(node, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, np.ufunc)):
        _tag(digest, b"function", _qualname(node).encode())
        # A bound method computes with its object: a Python method's, or a builtin's bound to one (`[1].append`,
        # `x.sum`; a plain builtin's __self__ is its module).
        owner = getattr(node, "__self__", None)
        if isinstance(node, types.MethodType) or not (owner is None or isinstance(owner, types.ModuleType)):
            _feed(digest, owner, active)
    elif isinstance(node, dict):
        keys = sorted(node, key=repr)
        _tag(digest, b"dict", str(len(keys)).encode())
        for key in keys:
            _feed(digest, key, active)
            _feed(digest, node[key], active)
    elif isinstance(node, (tuple, list, set, frozenset)):
        items = sorted(node, key=repr) if isinstance(node, (set, frozenset)) else node
        _tag(digest, type(node).__name__.encode(), _qualname(type(node)).encode() + str(len(items)).encode())
        for item in items:
            _feed(digest, item, active)
    elif dataclasses.is_dataclass(node):  # Equinox modules are dataclasses
        if id(node) in active:
            raise TypeError(f"cannot fingerprint a cyclic structure through {type(node).__name__}")
        active.add(id(node))
        fields = [f.name for f in dataclasses.fields(node)]
        _tag(digest, b"object", _qualname(type(node)).encode() + str(len(fields)).encode())
        revision = getattr(type(node), "key_revision", 0)
        if revision:
            _tag(digest, b"revision", str(revision).encode())
        for name in fields:
            _feed(digest, name, active)
            _feed(digest, getattr(node, name, None), active)
        active.discard(id(node))
    elif _stateless(node):
        # An object without state (a library's sentinel, such as Diffrax's "use the controller's tolerances" in its
        # implicit solvers' root finders) computes as its class does.
        _tag(digest, b"stateless", _qualname(type(node)).encode())
    else:
        raise TypeError(
            f"cannot fingerprint a {type(node).__qualname__}: use arrays, numbers, strings, containers, "
            "dataclasses or Equinox modules"
        )


def _stateless(node) -> bool:
    """Whether `node` holds no state of its own: an empty instance dictionary, and no slots in its class or any class
    it derives from (or no instance dictionary and no such slots)."""
    if hasattr(node, "__dict__") and vars(node):
        return False
    for cls in type(node).__mro__:
        if cls is object:
            continue
        slots = cls.__dict__.get("__slots__", () if hasattr(node, "__dict__") else None)
        if slots is None:  # a class without __slots__ gives its instances a dictionary, which this one lacks
            return False
        if isinstance(slots, str):
            slots = (slots,)
        if any(name not in ("__dict__", "__weakref__") for name in slots):
            return False
    return True


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', None) or ''}:{getattr(obj, '__qualname__', None) or repr(obj)}"
