"""Atomic, checksummed storage of arrays with JSON metadata, keyed stores of them, and state pytrees of any common form.

A record is a folder holding `arrays.npz` and `meta.json`; the metadata is written last and holds the
arrays' SHA-256, so a reader sees either the previous complete record or the new one, and an interrupted
write is caught as a checksum mismatch (`CorruptRecordError`). Files are created readable by everyone the
umask allows (0644 under the usual umask 022), so a shared store can be read by collaborators.

A store is a folder of records named by content keys (`flows.fingerprint` of what computes them): sweeps'
trajectories (`flows.sweep`) and any other result (`cached`: reference solutions, discrete runs, measurements).
Its `store.json` names the schema of its keys (`SCHEMA`); a folder written under another schema is refused with
what to do, never mixed with new records.

State pytrees are stored as their leaves plus a JSON description of the structure: tuples, lists, dicts,
None, NamedTuples and Equinox modules (static fields kept as JSON values). NamedTuple and module
classes are re-imported by name on reading, so a state of a class defined anywhere importable round-trips
without pickling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._keys import SCHEMA, fingerprint

ARRAYS = "arrays.npz"
META = "meta.json"
MARKER = "store.json"
TEMPORARY = ".tmp-"
"""The prefix of the temporary files `atomic_write` renames into place; one left behind was a write interrupted."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()


class CorruptRecordError(ValueError):
    """A stored record is incomplete, does not match its checksum, or cannot be decoded."""


class StoreSchemaError(ValueError):
    """A folder given as a store holds records of another schema (or is not a store)."""


_IN_FLIGHT: set[str] = set()
"""The temporary files of this process's writes not yet renamed into place."""


def discard_temporaries() -> None:
    """Delete the temporary files of this process's writes in flight: what a write leaves when the process ends in
    the middle of it without unwinding (`os._exit`, as a Ctrl-C of the command line does)."""
    for tmp in list(_IN_FLIGHT):
        Path(tmp).unlink(missing_ok=True)


