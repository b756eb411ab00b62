"""Labels decided by the landscape, never by a tolerance larger than it (issue 21, part 1).

Near c = 1 the gap between f* and the nearest saddle value, (1 − c)²/(2K), falls below the float32
tolerances of the old rule, which stopped runs after ~500 steps far from any critical point and
called them ``saddle`` or ``local_min``. Here: the critical values against THEORY's closed forms
and the certificate's f_sad; the tolerances bounded by the landscape; the classifier's value test;
and runs over c ∈ [0.9, 0.999] in both dtypes, balanced and §7, with no false label and the two stop
rules agreeing run by run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import ncflow
from ncflow.maths import certificate, critical, metrics, theory
from ncflow.outcomes import LABELS, Tolerances, classify, default_tolerances, near_critical_value

K, D, N_PER = 10, 10, 20


def _balanced(c: float, dtype: str = "float64", **kw) -> ncflow.Problem:
    lam = c / (K * math.sqrt(N_PER))
    return ncflow.Problem(K=K, d=D, n=N_PER, lambda_w=lam, lambda_h=lam, dtype=dtype, **kw)


LANDSCAPES = [
    dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3),
    dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3, bias=False),
    dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3, lambda_b=5e-3),
    dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3, lambda_b=5.0),
    dict(K=10, d=5, n=20, lambda_w=5e-3, lambda_h=5e-3),
    dict(K=4, d=5, class_sizes=(9, 7, 4, 2), lambda_w=1e-2, lambda_h=1e-2),
    dict(K=4, d=2, class_sizes=(6, 6, 6, 2), lambda_w=1e-2, lambda_h=1e-2),
    dict(K=4, d=5, class_sizes=(40, 10, 2, 2), lambda_w=3e-2, lambda_h=3e-2, bias=False),
]


@pytest.mark.parametrize("kw", LANDSCAPES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_lowest_offset_is_the_certificates_saddle_gap(kw):
    """The smallest non-global critical offset is §8's f_sad − f* (computed by another route)."""
    p = ncflow.Problem(**kw)
    off = critical.critical_offsets(p)
    assert off is not None and off.size and np.all(np.diff(off) > 0)
    assert off[0] == pytest.approx(certificate.saddle_gap(p), rel=1e-9)


@pytest.mark.parametrize("bias", [True, False])
def test_balanced_offsets_are_theorys_critical_values(bias):
    """Balanced (A)/(B): every f_s of THEORY §3 for s < max_active, and nothing else."""
    p = ncflow.Problem(K=5, d=8, n=3, lambda_w=1e-2, lambda_h=2e-2, bias=bias)
    f_star = theory.predict(p).objective
    want = sorted(theory.critical_value(p, s) - f_star for s in range(theory.max_active(p)))
    np.testing.assert_allclose(critical.critical_offsets(p), want, rtol=1e-12)


def test_section7_offsets_are_subset_values():
    """§7: the offsets are the f_S of every set of alive directions (|S| <= d) minus f*."""
    p = ncflow.Problem(K=4, d=3, class_sizes=(9, 7, 4, 2), lambda_w=1e-2, lambda_h=1e-2)
    from itertools import combinations

    from ncflow.maths import imbalanced
    alive = imbalanced.alive_strengths(p).size
    f_star = theory.predict(p).objective
    vals = {round(imbalanced.critical_value(p, S) - f_star, 12)
            for r in range(min(p.d, alive) + 1) for S in combinations(range(alive), r)}
    want = sorted(v for v in vals if v > 1e-12)
    np.testing.assert_allclose(critical.critical_offsets(p), want, rtol=1e-9, atol=1e-13)


def test_no_landscape_without_theory():
    """No value test where the theory gives no landscape; none needed where f* is the only point."""
    assert critical.critical_offsets(ncflow.Problem(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=5e-3,
                                                    loss="rescaled-mse", alpha=2.0)) is None
    assert critical.critical_offsets(ncflow.Problem(K=4, d=3, n=5, lambda_w=5e-3, lambda_h=5e-3, lambda_b=1.0)) is None
    assert critical.critical_offsets(_balanced(1.2)).size == 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("c", [0.5, 0.9, 0.95, 0.99, 0.995, 0.999])
