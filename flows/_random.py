"""Random matrices shared by the problems and the parameterizations' inits."""

from __future__ import annotations

import numpy as np


def orthonormal_columns(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A Haar-random rows x cols matrix with orthonormal columns (rows >= cols).

    QR of a Gaussian matrix, with R's diagonal made positive: without that sign fix the columns'
    signs follow the QR routine's convention and Q is not Haar-distributed.
    """
    if rows < cols:
        raise ValueError(f"orthonormal columns need rows >= cols; got {rows} x {cols}")
    Q, R = np.linalg.qr(rng.standard_normal((rows, cols)))
    return Q * np.sign(np.diag(R))
