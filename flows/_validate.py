"""Input checks that run on the host, before anything is traced or compiled."""

from __future__ import annotations

import numbers
import os

import numpy as np


def check_finite(name: str, value) -> None:
    if not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{name} has non-finite entries (NaN or inf)")


def check_positive_int(name: str, value, most: int | None = None) -> int:
    """`value` as a Python int (NumPy's integers too, so that keys do not depend on the type); ValueError unless it is
    a positive integer, and at most `most` where given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if most is not None and int(value) > most:
        raise ValueError(f"{name} must be at most {most}; got {value!r}")
    return int(value)


def check_seed(seed) -> int:
    """`seed` as a Python int; ValueError unless it is a nonnegative integer (NumPy's generators take nothing else)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a nonnegative integer; got {seed!r}")
    return int(seed)


def check_positive(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number; got {value!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return value


def check_nonnegative(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-negative number; got {value!r}") from None
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative finite number; got {value!r}")
    return value


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")


def check_times(ts, t1: float) -> np.ndarray:
    """Save times: a non-empty, finite, strictly increasing 1-d array within [0, t1]."""
    ts = np.asarray(ts, dtype=np.float64)
    if ts.ndim != 1 or ts.size == 0:
        raise ValueError(f"ts must be a non-empty 1-d array of times; got shape {ts.shape}")
    check_finite("ts", ts)
    if np.any(np.diff(ts) <= 0) or ts[0] < 0 or ts[-1] > t1:
        raise ValueError(f"ts must be strictly increasing and within [0, t1 = {t1}]")
    return ts


GIB = 2**30


def available_memory() -> int | None:
    """Bytes of memory a new allocation can have now: Linux's MemAvailable (free plus reclaimable
    caches), else the free pages POSIX reports; None where neither can be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(what: str, nbytes: int | np.integer, alternative: str) -> None:
    """ValueError, before anything is allocated, if `what` needs more than the available memory.

    `nbytes` is the caller's estimate of the host memory it is about to allocate at its peak (JAX on CPU
    adopts NumPy's buffers without copying them); `alternative` says what to do instead. Nothing is
    refused where the available memory cannot be read.
    """
    available = available_memory()
    if available is not None and nbytes > available:
        raise ValueError(
            f"{what} needs {nbytes / GIB:.3g} GiB of memory and {available / GIB:.3g} GiB is available: {alternative}"
        )
