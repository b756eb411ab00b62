"""THEORY §9 (deep UFMs) in ncflow.maths.deep: the scalar theory (φ, roots, thresholds) against its
definitions, every row of §9.7's table, the L = 1 limit against today's theory (§2/§7/§8), the deep
ReLU values against an explicit ReLU network, and an independent float64 check: the predicted points
are stationary for an objective written here (autodiff, no formula of the module), and gradient
descent from them, perturbed, stays at (global) or returns to the predicted values."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncflow.errors import ProblemError
from ncflow.maths import certificate, deep, imbalanced, theory
from ncflow.problem import Problem

# §9.7's table: id -> (predict_deep arguments, expected values as printed there)
BAL = dict(K=4, n=5, lambda_h=5e-3, lambdas=5e-3)
ROWS = {
    "A1": (dict(BAL, L=2, widths=(8, 8)), dict(c=0.034200, xp=0.9653966563, f=0.0380307182, fsad=0.1503538121,
                                               w=1.119251, mu=0.500544)),
    "A2": (dict(BAL, L=3, widths=(8, 8, 8)), dict(c=0.029907, xp=0.9696282464, f=0.0445198815, fsad=0.1546799210,
                                                  w=1.050880, mu=0.469968)),
    "A3": (dict(BAL, L=4, widths=(8,) * 4), dict(c=0.027595, xp=0.9719299611, f=0.0514494323, fsad=0.1592996215,
                                                 w=1.011474, mu=0.452345, b=0.25)),
    "A4": (dict(K=4, n=5, L=2, widths=(8, 6), lambda_h=1e-2, lambdas=(2e-3, 5e-3)),
           dict(c=0.031748, xp=0.9679048728, f=0.0353344452, fsad=0.1485562968, w=1.079323, mu=0.341312)),
    "A5": (dict(BAL, L=2, widths=(2, 8)), dict(c=0.034200, xp=0.9653966563, f=0.1503538121, fsad=0.2626769061,
                                               w2=3.340595, mu2=0.668119)),
    "A6": (dict(K=4, n=5, L=3, widths=(8, 8, 8), lambda_h=0.055, lambdas=0.055),
           dict(c=0.328977, xp=0.5606356312, f=0.375, fsad=0.3972917912, w=0.0, mu=0.0)),
    "A7": (dict(K=10, n=100, L=2, widths=(10, 10), lambda_h=5e-4, lambdas=5e-4),
           dict(c=0.023208, xp=0.9766082232, f=0.0310864410, fsad=0.0776323920, w=2.027814, mu=0.202781)),
    "B1": (dict(BAL, L=2, widths=(8, 8), bias="none"),
           dict(c=0.034200, xp=0.9653966563, f=0.0507076242, fsad=0.1630307182, w=1.292400, mu=0.577979)),
    "B2": (dict(K=10, n=5, L=4, widths=(30,) * 4, lambda_h=4e-3, lambdas=4e-3, bias="none"),
           dict(c=0.055189, xp=0.9428264803, f=0.1363961766, fsad=0.1727565590, w=1.160869, mu=0.519157)),
    "B3": (dict(K=4, n=(9, 7, 4, 2), L=2, widths=(5, 5), lambda_h=1e-2, lambdas=1e-2, bias="none"),
           dict(c=(0.0508, 0.1386), xp=(0.9482, 0.8539), f=0.0998466124, fsad=0.1273208577,
                w=[1.416926, 1.354178, 1.220885, 1.064904], mu=[0.472309, 0.511831, 0.610443, 0.753001])),
    "A8": (dict(K=4, n=(9, 7, 4, 2), L=3, widths=(5, 5, 5), lambda_h=1e-2, lambdas=1e-2),
           dict(c=(0.0464, 0.1150), xp=(0.9524, 0.8772), f=0.0864202038, fsad=0.1163293831,
                w=[1.086706, 1.069233, 1.016310, 0.935909], mu=[0.324681, 0.390596, 0.536001, 0.730444],
                b=np.array([9, 7, 4, 2]) / 22)),
    "C1": (dict(BAL, L=2, widths=(8, 8), bias="regularized", lambda_b=5e-3),
           dict(c=0.034200, c1=6.874, xp=0.9653966563, f=0.0386526087, fsad=0.1509757027, w=1.119251,
                mu=0.500544, b=0.248756)),
    "C2": (dict(BAL, L=2, widths=(8, 8), bias="regularized", lambda_b=1.0),
           dict(c=0.034200, c1=0.068399, xp=0.9653966563, x1=0.9299242974, f=0.0505560869, fsad=0.1005307182,
                w=1.288412, mu=0.576195, b=0.008759)),
}
GEOMETRY = {"A1": "simplex_etf", "A5": "rank_limited", "A6": "zero", "B1": "orthogonal_frame", "B3": "general",
            "A8": "general", "C1": "simplex_etf", "C2": "etf_with_mean"}


def _decimals(x: float) -> float:
    """Half a unit of the last printed digit of a reference value (tables print 6 or 10 decimals)."""
    s = repr(float(x))
    return 0.5 * 10.0 ** -(len(s.split(".")[1]) if "." in s and "e" not in s else 10)


# ------------------------------------------------------------------------------ the scalar theory
@pytest.mark.parametrize("L, ce, cg", [(2, 0.4724703937, 0.3968502630), (3, 0.3849001795, 0.2721655270),
                                       (4, 0.3469754742, 0.2103665898), (1, 1.0, 1.0)])
def test_thresholds_match_theory_constants(L, ce, cg):
    assert deep.c_exist(L) == pytest.approx(ce, abs=5e-11)
    assert deep.c_glob(L) == pytest.approx(cg, abs=5e-11)


@pytest.mark.parametrize("L", [2, 3, 4, 6])
def test_thresholds_by_their_definitions(L):
    q = (L - 1) / (L + 1)
    x = np.linspace(0, 1, 2_000_001)
    assert deep.c_exist(L) == pytest.approx(np.max(x**q * (1 - x)), abs=1e-12)  # the peak of x^q (1 − x)
    xg, cg = (L - 1) / L, deep.c_glob(L)  # at c_glob the alive root is (L−1)/L and ties with x = 0
    assert xg**q * (1 - xg) == pytest.approx(cg, abs=1e-15)
    assert deep.phi(cg, xg, L) == pytest.approx(1.0, abs=1e-14)
    assert deep.x_plus(cg, L) == pytest.approx(xg, abs=1e-14)
    assert deep.gain(cg * (1 - 1e-6), L) > 0 > deep.gain(cg * (1 + 1e-6), L)
    assert L * cg == pytest.approx({2: 0.79, 3: 0.82, 4: 0.84}.get(L, L * cg), abs=0.005)


@pytest.mark.parametrize("L", [2, 3, 5])
def test_roots_vectorized(L):
    ce, m, q = deep.c_exist(L), L + 1, (L - 1) / (L + 1)
    c = np.concatenate([[0.0, 1e-12], np.linspace(1e-4, ce * (1 - 1e-9), 200)])
    xp, xm = deep.x_plus(c, L), deep.x_minus(c, L)
    assert xp.shape == xm.shape == c.shape
    np.testing.assert_allclose(xp**q * (1 - xp), c, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(xm**q * (1 - xm), c, rtol=1e-12, atol=1e-15)
    peak = (L - 1) / (2 * L)
    assert np.all(xm <= peak) and np.all(xp >= peak) and xm[0] == 0.0 and xp[0] == 1.0
    # φ' = 2(x − 1) + 2c x^{2/m − 1} vanishes there, and changes sign: x_+ a local minimum of φ_c, x_− a
    # local maximum (c > 0, away from the double root at c_exist)
    dphi = lambda x: 2 * (x - 1) + 2 * c * np.where(x > 0, x, 1.0) ** (2 / m - 1)  # noqa: E731  (x = 0 at c = 0)
    np.testing.assert_allclose(dphi(xp), 0, atol=1e-12)
    inner = slice(1, -5)
    assert np.all(dphi(xp * (1 - 1e-6))[inner] < 0) and np.all(dphi(xp * (1 + 1e-6))[inner] > 0)
    assert np.all(dphi(xm * (1 - 1e-6))[inner] > 0) and np.all(dphi(xm * (1 + 1e-6))[inner] < 0)
    np.testing.assert_allclose(deep.phi(c, xp, L), (xp - 1) ** 2 + m * c * xp ** (2 / m), rtol=1e-15)
    above = np.array([ce * (1 + 1e-9), 0.9, 5.0])
    assert np.all(np.isnan(deep.x_plus(above, L))) and np.all(np.isnan(deep.x_minus(above, L)))
    assert isinstance(deep.x_plus(0.1, L), float) and deep.x_plus(0.1, L) == deep.x_plus(np.array([0.1]), L)[0]


def test_depth_one_roots():
    assert deep.x_plus(0.3, 1) == pytest.approx(0.7, abs=1e-15)
    assert math.isnan(deep.x_plus(1.0, 1)) and math.isnan(deep.x_minus(0.3, 1))
    assert deep.gain(0.3, 1) == pytest.approx(0.49, abs=1e-15)


@pytest.mark.parametrize("row, xm, tol", [("A1", 4.0e-5, 5e-7), ("A2", 8.96e-4, 5e-7), ("A3", 2.53e-3, 5e-6),
                                          ("A6", 0.14968096, 5e-9)])
def test_x_minus_values(row, xm, tol):
    """§9.7's x_− (half a unit of the last printed digit)."""
    assert deep.predict_deep(**ROWS[row][0]).x_minus[0] == pytest.approx(xm, abs=tol)


