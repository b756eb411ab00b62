"""The UFM problem definition: sizes, regularization, bias mode, loss, dtype and depth.

A :class:`Problem` is a frozen pytree. Its sizes, bias flag, loss, dtype, depth, widths and
activation are static (they fix array shapes and the compiled program); its coefficients (λ_W,
λ_H, λ_b, α, M and a deep UFM's hidden λ_1..λ_{L−1}) are leaves, so a batch of problems that
differ only in coefficients can be vmapped in one compiled program. Validation runs once, when a user builds a problem.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import numpy as np

from ncflow.codes import LABELS, RELU_LABELS
from ncflow.errors import ProblemError
from ncflow.settings import ACTIVATIONS, DTYPES, FLOAT32_MAX, INT32_MAX, LOSSES, PROBLEM, SETTINGS, check_applies

BIAS_MODES = ("unregularized", "regularized", "none")

__all__ = ["ACTIVATIONS", "BIAS_MODES", "DTYPES", "LOSSES", "Problem", "ProblemError", "RowBasis", "two_level_sizes"]

#: coefficients that apply only under some other setting (alpha, target_scale: rescaled-mse)
_CONDITIONAL = tuple(k for k in PROBLEM if SETTINGS[k].applies is not None)


def _default(name: str, static: bool = False):
    d = SETTINGS[name].field_default
    return eqx.field(static=True, default=d) if static else d


class RowBasis(NamedTuple):
    """A target matrix in row-space coordinates (THEORY §7; built by the engine, per lane): Q (N, r)
    an orthonormal basis of the rows of [T; 1ᵀ; L] (L the one-hot labels, if any), ``TQ = T Q``
    (K, r), ``q = Qᵀ 1`` (r,), ``LQ = Qᵀ Lᵀ`` (r, K) (zeros without labels), ``counts`` n_k (K,)
    (zeros without labels), ``N`` (), and ``Q`` itself (used only to collapse a start). Columns
    past a lane's own r are zero, which keeps them exactly zero in the state."""

    TQ: np.ndarray
    q: np.ndarray
    LQ: np.ndarray
    counts: np.ndarray
    N: np.ndarray
    Q: np.ndarray


def _check_targets(T, lanes: bool):
    """The checked (K, N) target matrix as float64; ``lanes``: the engine's per-lane form (lanes, K, N)
    is accepted too (a batch's problem, ``columns`` set), and kept as is."""
    if hasattr(T, "aval") and not hasattr(T, "__array__"):  # a tracer inside the engine
        return T
    try:
        a = np.asarray(T)
    except Exception:
        raise ProblemError(f"targets must be a real (K, N) array, got {type(T).__name__}", field="targets") from None
    if a.ndim == 3 and lanes:
        return T
    if a.ndim != 2 or a.shape[1] < 1 or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ProblemError(f"targets must be a real 2-D (K, N) array with K >= 2 and N >= 1, got shape {a.shape} "
                           f"dtype {a.dtype}", field="targets")
    if a.shape[1] > INT32_MAX:
        raise ProblemError(f"targets must have N < 2^31 columns, got {a.shape[1]}", field="targets")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ProblemError("targets must be finite (no NaN or inf entries)", field="targets")
    big = float(np.max(np.abs(a), initial=0.0))
    if big > FLOAT32_MAX:  # like every real-valued setting; beyond it the theory's σ² overflow float64
        raise ProblemError(f"targets must have entries of magnitude at most {FLOAT32_MAX:.4g} (the largest float32), "
                           f"got {big:.4g}", field="targets")
    return a


