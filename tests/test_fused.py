"""The fused multi-step kernel (ncflow.batch.fused) in Pallas's interpret mode on the CPU: its state
after a chunk of masked steps against the same masked steps of vmap(ncflow's collapsed gd_step),
lanes past their budget kept bit for bit, float32 within the spread of ncflow's own orderings, the
certificate's rounding bound at the kernel's states, and the GPU (Triton) lowering without a GPU.

Sizes are small (K=3, d=4; K=2, d=3) because the interpret-mode compile of the unrolled step grows
fast with K·d (~6 s at K=3, d=4 on a 2-core CPU); K=d=10 is a slow test.

"Relative" below: the largest entry difference of a leaf over that leaf's largest entry (entries near
0 would make an entrywise ratio meaningless).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ncflow
from ncflow.batch import fused
from ncflow.dynamics.build import default_lr, dynamics_for
from ncflow.dynamics.precision import elementwise_products
from ncflow.dynamics.spaces import COLLAPSED
from ncflow.dynamics.starts import initializer, run_key
from ncflow.maths.certificate import rounding_bound
from ncflow.maths.collapsed import Collapsed, objective

LANES = 200  # not a multiple of the 128-lane block: the padding path runs too


def _setup(K, d, n, dtype="float64", bias=True, seed=0):
    """ncflow's own starts, per-lane coefficients (λ's and lr spread over lanes, bias lanes both
    unregularized and regularized) and per-lane budgets."""
    problem = ncflow.Problem(K=K, d=d, n=n, dtype=dtype, bias=bias)
    cfg = ncflow.Config(runs=LANES, early_stop=False, progress=False, engine="collapsed")
    dyn = dynamics_for(problem, cfg)
    init = initializer(problem, cfg)
    x0 = jax.jit(jax.vmap(lambda i: dyn.from_params(problem, init(problem, run_key(seed, i), 1.0))))(
        jnp.arange(LANES, dtype=jnp.uint32))
    rng = np.random.default_rng(seed)
    lw = problem.lambda_w * rng.uniform(0.5, 2.0, LANES)
    lh = problem.lambda_h * rng.uniform(0.5, 2.0, LANES)
    lb = np.where(rng.random(LANES) < 0.5, 0.0, 1e-3) if bias else np.zeros(LANES)
    batch = eqx.tree_at(lambda p: (p.lambda_w, p.lambda_h, p.lambda_b), problem,
                        tuple(jnp.asarray(v, dtype) for v in (lw, lh, lb)))
    lr = jnp.asarray(float(default_lr(problem, cfg)) * rng.uniform(0.5, 1.0, LANES), dtype)
    return problem, batch, x0, lr, rng


def _reference(problem, batch, x, lr, budget, steps, products="dots"):
    """``steps`` masked steps of vmap(COLLAPSED.gd_step) (a lane steps at t only while t < budget),
    full-precision products; ``products="elementwise"``: ncflow's other ordering of the same sums."""
    step = COLLAPSED.gd_step if products == "dots" else elementwise_products(COLLAPSED.gd_step)

    def one(p, xi, lri, bi):
        def body(xc, t):
            new = step(p, xc, lri)
            return jax.tree_util.tree_map(lambda u, v: jnp.where(t < bi, u, v), new, xc), None
        return jax.lax.scan(body, xi, jnp.arange(steps))[0]

    axes = eqx.tree_at(lambda p: (p.lambda_w, p.lambda_h, p.lambda_b), jax.tree_util.tree_map(lambda _: None, batch),
                       (0, 0, 0), is_leaf=lambda v: v is None)
    with jax.default_matmul_precision("highest"):
        return jax.jit(jax.vmap(one, in_axes=(axes, 0, 0, 0)))(batch, x, lr, budget)


def _kernel(problem, batch, x, lr, budget, steps):
    K, d, n = problem.K, problem.d, problem.n
    run = jax.jit(lambda r, c, b: fused.fused_chunk(r, c, b, K=K, d=d, n=n, bias=problem.bias, steps=steps))
    return run, fused.pack(x), fused.coefficients(batch, lr, x.W.shape[0])


def _rel(a, b) -> float:
    """The largest leafwise relative difference of two batched states."""
    out = 0.0
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        out = max(out, float(np.max(np.abs(u - v)) / max(np.max(np.abs(v)), 1e-300)))
    return out