# ------------------------------------------------------------------------------ §9.7's table
@pytest.mark.parametrize("row", list(ROWS))
def test_reference_table(row):
    kw, ref = ROWS[row]
    p = deep.predict_deep(**kw)
    if isinstance(ref["c"], tuple):  # class sizes: the range of c_j and of x_+ over the directions
        assert (p.c_j[0], p.c_j[-1]) == pytest.approx(ref["c"], abs=5e-5)
        assert (p.x_plus[0], p.x_plus[-1]) == pytest.approx(ref["xp"], abs=5e-5)
    else:
        assert p.c == pytest.approx(ref["c"], abs=5e-7)
        assert p.c_j[0] == pytest.approx(p.c, rel=1e-12)
        assert p.x_plus[0] == pytest.approx(ref["xp"], abs=5e-11)
    assert p.objective == pytest.approx(ref["f"], abs=5e-11)
    assert p.saddle_value == pytest.approx(ref["fsad"], abs=5e-11)
    if "w" in ref:
        np.testing.assert_allclose(p.w_norms, np.broadcast_to(ref["w"], (p.K,)), atol=5e-7)
        np.testing.assert_allclose(p.h_norms, np.broadcast_to(ref["mu"], (p.K,)), atol=5e-7)
    else:  # rank cap inside a tie: only the sums are determined
        assert p.w_norms is None and p.h_norms is None and not p.gram_unique
        assert p.layer_norms2[-1] == pytest.approx(ref["w2"], abs=5e-7)
        assert p.h_norm2 / 5 == pytest.approx(ref["mu2"], abs=5e-7)  # Σ_k ‖μ_k‖² = ‖H‖²/n
    if "b" in ref:
        np.testing.assert_allclose(p.bias, np.broadcast_to(ref["b"], (p.K,)), atol=5e-7)
    if "c1" in ref:  # (C): the 1-direction comes last in the c-order, with c/γ
        assert p.c_j[-1] == pytest.approx(ref["c1"], abs=_decimals(ref["c1"]))
        assert p.weights[-1] == pytest.approx(kw["lambda_b"] / (1 + kw["lambda_b"]), rel=1e-15)
        assert p.alive[-1] == ("x1" in ref)
        if "x1" in ref:
            assert p.x_plus[-1] == pytest.approx(ref["x1"], abs=5e-11)
    if row in GEOMETRY:
        assert p.geometry == GEOMETRY[row]


