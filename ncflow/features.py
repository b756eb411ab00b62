"""Neural-collapse metrics of a real network's features, beside the UFM's prediction.

Input: a NumPy ``.npz`` archive (read with ``allow_pickle=False``) holding

* ``H`` — features as columns, shape (d, N), **or** ``features`` — one sample per row, (N, d);
  real, finite;
* ``labels`` — (N,), integers in [0, K). K = ``W.shape[0]`` when ``W`` is given, else
  ``labels.max() + 1``; every class needs at least one sample; classes may be unbalanced;
* ``W`` (optional) — classifier weights (K, d), finite; without it NC2, NC3, NC4 are null;
* ``b`` (optional, needs ``W``) — bias (K,), finite; absent = a bias-free classifier (b = 0).

Metrics (THEORY.md §5, float64, unbalanced classes allowed): μ_k class means, μ_G = the mean of
all N samples, Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ (weight 1/N per sample),
Σ_B = (1/K) Σ_k (μ_k − μ_G)(μ_k − μ_G)ᵀ (weight 1/K per class), H̄ = [μ_k − μ_G],
W̃ = W with rows centred, P = (I − 11ᵀ/K)/√(K−1):

* NC1 = tr(Σ_W Σ_B^†)/K (pseudo-inverse with the relative cut-off of :mod:`ncflow.metrics`;
  0 where Σ_B = 0);
* NC2 = ‖W̃W̃ᵀ/‖W̃W̃ᵀ‖_F − P‖_F and the uncentered ‖WWᵀ/‖WWᵀ‖_F − P‖_F;
* NC3 = ‖W̃H̄/‖W̃H̄‖_F − P‖_F;  NC4 = ‖W μ_G + b‖ (the paper's code);
* ``within_between`` = tr Σ_W / tr Σ_B.

* ``nc1_weighted``: NC1 with the n_k-weighted Σ_B = Σ_k (n_k/N)(μ_k − μ_G)(μ_k − μ_G)ᵀ (THEORY §7);
* ``gram_w_dist``, ``gram_h_dist``, ``cross_dist``: normalized Frobenius distances
  ‖X/‖X‖_F − X*/‖X*‖_F‖_F of W Wᵀ, MᵀM and W M to the UFM optimum's (scale-free, so a network
  trained with other λ's is compared by shape only).

For balanced classes these equal :func:`ncflow.metrics.nc_metrics`. The UFM side is the theory's
global optimum for the same K and d and the given λ's: with equal class sizes n = N/K (THEORY §2),
its metrics from the predicted Gram W Wᵀ and self-duality μ_k = √(λ_W/(nλ_H)) w_k; with unequal
sizes the imbalanced optimum of THEORY §7 with the file's class sizes n_k (NC2/NC3 against the
simplex ETF are then not 0 even at the optimum; the distances above are), up to K = 2048 classes
(beyond, the balanced optimum with n = round(N/K), and no distances). Null where the theory
fixes no unique Gram (rank-limited d, or a λ of 0).
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile

import numpy as np


class FeaturesError(ValueError):
    """A features file is missing, unreadable or malformed; the message names the array."""


@dataclasses.dataclass(frozen=True)
class Features:
    """Loaded features: ``H (d, N)`` float64, ``labels (N,)`` int64, ``K``, optional
    ``W (K, d)`` and ``b (K,)`` (float64)."""

    H: np.ndarray
    labels: np.ndarray
    K: int
    W: np.ndarray | None = None
    b: np.ndarray | None = None

    @property
    def d(self) -> int:
        """Feature dimension."""
        return self.H.shape[0]

    @property
    def N(self) -> int:
        """Number of samples."""
        return self.H.shape[1]

    def class_sizes(self) -> np.ndarray:
        """Samples per class, shape (K,)."""
        return np.bincount(self.labels, minlength=self.K)


def _real(name: str, a: np.ndarray, ndim: int, shape_text: str) -> np.ndarray:
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise FeaturesError(f"{name}: must be a real numeric array {shape_text}, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise FeaturesError(f"{name}: must have shape {shape_text}, got {a.shape}")
    a = np.asarray(a, np.float64)
    if not np.all(np.isfinite(a)):
        bad = int(np.sum(~np.isfinite(a)))
        raise FeaturesError(f"{name}: contains {bad} NaN or infinite value(s)")
    return a


#: the largest array a features file may declare (bytes): its header is checked before it is read
MAX_ARRAY_BYTES = 16 * 2**30


def _check_array_size(archive, name: str, path: str) -> None:
    """Refuse, from the .npy header alone, an array whose declared size exceeds MAX_ARRAY_BYTES
    (a damaged or hostile file must not make the reader allocate without bound)."""
    try:
        with archive.zip.open(f"{name}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(fh))
    except (KeyError, AttributeError):  # not a plain member: numpy reports it when read
        return
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FeaturesError(f"{name}: unreadable in {path} ({e})") from None
    nbytes = math.prod(int(x) for x in shape) * max(dtype.itemsize, 1)
    if nbytes > MAX_ARRAY_BYTES:
        raise FeaturesError(f"{name}: declares shape {tuple(shape)} ({nbytes / 2**30:.3g} GiB), more than the "
                            f"{MAX_ARRAY_BYTES / 2**30:.0f} GiB a features array may hold")


def load_features(path: str | os.PathLike) -> Features:
    """Read and check a features ``.npz`` (format in the module docstring).

    Raises :class:`FeaturesError` naming the file or the array for anything unusable.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FeaturesError(f"{path}: no such file")
    if os.path.isdir(path):
        raise FeaturesError(f"{path}: is a directory, not an .npz file")
    if not zipfile.is_zipfile(path):
        raise FeaturesError(f"{path}: not an .npz archive (expected numpy.savez output)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise FeaturesError(f"{path}: unreadable .npz archive ({e})") from None
    with archive:
        names = set(archive.files)

        def get(name):
            _check_array_size(archive, name, path)
            try:
                return archive[name]
            except ValueError:  # object arrays need pickle
                raise FeaturesError(f"{name}: object arrays are not supported (save plain numeric arrays)") from None
            except (OSError, zipfile.BadZipFile, EOFError) as e:
                raise FeaturesError(f"{name}: unreadable in {path} ({e})") from None

        if "H" in names and "features" in names:
            raise FeaturesError("H and features: give one of them, not both")
        if "H" in names:
            H = _real("H", get("H"), 2, "(d, N)")
        elif "features" in names:
            H = _real("features", get("features"), 2, "(N, d)").T
        else:
            raise FeaturesError(f"H: missing array (need H (d, N) or features (N, d); the file has "
                                f"{', '.join(sorted(names)) or 'no arrays'})")
        if "labels" not in names:
            raise FeaturesError("labels: missing array (need labels (N,), integers in [0, K))")
        labels = get("labels")
        W = get("W") if "W" in names else None
        b = get("b") if "b" in names else None
    return make_features(H, labels, W, b, source="H" if "H" in names else "features")


def make_features(H, labels, W=None, b=None, source: str = "H") -> Features:
    """Check arrays already in memory (``H (d, N)``) and build :class:`Features`."""
    H = _real(source, np.asarray(H), 2, "(d, N)" if source == "H" else "(N, d)")
    d, N = H.shape
    if N < 1 or d < 1:
        raise FeaturesError(f"{source}: needs at least one sample and one dimension, got {d} x {N}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise FeaturesError(f"labels: must be an integer array, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != N:
        raise FeaturesError(f"labels: must have shape ({N},) to match {source}, got {labels.shape}")
    labels = labels.astype(np.int64)
    if W is not None:
        W = _real("W", np.asarray(W), 2, f"(K, {d})")
        if W.shape[1] != d:
            raise FeaturesError(f"W: must have shape (K, {d}) to match the feature dimension, got {W.shape}")
        K = W.shape[0]
    else:
        K = int(labels.max()) + 1 if N else 0
        if K > N:  # checked before anything of size K is allocated (a label of 10^12 is no 7 TiB count)
            raise FeaturesError(f"labels: values must be in [0, N-1] = [0, {N - 1}] without W (K = max label + 1 "
                                f"classes, each needing a sample), found {K - 1}")
    if b is not None:
        if W is None:
            raise FeaturesError("b: given without W (the bias belongs to the classifier W)")
        b = _real("b", np.asarray(b), 1, f"({K},)")
        if b.shape != (K,):
            raise FeaturesError(f"b: must have shape ({K},) to match W, got {b.shape}")
    if K < 2:
        raise FeaturesError(f"labels: need K >= 2 classes, got K = {K}")
    if labels.min() < 0 or labels.max() >= K:
        bad = labels[(labels < 0) | (labels >= K)][0]
        raise FeaturesError(f"labels: values must be in [0, {K - 1}] (K = {K}), found {bad}")
    sizes = np.bincount(labels, minlength=K)
    if np.any(sizes == 0):
        empty = np.nonzero(sizes == 0)[0]
        raise FeaturesError(f"labels: class {int(empty[0])} has no samples (every class in [0, {K - 1}] "
                            f"needs one; {len(empty)} empty)")
    return Features(H=H, labels=labels, K=K, W=W, b=b)


# --------------------------------------------------------------------------- metrics


def _normalize(X: np.ndarray) -> np.ndarray:
    nrm = np.linalg.norm(X)
    return X / nrm if nrm > 0 else np.zeros_like(X)


def _etf(K: int) -> np.ndarray:
    return (np.eye(K) - 1.0 / K) / math.sqrt(K - 1)


def class_means(H: np.ndarray, labels: np.ndarray, K: int) -> np.ndarray:
    """Class means ``M (d, K)``."""
    sizes = np.bincount(labels, minlength=K)
    sums = np.zeros((K, H.shape[0]))
    np.add.at(sums, labels, H.T)
    return sums.T / sizes


def features_metrics(H, labels, W=None, b=None, K: int | None = None) -> dict:
    """NC metrics of features ``H (d, N)`` with integer ``labels (N,)`` (conventions in the
    module docstring). Returns ``nc1``, ``nc2``, ``nc3``, ``nc4``, ``nc2_uncentered``,
    ``within_between`` (floats; NC2–NC4 None without ``W``), ``w_norm`` (rms ‖w_k‖ or None),
    ``mean_norm`` (rms ‖μ_k − μ_G‖) and ``class_sizes``."""
    H = np.asarray(H, np.float64)
    labels = np.asarray(labels, np.int64)
    K = int(K if K is not None else (W.shape[0] if W is not None else labels.max() + 1))
    d, N = H.shape
    M = class_means(H, labels, K)
    muG = H.mean(axis=1)
    E = H - M[:, labels]
    Sw = (E @ E.T) / N
    Hbar = M - muG[:, None]
    U, s, _ = np.linalg.svd(Hbar / math.sqrt(K), full_matrices=False)
    cutoff = (s.max() if s.size else 0.0) * max(d, K) * np.finfo(np.float64).eps * 10
    keep = s > cutoff
    nc1 = float(np.sum(np.einsum("dj,de,ej->j", U[:, keep], Sw, U[:, keep]) / s[keep] ** 2) / K)
    trW, trB = float(np.trace(Sw)), float(np.sum(Hbar**2) / K)
    ratio = trW / trB if trB > 0 else (math.inf if trW > 0 else 0.0)
    sizes = np.bincount(labels, minlength=K)
    out = {"nc1": nc1, "nc2": None, "nc3": None, "nc4": None, "nc2_uncentered": None,
           "within_between": ratio, "w_norm": None, "mean_norm": math.sqrt(trB),
           "nc1_weighted": _nc1(Hbar * np.sqrt(sizes / N), Sw, K), "class_sizes": sizes.tolist()}
    if W is not None:
        W = np.asarray(W, np.float64)
        bb = np.zeros(K) if b is None else np.asarray(b, np.float64)
        Wc = W - W.mean(axis=0, keepdims=True)
        if K <= DENSE_MAX_K:
            P = _etf(K)
            nc2 = float(np.linalg.norm(_normalize(Wc @ Wc.T) - P))
            nc3 = float(np.linalg.norm(_normalize(Wc @ Hbar) - P))
            nc2u = float(np.linalg.norm(_normalize(W @ W.T) - P))
        else:  # the same norms from d×d products: no K×K matrix (K = 100,000 fits)
            WtW, WctWc = W.T @ W, Wc.T @ Wc
            nc2 = _dist_to_etf(np.linalg.norm(WctWc), np.trace(WctWc), K)
            nc3 = _dist_to_etf(math.sqrt(max(float(np.sum(WctWc * (Hbar @ Hbar.T))), 0.0)),
                               float(np.sum(Wc * Hbar.T)), K)
            nc2u = _dist_to_etf(np.linalg.norm(WtW), float(np.sum(Wc * Wc)), K)
        out.update(nc2=nc2, nc3=nc3, nc4=float(np.linalg.norm(W @ muG + bb)), nc2_uncentered=nc2u,
                   w_norm=float(np.sqrt(np.sum(W * W) / K)))
    return out


def _nc1(X: np.ndarray, Sw: np.ndarray, K: int) -> float:
    """tr(Σ_W Σ_B^†)/K with Σ_B = X Xᵀ."""
    U, s, _ = np.linalg.svd(X, full_matrices=False)
    cutoff = (s.max() if s.size else 0.0) * max(X.shape) * np.finfo(np.float64).eps * 10
    keep = s > cutoff
    return float(np.sum(np.einsum("dj,de,ej->j", U[:, keep], Sw, U[:, keep]) / s[keep] ** 2) / K)


def _ndist(X, P) -> float | None:
    if X is None or P is None:
        return None
    return float(np.linalg.norm(_normalize(np.asarray(X, np.float64)) - _normalize(np.asarray(P, np.float64))))


#: above this many classes the metrics use d×d products instead of K×K matrices
DENSE_MAX_K = 2048


def _dist_to_etf(norm: float, inner_c: float, K: int) -> float:
    """‖X/‖X‖_F − P‖_F from ‖X‖_F and ⟨X, C⟩ = ⟨X, (I − 11ᵀ/K)⟩ (P = C/√(K−1); 1 where X = 0)."""
    if norm <= 0:
        return 1.0
    return math.sqrt(max(2.0 - 2.0 * inner_c / (norm * math.sqrt(K - 1)), 0.0))


def predicted_metrics(problem) -> dict:
    """The same metrics at the theory's global optimum of ``problem`` (balanced, collapsed),
    from the predicted Gram ``G = W Wᵀ`` and self-duality ``μ_k = κ w_k``: Σ_W = 0 so NC1 = 0;
    W̃W̃ᵀ = C G C and W̃H̄ = κ C G C (C = I − 11ᵀ/K), so NC3 = NC2; NC4 = ‖κ G 1/K + b*‖.
    Values are None where the theory fixes no unique Gram."""
    from ncflow.maths.theory import predict

    pred = predict(problem)
    out = {"nc1": None, "nc2": None, "nc3": None, "nc4": None, "nc2_uncentered": None,
           "within_between": None, "w_norm": pred.w_norm, "mean_norm": pred.h_norm, "nc1_weighted": None,
           "gram_w_dist": None, "gram_h_dist": None, "cross_dist": None}
    if not pred.gram_unique:
        return out
    K = problem.K
    if problem.general:
        return {**out, **_predicted_general(problem, pred)}
    if pred.gram is None:  # large K: from the closed form a (I − 11ᵀ/K) + b 11ᵀ/K, no K×K matrix
        return _predicted_from_form(out, problem, pred)
    G = np.asarray(pred.gram, np.float64)
    lw, lh = float(problem.lambda_w), float(problem.lambda_h)
    kappa = math.sqrt(lw / (problem.n * lh))
    C = np.eye(K) - 1.0 / K
    P = _etf(K)
    nc2 = float(np.linalg.norm(_normalize(C @ G @ C) - P))
    b = np.zeros(K) if pred.bias is None else np.full(K, pred.bias)
    out.update(nc1=0.0, nc2=nc2, nc3=nc2, nc4=float(np.linalg.norm(kappa * G @ np.ones(K) / K + b)),
               nc2_uncentered=float(np.linalg.norm(_normalize(G) - P)), within_between=0.0, nc1_weighted=0.0,
               gram_w_dist=0.0, gram_h_dist=0.0 if pred.gram_h is not None else None,
               cross_dist=0.0 if pred.cross is not None else None)
    return out


def _predicted_general(problem, pred) -> dict:
    """Metrics of the THEORY §7 optimum from its W Wᵀ, MᵀM and W M: μ_G = M p, H̄ = M (I − p1ᵀ)."""
    K = problem.K
    p = problem.sizes / problem.N
    G, GH, X = (np.asarray(a, np.float64) for a in (pred.gram, pred.gram_h, pred.cross))
    C, P, Cp = np.eye(K) - 1.0 / K, _etf(K), np.eye(K) - np.outer(p, np.ones(K))
    b = np.zeros(K) if pred.bias_vector is None else pred.bias_vector
    HbHb = Cp.T @ GH @ Cp
    return dict(nc1=0.0, nc1_weighted=0.0, within_between=0.0, nc2=float(np.linalg.norm(_normalize(C @ G @ C) - P)),
                nc3=float(np.linalg.norm(_normalize(C @ X @ Cp) - P)), nc4=float(np.linalg.norm(X @ p + b)),
                nc2_uncentered=float(np.linalg.norm(_normalize(G) - P)), mean_norm=math.sqrt(np.trace(HbHb) / K),
                gram_w_dist=0.0, gram_h_dist=0.0, cross_dist=0.0)


def _predicted_from_form(out: dict, problem, pred) -> dict:
    """:func:`predicted_metrics` from ``pred.gram_form``: C G C = a C gives NC2 = NC3 = 0 (a > 0),
    G 1/K = (b/K) 1 gives NC4 = √K |κ b/K + b*|, and ‖G‖_F² = a²(K−1) + b²."""
    K = problem.K
    a, bb = pred.gram_form
    kappa = math.sqrt(float(problem.lambda_w) / (problem.n * float(problem.lambda_h)))
    nc2 = 0.0 if a > 0 else 1.0
    norm = math.sqrt(a * a * (K - 1) + bb * bb)
    unc = 1.0 if norm == 0 else math.sqrt((a / norm - 1 / math.sqrt(K - 1)) ** 2 * (K - 1) + (bb / norm) ** 2)
    bias = 0.0 if pred.bias is None else pred.bias
    out.update(nc1=0.0, nc2=nc2, nc3=nc2, nc4=math.sqrt(K) * abs(kappa * bb / K + bias), nc2_uncentered=unc,
               within_between=0.0)
    return out


def compare(feats: Features, lambda_w: float = 5e-4, lambda_h: float = 5e-4, lambda_b: float = 0.0,
            bias: bool = True) -> dict:
    """Metrics of ``feats`` and of the matching UFM optimum: ``{"K", "d", "N", "class_sizes",
    "features": {...}, "ufm": {"problem", "theory", "metrics"}}``."""
    from ncflow.maths.theory import predict
    from ncflow.problem import Problem, ProblemError

    m = features_metrics(feats.H, feats.labels, feats.W, feats.b, K=feats.K)
    sizes = tuple(int(v) for v in m["class_sizes"])
    kw = dict(K=feats.K, d=feats.d, lambda_w=lambda_w, lambda_h=lambda_h, lambda_b=lambda_b if bias else 0.0,
              bias=bias, dtype="float64")
    try:
        if len(set(sizes)) > 1 and feats.K <= DENSE_MAX_K:  # unequal class sizes: the optimum of THEORY §7
            problem = Problem(class_sizes=sizes, **kw)
        else:  # equal sizes, or too many classes for the dense §7 theory: n = round(N/K)
            problem = Problem(n=max(1, int(round(feats.N / feats.K))), **kw)
    except ProblemError as e:
        raise FeaturesError(f"UFM comparison: {e}") from None
    pred = predict(problem)
    if feats.K <= DENSE_MAX_K:
        M = class_means(feats.H, feats.labels, feats.K)
        W = None if feats.W is None else np.asarray(feats.W, np.float64)
        m.update(gram_w_dist=None if W is None or pred.gram is None else _ndist(W @ W.T, pred.gram),
                 gram_h_dist=_ndist(M.T @ M, pred.gram_h),
                 cross_dist=None if W is None else _ndist(W @ M, pred.cross))
    else:
        m.update(gram_w_dist=None, gram_h_dist=None, cross_dist=None)
    return {
        "K": feats.K, "d": feats.d, "N": feats.N, "class_sizes": m.pop("class_sizes"),
        "has_W": feats.W is not None, "has_b": feats.b is not None,
        "features": m,
        "ufm": {"problem": problem.describe(), "theory": predict(problem).to_json(),
                "metrics": predicted_metrics(problem)},
    }


_ROWS = (("nc1", "NC1  tr(Σ_W Σ_B†)/K"), ("nc2", "NC2  (centered W)"), ("nc2_uncentered", "NC2  (uncentered W)"),
         ("nc3", "NC3  W–H̄ alignment"), ("nc4", "NC4  ‖W μ_G + b‖"), ("within_between", "tr Σ_W / tr Σ_B"),
         ("w_norm", "‖w_k‖ (rms)"), ("mean_norm", "‖μ_k − μ_G‖ (rms)"),
         ("nc1_weighted", "NC1  (n_k-weighted Σ_B)"), ("gram_w_dist", "W Wᵀ vs UFM (normalized)"),
         ("gram_h_dist", "MᵀM vs UFM (normalized)"), ("cross_dist", "W M vs UFM (normalized)"))


def format_report(report: dict, name: str = "features") -> str:
    """The report of :func:`compare` as a text table."""
    sizes = np.asarray(report["class_sizes"])
    u = report["ufm"]
    p = u["problem"]
    lines = [f"Neural-collapse metrics of {name}: K={report['K']} classes, d={report['d']}, N={report['N']}"]
    if len(sizes) <= 20:
        lines.append("  class sizes " + " ".join(str(int(s)) for s in sizes))
    else:
        lines.append(f"  class sizes min {int(sizes.min())}  median {np.median(sizes):g}  max {int(sizes.max())}")
    if not report["has_W"]:
        lines.append("  no W in the file: NC2, NC3, NC4 need the classifier weights")
    size = f"n_k={','.join(map(str, p['class_sizes']))}" if "class_sizes" in p else f"n={p['n']}"
    head = (f"UFM optimum ({size}, λ_W={p['lambda_w']:g}, λ_H={p['lambda_h']:g}, "
            f"c={u['theory']['c']:.3g}, {u['theory']['geometry']})")
    width = max(len(r[1]) for r in _ROWS)
    lines.append("")
    lines.append(f"  {'metric'.ljust(width)}  {'features':>12}   {head}")
    for key, label in _ROWS:
        lines.append(f"  {label.ljust(width)}  {_num(report['features'][key]):>12}   {_num(u['metrics'][key])}")
    lines.append("")
    lines.append(f"  UFM f* = {u['theory']['objective']:.6g}")
    return "\n".join(lines)


def _num(v) -> str:
    if v is None:
        return "—"
    return f"{v:.4g}" if math.isfinite(v) else str(v)
