"""The lanes of a batch as two objects: a host-side :class:`LaneTable` (one numpy column per
per-lane field, reordered as a whole by :meth:`LaneTable.take`) and the device-side
:class:`DeviceLanes` pytree (state, problem coefficients, step sizes and predictions), reordered
as a whole by one compiled gather. A lane holds one run of the batch or is padding (batch −1).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import numpy as np

from ncflow.codes import PADDING, RUNNING
from ncflow.maths import certificate


class DeviceLanes(NamedTuple):
    """Everything the device programs read per lane (leading axis: lanes), as ONE pytree.

    Attributes:
        x: the carried states (the dynamics' state pytree, leading axis lanes).
        problem: the batch's :class:`~ncflow.problem.Problem` with coefficients of shape (lanes,).
        lr: step sizes, (lanes,).
        pred: the predictions of ``ncflow.maths.theory.PredictionArrays`` per lane.
    """

    x: Any
    problem: Any
    lr: Any
    pred: Any


@dataclasses.dataclass(frozen=True)
class LaneTable:
    """Host-side columns of this process's lanes, shape (local lanes,) each.

    Attributes:
        batch: batch run index in [0, R) held by the lane, or −1 for padding.
        point: index of the lane's point (0 for padding).
        status: ``ncflow.codes`` status (PADDING for padding lanes).
        steps: steps taken.
        f0: objective at the start (the divergence reference).
        f_prev: objective at the previous check.
        f_mark, f_change: f at the last check that crossed a multiple of 1,000 steps, and its change
            since the mark before (NaN before the first): what an f-plateau test reads
            (:func:`ncflow.batch.stop.plateau_columns`).
        gtol, strict_gtol, ftol, gap_tol, f_star: the stop rule's tolerances and the predicted f*.
        lr, lambda_w, lambda_h, lambda_b: the lane's step size and coefficients (what the
            certificate's curvature bound L(f) needs).
        lambda_hidden: (lanes, L − 1) λ_1..λ_{L−1} of a deep UFM's hidden layers (depth 1: (lanes, 1) NaN).
        saddle_gap: f_sad − f* of the lane's problem (THEORY §8), NaN where no certificate applies.
        samples, target_norm, data_floor: N, ||T||_F and the least data term of the lane's
            problem (what the certificate's bounds need per lane: the points of a §7 batch may have
            different class sizes or targets).
        certified_step: the first step at which the certificate held (−1: not yet).
        certified_margin: (f_sad − f)/(f_sad − f*) at that step (NaN: not certified).
    """

    batch: np.ndarray
    point: np.ndarray
    status: np.ndarray
    steps: np.ndarray
    f0: np.ndarray
    f_prev: np.ndarray
    f_mark: np.ndarray
    f_change: np.ndarray
    gtol: np.ndarray
    strict_gtol: np.ndarray
    ftol: np.ndarray
    gap_tol: np.ndarray
    f_star: np.ndarray
    lr: np.ndarray
    lambda_w: np.ndarray
    lambda_h: np.ndarray
    lambda_b: np.ndarray
    lambda_hidden: np.ndarray
    saddle_gap: np.ndarray
    samples: np.ndarray
    target_norm: np.ndarray
    data_floor: np.ndarray
    certified_step: np.ndarray
    certified_margin: np.ndarray

    @classmethod
    def build(cls, batch: np.ndarray, point_of: np.ndarray, points: Sequence, tolerances: Sequence,
              f_star: Sequence[float], saddle_gap: Sequence[float | None]) -> "LaneTable":
        """The table of lanes holding batch indices ``batch`` (−1 = padding); ``point_of`` maps a
        batch index to its point; ``points`` (``problem`` and ``lr`` of each), ``tolerances``,
        ``f_star`` and ``saddle_gap`` (None: no certificate) are per point."""
        real = batch >= 0
        point = np.where(real, point_of[np.maximum(batch, 0)], 0)

        def per_point(values):
            return np.asarray(values, np.float64)[point]

        n = len(batch)
        norms = [certificate.data_norms(p.problem) for p in points]
        return cls(
            batch=np.asarray(batch, np.int64), point=point,
            status=np.where(real, RUNNING, PADDING).astype(np.int8), steps=np.zeros(n, np.int64),
            f0=np.zeros(n), f_prev=np.zeros(n), f_mark=np.zeros(n), f_change=np.full(n, np.nan),
            gtol=per_point([t.gtol for t in tolerances]), strict_gtol=per_point([t.strict_gtol for t in tolerances]),
            ftol=per_point([t.ftol for t in tolerances]), gap_tol=per_point([t.gap_tol for t in tolerances]),
            f_star=per_point(f_star), lr=per_point([p.lr for p in points]),
            lambda_w=per_point([float(p.problem.lambda_w) for p in points]),
            lambda_h=per_point([float(p.problem.lambda_h) for p in points]),
            lambda_b=per_point([float(p.problem.lambda_b) for p in points]),
            lambda_hidden=np.asarray([[float(v) for v in p.problem.layer_lambdas[:-1]] or [np.nan] for p in points],
                                     np.float64)[point],  # depth 1: one unused column (a 0-wide one shards apart)
            saddle_gap=per_point([np.nan if s is None else s for s in saddle_gap]),
            samples=per_point([float(N) for N, _ in norms]), target_norm=per_point([float(t) for _, t in norms]),
            data_floor=per_point([certificate.data_floor(p.problem) for p in points]),
            certified_step=np.full(n, -1, np.int64), certified_margin=np.full(n, np.nan),
        )

    def take(self, order: np.ndarray) -> "LaneTable":
        """Every column reordered by ``order`` (new lane j = old lane ``order[j]``)."""
        return LaneTable(**{f.name: getattr(self, f.name)[order] for f in dataclasses.fields(self)})

    def replace(self, **columns) -> "LaneTable":
        """A copy with some columns replaced."""
        return dataclasses.replace(self, **columns)

    @property
    def running(self) -> np.ndarray:
        """Lanes still stepping, (lanes,) bool."""
        return self.status == RUNNING

    @property
    def finished(self) -> np.ndarray:
        """Real lanes that stopped, (lanes,) bool."""
        return (self.status != RUNNING) & (self.status != PADDING)