def test_reference_rank_r_values():
    a1 = deep.predict_deep(**ROWS["A1"][0])
    assert [m.rank for m in a1.local_minima] == [0, 1, 2, 3]
    np.testing.assert_allclose([m.value for m in a1.local_minima], [0.375, 0.2626769061, 0.1503538121, 0.0380307182],
                               atol=5e-11)
    assert [m.is_global for m in a1.local_minima] == [False, False, False, True]
    a6 = deep.predict_deep(**ROWS["A6"][0])
    np.testing.assert_allclose([m.value for m in a6.local_minima], [0.375, 0.3972917912, 0.4195835824, 0.4418753736],
                               atol=5e-11)
    assert a6.rank == 0 and a6.local_minima[0].is_global
    # the singular values of P M J a classifier compares with: x_+ on the alive directions, 0 elsewhere
    for mm in a1.local_minima:
        np.testing.assert_allclose(mm.singular_values, [a1.x_plus[0]] * mm.rank + [0.0] * (4 - mm.rank), atol=1e-14)


def test_origin_is_the_only_critical_point_above_c_exist():
    p = deep.predict_deep(K=4, n=5, L=2, widths=(8, 8), lambda_h=0.2, lambdas=0.2)
    assert p.c > p.c_exist and p.rank == 0 and p.geometry == "zero"
    assert p.saddle_value == math.inf and len(p.local_minima) == 1 and p.objective == pytest.approx(0.375)


