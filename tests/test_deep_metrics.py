"""Per-layer NC metrics of the deep linear UFM (issue 22.5; THEORY §9.2 geometry at x_+, §5 conventions):
at an exact critical point built by ``ncflow.maths.deep.critical_point`` every layer's features have NC1 = 0,
class means on the simplex ETF ((A)) or an orthogonal frame ((B)) and W_{l+1}ᵀW_{l+1} ∝ M̄_lM̄_lᵀ, and the
class-mean ranks are K − 1 ((A)) / K ((B)) at the global minimum and r at a rank-r local minimum; the
columns reach runs.csv, the report and the JSON summary; depth 1 has none of them. Expected values are the
closed forms (0, K − 1, K, r) or built here by hand, never copied from the code's output. Float64 (conftest).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import ncflow
from ncflow.maths import deep, metrics
from ncflow.maths import deep_collapsed as dc
from ncflow.maths import deep_objective as do
from ncflow.problem import Problem
from ncflow.result import load_table

K, N_PER, L = 4, 5, 3
WIDTHS = (8, 8, 8)


def _layers(bias="unregularized", r=None, widths=WIDTHS, collapsed=False, noise=0.0, seed=0):
    """Per-layer metrics (``do.layer_metrics``) at the exact critical point of rank r (None: global)."""
    pred = deep.predict_deep(K=K, n=N_PER, L=len(widths), widths=widths, lambda_h=5e-3, lambdas=5e-3, bias=bias)
    Ws, H, b = deep.critical_point(pred, r)
    H = H + noise * np.random.default_rng(seed).standard_normal(H.shape)
    spec = do.DeepSpec(K=K, sizes=N_PER, widths=widths, bias=bias, dtype="float64")
    p = do.DeepParams(tuple(jnp.asarray(W) for W in Ws), jnp.asarray(H),
                      jnp.zeros(K) if b is None else jnp.asarray(b))
    st = dc.class_stats(spec, dc.collapse(spec, p)) if collapsed else do.class_stats(spec, p)
    return {k: float(v) for k, v in do.layer_metrics(spec, st).items()}, pred


@pytest.mark.parametrize("collapsed", [False, True])
@pytest.mark.parametrize("bias, rank", [("unregularized", K - 1), ("none", K)])
def test_global_minimum_every_layer_collapsed_on_its_frame(bias, rank, collapsed):
    m, pred = _layers(bias, collapsed=collapsed)
    assert pred.rank == rank  # the theory's own count of alive directions: (A) K − 1, (B) K
    assert sorted(m) == sorted(f"{n}_l{i}" for n in ("nc1", "nc2", "nc3", "rank") for i in range(L))
    for i in range(L):
        assert m[f"nc1_l{i}"] < 1e-20, (i, m)  # exactly collapsed: Σ_W = 0 at every layer
        assert m[f"nc2_l{i}"] < 1e-12, (i, m)  # ETF ((A)) / orthogonal frame ((B))
        assert m[f"nc3_l{i}"] < 1e-12, (i, m)  # W_{i+1}ᵀW_{i+1} ∝ M̄_iM̄_iᵀ
        assert m[f"rank_l{i}"] == rank, (i, m)


@pytest.mark.parametrize("r", [0, 1, 2])
def test_rank_r_local_minimum_has_class_mean_rank_r(r):
    m, _ = _layers("unregularized", r=r)
    for i in range(L):
        assert m[f"rank_l{i}"] == r, (i, m)
        assert m[f"nc1_l{i}"] < 1e-20
        if r > 0:  # a projector on an r-dim U: W Gram and class-mean Gram agree; not the ETF
            assert m[f"nc3_l{i}"] < 1e-12
            # ||Π_U/√r − P||_F with Π_U an r-dim projector inside 1^⊥ and P = J/√(K−1): √(2 − 2√(r/(K−1)))
            assert m[f"nc2_l{i}"] == pytest.approx(np.sqrt(2 - 2 * np.sqrt(r / (K - 1))), abs=1e-10)


def test_the_metrics_see_spread_and_a_wrong_frame():
    """Each metric can fail: within-class noise raises NC1 at every layer; the (A) optimum scored as (B)
    (against the orthogonal frame) is off by √(2 − 2√((K−1)/K)) (THEORY §5's uncentered NC2 of an OF,
    by symmetry of the two unit-norm Grams)."""
    m, _ = _layers(noise=1e-2)
    assert all(m[f"nc1_l{i}"] > 1e-6 for i in range(L))
    pred = deep.predict_deep(K=K, n=N_PER, L=L, widths=WIDTHS, lambda_h=5e-3, lambdas=5e-3)
    Ws, H, b = deep.critical_point(pred)
    spec = do.DeepSpec(K=K, sizes=N_PER, widths=WIDTHS, dtype="float64")
    st = do.class_stats(spec, do.DeepParams(tuple(jnp.asarray(W) for W in Ws), jnp.asarray(H), jnp.asarray(b)))
    nc1, nc2, nc3, rank = metrics.class_mean_metrics(st.Ws[0], st.means[0], st.scatters[0], None, spec.N,
                                                     True, "orthogonal", "float64")
    assert float(nc2) == pytest.approx(np.sqrt(2 - 2 * np.sqrt((K - 1) / K)), abs=1e-12)
    assert float(rank) == K - 1


def test_rank_tolerance_from_the_dtype():
    s = np.array([1.0, 1e-3, 1e-6, 1e-12])
    X = jnp.asarray(np.diag(s))
    assert metrics.rank_tolerance("float64") == pytest.approx(np.sqrt(np.finfo(np.float64).eps))
    assert float(metrics.numerical_rank(X, "float64")) == 3  # 1e-6 > 1.5e-8 > 1e-12
    assert float(metrics.numerical_rank(X, "float32")) == 2  # 3.5e-4 cuts 1e-6
    assert float(metrics.numerical_rank(jnp.zeros((3, 3)), "float64")) == 0
    assert float(metrics.numerical_rank(X * 1e-9, "float64")) == 0  # below 1: an absolute cut-off
    assert float(metrics.numerical_rank(X * 1e6, "float64")) == 3  # above 1: relative


def test_runs_carry_per_layer_columns_to_csv_report_and_json(tmp_path):
    """A deep run with class sizes (THEORY §9 with §7's σ_j): it reaches f* with every layer's class means
    of rank K − 1; the columns reach runs.csv, the report and summary.json (and the §7 per-run columns,
    whose class fates the deep prediction does not name, do not crash the run)."""
    p = Problem(K=K, class_sizes=(6, 4, 3, 2), d=8, depth=2, lambda_w=1e-2, lambda_h=1e-2, dtype="float64")
    fstar = deep.predict_deep(K=K, n=(6, 4, 3, 2), L=2, widths=(8, 8), lambda_h=1e-2, lambdas=1e-2).objective
    # stop rule converged: at its small default step the run is certified (THEORY §9.3) long before it converges
    r = ncflow.simulate(p, runs=1, init_scale=1.0, max_steps=30000, seed=0, engine="full", stop="converged")
    assert list(r.outcome) == ["global"] and abs(r.per_run["objective"][0] - fstar) < 1e-9
    for i in range(2):
        assert r.per_run[f"rank_l{i}"][0] == K - 1 and r.per_run[f"nc1_l{i}"][0] < 1e-12
    assert "nc1_l2" not in r.per_run and r.per_run["merged"][0] == "" and r.per_run["vanished"][0] == ""
    r.save(str(tmp_path / "o"))
    table = load_table(str(tmp_path / "o"))
    np.testing.assert_array_equal(np.asarray(table["rank_l1"], float), r.per_run["rank_l1"])
    layers = r.summary()["median_layer_metrics"]
    assert [row["layer"] for row in layers] == [0, 1] and layers[1]["rank"] == K - 1
    report = r.report()
    assert "Per layer (median" in report and "layer 1" in report


def test_depth_one_has_no_layer_columns():
    r = ncflow.simulate(Problem(K=K, n=N_PER, d=8, lambda_w=5e-3, lambda_h=5e-3, dtype="float64"), runs=1,
                        init_scale=1.0, lr=0.5, max_steps=500, seed=0)
    assert not any(k.startswith(("nc1_l", "nc2_l", "nc3_l", "rank_l")) for k in r.per_run)
    assert "median_layer_metrics" not in r.summary() and "Per layer" not in r.report()