def test_float64_chunk_equals_masked_ncflow_steps_and_keeps_lanes_past_budget():
    K, d, n, T = 3, 4, 5, 12
    problem, batch, x0, lr, rng = _setup(K, d, n)
    budget = jnp.asarray(rng.integers(0, T + 2, LANES), jnp.int32)  # 0 (untouched) .. past the chunk
    run, rows, coefs = _kernel(problem, batch, x0, lr, budget, T)
    out = run(rows, coefs, budget)
    ref = _reference(problem, batch, x0, lr, budget, T)
    assert _rel(fused.unpack(out, K, d), ref) < 1e-13
    moved = np.asarray(budget) > 0
    assert _rel(fused.unpack(out[:, moved], K, d), fused.unpack(rows[:, moved], K, d)) > 1e-3  # the steps did move
    # a lane with budget 0 is the input bit for bit (padding lanes: never visible)
    np.testing.assert_array_equal(np.asarray(out)[:, ~moved], np.asarray(rows)[:, ~moved])
    # a lane past its budget stays put bit for bit: the same budget split over two chunks gives the same bits
    first = jnp.minimum(budget, 5)
    twice = run(run(rows, coefs, first), coefs, jnp.minimum(budget, T) - first)
    np.testing.assert_array_equal(np.asarray(twice), np.asarray(out))


def test_float64_without_bias_keeps_b():
    K, d, n, T = 2, 3, 4, 6
    problem, batch, x0, lr, rng = _setup(K, d, n, bias=False)
    budget = jnp.full((LANES,), T, jnp.int32)
    run, rows, coefs = _kernel(problem, batch, x0, lr, budget, T)
    out = fused.unpack(run(rows, coefs, budget), K, d)
    assert _rel(out, _reference(problem, batch, x0, lr, budget, T)) < 1e-13
    np.testing.assert_array_equal(np.asarray(out.b), np.asarray(x0.b))


