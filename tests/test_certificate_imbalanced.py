"""The early certificate of THEORY §8 for the §7 problems (class sizes, soft labels, regression
targets): f_sad from every critical point of the §7 landscape and from GD restricted to an invariant
subspace, the rounding bound of the §7 evaluations of f (full, collapsed with class sizes, collapsed
in row-space coordinates) against float64, the curvature bound at each lane's own N, the per-lane
certificate of a batch whose points differ in class sizes (host and traced), and soundness end to
end: on 60 random §7 problems every run certified under ``stop="certified"`` ends ``global`` under
``stop="converged"`` from the same seed, and the two rules' outcome tables agree."""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ncflow
from ncflow.batch import certify
from ncflow.batch.lanes import LaneTable
from ncflow.dynamics.build import default_lr
from ncflow.errors import ProblemError
from ncflow.maths import certificate as cert
from ncflow.maths import collapsed as col
from ncflow.maths import imbalanced as im
from ncflow.maths import objective as obj
from ncflow.maths.objective import Params
from ncflow.outcomes import Tolerances
from ncflow.problem import Problem, RowBasis

_LAB = np.repeat(np.arange(4), [5, 4, 2, 1])
_RNG = np.random.default_rng(3)

#: small §7 problems, (A) and (B), with ties, minority collapse and d below the alive directions
LANDSCAPE = {
    "A_sizes": Problem(class_sizes=(6, 4, 2, 1), d=4, lambda_w=0.02, lambda_h=0.03, dtype="float64"),
    "A_ties_cut_by_d": Problem(class_sizes=(6, 6, 6, 2), d=1, lambda_w=0.01, lambda_h=0.01, dtype="float64"),
    "A_ties_d2": Problem(class_sizes=(5, 5, 2, 2), d=2, lambda_w=0.01, lambda_h=0.02, dtype="float64"),
    "B_minority_collapse": Problem(class_sizes=(10, 6, 3, 2), d=4, lambda_w=0.08, lambda_h=0.07, bias=False,
                                   dtype="float64"),
    "B_rank_limited": Problem(class_sizes=(9, 7, 4, 2), d=2, lambda_w=0.01, lambda_h=0.01, bias=False,
                              dtype="float64"),
    "A_soft_labels": Problem(targets=0.8 * np.eye(4)[:, _LAB] + 0.05 + 0.05 * _RNG.normal(size=(4, 12)),
                             labels=_LAB, d=3, lambda_w=0.01, lambda_h=0.02, dtype="float64"),
    "A_regression_d1": Problem(targets=_RNG.normal(size=(3, 7)), d=1, lambda_w=0.02, lambda_h=0.01,
                               dtype="float64"),
    "B_regression": Problem(targets=2.0 * _RNG.normal(size=(3, 8)), d=2, lambda_w=0.03, lambda_h=0.03, bias=False,
                            dtype="float64"),
}


def _hessian_eigs(p: Problem, x: Params) -> np.ndarray:
    """The dense Hessian's eigenvalues at x, ascending (small problems)."""
    flat, unravel = ravel_pytree(x)
    hess = jax.jit(jax.hessian(lambda v: obj.objective(p, unravel(v))))(flat)
    return np.linalg.eigvalsh(np.asarray(hess))


def _hessian_min(p: Problem, x: Params) -> float:
    return float(_hessian_eigs(p, x)[0])


def _params(p: Problem, W, H, b) -> Params:
    return Params(jnp.asarray(W), jnp.asarray(H), jnp.asarray(b if p.bias else np.zeros(p.K)))


# ----------------------------------------------------------------------------- saddle_gap