def test_class_size_directions_are_the_secular_spectrum():
    sizes = (9, 7, 4, 2)
    p = deep.predict_deep(K=4, n=sizes, L=2, widths=(5, 5), lambda_h=1e-2, lambdas=1e-2)
    np.testing.assert_allclose(p.sigma**2, imbalanced.secular_spectrum(sizes)[:3], rtol=1e-12)
    assert np.all(np.diff(p.c_j) >= 0)  # the c-order


# ------------------------------------------------------------------------------ L = 1 is today's theory
L1_PROBLEMS = [
    dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=7e-3),
    dict(K=5, d=3, n=4, lambda_w=1e-2, lambda_h=2e-2),
    dict(K=4, d=8, n=5, lambda_w=0.2, lambda_h=0.3),
    dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=7e-3, bias=False),
    dict(K=4, d=2, n=5, lambda_w=5e-3, lambda_h=7e-3, bias=False),
    dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=7e-3, lambda_b=0.01),
    dict(K=4, d=8, n=5, lambda_w=5e-3, lambda_h=7e-3, lambda_b=2.0),
    dict(K=4, d=3, n=5, lambda_w=5e-3, lambda_h=7e-3, lambda_b=2.0),
    dict(class_sizes=(9, 7, 4, 2), d=5, lambda_w=1e-2, lambda_h=1e-2),
    dict(class_sizes=(9, 7, 4, 2), d=2, lambda_w=1e-2, lambda_h=1e-2),
    dict(class_sizes=(10, 6, 3, 2), d=5, lambda_w=0.08, lambda_h=0.07, bias=False),
    dict(class_sizes=(40, 10, 2, 2), d=5, lambda_w=0.01, lambda_h=0.02),
]


@pytest.mark.parametrize("kw", L1_PROBLEMS)
def test_depth_one_is_todays_theory(kw):
    prob = Problem(**kw)
    ref = theory.predict(prob)
    p = deep.predict_deep(prob.K, prob.class_sizes or prob.n, 1, (prob.d,), prob.lambda_h, (prob.lambda_w,),
                          prob.bias_mode, prob.lambda_b)
    assert p.c == pytest.approx(prob.c, rel=1e-14)
    assert p.objective == pytest.approx(ref.objective, abs=1e-15)
    assert p.rank == ref.rank and len(p.local_minima) == 1
    if ref.w_norms is not None and p.gram_unique:
        np.testing.assert_allclose(p.w_norms, ref.w_norms, atol=1e-14)
        np.testing.assert_allclose(p.h_norms, ref.h_norms, atol=1e-14)
        np.testing.assert_allclose(p.gram_w, ref.gram, atol=1e-14)
    if ref.bias_vector is not None:
        np.testing.assert_allclose(p.bias, ref.bias_vector, atol=1e-15)
    if not prob.general:
        assert p.geometry == ref.geometry
        assert p.layer_norms2[0] == pytest.approx(np.sum(ref.spectrum), rel=1e-13)  # ‖W‖² = tr W Wᵀ
    # f_sad: §8 balanced (certificate.saddle_gaps; (C) where it is defined, d >= K+1), §7 with sizes
    if prob.general:
        assert p.saddle_gap == pytest.approx(imbalanced.saddle_gap(prob), abs=1e-15)
    elif prob.bias_mode != "regularized" or prob.d >= prob.K + 1:
        assert p.saddle_gap == pytest.approx(float(certificate.saddle_gaps(prob)), rel=1e-12)


def test_equal_class_sizes_are_the_balanced_prediction():
    a = deep.predict_deep(K=4, n=5, L=3, widths=(8, 8, 8), lambda_h=5e-3, lambdas=5e-3)
    b = deep.predict_deep(K=4, n=(5, 5, 5, 5), L=3, widths=(8, 8, 8), lambda_h=5e-3, lambdas=5e-3)
    assert (a.objective, a.saddle_value, a.geometry) == (b.objective, b.saddle_value, b.geometry)
    np.testing.assert_allclose(a.w_norms, b.w_norms, rtol=1e-15)