def _check_labels(y, K: int, lanes: bool):
    """The checked labels (N,) as int64; ``lanes``: the engine's per-lane form (lanes, N) too."""
    if hasattr(y, "aval") and not hasattr(y, "__array__"):
        return y
    a = np.asarray(y)
    if a.ndim == 2 and lanes:
        return y
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ProblemError(f"labels must be a 1-D integer array with entries in [0, {K - 1}], got shape {a.shape} "
                           f"dtype {a.dtype}", field="labels")
    if a.size and (a.min() < 0 or a.max() >= K):
        raise ProblemError(f"labels must have entries in [0, {K - 1}], got min {a.min()} max {a.max()}",
                           field="labels")
    if np.any(np.bincount(a, minlength=K) == 0):
        raise ProblemError(f"labels must contain every class 0..{K - 1} at least once", field="labels")
    return a.astype(np.int64)


class Problem(eqx.Module):
    """One UFM problem (THEORY.md §1). Defaults, ranges and help: :mod:`ncflow.settings`.

    Attributes:
        K: number of classes, in [2, 2^20 = 1048576] (default 10; the engine refuses what does not fit).
        d: feature dimension, in [1, 65536] (default 10).
        n: samples per class, in [1, 2^24] with N = n K < 2^31 (default 100; N columns of H,
            class-major).
        lambda_w, lambda_h: weight decay on W and H, finite and >= 0 (default 5e-4).
        lambda_b: weight decay on the bias, finite and >= 0 (0 = unregularized bias); must be 0
            when ``bias`` is False.
        bias: whether the model has a bias b (False = bias-free, case B).
        loss: "mse" or "rescaled-mse" (per-sample α(z_y − M)² + Σ_{j≠y} z_j²).
        alpha, target_scale: α > 0 and M > 0 of the rescaled MSE; with loss "mse" they must keep
            their default 1 (a value given where it does not apply is refused).
        dtype: "float32" (default: needs no ``jax_enable_x64``) or "float64".
        class_sizes: per-class sample counts ``(n_1, ..., n_K)`` (THEORY §7), each in [1, 2^24] with
            N = Σ n_k < 2^31; None (default) = n for every class. Given, it sets K (a K that
            disagrees with it is refused unless K is left at its default) and ``n`` is unused.
            Columns of H stay class-major: class 1's n_1 columns, then class 2's, ...
        targets: an arbitrary real target matrix T, shape (K, N), finite (soft labels, label
            smoothing, regression); None (default) = one-hot labels. Given, it sets K and N.
        labels: optional per-sample class labels (N,) in [0, K) of a ``targets`` problem, used by the
            NC metrics only (every class must occur); without them a ``targets`` problem whose
            ``class_sizes`` are given takes class-major labels.
        columns: engine-internal, leave it None: the number of H columns a batch's init draws when
            its lanes have different class sizes (the largest N of the batch).
        row_basis: engine-internal, leave it None: a ``targets`` problem in the row-space
            coordinates of the collapsed engine (:class:`~ncflow.problem.RowBasis`), set per lane.
        depth: L, the number of weight matrices between the free features H and the output, in
            [1, 64] (default 1: the UFM above, unchanged). L > 1 is the deep UFM of THEORY §9:
            Z = W_L⋯W_1 H with H (d, N), W_l (d_l, d_{l−1}), W_L (K, d_{L−1}); the bias (every mode
            as at L = 1) sits on the output layer. ``ncflow.predict`` gives its closed forms; the
            engine does not run it yet (``simulate``/``ncflow run``/``sweep`` refuse it, naming depth).
            Deep problems take one-hot classes (``n`` or ``class_sizes``, THEORY §9 with §7's σ_j)
            and the MSE loss; no ``targets``, no rescaled MSE.
        widths: the hidden widths (d_1, ..., d_{L−1}) (d_0 = ``d``), each in [1, 65536]: one int for
            every hidden layer or a list of L − 1; None (default) = d for every hidden layer. Stored
            as a tuple of L − 1 ints (None stays None); given with depth 1 it is refused.
        activation: "linear" (default) or "relu", the hidden layers' activation (the output layer
            is linear). "relu" (THEORY §9.6: H_1 = H free, H_{l+1} = ReLU(W_l H_l), output W_L H_L)
            needs depth >= 2, balanced classes and ``bias=False``.
        lambda_w: with depth > 1, the OUTPUT layer's λ_L (W_L, the classifier, as W at depth 1). A
            scalar given alone applies to every weight matrix; a list of ``depth`` values
            (λ_1, ..., λ_L) sets each layer's: ``lambda_w`` then keeps λ_L and ``lambda_hidden`` the
            others (None when all are equal). :attr:`layer_lambdas` gives all L.
        lambda_hidden: λ_1, ..., λ_{L−1} of the hidden weight matrices (>= 0), or None (default):
            ``lambda_w`` for every layer. Set it through a list ``lambda_w``; in a batch the engine
            may hold an array of shape (runs, L − 1) here.

    Coefficient fields may also hold arrays of shape (runs,) when a batch of problems is
    vmapped; sizes, flags, dtype, depth, widths and activation are static and shared by the whole
    batch. A list ``lambda_w`` is the per-layer form, never a batch (a batch is an array). Python and numpy
    scalars are stored as Python ints/floats (``Problem(K=np.uint8(200))`` has K = 200).
    """

    K: int = _default("K", static=True)
    d: int = _default("d", static=True)
    n: int = _default("n", static=True)
    lambda_w: float = _default("lambda_w")
    lambda_h: float = _default("lambda_h")
    lambda_b: float = _default("lambda_b")
    bias: bool = _default("bias", static=True)
    loss: str = _default("loss", static=True)
    alpha: float = _default("alpha")
    target_scale: float = _default("target_scale")
    dtype: str = _default("dtype", static=True)
    class_sizes: tuple | None = None
    targets: np.ndarray | None = None
    labels: np.ndarray | None = None
    columns: int | None = eqx.field(static=True, default=None)
    row_basis: RowBasis | None = None
    depth: int = _default("depth", static=True)
    widths: tuple | None = eqx.field(static=True, default=None)
    activation: str = _default("activation", static=True)
    lambda_hidden: tuple | None = None

    def __post_init__(self):
        for name in PROBLEM:  # each field by the table (arrays of coefficients stay arrays)
            setattr(self, name, SETTINGS[name].check(getattr(self, name)))
        lanes = self.columns is not None  # a batch's problem: per-lane data (built by the engine)
        if not lanes and self.class_sizes is not None and np.ndim(self.class_sizes) != 1:
            raise SETTINGS["class_sizes"].error(f"class_sizes must be {SETTINGS['class_sizes'].range_text}, got an "
                                                f"array of shape {np.shape(self.class_sizes)}")
        if self.targets is not None:
            self.targets = _check_targets(self.targets, lanes)
            self.K = self._k_from("targets", self.targets.shape[-2])
        if self.class_sizes is not None and np.ndim(self.class_sizes) == 1:
            self.K = self._k_from("class_sizes", len(self.class_sizes))
        if self.labels is not None:
            self.labels = _check_labels(self.labels, self.K, lanes)
        self._layers()

    def _layers(self):
        """The deep UFM's per-layer fields in their stored form: a list ``lambda_w`` split into the
        output layer's λ_L (``lambda_w``) and the hidden ones (``lambda_hidden``), ``widths`` as a
        tuple of depth − 1 ints; lengths checked against ``depth``."""
        L = self.depth
        if isinstance(self.lambda_w, tuple):  # the per-layer list (the table checked every value)
            lams = self.lambda_w
            if len(lams) != L:
                raise ProblemError(f"lambda_w must be one number or a list of depth = {L} numbers (λ_1, ..., λ_L, "
                                   f"one per weight matrix), got {len(lams)} values {list(lams)}", field="lambda_w")
            if self.lambda_hidden is not None:
                raise ProblemError("lambda_hidden cannot be combined with a list lambda_w (the list gives every "
                                   "layer's λ)", field="lambda_hidden")
            self.lambda_w = lams[-1]
            self.lambda_hidden = None if all(v == lams[-1] for v in lams) else tuple(lams[:-1])
        if L == 1:
            for name in ("widths", "lambda_hidden"):
                if getattr(self, name) is not None:
                    raise ProblemError(f"{name} is only used with depth >= 2 (got depth 1)", field=name)
            if self.activation != "linear":
                raise ProblemError(f"activation {self.activation} needs depth >= 2 (it acts on hidden layers; the "
                                   "output layer is linear), got depth 1", field="activation")
            return
        if isinstance(self.widths, int):
            self.widths = (self.widths,) * (L - 1)
        elif self.widths is not None and len(self.widths) != L - 1:
            raise ProblemError(f"widths must be one integer or a list of depth - 1 = {L - 1} integers (the hidden "
                               f"widths d_1, ..., d_{L - 1}; d_0 = d), got {len(self.widths)} values "
                               f"{list(self.widths)}", field="widths")
        if self.lambda_hidden is not None and np.shape(self.lambda_hidden)[-1:] != (L - 1,):
            raise ProblemError(f"lambda_hidden must hold depth - 1 = {L - 1} values (λ_1, ..., λ_{L - 1}), got "
                               f"shape {np.shape(self.lambda_hidden)}", field="lambda_hidden")

    def _k_from(self, field: str, k: int) -> int:
        if self.K != k and self.K != SETTINGS["K"].default:
            raise ProblemError(f"{field} gives K = {k} classes but K = {self.K} was given", field=field)
        if not 2 <= k <= SETTINGS["K"].high:
            raise ProblemError(f"{field} must have between 2 and {SETTINGS['K'].high} classes (rows), got {k}",
                               field=field)
        return k

    def __check_init__(self):
        if self.general:
            self._check_general()
        elif self.n * self.K > INT32_MAX:
            raise ProblemError(f"n must be at most {INT32_MAX // self.K} for K = {self.K} (N = n K must stay "
                               f"below 2^31), got {self.n}", field="n")
        if not self.bias and np.any(np.asarray(self.lambda_b) != 0):
            raise ProblemError("lambda_b must be 0 when bias=False (there is no bias to regularize)",
                               field="lambda_b")
        given = [k for k in _CONDITIONAL if np.any(np.asarray(getattr(self, k)) != SETTINGS[k].default)]
        check_applies({"loss": self.loss, "bias": self.bias}, given)
        if self.depth > 1:
            self._check_deep()

    def _check_deep(self):
        """What a deep UFM (THEORY §9) takes: one-hot classes, the MSE; ReLU: balanced, bias-free."""
        L = self.depth
        if self.targets is not None:
            raise ProblemError(f"targets: depth {L} takes one-hot classes (n or class_sizes) in this version; a "
                               "target matrix is for depth 1", field="targets")
        if self.loss != "mse":
            raise ProblemError(f"loss {self.loss} is for depth 1 only; the deep UFM (depth {L}) uses loss mse",
                               field="loss")
        if self.activation != "relu":
            return
        if self.class_sizes is not None and np.ndim(self.class_sizes) == 1 and len(set(self.class_sizes)) > 1:
            raise ProblemError("class_sizes must be equal with activation relu: the deep ReLU UFM (THEORY §9.6) "
                               "takes balanced classes; give n (samples per class) instead", field="class_sizes")
        if self.bias:
            raise ProblemError("activation relu needs bias=False (--no-bias): the deep ReLU UFM of THEORY §9.6 has "
                               "no bias", field="activation")

    def _check_general(self):
        if self.loss != "mse":
            raise ProblemError("class_sizes and targets need loss 'mse' (the rescaled MSE is balanced one-hot only)",
                               field="class_sizes" if self.targets is None else "targets")
        batched = self.columns is not None
        if self.class_sizes is not None and not batched and sum(self.class_sizes) > INT32_MAX:
            raise ProblemError(f"class_sizes must sum to at most {INT32_MAX} (N < 2^31), got {sum(self.class_sizes)}",
                               field="class_sizes")
        if self.targets is None or batched:
            return
        N = self.targets.shape[-1]
        if self.labels is not None and self.labels.shape[-1] != N:
            raise ProblemError(f"labels must have one entry per column of targets (N = {N}), got "
                               f"{self.labels.shape[-1]}", field="labels")
        if self.class_sizes is not None:
            if sum(self.class_sizes) != N:
                raise ProblemError(f"class_sizes must sum to the N = {N} columns of targets, got "
                                   f"{sum(self.class_sizes)}", field="class_sizes")
            if self.labels is not None and tuple(np.bincount(self.labels, minlength=self.K)) != self.class_sizes:
                raise ProblemError("class_sizes must equal the class counts of labels", field="class_sizes")

    # ----------------------------------------------------------------- derived values
    @property
    def general(self) -> bool:
        """Whether the problem has per-class sizes or a target matrix (THEORY §7), not the
        balanced one-hot problem of §1–§6."""
        return self.class_sizes is not None or self.targets is not None or self.row_basis is not None

    @property
    def N(self) -> int:
        """Total number of samples: n K (balanced), Σ n_k, or the columns of ``targets``. In a
        batch whose lanes have different class sizes it is the number of columns the init draws
        (``columns``); the engine's maths then takes each lane's own N from its sizes."""
        if self.targets is not None:
            return int(self.targets.shape[-1])
        if self.row_basis is not None:
            return self.columns
        if self.class_sizes is not None:
            if self.columns is not None:
                return self.columns
            return int(sum(self.class_sizes))
        return self.n * self.K

    @property
    def sizes(self) -> np.ndarray:
        """Per-class sample counts (K,) as float64: n_k, n for every class, or the label counts of
        a ``targets`` problem (zeros without labels or sizes)."""
        if self.class_sizes is not None:
            return np.asarray(self.class_sizes, np.float64)
        if self.targets is not None:
            if self.labels is None:
                return np.zeros(self.K)
            return np.bincount(np.asarray(self.labels), minlength=self.K).astype(np.float64)
        return np.full(self.K, float(self.n))

    def label_vector(self) -> np.ndarray | None:
        """Per-sample class labels (N,) (class-major for one-hot problems), or None for a targets
        problem without labels or sizes."""
        if self.labels is not None:
            return np.asarray(self.labels)
        if self.targets is not None and self.class_sizes is None:
            return None
        return np.repeat(np.arange(self.K), self.sizes.astype(np.int64))

    def target_matrix(self) -> np.ndarray:
        """The target T (K, N) as float64: ``targets``, or the one-hot labels."""
        if self.targets is not None:
            return np.asarray(self.targets, np.float64)
        return np.eye(self.K)[:, self.label_vector()]

    @property
    def bias_mode(self) -> str:
        """"none" (case B), "unregularized" (λ_b = 0, case A) or "regularized" (case C)."""
        if not self.bias:
            return "none"
        return "unregularized" if float(np.max(np.asarray(self.lambda_b))) == 0.0 else "regularized"

    @property
    def layer_widths(self) -> tuple:
        """(d_0, d_1, ..., d_{L−1}): the rows of H and of W_1, ..., W_{L−1} (W_L has K rows); (d,) at
        depth 1."""
        hidden = self.widths if self.widths is not None else (self.d,) * (self.depth - 1)
        return (self.d, *hidden)

    @property
    def outcome_labels(self) -> tuple:
        """The outcome labels a run of this model can end with, in report order: ``ncflow.RELU_LABELS``
        (dnc, low_rank, other, not_converged, diverged; THEORY §9.6) for the deep ReLU UFM, else
        ``ncflow.LABELS`` (global, saddle, local_min, not_converged, diverged)."""
        return RELU_LABELS if self.depth > 1 and self.activation == "relu" else LABELS

    @property
    def layer_lambdas(self) -> tuple:
        """(λ_1, ..., λ_L), the weight decay of each weight matrix (λ_L = ``lambda_w``, the output
        layer's); each a float, or an array of shape (runs,) in a batch; (lambda_w,) at depth 1."""
        L = self.depth
        h = self.lambda_hidden
        if h is None:
            hidden = (self.lambda_w,) * (L - 1)
        elif isinstance(h, tuple):
            hidden = h
        else:  # the engine's (runs, L − 1) array
            hidden = tuple(h[..., i] for i in range(L - 1))
        return (*hidden, self.lambda_w)

    @property
    def c(self) -> float:
        """The constant c = K sqrt(n λ_W λ_H) that governs the landscape (THEORY.md §1); with class
        sizes or targets, the value at the mean class size n = N/K. Depth L > 1: THEORY §9's
        c = K (n λ_H Π_l λ_l)^{1/(L+1)} (0 when any λ is 0)."""
        lw, lh = float(self.lambda_w), float(self.lambda_h)
        n = self.n if not self.general else self.N / self.K
        if self.depth > 1:
            lams = [float(v) for v in self.layer_lambdas]
            if min(lams + [lh]) <= 0.0:
                return 0.0
            return self.K * math.exp((math.log(n) + math.log(lh) + sum(math.log(v) for v in lams)) / (self.depth + 1))
        prod = n * lw * lh
        if lw > 0 and lh > 0 and prod < 2.2250738585072014e-308:  # the product underflows: factor by factor
            return self.K * math.sqrt(n) * math.sqrt(lw) * math.sqrt(lh)
        return self.K * math.sqrt(prod)

    @property
    def jnp_dtype(self):
        """The numpy dtype object of this problem's arrays."""
        return np.dtype(self.dtype)

    def describe(self) -> dict:
        """A JSON-ready dict of the problem's fields (scalar coefficients only); depth > 1 adds
        ``depth``, ``widths`` (d_1..d_{L−1}), ``activation`` and ``lambdas`` (λ_1..λ_L)."""
        return {
            "K": self.K, "d": self.d, "n": self.n,
            "lambda_w": float(self.lambda_w), "lambda_h": float(self.lambda_h),
            "lambda_b": float(self.lambda_b), "bias": self.bias_mode, "loss": self.loss,
            "alpha": float(self.alpha), "target_scale": float(self.target_scale),
            "dtype": self.dtype,
            **({"class_sizes": list(self.class_sizes)} if self.class_sizes is not None else {}),
            **({"targets": list(self.targets.shape)} if self.targets is not None else {}),
            **({"depth": self.depth, "widths": list(self.layer_widths[1:]), "activation": self.activation,
                "lambdas": [float(v) for v in self.layer_lambdas]} if self.depth > 1 else {}),
        }