@pytest.mark.parametrize("name", sorted(LANDSCAPE))
def test_lowest_nonglobal_critical_value_from_the_s7_critical_points(name):
    """Every critical point of the §7 landscape (sets S of alive singular pairs, |S| <= d, in a
    random feature frame): zero gradient, f = f_S; global exactly when S holds the top values as a
    multiset (ties cut by d are global), and every other one is a strict saddle with λ_min at most
    the §7 bound; the lowest non-global value is f* + saddle_gap (> 0), and the certificate's gap is
    imbalanced.saddle_gap."""
    p = LANDSCAPE[name]
    sigma = im.alive_strengths(p)
    alive, d = sigma.size, p.d
    assert alive >= 2  # something to drop and, where d < alive, something to swap
    f_star = im.optimum(p).objective
    top = np.sort(sigma)[::-1][: min(d, alive)]
    rng = np.random.default_rng(0)
    values = []
    for r in range(min(d, alive) + 1):
        for S in itertools.combinations(range(alive), r):
            R = np.linalg.qr(rng.standard_normal((d, d)))[0][:, :r]
            x = _params(p, *im.critical_point(p, S, R))
            assert float(obj.gradient_norm(p, x)) < 1e-11, S
            f = float(obj.objective(p, x))
            assert f == pytest.approx(im.critical_value(p, S), rel=1e-12, abs=1e-14)
            is_global = len(S) == top.size and np.allclose(np.sort(sigma[list(S)])[::-1], top, rtol=1e-9)
            lam = _hessian_min(p, x)
            if is_global:
                assert abs(f - f_star) < 1e-12 and lam > -1e-9, (S, f - f_star, lam)
            else:
                assert f > f_star + 1e-9 and lam < -1e-6 and lam <= im.saddle_curvature_bound(p, S) + 1e-9, (S, lam)
                values.append(f)
    gap = cert.saddle_gap(p)
    assert gap == im.saddle_gap(p) and 0 < gap < math.inf
    assert min(values) - f_star == pytest.approx(gap, rel=1e-9)


def test_the_gap_is_a_swap_where_d_cuts_the_alive_directions():
    """d = 1 with three alive directions, the top two tied ([6,6,6,2], (A)): keeping either tied one
    is global, so the lowest saddle keeps the third (a swap), below the drop-to-zero value."""
    p = LANDSCAPE["A_ties_cut_by_d"]
    s = im.alive_strengths(p)
    N, tau = p.N, math.sqrt(0.01 * 0.01)
    gain = (s - N * tau) ** 2 / (2 * N)
    assert s.size == 3 and s[0] == pytest.approx(s[1], rel=1e-12)
    assert cert.saddle_gap(p) == pytest.approx(gain[0] - gain[2], rel=1e-9) and gain[0] - gain[2] < gain[0]


@pytest.mark.parametrize("name", ["A_sizes", "B_minority_collapse", "A_soft_labels"])
def test_lowest_saddle_by_restricted_gd(name):
    """The lowest saddle without the §7 construction: float64 GD from random starts with every
    feature coordinate past kept − 1 exactly 0 (a subspace GD never leaves) converges to f* +
    saddle_gap, is stationary and a strict saddle in the full space."""
    p = LANDSCAPE[name]
    kept = im.optimum(p).kept
    assert kept <= p.d  # the drop is the lowest saddle here (no d cut)
    lr = ncflow.theory.default_step_size(p)
    f_star, gap = im.optimum(p).objective, cert.saddle_gap(p)

    @jax.jit
    def run(x):
        return jax.lax.fori_loop(0, 20000, lambda i, x: jax.tree_util.tree_map(
            lambda a, g: a - lr * g, x, obj.gradient(p, x)), x)

    rng = np.random.default_rng(5)
    for _ in range(2):
        W = rng.standard_normal((p.K, p.d)) / math.sqrt(p.d)
        H = rng.standard_normal((p.d, p.N)) / math.sqrt(p.d)
        W[:, kept - 1:], H[kept - 1:] = 0.0, 0.0
        x = run(_params(p, W, H, rng.standard_normal(p.K) * 0.3))
        assert float(obj.gradient_norm(p, x)) < 1e-9
        assert float(obj.objective(p, x)) - f_star == pytest.approx(gap, rel=1e-7)
        assert _hessian_min(p, x) < -1e-6


