"""History of a batch: scalar diagnostics of every run at log-spaced steps, in buffers allocated
once (records × runs) and written by batch index, so lane reordering never touches them."""

from __future__ import annotations

import numpy as np

#: the recorded quantities, in column order
KEYS = ("objective", "grad_norm", "nc1", "nc2", "nc3")


def record_chunks(max_chunks: int) -> set[int]:
    """Chunk indices (1-based) at which history is recorded: about 8 per decade, plus the first."""
    out, c = {1}, 1.0
    while c < max_chunks:
        c *= 10 ** (1 / 8)
        out.add(int(round(c)))
    return out


class History:
    """Preallocated history buffers of R runs.

    Rows: the start (step 0), every chunk in :func:`record_chunks`, and the last chunk if it is not
    one of them — at most ``len(record_chunks) + 2`` rows, allocated up front.

    Args:
        runs: R, the number of runs of the batch.
        max_chunks: the number of chunks the step budget allows.
        chunk: steps per chunk.
        max_steps: the step budget (the recorded step of a chunk is capped by it).
    """

    def __init__(self, runs: int, max_chunks: int, chunk: int, max_steps: int):
        self.at = record_chunks(max_chunks)
        rows = len(self.at) + 2
        self.chunk, self.max_steps = chunk, max_steps
        self.steps = np.zeros(rows, np.int64)
        self.values = {k: np.full((rows, runs), np.nan) for k in KEYS}
        self.rows = 0
        self.last_chunk = -1

    def wants(self, chunk_i: int) -> bool:
        """Whether chunk ``chunk_i`` (0 = the start) is recorded."""
        return chunk_i == 0 or chunk_i in self.at

    def write(self, chunk_i: int, batch: np.ndarray, columns: dict) -> None:
        """Record chunk ``chunk_i``: ``columns[k]`` (lanes,) for lanes holding batch indices
        ``batch`` (−1 = padding, skipped). Called at most once per chunk."""
        row = self.rows
        self.steps[row] = min(chunk_i * self.chunk, self.max_steps)
        real = batch >= 0
        for k in KEYS:
            self.values[k][row, batch[real]] = np.asarray(columns[k], np.float64)[real]
        self.rows += 1
        self.last_chunk = chunk_i

    def for_runs(self, sel: np.ndarray | slice, f_star: float) -> dict:
        """The history of batch indices ``sel`` (an index array, or a slice: then views): ``step
        (records,)`` and each key plus ``gap`` (objective − f*) of shape (records, runs of sel)."""
        out = {"step": self.steps[: self.rows].copy()}
        out.update({k: v[: self.rows][:, sel] for k, v in self.values.items()})
        out["gap"] = out["objective"] - f_star
        return out


def own_rows(history: dict, steps: np.ndarray, chunk: int, max_steps: int) -> dict:
    """A point's history independent of the batch it ran in: the recorded rows before the chunk in
    which the point's last run stopped, then ONE row at that chunk's step holding every run's final
    values (from the first record at or after that chunk: a stopped run's state no longer moves).

    A batch records until its slowest run stops, so without this a point's last row would depend
    on its batch-mates (a sweep resumed with fewer points in a batch would write other files).
    ``history``: ``step (records,)`` and (records, runs) columns; ``steps``: the point's per-run
    step counts (runs,)."""
    rec = np.asarray(history["step"])
    if rec.size == 0 or np.asarray(steps).size == 0:
        return history
    chunk_of = -(-rec // chunk)  # ceil: the chunk index of each record
    last = -(-int(np.max(steps)) // chunk)
    keep = np.nonzero(chunk_of < last)[0]
    later = np.nonzero(chunk_of >= last)[0]
    final = int(later[0]) if later.size else rec.size - 1
    rows = np.concatenate([keep, [final]])
    out = {k: np.asarray(v)[rows] for k, v in history.items()}
    out["step"] = np.concatenate([rec[keep], [min(last * chunk, max_steps)]]).astype(rec.dtype)
    return out