# ------------------------------------------------------------------------------ deep ReLU (§9.6)
def test_relu_reference_values():
    dnc = deep.relu_dnc(10, 5, 4, (30,) * 4, 4e-3, 4e-3)
    assert dnc.loss == pytest.approx(0.136396176619, abs=5e-13)
    assert dnc.c == pytest.approx(0.055189, abs=5e-7) and dnc.x_plus == pytest.approx(0.9428264803, abs=5e-11)
    assert dnc.exists and dnc.beats_zero
    b2 = deep.predict_deep(**ROWS["B2"][0])  # DNC is the bias-free deep-linear optimum
    assert (dnc.w_norm, dnc.h_norm) == pytest.approx((b2.w_norms[0], b2.h_norms[0]), rel=1e-14)
    srg = deep.relu_srg_simple(10, 5, 5, 4, 4e-3, 4e-3)
    assert srg.loss == pytest.approx(0.12429203, abs=5e-9)
    assert srg.loss / dnc.loss == pytest.approx(0.911, abs=5e-4)
    # L = 3: the simple family is above DNC (1.07, 1.06, 1.05 for r = 4, 5, 6); L = 4 below
    for r, ratio in [(4, 1.07), (5, 1.06), (6, 1.05)]:
        K = r * (r - 1) // 2
        s3, d3 = deep.relu_srg_simple(K, r, 5, 3, 4e-3, 4e-3), deep.relu_dnc(K, 5, 3, (K,) * 3, 4e-3, 4e-3)
        assert s3.loss / d3.loss == pytest.approx(ratio, abs=0.005)
        assert deep.relu_srg_simple(K, r, 5, 4, 4e-3, 4e-3).loss < deep.relu_dnc(K, 5, 4, (K,) * 4, 4e-3, 4e-3).loss


def test_relu_existence():
    assert not deep.relu_dnc(10, 5, 4, (30, 30, 9, 30), 4e-3, 4e-3).exists  # a width below K
    gone = deep.relu_dnc(4, 5, 3, (8,) * 3, 0.07, 0.07)  # c above c_exist(3)
    assert gone.c > deep.c_exist(3) and not gone.exists and math.isnan(gone.loss)
    mid = deep.relu_dnc(4, 5, 3, (8,) * 3, 0.055, 0.055)  # c_glob < c < c_exist: exists, loses to 0
    assert mid.exists and not mid.beats_zero and mid.loss > 0.5
    assert not deep.relu_srg_simple(10, 5, 5, 4, 4e-3, 4e-3, widths=(5, 5, 5, 9)).exists
    assert deep.relu_srg_simple(10, 5, 5, 4, 4e-3, 4e-3, widths=(5, 5, 5, 10)).exists


def _relu_loss(mats, H1, Y, lams, lh):
    """The deep ReLU UFM written here: H_{l+1} = ReLU(W_l H_l), output W_L H_L, no bias."""
    h = H1
    for W in mats[:-1]:
        h = jnp.maximum(W @ h, 0.0)
    N = Y.shape[1]
    return (jnp.sum((mats[-1] @ h - Y) ** 2) / (2 * N) + lh / 2 * jnp.sum(H1**2)
            + sum(lam / 2 * jnp.sum(W**2) for W, lam in zip(mats, lams)))


def _family_value(templates, n, lams, lh):
    """min over the scales t_i > 0 of the ReLU loss at factors t_i F_i (F_i of unit Frobenius norm; F_0
    the class means, repeated n times). The network is evaluated once at unit scales (G: its class-mean
    outputs, through the ReLUs); positive homogeneity makes the output (Π t_i) G, and Newton's method
    on log t minimizes ‖(Π t) G − I‖²n/(2N) + Σ λ_i t_i²/2. Returns (value at the explicit scaled
    network, ‖∇‖ in log t)."""
    K = templates[0].shape[1]
    N = n * K
    Fs = [templates[0] / (np.linalg.norm(templates[0]) * math.sqrt(n))] + [F / np.linalg.norm(F)
                                                                           for F in templates[1:]]

    def forward(mats):  # class means through the network: H_{l+1} = ReLU(W_l H_l), output W_L H_L
        h = mats[0]
        for W in mats[1:-1]:
            h = np.maximum(W @ h, 0.0)
        return mats[-1] @ h

    G = forward(Fs)
    gg, gy = n * float(np.sum(G * G)), n * float(np.trace(G))
    lam = np.array((lh, *lams))
    u = np.full(len(Fs), -math.log(math.sqrt(gg / K / n)) / len(Fs))
    for _ in range(60):
        T = math.exp(u.sum())
        g = (T * T * gg - T * gy) / N + lam * np.exp(2 * u)
        H = np.full((u.size, u.size), (2 * T * T * gg - T * gy) / N) + np.diag(2 * lam * np.exp(2 * u))
        u = u - np.linalg.solve(H, g)
    t = np.exp(u)
    mats = [ti * F for ti, F in zip(t, Fs)]
    value = (n * float(np.sum((forward(mats) - np.eye(K)) ** 2)) / (2 * N)
             + sum(li / 2 * float(np.sum(M**2)) * (n if i == 0 else 1) for i, (li, M) in enumerate(zip(lam, mats))))
    return value, float(np.linalg.norm(g))