def test_saddle_gap_none_without_a_proof_and_inf_without_saddles():
    sizes = dict(class_sizes=(9, 7, 4, 2), lambda_w=0.01, lambda_h=0.01, dtype="float64")
    for d in (2, 4, 5, 8):  # (C): no closed form for f_sad with class sizes, whatever d
        assert cert.saddle_gap(Problem(d=d, lambda_b=0.03, **sizes)) is None
        assert cert.saddle_gap(Problem(d=d, lambda_b=5.0, **sizes)) is None
    T = LANDSCAPE["A_regression_d1"].targets
    assert cert.saddle_gap(Problem(targets=T, d=3, lambda_w=0.02, lambda_h=0.02, lambda_b=0.1)) is None
    assert cert.saddle_gap(Problem(class_sizes=(9, 7, 4, 2), d=5, lambda_w=0.0, lambda_h=0.01)) is None
    assert cert.saddle_gap(Problem(targets=T, d=3, lambda_w=0.02, lambda_h=0.0, bias=False)) is None
    # the zero solution: N τ above every singular value, the optimum is the only critical point
    for bias in (True, False):
        assert cert.saddle_gap(Problem(class_sizes=(9, 7, 4, 2), d=5, lambda_w=0.2, lambda_h=0.2, bias=bias)) \
            == math.inf
    # over lanes of coefficients: lane by lane (NaN where None)
    lw = np.array([0.01, 5.0, 0.0, 0.01])
    lb = np.array([0.0, 0.0, 0.0, 0.1])
    gaps = cert.saddle_gaps(Problem(class_sizes=(9, 7, 4, 2), d=5, lambda_w=lw, lambda_h=0.01, lambda_b=lb))
    one = [cert.saddle_gap(Problem(class_sizes=(9, 7, 4, 2), d=5, lambda_w=float(a), lambda_h=0.01,
                                   lambda_b=float(b))) for a, b in zip(lw, lb)]
    np.testing.assert_array_equal(gaps, [np.nan if g is None else g for g in one])
    assert np.isfinite(gaps[0]) and gaps[1] == math.inf and np.isnan(gaps[2:]).all()
    engine = dataclasses.replace(Problem(class_sizes=(9, 7, 4, 2), d=5), class_sizes=np.ones((3, 4)), columns=22)
    with pytest.raises(ProblemError, match="per-lane"):
        cert.saddle_gaps(engine)


# ----------------------------------------------------------------------------- rounding_bound

_SOFT_LAB = np.repeat(np.arange(4), [9, 7, 4, 2])
ROUNDING = {
    "sizes_40_10_2_2": dict(class_sizes=(40, 10, 2, 2)),
    "sizes_B": dict(class_sizes=(10, 6, 3, 2), d=5, lambda_w=0.01, lambda_h=0.007, bias=False),
    "sizes_tiny_lambda": dict(class_sizes=(9, 7, 4, 2), d=8, lambda_w=1e-8, lambda_h=1e-8),
    "sizes_many": dict(class_sizes=(500, 200, 50, 10, 5, 3, 2, 1, 1, 1), d=12, lambda_w=1e-4, lambda_h=1e-4),
    "soft_labels": dict(targets=0.8 * np.eye(4)[:, _SOFT_LAB] + 0.05, labels=_SOFT_LAB, d=6, lambda_w=1e-2,
                        lambda_h=1e-2),
    "regression": dict(targets=3.0 * np.random.default_rng(1).normal(size=(4, 22)), d=6, lambda_w=1e-2,
                       lambda_h=1e-2),
    "regression_large_B": dict(targets=100.0 * np.random.default_rng(2).normal(size=(3, 30)) + 50, d=5,
                               lambda_w=1e-3, lambda_h=1e-3, bias=False),
}


def _with_row_basis(p: Problem, dtype) -> Problem:
    """``p`` in the collapsed engine's row-space coordinates, stored in ``dtype`` (as the engine does)."""
    b = im.basis(p)
    LQ = b.LQ if b.LQ is not None else np.zeros((b.TQ.shape[1], p.K))
    return dataclasses.replace(p, row_basis=RowBasis(*(jnp.asarray(a, dtype) for a in
                                                       (b.TQ, b.q, LQ, b.counts, float(b.N), b.Q))))


