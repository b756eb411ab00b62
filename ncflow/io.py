"""Crash-safe file output and result tables without pickle (JSON, CSV, optional Parquet), and
tables as pandas DataFrames (optional).

Every writer here is atomic: it writes a temporary file in the destination's directory, flushes
and fsyncs it, then ``os.replace``-s it over the destination, so a reader (or a crash) sees either
the old content or the new, never a partial file; on failure the temporary file is removed.

CSV typing conventions (``write_table_csv`` / ``read_table_csv``):
    * floats are written with ``repr`` (shortest round-trip form), so float64 round-trips exactly;
      ``nan``, ``inf``, ``-inf`` are written as such;
    * bools are written ``true`` / ``false``; ``None`` as an empty cell;
    * on reading, each column becomes ``int64`` (all cells integers), ``float64`` (all cells
      numeric; empty cells -> NaN, so an int column with missing cells reads as float),
      ``bool`` (all cells true/false; with empty cells: object array with ``None``), otherwise
      ``str`` (empty cells -> ``""``). A column whose cells are all empty reads as an object array
      of ``None``; a table with no rows reads as empty ``float64`` columns. Types are inferred
      from the text alone, so a str column whose cells all look numeric reads back as numbers.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
import re
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "STAGE_TAG",
    "atomic_write_bytes",
    "commit_staged",
    "is_stage_name",
    "pid_alive",
    "remove_stale_stages",
    "stage_dir",
    "atomic_write_text",
    "pandas_module",
    "read_json",
    "read_table_csv",
    "read_table_parquet",
    "to_dataframe",
    "to_jsonable",
    "write_json",
    "write_table_csv",
    "write_table_parquet",
]


# --------------------------------------------------------------------------- atomic writes


def _default_file_mode(path: str) -> int:
    """Mode for the new file: the old file's mode if it exists, else ``0o666 & ~umask``."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        pass
    umask = 0o022
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
                    break
    except (OSError, ValueError):
        pass
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace the file at ``path`` with ``data`` (bytes).

    Writes ``.<name>.<random>.tmp`` in the same directory, flush + fsync, ``os.replace`` onto
    ``path``, then fsyncs the directory (best effort). If anything fails, the temporary file is
    removed, ``path`` keeps its old content (or stays absent), and the exception propagates.
    The parent directory must exist. The new file keeps the old file's permissions.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    mode = _default_file_mode(path)
    prefix = "." + os.path.basename(path) + "."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)  # make the rename itself durable


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Atomically replace the file at ``path`` with ``text`` (encoded, default UTF-8, no newline
    translation). See ``atomic_write_bytes``."""
    atomic_write_bytes(path, text.encode(encoding))


# --------------------------------------------------------------------------- staged directories

#: the tag of a staging directory beside its target: ``.<name>.ncflow-tmp-<pid>-<random>``
STAGE_TAG = ".ncflow-tmp-"
_CLEANED: set[str] = set()
_STAGE_RE = re.compile(r"\..*\.ncflow-tmp-(\d+)-[^/]*\Z")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # exists, owned by someone else / not a pid
        return True
    return True


def is_stage_name(name: str) -> int | None:
    """The pid in a staging directory's name, or None if ``name`` is not one."""
    m = _STAGE_RE.match(name)
    return int(m.group(1)) if m else None


def remove_stale_stages(parent: str | os.PathLike[str]) -> int:
    """Delete the staging directories (see :func:`stage_dir`) under ``parent`` whose writing process
    is gone (killed during a save); returns how many. Those of live processes are left alone."""
    removed = 0
    try:
        names = os.listdir(parent)
    except OSError:
        return 0
    for name in names:
        pid = is_stage_name(name)
        if pid is not None and not pid_alive(pid):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed += 1
    return removed


def stage_dir(target: str | os.PathLike[str]) -> str:
    """A new, empty staging directory beside ``target`` (same file system, so its files can be
    renamed into place), named ``.<name>.ncflow-tmp-<pid>-<random>``; stale staging directories of
    dead processes in the same parent are removed first. The parent must exist."""
    target = os.path.abspath(os.fspath(target))
    parent = os.path.dirname(target)
    if parent not in _CLEANED:  # once per parent and process: a sweep saves thousands of points in one
        remove_stale_stages(parent)
        _CLEANED.add(parent)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(target)}{STAGE_TAG}{os.getpid()}-", dir=parent)