def test_tolerances_never_exceed_the_landscape(c, dtype):
    """gap_tol stays inside (f_sad − f*)/20 wherever the dtype resolves the landscape, and a stop at
    ||∇f|| = gtol with the optimum's slowest curvature μ moves f by at most gap_tol."""
    p = _balanced(c, dtype)
    pred = theory.predict(p)
    t = default_tolerances(p, pred)
    gap = (1 - c) ** 2 / (2 * K)
    assert t.landscape_gap == pytest.approx(gap, rel=1e-6)
    eps = float(np.finfo(dtype).eps)
    assert t.resolved == (100 * eps * max(pred.objective, 1e-2) <= gap / 20)
    if t.resolved:
        assert t.gap_tol <= gap / 20 * (1 + 1e-12)
    s = math.sqrt(N_PER) * (1 - c)  # strength of each direction at the optimum
    lam = c / (K * math.sqrt(N_PER))
    mu_radial = (4 * lam * s / (K * N_PER)) / (2 * s / (K * N_PER) + 2 * lam)
    assert t.own_gtol ** 2 / (2 * mu_radial) <= max(t.gap_tol, 1e-12 if dtype == "float64" else 1e-6) * 1.0001 \
        or t.own_gtol == pytest.approx({"float64": 1e-12, "float32": 1e-6}[dtype])


def test_float32_resolution_boundary():
    """K=10, n=20: float32 resolves c = 0.9 and 0.95, not 0.995 or 0.999; float64 resolves all."""
    res = {(c, dt): default_tolerances(p := _balanced(c, dt), theory.predict(p)).resolved
           for c in (0.9, 0.95, 0.995, 0.999) for dt in ("float32", "float64")}
    assert res == {(0.9, "float32"): True, (0.95, "float32"): True, (0.995, "float32"): False,
                   (0.999, "float32"): False, (0.9, "float64"): True, (0.95, "float64"): True,
                   (0.995, "float64"): True, (0.999, "float64"): True}


def test_near_critical_value():
    off = (1.0, 2.0, 3.0)
    gap = np.array([0.0, 0.97, 1.5, 2.04, 3.2, np.nan, -1.0])
    got = near_critical_value(gap, off, np.full(gap.size, 0.05))
    assert got.tolist() == [False, True, False, True, False, False, False]
    assert near_critical_value(gap, None, np.full(gap.size, 0.05)).all()
    assert not near_critical_value(gap, (), np.full(gap.size, 0.05)).any()


def _dist(gap, gram_error):
    z = np.zeros(len(gap))
    return metrics.OptimumDistance(gap=np.asarray(gap, float), gram_error=np.asarray(gram_error, float),
                                   gram_h_error=z, cross_error=z, self_duality=z, w_norm=z, h_norm=z, bias_error=z)


def test_classify_calls_saddle_only_at_a_critical_value():
    """Five stationary runs with certified negative curvature: only the one whose value is a
    non-global critical value is a saddle; between values, or where the landscape is unresolved,
    not_converged; at a critical value with no negative curvature, local_min only if the
    landscape's saddle curvature is resolvable."""
    tol = Tolerances(gtol=1e-3, ftol=1e-6, gap_tol=1e-5, geom_tol=1e-2, neg_tol=1e-4, strict_gtol=1e-6,
                     own_gtol=1e-3, offsets=(1e-4, 2e-4), landscape_gap=1e-4)
    unresolved = Tolerances(**{**tol.__dict__, "resolved": False})
    flat = Tolerances(**{**tol.__dict__, "curvature_resolved": False})
    gap = [1e-4, 1.5e-4, 2e-4, 1e-4, 2e-4, 2e-4]
    dist = _dist(gap, [0.5] * 6)
    f = np.asarray(gap) + 1.0
    g = np.full(6, 1e-4)
    lo = np.array([-1e-2, -1e-2, -1e-2, -1e-2, 1e-3, 1e-3])
    asked = []

    def hess(idx):
        asked.extend(idx.tolist())
        return lo[idx], np.ones(len(idx))

    labels, _, _ = classify(f, g, dist, [tol, tol, tol, unresolved, tol, flat], np.zeros(6, np.int8), hess)
    assert labels.tolist() == ["saddle", "not_converged", "saddle", "not_converged", "local_min", "not_converged"]
    assert sorted(asked) == [0, 2, 4, 5]  # Lanczos only where a label could follow
    assert set(labels) <= set(LABELS)


