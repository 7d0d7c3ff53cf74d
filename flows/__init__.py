"""gradflow's simulator: gradient-flow ODEs of matrix factorization, integrated with Diffrax in float64.

    problem = flows.sensing(n=30, m=180, rank=2, seed=0)
    flow = flows.Symmetric(problem)
    traj = flows.solve(flow, flow.init(scale=1e-3), t1=1e3, stop_loss=1e-10)
"""

import jax

# float64 throughout: switched on once, here, before any array is made.
jax.config.update("jax_enable_x64", True)

from ._flows import (  # noqa: E402
    AbstractFlow,
    AbstractParameterization,
    Deep,
    Direct,
    Factored,
    Symmetric,
)
from ._descend import descend  # noqa: E402
from ._dynamics import AbstractAdaptive, Adam, Modified, Momentum, Penalized, RMSProp, Sign  # noqa: E402
from ._penalties import AbstractPenalty, Frobenius, Nuclear, Ratio  # noqa: E402
from ._problems import (  # noqa: E402
    AbstractProblem,
    CommutingProblem,
    DenseProblem,
    EntryProblem,
    Problem,
    commuting,
    completion,
    sensing,
)
from ._plot import plot_trajectory  # noqa: E402
from ._stiff import GaussNewton, LinearlyImplicitExtrapolation, Tsit5ThenExtrapolation, kernel_matrix  # noqa: E402
from ._solve import SOLVERS, SolverError, default_solver, default_ts, solve, solver_by_name  # noqa: E402
from ._sweep import Run, grid, sweep  # noqa: E402
from ._trajectory import CorruptTrajectoryError, Trajectory  # noqa: E402

__all__ = [
    "AbstractFlow", "AbstractParameterization", "AbstractProblem", "CommutingProblem", "CorruptTrajectoryError",
    "Deep", "DenseProblem", "Direct", "EntryProblem", "Factored", "GaussNewton", "LinearlyImplicitExtrapolation",
    "Problem", "Run", "SOLVERS", "SolverError", "Symmetric", "Trajectory", "Tsit5ThenExtrapolation", "commuting",
    "completion", "default_solver", "default_ts", "grid", "kernel_matrix", "plot_trajectory", "sensing", "solve",
    "solver_by_name", "sweep",
    # penalties, dynamics and finite steps
    "AbstractAdaptive", "AbstractPenalty", "Adam", "Frobenius", "Modified", "Momentum", "Nuclear", "Penalized",
    "RMSProp", "Ratio", "Sign", "descend",
]