def commit_staged(stage: str, target: str | os.PathLike[str], last: str, remove: Sequence[str] = ()) -> None:
    """Move every file of ``stage`` into ``target`` with ``last`` (the completion mark) moved last.

    First ``last`` and every name of ``remove`` are deleted from ``target`` (so from then on the
    directory reads as incomplete, never as a mix of two results), then each staged file is renamed
    over its namesake, then ``last``; finally the stage is removed and ``target`` fsynced. Files of
    ``target`` that are neither staged nor named in ``remove`` are kept. A crash in between leaves
    ``target`` without ``last``: recognizably incomplete.
    """
    target = os.fspath(target)
    os.makedirs(target, exist_ok=True)
    for name in (last, *remove):
        try:
            os.remove(os.path.join(target, name))
        except FileNotFoundError:
            pass
    names = sorted(os.listdir(stage))
    if last not in names:
        raise FileNotFoundError(f"{stage} holds no {last}: nothing to commit")
    for name in [n for n in names if n != last] + [last]:
        os.replace(os.path.join(stage, name), os.path.join(target, name))
    shutil.rmtree(stage, ignore_errors=True)
    _fsync_dir(target)


# --------------------------------------------------------------------------- JSON


def to_jsonable(obj: Any) -> Any:
    """Recursively convert ``obj`` to plain JSON types.

    numpy / JAX scalars -> Python scalars; arrays (anything with ``__array__``) -> nested lists;
    tuples -> lists; NaN / ±inf -> ``None``; ``os.PathLike`` -> str; mapping keys -> str.
    Raises ``TypeError`` for anything else that JSON cannot represent.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "__array__"):
        arr = np.asarray(obj)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as JSON (``indent=2``, key order kept, trailing newline).

    ``obj`` is passed through ``to_jsonable`` (numpy/JAX values converted, NaN/inf -> null) and
    dumped with ``allow_nan=False``, so the file is strict JSON.
    """
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse the JSON file at ``path``."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------- CSV


def _as_column(name: str, col: Sequence[Any]) -> list[Any]:
    if hasattr(col, "__array__") and not isinstance(col, (list, tuple)):
        arr = np.asarray(col)
        if arr.ndim != 1:
            raise ValueError(f"column {name!r} must be 1-D, got shape {arr.shape}")
        return arr.tolist()
    return list(col)


def _format_cell(name: str, x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return repr(x)
    if isinstance(x, str):
        return x
    raise TypeError(f"column {name!r}: unsupported cell type {type(x).__name__}")


def write_table_csv(path: str | os.PathLike[str], columns: Mapping[str, Sequence[Any]]) -> None:
    """Atomically write a table ``{name: column (rows,)}`` as CSV with a header row.

    All columns must have the same length ``rows``. Cells may be int, float, bool, str, None or
    numpy scalars; 1-D numpy / JAX arrays are accepted as columns. See the module docstring for
    the text encoding (floats round-trip exactly).

    Raises:
        ValueError: columns of unequal length or not 1-D.
        TypeError: unsupported cell type.
    """
    names = [str(k) for k in columns]
    cols = [_as_column(k, v) for k, v in zip(names, columns.values())]
    lengths = {len(c) for c in cols}
    if len(lengths) > 1:
        raise ValueError(
            "all columns must have equal length, got "
            + ", ".join(f"{k}={len(c)}" for k, c in zip(names, cols))
        )
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for row in zip(*cols):
        writer.writerow([_format_cell(k, x) for k, x in zip(names, row)])
    atomic_write_text(path, buf.getvalue())


_INT_RE = re.compile(r"[+-]?\d+\Z")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|nan|inf)\Z")
_BOOLS = {"true": True, "false": False, "True": True, "False": False}


def _parse_column(cells: list[str]) -> np.ndarray:
    filled = [c for c in cells if c != ""]
    has_empty = len(filled) < len(cells)
    if not cells:
        return np.zeros((0,), np.float64)
    if not filled:
        return np.array([None] * len(cells), dtype=object)
    if all(_INT_RE.match(c) for c in filled):
        if not has_empty:
            try:
                return np.array([int(c) for c in filled], dtype=np.int64)
            except OverflowError:
                return np.array(cells, dtype=str)
        return np.array([float(c) if c else math.nan for c in cells], dtype=np.float64)
    if all(_FLOAT_RE.match(c) for c in filled):
        return np.array([float(c) if c else math.nan for c in cells], dtype=np.float64)
    if all(c in _BOOLS for c in filled):
        if not has_empty:
            return np.array([_BOOLS[c] for c in cells], dtype=bool)
        return np.array([_BOOLS[c] if c else None for c in cells], dtype=object)
    return np.array(cells, dtype=str)


