"""Figures of one trajectory: loss, singular values and error to the truth against time."""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from ._trajectory import Trajectory


def plot_trajectory(
    traj: Trajectory, path: str | os.PathLike | None = None, *, title: str | None = None, max_singular_values: int = 10
) -> Figure:
    """Three panels on a log time axis (t = 0 is left out): the data loss, the leading singular
    values of W, and ||W - W*||_F / ||W*||_F where the problem has a truth. Saved to `path` if given."""
    positive = traj.ts > 0
    t = traj.ts[positive]
    panels = 3 if traj.truth is not None else 2
    fig = Figure(figsize=(4.2 * panels, 3.6), layout="constrained")
    axes = fig.subplots(1, panels)

    axes[0].loglog(t, np.maximum(traj.loss[positive], np.finfo(float).tiny), color="k")
    axes[0].set(xlabel="time t", ylabel=r"loss $\frac{1}{2}\|\mathcal{A}(W) - y\|^2$", title="data loss")

    sv = traj.singular_values[positive][:, :max_singular_values]
    for k in range(sv.shape[1]):
        axes[1].loglog(t, np.maximum(sv[:, k], np.finfo(float).tiny), label=rf"$\sigma_{{{k + 1}}}$")
    if traj.truth is not None:
        for s in np.linalg.svd(traj.truth, compute_uv=False)[:max_singular_values]:
            if s > 1e-12 * np.abs(traj.truth).max():
                axes[1].axhline(s, color="0.6", lw=0.8, ls="--")
    axes[1].set(xlabel="time t", ylabel="singular value of W", title="singular values (dashed: truth)")
    axes[1].legend(fontsize=7, ncol=2, loc="upper left")

    if traj.truth is not None:
        axes[2].loglog(t, traj.relative_error[positive], color="C3")
        axes[2].set(xlabel="time t", ylabel=r"$\|W - W^*\|_F / \|W^*\|_F$", title="error to the truth")
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=130)
    return fig