def two_level_sizes(K: int, n: int, majority: int, ratio: float) -> tuple:
    """The class sizes of the two-level shorthand (THEORY §7; ``--majority R --ratio ρ`` and the sweep
    keys ``majority``/``ratio``): ``majority`` classes of round(ratio n) samples (at least 1), then
    K − majority classes of n. Returns a tuple of K ints.

    Raises ProblemError (field ``"ratio"``) when a majority class would hold more than the 2^24
    samples a class may hold, or N = Σ n_k would reach 2^31 (the message gives the ratios that fit);
    field ``"n"`` when K n alone reaches 2^31."""
    high = SETTINGS["class_sizes"].high
    room = INT32_MAX - (K - majority) * n  # what the majority classes may hold together
    most = min(high, room // majority)
    if most < n:  # not even ratio 1 fits: K classes of n samples are too many already
        raise ProblemError(f"n must be at most {INT32_MAX // K} for K = {K} (N = Σ n_k must stay below 2^31), "
                           f"got {n}", field="n")
    size = ratio * n
    if not math.isfinite(size) or round(size) > most:
        why = (f"at most {high} samples per class" if most == high
               else f"N = Σ n_k < 2^31 with {K - majority} classes of n = {n}")
        raise ProblemError(f"ratio must be a number in [1, {(most + 0.5) / n:.9g}) for n = {n} ({majority} majority "
                           f"class(es) of round(ratio × n) samples, {why}), got {ratio:g}", field="ratio")
    return (max(1, round(size)),) * majority + (n,) * (K - majority)