def read_table_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a CSV table written by ``write_table_csv`` into ``{name: array (rows,)}``.

    Column dtypes are inferred per column (int64 / float64 / bool / str; see module docstring).

    Raises:
        ValueError: a row has a different number of cells than the header.
    """
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return {}
    header, body = rows[0], rows[1:]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise ValueError(f"{path}: row {i + 2} has {len(r)} cells, header has {len(header)}")
    return {name: _parse_column([r[j] for r in body]) for j, name in enumerate(header)}


# --------------------------------------------------------------------------- Parquet (optional)


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Parquet tables need the optional dependency 'pyarrow' (pip install pyarrow); "
            "use write_table_csv / read_table_csv instead."
        ) from e
    return pyarrow


def write_table_parquet(path: str | os.PathLike[str], columns: Mapping[str, Sequence[Any]]) -> None:
    """Atomically write ``{name: column (rows,)}`` as a Parquet file (requires pyarrow).

    Columns are converted with ``pyarrow.array`` (None -> null). Raises ImportError with an
    explanation if pyarrow is not installed, ValueError for unequal column lengths.
    """
    pa = _pyarrow()
    names = [str(k) for k in columns]
    arrays = [pa.array(_as_column(k, v)) for k, v in zip(names, columns.values())]
    if len({len(a) for a in arrays}) > 1:
        raise ValueError("all columns must have equal length")
    table = pa.table(dict(zip(names, arrays)))
    sink = pa.BufferOutputStream()
    pa.parquet.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_table_parquet(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a Parquet file into ``{name: numpy array (rows,)}`` (requires pyarrow; string and
    nullable columns come back as object arrays)."""
    pa = _pyarrow()
    table = pa.parquet.read_table(os.fspath(path))
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


# --------------------------------------------------------------------------- pandas (optional)


def pandas_module() -> Any:
    """The ``pandas`` module, imported on first use (``import ncflow`` never imports it); raises a
    one-line ImportError naming the extra (``pip install ncflow[pandas]``) where it is missing."""
    try:
        import pandas
    except ImportError:
        raise ImportError("DataFrames need the optional dependency pandas: pip install ncflow[pandas]") from None
    return pandas


def to_dataframe(columns: Mapping[str, Sequence[Any]], categories: Mapping[str, Sequence[str]] | None = None) -> Any:
    """A ``pandas.DataFrame`` (rows, columns) of a table ``{name: column (rows,)}`` (requires pandas).

    Dtypes: integer, float and bool columns keep their numpy dtype (int64 / float64 / bool); a
    column of bools with missing cells (None) becomes pandas' nullable ``boolean``; text columns
    take pandas' default string dtype (a column of None alone stays ``object``); a column named in
    ``categories`` becomes a ``category`` whose categories are the given ones, in that order (then
    any other value the column holds, sorted; None is missing), so that e.g. ``value_counts()``
    lists every outcome label, those with no run too.
    Raises ValueError for unequal column lengths (as ``write_table_csv``).
    """
    pd = pandas_module()
    names = [str(k) for k in columns]
    cols = [np.asarray(v) if hasattr(v, "__array__") else np.asarray(list(v)) for v in columns.values()]
    for name, col in zip(names, cols):
        if col.ndim != 1:
            raise ValueError(f"column {name!r} must be 1-D, got shape {col.shape}")
    if len({len(c) for c in cols}) > 1:
        raise ValueError("all columns must have equal length, got "
                         + ", ".join(f"{k}={len(c)}" for k, c in zip(names, cols)))
    data = {}
    for name, col in zip(names, cols):
        if categories and name in categories:
            given = [str(c) for c in categories[name]]
            values = [None if v is None else str(v) for v in col.tolist()]
            extra = sorted({v for v in values if v is not None} - set(given))
            data[name] = pd.Categorical(values, categories=given + extra)
        elif (col.dtype == object and any(v is not None for v in col)
              and all(v is None or isinstance(v, (bool, np.bool_)) for v in col)):
            data[name] = pd.array(col.tolist(), dtype="boolean")
        else:
            data[name] = col
    return pd.DataFrame(data, columns=names)


def _fsync_dir(directory: str) -> None:
    """fsync a directory, so that renames into it survive a crash (best effort: some file systems
    refuse to open or sync a directory)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