def _srg_templates(r, L):
    edges = list(itertools.combinations(range(r), 2))
    B = np.zeros((r, len(edges)))
    for e, (a, b) in enumerate(edges):
        B[a, e] = B[b, e] = 1.0
    return [B] + [np.eye(r)] * (L - 2) + [B.T @ (np.eye(r) - 0.25), np.eye(len(edges))]


@pytest.mark.parametrize("r, L", [(5, 4), (4, 2), (4, 3), (6, 5)])
def test_relu_families_against_an_explicit_relu_network(r, L):
    """The closed forms against the ReLU loss of the explicit networks, scales optimized numerically."""
    K, n = r * (r - 1) // 2, 3
    lams, lh = tuple(3e-3 + 1e-3 * i for i in range(L)), 2e-3
    srg, gs = _family_value(_srg_templates(r, L), n, lams, lh)
    dnc, gd = _family_value([np.eye(K)] * (L + 1), n, lams, lh)
    assert gs < 1e-12 and gd < 1e-12
    assert srg == pytest.approx(deep.relu_srg_simple(K, r, n, L, lh, lams).loss, abs=1e-13)
    assert dnc == pytest.approx(deep.relu_dnc(K, n, L, (K,) * L, lh, lams).loss, abs=1e-13)


@pytest.mark.parametrize("relu_prime_at_zero", [0.0, 0.5, 1.0])
def test_dnc_is_a_critical_point_of_the_relu_objective(relu_prime_at_zero):
    """At DNC (every layer the K axes, scaled by balance) the ReLU objective's gradient, by backprop written
    here, is zero whatever ReLU'(0) is (the zero pre-activations receive zero back-signal)."""
    K, n, L = 10, 5, 4
    lams, lh = (3e-3, 4e-3, 5e-3, 6e-3), 2e-3
    d = deep.relu_dnc(K, n, L, (K,) * L, lh, lams)
    N, Y = n * K, np.repeat(np.eye(K), n, axis=1)
    # balance: λ_l a_l² = λ_L ‖w_k‖² for every factor; H_1's class means have norm h_norm
    mats = [math.sqrt(lams[-1] / lam) * d.w_norm * np.eye(K) for lam in lams]
    H1 = np.repeat(d.h_norm * np.eye(K), n, axis=1)
    hs, pres = [H1], []
    for W in mats[:-1]:
        pres.append(W @ hs[-1])
        hs.append(np.maximum(pres[-1], 0.0))
    R = (mats[-1] @ hs[-1] - Y) / N
    value = N * float(np.sum(R**2)) / 2 + lh / 2 * float(np.sum(H1**2)) + sum(
        lam / 2 * float(np.sum(W**2)) for lam, W in zip(lams, mats))
    grads = [R @ hs[-1].T + lams[-1] * mats[-1]]
    delta = mats[-1].T @ R
    for i in range(L - 2, -1, -1):
        dpre = delta * np.where(pres[i] > 0, 1.0, np.where(pres[i] == 0, relu_prime_at_zero, 0.0))
        grads.append(dpre @ hs[i].T + lams[i] * mats[i])
        delta = mats[i].T @ dpre
    grads.append(delta + lh * H1)
    assert max(float(np.max(np.abs(g))) for g in grads) < 1e-15
    assert value == pytest.approx(d.loss, abs=1e-15)
    assert np.sum(pres[0] == 0) == (K * K - K) * n  # the kinks are really there


# ------------------------------------------------------------------------------ independent float64 GD
def _objective(params, Y, lams, lh, lb, bias: bool):
    """The deep linear UFM written here (THEORY §9.1): f = ‖W_L⋯W_1 H + b1ᵀ − Y‖²/(2N) + Σλ_l‖W_l‖²/2
    + λ_H‖H‖²/2 + λ_b‖b‖²/2."""
    Ws, H, b = params
    Z = H
    for W in Ws:
        Z = W @ Z
    if bias:
        Z = Z + b[:, None]
    f = jnp.sum((Z - Y) ** 2) / (2 * Y.shape[1]) + lh / 2 * jnp.sum(H**2) + lb / 2 * jnp.sum(b**2)
    return f + sum(lam / 2 * jnp.sum(W**2) for W, lam in zip(Ws, lams))


