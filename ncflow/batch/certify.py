"""The early certificate of a global outcome (THEORY §8), applied to the lanes of a batch.

At each check a running lane of a GD batch is *certified* when its current objective is below the
lowest non-global critical value with a margin that covers the dtype's rounding of f (H1) and its
step is small enough for the curvature bound of that sublevel set (H2): from then on every GD step
decreases f and the run converges to a point of the global set. The maths (f_sad, L(f), the
rounding bound) is :mod:`ncflow.maths.certificate`; this module only evaluates it per lane.

Deep linear UFMs (THEORY §9.3) take the same path with the deep landscape's gap and curvature bound
L_deep: sound, but it holds only at small steps (``certificate.step_limit``), so at practical steps
deep runs stop by the converged rule. The deep ReLU UFM has no gap (NaN): never certified.
"""

from __future__ import annotations

import equinox as eqx
import numpy as np

from ncflow.maths import certificate
from ncflow.problem import Problem

#: (H1) asks for f < f* + (1 − MARGIN)·(f_sad − f*), after the rounding bound of f
MARGIN = 0.1


def point_gap(problem: Problem, config) -> float | None:
    """f_sad − f* of a point, or None where no early call is made: optimizers other than plain GD
    (the theorem is about GD steps), float32 steps whose matrix products run at a reduced precision
    (``matmul_precision`` tf32/bf16: inexact gradient steps, outside the theorem), and the cases
    without a proof (``certificate.saddle_gap``: the deep ReLU UFM among them; the deep linear UFM has
    THEORY §9.3's gap)."""
    if config.optimizer != "gd":
        return None
    if problem.dtype == "float32" and getattr(config, "matmul_precision", "float32") != "float32":
        return None
    return certificate.saddle_gap(problem)


def certified_lanes(base: Problem, lanes, f: np.ndarray, space: str, sq_norm: np.ndarray, xp=np) -> np.ndarray:
    """Where the certificate holds, (lanes,) bool: running lanes with a gap (``lanes.saddle_gap``
    not NaN), finite f, (H1) and (H2) at the lanes' own coefficients and step sizes (at depth > 1
    the hidden layers' λ_1..λ_{L−1} too, ``lanes.lambda_hidden`` (lanes, L − 1)). ``space`` (the
    dynamics' state space name) names the formula f was evaluated with; a space the certificate
    module has no formulas for (not in ``certificate.SPACES``) is never certified. ``sq_norm``
    (lanes,) the states' ||W||² + ||H||² + ||b||² (deep: Σ_l ||W_l||² + ||H||² + ||b||²); both
    tighten the rounding bound of f. A §7 batch (class sizes
    or targets, ``base.general``) takes each lane's own N, ||T||_F and data floor
    (``lanes.samples``, ``lanes.target_norm``, ``lanes.data_floor``): its lanes may have different
    class sizes. ``xp``: numpy (the host, cpu plan) or jax.numpy (traced in the wide plan's device
    loop: every lane is evaluated and masked, since the lanes that need it are not known at trace
    time)."""
    if space not in certificate.SPACES:  # a state space without the certificate's formulas
        return xp.zeros(f.shape, bool)
    live = lanes.running & ~xp.isnan(lanes.saddle_gap) & xp.isfinite(f)
    idx = slice(None)
    if xp is np:
        out = np.zeros(len(f), bool)
        if not live.any():
            return out
        idx = np.nonzero(live)[0]
    # the base problem with the lanes' float64 coefficients as leaves (no re-validation); its static
    # part (K, d, bias, loss, dtype, §7 or not, the batch's largest N) is what the bounds read from it
    problem = eqx.tree_at(lambda p: (p.lambda_w, p.lambda_h, p.lambda_b), base,
                          (lanes.lambda_w[idx], lanes.lambda_h[idx], lanes.lambda_b[idx]))
    if base.depth > 1:  # λ_1..λ_{L−1} per lane (a None field is a leaf here)
        problem = eqx.tree_at(lambda p: p.lambda_hidden, problem, lanes.lambda_hidden[idx],
                              is_leaf=lambda v: v is None)
    data = dict(samples=lanes.samples[idx], target_norm=lanes.target_norm[idx], floor=lanes.data_floor[idx]) \
        if base.general else {}
    ok = certificate.certified(problem, f[idx], lanes.lr[idx], lanes.f_star[idx], lanes.saddle_gap[idx],
                               margin=MARGIN, space=space, sq_norm=sq_norm[idx], xp=xp, **data)
    if xp is np:
        out[idx] = ok
        return out
    return live & ok


def record_first(lanes, cert: np.ndarray, f: np.ndarray, xp=np):
    """The lane table with ``certified_step`` and ``certified_margin`` set where the certificate
    holds (``cert``, (lanes,) bool) for the first time (``xp``: numpy or jax.numpy)."""
    first = cert & (lanes.certified_step < 0)
    return lanes.replace(certified_step=xp.where(first, lanes.steps, lanes.certified_step),
                         certified_margin=xp.where(first, margin_left(lanes, f, xp), lanes.certified_margin))


def margin_left(lanes, f: np.ndarray, xp=np) -> np.ndarray:
    """(f_sad − f)/(f_sad − f*) per lane: the fraction of the saddle gap still below f_sad
    (1 at the optimum; NaN without a gap; 1 where the gap is infinite, c >= 1)."""
    gap = lanes.saddle_gap
    with np.errstate(invalid="ignore", divide="ignore"):
        left = (lanes.f_star + gap - f) / gap
    return xp.where(xp.isinf(gap), 1.0, left)
