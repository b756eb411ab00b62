"""What a batch costs: bytes of one run's state, the batch's estimated peak, the memory available,
and the cache-group width derived from the state size."""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from ncflow.maths.objective import Params
from ncflow.problem import Problem

#: largest cache group; groups never depend on the number of runs, so a run computes with the
#: same vector width (and so the same rounding) alone, in a batch of 1000, or on any device count
MAX_GROUP = 64


def available_memory_bytes() -> int:
    """Memory the engine may use: free device memory on an accelerator, else MemAvailable."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def state_bytes(problem: Problem, dyn) -> int:
    """Bytes of one run's carried state under ``dyn`` (a :class:`~ncflow.dynamics.build.Dynamics`),
    from its abstract state (nothing is allocated)."""
    dt = problem.dtype
    K, d, N = problem.K, problem.d, problem.N
    params = Params(jax.ShapeDtypeStruct((K, d), dt), jax.ShapeDtypeStruct((d, N), dt), jax.ShapeDtypeStruct((K,), dt))
    state = jax.eval_shape(lambda p: dyn.from_params(problem, p), params)
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(state)))


def estimate_memory(problem: Problem, dyn, runs: int, group: int) -> int:
    """Estimated peak bytes of a batch: state ×4 (state, donated copy, gather, summaries)
    plus one group's full-size start (the collapsed engine builds starts group by group)."""
    item = np.dtype(problem.dtype).itemsize
    init_tmp = group * (problem.K * problem.d + 2 * problem.d * problem.N) * item
    return 4 * runs * state_bytes(problem, dyn) + init_tmp


def auto_group(problem: Problem, dyn) -> int:
    """Runs per cache group: the power of two whose state is about 256 KiB, in [1, MAX_GROUP]."""
    g = max(1, (256 * 1024) // max(state_bytes(problem, dyn), 1))
    return int(min(1 << int(math.floor(math.log2(g))), MAX_GROUP))
