"""Trajectories: saved states of a flow, their end-to-end matrices and metrics computed on demand."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

ARRAYS = "arrays.npz"
META = "meta.json"
_VERSIONED = ("jax", "jaxlib", "diffrax", "equinox", "optax", "lineax", "numpy", "scipy")


class CorruptTrajectoryError(ValueError):
    """A saved trajectory is incomplete or does not match its checksum."""


@dataclasses.dataclass(frozen=True, eq=False)
class Trajectory:
    """A run of a flow: `ts` (T,), `W` (T, n1, n2), `loss` (T,), `states` (pytree, leading axis T).

    `conserved` maps each conserved quantity's name to its pair (P, Q) over time, P - Q being
    constant along the exact flow. Metrics (singular values, effective rank, nuclear norm, error to
    the truth, drift of conserved quantities) are computed from W on first use. Host (NumPy) arrays.
    """

    ts: np.ndarray
    states: Any
    W: np.ndarray
    loss: np.ndarray
    truth: np.ndarray | None = None
    conserved: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_states(cls, flow, ts, states, stats=None, config=None) -> "Trajectory":
        """Record a flow's states at times `ts`: end-to-end matrices, data loss, conserved pairs."""
        W, loss, conserved = jax.device_get(_record(flow, states))
        truth = flow.problem.truth
        return cls(ts=np.asarray(ts), states=jax.device_get(states), W=W, loss=loss,
                   truth=None if truth is None else np.asarray(truth), conserved=conserved,
                   stats=dict(stats or {}), config=dict(config or {}))

    # -- metrics ------------------------------------------------------------------------------
    @functools.cached_property
    def singular_values(self) -> np.ndarray:
        """(T, min(n1, n2)) singular values of W, descending."""
        return np.linalg.svd(self.W, compute_uv=False)

    @functools.cached_property
    def nuclear_norm(self) -> np.ndarray:
        """||W||_* over time."""
        return self.singular_values.sum(axis=-1)

    @functools.cached_property
    def effective_rank(self) -> np.ndarray:
        r"""Roy & Vetterli's effective rank $\exp(-\sum_k p_k \log p_k)$, $p_k = \sigma_k / \sum \sigma$.

        Between 1 and min(n1, n2); NaN where W = 0.
        """
        s = self.singular_values
        total = s.sum(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = s / total
            entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
        return np.where(total[:, 0] > 0, np.exp(entropy), np.nan)

    @functools.cached_property
    def relative_error(self) -> np.ndarray:
        """||W - W*||_F / ||W*||_F over time."""
        if self.truth is None:
            raise ValueError("this trajectory's problem has no ground truth")
        diff = np.linalg.norm(self.W - self.truth, axis=(-2, -1))
        return diff / np.linalg.norm(self.truth)

    def conserved_drift(self) -> dict[str, np.ndarray]:
        r"""For each conserved P - Q: $\|C(t) - C(0)\|_F / (\|P(t)\|_F + \|Q(t)\|_F)$ over time."""
        drift = {}
        for name, (P, Q) in self.conserved.items():
            C = P - Q
            scale = np.linalg.norm(P, axis=(-2, -1)) + np.linalg.norm(Q, axis=(-2, -1))
            drift[name] = np.linalg.norm(C - C[0], axis=(-2, -1)) / scale
        return drift

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write `path/arrays.npz` and `path/meta.json` atomically (meta last, holding the arrays' hash).

        A reader sees either the previous complete save or the new one; an interrupted write leaves
        a checksum mismatch that `load` reports as `CorruptTrajectoryError`.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(self.states)
        arrays = {"ts": self.ts, "W": self.W, "loss": self.loss}
        if self.truth is not None:
            arrays["truth"] = self.truth
        state_paths = []
        for i, (key_path, leaf) in enumerate(leaves_with_paths):
            arrays[f"state_{i}"] = np.asarray(leaf)
            state_paths.append([_key_to_json(k) for k in key_path])
        for i, (name, (P, Q)) in enumerate(self.conserved.items()):
            arrays[f"conserved_{i}_P"], arrays[f"conserved_{i}_Q"] = P, Q
        payload = _npz_bytes(arrays)
        meta = {"format": 1, "sha256": hashlib.sha256(payload).hexdigest(), "config": self.config,
                "stats": self.stats, "state_paths": state_paths, "conserved": list(self.conserved),
                "versions": _versions()}
        _atomic_write(path / ARRAYS, payload)
        _atomic_write(path / META, json.dumps(meta, indent=2, default=_json_default).encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trajectory":
        """Read a saved trajectory, checking it is complete and matches its checksum."""
        path = Path(path)
        try:
            meta = json.loads((path / META).read_text())
            payload = (path / ARRAYS).read_bytes()
        except (OSError, json.JSONDecodeError) as err:
            raise CorruptTrajectoryError(f"no complete trajectory at {path}: {err}") from err
        if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
            raise CorruptTrajectoryError(f"{path / ARRAYS} does not match the checksum in {META}")
        with np.load(io.BytesIO(payload)) as data:
            arrays = dict(data)
        states = _build_tree(meta["state_paths"], [arrays[f"state_{i}"] for i in range(len(meta["state_paths"]))])
        conserved = {name: (arrays[f"conserved_{i}_P"], arrays[f"conserved_{i}_Q"])
                     for i, name in enumerate(meta["conserved"])}
        return cls(ts=arrays["ts"], states=states, W=arrays["W"], loss=arrays["loss"], truth=arrays.get("truth"),
                   conserved=conserved, stats=meta["stats"], config=meta["config"])


@eqx.filter_jit
def _record(flow, states):
    conserved = jax.vmap(flow.conserved)(states)
    return jax.vmap(flow.product)(states), jax.vmap(flow.loss)(states), conserved


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _atomic_write(target: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_to_json(key) -> list:
    if isinstance(key, jax.tree_util.SequenceKey):
        return ["seq", key.idx]
    if isinstance(key, jax.tree_util.DictKey):
        return ["dict", key.key]
    raise TypeError(f"flow states must be built from tuples, dicts and arrays; got key {key!r}")


def _build_tree(paths: list[list], leaves: list):
    """Rebuild a pytree of tuples and dicts from the key paths written by `save`."""
    if len(paths) == 1 and not paths[0]:
        return leaves[0]
    groups: dict = {}
    kind = paths[0][0][0]
    for path, leaf in zip(paths, leaves):
        groups.setdefault(path[0][1], ([], []))
        groups[path[0][1]][0].append(path[1:])
        groups[path[0][1]][1].append(leaf)
    children = {k: _build_tree(p, l) for k, (p, l) in groups.items()}
    if kind == "seq":
        return tuple(children[i] for i in sorted(children))
    return children


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