def atomic_write(target: Path, payload: bytes) -> None:
    """Write `payload` to `target` through a temporary file in the same folder and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f"{TEMPORARY}{target.name}.")
    _IN_FLIGHT.add(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _MODE)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _IN_FLIGHT.discard(tmp)
    # The rename survives a crash once the folder's entry is on disk; a file system that cannot sync a folder still
    # renamed atomically.
    try:
        folder = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def write_json(target: Path, value: Any) -> None:
    """`value` as indented JSON, written atomically (NumPy scalars and arrays converted)."""
    atomic_write(target, json.dumps(value, indent=2, default=_json_default).encode())


def write_figure(figure, target: str | os.PathLike, **options) -> None:
    """`figure.savefig(target, **options)` (a Matplotlib figure), written atomically in the format of the target's
    suffix: a figure interrupted while it renders leaves no partial file, and an earlier one there stays whole."""
    target = Path(target)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=target.suffix[1:] or None, **options)
    atomic_write(target, buffer.getvalue())


def write_record(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write `path/arrays.npz`, then `path/meta.json` (= `meta` plus the arrays' sha256 and size), each atomically.

    A previous record's metadata is removed first, so a write interrupted before its metadata leaves no
    metadata at all (never an old one beside new arrays). Both files' contents are made before either is touched:
    arrays that would need pickling (dtype object: `read_record` would refuse them) and metadata that JSON cannot
    hold are refused (ValueError) with a previous record left whole."""
    path = Path(path)
    objects = [name for name, array in arrays.items() if np.asarray(array).dtype == object]
    if objects:
        raise ValueError(f"a record holds numeric or string arrays, not Python objects: {', '.join(objects)}")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # pyright: ignore[reportArgumentType]  (numpy's stubs match **arrays to allow_pickle)
    payload = buffer.getvalue()
    meta = {**meta, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    try:
        text = json.dumps(meta, indent=2, default=_json_default).encode()
    except (TypeError, ValueError) as err:
        raise ValueError(f"a record's metadata must be JSON: {err}") from err
    path.mkdir(parents=True, exist_ok=True)
    (path / META).unlink(missing_ok=True)
    atomic_write(path / ARRAYS, payload)
    atomic_write(path / META, text)
    return path


def peek_record(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a record that looks complete, without reading its arrays: its metadata parses and its arrays
    file has the size the metadata records (the checksum is checked where the arrays are read, `read_record`).
    FileNotFoundError where there is no such folder, CorruptRecordError otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no record at {path}" + (" (a file, not a record folder)" if path.exists() else ""))
    try:
        meta = json.loads((path / META).read_text())
        size = (path / ARRAYS).stat().st_size
    except (OSError, json.JSONDecodeError) as err:
        raise CorruptRecordError(f"no complete record at {path}: {err}") from err
    if not isinstance(meta, dict):
        raise CorruptRecordError(f"{path / META} does not hold a record's metadata")
    if meta.get("bytes") != size:
        raise CorruptRecordError(f"{path / ARRAYS} has {size} bytes, not the {meta.get('bytes')} its {META} records")
    return meta


def read_record(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and metadata of a complete record: FileNotFoundError where there is no such folder,
    CorruptRecordError where it holds no complete record."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no record at {path}" + (" (a file, not a record folder)" if path.exists() else ""))
    try:
        meta = json.loads((path / META).read_text())
        payload = (path / ARRAYS).read_bytes()
    except (OSError, json.JSONDecodeError) as err:
        raise CorruptRecordError(f"no complete record at {path}: {err}") from err
    if not isinstance(meta, dict):
        raise CorruptRecordError(f"{path / META} does not hold a record's metadata")
    if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
        raise CorruptRecordError(f"{path / ARRAYS} does not match the checksum in {META}")
    try:
        with np.load(io.BytesIO(payload)) as data:
            return dict(data), meta
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise CorruptRecordError(f"{path / ARRAYS} cannot be read as arrays: {err}") from err


STALE_TEMPORARY = 600.0
"""Seconds after which a temporary file is an interrupted write's, not another writer's in flight (a write takes
well under a second)."""


def remove_temporaries(path: Path, age: float = STALE_TEMPORARY) -> list[Path]:
    """Delete the temporary files interrupted writes left in the folder `path` (older than `age` seconds, so that a
    concurrent writer's file in flight is left alone); returns them."""
    now = time.time()
    left = []
    for tmp in sorted(path.glob(f"{TEMPORARY}*")) if path.is_dir() else []:
        try:
            if now - tmp.stat().st_mtime > age:
                tmp.unlink(missing_ok=True)
                left.append(tmp)
        except FileNotFoundError:  # its writer renamed it meanwhile
            pass
    return left


def open_store(root: str | os.PathLike, create: bool = True) -> Path:
    """The store folder `root`, created with its schema marker if new (unless `create` is False: then only checked);
    StoreSchemaError if it is a folder of another schema's records (or not a store at all), with what to do."""
    root = Path(root)
    marker = root / MARKER
    if root.exists() and not root.is_dir():
        raise StoreSchemaError(f"the store {root} is a file, not a folder")
    if marker.exists():
        try:
            schema = json.loads(marker.read_text()).get("schema")
        except (OSError, json.JSONDecodeError, AttributeError):
            schema = "unreadable"
        if schema != SCHEMA:
            raise StoreSchemaError(
                f"the store {root} holds records of schema {schema}, keyed differently from this gradflow's "
                f"(schema {SCHEMA}): they are not reused. Move it away or delete it, or choose another store"
            )
        return root
    if root.exists() and any(not p.name.startswith(".") and p.name != MARKER for p in root.iterdir()):
        raise StoreSchemaError(
            f"{root} is not empty and has no {MARKER}: it is not a gradflow store, or one written before stores had "
            f"schemas (keyed differently, never reused). Move it away or delete it, or choose another store"
        )
    if not create:
        return root
    root.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"schema": SCHEMA, "what": "gradflow store: one folder per record, named by its content key"})
    return root