def test_unknown_landscape_keeps_the_dtype_rule():
    """offsets None (no theory of the landscape): stationary + negative curvature is a saddle."""
    tol = Tolerances(gtol=1e-3, ftol=1e-6, gap_tol=1e-5, geom_tol=1e-2, neg_tol=1e-4, own_gtol=1e-3)
    labels, _, _ = classify(np.ones(2), np.full(2, 1e-4), _dist([0.3, 0.3], [0.5, 0.5]), [tol], np.zeros(2, np.int8),
                            lambda idx: (np.array([-1.0, 1e-3])[idx], np.ones(len(idx))), point_of=np.zeros(2, int))
    assert labels.tolist() == ["saddle", "local_min"]


def _disagree(a, b) -> int:
    """Runs one stop rule calls global and the other a saddle / local_min / diverged."""
    bad = ("saddle", "local_min", "diverged")
    return int(np.sum((a == "global") & np.isin(b, bad)) + np.sum((b == "global") & np.isin(a, bad)))


@pytest.mark.parametrize("c,dtype", [(0.9, "float32"), (0.95, "float32"), (0.995, "float32"), (0.999, "float32")])
def test_no_false_label_near_c_one(c, dtype):
    """The issue's table (fewer runs): theory says every start is global; no run may be labelled
    saddle or local_min, and the two stop rules agree run by run."""
    p = _balanced(c, dtype)
    res = {stop: ncflow.simulate(p, runs=16, seed=0, stop=stop, max_steps=8000) for stop in ("certified", "converged")}
    for r in res.values():
        assert not np.isin(r.outcome, ("saddle", "local_min", "diverged")).any(), r.outcomes()
    assert _disagree(res["certified"].outcome, res["converged"].outcome) == 0
    if not res["converged"].tolerances.resolved:
        assert "cannot resolve this landscape" in res["converged"].report()


@pytest.mark.slow
@pytest.mark.parametrize("c", [0.9, 0.95, 0.995, 0.999])
def test_no_false_label_near_c_one_float64(c):
    p = _balanced(c, "float64")
    res = {stop: ncflow.simulate(p, runs=32, seed=1, stop=stop) for stop in ("certified", "converged")}
    for r in res.values():
        assert not np.isin(r.outcome, ("saddle", "local_min", "diverged")).any(), r.outcomes()
    assert _disagree(res["certified"].outcome, res["converged"].outcome) == 0


def test_a_true_saddle_is_still_found_near_c_one():
    """At c = 0.95 (float64) a run started AT a saddle (s = 7 of 9 directions) stays there and is
    labelled saddle; the origin too: the landscape rule does not hide real saddles."""
    p = _balanced(0.95, "float64")
    r = ncflow.simulate(p, runs=2, seed=0, init="saddle", active=7, perturb=0.0, max_steps=200)
    assert r.outcome.tolist() == ["saddle", "saddle"], r.outcomes()
    r0 = ncflow.simulate(p, runs=2, seed=0, init_scale=0.0, max_steps=200)
    assert r0.outcome.tolist() == ["saddle", "saddle"]


def test_section7_edge_no_false_label():
    """§7 near its edge: class sizes whose weakest direction barely survives (its gain ~1e-6 in
    float32 cannot be resolved): no saddle or local_min in float32, and the report says why."""
    sizes = (12, 8, 4, 2)
    N = sum(sizes)
    # τ with N τ just below the weakest alive σ (the smallest root of the secular equation)
    from ncflow.maths import imbalanced
    weakest = float(np.min(np.sqrt(imbalanced.secular_spectrum(sizes))[:-1]))  # drop the 0 of the vector 1
    tau = weakest * (1 - 3e-3) / N
    p = ncflow.Problem(K=4, d=5, class_sizes=sizes, lambda_w=tau, lambda_h=tau, dtype="float32")
    t = default_tolerances(p, theory.predict(p))
    assert not t.resolved and t.landscape_gap < 1e-5
    res = {stop: ncflow.simulate(p, runs=16, seed=0, stop=stop, max_steps=6000) for stop in ("certified", "converged")}
    for r in res.values():
        assert not np.isin(r.outcome, ("saddle", "local_min", "diverged")).any(), r.outcomes()
    assert _disagree(res["certified"].outcome, res["converged"].outcome) == 0
    assert "Use --dtype float64" in res["converged"].report()