def _f32_states(p: Problem):
    """float32 points of ``p``: random at three scales, the optimum, scaled and perturbed optima, and
    the optimum plus a hidden cancelling pair in the spare features (W_S H_S = 0 exactly, entries of
    W H sums of terms of size 900)."""
    rng = np.random.default_rng(0)
    K, d, N = p.K, p.d, p.N
    xs = []
    for sc in (0.1, 1.0, 3.0):
        s = sc / math.sqrt(d)
        xs.append((rng.standard_normal((K, d)) * s, rng.standard_normal((d, N)) * s, rng.standard_normal(K) * s))
    W, H, b = im.minimizer(p)
    xs += [(W, H, b), (3 * W, 3 * H, b), (0.5 * W, 0.5 * H, b)]
    xs += [tuple(a + e * rng.standard_normal(a.shape) for a in (W, H, b)) for e in (1e-2, 1e-5)]
    r, m = im.optimum(p).kept, d - im.optimum(p).kept
    if m >= 2:
        F = np.linalg.qr(rng.standard_normal((m, m)))[0][:, : m // 2]
        Pi = F @ F.T
        W2, H2 = W.copy(), H.copy()
        W2[:, r:] = 30.0 * rng.standard_normal((K, m)) @ Pi
        H2[r:] = 30.0 * (np.eye(m) - Pi) @ rng.standard_normal((m, N))
        xs.append((W2, H2, b))
    return [Params(*(jnp.asarray(a if i < 2 or p.bias else 0 * a, jnp.float32) for i, a in enumerate(x)))
            for x in xs]


def _evaluations(p32: Problem, q32: Problem, p64: Problem, q64: Problem):
    """A compiled function of (float32 point x, float32 collapsed state xc, their float64 copies):
    f of x by the full objective and value_and_gradient, f of xc by the collapsed objective and
    value_and_grad_norm (q: the problem as the collapsed engine holds it), all in float32; and the
    float64 f of the same numbers (full, collapsed) with their squared norms."""

    @jax.jit
    def run(x, xc, x64, xc64):
        f32 = (obj.objective(p32, x), obj.value_and_gradient(p32, x)[0], col.objective(q32, xc),
               col.value_and_grad_norm(q32, xc)[0])
        return f32, (obj.objective(p64, x64), col.objective(q64, xc64), obj.tree_sq_norm(x64), col.sq_norm(q64, xc64))
    return run


@pytest.mark.parametrize("name", sorted(ROUNDING))
def test_rounding_bound_covers_float32_evaluations_of_s7_problems(name):
    """|f computed in float32 − f of the same float32 numbers in float64 (the float64 data)| <=
    rounding_bound, full and collapsed (class sizes: sample-weighted; targets: row-space coordinates
    with T_Q and q stored in float32), with and without the state's squared norm. The bound is not
    vacuous: at the optimum it is under 5% of the saddle gap (the certificate's margin is 10%)."""
    p64 = Problem(dtype="float64", **ROUNDING[name])
    p32 = dataclasses.replace(p64, dtype="float32")
    targets = p64.targets is not None
    q64 = _with_row_basis(p64, jnp.float64) if targets else p64
    q32 = dataclasses.replace(_with_row_basis(p64, jnp.float32), dtype="float32") if targets else p32
    worst, ratios = 0.0, []
    evaluate = _evaluations(p32, q32, p64, q64)
    for x32 in _f32_states(p64):
        x64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), x32)
        xc32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), col.collapse(q64, x64))
        xc64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), xc32)
        vals, refs = evaluate(x32, xc32, x64, xc64)
        vals = [float(v) for v in vals]
        ref, ref_c, sq, sq_c = (float(v) for v in refs)
        for space, fs, r, norm in (("full", vals[:2], ref, sq), ("collapsed", vals[2:], ref_c, sq_c)):
            for v in fs:
                for sq_norm in (None, norm):
                    bound = float(cert.rounding_bound(p32, v, space=space, sq_norm=sq_norm))
                    assert abs(v - r) <= bound, (space, v, r, bound)
                    worst = max(worst, abs(v - r) / bound)
                    if sq_norm is not None and v != r:
                        ratios.append(bound / abs(v - r))
    assert worst > 0 and np.median(ratios) < 1e5  # the float32 evaluations do round; the bound is not absurd
    gap, f_star = cert.saddle_gap(p64), im.optimum(p64).objective
    sq_opt = float(obj.tree_sq_norm(Params(*im.minimizer(p64))))
    for space in ("full", "collapsed"):
        assert float(cert.rounding_bound(p32, f_star, space=space, sq_norm=sq_opt)) < 0.05 * gap


