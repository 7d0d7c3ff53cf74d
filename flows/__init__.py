"""gradflow's simulator: gradient-flow ODEs of matrix factorization, integrated with Diffrax in float64.

A flow is a problem's objective x a parameterization x dynamics:

    problem = flows.sensing(n=30, m=180, rank=2, seed=0)
    flow = flows.Flow(problem, flows.Symmetric())                       # gradient flow of W = U U^T
    flow = flows.Flow(problem, flows.Deep(depth=3), penalty=flows.Ratio(), strength=1e-3,
                      dynamics=flows.Adam(a=100.0, b=1.0, eps=1e-8))
    traj = flows.solve(flow, flow.init(scale=1e-3), t1=1e3, stop_loss=1e-10)
"""

import jax

# float64 throughout: switched on once, here, before any array is made.
jax.config.update("jax_enable_x64", True)

from ._chebyshev import RungeKuttaChebyshev  # noqa: E402
from ._control import ArraywiseRelative, LandOnEvent, LandOnTimes, StopOnCollapse, scaled_error  # noqa: E402
from ._descend import descend  # noqa: E402
from ._dynamics import (  # noqa: E402
    DYNAMICS,
    AbstractAdaptive,
    AbstractDynamics,
    Adam,
    GradientFlow,
    Modified,
    Momentum,
    RMSProp,
    Sign,
)
from ._flow import AbstractFlow, AbstractGaussNewton, Flow, GaussNewton, PaddedGaussNewton  # noqa: E402
from ._keys import SCHEMA, fingerprint  # noqa: E402
from ._merson import Merson, Tsit5ThenMerson  # noqa: E402
from ._ndf import NDF  # noqa: E402
from ._parameterizations import (  # noqa: E402
    PARAMETERIZATIONS,
    AbstractParameterization,
    Deep,
    Direct,
    Factored,
    Symmetric,
)
from ._penalties import (  # noqa: E402
    PENALTIES,
    AbstractMatrixPenalty,
    AbstractPenalty,
    EachFactor,
    Frobenius,
    HoyerSquare,
    Nuclear,
    Ratio,
)
from ._plot import plot_trajectory  # noqa: E402
from ._problems import (  # noqa: E402
    AbstractProblem,
    CommutingProblem,
    DenseProblem,
    EntryProblem,
    LossFloor,
    Problem,
    RankOneProblem,
    commuting,
    completion,
    low_rank_truth,
    rank_one_sensing,
    sensing,
)
from ._solve import SOLVERS, FaithfulnessWarning, SolverError, default_solver, default_ts, solve, solver_by_name  # noqa: E402
from ._solver import AbstractFlowSolver, LinearisableTerm  # noqa: E402
from ._stiff import (  # noqa: E402
    AbstractGaussNewtonSolve,
    AbstractLinearSolver,
    AbstractShiftedSolve,
    AbstractTsit5Then,
    ConjugateGradient,
    ConjugateGradientSolve,
    KrylovJacobian,
    KrylovJacobianSolve,
    LinearlyImplicitExtrapolation,
    Tsit5ThenChebyshev,
    Tsit5ThenExtrapolation,
    Tsit5ThenNDF,
    Woodbury,
    WoodburySolve,
)
from ._store import (  # noqa: E402
    CorruptRecordError,
    StoreSchemaError,
    atomic_write,
    cached,
    decode_tree,
    encode_tree,
    open_store,
    read_record,
    write_figure,
    write_json,
    write_record,
)
from ._sweep import Run, grid, sweep  # noqa: E402
from ._trajectory import CorruptTrajectoryError, Trajectory, effective_rank  # noqa: E402

__all__ = [
    # the flow and its three families
    "AbstractFlow",
    "Flow",
    "AbstractParameterization",
    "Direct",
    "Symmetric",
    "Factored",
    "Deep",
    "PARAMETERIZATIONS",
    "AbstractPenalty",
    "AbstractMatrixPenalty",
    "Nuclear",
    "Ratio",
    "HoyerSquare",
    "Frobenius",
    "EachFactor",
    "PENALTIES",
    "AbstractDynamics",
    "AbstractAdaptive",
    "GradientFlow",
    "Adam",
    "RMSProp",
    "Momentum",
    "Sign",
    "Modified",
    "DYNAMICS",
    # problems
    "AbstractProblem",
    "Problem",
    "DenseProblem",
    "EntryProblem",
    "CommutingProblem",
    "RankOneProblem",
    "LossFloor",
    "sensing",
    "completion",
    "commuting",
    "rank_one_sensing",
    "low_rank_truth",
    # solving, finite steps, sweeps
    "solve",
    "descend",
    "sweep",
    "grid",
    "Run",
    "SolverError",
    "FaithfulnessWarning",
    "default_solver",
    "default_ts",
    "SOLVERS",
    "solver_by_name",
    "ArraywiseRelative",
    "LandOnEvent",
    "LandOnTimes",
    "StopOnCollapse",
    "scaled_error",
    "AbstractGaussNewton",
    "GaussNewton",
    "PaddedGaussNewton",
    "LinearisableTerm",
    "AbstractFlowSolver",
    "LinearlyImplicitExtrapolation",
    "Tsit5ThenExtrapolation",
    "AbstractLinearSolver",
    "AbstractShiftedSolve",
    "AbstractGaussNewtonSolve",
    "Woodbury",
    "WoodburySolve",
    "ConjugateGradient",
    "ConjugateGradientSolve",
    "KrylovJacobian",
    "KrylovJacobianSolve",
    "RungeKuttaChebyshev",
    "AbstractTsit5Then",
    "Tsit5ThenChebyshev",
    "NDF",
    "Tsit5ThenNDF",
    "Merson",
    "Tsit5ThenMerson",
    # results
    "Trajectory",
    "effective_rank",
    "CorruptTrajectoryError",
    "CorruptRecordError",
    "StoreSchemaError",
    "fingerprint",
    "SCHEMA",
    "open_store",
    "cached",
    "encode_tree",
    "decode_tree",
    "read_record",
    "write_record",
    "write_json",
    "write_figure",
    "atomic_write",
    "plot_trajectory",
]