def cached(root: str | os.PathLike, inputs: Any, compute, *, fresh: bool = False) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays `compute()` returns for `inputs`, stored once in the store `root` under `fingerprint(inputs)`.

    `inputs` must hold everything the result depends on (problems, flows and settings are fingerprinted by
    content). Returns (arrays, reused): reused is False when they were computed now (always with `fresh`). A
    corrupt record is computed again.
    """
    path = open_store(root) / ("c" + fingerprint({"schema": SCHEMA, "inputs": inputs}))
    if not fresh:
        try:
            arrays, _ = read_record(path)
            return arrays, True
        except (FileNotFoundError, CorruptRecordError):
            pass
    remove_temporaries(path)
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    write_record(path, arrays, {"schema": SCHEMA})
    return arrays, False


def encode_tree(tree) -> tuple[list[np.ndarray], dict]:
    """The leaves of a state pytree (host arrays, in order) and a JSON description of its structure."""
    leaves: list[np.ndarray] = []
    return leaves, _encode(tree, leaves)


def decode_tree(structure: dict, leaves: list[np.ndarray]):
    """The pytree that `encode_tree` described, rebuilt around `leaves`."""
    try:
        return _decode(structure, leaves)
    except (KeyError, IndexError, TypeError, ValueError, ImportError, AttributeError) as err:
        raise CorruptRecordError(f"cannot rebuild the stored state structure: {err!r}") from err


def _encode(node, leaves: list) -> dict:
    if node is None:
        return {"none": True}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return {
            "namedtuple": _class_name(type(node)),
            "fields": {name: _encode(getattr(node, name), leaves) for name in node._fields},  # pyright: ignore[reportAttributeAccessIssue]
        }
    if isinstance(node, (tuple, list)):
        return {type(node).__name__: [_encode(child, leaves) for child in node]}
    if isinstance(node, dict):
        if not all(isinstance(k, str) for k in node):
            raise TypeError(f"state dicts must have string keys; got {list(node)!r}")
        return {"dict": {k: _encode(v, leaves) for k, v in node.items()}}
    if isinstance(node, eqx.Module):
        fields = {}
        for field in dataclasses.fields(node):
            value = getattr(node, field.name)
            fields[field.name] = (
                {"static": _static_json(field.name, value)} if field.metadata.get("static") else _encode(value, leaves)
            )
        return {"module": _class_name(type(node)), "fields": fields}
    if isinstance(node, (np.ndarray, np.generic, int, float)) or hasattr(node, "__array__"):
        leaves.append(np.asarray(node))
        return {"leaf": len(leaves) - 1}
    raise TypeError(
        f"cannot store a state node of type {type(node).__name__}: use tuples, lists, dicts, "
        "NamedTuples, Equinox modules and arrays"
    )


def _decode(node: dict, leaves: list):
    if "none" in node:
        return None
    if "leaf" in node:
        return leaves[node["leaf"]]
    if "tuple" in node:
        return tuple(_decode(child, leaves) for child in node["tuple"])
    if "list" in node:
        return [_decode(child, leaves) for child in node["list"]]
    if "dict" in node:
        return {k: _decode(v, leaves) for k, v in node["dict"].items()}
    if "namedtuple" in node:
        cls = _import_class(node["namedtuple"])
        if not (issubclass(cls, tuple) and hasattr(cls, "_fields")):
            raise TypeError(f"{node['namedtuple']} is not a NamedTuple")
        return cls(**{name: _decode(child, leaves) for name, child in node["fields"].items()})
    cls = _import_class(node["module"])
    if not issubclass(cls, eqx.Module):
        raise TypeError(f"{node['module']} is not an Equinox module")
    # As Equinox itself unflattens a module: no __init__ (its converters and checks ran when it was made).
    module = object.__new__(cls)
    for name, child in node["fields"].items():
        object.__setattr__(module, name, _from_static(child["static"]) if "static" in child else _decode(child, leaves))
    return module


def _class_name(cls: type) -> str:
    if "<locals>" in cls.__qualname__:
        raise TypeError(f"cannot store an instance of {cls.__qualname__}: define its class at module level")
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(name: str) -> type:
    module, qualname = name.split(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise TypeError(f"{name} is not a class")
    return obj


def _static_json(name: str, value):
    """A static field as JSON; tuples are tagged so that they come back as tuples (hashable, as static needs)."""
    if isinstance(value, tuple):
        return {"tuple": [_static_json(name, v) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"static field {name!r} holds a {type(value).__name__}; only JSON values and tuples are stored")


def _from_static(value):
    if isinstance(value, dict):
        return tuple(_from_static(v) for v in value["tuple"])
    return value


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
