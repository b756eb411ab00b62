"""ncflow: batched JAX simulation of the unconstrained features model (neural collapse under MSE).

Public API::

    import ncflow
    p = ncflow.Problem(K=10, d=16, n=100, lambda_w=5e-4, lambda_h=5e-4)
    ncflow.theory.predict(p)                 # closed-form optimum
    r = ncflow.simulate(p, runs=1000)        # batched GD + classification
    print(r.report()); r.outcomes(); r.save("out/")
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ncflow")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from . import flow, landscape, metrics, objective, solvers, theory  # noqa: E402
from .collapsed import Collapsed  # noqa: E402
from .engine import Config, ConfigError, Point, simulate, simulate_points  # noqa: E402
from .objective import Params  # noqa: E402
from .outcomes import LABELS, Tolerances  # noqa: E402
from .problem import Problem, ProblemError  # noqa: E402
from .result import Result, load_summary, load_table  # noqa: E402
from .theory import Prediction, predict  # noqa: E402

__all__ = [
    "__version__", "Collapsed", "Config", "ConfigError", "LABELS", "Params", "Point", "Prediction",
    "Problem", "ProblemError", "Result", "Tolerances", "flow", "landscape", "load_summary", "load_table",
    "metrics", "objective", "predict", "simulate", "simulate_points", "solvers", "theory",
]