def test_rounding_and_curvature_bounds_take_each_lanes_data():
    """With per-lane N and ||T||_F a batched call equals the lanes' own problems; the defaults are
    data_norms of the problem; L(f) at N is the §8 formula."""
    sizes = [(9, 7, 4, 2), (3, 3, 1, 1), (40, 10, 2, 2)]
    probs = [Problem(class_sizes=s, d=5, lambda_w=0.01, lambda_h=0.02, dtype="float32") for s in sizes]
    f = np.array([0.05, 0.2, 0.01])
    N = np.array([22.0, 8.0, 54.0])
    assert [float(cert.data_norms(p)[0]) for p in probs] == N.tolist()
    assert [float(cert.data_norms(p)[1]) for p in probs] == np.sqrt(N).tolist()
    base = dataclasses.replace(probs[0], columns=54)
    for space in ("full", "collapsed"):
        batched = cert.rounding_bound(base, f, space=space, samples=N, target_norm=np.sqrt(N))
        if space == "full":  # the full form's term count uses the batch's largest N (a bound for every lane)
            one = [float(cert.rounding_bound(dataclasses.replace(q, columns=54), v, space=space))
                   for q, v in zip(probs, f)]
        else:
            one = [float(cert.rounding_bound(q, v, space=space)) for q, v in zip(probs, f)]
        np.testing.assert_allclose(batched, one, rtol=1e-15)
    L = cert.hessian_bound(base, f, samples=N)
    np.testing.assert_allclose(L, 1 + 0.02 + 2 * f / (N * 0.01) + np.sqrt(2 * f / N), rtol=1e-15)
    T = LANDSCAPE["B_regression"].targets
    assert float(cert.data_norms(LANDSCAPE["B_regression"])[1]) == pytest.approx(np.linalg.norm(T), rel=1e-15)


@pytest.mark.parametrize("name", ["A_sizes", "A_regression_d1"])
def test_hessian_bound_dominates_the_largest_eigenvalue_for_s7_problems(name):
    """λ_max(∇²f) <= L(f) (§8, at the problem's N and with its data floor) at random points,
    critical points and scaled optima of a class-sizes and a regression problem; the data floor is
    the least data term (no point's is lower; with λ → 0 the optimum's objective tends to it)."""
    p = LANDSCAPE[name]
    rng = np.random.default_rng(2)
    xs = [(rng.standard_normal((p.K, p.d)) * s, rng.standard_normal((p.d, p.N)) * s, rng.standard_normal(p.K) * s)
          for s in (0.1, 1.0, 3.0)]
    W, H, b = im.minimizer(p)
    xs += [(W, H, b), (4 * W, 4 * H, b), (W, H, b + 3.0)]
    xs += [im.critical_point(p, ()), im.critical_point(p, (0,))]
    for x in xs:
        x = _params(p, *x)
        lmax = _hessian_eigs(p, x)[-1]
        f = float(obj.objective(p, x))
        floor = cert.data_floor(p)
        assert lmax <= float(cert.hessian_bound(p, f, floor=floor)) * (1 + 1e-12)
        assert float(obj.objective(dataclasses.replace(p, lambda_w=0.0, lambda_h=0.0), x)) >= floor
    assert 0 <= floor == im.data_floor(p) < im.optimum(p).objective
    assert (floor > 0) == (name == "A_regression_d1")  # d = 1 below the target's rank; A_sizes: d >= K
    tiny = dataclasses.replace(p, lambda_w=1e-12, lambda_h=1e-12)
    assert im.optimum(tiny).objective == pytest.approx(floor, rel=1e-9, abs=1e-10)


# ----------------------------------------------------------------------------- lanes of a batch

