"""Trajectories: saved states of a flow, their end-to-end matrices and metrics computed on demand."""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._store import CorruptRecordError, decode_tree, encode_tree, read_record, write_record

_VERSIONED = ("gradflow", "jax", "jaxlib", "diffrax", "equinox", "optax", "lineax", "numpy", "scipy")


CorruptTrajectoryError = CorruptRecordError
"""A saved trajectory is incomplete or does not match its checksum (`flows._store.CorruptRecordError`)."""


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
        return cls(
            ts=np.asarray(ts),
            states=jax.device_get(states),
            W=W,
            loss=loss,
            truth=None if truth is None else np.asarray(truth),
            conserved=conserved,
            stats=dict(stats or {}),
            config=dict(config or {}),
        )

    # -- metrics ------------------------------------------------------------------------------
    @functools.cached_property
    def singular_values(self) -> np.ndarray:
        """(T, min(n1, n2)) singular values of W, descending; NaN where W has a non-finite entry (a failed run's last
        iterate can overflow in W while its factors are finite)."""
        finite = np.all(np.isfinite(self.W), axis=(-2, -1))
        values = np.full((*self.W.shape[:-2], min(self.W.shape[-2:])), np.nan)
        values[finite] = np.linalg.svd(self.W[finite], compute_uv=False)
        return values

    @functools.cached_property
    def nuclear_norm(self) -> np.ndarray:
        """||W||_* over time."""
        return self.singular_values.sum(axis=-1)

    @functools.cached_property
    def effective_rank(self) -> np.ndarray:
        """`effective_rank` of W over time."""
        return effective_rank(self.singular_values)

    @functools.cached_property
    def relative_error(self) -> np.ndarray:
        """||W - W*||_F / ||W*||_F over time."""
        if self.truth is None:
            raise ValueError("this trajectory's problem has no ground truth")
        return _norms(self.W - self.truth) / np.linalg.norm(self.truth)

    def conserved_drift(self) -> dict[str, np.ndarray]:
        r"""For each conserved P - Q: $\|C(t) - C(0)\|_F / (\|P(t)\|_F + \|Q(t)\|_F)$ over time."""
        drift = {}
        for name, (P, Q) in self.conserved.items():
            C = P - Q
            drift[name] = _norms(C - C[0]) / (_norms(P) + _norms(Q))
        return drift

    def faithfulness(self) -> dict[str, Any]:
        """How far to trust this trajectory: the solver and whether (and when) it switched to its stiff
        phase, steps / rejected / evaluations, whether saved points were landed on or interpolated, the
        largest drift of each conserved quantity (`conserved_drift`), and rtol to read them against."""
        keys = (
            "num_steps",
            "num_rejected_steps",
            "vf_evaluations",
            "switched",
            "t_switch",
            "linearisations",
            "saved_times",
            "stopped_by_loss",
            "t_final",
        )
        return {
            "solver": self.config.get("solver", self.config.get("method")),
            "rtol": self.config.get("rtol"),
            **{k: self.stats[k] for k in keys if k in self.stats},
            "conserved_drift": {name: float(d.max()) for name, d in self.conserved_drift().items()},
        }

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write `path/arrays.npz` and `path/meta.json` atomically (meta last, holding the arrays' hash).

        A reader sees either the previous complete save or the new one; an interrupted write leaves
        a checksum mismatch that `load` reports as `CorruptTrajectoryError`. States of any pytree form
        `flows._store` encodes (tuples, dicts, NamedTuples, Equinox modules) round-trip.
        """
        leaves, structure = encode_tree(self.states)
        arrays = {"ts": self.ts, "W": self.W, "loss": self.loss}
        if self.truth is not None:
            arrays["truth"] = self.truth
        arrays |= {f"state_{i}": leaf for i, leaf in enumerate(leaves)}
        for i, (P, Q) in enumerate(self.conserved.values()):
            arrays[f"conserved_{i}_P"], arrays[f"conserved_{i}_Q"] = P, Q
        meta = {
            "format": 2,
            "config": self.config,
            "stats": self.stats,
            "state_structure": structure,
            "conserved": list(self.conserved),
            "versions": _versions(),
        }
        return write_record(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trajectory":
        """Read a saved trajectory, checking it is complete and matches its checksum."""
        arrays, meta = read_record(path)
        structure = meta.get("state_structure")
        if structure is None:
            raise CorruptTrajectoryError(f"{path} holds no state structure (format {meta.get('format')}, not 2)")
        try:
            leaves = [arrays[f"state_{i}"] for i in range(sum(k.startswith("state_") for k in arrays))]
            conserved = {
                name: (arrays[f"conserved_{i}_P"], arrays[f"conserved_{i}_Q"])
                for i, name in enumerate(meta["conserved"])
            }
            return cls(
                ts=arrays["ts"],
                states=decode_tree(structure, leaves),
                W=arrays["W"],
                loss=arrays["loss"],
                truth=arrays.get("truth"),
                conserved=conserved,
                stats=meta["stats"],
                config=meta["config"],
            )
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise CorruptTrajectoryError(f"{path} does not hold a trajectory: {type(err).__name__}: {err}") from err


def effective_rank(singular_values) -> np.ndarray:
    r"""Roy & Vetterli's effective rank $\exp(-\sum_k p_k \log p_k)$, $p_k = \sigma_k / \sum \sigma$, of each row of
    singular values (a matrix's: `np.linalg.svd(W, compute_uv=False)`). Between 1 and their number; NaN where all
    are 0."""
    s = np.asarray(singular_values, dtype=float)
    total = s.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = s / total
        entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return np.where(total[..., 0] > 0, np.exp(entropy), np.nan)


@eqx.filter_jit
def _record(flow, states):
    conserved = jax.vmap(flow.conserved)(states)
    return jax.vmap(flow.product)(states), jax.vmap(flow.loss)(states), conserved


def _norms(X: np.ndarray) -> np.ndarray:
    """The Frobenius (or, for vectors, Euclidean) norm of each saved time's entry, along the leading time axis (inf
    where it overflows)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.sqrt(np.sum(X**2, axis=tuple(range(1, X.ndim))))


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions
