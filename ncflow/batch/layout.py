"""Where the runs live: lanes of a batch spread over devices (and processes).

The run axis is sharded over a 1-D mesh ``("runs",)``. Each device holds ``L`` lanes (a
multiple of the cache group size); a lane holds one run or is padding. Real runs are split
into contiguous blocks of ``ceil(R / D)``, one block per device, so every device carries about
the same work and padding never enters any statistic. Each process only builds and steps the
lanes of its own devices; :meth:`Layout.gather` brings per-lane results to every process.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ncflow.errors import ConfigError

AXIS = "runs"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Placement of R runs on a mesh of devices.

    Attributes:
        mesh: 1-D mesh with axis ``"runs"``.
        runs: R, the number of real runs.
        group: runs stepped together in cache (lanes per device are a multiple of it).
        lanes_per_device: L.
    """

    mesh: Mesh
    runs: int
    group: int
    lanes_per_device: int

    @property
    def n_devices(self) -> int:
        """D, the number of devices on the mesh."""
        return self.mesh.devices.size

    @property
    def total_lanes(self) -> int:
        """D × L lanes in all."""
        return self.n_devices * self.lanes_per_device

    @property
    def sharding(self) -> NamedSharding:
        """Sharding of a per-lane array (leading axis = lanes)."""
        return NamedSharding(self.mesh, P(AXIS))

    def lane_batch_index(self) -> np.ndarray:
        """For every global lane, the batch run index in [0, R) it holds, or -1 for padding."""
        D, L, R = self.n_devices, self.lanes_per_device, self.runs
        q = math.ceil(R / D)
        out = np.full(D * L, -1, np.int64)
        for k in range(D):
            block = np.arange(k * q, min((k + 1) * q, R))
            out[k * L: k * L + len(block)] = block
        return out

    def local_device_positions(self) -> np.ndarray:
        """Mesh positions of this process's devices (contiguous)."""
        pid = jax.process_index()
        return np.asarray([i for i, d in enumerate(self.mesh.devices.flat) if d.process_index == pid])

    def local_lanes(self) -> slice:
        """The global lanes held by this process's devices."""
        pos = self.local_device_positions()
        L = self.lanes_per_device
        return slice(int(pos[0]) * L, (int(pos[-1]) + 1) * L)

    def put(self, local: np.ndarray, per_device: bool = False) -> jax.Array:
        """A global array sharded over ``"runs"`` from this process's part (numpy): per lane
        (leading axis = local lanes), or with ``per_device`` one entry per local device."""
        local = np.asarray(local)
        total = self.n_devices if per_device else self.total_lanes
        return jax.make_array_from_process_local_data(self.sharding, local, (total,) + local.shape[1:])

    def gather(self, tree):
        """Every lane of a per-lane pytree as numpy arrays, on every process."""
        if jax.process_count() == 1:
            return jax.tree_util.tree_map(np.asarray, tree)
        from jax.experimental import multihost_utils

        return jax.tree_util.tree_map(
            lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)), tree)

    def allsum(self, value: int) -> int:
        """Sum of an integer over processes (every process must call it)."""
        if jax.process_count() == 1:
            return int(value)
        from jax.experimental import multihost_utils

        return int(np.sum(multihost_utils.process_allgather(np.asarray([value]))))


def runs_mesh(devices: Sequence | Mesh | None = None) -> Mesh:
    """The 1-D mesh (axis ``"runs"``) of ``devices``: a list (ordered by process, then id), a Mesh
    (flattened), or None for every device of every process. An empty list is a ConfigError."""
    if isinstance(devices, Mesh):
        return devices if devices.axis_names == (AXIS,) else Mesh(devices.devices.reshape(-1), (AXIS,))
    devs = list(devices) if devices is not None else jax.devices()
    if not devs:
        raise ConfigError("devices: an empty device list; give at least one device or None (every device)",
                          field="devices")
    devs = sorted(devs, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devs, dtype=object), (AXIS,))


def make_layout(runs: int, group: int | None, devices: Sequence | Mesh | None = None, align: int = 32) -> Layout:
    """Layout of ``runs`` over ``devices`` (a list, a 1-D Mesh, or None for every device; see
    :func:`runs_mesh`).

    Lanes per device are the runs per device rounded up to a multiple of ``group`` (plan cpu), or,
    with ``group=None`` (plan wide: one group of all lanes of a device), to a multiple of ``align``.
    """
    mesh = runs_mesh(devices)
    D = mesh.devices.size
    q = math.ceil(runs / D)
    if group is None:
        L = int(math.ceil(q / align) * align)
        return Layout(mesh=mesh, runs=runs, group=L, lanes_per_device=L)
    L = int(math.ceil(q / group) * group)
    return Layout(mesh=mesh, runs=runs, group=group, lanes_per_device=L)