def test_certified_lanes_per_lane_for_a_batch_of_different_class_sizes():
    """A lane table of three points with different class sizes (and one (C) point without a gap):
    the host rule and the traced one (jax.numpy, as in the wide plan) agree lane by lane, and each
    lane's answer is the certificate of its own point's problem — not of the batch's first point
    (whose N would make a smaller lane's curvature bound too small)."""
    sizes = [(9, 7, 4, 2), (3, 3, 1, 1), (40, 10, 2, 2), (9, 7, 4, 2)]
    probs = [Problem(class_sizes=s, d=5, lambda_w=0.01, lambda_h=0.02, dtype="float32",
                     lambda_b=0.05 if i == 3 else 0.0) for i, s in enumerate(sizes)]
    points = [ncflow.Point(problem=p, runs=2, lr=0.9, init_scale=1.0, seed=0) for p in probs]
    gaps = [cert.saddle_gap(p) for p in probs]
    f_star = [im.optimum(p).objective for p in probs]
    tol = Tolerances(gtol=1e-6, ftol=1e-9, gap_tol=1e-8, geom_tol=1e-3, neg_tol=1e-8, strict_gtol=1e-9)
    lanes = LaneTable.build(np.arange(8), np.repeat(np.arange(4), 2), points, [tol] * 4, f_star, gaps)
    base = dataclasses.replace(probs[0], columns=54)
    fs = np.repeat(f_star, 2) + np.tile([0.2, 0.95], 4) * np.repeat([g if g else 1.0 for g in gaps], 2)
    sq = np.full(8, 30.0)
    for space in ("full", "collapsed"):
        host = certify.certified_lanes(base, lanes, fs, space, sq)
        traced = jax.jit(lambda cols, f, s, sp=space: certify.certified_lanes(
            base, LaneTable(**cols), f, sp, s, xp=jnp))(dataclasses.asdict(lanes), fs, sq)
        np.testing.assert_array_equal(host, np.asarray(traced))
        own = [bool(cert.certified(probs[i // 2], fs[i], 0.9, f_star[i // 2], gaps[i // 2], margin=certify.MARGIN,
                                   space=space, sq_norm=sq[i])) for i in range(8)]
        np.testing.assert_array_equal(host, own)
        # the (3, 3, 1, 1) lane fails (H2) at its own N = 8 (L(f) ≈ 2.7, lr·L > 2); at the first point's
        # N = 22 it would have passed
        assert host.tolist() == [True, False, False, False, True, False, False, False]
        assert cert.certified(probs[0], fs[2], 0.9, f_star[1], gaps[1], margin=certify.MARGIN, space=space,
                              sq_norm=sq[2])


# ----------------------------------------------------------------------------- soundness, end to end

RUNS = 4
MODES = ("near_threshold", "mid", "small", "zero", "minority")


def _tau_n(rng, sigma: np.ndarray, mode: str) -> float:
    """N τ for a problem whose target has singular values ``sigma`` (descending): a direction just
    alive (σ/Nτ in [1.03, 1.15]: its c close to 1), all alive with weak or negligible shrinkage, the
    zero solution (Nτ above every σ), or a minority collapse (Nτ between two σ's)."""
    s = sigma[sigma > 1e-9 * sigma[0]]
    if mode == "near_threshold":
        return float(s[rng.integers(0, s.size)] / rng.uniform(1.03, 1.15))
    if mode == "mid":
        return float(s[-1] * rng.uniform(0.3, 0.8))
    if mode == "small":
        return float(s[-1] * rng.uniform(0.02, 0.1))
    if mode == "zero":
        return float(s[0] * rng.uniform(1.02, 1.5))
    j = int(rng.integers(0, max(s.size - 1, 1)))
    lo = s[j + 1] if s.size > 1 else 0.5 * s[0]
    return float(lo + rng.uniform(0.2, 0.8) * (s[j] - lo))


def _group(kind: str, count: int, rng, offset: int = 0) -> list:
    """``count`` random problems of one batch shape (``kind``), the i-th of mode MODES[(i + offset) % 5]."""
    out = []
    for i in range(count):
        if kind.startswith("sizes"):
            sizes = (9, 9, 3, 2) if i % 3 == 0 else tuple(int(v) for v in rng.integers(1, 12, 4))  # ties too
            kw = dict(class_sizes=sizes, d=2 if kind == "sizes_rank_limited" else 6, bias=kind != "sizes_bias_free")
        elif kind == "soft_labels":
            lab = np.sort(np.concatenate([np.arange(4), rng.integers(0, 4, 12)]))
            eps = rng.uniform(0.05, 0.4)
            kw = dict(targets=(1 - eps) * np.eye(4)[:, lab] + eps / 4 + 0.05 * rng.normal(size=(4, 16)), labels=lab,
                      d=5)
        else:  # regression: d below the 3 alive directions, with and without a bias
            kw = dict(targets=rng.uniform(0.5, 3) * rng.normal(size=(3, 12)), d=2, bias=kind == "regression")
        sigma = im.optimum(Problem(dtype="float64", **kw)).sigma
        tau = _tau_n(rng, sigma, MODES[(i + offset) % 5]) / Problem(**kw).N
        ratio = math.exp(rng.uniform(math.log(0.3), math.log(3.0)))
        kw.update(lambda_w=tau * math.sqrt(ratio), lambda_h=tau / math.sqrt(ratio))
        if kind == "sizes" and i >= count - 2:  # (C): no proof, no early call; the rules must still agree
            kw["lambda_b"] = 0.05
        out.append(Problem(dtype="float64", **kw))
    return out


GROUPS = ("sizes", "sizes_rank_limited", "sizes_bias_free", "soft_labels", "regression", "regression_bias_free")
FAST_GROUPS = ("sizes_rank_limited", "soft_labels", "regression_bias_free")


def _run(problems, stop: str):
    # the converged rule needs up to ~80,000 steps on the slowest of these (a direction just alive)
    config = ncflow.Config(stop=stop, max_steps=30_000 if stop == "certified" else 200_000, progress=False)
    points = [ncflow.Point(problem=p, runs=RUNS, lr=default_lr(p, config), init_scale=1.0, seed=11) for p in problems]
    return ncflow.simulate_points(points, config)


@pytest.fixture(scope="module", params=["fast", pytest.param("full", marks=pytest.mark.slow)])
def paired(request):
    """{group: (problems, results under "certified", results under "converged")}: "full" is the
    issue's 60 problems (10 per group, 6 groups; ~40–60 s on 2 cores, most of it compiling),
    "fast" 3 per group of FAST_GROUPS (9 problems: (A) and (B), sizes, soft labels and regression,
    every mode)."""
    rng = np.random.default_rng(7)
    out = {}
    kinds = GROUPS if request.param == "full" else FAST_GROUPS
    for g, kind in enumerate(kinds):
        problems = _group(kind, 10, rng) if request.param == "full" else _group(kind, 3, rng, offset=3 * g)
        out[kind] = (problems, _run(problems, "certified"), _run(problems, "converged"))
    return out


def test_the_s7_problems_cover_the_cases(paired):
    probs = [p for ps, _, _ in paired.values() for p in ps]
    full = len(probs) == 10 * len(GROUPS)
    assert len(probs) >= 50 or not full
    gaps = [cert.saddle_gap(p) for p in probs]
    unreg = [p for p in probs if p.bias_mode != "regularized"]
    alive = [im.alive_strengths(p).size for p in unreg]
    nonzero = [int(np.sum(im.optimum(p).sigma > 1e-9 * im.optimum(p).sigma[0])) for p in unreg]
    assert sum(g == math.inf for g in gaps) >= (6 if full else 2)  # the zero solution
    assert sum(g is None for g in gaps) == (2 if full else 0)  # the (C) points
    assert sum(0 < a < z for a, z in zip(alive, nonzero)) >= (6 if full else 1)  # minority collapse
    assert sum(a > p.d for a, p in zip(alive, unreg)) >= (10 if full else 2)  # d below the alive directions
    assert sum(g is not None and g < 1e-3 for g in gaps) >= (6 if full else 1)  # a direction just alive
    assert {p.bias_mode for p in probs} >= {"unregularized", "none"}
    assert {p.targets is None for p in probs} == {True, False} and any(p.labels is None for p in probs)
    assert "regularized" in {p.bias_mode for p in probs} or not full


def test_every_certified_s7_run_ends_global(paired):
    certified = total = 0
    for kind, (problems, a_all, b_all) in paired.items():
        for p, a, b in zip(problems, a_all, b_all):
            stopped = a.per_run["stop"] == "certified"
            certified += int(stopped.sum())
            total += RUNS if cert.saddle_gap(p) is not None else 0
            assert np.all(b.outcome[stopped] == "global"), (kind, p.describe(), b.outcome, a.per_run["stop"])
            assert np.all(a.outcome[stopped] == "global")
            assert np.all(a.per_run["steps"][stopped] <= b.per_run["steps"][stopped])
            if cert.saddle_gap(p) is None:
                assert not stopped.any()
    assert certified >= 0.9 * total, (certified, total)


def test_s7_outcome_tables_agree_where_both_give_one(paired):
    for kind, (problems, a_all, b_all) in paired.items():
        for p, a, b in zip(problems, a_all, b_all):
            both = (a.outcome != "not_converged") & (b.outcome != "not_converged")
            np.testing.assert_array_equal(a.outcome[both], b.outcome[both], err_msg=f"{kind} {p.describe()}")
            assert both.all()


# ----------------------------------------------------------------------------- plans

@pytest.mark.parametrize("kind", ["mixed_sizes", "targets"])
def test_wide_plan_certifies_s7_lanes_like_the_host_rule(kind):
    """The wide plan forced on CPU (its stop rule traced on the device) certifies the same runs at
    the same steps as the cpu plan's host rule, on a batch whose points have different class sizes
    (so each lane's own N and ||T||_F matter) and on a soft-label target batch."""
    if kind == "mixed_sizes":
        probs = [Problem(class_sizes=s, d=5, lambda_w=lw, lambda_h=0.01, dtype="float64")
                 for s, lw in (((9, 7, 4, 2), 0.01), ((30, 3, 2, 1), 0.002), ((5, 5, 5, 1), 0.03))]
    else:
        rng = np.random.default_rng(4)
        lab = np.repeat(np.arange(3), [6, 3, 2])
        probs = [Problem(targets=0.9 * np.eye(3)[:, lab] + 0.1 / 3 + 0.1 * rng.normal(size=(3, 11)), labels=lab,
                         d=3, lambda_w=lw, lambda_h=0.01, dtype="float64") for lw in (0.005, 0.01, 0.02)]
    out = {}
    for plan in ("cpu", "wide"):
        config = ncflow.Config(plan=plan, progress=False)
        points = [ncflow.Point(problem=p, runs=6, lr=default_lr(p, config), init_scale=1.0, seed=3) for p in probs]
        out[plan] = ncflow.simulate_points(points, config)
    for a, b in zip(out["cpu"], out["wide"]):
        assert a.timing["plan"] == "cpu" and b.timing["plan"] == "wide"
        for k in ("steps", "outcome", "stop", "certified_step"):
            np.testing.assert_array_equal(b.per_run[k], a.per_run[k], err_msg=k)
        assert np.all(a.per_run["stop"] == "certified")


# ----------------------------------------------------------------------------- what a certified §7 run reports

def test_a_certified_s7_run_reports_its_limit_from_theory():
    """Minorities that merge ([20,20,2,2], λ = 0.036): certified runs stop long before the classes
    merge; the report gives their limit's NC2/NC3 (equal to the converged runs' states, NC3 != NC2)
    and says their classes are the theory's instead of comparing the unmerged state."""
    p = Problem(class_sizes=(20, 20, 2, 2), d=6, lambda_w=0.036, lambda_h=0.036, dtype="float64")
    kw = dict(runs=4, progress=False, seed=1)
    a, b = ncflow.simulate(p, stop="certified", **kw), ncflow.simulate(p, stop="converged", **kw)
    assert np.all(a.per_run["stop"] == "certified") and np.all(b.outcome == "global")
    assert np.all(a.per_run["steps"] < b.per_run["steps"])
    lim = a.limit()
    assert lim == b.limit() and lim["objective"] == a.prediction.objective
    assert lim["nc2"] == pytest.approx(np.median(b.per_run["nc2"]), abs=1e-8)
    assert lim["nc3"] == pytest.approx(np.median(b.per_run["nc3"]), abs=1e-8)
    assert abs(lim["nc3"] - lim["nc2"]) > 0.05
    text = a.report()
    assert "their limit's classes are the theory's" in text and "as predicted" not in text
    assert "as predicted: 4 of 4 runs" in b.report()
    # per-run columns: the certified state has not merged yet; its limit's classes are the theory's
    assert np.all(b.per_run["merged"] == "2,3") and not np.any(a.per_run["merged"] == "2,3")
    assert np.all(a.per_run["classes_as_predicted"]) and np.all(b.per_run["classes_as_predicted"])
