"""ncflow: batched JAX simulation of the unconstrained features model (neural collapse under MSE).

Public API::

    import ncflow
    p = ncflow.Problem(K=10, d=16, n=100, lambda_w=5e-4, lambda_h=5e-4)
    ncflow.predict(p)                        # closed-form optimum (ncflow.theory.predict)
    r = ncflow.simulate(p, runs=1000)        # batched GD + classification
    print(r.report()); r.outcomes(); r.save("out/")
    r.to_pandas(); ncflow.sweep_table("runs/lambda")   # DataFrames (pip install ncflow[pandas])

``import ncflow`` is cheap: every name below is imported on first use (PEP 562), so the
command line's ``ncflow theory`` never starts the engine, optax or diffrax.

Layers (each imports only from the layers below it; checked by import-linter in CI)::

    ncflow.cli                                      the command line
    ncflow.sweep | ncflow.plot                      grids, resume, figures
    ncflow.features | ncflow.landscape              real features; Hessian probes
    ncflow.batch                                    MANY runs: layout, memory, lanes, programs, loop
    ncflow.result                                   the one object a simulation returns
    ncflow.report | ncflow.outcomes                 report text; classification and tolerances
    ncflow.dynamics                                 ONE run's state and steppers (GD, optax, flow), starts
    ncflow.maths                                    ONE run's maths: objective, theory, collapsed, metrics
    ncflow.config | ncflow.problem                  validated settings
    ncflow.settings                                 the one table of settings
    ncflow.codes | errors | io | progress | stats   leaves
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ncflow")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

#: public name -> (module, attribute or None for the module itself)
_LAZY = {
    "Problem": ("ncflow.problem", "Problem"),
    "ProblemError": ("ncflow.errors", "ProblemError"),
    "Config": ("ncflow.config", "Config"),
    "ConfigError": ("ncflow.errors", "ConfigError"),
    "Point": ("ncflow.batch.loop", "Point"),
    "simulate": ("ncflow.batch.api", "simulate"),
    "simulate_points": ("ncflow.batch.api", "simulate_points"),
    "predict": ("ncflow.maths.theory", "predict"),
    "Prediction": ("ncflow.maths.theory", "Prediction"),
    "Params": ("ncflow.maths.objective", "Params"),
    "Collapsed": ("ncflow.maths.collapsed", "Collapsed"),
    "LABELS": ("ncflow.codes", "LABELS"),
    "RELU_LABELS": ("ncflow.codes", "RELU_LABELS"),
    "ALL_LABELS": ("ncflow.codes", "ALL_LABELS"),
    "Tolerances": ("ncflow.outcomes", "Tolerances"),
    "Result": ("ncflow.result", "Result"),
    "load_summary": ("ncflow.result", "load_summary"),
    "load_table": ("ncflow.result", "load_table"),
    "sweep_table": ("ncflow.sweep.frame", "sweep_table"),
    # submodules under their short names
    "theory": ("ncflow.maths.theory", None),
    "objective": ("ncflow.maths.objective", None),
    "metrics": ("ncflow.maths.metrics", None),
    "collapsed": ("ncflow.maths.collapsed", None),
    "lanczos": ("ncflow.maths.lanczos", None),
    "solvers": ("ncflow.dynamics.build", None),
    "flow": ("ncflow.dynamics.flow", None),
    "landscape": ("ncflow.landscape", None),
    "features": ("ncflow.features", None),
    "io": ("ncflow.io", None),
    "plot": ("ncflow.plot", None),
    "sweep": ("ncflow.sweep", None),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'ncflow' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