def test_float32_within_the_spread_of_ncflows_orderings_and_the_rounding_bound():
    """float32: the kernel's distance to ncflow's step (full-precision dots) is of the size of the
    distance between two orderings of ncflow's own step (dots vs elementwise products): at most 10×
    that spread and at most 1e-5 relative after 12 steps (u = 6e-8: ~170 u). The certificate's rounding
    bound (of f's evaluation, the check) holds at the kernel's states."""
    K, d, n, T = 3, 4, 5, 12
    problem, batch, x0, lr, rng = _setup(K, d, n, dtype="float32")
    budget = jnp.asarray(rng.integers(T // 2, T + 1, LANES), jnp.int32)
    run, rows, coefs = _kernel(problem, batch, x0, lr, budget, T)
    out = fused.unpack(run(rows, coefs, budget), K, d)
    assert out.W.dtype == jnp.float32
    ref = _reference(problem, batch, x0, lr, budget, T)
    spread = _rel(_reference(problem, batch, x0, lr, budget, T, products="elementwise"), ref)
    err = _rel(out, ref)
    # measured: err 4.3e-7, spread 1.1e-7 (the kernel folds 1/N into s and sums in index order)
    assert 0.0 < spread and err <= 10 * spread and err < 1e-5, (err, spread)
    # the check evaluates f from the state; its rounding bound does not depend on how the state was reached
    f32 = np.asarray(_objective_lanes(batch, out, jnp.float32), np.float64)  # as the check computes it
    exact = _objective_lanes(batch, out, jnp.float64)  # the same float32 state, evaluated in float64
    lanes_problem = ncflow.Problem(K=K, d=d, n=n, dtype="float32", **{
        k: np.asarray(getattr(batch, k), np.float64) for k in ("lambda_w", "lambda_h", "lambda_b")})
    bound = rounding_bound(lanes_problem, f32, space="collapsed")
    assert np.all(np.isfinite(bound)) and np.all(np.abs(f32 - exact) <= bound)


def _objective_lanes(batch, x, dtype):
    """f of every lane evaluated in ``dtype`` (the lanes' own λ's) by ncflow's collapsed objective,
    from a float32 state (cast exactly to float64)."""
    name = jnp.dtype(dtype).name
    p = eqx.tree_at(lambda p: (p.lambda_w, p.lambda_h, p.lambda_b),
                    ncflow.Problem(K=batch.K, d=batch.d, n=batch.n, dtype=name),
                    tuple(jnp.asarray(v, dtype) for v in (batch.lambda_w, batch.lambda_h, batch.lambda_b)))
    x = jax.tree_util.tree_map(lambda a: a.astype(dtype), x)
    axes = eqx.tree_at(lambda p: (p.lambda_w, p.lambda_h, p.lambda_b), jax.tree_util.tree_map(lambda _: None, p),
                       (0, 0, 0), is_leaf=lambda v: v is None)
    with jax.default_matmul_precision("highest"):
        return np.asarray(jax.vmap(objective, in_axes=(axes, 0))(p, x))


def test_pack_unpack_and_row_blocks():
    K, d, L = 3, 4, 5
    rng = np.random.default_rng(1)
    G = rng.normal(size=(L, d, d))
    W, M, b = (jnp.asarray(rng.normal(size=s)) for s in ((L, K, d), (L, d, K), (L, K)))
    x = Collapsed(W, M, jnp.asarray(G + G.transpose(0, 2, 1)), b)
    rows = fused.pack(x)
    assert rows.shape == (fused.n_rows(K, d), L) == (2 * K * d + d * (d + 1) // 2 + K, L)
    for a, b in zip(fused.unpack(rows, K, d), x):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for P in (1, 46, 99, 265):
        blocks = fused.row_blocks(P)
        assert [s for s, _ in blocks] == list(np.cumsum([0] + [z for _, z in blocks])[:-1])
        assert sum(z for _, z in blocks) == P and all(z & (z - 1) == 0 for _, z in blocks)
    assert fused.row_blocks(46) == [(0, 32), (32, 8), (40, 4), (44, 2)]


def test_supports_only_the_default_collapsed_gd_step():
    base = ncflow.Config(runs=2)
    assert fused.supports(ncflow.Problem(), dynamics_for(ncflow.Problem(), base))
    assert fused.supports(ncflow.Problem(bias=False))
    assert fused.supports(ncflow.Problem(lambda_b=1e-3))
    assert not fused.supports(ncflow.Problem(class_sizes=(3, 4, 5), K=3))
    assert not fused.supports(ncflow.Problem(loss="rescaled-mse"))
    assert not fused.supports(ncflow.Problem(depth=2, bias=False))
    momentum = ncflow.Config(runs=2, optimizer="momentum")
    assert not fused.supports(ncflow.Problem(), dynamics_for(ncflow.Problem(), momentum))


def test_bad_arguments_refused_before_tracing():
    rows = jnp.zeros((fused.n_rows(3, 4), 8))
    coefs, budget = jnp.zeros((4, 8)), jnp.zeros((8,), jnp.int32)
    with pytest.raises(ValueError, match="n_rows"):
        fused.fused_chunk(rows, coefs, budget, K=4, d=4, n=2, steps=1)
    with pytest.raises(ValueError, match="block_lanes must be a power of two"):
        fused.fused_chunk(rows, coefs, budget, K=3, d=4, n=2, steps=1, block_lanes=100)


def test_lowers_for_cuda_through_triton_without_a_gpu():
    """The GPU path (Triton CompilerParams) lowers on this CPU-only machine: the real Pallas→Triton
    lowering runs (``lowering_platforms=("cuda",)``); compiling and timing it need a GPU."""
    K = d = 4
    P, L = fused.n_rows(K, d), 512
    f = lambda r, c, b: fused.fused_chunk(r, c, b, K=K, d=d, n=10, steps=100, interpret=False)  # noqa: E731
    lowered = jax.jit(f).trace(jax.ShapeDtypeStruct((P, L), jnp.float32), jax.ShapeDtypeStruct((4, L), jnp.float32),
                               jax.ShapeDtypeStruct((L,), jnp.int32)).lower(lowering_platforms=("cuda",))
    assert "__gpu$xla.gpu.triton" in lowered.as_text()


@pytest.mark.slow
def test_float64_default_size_k10_d10():
    """The default problem's size (interpret-mode compile takes minutes)."""
    K, d, n, T = 10, 10, 100, 5
    problem, batch, x0, lr, rng = _setup(K, d, n)
    budget = jnp.asarray(rng.integers(0, T + 1, LANES), jnp.int32)
    run, rows, coefs = _kernel(problem, batch, x0, lr, budget, T)
    assert _rel(fused.unpack(run(rows, coefs, budget), K, d), _reference(problem, batch, x0, lr, budget, T)) < 1e-13