@functools.partial(jax.jit, static_argnames=("steps", "bias"))
def _gd(params, Y, lams, lh, lb, steps: int, bias: bool, eta: float = 0.5):
    grad = jax.grad(_objective)

    def body(_, p):
        g = grad(p, Y, lams, lh, lb, bias)
        p = jax.tree_util.tree_map(lambda x, y: x - eta * y, p, g)
        return p if bias else (p[0], p[1], jnp.zeros_like(p[2]))

    return jax.lax.fori_loop(0, steps, body, params)


def _setup(pred, r):
    Ws, H, b = deep.critical_point(pred, r)
    bias = b is not None
    Y = jnp.asarray(np.repeat(np.eye(pred.K), pred.class_sizes.astype(int), axis=1))
    params = (tuple(jnp.asarray(W) for W in Ws), jnp.asarray(H), jnp.asarray(np.zeros(pred.K) if b is None else b))
    args = (Y, tuple(pred.lambdas), pred.lambda_h, pred.lambda_b)
    return params, args, bias


def _perturb(params, eps, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: x + eps * rng.standard_normal(x.shape), params)


def _pmj(pred, params):
    """Singular values of P M J (M the class means of H; J centres in (A)), descending."""
    Ws, H, _ = params
    P = Ws[-1]
    for W in reversed(Ws[:-1]):
        P = P @ W
    labels = np.repeat(np.arange(pred.K), pred.class_sizes.astype(int))
    M = np.stack([np.asarray(H)[:, labels == k].mean(axis=1) for k in range(pred.K)], axis=1)
    PM = np.asarray(P) @ M
    if pred.bias_mode == "unregularized":
        PM = PM - PM.mean(axis=1, keepdims=True)
    return np.linalg.svd(PM, compute_uv=False), M


_grad = jax.jit(jax.grad(_objective), static_argnames=("bias",))


@pytest.mark.parametrize("row", ["A1", "A4", "A5", "A6", "A8", "B3", "C1", "C2"])
def test_predicted_points_are_stationary(row):
    """Every predicted local minimum (and L = 1 optimum) has zero gradient and value f_r under the
    objective written here."""
    pred = deep.predict_deep(**ROWS[row][0])
    for mm in pred.local_minima:
        params, args, bias = _setup(pred, mm.rank)
        g = _grad(params, *args, bias=bias)
        if not bias:
            g = (g[0], g[1], jnp.zeros_like(g[2]))
        gnorm = math.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree_util.tree_leaves(g)))
        assert gnorm < 1e-13, (mm.rank, gnorm)
        assert float(_objective(params, *args, bias)) == pytest.approx(mm.value, abs=1e-14)


GD_CASES = [dict(BAL, L=2, widths=(8, 8)), dict(BAL, L=3, widths=(8, 8, 8)), ROWS["A4"][0], ROWS["A5"][0],
            ROWS["A8"][0], ROWS["B3"][0], ROWS["C2"][0]]


@pytest.mark.parametrize("i", range(len(GD_CASES)))
def test_gd_from_the_perturbed_optimum_ends_at_f_star(i):
    """Float64 GD (autodiff of the objective above), 4000 steps at η = 0.5 from the predicted optimum
    plus N(0, 3e-3²) noise on every entry, ends at f* with the predicted spectra and norms."""
    pred = deep.predict_deep(**GD_CASES[i])
    params, args, bias = _setup(pred, None)
    out = _gd(_perturb(params, 3e-3, i), *args, steps=4000, bias=bias)
    assert float(_objective(out, *args, bias)) == pytest.approx(pred.objective, abs=1e-10)
    sv, M = _pmj(pred, out)
    np.testing.assert_allclose(sv, pred.singular_values, atol=1e-6)
    np.testing.assert_allclose([float(jnp.sum(W**2)) for W in out[0]], pred.layer_norms2, rtol=1e-6)
    assert float(jnp.sum(out[1] ** 2)) == pytest.approx(pred.h_norm2, rel=1e-6)
    if pred.gram_unique:
        WL = np.asarray(out[0][-1])
        np.testing.assert_allclose(WL @ WL.T, pred.gram_w, atol=1e-6)
        np.testing.assert_allclose(M.T @ M, pred.gram_h, atol=1e-6)
    if bias:  # (A): b trades with the feature mean, which decays only at rate η λ_H
        np.testing.assert_allclose(np.asarray(out[2]), pred.bias, atol=1e-6)
    if pred.geometry == "simplex_etf" and pred.bias_mode == "unregularized":
        # THEORY §9.2: class means after l weight layers, M_lᵀM_l = (Π_{i<=l} τ/λ_i) n^{(l+1)/m−1} x_+^{2(l+1)/m} P_U
        m, n, x = pred.L + 1, pred.class_sizes[0], pred.x_plus[0]
        lams, Ml = (pred.lambda_h, *pred.lambdas), M
        for layer in range(pred.L):
            scale = math.prod(pred.tau / lam for lam in lams[: layer + 1]) * n ** ((layer + 1) / m - 1) \
                * x ** (2 * (layer + 1) / m)
            np.testing.assert_allclose(Ml.T @ Ml, scale * (np.eye(pred.K) - 1 / pred.K), atol=1e-6)
            Ml = np.asarray(out[0][layer]) @ Ml


