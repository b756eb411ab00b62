"""What a batch costs: bytes of one run's state, the batch's estimated peak, the memory available,
and the cache-group width derived from the state size."""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from ncflow.problem import Problem

#: largest cache group; groups never depend on the number of runs, so a run computes with the
#: same vector width (and so the same rounding) alone, in a batch of 1000, or on any device count
MAX_GROUP = 64


def available_memory_bytes(devices=None) -> int:
    """Memory the engine may use on ONE device: on accelerators the least free memory
    (``bytes_limit − bytes_in_use``) among ``devices`` (default: every device of the job) that
    report it; on a CPU (whose devices share the host's memory) MemAvailable."""
    devs = list(devices) if devices is not None else jax.devices()
    free = []
    for dev in devs:
        if dev.platform != "cpu" and dev.process_index == jax.process_index():
            stats = dev.memory_stats() or {}
            if "bytes_limit" in stats:
                free.append(int(stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    return min(free) if free else host_memory_bytes()


def host_memory_bytes() -> int:
    """The host's available memory (MemAvailable, bytes)."""
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
    params = dyn.space.abstract_params(problem)
    state = jax.eval_shape(lambda p: dyn.from_params(problem, p), params)
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(state)))


def estimate_memory(problem: Problem, dyn, lanes: int, group: int, wide: bool = False, devices: int = 1) -> int:
    """Estimated peak bytes of ONE device holding ``lanes`` lanes (times ``devices`` on a CPU,
    whose devices share the host's memory): the state ×4 (state, donated copy, gather, summaries)
    plus the start of a group drawn full-size (the collapsed engine collapses starts group by group;
    the wide plan draws them in batches of at most 256 MiB), plus, on the wide plan, the step's
    temporaries over all lanes at once (about 3 states: the step's intermediates and the masked
    copy) and the per-lane stop-rule columns."""
    item = np.dtype(problem.dtype).itemsize
    state = state_bytes(problem, dyn)
    init_tmp = group * (problem.K * problem.d + 2 * problem.d * problem.N) * item
    need = 4 * lanes * state
    if wide:
        need += min(init_tmp, 2**28) + 3 * lanes * state + 24 * 8 * lanes
    else:
        need += init_tmp
    return need * devices


def auto_group(problem: Problem, dyn) -> int:
    """Runs per cache group: the power of two whose state is about 256 KiB, in [1, MAX_GROUP]."""
    g = max(1, (256 * 1024) // max(state_bytes(problem, dyn), 1))
    return int(min(1 << int(math.floor(math.log2(g))), MAX_GROUP))