@pytest.mark.parametrize("L, r", [(2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2)])
def test_gd_from_a_perturbed_rank_r_local_min_stays(L, r):
    """THEORY §9.2: the prefixes of rank r < the optimum's are local minima (L >= 2): perturbed by
    N(0, 3e-3²), GD returns to f_r."""
    pred = deep.predict_deep(**dict(BAL, L=L, widths=(8,) * L))
    mm = pred.local_minima[r]
    assert not mm.is_global
    params, args, bias = _setup(pred, r)
    out = _gd(_perturb(params, 3e-3, 10 + r), *args, steps=4000, bias=bias)
    assert float(_objective(out, *args, bias)) == pytest.approx(mm.value, abs=1e-10)
    np.testing.assert_allclose(_pmj(pred, out)[0], mm.singular_values, atol=1e-6)


def test_gd_from_a_rank_one_local_min_above_the_origin_stays():
    """A6 (c_glob < c < c_exist): the origin is global and the rank-1 point is a local minimum above it."""
    pred = deep.predict_deep(**ROWS["A6"][0])
    params, args, bias = _setup(pred, 1)
    out = _gd(_perturb(params, 3e-3, 3), *args, steps=4000, bias=bias)
    assert float(_objective(out, *args, bias)) == pytest.approx(pred.local_minima[1].value, abs=1e-10)


def test_gd_leaves_a_depth_one_saddle():
    """The control that shows the perturbation test can fail: at L = 1 the rank-1 point is a strict
    saddle (§3), and the same perturbed GD leaves it for the optimum."""
    pred = deep.predict_deep(K=4, n=5, L=1, widths=(8,), lambda_h=5e-3, lambdas=5e-3)
    params, args, bias = _setup(pred, 1)
    f1 = float(_objective(params, *args, bias))
    out = _gd(_perturb(params, 3e-3, 4), *args, steps=4000, bias=bias)
    assert f1 - float(_objective(out, *args, bias)) > 0.1
    assert float(_objective(out, *args, bias)) == pytest.approx(pred.objective, abs=1e-10)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kw, field", [
    (dict(K=1), "K"),
    (dict(n=0), "n"),
    (dict(n=(5, 5, 5)), "n"),
    (dict(L=0), "L"),
    (dict(widths=(8,)), "widths"),
    (dict(widths=(8, 0)), "widths"),
    (dict(lambdas=(5e-3,)), "lambdas"),
    (dict(lambdas=(5e-3, 0.0)), "lambdas"),
    (dict(lambda_h=-1.0), "lambda_h"),
    (dict(bias="maybe"), "bias"),
    (dict(bias="regularized"), "lambda_b"),
    (dict(lambda_b=0.1), "lambda_b"),
    (dict(n=(5, 5, 5, 4), bias="regularized", lambda_b=0.1), "bias"),
])
def test_bad_input_names_the_argument(kw, field):
    args = dict(K=4, n=5, L=2, widths=(8, 8), lambda_h=5e-3, lambdas=5e-3)
    args.update(kw)
    with pytest.raises(ProblemError) as e:
        deep.predict_deep(**args)
    assert e.value.field == field and str(e.value).startswith(field)


def test_bad_relu_and_root_input():
    with pytest.raises(ProblemError, match="^K"):
        deep.relu_srg_simple(9, 5, 5, 4, 4e-3, 4e-3)
    with pytest.raises(ProblemError, match="^L"):
        deep.relu_srg_simple(10, 5, 5, 1, 4e-3, 4e-3)
    with pytest.raises(ProblemError, match="^c"):
        deep.x_plus(-0.1, 2)
    with pytest.raises(ProblemError, match="^r"):
        deep.critical_point(deep.predict_deep(**ROWS["A5"][0]), 3)
